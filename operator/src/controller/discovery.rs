//! Which optional APIs the cluster serves (ServiceMonitor, the PodDisruptionBudget's and
//! the HorizontalPodAutoscaler's versions).

use kube::Client;

use crate::error::Error;
use crate::resources::autoscaling::AutoscalingVersion;
use crate::resources::monitoring::{Capabilities, PdbVersion};

/// Which optional APIs the cluster serves (one request: the API group list).
pub async fn discover(client: &Client) -> Result<Capabilities, Error> {
    let groups = client
        .list_api_groups()
        .await
        .map_err(|e| Error::kube("discover API groups", e))?;
    let mut capabilities = Capabilities::default();
    for group in groups.groups {
        let versions: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
        match group.name.as_str() {
            "monitoring.coreos.com" => capabilities.service_monitor = versions.contains(&"v1"),
            "policy" => {
                capabilities.pdb = if versions.contains(&"v1") {
                    Some(PdbVersion::V1)
                } else if versions.contains(&"v1beta1") {
                    Some(PdbVersion::V1beta1)
                } else {
                    None
                };
            }
            "autoscaling" => {
                capabilities.autoscaling = if versions.contains(&"v2") {
                    Some(AutoscalingVersion::V2)
                } else if versions.contains(&"v2beta2") {
                    Some(AutoscalingVersion::V2beta2)
                } else {
                    None
                };
            }
            _ => {}
        }
    }
    Ok(capabilities)
}
