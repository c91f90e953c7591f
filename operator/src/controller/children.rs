//! Step 4: the ConfigMap, the workload (Deployment or StatefulSet), the Service, then
//! Ingress, ServiceMonitor and PodDisruptionBudget: applied when wanted, deleted when not.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::api::{apply, apply_child, apply_dynamic_child, delete_unwanted};
use crate::crd::{ReceiverModeSpec, WebhookSubscription};
use crate::error::Error;
use crate::resources::monitoring;
use crate::resources::workload::Workload;
use crate::resources::{self, Inputs};
use crate::status::ReceiverState;

/// A kind of child that is deleted when unwanted; the controller remembers, per
/// subscription, which it saw absent so later passes skip the DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    /// The receiver workload without a spool volume.
    Deployment,
    /// The receiver workload with a spool volume claim per replica.
    StatefulSet,
    /// The receivers' Service.
    Service,
    /// The Ingress in front of the Service.
    Ingress,
    /// The Prometheus Operator's ServiceMonitor.
    ServiceMonitor,
    /// The receivers' PodDisruptionBudget.
    PodDisruptionBudget,
}

impl Child {
    /// The Kubernetes kind.
    pub fn kind(self) -> &'static str {
        use k8s_openapi::Resource as _;
        match self {
            Child::Deployment => Deployment::KIND,
            Child::StatefulSet => StatefulSet::KIND,
            Child::Service => Service::KIND,
            Child::Ingress => Ingress::KIND,
            Child::ServiceMonitor => monitoring::SERVICE_MONITOR_KIND,
            Child::PodDisruptionBudget => monitoring::PDB_KIND,
        }
    }
}

/// What the children tell the status.
#[derive(Debug)]
pub struct Children {
    /// The receiver workload's state.
    pub receiver: ReceiverState,
    /// The receivers' in-cluster URL (none for a sidecar).
    pub endpoint: Option<String>,
}

/// Applies the ConfigMap and every wanted child, deletes the unwanted ones.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
) -> Result<Children, Error> {
    let (namespace, name) = (&inputs.namespace, &inputs.name);
    let sub_ref = ObjectRef::from_obj(sub);
    let config = resources::config::receiver_config(inputs)?;
    let config_yaml = config.to_yaml()?;
    let config_map = resources::config::config_map(inputs, &config_yaml)?;
    let config_hash = resources::digest([config_yaml.as_bytes(), inputs.secrets_digest.as_bytes()]);
    apply(
        &Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace),
        &config_map,
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), namespace);
    let capabilities = ctx.capabilities();
    let sidecar = sub.spec.receiver.mode == ReceiverModeSpec::Sidecar;
    let children = if sidecar {
        delete_unwanted(ctx, &sub_ref, &deployments, name, Child::Deployment).await?;
        delete_unwanted(ctx, &sub_ref, &stateful_sets, name, Child::StatefulSet).await?;
        delete_unwanted(ctx, &sub_ref, &services, name, Child::Service).await?;
        Children {
            receiver: ReceiverState::Sidecar,
            endpoint: None,
        }
    } else {
        let (kind, ready_replicas) = match resources::workload::workload(inputs, &config_hash)? {
            Workload::Deployment(deployment) => {
                let applied =
                    apply_child(ctx, &sub_ref, Child::Deployment, &deployments, &deployment)
                        .await?;
                delete_unwanted(ctx, &sub_ref, &stateful_sets, name, Child::StatefulSet).await?;
                let status = applied.status.unwrap_or_default();
                (Child::Deployment, status.ready_replicas)
            }
            Workload::StatefulSet(stateful_set) => {
                let applied = apply_child(
                    ctx,
                    &sub_ref,
                    Child::StatefulSet,
                    &stateful_sets,
                    &stateful_set,
                )
                .await?;
                delete_unwanted(ctx, &sub_ref, &deployments, name, Child::Deployment).await?;
                let status = applied.status.unwrap_or_default();
                (Child::StatefulSet, status.ready_replicas)
            }
        };
        apply_child(
            ctx,
            &sub_ref,
            Child::Service,
            &services,
            &resources::service::service(inputs)?,
        )
        .await?;
        Children {
            receiver: ReceiverState::Workload {
                kind: kind.kind(),
                replicas: sub.spec.receiver.replicas,
                ready_replicas: ready_replicas.unwrap_or(0),
            },
            endpoint: Some(resources::service::endpoint_url(inputs)),
        }
    };
    match resources::ingress::ingress(inputs)? {
        Some(ingress) if !sidecar => {
            apply_child(ctx, &sub_ref, Child::Ingress, &ingresses, &ingress).await?;
        }
        _ => delete_unwanted(ctx, &sub_ref, &ingresses, name, Child::Ingress).await?,
    }
    if capabilities.service_monitor {
        let resource = monitoring::service_monitor_resource();
        match monitoring::service_monitor(inputs, capabilities)? {
            Some(object) => {
                apply_dynamic_child(ctx, &sub_ref, Child::ServiceMonitor, &resource, &object)
                    .await?;
            }
            None => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), namespace, &resource);
                delete_unwanted(ctx, &sub_ref, &api, name, Child::ServiceMonitor).await?;
            }
        }
    }
    if let Some(version) = capabilities.pdb {
        let wanted = if sidecar {
            None
        } else {
            monitoring::pod_disruption_budget(inputs, capabilities)?
        };
        match wanted {
            Some((resource, object)) => {
                apply_dynamic_child(
                    ctx,
                    &sub_ref,
                    Child::PodDisruptionBudget,
                    &resource,
                    &object,
                )
                .await?;
            }
            None => {
                let resource = monitoring::pdb_resource(version);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), namespace, &resource);
                delete_unwanted(ctx, &sub_ref, &api, name, Child::PodDisruptionBudget).await?;
            }
        }
    }
    Ok(children)
}
