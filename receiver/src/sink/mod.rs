//! Sinks: where spooled events go. Each sink consumes the spool with its own cursor, so a
//! slow or failing sink never holds up the others or the 200 path.
//!
//! A sink implements [`Sink`]; [`consume`] drives it: read a batch after the cursor,
//! deliver it, then commit the cursor together with the sink's resume state. After any
//! failure the sink is reopened from its last committed state and the batch retried with
//! exponential backoff, so nothing is skipped and (for the file sink) nothing is doubled.

pub mod direct;
pub mod file;
pub mod http;
pub mod kind;
pub mod nats;
pub mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::RetryConfig;
use crate::metrics::Metrics;
use crate::spool::dead_letters::{DeadLetter, DeadLetters};
use crate::spool::{Cursor, Spool, SpoolError, Spooled};

/// Events per delivered batch.
pub const BATCH_SIZE: usize = 512;
/// After a batch smaller than [`BATCH_SIZE`], how long a sink waits for more events before
/// reading again. Delivery is off the 200 path, so a few milliseconds of delay cost nothing,
/// while delivering (and fsyncing, and committing the cursor) per group commit would double
/// the receiver's I/O. Full batches never wait, so a sink keeps up at any rate.
pub const LINGER: Duration = Duration::from_millis(20);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How often an idle sink looks for dead letters queued for retry.
const IDLE_CHECK: Duration = Duration::from_secs(1);

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
    /// Prepares to deliver after a cursor whose state is `state` (0 = never delivered).
    fn open(&mut self, state: u64) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Delivers a batch; returns the state to commit with the cursor and the events the
    /// destination refused for good (they become dead letters at once). An error means the
    /// whole batch is retried.
    fn deliver(
        &mut self,
        batch: &[Spooled],
    ) -> impl Future<Output = Result<Delivered, SinkError>> + Send;
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

/// What a consumer needs besides its sink.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The sink's name (its cursor, metrics label and dead-letter file).
    pub name: String,
    /// The spool it reads.
    pub spool: Arc<Spool>,
    /// Where metrics go.
    pub metrics: Arc<Metrics>,
    /// Retries before dead letters.
    pub retry: RetryConfig,
    /// Where given-up events go.
    pub dead_letters: DeadLetters,
}

/// Runs a sink until `shutdown` turns true and everything spooled by then is delivered
/// (or, while the sink is failing, until shutdown). A batch that fails `retry.max_attempts`
/// times becomes dead letters and the cursor moves past it; `dlq retry` sends dead letters
/// back through this loop.
pub async fn consume<S: Sink>(
    consumer: Consumer,
    mut sink: S,
    mut shutdown: watch::Receiver<bool>,
) {
    let Consumer {
        name,
        spool,
        metrics,
        retry,
        dead_letters,
    } = consumer;
    let mut head = spool.subscribe();
    let lag = metrics.sink_lag.with_label_values(&[&name]);
    let delivered = metrics
        .sink_deliveries
        .with_label_values(&[&name, "success"]);
    let failed = metrics.sink_deliveries.with_label_values(&[&name, "error"]);
    let dead = metrics.dead_letters.with_label_values(&[&name]);
    let duration = metrics.sink_delivery_duration.with_label_values(&[&name]);
    let mut open = false;
    loop {
        let committed = spool.cursor(&name).unwrap_or_default();
        #[allow(clippy::cast_precision_loss)]
        lag.set(head.borrow().saturating_sub(committed.seq) as f64);

        // Dead letters an operator sent back (`dlq retry`), before new events.
        let retries = match dead_letters.take_retries(&name) {
            Ok(retries) => retries,
            Err(err) => {
                tracing::error!(sink = %name, error = %err, "cannot read dead letters queued for retry");
                Vec::new()
            }
        };
        let (batch, from_dead_letters) = if retries.is_empty() {
            let reader = Arc::clone(&spool);
            let after = committed.seq;
            match tokio::task::spawn_blocking(move || reader.read_after(after, BATCH_SIZE)).await {
                Ok(Ok(batch)) => (batch, false),
                Ok(Err(err)) => {
                    tracing::error!(sink = %name, error = %err, "cannot read the spool");
                    if wait(&mut shutdown, MIN_BACKOFF).await {
                        return;
                    }
                    continue;
                }
                Err(err) => {
                    tracing::error!(sink = %name, error = %err, "spool read task failed");
                    return;
                }
            }
        } else {
            let batch = retries
                .iter()
                .map(|d| Spooled {
                    seq: d.seq,
                    received_millis: 0,
                    json: d.event.get().as_bytes().to_vec(),
                })
                .collect();
            (batch, true)
        };
        if !from_dead_letters {
            spool.set_pending(&name, batch.first().map(|e| e.received_millis));
        }
        let Some(last) = batch.last().map(|e| e.seq) else {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = shutdown.changed() => {}
                // Also notices retries queued by `dlq retry` while idle.
                () = tokio::time::sleep(IDLE_CHECK) => {}
            }
            continue;
        };

        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let mut attempts = 0u32;
        loop {
            let started = Instant::now();
            let result = attempt(
                &name,
                &mut sink,
                &spool,
                &batch,
                last,
                &mut open,
                from_dead_letters,
                &dead_letters,
            )
            .await;
            duration.observe(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(rejected) => {
                    if !rejected.is_empty() {
                        dead.inc_by(u64::try_from(rejected.len()).unwrap_or(u64::MAX));
                        tracing::error!(sink = %name, events = rejected.len(), reason = %rejected[0].1, "destination refused events: moved to the dead letters");
                    }
                    delivered.inc_by(count - u64::try_from(rejected.len()).unwrap_or(0));
                    if from_dead_letters {
                        if let Err(err) = dead_letters.retried(&name) {
                            tracing::error!(sink = %name, error = %err, "delivered retried dead letters but cannot clear them");
                        }
                        tracing::info!(sink = %name, events = batch.len(), "retried dead letters delivered");
                    }
                    break;
                }
                Err(err) => err,
            };
            failed.inc_by(count);
            open = false;
            attempts += 1;
            if !from_dead_letters && retry.max_attempts > 0 && attempts >= retry.max_attempts {
                match bury(&name, &spool, &dead_letters, &batch, last, attempts, &err) {
                    Ok(()) => {
                        dead.inc_by(count);
                        tracing::error!(sink = %name, error = %err, events = batch.len(), attempts, "giving up: events moved to the dead letters");
                        break;
                    }
                    Err(bury_err) => {
                        tracing::error!(sink = %name, error = %bury_err, "cannot write dead letters; retrying the batch");
                    }
                }
            }
            let mut delay = backoff(attempts, retry.max_backoff);
            if let SinkError::Throttled { after, .. } = &err {
                delay = delay.max(*after);
            }
            tracing::warn!(sink = %name, error = %err, events = batch.len(), attempts, retry_in_ms = delay.as_millis(), "delivery failed; will retry");
            if wait(&mut shutdown, delay).await {
                return;
            }
        }
        if batch.len() < BATCH_SIZE && !*shutdown.borrow() {
            // Shutdown interrupts the wait: what is left is delivered at once.
            wait(&mut shutdown, LINGER).await;
        }
    }
}

