//! `spec.receiver.autoscaling`: the HorizontalPodAutoscaler builder for autoscaling/v2 and
//! v2beta2 asserted field by field, and passes against the scripted mock API that make it,
//! hand the workload's `spec.replicas` over to it, leave the field out of the workload's
//! apply, take it back and delete the autoscaler when autoscaling is turned off.

mod support;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use metahook_operator::WebhookSubscription;
use metahook_operator::controller::autoscaling::AUTOSCALING_UNAVAILABLE;
use metahook_operator::resources::Inputs;
use metahook_operator::resources::autoscaling::{
    self, AutoscalingVersion, HANDOVER_FIELD_MANAGER, applies_replicas, horizontal_pod_autoscaler,
    replicas_owned,
};
use metahook_operator::resources::monitoring::{Capabilities, PdbVersion, pod_disruption_budget};
use metahook_operator::resources::workload::{Workload, workload};
use serde_json::{Value, json};
use support::*;

const NS: &str = "acme";
const CORE: &str = "/api/v1/namespaces/acme";
const APPS: &str = "/apis/apps/v1/namespaces/acme";
const SUBS: &str = "/apis/metahook.io/v1alpha1/namespaces/acme/webhooksubscriptions";
const PDB_V1: &str = "/apis/policy/v1/namespaces/acme/poddisruptionbudgets/wa";
const PDB_V1BETA1: &str = "/apis/policy/v1beta1/namespaces/acme/poddisruptionbudgets/wa";

fn hpa_path(version: &str) -> String {
    format!("/apis/autoscaling/{version}/namespaces/acme/horizontalpodautoscalers/wa")
}

/// A WhatsApp subscription `wa` with this `receiver` section.
fn spec(receiver: &Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "fields": ["messages"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        "verifyTokenRef": {"name": "meta-app", "key": "verify-token"},
        // A Deployment (an ephemeral spool) unless a test asks for a claim.
        "delivery": {
            "spool": {"ephemeral": true},
            "sinks": [{"name": "bus", "nats": {"url": "nats://nats.nats:4222"}}],
        },
        "receiver": receiver,
    })
}

fn inputs(sub: &WebhookSubscription) -> Inputs<'_> {
    Inputs::new(sub, "metahook-receiver:test", None, "digest".to_owned()).expect("inputs")
}

/// The HorizontalPodAutoscaler's JSON for `sub`, of `version`, targeting `kind`.
fn hpa_of(sub: &WebhookSubscription, version: AutoscalingVersion, kind: &str) -> Value {
    let (resource, object) = horizontal_pod_autoscaler(&inputs(sub), version, kind)
        .expect("build")
        .expect("wanted");
    assert_eq!(resource.plural, "horizontalpodautoscalers");
    serde_json::to_value(object).expect("json")
}

// ---------------------------------------------------------------------------------------
// The builders

