//! Replay (docs/replay.md) against real destinations: an emptied PostgreSQL table gets every
//! event since T back exactly once by id; an HTTP destination receives replayed events with
//! their original ids and the replay marker; filters select only what they name; a window
//! beyond what the spool holds is refused with the available range; a purged JetStream
//! stream gets recent events back despite its duplicate window; replays run against a
//! running receiver (its admin endpoint, from the command line too) and on a stopped spool.

#![allow(clippy::print_stderr)] // tests report on stderr

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use metahook_receiver::config::{
    AdminConfig, Config, HttpSinkConfig, NatsSinkConfig, PostgresSinkConfig, RetentionConfig,
    RetryConfig, SinkConfig, SinkKind,
};
use metahook_tests::downstream::{Downstream, new_state};
use metahook_tests::testkit::{self, TestReceiver};
use serde_json::{Value, json};

const TOKEN: &str = "admin-token-for-tests";
const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const NATS_URL: &str = "nats://127.0.0.1:4222";

fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// A WhatsApp text message (`field: messages`) or, with `status`, a status (`statuses`).
fn body(n: usize, status: bool) -> Vec<u8> {
    let value = if status {
        format!(
            r#"{{"messaging_product":"whatsapp","statuses":[{{"id":"wamid.replay.{n}","status":"delivered","timestamp":"1700000000","recipient_id":"15551234567"}}]}}"#
        )
    } else {
        format!(
            r#"{{"messaging_product":"whatsapp","messages":[{{"from":"15551234567","id":"wamid.replay.{n}","timestamp":"1700000000","type":"text","text":{{"body":"replay {n} {}"}}}}]}}"#,
            "x".repeat(200)
        )
    };
    let field = if status { "statuses" } else { "messages" };
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"{field}","value":{value}}}]}}]}}"#).into_bytes()
}

/// Retention, the admin endpoint on a metrics listener, and the token file; the
/// configuration as started is written to `config.yaml` for the command line.
fn replayable(config: &mut Config, dir: &Path) {
    let token = dir.join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    config.admin = Some(AdminConfig { token_file: token });
    config.spool.retention = Some(RetentionConfig {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: 0,
    });
}

fn write_config(config: &Config, dir: &Path) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config.to_yaml().expect("yaml")).expect("write config");
    path
}

async fn admin(
    receiver: &TestReceiver,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, Value)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let reply = testkit::request(receiver.probes_addr(), method, path, &headers, body).await?;
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    Ok((reply.status, value))
}

