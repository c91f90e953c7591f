//! Requests whose events wait for the [`Enrich`] hook (Lead Ads' Graph API calls) off the
//! normalization stage's thread, so that a slow or throttled Graph API never holds back
//! the other requests: at most `limit` at once, each on the async runtime.
//!
//! How the stage stays exactly-once with requests finishing out of order:
//!
//! - The stage's position is the newest request appended to the event log
//!   ([`crate::spool::record::normalized_through`] of its newest record). A deferred request is behind
//!   that position, so its seq is written to `intake/cursors/normalizer.deferred` (a small
//!   file replaced atomically and fsync'd) before any later request is appended; after a
//!   crash the stage enriches the requests it lists again ([`Deferred::open`]).
//! - The intake cursor stays before the oldest deferred request (see
//!   [`Deferred::oldest`]), so its intake record is kept until its events are appended.
//! - A deferred request's events are appended under [`crate::spool::record::late_key`], which names the
//!   stage's position then, not the request's own older seq.
//! - Its seq leaves the file only after its events were appended. A crash between that
//!   append's fsync and the file's rewrite enriches the request again and appends its
//!   events a second time, with the same ids: the one duplicate the event log can hold.

use std::collections::BTreeSet;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{Enrich, serialize};
use crate::event::Event;
use crate::panic_message::panic_message;
use crate::spool::segment::sync_dir;

/// The file's name in the intake log's cursor directory.
pub const FILE: &str = "normalizer.deferred";

/// A deferred request whose enrichment finished: its events, serialized.
#[derive(Debug)]
pub struct Finished {
    /// Its intake seq.
    pub seq: u64,
    /// Its events' JSON.
    pub json: Vec<Vec<u8>>,
}

/// The requests being enriched off the stage's thread, and their file.
#[derive(Debug)]
pub struct Deferred {
    file: PathBuf,
    limit: usize,
    /// Deferred and not yet appended.
    in_flight: BTreeSet<u64>,
    /// Of those, how many the hook is still working on.
    running: usize,
    /// What the file lists.
    listed: BTreeSet<u64>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
}

