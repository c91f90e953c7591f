//! What the receiver reads from a certificate: the names of a client (subject CN and DNS
//! SANs, compared with `tls.allowed_client_names`), and a serving certificate's subject,
//! serial and expiry (for logs and the expiry gauge).

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The subject CNs and DNS SANs of `cert`, lowercase. Empty when the certificate cannot be
/// parsed (it then matches no allowed name).
pub fn client_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = dns.to_ascii_lowercase();
                if !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    names
}

/// Subject, serial and validity end of a certificate, for logs and the expiry gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The subject DN (RFC 4514).
    pub subject: String,
    /// The serial number, hex bytes separated by `:`.
    pub serial: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// The [`Summary`] of `cert`, if it parses.
pub fn summary(cert: &CertificateDer<'_>) -> Option<Summary> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(Summary {
        subject: parsed.subject().to_string(),
        serial: parsed.raw_serial_as_string(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}
