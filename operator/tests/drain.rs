//! The claims of removed replicas and the move from a Deployment, against the scripted
//! mock API: drain Jobs created only where no pod of the ordinal runs, claims deleted only
//! after a Job drained them, claims with dead letters kept, a stalled Job replaced, a
//! returning replica's drain cancelled, and a Deployment deleted only once its pods said
//! (on their /metrics) that they hold nothing.

mod support;

use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use metahook_operator::controller::{self, UNSETTLED_RETRY};
use metahook_operator::resources::monitoring::Capabilities;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "acme";
const CORE: &str = "/api/v1/namespaces/acme";
const APPS: &str = "/apis/apps/v1/namespaces/acme";
const JOBS: &str = "/apis/batch/v1/namespaces/acme/jobs";
const SUBS: &str = "/apis/metahook.io/v1alpha1/namespaces/acme/webhooksubscriptions";

/// A spool-mode subscription with the default (persistent) spool and `replicas`.
fn spec(replicas: i32) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "fields": ["messages"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        "verifyTokenRef": {"name": "meta-app", "key": "verify-token"},
        "receiver": {"replicas": replicas},
        "delivery": {"sinks": [{"name": "db", "postgres": {"urlSecretRef": {"name": "meta-app", "key": "pg"}}}]},
    })
}

fn app_secret() -> Value {
    secret(
        NS,
        "meta-app",
        &[
            ("app-secret", b"s3cret"),
            ("verify-token", b"t"),
            ("pg", b"postgres://db/events"),
        ],
    )
}

/// A claim the StatefulSet made from the subscription's template.
fn claim(ordinal: u32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": format!("data-wa-{ordinal}"),
            "namespace": NS,
            "uid": format!("claim-uid-{ordinal}"),
            "labels": {
                "metahook.io/subscription": "wa",
                "app.kubernetes.io/managed-by": "metahook-operator",
            },
        },
    })
}

/// A drain Job of the subscription's for `ordinal`, with this status.
fn job(ordinal: u32, status: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": format!("wa-drain-{ordinal}"),
            "namespace": NS,
            "uid": format!("job-uid-{ordinal}"),
            "labels": {"metahook.io/subscription": "wa", "metahook.io/drain": format!("data-wa-{ordinal}")},
            "ownerReferences": [{
                "apiVersion": "metahook.io/v1alpha1", "kind": "WebhookSubscription", "name": "wa",
                "uid": SUBSCRIPTION_UID, "controller": true,
            }],
        },
    })
    .as_object()
    .cloned()
    .map(|mut object| {
        object.insert("status".to_owned(), status);
        Value::Object(object)
    })
    .expect("an object")
}

/// A receiver pod of the StatefulSet.
fn receiver_pod(ordinal: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("wa-{ordinal}"), "namespace": NS,
            "labels": {"metahook.io/subscription": "wa"}},
    })
}

/// A finished drain pod of `ordinal` whose termination message is `summary`.
fn drain_pod(ordinal: u32, exit_code: i32, summary: &Value, finished: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("wa-drain-{ordinal}-x{finished}"), "namespace": NS,
            "labels": {"metahook.io/subscription": "wa", "metahook.io/drain": format!("data-wa-{ordinal}")}},
        "status": {"containerStatuses": [{
            "name": "drain", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": summary.to_string(),
                "finishedAt": format!("2026-09-21T14:{finished}:00Z")}},
        }]},
    })
}

/// The requests of a pass up to the drain step: step 0 (the StatefulSet found), the
/// Secret, the ConfigMap, the StatefulSet (ready), the Service.
fn until_drain(replicas: i32) -> Vec<Expect> {
    let mut set = owned_by(object_in(NS, "apps/v1", "StatefulSet", "wa"), "wa");
    set["spec"] = json!({"replicas": replicas});
    let mut script = claims_of(
        NS,
        "wa",
        false,
        false,
        &[(format!("{APPS}/statefulsets/wa"), set)],
    );
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_secret()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(
                json!({"replicas": replicas, "readyReplicas": replicas}),
            )),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    script
}

