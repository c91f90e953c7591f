//! The `nats` sink against real NATS servers: every event of the repository's fixtures
//! reaches JetStream once, per kind as in the file sink; a second delivery of the same events
//! adds nothing; an outage of the server (one this test starts) loses nothing.

#![allow(clippy::print_stderr)] // tests report on stderr

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use http::StatusCode;
use metahook_receiver::config::{NatsSinkConfig, SinkConfig, SinkKind};
use metahook_tests::testkit::{self, TestReceiver};

const SHARED_NATS: &str = "nats://127.0.0.1:4222";

fn nats_sink(url: &str, stream: &str, subject_prefix: &str) -> SinkConfig {
    SinkConfig {
        name: "bus".into(),
        retry: metahook_receiver::config::RetryConfig::default(),
        kind: SinkKind::Nats(NatsSinkConfig {
            url: url.to_owned(),
            subject: format!("{subject_prefix}.{{platform}}.{{field}}.{{kind}}"),
            stream: Some(stream.to_owned()),
            create_stream: true,
            ..NatsSinkConfig::new(String::new())
        }),
    }
}

/// Messages in `stream` per subject.
async fn subject_counts(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<BTreeMap<String, usize>> {
    let stream = js.get_stream(stream).await.context("get stream")?;
    let mut subjects = stream
        .info_with_subjects(">")
        .await
        .context("stream subjects")?;
    let mut counts = BTreeMap::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.context("subject count")?;
        counts.insert(subject, count);
    }
    Ok(counts)
}

async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> Result<u64> {
    let mut stream = js.get_stream(stream).await.context("get stream")?;
    Ok(stream.info().await.context("stream info")?.state.messages)
}

