//! The receiver's configuration (YAML).
//!
//! These types are the contract between the receiver and the operator, which writes them
//! into a ConfigMap: share the types, never re-declare them. Keys named in the receiver-core
//! issue (`listen`, `endpoints[].{name,path,objects,app_secret_file,app_secret_env,
//! previous_app_secret_file,verify_token_file,verify_token_env}`, `spool.dir`,
//! `sinks[].{name,file.path}`) are relied on by tests outside the repository: keep them.
//! docs/configuration.md describes every key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::sink::file::FileSinkConfig;
pub use crate::sink::http::{HttpHeaderConfig, HttpSinkConfig};
use crate::sink::kind::SinkEntry;
pub use crate::sink::kind::SinkKind;
pub use crate::sink::nats::{NatsSinkConfig, SUBJECT_PLACEHOLDERS};
pub use crate::sink::postgres::PostgresSinkConfig;
pub use crate::sink::postgres_tls::SslMode;

/// Paths the receiver serves itself; endpoints may not use them.
pub const RESERVED_PATHS: &[&str] = &["/metrics", "/healthz", "/readyz"];

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; serves the endpoints and /metrics, /healthz, /readyz.
    /// `IP:PORT`, `HOST:PORT` (resolved at load) or `:PORT` ([`parse_listen`]).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Webhook endpoints, one per Meta app (path + secrets).
    pub endpoints: Vec<EndpointConfig>,
    /// The durable spool every accepted event is written to before the 200.
    pub spool: SpoolConfig,
    /// Spool the events (default), or deliver them to every sink before answering.
    #[serde(default, skip_serializing_if = "DeliveryConfig::is_default")]
    pub delivery: DeliveryConfig,
    /// Where spooled events are delivered.
    #[serde(default, deserialize_with = "crate::sink::kind::deserialize_sinks")]
    pub sinks: Vec<SinkConfig>,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// Log message text (and other personal content)? Off by default.
    #[serde(default)]
    pub log_message_text: bool,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long SIGTERM keeps accepting after /readyz turns 503, so load balancers and
    /// Kubernetes endpoints stop routing here before the listener closes.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// How often secret files are re-read (rotation without restart).
    #[serde(default = "default_secret_reload_interval", with = "humantime_serde")]
    pub secret_reload_interval: Duration,
    /// Serve HTTPS (and optionally require Meta's client certificate) on `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Accept the client-certificate verdict of an ingress that terminated mTLS, only from
    /// these addresses (instead of `tls.mode: mutual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxy: Option<TrustedProxyConfig>,
    /// A second, plain-HTTP listener serving only /metrics, /healthz and /readyz, for
    /// Prometheus and kubelet probes when `listen` requires a client certificate.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "metrics_listen_address"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Optional enrichment of events before the sinks (Lead Ads answers; see
    /// [`crate::enrich`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<crate::enrich::EnrichmentConfig>,
}

/// A listen address as written in the configuration: `IP:PORT` (`127.0.0.1:8080`,
/// `[::1]:8080`), `HOST:PORT` (`localhost:8080`, resolved now; its first IPv4 address when it
/// has one, since that is what `localhost` users curl) or `:PORT` (every IPv4 interface,
/// `0.0.0.0:PORT`).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let expected = || format!("expected HOST:PORT, :PORT or IP:PORT, got `{text}`");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let hostname = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !hostname {
        return Err(expected());
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|err| format!("cannot resolve `{host}` (from `{text}`): {err}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` (from `{text}`) resolves to no address"))
}

/// An address key's value, whatever YAML type it has (`listen: 18080` is an integer to the
/// parser, and deserves the same message as any other wrong address).
fn address(key: &str, value: &serde_json::Value) -> Result<SocketAddr, String> {
    let text = match value {
        serde_json::Value::String(text) => text.trim().to_owned(),
        other => other.to_string(),
    };
    parse_listen(&text).map_err(|message| format!("{key}: {message}"))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    address("listen", &value).map_err(serde::de::Error::custom)
}