fn status_step(replicas: i32) -> Expect {
    let sub = serde_json::to_value(subscription("wa", NS, &spec(replicas))).expect("json");
    apply(format!("{SUBS}/wa/status"), Reply::Onto(sub))
}

async fn run(replicas: i32, script: Vec<Expect>) -> (Action, Vec<Served>) {
    let sub = subscription("wa", NS, &spec(replicas));
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    (action, api.finish().await)
}

fn spool_status(served: &[Served]) -> Value {
    body_of(served, &Method::PATCH, &format!("{SUBS}/wa/status"))["status"]["spool"].clone()
}

#[tokio::test]
async fn scaling_down_starts_a_drain_job_per_removed_replica_whose_pod_is_gone() {
    let mut script = until_drain(1);
    script.extend(drain_lists(NS, &[claim(0), claim(1), claim(2)], &[]));
    // Replica 2's pod still terminates: its drain waits; replica 1's is gone.
    script.push(pods_listed(NS, &[receiver_pod(0), receiver_pod(2)]));
    script.extend([
        create(JOBS, Reply::Created),
        event(NS),
        status_step(1),
        event(NS),
    ]);
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(UNSETTLED_RETRY));
    let created = body_of(&served, &Method::POST, JOBS);
    assert_eq!(created["metadata"]["name"], "wa-drain-1");
    assert_eq!(
        created["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "data")
            .expect("data volume")["persistentVolumeClaim"]["claimName"],
        "data-wa-1"
    );
    assert_eq!(
        created["metadata"]["ownerReferences"][0]["uid"],
        SUBSCRIPTION_UID
    );
    let started = &served[served.len() - 3].body;
    assert_eq!(started["reason"], "DrainStarted");
    let spool = spool_status(&served);
    assert_eq!(spool["mode"], "persistent");
    assert_eq!(spool["claimsDraining"], 2);
    assert_eq!(spool["drains"][0]["claim"], "data-wa-1");
    assert_eq!(spool["drains"][0]["state"], "Draining");
    assert_eq!(spool["drains"][0]["job"], "wa-drain-1");
    assert_eq!(spool["drains"][1]["claim"], "data-wa-2");
    assert_eq!(spool["drains"][1]["state"], "Waiting");
    assert!(
        spool["drains"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pod wa-2 still runs")),
        "{spool}"
    );
}

#[tokio::test]
async fn a_running_drain_reports_what_its_last_attempt_left() {
    let mut script = until_drain(1);
    script.extend(drain_lists(
        NS,
        &[claim(0), claim(1)],
        &[job(1, json!({"active": 1}))],
    ));
    let report = json!({"outcome": "deadline", "events_left": 40, "dead_letters": 0});
    let earlier = json!({"outcome": "deadline", "events_left": 90, "dead_letters": 0});
    script.push(pods_listed(
        NS,
        &[
            drain_pod(1, 4, &earlier, "01"),
            drain_pod(1, 4, &report, "09"),
        ],
    ));
    script.extend([status_step(1), event(NS)]);
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(UNSETTLED_RETRY));
    let spool = spool_status(&served);
    assert_eq!(spool["claimsDraining"], 1);
    assert_eq!(spool["eventsLeft"], 40, "the latest attempt's report");
    assert_eq!(spool["drains"][0]["eventsLeft"], 40);
    assert_eq!(spool["drains"][0]["message"], "last attempt: deadline");
}

