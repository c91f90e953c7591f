//! The WebhookReplay controller against the mock Kubernetes API (every request scripted)
//! and fake receiver admin endpoints on 127.0.0.1 (the pods' IP and metrics port).

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::Method;
use kube::runtime::controller::Action;
use metahook_operator::controller::replay::{self, POLL, WAIT};
use metahook_operator::replay_crd::WebhookReplay;
use metahook_operator::resources::monitoring::Capabilities;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "acme";
const CORE: &str = "/api/v1/namespaces/acme";
const SUBS: &str = "/apis/metahook.io/v1alpha1/namespaces/acme/webhooksubscriptions";
const REPLAYS: &str = "/apis/metahook.io/v1alpha1/namespaces/acme/webhookreplays";
const TOKEN: &str = "admin-s3cret";

/// One request a fake admin endpoint received: method, path, Authorization, body.
type Received = (String, String, String, Value);

/// A fake receiver admin endpoint: answers each request with the next scripted
/// (status, body), recording what it received.
struct FakeAdmin {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

async fn fake_admin(answers: Vec<(u16, Value)>) -> FakeAdmin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (log, answers) = (log.clone(), answers.clone());
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buffer = [0_u8; 4096];
                let (head, body) = loop {
                    let Ok(n) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    bytes.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&bytes).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let head = text[..end].to_owned();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if bytes.len() >= end + 4 + length {
                        break (head, bytes[end + 4..end + 4 + length].to_vec());
                    }
                };
                let mut request_line = head.lines().next().unwrap_or("").split(' ');
                let method = request_line.next().unwrap_or("").to_owned();
                let path = request_line.next().unwrap_or("").to_owned();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization:")
                            .then(|| l["authorization:".len()..].trim().to_owned())
                    })
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                log.lock().expect("lock").push((method, path, auth, body));
                let (code, reply) = answers
                    .lock()
                    .expect("lock")
                    .pop_front()
                    .unwrap_or((500, json!({"error": "unscripted"})));
                let reply = reply.to_string();
                let response = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    FakeAdmin { port, received }
}

