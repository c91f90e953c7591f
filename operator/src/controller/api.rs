//! The requests every step makes the same way: server-side apply (retried once when it
//! raced a create), deletion of unwanted children, and Events.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::children::Child;
use crate::FIELD_MANAGER;
use crate::crd::WebhookSubscription;
use crate::error::Error;

/// Reads a Secret; absent is `None`.
pub(super) async fn get_secret(secrets: &Api<Secret>, name: &str) -> Result<Option<Secret>, Error> {
    secrets
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("get Secret {name}"), e))
}

pub(super) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Is this the answer of an apply that raced a create of the same object?
///
/// An apply of an absent object is a create on the server, decided by a read first; a
/// create landing in between (a request the client retried after a timeout, another
/// replica, a user) makes it answer 409 AlreadyExists. Kubernetes' generic storage retries
/// that as an update, but not every kind's: 1.20's Services, for one, do not. The object
/// exists by then, so applying again updates it.
fn raced_a_create(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

pub(super) async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let what = || format!("apply {} {name}", K::kind(&K::DynamicType::default()));
    match api
        .patch(&name, &apply_params(), &Patch::Apply(object))
        .await
    {
        Err(error) if raced_a_create(&error) => {
            tracing::info!(%name, "apply raced a create of the same object; applying again");
            api.patch(&name, &apply_params(), &Patch::Apply(object))
                .await
                .map_err(|e| Error::kube(what(), e))
        }
        result => result.map_err(|e| Error::kube(what(), e)),
    }
}

/// Applies a child kind that is deleted when unwanted, and remembers it is present.
pub(super) async fn apply_child<K>(
    ctx: &Context,
    sub: &ObjectRef<WebhookSubscription>,
    child: Child,
    api: &Api<K>,
    object: &K,
) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let applied = apply(api, object).await?;
    ctx.set_absent(sub, child, false);
    Ok(applied)
}

/// Applies a child of a kind the cluster may not serve (through the dynamic API), and
/// remembers it is present.
pub(super) async fn apply_dynamic_child(
    ctx: &Context,
    sub: &ObjectRef<WebhookSubscription>,
    child: Child,
    resource: &ApiResource,
    object: &DynamicObject,
) -> Result<(), Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, resource);
    let name = object.name_any();
    let mut result = api
        .patch(&name, &apply_params(), &Patch::Apply(object))
        .await;
    if let Err(error) = &result
        && raced_a_create(error)
    {
        tracing::info!(%name, "apply raced a create of the same object; applying again");
        result = api
            .patch(&name, &apply_params(), &Patch::Apply(object))
            .await;
    }
    result.map_err(|e| Error::kube(format!("apply {} {name}", resource.kind), e))?;
    ctx.set_absent(sub, child, false);
    Ok(())
}

/// Deletes an object that is no longer wanted; absent is fine. Skipped when this process
/// already saw it absent for the subscription.
pub(super) async fn delete_unwanted<K>(
    ctx: &Context,
    sub: &ObjectRef<WebhookSubscription>,
    api: &Api<K>,
    name: &str,
    child: Child,
) -> Result<(), Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let kind = child.kind();
    if ctx.known_absent(sub, child) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            tracing::info!(%name, kind, "deleted an object the subscription no longer wants");
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(Error::kube(format!("delete {kind} {name}"), e)),
    }
    ctx.set_absent(sub, child, true);
    Ok(())
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
