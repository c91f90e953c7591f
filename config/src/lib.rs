//! The metahook receiver's configuration: every type the operator renders into a ConfigMap
//! and the receiver loads, the YAML parsing (with messages for the person editing the file),
//! and the validation that needs nothing but the configuration itself.
//!
//! A crate of its own so that both programs depend on what they share and nothing more: no
//! runtime, no network client, no TLS stack here (docs/architecture.md, Layout). Each
//! component's settings are in their own module; this file only aggregates.

mod admin;
pub mod byte_size;
mod delivery;
mod document;
mod endpoint;
pub mod enrich;
mod error;
pub mod graph;
mod limits;
pub mod listen;
mod messages;
pub mod objects;
mod parse;
pub mod redact;
pub mod replay;
pub mod retry;
pub mod sink;
mod spool;
mod tls;
mod trusted_proxy;
mod validate;

#[cfg(test)]
mod tests;

pub use admin::AdminConfig;
pub use byte_size::parse_byte_size;
pub use delivery::{DeliveryConfig, DeliveryMode};
pub use document::Config;
pub use endpoint::{EndpointConfig, RESERVED_PATHS};
pub use enrich::{EnrichmentConfig, LeadAdsConfig, PageTokenConfig};
pub use error::{ConfigError, error_chain, invalid};
pub use graph::GRAPH_API_VERSION;
pub use limits::{DEFAULT_MAX_BUFFERED_BODY_BYTES, Limits};
pub use listen::parse_listen;
pub use retry::RetryConfig;
pub use sink::file::FileSinkConfig;
pub use sink::http::{HttpHeaderConfig, HttpSinkConfig};
pub use sink::kafka::{
    KafkaCompression, KafkaKey, KafkaSaslConfig, KafkaSinkConfig, SaslMechanism, TOPIC_PLACEHOLDERS,
};
pub use sink::nats::{NatsSinkConfig, SUBJECT_PLACEHOLDERS};
pub use sink::postgres::{PostgresSinkConfig, SslMode};
pub use sink::{SinkConfig, SinkKind};
pub use spool::{RetentionConfig, SpoolConfig};
pub use tls::{META_CLIENT_NAME, TlsConfig, TlsMode};
pub use trusted_proxy::TrustedProxyConfig;