async fn wait_delivered(receiver: &TestReceiver, count: usize, timeout: Duration) -> Result<()> {
    receiver.wait_delivered("bus", count, timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_jetstream_once() -> Result<()> {
    let client = async_nats::connect(SHARED_NATS)
        .await
        .context("NATS with JetStream must run on 127.0.0.1:4222 (scripts/test.sh starts it)")?;
    let js = async_nats::jetstream::new(client);
    let stream = testkit::unique_name("METAHOOK_TEST_");
    let prefix = testkit::unique_name("mhtest");
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(nats_sink(SHARED_NATS, &stream, &prefix));
    })
    .await?;

    let bodies = testkit::own_fixture_bodies()?;
    for body in &bodies {
        let reply = receiver.post(body).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "fixture answered {}",
            reply.status
        );
    }
    let stored = testkit::own_fixture_events()?;
    let events = receiver
        .wait_for_events(stored, Duration::from_secs(30))
        .await?;
    ensure!(
        events.len() == stored,
        "the file sink holds {} events, INDEX.tsv lists {stored}",
        events.len()
    );
    wait_delivered(&receiver, stored, Duration::from_secs(30)).await?;

    // Per kind, JetStream holds what the file holds (one message per distinct event id).
    let mut seen = HashSet::new();
    let mut file_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for event in &events {
        if seen.insert(event["id"].as_str().unwrap_or("").to_owned()) {
            *file_kinds
                .entry(event["kind"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    let mut stream_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (subject, count) in subject_counts(&js, &stream).await? {
        let kind = subject.rsplit('.').next().unwrap_or("").to_owned();
        *stream_kinds.entry(kind).or_default() += count;
    }
    assert_eq!(
        stream_kinds, file_kinds,
        "per-kind counts: JetStream vs file sink"
    );
    let first = stream_messages(&js, &stream).await?;
    assert_eq!(first, seen.len() as u64);

    // The same events again (different bytes, so the spool stores them): nothing new in NATS.
    for body in &bodies {
        let mut again = body.clone();
        again.push(b'\n');
        ensure!(receiver.post(&again).await?.status == StatusCode::OK);
    }
    wait_delivered(&receiver, 2 * stored, Duration::from_secs(30)).await?;
    assert_eq!(
        stream_messages(&js, &stream).await?,
        first,
        "redelivery added messages"
    );
    eprintln!(
        "{stored} events from {} fixtures: {first} distinct ids in JetStream, none added by redelivery",
        bodies.len()
    );
    js.delete_stream(&stream)
        .await
        .context("delete test stream")?;
    Ok(())
}

/// A NATS server of this test's own, so it can be stopped.
struct PrivateNats {
    child: Child,
}

impl PrivateNats {
    fn start(port: u16, store: &Path) -> Result<PrivateNats> {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("nats-server is not installed (scripts/test.sh installs it)")?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(PrivateNats { child })
    }
}

impl PrivateNats {
    /// Stops the server with SIGTERM (it closes its clients and its store) and waits.
    fn terminate(mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM nats-server failed");
        self.child.wait().context("waiting for nats-server")?;
        Ok(())
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{{"from":"15551234567","id":"wamid.outage.{n}","timestamp":"1700000000","type":"text","text":{{"body":"outage {n}"}}}}]}}}}]}}]}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let store = dir.path().join("jetstream");
    let server = PrivateNats::start(port, &store)?;
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(nats_sink(&url, "OUTAGE", "outage"));
    })
    .await?;
    for n in 0..20 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    wait_delivered(&receiver, 20, Duration::from_secs(20)).await?;

    drop(server);
    for n in 20..50 {
        let reply = receiver.post(&body(n)).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "200s continue while NATS is down: {}",
            reply.status
        );
    }
    receiver
        .wait_for_events(50, Duration::from_secs(10))
        .await?;
    // The lag gauge is sampled: it rises once the outage is seen.
    let lag = receiver
        .wait_metric_at_least(
            r#"metahook_sink_lag_events{sink="bus"}"#,
            1.0,
            Duration::from_secs(10),
            "lag during the outage",
        )
        .await?;
    assert!(lag > 0.0, "lag rises during the outage: {lag}");

    let _server = PrivateNats::start(port, &store)?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stream_messages(&js, "OUTAGE").await.unwrap_or(0) == 50 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the backlog never drained into NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver
        .metric(r#"metahook_sink_lag_events{sink="bus"}"#)
        .await?
        > 0.0
    {
        ensure!(Instant::now() < deadline, "lag did not return to zero");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_then_recovers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let store = dir.path().join("jetstream");
    // NATS is down from the start: the sink cannot deliver, the spool fills.
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(nats_sink(&url, "FULL", "full"));
        config.spool.max_bytes = 64 * 1024;
        config.spool.segment_bytes = 4096;
    })
    .await?;
    let mut accepted = 0;
    let mut refused = None;
    for n in 0..500 {
        let reply = receiver.post(&body(n)).await?;
        if reply.status == StatusCode::OK {
            accepted += 1;
        } else {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.context("the spool never filled")?;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "5");
    assert!(accepted > 10, "accepted before the limit: {accepted}");
    assert_eq!(
        receiver.get("/healthz").await?.status,
        StatusCode::OK,
        "no crash"
    );

    let _server = PrivateNats::start(port, &store)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if receiver.post(&body(10_000)).await?.status == StatusCode::OK {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the spool never accepted again after NATS returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_delivered(&receiver, accepted + 1, Duration::from_secs(60)).await?;
    Ok(())
}

/// Runs `metahook-receiver --config CONFIG dlq ARGS...`; returns its standard output.
fn dlq(config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(config)
        .arg("dlq")
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "dlq {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_events_become_dead_letters_and_retry_delivers_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let config_path = dir.path().join("receiver.yaml");
    // NATS is down: two attempts, then the batch goes to the dead letters.
    let receiver = TestReceiver::start_with(|config, _| {
        let mut sink = nats_sink(&url, "DEAD", "dead");
        sink.retry.max_attempts = 2;
        sink.retry.max_backoff = Duration::from_millis(200);
        config.sinks.push(sink);
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("write config");
    })
    .await?;
    for n in 0..5 {
        ensure!(receiver.post(&body(100 + n)).await?.status == StatusCode::OK);
    }
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="bus"}"#,
            5.0,
            Duration::from_secs(30),
            "the events never became dead letters",
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver
        .metric(r#"metahook_sink_lag_events{sink="bus"}"#)
        .await?
        > 0.0
    {
        ensure!(
            Instant::now() < deadline,
            "the cursor did not move past the dead letters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listed = dlq(&config_path, &["list", "--sink", "bus"])?;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 5, "{listed}");
    assert!(
        listed.contains("wamid.outage.100") && listed.contains("2 attempts"),
        "{listed}"
    );
    let first_seq = lines[0].split('\t').next().context("seq column")?;
    let shown = dlq(&config_path, &["show", "--sink", "bus", "--seq", first_seq])?;
    let event: serde_json::Value = serde_json::from_str(shown.trim())?;
    assert_eq!(event["kind"], "message");
    dlq(
        &config_path,
        &["purge", "--sink", "bus", "--seq", first_seq],
    )?;
    assert_eq!(
        dlq(&config_path, &["list", "--sink", "bus"])?
            .lines()
            .count(),
        4
    );
    let unknown = Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(&config_path)
        .args(["dlq", "list", "--sink", "nope"])
        .output()?;
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("bus"));

    // NATS is back; an operator retries: the four are delivered, the dead letters are empty.
    let _server = PrivateNats::start(port, &dir.path().join("jetstream"))?;
    assert!(dlq(&config_path, &["retry", "--sink", "bus"])?.starts_with("4 "));
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_messages(&js, "DEAD").await.unwrap_or(0) < 4 {
        ensure!(
            Instant::now() < deadline,
            "retried dead letters never reached NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stream_messages(&js, "DEAD").await?, 4);
    assert_eq!(
        dlq(&config_path, &["list", "--sink", "bus"])?
            .lines()
            .count(),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_delivery_answers_after_the_puback_and_503_without_nats() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let store = dir.path().join("jetstream");
    let receiver = TestReceiver::start_with(|config, _| {
        config.delivery.mode = metahook_receiver::config::DeliveryMode::Direct;
        config.sinks.push(nats_sink(&url, "DIRECT", "direct"));
    })
    .await?;
    // NATS is down: no sink acknowledges, so no 200.
    let reply = receiver.post(&body(500)).await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["retry-after"], "5");

    let _server = PrivateNats::start(port, &store)?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if receiver.post(&body(501)).await?.status == StatusCode::OK {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "direct delivery never succeeded once NATS was up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The 200 came after the PubAck and the file write: both hold the event right away.
    assert_eq!(stream_messages(&js, "DIRECT").await?, 1);
    let events = testkit::read_events(&receiver.events_path())?;
    assert!(
        events.iter().any(|e| e["id"] == "wamid.outage.501"),
        "the file sink was written before the 200"
    );
    Ok(())
}

/// A body with `count` WhatsApp messages, ids `wamid.window.{first}` onwards.
fn many(first: usize, count: usize) -> Vec<u8> {
    let messages: Vec<String> = (first..first + count)
        .map(|n| format!(r#"{{"from":"15551234567","id":"wamid.window.{n}","timestamp":"1700000000","type":"text","text":{{"body":"window {n}"}}}}"#))
        .collect();
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{}]}}}}]}}]}}"#, messages.join(",")).into_bytes()
}

