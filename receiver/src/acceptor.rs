//! Where a verified request's events go before the answer: fsync'd into the spool
//! (`delivery.mode: spool`) or delivered to every sink (`direct`). One enum, so the request
//! path has one step and no mode has a part it does not use (direct mode opens no spool).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sink::SinkError;
use crate::sink::direct::DirectSinks;
use crate::spool::{Key, Preparing, Spool, SpoolError};

/// The step between a verified request and its 200.
#[derive(Debug)]
pub enum Acceptor {
    /// 200 once the events are fsync'd in the spool; sinks consume it on their own.
    Spool(Arc<Spool>),
    /// 200 once every sink acknowledged the events.
    Direct(DirectSinks),
}

/// A request announced to the acceptor while it is verified and normalized (the spool's
/// group commit waits for announced requests so they share its fsync).
#[derive(Debug)]
pub enum Pending<'a> {
    /// See [`Acceptor::Spool`].
    Spool(Preparing<'a>),
    /// See [`Acceptor::Direct`].
    Direct(&'a DirectSinks),
}

/// What accepting a request's events came to.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Events stored (or delivered).
    pub stored: usize,
    /// Events of a redelivered body, not stored again.
    pub duplicates: usize,
    /// How long the request waited for its group commit (spool only).
    pub committed_in: Option<Duration>,
}

/// Why a request's events were not accepted (Meta is told to retry later).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The spool holds `spool.max_bytes` of undelivered events.
    #[error(transparent)]
    SpoolFull(SpoolError),
    /// The spool cannot store events.
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
            other => AcceptError::Spool(other),
        }
    }
}

impl Acceptor {
    /// Announces a request whose events will follow.
    pub fn prepare(&self) -> Pending<'_> {
        match self {
            Acceptor::Spool(spool) => Pending::Spool(spool.prepare()),
            Acceptor::Direct(sinks) => Pending::Direct(sinks),
        }
    }

    /// Whether events can still be accepted (a failed fsync stops the spool for good).
    pub fn is_healthy(&self) -> bool {
        match self {
            Acceptor::Spool(spool) => !spool.is_poisoned(),
            Acceptor::Direct(_) => true,
        }
    }
}

impl Pending<'_> {
    /// Stores or delivers a request's events; `key` identifies the request for dedup.
    pub async fn accept(self, key: Key, records: Vec<Vec<u8>>) -> Result<Accepted, AcceptError> {
        match self {
            Pending::Spool(preparing) => {
                let started = Instant::now();
                let stored = preparing.append(key, records).await?;
                Ok(Accepted {
                    stored: stored.stored,
                    duplicates: stored.duplicates,
                    committed_in: Some(started.elapsed()),
                })
            }
            Pending::Direct(sinks) => {
                sinks.deliver(&records).await?;
                Ok(Accepted {
                    stored: records.len(),
                    ..Accepted::default()
                })
            }
        }
    }
}
