//! `metahook-receiver drain` and the receiver's end of life, on the real binary with an HTTP
//! sink to a real local service: a drain delivers a spool's backlog exactly once and says
//! how it went (exit code, JSON summary on stdout and in --summary-file); it never opens a
//! spool another process holds, and a receiver started meanwhile waits for it (alive, not
//! ready). On SIGTERM a receiver's sinks deliver the whole backlog within shutdown_grace, and
//! what they cannot deliver stays for the next start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use metahook_tests::downstream::{Downstream, Mode, new_state};
use metahook_tests::testkit::{self, ReceiverProcess, SECRET};

const PATH: &str = "/webhooks/whatsapp";
const WAIT: Duration = Duration::from_secs(20);

/// A receiver configuration under `dir`: its spool in `dir/spool`, one HTTP sink `crm` to
/// `sink` that retries forever (every 200 ms at most), and `extra` YAML at the end.
fn write_config(dir: &Path, port: u16, sink: SocketAddr, extra: &str) -> Result<PathBuf> {
    std::fs::write(dir.join("app-secret"), SECRET)?;
    std::fs::write(dir.join("verify-token"), "token")?;
    let config = format!(
        "listen: 127.0.0.1:{port}\nendpoints:\n  - name: whatsapp\n    path: {PATH}\n    \
         app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\nspool:\n  \
         dir: {d}/spool\nsinks:\n  - name: crm\n    http: {{url: \"http://{sink}/hooks\", \
         timeout: 2s}}\n    retry: {{max_attempts: 0, max_backoff: 200ms}}\n{extra}",
        d = dir.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A WhatsApp body with `count` messages, ids `prefix.0 ..`; their events carry those ids.
fn body(prefix: &str, count: usize) -> Vec<u8> {
    let messages: Vec<String> = (0..count)
        .map(|i| format!(r#"{{"from":"15551234567","id":"{prefix}.{i}","timestamp":"1700000000","type":"text","text":{{"body":"drain {i}"}}}}"#))
        .collect();
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"200300400500600"}},"messages":[{}]}}}}]}}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}.{i}")).collect()
}

async fn post(addr: SocketAddr, payload: Vec<u8>) -> Result<StatusCode> {
    Ok(testkit::post_signed(addr, PATH, &payload).await?.status)
}

async fn get(addr: SocketAddr, path: &str) -> Result<testkit::Reply> {
    testkit::request(addr, Method::GET, path, &[], Bytes::new()).await
}

/// The event ids the service accepted, each with how many times.
fn received(downstream: &Downstream) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in downstream.received() {
        *counts.entry(request.idempotency_key).or_insert(0) += 1;
    }
    counts
}

/// `expected`, each once.
fn once(expected: &[String]) -> BTreeMap<String, usize> {
    expected.iter().map(|id| (id.clone(), 1)).collect()
}

/// [`testkit::wait_until`] for a condition read without awaiting.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    testkit::wait_until(what, WAIT, || std::future::ready(Ok(done()))).await
}

/// Waits until `/metrics` on `addr` has `sample` at `value` (a process that does not
/// listen yet is waited for too).
async fn wait_metric(addr: SocketAddr, sample: &str, value: f64) -> Result<()> {
    testkit::wait_until(&format!("{sample} at {value}"), WAIT, || async move {
        Ok(get(addr, "/metrics")
            .await
            .is_ok_and(|reply| testkit::metric_value(&reply.text(), sample) == Some(value)))
    })
    .await
}

/// A process killed (SIGKILL) on drop, unless it exited before.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to `child`.
fn terminate(child: &Child) -> Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .context("kill -TERM")?;
    ensure!(status.success(), "kill -TERM failed");
    Ok(())
}