fn metrics_listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => address("metrics_listen", &value)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl Config {
    /// A configuration with every optional key at its default (what an empty YAML key
    /// means), for programs that build one (the operator, tests).
    pub fn new(listen: SocketAddr, endpoints: Vec<EndpointConfig>, spool: SpoolConfig) -> Config {
        Config {
            listen,
            endpoints,
            spool,
            delivery: DeliveryConfig::default(),
            sinks: Vec::new(),
            limits: Limits::default(),
            log_message_text: false,
            shutdown_grace: default_shutdown_grace(),
            shutdown_delay: Duration::ZERO,
            secret_reload_interval: default_secret_reload_interval(),
            tls: None,
            trusted_proxy: None,
            metrics_listen: None,
            enrichment: None,
        }
    }
}

/// The name Meta's webhook client certificate carries (CN and DNS SAN).
pub const META_CLIENT_NAME: &str = "client.webhooks.fbclientcerts.com";

/// TLS on the webhook listener. Keys `cert_file`, `key_file`, `mode`, `client_ca_file` and
/// `allowed_client_names` are a contract for tests outside the repository: keep them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to clients (re-read when the file changes).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (re-read when the file changes).
    pub key_file: PathBuf,
    /// `server` (HTTPS only) or `mutual` (the client must present an allowed certificate).
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM bundle of the CAs a client certificate must chain to (`mutual`); Meta's CA is
    /// configuration, never compiled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Names accepted in the client certificate's subject CN or DNS SANs (`mutual`).
    #[serde(default = "default_allowed_client_names")]
    pub allowed_client_names: Vec<String>,
    /// How often the certificate, key and CA files are checked for changes.
    #[serde(default = "default_tls_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// HTTPS with this certificate and key, no client certificates asked for.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> TlsConfig {
        TlsConfig {
            cert_file,
            key_file,
            mode: TlsMode::Server,
            client_ca_file: None,
            allowed_client_names: default_allowed_client_names(),
            reload_interval: default_tls_reload_interval(),
        }
    }
}

/// What the TLS listener demands of clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// HTTPS; clients are not asked for a certificate.
    #[default]
    Server,
    /// HTTPS; webhook requests need a client certificate chaining to `client_ca_file`
    /// whose CN or DNS SAN is in `allowed_client_names`.
    Mutual,
}

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

fn default_allowed_client_names() -> Vec<String> {
    vec![META_CLIENT_NAME.to_owned()]
}
fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_verify_header() -> String {
    "ssl-client-verify".to_owned()
}
fn default_subject_header() -> String {
    "ssl-client-subject-dn".to_owned()
}

/// How accepted events reach the sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// `spool` or `direct`.
    #[serde(default)]
    pub mode: DeliveryMode,
}

impl DeliveryConfig {
    fn is_default(&self) -> bool {
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
    #[serde(default, with = "byte_size")]
    pub max_bytes: u64,
    /// Size at which a new segment file is started (compaction deletes whole segments).
    #[serde(default = "default_segment_bytes", with = "byte_size")]
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
        }
    }
}

/// One delivery target: a name, exactly one kind, and its retries. In YAML the kind is the
/// one key among `file`, `nats`, `postgres`, `http` ([`SinkKind`] lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SinkEntry", into = "SinkEntry")]
pub struct SinkConfig {
    /// Names the sink's cursor in the spool, its metrics and its logs.
    pub name: String,
    /// What the sink is, with its own settings.
    pub kind: SinkKind,
    /// How a failing batch is retried before its events become dead letters.
    pub retry: RetryConfig,
}

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

