//! Request limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Request limits. Over a limit the answer is 413, 408 or 503 (Meta retries 5xx later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted body in bytes (Meta documents payloads up to 3 MB).
    #[serde(default = "default_max_body", with = "crate::byte_size")]
    pub max_body_bytes: u64,
    /// Time a client has to send its request headers; then the connection is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send its whole body once headers arrived, however fast it
    /// sends; then 408.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time a body has to arrive, extended while it arrives at `min_body_bytes_per_second`
    /// (never beyond `request_timeout`); a stalled body is cut after it (408).
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Each this many body bytes received extend the body's deadline by one second.
    #[serde(default = "default_min_body_rate", with = "crate::byte_size")]
    pub min_body_bytes_per_second: u64,
    /// Requests processed at once; more get 503 with Retry-After.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Requests in flight from one client address (IPv6: one /64); more get 429. Not
    /// applied to clients verified by `tls.mode: mutual` or `trusted_proxy`.
    #[serde(default = "default_max_in_flight_per_peer")]
    pub max_in_flight_per_peer: usize,
    /// Bytes of request bodies held at once (declared lengths are reserved before reading);
    /// requests that do not fit get 503 with Retry-After before their body is read. Unset:
    /// 32 MiB, or `max_body_bytes` where that is larger ([`Limits::buffered_body_limit`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::byte_size::optional"
    )]
    pub max_buffered_body_bytes: Option<u64>,
    /// Requests' appends waiting for the spool writer at once (an fsync stall keeps them
    /// queued after their handlers timed out); more get 503 with Retry-After. Unset:
    /// `max_in_flight` ([`Limits::queued_request_limit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_requests: Option<usize>,
    /// Bytes of requests' appends waiting for the spool writer at once (one request is
    /// always let in); more get 503 with Retry-After. Unset: the body budget in force
    /// ([`Limits::queued_bytes_limit`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::byte_size::optional"
    )]
    pub max_queued_bytes: Option<u64>,
    /// Seconds suggested in Retry-After on 503.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u32,
    /// Deepest nesting of arrays and objects a body may have; deeper bodies get 400 and
    /// nothing is stored (consumers such as `jq` and Python refuse very deep lines).
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            header_read_timeout: default_header_timeout(),
            request_timeout: default_request_timeout(),
            body_timeout: default_body_timeout(),
            min_body_bytes_per_second: default_min_body_rate(),
            max_in_flight: default_max_in_flight(),
            max_in_flight_per_peer: default_max_in_flight_per_peer(),
            max_buffered_body_bytes: None,
            max_queued_requests: None,
            max_queued_bytes: None,
            retry_after_seconds: default_retry_after(),
            max_json_depth: default_max_json_depth(),
        }
    }
}

fn default_max_body() -> u64 {
    4 * 1024 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_min_body_rate() -> u64 {
    64 * 1024
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_max_in_flight_per_peer() -> usize {
    128
}
/// `limits.max_buffered_body_bytes` when unset (and `max_body_bytes` is not larger).
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: u64 = 32 * 1024 * 1024;

impl Limits {
    /// The budget of buffered body bytes in force: `max_buffered_body_bytes`, or when unset
    /// 32 MiB, raised to `max_body_bytes` so that a configuration written before the budget
    /// existed keeps accepting its largest bodies.
    pub fn buffered_body_limit(&self) -> u64 {
        self.max_buffered_body_bytes
            .unwrap_or_else(|| DEFAULT_MAX_BUFFERED_BODY_BYTES.max(self.max_body_bytes))
    }

    /// The spool's append queue bound in requests: `max_queued_requests`, or when unset
    /// `max_in_flight` (what the queue holds when no handler gave up).
    pub fn queued_request_limit(&self) -> usize {
        self.max_queued_requests.unwrap_or(self.max_in_flight)
    }

    /// The spool's append queue bound in bytes: `max_queued_bytes`, or when unset the body
    /// budget in force (what the queue holds when no handler gave up).
    pub fn queued_bytes_limit(&self) -> u64 {
        self.max_queued_bytes
            .unwrap_or_else(|| self.buffered_body_limit())
    }
}
fn default_retry_after() -> u32 {
    5
}
fn default_max_json_depth() -> usize {
    128
}
