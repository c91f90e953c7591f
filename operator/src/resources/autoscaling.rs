//! The receivers' HorizontalPodAutoscaler (`spec.receiver.autoscaling`), and who owns the
//! workload's `spec.replicas`.
//!
//! The HPA lives in autoscaling/v2 (Kubernetes 1.23+), or autoscaling/v2beta2 on older
//! clusters (1.12 to 1.22; 1.26 removed it): the controller discovers which, as it does the
//! PodDisruptionBudget's version. The two versions spell the fields used here (Resource
//! and Pods metrics, `behavior`) the same way, so the spec is built once with
//! k8s-openapi's v2 types and sent as JSON under the discovered version.
//!
//! With autoscaling on, the operator's apply of the Deployment or StatefulSet leaves
//! `spec.replicas` out ([`replicas_owned`]): the autoscaler's writes never conflict with
//! the operator's apply, and the apply never resets them.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::Inputs;
use crate::crd::{AutoscalingSpec, ReceiverModeSpec, WebhookSubscriptionSpec};
use crate::error::Error;

/// Where HorizontalPodAutoscalers with metric lists live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoscalingVersion {
    /// autoscaling/v2 (Kubernetes 1.23+).
    V2,
    /// autoscaling/v2beta2 (Kubernetes 1.12 to 1.25).
    V2beta2,
}

/// The HorizontalPodAutoscaler kind.
pub const HPA_KIND: &str = "HorizontalPodAutoscaler";

/// The CPU utilisation target when the spec names no metric at all.
pub const DEFAULT_TARGET_CPU_UTILIZATION: i32 = 80;

/// The operator's second field manager, which holds the workload's `spec.replicas` while
/// it passes between the operator's apply and the autoscaler (see
/// `controller::autoscaling`): dropped from the operator's apply while no other manager
/// holds it, the count would be reset to 1.
pub const HANDOVER_FIELD_MANAGER: &str = "metahook-operator-handover";

/// How long a lower load must last before the autoscaler removes receivers (the
/// autoscaler's own default, spelled out).
pub const SCALE_DOWN_STABILIZATION_SECONDS: i32 = 300;

/// Receivers removed at most one per this many seconds: each leaving pod drains its
/// spool and in-flight requests first (up to its 40 s termination grace).
pub const SCALE_DOWN_PERIOD_SECONDS: i32 = 60;

/// The HorizontalPodAutoscaler API of a version.
pub fn hpa_resource(version: AutoscalingVersion) -> ApiResource {
    let version = match version {
        AutoscalingVersion::V2 => "v2",
        AutoscalingVersion::V2beta2 => "v2beta2",
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", version, HPA_KIND),
        "horizontalpodautoscalers",
    )
}

/// The spec's autoscaling, when it applies (never to a sidecar, whose pod is the user's).
pub fn autoscaling(spec: &WebhookSubscriptionSpec) -> Option<&AutoscalingSpec> {
    match spec.receiver.mode {
        ReceiverModeSpec::Deployment => spec.receiver.autoscaling.as_ref(),
        ReceiverModeSpec::Sidecar => None,
    }
}

/// Does the operator set the workload's `spec.replicas` (from `receiver.replicas`)? Not
/// with autoscaling: the field is the autoscaler's then, and the operator's apply leaves
/// it out.
pub fn replicas_owned(inputs: &Inputs<'_>) -> bool {
    autoscaling(&inputs.sub.spec).is_none()
}

/// The fewest receiver pods the spec keeps: `autoscaling.minReplicas`, else
/// `receiver.replicas`.
pub fn replicas_floor(spec: &WebhookSubscriptionSpec) -> i32 {
    autoscaling(spec).map_or(spec.receiver.replicas, |a| a.min_replicas)
}

