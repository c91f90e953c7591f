use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame};

use super::response::Outcome;
use super::*;
use crate::acceptor::AcceptError;
use crate::config::{SpoolConfig, TrustedProxyConfig};
use crate::sink::direct::DirectSinks;
use crate::spool::Spool;
use crate::spool::SpoolError;
use crate::spool::dead_letters::DeadLetters;
use crate::spool::faults::Fault;
use crate::verify;

const SECRET: &[u8] = b"app-secret";
const BODY: &str = r#"{"object":"page","entry":[{"id":"1","time":1700000000,"changes":[{"field":"feed","value":{"item":"status","verb":"add"}}]}]}"#;

fn config(dir: &Path) -> Config {
    std::fs::write(dir.join("secret"), SECRET).expect("secret");
    std::fs::write(dir.join("token"), "tok").expect("token");
    let endpoint = EndpointConfig {
        name: "wa".into(),
        path: "/wa".into(),
        objects: None,
        app_secret_file: Some(dir.join("secret")),
        app_secret_env: None,
        previous_app_secret_file: None,
        previous_app_secret_env: None,
        verify_token_file: Some(dir.join("token")),
        verify_token_env: None,
        legacy_sha1_signature: false,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config::new(addr, vec![endpoint], SpoolConfig::new(dir.join("spool")));
    config.limits.max_in_flight = 1;
    config.limits.max_body_bytes = 4096;
    config.limits.request_timeout = Duration::from_millis(200);
    config
}

fn spooled(config: &Config) -> Receiver {
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let intake = Spool::open_intake(&config.spool, "normalizer", &total).expect("intake");
    let events = Spool::open_events(&config.spool, &[], &total).expect("events");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let acceptor = Acceptor::Spool {
        intake: Arc::new(intake),
        events: Arc::new(events),
    };
    Receiver::new(config, acceptor, metrics).expect("receiver")
}

/// The intake log of a spooled receiver.
fn intake(receiver: &Receiver) -> Arc<Spool> {
    match &receiver.acceptor {
        Acceptor::Spool { intake, .. } => Arc::clone(intake),
        Acceptor::Direct(_) => unreachable!("a spooled receiver"),
    }
}

/// Polls `/metrics` until it holds `sample` (the failure hook runs on the writer thread,
/// right after the failed request is answered).
async fn wait_for_metric(receiver: &Receiver, sample: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8(receiver.metrics.encode()).expect("utf8");
        if text.contains(sample) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sample} missing:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn connection(role: Role) -> Connection {
    Connection {
        peer: Peer::plain(SocketAddr::from(([127, 0, 0, 1], 40000))),
        role,
    }
}

fn request(method: Method, uri: &str, body: &str, signed: bool) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(method).uri(uri);
    if signed {
        request = request.header(
            verify::SIGNATURE_HEADER,
            verify::sign(SECRET, body.as_bytes()),
        );
    }
    request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

async fn answer<B>(
    receiver: &Receiver,
    request: Request<B>,
) -> (StatusCode, String, http::HeaderMap)
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let response = receiver.handle(request, &connection(Role::Webhooks)).await;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("utf8");
    (parts.status, text, parts.headers)
}