#[test]
fn the_hpa_is_the_same_in_v2_and_v2beta2_but_for_its_api_version() {
    let sub = subscription(
        "wa",
        NS,
        &spec(&json!({"autoscaling": {
            "minReplicas": 2,
            "maxReplicas": 6,
            "targetCPUUtilizationPercentage": 60,
            "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "50"},
        }})),
    );
    let v2 = hpa_of(&sub, AutoscalingVersion::V2, "Deployment");
    let v2beta2 = hpa_of(&sub, AutoscalingVersion::V2beta2, "Deployment");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2beta2["apiVersion"], "autoscaling/v2beta2");
    for hpa in [&v2, &v2beta2] {
        assert_eq!(hpa["kind"], "HorizontalPodAutoscaler");
        assert_eq!(hpa["metadata"]["name"], "wa");
        assert_eq!(hpa["metadata"]["namespace"], NS);
        assert_eq!(
            hpa["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "metahook-operator"
        );
        assert_eq!(hpa["metadata"]["labels"]["metahook.io/subscription"], "wa");
        let owner = &hpa["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "WebhookSubscription");
        assert_eq!(owner["uid"], SUBSCRIPTION_UID);
        assert_eq!(owner["controller"], true);
        assert_eq!(
            hpa["spec"],
            json!({
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wa"},
                "minReplicas": 2,
                "maxReplicas": 6,
                "metrics": [
                    {"type": "Resource", "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 60},
                    }},
                    {"type": "Pods", "pods": {
                        "metric": {"name": "metahook_requests_per_second"},
                        "target": {"type": "AverageValue", "averageValue": "50"},
                    }},
                ],
                "behavior": {"scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }},
            })
        );
    }
}

#[test]
fn cpu_is_the_target_unless_only_a_custom_metric_is_named() {
    let cases = [
        (
            json!({"maxReplicas": 3}),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        ),
        (
            json!({"maxReplicas": 3, "targetCPUUtilizationPercentage": 50}),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]),
        ),
        (
            json!({"maxReplicas": 3,
                "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "500m"}}),
            json!([{"type": "Pods", "pods": {"metric": {"name": "metahook_requests_per_second"},
                "target": {"type": "AverageValue", "averageValue": "500m"}}}]),
        ),
    ];
    for (autoscaling, metrics) in cases {
        let sub = subscription("wa", NS, &spec(&json!({ "autoscaling": autoscaling })));
        let hpa = hpa_of(&sub, AutoscalingVersion::V2, "StatefulSet");
        assert_eq!(hpa["spec"]["metrics"], metrics, "{autoscaling}");
        assert_eq!(hpa["spec"]["minReplicas"], 1, "the default floor");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    }
}

#[test]
fn the_workload_leaves_replicas_to_the_autoscaler() {
    let autoscaled = subscription("wa", NS, &spec(&json!({"autoscaling": {"maxReplicas": 4}})));
    assert!(!replicas_owned(&inputs(&autoscaled)));
    let Workload::Deployment(deployment) =
        workload(&inputs(&autoscaled), "hash", false).expect("build")
    else {
        panic!("a Deployment without a spool")
    };
    let body = serde_json::to_value(&deployment).expect("json");
    assert!(
        body["spec"].get("replicas").is_none(),
        "no replicas in {}",
        body["spec"]
    );

    let fixed = subscription("wa", NS, &spec(&json!({"replicas": 3})));
    assert!(replicas_owned(&inputs(&fixed)));
    let Workload::Deployment(deployment) = workload(&inputs(&fixed), "hash", false).expect("build")
    else {
        panic!("a Deployment without a spool")
    };
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3));

    // A StatefulSet (persistent spool) the same way.
    let mut stateful = spec(&json!({"autoscaling": {"maxReplicas": 4}}));
    stateful["delivery"]["spool"] = json!({"size": "1Gi"});
    let stateful = subscription("wa", NS, &stateful);
    let Workload::StatefulSet(set) = workload(&inputs(&stateful), "hash", false).expect("build")
    else {
        panic!("a StatefulSet with a spool")
    };
    assert_eq!(set.spec.and_then(|s| s.replicas), None);
}

#[test]
fn a_sidecar_is_never_autoscaled() {
    // The CRD refuses it; the builders ignore it all the same.
    let sidecar = subscription(
        "wa",
        NS,
        &spec(&json!({"mode": "sidecar", "autoscaling": {"maxReplicas": 4}})),
    );
    assert!(autoscaling::autoscaling(&sidecar.spec).is_none());
    assert!(
        horizontal_pod_autoscaler(&inputs(&sidecar), AutoscalingVersion::V2, "Deployment")
            .expect("build")
            .is_none()
    );
}

#[test]
fn the_pdb_follows_the_autoscalers_floor() {
    let capabilities = Capabilities {
        pdb: Some(PdbVersion::V1),
        ..Capabilities::default()
    };
    let one = subscription("wa", NS, &spec(&json!({"autoscaling": {"maxReplicas": 5}})));
    assert!(
        pod_disruption_budget(&inputs(&one), capabilities)
            .expect("pdb")
            .is_none(),
        "minReplicas 1: the count may be 1, where a PDB blocks drains"
    );
    let two = subscription(
        "wa",
        NS,
        &spec(&json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}})),
    );
    let (_, pdb) = pod_disruption_budget(&inputs(&two), capabilities)
        .expect("pdb")
        .expect("wanted");
    assert_eq!(
        pdb.data["spec"],
        json!({
            "maxUnavailable": 1,
            "selector": {"matchLabels": {
                "app.kubernetes.io/instance": "wa",
                "app.kubernetes.io/name": "metahook-receiver",
                "metahook.io/subscription": "wa",
            }},
        })
    );
    let fixed = subscription("wa", NS, &spec(&json!({"replicas": 2})));
    let (_, pdb) = pod_disruption_budget(&inputs(&fixed), capabilities)
        .expect("pdb")
        .expect("wanted");
    assert_eq!(pdb.data["spec"]["minAvailable"], 1);
    assert!(pdb.data["spec"].get("maxUnavailable").is_none());
}

