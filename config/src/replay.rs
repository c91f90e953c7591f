//! The replay request of the receiver's admin endpoint (`POST /admin/replay`,
//! docs/replay.md): one type for the receiver that serves it, its `replay` command and
//! the operator that drives it for a `WebhookReplay`, so the three never disagree.

use serde::{Deserialize, Serialize};

/// A replay, as `POST /admin/replay` takes it (and `metahook-receiver replay` sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The one sink to deliver to, by its configured name.
    pub sink: String,
    /// Start of the window (RFC 3339, inclusive), on the events' `received_at`.
    pub since: String,
    /// End of the window (RFC 3339, exclusive); absent: up to the newest event held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only events of these `object`s (e.g. `page`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// Only events of these `field`s (e.g. `messages`, `feed`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Only events received on these endpoints (their configured names); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Only events with these ids; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_ids: Vec<String>,
    /// Also re-deliver the sink's dead letters that match (they stay dead letters).
    #[serde(default)]
    pub dead_letters: bool,
    /// Count what matches; deliver nothing.
    #[serde(default)]
    pub dry_run: bool,
}
