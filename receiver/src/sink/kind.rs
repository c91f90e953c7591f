//! Every running sink kind, in one list: [`AnySink`], built from the configuration's
//! [`SinkKind`] ([`BuildSink`]). Each kind's settings and their validation live in
//! `metahook_config::sink::<kind>`, its sink in its own module here; this file only
//! dispatches, with exhaustive `match`es, so a kind added to [`SinkKind`] and missed
//! anywhere fails to compile.

use metahook_config::SinkKind;

use super::file::FileSink;
use super::http::HttpSink;
use super::kafka::KafkaSink;
use super::nats::NatsSink;
use super::postgres::PostgresSink;
use super::{Delivered, Sink, SinkError};
use crate::spool::Spooled;

/// Builds the running sink a configured kind names. A trait, since the settings type lives
/// in the configuration crate, which knows no sink.
pub trait BuildSink {
    /// The sink, not yet opened (it connects or opens its file when first used).
    fn build(&self) -> AnySink;
}

impl BuildSink for SinkKind {
    fn build(&self) -> AnySink {
        match self {
            SinkKind::File(file) => AnySink::File(FileSink::new(file.path.clone())),
            SinkKind::Nats(nats) => AnySink::Nats(NatsSink::new(nats.clone())),
            SinkKind::Postgres(postgres) => AnySink::Postgres(PostgresSink::new(postgres.clone())),
            SinkKind::Http(http) => AnySink::Http(HttpSink::new(http.clone())),
            SinkKind::Kafka(kafka) => AnySink::Kafka(KafkaSink::new(kafka.clone())),
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
    /// See [`KafkaSink`].
    Kafka(KafkaSink),
}

impl Sink for AnySink {
    async fn open(&mut self, state: Option<u64>) -> Result<Option<u64>, SinkError> {
        match self {
            AnySink::File(sink) => sink.open(state).await,
            AnySink::Nats(sink) => sink.open(state).await,
            AnySink::Postgres(sink) => sink.open(state).await,
            AnySink::Http(sink) => sink.open(state).await,
            AnySink::Kafka(sink) => sink.open(state).await,
        }
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        match self {
            AnySink::File(sink) => sink.deliver(batch).await,
            AnySink::Nats(sink) => sink.deliver(batch).await,
            AnySink::Postgres(sink) => sink.deliver(batch).await,
            AnySink::Http(sink) => sink.deliver(batch).await,
            AnySink::Kafka(sink) => sink.deliver(batch).await,
        }
    }

    fn batch_size(&self) -> usize {
        match self {
            AnySink::File(sink) => sink.batch_size(),
            AnySink::Nats(sink) => sink.batch_size(),
            AnySink::Postgres(sink) => sink.batch_size(),
            AnySink::Http(sink) => sink.batch_size(),
            AnySink::Kafka(sink) => sink.batch_size(),
        }
    }
}
