//! Meta's Graph API as the operator uses it: the calls of webhook registration (the app's
//! `subscriptions` edge, the `subscribed_apps` edge of Pages, Instagram accounts and
//! WhatsApp Business Accounts, a WhatsApp phone number's `webhook_configuration`), Meta's
//! request and response shapes, its error object, and a bounded retry of what Meta says is
//! transient (5xx, rate limits).
//!
//! [`GraphApi`] is the seam: the controller's registration step only speaks to it, the
//! HTTP [`GraphClient`] implements it for the real API (or a local fake in tests), and
//! [`Unconfigured`] refuses every call.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

/// Meta's error codes that mean "too many calls": 4 (app), 17 (user), 32 (page), 613
/// (custom rate limit). Retried after a longer backoff.
pub const RATE_LIMIT_CODES: [i64; 4] = [4, 17, 32, 613];

/// A failed Graph API call: Meta's error object when it sent one, else what went wrong
/// on the way (connect error, timeout, a body that is not Meta's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// The call, e.g. `POST /123/subscriptions`.
    pub call: String,
    /// The HTTP status, when a response came.
    pub status: Option<u16>,
    /// Meta's `error.message`, or the transport error.
    pub message: String,
    /// The rest of Meta's error object, when it sent one (boxed: errors stay small).
    pub meta: Option<Box<MetaErrorFields>>,
}

/// Meta's error object beyond its message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaErrorFields {
    /// `error.type` (e.g. `OAuthException`).
    pub kind: Option<String>,
    /// `error.code`.
    pub code: Option<i64>,
    /// `error.error_subcode`.
    pub subcode: Option<i64>,
    /// `error.fbtrace_id`, which Meta's support asks for.
    pub fbtrace_id: Option<String>,
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.call)?;
        if let Some(status) = self.status {
            write!(f, "HTTP {status}: ")?;
        }
        write!(f, "{}", self.message)?;
        let mut details = Vec::new();
        if let Some(meta) = &self.meta {
            if let Some(kind) = &meta.kind {
                details.push(format!("type {kind}"));
            }
            if let Some(code) = meta.code {
                details.push(format!("code {code}"));
            }
            if let Some(subcode) = meta.subcode {
                details.push(format!("subcode {subcode}"));
            }
            if let Some(trace) = &meta.fbtrace_id {
                details.push(format!("fbtrace_id {trace}"));
            }
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}

impl GraphError {
    /// An error that is not Meta's error object.
    pub fn transport(call: impl Into<String>, message: impl Into<String>) -> GraphError {
        GraphError {
            call: call.into(),
            status: None,
            message: message.into(),
            meta: None,
        }
    }

    /// Meta's `error.code`.
    pub fn code(&self) -> Option<i64> {
        self.meta.as_ref().and_then(|m| m.code)
    }

    /// Meta's `error.fbtrace_id`.
    pub fn fbtrace_id(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.fbtrace_id.as_deref())
    }

    /// Is it a rate limit (codes 4, 17, 32, 613, or HTTP 429)?
    pub fn is_rate_limit(&self) -> bool {
        self.code()
            .is_some_and(|code| RATE_LIMIT_CODES.contains(&code))
            || self.status == Some(429)
    }

    /// Is a retry likely to succeed: no response at all, a 5xx, a rate limit, or Meta's
    /// "unknown error" / "service temporarily unavailable" (codes 1, 2)?
    pub fn is_transient(&self) -> bool {
        self.status.is_none()
            || self.status.is_some_and(|status| status >= 500)
            || self.is_rate_limit()
            || matches!(self.code(), Some(1 | 2))
    }

    /// Parses a non-2xx answer: Meta's `{"error": {...}}`, or the raw body when it is not.
    pub fn from_response(call: &str, status: u16, body: &[u8]) -> GraphError {
        #[derive(Deserialize)]
        struct Envelope {
            error: MetaError,
        }
        #[derive(Deserialize)]
        struct MetaError {
            #[serde(default)]
            message: Option<String>,
            #[serde(default, rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            code: Option<i64>,
            #[serde(default)]
            error_subcode: Option<i64>,
            #[serde(default)]
            fbtrace_id: Option<String>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => GraphError {
                call: call.to_owned(),
                status: Some(status),
                message: error
                    .message
                    .unwrap_or_else(|| "(Meta's error carries no message)".to_owned()),
                meta: Some(Box::new(MetaErrorFields {
                    kind: error.kind,
                    code: error.code,
                    subcode: error.error_subcode,
                    fbtrace_id: error.fbtrace_id,
                })),
            },
            Err(_) => GraphError {
                call: call.to_owned(),
                status: Some(status),
                message: format!(
                    "not a Graph API error object: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                meta: None,
            },
        }
    }
}

