//! The normalization stage: the step between the intake log (one record per accepted
//! request, written before the 200) and the event log the sinks read.
//!
//! One thread reads intake records in seq order, normalizes each once (for every sink),
//! serializes the events, and appends them to the event log, each record's events in one
//! append keyed by the record's intake seq ([`record::source_key`]). Appends are batched:
//! one write and one fdatasync per batch, off the 200 path. Normalization is a pure
//! function of the record (body, endpoint, received time), so what this stage does can be
//! done again:
//!
//! - **Exactly once in the event log.** The newest event-log record names the newest
//!   normalized intake record; it and the events it covers are made durable by the same
//!   fdatasync. On start the stage resumes after it (or after its committed intake cursor,
//!   when that is further), so a crash between the 200 and normalization loses nothing,
//!   and one during normalization repeats only what never reached the event log.
//! - **Nothing dropped.** A body that passed the 200's checks always normalizes; should a
//!   stored record still fail (a body stored under other rules, a fault in this receiver),
//!   it becomes one `kind: unknown` event with the error ([`normalize::unreadable`]).
//! - **Enrichment never blocks the stage.** A record whose events the [`Enrich`] hook
//!   wants (a lead, completed from the Graph API) is enriched on the async runtime, up to
//!   [`Enrich::concurrency`] records at once, while the stage goes on with the records
//!   behind it; its events are appended when the hook is done ([`deferred`] says how that
//!   stays exactly-once across a crash). So events are appended in intake order except a
//!   deferred record's, which come after the records that arrived behind it. Only when
//!   `concurrency` records wait at once does the stage wait, for the first to finish.
//!
//! The intake cursor (`intake/cursors/normalizer.cursor`) is committed about once a second
//! and when idle, never past a record still being enriched; it only lets the intake log
//! delete normalized segments.
//!
//! The thread runs at a lower CPU priority than the request handlers ([`crate::priority`]):
//! under a burst the 200s go first and normalization catches up after, with the requests
//! durable in the intake meanwhile (`spool.max_bytes` bounds both logs together).

mod deferred;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

use self::deferred::{Deferred, Finished};
use crate::config::EndpointConfig;
use crate::event::{Event, Kind};
use crate::metrics::Metrics;
use crate::metrics::events::{EventsAccepted, NormalizationPanicked, RequestNormalized};
use crate::normalize::{self, Context};
use crate::panic_message::panic_message;
use crate::priority;
use crate::spool::record::{self, RawRequest};
use crate::spool::{Cursor, Key, Spool, Spooled};

/// The intake log's one consumer: this stage (its cursor's name).
pub const CONSUMER: &str = "normalizer";
/// Intake records read and appended per batch.
pub const BATCH: usize = 128;
/// Request bytes read per batch, at most (plus one record): a batch of large requests
/// (Meta's payloads reach 3 MB) is read a few at a time, so the stage's memory does not
/// grow with the requests' sizes. The normalized events are about twice as large.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often the intake cursor is committed while busy.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// After a failed append, before trying the same records again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// A boxed future, for the object-safe [`Enrich`] hook.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The hook a record's events pass through after normalization and before they are
/// appended for the sinks (e.g. completing Lead Ads events from the Graph API). It runs
/// on the async runtime, off the stage's thread, for the records it [`Enrich::wants`],
/// so it delays their delivery but never the 200 nor other records. It must be
/// deterministic enough for a crash: a record enriched but not yet appended is
/// normalized and enriched again after a restart.
pub trait Enrich: Send + Sync + fmt::Debug + 'static {
    /// Whether `events` (one request's) need the hook; others are appended as normalized.
    fn wants(&self, events: &[Event]) -> bool;
    /// Completes `events` (one request's) in place. Never fails: what cannot be completed
    /// is marked on the event.
    fn enrich<'a>(&'a self, events: &'a mut [Event]) -> BoxFuture<'a, ()>;
    /// Marks `events` as not enriched, for `reason` (the hook panicked).
    fn give_up(&self, events: &mut [Event], reason: &str);
    /// How many records may be enriched at once (at least 1).
    fn concurrency(&self) -> usize;
}

