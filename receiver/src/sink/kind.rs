//! Every sink kind, in one list: [`SinkKind`] (what the configuration names) and
//! [`AnySink`] (the running sink it builds). Each kind's settings, validation and sink live
//! in its own module (`file`, `nats`, `postgres`, `http`); this file only dispatches, with
//! exhaustive `match`es, so a kind added to [`SinkKind`] and missed anywhere fails to compile.

use serde::{Deserialize, Deserializer, Serialize};

use super::file::{FileSink, FileSinkConfig};
use super::http::{HttpSink, HttpSinkConfig};
use super::nats::{NatsSink, NatsSinkConfig};
use super::postgres::{PostgresSink, PostgresSinkConfig};
use super::{Delivered, Sink, SinkError};
use crate::config::{ConfigError, RetryConfig, SinkConfig};
use crate::spool::Spooled;

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
}

/// The kinds' YAML keys, for messages.
const KIND_KEYS: &str = "file, nats, postgres or http";

impl SinkKind {
    /// The kind's YAML key.
    pub fn key(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Nats(_) => "nats",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Http(_) => "http",
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
        }
    }

    /// The sink, not yet opened (it connects or opens its file when first used).
    pub fn build(&self) -> AnySink {
        match self {
            SinkKind::File(file) => AnySink::File(file.build()),
            SinkKind::Nats(nats) => AnySink::Nats(nats.build()),
            SinkKind::Postgres(postgres) => AnySink::Postgres(postgres.build()),
            SinkKind::Http(http) => AnySink::Http(http.build()),
        }
    }
}

/// Any sink: one type for the spool consumers and for direct delivery.
#[derive(Debug)]
pub enum AnySink {
    /// See [`FileSink`].
    File(FileSink),
    /// See [`NatsSink`].
    Nats(NatsSink),
    /// See [`PostgresSink`].
    Postgres(PostgresSink),
    /// See [`HttpSink`].
    Http(HttpSink),
}

impl Sink for AnySink {
    async fn open(&mut self, state: Option<u64>) -> Result<Option<u64>, SinkError> {
        match self {
            AnySink::File(sink) => sink.open(state).await,
            AnySink::Nats(sink) => sink.open(state).await,
            AnySink::Postgres(sink) => sink.open(state).await,
            AnySink::Http(sink) => sink.open(state).await,
        }
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        match self {
            AnySink::File(sink) => sink.deliver(batch).await,
            AnySink::Nats(sink) => sink.deliver(batch).await,
            AnySink::Postgres(sink) => sink.deliver(batch).await,
            AnySink::Http(sink) => sink.deliver(batch).await,
        }
    }

    fn batch_size(&self) -> usize {
        match self {
            AnySink::File(sink) => sink.batch_size(),
            AnySink::Nats(sink) => sink.batch_size(),
            AnySink::Postgres(sink) => sink.batch_size(),
            AnySink::Http(sink) => sink.batch_size(),
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
            retry,
        } = entry;
        let mut kinds = [
            file.map(SinkKind::File),
            nats.map(SinkKind::Nats),
            postgres.map(SinkKind::Postgres),
            http.map(SinkKind::Http),
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
            retry,
        };
        match kind {
            SinkKind::File(file) => entry.file = Some(file),
            SinkKind::Nats(nats) => entry.nats = Some(nats),
            SinkKind::Postgres(postgres) => entry.postgres = Some(postgres),
            SinkKind::Http(http) => entry.http = Some(http),
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
