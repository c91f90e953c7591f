//! No acknowledged event is lost to what Kubernetes does to a receiver pod: on the real API
//! server and controllers, with the receiver pods and the drain Jobs' pods run by the
//! kubelet harness (each claim a host directory of its own), a StatefulSet receiver of
//! three replicas accepts signed events while its PostgreSQL sink is unreachable, rolls
//! (a configuration change) and scales down to one while it still is, and once the sink is
//! back every acknowledged event is in it exactly once, the removed replicas' claims
//! drained by Jobs and deleted, and the status showed the drains while they ran.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use metahook_tests::kubelet::{Kubelet, Phase};
use metahook_tests::testkit;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use super::scene::{Scene, scene};
use super::*;

/// The subscription's name: its pods are `hooks-0` … and its claims `data-hooks-0` ….
const NAME: &str = "hooks";
/// The app secret of the scene's Secret.
const APP_SECRET: &[u8] = b"e2e-app-secret";
/// Where PostgreSQL runs for the tests (scripts/test.sh starts it).
const POSTGRES: &str = "127.0.0.1:5432";

/// A TCP proxy in front of PostgreSQL that the test opens and closes: closed, it accepts
/// and drops every connection (the sink sees the database as unreachable). It listens on
/// every address, so the containers reach it at the bridge's gateway.
struct SinkProxy {
    port: u16,
    open: Arc<AtomicBool>,
}

impl SinkProxy {
    async fn start() -> Result<SinkProxy> {
        let listener = TcpListener::bind("0.0.0.0:0")
            .await
            .context("binding the sink proxy")?;
        let port = listener.local_addr()?.port();
        let open = Arc::new(AtomicBool::new(false));
        let gate = Arc::clone(&open);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !gate.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(POSTGRES).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(SinkProxy { port, open })
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

async fn postgres() -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(
        &format!("postgres://postgres@{POSTGRES}/test"),
        tokio_postgres::NoTls,
    )
    .await
    .context(
        "PostgreSQL must run on 127.0.0.1:5432 with database test (scripts/test.sh starts it)",
    )?;
    tokio::spawn(connection);
    Ok(client)
}

/// A WhatsApp text message with a wamid of its own, signed as Meta signs.
fn signed_message(tag: &str) -> (Bytes, String) {
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"200300400500600"}},"contacts":[{{"profile":{{"name":"Ada"}},"wa_id":"15551234567"}}],"messages":[{{"from":"15551234567","id":"wamid.e2e.{tag}","timestamp":"1700000000","type":"text","text":{{"body":"{tag}"}}}}]}}}}]}}]}}"#
    );
    let signature = metahook_receiver::verify::sign(APP_SECRET, body.as_bytes());
    (Bytes::from(body), signature)
}