/// Waits for `child` to exit (20 s at most) without blocking the runtime; its status code.
async fn exit_code(child: &mut Child) -> Result<Option<i32>> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        ensure!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `metahook-receiver --config CONFIG drain ARGS --summary-file DIR/summary.json`,
/// its output into files in `dir`.
fn spawn_drain(dir: &Path, config: &Path, args: &[&str]) -> Result<Process> {
    let stdout = std::fs::File::create(dir.join("drain.out"))?;
    let stderr = std::fs::File::create(dir.join("drain.log"))?;
    let child = Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(config)
        .arg("drain")
        .args(args)
        .arg("--summary-file")
        .arg(dir.join("summary.json"))
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .context("starting the drain")?;
    Ok(Process(child))
}

/// What a drain that ended left: its exit code and its summary, checked to be one JSON
/// line on stdout and the same in the summary file.
struct Drained {
    code: Option<i32>,
    summary: serde_json::Value,
}

async fn finish_drain(dir: &Path, mut drain: Process) -> Result<Drained> {
    let code = exit_code(&mut drain.0).await?;
    let stdout = std::fs::read_to_string(dir.join("drain.out"))?;
    let log = std::fs::read_to_string(dir.join("drain.log")).unwrap_or_default();
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines.len() == 1,
        "stdout is not one line: {stdout:?}; log: {log}"
    );
    let file = std::fs::read_to_string(dir.join("summary.json"))?;
    ensure!(
        file == format!("{}\n", lines[0]),
        "summary file {file:?} differs from stdout {stdout:?}"
    );
    ensure!(file.len() <= 4096, "summary over 4096 bytes");
    let summary = serde_json::from_str(lines[0]).context("the summary is JSON")?;
    Ok(Drained { code, summary })
}

async fn drain(dir: &Path, config: &Path, args: &[&str]) -> Result<Drained> {
    let process = spawn_drain(dir, config, args)?;
    finish_drain(dir, process).await
}

/// The summary's sink `crm`: (delivered, left, dead_letters).
fn crm(summary: &serde_json::Value) -> (u64, u64, u64) {
    let sink = &summary["per_sink"]["crm"];
    let n = |key: &str| sink[key].as_u64().unwrap_or(u64::MAX);
    (n("delivered"), n("left"), n("dead_letters"))
}

/// A spool holding `count` events for `crm` that it has not delivered: a receiver takes
/// them while the service answers 503, normalizes them, and is killed (-9).
async fn backlog(config: &Path, port: u16, prefix: &str, count: usize) -> Result<Vec<String>> {
    let receiver = ReceiverProcess::start(config, local(port)).await?;
    assert_eq!(
        post(local(port), body(prefix, count)).await?,
        StatusCode::OK
    );
    let lag = r#"metahook_sink_lag_events{sink="crm"}"#;
    wait_metric(local(port), lag, count as f64).await?;
    drop(receiver);
    Ok(ids(prefix, count))
}