/// Request limits. Over a limit the answer is 413, 408 or 503 (Meta retries 5xx later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted body in bytes (Meta documents payloads up to 3 MB).
    #[serde(default = "default_max_body", with = "byte_size")]
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
    #[serde(default = "default_min_body_rate", with = "byte_size")]
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
        with = "byte_size::optional"
    )]
    pub max_buffered_body_bytes: Option<u64>,
    // --- Added by the `serve` branch (issue 23): the spool's append queue bound. ---
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
        with = "byte_size::optional"
    )]
    pub max_queued_bytes: Option<u64>,
    // --- End of the `serve` branch's fields. ---
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

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(25)
}
fn default_secret_reload_interval() -> Duration {
    Duration::from_secs(2)
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

/// A byte size as written in the configuration: a whole number of bytes (`4194304`), or a
/// whole number and a unit, with or without a space, in any case: `KiB`, `MiB`, `GiB` (also
/// `Ki`, `Mi`, `Gi`, as in Kubernetes quantities) count 1024, 1024², 1024³ bytes; `kB`, `MB`,
/// `GB` (also `k`, `M`, `G`) count 1000, 1000², 1000³; `B` counts one.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let refuse = || {
        format!(
            "`{text}` is not a byte size: write bytes (4194304) or a whole number and a unit: \
             4MiB, 512KiB (1024-based), 4MB, 500kB (1000-based)"
        )
    };
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| refuse())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        _ => return Err(refuse()),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is more bytes than this receiver can count"))
}

/// `serde(with)` for byte sizes ([`parse_byte_size`]): read from a number or a string with
/// a unit, written as a number of bytes (what the operator writes).
mod byte_size {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn from_value(value: &serde_json::Value) -> Result<u64, String> {
        match value {
            // A negative or fractional number gets the same message as text.
            serde_json::Value::Number(n) => n
                .as_u64()
                .map_or_else(|| super::parse_byte_size(&n.to_string()), Ok),
            serde_json::Value::String(text) => super::parse_byte_size(text),
            other => super::parse_byte_size(&other.to_string()),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        from_value(&value).map_err(serde::de::Error::custom)
    }

    pub(super) fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*bytes)
    }

    /// The same, for an optional size.
    pub(super) mod optional {
        use serde::{Deserialize as _, Deserializer, Serializer};

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u64>, D::Error> {
            match Option::<serde_json::Value>::deserialize(deserializer)? {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => super::from_value(&value)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
            }
        }

        pub(in super::super) fn serialize<S: Serializer>(
            bytes: &Option<u64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => serializer.serialize_some(bytes),
                None => serializer.serialize_none(),
            }
        }
    }
}

/// Messages for the person editing the file: serde-saphyr's user-facing messages, and in
/// place of the ones written for programmers (a duplicate key's "set DuplicateKeyPolicy in
/// Options", "invalid u64", "expected a duration") what is wrong and how to write it.
struct Messages<'a> {
    /// The YAML text (to find where a duplicated key was first set).
    text: &'a str,
}

impl serde_saphyr::MessageFormatter for Messages<'_> {
    fn format_message<'e>(&self, err: &'e serde_saphyr::Error) -> std::borrow::Cow<'e, str> {
        use serde_saphyr::Error;
        match err {
            Error::DuplicateMappingKey {
                key: Some(key),
                location,
            } => match first_set(self.text, key, *location) {
                Some(line) => format!("`{key}` is set twice (first on line {line}); keep one"),
                None => format!("`{key}` is set twice in this mapping; keep one"),
            }
            .into(),
            Error::DuplicateMappingKey { key: None, .. } => {
                "a key is set twice in this mapping; keep one".into()
            }
            Error::SerdeInvalidValue {
                unexpected,
                expected,
                ..
            }
            | Error::SerdeInvalidType {
                unexpected,
                expected,
                ..
            } if expected == "a duration" => {
                let value = unexpected
                    .strip_prefix("string ")
                    .or_else(|| unexpected.strip_prefix("integer "))
                    .unwrap_or(unexpected)
                    .trim_matches('"');
                format!(
                    "`{value}` is not a duration: write a number and a unit, e.g. 5s, 500ms, \
                     2m or 1h"
                )
                .into()
            }
            Error::InvalidScalar { ty, .. }
                if matches!(*ty, "u8" | "u16" | "u32" | "u64" | "u128" | "usize") =>
            {
                "not a whole number: write digits, e.g. 1024".into()
            }
            _ => serde_saphyr::UserMessageFormatter.format_message(err),
        }
    }
}