impl Deferred {
    /// Opens the set for the intake log whose cursors are in `cursor_dir`, returning the
    /// requests its file lists (deferred when the stage last stopped, or crashed).
    pub fn open(cursor_dir: &Path, limit: usize) -> std::io::Result<(Deferred, BTreeSet<u64>)> {
        let file = cursor_dir.join(FILE);
        let listed = match std::fs::read_to_string(&file) {
            Ok(text) => parse(&text).map_err(|line| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: line {line:?} is not an intake seq", file.display()),
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(err) => return Err(err),
        };
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let deferred = Deferred {
            file,
            limit: limit.max(1),
            in_flight: BTreeSet::new(),
            running: 0,
            listed: listed.clone(),
            finished_tx,
            finished_rx,
        };
        Ok((deferred, listed))
    }

    /// Whether `seq` is being enriched (a batch read again after a failed append skips it).
    pub fn contains(&self, seq: u64) -> bool {
        self.in_flight.contains(&seq)
    }

    /// Whether `limit` requests are being enriched: the stage waits for one to finish.
    pub fn is_full(&self) -> bool {
        self.running >= self.limit
    }

    /// Whether nothing is being enriched.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The oldest request being enriched: the intake cursor stays before it.
    pub fn oldest(&self) -> Option<u64> {
        self.in_flight.first().copied()
    }

    /// Enriches request `seq`'s `events` on the runtime; [`Deferred::next_finished`]
    /// returns them. A panic in the hook delivers the events as normalized, marked by
    /// [`Enrich::give_up`] with the panic's message.
    pub fn defer(
        &mut self,
        seq: u64,
        mut events: Vec<Event>,
        enricher: &Arc<dyn Enrich>,
        runtime: &Handle,
    ) {
        self.in_flight.insert(seq);
        self.running += 1;
        let enricher = Arc::clone(enricher);
        let finished = self.finished_tx.clone();
        let before = events.clone();
        runtime.spawn(async move {
            let enriched = AssertUnwindSafe(enricher.enrich(&mut events))
                .catch_unwind()
                .await;
            if let Err(payload) = enriched {
                let message = panic_message(payload.as_ref());
                tracing::error!(intake_seq = seq, panic = %message, "the enricher panicked (a fault in this receiver); the request's events are delivered as normalized");
                events = before;
                enricher.give_up(&mut events, &format!("the enricher failed: {message}"));
            }
            let json = events.iter().filter_map(serialize).collect();
            // The stage is gone only when the process stops; the file brings it back.
            let _ = finished.send(Finished { seq, json });
        });
    }

    /// Request `seq`'s events as they are, appended out of order like an enriched
    /// request's (one the file listed that the hook, now off, no longer wants).
    pub fn pass(&mut self, seq: u64, json: Vec<Vec<u8>>) {
        self.in_flight.insert(seq);
        self.running += 1;
        let _ = self.finished_tx.send(Finished { seq, json });
    }

    /// Waits for the next request to finish (forever while none is being enriched).
    pub async fn next_finished(&mut self) -> Option<Finished> {
        let one = self.finished_rx.recv().await;
        if one.is_some() {
            self.running = self.running.saturating_sub(1);
        }
        one
    }

    /// The requests that finished, without waiting.
    pub fn finished(&mut self) -> Vec<Finished> {
        let mut finished = Vec::new();
        while let Ok(one) = self.finished_rx.try_recv() {
            finished.push(one);
        }
        self.running = self.running.saturating_sub(finished.len());
        finished
    }

    /// The stage's position for the intake cursor and the gauges: `watermark`, or just
    /// before the oldest request being enriched.
    pub fn position(&self, watermark: u64) -> u64 {
        self.oldest()
            .map_or(watermark, |seq| seq.saturating_sub(1).min(watermark))
    }

    /// Forgets requests whose events were appended.
    pub fn appended(&mut self, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            self.in_flight.remove(&seq);
        }
    }

    /// Makes the file list exactly the requests being enriched (a no-op when it does),
    /// durably. Before an append it must list every request deferred behind it.
    pub fn persist(&mut self) -> std::io::Result<()> {
        if self.listed == self.in_flight {
            return Ok(());
        }
        let dir = self.file.parent().unwrap_or_else(|| Path::new("."));
        let tmp = self.file.with_extension("deferred.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        for seq in &self.in_flight {
            writeln!(file, "{seq}")?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &self.file)?;
        sync_dir(dir)?;
        self.listed.clone_from(&self.in_flight);
        Ok(())
    }
}

/// The file's seqs, one per line; the offending line otherwise.
fn parse(text: &str) -> Result<BTreeSet<u64>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| line.parse::<u64>().map_err(|_| line.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lists_what_is_in_flight_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut deferred, listed) = Deferred::open(dir.path(), 2).expect("open");
        assert!(listed.is_empty());
        deferred.in_flight.extend([7, 9]);
        deferred.running = 2;
        assert!(deferred.is_full());
        assert_eq!(deferred.position(20), 6);
        assert_eq!(deferred.oldest(), Some(7));
        deferred.persist().expect("persist");
        let (_, listed) = Deferred::open(dir.path(), 2).expect("reopen");
        assert_eq!(listed, BTreeSet::from([7, 9]));
        deferred.appended([7]);
        deferred.persist().expect("persist");
        let (_, listed) = Deferred::open(dir.path(), 2).expect("reopen");
        assert_eq!(listed, BTreeSet::from([9]));
    }

    #[test]
    fn a_damaged_file_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "12\nbanana\n").expect("write");
        let err = Deferred::open(dir.path(), 2).expect_err("refused");
        assert!(err.to_string().contains("\"banana\""), "{err}");
    }
}
