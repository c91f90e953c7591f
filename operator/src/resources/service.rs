//! The receiver's Service: the webhook port (named for its scheme) and the metrics port.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::workload::{SPOOL_LABEL, SpoolVolume};
use super::{Inputs, METRICS_PORT};
use crate::error::Error;

/// The Service in front of the receiver pods. `current_only`: it selects only the pods of
/// the workload the spec wants (by [`SPOOL_LABEL`]); false while that workload has no
/// ready pod yet and the previous one still runs, so both serve until it has.
pub fn service(inputs: &Inputs<'_>, current_only: bool) -> Result<Service, Error> {
    let webhook = inputs.webhook_port_name();
    let mut selector = inputs.selector_labels();
    if current_only {
        selector.insert(
            SPOOL_LABEL.to_owned(),
            SpoolVolume::of(&inputs.sub.spec).mode().to_owned(),
        );
    }
    Ok(Service {
        metadata: inputs.meta(inputs.name.clone())?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector),
            ports: Some(vec![
                ServicePort {
                    name: Some(webhook.to_owned()),
                    port: inputs.service_port(),
                    target_port: Some(IntOrString::String(webhook.to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some(webhook.to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("metrics".to_owned()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some("http".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The callback URL to register with Meta: the ingress host when there is one, else the
/// Service's cluster DNS name (reachable from inside the cluster only).
pub fn endpoint_url(inputs: &Inputs<'_>) -> String {
    let path = inputs.sub.spec.effective_path();
    match &inputs.sub.spec.ingress {
        Some(ingress) => format!("https://{}{path}", ingress.host),
        None => format!(
            "{}://{}.{}.svc:{}{path}",
            inputs.webhook_port_name(),
            inputs.name,
            inputs.namespace,
            inputs.service_port()
        ),
    }
}
