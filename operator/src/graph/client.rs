//! The Graph API over HTTPS: requests, Meta's answers, and a bounded retry of what Meta
//! says is transient.

use std::time::Duration;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use metahook_backoff::ExponentialBackoff;
use serde_json::Value;

use super::{
    AppSubscribe, AppSubscription, Credentials, GraphApi, GraphError, NodeSubscribe, SubscribedApp,
    Usage, WebhookConfiguration,
};

/// Where the Graph API is and how patiently it is called (the operator's `--graph-*` flags).
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// The base URL, e.g. `https://graph.facebook.com`.
    pub base_url: String,
    /// The base URL of calls with an Instagram User token (Instagram Login), e.g.
    /// `https://graph.instagram.com`.
    pub instagram_base_url: String,
    /// The API version path segment, e.g. `v26.0`.
    pub api_version: String,
    /// The timeout of one request (Meta's verification GET happens inside a subscribe).
    pub timeout: Duration,
    /// Attempts per call when Meta answers 5xx, a rate limit, or nothing.
    pub max_attempts: u32,
    /// The first wait between attempts (doubling; a rate limit waits four times as long).
    pub retry_backoff: Duration,
}

/// The doublings of `retry_backoff` before the waits stop growing (`--graph-max-attempts`
/// ≤ 20 may reach it).
const MAX_DOUBLINGS: u32 = 10;

/// How much longer a rate-limited call waits than another transient failure: Meta gives no
/// time to wait, and its windows are longer than a blip.
const RATE_LIMIT_FACTOR: u32 = 4;

impl GraphSettings {
    /// The retry policy of one call: `retry_backoff` doubling up to 1,024 times it, without
    /// jitter (one leader makes these calls). Refused when `retry_backoff` is 0.
    pub fn backoff(&self) -> Result<ExponentialBackoff, metahook_backoff::InvalidBackoff> {
        ExponentialBackoff::new(
            self.retry_backoff,
            self.retry_backoff.saturating_mul(1 << MAX_DOUBLINGS),
            0.0,
        )
    }
}

/// The Graph API over HTTPS (rustls), tokens in the `Authorization: Bearer` header so they
/// stay out of URLs and logs.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    settings: GraphSettings,
    backoff: ExponentialBackoff,
    metrics: Option<Arc<dyn GraphObserver>>,
}

/// What the client reports of each request: its outcome (`ok`, `error`, `throttled`,
/// `transport`) and the usage Meta's headers announced. The operator's metrics implement
/// it (a trait here, so this module needs nothing of theirs).
pub trait GraphObserver: Send + Sync + std::fmt::Debug {
    /// One request's outcome.
    fn graph_call(&self, outcome: &str);
    /// The latest usage of a rate limit: an app (`kind` `app`) or a business object's use
    /// case.
    fn graph_usage(&self, id: &str, kind: &str, percent: f64);
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
        let backoff = settings
            .backoff()
            .map_err(|e| GraphError::transport("--graph-retry-backoff", e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("metahook-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::transport("build HTTP client", e.to_string()))?;
        Ok(GraphClient {
            http,
            settings,
            backoff,
            metrics: None,
        })
    }

    /// Counts calls by outcome and records Meta's usage headers in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<dyn GraphObserver>) -> GraphClient {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.graph_call(outcome);
        }
    }

