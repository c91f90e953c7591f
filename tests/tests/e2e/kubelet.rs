//! The kubelet harness ([`metahook_tests::kubelet`]) on its own, without the operator: a
//! plain StatefulSet of two receivers with a claim each, then Jobs of the receiver's own
//! subcommands (its image has no shell). What the later scenarios rely on is checked
//! against the real controllers:
//!
//! - the StatefulSet controller creates the second pod only once the first is reported
//!   Ready (OrderedReady), and counts both ready;
//! - a pod's status carries its node, podIP (where the host reaches its ports) and hostIP;
//! - a scale-down deletes the pod gracefully: the container gets SIGTERM and exits, the
//!   harness removes the pod, the controller proceeds; the claim's directory keeps the
//!   data, a Job mounting that claim finds no receiver holding its spool, and the next
//!   pod of the same ordinal mounts the same directory;
//! - Jobs: exit 0 makes the Job Complete; a failure makes it Failed with the exit code,
//!   reason and termination message (FallbackToLogsOnError) on the pod; restartPolicy
//!   OnFailure restarts the container and the Job controller counts the restarts.

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use metahook_tests::kubelet::{Kubelet, Phase, PodView};
use metahook_tests::podman::podman;
use metahook_tests::testkit;

use super::*;

const APP_SECRET: &str = "kubelet-harness-app-secret";
const CONFIG: &str = "\
listen: 0.0.0.0:8080
metrics_listen: 0.0.0.0:9090
endpoints:
  - name: meta
    path: /webhooks/meta
    app_secret_env: APP_SECRET
    verify_token_file: /etc/metahook/secrets/verify-token
spool:
  dir: /var/lib/metahook/spool
sinks:
  - name: local
    file: {path: /var/lib/metahook/files/events.jsonl}
";

fn image() -> String {
    format!("localhost/metahook-receiver:{}", env!("CARGO_PKG_VERSION"))
}

/// The receiver container: its config from the ConfigMap, the app secret from the Secret
/// through the environment, the verify token as a file, hardened as the operator does.
fn receiver(args: &[&str]) -> serde_json::Value {
    json!({
        "name": "receiver",
        "image": image(),
        "args": args,
        "env": [
            {"name": "APP_SECRET", "valueFrom": {"secretKeyRef": {"name": "recv", "key": "app-secret"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "metrics", "containerPort": 9090},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/metahook/config"},
            {"name": "secrets", "mountPath": "/etc/metahook/secrets"},
            {"name": "spool", "mountPath": "/var/lib/metahook"},
        ],
    })
}

fn pod_spec(container: &serde_json::Value, restart_policy: &str) -> serde_json::Value {
    json!({
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": "recv"}},
            {"name": "secrets", "secret": {"secretName": "recv", "defaultMode": 0o440}},
        ],
    })
}

fn statefulset(replicas: i32) -> Result<StatefulSet> {
    let mut container = receiver(&["--config", "/etc/metahook/config/config.yaml"]);
    container["readinessProbe"] = json!({
        "httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5, "failureThreshold": 2,
    });
    container["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "metrics"}});
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "recv"},
        "spec": {
            "replicas": replicas,
            "serviceName": "recv",
            "selector": {"matchLabels": {"app": "recv"}},
            "template": {
                "metadata": {"labels": {"app": "recv"}},
                "spec": pod_spec(&container, "Always"),
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "spool"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    }))?)
}

/// A Job of one pod running the receiver with `args`, mounting claim `claim` where the
/// StatefulSet's pods mount theirs.
fn job(
    name: &str,
    args: &[&str],
    claim: &str,
    restart_policy: &str,
    backoff_limit: i32,
) -> Result<Job> {
    let mut container = receiver(args);
    container["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let mut spec = pod_spec(&container, restart_policy);
    spec["volumes"]
        .as_array_mut()
        .context("volumes")?
        .push(json!({"name": "spool", "persistentVolumeClaim": {"claimName": claim}}));
    Ok(serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"metadata": {"labels": {"job": name}}, "spec": spec},
        },
    }))?)
}

/// Signs and posts fixture `file` to the pod; fails unless the receiver answers 200.
async fn post_fixture(pod: &PodView, file: &str) -> Result<()> {
    let body = std::fs::read(testkit::own_fixtures_dir().join(file))
        .with_context(|| format!("reading fixture {file}"))?;
    let signature = metahook_receiver::verify::sign(APP_SECRET.as_bytes(), &body);
    let answer = testkit::request(
        pod.addr("http")?,
        Method::POST,
        "/webhooks/meta",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &signature),
        ],
        Bytes::from(body),
    )
    .await?;
    ensure!(
        answer.status == StatusCode::OK,
        "{file} to {}: {} {}",
        pod.name,
        answer.status,
        answer.text()
    );
    Ok(())
}

