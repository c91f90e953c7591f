//! Step 4: the ConfigMap, the workload (Deployment or StatefulSet; its
//! HorizontalPodAutoscaler and replica count in [`super::autoscaling`]), the Service, then
//! Ingress, ServiceMonitor and PodDisruptionBudget: applied when wanted, deleted when not
//! (and the subscription's).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::DynamicObject;

use super::api::{apply_claimed, delete_claimed};
use super::ownership::Claims;
use super::{Context, autoscaling};
use crate::crd::{ReceiverModeSpec, WebhookSubscription};
use crate::error::Error;
use crate::resources::monitoring;
use crate::resources::workload::Workload;
use crate::resources::{self, Inputs};
use crate::status::ReceiverState;

/// What the children tell the status.
#[derive(Debug)]
pub struct Children {
    /// The receiver workload's state.
    pub receiver: ReceiverState,
    /// The receivers' in-cluster URL (none for a sidecar).
    pub endpoint: Option<String>,
}

/// Applies the ConfigMap and every wanted child, deletes the unwanted ones the
/// subscription owns (each through its [`Claims`] entry).
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    claims: &Claims,
) -> Result<Children, Error> {
    let namespace = &inputs.namespace;
    let config = resources::config::receiver_config(inputs)?;
    let config_yaml = config.to_yaml()?;
    let config_map = resources::config::config_map(inputs, &config_yaml)?;
    let config_hash = resources::digest([config_yaml.as_bytes(), inputs.secrets_digest.as_bytes()]);
    apply_claimed(
        ctx,
        sub,
        &Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace),
        &claims.config_map,
        &config_map,
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), namespace);
    let capabilities = claims.capabilities;
    let sidecar = sub.spec.receiver.mode == ReceiverModeSpec::Sidecar;
    let children = if sidecar {
        delete_claimed(&deployments, &claims.deployment).await?;
        delete_claimed(&stateful_sets, &claims.stateful_set).await?;
        delete_claimed(&services, &claims.service).await?;
        Children {
            receiver: ReceiverState::Sidecar,
            endpoint: None,
        }
    } else {
        // Applied with its HorizontalPodAutoscaler and the replica count's hand-over
        // around it; its count as applied is the autoscaler's with autoscaling.
        let workload = autoscaling::WorkloadApplier {
            ctx,
            sub,
            inputs,
            claims,
        };
        let (kind, replicas, ready_replicas) =
            match resources::workload::workload(inputs, &config_hash)? {
                Workload::Deployment(deployment) => {
                    let applied = workload
                        .apply(&deployments, &claims.deployment, &deployment)
                        .await?;
                    delete_claimed(&stateful_sets, &claims.stateful_set).await?;
                    let status = applied.status.unwrap_or_default();
                    let replicas = applied.spec.and_then(|s| s.replicas);
                    (claims.deployment.kind, replicas, status.ready_replicas)
                }
                Workload::StatefulSet(stateful_set) => {
                    let applied = workload
                        .apply(&stateful_sets, &claims.stateful_set, &stateful_set)
                        .await?;
                    delete_claimed(&deployments, &claims.deployment).await?;
                    let status = applied.status.unwrap_or_default();
                    let replicas = applied.spec.and_then(|s| s.replicas);
                    (claims.stateful_set.kind, replicas, status.ready_replicas)
                }
            };
        apply_claimed(
            ctx,
            sub,
            &services,
            &claims.service,
            &resources::service::service(inputs)?,
        )
        .await?;
        Children {
            receiver: ReceiverState::Workload {
                kind,
                replicas: replicas.unwrap_or(sub.spec.receiver.replicas),
                ready_replicas: ready_replicas.unwrap_or(0),
            },
            endpoint: Some(resources::service::endpoint_url(inputs)),
        }
    };
    match resources::ingress::ingress(inputs)? {
        Some(ingress) if !sidecar => {
            apply_claimed(ctx, sub, &ingresses, &claims.ingress, &ingress).await?;
        }
        _ => delete_claimed(&ingresses, &claims.ingress).await?,
    }
    if let Some((resource, claim)) = &claims.service_monitor {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, resource);
        match monitoring::service_monitor(inputs, capabilities)? {
            Some(object) => {
                apply_claimed(ctx, sub, &api, claim, &object).await?;
            }
            None => delete_claimed(&api, claim).await?,
        }
    }
    if let Some((resource, claim)) = &claims.pod_disruption_budget {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, resource);
        let wanted = if sidecar {
            None
        } else {
            monitoring::pod_disruption_budget(inputs, capabilities)?
        };
        match wanted {
            Some((_, object)) => {
                apply_claimed(ctx, sub, &api, claim, &object).await?;
            }
            None => delete_claimed(&api, claim).await?,
        }
    }
    autoscaling::after_children(ctx, sub, inputs, claims).await?;
    Ok(children)
}
