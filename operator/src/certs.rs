//! The namespace CA and the receivers' serving certificates (rcgen), and when to renew.
//!
//! Pure: the caller passes `now`, so renewal is tested without waiting.

use std::collections::BTreeSet;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::Error;

/// Lifetime of an operator-issued serving certificate.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a namespace CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back `not_before` is set, for clocks slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(300);

/// A CA certificate and its key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// The CA certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A serving certificate issued by a [`CaMaterial`].
#[derive(Debug, Clone)]
pub struct ServingCertificate {
    /// The leaf certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The issuing CA's certificate.
    pub ca_pem: String,
    /// SHA-256 (hex) of the CA certificate's DER.
    pub ca_fingerprint: String,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

/// What an existing certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// Its DNS subject alternative names.
    pub dns_names: BTreeSet<String>,
}

fn cert_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Certificate(format!("{what}: {err}"))
}

impl CaMaterial {
    /// A new CA for a namespace.
    pub fn generate(namespace: &str, now: OffsetDateTime) -> Result<CaMaterial, Error> {
        let key = KeyPair::generate().map_err(|e| cert_error("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "metahook");
        name.push(DnType::CommonName, format!("metahook CA {namespace}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params
            .self_signed(&key)
            .map_err(|e| cert_error("self-signing the CA", e))?;
        Ok(CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// SHA-256 (hex) of the CA certificate's DER.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .map_err(|e| cert_error("reading the CA certificate", e))?;
        Ok(hex::encode(Sha256::digest(&pem.contents)))
    }

    /// Issues a serving certificate for `dns_names`, valid from `now` for `lifetime`.
    pub fn issue(
        &self,
        dns_names: &BTreeSet<String>,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<ServingCertificate, Error> {
        let ca_key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| cert_error("reading the CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)
            .map_err(|e| cert_error("reading the CA certificate", e))?;
        let names: Vec<String> = dns_names.iter().cloned().collect();
        let mut params = CertificateParams::new(names.clone())
            .map_err(|e| cert_error("a subject alternative name", e))?;
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_before = now - BACKDATE;
        let not_after = now + lifetime;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().map_err(|e| cert_error("generating a key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| cert_error("signing the serving certificate", e))?;
        Ok(ServingCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            ca_fingerprint: self.fingerprint()?,
            not_before: truncate_to_second(not_before),
            not_after: truncate_to_second(not_after),
        })
    }
}

/// X.509 times have whole seconds.
fn truncate_to_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Reads the first certificate of a PEM chain.
pub fn inspect(cert_pem: &[u8]) -> Result<CertificateInfo, Error> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem)
        .map_err(|e| cert_error("reading tls.crt as PEM", e))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| cert_error("reading tls.crt as X.509", e))?;
    let mut dns_names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                dns_names.insert((*dns).to_owned());
            }
        }
    }
    Ok(CertificateInfo {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_names,
    })
}

/// When a certificate is renewed: at two thirds of its lifetime.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// Why a serving certificate is (re)issued; `None` keeps the existing one.
pub fn renewal_reason(
    existing: Option<&CertificateInfo>,
    existing_ca_fingerprint: Option<&str>,
    desired_names: &BTreeSet<String>,
    ca_fingerprint: &str,
    now: OffsetDateTime,
) -> Option<&'static str> {
    let Some(info) = existing else {
        return Some("absent");
    };
    if existing_ca_fingerprint != Some(ca_fingerprint) {
        return Some("issued by another CA");
    }
    if &info.dns_names != desired_names {
        return Some("names changed");
    }
    if now >= renew_at(info.not_before, info.not_after) {
        return Some("two thirds of its lifetime passed");
    }
    None
}

/// The DNS names a receiver's certificate carries: its Service's names and the ingress host.
pub fn serving_names(service: &str, namespace: &str, host: Option<&str>) -> BTreeSet<String> {
    let mut names = BTreeSet::from([
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]);
    if let Some(host) = host {
        names.insert(host.to_owned());
    }
    names
}

/// RFC 3339 text of a time, for status fields.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
