//! The normalization stage: the step between the intake log (one record per accepted
//! request, written before the 200) and the event log the sinks read.
//!
//! One thread reads intake records in seq order, normalizes each once (for every sink),
//! lets the [`Enrich`] hook complete the events, serializes them, and appends them to the
//! event log, each record's events in one append keyed by the record's intake seq
//! ([`record::source_key`]). Appends are batched: one write and one fdatasync per batch,
//! off the 200 path. Normalization is a pure function of the record (body, endpoint,
//! received time), so what this stage does can be done again:
//!
//! - **Exactly once in the event log.** The newest event-log record names the newest
//!   normalized intake record; it and the events it covers are made durable by the same
//!   fdatasync. On start the stage resumes after it (or after its committed intake cursor,
//!   when that is further), so a crash between the 200 and normalization loses nothing,
//!   and one during normalization repeats only what never reached the event log.
//! - **Nothing dropped.** A body that passed the 200's checks always normalizes; should a
//!   stored record still fail (a body stored under other rules, a fault in this receiver),
//!   it becomes one `kind: unknown` event with the error ([`normalize::unreadable`]).
//!
//! The intake cursor (`intake/cursors/normalizer.cursor`) is committed about once a second
//! and when idle; it only lets the intake log delete normalized segments.
//!
//! The thread runs at a lower CPU priority than the request handlers ([`crate::priority`]):
//! under a burst the 200s go first and normalization catches up after, with the requests
//! durable in the intake meanwhile (`spool.max_bytes` bounds both logs together).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

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