/// The line where `key`, reported duplicated at `at`, was first set in the same block
/// mapping (same column, no line of a shallower or sibling mapping in between).
fn first_set(text: &str, key: &str, at: serde_saphyr::Location) -> Option<u64> {
    let duplicate = usize::try_from(at.line()).ok()?;
    let column = usize::try_from(at.column()).ok()?.checked_sub(1)?;
    let before: Vec<&str> = text.lines().take(duplicate.checked_sub(1)?).collect();
    for (index, line) in before.iter().enumerate().rev() {
        let mut rest = line.trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let mut item = false;
        while let Some(after) = rest.strip_prefix('-') {
            if !after.starts_with(' ') {
                break;
            }
            rest = after.trim_start();
            item = true;
        }
        let start = line.len() - rest.len();
        if start < column {
            return None;
        }
        if start == column {
            let sets_key = rest
                .strip_prefix(key)
                .is_some_and(|after| after.trim_start().starts_with(':'));
            if sets_key {
                return Some(index as u64 + 1);
            }
            if item {
                // The mapping began on this list item's line.
                return None;
            }
        }
    }
    None
}

/// A configuration that cannot be used, naming the file and the bad key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid YAML, or a key has the wrong type or is unknown.
    #[error("{}{message}", in_file(path))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The file is a Kubernetes resource (a WebhookSubscription, say), not a receiver
    /// configuration.
    #[error(
        "{path} is a Kubernetes resource ({kind}), not a receiver configuration: apply it with \
         `kubectl apply -f {path}` (the operator runs the receivers it describes); --config and \
         check-config read a receiver configuration such as examples/local.yaml"
    )]
    KubernetesResource {
        /// The file.
        path: PathBuf,
        /// Its `kind` (and `apiVersion`).
        kind: String,
    },
    /// A value is not acceptable.
    #[error("config: {key}: {message}")]
    Invalid {
        /// The key, e.g. `endpoints[1].path`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `config file PATH: `, or `config: ` for text that came from no file.
fn in_file(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "config: ".to_owned()
    } else {
        format!("config file {}: ", path.display())
    }
}

/// `Kind (apiVersion)` when `text` is a Kubernetes resource: top-level `apiVersion` and
/// `kind`, which no receiver configuration has (read only after the configuration failed to
/// parse, to say what the file is instead).
fn kubernetes_kind(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Resource {
        #[serde(rename = "apiVersion")]
        api_version: String,
        kind: String,
    }
    // A multi-document file (`---`): its first document tells.
    let first = serde_saphyr::from_multiple::<serde_json::Value>(text)
        .ok()
        .and_then(|docs| docs.into_iter().next())?;
    let resource: Resource = serde_json::from_value(first).ok()?;
    Some(format!("{} {}", resource.kind, resource.api_version))
}

