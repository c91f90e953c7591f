//! A WebhookReplay on the real API server (issue 27): a subscription of two receiver
//! replicas, run by the kubelet harness with podman, keeps delivered events
//! (`spool.retention`) and delivers them to an HTTP sink, a downstream service in the test
//! reached at the bridge's gateway; once every event posted to either pod is delivered and
//! the downstream's record cleared, a WebhookReplay of that sink is carried out by the
//! operator on both pods through their admin endpoints, and its status reports per pod
//! and in total exactly what the downstream received again: the same event ids, each
//! once, each marked as replayed.

use std::collections::BTreeSet;
use std::time::Instant;

use metahook_operator::replay_crd::{ReplayPhase, WebhookReplay};
use metahook_tests::downstream::{Downstream, new_state};
use metahook_tests::kubelet::{Kubelet, Phase};

use super::scene::scene;
use super::spool::post_messages;
use super::*;

/// The subscription's name: its pods are `hooks-0` and `hooks-1`.
const NAME: &str = "hooks";
/// The sink replayed to.
const SINK: &str = "crm";
/// Events posted to each pod.
const PER_POD: usize = 4;

/// The Idempotency-Keys (event ids) of what the downstream accepted since it was last
/// cleared.
fn received_keys(downstream: &Downstream) -> Vec<String> {
    downstream
        .received()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect()
}

#[tokio::test]
async fn a_replay_on_two_receiver_pods_reports_what_the_sink_received_again() -> Result<()> {
    let started = Instant::now();
    let scene = scene("e2e-replay").await?;
    // On every address: the containers reach it at the bridge's gateway.
    let downstream = Downstream::start("0.0.0.0:0".parse()?, new_state()).await?;
    let kubelet = Kubelet::start(
        &scene.client,
        &scene.namespace,
        Some(&format!("metahook.io/subscription={NAME}")),
    )
    .await?;
    let url = format!(
        "http://{}:{}/events",
        kubelet.host_ip(),
        downstream.addr.port()
    );
    scene
        .subscribe(
            NAME,
            json!({
                "object": "whatsapp_business_account",
                "fields": ["messages"],
                "appSecretRef": {"name": "meta-app", "key": "app-secret"},
                "verifyTokenRef": {"name": "meta-app", "key": "verify-token"},
                "receiver": {"replicas": 2, "terminationGracePeriodSeconds": 15},
                "delivery": {
                    "sinks": [{"name": SINK, "http": {"url": url}}],
                    "retry": {"maxBackoff": "1s"},
                    "spool": {"retention": {"maxAge": "1h"}},
                },
            }),
        )
        .await?;

    // Distinct events to each pod, all delivered.
    let mut expected = BTreeSet::new();
    let mut pods = Vec::new();
    for ordinal in 0..2 {
        let name = format!("{NAME}-{ordinal}");
        let pod = kubelet
            .wait_for(&format!("pod {name} ready"), WAIT, |views| {
                Ok(views
                    .iter()
                    .find(|v| v.name == name && v.phase == Phase::Running && v.ready)
                    .cloned())
            })
            .await
            .with_context(|| format!("--- operator log:\n{}", scene.operator.log()))?;
        let tags = post_messages(pod.addr("http")?, &format!("r{ordinal}"), PER_POD).await?;
        expected.extend(tags.iter().map(|tag| format!("wamid.e2e.{tag}")));
        pods.push(pod.name);
    }
    wait_for(
        "every posted event delivered to the downstream",
        WAIT,
        Some(&scene.operator),
        || async {
            let keys = received_keys(&downstream);
            let delivered: BTreeSet<String> = keys.iter().cloned().collect();
            if delivered == expected {
                Ok(Some(()))
            } else {
                bail!("delivered {delivered:?}")
            }
        },
    )
    .await?;
    downstream
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .received
        .clear();

    // The replay, carried out by the operator on both pods.
    let replay: WebhookReplay = serde_json::from_value(json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookReplay",
        "metadata": {"name": "again", "namespace": scene.namespace},
        "spec": {"subscription": NAME, "sink": SINK, "since": "1h"},
    }))?;
    let replays = scene.api::<WebhookReplay>();
    replays
        .create(&PostParams::default(), &replay)
        .await
        .context("creating the WebhookReplay")?;
    let done = wait_for(
        "the WebhookReplay to end",
        WAIT,
        Some(&scene.operator),
        || async {
            let current = replays.get("again").await?;
            let status = current.status.unwrap_or_default();
            if matches!(
                status.phase,
                ReplayPhase::Succeeded | ReplayPhase::Failed | ReplayPhase::Cancelled
            ) {
                Ok(Some(status))
            } else {
                bail!("status {}", serde_json::to_string(&status)?)
            }
        },
    )
    .await?;
    let shown = serde_json::to_string_pretty(&done)?;
    ensure!(
        done.phase == ReplayPhase::Succeeded,
        "the replay ended {:?}: {shown}\n--- operator log:\n{}",
        done.phase,
        scene.operator.log()
    );
    let replicas: Vec<&str> = done.replicas.iter().map(|r| r.pod.as_str()).collect();
    ensure!(replicas == pods, "status.replicas {replicas:?}: {shown}");
    for replica in &done.replicas {
        ensure!(
            replica.state == "succeeded"
                && replica.matched == PER_POD as u64
                && replica.delivered == PER_POD as u64
                && replica.failed == 0
                && replica.replay_id.is_some(),
            "replica {}: {shown}",
            replica.pod
        );
    }
    let posted = expected.len() as u64;
    ensure!(
        done.matched == posted && done.delivered == posted && done.failed == 0,
        "totals for {posted} events posted: {shown}"
    );
    ensure!(
        done.conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True" && c.reason == "Succeeded"),
        "the Complete condition: {shown}"
    );

    // The downstream received exactly those events again, each once, each marked. The
    // status counts what the sink took, so it all arrived before the status said so.
    let again = downstream.received();
    let mut keys: Vec<String> = again.iter().map(|r| r.idempotency_key.clone()).collect();
    keys.sort();
    ensure!(
        keys == expected.iter().cloned().collect::<Vec<_>>(),
        "replayed {keys:?}, posted {expected:?}"
    );
    for request in &again {
        let event: serde_json::Value = serde_json::from_slice(&request.body)
            .with_context(|| format!("the body of {}", request.idempotency_key))?;
        ensure!(
            request.replay == "1"
                && event["replayed"] == true
                && event["id"] == request.idempotency_key.as_str(),
            "{}: X-Metahook-Replay {:?}, body {event}",
            request.idempotency_key,
            request.replay
        );
    }
    // Its status written, the finished replay lets its finalizer go.
    wait_for(
        "the finalizer removed once the replay ended",
        WAIT,
        Some(&scene.operator),
        || async {
            let current = replays.get("again").await?;
            if current.finalizers().is_empty() {
                Ok(Some(()))
            } else {
                bail!(
                    "finalizers {:?}, managed fields {}",
                    current.finalizers(),
                    serde_json::to_string(&current.metadata.managed_fields)?
                )
            }
        },
    )
    .await?;
    println!(
        "replay scenario: {posted} events on {} pods replayed, {:.1}s",
        pods.len(),
        started.elapsed().as_secs_f64()
    );
    kubelet.finish().await?;
    assert_clean_log(&scene.operator)?;
    Ok(())
}