/// Posts `count` new messages to the receiver at `addr`, each answered 200.
pub(super) async fn post_messages(
    addr: SocketAddr,
    prefix: &str,
    count: usize,
) -> Result<Vec<String>> {
    let mut tags = Vec::new();
    for n in 0..count {
        let tag = format!("{prefix}-{n}");
        let (body, signature) = signed_message(&tag);
        let answer = testkit::request(
            addr,
            Method::POST,
            "/webhooks/whatsapp",
            &[
                ("content-type", "application/json"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await
        .with_context(|| format!("posting {tag} to {addr}"))?;
        ensure!(
            answer.status == StatusCode::OK,
            "{tag}: {} {}",
            answer.status,
            answer.text()
        );
        tags.push(tag);
    }
    Ok(tags)
}

/// The receiver pods `hooks-0` … `hooks-{replicas-1}` running and ready, each a pod the
/// harness did not see before (`seen` holds the uids of earlier ones).
async fn ready_pods(
    scene: &Scene,
    kubelet: &Kubelet,
    replicas: usize,
    seen: &BTreeSet<String>,
) -> Result<Vec<metahook_tests::kubelet::PodView>> {
    let mut pods = Vec::new();
    for ordinal in 0..replicas {
        let name = format!("{NAME}-{ordinal}");
        let pod = kubelet
            .wait_for(&format!("a new pod {name} ready"), WAIT, |views| {
                Ok(views
                    .iter()
                    .find(|v| {
                        v.name == name
                            && v.phase == Phase::Running
                            && v.ready
                            && !seen.contains(&v.uid)
                    })
                    .cloned())
            })
            .await
            .with_context(|| format!("--- operator log:\n{}", scene.operator.log()))?;
        pods.push(pod);
    }
    Ok(pods)
}

async fn spool_status(scene: &Scene) -> Result<serde_json::Value> {
    let sub = scene.api::<WebhookSubscription>().get(NAME).await?;
    Ok(serde_json::to_value(
        sub.status.and_then(|s| s.spool).unwrap_or_default(),
    )?)
}

/// The operator's /metrics, at the address its log says it serves them on.
async fn operator_metrics(scene: &Scene) -> Result<String> {
    let log = scene.operator.log();
    let addr: SocketAddr = log
        .lines()
        .find(|line| line.contains("serving /metrics"))
        .and_then(|line| line.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("the operator's log names no metrics address")?
        .parse()
        .context("the operator's metrics address")?;
    let answer = testkit::request(addr, Method::GET, "/metrics", &[], Bytes::new()).await?;
    Ok(answer.text())
}

#[tokio::test]
async fn a_rollout_and_a_scale_down_while_the_sink_is_down_lose_no_acknowledged_event() -> Result<()>
{
    let started = Instant::now();
    let scene = scene("e2e-spool").await?;
    let proxy = SinkProxy::start().await?;
    let kubelet = Kubelet::start(
        &scene.client,
        &scene.namespace,
        Some(&format!("metahook.io/subscription={NAME}")),
    )
    .await?;
    let schema = format!("e2e_spool_{}", run_suffix());
    let url = format!(
        "postgres://postgres@{}:{}/test",
        kubelet.host_ip(),
        proxy.port
    );
    let sink_secret = Secret {
        metadata: ObjectMeta {
            name: Some("sink-db".to_owned()),
            labels: Some([("metahook.io/referenceable".to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        data: Some([("url".to_owned(), ByteString(url.into_bytes()))].into()),
        ..Secret::default()
    };
    scene
        .api::<Secret>()
        .create(&PostParams::default(), &sink_secret)
        .await
        .context("creating the sink's Secret")?;
    let spec = |max_backoff: &str| {
        json!({
            "object": "whatsapp_business_account",
            "fields": ["messages"],
            "appSecretRef": {"name": "meta-app", "key": "app-secret"},
            "verifyTokenRef": {"name": "meta-app", "key": "verify-token"},
            "receiver": {"replicas": 3, "terminationGracePeriodSeconds": 15},
            "delivery": {
                "sinks": [{"name": "db", "postgres": {
                    "urlSecretRef": {"name": "sink-db", "key": "url"},
                    "schema": schema,
                    "sslMode": "disable",
                }}],
                // Retried often and forever: an outage delays, never dead-letters.
                "retry": {"maxAttempts": 0, "maxBackoff": max_backoff},
            },
        })
    };
    scene.subscribe(NAME, spec("1s")).await?;
    let first = ready_pods(&scene, &kubelet, 3, &BTreeSet::new()).await?;
    let mut acknowledged = Vec::new();
    for (ordinal, pod) in first.iter().enumerate() {
        acknowledged.extend(post_messages(pod.addr("http")?, &format!("a{ordinal}"), 8).await?);
    }

    // A rollout (a configuration change) while the sink is down: every pod is replaced,
    // each new one on its predecessor's claim.
    let old: BTreeSet<String> = first.iter().map(|p| p.uid.clone()).collect();
    scene
        .api::<WebhookSubscription>()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec("2s")})),
        )
        .await
        .context("changing the subscription")?;
    let rolled = ready_pods(&scene, &kubelet, 3, &old).await?;
    for (ordinal, pod) in rolled.iter().enumerate() {
        acknowledged.extend(post_messages(pod.addr("http")?, &format!("b{ordinal}"), 8).await?);
    }

    // Scale down to one, still with the sink down: replicas 1 and 2 go, and their claims
    // are drained by Jobs, which never run beside a receiver of their ordinal.
    scene
        .api::<WebhookSubscription>()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"receiver": {"replicas": 1}}})),
        )
        .await
        .context("scaling the subscription down")?;
    let draining = wait_for(
        "the status to show two claims draining",
        WAIT,
        Some(&scene.operator),
        || async {
            let spool = spool_status(&scene).await?;
            let drains = spool["drains"].as_array().cloned().unwrap_or_default();
            let running = drains
                .iter()
                .filter(|d| d["state"] == "Draining" && !d["job"].is_null())
                .count();
            let metrics = operator_metrics(&scene).await?;
            let in_metrics = metrics.lines().any(|line| {
                line.starts_with("metahook_operator_claims{")
                    && line.contains(&format!("name=\"{NAME}\""))
                    && line.contains("state=\"draining\"")
                    && line.ends_with(" 2")
            });
            if spool["claimsDraining"] == 2 && running == 2 && in_metrics {
                Ok(Some(spool))
            } else {
                bail!("status.spool {spool}")
            }
        },
    )
    .await?;
    let drain_pods = kubelet
        .wait_for("both drain Jobs' pods running", WAIT, |views| {
            let running: Vec<_> = views
                .iter()
                .filter(|v| {
                    v.name.starts_with(&format!("{NAME}-drain-")) && v.phase == Phase::Running
                })
                .cloned()
                .collect();
            Ok((running.len() == 2).then_some(running))
        })
        .await?;
    for drain in &drain_pods {
        let ordinal = if drain.name.starts_with(&format!("{NAME}-drain-1")) {
            1
        } else {
            2
        };
        let receiver = format!("{NAME}-{ordinal}");
        let beside: Vec<_> = kubelet
            .pods()
            .into_iter()
            .filter(|v| v.name == receiver && !matches!(v.phase, Phase::Gone))
            .collect();
        ensure!(
            beside.is_empty(),
            "drain pod {} runs beside receiver {receiver}: {beside:?}",
            drain.name
        );
    }

    // The sink comes back: everything acknowledged is delivered exactly once.
    proxy.set_open(true);
    let jobs = scene.api::<Job>();
    let claims = scene.api::<PersistentVolumeClaim>();
    wait_for(
        "the drained claims and their Jobs deleted, and the status clear",
        WAIT * 3,
        Some(&scene.operator),
        || async {
            let left: Vec<String> = claims
                .list(&ListParams::default().labels(&format!("metahook.io/subscription={NAME}")))
                .await?
                .items
                .into_iter()
                .map(|c| c.name_any())
                .collect();
            let drain_jobs = jobs.list(&ListParams::default()).await?.items.len();
            let spool = spool_status(&scene).await?;
            if left == ["data-hooks-0"] && drain_jobs == 0 && spool["claimsDraining"] == 0 {
                Ok(Some(()))
            } else {
                bail!("claims {left:?}, {drain_jobs} Jobs, status.spool {spool}")
            }
        },
    )
    .await
    .with_context(|| format!("--- kubelet errors: {:?}", kubelet.errors()))?;
    let db = postgres().await?;
    let expected: BTreeSet<String> = acknowledged
        .iter()
        .map(|tag| format!("wamid.e2e.{tag}"))
        .collect();
    let rows = wait_for(
        "every acknowledged event in PostgreSQL",
        WAIT,
        Some(&scene.operator),
        || async {
            let rows = db
                .query(&format!("SELECT id FROM {schema}.events"), &[])
                .await
                .context("reading the sink's events")?;
            let found: BTreeSet<String> = rows.iter().map(|row| row.get::<_, String>(0)).collect();
            if found == expected {
                Ok(Some(rows.len()))
            } else {
                bail!("{} of {} events", found.len(), expected.len())
            }
        },
    )
    .await?;
    ensure!(
        rows == acknowledged.len(),
        "{rows} rows for {} acknowledged events",
        acknowledged.len()
    );
    println!(
        "spool scenario: {} events through a rollout and a scale-down, drains seen {draining}, {:.1}s",
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
    kubelet.finish().await?;
    assert_clean_log(&scene.operator)?;
    Ok(())
}
