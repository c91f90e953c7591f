//! Carrying out a replay: check the request against what the spool holds, read the event
//! log from its oldest record (retained events included), select, mark and hand the
//! selection to the sink's delivery loop ([`Inbox`]) a batch at a time, counting as it goes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;

use super::request::{
    EventView, ReplayRequest, RequestError, Selection, from_millis, rfc3339, selection,
};
use crate::event::mark_replayed;
use crate::sink::inbox::{Inbox, LoopStopped};
use crate::spool::dead_letters::DeadLetters;
use crate::spool::{Spool, SpoolError, Spooled};

/// Events read from the spool, and handed to the sink, at a time.
pub const BATCH: usize = 512;
/// Bytes of events read at a time (plus one event).
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// How often a replay waiting for a batch looks whether it was cancelled.
const CANCEL_CHECK: std::time::Duration = std::time::Duration::from_millis(50);
/// Failures listed in a result (all are counted).
const LISTED_FAILURES: usize = 20;

/// What the spool holds: a replay window must start inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Available {
    /// `received_at` of the oldest event held (RFC 3339).
    pub from: String,
    /// `received_at` of the newest (RFC 3339).
    pub to: String,
}

/// Why a replay is refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A request member is wrong.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No configured sink has that name.
    #[error("sink: no sink named {sink:?} (sinks: {})", known.join(", "))]
    UnknownSink {
        /// The name asked for.
        sink: String,
        /// The configured ones.
        known: Vec<String>,
    },
    /// The event log holds nothing to replay.
    #[error("the spool holds no events (spool.retention keeps delivered events for replay)")]
    NothingHeld,
    /// The window starts before the oldest event held, and older ones were deleted.
    #[error(
        "since: {since} is before the oldest event the spool holds; available: {} to {} \
         (spool.retention decides how long delivered events are kept)",
        available.from,
        available.to
    )]
    OutsideRetention {
        /// The window's start.
        since: String,
        /// What the spool holds.
        available: Available,
    },
    /// Reading the spool or the dead letters failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Reading the dead letters failed.
    #[error("cannot read the dead letters: {0}")]
    DeadLetters(std::io::Error),
    /// The sink's delivery loop stopped (the receiver shuts down).
    #[error(transparent)]
    Stopped(#[from] LoopStopped),
    /// Cancelled (`DELETE /admin/replay/ID`, or the command interrupted).
    #[error("cancelled")]
    Cancelled,
    /// A blocking task failed.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ReplayError {
    /// The range the spool holds, when that is why the replay was refused.
    pub fn available(&self) -> Option<&Available> {
        match self {
            ReplayError::OutsideRetention { available, .. } => Some(available),
            _ => None,
        }
    }
}

/// One event the sink did not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Its spool seq.
    pub seq: u64,
    /// Its id.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// Counts so far (and at the end).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Events of the event log read.
    pub scanned: u64,
    /// Events selected (from the log and, with `dead_letters`, from the dead letters).
    pub matched: u64,
    /// Of those, from the dead letters.
    pub matched_dead_letters: u64,
    /// Events the sink took.
    pub delivered: u64,
    /// Events it refused, or gave up on after `retry.max_attempts` attempts.
    pub failed: u64,
    /// The first failures.
    pub failures: Vec<Failure>,
}

/// A checked request, ready to run.
#[derive(Debug)]
pub struct Prepared {
    /// The request.
    pub request: ReplayRequest,
    selection: Selection,
    /// What the spool held when it was checked.
    pub available: Available,
    /// The newest seq then: events spooled later are not replayed.
    head: u64,
}

/// Checks a request against the spool: the sink exists, the members parse, and the window
/// starts inside what the spool holds. Blocking (reads two records).
pub fn prepare(spool: &Spool, request: ReplayRequest) -> Result<Prepared, ReplayError> {
    let selection = selection(&request)?;
    if !spool.sinks().contains(&request.sink) {
        return Err(ReplayError::UnknownSink {
            sink: request.sink,
            known: spool.sinks().to_vec(),
        });
    }
    let head = spool.head();
    let oldest = spool.read_within(spool.before_oldest(), 1, 1)?;
    let newest = spool.read_within(head.saturating_sub(1), 1, 1)?;
    let (Some(oldest), Some(newest)) = (oldest.first(), newest.first()) else {
        return Err(ReplayError::NothingHeld);
    };
    let at = |e: &Spooled| {
        EventView::of(&e.json).map_or_else(
            || from_millis(e.received_millis),
            |v| v.received(e.received_millis),
        )
    };
    let (from, to) = (at(oldest), at(newest));
    let available = Available {
        from: rfc3339(from),
        to: rfc3339(to.max(from)),
    };
    // Refused only when something older was deleted: a log still holding its first record
    // (seq 1) holds everything this spool ever received, whatever the window.
    if selection.since < from && oldest.seq > 1 {
        return Err(ReplayError::OutsideRetention {
            since: rfc3339(selection.since),
            available,
        });
    }
    Ok(Prepared {
        request,
        selection,
        available,
        head,
    })
}

