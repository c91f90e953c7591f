//! The home of registration with Meta's Graph API (`POST /{app-id}/subscriptions` when a
//! subscription asks for it, `DELETE` when it goes), behind a finalizer so a deleted
//! subscription is unregistered before the API server removes it.
//!
//! Not yet a feature: no spec field asks for registration, so [`requested`] is always
//! `None`, no pass calls [`GraphApi::subscribe`] and no finalizer is ever added; the
//! operator's only client is [`Unconfigured`]. What is here is where the feature goes: the
//! calls as a trait (tests/support has a recording mock), [`Error::Graph`], the finalizer
//! and the steps of a pass that use them. Adding it means a spec field read by
//! [`requested`], a Graph HTTP client implementing [`GraphApi`], and the app token it needs.

use futures_util::future::BoxFuture;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::api::apply_params;
use crate::crd::WebhookSubscription;
use crate::error::Error;

/// The finalizer on subscriptions registered with the Graph API: removed once the
/// registration is deleted.
pub const FINALIZER: &str = "metahook.io/graph-registration";

/// What is registered: the Graph API's subscription of an app to an object's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The Graph object, e.g. `whatsapp_business_account`.
    pub object: String,
    /// The fields Meta delivers.
    pub fields: Vec<String>,
    /// The public callback URL Meta calls.
    pub callback_url: String,
}

/// The Graph API calls the operator makes.
pub trait GraphApi: Send + Sync {
    /// Registers (or updates) the app's subscription.
    fn subscribe<'a>(&'a self, registration: &'a Registration) -> BoxFuture<'a, Result<(), Error>>;
    /// Deletes the app's subscription to an object.
    fn unsubscribe<'a>(&'a self, object: &'a str) -> BoxFuture<'a, Result<(), Error>>;
}

/// The client while none is built: every call fails with [`Error::Graph`]. Never called,
/// since no subscription asks for registration and none carries the finalizer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unconfigured;

impl GraphApi for Unconfigured {
    fn subscribe<'a>(&'a self, _: &'a Registration) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Err(unconfigured("subscribe")) })
    }

    fn unsubscribe<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Err(unconfigured("unsubscribe")) })
    }
}

fn unconfigured(call: &'static str) -> Error {
    Error::Graph {
        call,
        message: "no Graph API client is configured".to_owned(),
    }
}

/// The registration a subscription asks for: none, as no spec field asks yet.
pub fn requested(_sub: &WebhookSubscription) -> Option<Registration> {
    None
}

/// What the registration step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The subscription asks for no registration (every subscription, today).
    NotRequested,
    /// The finalizer is on and the Graph API has the registration.
    Subscribed,
}

/// Registers the subscription when it asks to be: the finalizer first, so a deletion
/// cannot miss the registration.
pub(super) async fn step(ctx: &Context, sub: &WebhookSubscription) -> Result<Registered, Error> {
    let Some(registration) = requested(sub) else {
        return Ok(Registered::NotRequested);
    };
    if !has_finalizer(sub) {
        set_finalizer(ctx, sub, true).await?;
    }
    ctx.graph.subscribe(&registration).await?;
    Ok(Registered::Subscribed)
}

/// A subscription being deleted: unregistered, then its finalizer removed, when it carries
/// the finalizer; otherwise nothing to do (every child has an owner reference: the garbage
/// collector removes them).
pub(super) async fn finalize(ctx: &Context, sub: &WebhookSubscription) -> Result<Action, Error> {
    if has_finalizer(sub) {
        ctx.graph.unsubscribe(&sub.spec.object).await?;
        set_finalizer(ctx, sub, false).await?;
    }
    Ok(Action::await_change())
}

fn has_finalizer(sub: &WebhookSubscription) -> bool {
    sub.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer with a server-side apply of `metadata.finalizers` alone
/// (a set: the operator's apply owns its entry and no other).
async fn set_finalizer(
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