#[tokio::test]
async fn probes_answer_without_an_endpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let receiver = spooled(&config(dir.path()));
    let get = |path: &str| request(Method::GET, path, "", false);
    assert_eq!(answer(&receiver, get("/healthz")).await.0, StatusCode::OK);
    let (status, body, _) = answer(&receiver, get("/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    );
    receiver.set_ready(true);
    assert_eq!(answer(&receiver, get("/readyz")).await.1, "ready\n");
    let (status, body, headers) = answer(&receiver, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("metahook_requests_total"), "{body}");
    assert_eq!(
        headers[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (status, _, headers) =
        answer(&receiver, request(Method::POST, "/healthz", "", false)).await;
    assert_eq!(
        (status, &headers[ALLOW]),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            &HeaderValue::from_static("GET, HEAD")
        )
    );
    let (status, body, _) = answer(&receiver, get("/nowhere")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "no webhook endpoint at this path\n")
    );
    let probes = receiver.handle(get("/wa"), &connection(Role::Probes)).await;
    assert_eq!(probes.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_handshake_echoes_the_challenge_only_for_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    let receiver = spooled(&config(dir.path()));
    let query = "/wa?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=42";
    let (status, body, _) = answer(&receiver, request(Method::GET, query, "", false)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "42"));
    let wrong = query.replace("tok", "bad");
    let (status, body, _) = answer(&receiver, request(Method::GET, &wrong, "", false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.starts_with("verification refused"), "{body}");
    let (status, _, headers) = answer(&receiver, request(Method::PUT, "/wa", "", false)).await;
    assert_eq!(
        (status, &headers[ALLOW]),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            &HeaderValue::from_static("GET, POST")
        )
    );
}

#[tokio::test]
async fn posts_are_accepted_once_and_refused_for_each_fault() {
    let dir = tempfile::tempdir().expect("dir");
    let receiver = spooled(&config(dir.path()));
    let post = |body: &str, signed| request(Method::POST, "/wa", body, signed);
    let (status, body, _) = answer(&receiver, post(BODY, true)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "EVENT_RECEIVED\n")
    );
    let (status, _, _) = answer(&receiver, post(BODY, true)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a redelivery is a duplicate, answered 200"
    );
    let metrics = String::from_utf8(receiver.metrics.encode()).expect("utf8");
    assert!(
        metrics.contains(r#"metahook_duplicates_total{endpoint="wa"} 1"#),
        "{metrics}"
    );
    assert_eq!(
        answer(&receiver, post(BODY, false)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let mut forged = post(BODY, false);
    forged.headers_mut().insert(
        verify::SIGNATURE_HEADER,
        HeaderValue::from_static("sha256=00"),
    );
    assert_eq!(answer(&receiver, forged).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        answer(&receiver, post("[1]", true)).await.0,
        StatusCode::BAD_REQUEST
    );
    let mut declared = post(BODY, true);
    declared
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("999999"));
    let (status, _, headers) = answer(&receiver, declared).await;
    assert_eq!(
        (status, &headers[CONNECTION]),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            &HeaderValue::from_static("close")
        )
    );
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
    assert_eq!(
        answer(&receiver, post(&big, true)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let broken = StreamBody::new(stream::iter([Err::<Frame<Bytes>, _>(
        std::io::Error::other("reset"),
    )]));
    let request = Request::post("/wa")
        .header(verify::SIGNATURE_HEADER, "sha256=00")
        .body(broken)
        .expect("request");
    assert_eq!(answer(&receiver, request).await.0, StatusCode::BAD_REQUEST);
}

#[test]
fn every_admission_refusal_has_a_series_from_the_start() {
    let outcomes = [
        Outcome::Overloaded,
        Outcome::PeerLimit,
        Outcome::BodyBudget,
        Outcome::TooLarge { limit: 1 },
        Outcome::Timeout,
        Outcome::BodyError(String::new()),
        Outcome::NotAccepted(AcceptError::QueueFull(SpoolError::QueueFull {
            requests: 1,
            bytes: 1,
        })),
    ];
    let reasons: Vec<&str> = outcomes
        .iter()
        .filter_map(Outcome::admission_refusal)
        .collect();
    assert_eq!(reasons, crate::metrics::events::ADMISSION_REASONS);
    let dir = tempfile::tempdir().expect("dir");
    let receiver = spooled(&config(dir.path()));
    let metrics = String::from_utf8(receiver.metrics.encode()).expect("utf8");
    for reason in reasons {
        let sample =
            format!(r#"metahook_admission_refusals_total{{endpoint="wa",reason="{reason}"}} 0"#);
        assert!(metrics.contains(&sample), "{sample} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn an_unsigned_post_is_refused_without_reading_its_body() {
    let dir = tempfile::tempdir().expect("dir");
    let receiver = spooled(&config(dir.path()));
    let polled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&polled);
    let body = StreamBody::new(stream::poll_fn(move |_| {
        flag.store(true, Ordering::SeqCst);
        std::task::Poll::Ready(None::<Result<Frame<Bytes>, std::io::Error>>)
    }));
    let request = Request::post("/wa")
        .header(CONTENT_LENGTH, "1000")
        .body(body)
        .expect("request");
    let (status, body, headers) = answer(&receiver, request).await;
    assert_eq!(
        (status, body.as_str(), &headers[CONNECTION]),
        (
            StatusCode::UNAUTHORIZED,
            "the request has no X-Hub-Signature-256 header\n",
            &HeaderValue::from_static("close")
        )
    );
    assert!(!polled.load(Ordering::SeqCst), "the body was read");
}

#[tokio::test]
async fn a_slow_body_times_out_and_holds_the_only_slot_meanwhile() {
    let dir = tempfile::tempdir().expect("dir");
    let receiver = Arc::new(spooled(&config(dir.path())));
    let pending = StreamBody::new(stream::pending::<Result<Frame<Bytes>, std::io::Error>>());
    let slow = Request::post("/wa")
        .header(verify::SIGNATURE_HEADER, "sha256=00")
        .body(pending)
        .expect("request");
    let handler = Arc::clone(&receiver);
    let slow = tokio::spawn(async move { answer(&handler, slow).await.0 });
    // Waits (a condition, not a fixed sleep) until the slow request holds the only slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while receiver.admission.free_slots() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never took the slot"
        );
        tokio::task::yield_now().await;
    }
    let (status, _, headers) = answer(&receiver, request(Method::POST, "/wa", BODY, true)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "max_in_flight is 1"
    );
    assert_eq!(headers[RETRY_AFTER], "5");
    assert_eq!(
        slow.await.expect("slow request"),
        StatusCode::REQUEST_TIMEOUT
    );
}

#[tokio::test]
async fn a_full_spool_and_a_failing_direct_sink_ask_meta_to_retry() {
    let dir = tempfile::tempdir().expect("dir");
    let mut full = config(dir.path());
    full.spool.max_bytes = 1; // less than any request
    let receiver = spooled(&full);
    let post = |body: &str| request(Method::POST, "/wa", body, true);
    let (status, body, headers) = answer(&receiver, post(BODY)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store events; retry later\n"
        )
    );
    assert!(headers.contains_key(RETRY_AFTER));

    let mut direct = config(dir.path());
    direct.delivery.mode = crate::config::DeliveryMode::Direct;
    direct.sinks.push(crate::config::SinkConfig {
        name: "down".into(),
        kind: crate::config::SinkKind::Http(crate::config::HttpSinkConfig::new(
            "http://127.0.0.1:1/",
        )),
        retry: crate::config::RetryConfig::default(),
    });
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let sinks = DirectSinks::new(
        &direct.sinks,
        DeadLetters::new(dir.path()),
        Arc::clone(&metrics),
    );
    let receiver = Receiver::new(&direct, Acceptor::Direct(sinks), metrics).expect("receiver");
    let (status, body, headers) = answer(&receiver, post(BODY)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a sink did not accept the events; retry later\n"
        )
    );
    assert!(headers.contains_key(RETRY_AFTER));
}

#[tokio::test]
async fn a_client_outside_the_trusted_proxy_is_refused_before_its_body() {
    let dir = tempfile::tempdir().expect("dir");
    let mut proxied = config(dir.path());
    let cidr = "10.0.0.0/8".parse().expect("cidr");
    proxied.trusted_proxy = Some(TrustedProxyConfig::new(vec![cidr]));
    let receiver = spooled(&proxied);
    let (status, _, headers) = answer(&receiver, request(Method::POST, "/wa", BODY, true)).await;
    assert_eq!(
        (status, &headers[CONNECTION]),
        (StatusCode::FORBIDDEN, &HeaderValue::from_static("close"))
    );
    let metrics = String::from_utf8(receiver.metrics.encode()).expect("utf8");
    assert!(
        metrics.contains(r#"metahook_tls_client_rejections_total{reason="untrusted_proxy"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_panic_in_the_spool_writer_makes_the_receiver_unready_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let receiver = spooled(&config(dir.path()));
    receiver.set_ready(true);
    let get = |path: &str| request(Method::GET, path, "", false);
    let post = |body: &str| request(Method::POST, "/wa", body, true);
    assert_eq!(answer(&receiver, post(BODY)).await.0, StatusCode::OK);

    intake(&receiver).inject(Fault::Panic("injected writer fault"));
    let (status, _, headers) = answer(&receiver, post(&BODY.replace("\"1\"", "\"2\""))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(RETRY_AFTER));
    // Not ready from the answer on: the panic poisoned the log before its group was
    // answered.
    assert!(intake(&receiver).is_poisoned());
    let (status, body, _) = answer(&receiver, get("/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    );
    // Every later request is refused at once, none waits for a writer that is gone.
    let (status, body, _) = answer(&receiver, post(&BODY.replace("\"1\"", "\"3\""))).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store events; retry later\n"
        )
    );
    wait_for_metric(
        &receiver,
        r#"metahook_spool_writer_failures_total{cause="panic",log="intake"} 1"#,
    )
    .await;
    wait_for_metric(&receiver, "metahook_ready 0").await;
    let text = String::from_utf8(receiver.metrics.encode()).expect("utf8");
    assert!(
        text.contains(r#"metahook_spool_writer_failures_total{cause="panic",log="events"} 0"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_append_queue_answers_503_and_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(dir.path());
    config.limits.max_in_flight = 64;
    config.limits.max_queued_requests = Some(3);
    config.limits.request_timeout = Duration::from_secs(30);
    let receiver = Arc::new(spooled(&config));
    let (release, stalled) = std::sync::mpsc::channel();
    intake(&receiver).inject(Fault::Stall(stalled));
    // Three requests fill the queue while the writer is stalled (an fsync that hangs);
    // they wait for their 200.
    let body = |i: usize| BODY.replace("\"1\"", &format!("\"{i}\""));
    let mut waiting = Vec::new();
    for i in 0..3 {
        let receiver = Arc::clone(&receiver);
        let body = body(i);
        waiting.push(tokio::spawn(async move {
            answer(&receiver, request(Method::POST, "/wa", &body, true))
                .await
                .0
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while intake(&receiver).queued().0 < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // More are refused with 503 and Retry-After, counted; the queue does not grow.
    for i in 3..10 {
        let (status, _, headers) =
            answer(&receiver, request(Method::POST, "/wa", &body(i), true)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key(RETRY_AFTER));
        assert_eq!(intake(&receiver).queued().0, 3);
    }
    wait_for_metric(
        &receiver,
        r#"metahook_admission_refusals_total{endpoint="wa",reason="spool_queue"} 7"#,
    )
    .await;
    // The stall ends: everything queued is committed and acknowledged.
    release.send(()).expect("the writer waits");
    for answered in waiting {
        assert_eq!(answered.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(intake(&receiver).queued(), (0, 0));
    let stored = intake(&receiver).read_after(0, 100).expect("read");
    assert_eq!(stored.len(), 3, "the three acknowledged requests");
    // And the next request is taken again.
    let (status, _, _) = answer(&receiver, request(Method::POST, "/wa", &body(10), true)).await;
    assert_eq!(status, StatusCode::OK);
}
