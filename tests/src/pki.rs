//! Certificates for the TLS tests and the bench, generated with rcgen at run time: a CA,
//! serving certificates for 127.0.0.1 / localhost (rustls ignores a server certificate's CN,
//! so the names are SANs), client certificates with Meta's name or another, expired ones,
//! and the rustls client configurations that present them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use metahook_receiver::config::META_CLIENT_NAME;

/// Serial numbers unique within the process, so each certificate is told apart.
static SERIAL: AtomicU64 = AtomicU64::new(1);

fn next_serial() -> SerialNumber {
    SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed))
}

/// A certificate authority that issues the other certificates.
#[derive(Debug)]
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A certificate with its private key.
#[derive(Debug)]
pub struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A client certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 2020 until 4096.
    Current,
    /// Expired at the end of 2021.
    Expired,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca> {
        let key = KeyPair::generate().context("generating a CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "metahook tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(next_serial());
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Ca { params, key, cert })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn issue(&self, params: &CertificateParams) -> Result<Leaf> {
        let key = KeyPair::generate().context("generating a key")?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).context("signing")?;
        Ok(Leaf { cert, key })
    }

    /// A serving certificate for `127.0.0.1` and `localhost`, with `cn` as its subject CN.
    pub fn server(&self, cn: &str) -> Result<Leaf> {
        self.server_for(cn, &["127.0.0.1", "localhost"])
    }

    /// A serving certificate naming exactly `names` (DNS names or IP addresses), with `cn`
    /// as its subject CN.
    pub fn server_for(&self, cn: &str, names: &[&str]) -> Result<Leaf> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).context("server params")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(next_serial());
        self.issue(&params)
    }

    /// A client certificate with subject CN `cn` (and the same DNS SAN when `san`).
    pub fn client(&self, cn: &str, san: bool, validity: Validity) -> Result<Leaf> {
        let names = if san { vec![cn.to_owned()] } else { Vec::new() };
        let mut params = CertificateParams::new(names).context("client params")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Meta Platforms, Inc.");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(next_serial());
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 12, 31);
        } else {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        }
        self.issue(&params)
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> Result<PathBuf> {
        std::fs::write(path, self.pem()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_owned())
    }
}

impl Leaf {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The certificate, DER (to compare with what a server presented).
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, self.cert_pem())
            .with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, self.key_pem())
            .with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }
}

/// The TLS versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2 (rustls' default).
    Both,
    /// TLS 1.2 only.
    Tls12,
}

/// A client configuration trusting `roots` and presenting `identity` when asked.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&Leaf>,
    versions: Versions,
) -> Result<Arc<ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).context("adding a root")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("protocol versions")?
        .with_root_certificates(store);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der()], leaf.key_der())
            .context("client certificate")?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
