//! Meta's Graph API as the operator uses it: the calls of webhook registration (the app's
//! `subscriptions` edge, the `subscribed_apps` edge of Pages, Instagram accounts and
//! WhatsApp Business Accounts, a WhatsApp phone number's `webhook_configuration`), Meta's
//! request and response shapes, its error object, and a bounded retry of what Meta says is
//! transient (5xx, rate limits).
//!
//! [`GraphApi`] is the seam: the controller's registration step only speaks to it, the
//! HTTP [`GraphClient`] implements it for the real API (or a local fake in tests), and
//! [`Unconfigured`] refuses every call.
//!
//! One file a job: [`error`] (Meta's error object and what is transient), [`wire`] (the
//! request and response shapes), this module (the [`GraphApi`] trait and [`Unconfigured`]),
//! [`client`] (the HTTP client and its retries).

mod client;
mod credentials;
mod error;
mod usage;
mod wire;

pub use client::{GraphClient, GraphObserver, GraphSettings};
pub use credentials::{Credentials, appsecret_proof};
pub use error::{BUC_RATE_LIMIT_CODES, GraphError, MetaErrorFields, RATE_LIMIT_CODES};
pub use usage::{BusinessUsage, Usage};
pub use wire::{
    AppSubscribe, AppSubscription, AppSubscriptionField, NodeSubscribe, SubscribedApp,
    WebhookConfiguration,
};

use futures_util::future::BoxFuture;

/// The Graph API calls of registration. Tokens are passed per call: each edge needs its own
/// (the app token for the app's subscriptions, a Page token for a Page, a system-user
/// token for a WABA). A node's token comes as [`Credentials`], with its `appsecret_proof`;
/// the app token needs none.
pub trait GraphApi: Send + Sync {
    /// `GET /{app-id}/subscriptions`.
    fn app_subscriptions<'a>(
        &'a self,
        app_id: &'a str,
        app_token: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AppSubscription>, GraphError>>;
    /// `POST /{app-id}/subscriptions`.
    fn subscribe_app<'a>(
        &'a self,
        app_id: &'a str,
        app_token: &'a str,
        request: &'a AppSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `DELETE /{app-id}/subscriptions?object=…&fields=…`: removes these fields (Meta drops
    /// the object when none remains).
    fn unsubscribe_app<'a>(
        &'a self,
        app_id: &'a str,
        app_token: &'a str,
        object: &'a str,
        fields: &'a [String],
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `GET /{id}/subscribed_apps`.
    fn subscribed_apps<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a Credentials,
    ) -> BoxFuture<'a, Result<Vec<SubscribedApp>, GraphError>>;
    /// `POST /{id}/subscribed_apps`.
    fn subscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a Credentials,
        request: &'a NodeSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `DELETE /{id}/subscribed_apps`: uninstalls the token's app from the node.
    fn unsubscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `GET /{phone-number-id}?fields=webhook_configuration` (the WABA's token).
    fn phone_webhook_configuration<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a Credentials,
    ) -> BoxFuture<'a, Result<WebhookConfiguration, GraphError>>;
    /// `POST /{phone-number-id}` with `webhook_configuration: {override_callback_uri,
    /// verify_token}`: Meta verifies the callback before it answers.
    fn set_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a Credentials,
        callback_uri: &'a str,
        verify_token: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `POST /{phone-number-id}` with an empty `override_callback_uri`: removes the phone
    /// number's override (its messages go to the WABA's override or the app's callback).
    fn remove_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
}

/// The client while none is configured: every call fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unconfigured;

fn unconfigured<T: Send + 'static>(call: &str) -> BoxFuture<'static, Result<T, GraphError>> {
    let error = GraphError::transport(call, "no Graph API client is configured");
    Box::pin(async move { Err(error) })
}

impl GraphApi for Unconfigured {
    fn app_subscriptions<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AppSubscription>, GraphError>> {
        unconfigured("GET subscriptions")
    }
    fn subscribe_app<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a AppSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST subscriptions")
    }
    fn unsubscribe_app<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: &'a [String],
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("DELETE subscriptions")
    }
    fn subscribed_apps<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
    ) -> BoxFuture<'a, Result<Vec<SubscribedApp>, GraphError>> {
        unconfigured("GET subscribed_apps")
    }
    fn subscribe_node<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
        _: &'a NodeSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST subscribed_apps")
    }
    fn unsubscribe_node<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("DELETE subscribed_apps")
    }
    fn phone_webhook_configuration<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
    ) -> BoxFuture<'a, Result<WebhookConfiguration, GraphError>> {
        unconfigured("GET webhook_configuration")
    }
    fn set_phone_override<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST webhook_configuration")
    }
    fn remove_phone_override<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST webhook_configuration")
    }
}
