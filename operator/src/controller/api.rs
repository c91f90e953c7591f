//! The requests every step makes the same way: server-side apply and deletion through the
//! [`Claim`]s of step 0 (never by name alone), and Events.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::ownership::Claim;
use crate::FIELD_MANAGER;
use crate::crd::WebhookSubscription;
use crate::error::Error;
use crate::ownership::{self, ADOPT_ANNOTATION, Holder};
use crate::resources::autoscaling::HANDOVER_FIELD_MANAGER;

/// Reads a Secret; absent is `None`.
pub(super) async fn get_secret(secrets: &Api<Secret>, name: &str) -> Result<Option<Secret>, Error> {
    secrets
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("get Secret {name}"), e))
}

/// The apply of the subscription's own status and finalizer: forced, since only the
/// operator writes them. (Children are applied through [`apply_claimed`].)
pub(super) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Is this the answer of an apply that raced a create of the same object?
///
/// An apply of an absent object is a create on the server, decided by a read first; a
/// create landing in between (a request the client retried after a timeout, another
/// replica, a user) makes it answer 409 AlreadyExists. Kubernetes' generic storage retries
/// that as an update, but not every kind's: 1.20's Services, for one, do not.
fn raced_a_create(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

/// Is this a 409 Conflict: a field another manager owns (an apply without force), or a
/// uid precondition the object no longer meets (it was deleted and made again)?
fn conflicted(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status) if status.code == 409 && status.reason == "Conflict" => {
            Some(status.message.clone())
        }
        _ => None,
    }
}

/// Applies `object` as `claim` allows, never by name alone: created when absent (an
/// apply without force), updated under its uid when the subscription's (without force:
/// a field someone else manages is a [`Error::Conflict`] naming it, not overwritten), taken
/// over with force when annotated for adoption by the subscription. An object someone
/// else holds is never applied.
pub(super) async fn apply_claimed<K>(
    ctx: &Context,
    sub: &WebhookSubscription,
    api: &Api<K>,
    claim: &Claim<K>,
    object: &K,
) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let what = claim.describe();
    let (uid, adopting) = match &claim.holder {
        Holder::Absent => (None, false),
        Holder::Subscription { uid } => (Some(uid.clone()), false),
        Holder::Adoptable { uid } => (Some(uid.clone()), true),
        Holder::Other { holder } => {
            return Err(Error::Conflict(format!("{what} is {holder}")));
        }
    };
    let applied = match patch_under_uid(api, &claim.name, object, uid.as_deref(), adopting).await {
        Err(error) if uid.is_none() && raced_a_create(&error) => {
            // Made by someone between the step-0 read and this create: applied again only
            // if it turns out to be the subscription's (this operator's own create,
            // retried).
            let found = api
                .get_opt(&claim.name)
                .await
                .map_err(|e| Error::kube(format!("get {what}"), e))?;
            let sub_uid = sub.uid().unwrap_or_default();
            match ownership::holder(
                found.as_ref().map(Resource::meta),
                &sub.name_any(),
                &sub_uid,
            ) {
                Holder::Subscription { uid } => {
                    tracing::info!(object = %what, "apply raced a create of the subscription's own object; applying again");
                    patch_under_uid(api, &claim.name, object, Some(&uid), false).await
                }
                _ => {
                    return Err(Error::Conflict(format!(
                        "{what} was created by someone else while the operator was creating it"
                    )));
                }
            }
        }
        result => result,
    };
    let applied = applied.map_err(|error| match conflicted(&error) {
        Some(message) => Error::Conflict(format!("{what}: {message}")),
        None => Error::kube(format!("apply {what}"), error),
    })?;
    if adopting {
        publish(
            ctx,
            sub,
            EventType::Normal,
            "Adopted",
            "Adopt",
            format!(
                "took over {what} as its {ADOPT_ANNOTATION} annotation allows; it is now deleted with the subscription"
            ),
        )
        .await;
    }
    Ok(applied)
}

/// A server-side apply by the operator's field manager, with the object's uid as a
/// precondition when it exists (so a write never lands on an object made again under the
/// same name), forced only to adopt.
async fn patch_under_uid<K>(
    api: &Api<K>,
    name: &str,
    object: &K,
    uid: Option<&str>,
    force: bool,
) -> Result<K, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let mut body = object.clone();
    body.meta_mut().uid = uid.map(str::to_owned);
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = force;
    api.patch(name, &params, &Patch::Apply(&body)).await
}

/// Applies `fields`, a partial object (only `spec.replicas`, or nothing to let go of it,
/// with the object's uid as the body's precondition), to an object the subscription holds,
/// under the operator's second field manager,
/// [`HANDOVER_FIELD_MANAGER`](crate::resources::autoscaling::HANDOVER_FIELD_MANAGER), which
/// holds the workload's replica count between the operator's apply and its autoscaler
/// (see `controller::autoscaling`). Never under [`FIELD_MANAGER`]: an apply states the
/// manager's whole intent, so a partial object would drop every other field it applies.
/// Forced only to take the count back from the operator's own autoscaler. An object that
/// is absent or not the subscription's is left alone.
pub(super) async fn apply_handover<K>(
    api: &Api<K>,
    claim: &Claim<K>,
    fields: &serde_json::Value,
    force: bool,
) -> Result<(), Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    if !matches!(claim.holder, Holder::Subscription { .. }) {
        return Ok(());
    }
    let what = claim.describe();
    let mut params = PatchParams::apply(HANDOVER_FIELD_MANAGER);
    params.force = force;
    match api.patch(&claim.name, &params, &Patch::Apply(fields)).await {
        Ok(_) => Ok(()),
        Err(error) => Err(match conflicted(&error) {
            Some(message) => Error::Conflict(format!("{what}: {message}")),
            None => Error::kube(
                format!("apply spec.replicas of {what} as {HANDOVER_FIELD_MANAGER}"),
                error,
            ),
        }),
    }
}

/// Deletes an object the subscription no longer wants, only when it is the
/// subscription's, and under its uid. Absent, or someone else's, it is left alone.
pub(super) async fn delete_claimed<K>(api: &Api<K>, claim: &Claim<K>) -> Result<(), Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let Holder::Subscription { uid } = &claim.holder else {
        return Ok(());
    };
    let what = claim.describe();
    if delete_under_uid(api, &claim.name, uid, &what).await? {
        tracing::info!(object = %what, "deleted an object the subscription no longer wants");
    }
    Ok(())
}

/// Deletes `name` (`what` in messages) in the background, under `uid`: an object made again
/// under the same name since it was read (409) is left alone, one already gone (404) is
/// fine. True when this call deleted it.
pub(super) async fn delete_under_uid<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    what: &str,
) -> Result<bool, Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(object = %what, "not deleting: the object was made again under the same name since it was read");
            Ok(false)
        }
        Err(e) => Err(Error::kube(format!("delete {what}"), e)),
    }
}

pub(super) async fn publish(
    ctx: &Context,
    sub: &WebhookSubscription,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    // An Event that cannot be published must not fail the reconciliation.
    if let Err(err) = ctx.recorder.publish(&event, &sub.object_ref(&())).await {
        tracing::warn!(error = %err, reason, "cannot publish Event");
    }
}