/// One entry of `GET /{app-id}/subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppSubscription {
    /// The object, e.g. `page`.
    pub object: String,
    /// Where Meta sends the object's fields.
    #[serde(default)]
    pub callback_url: String,
    /// Whether Meta delivers.
    #[serde(default)]
    pub active: bool,
    /// The subscribed fields.
    #[serde(default)]
    pub fields: Vec<AppSubscriptionField>,
}

impl AppSubscription {
    /// The field names.
    pub fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.name.clone()).collect()
    }
}

/// A subscribed field and its Graph API version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppSubscriptionField {
    /// The field.
    pub name: String,
    /// The version Meta formats it with.
    #[serde(default)]
    pub version: Option<String>,
}

/// `POST /{app-id}/subscriptions`: subscribes (or updates) the app to an object's fields.
/// Meta verifies `callback_url` with the verify token before it answers.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSubscribe {
    /// The object.
    pub object: String,
    /// The callback URL.
    pub callback_url: String,
    /// The fields to add.
    pub fields: Vec<String>,
    /// The verify token of Meta's verification GET.
    pub verify_token: String,
}

impl fmt::Debug for AppSubscribe {
    /// Everything but the verify token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSubscribe")
            .field("object", &self.object)
            .field("callback_url", &self.callback_url)
            .field("fields", &self.fields)
            .field("verify_token", &"redacted")
            .finish()
    }
}

/// An app installed on a Page, Instagram account or WhatsApp Business Account
/// (`GET /{id}/subscribed_apps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedApp {
    /// The app's id (`id` on Pages, `whatsapp_business_api_data.id` on WABAs).
    pub app_id: String,
    /// The fields the node delivers to the app (Pages and Instagram).
    pub subscribed_fields: Vec<String>,
    /// The WABA's callback override, when set.
    pub override_callback_uri: Option<String>,
}

impl SubscribedApp {
    /// Reads one entry of `data`, either shape.
    pub fn from_value(entry: &Value) -> Option<SubscribedApp> {
        let app_id = entry
            .get("whatsapp_business_api_data")
            .and_then(|data| data.get("id"))
            .or_else(|| entry.get("id"))
            .and_then(Value::as_str)?
            .to_owned();
        let subscribed_fields = entry
            .get("subscribed_fields")
            .and_then(Value::as_array)
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let override_callback_uri = entry
            .get("override_callback_uri")
            .and_then(Value::as_str)
            .filter(|uri| !uri.is_empty())
            .map(str::to_owned);
        Some(SubscribedApp {
            app_id,
            subscribed_fields,
            override_callback_uri,
        })
    }
}

/// `POST /{id}/subscribed_apps`.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeSubscribe {
    /// A Page or Instagram account: `subscribed_fields` (the whole set for this app).
    Fields(Vec<String>),
    /// A WhatsApp Business Account: with a callback override (Meta verifies it), or
    /// without one (which also removes an override that was set).
    Waba {
        /// The override and its verify token.
        override_callback: Option<(String, String)>,
    },
}

impl fmt::Debug for NodeSubscribe {
    /// Everything but an override's verify token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeSubscribe::Fields(fields) => f.debug_tuple("Fields").field(fields).finish(),
            NodeSubscribe::Waba { override_callback } => f
                .debug_struct("Waba")
                .field(
                    "override_callback",
                    &override_callback.as_ref().map(|(uri, _)| (uri, "redacted")),
                )
                .finish(),
        }
    }
}

/// A phone number's `webhook_configuration` (`GET /{phone-number-id}?fields=webhook_configuration`):
/// the callback Meta uses at each level of the override hierarchy, `None` where unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookConfiguration {
    /// The phone number's own override (`phone_number`), tried first.
    pub phone_number: Option<String>,
    /// The WABA's override (`whatsapp_business_account`).
    pub whatsapp_business_account: Option<String>,
    /// The app's callback (`application`).
    pub application: Option<String>,
}

impl WebhookConfiguration {
    /// Reads Meta's answer; an absent `webhook_configuration` or key, or an empty string,
    /// is an unset level.
    pub fn from_value(value: &Value) -> WebhookConfiguration {
        let config = value.get("webhook_configuration");
        let level = |key: &str| {
            config
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .filter(|uri| !uri.is_empty())
                .map(str::to_owned)
        };
        WebhookConfiguration {
            phone_number: level("phone_number"),
            whatsapp_business_account: level("whatsapp_business_account"),
            application: level("application"),
        }
    }
}

