//! A local fake of Meta's Graph API for registration and Lead Ads tests, on `127.0.0.1:0`.
//!
//! It keeps Meta's state (one app's subscriptions per object, the `subscribed_apps` edge of
//! Pages, Instagram accounts and WABAs with their callback overrides, WhatsApp phone
//! numbers' `webhook_configuration`, leads), checks each call's token the way Meta does (the
//! app token `{app-id}|{app-secret}` for the app's edge, the node's own token elsewhere, the
//! WABA's for its phone numbers), answers in Meta's shapes including its error
//! object, and — like Meta — verifies a callback with the `hub.mode=subscribe` GET before it
//! answers a subscribe with success. Faults can be queued (a 500, a rate limit) and every
//! request is logged with its arrival time, so tests can assert retries and their spacing.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::testkit;

/// One app subscription (`GET /{app-id}/subscriptions` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSub {
    /// The callback URL.
    pub callback_url: String,
    /// The fields.
    pub fields: Vec<String>,
    /// The verify token it was registered with.
    pub verify_token: String,
    /// Whether Meta delivers (false after its callback kept failing; a POST makes it
    /// active again).
    pub active: bool,
}

/// The app's edge on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeEdge {
    /// `subscribed_fields` (Pages, Instagram).
    pub subscribed_fields: Vec<String>,
    /// `override_callback_uri` (WABAs).
    pub override_callback_uri: Option<String>,
}

/// A WhatsApp phone number of a WABA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhoneNumber {
    /// The WABA it belongs to (whose token reads and changes it).
    pub waba_id: String,
    /// Its own callback override (`webhook_configuration.phone_number`).
    pub override_callback_uri: Option<String>,
    /// The verify token the override was set with.
    pub verify_token: Option<String>,
}

/// A queued fault: the next matching request is answered with it.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Only requests with this method (any when `None`).
    pub method: Option<Method>,
    /// The HTTP status.
    pub status: u16,
    /// The body (Meta's error object, or anything).
    pub body: Value,
    /// Response headers (Meta's usage headers).
    pub headers: Vec<(String, String)>,
}

impl Fault {
    /// An HTTP 500 with Meta's "unknown error" object (code 1).
    pub fn server_error(method: Option<Method>) -> Fault {
        Fault {
            method,
            status: 500,
            body: meta_error("An unknown error has occurred.", "OAuthException", 1, None),
            headers: Vec::new(),
        }
    }

    /// Meta's application rate limit (code 4).
    pub fn rate_limit(method: Option<Method>) -> Fault {
        Fault {
            method,
            status: 400,
            body: meta_error(
                "(#4) Application request limit reached",
                "OAuthException",
                4,
                Some(2_446_079),
            ),
            headers: Vec::new(),
        }
    }

    /// A Business Use Case rate limit (`code`, e.g. 80001 Pages, 80002 Instagram, 80005
    /// LeadGen, 80008 WhatsApp Business Management) of business object `id`, with Meta's
    /// `X-Business-Use-Case-Usage` announcing `minutes` until access is regained.
    pub fn business_use_case(
        method: Option<Method>,
        code: i64,
        id: &str,
        kind: &str,
        minutes: u64,
    ) -> Fault {
        let usage = json!({id: [{
            "type": kind,
            "call_count": 100,
            "total_cputime": 12,
            "total_time": 15,
            "estimated_time_to_regain_access": minutes,
        }]});
        Fault {
            method,
            status: 400,
            body: meta_error(
                &format!(
                    "(#{code}) There have been too many calls from this business. Wait a bit and try again."
                ),
                "OAuthException",
                code,
                Some(2_446_079),
            ),
            headers: vec![("x-business-use-case-usage".to_owned(), usage.to_string())],
        }
    }
}

/// One request the fake served.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The method.
    pub method: Method,
    /// The path without the version, e.g. `/1234/subscriptions`.
    pub path: String,
    /// The answer's status.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
    /// Whether it came to the Instagram host.
    pub instagram: bool,
}

