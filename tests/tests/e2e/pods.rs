//! The receiver pods the operator renders really run. No kubelet runs in the test
//! cluster, so the kubelet harness ([`metahook_tests::kubelet`]) plays it: it binds the
//! Pod the Deployment's ReplicaSet made to its node, makes the volumes from the ConfigMap
//! and Secrets they name (with the modes and fsGroup the kubelet gives them), runs the
//! container with podman with the pod's image, args, env, mounts and security context,
//! probes it, and reports it Running and Ready in the Pod's status; the real ReplicaSet
//! and Deployment controllers (kube-controller-manager) then count it into the
//! Deployment's status, and the operator turns `ReceiverAvailable` and `Ready` True. A
//! signed fixture posted to the pod's address lands in its file sink.
//!
//! Reporting on the Pod rather than patching the Deployment's status is deliberate: the
//! Deployment controller recomputes that status from the ReplicaSets and would overwrite
//! a patch at once, while the Pod's status is the kubelet's to write.

use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use metahook_operator::crd::{FileSinkSpec, SinkSpec, TlsModeSpec};
use metahook_tests::kubelet::Kubelet;
use metahook_tests::testkit;

use super::*;

/// The file sink's name in the test's subscription.
const SINK_FILE: &str = "events.jsonl";

/// The one Pod of subscription `name` (its ReplicaSet creates it from the Deployment's
/// template), checked to belong to that Deployment's ReplicaSet.
pub(super) async fn the_pod(world: &World, namespace: &str, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(world.client.clone(), namespace);
    let selector = format!("metahook.io/subscription={name}");
    let pod = wait_for(
        &format!("the ReplicaSet to create the pod of {namespace}/{name}"),
        WAIT,
        Some(&world.operator),
        || {
            let pods = pods.clone();
            let selector = selector.clone();
            async move {
                let mut list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items;
                match list.len() {
                    0 => Ok(None),
                    1 => Ok(list.pop()),
                    n => bail!("{n} pods for one replica"),
                }
            }
        },
    )
    .await?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .context("the pod has no ReplicaSet")?
        .name
        .clone();
    let replica_set = replica_sets.get(&owner).await?;
    ensure!(
        replica_set
            .owner_references()
            .iter()
            .any(|o| o.kind == "Deployment" && o.name == name),
        "ReplicaSet {owner} does not belong to Deployment {name}"
    );
    Ok(pod)
}

/// Waits until the Deployment controller counts one ready, available, updated replica of
/// `name` (from the Pod's status, through its ReplicaSet) and the operator has turned
/// ReceiverAvailable and Ready True.
pub(super) async fn wait_available(
    world: &World,
    namespace: &str,
    name: &str,
) -> Result<WebhookSubscription> {
    let deployments: Api<Deployment> = Api::namespaced(world.client.clone(), namespace);
    wait_for(
        &format!("Deployment {namespace}/{name} to count the ready pod"),
        WAIT,
        Some(&world.operator),
        || {
            let deployments = deployments.clone();
            async move {
                let status = deployments.get(name).await?.status.unwrap_or_default();
                let counts = (
                    status.ready_replicas,
                    status.available_replicas,
                    status.updated_replicas,
                );
                if counts == (Some(1), Some(1), Some(1)) {
                    Ok(Some(()))
                } else {
                    bail!("ready, available, updated replicas: {counts:?}")
                }
            }
        },
    )
    .await?;
    let api: Api<WebhookSubscription> = Api::namespaced(world.client.clone(), namespace);
    wait_for(
        &format!("ReceiverAvailable and Ready on {namespace}/{name}"),
        WAIT,
        Some(&world.operator),
        || {
            let api = api.clone();
            async move {
                let current = api.get(name).await?;
                let status = |t: &str| {
                    condition(&current, t)
                        .map(|c| format!("{} ({}: {})", c.status, c.reason, c.message))
                };
                let (available, ready) = (status("ReceiverAvailable"), status("Ready"));
                if available.as_deref().is_some_and(|s| s.starts_with("True"))
                    && ready.as_deref().is_some_and(|s| s.starts_with("True"))
                {
                    Ok(Some(current))
                } else {
                    bail!("ReceiverAvailable {available:?}, Ready {ready:?}")
                }
            }
        },
    )
    .await
}