/// Starts a replay through the admin endpoint and waits for its end; its final status.
async fn replay_via_admin(receiver: &TestReceiver, request: Value) -> Result<Value> {
    let (status, started) = admin(
        receiver,
        Method::POST,
        "/admin/replay",
        Some(TOKEN),
        Some(request),
    )
    .await?;
    ensure!(
        status == StatusCode::ACCEPTED,
        "POST /admin/replay: {status} {started}"
    );
    let id = started["id"].as_str().context("an id")?.to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, now) = admin(
            receiver,
            Method::GET,
            &format!("/admin/replay/{id}"),
            Some(TOKEN),
            None,
        )
        .await?;
        ensure!(status == StatusCode::OK, "GET: {status} {now}");
        if now["state"] != "running" {
            return Ok(now);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the replay did not end: {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `metahook-receiver replay` with `args`; (exit code, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let output = std::process::Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("text")
        .arg("replay")
        .args(args)
        .output()
        .context("running metahook-receiver replay")?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// [`cli`] off the runtime's threads (the receiver under test runs on them).
async fn cli_async(config: PathBuf, args: Vec<String>) -> Result<(i32, String, String)> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&config, &args)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_postgres_table_gets_every_event_since_t_back_once() -> Result<()> {
    let (db, connection) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .context(
            "PostgreSQL must run on 127.0.0.1:5432 with database test (scripts/test.sh starts it)",
        )?;
    tokio::spawn(connection);
    let schema = testkit::unique_name("metahook_replay_");
    let receiver = TestReceiver::start_with(|config, dir| {
        replayable(config, dir);
        config.sinks.push(SinkConfig {
            name: "store".into(),
            retry: RetryConfig::default(),
            kind: SinkKind::Postgres(PostgresSinkConfig {
                url: PG_URL.to_owned(),
                url_file: None,
                schema: schema.clone(),
                ..PostgresSinkConfig::url_file(PathBuf::new())
            }),
        });
    })
    .await?;
    // Before T: delivered, and not replayed.
    for n in 0..3 {
        ensure!(receiver.post(&body(n, false)).await?.status == StatusCode::OK);
    }
    receiver
        .wait_delivered("store", 3, Duration::from_secs(30))
        .await?;
    let since = now();
    let mut expected = HashSet::new();
    for n in 3..23 {
        ensure!(receiver.post(&body(n, false)).await?.status == StatusCode::OK);
        expected.insert(format!("wamid.replay.{n}"));
    }
    receiver
        .wait_delivered("store", 23, Duration::from_secs(30))
        .await?;
    db.batch_execute(&format!("DELETE FROM {schema}.events"))
        .await?;

    let done = replay_via_admin(&receiver, json!({"sink": "store", "since": since})).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        (done["matched"].as_u64(), done["delivered"].as_u64()),
        (Some(20), Some(20)),
        "{done}"
    );
    let rows = db
        .query(&format!("SELECT id, count(*), bool_and((event->>'replayed')::boolean) FROM {schema}.events GROUP BY id"), &[])
        .await?;
    let ids: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(
        ids, expected,
        "every event since T, by id, and none from before"
    );
    for row in &rows {
        assert_eq!(row.get::<_, i64>(1), 1, "once: {}", row.get::<_, String>(0));
        assert_eq!(
            row.get::<_, Option<bool>>(2),
            Some(true),
            "the replay marker is stored"
        );
    }
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

/// JetStream keeps a stream's message ids for its duplicate window (2 minutes by default),
/// purge or not: a replay published under the event ids would be dropped as duplicates.
/// Replayed events have ids of their own, so a stream that lost its messages (purged here,
/// seconds after the first delivery) gets them back with their original event ids and the
/// marker; a second replay inside the first one's window is de-duplicated (docs/replay.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_jetstream_stream_gets_recent_events_back() -> Result<()> {
    let stream = testkit::unique_name("REPLAY");
    let prefix = stream.to_lowercase();
    let receiver = TestReceiver::start_with(|config, dir| {
        replayable(config, dir);
        config.sinks.push(SinkConfig {
            name: "bus".into(),
            retry: RetryConfig::default(),
            kind: SinkKind::Nats(NatsSinkConfig {
                url: NATS_URL.to_owned(),
                subject: format!("{prefix}.{{platform}}.{{field}}"),
                stream: Some(stream.clone()),
                create_stream: true,
                ..NatsSinkConfig::new(String::new())
            }),
        });
    })
    .await?;
    let since = now();
    for n in 0..3 {
        ensure!(receiver.post(&body(n, false)).await?.status == StatusCode::OK);
    }
    receiver
        .wait_delivered("bus", 3, Duration::from_secs(30))
        .await?;
    let client = async_nats::connect(NATS_URL)
        .await
        .context("NATS must run on 127.0.0.1:4222 with JetStream (scripts/test.sh starts it)")?;
    let js = async_nats::jetstream::new(client);
    let mut handle = js.get_stream(&stream).await.context("the sink's stream")?;
    assert_eq!(handle.info().await?.state.messages, 3);
    let first: Vec<String> = stored(&js, &stream)
        .await?
        .iter()
        .map(|(_, event)| event["id"].as_str().unwrap_or("").to_owned())
        .collect();
    handle.purge().await.context("purging the stream")?;
    assert_eq!(handle.info().await?.state.messages, 0);

    let done = replay_via_admin(&receiver, json!({"sink": "bus", "since": since})).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["delivered"].as_u64(), Some(3), "{done}");
    let back = stored(&js, &stream).await?;
    assert_eq!(back.len(), 3, "the purged stream has the events again");
    let mut ids = Vec::new();
    for (replay_header, event) in &back {
        assert_eq!(replay_header.as_deref(), Some("1"), "Metahook-Replay");
        assert_eq!(event["replayed"], true, "the marker field");
        ids.push(event["id"].as_str().unwrap_or("").to_owned());
    }
    ids.sort();
    let mut first = first;
    first.sort();
    assert_eq!(ids, first, "the original event ids");

    // A second replay inside the first one's duplicate window: acknowledged, not stored.
    let again = replay_via_admin(&receiver, json!({"sink": "bus", "since": since})).await?;
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(handle.info().await?.state.messages, 3, "de-duplicated");
    js.delete_stream(&stream).await?;
    Ok(())
}