/// Meta's state and the fake's knobs.
#[derive(Debug, Default)]
pub struct State {
    /// The app id.
    pub app_id: String,
    /// The app secret (the app token is `{app_id}|{app_secret}`).
    pub app_secret: String,
    /// Each node's token (Page, Instagram account, WABA).
    pub node_tokens: BTreeMap<String, String>,
    /// The app's subscriptions by object.
    pub subscriptions: BTreeMap<String, AppSub>,
    /// The app's edges by node id.
    pub nodes: BTreeMap<String, NodeEdge>,
    /// Phone numbers by id.
    pub phones: BTreeMap<String, PhoneNumber>,
    /// Leads by leadgen id: (Page id, the lead object Meta returns).
    pub leads: BTreeMap<String, (String, Value)>,
    /// Faults answered before anything else, in order.
    pub faults: VecDeque<Fault>,
    /// Every request.
    pub log: Vec<Logged>,
    /// Entries per page of a list (`subscriptions`, `subscribed_apps`); 0 is Meta's 25.
    /// A list longer than a page answers `paging.next`, which a client must follow.
    pub page_size: usize,
    /// Other apps installed on a node, listed before this app's entry (as on a real Page
    /// with several apps), by node id.
    pub other_apps: BTreeMap<String, Vec<Value>>,
    /// Refuse a call made with a Page, system-user or phone-number token without
    /// `appsecret_proof`, as Meta does for an app with "Require App Secret" on (on by
    /// default: the fake is as strict as such an app). A proof that is not the token's
    /// HMAC with the app secret is refused either way.
    pub require_appsecret_proof: bool,
    /// Instagram accounts with an Instagram User token (Instagram Login): their token is
    /// valid only on the Instagram host, where nothing else is served.
    pub instagram_users: Vec<String>,
    /// Whether the Page tokens hold `ads_management` (needed to read a lead's `ad_id` and
    /// `campaign_id`); false by default, as for a token with only `leads_retrieval`.
    pub ads_management: bool,
    /// Tokens that expired: any call with one is refused with code 190, subcode 463.
    pub expired_tokens: Vec<String>,
    /// While set and false, lead reads (`GET /{leadgen-id}`) wait: a slow Graph API
    /// ([`FakeGraph::hold_leads`]).
    pub lead_gate: Option<tokio::sync::watch::Receiver<bool>>,
    /// Lead reads waiting at the gate now.
    pub leads_held: usize,
    /// Headers of every answer that is not a fault (e.g. Meta's `X-App-Usage`).
    pub usage_headers: Vec<(String, String)>,
    /// The fake's own base URL (for `paging.next`).
    pub base_url: String,
    /// The CAs an https callback's certificate may chain to (as Meta's public roots would):
    /// see [`FakeGraph::trust_callbacks_of`].
    pub callback_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Meta's error object, with a `fbtrace_id` of its own, as Meta gives each request.
pub fn meta_error(message: &str, kind: &str, code: i64, subcode: Option<i64>) -> Value {
    static TRACES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let trace = TRACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut error = json!({
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": format!("AfakeTrace{trace}"),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    json!({ "error": error })
}

/// The fake Graph API, serving until dropped.
#[derive(Debug)]
pub struct FakeGraph {
    /// Its address (graph.facebook.com).
    pub addr: SocketAddr,
    /// The address of its second host, graph.instagram.com (Instagram Login).
    pub instagram_addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    instagram_task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.instagram_task.abort();
        self.task.abort();
    }
}

/// The API version path segment tests use.
pub const VERSION: &str = metahook_receiver::config::GRAPH_API_VERSION;

impl FakeGraph {
    /// Serves one app with this secret.
    pub async fn start(app_id: &str, app_secret: &str) -> Result<FakeGraph> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake Graph API")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
            base_url: format!("http://{addr}"),
            require_appsecret_proof: true,
            ..State::default()
        }));
        let task = testkit::serve_http(listener, Arc::clone(&state), |state, request| async move {
            answer(&state, request, false).await
        });
        let instagram = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake Graph API's Instagram host")?;
        let instagram_addr = instagram.local_addr()?;
        let instagram_task =
            testkit::serve_http(instagram, Arc::clone(&state), |state, request| async move {
                answer(&state, request, true).await
            });
        Ok(FakeGraph {
            addr,
            instagram_addr,
            state,
            task,
            instagram_task,
        })
    }

    /// Lets https callbacks whose certificate chains to `ca` pass verification (Meta calls
    /// only https callbacks, with publicly trusted certificates; the test's own CA stands in).
    pub fn trust_callbacks_of(&self, ca: &crate::pki::Ca) {
        self.with(|s| s.callback_roots.push(ca.der()));
    }

    /// Its base URL (without the version).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL of its Instagram host (graph.instagram.com), without the version.
    pub fn instagram_url(&self) -> String {
        format!("http://{}", self.instagram_addr)
    }

    /// Gives an Instagram professional account an Instagram User token (Instagram Login):
    /// it answers only on the Instagram host, and takes Instagram fields.
    pub fn add_instagram_user(&self, id: &str, token: &str) {
        self.with(|s| {
            s.node_tokens.insert(id.to_owned(), token.to_owned());
            s.instagram_users.push(id.to_owned());
        });
    }

    /// Makes lead reads wait until the gate is released (a slow Graph API); the gate
    /// releases them when dropped too.
    pub fn hold_leads(&self) -> LeadGate {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.with(|s| s.lead_gate = Some(gate));
        LeadGate { open }
    }

    /// Lead reads waiting at the gate now.
    pub fn leads_held(&self) -> usize {
        self.with(|s| s.leads_held)
    }

    /// Reads or changes the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Gives a node (Page, Instagram account, WABA) its token.
    pub fn add_node(&self, id: &str, token: &str) {
        self.with(|s| s.node_tokens.insert(id.to_owned(), token.to_owned()));
    }

    /// Gives a WABA (added with [`FakeGraph::add_node`]) a phone number.
    pub fn add_phone(&self, waba_id: &str, phone_id: &str) {
        self.with(|s| {
            s.phones.insert(
                phone_id.to_owned(),
                PhoneNumber {
                    waba_id: waba_id.to_owned(),
                    ..PhoneNumber::default()
                },
            )
        });
    }

    /// A phone number's own callback override.
    pub fn phone_override(&self, phone_id: &str) -> Option<String> {
        self.with(|s| {
            s.phones
                .get(phone_id)
                .and_then(|p| p.override_callback_uri.clone())
        })
    }

    /// Answers lists `size` entries a page (Meta's default is 25).
    pub fn set_page_size(&self, size: usize) {
        self.with(|s| s.page_size = size);
    }

    /// Lists another app on a node's `subscribed_apps`, before this app's entry.
    pub fn add_other_app(&self, node_id: &str, app_id: &str, fields: &[&str]) {
        self.with(|s| {
            s.other_apps.entry(node_id.to_owned()).or_default().push(
                json!({"id": app_id, "name": format!("app {app_id}"), "subscribed_fields": fields}),
            );
        });
    }

    /// Queues a fault.
    pub fn push_fault(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    /// The app's subscription to an object.
    pub fn subscription(&self, object: &str) -> Option<AppSub> {
        self.with(|s| s.subscriptions.get(object).cloned())
    }

    /// The app's edge on a node.
    pub fn edge(&self, id: &str) -> Option<NodeEdge> {
        self.with(|s| s.nodes.get(id).cloned())
    }

    /// The requests so far.
    pub fn log(&self) -> Vec<Logged> {
        self.with(|s| s.log.clone())
    }
}