fn managed(entries: &Value) -> ObjectMeta {
    serde_json::from_value(json!({"name": "wa", "managedFields": entries})).expect("meta")
}

#[test]
fn who_applies_replicas_is_read_from_the_managed_fields() {
    let replicas = json!({"f:spec": {"f:replicas": {}, "f:template": {}}});
    let template = json!({"f:spec": {"f:template": {}}});
    let entry = |manager: &str, operation: &str, fields: &Value| {
        json!({"manager": manager, "operation": operation, "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": fields})
    };
    let cases = [
        (
            json!([entry("metahook-operator", "Apply", &replicas)]),
            true,
        ),
        (
            json!([entry("metahook-operator", "Apply", &template)]),
            false,
        ),
        (
            json!([
                entry("metahook-operator", "Apply", &template),
                entry("kube-controller-manager", "Update", &replicas),
            ]),
            false,
        ),
        (
            json!([entry("metahook-operator-handover", "Apply", &replicas)]),
            false,
        ),
        (
            json!([entry("metahook-operator", "Update", &replicas)]),
            false,
        ),
        (json!([]), false),
    ];
    for (entries, expected) in cases {
        assert_eq!(
            applies_replicas(&managed(&entries), "metahook-operator"),
            expected,
            "{entries}"
        );
    }
    assert!(applies_replicas(
        &managed(&json!([entry(HANDOVER_FIELD_MANAGER, "Apply", &replicas)])),
        HANDOVER_FIELD_MANAGER
    ));
}

// ---------------------------------------------------------------------------------------
// Passes against the mock API

fn app_with_token() -> Value {
    secret(
        NS,
        "meta-app",
        &[("app-secret", b"s3cret"), ("verify-token", b"t")],
    )
}

fn owned(object: Value) -> Value {
    owned_by(object, "wa")
}

fn status_step(spec: &Value) -> Expect {
    let sub = serde_json::to_value(subscription("wa", NS, spec)).expect("json");
    apply(format!("{SUBS}/wa/status"), Reply::Onto(sub))
}

/// The `fieldManager` of a served request.
fn manager_of(served: &Served) -> &str {
    served
        .query
        .split('&')
        .find_map(|pair| pair.strip_prefix("fieldManager="))
        .unwrap_or_default()
}

/// Served requests with this method and path, in order.
fn all_of<'a>(served: &'a [Served], method: &Method, path: &str) -> Vec<&'a Served> {
    served
        .iter()
        .filter(|s| s.method == *method && s.path == path)
        .collect()
}

fn position(served: &[Served], method: &Method, path: &str) -> usize {
    served
        .iter()
        .position(|s| s.method == *method && s.path == path)
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

/// A live Deployment `wa` of the subscription's, at `replicas`, whose managedFields say
/// who holds what.
fn live_deployment(replicas: i32, managed_fields: &Value) -> Value {
    let mut deployment = owned(object_in(NS, "apps/v1", "Deployment", "wa"));
    deployment["metadata"]["managedFields"] = managed_fields.clone();
    deployment["spec"] = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"metahook.io/subscription": "wa"}},
        "template": {"spec": {"containers": [{"name": "receiver"}]}},
    });
    deployment
}

fn operator_entry(fields: &Value) -> Value {
    json!({"manager": "metahook-operator", "operation": "Apply", "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1", "fieldsV1": fields})
}

