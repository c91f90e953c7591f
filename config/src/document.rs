//! The whole configuration file: [`Config`].
//!
//! These types are the contract between the receiver and the operator, which writes them
//! into a ConfigMap: share the types, never re-declare them. Keys named in the receiver-core
//! issue (`listen`, `endpoints[].{name,path,objects,app_secret_file,app_secret_env,
//! previous_app_secret_file,verify_token_file,verify_token_env}`, `spool.dir`,
//! `sinks[].{name,file.path}`) are relied on by tests outside the repository: keep them.
//! docs/configuration.md describes every key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin::AdminConfig;
use crate::delivery::DeliveryConfig;
use crate::endpoint::EndpointConfig;
use crate::enrich::EnrichmentConfig;
use crate::limits::Limits;
use crate::sink::SinkConfig;
use crate::spool::SpoolConfig;
use crate::tls::TlsConfig;
use crate::trusted_proxy::TrustedProxyConfig;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; serves the endpoints and /metrics, /healthz, /readyz.
    /// `IP:PORT`, `HOST:PORT` (resolved at load) or `:PORT` ([`crate::listen::parse_listen`]).
    #[serde(deserialize_with = "crate::listen::listen_address")]
    pub listen: SocketAddr,
    /// Webhook endpoints, one per Meta app (path + secrets).
    pub endpoints: Vec<EndpointConfig>,
    /// The durable spool every accepted event is written to before the 200.
    pub spool: SpoolConfig,
    /// Spool the events (default), or deliver them to every sink before answering.
    #[serde(default, skip_serializing_if = "DeliveryConfig::is_default")]
    pub delivery: DeliveryConfig,
    /// Where spooled events are delivered.
    #[serde(default, deserialize_with = "crate::sink::deserialize_sinks")]
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
        deserialize_with = "crate::listen::metrics_listen_address"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Optional enrichment of events before the sinks (Lead Ads answers; see
    /// [`crate::enrich`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<EnrichmentConfig>,
    /// Admin endpoints (`POST /admin/replay`) on `metrics_listen`, behind a bearer token;
    /// absent: none are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
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
            admin: None,
        }
    }
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(25)
}
fn default_secret_reload_interval() -> Duration {
    Duration::from_secs(2)
}
