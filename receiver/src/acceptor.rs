//! Where a verified request goes before the answer: its body fsync'd into the intake log
//! (`delivery.mode: spool`; normalized after the 200 by [`crate::normalizer`]) or its
//! events delivered to every sink (`direct`). One enum, so the request path has one step
//! and no mode has a part it does not use (direct mode opens no spool).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sink::SinkError;
use crate::sink::direct::DirectSinks;
use crate::spool::record::RawRequest;
use crate::spool::{Key, Preparing, Spool, SpoolError};

/// The step between a verified request and its 200.
#[derive(Debug)]
pub enum Acceptor {
    /// 200 once the request is fsync'd in the intake log; it is normalized into the event
    /// log after, and sinks consume that on their own.
    Spool {
        /// Accepted requests, one record each.
        intake: Arc<Spool>,
        /// The events the sinks read (its health is the receiver's too).
        events: Arc<Spool>,
    },
    /// 200 once every sink acknowledged the events.
    Direct(DirectSinks),
}

/// A request announced to the acceptor while it is verified (the intake log's group
/// commit waits for announced requests so they share its fsync).
#[derive(Debug)]
pub enum Pending<'a> {
    /// See [`Acceptor::Spool`].
    Spool(Preparing<'a>),
    /// See [`Acceptor::Direct`].
    Direct(&'a DirectSinks),
}

/// What storing a request came to (spool mode).
#[derive(Debug, Default)]
pub struct Stored {
    /// Whether the body was a redelivery within the dedup window, not stored again.
    pub duplicate: bool,
    /// How long the request waited for its group commit.
    pub committed_in: Duration,
}

/// Why a request was not accepted (Meta is told to retry later).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The spool holds `spool.max_bytes` of undelivered requests and events.
    #[error(transparent)]
    SpoolFull(SpoolError),
    /// The spool's append queue is full (its writer is slow): refused before queuing.
    #[error(transparent)]
    QueueFull(SpoolError),
    /// The spool cannot store requests.
    #[error(transparent)]
    Spool(SpoolError),
    /// Direct delivery: a sink did not take the events.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl From<SpoolError> for AcceptError {
    fn from(err: SpoolError) -> AcceptError {
        match err {
            SpoolError::Full { .. } => AcceptError::SpoolFull(err),
            SpoolError::QueueFull { .. } => AcceptError::QueueFull(err),
            other => AcceptError::Spool(other),
        }
    }
}

impl Acceptor {
    /// Announces a request that will follow.
    pub fn prepare(&self) -> Pending<'_> {
        match self {
            Acceptor::Spool { intake, .. } => Pending::Spool(intake.prepare()),
            Acceptor::Direct(sinks) => Pending::Direct(sinks),
        }
    }

    /// Whether requests can still be accepted and normalized (a failed fsync stops a log
    /// for good).
    pub fn is_healthy(&self) -> bool {
        match self {
            Acceptor::Spool { intake, events } => !intake.is_poisoned() && !events.is_poisoned(),
            Acceptor::Direct(_) => true,
        }
    }
}

/// Stores a verified request in the intake log; `key` identifies it for dedup.
pub async fn store(
    preparing: Preparing<'_>,
    key: Key,
    request: &RawRequest<'_>,
) -> Result<Stored, AcceptError> {
    let started = Instant::now();
    let stored = preparing.append(key, vec![request.encode()]).await?;
    Ok(Stored {
        duplicate: stored.duplicates > 0,
        committed_in: started.elapsed(),
    })
}