/// The stage's parts; [`Normalizer::start`] runs it.
#[derive(Debug)]
pub struct Normalizer {
    /// Accepted requests.
    pub intake: Arc<Spool>,
    /// Where the events go (read by the sinks).
    pub events: Arc<Spool>,
    /// The objects each endpoint accepts, by endpoint name (`None`: every object).
    pub objects: HashMap<String, Option<Vec<String>>>,
    /// Where metrics and log lines go.
    pub metrics: Arc<Metrics>,
    /// `log_message_text`.
    pub log_message_text: bool,
    /// The hook; `None`: events are appended as normalized.
    pub enricher: Option<Arc<dyn Enrich>>,
}

/// What a record of a batch became.
enum Outcome {
    /// Its events, to append now.
    Ready(Normalized),
    /// Being enriched (or already was, by an earlier read of the same batch).
    Deferred,
}

impl Normalizer {
    /// The objects of every configured endpoint.
    pub fn objects_of(endpoints: &[EndpointConfig]) -> HashMap<String, Option<Vec<String>>> {
        endpoints
            .iter()
            .map(|e| (e.name.clone(), e.objects.clone()))
            .collect()
    }

    /// Starts the stage on its own thread; it stops once `stop` is true and every record
    /// accepted by then is in the event log (or the event log fails).
    pub fn start(self, stop: watch::Receiver<bool>) -> std::io::Result<JoinHandle<()>> {
        let runtime = Handle::current();
        let limit = self.enricher.as_ref().map_or(1, |e| e.concurrency());
        let (deferred, listed) = Deferred::open(self.intake.cursor_dir(), limit)?;
        std::thread::Builder::new()
            .name("normalizer".into())
            .spawn(move || self.run(&runtime, stop, deferred, &listed))
    }

    /// The newest intake seq already in the event log.
    pub fn watermark(&self) -> u64 {
        let committed = self.intake.cursor(CONSUMER).map_or(0, |c| c.seq);
        let head = *self.intake.subscribe().borrow();
        let newest = self
            .events
            .recovered_tail()
            .and_then(|(_, key)| record::normalized_through(&key));
        match newest {
            Some(seq) if seq > head => {
                tracing::error!(
                    event_log_names = seq,
                    intake_head = head,
                    "the event log names intake records the intake log does not hold (was spool/intake removed?); resuming after the intake cursor"
                );
                committed
            }
            Some(seq) => seq.max(committed),
            None => committed,
        }
    }