/// The spool's files and their contents (what "untouched" means), but for the lock files.
fn spool_files(spool: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![spool.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_none_or(|n| n != "LOCK") {
                files.insert(path.clone(), std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_spool_drains_at_once_with_exit_0() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let config = write_config(dir.path(), free_port()?, downstream.addr, "")?;
    // Not there: no spool is made up (the volume may be mounted elsewhere).
    let missing = drain(dir.path(), &config, &[]).await?;
    assert_eq!(missing.code, Some(1), "{}", missing.summary);
    assert_eq!(missing.summary["outcome"], "error");
    assert!(!dir.path().join("spool").exists());

    std::fs::create_dir(dir.path().join("spool"))?;
    let drained = drain(dir.path(), &config, &[]).await?;
    assert_eq!(drained.code, Some(0), "{}", drained.summary);
    assert_eq!(
        drained.summary,
        serde_json::json!({
            "outcome": "drained",
            "events_delivered": 0,
            "events_left": 0,
            "requests_left": 0,
            "dead_letters": 0,
            "per_sink": {"crm": {"delivered": 0, "left": 0, "dead_letters": 0}}
        })
    );
    assert!(downstream.received().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_and_requests_never_normalized_are_delivered_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "")?;
    let mut expected = backlog(&config, port, "wamid.backlog", 4).await?;
    // A request acknowledged (in the intake log) whose normalization a crash prevented.
    {
        use metahook_receiver::config::SpoolConfig;
        use metahook_receiver::spool::{Spool, record::RawRequest};
        let spool = SpoolConfig::new(dir.path().join("spool"));
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let intake = Spool::open_intake(&spool, metahook_receiver::normalizer::CONSUMER, &total)?;
        let payload = body("wamid.intake", 2);
        let received_nanos = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos(),
        )?;
        let record = RawRequest {
            received_nanos,
            endpoint: "whatsapp",
            body: &payload,
        };
        intake.append([7; 16], vec![record.encode()]).await?;
        intake.close();
    }
    expected.extend(ids("wamid.intake", 2));
    downstream.set(Mode::Accept);
    let drained = drain(dir.path(), &config, &["--deadline", "30s"]).await?;
    assert_eq!(drained.code, Some(0), "{}", drained.summary);
    assert_eq!(drained.summary["outcome"], "drained");
    assert_eq!(drained.summary["events_delivered"], 6);
    assert_eq!(drained.summary["events_left"], 0);
    assert_eq!(drained.summary["requests_left"], 0);
    assert_eq!(crm(&drained.summary), (6, 0, 0));
    assert_eq!(received(&downstream), once(&expected));

    // Nothing left: a second drain delivers nothing again.
    let again = drain(dir.path(), &config, &[]).await?;
    assert_eq!(again.code, Some(0), "{}", again.summary);
    assert_eq!(crm(&again.summary), (0, 0, 0));
    assert_eq!(received(&downstream), once(&expected));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_reported_with_their_exit_code_and_left_untouched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "")?;
    // One event the service refuses for good (a 4xx): a dead letter of the receiver.
    downstream
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .refuse
        .insert("wamid.dead.0".into(), 422);
    let dead_file = dir.path().join("spool/dead-letters/crm.jsonl");
    {
        let _receiver = ReceiverProcess::start(&config, local(port)).await?;
        assert_eq!(
            post(local(port), body("wamid.dead", 2)).await?,
            StatusCode::OK
        );
        wait_until("a dead letter and a delivery", || {
            std::fs::read_to_string(&dead_file).is_ok_and(|t| t.lines().count() == 1)
                && downstream.received().len() == 1
        })
        .await?;
        // Its cursor committed past both before the kill, else the drain would deliver (and
        // dead-letter) them again: at least once, as after any crash.
        wait_metric(local(port), r#"metahook_sink_lag_events{sink="crm"}"#, 0.0).await?;
    }
    // Events it did not deliver yet, so this drain delivers too, and dead-letters another.
    downstream.set(Mode::Status(503, None));
    backlog(&config, port, "wamid.more", 2).await?;
    downstream.set(Mode::Accept);
    downstream
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .refuse
        .insert("wamid.more.1".into(), 422);
    let before = std::fs::read_to_string(&dead_file)?;
    let drained = drain(dir.path(), &config, &["--deadline", "30s"]).await?;
    assert_eq!(drained.code, Some(3), "{}", drained.summary);
    assert_eq!(drained.summary["outcome"], "dead_letters");
    assert_eq!(drained.summary["dead_letters"], 2);
    assert_eq!(drained.summary["events_left"], 0);
    assert_eq!(crm(&drained.summary), (1, 0, 2));
    let after = std::fs::read_to_string(&dead_file)?;
    assert!(
        after.starts_with(&before) && after.lines().count() == 2,
        "the old dead letter is kept as it was, the new one added: {after}"
    );
    assert_eq!(
        received(&downstream),
        once(&["wamid.dead.1".to_owned(), "wamid.more.0".to_owned()])
    );
    // Still there, so a drain again says so again.
    let again = drain(dir.path(), &config, &[]).await?;
    assert_eq!(again.code, Some(3), "{}", again.summary);
    assert_eq!(std::fs::read_to_string(&dead_file)?, after);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_until_the_deadline_leaves_its_events_for_the_next_drain() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let port = free_port()?;
    let metrics_port = free_port()?;
    let config = write_config(
        dir.path(),
        port,
        downstream.addr,
        &format!("metrics_listen: 127.0.0.1:{metrics_port}\n"),
    )?;
    let expected = backlog(&config, port, "wamid.late", 3).await?;

    let started = Instant::now();
    let running = spawn_drain(dir.path(), &config, &["--deadline", "3s"])?;
    // While it runs, its progress is on metrics_listen: alive, never ready.
    let metrics = local(metrics_port);
    wait_metric(metrics, r#"metahook_sink_lag_events{sink="crm"}"#, 3.0).await?;
    assert_eq!(get(metrics, "/healthz").await?.status, StatusCode::OK);
    assert_eq!(
        get(metrics, "/readyz").await?.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let drained = finish_drain(dir.path(), running).await?;
    assert!(started.elapsed() >= Duration::from_secs(3), "left early");
    assert_eq!(drained.code, Some(4), "{}", drained.summary);
    assert_eq!(drained.summary["outcome"], "deadline");
    assert_eq!(drained.summary["events_left"], 3);
    assert_eq!(crm(&drained.summary), (0, 3, 0));
    assert!(downstream.received().is_empty());

    downstream.set(Mode::Accept);
    let drained = drain(dir.path(), &config, &["--deadline", "30s"]).await?;
    assert_eq!(drained.code, Some(0), "{}", drained.summary);
    assert_eq!(crm(&drained.summary), (3, 0, 0));
    assert_eq!(received(&downstream), once(&expected));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_drain_with_what_is_left_in_the_spool() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "")?;
    backlog(&config, port, "wamid.stop", 2).await?;
    let spool = dir.path().join("spool");
    let running = spawn_drain(dir.path(), &config, &["--deadline", "10m"])?;
    wait_until("the drain to try the sink", || {
        std::fs::read_to_string(dir.path().join("drain.log"))
            .is_ok_and(|log| log.contains("delivery failed; will retry"))
    })
    .await?;
    terminate(&running.0)?;
    let drained = finish_drain(dir.path(), running).await?;
    assert_eq!(drained.code, Some(6), "{}", drained.summary);
    assert_eq!(drained.summary["outcome"], "interrupted");
    assert_eq!(crm(&drained.summary), (0, 2, 0));
    assert_eq!(
        metahook_receiver::spool::held_lock(&spool)?,
        None,
        "the lock is released"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_never_opens_a_spool_a_receiver_holds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "")?;
    let receiver = ReceiverProcess::start(&config, local(port)).await?;
    assert_eq!(
        post(local(port), body("wamid.held", 1)).await?,
        StatusCode::OK
    );
    wait_until("the receiver to deliver", || {
        downstream.received().len() == 1
    })
    .await?;
    // Its cursor committed (the lag is read from it): an idle receiver writes nothing more.
    wait_metric(local(port), r#"metahook_sink_lag_events{sink="crm"}"#, 0.0).await?;
    let spool = dir.path().join("spool");
    let files = spool_files(&spool)?;

    let started = Instant::now();
    let drained = drain(dir.path(), &config, &["--lock-wait", "1s"]).await?;
    assert!(started.elapsed() >= Duration::from_secs(1), "did not wait");
    assert_eq!(drained.code, Some(5), "{}", drained.summary);
    assert_eq!(drained.summary["outcome"], "locked");
    let lock = spool.join("intake").join("LOCK");
    let error = drained.summary["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("it holds {}", lock.display())),
        "names the lock: {error}"
    );
    let log = std::fs::read_to_string(dir.path().join("drain.log"))?;
    assert!(log.contains(&lock.display().to_string()), "{log}");
    assert_eq!(spool_files(&spool)?, files, "the drain touched the spool");

    // The receiver goes on as if nothing happened.
    assert_eq!(
        post(local(port), body("wamid.after", 1)).await?,
        StatusCode::OK
    );
    wait_until("the receiver to deliver again", || {
        downstream.received().len() == 2
    })
    .await?;
    drop(receiver);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_waits_alive_and_unready_while_a_drain_holds_its_spool() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "")?;
    let mut expected = backlog(&config, port, "wamid.wait", 3).await?;
    let spool = dir.path().join("spool");
    let lock = spool.join("intake").join("LOCK");

    let running = spawn_drain(dir.path(), &config, &["--deadline", "60s"])?;
    wait_until("the drain to hold the spool", || {
        metahook_receiver::spool::held_lock(&spool).is_ok_and(|held| held.is_some())
    })
    .await?;
    let log = dir.path().join("receiver.log");
    let receiver = Process(
        Command::new(testkit::receiver_bin()?)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let addr = local(port);
    testkit::wait_until("the waiting receiver to answer /healthz", WAIT, || async {
        Ok(get(addr, "/healthz")
            .await
            .is_ok_and(|r| r.status == StatusCode::OK))
    })
    .await?;
    wait_until("the receiver to say what it waits for", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&lock.display().to_string()))
    })
    .await?;
    let ready = get(addr, "/readyz").await?;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        post(addr, body("wamid.refused", 1)).await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "a webhook is answered 503 (Meta retries it)"
    );

    downstream.set(Mode::Accept);
    let drained = finish_drain(dir.path(), running).await?;
    assert_eq!(drained.code, Some(0), "{}", drained.summary);
    assert_eq!(crm(&drained.summary), (3, 0, 0));
    testkit::wait_ready(addr, WAIT).await?;
    assert_eq!(post(addr, body("wamid.started", 1)).await?, StatusCode::OK);
    expected.push("wamid.started.0".into());
    wait_until("the receiver to deliver", || {
        received(&downstream) == once(&expected)
    })
    .await?;
    drop(receiver);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_sinks_deliver_the_backlog_that_becomes_deliverable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "shutdown_grace: 15s\n")?;
    let log = dir.path().join("receiver.log");
    let mut receiver = ReceiverProcess::start_logged(&config, local(port), &log).await?;
    assert_eq!(
        post(local(port), body("wamid.term", 5)).await?,
        StatusCode::OK
    );
    let failed = r#"metahook_sink_deliveries_total{result="error",sink="crm"}"#;
    testkit::wait_until("a failed delivery", WAIT, || async {
        let text = get(local(port), "/metrics").await?.text();
        Ok(testkit::metric_value(&text, failed).is_some_and(|n| n >= 1.0))
    })
    .await?;
    terminate(receiver.child())?;
    // Reachable only once the receiver was told to stop: the backlog goes out before exit.
    downstream.set(Mode::Accept);
    assert_eq!(exit_code(receiver.child()).await?, Some(0));
    assert_eq!(received(&downstream), once(&ids("wamid.term", 5)));
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains("the sinks delivered the whole backlog before stopping"),
        "{logged}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_a_sink_still_down_at_the_grace_leaves_its_events_for_the_next_start()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let port = free_port()?;
    let config = write_config(dir.path(), port, downstream.addr, "shutdown_grace: 2s\n")?;
    let log = dir.path().join("receiver.log");
    let mut receiver = ReceiverProcess::start_logged(&config, local(port), &log).await?;
    assert_eq!(
        post(local(port), body("wamid.grace", 3)).await?,
        StatusCode::OK
    );
    wait_metric(local(port), r#"metahook_sink_lag_events{sink="crm"}"#, 3.0).await?;
    let stopping = Instant::now();
    terminate(receiver.child())?;
    assert_eq!(exit_code(receiver.child()).await?, Some(0));
    assert!(
        stopping.elapsed() >= Duration::from_secs(2),
        "kept trying for the grace period"
    );
    assert!(downstream.received().is_empty());
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains("the grace period ended with events undelivered"),
        "{logged}"
    );

    downstream.set(Mode::Accept);
    let _receiver = ReceiverProcess::start(&config, local(port)).await?;
    let expected = ids("wamid.grace", 3);
    wait_until("the next start to deliver", || {
        received(&downstream) == once(&expected)
    })
    .await?;
    Ok(())
}
