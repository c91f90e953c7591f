//! Part of step 4: the HorizontalPodAutoscaler of `spec.receiver.autoscaling`, and the
//! workload's `spec.replicas` passed between the operator and the autoscaler, so the two
//! never fight over it.
//!
//! With autoscaling on, the operator's apply of the workload leaves `spec.replicas` out
//! ([`resources::autoscaling::replicas_owned`]). Dropping a field from a server-side apply
//! releases the applier's hold on it, and a field no manager holds any more is removed:
//! `spec.replicas` would fall back to its default, 1 (tests/tests/e2e/autoscaling.rs shows
//! it on the API server). So the count passes through the operator's second field manager,
//! [`HANDOVER_FIELD_MANAGER`](autoscaling::HANDOVER_FIELD_MANAGER), which only ever applies
//! `spec.replicas`:
//!
//! - **A workload made with autoscaling on** starts at `minReplicas`: that first apply
//!   sets the count, and the next pass hands it over as below.
//! - **Autoscaling turned on** for a workload whose count the operator's apply holds: the
//!   hand-over manager first applies that same count; the operator's apply without the
//!   field then leaves it there, at its value, until the autoscaler writes it.
//! - **Autoscaling turned off** (the subscription's HorizontalPodAutoscaler still exists):
//!   the hand-over manager takes the count with a forced apply of `receiver.replicas`
//!   (from the autoscaler, or whoever scaled under it), the operator's apply sets the same
//!   value without force, the hand-over manager lets go (an apply of nothing), and only
//!   then, after the other children, the HorizontalPodAutoscaler is deleted
//!   ([`after_children`]). A pass that fails on the way finds the autoscaler still there
//!   and does it again. A count someone took while autoscaling was off is still a
//!   `Conflict`.
//!
//! The HorizontalPodAutoscaler is applied before the workload, so that whenever the
//! operator has let go of `spec.replicas` its autoscaler exists.

use std::fmt::Debug;

use kube::Resource;
use kube::api::Api;
use kube::core::DynamicObject;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::api::{apply_claimed, apply_handover, delete_claimed};
use super::ownership::{Claim, Claims};
use crate::FIELD_MANAGER;
use crate::crd::WebhookSubscription;
use crate::error::Error;
use crate::ownership::Holder;
use crate::resources::Inputs;
use crate::resources::autoscaling;
use crate::status::Refusal;

/// The `Ready` reason of a subscription asking for autoscaling on a cluster that serves
/// neither autoscaling/v2 nor autoscaling/v2beta2.
pub const AUTOSCALING_UNAVAILABLE: &str = "AutoscalingUnavailable";

/// A refusal when the spec asks for autoscaling and step 0 found no HorizontalPodAutoscaler
/// API to make one with (nothing is written then).
pub(super) fn unavailable(sub: &WebhookSubscription, claims: &Claims) -> Option<Refusal> {
    (autoscaling::autoscaling(&sub.spec).is_some() && claims.horizontal_pod_autoscaler.is_none())
        .then(|| Refusal {
            reason: AUTOSCALING_UNAVAILABLE,
            message: "spec.receiver.autoscaling: the cluster serves neither autoscaling/v2 nor \
                      autoscaling/v2beta2 (Kubernetes 1.12+): remove autoscaling, or enable \
                      the API"
                .to_owned(),
        })
}

/// What applying the workload needs besides the workload: the pass's context, the
/// subscription, the builders' inputs and step 0's claims.
pub(super) struct WorkloadApplier<'a> {
    /// The context.
    pub ctx: &'a Context,
    /// The subscription.
    pub sub: &'a WebhookSubscription,
    /// The builders' inputs.
    pub inputs: &'a Inputs<'a>,
    /// Step 0's claims.
    pub claims: &'a Claims,
}