#[tokio::test]
async fn a_drained_claim_is_deleted_under_its_uid_then_its_job() {
    let mut script = until_drain(1);
    script.extend(drain_lists(
        NS,
        &[claim(0), claim(1)],
        &[job(1, json!({"succeeded": 1}))],
    ));
    let done = json!({"outcome": "drained", "events_left": 0, "dead_letters": 0});
    script.push(pods_listed(NS, &[drain_pod(1, 0, &done, "05")]));
    script.extend([
        delete(format!("{JOBS}/wa-drain-1")),
        delete(format!("{CORE}/persistentvolumeclaims/data-wa-1")),
        event(NS),
        status_step(1),
        event(NS),
    ]);
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(controller::RESYNC));
    let deleted = body_of(
        &served,
        &Method::DELETE,
        &format!("{CORE}/persistentvolumeclaims/data-wa-1"),
    );
    assert_eq!(deleted["preconditions"]["uid"], "claim-uid-1");
    let job_deleted = body_of(&served, &Method::DELETE, &format!("{JOBS}/wa-drain-1"));
    assert_eq!(job_deleted["preconditions"]["uid"], "job-uid-1");
    let spool = spool_status(&served);
    assert_eq!(spool["claimsDraining"], 0);
    assert!(spool["drains"].is_null(), "{spool}");
}

#[tokio::test]
async fn a_claim_holding_dead_letters_is_kept_and_reported() {
    let failed = json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True",
        "lastTransitionTime": "2026-09-21T14:00:00Z"}]});
    let mut script = until_drain(1);
    script.extend(drain_lists(NS, &[claim(0), claim(1)], &[job(1, failed)]));
    let report = json!({"outcome": "dead_letters", "events_left": 0, "dead_letters": 3});
    script.push(pods_listed(NS, &[drain_pod(1, 3, &report, "05")]));
    script.extend([status_step(1), event(NS)]);
    let (_, served) = run(1, script).await;
    assert!(
        served.iter().all(|s| s.method != Method::DELETE),
        "nothing deleted"
    );
    let spool = spool_status(&served);
    assert_eq!(spool["claimsKept"], 1);
    assert_eq!(spool["claimsDraining"], 0);
    assert_eq!(spool["drains"][0]["state"], "Kept");
    assert_eq!(spool["drains"][0]["deadLetters"], 3);
}

#[tokio::test]
async fn a_job_out_of_attempts_is_stalled_then_replaced() {
    // Failed long before the test's clock (test_now is 14:13:20): past STALLED_RETRY.
    let failed = json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True",
        "lastTransitionTime": "2026-09-21T13:00:00Z"}]});
    let mut script = until_drain(1);
    script.extend(drain_lists(NS, &[claim(0), claim(1)], &[job(1, failed)]));
    let report = json!({"outcome": "deadline", "events_left": 12, "dead_letters": 0});
    script.push(pods_listed(NS, &[drain_pod(1, 4, &report, "00")]));
    script.extend([
        delete(format!("{JOBS}/wa-drain-1")),
        event(NS),
        status_step(1),
        event(NS),
    ]);
    let (_, served) = run(1, script).await;
    let warning = &served[served.len() - 3].body;
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "DrainStalled");
    let spool = spool_status(&served);
    assert_eq!(spool["drains"][0]["state"], "Stalled");
    assert_eq!(spool["drains"][0]["eventsLeft"], 12);
}

#[tokio::test]
async fn a_job_that_just_failed_stays_for_the_stall_window() {
    let failed = json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True",
        "lastTransitionTime": "2026-09-21T14:10:00Z"}]});
    let mut script = until_drain(1);
    script.extend(drain_lists(NS, &[claim(0), claim(1)], &[job(1, failed)]));
    script.push(pods_listed(NS, &[]));
    script.extend([status_step(1), event(NS)]);
    let (_, served) = run(1, script).await;
    assert!(served.iter().all(|s| s.method != Method::DELETE));
    assert_eq!(spool_status(&served)["drains"][0]["state"], "Stalled");
}

/// Scaled back up while replica 1's claim was drained: the Job goes at once, and the
/// receiver pod waits for the spool's lock until the drain pod released it.
#[tokio::test]
async fn a_replica_that_comes_back_cancels_its_claims_drain() {
    let mut script = until_drain(2);
    script.extend(drain_lists(
        NS,
        &[claim(0), claim(1)],
        &[job(1, json!({"active": 1}))],
    ));
    script.push(pods_listed(NS, &[receiver_pod(0), receiver_pod(1)]));
    script.extend([
        delete(format!("{JOBS}/wa-drain-1")),
        status_step(2),
        event(NS),
    ]);
    let (action, served) = run(2, script).await;
    assert_eq!(action, Action::requeue(controller::RESYNC));
    assert!(
        served
            .iter()
            .all(|s| s.method != Method::POST || s.path != JOBS)
    );
    assert_eq!(spool_status(&served)["claimsDraining"], 0);
}

