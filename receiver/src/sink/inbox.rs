//! Batches handed to a running sink's delivery loop from outside its cursor: a replay
//! ([`crate::replay`]) re-delivers retained events through the sink the loop owns, so the
//! sink's resume state (the file sink's length, its connection) stays the loop's alone,
//! exactly as for dead letters sent back by `dlq retry`. The cursor does not move.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::spool::Spooled;

/// What became of a parcel's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParcelOutcome {
    /// Events the destination took.
    pub delivered: usize,
    /// Events it refused for good, or the batch after `retry.max_attempts` failed
    /// attempts: (seq, why). They are not dead-lettered: they are still in the spool, and a
    /// replay can be run again.
    pub failed: Vec<(u64, String)>,
}

/// A batch waiting for the delivery loop, and who waits for its outcome.
#[derive(Debug)]
pub(crate) struct Parcel {
    pub(crate) events: Vec<Spooled>,
    pub(crate) reply: oneshot::Sender<ParcelOutcome>,
}

/// The delivery loop stopped (the receiver is shutting down) before delivering a parcel.
#[derive(Debug, thiserror::Error)]
#[error("the sink's delivery loop stopped before delivering the batch (shutting down)")]
pub struct LoopStopped;

/// One sink's inbox; the delivery loop takes a parcel before reading the spool.
#[derive(Debug)]
pub struct Inbox {
    /// The parcels waiting; `None` once the loop is gone.
    queue: Mutex<Option<VecDeque<Parcel>>>,
    notify: Notify,
}

impl Inbox {
    /// An empty inbox, shared by the loop and whoever hands it batches.
    pub fn new() -> Arc<Inbox> {
        Arc::new(Inbox {
            queue: Mutex::new(Some(VecDeque::new())),
            notify: Notify::new(),
        })
    }

    /// Hands `events` to the loop and waits until they are delivered or given up.
    pub async fn deliver(&self, events: Vec<Spooled>) -> Result<ParcelOutcome, LoopStopped> {
        let (reply, outcome) = oneshot::channel();
        match self.queue.lock().as_deref_mut() {
            Ok(Some(queue)) => queue.push_back(Parcel { events, reply }),
            _ => return Err(LoopStopped),
        }
        self.notify.notify_one();
        outcome.await.map_err(|_| LoopStopped)
    }

    /// The next parcel, if any.
    pub(crate) fn take(&self) -> Option<Parcel> {
        self.queue.lock().ok()?.as_mut()?.pop_front()
    }

    /// The loop is gone: parcels waiting, and any handed in later, fail with
    /// [`LoopStopped`].
    pub(crate) fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
    }

    /// Resolves once a parcel may have arrived (possibly at once).
    pub(crate) async fn arrived(&self) {
        self.notify.notified().await;
    }
}
