//! Reading the TLS files into what rustls uses: the serving certificate chain with its key,
//! the client CA bundle as a WebPKI client verifier, and the server configuration made of
//! both. Every error names the configuration key and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("config: {key}: cannot read {}: {source}", path.display())]
    Read {
        /// The configuration key naming the file, e.g. `tls.cert_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but does not hold what the key asks for.
    #[error("config: {key}: {}: {message}", path.display())]
    Invalid {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file the configuration needs is not named.
    #[error("config: {key}: {message}")]
    Missing {
        /// The configuration key.
        key: &'static str,
        /// What it is needed for.
        message: &'static str,
    },
    /// rustls refused the assembled configuration.
    #[error("config: tls: cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The configuration key of the serving certificate chain.
pub const CERT_KEY: &str = "tls.cert_file";
/// The configuration key of its private key.
pub const KEY_KEY: &str = "tls.key_file";
/// The configuration key of the client CA bundle.
pub const CA_KEY: &str = "tls.client_ca_file";

/// The bytes of `path`, the file configured under `key`.
pub fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn invalid(key: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Every CERTIFICATE block of a PEM file (at least one).
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// The serving chain of `cert_pem` with the private key of `key_pem`, checked to belong
/// together (a key that does not match its certificate would fail every handshake).
pub fn certified_key(
    (cert_path, cert_pem): (&Path, &[u8]),
    (key_path, key_pem): (&Path, &[u8]),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(CERT_KEY, cert_path, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        invalid(
            KEY_KEY,
            key_path,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|err| match err {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => invalid(
            KEY_KEY,
            key_path,
            format!(
                "does not match the certificate in {CERT_KEY} {}",
                cert_path.display()
            ),
        ),
        other => invalid(KEY_KEY, key_path, format!("cannot be used: {other}")),
    })
}

/// A verifier of client certificates against the CA bundle `pem`. Client authentication is
/// offered, not required (`allow_unauthenticated`): the HTTP layer demands a certificate on
/// the endpoint paths only, so probes and Prometheus without one reach /healthz, /readyz
/// and /metrics (see `crate::client_auth`).
pub fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (n, cert) in certificates(CA_KEY, path, pem)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            invalid(
                CA_KEY,
                path,
                format!("certificate {} is not a usable CA certificate: {e}", n + 1),
            )
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid(CA_KEY, path, format!("cannot verify clients with it: {e}")))
}

/// A server configuration serving `certified` (TLS 1.3 and 1.2, HTTP/1.1 by ALPN) and, with
/// a verifier, asking clients for a certificate.
pub fn server_config(
    certified: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