type Answer = (u16, Value);

async fn answer(
    state: &Arc<Mutex<State>>,
    request: Request<Incoming>,
    instagram: bool,
) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let method = request.method().clone();
    let full_path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(str::to_owned);
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut params: BTreeMap<String, String> = form_pairs(&query);
    let mut json_body = Value::Null;
    if content_type.starts_with("application/json") {
        json_body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    } else if !body.is_empty() {
        params.extend(form_pairs(&String::from_utf8_lossy(&body)));
    }
    let token = bearer.or_else(|| params.get("access_token").cloned());
    let path = full_path
        .strip_prefix(&format!("/{VERSION}"))
        .unwrap_or(&full_path)
        .to_owned();

    let fault = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let position = s
            .faults
            .iter()
            .position(|f| f.method.as_ref().is_none_or(|m| *m == method));
        position.and_then(|i| s.faults.remove(i))
    };
    let (status, reply, headers) = match fault {
        Some(fault) => (fault.status, fault.body, fault.headers),
        None => {
            let (status, reply) = route(
                state,
                &method,
                &path,
                &params,
                &json_body,
                token.as_deref(),
                instagram,
            )
            .await;
            let headers = state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .usage_headers
                .clone();
            (status, reply, headers)
        }
    };
    {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.log.push(Logged {
            method,
            path,
            status,
            at,
            instagram,
        });
    }
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (name, value) in headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Holds lead reads while [`FakeGraph::hold_leads`]'s gate is closed.
#[derive(Debug)]
pub struct LeadGate {
    open: tokio::sync::watch::Sender<bool>,
}