/// The Job once its controller set condition `type_` (Complete or Failed).
async fn job_finished(client: &Client, namespace: &str, name: &str, type_: &str) -> Result<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("Job {name} to be {type_}"), WAIT, None, || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get(name).await?;
            let conditions = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
            {
                Ok(Some(job))
            } else {
                bail!("status {:?}", job.status)
            }
        }
    })
    .await
}

/// The one pod of Job `name`, as the API has it.
async fn job_pod(client: &Client, namespace: &str, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut list = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await?
        .items;
    ensure!(list.len() == 1, "Job {name} has {} pods", list.len());
    list.pop().context("the Job's pod")
}

#[tokio::test]
async fn the_kubelet_harness_runs_a_statefulset_with_claims_and_jobs() -> Result<()> {
    let started = Instant::now();
    ensure!(
        podman(&["image", "exists", &image()])?.status.success(),
        "image {} is missing: run scripts/build-images.sh (scripts/test.sh does)",
        image()
    );
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    let namespace = format!("e2e-kubelet-{}", run_suffix());
    create_namespace(&client, &namespace).await?;
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "recv"},
        "data": {"config.yaml": CONFIG},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &config_map)
        .await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "recv"},
        "stringData": {"app-secret": APP_SECRET, "verify-token": "kubelet-harness-token"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    let kubelet = Kubelet::start(&client, &namespace, None).await?;

    // Two ordered replicas: the second pod exists only once the first is Ready.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    sets.create(&PostParams::default(), &statefulset(2)?)
        .await?;
    let first = kubelet.wait_ready("recv-0", WAIT).await?;
    let second = kubelet.wait_ready("recv-1", WAIT).await?;
    wait_for(
        "the StatefulSet to count 2 ready replicas",
        WAIT,
        None,
        || {
            let sets = sets.clone();
            async move {
                let status = sets.get("recv").await?.status.unwrap_or_default();
                let counts = (status.replicas, status.ready_replicas);
                if counts == (2, Some(2)) {
                    Ok(Some(()))
                } else {
                    bail!("replicas, ready: {counts:?}")
                }
            }
        },
    )
    .await?;

    // The pod as the API has it: bound to the harness's node, addressed, ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let api_pod = pods.get("recv-1").await?;
    let spec = api_pod.spec.clone().unwrap_or_default();
    let status = api_pod.status.clone().unwrap_or_default();
    ensure!(
        spec.node_name.as_deref() == Some(kubelet.node_name()),
        "nodeName {:?}",
        spec.node_name
    );
    ensure!(
        status.pod_ip == second.ip.map(|ip| ip.to_string()) && status.pod_ip.is_some(),
        "podIP {:?}, harness {:?}",
        status.pod_ip,
        second.ip
    );
    ensure!(
        status.host_ip.is_some() && status.start_time.is_some(),
        "{status:?}"
    );
    ensure!(status.phase.as_deref() == Some("Running"), "{status:?}");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone());
    ensure!(ready.as_deref() == Some("True"), "Ready {ready:?}");
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .context("no container status")?;
    ensure!(
        container.ready
            && container.started == Some(true)
            && container
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some()),
        "{container:?}"
    );
    ensure!(
        first.ip != second.ip,
        "two pods, one address: {:?}",
        first.ip
    );

    // The host reaches the pods' ports at their addresses; a signed fixture is stored on
    // the claim's directory, which the fsGroup lets the non-root receiver write.
    wait_for(
        "the liveness probe of recv-1 to pass",
        WAIT,
        None,
        || async { Ok(kubelet.pod("recv-1").filter(|p| p.live).map(|_| ())) },
    )
    .await?;
    post_fixture(&second, "whatsapp__messages.text.json").await?;
    let claim = kubelet.claim_dir("spool-recv-1");
    ensure!(second.volume("spool")? == claim, "{:?}", second.volumes);
    ensure!(std::fs::metadata(&claim)?.gid() == 65532, "claim group");
    let events = claim.join("files/events.jsonl");
    testkit::wait_for_lines(&events, 1, Duration::from_secs(15))
        .await
        .with_context(|| format!("{}", events.display()))?;

    // Scale down: recv-1 is stopped (SIGTERM, exit 0) and removed; its claim stays.
    sets.patch(
        "recv",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await?;
    let stopped = kubelet
        .wait_for("recv-1 to be stopped and removed", WAIT, |views| {
            let view = views
                .iter()
                .find(|v| v.uid == second.uid)
                .context("no view")?;
            if view.phase == Phase::Gone {
                Ok(Some(view.clone()))
            } else {
                bail!("{:?}", view.phase)
            }
        })
        .await?;
    ensure!(
        stopped.exit_code == Some(0),
        "SIGTERM exit: {:?}",
        stopped.exit_code
    );
    wait_for("the StatefulSet to count 1 replica", WAIT, None, || {
        let (sets, pods) = (sets.clone(), pods.clone());
        async move {
            let status = sets.get("recv").await?.status.unwrap_or_default();
            let gone = pods.get_opt("recv-1").await?.is_none();
            if gone && (status.replicas, status.ready_replicas) == (1, Some(1)) {
                Ok(Some(()))
            } else {
                bail!("recv-1 gone {gone}, status {status:?}")
            }
        }
    })
    .await?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
        .get("spool-recv-1")
        .await
        .context("the claim of the removed ordinal")?;
    ensure!(
        testkit::read_events(&events)?.len() == 1,
        "the claim kept the event"
    );

    // Jobs: one that mounts the removed ordinal's claim (check-config finds its spool
    // writable and held by no receiver), one that fails, one that fails and restarts.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let check = [
        "--config",
        "/etc/metahook/config/config.yaml",
        "check-config",
    ];
    let sign = ["sign", "--secret-file", "/nonexistent/app-secret"];
    jobs.create(
        &PostParams::default(),
        &job("drain-1", &check, "spool-recv-1", "Never", 0)?,
    )
    .await?;
    jobs.create(
        &PostParams::default(),
        &job("sign-fails", &sign, "spool-recv-0", "Never", 0)?,
    )
    .await?;
    jobs.create(
        &PostParams::default(),
        &job("sign-retries", &sign, "spool-recv-0", "OnFailure", 1)?,
    )
    .await?;
    let done = job_finished(&client, &namespace, "drain-1", "Complete").await?;
    ensure!(
        done.status.as_ref().and_then(|s| s.succeeded) == Some(1),
        "{:?}",
        done.status
    );
    let failed = job_finished(&client, &namespace, "sign-fails", "Failed").await?;
    ensure!(
        failed.status.as_ref().and_then(|s| s.failed) == Some(1),
        "{:?}",
        failed.status
    );
    let pod = job_pod(&client, &namespace, "sign-fails").await?;
    let status = pod.status.unwrap_or_default();
    ensure!(status.phase.as_deref() == Some("Failed"), "{status:?}");
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .context("no terminated state")?;
    ensure!(
        terminated.exit_code == 1
            && terminated.reason.as_deref() == Some("Error")
            && terminated
                .message
                .as_deref()
                .is_some_and(|m| m.contains("cannot read secret file /nonexistent/app-secret")),
        "{terminated:?}"
    );
    // OnFailure: the container restarts in place; the Job controller counts the restart
    // against backoffLimit 1 and deletes the pod, which the harness stops and removes.
    job_finished(&client, &namespace, "sign-retries", "Failed").await?;
    let retried = kubelet
        .wait_for("sign-retries' pod to be removed", WAIT, |views| {
            let view = views
                .iter()
                .find(|v| v.name.starts_with("sign-retries-"))
                .context("no pod yet")?;
            if view.phase == Phase::Gone {
                Ok(Some(view.clone()))
            } else {
                bail!("{:?}, restarts {}", view.phase, view.restarts)
            }
        })
        .await?;
    ensure!(retried.restarts >= 1, "restarts {}", retried.restarts);

    // Scale up: the new recv-1 (another uid) mounts the same directory and finds the
    // event of the first; it stores the next one beside it.
    sets.patch(
        "recv",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 2}})),
    )
    .await?;
    let again = kubelet
        .wait_for("a new recv-1", WAIT, |views| {
            Ok(views
                .iter()
                .rev()
                .find(|v| v.name == "recv-1" && v.uid != second.uid)
                .map(|v| v.uid.clone()))
        })
        .await?;
    let third = kubelet.wait_ready("recv-1", WAIT).await?;
    ensure!(
        third.uid == again && third.volume("spool")? == claim,
        "{third:?}"
    );
    post_fixture(&third, "whatsapp__messages.status.read.json").await?;
    let stored = testkit::wait_for_lines(&events, 2, Duration::from_secs(15)).await?;
    ensure!(
        stored.iter().any(|e| e["kind"] == "message")
            && stored.iter().any(|e| e["kind"] == "status"),
        "the claim holds {stored:?}"
    );

    kubelet.finish().await?;
    println!(
        "kubelet harness scenario took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
