//! The durable spool's settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the spool lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool database (created if absent).
    pub dir: PathBuf,
    /// How long accepted requests are remembered, to store a redelivery of the same signed
    /// body once (Meta resends what it saw no 200 for); 0 disables.
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most requests remembered for dedup (oldest forgotten first), bounding memory.
    #[serde(default = "default_dedup_max_entries")]
    pub dedup_max_entries: usize,
    /// Most bytes of undelivered events the spool holds; beyond it requests get 503 with
    /// Retry-After (Meta retries) until the sinks catch up. 0: no limit.
    #[serde(default, with = "crate::byte_size")]
    pub max_bytes: u64,
    /// Size at which a new segment file is started (compaction deletes whole segments).
    #[serde(default = "default_segment_bytes", with = "crate::byte_size")]
    pub segment_bytes: u64,
    /// Most requests committed together in one fsync (group commit).
    #[serde(default = "default_max_group")]
    pub max_group_requests: usize,
    /// How long a group commit may wait for requests that are being verified and
    /// normalized right now, so they share its fsync. Never waits when none are.
    #[serde(default = "default_group_commit_wait", with = "humantime_serde")]
    pub group_commit_wait: Duration,
    /// Whether one delivered segment is kept and the next segment written over it (space
    /// already allocated and synced), so a group commit's fsync needs no journal commit.
    /// Off: delivered segments are deleted and new ones appended to.
    #[serde(default = "default_preallocate_segments")]
    pub preallocate_segments: bool,
    /// How long `run` waits for the spool's lock when another process holds it (a
    /// `drain` Job delivering this volume's backlog, or a receiver still stopping);
    /// absent: as long as it takes. `0s` refuses to start at once, as before waiting
    /// existed. While it waits, `/healthz` answers 200 and `/readyz` 503.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub lock_wait: Option<Duration>,
    /// Keep delivered events for `metahook-receiver replay` (docs/replay.md); absent: a
    /// segment is deleted as soon as every sink has delivered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionConfig>,
}

/// How long delivered events stay in the event log for replay. Whole segments are kept:
/// a segment every sink has delivered is deleted once its newest event is older than
/// `max_age`, or, oldest first, while the retained segments hold more than `max_bytes`.
/// Retained bytes do not count against `spool.max_bytes` (that limit is about undelivered
/// events), so size the volume for both (docs/operations.md, "Spool sizing").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delivered events younger than this are kept; absent: no time limit (then
    /// `max_bytes` is required).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub max_age: Option<Duration>,
    /// Most bytes of delivered events kept; 0 or absent: no byte limit (then `max_age` is
    /// required).
    #[serde(default, with = "crate::byte_size")]
    pub max_bytes: u64,
}

impl RetentionConfig {
    /// What is wrong with these settings, as (key under `spool.retention`, why).
    pub fn problem(&self, segment_bytes: u64) -> Option<(&'static str, String)> {
        if self.max_age.is_none() && self.max_bytes == 0 {
            return Some((
                "",
                "set max_age, max_bytes or both (omit spool.retention to keep nothing)".into(),
            ));
        }
        if self.max_age == Some(Duration::ZERO) {
            return Some((
                ".max_age",
                "must be above 0s (omit it to keep by bytes only)".into(),
            ));
        }
        if self.max_bytes != 0 && self.max_bytes < segment_bytes {
            return Some((
                ".max_bytes",
                format!(
                    "{} is below spool.segment_bytes ({segment_bytes}): whole segments are kept",
                    self.max_bytes
                ),
            ));
        }
        None
    }
}

impl SpoolConfig {
    /// A spool in `dir` with the default limits.
    pub fn new(dir: PathBuf) -> SpoolConfig {
        SpoolConfig {
            dir,
            dedup_window: default_dedup_window(),
            dedup_max_entries: default_dedup_max_entries(),
            max_bytes: 0,
            segment_bytes: default_segment_bytes(),
            max_group_requests: default_max_group(),
            group_commit_wait: default_group_commit_wait(),
            preallocate_segments: default_preallocate_segments(),
            lock_wait: None,
            retention: None,
        }
    }
}

fn default_dedup_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_dedup_max_entries() -> usize {
    100_000
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_group_commit_wait() -> Duration {
    Duration::from_millis(1)
}
fn default_preallocate_segments() -> bool {
    true
}
fn default_max_group() -> usize {
    1024
}