#[tokio::test]
async fn a_new_stateful_set_gets_a_v2beta2_hpa_first_and_starts_at_its_floor() {
    let mut spec = spec(&json!({"autoscaling": {
        "minReplicas": 2,
        "maxReplicas": 6,
        "targetCPUUtilizationPercentage": 60,
        "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "50"},
    }}));
    spec["delivery"]["spool"] = json!({"size": "1Gi"});
    let sub = subscription("wa", NS, &spec);
    let hpa = hpa_path("v2beta2");
    let mut script = claims_of(NS, "wa", false, false, &[]);
    script.extend([
        get(PDB_V1BETA1, Reply::Error(404, "NotFound")),
        get(hpa.clone(), Reply::Error(404, "NotFound")),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(hpa.clone(), Reply::Echo(None)),
        // The server's count: the autoscaler's (here, already raised to 3).
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Merged(
                json!({"spec": {"replicas": 3}, "status": {"replicas": 3, "readyReplicas": 2}}),
            ),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        apply(PDB_V1BETA1, Reply::Echo(None)),
        status_step(&spec),
        event(NS),
    ]);
    let capabilities = Capabilities {
        pdb: Some(PdbVersion::V1beta1),
        autoscaling: Some(AutoscalingVersion::V2beta2),
        ..Capabilities::default()
    };
    let api = MockApi::start(script, capabilities, test_now());
    metahook_operator::controller::reconcile(std::sync::Arc::new(sub.clone()), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;

    let applied = body_of(&served, &Method::PATCH, &hpa);
    assert_eq!(
        applied,
        &hpa_of(&sub, AutoscalingVersion::V2beta2, "StatefulSet")
    );
    assert_eq!(applied["apiVersion"], "autoscaling/v2beta2");
    assert_eq!(
        applied["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "wa"})
    );
    assert_eq!(applied["spec"]["minReplicas"], 2);
    assert_eq!(applied["spec"]["maxReplicas"], 6);
    // Made before the workload, so the operator never lets go of the count without it.
    assert!(
        position(&served, &Method::PATCH, &hpa)
            < position(&served, &Method::PATCH, &format!("{APPS}/statefulsets/wa"))
    );
    // Made at the autoscaler's floor, by the operator's apply this once (the next pass
    // hands the count over).
    let set = body_of(&served, &Method::PATCH, &format!("{APPS}/statefulsets/wa"));
    assert_eq!(set["spec"]["replicas"], 2);
    assert_eq!(set["metadata"].get("uid"), None, "a create");
    assert_eq!(
        set["spec"]["template"]["spec"]["containers"][0]["name"],
        "receiver"
    );
    let pdb = body_of(&served, &Method::PATCH, PDB_V1BETA1);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    // The status counts the workload's pods, not spec.receiver.replicas.
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        status["status"]["receiver"],
        json!({"replicas": 3, "readyReplicas": 2})
    );
    assert!(
        served
            .iter()
            .all(|s| manager_of(s) != HANDOVER_FIELD_MANAGER),
        "nothing to hand over on a new workload"
    );
}

/// One pass of a subscription with autoscaling `{maxReplicas: 8}` over the live Deployment
/// `live` (at 4 replicas), with policy/v1 and autoscaling/v2 served; `handover`: the
/// operator's apply holds `spec.replicas` (autoscaling was off until now).
async fn autoscaled_pass(live: Value, handover: bool) -> Vec<Served> {
    let spec = spec(&json!({"autoscaling": {"maxReplicas": 8}}));
    let sub = subscription("wa", NS, &spec);
    let hpa = hpa_path("v2");
    let mut script = claims_of(
        NS,
        "wa",
        false,
        false,
        &[
            (
                format!("{CORE}/configmaps/wa-receiver"),
                owned(object_in(NS, "v1", "ConfigMap", "wa-receiver")),
            ),
            (format!("{APPS}/deployments/wa"), live),
            (
                format!("{CORE}/services/wa"),
                owned(object_in(NS, "v1", "Service", "wa")),
            ),
        ],
    );
    script.extend([
        // The PodDisruptionBudget of the earlier replicas: 4.
        get(
            PDB_V1,
            Reply::Object(owned(object_in(
                NS,
                "policy/v1",
                "PodDisruptionBudget",
                "wa",
            ))),
        ),
        get(hpa.clone(), Reply::Error(404, "NotFound")),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(hpa.clone(), Reply::Echo(None)),
    ]);
    if handover {
        script.push(apply(format!("{APPS}/deployments/wa"), Reply::Echo(None)));
    }
    script.extend([
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Merged(
                json!({"spec": {"replicas": 4}, "status": {"replicas": 4, "readyReplicas": 4}}),
            ),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        // minReplicas 1: no PodDisruptionBudget (it would block drains at one pod).
        delete(PDB_V1),
        status_step(&spec),
        event(NS),
    ]);
    let capabilities = Capabilities {
        pdb: Some(PdbVersion::V1),
        autoscaling: Some(AutoscalingVersion::V2),
        ..Capabilities::default()
    };
    let api = MockApi::start(script, capabilities, test_now());
    metahook_operator::controller::reconcile(std::sync::Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;

    let hpa_body = body_of(&served, &Method::PATCH, &hpa);
    assert_eq!(hpa_body["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa_body["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "wa"})
    );
    assert_eq!(hpa_body["spec"]["minReplicas"], 1);
    assert_eq!(hpa_body["spec"]["maxReplicas"], 8);
    let deployment_writes = all_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    let full = deployment_writes.last().expect("the Deployment's apply");
    assert_eq!(manager_of(full), "metahook-operator");
    assert!(!full.query.contains("force=true"));
    assert!(
        full.body["spec"].get("replicas").is_none(),
        "{}",
        full.body["spec"]
    );
    assert_eq!(full.body["metadata"]["uid"], "wa-uid");
    let deleted = body_of(&served, &Method::DELETE, PDB_V1);
    assert_eq!(deleted["preconditions"]["uid"], "wa-uid");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        status["status"]["receiver"],
        json!({"replicas": 4, "readyReplicas": 4})
    );
    served
}