/// The WhatsApp example as a pod on this machine can run it: one replica, a file sink
/// (no NATS or PostgreSQL service names to reach), plain HTTP, no Ingress.
fn runnable(sub: &mut WebhookSubscription) {
    as_deployment(sub);
    sub.spec.receiver.replicas = 1;
    sub.spec.ingress = None;
    sub.spec.tls.mode = TlsModeSpec::None;
    sub.spec.tls.secret_ref = None;
    sub.spec.delivery.sinks = vec![SinkSpec {
        name: "local".to_owned(),
        nats: None,
        http: None,
        postgres: None,
        kafka: None,
        file: Some(FileSinkSpec {
            name: SINK_FILE.to_owned(),
        }),
        retry: None,
    }];
}

#[tokio::test]
async fn the_rendered_pod_runs_passes_its_probes_and_stores_a_signed_fixture() -> Result<()> {
    let started = Instant::now();
    let world = world_with("e2e-pod", Some("acme-whatsapp"), runnable).await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    let selector = format!("metahook.io/subscription={name}");
    let kubelet = Kubelet::start(&world.client, &namespace, Some(&selector)).await?;
    reconciled(&world, &sub, 1).await?;
    let pod = the_pod(&world, &namespace, &name).await?;
    let spec = pod.spec.clone().context("pod without spec")?;
    ensure!(
        spec.containers.len() == 1 && spec.init_containers.is_none(),
        "one container: {spec:?}"
    );
    let container = spec.containers[0].clone();
    ensure!(
        container.readiness_probe.is_some() && container.liveness_probe.is_some(),
        "the container has a readiness and a liveness probe: {container:?}"
    );

    // Ready once its readiness probe passes; its liveness probe passes too.
    kubelet.wait_ready(&pod.name_any(), WAIT).await?;
    let running = kubelet
        .wait_for("the liveness probe to pass", WAIT, |views| {
            let view = views
                .iter()
                .rev()
                .find(|v| v.uid == pod.uid().unwrap_or_default())
                .context("the harness does not run the pod")?;
            Ok(view.live.then(|| view.clone()))
        })
        .await?;
    wait_available(&world, &namespace, &name).await?;

    // The configuration the pod runs: its endpoint's path and its secrets' files.
    let config: serde_json::Value = {
        let path = running.volume("config")?.join("config.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).context("parsing the receiver's config.yaml")?
    };
    let endpoint = &config["endpoints"][0];
    let path = endpoint["path"].as_str().context("endpoint path")?;
    let addr = running.addr("http")?;

    // Meta's handshake with the verify token the operator generated.
    let token = Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get(&format!("{name}-verify-token"))
        .await
        .context("the generated verify token")?
        .data
        .and_then(|d| {
            d.get("verify-token")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
        .context("verify-token key")?;
    let challenge = testkit::request(
        addr,
        Method::GET,
        &format!("{path}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=4242"),
        &[],
        Bytes::new(),
    )
    .await?;
    ensure!(
        challenge.status == StatusCode::OK && challenge.text() == "4242",
        "handshake: {} {}",
        challenge.status,
        challenge.text()
    );

    // A fixture signed with the app secret put in the Secret.
    let app_secret = Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get("meta-whatsapp-app")
        .await?
        .data
        .and_then(|d| d.get("app-secret").map(|v| v.0.clone()))
        .context("app-secret key")?;
    let body = std::fs::read(testkit::own_fixtures_dir().join("whatsapp__messages.text.json"))
        .context("reading the text fixture")?;
    let signature = metahook_receiver::verify::sign(&app_secret, &body);
    let answer = testkit::request(
        addr,
        Method::POST,
        path,
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &signature),
        ],
        Bytes::from(body),
    )
    .await?;
    ensure!(
        answer.status == StatusCode::OK,
        "signed fixture: {} {}",
        answer.status,
        answer.text()
    );
    let sink = running.volume("data")?.join("files").join(SINK_FILE);
    let events = match testkit::wait_for_lines(&sink, 1, Duration::from_secs(15)).await {
        Ok(events) => events,
        Err(err) => {
            return Err(err.context(format!(
                "the file sink {}\n{}",
                sink.display(),
                kubelet.logs(&pod.name_any()).await
            )));
        }
    };
    ensure!(
        events.len() == 1 && events[0]["kind"] == "message" && events[0]["platform"] == "whatsapp",
        "the file sink holds {events:?}"
    );
    assert_clean_log(&world.operator)?;
    kubelet.finish().await?;
    println!("pod scenario took {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