    fn run(
        self,
        runtime: &Handle,
        mut stop: watch::Receiver<bool>,
        mut deferred: Deferred,
        listed: &BTreeSet<u64>,
    ) {
        priority::lower_this_thread();
        let mut head = self.intake.subscribe();
        let mut watermark = self.watermark();
        let mut committed = self.intake.cursor(CONSUMER).map_or(0, |c| c.seq);
        let mut last_commit = Instant::now();
        let mut reported = watermark;
        // Deferred records that finished, waiting for the next append.
        let mut finished: Vec<Finished> = Vec::new();
        if watermark > committed {
            self.complete_tail();
        }
        self.resume_deferred(listed, committed, watermark, &mut deferred, runtime);
        tracing::info!(
            after = watermark,
            enriching = listed.len(),
            "normalization stage started"
        );
        loop {
            // Read before the records: stop is set only once every request was answered, so
            // if it was set before this read, the read sees every accepted request.
            let stopping = *stop.borrow();
            finished.extend(deferred.finished());
            let records = match self.intake.read_within(watermark, BATCH, BATCH_BYTES) {
                Ok(records) => records,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the intake log; retrying");
                    std::thread::sleep(RETRY_AFTER);
                    continue;
                }
            };
            // For the gauges: what waits for normalization, and since when.
            self.intake.set_progress(
                CONSUMER,
                deferred.position(watermark),
                records.first().map(|r| r.received_millis),
            );
            let last = records.last().map(|r| r.seq);
            if last.is_none() && finished.is_empty() {
                let position = deferred.position(watermark);
                if committed < position {
                    self.commit(position);
                    committed = position;
                }
                if stopping && deferred.is_empty() {
                    return;
                }
                let mut arrived = None;
                wait_for(
                    async {
                        tokio::select! {
                            _ = head.changed() => {}
                            _ = stop.changed() => {}
                            one = deferred.next_finished() => arrived = one,
                        }
                    },
                    COMMIT_EVERY,
                );
                finished.extend(arrived);
                continue;
            }
            let mut outcomes = Vec::with_capacity(records.len());
            for stored in &records {
                let seen = stored.seq <= reported;
                outcomes.push(self.take(stored, seen, &mut deferred, &mut finished, runtime));
            }
            drop(records);
            // Counted before the append, so a metric never lags an event a sink already
            // delivered; a batch retried after a failed append is not counted again.
            for normalized in outcomes.iter().filter_map(|o| match o {
                Outcome::Ready(n) if n.seq > reported => Some(n),
                _ => None,
            }) {
                self.report(normalized);
            }
            if let Some(last) = last {
                reported = reported.max(last);
            }
            // Every record deferred behind this append is in the file before it.
            if let Err(err) = deferred.persist() {
                tracing::error!(error = %err, "cannot write the normalization stage's deferred requests; retrying");
                std::thread::sleep(RETRY_AFTER);
                continue;
            }
            let late = record::late_key(watermark);
            let mut batch: Vec<(Key, Vec<Vec<u8>>)> = finished
                .iter_mut()
                .map(|f| (late, std::mem::take(&mut f.json)))
                .collect();
            batch.extend(outcomes.into_iter().filter_map(|o| match o {
                Outcome::Ready(n) => Some((record::source_key(n.seq), n.json)),
                Outcome::Deferred => None,
            }));
            if let Err(err) = self.events.append_blocking(batch) {
                tracing::error!(error = %err, "cannot append events to the event log; retrying");
                // The finished records' events were moved into the failed batch: they are
                // enriched again (their seqs stay in flight and in the file).
                self.redo_finished(&mut finished, &mut deferred, runtime);
                if self.events.is_poisoned() {
                    // Nothing more can be stored until a restart (readiness is false).
                    if *stop.borrow() {
                        return;
                    }
                    wait_for(stop.changed(), COMMIT_EVERY);
                } else {
                    std::thread::sleep(RETRY_AFTER);
                }
                continue;
            }
            deferred.appended(finished.drain(..).map(|f| f.seq));
            if let Err(err) = deferred.persist() {
                tracing::warn!(error = %err, "cannot rewrite the normalization stage's deferred requests; after a crash those already appended would be enriched and appended again");
            }
            if let Some(last) = last {
                watermark = last;
            }
            if last_commit.elapsed() >= COMMIT_EVERY {
                let position = deferred.position(watermark);
                self.commit(position);
                committed = position;
                last_commit = Instant::now();
            }
        }
    }

    /// One record of a batch: normalized, and either ready to append or handed to the
    /// enricher (waiting for a slot when `concurrency` records are being enriched), then
    /// reported unless `seen` (a batch read again after a failed append).
    fn take(
        &self,
        stored: &Spooled,
        seen: bool,
        deferred: &mut Deferred,
        finished: &mut Vec<Finished>,
        runtime: &Handle,
    ) -> Outcome {
        if deferred.contains(stored.seq) {
            return Outcome::Deferred;
        }
        let normalized = self.normalize(stored);
        let Some(enricher) = self
            .enricher
            .as_ref()
            .filter(|e| e.wants(&normalized.events))
        else {
            return Outcome::Ready(normalized);
        };
        while deferred.is_full() {
            let mut arrived = None;
            wait_for(
                async { arrived = deferred.next_finished().await },
                COMMIT_EVERY,
            );
            finished.extend(arrived);
        }
        if !seen {
            self.report(&normalized);
        }
        deferred.defer(normalized.seq, normalized.events, enricher, runtime);
        Outcome::Deferred
    }

    /// Enriches again the finished records whose append failed.
    fn redo_finished(
        &self,
        finished: &mut Vec<Finished>,
        deferred: &mut Deferred,
        runtime: &Handle,
    ) {
        for done in finished.drain(..) {
            deferred.appended([done.seq]);
            self.defer_stored(done.seq, deferred, runtime);
        }
    }

    /// After a restart: enriches again the records the deferred file lists that are not in
    /// the event log for sure (the file may also list some that are, appended just before
    /// a crash: those are appended a second time, see [`deferred`]). Records after
    /// `watermark` are read as usual; none can be at or before `committed`.
    fn resume_deferred(
        &self,
        listed: &BTreeSet<u64>,
        committed: u64,
        watermark: u64,
        deferred: &mut Deferred,
        runtime: &Handle,
    ) {
        for &seq in listed.range(committed.saturating_add(1)..=watermark) {
            self.defer_stored(seq, deferred, runtime);
        }
        if let Err(err) = deferred.persist() {
            tracing::warn!(error = %err, "cannot rewrite the normalization stage's deferred requests");
        }
    }

    /// Reads intake record `seq` again and defers it (or, if the hook no longer wants it,
    /// passes its events on as normalized, out of order like a deferred record's).
    fn defer_stored(&self, seq: u64, deferred: &mut Deferred, runtime: &Handle) {
        let stored = match self.intake.read_after(seq.saturating_sub(1), 1) {
            Ok(mut records) if records.first().is_some_and(|r| r.seq == seq) => records.remove(0),
            Ok(_) => {
                tracing::error!(
                    intake_seq = seq,
                    "a deferred request is no longer in the intake log; its events are lost"
                );
                return;
            }
            Err(err) => {
                tracing::error!(intake_seq = seq, error = %err, "cannot read a deferred request from the intake log; its events are lost");
                return;
            }
        };
        let normalized = self.normalize(&stored);
        match self
            .enricher
            .as_ref()
            .filter(|e| e.wants(&normalized.events))
        {
            Some(enricher) => deferred.defer(seq, normalized.events, enricher, runtime),
            None => deferred.pass(seq, normalized.json),
        }
    }

    /// After a crash the event log's newest record may hold only the first events of its
    /// intake record: a batch's write cut short (a `kill -9` stops a large `write` between
    /// pages) before its fsync. Those that reached the log stay, and the rest are appended
    /// now, so each event of the record is in the log exactly once (normalization is a pure
    /// function of the stored request). Only a record past the intake cursor can be
    /// incomplete: the cursor moves after the append it covers was fsync'd. A deferred
    /// record's events ([`record::late_key`]) are completed through the deferred file.
    fn complete_tail(&self) {
        let Some(seq) = self
            .events
            .recovered_tail()
            .and_then(|(_, key)| record::source_of(&key))
        else {
            return;
        };
        let present = self.events.recovered_tail_run();
        let stored = match self.intake.read_after(seq.saturating_sub(1), 1) {
            Ok(mut records) if records.first().is_some_and(|r| r.seq == seq) => records.remove(0),
            Ok(_) => return,
            Err(err) => {
                tracing::error!(intake_seq = seq, error = %err, "cannot read the intake record of the event log's newest events; if a crash cut them short, the rest are missing");
                return;
            }
        };
        let mut normalized = self.normalize(&stored);
        if normalized.json.len() <= present {
            return;
        }
        let missing = normalized.json.split_off(present);
        tracing::warn!(
            intake_seq = seq,
            present,
            missing = missing.len(),
            "the event log's newest request was cut short by a crash; appending its missing events"
        );
        if let Err(err) = self
            .events
            .append_blocking(vec![(record::source_key(seq), missing)])
        {
            tracing::error!(intake_seq = seq, error = %err, "cannot append the missing events of a request cut short by a crash");
        }
    }

    /// Normalizes and serializes one intake record.
    fn normalize(&self, stored: &Spooled) -> Normalized {
        let (endpoint, events) = match RawRequest::decode(&stored.json) {
            Ok(request) => {
                let objects = self
                    .objects
                    .get(request.endpoint)
                    .and_then(|o| o.as_deref());
                (
                    request.endpoint.to_owned(),
                    normalize_request(&request, objects, Some(stored.seq), &self.metrics),
                )
            }
            Err(err) => {
                tracing::error!(seq = stored.seq, error = %err, "an intake record cannot be read; kept whole as an unknown event");
                let received_at = record::rfc3339(stored.received_millis.saturating_mul(1_000_000));
                let ctx = Context {
                    endpoint: "",
                    received_at: &received_at,
                    objects: None,
                };
                let event = normalize::unreadable(&stored.json, &ctx, err.to_string());
                (String::new(), vec![event])
            }
        };
        let json = events.iter().filter_map(serialize).collect();
        Normalized {
            seq: stored.seq,
            endpoint,
            events,
            json,
        }
    }

    /// Metrics and the log line of a normalized record.
    fn report(&self, normalized: &Normalized) {
        let endpoint = normalized.endpoint.as_str();
        self.metrics.emit(EventsAccepted {
            endpoint,
            events: &normalized.events,
            stored: true,
            duplicates: 0,
        });
        let texts = message_texts(&normalized.events, self.log_message_text);
        self.metrics.emit(RequestNormalized {
            endpoint,
            seq: Some(normalized.seq),
            events: normalized.events.len(),
            unknown: unknown_count(&normalized.events),
            texts: &texts,
        });
    }

    /// Commits the intake cursor, letting the intake log delete normalized segments.
    fn commit(&self, watermark: u64) {
        let cursor = Cursor::at(watermark, 0);
        if let Err(err) = self.intake.commit_cursor(CONSUMER, cursor) {
            tracing::warn!(error = %err, "cannot commit the normalization cursor; the intake log keeps its segments until the next commit");
        }
    }
}