#[tokio::test]
async fn turning_autoscaling_on_hands_the_count_over_before_leaving_it_out() {
    let live = live_deployment(
        4,
        &json!([operator_entry(
            &json!({"f:spec": {"f:replicas": {}, "f:template": {}}})
        )]),
    );
    let served = autoscaled_pass(live, true).await;
    let writes = all_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    assert_eq!(writes.len(), 2, "the hand-over, then the apply");
    let handover = writes[0];
    assert_eq!(manager_of(handover), HANDOVER_FIELD_MANAGER);
    assert!(!handover.query.contains("force=true"));
    assert_eq!(
        handover.body,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "wa", "uid": "wa-uid"},
            "spec": {"replicas": 4},
        })
    );
    // The hand-over comes after the HorizontalPodAutoscaler exists.
    let hpa = position(&served, &Method::PATCH, &hpa_path("v2"));
    let first = served
        .iter()
        .position(|s| std::ptr::eq(s, handover))
        .expect("served");
    assert!(hpa < first);
}

#[tokio::test]
async fn once_handed_over_the_count_is_left_alone() {
    // The operator's apply no longer holds spec.replicas: the autoscaler (or the hand-over
    // manager) does. No hand-over, one apply without the field.
    let live = live_deployment(
        4,
        &json!([
            operator_entry(&json!({"f:spec": {"f:template": {}}})),
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]),
    );
    let served = autoscaled_pass(live, false).await;
    assert!(
        served
            .iter()
            .all(|s| manager_of(s) != HANDOVER_FIELD_MANAGER)
    );
    assert_eq!(
        all_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa")).len(),
        1
    );
}