/// A claim being deleted (its Job drained it; Kubernetes keeps it while a pod uses it)
/// gets no new Job.
#[tokio::test]
async fn a_claim_being_deleted_is_not_drained_again() {
    let mut deleting = claim(1);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-09-21T14:13:00Z");
    deleting["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
    let mut script = until_drain(1);
    script.extend(drain_lists(NS, &[claim(0), deleting], &[]));
    script.extend([status_step(1), event(NS)]);
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(controller::RESYNC));
    assert!(
        served
            .iter()
            .all(|s| s.method != Method::POST || s.path.ends_with("/events"))
    );
}

/// A Job or claim that is not the subscription's is never touched: a claim without the
/// operator's labels is not listed as one, a Job another controller owns is ignored.
#[tokio::test]
async fn claims_and_jobs_of_others_are_left_alone() {
    let mut foreign_claim = claim(3);
    foreign_claim["metadata"]["labels"] = json!({"metahook.io/subscription": "wa"});
    let mut foreign_job = job(3, json!({"succeeded": 1}));
    foreign_job["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
    let mut script = until_drain(1);
    script.extend(drain_lists(NS, &[claim(0), foreign_claim], &[foreign_job]));
    script.extend([status_step(1), event(NS)]);
    let (_, served) = run(1, script).await;
    assert!(
        served
            .iter()
            .all(|s| (s.method != Method::DELETE && s.method != Method::POST)
                || s.path.ends_with("/events")),
        "nothing created or deleted"
    );
    assert_eq!(spool_status(&served)["claimsDraining"], 0);
}

/// Serves `body` as /metrics on 127.0.0.1 for every connection; returns the port.
async fn metrics_server(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0_u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// A pod of the Deployment's ReplicaSet whose metrics port is `port` on 127.0.0.1.
fn deployment_pod(port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wa-5d8f-abcde", "namespace": NS,
            "labels": {"metahook.io/subscription": "wa"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "wa-5d8f",
                "uid": "rs-uid", "controller": true}]},
        "spec": {"containers": [{"name": "receiver",
            "ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1"},
    })
}

/// Step 0 of a migrating pass: the old Deployment (the subscription's), the StatefulSet,
/// and the Service as the last pass left it.
fn migrating(service_selector: Value) -> Vec<Expect> {
    let deployment = owned_by(object_in(NS, "apps/v1", "Deployment", "wa"), "wa");
    let mut set = owned_by(object_in(NS, "apps/v1", "StatefulSet", "wa"), "wa");
    set["spec"] = json!({"replicas": 1});
    let mut service = owned_by(object_in(NS, "v1", "Service", "wa"), "wa");
    service["spec"] = json!({});
    service["spec"]["selector"] = service_selector;
    let mut script = claims_of(
        NS,
        "wa",
        false,
        false,
        &[
            (format!("{APPS}/deployments/wa"), deployment),
            (format!("{APPS}/statefulsets/wa"), set),
            (format!("{CORE}/services/wa"), service),
        ],
    );
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_secret()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
    ]);
    script
}

fn moved_selector() -> Value {
    json!({"app.kubernetes.io/name": "metahook-receiver", "app.kubernetes.io/instance": "wa",
        "metahook.io/subscription": "wa", "metahook.io/spool": "persistent"})
}

