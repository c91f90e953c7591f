//! Webhook endpoints: a path, the Meta app's secrets and the objects accepted there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Paths the receiver serves itself; endpoints may not use them.
pub const RESERVED_PATHS: &[&str] = &["/metrics", "/healthz", "/readyz"];

/// One webhook endpoint: a path, the Meta app's secrets and the objects it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// A name for logs, metrics and events (`namespace/name` under the operator).
    pub name: String,
    /// The URL path Meta is pointed at, e.g. `/webhooks/whatsapp`.
    pub path: String,
    /// Objects accepted here; absent = every object. Items of other objects are kept as
    /// `kind: unknown` events with an error note (never dropped: Meta would not resend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<String>>,
    /// File holding the app secret (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_file: Option<PathBuf>,
    /// Environment variable holding the app secret; `VAR:-default` supplies a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_env: Option<String>,
    /// File holding the previous app secret, accepted too during a rotation window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_app_secret_file: Option<PathBuf>,
    /// Environment variable holding the previous app secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_app_secret_env: Option<String>,
    /// File holding the verify token of the GET handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token_file: Option<PathBuf>,
    /// Environment variable holding the verify token; `VAR:-default` supplies a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token_env: Option<String>,
    /// Also accept the legacy `X-Hub-Signature` (HMAC-SHA1) when the SHA-256 header is absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_sha1_signature: bool,
}
