//! `delivery.mode: direct`: no spool; a request's events are delivered to every sink before
//! the answer, which is 200 only when all of them acknowledged (503 otherwise, and Meta
//! retries). Each sink serves one request at a time.

use std::time::SystemTime;

use tokio::sync::Mutex;

use super::kind::AnySink;
use super::{Delivered, Sink, SinkError, bury_rejected};
use crate::config::SinkConfig;
use crate::metrics::Metrics;
use crate::spool::Spooled;
use crate::spool::dead_letters::DeadLetters;

/// A sink on the request path: the sink and whether it is open.
#[derive(Debug)]
struct Slot {
    sink: AnySink,
    open: bool,
}

/// Every configured sink, delivered to on the request path.
#[derive(Debug)]
pub struct DirectSinks {
    sinks: Vec<(String, Mutex<Slot>)>,
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
            .map(|c| {
                let sink = c.kind.build();
                (c.name.clone(), Mutex::new(Slot { sink, open: false }))
            })
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
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        for (name, slot) in &self.sinks {
            let mut slot = slot.lock().await;
            let result = async {
                if !slot.open {
                    slot.sink.open(0).await?;
                    slot.open = true;
                }
                slot.sink.deliver(&batch).await
            }
            .await;
            match result {
                Ok(Delivered { rejected, .. }) => {
                    if !rejected.is_empty() {
                        bury_rejected(name, &self.dead_letters, &batch, &rejected)?;
                        self.metrics
                            .dead_letters
                            .with_label_values(&[name])
                            .inc_by(u64::try_from(rejected.len()).unwrap_or(0));
                    }
                    self.metrics
                        .sink_deliveries
                        .with_label_values(&[name, "success"])
                        .inc_by(count);
                }
                Err(err) => {
                    slot.open = false;
                    self.metrics
                        .sink_deliveries
                        .with_label_values(&[name, "error"])
                        .inc_by(count);
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}