/// The hook every record's events pass through after normalization and before they are
/// appended for the sinks (e.g. completing Lead Ads events from the Graph API). It may
/// change the events in place; it runs on the async runtime, one record at a time, in
/// intake order, so it delays delivery but never the 200. It must be deterministic
/// enough for a crash: events enriched but not yet appended are normalized and enriched
/// again after a restart.
pub trait Enrich: Send + Sync + fmt::Debug + 'static {
    /// Completes `events` (one request's) in place.
    fn enrich<'a>(&'a self, events: &'a mut [Event]) -> BoxFuture<'a, ()>;
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
        std::thread::Builder::new()
            .name("normalizer".into())
            .spawn(move || self.run(&runtime, stop))
    }

    /// The newest intake seq already in the event log.
    pub fn watermark(&self) -> u64 {
        let committed = self.intake.cursor(CONSUMER).map_or(0, |c| c.seq);
        let head = *self.intake.subscribe().borrow();
        let newest = self
            .events
            .recovered_tail()
            .and_then(|(_, key)| record::source_of(&key));
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

    fn run(self, runtime: &Handle, mut stop: watch::Receiver<bool>) {
        priority::lower_this_thread();
        let mut head = self.intake.subscribe();
        let mut watermark = self.watermark();
        let mut committed = self.intake.cursor(CONSUMER).map_or(0, |c| c.seq);
        let mut last_commit = Instant::now();
        let mut reported = watermark;
        if watermark > committed {
            self.complete_tail(runtime);
        }
        tracing::info!(after = watermark, "normalization stage started");
        loop {
            // Read before the records: stop is set only once every request was answered, so
            // if it was set before this read, the read sees every accepted request.
            let stopping = *stop.borrow();
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
                watermark,
                records.first().map(|r| r.received_millis),
            );
            let Some(last) = records.last().map(|r| r.seq) else {
                if committed < watermark {
                    self.commit(watermark);
                    committed = watermark;
                }
                if stopping {
                    return;
                }
                wait_for(
                    async {
                        tokio::select! {
                            _ = head.changed() => {}
                            _ = stop.changed() => {}
                        }
                    },
                    COMMIT_EVERY,
                );
                continue;
            };
            let mut normalized: Vec<Normalized> =
                records.iter().map(|r| self.normalize(r, runtime)).collect();
            drop(records);
            // Counted before the append, so a metric never lags an event a sink already
            // delivered; a batch retried after a failed append is not counted again.
            for normalized in normalized.iter().filter(|n| n.seq > reported) {
                self.report(normalized);
            }
            reported = reported.max(last);
            let batch: Vec<(Key, Vec<Vec<u8>>)> = normalized
                .iter_mut()
                .map(|n| (record::source_key(n.seq), std::mem::take(&mut n.json)))
                .collect();
            if let Err(err) = self.events.append_blocking(batch) {
                tracing::error!(error = %err, records = normalized.len(), "cannot append events to the event log; retrying");
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
            watermark = last;
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit(watermark);
                committed = watermark;
                last_commit = Instant::now();
            }
        }
    }

    /// After a crash the event log's newest record may hold only the first events of its
    /// intake record: a batch's write cut short (a `kill -9` stops a large `write` between
    /// pages) before its fsync. Those that reached the log stay, and the rest are appended
    /// now, so each event of the record is in the log exactly once (normalization is a pure
    /// function of the stored request). Only a record past the intake cursor can be
    /// incomplete: the cursor moves after the append it covers was fsync'd.
    fn complete_tail(&self, runtime: &Handle) {
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
        let mut normalized = self.normalize(&stored, runtime);
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

    /// Normalizes, enriches and serializes one intake record.
    fn normalize(&self, stored: &Spooled, runtime: &Handle) -> Normalized {
        let (endpoint, mut events) = match RawRequest::decode(&stored.json) {
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
        if let Some(enricher) = &self.enricher {
            runtime.block_on(enricher.enrich(&mut events));
        }
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
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Makes the next normalization on this thread panic (see [`panic_if_asked`]).
        static PANIC_NEXT: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// Panics when a test asked for it on this thread: a stand-in for a bug in
    /// [`normalize::normalize`].
    pub(super) fn panic_if_asked() {
        if let Some(message) = PANIC_NEXT.with(Cell::take) {
            std::panic::panic_any(message);
        }
    }

    fn metrics() -> Metrics {
        Metrics::new().expect("metrics")
    }

    #[test]
    fn a_panic_while_normalizing_is_logged_counted_and_kept_as_one_unknown_event() {
        let metrics = metrics();
        let body = br#"{"object":"page","entry":[{"id":"1","time":1700000000,"changes":[{"field":"feed","value":{"item":"status","verb":"add"}}]}]}"#;
        let request = RawRequest {
            received_nanos: 1_764_547_200_000_000_001,
            endpoint: "wa",
            body,
        };
        PANIC_NEXT.with(|p| p.set(Some("a bug in a normalizer")));
        let events = normalize_request(&request, None, Some(42), &metrics);
        assert_eq!(events.len(), 1, "the request becomes one event");
        let event = &events[0];
        assert_eq!(event.kind, Kind::Unknown);
        assert_eq!(event.endpoint, "wa");
        let raw: serde_json::Value = serde_json::from_str(event.raw.get()).expect("raw");
        let sent: serde_json::Value = serde_json::from_slice(body).expect("body");
        assert_eq!(raw, sent, "the body is kept whole");
        assert!(
            event
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("normalizing the body failed")),
            "{:?}",
            event.error
        );
        let text = String::from_utf8(metrics.encode()).expect("utf8");
        assert!(
            text.contains(r#"metahook_normalization_panics_total{endpoint="wa",object="page"} 1"#),
            "{text}"
        );
        // The next request normalizes as usual.
        let events = normalize_request(&request, None, Some(43), &metrics);
        assert_eq!(events.len(), 1);
        assert!(events[0].error.is_none(), "{:?}", events[0].error);
    }

    #[test]
    fn a_panic_on_an_unreadable_body_is_counted_without_an_object() {
        let metrics = metrics();
        let request = RawRequest {
            received_nanos: 1,
            endpoint: "wa",
            body: b"not json",
        };
        PANIC_NEXT.with(|p| p.set(Some("boom")));
        let events = normalize_request(&request, None, None, &metrics);
        assert_eq!(events.len(), 1);
        let text = String::from_utf8(metrics.encode()).expect("utf8");
        assert!(
            text.contains(r#"metahook_normalization_panics_total{endpoint="wa",object="none"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_stored_body_that_cannot_be_normalized_becomes_one_unknown_event() {
        let request = RawRequest {
            received_nanos: 1_764_547_200_000_000_001,
            endpoint: "wa",
            body: br#"{"object": "page", "entry": [1,"#,
        };
        let events = normalize_request(&request, None, None, &metrics());
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.kind, Kind::Unknown);
        assert_eq!(event.endpoint, "wa");
        assert_eq!(event.received_at, "2025-12-01T00:00:00.000000001Z");
        let error = event.error.as_deref().unwrap_or("");
        assert!(
            error.starts_with("the stored body cannot be normalized: the body is not valid JSON"),
            "{error}"
        );
        let raw: String =
            serde_json::from_str(event.raw.get()).expect("raw is the body as a string");
        assert_eq!(raw.as_bytes(), request.body);
        assert_eq!(event.id.len(), 64, "a content hash");
    }

    #[test]
    fn a_stored_body_normalizes_as_it_would_have_before_the_200() {
        let body = br#"{"object":"page","entry":[{"id":"1","time":1700000000,"changes":[{"field":"feed","value":{"item":"status","verb":"add"}}]}]}"#;
        let request = RawRequest {
            received_nanos: 1_764_547_200_500_000_000,
            endpoint: "fb",
            body,
        };
        let received_at = request.received_at();
        let ctx = Context {
            endpoint: "fb",
            received_at: &received_at,
            objects: None,
        };
        let direct = normalize::normalize(body, &ctx).expect("normalize");
        let staged = normalize_request(&request, None, None, &metrics());
        let json = |events: &[Event]| events.iter().filter_map(serialize).collect::<Vec<_>>();
        assert_eq!(json(&staged), json(&direct));
    }

    fn body(ids: &[&str]) -> Vec<u8> {
        let messages: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"from":"1555","id":"{id}","timestamp":"1700000000","type":"text","text":{{"body":"hi"}}}}"#))
            .collect();
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"2"}},"messages":[{}]}}}}]}}]}}"#,
            messages.join(",")
        )
        .into_bytes()
    }

    struct Logs {
        intake: Arc<Spool>,
        events: Arc<Spool>,
    }

    fn open(dir: &std::path::Path) -> Logs {
        let config = crate::config::SpoolConfig::new(dir.join("spool"));
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        Logs {
            intake: Arc::new(Spool::open_intake(&config, CONSUMER, &total).expect("intake")),
            events: Arc::new(
                Spool::open_events(&config, &["file".into()], &total).expect("events"),
            ),
        }
    }

    async fn accept(logs: &Logs, key: u8, ids: &[&str]) {
        let body = body(ids);
        let request = RawRequest {
            received_nanos: record::now_nanos(),
            endpoint: "wa",
            body: &body,
        };
        let stored = logs
            .intake
            .append([key; 16], vec![request.encode()])
            .await
            .expect("append");
        assert_eq!(stored.stored, 1);
    }

    /// Runs the stage until everything accepted is normalized, then stops it.
    async fn run_stage(logs: &Logs) {
        let stage = Normalizer {
            intake: Arc::clone(&logs.intake),
            events: Arc::clone(&logs.events),
            objects: HashMap::new(),
            metrics: Arc::new(Metrics::new().expect("metrics")),
            log_message_text: false,
            enricher: None,
        };
        let (stop, stopped) = watch::channel(true);
        let thread = stage.start(stopped).expect("start");
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join task")
            .expect("stage thread");
        drop(stop);
    }

    fn ids(logs: &Logs) -> Vec<String> {
        logs.events
            .read_after(0, 1000)
            .expect("read")
            .iter()
            .map(|e| {
                let event: Event = serde_json::from_slice(&e.json).expect("event");
                event.id
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_cut_short_in_the_event_log_is_completed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = open(dir.path());
        accept(&logs, 1, &["m1", "m2", "m3"]).await;
        // What a crash in the middle of the stage's write leaves: the request's first event
        // in the event log, durable, the other two not, the intake cursor not moved.
        let stored = logs.intake.read_after(0, 1).expect("read intake");
        let request = RawRequest::decode(&stored[0].json).expect("decode");
        let first =
            serialize(&normalize_request(&request, None, None, &metrics())[0]).expect("json");
        logs.events
            .append(record::source_key(stored[0].seq), vec![first])
            .await
            .expect("append");
        assert_eq!(ids(&logs), ["m1"]);
        logs.intake.close();
        logs.events.close();
        drop(logs);

        let logs = open(dir.path());
        assert_eq!(logs.events.recovered_tail_run(), 1);
        run_stage(&logs).await;
        assert_eq!(ids(&logs), ["m1", "m2", "m3"], "each event once, in order");
        // Started again: nothing is appended twice.
        logs.intake.close();
        logs.events.close();
        drop(logs);
        let logs = open(dir.path());
        run_stage(&logs).await;
        assert_eq!(ids(&logs), ["m1", "m2", "m3"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_accepted_request_is_normalized_once_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = open(dir.path());
        accept(&logs, 1, &["m1"]).await;
        accept(&logs, 2, &["m2", "m3"]).await;
        run_stage(&logs).await;
        assert_eq!(ids(&logs), ["m1", "m2", "m3"]);
        // Stopped and started again: only what is new is normalized.
        accept(&logs, 3, &["m4"]).await;
        run_stage(&logs).await;
        assert_eq!(ids(&logs), ["m1", "m2", "m3", "m4"]);

        // A crash after the events were durable but before the intake cursor moved: the
        // newest event-log record says where the stage was.
        accept(&logs, 4, &["m5"]).await;
        run_stage(&logs).await;
        logs.intake.close();
        logs.events.close();
        drop(logs);
        let cursor = dir.path().join("spool/intake/cursors/normalizer.cursor");
        std::fs::write(&cursor, "0 0\n").expect("an old cursor");
        let logs = open(dir.path());
        run_stage(&logs).await;
        assert_eq!(ids(&logs), ["m1", "m2", "m3", "m4", "m5"], "nothing twice");

        // A crash between the 200 and normalization: the stage finds the request at start.
        accept(&logs, 5, &["m6"]).await;
        logs.intake.close();
        logs.events.close();
        drop(logs);
        let logs = open(dir.path());
        run_stage(&logs).await;
        assert_eq!(ids(&logs), ["m1", "m2", "m3", "m4", "m5", "m6"]);
    }
}
