//! Crash safety of the real binary: kill -9 under load, restart, and every event of every
//! request that got a 200 is in the file sink exactly once, with no torn line. And SIGTERM:
//! drain and exit 0.

#![allow(clippy::print_stderr)] // tests report skips and figures on stderr

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http::{Method, StatusCode};
use metahook_receiver::verify;
use metahook_tests::testkit::{self, ReceiverProcess, SECRET};
use tokio::sync::Mutex;

const PATH: &str = "/webhooks/whatsapp";

/// The spool's segments are small, so that kills land while segments rotate and
/// delivered ones are recycled as the next (`spool.preallocate_segments`).
fn write_config(dir: &Path, port: u16, extra_sinks: &str) -> Result<std::path::PathBuf> {
    std::fs::write(dir.join("app-secret"), SECRET)?;
    std::fs::write(dir.join("verify-token"), "token")?;
    let config = format!(
        "listen: 127.0.0.1:{port}\nendpoints:\n  - name: whatsapp\n    path: {PATH}\n    app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\nspool:\n  dir: {d}/spool\n  segment_bytes: 131072\nsinks:\n  - name: local\n    file: {{path: {d}/events.jsonl}}\n{extra_sinks}shutdown_grace: 10s\n",
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

/// A body with `count` messages whose ids are `prefix.0 .. prefix.{count-1}`.
fn body(prefix: &str, count: usize) -> Vec<u8> {
    let messages: Vec<String> = (0..count)
        .map(|i| format!(r#"{{"from":"15551234567","id":"{prefix}.{i}","timestamp":"1700000000","type":"text","text":{{"body":"crash test message {i}"}}}}"#))
        .collect();
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"200300400500600"}},"messages":[{}]}}}}]}}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