/// Every message of `stream`, in order: its `Metahook-Replay` header and its event.
async fn stored(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<Vec<(Option<String>, Value)>> {
    let handle = js.get_stream(stream).await?;
    let info = handle.get_info().await?;
    let mut messages = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let Ok(message) = handle.get_raw_message(seq).await else {
            continue; // purged
        };
        let replay = message
            .headers
            .get("Metahook-Replay")
            .map(|v| v.as_str().to_owned());
        messages.push((replay, serde_json::from_slice(&message.payload)?));
    }
    Ok(messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gets_original_ids_and_the_marker_through_the_command_line() -> Result<()> {
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let mut started = None;
    let receiver = TestReceiver::start_with(|config, dir| {
        replayable(config, dir);
        config.sinks.push(SinkConfig {
            name: "crm".into(),
            kind: SinkKind::Http(HttpSinkConfig {
                url: format!("http://{}/hooks", downstream.addr),
                ..HttpSinkConfig::new(String::new())
            }),
            retry: RetryConfig::default(),
        });
        started = Some(config.clone());
    })
    .await?;
    let config = write_config(&started.context("config")?, receiver.dir.path());
    let since = now();
    for n in 0..4 {
        ensure!(receiver.post(&body(n, n % 2 == 1)).await?.status == StatusCode::OK);
    }
    testkit::wait_until("4 events arrive", Duration::from_secs(20), || {
        std::future::ready(Ok(downstream.received().len() >= 4))
    })
    .await?;
    let first: Vec<String> = downstream
        .received()
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect();

    // Unauthenticated calls are refused; the endpoint is not on the webhook listener.
    let (status, _) = admin(&receiver, Method::GET, "/admin/replay", Some("wrong"), None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let reply = testkit::request(
        receiver.addr,
        Method::GET,
        "/admin/replay",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await?;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "no admin on the webhook listener"
    );

    let base = format!("http://{}", receiver.probes_addr());
    let token = receiver.dir.path().join("admin-token");
    let common = [
        "--sink",
        "crm",
        "--since",
        since.as_str(),
        "--admin-url",
        base.as_str(),
        "--token-file",
        token.to_str().context("token path")?,
    ];
    let remote = |extra: &[&str]| {
        let args: Vec<String> = common
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect();
        cli_async(config.clone(), args)
    };
    // A filter selects only what it names (dry run: nothing delivered).
    let (code, out, err) = remote(&["--type", "statuses", "--dry-run", "--json"]).await?;
    ensure!(code == 0, "dry run: {code} {out} {err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(summary["matched"], 2, "{summary}");
    assert_eq!(summary["delivered"], 0, "{summary}");
    let (code, out, err) = remote(&["--event-id", "wamid.replay.2", "--dry-run", "--json"]).await?;
    ensure!(code == 0, "dry run: {code} {out} {err}");
    assert_eq!(serde_json::from_str::<Value>(&out)?["matched"], 1, "{out}");

    // Delivered for real, the filter still sends only what it names: the two statuses
    // (bodies 1 and 3), nothing else.
    let (code, out, err) = remote(&["--type", "statuses", "--json"]).await?;
    ensure!(code == 0, "filtered replay: {code} {out} {err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(
        (summary["matched"].as_u64(), summary["delivered"].as_u64()),
        (Some(2), Some(2)),
        "{summary}"
    );
    let filtered: Vec<Value> = downstream.received()[4..]
        .iter()
        .map(|request| serde_json::from_slice(&request.body))
        .collect::<Result<_, _>>()?;
    assert_eq!(filtered.len(), 2, "only the two statuses arrived");
    let mut filtered_ids = Vec::new();
    for event in &filtered {
        assert_eq!(event["field"], "statuses", "only statuses: {event}");
        assert_eq!(event["replayed"], true, "the marker field");
        let id = event["id"].as_str().context("an event without id")?;
        ensure!(first.iter().any(|f| f == id), "{id} is an original id");
        filtered_ids.push(id.to_owned());
    }
    filtered_ids.dedup();
    assert_eq!(
        filtered_ids.len(),
        2,
        "two distinct statuses: {filtered_ids:?}"
    );

    let (code, out, err) = remote(&["--json"]).await?;
    ensure!(code == 0, "replay: {code} {out} {err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(
        (summary["matched"].as_u64(), summary["delivered"].as_u64()),
        (Some(4), Some(4)),
        "{summary}"
    );
    let received = downstream.received();
    ensure!(
        received.len() == 10,
        "4 first deliveries, 2 filtered and 4 full replays: {}",
        received.len()
    );
    let mut replayed = Vec::new();
    for request in &received[6..] {
        let event: Value = serde_json::from_slice(&request.body)?;
        assert_eq!(request.replay, "1", "X-Metahook-Replay");
        assert_eq!(event["replayed"], true, "the marker field");
        assert_eq!(
            request.idempotency_key,
            event["id"].as_str().unwrap_or(""),
            "Idempotency-Key is the original id"
        );
        replayed.push(request.idempotency_key.clone());
    }
    for request in &received[..4] {
        assert_eq!(request.replay, "", "first deliveries carry no marker");
    }
    replayed.sort();
    let mut first = first;
    first.sort();
    assert_eq!(replayed, first, "the original ids");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_beyond_retention_is_refused_and_a_stopped_spool_replays_itself() -> Result<()> {
    let mut started = None;
    let mut receiver = TestReceiver::start_with(|config, dir| {
        replayable(config, dir);
        // Small segments (4 KiB and one append beyond), a few kept: early events are
        // deleted.
        config.spool.segment_bytes = 4096;
        config.spool.preallocate_segments = false;
        config.spool.retention = Some(RetentionConfig {
            max_age: None,
            max_bytes: 32768,
        });
        started = Some(config.clone());
    })
    .await?;
    let config = write_config(&started.context("config")?, receiver.dir.path());
    for n in 0..150 {
        ensure!(receiver.post(&body(n, false)).await?.status == StatusCode::OK);
    }
    receiver
        .wait_delivered("local", 150, Duration::from_secs(30))
        .await?;
    let retained = receiver
        .wait_metric_at_least(
            "metahook_spool_retained_bytes",
            1.0,
            Duration::from_secs(10),
            "retained bytes",
        )
        .await?;
    ensure!(retained <= 32768.0, "retention.max_bytes holds: {retained}");
    let oldest = receiver
        .metric("metahook_spool_oldest_retained_timestamp_seconds")
        .await?;
    ensure!(oldest > 0.0, "oldest retained time reported");

    let (status, refused) = admin(
        &receiver,
        Method::POST,
        "/admin/replay",
        Some(TOKEN),
        Some(json!({"sink": "local", "since": "2020-01-01T00:00:00Z"})),
    )
    .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let from = refused["available"]["from"]
        .as_str()
        .context("available.from")?
        .to_owned();
    assert!(from.as_str() > "2020", "{refused}");
    let (status, bad) = admin(
        &receiver,
        Method::POST,
        "/admin/replay",
        Some(TOKEN),
        Some(json!({"sink": "nope", "since": now()})),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("sink:")),
        "{bad}"
    );

    // Stopped: the command takes the spool itself.
    receiver.stop().await?;
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (code, out, err) = cli_async(
        config.clone(),
        args(&["--sink", "local", "--since", "2020-01-01T00:00:00Z"]),
    )
    .await?;
    assert_eq!(code, 1, "refused: {out} {err}");
    assert!(
        err.contains("since:") && err.contains(&format!("available: {from}")),
        "names the range: {err}"
    );
    let (code, _, err) = cli_async(
        config.clone(),
        args(&["--sink", "local", "--since", "tomorrow"]),
    )
    .await?;
    assert_eq!(code, 1);
    assert!(err.contains("--since"), "names the flag: {err}");
    let (code, _, err) = cli_async(
        config.clone(),
        args(&["--sink", "nowhere", "--since", "1h"]),
    )
    .await?;
    assert_eq!(code, 1);
    assert!(
        err.contains("--sink") && err.contains("local"),
        "names the flag and the sinks: {err}"
    );

    let events_before = testkit::read_events(&receiver.events_path())?.len();
    let (code, out, err) = cli_async(
        config.clone(),
        args(&[
            "--sink",
            "local",
            "--since",
            &from,
            "--event-id",
            "wamid.replay.149",
            "--json",
        ]),
    )
    .await?;
    ensure!(code == 0, "stopped-spool replay: {code} {out} {err}");
    let summary: Value = serde_json::from_str(&out)?;
    assert_eq!(
        (summary["matched"].as_u64(), summary["delivered"].as_u64()),
        (Some(1), Some(1)),
        "{summary}"
    );
    let events = testkit::read_events(&receiver.events_path())?;
    ensure!(
        events.len() == events_before + 1,
        "one line appended: {} -> {}",
        events_before,
        events.len()
    );
    let last = events.last().context("a line")?;
    assert_eq!(
        (last["id"].as_str(), last["replayed"].as_bool()),
        (Some("wamid.replay.149"), Some(true))
    );
    if summary["state"] != "succeeded" {
        bail!("{summary}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replay_at_a_time_and_delete_cancels_it() -> Result<()> {
    use metahook_tests::downstream::Mode;
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let receiver = TestReceiver::start_with(|config, dir| {
        replayable(config, dir);
        config.sinks.push(SinkConfig {
            name: "crm".into(),
            kind: SinkKind::Http(HttpSinkConfig {
                url: format!("http://{}/hooks", downstream.addr),
                ..HttpSinkConfig::new(String::new())
            }),
            retry: RetryConfig {
                max_attempts: 0,
                max_backoff: Duration::from_millis(100),
            },
        });
    })
    .await?;
    let since = now();
    ensure!(receiver.post(&body(1, false)).await?.status == StatusCode::OK);
    testkit::wait_until("the event arrives", Duration::from_secs(20), || {
        std::future::ready(Ok(!downstream.received().is_empty()))
    })
    .await?;
    // The destination fails from now on: the replay's batch is retried, and it runs on.
    downstream.set(Mode::Status(503, None));
    let request = json!({"sink": "crm", "since": since});
    let (status, first) = admin(
        &receiver,
        Method::POST,
        "/admin/replay",
        Some(TOKEN),
        Some(request.clone()),
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["id"].as_str().context("id")?.to_owned();
    let (status, busy) = admin(
        &receiver,
        Method::POST,
        "/admin/replay",
        Some(TOKEN),
        Some(request),
    )
    .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    assert_eq!(busy["running"], id.as_str());
    let (status, listed) =
        admin(&receiver, Method::GET, "/admin/replay", Some(TOKEN), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["replays"][0]["id"], id.as_str(), "{listed}");

    let (status, _) = admin(
        &receiver,
        Method::DELETE,
        &format!("/admin/replay/{id}"),
        Some(TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/admin/replay/{id}");
    testkit::wait_until(
        "the replay is cancelled",
        Duration::from_secs(10),
        || async {
            let (_, now) = admin(&receiver, Method::GET, &path, Some(TOKEN), None).await?;
            Ok(now["state"] == "cancelled")
        },
    )
    .await?;
    let (status, _) = admin(
        &receiver,
        Method::GET,
        "/admin/replay/r-999",
        Some(TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_with_the_flag_and_stay_dead_letters() -> Result<()> {
    let state = new_state();
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .refuse
        .insert("wamid.replay.7".into(), 400);
    let downstream = Downstream::start("127.0.0.1:0".parse()?, state).await?;
    let receiver = TestReceiver::start_with(|config, dir| {
        replayable(config, dir);
        // No retention: the delivered events are gone, the dead letter stays.
        config.spool.retention = None;
        config.sinks.push(SinkConfig {
            name: "crm".into(),
            kind: SinkKind::Http(HttpSinkConfig {
                url: format!("http://{}/hooks", downstream.addr),
                ..HttpSinkConfig::new(String::new())
            }),
            retry: RetryConfig::default(),
        });
    })
    .await?;
    let since = now();
    for n in 6..9 {
        ensure!(receiver.post(&body(n, false)).await?.status == StatusCode::OK);
    }
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="crm"}"#,
            1.0,
            Duration::from_secs(20),
            "the refused event is dead-lettered",
        )
        .await?;
    // The destination is fixed; the dead letter is replayed to it, marked.
    downstream
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .refuse
        .clear();
    let done = replay_via_admin(
        &receiver,
        json!({"sink": "crm", "since": since, "event_ids": ["wamid.replay.7"], "dead_letters": true}),
    )
    .await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["matched_dead_letters"], 1, "{done}");
    let replayed: Vec<_> = downstream
        .received()
        .into_iter()
        .filter(|r| r.idempotency_key == "wamid.replay.7")
        .collect();
    ensure!(
        !replayed.is_empty(),
        "the dead letter reached the destination"
    );
    assert!(
        replayed.iter().all(|r| r.replay == "1"),
        "marked as replayed"
    );
    let letters = metahook_receiver::spool::dead_letters::DeadLetters::new(
        &receiver.dir.path().join("spool"),
    );
    assert_eq!(letters.list("crm")?.len(), 1, "it stays a dead letter");
    Ok(())
}