#[tokio::test]
async fn turning_autoscaling_off_takes_the_count_back_then_deletes_the_hpa() {
    let spec = spec(&json!({"replicas": 2}));
    let sub = subscription("wa", NS, &spec);
    let hpa = hpa_path("v2");
    // The autoscaler had scaled to 5 and holds spec.replicas (the operator's apply does
    // not: it must not set the field without force, nor force the whole object).
    let live = live_deployment(
        5,
        &json!([
            operator_entry(&json!({"f:spec": {"f:template": {}}})),
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]),
    );
    let mut script = claims_of(
        NS,
        "wa",
        false,
        false,
        &[(format!("{APPS}/deployments/wa"), live)],
    );
    script.extend([
        get(PDB_V1, Reply::Error(404, "NotFound")),
        get(
            hpa.clone(),
            Reply::Object(owned(object_in(
                NS,
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                "wa",
            ))),
        ),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        take_back(format!("{APPS}/deployments/wa"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(json!({"replicas": 2, "readyReplicas": 2}))),
        ),
        // The hand-over manager lets go.
        apply(format!("{APPS}/deployments/wa"), Reply::Echo(None)),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        apply(PDB_V1, Reply::Echo(None)),
        delete(hpa.clone()),
        status_step(&spec),
        event(NS),
    ]);
    let capabilities = Capabilities {
        pdb: Some(PdbVersion::V1),
        autoscaling: Some(AutoscalingVersion::V2),
        ..Capabilities::default()
    };
    let api = MockApi::start(script, capabilities, test_now());
    metahook_operator::controller::reconcile(std::sync::Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;

    let writes = all_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    assert_eq!(
        writes.len(),
        3,
        "the take-back, the apply, the hand-over manager letting go"
    );
    let take_back = writes[0];
    assert_eq!(manager_of(take_back), HANDOVER_FIELD_MANAGER);
    assert!(take_back.query.contains("force=true"));
    assert_eq!(
        take_back.body,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "wa", "uid": "wa-uid"},
            "spec": {"replicas": 2},
        })
    );
    let full = writes[1];
    assert_eq!(manager_of(full), "metahook-operator");
    assert!(!full.query.contains("force=true"));
    assert_eq!(full.body["spec"]["replicas"], 2);
    assert_eq!(
        full.body["spec"]["template"]["spec"]["containers"][0]["name"],
        "receiver"
    );
    let release = writes[2];
    assert_eq!(manager_of(release), HANDOVER_FIELD_MANAGER);
    assert!(!release.query.contains("force=true"));
    assert_eq!(
        release.body,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "wa", "uid": "wa-uid"},
        })
    );
    let deleted = body_of(&served, &Method::DELETE, &hpa);
    assert_eq!(deleted["preconditions"]["uid"], "wa-uid");
    assert_eq!(
        served.iter().rposition(|s| s.method == Method::DELETE),
        Some(position(&served, &Method::DELETE, &hpa)),
    );
    assert!(
        position(&served, &Method::DELETE, &hpa)
            > position(&served, &Method::PATCH, &format!("{APPS}/deployments/wa")),
        "deleted only once the count is the operator's again"
    );
    let pdb = body_of(&served, &Method::PATCH, PDB_V1);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        status["status"]["receiver"],
        json!({"replicas": 2, "readyReplicas": 2})
    );
}

#[tokio::test]
async fn a_sidecar_deletes_its_earlier_hpa() {
    let mut spec = spec(&json!({"mode": "sidecar"}));
    spec["delivery"]
        .as_object_mut()
        .expect("delivery")
        .remove("spool");
    let sub = subscription("wa", NS, &spec);
    let hpa = hpa_path("v2");
    let mut script = claims_of(NS, "wa", false, false, &[]);
    script.extend([
        get(
            hpa.clone(),
            Reply::Object(owned(object_in(
                NS,
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                "wa",
            ))),
        ),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        delete(hpa.clone()),
        status_step(&spec),
        event(NS),
    ]);
    let capabilities = Capabilities {
        autoscaling: Some(AutoscalingVersion::V2),
        ..Capabilities::default()
    };
    let api = MockApi::start(script, capabilities, test_now());
    metahook_operator::controller::reconcile(std::sync::Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;
    assert_eq!(
        body_of(&served, &Method::DELETE, &hpa)["preconditions"]["uid"],
        "wa-uid"
    );
}

#[tokio::test]
async fn autoscaling_without_the_api_is_refused_and_changes_nothing() {
    let spec = spec(&json!({"autoscaling": {"maxReplicas": 3}}));
    let sub = subscription("wa", NS, &spec);
    let mut script = claims_of(NS, "wa", false, false, &[]);
    script.extend([event(NS), status_step(&spec)]);
    // Neither autoscaling/v2 nor v2beta2 discovered.
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("a refusal is not a failure");
    assert!(
        served.iter().all(|s| s.method == Method::GET
            || s.method == Method::POST
            || s.path.ends_with("/status")),
        "nothing but the Event and the status written"
    );
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], AUTOSCALING_UNAVAILABLE);
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("spec.receiver.autoscaling: the cluster serves neither")),
        "{ready}"
    );
    let warning = body_of(
        &served,
        &Method::POST,
        "/apis/events.k8s.io/v1/namespaces/acme/events",
    );
    assert_eq!(warning["reason"], AUTOSCALING_UNAVAILABLE);
    assert_eq!(warning["type"], "Warning");
}
