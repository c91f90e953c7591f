//! The stage's tests: normalization faults and crash recovery.

use std::cell::Cell;

use super::*;
use crate::normalizer::deferred::Deferred;

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
    let raw: String = serde_json::from_str(event.raw.get()).expect("raw is the body as a string");
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
        events: Arc::new(Spool::open_events(&config, &["file".into()], &total).expect("events")),
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
    run_stage_with(logs, None).await;
}

/// [`run_stage`] with `enricher`.
async fn run_stage_with(logs: &Logs, enricher: Option<Arc<dyn Enrich>>) {
    let (stop, stopped) = watch::channel(true);
    let thread = stage(logs, enricher).start(stopped).expect("start");
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join task")
        .expect("stage thread");
    drop(stop);
}

fn stage(logs: &Logs, enricher: Option<Arc<dyn Enrich>>) -> Normalizer {
    Normalizer {
        intake: Arc::clone(&logs.intake),
        events: Arc::clone(&logs.events),
        objects: HashMap::new(),
        metrics: Arc::new(Metrics::new().expect("metrics")),
        log_message_text: false,
        enricher,
    }
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
    let first = serialize(&normalize_request(&request, None, None, &metrics())[0]).expect("json");
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

/// An enricher for the stage's tests: it wants the events whose id starts with `lead`,
/// waits until `gate` is open, and marks them by appending `+enriched` to their id.
#[derive(Debug)]
struct GatedEnricher {
    gate: watch::Receiver<bool>,
}

impl GatedEnricher {
    fn with_gate(open: bool) -> (watch::Sender<bool>, Arc<dyn Enrich>) {
        let (open, gate) = watch::channel(open);
        (open, Arc::new(GatedEnricher { gate }))
    }
}

impl Enrich for GatedEnricher {
    fn wants(&self, events: &[Event]) -> bool {
        events.iter().any(|e| e.id.starts_with("lead"))
    }

    fn enrich<'a>(&'a self, events: &'a mut [Event]) -> BoxFuture<'a, ()> {
        let mut gate = self.gate.clone();
        Box::pin(async move {
            let _ = gate.wait_for(|open| *open).await;
            for event in events.iter_mut() {
                event.id.push_str("+enriched");
            }
        })
    }

    fn give_up(&self, _: &mut [Event], _: &str) {}

    fn concurrency(&self) -> usize {
        4
    }
}

async fn wait_for_ids(logs: &Logs, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = ids(logs);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the event log holds {now:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn deferred_file(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("spool/intake/cursors").join(deferred::FILE))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_being_enriched_holds_back_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = open(dir.path());
    let (open_gate, enricher) = GatedEnricher::with_gate(false);
    accept(&logs, 1, &["m1"]).await;
    accept(&logs, 2, &["lead2"]).await;
    accept(&logs, 3, &["m3", "m4"]).await;
    let (stop, stopped) = watch::channel(false);
    let thread = stage(&logs, Some(enricher)).start(stopped).expect("start");

    // The records behind the lead are appended while it waits; the file lists it and the
    // intake cursor stays before it.
    wait_for_ids(&logs, &["m1", "m3", "m4"]).await;
    assert_eq!(deferred_file(dir.path()), "2\n");
    accept(&logs, 4, &["m5"]).await;
    wait_for_ids(&logs, &["m1", "m3", "m4", "m5"]).await;
    assert!(logs.intake.cursor(CONSUMER).expect("cursor").seq <= 1);

    // Enriched, it follows, once; the file empties and the cursor passes it.
    open_gate.send_replace(true);
    wait_for_ids(&logs, &["m1", "m3", "m4", "m5", "lead2+enriched"]).await;
    stop.send_replace(true);
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join task")
        .expect("stage thread");
    assert_eq!(deferred_file(dir.path()), "");
    assert_eq!(logs.intake.cursor(CONSUMER).expect("cursor").seq, 4);

    // Started again, nothing is appended twice.
    logs.intake.close();
    logs.events.close();
    drop(logs);
    let logs = open(dir.path());
    run_stage(&logs).await;
    assert_eq!(ids(&logs), ["m1", "m3", "m4", "m5", "lead2+enriched"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_a_record_is_enriched_enriches_it_again_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = open(dir.path());
    accept(&logs, 1, &["lead1"]).await;
    accept(&logs, 2, &["m2"]).await;
    // What a crash while lead1 was being enriched leaves: its seq in the file, written
    // before m2 was appended; m2 in the event log; the intake cursor before lead1.
    let (mut deferred, _) = Deferred::open(logs.intake.cursor_dir(), 4).expect("deferred file");
    deferred.pass(1, Vec::new());
    deferred.persist().expect("persist");
    let stored = logs.intake.read_after(1, 1).expect("read intake");
    let request = RawRequest::decode(&stored[0].json).expect("decode");
    let m2 = serialize(&normalize_request(&request, None, None, &metrics())[0]).expect("json");
    logs.events
        .append(record::source_key(2), vec![m2])
        .await
        .expect("append");
    logs.intake.close();
    logs.events.close();
    drop(logs);

    let logs = open(dir.path());
    let (_open, enricher) = GatedEnricher::with_gate(true);
    run_stage_with(&logs, Some(enricher)).await;
    assert_eq!(
        ids(&logs),
        ["m2", "lead1+enriched"],
        "m2 once, lead1 enriched"
    );
    assert_eq!(deferred_file(dir.path()), "");
    assert_eq!(logs.intake.cursor(CONSUMER).expect("cursor").seq, 2);

    // A crash after lead1's events were appended but before the file was rewritten: the
    // newest record's late key says the stage was past m2, so m2 is not appended again.
    let (mut deferred, _) = Deferred::open(logs.intake.cursor_dir(), 4).expect("deferred file");
    deferred.pass(1, Vec::new());
    deferred.persist().expect("persist");
    std::fs::write(
        dir.path().join("spool/intake/cursors/normalizer.cursor"),
        "0 0\n",
    )
    .expect("an old cursor");
    logs.intake.close();
    logs.events.close();
    drop(logs);
    let logs = open(dir.path());
    let (_open, enricher) = GatedEnricher::with_gate(true);
    run_stage_with(&logs, Some(enricher)).await;
    assert_eq!(
        ids(&logs),
        ["m2", "lead1+enriched", "lead1+enriched"],
        "the one duplicate the module docs name: the finished lead, with its id"
    );
}