/// One record's events, normalized and serialized.
struct Normalized {
    seq: u64,
    endpoint: String,
    events: Vec<Event>,
    json: Vec<Vec<u8>>,
}

/// A stored request's events: [`normalize::normalize`], or, should it fail (or panic),
/// the whole body as one `unknown` event carrying the error. A panic is a bug in this
/// receiver: it is logged with the request's key (`seq`: the intake record, `None` on the
/// request path) and its message, and counted ([`NormalizationPanicked`]).
pub fn normalize_request(
    request: &RawRequest<'_>,
    objects: Option<&[String]>,
    seq: Option<u64>,
    metrics: &Metrics,
) -> Vec<Event> {
    let received_at = request.received_at();
    let ctx = Context {
        endpoint: request.endpoint,
        received_at: &received_at,
        objects,
    };
    let normalized = std::panic::catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        tests::panic_if_asked();
        normalize::normalize(request.body, &ctx)
    }));
    match normalized {
        Ok(Ok(events)) => events,
        Ok(Err(err)) => {
            let error = format!("the stored body cannot be normalized: {err}");
            vec![normalize::unreadable(request.body, &ctx, error)]
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let object = object_of(request.body);
            metrics.emit(NormalizationPanicked {
                endpoint: request.endpoint,
                object: object.as_deref(),
                seq,
                message: &message,
            });
            let error = "normalizing the body failed (a fault in this receiver, reported in its log); the body is kept whole".to_owned();
            vec![normalize::unreadable(request.body, &ctx, error)]
        }
    }
}

