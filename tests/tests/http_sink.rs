//! The `http` sink against a real HTTP server run by the test, which can be told to succeed,
//! fail (5xx, 429 with Retry-After, 4xx), hang, or go away.

#![allow(clippy::print_stderr)] // tests report on stderr

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use http::StatusCode;
use metahook_receiver::config::{HttpSinkConfig, RetryConfig, SinkConfig, SinkKind};
use metahook_receiver::verify;
use metahook_tests::downstream::{Downstream, Mode, Received, new_state};
use metahook_tests::testkit::{self, TestReceiver};

const SIGNING_SECRET: &[u8] = b"downstream-signing-secret";

fn http_sink(addr: SocketAddr, dir: &Path) -> SinkConfig {
    let secret = dir.join("signing-secret");
    std::fs::write(&secret, SIGNING_SECRET).expect("write signing secret");
    SinkConfig {
        name: "crm".into(),
        kind: SinkKind::Http(HttpSinkConfig {
            url: format!("http://{addr}/hooks"),
            signing_secret_file: Some(secret),
            timeout: Duration::from_millis(500),
            concurrency: 4,
            batch_size: 1,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            ..HttpSinkConfig::new(String::new())
        }),
        retry: RetryConfig {
            max_attempts: 0,
            max_backoff: Duration::from_millis(200),
        },
    }
}

fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{{"from":"15551234567","id":"wamid.http.{n}","timestamp":"1700000000","type":"text","text":{{"body":"http {n}"}}}}]}}}}]}}]}}"#).into_bytes()
}

/// [`testkit::wait_until`] for a condition read without awaiting (what the downstream holds).
async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    testkit::wait_until(what, timeout, || std::future::ready(Ok(done()))).await
}

