//! How a failing sink's batch is retried before its events become dead letters.

use std::time::Duration;

use metahook_backoff::{ExponentialBackoff, InvalidBackoff};
use serde::{Deserialize, Serialize};

/// The wait after a batch's first failed attempt (or `max_backoff` when shorter), and after
/// a failed read of the spool.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The jitter of a sink's waits (±25%), so that sinks and receivers retrying together
/// spread out.
pub const JITTER: f64 = 0.25;

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

impl RetryConfig {
    /// The sink's retry policy: [`FIRST_BACKOFF`] (or `max_backoff` when shorter) doubling
    /// to `max_backoff`, ±[`JITTER`], never longer than `max_backoff`. Refused when
    /// `max_backoff` is 0 (a failing sink would be retried in a hot loop); validation calls
    /// this, so a loaded configuration always has a policy.
    pub fn backoff(&self) -> Result<ExponentialBackoff, InvalidBackoff> {
        ExponentialBackoff::new(
            FIRST_BACKOFF.min(self.max_backoff),
            self.max_backoff,
            JITTER,
        )
    }
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
