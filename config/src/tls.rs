//! TLS on the webhook listener, and the name Meta's client certificate carries.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name Meta's webhook client certificate carries (CN and DNS SAN).
pub const META_CLIENT_NAME: &str = "client.webhooks.fbclientcerts.com";

/// TLS on the webhook listener. Keys `cert_file`, `key_file`, `mode`, `client_ca_file` and
/// `allowed_client_names` are a contract for tests outside the repository: keep them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to clients (re-read when the file changes).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (re-read when the file changes).
    pub key_file: PathBuf,
    /// `server` (HTTPS only) or `mutual` (the client must present an allowed certificate).
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM bundle of the CAs a client certificate must chain to (`mutual`); Meta's CA is
    /// configuration, never compiled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Names accepted in the client certificate's subject CN or DNS SANs (`mutual`).
    #[serde(default = "default_allowed_client_names")]
    pub allowed_client_names: Vec<String>,
    /// How often the certificate, key and CA files are checked for changes.
    #[serde(default = "default_tls_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// HTTPS with this certificate and key, no client certificates asked for.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> TlsConfig {
        TlsConfig {
            cert_file,
            key_file,
            mode: TlsMode::Server,
            client_ca_file: None,
            allowed_client_names: default_allowed_client_names(),
            reload_interval: default_tls_reload_interval(),
        }
    }
}

/// What the TLS listener demands of clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// HTTPS; clients are not asked for a certificate.
    #[default]
    Server,
    /// HTTPS; webhook requests need a client certificate chaining to `client_ca_file`
    /// whose CN or DNS SAN is in `allowed_client_names`.
    Mutual,
}

pub(crate) fn default_allowed_client_names() -> Vec<String> {
    vec![META_CLIENT_NAME.to_owned()]
}
fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(10)
}
