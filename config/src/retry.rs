//! How a failing sink's batch is retried before its events become dead letters.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retries of a failing sink: exponential backoff with jitter, then dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per batch before its events go to the dead letters; 0 retries forever.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_max_attempts() -> u32 {
    20
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