impl FakeAdmin {
    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

fn remote(id: &str, state: &str, matched: u64, delivered: u64) -> Value {
    json!({"id": id, "state": state, "matched": matched, "delivered": delivered, "failed": 0,
        "scanned": 100, "request": {}})
}

/// A ready receiver pod of `wa` whose metrics port is `port` on 127.0.0.1.
fn pod(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"metahook.io/subscription": "wa"}},
        "spec": {"containers": [{"name": "receiver",
            "ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn subscription_object() -> Value {
    serde_json::to_value(subscription(
        "wa",
        NS,
        &json!({
            "object": "page",
            "fields": ["feed"],
            "appSecretRef": {"name": "meta-app", "key": "app-secret"},
            "delivery": {"sinks": [{"name": "bus", "nats": {"url": "nats://nats:4222"}}]},
        }),
    ))
    .expect("json")
}

fn replay_object(status: Option<Value>, finalizer: bool) -> Value {
    let mut object = json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookReplay",
        "metadata": {"name": "rp", "namespace": NS, "uid": "replay-uid", "generation": 1,
            "resourceVersion": "3", "creationTimestamp": "2026-12-07T10:00:00Z"},
        "spec": {"subscription": "wa", "sink": "bus", "since": "24h", "fields": ["feed"]},
    });
    if finalizer {
        object["metadata"]["finalizers"] = json!([replay::FINALIZER]);
    }
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

/// The requests of a pass up to the pods (the finalizer first when absent).
fn reads(pods: &[Value]) -> Vec<Expect> {
    vec![
        get(format!("{SUBS}/wa"), Reply::Object(subscription_object())),
        get(
            format!("{CORE}/secrets/wa-admin-token"),
            Reply::Object(admin_token_secret(NS, "wa")),
        ),
        pods_listed(NS, pods),
    ]
}

/// Runs one pass of `replay` against `script`; the action and every request served.
async fn pass(replay: &Value, script: Vec<Expect>) -> (Action, Vec<Served>) {
    let replay: WebhookReplay = serde_json::from_value(replay.clone()).expect("replay");
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = replay::reconcile(Arc::new(replay), api.ctx.clone())
        .await
        .expect("reconcile");
    (action, api.finish().await)
}

fn status_patch(served: &[Served]) -> Value {
    body_of(served, &Method::PATCH, &format!("{REPLAYS}/rp/status"))["status"].clone()
}

#[tokio::test]
async fn a_replay_runs_on_every_ready_pod_waits_out_a_busy_one_restarts_a_forgotten_one_and_sums_up()
 {
    // Pod a: started, then done. Pod b: busy (409), then started, then forgot it (404, a
    // restart), started again, then done.
    let a = fake_admin(vec![
        (202, remote("r-1", "running", 0, 0)),
        (200, remote("r-1", "succeeded", 3, 3)),
    ])
    .await;
    let b = fake_admin(vec![
        (
            409,
            json!({"error": "a replay is running", "running": "r-9"}),
        ),
        (202, remote("r-10", "running", 0, 0)),
        (404, json!({"error": "no replay r-10"})),
        (202, remote("r-1", "running", 1, 0)),
        (200, remote("r-1", "succeeded", 2, 1)),
    ])
    .await;
    let pods = [pod("wa-0", a.port), pod("wa-1", b.port)];
    let finalizer = || {
        apply(
            format!("{REPLAYS}/rp"),
            Reply::Onto(replay_object(None, true)),
        )
    };
    let status_apply = || {
        apply(
            format!("{REPLAYS}/rp/status"),
            Reply::Onto(replay_object(None, true)),
        )
    };

    // Pass 1: the finalizer, then a started, b busy.
    let mut script = vec![finalizer()];
    script.extend(reads(&pods));
    script.push(status_apply());
    let (action, served) = pass(&replay_object(None, false), script).await;
    assert_eq!(action, Action::requeue(WAIT), "b is busy: no hot loop");
    assert_eq!(
        body_of(&served, &Method::PATCH, &format!("{REPLAYS}/rp"))["metadata"]["finalizers"],
        json!([replay::FINALIZER])
    );
    let status = status_patch(&served);
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["replicas"][0]["pod"], "wa-0");
    assert_eq!(status["replicas"][0]["replayId"], "r-1");
    assert_eq!(status["replicas"][0]["state"], "running");
    assert_eq!(status["replicas"][1]["state"], "pending");
    assert!(
        status["replicas"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("r-9")),
        "{status}"
    );
    // The request: the relative since fixed against the creation time, the token.
    let (method, path, auth, body) = &a.received()[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/admin/replay"));
    assert_eq!(auth, &format!("Bearer {TOKEN}"));
    assert_eq!(
        body,
        &json!({"sink": "bus", "since": "2026-12-06T10:00:00Z", "fields": ["feed"],
            "dead_letters": false, "dry_run": false})
    );

    // Pass 2: a done, b started.
    let mut script = reads(&pods);
    script.push(status_apply());
    let (action, served) = pass(&replay_object(Some(status), true), script).await;
    assert_eq!(action, Action::requeue(POLL));
    let status = status_patch(&served);
    assert_eq!(status["replicas"][0]["state"], "succeeded");
    assert_eq!(status["replicas"][1]["replayId"], "r-10");
    assert_eq!(status["phase"], "Running");

    // Pass 3: b forgot r-10 (restarted): started again, once.
    let mut script = reads(&pods);
    script.push(status_apply());
    let (_, served) = pass(&replay_object(Some(status), true), script).await;
    let status = status_patch(&served);
    assert_eq!(status["replicas"][1]["replayId"], "r-1");
    assert_eq!(status["replicas"][1]["restarted"], true);
    assert_eq!(status["replicas"][1]["state"], "running");

    // Pass 4: b done: Succeeded, the totals summed, the finalizer removed.
    let mut script = reads(&pods);
    script.push(status_apply());
    script.push(finalizer());
    let (action, served) = pass(&replay_object(Some(status), true), script).await;
    assert_eq!(action, Action::await_change());
    let status = status_patch(&served);
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(
        (&status["matched"], &status["delivered"], &status["failed"]),
        (&json!(5), &json!(4), &json!(0))
    );
    assert_eq!(
        condition(&json!({"status": status}), "Complete")["status"],
        "True"
    );
    assert_eq!(
        body_of(&served, &Method::PATCH, &format!("{REPLAYS}/rp"))["metadata"]["finalizers"],
        json!([])
    );
    let paths: Vec<String> = b
        .received()
        .iter()
        .map(|r| format!("{} {}", r.0, r.1))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /admin/replay",
            "POST /admin/replay",
            "GET /admin/replay/r-10",
            "POST /admin/replay",
            "GET /admin/replay/r-1",
        ]
    );

    // A finished replay is left alone: no request.
    let (action, _) = pass(&replay_object(Some(status), false), Vec::new()).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_window_outside_retention_fails_the_replica_with_the_available_range() {
    let a = fake_admin(vec![(
        422,
        json!({"error": "since: 2026-12-06T10:00:00Z is before the oldest event the spool holds",
            "available": {"from": "2026-12-07T01:00:00Z", "to": "2026-12-07T09:00:00Z"}}),
    )])
    .await;
    let mut script = reads(&[pod("wa-0", a.port)]);
    script.push(apply(
        format!("{REPLAYS}/rp/status"),
        Reply::Onto(replay_object(None, true)),
    ));
    script.push(apply(
        format!("{REPLAYS}/rp"),
        Reply::Onto(replay_object(None, false)),
    ));
    let (action, served) = pass(&replay_object(None, true), script).await;
    assert_eq!(action, Action::await_change());
    let status = status_patch(&served);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["replicas"][0]["state"], "failed");
    let error = status["replicas"][0]["error"].as_str().expect("error");
    assert!(
        error.contains("available: 2026-12-07T01:00:00Z to 2026-12-07T09:00:00Z"),
        "{error}"
    );
    let wrapped = json!({"status": status});
    let complete = condition(&wrapped, "Complete");
    assert!(
        complete["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("wa-0: since:")),
        "{complete}"
    );
}

