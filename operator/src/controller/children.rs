//! Step 4: the ConfigMap, the workload (Deployment or StatefulSet; its
//! HorizontalPodAutoscaler and replica count in [`super::autoscaling`]), the Service, the
//! claims of removed replicas ([`super::drain`]), then Ingress, ServiceMonitor and
//! PodDisruptionBudget: applied when wanted, deleted when not (and the subscription's).
//!
//! A workload replacing the other kind ([`super::migration`]) starts beside it; the old
//! one goes once the new one serves and, for a Deployment, once its pods delivered what
//! they hold.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::DynamicObject;

use kube::runtime::events::EventType;

use super::api::{apply_claimed, delete_claimed, publish};
use super::ownership::Claims;
use super::{Context, autoscaling, drain, migration};
use crate::crd::{ReceiverModeSpec, SpoolStatus, WebhookSubscription};
use crate::error::Error;
use crate::ownership::Holder;
use crate::resources::monitoring;
use crate::resources::workload::{SpoolVolume, Workload};
use crate::resources::{self, Inputs};
use crate::status::ReceiverState;

/// What the children tell the status.
#[derive(Debug)]
pub struct Children {
    /// The receiver workload's state.
    pub receiver: ReceiverState,
    /// The receivers' in-cluster URL (none for a sidecar).
    pub endpoint: Option<String>,
    /// The spool, the drains and the migration, for `status.spool`.
    pub spool: SpoolStatus,
}

impl Children {
    /// False while a migration or a drain is under way: the pass comes back sooner.
    pub fn settled(&self) -> bool {
        self.spool.migration.is_none() && self.spool.claims_draining == 0
    }
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
    let spool_volume = SpoolVolume::of(&sub.spec);
    let mut spool = SpoolStatus {
        mode: if sidecar {
            "sidecar".to_owned()
        } else {
            spool_volume.mode().to_owned()
        },
        ..SpoolStatus::default()
    };
    let ours = |holder: &Holder| matches!(holder, Holder::Subscription { .. });
    let stateful_set_runs = ours(&claims.stateful_set.holder);
    let deployment_runs = ours(&claims.deployment.holder);
    // The StatefulSet's replicas whose claims are in use; the others' are drained.
    let mut live_replicas = 0;
    let (receiver, endpoint) = if sidecar {
        delete_claimed(&deployments, &claims.deployment).await?;
        delete_claimed(&stateful_sets, &claims.stateful_set).await?;
        delete_claimed(&services, &claims.service).await?;
        (ReceiverState::Sidecar, None)
    } else {
        let workload = resources::workload::workload(
            inputs,
            &config_hash,
            capabilities.claim_retention_policy,
        )?;
        // Applied with its HorizontalPodAutoscaler and the replica count's hand-over
        // around it; its count as applied is the autoscaler's with autoscaling.
        let applier = autoscaling::WorkloadApplier {
            ctx,
            sub,
            inputs,
            claims,
        };
        let (kind, replicas, ready_replicas, previous_runs) = match workload {
            Workload::Deployment(deployment) => {
                let applied = applier
                    .apply(&deployments, &claims.deployment, &deployment)
                    .await?;
                let replicas = applied.spec.as_ref().and_then(|s| s.replicas);
                let ready = applied
                    .status
                    .unwrap_or_default()
                    .ready_replicas
                    .unwrap_or(0);
                // The StatefulSet goes once the Deployment serves; its claims are drained.
                if stateful_set_runs && ready < 1 {
                    live_replicas = claims
                        .stateful_set
                        .object
                        .as_ref()
                        .and_then(|s| s.spec.as_ref())
                        .and_then(|s| s.replicas)
                        .unwrap_or(0);
                    spool.migration = Some(format!(
                        "StatefulSet {namespace}/{} serves until Deployment {namespace}/{} has a ready pod",
                        inputs.name, inputs.name
                    ));
                } else {
                    delete_claimed(&stateful_sets, &claims.stateful_set).await?;
                }
                (
                    claims.deployment.kind,
                    replicas,
                    ready,
                    stateful_set_runs && ready < 1,
                )
            }
            Workload::StatefulSet(stateful_set) => {
                let applied = applier
                    .apply(&stateful_sets, &claims.stateful_set, &stateful_set)
                    .await?;
                let replicas = applied.spec.as_ref().and_then(|s| s.replicas);
                live_replicas = replicas.unwrap_or(0);
                let ready = applied
                    .status
                    .unwrap_or_default()
                    .ready_replicas
                    .unwrap_or(0);
                let mut previous_runs = false;
                if deployment_runs {
                    if ready < 1 {
                        previous_runs = true;
                        spool.migration = Some(format!(
                            "Deployment {namespace}/{} serves until StatefulSet {namespace}/{} has a ready pod",
                            inputs.name, inputs.name
                        ));
                    } else if !migration::service_moved(
                        claims.service.object.as_ref(),
                        spool_volume.mode(),
                    ) {
                        // The Service moves in this pass; the Deployment's pods are read
                        // in the next, once no request can reach them.
                        spool.migration = Some(format!(
                            "the Service now selects StatefulSet {namespace}/{}'s pods; Deployment {namespace}/{}'s pods deliver what they hold",
                            inputs.name, inputs.name
                        ));
                    } else {
                        match migration::previous_deployment(ctx, namespace, &inputs.name).await? {
                            migration::Previous::Empty => {
                                delete_claimed(&deployments, &claims.deployment).await?;
                                publish(
                                    ctx,
                                    sub,
                                    EventType::Normal,
                                    "Migrated",
                                    "Migrate",
                                    format!(
                                        "the receivers moved to StatefulSet {namespace}/{}: Deployment {namespace}/{} delivered everything it held and is deleted",
                                        inputs.name, inputs.name
                                    ),
                                )
                                .await;
                            }
                            migration::Previous::Holding(message) => {
                                spool.migration = Some(message);
                            }
                        }
                    }
                }
                (claims.stateful_set.kind, replicas, ready, previous_runs)
            }
        };
        apply_claimed(
            ctx,
            sub,
            &services,
            &claims.service,
            &resources::service::service(inputs, !previous_runs)?,
        )
        .await?;
        (
            ReceiverState::Workload {
                kind,
                replicas: replicas.unwrap_or(sub.spec.receiver.replicas),
                ready_replicas,
            },
            Some(resources::service::endpoint_url(inputs)),
        )
    };
    // The claims of removed replicas (all of them, when no StatefulSet is wanted).
    let drains = drain::step(ctx, sub, inputs, &config_hash, live_replicas, (ctx.clock)()).await?;
    spool.claims_draining = drains.draining();
    spool.claims_kept = drains.kept();
    spool.events_left = drains.events_left();
    spool.drains = drains.claims;
    let children = Children {
        receiver,
        endpoint,
        spool,
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