/// The metrics the autoscaler follows: CPU utilisation (the spec's target, or
/// [`DEFAULT_TARGET_CPU_UTILIZATION`] when no metric is named) and the per-pod custom
/// metric.
pub fn metrics(autoscaling: &AutoscalingSpec) -> Vec<MetricSpec> {
    let cpu = match (
        autoscaling.target_cpu_utilization_percentage,
        &autoscaling.pods_metric,
    ) {
        (Some(percent), _) => Some(percent),
        (None, None) => Some(DEFAULT_TARGET_CPU_UTILIZATION),
        (None, Some(_)) => None,
    };
    let mut metrics = Vec::new();
    if let Some(percent) = cpu {
        metrics.push(MetricSpec {
            type_: "Resource".to_owned(),
            resource: Some(ResourceMetricSource {
                name: "cpu".to_owned(),
                target: MetricTarget {
                    type_: "Utilization".to_owned(),
                    average_utilization: Some(percent),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    if let Some(pods) = &autoscaling.pods_metric {
        metrics.push(MetricSpec {
            type_: "Pods".to_owned(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: pods.name.clone(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".to_owned(),
                    average_value: Some(Quantity(pods.target_average_value.clone())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    metrics
}

/// The HorizontalPodAutoscaler's spec, scaling the workload of kind `target_kind`
/// (`Deployment` or `StatefulSet`, apps/v1) named after the subscription.
pub fn hpa_spec(
    inputs: &Inputs<'_>,
    autoscaling: &AutoscalingSpec,
    target_kind: &str,
) -> HorizontalPodAutoscalerSpec {
    HorizontalPodAutoscalerSpec {
        scale_target_ref: CrossVersionObjectReference {
            api_version: Some("apps/v1".to_owned()),
            kind: target_kind.to_owned(),
            name: inputs.name.clone(),
        },
        min_replicas: Some(autoscaling.min_replicas),
        max_replicas: autoscaling.max_replicas,
        metrics: Some(metrics(autoscaling)),
        behavior: Some(HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(SCALE_DOWN_STABILIZATION_SECONDS),
                policies: Some(vec![HPAScalingPolicy {
                    type_: "Pods".to_owned(),
                    value: 1,
                    period_seconds: SCALE_DOWN_PERIOD_SECONDS,
                }]),
                ..HPAScalingRules::default()
            }),
            scale_up: None,
        }),
    }
}

/// The HorizontalPodAutoscaler of version `version` for the workload of kind
/// `target_kind`, when the spec asks for autoscaling.
pub fn horizontal_pod_autoscaler(
    inputs: &Inputs<'_>,
    version: AutoscalingVersion,
    target_kind: &str,
) -> Result<Option<(ApiResource, DynamicObject)>, Error> {
    let Some(autoscaling) = autoscaling(&inputs.sub.spec) else {
        return Ok(None);
    };
    let resource = hpa_resource(version);
    let spec =
        serde_json::to_value(hpa_spec(inputs, autoscaling, target_kind)).map_err(|source| {
            Error::Serialize {
                context: format!("the HorizontalPodAutoscaler spec of {}", inputs.name),
                source,
            }
        })?;
    let mut object = DynamicObject::new(&inputs.name, &resource).data(json!({ "spec": spec }));
    object.metadata = inputs.meta(inputs.name.clone())?;
    Ok(Some((resource, object)))
}

/// Does `manager` hold the workload's `spec.replicas` through a server-side apply
/// (its managedFields entry of operation Apply lists `f:spec` / `f:replicas`)?
pub fn applies_replicas(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|entry| entry.manager.as_deref() == Some(manager))
        .filter(|entry| entry.operation.as_deref() == Some("Apply"))
        .filter(|entry| entry.subresource.as_deref().unwrap_or_default().is_empty())
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0.pointer("/f:spec/f:replicas").is_some())
}

/// A server-side apply body for the workload `kind` `name` (uid `uid`) setting only
/// `spec.replicas`, or, with `None`, nothing: how [`HANDOVER_FIELD_MANAGER`] takes the
/// count and lets go of it.
pub fn replicas_only(
    kind: &str,
    name: &str,
    uid: &str,
    replicas: Option<i32>,
) -> serde_json::Value {
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "uid": uid},
    });
    if let Some(replicas) = replicas {
        body["spec"] = json!({ "replicas": replicas });
    }
    body
}
