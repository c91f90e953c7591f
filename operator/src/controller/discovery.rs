//! Which optional APIs the cluster serves (ServiceMonitor, the PodDisruptionBudget's and
//! the HorizontalPodAutoscaler's versions).

use kube::Client;

use crate::error::Error;
use crate::resources::autoscaling::AutoscalingVersion;
use crate::resources::monitoring::{Capabilities, PdbVersion};

/// The first Kubernetes minor version whose StatefulSets take
/// `persistentVolumeClaimRetentionPolicy` without a feature gate (beta, on by default).
const CLAIM_RETENTION_POLICY_SINCE: (u32, u32) = (1, 27);

/// Which optional APIs the cluster serves (two requests: the API group list and the
/// server's version).
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
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| Error::kube("read the server's version", e))?;
    capabilities.claim_retention_policy =
        minor_version(&version.major, &version.minor) >= Some(CLAIM_RETENTION_POLICY_SINCE);
    Ok(capabilities)
}

/// `("1", "27+")` → `(1, 27)`: the digits each field starts with (managed clusters append
/// `+`).
fn minor_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let leading = |text: &str| -> Option<u32> {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some((leading(major)?, leading(minor)?))
}

#[cfg(test)]
mod tests {
    use super::minor_version;

    #[test]
    fn versions_with_suffixes_are_read_by_their_digits() {
        assert_eq!(minor_version("1", "27+"), Some((1, 27)));
        assert_eq!(minor_version("1", "20"), Some((1, 20)));
        assert!(minor_version("1", "20") < Some((1, 27)));
        assert!(minor_version("1", "33") >= Some((1, 27)));
        assert_eq!(minor_version("", "x"), None);
    }
}