/// The Graph API calls of registration. Tokens are passed per call: each edge needs its own
/// (the app token for the app's subscriptions, a Page token for a Page, a system-user
/// token for a WABA).
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
        token: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SubscribedApp>, GraphError>>;
    /// `POST /{id}/subscribed_apps`.
    fn subscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a str,
        request: &'a NodeSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `DELETE /{id}/subscribed_apps`: uninstalls the token's app from the node.
    fn unsubscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `GET /{phone-number-id}?fields=webhook_configuration` (the WABA's token).
    fn phone_webhook_configuration<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<WebhookConfiguration, GraphError>>;
    /// `POST /{phone-number-id}` with `webhook_configuration: {override_callback_uri,
    /// verify_token}`: Meta verifies the callback before it answers.
    fn set_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a str,
        callback_uri: &'a str,
        verify_token: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>>;
    /// `POST /{phone-number-id}` with an empty `override_callback_uri`: removes the phone
    /// number's override (its messages go to the WABA's override or the app's callback).
    fn remove_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a str,
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
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SubscribedApp>, GraphError>> {
        unconfigured("GET subscribed_apps")
    }
    fn subscribe_node<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a NodeSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST subscribed_apps")
    }
    fn unsubscribe_node<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("DELETE subscribed_apps")
    }
    fn phone_webhook_configuration<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<WebhookConfiguration, GraphError>> {
        unconfigured("GET webhook_configuration")
    }
    fn set_phone_override<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST webhook_configuration")
    }
    fn remove_phone_override<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        unconfigured("POST webhook_configuration")
    }
}

/// Where the Graph API is and how patiently it is called (the operator's `--graph-*` flags).
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// The base URL, e.g. `https://graph.facebook.com`.
    pub base_url: String,
    /// The API version path segment, e.g. `v23.0`.
    pub api_version: String,
    /// The timeout of one request (Meta's verification GET happens inside a subscribe).
    pub timeout: Duration,
    /// Attempts per call when Meta answers 5xx, a rate limit, or nothing.
    pub max_attempts: u32,
    /// The first wait between attempts (doubling; a rate limit waits four times as long).
    pub retry_backoff: Duration,
}

/// The Graph API over HTTPS (rustls), tokens in the `Authorization: Bearer` header so they
/// stay out of URLs and logs.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    settings: GraphSettings,
}

/// A request body.
enum Body {
    None,
    Form(Vec<(String, String)>),
    Json(Value),
}

