//! An ingress that terminated mTLS and passes its verdict in headers.

use serde::{Deserialize, Serialize};

use crate::tls::default_allowed_client_names;

/// An ingress (e.g. ingress-nginx) that terminates mTLS and passes its verdict in headers.
/// Keys `cidrs` and `allowed_client_names` are a contract: keep them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxyConfig {
    /// Peer addresses whose verdict headers are believed; from anywhere else the headers
    /// are rejected (403) and counted.
    pub cidrs: Vec<ipnet::IpNet>,
    /// Names accepted in the subject DN the proxy passes (its CN component).
    #[serde(default = "default_allowed_client_names")]
    pub allowed_client_names: Vec<String>,
    /// Header carrying the proxy's verification result (`SUCCESS` when verified).
    #[serde(default = "default_verify_header")]
    pub verify_header: String,
    /// Header carrying the client certificate's subject DN.
    #[serde(default = "default_subject_header")]
    pub subject_header: String,
}

impl TrustedProxyConfig {
    /// Believe ingress-nginx's default verdict headers from `cidrs`, for Meta's client name.
    pub fn new(cidrs: Vec<ipnet::IpNet>) -> TrustedProxyConfig {
        TrustedProxyConfig {
            cidrs,
            allowed_client_names: default_allowed_client_names(),
            verify_header: default_verify_header(),
            subject_header: default_subject_header(),
        }
    }
}

fn default_verify_header() -> String {
    "ssl-client-verify".to_owned()
}
fn default_subject_header() -> String {
    "ssl-client-subject-dn".to_owned()
}
