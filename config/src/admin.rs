//! The receiver's admin endpoints (`POST /admin/replay`, docs/replay.md): served on
//! `metrics_listen` only, never on the webhook listener Meta reaches, and only to a caller
//! with the bearer token.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `admin`: enables the admin endpoints on `metrics_listen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the bearer token callers present (`Authorization: Bearer TOKEN`);
    /// re-read at every request, so a rotated Secret takes effect at once. Trailing
    /// whitespace is ignored; an empty or unreadable file refuses every call.
    pub token_file: PathBuf,
}
