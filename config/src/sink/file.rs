//! The `file` sink's settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The `file` sink's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The JSON-lines file (created if absent, appended to).
    pub path: PathBuf,
}

impl FileSinkConfig {
    /// Any path will do: it is created (with its directories) on open.
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)] // the shape every kind has
    pub(crate) fn validate(&self, _key: &str) -> Result<(), ConfigError> {
        Ok(())
    }
}
