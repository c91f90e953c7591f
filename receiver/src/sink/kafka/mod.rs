//! The `kafka` sink: one record per event, produced by librdkafka's idempotent producer
//! with `acks=all`; the event id, object, field, kind and received_at ride as headers.
//!
//! A batch is handed to the client whole (it queues, batches per partition and keeps up to
//! five requests in flight per broker), then every record's acknowledgement is awaited, so
//! the cursor moves only when the broker has stored every record of the batch. The client
//! retries inside one attempt (idempotence makes those retries add nothing); an attempt
//! that fails (the broker away longer than `delivery_timeout`) is retried by the consumer
//! with backoff, and the records the broker had already acknowledged are not produced
//! again, so an outage only delays. Records the broker refuses for good (too large, unknown
//! topic, not authorized) become dead letters with the broker's reason. Only a crash
//! between the broker's acknowledgement and the cursor's commit produces a record twice
//! (at most one batch); consumers de-duplicate by the `metahook-event-id` header.

mod auth;
mod request;

use std::collections::HashSet;
use std::time::Duration;

use metahook_config::sink::kafka::KafkaSinkConfig;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use self::auth::{Credentials, client_properties};
use self::request::Head;
pub use self::request::{
    HEADER_EVENT_ID, HEADER_FIELD, HEADER_KIND, HEADER_OBJECT, HEADER_RECEIVED_AT,
};
use super::{Delivered, Sink, SinkError};
use crate::spool::Spooled;

/// Events the consumer reads per batch for this sink: the client batches them per
/// partition, and the wait for the last acknowledgements and the cursor's fsync are paid
/// once per batch.
pub const BATCH: usize = 8192;

/// The longest wait of `open` for the cluster's metadata: whether a broker answers.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Produces events to Kafka.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: Option<FutureProducer>,
    /// The credentials the producer was made with: a change (a rotated Secret) makes a new
    /// producer at the next open.
    credentials: Option<Credentials>,
    /// Records of failed attempts the broker acknowledged: (seq, event id). The retry of
    /// the batch skips them; cleared when a batch is delivered (so empty on the hot path).
    acknowledged: HashSet<(u64, String)>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("topic", &self.config.topic)
            .field("open", &self.producer.is_some())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink for `config`; it connects on open.
    pub fn new(config: KafkaSinkConfig) -> KafkaSink {
        KafkaSink {
            config,
            producer: None,
            credentials: None,
            acknowledged: HashSet::new(),
        }
    }

    fn remote(&self, what: &str, err: impl std::fmt::Display) -> SinkError {
        SinkError::Remote {
            context: format!("{what} ({})", self.config.bootstrap_servers.join(",")),
            message: err.to_string(),
        }
    }

    /// Makes the producer and asks the cluster for its metadata, so an unreachable or
    /// refusing cluster fails the open (and direct mode answers 503 at once).
    async fn connect(
        &self,
        credentials: Option<&Credentials>,
    ) -> Result<FutureProducer, SinkError> {
        let mut client = ClientConfig::new();
        for (key, value) in client_properties(&self.config, credentials) {
            client.set(key, value);
        }
        let producer: FutureProducer = client
            .create()
            .map_err(|e| self.remote("cannot create the Kafka producer", e))?;
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, OPEN_TIMEOUT))
            .await?
            .map_err(|e| self.remote("cannot reach the Kafka brokers", e))?;
        Ok(producer)
    }
}

impl KafkaSink {
    /// After a failed attempt: the records of `batch` at `stored` the broker acknowledged,
    /// which the retry skips. Kept by (seq, event id): in direct mode seqs restart at 0 with
    /// every request.
    fn remember(&mut self, batch: &[Spooled], stored: &[usize]) {
        for &index in stored {
            let event = &batch[index];
            // It parsed when it was produced.
            if let Ok(head) = serde_json::from_slice::<Head<'_>>(&event.json) {
                self.acknowledged.insert((event.seq, head.id.into_owned()));
            }
        }
    }
}

