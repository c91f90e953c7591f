//! `delivery.mode: direct`: no spool; a request's events are delivered to every sink before
//! the answer, which is 200 only when all of them acknowledged (503 otherwise, and Meta
//! retries). Each sink serves one request at a time.

use std::time::{Instant, SystemTime};

use metahook_config::SinkConfig;
use tokio::sync::Mutex;

use super::kind::AnySink;
use super::kind::BuildSink;
use super::{Delivered, Reopening, SinkError, bury, refused};
use crate::metrics::Metrics;
use crate::metrics::events::{AfterFailure, BatchDelivered, DeliveryFailed};
use crate::spool::Spooled;
use crate::spool::dead_letters::DeadLetters;

/// Every configured sink, delivered to on the request path.
#[derive(Debug)]
pub struct DirectSinks {
    sinks: Vec<(String, Mutex<Reopening<AnySink>>)>,
    dead_letters: DeadLetters,
    metrics: std::sync::Arc<Metrics>,
}

impl DirectSinks {
    /// The sinks of `configs`.
    pub fn new(
        configs: &[SinkConfig],
        dead_letters: DeadLetters,
        metrics: std::sync::Arc<Metrics>,
    ) -> DirectSinks {
        let sinks = configs
            .iter()
            .map(|c| (c.name.clone(), Mutex::new(Reopening::new(c.kind.build()))))
            .collect();
        DirectSinks {
            sinks,
            dead_letters,
            metrics,
        }
    }

    /// Delivers a request's events to every sink; `Ok` only when all acknowledged. Events a
    /// sink refused for good become its dead letters (the request still succeeds).
    pub async fn deliver(&self, events: &[Vec<u8>]) -> Result<(), SinkError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let batch: Vec<Spooled> = events
            .iter()
            .enumerate()
            .map(|(i, json)| Spooled {
                seq: i as u64,
                received_millis: now,
                json: json.clone(),
            })
            .collect();
        for (name, sink) in &self.sinks {
            let mut sink = sink.lock().await;
            let started = Instant::now();
            // No cursor here: a request is delivered again only when Meta retries it.
            let delivered = match sink.open(None).await {
                Ok(_) => sink.deliver(&batch).await,
                Err(err) => Err(err),
            };
            match delivered {
                Ok(Delivered { rejected, .. }) => {
                    bury(&self.dead_letters, name, &refused(&batch, &rejected), 1).await?;
                    self.metrics.emit(BatchDelivered {
                        sink: name,
                        events: batch.len(),
                        refused: &rejected,
                        elapsed: started.elapsed(),
                    });
                }
                Err(err) => {
                    self.metrics.emit(DeliveryFailed {
                        sink: name,
                        events: batch.len(),
                        error: &err,
                        elapsed: started.elapsed(),
                        then: AfterFailure::AnswerUnavailable,
                    });
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}
