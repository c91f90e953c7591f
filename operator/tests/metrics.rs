//! The operator's /metrics, /healthz and /readyz on a real socket, and its exposition
//! checked by `promtool check metrics` (scripts/test.sh installs promtool; without it the
//! test fails, naming it).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metahook_operator::Error;
use metahook_operator::metrics::{self, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// promtool from `$METAHOOK_TOOLS_DIR/bin` (where scripts/install-tools.sh puts it, default
/// /var/cache/metahook/tools) or PATH; its absence fails the test, naming it.
fn promtool() -> PathBuf {
    let tools = std::env::var_os("METAHOOK_TOOLS_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/metahook/tools"), PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(tools.join("bin"))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed (looked in {}/bin and PATH): run scripts/install-tools.sh \
                 (scripts/test.sh does)",
                tools.display()
            )
        })
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn metrics_health_and_readiness_over_http() {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    metrics.reconciled(Ok(()), Duration::from_millis(12));
    metrics.reconciled(
        Err(&Error::Certificate("bad key".to_owned())),
        Duration::from_millis(3),
    );
    metrics.certificate_expires("acme", "wa", 1_800_000_000);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = metrics::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), ready.clone()));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/nothing").await.0, 404);
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "metahook_operator_reconciliations_total{result=\"success\"} 1",
        "metahook_operator_reconciliations_total{result=\"error\"} 1",
        "metahook_operator_reconcile_errors_total{reason=\"certificate\"} 1",
        "metahook_operator_reconcile_errors_total{reason=\"kube_api\"} 0",
        "metahook_operator_reconcile_duration_seconds_count 2",
        "metahook_operator_certificate_expiry_timestamp_seconds{name=\"wa\",namespace=\"acme\"} 1800000000",
        "metahook_operator_leader 0",
    ] {
        assert!(body.contains(line), "missing {line:?} in:\n{body}");
    }
    server.abort();

    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool output");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );
}

#[test]
fn deleted_subscriptions_lose_their_certificate_series() {
    let metrics = Metrics::new().expect("metrics");
    metrics.certificate_expires("acme", "kept", 1_800_000_000);
    metrics.certificate_expires("acme", "deleted", 1_800_000_000);
    metrics.retain_subscriptions(|namespace, name| namespace == "acme" && name == "kept");
    let text = metrics.render();
    assert!(text.contains("name=\"kept\""), "{text}");
    assert!(
        !text.contains("name=\"deleted\""),
        "a stale expiry would fire alerts: {text}"
    );
}

#[test]
fn conditions_are_one_per_current_status_and_leave_with_their_subscription() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let condition = |type_: &str, status: &str| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: "Test".to_owned(),
        message: String::new(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    };
    let metrics = Metrics::new().expect("metrics");
    metrics.record_conditions(
        "acme",
        "kept",
        &[
            condition("Ready", "False"),
            condition("SecretsResolved", "True"),
        ],
    );
    metrics.record_conditions("acme", "deleted", &[condition("Ready", "True")]);
    let text = metrics.render();
    let sample = |name: &str, condition: &str, status: &str| {
        format!(
            "metahook_operator_subscription_condition{{condition=\"{condition}\",name=\"{name}\",namespace=\"acme\",status=\"{status}\"}}"
        )
    };
    for (name, condition, status, value) in [
        ("kept", "Ready", "False", 1),
        ("kept", "Ready", "True", 0),
        ("kept", "Ready", "Unknown", 0),
        ("kept", "SecretsResolved", "True", 1),
        ("deleted", "Ready", "True", 1),
    ] {
        let line = format!("{} {value}", sample(name, condition, status));
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // A later pass that finds the subscription Ready moves the 1.
    metrics.record_conditions("acme", "kept", &[condition("Ready", "True")]);
    let text = metrics.render();
    assert!(text.contains(&format!("{} 1", sample("kept", "Ready", "True"))));
    assert!(text.contains(&format!("{} 0", sample("kept", "Ready", "False"))));

    metrics.retain_subscriptions(|namespace, name| namespace == "acme" && name == "kept");
    let text = metrics.render();
    assert!(text.contains("name=\"kept\""), "{text}");
    assert!(
        !text.contains("name=\"deleted\""),
        "a deleted subscription would stay in alerts: {text}"
    );
}

/// The drain gauges of a subscription whose claims were drained fall to nothing once no
/// claim is left; a subscription that never drained gets no series.
#[test]
fn drain_gauges_are_cleared_once_nothing_is_left() {
    use metahook_operator::controller::drain::Drains;
    use metahook_operator::crd::DrainStatus;
    let metrics = Metrics::new().expect("metrics");
    let draining = Drains {
        claims: vec![DrainStatus {
            claim: "data-wa-1".to_owned(),
            state: "Draining".to_owned(),
            events_left: Some(7),
            ..DrainStatus::default()
        }],
    };
    metrics.drains("acme", "wa", draining.counts());
    metrics.drains_cleared("acme", "ig");
    let text = metrics.render();
    assert!(
        text.contains(
            "metahook_operator_claims{name=\"wa\",namespace=\"acme\",state=\"draining\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("name=\"ig\""), "{text}");
    metrics.drains_cleared("acme", "wa");
    let text = metrics.render();
    assert!(
        text.contains(
            "metahook_operator_claims{name=\"wa\",namespace=\"acme\",state=\"draining\"} 0"
        ),
        "{text}"
    );
    assert!(
        text.contains("metahook_operator_drain_events_left{name=\"wa\",namespace=\"acme\"} 0"),
        "{text}"
    );
}
