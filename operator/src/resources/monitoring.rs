//! Objects of APIs a cluster may lack: ServiceMonitor (monitoring.coreos.com) and the
//! PodDisruptionBudget (policy/v1, or policy/v1beta1 on old clusters). Built as JSON for
//! the API version the controller discovered ([`Capabilities`], which also holds the
//! HorizontalPodAutoscaler's: [`super::autoscaling`]).

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::Inputs;
use super::autoscaling::{self, AutoscalingVersion};
use crate::error::Error;

/// Which optional APIs the cluster serves (discovered, never assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// monitoring.coreos.com/v1 ServiceMonitor.
    pub service_monitor: bool,
    /// The PodDisruptionBudget API version, if any.
    pub pdb: Option<PdbVersion>,
    /// StatefulSets take `persistentVolumeClaimRetentionPolicy` (Kubernetes 1.27+, where
    /// it is on by default): the operator sets it to retain explicitly. Older servers drop
    /// the field, and retain claims anyway.
    pub claim_retention_policy: bool,
    /// The HorizontalPodAutoscaler API version with metric lists (autoscaling/v2 or
    /// v2beta2), if any.
    pub autoscaling: Option<AutoscalingVersion>,
}

/// Where PodDisruptionBudgets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdbVersion {
    /// policy/v1 (Kubernetes 1.21+).
    V1,
    /// policy/v1beta1 (older clusters).
    V1beta1,
}

/// The ServiceMonitor kind.
pub const SERVICE_MONITOR_KIND: &str = "ServiceMonitor";
/// The PodDisruptionBudget kind.
pub const PDB_KIND: &str = "PodDisruptionBudget";

/// The ServiceMonitor API.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", SERVICE_MONITOR_KIND),
        "servicemonitors",
    )
}

/// The PodDisruptionBudget API of a version.
pub fn pdb_resource(version: PdbVersion) -> ApiResource {
    let version = match version {
        PdbVersion::V1 => "v1",
        PdbVersion::V1beta1 => "v1beta1",
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", version, PDB_KIND),
        "poddisruptionbudgets",
    )
}

fn dynamic(
    resource: &ApiResource,
    inputs: &Inputs<'_>,
    spec: &serde_json::Value,
) -> Result<DynamicObject, Error> {
    let mut object = DynamicObject::new(&inputs.name, resource).data(json!({ "spec": spec }));
    object.metadata = inputs.meta(inputs.name.clone())?;
    Ok(object)
}

/// A ServiceMonitor scraping the receivers' metrics port, when asked for and served.
pub fn service_monitor(
    inputs: &Inputs<'_>,
    capabilities: Capabilities,
) -> Result<Option<DynamicObject>, Error> {
    if !inputs.sub.spec.monitoring.service_monitor || !capabilities.service_monitor {
        return Ok(None);
    }
    let spec = json!({
        "selector": {"matchLabels": inputs.selector_labels()},
        "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
    });
    dynamic(&service_monitor_resource(), inputs, &spec).map(Some)
}

/// A PodDisruptionBudget for voluntary disruptions (node drains), when the spec keeps more
/// than one replica (with one, it would block drains forever): one receiver kept up
/// (`minAvailable: 1`); with autoscaling above `minReplicas` 1, one receiver down at a time
/// (`maxUnavailable: 1`), since the count moves between minReplicas and maxReplicas.
pub fn pod_disruption_budget(
    inputs: &Inputs<'_>,
    capabilities: Capabilities,
) -> Result<Option<(ApiResource, DynamicObject)>, Error> {
    let Some(version) = capabilities.pdb else {
        return Ok(None);
    };
    if autoscaling::replicas_floor(&inputs.sub.spec) <= 1 {
        return Ok(None);
    }
    let resource = pdb_resource(version);
    let selector = json!({"matchLabels": inputs.selector_labels()});
    let spec = if autoscaling::replicas_owned(inputs) {
        json!({"minAvailable": 1, "selector": selector})
    } else {
        json!({"maxUnavailable": 1, "selector": selector})
    };
    let object = dynamic(&resource, inputs, &spec)?;
    Ok(Some((resource, object)))
}