impl Sink for KafkaSink {
    async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
        let credentials = match &self.config.sasl {
            Some(sasl) => Some(
                Credentials::read(sasl)
                    .await
                    .map_err(|e| self.remote("cannot read the SASL credentials", e))?,
            ),
            None => None,
        };
        let healthy = self
            .producer
            .as_ref()
            .is_some_and(|p| p.client().fatal_error().is_none());
        if healthy && credentials == self.credentials {
            return Ok(None);
        }
        let producer = self.connect(credentials.as_ref()).await?;
        self.producer = Some(producer);
        self.credentials = credentials;
        Ok(None)
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        let Some(producer) = self.producer.clone() else {
            return Err(self.remote("Kafka sink is not open", "not connected"));
        };
        let mut pending = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        for (index, event) in batch.iter().enumerate() {
            let head: Head<'_> = serde_json::from_slice(&event.json)
                .map_err(|e| self.remote("spooled event is not an event", e))?;
            // Empty but after a failed attempt: no lookup (and no id copied) per event.
            if !self.acknowledged.is_empty()
                && self
                    .acknowledged
                    .contains(&(event.seq, head.id.clone().into_owned()))
            {
                continue;
            }
            let topic = head.topic(&self.config.topic);
            let key = head.key(self.config.key);
            let headers = head.headers().into_iter().fold(
                OwnedHeaders::new_with_capacity(6),
                |h, (name, value)| {
                    h.insert(Header {
                        key: name,
                        value: Some(value),
                    })
                },
            );
            let mut record = FutureRecord::<str, [u8]>::to(&topic)
                .payload(&event.json)
                .headers(headers);
            if let Some(key) = &key {
                record = record.key(key.as_str());
            }
            let mut record = record;
            let future = loop {
                match producer.send_result(record) {
                    Ok(future) => break Some(future),
                    // The client's queue is full: let it drain a little.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((err, _)) => match refusal(&err) {
                        Some(why) => {
                            rejected.push((event.seq, why));
                            break None;
                        }
                        None => return Err(self.remote("cannot produce", err)),
                    },
                }
            };
            if let Some(future) = future {
                pending.push((index, future));
            }
        }
        // Every acknowledgement is awaited, failed or not, so no record of this attempt is
        // left in the client when the batch is retried.
        let mut failure = None;
        let mut stored = Vec::with_capacity(pending.len());
        for (index, future) in pending {
            match future.await {
                Ok(Ok(_)) => stored.push(index),
                Ok(Err((err, _))) => match refusal(&err) {
                    Some(why) => rejected.push((batch[index].seq, why)),
                    None => failure = failure.or(Some(err.to_string())),
                },
                Err(_) => failure = failure.or(Some("the producer was dropped".to_owned())),
            }
        }
        if let Some((code, why)) = producer.client().fatal_error() {
            // An idempotent producer in a fatal state produces nothing more: a new one at
            // the next open.
            self.producer = None;
            self.remember(batch, &stored);
            return Err(self.remote("the Kafka producer failed", format!("{code:?}: {why}")));
        }
        if let Some(err) = failure {
            // A new producer (a new producer id) at the next open: a broker that lost the
            // old one's state (restarted, failed over) refuses its sequence numbers.
            self.producer = None;
            self.remember(batch, &stored);
            return Err(self.remote("no acknowledgement from Kafka", err));
        }
        self.acknowledged.clear();
        Ok(Delivered { state: 0, rejected })
    }

    fn batch_size(&self) -> usize {
        BATCH
    }
}

/// Why the broker (or the client, for a record above its own size limit) refused a record
/// for good, or `None` for a failure worth retrying.
fn refusal(err: &KafkaError) -> Option<String> {
    use RDKafkaErrorCode as C;
    let code = err.rdkafka_error_code()?;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidMessage
            | C::InvalidRecord
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::PolicyViolation
    )
    .then(|| format!("Kafka refused the record: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_failures() {
        let refused = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let why = refusal(&refused).expect("too large is a refusal");
        assert!(why.contains("Kafka refused the record"), "{why}");
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(refusal(&KafkaError::MessageProduction(code)).is_some());
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(refusal(&KafkaError::MessageProduction(code)).is_none());
        }
    }
}