/// One delivery attempt: (re)open the sink at its committed cursor if needed, deliver, and
/// commit the cursor (past `last` for spool batches; only the sink's new state for retried
/// dead letters, which are behind the cursor).
#[allow(clippy::too_many_arguments)]
async fn attempt<S: Sink>(
    name: &str,
    sink: &mut S,
    spool: &Arc<Spool>,
    batch: &[Spooled],
    last: u64,
    open: &mut bool,
    from_dead_letters: bool,
    dead_letters: &DeadLetters,
) -> Result<Vec<(u64, String)>, SinkError> {
    if !*open {
        open_at_cursor(name, sink, spool).await?;
        *open = true;
    }
    let Delivered { state, rejected } = sink.deliver(batch).await?;
    bury_rejected(name, dead_letters, batch, &rejected)?;
    let committed = spool.cursor(name)?;
    let seq = if from_dead_letters {
        committed.seq
    } else {
        last
    };
    let writer = Arc::clone(spool);
    let owned = name.to_owned();
    tokio::task::spawn_blocking(move || writer.commit_cursor(&owned, Cursor { seq, state }))
        .await??;
    Ok(rejected)
}

/// Moves a batch to the dead letters and the cursor past it (with the committed state).
fn bury(
    name: &str,
    spool: &Spool,
    dead_letters: &DeadLetters,
    batch: &[Spooled],
    last: u64,
    attempts: u32,
    err: &SinkError,
) -> Result<(), SinkError> {
    let reason = err.to_string();
    let entries: Vec<(&Spooled, &str)> = batch.iter().map(|e| (e, reason.as_str())).collect();
    write_dead_letters(name, dead_letters, &entries, attempts)?;
    let committed = spool.cursor(name)?;
    spool.commit_cursor(
        name,
        Cursor {
            seq: last,
            state: committed.state,
        },
    )?;
    Ok(())
}

/// Moves the events a destination refused for good (by seq) to the sink's dead letters.
pub(crate) fn bury_rejected(
    name: &str,
    dead_letters: &DeadLetters,
    batch: &[Spooled],
    rejected: &[(u64, String)],
) -> Result<(), SinkError> {
    if rejected.is_empty() {
        return Ok(());
    }
    let refused: Vec<(&Spooled, &str)> = rejected
        .iter()
        .filter_map(|(seq, why)| {
            batch
                .iter()
                .find(|e| e.seq == *seq)
                .map(|e| (e, why.as_str()))
        })
        .collect();
    write_dead_letters(name, dead_letters, &refused, 1)
}

/// Appends events to a sink's dead letters, each with why it was given up.
pub(crate) fn write_dead_letters(
    name: &str,
    dead_letters: &DeadLetters,
    events: &[(&Spooled, &str)],
    attempts: u32,
) -> Result<(), SinkError> {
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
    dead_letters
        .append(name, &entries)
        .map_err(|source| SinkError::Io {
            context: format!("cannot write dead letters of sink {name}"),
            source,
        })
}

/// Exponential backoff from [`MIN_BACKOFF`], capped, with ±25% jitter so that sinks and
/// receivers retrying together spread out.
fn backoff(attempts: u32, max: Duration) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(factor)
}

async fn open_at_cursor<S: Sink>(
    name: &str,
    sink: &mut S,
    spool: &Arc<Spool>,
) -> Result<Cursor, SinkError> {
    let reader = Arc::clone(spool);
    let owned = name.to_owned();
    let cursor = tokio::task::spawn_blocking(move || reader.cursor(&owned)).await??;
    sink.open(cursor.state).await?;
    Ok(cursor)
}

/// Sleeps for `delay`; returns true when shutdown was requested meanwhile.
async fn wait(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