    /// Records the usage an answer reported: the app's under its id (an app-token call's
    /// token is `{app-id}|{secret}`), each business object's under its own.
    fn record_usage(&self, usage: &Usage, token: &Credentials) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        if let (Some(percent), Some((app_id, _))) =
            (usage.app_percent, token.token().split_once('|'))
        {
            metrics.graph_usage(app_id, "app", percent);
        }
        for business in &usage.business {
            metrics.graph_usage(&business.id, &business.kind, business.percent);
        }
    }

    /// The host of calls with this token: graph.instagram.com for an Instagram User token.
    fn base(&self, token: &Credentials) -> &str {
        if token.is_instagram() {
            &self.settings.instagram_base_url
        } else {
            &self.settings.base_url
        }
    }

    fn url(&self, path: &str, token: &Credentials) -> String {
        format!(
            "{}/{}/{}",
            self.base(token).trim_end_matches('/'),
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
        token: &Credentials,
        body: Body,
    ) -> Result<Value, GraphError> {
        let mut url = self.url(path, token);
        if !query.is_empty() {
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
                .finish();
            url = format!("{url}?{encoded}");
        }
        self.call_url(call_name(&method, path), method, url, token, body)
            .await
    }

    /// [`GraphClient::call`] of a complete URL (a page's `paging.next`).
    async fn call_url(
        &self,
        name: String,
        method: reqwest::Method,
        url: String,
        token: &Credentials,
        body: Body,
    ) -> Result<Value, GraphError> {
        let mut attempt = 1;
        loop {
            match self.once(&name, &method, &url, token, &body).await {
                Ok(value) => return Ok(value),
                // Meta announced how long the caller is throttled (minutes to a day): no
                // retry within the pass; the controller requeues after that time.
                Err(error) if error.regain_access.is_some() => return Err(error),
                Err(error) if error.is_transient() && attempt < self.settings.max_attempts => {
                    let computed = self.backoff.delay(attempt);
                    // Meta names no time to wait after a rate limit: a longer one, taken
                    // as a server's delay (a Retry-After) through the same policy.
                    let server = error
                        .is_rate_limit()
                        .then(|| computed.saturating_mul(RATE_LIMIT_FACTOR));
                    let wait = self.backoff.delay_honouring(attempt, server);
                    tracing::warn!(call = %name, error = %error, attempt, retry_in = ?wait, "Graph API call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// `GET path`, a list call: the `data` arrays of its answer and of every page after it
    /// (`paging.next`, followed until absent: Meta pages lists by 25, and an edge missing
    /// from the first page is not missing).
    async fn list(&self, path: &str, token: &Credentials) -> Result<Vec<Value>, GraphError> {
        let name = call_name(&reqwest::Method::GET, path);
        let mut value = self
            .call(reqwest::Method::GET, path, &[], token, Body::None)
            .await?;
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            let next = next_page(&value);
            items.extend(data(name.clone(), value)?);
            let Some(next) = next else {
                return Ok(items);
            };
            let url = self.same_origin(&name, &next, token)?;
            value = self
                .call_url(name.clone(), reqwest::Method::GET, url, token, Body::None)
                .await?;
        }
        Err(GraphError::transport(
            name,
            format!("more than {MAX_PAGES} pages: not following paging.next further"),
        ))
    }

    /// `next` when it is on the configured Graph API's origin (the token goes with it), with
    /// any `access_token` Meta put in it removed (the token travels in the header) and any
    /// `appsecret_proof` (the call adds its own).
    fn same_origin(
        &self,
        call: &str,
        next: &str,
        token: &Credentials,
    ) -> Result<String, GraphError> {
        let parse = |url: &str| reqwest::Url::parse(url).ok();
        let (Some(mut url), Some(base)) = (parse(next), parse(self.base(token))) else {
            return Err(GraphError::transport(
                call,
                format!("paging.next is not a URL: {}", redact_next(next)),
            ));
        };
        if url.origin() != base.origin() {
            return Err(GraphError::transport(
                call,
                format!(
                    "paging.next points at {}, not the Graph API at {}: not sending the token there",
                    url.origin().ascii_serialization(),
                    base.origin().ascii_serialization()
                ),
            ));
        }
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "access_token" && k != "appsecret_proof")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(kept);
        Ok(url.to_string())
    }

    /// `POST /{phone-number-id}` with `{"webhook_configuration": configuration}`: sets a
    /// phone number's override, or removes it with an empty `override_callback_uri`.
    async fn post_webhook_configuration(
        &self,
        phone_id: &str,
        token: &Credentials,
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
        token: &Credentials,
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
        url: &str,
        token: &Credentials,
        body: &Body,
    ) -> Result<Value, GraphError> {
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token.token());
        if let Some(proof) = token.proof() {
            request = request.query(&[("appsecret_proof", proof)]);
        }
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
        let transport = |e: reqwest::Error| {
            self.count("transport");
            GraphError::transport(name, error_chain(&e.without_url()))
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let header = |header: &str| {
            response
                .headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let usage = Usage::parse(
            header("x-app-usage").as_deref(),
            header("x-business-use-case-usage").as_deref(),
        );
        self.record_usage(&usage, token);
        let bytes = response.bytes().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            let mut error = GraphError::from_response(name, status, &bytes);
            error.regain_access = usage.regain_access.filter(|_| error.is_rate_limit());
            let outcome = if error.is_rate_limit() {
                "throttled"
            } else if error.meta.is_some() {
                "error"
            } else {
                "transport"
            };
            self.count(outcome);
            return Err(error);
        }
        self.count("ok");
        serde_json::from_slice(&bytes).map_err(|e| GraphError {
            status: Some(status),
            ..GraphError::transport(name, format!("answer is not JSON: {e}"))
        })
    }
}

/// Every cause of a transport error, once each (reqwest hides the useful one inside). The
/// callers strip the URL first: the call's name says where, and the query carries the
/// `appsecret_proof`.
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

/// Meta answers mutations with `{"success": true}`, or `{"success": "true"}` (a string, as
/// its own sample for the subscriptions edge shows); anything else is a failure.
fn expect_success(call: String, value: &Value) -> Result<(), GraphError> {
    let success = match value.get("success") {
        Some(Value::Bool(success)) => *success,
        Some(Value::String(success)) => success == "true",
        _ => false,
    };
    if success {
        Ok(())
    } else {
        Err(GraphError::transport(
            call,
            format!("Meta did not answer success: {value}"),
        ))
    }
}

/// The most pages of one list followed (25 entries each by default: 2,500 apps on a Page).
const MAX_PAGES: usize = 100;

/// A list answer's `paging.next`, when there is a next page.
fn next_page(value: &Value) -> Option<String> {
    value
        .get("paging")
        .and_then(|p| p.get("next"))
        .and_then(Value::as_str)
        .filter(|next| !next.is_empty())
        .map(str::to_owned)
}

/// A `paging.next` for a message: without its query (which may carry a token).
fn redact_next(next: &str) -> &str {
    next.split('?').next().unwrap_or_default()
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
            self.list(&path, &Credentials::bare(app_token))
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
                &Credentials::bare(app_token),
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
                &Credentials::bare(app_token),
                Body::None,
            )
            .await
        })
    }

    fn subscribed_apps<'a>(
        &'a self,
        node_id: &'a str,
        token: &'a Credentials,
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
        token: &'a Credentials,
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
        token: &'a Credentials,
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
        token: &'a Credentials,
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
        token: &'a Credentials,
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
        token: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), GraphError>> {
        Box::pin(self.post_webhook_configuration(
            phone_id,
            token,
            serde_json::json!({"override_callback_uri": ""}),
        ))
    }
}
