//! How accepted events reach the sinks: through the spool, or directly before the 200.

use serde::{Deserialize, Serialize};

/// How accepted events reach the sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// `spool` or `direct`.
    #[serde(default)]
    pub mode: DeliveryMode,
}

impl DeliveryConfig {
    pub(crate) fn is_default(&self) -> bool {
        *self == DeliveryConfig::default()
    }
}

/// The delivery mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// 200 once the events are fsync'd in the spool; sinks consume it independently.
    #[default]
    Spool,
    /// No spool: 200 once every sink acknowledged the events, 503 (Meta retries) when one
    /// did not. For sinks that are durable themselves (e.g. JetStream with replicas).
    Direct,
}