impl WorkloadApplier<'_> {
    /// Applies `object`, the workload, through `workload`'s claim, with its
    /// HorizontalPodAutoscaler before it and the replica count handed over or taken back
    /// around it (module comment); returns the workload as applied.
    pub(super) async fn apply<K>(
        &self,
        api: &Api<K>,
        workload: &Claim<K>,
        object: &K,
    ) -> Result<K, Error>
    where
        K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    {
        let Self {
            ctx,
            sub,
            inputs,
            claims,
        } = *self;
        let hpa = claims.horizontal_pod_autoscaler.as_ref();
        let wanted = match (hpa, claims.capabilities.autoscaling) {
            (Some(_), Some(version)) => {
                autoscaling::horizontal_pod_autoscaler(inputs, version, workload.kind)?
            }
            _ => None,
        };
        if let (Some((resource, claim)), Some((_, hpa_object))) = (hpa, &wanted) {
            let hpas: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &inputs.namespace, resource);
            // Boxed, as the workload's apply below: the pass's future stays small.
            Box::pin(apply_claimed(ctx, sub, &hpas, claim, hpa_object)).await?;
        }

        // Absent: made as the spec says. Adoptable: applied with force anyway.
        let ours = match (&workload.holder, &workload.object) {
            (Holder::Subscription { uid }, Some(live)) => Some((uid.as_str(), live)),
            _ => None,
        };
        let ours_hpa =
            hpa.is_some_and(|(_, claim)| matches!(claim.holder, Holder::Subscription { .. }));
        let mut taken_back = None;
        if let Some((uid, live)) = ours {
            if wanted.is_some() {
                let held = autoscaling::applies_replicas(live.meta(), FIELD_MANAGER);
                if let Some(replicas) = live_replicas(live).filter(|_| held) {
                    let fields = autoscaling::replicas_only(
                        workload.kind,
                        &workload.name,
                        uid,
                        Some(replicas),
                    );
                    apply_handover(api, workload, &fields, false).await?;
                    tracing::info!(
                        object = %workload.describe(),
                        replicas,
                        "handed spec.replicas over to the autoscaler"
                    );
                }
            } else if ours_hpa {
                let replicas = sub.spec.receiver.replicas;
                let fields =
                    autoscaling::replicas_only(workload.kind, &workload.name, uid, Some(replicas));
                apply_handover(api, workload, &fields, true).await?;
                taken_back = Some((uid, replicas));
            }
        }

        // A workload made now starts at the autoscaler's floor rather than at 1 (a spec
        // switching kinds would otherwise drop to one receiver until the autoscaler acts):
        // the operator's apply holds the count for this once, and the next pass (the
        // creation triggers one) hands it over.
        let created;
        let object = match (&wanted, &workload.holder) {
            (Some(_), Holder::Absent) => {
                created = at_replicas(object, autoscaling::replicas_floor(&sub.spec))?;
                &created
            }
            _ => object,
        };
        let applied = Box::pin(apply_claimed(ctx, sub, api, workload, object)).await?;

        if let Some((uid, replicas)) = taken_back {
            // The operator's apply holds the count too now: the hand-over manager lets go,
            // so a later change of receiver.replicas does not conflict with it.
            let nothing = autoscaling::replicas_only(workload.kind, &workload.name, uid, None);
            apply_handover(api, workload, &nothing, false).await?;
            tracing::info!(
                object = %workload.describe(),
                replicas,
                "took spec.replicas back from the autoscaler"
            );
        }
        Ok(applied)
    }
}

/// After the other children: deletes the subscription's HorizontalPodAutoscaler when the
/// spec no longer wants one (autoscaling removed, or sidecar mode).
pub(super) async fn after_children(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    claims: &Claims,
) -> Result<(), Error> {
    let Some((resource, claim)) = &claims.horizontal_pod_autoscaler else {
        return Ok(());
    };
    if autoscaling::autoscaling(&sub.spec).is_some() {
        return Ok(());
    }
    let hpas: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &inputs.namespace, resource);
    delete_claimed(&hpas, claim).await
}

/// `object` with `spec.replicas` set to `replicas`.
fn at_replicas<K: Serialize + DeserializeOwned>(object: &K, replicas: i32) -> Result<K, Error> {
    let serialize = |source| Error::Serialize {
        context: "the workload with its initial replica count".to_owned(),
        source,
    };
    let mut value = serde_json::to_value(object).map_err(serialize)?;
    value["spec"]["replicas"] = serde_json::Value::from(replicas);
    serde_json::from_value(value).map_err(serialize)
}

/// The live object's `spec.replicas`.
fn live_replicas<K: Serialize>(live: &K) -> Option<i32> {
    let value = serde_json::to_value(live).ok()?;
    value
        .pointer("/spec/replicas")
        .and_then(serde_json::Value::as_i64)
        .and_then(|replicas| i32::try_from(replicas).ok())
}
