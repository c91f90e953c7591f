//! The finalizer of a registered subscription: unregistered from Meta before the API
//! server removes it.

use std::time::Duration;

use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::diff::{describe_left, unregister};
use super::{fetch_secrets, publish_changes, tokens_from};
use crate::controller::Context;
use crate::controller::api::{apply_params, publish};
use crate::crd::WebhookSubscription;
use crate::error::Error;

/// The finalizer on subscriptions registered with the Graph API: removed once the
/// registration is deleted (or given up on after the operator's unregister timeout).
pub const FINALIZER: &str = "metahook.io/graph-registration";

/// A subscription being deleted: unregistered, then its finalizer removed. Past the
/// operator's unregister timeout (counted from the deletion) it gives up, says in a
/// Warning Event what it left at Meta, and removes the finalizer anyway, so a namespace
/// can always be deleted. Without the finalizer there is nothing to do (every child has an
/// owner reference: the garbage collector removes them).
pub(in crate::controller) async fn finalize(
    ctx: &Context,
    sub: &WebhookSubscription,
) -> Result<Action, Error> {
    if !has_finalizer(sub) {
        return Ok(Action::await_change());
    }
    let mut status = sub
        .status
        .as_ref()
        .and_then(|s| s.registration.clone())
        .unwrap_or_default();
    let now = (ctx.clock)();
    let deleted_at = sub
        .meta()
        .deletion_timestamp
        .as_ref()
        .map_or(now.unix_timestamp(), |t| t.0.as_second());
    let elapsed = Duration::from_secs((now.unix_timestamp() - deleted_at).max(0).unsigned_abs());
    let timeout = ctx.settings.unregister_timeout;
    let result = match fetch_secrets(ctx, sub, &status).await {
        Ok(data) => {
            let tokens = tokens_from(&status, &data);
            let mut changes = Vec::new();
            let result = unregister(ctx.graph.as_ref(), &mut status, &tokens, &mut changes).await;
            publish_changes(ctx, sub, "Unregistered", &changes).await;
            result.map_err(Error::from)
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => {
            set_finalizer(ctx, sub, false).await?;
            Ok(Action::await_change())
        }
        Err(error) if elapsed >= timeout => {
            publish(
                ctx,
                sub,
                EventType::Warning,
                "UnregistrationAbandoned",
                "Unregister",
                format!(
                    "gave up unregistering after {}s (--graph-unregister-timeout): left at Meta: {}; last error: {error}",
                    elapsed.as_secs(),
                    describe_left(&status)
                ),
            )
            .await;
            set_finalizer(ctx, sub, false).await?;
            Ok(Action::await_change())
        }
        Err(error) => {
            publish(
                ctx,
                sub,
                EventType::Warning,
                "UnregistrationFailed",
                "Unregister",
                format!(
                    "{error}; retrying until {}s after the deletion",
                    timeout.as_secs()
                ),
            )
            .await;
            Err(error)
        }
    }
}

pub(super) fn has_finalizer(sub: &WebhookSubscription) -> bool {
    sub.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer with a server-side apply of `metadata.finalizers` alone
/// (a set: the operator's apply owns its entry and no other).
pub(super) async fn set_finalizer(
    ctx: &Context,
    sub: &WebhookSubscription,
    present: bool,
) -> Result<(), Error> {
    let name = sub.name_any();
    let namespace = sub.namespace().unwrap_or_default();
    let finalizers: &[&str] = if present { &[FINALIZER] } else { &[] };
    let patch = json!({
        "apiVersion": WebhookSubscription::api_version(&()),
        "kind": WebhookSubscription::kind(&()),
        "metadata": {"name": name, "finalizers": finalizers},
    });
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("apply finalizers of WebhookSubscription {name}"), e))?;
    Ok(())
}
