//! Sinks: where spooled events go. Each sink consumes the spool with its own cursor, so a
//! slow or failing sink never holds up the others or the 200 path.
//!
//! A sink implements [`Sink`]; [`consume`] drives it: read a batch after the cursor,
//! deliver it, then commit the cursor together with the sink's resume state. After any
//! failure the sink is reopened from its last committed state and the batch retried with
//! exponential backoff, so nothing is skipped and (for the file sink) nothing is doubled.

pub mod file;
pub mod nats;
pub mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::spool::{Cursor, Spool, SpoolError, Spooled};

/// Events per delivered batch.
pub const BATCH_SIZE: usize = 512;
/// After a batch smaller than [`BATCH_SIZE`], how long a sink waits for more events before
/// reading again. Delivery is off the 200 path, so a few milliseconds of delay cost nothing,
/// while delivering (and fsyncing, and committing the cursor) per group commit would double
/// the receiver's I/O. Full batches never wait, so a sink keeps up at any rate.
pub const LINGER: Duration = Duration::from_millis(20);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    /// Delivers a batch in order; returns the state to commit with the cursor.
    fn deliver(&mut self, batch: &[Spooled])
    -> impl Future<Output = Result<u64, SinkError>> + Send;
}

/// Runs a sink until `shutdown` turns true and everything spooled by then is delivered
/// (or, while the sink is failing, until shutdown).
pub async fn consume<S: Sink>(
    name: String,
    mut sink: S,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut head = spool.subscribe();
    let mut backoff = MIN_BACKOFF;
    let mut cursor = loop {
        match open_at_cursor(&name, &mut sink, &spool).await {
            Ok(cursor) => break cursor,
            Err(err) => {
                tracing::error!(sink = %name, error = %err, "cannot open sink; retrying");
                if wait(&mut shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    backoff = MIN_BACKOFF;
    let lag = metrics.sink_lag.with_label_values(&[&name]);
    let delivered = metrics
        .sink_deliveries
        .with_label_values(&[&name, "success"]);
    let failed = metrics.sink_deliveries.with_label_values(&[&name, "error"]);
    let duration = metrics.sink_delivery_duration.with_label_values(&[&name]);
    loop {
        #[allow(clippy::cast_precision_loss)]
        lag.set(head.borrow().saturating_sub(cursor.seq) as f64);
        let reader = Arc::clone(&spool);
        let after = cursor.seq;
        let batch =
            match tokio::task::spawn_blocking(move || reader.read_after(after, BATCH_SIZE)).await {
                Ok(Ok(batch)) => batch,
                Ok(Err(err)) => {
                    tracing::error!(sink = %name, error = %err, "cannot read the spool");
                    if wait(&mut shutdown, backoff).await {
                        return;
                    }
                    continue;
                }
                Err(err) => {
                    tracing::error!(sink = %name, error = %err, "spool read task failed");
                    return;
                }
            };
        spool.set_pending(&name, batch.first().map(|e| e.received_millis));
        let Some(last) = batch.last().map(|e| e.seq) else {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        };
        let started = Instant::now();
        let result = deliver_and_commit(&name, &mut sink, &spool, &batch, last).await;
        duration.observe(started.elapsed().as_secs_f64());
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match result {
            Ok(next) => {
                delivered.inc_by(count);
                cursor = next;
                backoff = MIN_BACKOFF;
                if batch.len() < BATCH_SIZE && !*shutdown.borrow() {
                    // Shutdown interrupts the wait: what is left is delivered at once.
                    wait(&mut shutdown, LINGER).await;
                }
            }
            Err(err) => {
                failed.inc_by(count);
                tracing::warn!(sink = %name, error = %err, events = batch.len(), retry_in_ms = backoff.as_millis(), "delivery failed; will retry");
                if wait(&mut shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // Resume from what is durably committed, whatever the failure left behind.
                match open_at_cursor(&name, &mut sink, &spool).await {
                    Ok(committed) => cursor = committed,
                    Err(err) => tracing::error!(sink = %name, error = %err, "cannot reopen sink"),
                }
            }
        }
    }
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

async fn deliver_and_commit<S: Sink>(
    name: &str,
    sink: &mut S,
    spool: &Arc<Spool>,
    batch: &[Spooled],
    last: u64,
) -> Result<Cursor, SinkError> {
    let state = sink.deliver(batch).await?;
    let cursor = Cursor { seq: last, state };
    let writer = Arc::clone(spool);
    let owned = name.to_owned();
    tokio::task::spawn_blocking(move || writer.commit_cursor(&owned, cursor)).await??;
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