/// Messages in the stream and its last sequence (0, 0 while it cannot be read).
async fn stream_state(url: &str, stream: &str) -> (u64, u64) {
    let Ok(client) = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(Some(1))
        .connect(url)
        .await
    else {
        return (0, 0);
    };
    let js = async_nats::jetstream::new(client);
    let Ok(mut stream) = js.get_stream(stream).await else {
        return (0, 0);
    };
    stream
        .info()
        .await
        .map_or((0, 0), |i| (i.state.messages, i.state.last_sequence))
}

/// Polls the stream until it holds at least `at_least` messages; returns the count seen.
async fn wait_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
    at_least: u64,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = stream_messages(js, stream).await.unwrap_or(0);
        if count >= at_least {
            return Ok(count);
        }
        ensure!(
            Instant::now() < deadline,
            "the stream never held {at_least} messages ({count})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Many batches in flight (a backlog of several spool batches, each published through the
/// PubAck window): NATS stopped while PubAcks are pending, then the receiver killed (-9)
/// while PubAcks are pending; after both restarts the stream holds every event once and
/// never stored a duplicate (its last sequence equals its message count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_broker_then_killing_the_receiver_mid_window_loses_and_doubles_nothing()
-> Result<()> {
    const REQUESTS: usize = 200;
    const PER_REQUEST: usize = 100;
    let total = (REQUESTS * PER_REQUEST) as u64;
    let dir = tempfile::tempdir()?;
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (nats_port, port) = (free()?, free()?);
    let url = format!("nats://127.0.0.1:{nats_port}");
    let store = dir.path().join("jetstream");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    std::fs::write(dir.path().join("app-secret"), testkit::SECRET)?;
    std::fs::write(dir.path().join("verify-token"), "token")?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {addr}\nendpoints:\n  - name: whatsapp\n    path: /webhooks/whatsapp\n    \
             app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\n\
             spool:\n  dir: {d}/spool\nsinks:\n  - name: bus\n    nats: {{url: \"{url}\", \
             subject: \"window.{{platform}}.{{field}}.{{kind}}\", stream: WINDOW, create_stream: true}}\n    \
             retry: {{max_attempts: 0, max_backoff: 300ms}}\n",
            d = dir.path().display()
        ),
    )?;

    // A backlog while NATS is down: the sink will drain it in full batches.
    let receiver = testkit::ReceiverProcess::start(&config, addr).await?;
    for r in 0..REQUESTS {
        let payload = many(r * PER_REQUEST, PER_REQUEST);
        let reply = testkit::post_signed(addr, "/webhooks/whatsapp", &payload).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "request {r}: {}",
            reply.status
        );
    }

    // The broker goes away while the window is in flight.
    let server = PrivateNats::start(nats_port, &store)?;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
    let before_broker_kill = wait_stream(&js, "WINDOW", 1).await?;
    drop(js);
    server.terminate()?;
    ensure!(
        before_broker_kill < total,
        "the backlog drained before NATS was stopped ({before_broker_kill}): nothing was in flight"
    );

    // Back; then the receiver dies (kill -9) while the window is in flight.
    let server = PrivateNats::start(nats_port, &store)?;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
    let resumed = stream_messages(&js, "WINDOW").await.unwrap_or(0);
    let before_receiver_kill = wait_stream(&js, "WINDOW", resumed + 1).await?;
    drop(receiver);
    ensure!(
        before_receiver_kill < total,
        "the backlog drained before the receiver was killed ({before_receiver_kill})"
    );
    let _receiver = testkit::ReceiverProcess::start(&config, addr).await?;
    wait_stream(&js, "WINDOW", total).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics =
            testkit::request(addr, http::Method::GET, "/metrics", &[], Vec::new().into()).await?;
        let lag = testkit::metric_value(&metrics.text(), r#"metahook_sink_lag_events{sink="bus"}"#);
        if lag == Some(0.0) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the lag never returned to zero: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (messages, last_sequence) = stream_state(&url, "WINDOW").await;
    eprintln!(
        "{total} events: {before_broker_kill} in the stream when NATS was stopped, \
         {before_receiver_kill} when the receiver was; {messages} messages, last sequence {last_sequence}"
    );
    assert_eq!(messages, total, "every event once");
    assert_eq!(last_sequence, total, "no duplicate was ever stored");
    drop(server);
    Ok(())
}