/// The body's top-level `object`, if it can be read (for the panic's metric label).
fn object_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Object {
        object: Option<String>,
    }
    serde_json::from_slice::<Object>(body).ok()?.object
}

/// An event's JSON; an event that cannot be serialized is logged and left out (the event
/// type serializes infallibly: strings, numbers and JSON already validated).
pub fn serialize(event: &Event) -> Option<Vec<u8>> {
    match serde_json::to_vec(event) {
        Ok(json) => Some(json),
        Err(err) => {
            tracing::error!(id = %event.id, error = %err, "cannot serialize an event; it is left out");
            None
        }
    }
}

/// Events of kind `unknown`.
pub fn unknown_count(events: &[Event]) -> usize {
    events.iter().filter(|e| e.kind == Kind::Unknown).count()
}

/// The message texts of `events`, when `log_message_text` is on.
pub fn message_texts(events: &[Event], enabled: bool) -> Vec<String> {
    if !enabled {
        return Vec::new();
    }
    events
        .iter()
        .filter_map(|e| e.message.as_ref().and_then(|m| m.text.clone()))
        .collect()
}

/// Polls `future` on this thread until it completes or `timeout` passes. The stage waits
/// this way, not with the runtime's timers, so it never depends on the runtime being
/// alive (a test's runtime may end before the stage is stopped).
fn wait_for<F: Future>(future: F, timeout: Duration) {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let deadline = Instant::now() + timeout;
    loop {
        if future.as_mut().poll(&mut context).is_ready() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests;