/// A [`ConfigError::Invalid`] naming `key`.
pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_from(&text, Some(path))
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_from(text, None)
    }

    /// Parses and validates YAML text read from `path` (named in errors and their snippets).
    fn parse_from(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            if let Some(kind) = kubernetes_kind(text) {
                return ConfigError::KubernetesResource {
                    path: path.map_or_else(|| PathBuf::from("the file"), Path::to_owned),
                    kind,
                };
            }
            let shown = path.map(|p| p.display().to_string());
            let messages = Messages { text };
            let mut options = serde_saphyr::RenderOptions::new(&messages);
            options.source_name = Some(shown.as_deref().unwrap_or("config"));
            let rendered = e.render_with_options(options);
            // The snippet's heading is `error: line L column C: …`: the `error: ` is said
            // once, by whoever prints the error.
            let message = rendered.strip_prefix("error: ").unwrap_or(&rendered);
            ConfigError::Parse {
                path: path.map(Path::to_owned).unwrap_or_default(),
                message: message.to_owned(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as YAML (what the operator writes into a ConfigMap).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| invalid("(serialize)", e.to_string()))
    }

    /// Checks what serde cannot: uniqueness, one source per secret, path syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid("endpoints", "at least one endpoint is required"));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = |k: &str| format!("endpoints[{i}].{k}");
            if endpoint.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(endpoint.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is used by another endpoint", endpoint.name),
                ));
            }
            let path = endpoint.path.as_str();
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err(invalid(
                    key("path"),
                    format!("{path:?} must start with '/' and hold no '?', '#' or spaces"),
                ));
            }
            if RESERVED_PATHS.contains(&path) {
                return Err(invalid(
                    key("path"),
                    format!("{path} is served by the receiver itself"),
                ));
            }
            if !paths.insert(path) {
                return Err(invalid(
                    key("path"),
                    format!("{path} is used by another endpoint"),
                ));
            }
            exactly_one(
                &key("app_secret_file"),
                &key("app_secret_env"),
                &endpoint.app_secret_file,
                &endpoint.app_secret_env,
                true,
            )?;
            exactly_one(
                &key("previous_app_secret_file"),
                &key("previous_app_secret_env"),
                &endpoint.previous_app_secret_file,
                &endpoint.previous_app_secret_env,
                false,
            )?;
            exactly_one(
                &key("verify_token_file"),
                &key("verify_token_env"),
                &endpoint.verify_token_file,
                &endpoint.verify_token_env,
                true,
            )?;
            if let Some(objects) = &endpoint.objects {
                if objects.is_empty() {
                    return Err(invalid(
                        key("objects"),
                        "an empty list accepts nothing; omit it to accept every object",
                    ));
                }
                for object in objects {
                    check_object(&key("objects"), object)?;
                }
            }
        }
        let mut sink_names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if sink.name.trim().is_empty() || sink.name.contains(['/', ' ']) {
                return Err(invalid(
                    format!("sinks[{i}].name"),
                    "must be non-empty, without '/' or spaces",
                ));
            }
            if !sink_names.insert(sink.name.as_str()) {
                return Err(invalid(
                    format!("sinks[{i}].name"),
                    format!("{:?} is used by another sink", sink.name),
                ));
            }
            sink.kind.validate(i)?;
        }
        if self.delivery.mode == DeliveryMode::Direct && self.sinks.is_empty() {
            return Err(invalid(
                "delivery.mode",
                "direct delivery needs at least one sink",
            ));
        }
        if self.spool.segment_bytes < 4096 {
            return Err(invalid("spool.segment_bytes", "must be at least 4096"));
        }
        if self.spool.max_group_requests == 0 {
            return Err(invalid("spool.max_group_requests", "must be at least 1"));
        }
        if self.limits.max_in_flight == 0 {
            return Err(invalid("limits.max_in_flight", "must be at least 1"));
        }
        if self.limits.max_json_depth < 16 {
            return Err(invalid(
                "limits.max_json_depth",
                "must be at least 16 (Meta's payloads nest about 10 levels deep)",
            ));
        }
        self.validate_limits()?;
        self.validate_tls()?;
        if let Some(enrichment) = &self.enrichment {
            enrichment.validate()?;
            if self.delivery.mode == DeliveryMode::Direct {
                return Err(invalid(
                    "enrichment",
                    "needs delivery.mode: spool (direct mode delivers before the 200, and enrichment must never delay Meta's request)",
                ));
            }
        }
        // Port 0 picks a free port for each listener, so both may say 127.0.0.1:0.
        if self.metrics_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(invalid(
                "metrics_listen",
                "must differ from listen (it is a second listener)",
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1"));
        }
        if limits.max_in_flight_per_peer == 0 {
            return Err(invalid(
                "limits.max_in_flight_per_peer",
                "must be at least 1",
            ));
        }
        if let Some(budget) = limits.max_buffered_body_bytes
            && budget < limits.max_body_bytes
        {
            return Err(invalid(
                "limits.max_buffered_body_bytes",
                format!(
                    "{budget} is less than limits.max_body_bytes ({}): a body of the largest \
                     size could never be read",
                    limits.max_body_bytes
                ),
            ));
        }
        if limits.max_queued_requests == Some(0) {
            return Err(invalid("limits.max_queued_requests", "must be at least 1"));
        }
        if limits.max_queued_bytes == Some(0) {
            return Err(invalid("limits.max_queued_bytes", "must be at least 1"));
        }
        if limits.body_timeout.is_zero() {
            return Err(invalid("limits.body_timeout", "must be more than 0"));
        }
        if limits.min_body_bytes_per_second == 0 {
            return Err(invalid(
                "limits.min_body_bytes_per_second",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls {
            if tls.mode == TlsMode::Mutual {
                if tls.client_ca_file.is_none() {
                    return Err(invalid(
                        "tls.client_ca_file",
                        "tls.mode: mutual needs the CA bundle client certificates chain to",
                    ));
                }
                if tls.allowed_client_names.is_empty() {
                    return Err(invalid(
                        "tls.allowed_client_names",
                        "tls.mode: mutual needs at least one accepted name",
                    ));
                }
                if self.trusted_proxy.is_some() {
                    return Err(invalid(
                        "trusted_proxy",
                        "choose one: tls.mode: mutual checks the certificate itself, \
                         trusted_proxy believes an ingress that checked it",
                    ));
                }
            }
            if tls.reload_interval.is_zero() {
                return Err(invalid("tls.reload_interval", "must be more than 0"));
            }
        }
        if let Some(proxy) = &self.trusted_proxy {
            if proxy.cidrs.is_empty() {
                return Err(invalid(
                    "trusted_proxy.cidrs",
                    "at least one address range is required",
                ));
            }
            if proxy.allowed_client_names.is_empty() {
                return Err(invalid(
                    "trusted_proxy.allowed_client_names",
                    "at least one accepted name is required",
                ));
            }
            for (key, header) in [
                ("trusted_proxy.verify_header", &proxy.verify_header),
                ("trusted_proxy.subject_header", &proxy.subject_header),
            ] {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(invalid(key, format!("{header:?} is not a header name")));
                }
            }
        }
        Ok(())
    }
}

/// An endpoint's `objects` item must be a Meta object name: a platform name there
/// (`whatsapp`) would make every item of that platform an `unknown` event.
fn check_object(key: &str, object: &str) -> Result<(), ConfigError> {
    if crate::normalize::is_documented_object(object) {
        return Ok(());
    }
    let suggestion = match object.to_ascii_lowercase().as_str() {
        "whatsapp" | "wa" | "waba" | "whatsapp_business" | "whatsapp_business_api" => {
            Some("whatsapp_business_account")
        }
        "facebook" | "fb" | "messenger" | "pages" | "facebook_page" | "facebook_pages" => {
            Some("page")
        }
        "ig" | "insta" | "instagram_messaging" | "instagram_direct" => Some("instagram"),
        "users" => Some("user"),
        "permission" => Some("permissions"),
        "app" | "applications" => Some("application"),
        lower if crate::normalize::is_documented_object(lower) => {
            // Meta's names are lowercase.
            crate::normalize::documented_objects()
                .into_iter()
                .find(|known| *known == lower)
        }
        _ => None,
    };
    let hint = match suggestion {
        Some(name) => format!("; did you mean `{name}`?"),
        None => String::new(),
    };
    Err(invalid(
        key,
        format!(
            "`{object}` is not a Meta webhook object{hint} (Meta's objects: {})",
            crate::normalize::documented_objects().join(", ")
        ),
    ))
}

fn exactly_one<A, B>(
    key_a: &str,
    key_b: &str,
    a: &Option<A>,
    b: &Option<B>,
    required: bool,
) -> Result<(), ConfigError> {
    match (a.is_some(), b.is_some()) {
        (true, true) => Err(invalid(
            key_a,
            format!("set either {key_a} or {key_b}, not both"),
        )),
        (false, false) if required => Err(invalid(
            key_a,
            format!("one of {key_a} or {key_b} is required"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r"
listen: 127.0.0.1:8080
endpoints:
  - name: meta
    path: /webhooks/meta
    objects: [whatsapp_business_account, page, instagram]
    app_secret_file: secrets/app-secret
    previous_app_secret_file: secrets/old
    verify_token_file: secrets/verify-token
spool:
  dir: data/spool
sinks:
  - name: local
    file: {path: data/events.jsonl}
";

    #[test]
    fn the_contract_example_parses_with_defaults() {
        let config = Config::parse(CONTRACT).expect("contract config");
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.endpoints[0].path, "/webhooks/meta");
        assert_eq!(config.limits.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(
            match &config.sinks[0].kind {
                SinkKind::File(file) => Some(file.path.clone()),
                _ => None,
            },
            Some(PathBuf::from("data/events.jsonl"))
        );
    }

    #[test]
    fn enrichment_needs_the_spool() {
        let enriched = format!(
            "{CONTRACT}enrichment:\n  lead_ads:\n    page_tokens:\n      - {{page_id: '1', token_env: T}}\n"
        );
        Config::parse(&enriched).expect("enrichment in spool mode");
        let direct = format!("{enriched}delivery: {{mode: direct}}\n");
        let err = Config::parse(&direct).expect_err("direct").to_string();
        assert!(
            err.contains("enrichment") && err.contains("delivery.mode: spool"),
            "{err}"
        );
    }

    #[test]
    fn byte_sizes_take_units_and_say_the_forms_otherwise() {
        for (text, bytes) in [
            ("4194304", 4_194_304),
            ("4MiB", 4 << 20),
            ("4 MiB", 4 << 20),
            ("4mi", 4 << 20),
            ("4MB", 4_000_000),
            ("500kB", 500_000),
            ("64Ki", 64 << 10),
            ("1GiB", 1 << 30),
            ("10B", 10),
        ] {
            assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
        }
        for text in ["4 parsecs", "MiB", "-1", "1.5MiB", ""] {
            assert_eq!(
                parse_byte_size(text),
                Err(format!(
                    "`{text}` is not a byte size: write bytes (4194304) or a whole number and \
                     a unit: 4MiB, 512KiB (1024-based), 4MB, 500kB (1000-based)"
                )),
                "{text}"
            );
        }
        assert_eq!(
            parse_byte_size("99999999999GiB"),
            Err("`99999999999GiB` is more bytes than this receiver can count".to_owned())
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let config = Config::parse(CONTRACT).expect("contract config");
        let yaml = config.to_yaml().expect("yaml");
        assert_eq!(Config::parse(&yaml).expect("reparse"), config);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let typo = CONTRACT.replace("app_secret_file:", "app_secert_file:");
        let err = Config::parse(&typo).expect_err("typo").to_string();
        assert!(err.contains("app_secert_file"), "{err}");

        let both = CONTRACT.replace(
            "verify_token_file: secrets/verify-token",
            "verify_token_file: a\n    verify_token_env: B",
        );
        let err = Config::parse(&both).expect_err("both").to_string();
        assert!(err.contains("endpoints[0].verify_token_file"), "{err}");

        let bad_path = CONTRACT.replace("path: /webhooks/meta", "path: webhooks");
        let err = Config::parse(&bad_path).expect_err("path").to_string();
        assert!(err.contains("endpoints[0].path"), "{err}");

        let reserved = CONTRACT.replace("path: /webhooks/meta", "path: /metrics");
        assert!(
            Config::parse(&reserved)
                .expect_err("reserved")
                .to_string()
                .contains("served by the receiver")
        );

        let no_kind = CONTRACT.replace("    file: {path: data/events.jsonl}\n", "");
        assert!(
            Config::parse(&no_kind)
                .expect_err("kind")
                .to_string()
                .contains("sinks[0]")
        );
    }
}
