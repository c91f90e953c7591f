//! The sinks' settings: [`SinkConfig`] (one `sinks[]` entry) and [`SinkKind`], every kind in
//! one list with exhaustive `match`es, so a kind added here and missed anywhere fails to
//! compile. Each kind's settings and their validation are in their own module, named as the
//! receiver's sink that reads them (`metahook_config::sink::http` for `sink::http`).

pub mod file;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod postgres;

use serde::{Deserialize, Deserializer, Serialize};

use self::file::FileSinkConfig;
use self::http::HttpSinkConfig;
use self::kafka::KafkaSinkConfig;
use self::nats::NatsSinkConfig;
use self::postgres::PostgresSinkConfig;
use crate::error::ConfigError;
use crate::retry::RetryConfig;

/// One delivery target: a name, exactly one kind, and its retries. In YAML the kind is the
/// one key among `file`, `nats`, `postgres`, `http`, `kafka` ([`SinkKind`] lists them).
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

/// What a sink is, with its own settings. Produced by parsing, which demands exactly one kind
/// per `sinks[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// JSON lines, one event per line.
    File(FileSinkConfig),
    /// NATS JetStream.
    Nats(NatsSinkConfig),
    /// PostgreSQL, the unified message store.
    Postgres(PostgresSinkConfig),
    /// HTTP POST to the user's service.
    Http(HttpSinkConfig),
    /// Apache Kafka (or a broker speaking its protocol).
    Kafka(KafkaSinkConfig),
}

/// The kinds' YAML keys, for messages.
const KIND_KEYS: &str = "file, nats, postgres, http or kafka";

impl SinkKind {
    /// The kind's YAML key.
    pub fn key(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Nats(_) => "nats",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Http(_) => "http",
            SinkKind::Kafka(_) => "kafka",
        }
    }

    /// Checks the kind's settings; errors name `sinks[index].<kind>.<key>`.
    pub(crate) fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = format!("sinks[{index}].{}", self.key());
        match self {
            SinkKind::File(file) => file.validate(&key),
            SinkKind::Nats(nats) => nats.validate(&key),
            SinkKind::Postgres(postgres) => postgres.validate(&key),
            SinkKind::Http(http) => http.validate(&key),
            SinkKind::Kafka(kafka) => kafka.validate(&key),
        }
    }
}

/// A `sinks[]` entry as written in YAML: one optional key per kind.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkEntry {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<FileSinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nats: Option<NatsSinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    postgres: Option<PostgresSinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpSinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kafka: Option<KafkaSinkConfig>,
    #[serde(default)]
    retry: RetryConfig,
}

impl TryFrom<SinkEntry> for SinkConfig {
    type Error = String;

    fn try_from(entry: SinkEntry) -> Result<SinkConfig, String> {
        let SinkEntry {
            name,
            file,
            nats,
            postgres,
            http,
            kafka,
            retry,
        } = entry;
        let mut kinds = [
            file.map(SinkKind::File),
            nats.map(SinkKind::Nats),
            postgres.map(SinkKind::Postgres),
            http.map(SinkKind::Http),
            kafka.map(SinkKind::Kafka),
        ]
        .into_iter()
        .flatten();
        match (kinds.next(), kinds.next()) {
            (Some(kind), None) => Ok(SinkConfig { name, kind, retry }),
            _ => Err(format!("set exactly one sink kind: {KIND_KEYS}")),
        }
    }
}

impl From<SinkConfig> for SinkEntry {
    fn from(sink: SinkConfig) -> SinkEntry {
        let SinkConfig { name, kind, retry } = sink;
        let mut entry = SinkEntry {
            name,
            file: None,
            nats: None,
            postgres: None,
            http: None,
            kafka: None,
            retry,
        };
        match kind {
            SinkKind::File(file) => entry.file = Some(file),
            SinkKind::Nats(nats) => entry.nats = Some(nats),
            SinkKind::Postgres(postgres) => entry.postgres = Some(postgres),
            SinkKind::Http(http) => entry.http = Some(http),
            SinkKind::Kafka(kafka) => entry.kafka = Some(kafka),
        }
        entry
    }
}

/// `sinks:` with each entry's errors naming its index (`sinks[1]: ...`).
pub(crate) fn deserialize_sinks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SinkConfig>, D::Error> {
    Vec::<SinkEntry>::deserialize(deserializer)?
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            SinkConfig::try_from(entry)
                .map_err(|e| serde::de::Error::custom(format!("sinks[{i}]: {e}")))
        })
        .collect()
}

/// The sink of a configuration whose one sink is `KIND: {BODY}` (the sinks' tests).
#[cfg(test)]
pub(crate) fn parse_one_sink(kind: &str, body: &str) -> Result<SinkKind, String> {
    let yaml = format!(
        "listen: 127.0.0.1:8080\nendpoints:\n  - {{name: wa, path: /wa, app_secret_file: a, verify_token_file: v}}\nspool: {{dir: data}}\nsinks:\n  - name: bus\n    {kind}: {{{body}}}\n"
    );
    let config = crate::Config::parse(&yaml).map_err(|e| e.to_string())?;
    Ok(config.sinks[0].kind.clone())
}