#[tokio::test]
async fn deleting_a_running_replay_stops_it_on_each_pod_then_drops_the_finalizer() {
    let a = fake_admin(vec![(200, remote("r-4", "cancelled", 1, 1))]).await;
    let status = json!({"phase": "Running", "replicas": [
        {"pod": "wa-0", "replayId": "r-4", "state": "running", "matched": 1, "delivered": 1, "failed": 0},
        {"pod": "wa-1", "replayId": "r-2", "state": "succeeded", "matched": 0, "delivered": 0, "failed": 0},
    ]});
    let mut replay = replay_object(Some(status), true);
    replay["metadata"]["deletionTimestamp"] = json!("2026-12-07T11:00:00Z");
    let script = vec![
        get(
            format!("{CORE}/secrets/wa-admin-token"),
            Reply::Object(admin_token_secret(NS, "wa")),
        ),
        pods_listed(NS, &[pod("wa-0", a.port)]),
        apply(format!("{REPLAYS}/rp"), Reply::Onto(replay.clone())),
    ];
    let (action, served) = pass(&replay, script).await;
    assert_eq!(action, Action::await_change());
    let received = a.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (received[0].0.as_str(), received[0].1.as_str()),
        ("DELETE", "/admin/replay/r-4")
    );
    assert_eq!(
        body_of(&served, &Method::PATCH, &format!("{REPLAYS}/rp"))["metadata"]["finalizers"],
        json!([])
    );
}

#[tokio::test]
async fn a_missing_subscription_fails_the_replay_naming_it() {
    let script = vec![
        apply(
            format!("{REPLAYS}/rp"),
            Reply::Onto(replay_object(None, true)),
        ),
        get(format!("{SUBS}/wa"), Reply::Error(404, "NotFound")),
        apply(
            format!("{REPLAYS}/rp/status"),
            Reply::Onto(replay_object(None, true)),
        ),
        apply(
            format!("{REPLAYS}/rp"),
            Reply::Onto(replay_object(None, false)),
        ),
    ];
    let (action, served) = pass(&replay_object(None, false), script).await;
    assert_eq!(action, Action::await_change());
    let status = status_patch(&served);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(
        condition(&json!({"status": status}), "Complete")["message"],
        "no WebhookSubscription acme/wa"
    );
}