fn ids(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.idempotency_key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_signed_events_with_idempotency_keys() -> Result<()> {
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let receiver =
        TestReceiver::start_with(|config, dir| config.sinks.push(http_sink(downstream.addr, dir)))
            .await?;
    for n in 0..3 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    wait_until("3 events arrive", Duration::from_secs(20), || {
        downstream.received().len() >= 3
    })
    .await?;
    for request in downstream.received() {
        let event: serde_json::Value = serde_json::from_slice(&request.body)?;
        assert_eq!(
            request.idempotency_key,
            event["id"].as_str().unwrap_or(""),
            "Idempotency-Key is the event id"
        );
        assert_eq!(
            request.signature,
            verify::sign(SIGNING_SECRET, &request.body),
            "X-Metahook-Signature verifies"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_429_and_hangs_then_delivers() -> Result<()> {
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    downstream.set(Mode::Status(503, None));
    let receiver =
        TestReceiver::start_with(|config, dir| config.sinks.push(http_sink(downstream.addr, dir)))
            .await?;
    ensure!(receiver.post(&body(10)).await?.status == StatusCode::OK);
    let failures = r#"metahook_sink_deliveries_total{result="error",sink="crm"}"#;
    for (mode, at_least) in [
        (Mode::Status(429, Some(1)), 2.0),
        (Mode::Hang, 3.0),
        (Mode::Status(408, None), 4.0),
    ] {
        receiver
            .wait_metric_at_least(
                failures,
                at_least - 1.0,
                Duration::from_secs(20),
                "no failed attempt recorded",
            )
            .await?;
        downstream.set(mode);
    }
    // The last mode (408) answered an attempt before the downstream recovers.
    receiver
        .wait_metric_at_least(
            failures,
            4.0,
            Duration::from_secs(20),
            "no failed attempt recorded against the 408",
        )
        .await?;
    downstream.set(Mode::Accept);
    wait_until("the event arrives", Duration::from_secs(30), || {
        ids(&downstream.received()).contains(&"wamid.http.10".to_owned())
    })
    .await?;
    assert_eq!(
        receiver
            .metric(r#"metahook_dead_letter_events_total{sink="crm"}"#)
            .await
            .unwrap_or(0.0),
        0.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_a_dead_letter_and_dlq_retry_delivers_it() -> Result<()> {
    let state = new_state();
    state
        .lock()
        .expect("state")
        .refuse
        .insert("wamid.http.20".into(), 422);
    let downstream = Downstream::start("127.0.0.1:0".parse()?, state).await?;
    let config_path =
        std::env::temp_dir().join(format!("metahook-http-sink-{}.yaml", std::process::id()));
    let receiver = TestReceiver::start_with(|config, dir| {
        config.sinks.push(http_sink(downstream.addr, dir));
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("write config");
    })
    .await?;
    ensure!(receiver.post(&body(20)).await?.status == StatusCode::OK);
    ensure!(receiver.post(&body(21)).await?.status == StatusCode::OK);
    wait_until(
        "the accepted event arrives",
        Duration::from_secs(20),
        || ids(&downstream.received()).contains(&"wamid.http.21".to_owned()),
    )
    .await?;
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="crm"}"#,
            1.0,
            Duration::from_secs(20),
            "the refused event never became a dead letter",
        )
        .await?;
    let dlq = |action: &str| -> Result<String> {
        let out = Command::new(testkit::receiver_bin()?)
            .arg("--config")
            .arg(&config_path)
            .args(["dlq", action, "--sink", "crm"])
            .output()?;
        ensure!(
            out.status.success(),
            "dlq {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let listed = dlq("list")?;
    assert!(
        listed.contains("wamid.http.20") && listed.contains("422"),
        "{listed}"
    );

    downstream.state.lock().expect("state").refuse.clear();
    dlq("retry")?;
    wait_until("the retried event arrives", Duration::from_secs(20), || {
        ids(&downstream.received()).contains(&"wamid.http.20".to_owned())
    })
    .await?;
    assert!(dlq("list")?.trim().is_empty());
    let _ = std::fs::remove_file(&config_path);
    Ok(())
}

/// `dlq ACTION --sink SINK` on `config`: its stdout, stderr and success.
fn dlq(config: &Path, action: &str, sink: &str) -> Result<(String, String, bool)> {
    let out = Command::new(testkit::receiver_bin()?)
        .args(["--log-format", "text", "--config"])
        .arg(config)
        .args(["dlq", action, "--sink", sink])
        .output()?;
    Ok((
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
        out.status.success(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_named_as_such_in_the_dead_letter_and_dlq_retry_says_what_follows()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("receiver.yaml");
    let sink = testkit::failing_http_sink("crm")?;
    let SinkKind::Http(http) = &sink.kind else {
        anyhow::bail!("failing_http_sink is an http sink");
    };
    let url = http.url.clone();
    let mut receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(sink);
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("write config");
    })
    .await?;
    let spool = receiver.dir.path().join("spool");
    ensure!(receiver.post(&body(50)).await?.status == StatusCode::OK);
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="crm"}"#,
            1.0,
            Duration::from_secs(20),
            "the event never became a dead letter",
        )
        .await?;
    let (listed, stderr, ok) = dlq(&config_path, "list", "crm")?;
    ensure!(ok, "{stderr}");
    let reason = listed.trim_end().rsplit('\t').next().unwrap_or_default();
    assert_eq!(
        reason,
        format!(
            "dead-lettered after 2 failed attempts; the last: POST failed ({url}): error sending \
             request: client error (Connect): tcp connect error: Connection refused (os error 111)"
        ),
        "{listed}"
    );

    // The receiver holds the spool: it delivers the queued events (and fails again here).
    let (said, stderr, ok) = dlq(&config_path, "retry", "crm")?;
    ensure!(ok, "{stderr}");
    assert_eq!(
        said,
        format!(
            "1 dead letter(s) of sink crm queued for redelivery; the receiver running on {} \
             delivers them next\n",
            spool.display()
        )
    );
    receiver.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_service_loses_nothing() -> Result<()> {
    let downstream = Downstream::start("127.0.0.1:0".parse()?, new_state()).await?;
    let addr = downstream.addr;
    let receiver =
        TestReceiver::start_with(|config, dir| config.sinks.push(http_sink(addr, dir))).await?;
    let state = downstream.stop();
    for n in 30..40 {
        ensure!(
            receiver.post(&body(n)).await?.status == StatusCode::OK,
            "200s continue while the service is down"
        );
    }
    receiver
        .wait_metric_at_least(
            r#"metahook_sink_lag_events{sink="crm"}"#,
            1.0,
            Duration::from_secs(10),
            "lag never rose",
        )
        .await?;
    let downstream = Downstream::start(addr, state).await?;
    wait_until("the backlog drains", Duration::from_secs(30), || {
        let got = ids(&downstream.received());
        (30..40).all(|n| got.contains(&format!("wamid.http.{n}")))
    })
    .await?;
    Ok(())
}

/// The ids of the events in a batch request's body (a JSON array).
fn array_ids(request: &Received) -> Result<Vec<String>> {
    let events: Vec<serde_json::Value> = serde_json::from_slice(&request.body)?;
    Ok(events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_posts_signed_arrays_retries_and_splits_refusals() -> Result<()> {
    use sha2::{Digest, Sha256};

    let state = new_state();
    // Refused on its own (422): the array holding it is split, only it becomes a dead letter.
    state
        .lock()
        .expect("state")
        .refuse
        .insert("wamid.http.47".into(), 422);
    let downstream = Downstream::start("127.0.0.1:0".parse()?, state).await?;
    // Unavailable first: every array is retried until the service accepts.
    downstream.set(Mode::Status(503, None));
    let receiver = TestReceiver::start_with(|config, dir| {
        let mut sink = http_sink(downstream.addr, dir);
        if let SinkKind::Http(http) = &mut sink.kind {
            http.batch_size = 5;
        }
        config.sinks.push(sink);
    })
    .await?;
    for n in 40..52 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    let failures = r#"metahook_sink_deliveries_total{result="error",sink="crm"}"#;
    receiver
        .wait_metric_at_least(
            failures,
            12.0,
            Duration::from_secs(20),
            "the 503s were not retried",
        )
        .await?;
    assert!(downstream.received().is_empty(), "nothing accepted yet");
    downstream.set(Mode::Accept);
    let expected: Vec<String> = (40..52)
        .filter(|n| *n != 47)
        .map(|n| format!("wamid.http.{n}"))
        .collect();
    wait_until("11 events arrive", Duration::from_secs(30), || {
        let got: Vec<String> = downstream
            .received()
            .iter()
            .flat_map(|r| array_ids(r).unwrap_or_default())
            .collect();
        expected.iter().all(|id| got.contains(id))
    })
    .await?;
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="crm"}"#,
            1.0,
            Duration::from_secs(20),
            "the refused event never became a dead letter",
        )
        .await?;
    let mut delivered = Vec::new();
    for request in downstream.received() {
        let ids = array_ids(&request)?;
        ensure!(
            (1..=5).contains(&ids.len()),
            "an array of 1 to 5 events: {}",
            ids.len()
        );
        assert_eq!(
            request.signature,
            verify::sign(SIGNING_SECRET, &request.body),
            "X-Metahook-Signature covers the whole array"
        );
        let mut key = Sha256::new();
        for id in &ids {
            key.update(id.as_bytes());
            key.update(b"\n");
        }
        assert_eq!(request.idempotency_key, hex::encode(key.finalize()));
        delivered.extend(ids);
    }
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered, expected, "every accepted event, with its own id");
    assert_eq!(
        receiver
            .metric(r#"metahook_dead_letter_events_total{sink="crm"}"#)
            .await?,
        1.0,
        "only the refused event is a dead letter"
    );
    Ok(())
}