impl LeadGate {
    /// Lets the waiting and later lead reads through.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for LeadGate {
    fn drop(&mut self) {
        self.release();
    }
}

/// Waits while the lead gate is closed, counted in `leads_held`.
async fn held_at_the_gate(state: &Arc<Mutex<State>>) {
    let gate = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .lead_gate
        .clone();
    let Some(mut gate) = gate else {
        return;
    };
    if *gate.borrow() {
        return;
    }
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .leads_held += 1;
    // A dropped gate (its sender gone) lets the read through as well.
    let _ = gate.wait_for(|open| *open).await;
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .leads_held -= 1;
}

/// One page of a list, as Meta answers it: `data`, and `paging` with cursors and a `next`
/// URL while entries remain (`after` is the index of the next entry, `limit` the size).
fn page(s: &State, path: &str, params: &BTreeMap<String, String>, data: &[Value]) -> Value {
    let size = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(if s.page_size == 0 { 25 } else { s.page_size })
        .max(1);
    let start: usize = params
        .get("after")
        .and_then(|a| a.strip_prefix("idx"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let end = (start + size).min(data.len());
    let items: Vec<Value> = data
        .get(start..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut answer = json!({ "data": items });
    if !data.is_empty() {
        answer["paging"] =
            json!({"cursors": {"before": format!("idx{start}"), "after": format!("idx{end}")}});
        if end < data.len() {
            answer["paging"]["next"] = json!(format!(
                "{}/{VERSION}{path}?limit={size}&after=idx{end}",
                s.base_url
            ));
        }
    }
    answer
}

/// Instagram webhook fields that are no Page field: a Page's `subscribed_apps` refuses them.
const INSTAGRAM_ONLY_FIELDS: [&str; 4] =
    ["comments", "live_comments", "mentions", "story_insights"];

fn form_pairs(text: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn invalid_token() -> Answer {
    (
        400,
        meta_error(
            "Invalid OAuth access token - Cannot parse access token",
            "OAuthException",
            190,
            None,
        ),
    )
}

/// Meta's check of `appsecret_proof`: HMAC-SHA256 of the token keyed with the app secret,
/// hex; required when the app requires it.
fn check_proof(s: &State, token: &str, params: &BTreeMap<String, String>) -> Result<(), Answer> {
    use hmac::{Hmac, Mac};
    let refused =
        |message: &str| Err((400, meta_error(message, "GraphMethodException", 100, None)));
    match params.get("appsecret_proof") {
        Some(proof) => {
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(s.app_secret.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
            mac.update(token.as_bytes());
            if hex::encode(mac.finalize().into_bytes()) == *proof {
                Ok(())
            } else {
                refused("Invalid appsecret_proof provided in the API argument")
            }
        }
        None if s.require_appsecret_proof => {
            refused("API calls from the server require an appsecret_proof argument")
        }
        None => Ok(()),
    }
}

fn bad_param(message: &str) -> Answer {
    (
        400,
        meta_error(&format!("(#100) {message}"), "OAuthException", 100, None),
    )
}

fn success() -> Answer {
    (200, json!({"success": true}))
}

fn split_fields(fields: &str) -> Vec<String> {
    fields
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn route(
    state: &Arc<Mutex<State>>,
    method: &Method,
    path: &str,
    params: &BTreeMap<String, String>,
    json_body: &Value,
    token: Option<&str>,
    instagram: bool,
) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // An Instagram User token works on graph.instagram.com only, and that host serves
    // nothing else (a Page token or the app token there is not one Meta can parse).
    let instagram_user = {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        segments
            .first()
            .is_some_and(|id| s.instagram_users.iter().any(|u| u == id))
    };
    if instagram != instagram_user {
        return invalid_token();
    }
    // A Page's subscribed_apps takes Page fields only.
    if !instagram
        && *method == Method::POST
        && matches!(segments.as_slice(), [_, "subscribed_apps"])
        && let Some(field) =
            split_fields(params.get("subscribed_fields").map_or("", String::as_str))
                .into_iter()
                .find(|f| INSTAGRAM_ONLY_FIELDS.contains(&f.as_str()))
    {
        return bad_param(&format!(
            "Param subscribed_fields[0] must be one of {{feed, mention, ratings, leadgen, messages, messaging_postbacks, ...}} - got \"{field}\""
        ));
    }
    let (app_id, app_token, node_token, phone_token) = {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let node_token = segments
            .first()
            .and_then(|id| s.node_tokens.get(*id).cloned());
        // A phone number answers to its WABA's token.
        let phone_token = segments
            .first()
            .and_then(|id| s.phones.get(*id))
            .map(|phone| s.node_tokens.get(&phone.waba_id).cloned());
        (
            s.app_id.clone(),
            format!("{}|{}", s.app_id, s.app_secret),
            node_token,
            phone_token,
        )
    };
    if let Some(token) = token
        && state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expired_tokens
            .iter()
            .any(|t| t == token)
    {
        return (
            400,
            meta_error(
                "Error validating access token: Session has expired on Friday, 04-Dec-26 10:00:00 PST.",
                "OAuthException",
                190,
                Some(463),
            ),
        );
    }
    // Every token but the app's is proved with the app secret.
    let is_app_call = matches!(segments.as_slice(), [id, "subscriptions"] if *id == app_id);
    if !is_app_call && let Some(token) = token {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(answer) = check_proof(&s, token, params) {
            return answer;
        }
    }
    match segments.as_slice() {
        [id, "subscriptions"] if *id == app_id => {
            if token != Some(app_token.as_str()) {
                return invalid_token();
            }
            app_subscriptions(state, method, params).await
        }
        [id, "subscribed_apps"] => {
            if node_token.is_none() || token != node_token.as_deref() {
                return invalid_token();
            }
            subscribed_apps(state, method, id, params, json_body, &app_id).await
        }
        [id] if phone_token.is_some() => {
            if token.is_none() || phone_token.flatten().as_deref() != token {
                return invalid_token();
            }
            phone_number(state, method, id, params, json_body).await
        }
        [id] if *method == Method::GET => {
            held_at_the_gate(state).await;
            lead(state, id, token, params)
        }
        _ => (
            400,
            meta_error("Unknown path components", "OAuthException", 2500, None),
        ),
    }
}

async fn app_subscriptions(
    state: &Arc<Mutex<State>>,
    method: &Method,
    params: &BTreeMap<String, String>,
) -> Answer {
    match *method {
        Method::GET => {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let data: Vec<Value> = s
                .subscriptions
                .iter()
                .map(|(object, sub)| {
                    json!({
                        "object": object,
                        "callback_url": sub.callback_url,
                        "active": sub.active,
                        "fields": sub.fields.iter().map(|f| json!({"name": f, "version": VERSION})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            (
                200,
                page(&s, &format!("/{}/subscriptions", s.app_id), params, &data),
            )
        }
        Method::POST => {
            let (Some(object), Some(callback), Some(verify_token)) = (
                params.get("object"),
                params.get("callback_url"),
                params.get("verify_token"),
            ) else {
                return bad_param("object, callback_url and verify_token are required");
            };
            let fields = split_fields(params.get("fields").map_or("", String::as_str));
            if fields.is_empty() {
                return bad_param("fields is required");
            }
            if let Err(answer) = verify_callback(state, callback, verify_token).await {
                return answer;
            }
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            // The fields listed replace those held: a client that sent only the fields it
            // adds would drop the others (Meta's reference does not promise a merge).
            s.subscriptions.insert(
                object.clone(),
                AppSub {
                    callback_url: callback.clone(),
                    fields,
                    verify_token: verify_token.clone(),
                    active: true,
                },
            );
            // Meta's own sample for this edge answers a string.
            (200, json!({"success": "true"}))
        }
        Method::DELETE => {
            let Some(object) = params.get("object") else {
                return bad_param("object is required");
            };
            let fields = split_fields(params.get("fields").map_or("", String::as_str));
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            if fields.is_empty() {
                s.subscriptions.remove(object);
            } else if let Some(entry) = s.subscriptions.get_mut(object) {
                entry.fields.retain(|f| !fields.contains(f));
                if entry.fields.is_empty() {
                    s.subscriptions.remove(object);
                }
            }
            success()
        }
        _ => bad_param("unsupported method"),
    }
}

async fn subscribed_apps(
    state: &Arc<Mutex<State>>,
    method: &Method,
    id: &str,
    params: &BTreeMap<String, String>,
    json_body: &Value,
    app_id: &str,
) -> Answer {
    let is_waba = !json_body.is_null() || !params.contains_key("subscribed_fields");
    match *method {
        Method::GET => {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let mine = s
                .nodes
                .get(id)
                .map(|edge| {
                    if edge.subscribed_fields.is_empty() {
                        let mut entry = json!({"whatsapp_business_api_data": {"id": app_id, "name": "metahook test app", "link": "https://example.invalid/app"}});
                        if let Some(uri) = &edge.override_callback_uri {
                            entry["override_callback_uri"] = json!(uri);
                        }
                        entry
                    } else {
                        json!({"id": app_id, "name": "metahook test app", "subscribed_fields": edge.subscribed_fields})
                    }
                });
            let data: Vec<Value> = s
                .other_apps
                .get(id)
                .into_iter()
                .flatten()
                .cloned()
                .chain(mine)
                .collect();
            (
                200,
                page(&s, &format!("/{id}/subscribed_apps"), params, &data),
            )
        }
        Method::POST if is_waba => {
            let uri = json_body
                .get("override_callback_uri")
                .and_then(Value::as_str);
            let token = json_body.get("verify_token").and_then(Value::as_str);
            let override_callback_uri = match (uri, token) {
                (Some(uri), Some(token)) => {
                    if uri.len() > 200 {
                        return bad_param("override_callback_uri must be at most 200 characters");
                    }
                    if let Err(answer) = verify_callback(state, uri, token).await {
                        return answer;
                    }
                    Some(uri.to_owned())
                }
                (Some(_), None) => {
                    return bad_param("verify_token is required with override_callback_uri");
                }
                _ => None,
            };
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.nodes.insert(
                id.to_owned(),
                NodeEdge {
                    subscribed_fields: Vec::new(),
                    override_callback_uri,
                },
            );
            success()
        }
        Method::POST => {
            let fields = split_fields(params.get("subscribed_fields").map_or("", String::as_str));
            if fields.is_empty() {
                return bad_param("subscribed_fields must be non-empty");
            }
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.nodes.insert(
                id.to_owned(),
                NodeEdge {
                    subscribed_fields: fields,
                    override_callback_uri: None,
                },
            );
            success()
        }
        Method::DELETE => {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.nodes.remove(id);
            success()
        }
        _ => bad_param("unsupported method"),
    }
}

/// `GET /{phone-number-id}?fields=webhook_configuration` (each level of Meta's override
/// hierarchy, absent when unset) and `POST /{phone-number-id}` with `webhook_configuration`
/// (an `override_callback_uri` is verified against the callback first; an empty one
/// removes the override).
async fn phone_number(
    state: &Arc<Mutex<State>>,
    method: &Method,
    id: &str,
    params: &BTreeMap<String, String>,
    json_body: &Value,
) -> Answer {
    match *method {
        Method::GET => {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(phone) = s.phones.get(id) else {
                return bad_param("unknown phone number");
            };
            let mut answer = json!({"id": id});
            let fields = split_fields(params.get("fields").map_or("", String::as_str));
            if fields.iter().any(|f| f == "webhook_configuration") {
                let mut config = serde_json::Map::new();
                if let Some(uri) = &phone.override_callback_uri {
                    config.insert("phone_number".to_owned(), json!(uri));
                }
                if let Some(uri) = s
                    .nodes
                    .get(&phone.waba_id)
                    .and_then(|edge| edge.override_callback_uri.as_ref())
                {
                    config.insert("whatsapp_business_account".to_owned(), json!(uri));
                }
                if let Some(sub) = s.subscriptions.get("whatsapp_business_account") {
                    config.insert("application".to_owned(), json!(sub.callback_url));
                }
                answer["webhook_configuration"] = Value::Object(config);
            }
            (200, answer)
        }
        Method::POST => {
            let Some(config) = json_body.get("webhook_configuration") else {
                return bad_param("webhook_configuration is required");
            };
            let Some(uri) = config.get("override_callback_uri").and_then(Value::as_str) else {
                return bad_param("webhook_configuration needs override_callback_uri");
            };
            let verify_token = config.get("verify_token").and_then(Value::as_str);
            if !uri.is_empty() {
                let Some(verify_token) = verify_token else {
                    return bad_param("verify_token is required with override_callback_uri");
                };
                if uri.len() > 200 {
                    return bad_param("override_callback_uri must be at most 200 characters");
                }
                if let Err(answer) = verify_callback(state, uri, verify_token).await {
                    return answer;
                }
            }
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(phone) = s.phones.get_mut(id) else {
                return bad_param("unknown phone number");
            };
            if uri.is_empty() {
                phone.override_callback_uri = None;
                phone.verify_token = None;
            } else {
                phone.override_callback_uri = Some(uri.to_owned());
                phone.verify_token = verify_token.map(str::to_owned);
            }
            success()
        }
        _ => bad_param("unsupported method"),
    }
}

fn lead(
    state: &Arc<Mutex<State>>,
    id: &str,
    token: Option<&str>,
    params: &BTreeMap<String, String>,
) -> Answer {
    let s = state.lock().unwrap_or_else(PoisonError::into_inner);
    // ad_id and campaign_id need ads_management beyond leads_retrieval (Meta's guide).
    let fields = split_fields(params.get("fields").map_or("", String::as_str));
    if !s.ads_management
        && let Some(field) = fields.iter().find(|f| *f == "ad_id" || *f == "campaign_id")
    {
        return (
            403,
            meta_error(
                &format!("(#200) Requires ads_management permission to read {field}"),
                "OAuthException",
                200,
                None,
            ),
        );
    }
    let Some((page, lead)) = s.leads.get(id) else {
        return (
            400,
            meta_error(
                &format!("Unsupported get request. Object with ID '{id}' does not exist"),
                "GraphMethodException",
                100,
                Some(33),
            ),
        );
    };
    if token.is_none() || s.node_tokens.get(page).map(String::as_str) != token {
        return invalid_token();
    }
    // Only the fields asked for (and the id), as Meta answers.
    let mut answer = json!({"id": id});
    for field in &fields {
        if let Some(value) = lead.get(field) {
            answer[field] = value.clone();
        }
    }
    (200, answer)
}

/// Meta's verification GET of a callback: `hub.mode=subscribe`, the verify token and a
/// challenge; the callback must answer 200 with the challenge. Only `http://` callbacks
/// (the test receivers); the error is what Meta answers.
async fn verify_callback(
    state: &Arc<Mutex<State>>,
    callback: &str,
    verify_token: &str,
) -> Result<(), Answer> {
    let failed = |detail: String| {
        (
            400,
            meta_error(
                &format!("(#2200) callback verification failed: {detail}"),
                "OAuthException",
                2200,
                Some(1_929_002),
            ),
        )
    };
    // https, checked against the roots a test trusts; plain http for tests of the fake
    // itself (the operator never registers one: Meta calls only https).
    let (rest, transport) = if let Some(rest) = callback.strip_prefix("https://") {
        let roots = state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .callback_roots
            .clone();
        match crate::pki::client_config(&roots, None, crate::pki::Versions::Both) {
            Ok(config) => (rest, crate::bench::client::Transport::Tls(config)),
            Err(error) => return Err(failed(format!("no TLS client: {error:#}"))),
        }
    } else if let Some(rest) = callback.strip_prefix("http://") {
        (rest, crate::bench::client::Transport::Plain)
    } else {
        return Err(failed(format!("not an http(s) URL: {callback}")));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(addr) = authority.parse::<SocketAddr>() else {
        return Err(failed(format!("cannot reach {authority}")));
    };
    let challenge = format!("{:016x}", rand_u64());
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.verify_token", verify_token)
        .append_pair("hub.challenge", &challenge)
        .finish();
    let separator = if path.contains('?') { '&' } else { '?' };
    let target = format!(
        "{}{separator}{query}",
        if path.is_empty() { "/" } else { path }
    );
    match testkit::request_over(addr, &transport, Method::GET, &target, &[], Bytes::new()).await {
        Ok(reply) if reply.status == StatusCode::OK && reply.text() == challenge => Ok(()),
        Ok(reply) => Err(failed(format!(
            "Callback verification failed with the following errors: HTTP Status Code = {}; HTTP Message = {}",
            reply.status.as_u16(),
            reply.status.canonical_reason().unwrap_or("")
        ))),
        Err(error) => Err(failed(format!("Couldn't connect to server: {error:#}"))),
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