/// Runs a prepared replay: every selected event goes to `inbox` (none with `dry_run`,
/// or without an inbox), marked as replayed; `progress` is updated after each batch and
/// `cancel` looked at between batches.
pub async fn run(
    spool: Arc<Spool>,
    dead_letters: DeadLetters,
    prepared: &Prepared,
    inbox: Option<Arc<Inbox>>,
    progress: &Mutex<Progress>,
    cancel: &AtomicBool,
) -> Result<(), ReplayError> {
    let deliver = if prepared.request.dry_run {
        None
    } else {
        inbox
    };
    let mut after = spool.before_oldest();
    let mut selected = Vec::new();
    while after < prepared.head {
        if cancel.load(Ordering::SeqCst) {
            return Err(ReplayError::Cancelled);
        }
        let reader = Arc::clone(&spool);
        let events =
            tokio::task::spawn_blocking(move || reader.read_within(after, BATCH, BATCH_BYTES))
                .await??;
        let Some(last) = events.last() else { break };
        after = last.seq;
        let mut scanned = 0u64;
        let mut matched = 0u64;
        for event in events.into_iter().filter(|e| e.seq <= prepared.head) {
            scanned += 1;
            if let Some(marked) = select(&prepared.selection, &event) {
                matched += 1;
                selected.push(marked);
            }
        }
        update(progress, |p| {
            p.scanned += scanned;
            p.matched += matched;
        });
        if selected.len() >= BATCH {
            hand_over(
                deliver.as_deref(),
                std::mem::take(&mut selected),
                progress,
                cancel,
            )
            .await?;
        }
    }
    hand_over(
        deliver.as_deref(),
        std::mem::take(&mut selected),
        progress,
        cancel,
    )
    .await?;
    if prepared.request.dead_letters {
        let (store, sink) = (dead_letters, prepared.request.sink.clone());
        let letters = tokio::task::spawn_blocking(move || store.list(&sink))
            .await?
            .map_err(ReplayError::DeadLetters)?;
        let mut matched = Vec::new();
        for letter in letters {
            let event = Spooled {
                seq: letter.seq,
                received_millis: 0,
                json: letter.event.get().as_bytes().to_vec(),
            };
            if let Some(marked) = select(&prepared.selection, &event) {
                matched.push(marked);
            }
        }
        let count = matched.len() as u64;
        update(progress, |p| {
            p.matched += count;
            p.matched_dead_letters += count;
        });
        for chunk in matched.chunks(BATCH) {
            if cancel.load(Ordering::SeqCst) {
                return Err(ReplayError::Cancelled);
            }
            hand_over(deliver.as_deref(), chunk.to_vec(), progress, cancel).await?;
        }
    }
    Ok(())
}

/// The event, marked as replayed, when the selection takes it.
fn select(selection: &Selection, event: &Spooled) -> Option<Spooled> {
    let view = EventView::of(&event.json)?;
    let received = view.received(event.received_millis);
    selection.matches(&view, received).then(|| Spooled {
        seq: event.seq,
        received_millis: event.received_millis,
        json: mark_replayed(&event.json),
    })
}

/// Delivers one batch through the sink's loop and counts the outcome.
async fn hand_over(
    inbox: Option<&Inbox>,
    batch: Vec<Spooled>,
    progress: &Mutex<Progress>,
    cancel: &AtomicBool,
) -> Result<(), ReplayError> {
    let Some(inbox) = inbox.filter(|_| !batch.is_empty()) else {
        return Ok(());
    };
    let ids: Vec<(u64, String)> = batch
        .iter()
        .map(|e| {
            (
                e.seq,
                EventView::of(&e.json)
                    .map(|v| v.id.into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    // A cancel does not wait for a batch the destination is slow to take (or refuses
    // while the sink retries): the batch stays with the sink's loop, which finishes it.
    let outcome = tokio::select! {
        outcome = inbox.deliver(batch) => outcome?,
        () = cancelled(cancel) => return Err(ReplayError::Cancelled),
    };
    update(progress, |p| {
        p.delivered += outcome.delivered as u64;
        p.failed += outcome.failed.len() as u64;
        for (seq, reason) in outcome
            .failed
            .iter()
            .take(LISTED_FAILURES.saturating_sub(p.failures.len()))
        {
            let id = ids
                .iter()
                .find(|(s, _)| s == seq)
                .map(|(_, id)| id.clone())
                .unwrap_or_default();
            p.failures.push(Failure {
                seq: *seq,
                id,
                reason: reason.clone(),
            });
        }
    });
    Ok(())
}

/// Resolves once `cancel` is set (looked at every [`CANCEL_CHECK`]).
async fn cancelled(cancel: &AtomicBool) {
    while !cancel.load(Ordering::SeqCst) {
        tokio::time::sleep(CANCEL_CHECK).await;
    }
}

fn update(progress: &Mutex<Progress>, change: impl FnOnce(&mut Progress)) {
    if let Ok(mut progress) = progress.lock() {
        change(&mut progress);
    }
}

/// Now, as RFC 3339.
pub fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}