impl GraphClient {
    /// A client with these settings.
    pub fn new(settings: GraphSettings) -> Result<GraphClient, GraphError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("metahook-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::transport("build HTTP client", e.to_string()))?;
        Ok(GraphClient { http, settings })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/{}",
            self.settings.base_url.trim_end_matches('/'),
            self.settings.api_version.trim_matches('/'),
            path.trim_start_matches('/')
        )
    }

    /// One call, retried while the error is transient and attempts remain.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        token: &str,
        body: Body,
    ) -> Result<Value, GraphError> {
        let name = call_name(&method, path);
        let mut attempt = 1;
        loop {
            match self.once(&name, &method, path, query, token, &body).await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() && attempt < self.settings.max_attempts => {
                    let mut wait = self
                        .settings
                        .retry_backoff
                        .saturating_mul(1 << (attempt - 1).min(10));
                    if error.is_rate_limit() {
                        wait = wait.saturating_mul(4);
                    }
                    tracing::warn!(call = %name, error = %error, attempt, retry_in = ?wait, "Graph API call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A mutation: one call whose answer must be Meta's `{"success": true}`.
    /// `GET path`, a list call: the `data` array of its answer.
    async fn list(&self, path: &str, token: &str) -> Result<Vec<Value>, GraphError> {
        let value = self
            .call(reqwest::Method::GET, path, &[], token, Body::None)
            .await?;
        data(call_name(&reqwest::Method::GET, path), value)
    }

    /// `POST /{phone-number-id}` with `{"webhook_configuration": configuration}`: sets a
    /// phone number's override, or removes it with an empty `override_callback_uri`.
    async fn post_webhook_configuration(
        &self,
        phone_id: &str,
        token: &str,
        configuration: Value,
    ) -> Result<(), GraphError> {
        let body = serde_json::json!({ "webhook_configuration": configuration });
        self.mutate(
            reqwest::Method::POST,
            phone_id,
            &[],
            token,
            Body::Json(body),
        )
        .await
    }

    async fn mutate(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        token: &str,
        body: Body,
    ) -> Result<(), GraphError> {
        let name = call_name(&method, path);
        let value = self.call(method, path, query, token, body).await?;
        expect_success(name, &value)
    }

    async fn once(
        &self,
        name: &str,
        method: &reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        token: &str,
        body: &Body,
    ) -> Result<Value, GraphError> {
        let mut url = self.url(path);
        if !query.is_empty() {
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
                .finish();
            url = format!("{url}?{encoded}");
        }
        let mut request = self.http.request(method.clone(), url).bearer_auth(token);
        request = match body {
            Body::None => request,
            Body::Form(pairs) => request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .finish(),
                ),
            Body::Json(value) => request
                .header("content-type", "application/json")
                .body(value.to_string()),
        };
        let response = request
            .send()
            .await
            .map_err(|e| GraphError::transport(name, error_chain(&e)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| GraphError::transport(name, error_chain(&e)))?;
        if !(200..300).contains(&status) {
            return Err(GraphError::from_response(name, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| GraphError {
            status: Some(status),
            ..GraphError::transport(name, format!("answer is not JSON: {e}"))
        })
    }
}

/// Every cause of a transport error, once each (reqwest hides the useful one inside).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// How a call is named in errors and logs: `POST /{path}`.
fn call_name(method: &reqwest::Method, path: &str) -> String {
    format!("{method} /{}", path.trim_start_matches('/'))
}

/// Meta answers mutations with `{"success": true}`; anything else is a failure.
fn expect_success(call: String, value: &Value) -> Result<(), GraphError> {
    if value.get("success").and_then(Value::as_bool) == Some(true) {
        Ok(())
    } else {
        Err(GraphError::transport(
            call,
            format!("Meta did not answer success: {value}"),
        ))
    }
}

/// The `data` array of a list answer.
fn data(call: String, value: Value) -> Result<Vec<Value>, GraphError> {
    match value {
        Value::Object(mut answer) => match answer.remove("data") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(GraphError::transport(
                call,
                format!("answer has no data array: {}", Value::Object(answer)),
            )),
        },
        other => Err(GraphError::transport(
            call,
            format!("answer has no data array: {other}"),
        )),
    }
}

impl GraphApi for GraphClient {
    fn app_subscriptions<'a>(
        &'a self,
        app_id: &'a str,
        app_token: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AppSubscription>, GraphError>> {
        Box::pin(async move {
            let path = format!("{app_id}/subscriptions");
            self.list(&path, app_token)
                .await?
                .into_iter()
                .map(|entry| {
                    serde_json::from_value(entry).map_err(|e| {
                        let call = call_name(&reqwest::Method::GET, &path);
                        GraphError::transport(call, format!("subscription entry: {e}"))
                    })
                })
                .collect()
        })
    }

    fn subscribe_app<'a>(
        &'a self,
        app_id: &'a str,
        app_token: &'a str,
        request: &'a AppSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(async move {
            let path = format!("{app_id}/subscriptions");
            let form = vec![
                ("object".to_owned(), request.object.clone()),
                ("callback_url".to_owned(), request.callback_url.clone()),
                ("fields".to_owned(), request.fields.join(",")),
                ("verify_token".to_owned(), request.verify_token.clone()),
                ("include_values".to_owned(), "true".to_owned()),
            ];
            self.mutate(
                reqwest::Method::POST,
                &path,
                &[],
                app_token,
                Body::Form(form),
            )
            .await
        })
    }

    fn unsubscribe_app<'a>(
        &'a self,
        app_id: &'a str,
        app_token: &'a str,
        object: &'a str,
        fields: &'a [String],
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(async move {
            let path = format!("{app_id}/subscriptions");
            let mut query = vec![("object", object.to_owned())];
            if !fields.is_empty() {
                query.push(("fields", fields.join(",")));
            }
            self.mutate(
                reqwest::Method::DELETE,
                &path,
                &query,
                app_token,
                Body::None,
            )
            .await
        })
    }

    fn subscribed_apps<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SubscribedApp>, GraphError>> {
        Box::pin(async move {
            let path = format!("{node_id}/subscribed_apps");
            Ok(self
                .list(&path, token)
                .await?
                .iter()
                .filter_map(SubscribedApp::from_value)
                .collect())
        })
    }

    fn subscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a str,
        request: &'a NodeSubscribe,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(async move {
            let path = format!("{node_id}/subscribed_apps");
            let (query, body) = match request {
                NodeSubscribe::Fields(fields) => {
                    (vec![("subscribed_fields", fields.join(","))], Body::None)
                }
                NodeSubscribe::Waba {
                    override_callback: Some((uri, verify_token)),
                } => (
                    vec![],
                    Body::Json(serde_json::json!({
                        "override_callback_uri": uri,
                        "verify_token": verify_token,
                    })),
                ),
                NodeSubscribe::Waba {
                    override_callback: None,
                } => (vec![], Body::None),
            };
            self.mutate(reqwest::Method::POST, &path, &query, token, body)
                .await
        })
    }

    fn unsubscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(async move {
            let path = format!("{node_id}/subscribed_apps");
            self.mutate(reqwest::Method::DELETE, &path, &[], token, Body::None)
                .await
        })
    }

    fn phone_webhook_configuration<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<WebhookConfiguration, GraphError>> {
        Box::pin(async move {
            let query = [("fields", "webhook_configuration".to_owned())];
            let value = self
                .call(reqwest::Method::GET, phone_id, &query, token, Body::None)
                .await?;
            Ok(WebhookConfiguration::from_value(&value))
        })
    }

    fn set_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a str,
        callback_uri: &'a str,
        verify_token: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(self.post_webhook_configuration(
            phone_id,
            token,
            serde_json::json!({
                "override_callback_uri": callback_uri,
                "verify_token": verify_token,
            }),
        ))
    }

    fn remove_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(self.post_webhook_configuration(
            phone_id,
            token,
            serde_json::json!({"override_callback_uri": ""}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_error_objects_are_parsed_and_classified() {
        let body = br#"{"error":{"message":"(#4) Application request limit reached","type":"OAuthException","code":4,"error_subcode":2446079,"fbtrace_id":"AbCdEf"}}"#;
        let error = GraphError::from_response("POST /1/subscriptions", 400, body);
        assert_eq!(error.code(), Some(4));
        assert_eq!(error.meta.as_ref().and_then(|m| m.subcode), Some(2446079));
        assert_eq!(error.fbtrace_id(), Some("AbCdEf"));
        assert!(error.is_rate_limit() && error.is_transient());
        assert_eq!(
            error.to_string(),
            "POST /1/subscriptions: HTTP 400: (#4) Application request limit reached (type OAuthException, code 4, subcode 2446079, fbtrace_id AbCdEf)"
        );
        let bad_token = GraphError::from_response(
            "GET /1/subscriptions",
            400,
            br#"{"error":{"message":"Invalid OAuth access token.","type":"OAuthException","code":190}}"#,
        );
        assert!(!bad_token.is_transient());
        let html = GraphError::from_response("GET /x", 502, b"<html>bad gateway</html>");
        assert!(html.is_transient());
        assert!(html.message.contains("not a Graph API error object"));
    }

    #[test]
    fn both_subscribed_apps_shapes_are_read() {
        let page = serde_json::json!({"id": "42", "name": "app", "subscribed_fields": ["feed", "leadgen"]});
        let waba = serde_json::json!({"whatsapp_business_api_data": {"id": "42", "name": "app"}, "override_callback_uri": "https://x/y"});
        assert_eq!(
            SubscribedApp::from_value(&page),
            Some(SubscribedApp {
                app_id: "42".into(),
                subscribed_fields: vec!["feed".into(), "leadgen".into()],
                override_callback_uri: None
            })
        );
        assert_eq!(
            SubscribedApp::from_value(&waba).and_then(|a| a.override_callback_uri),
            Some("https://x/y".into())
        );
    }

    #[test]
    fn a_phone_numbers_webhook_configuration_is_read_level_by_level() {
        let all = serde_json::json!({
            "webhook_configuration": {
                "phone_number": "https://phone.example/hook",
                "whatsapp_business_account": "https://waba.example/hook",
                "application": "https://app.example/hook",
            },
            "id": "106540352242922",
        });
        assert_eq!(
            WebhookConfiguration::from_value(&all),
            WebhookConfiguration {
                phone_number: Some("https://phone.example/hook".into()),
                whatsapp_business_account: Some("https://waba.example/hook".into()),
                application: Some("https://app.example/hook".into()),
            }
        );
        // Meta leaves out the levels that are unset; an empty string is unset too.
        let app_only = serde_json::json!({
            "webhook_configuration": {"application": "https://app.example/hook", "phone_number": ""},
            "id": "106540352242922",
        });
        assert_eq!(
            WebhookConfiguration::from_value(&app_only),
            WebhookConfiguration {
                application: Some("https://app.example/hook".into()),
                ..WebhookConfiguration::default()
            }
        );
        let none = serde_json::json!({"id": "106540352242922"});
        assert_eq!(
            WebhookConfiguration::from_value(&none),
            WebhookConfiguration::default()
        );
    }
}