/// The StatefulSet has no ready pod yet: the Deployment keeps serving, the Service
/// selects both.
#[tokio::test]
async fn the_deployment_serves_until_the_stateful_set_has_a_ready_pod() {
    let mut script = migrating(json!({"metahook.io/subscription": "wa"}));
    script.extend([
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 0}))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    script.extend(drain_lists(NS, &[], &[]));
    script.push(status_step(1));
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(UNSETTLED_RETRY));
    let service = body_of(&served, &Method::PATCH, &format!("{CORE}/services/wa"));
    assert!(
        service["spec"]["selector"]["metahook.io/spool"].is_null(),
        "both serve"
    );
    assert!(served.iter().all(|s| s.method != Method::DELETE));
    assert!(
        spool_status(&served)["migration"]
            .as_str()
            .is_some_and(|m| m.contains("serves until StatefulSet acme/wa has a ready pod"))
    );
}

/// Ready: the Service moves to the StatefulSet's pods in this pass; the Deployment's pods
/// are read only in the next (no request can reach them by then).
#[tokio::test]
async fn the_service_moves_first_and_the_deployment_is_read_a_pass_later() {
    let mut script = migrating(json!({"metahook.io/subscription": "wa"}));
    script.extend([
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 1}))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    script.extend(drain_lists(NS, &[], &[]));
    script.extend([status_step(1), event(NS)]);
    let (_, served) = run(1, script).await;
    let service = body_of(&served, &Method::PATCH, &format!("{CORE}/services/wa"));
    assert_eq!(
        service["spec"]["selector"]["metahook.io/spool"],
        "persistent"
    );
    assert!(served.iter().all(|s| s.method != Method::DELETE));
}

#[tokio::test]
async fn a_deployment_pod_holding_events_keeps_the_deployment() {
    let port = metrics_server(
        "metahook_spool_events 5\nmetahook_spool_requests_waiting 1\nmetahook_dead_letter_events_total{sink=\"db\"} 0\n",
    )
    .await;
    let mut script = migrating(moved_selector());
    script.extend([
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 1}))),
        ),
        pods_listed(NS, &[deployment_pod(port)]),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    script.extend(drain_lists(NS, &[], &[]));
    script.extend([status_step(1), event(NS)]);
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(UNSETTLED_RETRY));
    assert!(served.iter().all(|s| s.method != Method::DELETE));
    let migration = spool_status(&served)["migration"].clone();
    assert!(
        migration
            .as_str()
            .is_some_and(|m| m.contains("pod wa-5d8f-abcde holds 6 undelivered")),
        "{migration}"
    );
}

#[tokio::test]
async fn an_unreadable_deployment_pod_keeps_the_deployment() {
    // Nothing listens on this port any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut script = migrating(moved_selector());
    script.extend([
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 1}))),
        ),
        pods_listed(NS, &[deployment_pod(port)]),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    script.extend(drain_lists(NS, &[], &[]));
    script.extend([status_step(1), event(NS)]);
    let (_, served) = run(1, script).await;
    assert!(served.iter().all(|s| s.method != Method::DELETE));
    assert!(
        spool_status(&served)["migration"]
            .as_str()
            .is_some_and(|m| m.contains("cannot read http://127.0.0.1:"))
    );
}

#[tokio::test]
async fn a_deployment_whose_pods_delivered_everything_is_deleted() {
    let port = metrics_server(
        "metahook_spool_events 0\nmetahook_spool_requests_waiting 0\nmetahook_dead_letter_events_total{sink=\"db\"} 0\n",
    )
    .await;
    let mut script = migrating(moved_selector());
    script.extend([
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 1}))),
        ),
        pods_listed(NS, &[deployment_pod(port)]),
        delete(format!("{APPS}/deployments/wa")),
        event(NS),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    script.extend(drain_lists(NS, &[], &[]));
    script.extend([status_step(1), event(NS)]);
    let (action, served) = run(1, script).await;
    assert_eq!(action, Action::requeue(controller::RESYNC));
    let deleted = body_of(&served, &Method::DELETE, &format!("{APPS}/deployments/wa"));
    assert_eq!(deleted["preconditions"]["uid"], "wa-uid");
    let migrated = &served[served.len() - 6].body;
    assert_eq!(migrated["reason"], "Migrated");
    assert!(spool_status(&served)["migration"].is_null());
}