/// Sends requests from `tasks` concurrent clients until one fails; records acknowledged ids.
async fn load(addr: SocketAddr, round: usize, tasks: usize, acked: Arc<Mutex<Vec<String>>>) {
    let clients: Vec<_> = (0..tasks)
        .map(|task| {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                for n in 0.. {
                    let count = 1 + (n % 3);
                    let prefix = format!("wamid.crash.{round}.{task}.{n}");
                    let payload = body(&prefix, count);
                    let signature = verify::sign(SECRET, &payload);
                    let headers = [("x-hub-signature-256", signature.as_str())];
                    match testkit::request(addr, Method::POST, PATH, &headers, payload.into()).await
                    {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            acked
                                .lock()
                                .await
                                .extend((0..count).map(|i| format!("{prefix}.{i}")));
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    for client in clients {
        let _ = client.await;
    }
}

fn pseudo_random_millis(low: u64, high: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    low + nanos % (high - low)
}

/// One round: starts the receiver, loads it from `tasks` connections (ids of `round`, the
/// acknowledged ones into `acked`), and kills it with SIGKILL after a pseudo-random time
/// in `window` (milliseconds); returns once the load has stopped.
async fn kill_9_during_load(
    config: &Path,
    addr: SocketAddr,
    round: usize,
    tasks: usize,
    acked: &Arc<Mutex<Vec<String>>>,
    (low, high): (u64, u64),
) -> Result<()> {
    let mut receiver = ReceiverProcess::start(config, addr).await?;
    let load = tokio::spawn(load(addr, round, tasks, Arc::clone(acked)));
    tokio::time::sleep(Duration::from_millis(pseudo_random_millis(low, high))).await;
    receiver.child().kill().context("kill -9")?;
    receiver.child().wait()?;
    tokio::time::timeout(Duration::from_secs(15), load)
        .await
        .context("load did not stop")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_doubles_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // Besides the file: JetStream and PostgreSQL, each must hold every event exactly once.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let stream = format!("METAHOOK_CRASH_{}_{nanos}", std::process::id());
    let schema = format!("metahook_crash_{}_{nanos}", std::process::id());
    let downstream = metahook_tests::downstream::Downstream::start(
        "127.0.0.1:0".parse()?,
        metahook_tests::downstream::new_state(),
    )
    .await?;
    let sinks = format!(
        "  - name: crm\n    http: {{url: \"http://{http}/hooks\", timeout: 2s}}\n    retry: {{max_attempts: 0, max_backoff: 500ms}}\n  - name: bus\n    nats: {{url: \"nats://127.0.0.1:4222\", subject: \"crash{nanos}.{{platform}}.{{field}}.{{kind}}\", stream: {stream}, create_stream: true}}\n  - name: store\n    postgres: {{url: \"postgres://postgres@127.0.0.1:5432/test\", schema: {schema}}}\n",
        http = downstream.addr
    );
    let config = write_config(dir.path(), port, &sinks)?;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..4 {
        kill_9_during_load(&config, addr, round, 16, &acked, (300, 900)).await?;
    }
    let acked: Vec<String> = acked.lock().await.clone();
    ensure!(
        acked.len() > 100,
        "too little load to mean anything: {} acknowledged events",
        acked.len()
    );

    // Restart once more: the file sink resumes from its cursor and catches up.
    let mut receiver = ReceiverProcess::start(&config, addr).await?;
    let events_path = dir.path().join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let text = std::fs::read_to_string(&events_path).unwrap_or_default();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("torn or invalid line: {line}"))?;
            *counts
                .entry(event["id"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        if acked.iter().all(|id| counts.contains_key(id)) {
            ensure!(
                text.ends_with('\n'),
                "the file does not end with a complete line"
            );
            break counts;
        }
        if Instant::now() > deadline {
            let missing = acked.iter().filter(|id| !counts.contains_key(*id)).count();
            bail!(
                "{missing} of {} acknowledged events never reached the file",
                acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let doubled: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("{id} x{n}"))
        .collect();
    ensure!(
        doubled.is_empty(),
        "events written more than once: {doubled:?}"
    );
    let unique: HashSet<&String> = acked.iter().collect();
    ensure!(
        unique.len() == acked.len(),
        "test bug: acknowledged ids repeat"
    );
    // JetStream and PostgreSQL catch up to the file: one message / row per distinct event.
    let distinct = counts.len() as u64;
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .context("NATS on 4222")?;
    let js = async_nats::jetstream::new(client);
    let (db, connection) = tokio_postgres::connect(
        "postgres://postgres@127.0.0.1:5432/test",
        tokio_postgres::NoTls,
    )
    .await
    .context("PostgreSQL on 5432")?;
    tokio::spawn(connection);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let in_stream = match js.get_stream(&stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        let in_db: i64 = match db
            .query_one(
                &format!("SELECT count(DISTINCT id) FROM {schema}.events"),
                &[],
            )
            .await
        {
            Ok(row) => row.get(0),
            Err(_) => 0,
        };
        if in_stream == distinct && u64::try_from(in_db).unwrap_or(0) == distinct {
            break;
        }
        ensure!(
            in_stream <= distinct,
            "JetStream holds {in_stream} messages for {distinct} distinct events"
        );
        ensure!(
            Instant::now() < deadline,
            "JetStream {in_stream} / PostgreSQL {in_db} of {distinct} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_in_db: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {schema}.events WHERE id = ANY($1)"),
            &[&acked],
        )
        .await?
        .get(0);
    ensure!(
        usize::try_from(acked_in_db).unwrap_or(0) == acked.len(),
        "{acked_in_db} of {} acknowledged events in PostgreSQL",
        acked.len()
    );
    // The HTTP sink: every acknowledged event at least once (its Idempotency-Key lets the
    // service drop repeats).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<String> = downstream
            .received()
            .into_iter()
            .map(|r| r.idempotency_key)
            .collect();
        let missing = acked.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{missing} acknowledged events never reached the HTTP sink"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} acknowledged events across 4 kill -9 restarts: exactly once in the file ({} lines), JetStream and PostgreSQL, at least once over HTTP",
        acked.len(),
        counts.len()
    );
    terminate(receiver.child())?;
    let _ = js.delete_stream(&stream).await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .context("kill -TERM")?;
    ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "receiver did not exit within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = write_config(dir.path(), port, "")?;
    let mut receiver = ReceiverProcess::start(&config, addr).await?;
    let payload = body("wamid.sigterm", 2);
    let signature = verify::sign(SECRET, &payload);
    let reply = testkit::request(
        addr,
        Method::POST,
        PATH,
        &[("x-hub-signature-256", &signature)],
        payload.into(),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    let status = terminate(receiver.child())?;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let events = testkit::read_events(&dir.path().join("events.jsonl"))?;
    assert_eq!(events.len(), 2, "accepted events delivered before exit");
    Ok(())
}

/// The newest seq in the segments under `dir`, and the newest intake seq the event
/// records there name (event log), read the way the receiver stores them.
fn newest(dir: &Path) -> Result<(u64, u64)> {
    use metahook_receiver::spool::record::source_of;
    use metahook_receiver::spool::segment::{list, scan};
    let (mut seq, mut source) = (0, 0);
    for (first, path) in list(dir)? {
        // Frames chain by seq: what follows the last one (a recycled segment's older
        // records) is not read.
        scan(&path, first, |frame| {
            seq = seq.max(frame.seq);
            source = source.max(source_of(&frame.key).unwrap_or(0));
        })?;
    }
    Ok((seq, source))
}

/// kill -9 right after requests were acknowledged, while their normalization had not
/// run yet (the test checks it caught that moment, trying again if not): after a restart
/// every acknowledged event is in the file, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_the_200_and_normalization_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = write_config(dir.path(), port, "")?;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let spool = dir.path().join("spool");
    let mut caught = false;
    for round in 0..6 {
        kill_9_during_load(&config, addr, round, 32, &acked, (200, 400)).await?;
        let (accepted, _) = newest(&spool.join("intake/segments"))?;
        let (_, normalized) = newest(&spool.join("segments"))?;
        if accepted > normalized {
            eprintln!(
                "round {round}: killed with requests {} to {accepted} acknowledged but not normalized",
                normalized + 1
            );
            caught = true;
            break;
        }
    }
    ensure!(
        caught,
        "normalization always kept up with the load: the case was never reached"
    );
    let acked: Vec<String> = acked.lock().await.clone();
    let _receiver = ReceiverProcess::start(&config, addr).await?;
    let events_path = dir.path().join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&events_path).unwrap_or_default();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("torn or invalid line: {line}"))?;
            *counts
                .entry(event["id"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        let missing = acked.iter().filter(|id| !counts.contains_key(*id)).count();
        if missing == 0 {
            let doubled = counts.values().filter(|n| **n > 1).count();
            ensure!(doubled == 0, "{doubled} events written more than once");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never reached the file",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
