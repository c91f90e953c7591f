//! Sinks: where spooled events go. Each sink consumes the spool with its own cursor, so a
//! slow or failing sink never holds up the others or the 200 path.
//!
//! A sink implements [`Sink`]; [`consume`] drives it: read a batch after the cursor,
//! deliver it, then commit the cursor together with the sink's resume state. After any
//! failure the sink is reopened from its last committed state and the batch retried with
//! exponential backoff, so nothing is skipped and (for the file sink) nothing is doubled.
//! [`kind`] lists the sink kinds; each kind's settings and sink are in its own module.

mod consume;
pub mod direct;
pub mod file;
pub mod http;
pub mod inbox;
pub mod kafka;
pub mod kind;
pub mod nats;
pub mod postgres;
mod secret;

use std::future::Future;
use std::time::Duration;

pub use consume::{BATCH_SIZE, Consumer, LINGER, Phase, consume};
pub use metahook_config::error_chain;

use crate::spool::dead_letters::{DeadLetter, DeadLetters};
use crate::spool::{SpoolError, Spooled};

/// A delivery failure, retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A remote system refused or did not answer.
    #[error("{context}: {message}")]
    Remote {
        /// What was being done, and where.
        context: String,
        /// What the remote side said.
        message: String,
    },
    /// The remote asked to wait before the next attempt (e.g. HTTP 429 with Retry-After).
    #[error("{context}: {message} (asked to retry after {after:?})")]
    Throttled {
        /// What was being done, and where.
        context: String,
        /// What the remote side said.
        message: String,
        /// How long it asked to wait.
        after: Duration,
    },
    /// Reading or committing the spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A delivery target.
pub trait Sink: Send + 'static {
    /// Prepares to deliver after a cursor whose state is `committed` (`None`: the sink never
    /// committed one). Returns the state it starts from when that must be committed before
    /// its first delivery: the file sink's length, so that a crash after its first write, and
    /// before the cursor moved, truncates back to it instead of appending the batch twice.
    fn open(
        &mut self,
        committed: Option<u64>,
    ) -> impl Future<Output = Result<Option<u64>, SinkError>> + Send;
    /// Delivers a batch; returns the state to commit with the cursor and the events the
    /// destination refused for good (they become dead letters at once). An error means the
    /// whole batch is retried.
    fn deliver(
        &mut self,
        batch: &[Spooled],
    ) -> impl Future<Output = Result<Delivered, SinkError>> + Send;
    /// Events the consumer reads for one `deliver`. A sink that keeps the destination busy
    /// within a batch (NATS publishes ahead of its acknowledgements) takes larger batches, so
    /// the stop between batches (the last acknowledgements, the cursor's fsync, the next
    /// read) is paid rarely.
    fn batch_size(&self) -> usize {
        BATCH_SIZE
    }
}

/// The result of a delivered batch.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The sink's resume state, committed with the cursor.
    pub state: u64,
    /// Events the destination refused permanently: (seq, why).
    pub rejected: Vec<(u64, String)>,
}

impl Delivered {
    /// Everything delivered; `state` to commit.
    pub fn all(state: u64) -> Delivered {
        Delivered {
            state,
            rejected: Vec::new(),
        }
    }
}

/// A sink and whether it is open. A failed delivery closes it, so the next one reopens it
/// at its committed state (where a half-delivered batch is discarded or de-duplicated).
#[derive(Debug)]
pub(crate) struct Reopening<S> {
    sink: S,
    open: bool,
}

impl<S: Sink> Reopening<S> {
    /// `sink`, not yet open.
    pub(crate) fn new(sink: S) -> Reopening<S> {
        Reopening { sink, open: false }
    }

    /// Opens the sink at its committed state if it is closed; returns the state to commit
    /// before the first delivery, if the sink needs one ([`Sink::open`]).
    pub(crate) async fn open(&mut self, committed: Option<u64>) -> Result<Option<u64>, SinkError> {
        if self.open {
            return Ok(None);
        }
        let start = self.sink.open(committed).await?;
        self.open = true;
        Ok(start)
    }

    /// Delivers `batch` to the opened sink ([`Reopening::open`] first).
    pub(crate) async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        if !self.open {
            return Err(SinkError::Remote {
                context: "delivering".to_owned(),
                message: "the sink is not open".to_owned(),
            });
        }
        let delivered = self.sink.deliver(batch).await;
        if delivered.is_err() {
            self.open = false;
        }
        delivered
    }

    /// Events per batch for this sink ([`Sink::batch_size`]).
    pub(crate) fn batch_size(&self) -> usize {
        self.sink.batch_size().max(1)
    }

    /// Reopens before the next delivery (something after the delivery failed).
    pub(crate) fn close(&mut self) {
        self.open = false;
    }
}

/// Appends events to a sink's dead letters, each with why it was given up. The append
/// fsyncs, so it runs on a blocking thread.
pub(crate) async fn bury(
    dead_letters: &DeadLetters,
    name: &str,
    events: &[(&Spooled, &str)],
    attempts: u32,
) -> Result<(), SinkError> {
    if events.is_empty() {
        return Ok(());
    }
    let dead_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let entries: Vec<DeadLetter> = events
        .iter()
        .filter_map(|(e, reason)| {
            let json = String::from_utf8(e.json.clone()).ok()?;
            let event = serde_json::value::RawValue::from_string(json).ok()?;
            Some(DeadLetter {
                seq: e.seq,
                reason: (*reason).to_owned(),
                attempts,
                dead_at: dead_at.clone(),
                event,
            })
        })
        .collect();
    let (store, owned) = (dead_letters.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || store.append(&owned, &entries))
        .await?
        .map_err(|source| SinkError::Io {
            context: format!("cannot write dead letters of sink {name}"),
            source,
        })
}

/// The events of `batch` a destination refused for good (by seq), with why.
pub(crate) fn refused<'a>(
    batch: &'a [Spooled],
    rejected: &'a [(u64, String)],
) -> Vec<(&'a Spooled, &'a str)> {
    rejected
        .iter()
        .filter_map(|(seq, why)| {
            batch
                .iter()
                .find(|e| e.seq == *seq)
                .map(|e| (e, why.as_str()))
        })
        .collect()
}
