//! A scripted mock of the Kubernetes API (kube's tower-test pattern, as in
//! kube-rs/controller-rs): each expected request is asserted by method and path, its body
//! recorded, and answered as the API server would.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use metahook_operator::WebhookSubscription;
use metahook_operator::controller::{Context, Settings};
use metahook_operator::graph::{
    AppSubscribe, AppSubscription, Credentials, GraphApi, GraphError, NodeSubscribe, SubscribedApp,
    WebhookConfiguration,
};
use metahook_operator::metrics::Metrics;
use metahook_operator::resources::monitoring::Capabilities;
use serde_json::{Value, json};
use time::OffsetDateTime;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How one expected request is answered.
pub enum Reply {
    /// 200 with this object.
    Object(Value),
    /// 200 echoing the request body, with server fields (uid, resourceVersion) filled and
    /// this value merged in as `status` when given.
    Echo(Option<Value>),
    /// 201 echoing the request body.
    Created,
    /// 200 with this object, its top-level keys replaced by the request body's (what a
    /// status apply returns: the whole object with the new status).
    Onto(Value),
    /// 200 echoing the request body with server fields filled, and this value merged in
    /// key by key: what the server keeps of its own or of other managers (e.g. the
    /// `spec.replicas` an autoscaler set, which the apply left out).
    Merged(Value),
    /// An API error Status with this code and reason.
    Error(u16, &'static str),
}

/// `patch` merged into `target` key by key (objects recursively, anything else replaced).
pub fn merge_into(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                merge_into(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        _ => *target = patch.clone(),
    }
}

/// One expected request.
pub struct Expect {
    /// GET, PATCH, POST, DELETE.
    pub method: Method,
    /// The URI path, e.g. `/api/v1/namespaces/ns/secrets/name`.
    pub path: String,
    /// The answer.
    pub reply: Reply,
    /// For a PATCH of a child: whether the apply must be forced (only an adoption is, and
    /// the take-back of `spec.replicas` from the operator's autoscaler).
    /// The subscription's own status and finalizer are always forced.
    pub force: bool,
}

/// A request the mock served: method, path and query, and body as JSON (Null if empty).
#[derive(Debug, Clone)]
pub struct Served {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The body.
    pub body: Value,
}

/// Expect a GET.
pub fn get(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        method: Method::GET,
        path: path.into(),
        reply,
        force: false,
    }
}

/// Expect a server-side apply (PATCH) without force (of a child; the subscription's own
/// status and finalizer patches are checked to be forced instead).
pub fn apply(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        method: Method::PATCH,
        path: path.into(),
        reply,
        force: false,
    }
}

/// Expect a forced server-side apply of a child: an adoption.
pub fn adopt(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        force: true,
        ..apply(path, reply)
    }
}

/// Expect a forced server-side apply of a workload's `spec.replicas` alone, by the
/// operator's hand-over field manager: taking the count back from its autoscaler.
pub fn take_back(path: impl Into<String>, reply: Reply) -> Expect {
    adopt(path, reply)
}

/// Expect a create (POST).
pub fn create(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        method: Method::POST,
        path: path.into(),
        reply,
        force: false,
    }
}

/// Expect a DELETE that deletes.
pub fn delete(path: impl Into<String>) -> Expect {
    Expect {
        method: Method::DELETE,
        path: path.into(),
        reply: Reply::Object(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        force: false,
    }
}

/// Expect the policy step's LIST of the namespace's Ingresses (a subscription with
/// spec.ingress), answered with these items.
pub fn ingresses_listed(namespace: &str, items: &[Value]) -> Expect {
    get(
        format!("/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"),
        Reply::Object(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressList",
            "metadata": {"resourceVersion": "5"},
            "items": items,
        })),
    )
}

/// Expect a LIST answered with these items.
pub fn listed(path: impl Into<String>, kind: &str, items: &[Value]) -> Expect {
    get(
        path,
        Reply::Object(json!({
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"resourceVersion": "5"},
            "items": items,
        })),
    )
}

/// Expect the drain step's LISTs of the subscription's claims and drain Jobs.
pub fn drain_lists(namespace: &str, claims: &[Value], jobs: &[Value]) -> Vec<Expect> {
    vec![
        listed(
            format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            claims,
        ),
        listed(
            format!("/apis/batch/v1/namespaces/{namespace}/jobs"),
            "JobList",
            jobs,
        ),
    ]
}

/// Expect the LIST of the subscription's pods.
pub fn pods_listed(namespace: &str, pods: &[Value]) -> Expect {
    listed(
        format!("/api/v1/namespaces/{namespace}/pods"),
        "PodList",
        pods,
    )
}

/// Expect an Event to be published in the namespace.
pub fn event(namespace: &str) -> Expect {
    create(
        format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
        Reply::Created,
    )
}

fn status_body(code: u16, reason: &str, path: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{path}: {reason}"),
        "reason": reason,
        "code": code,
    })
}

fn with_server_fields(mut object: Value, status: Option<Value>) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("uid")
            .or_insert(json!("00000000-0000-0000-0000-00000000c41d"));
        meta.insert("resourceVersion".into(), json!("2"));
    }
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

/// The answer to a request with this body under `reply`.
fn render(reply: &Reply, body: Value, path: &str) -> (u16, Value) {
    match reply {
        Reply::Object(object) => (200, object.clone()),
        Reply::Echo(status) => (200, with_server_fields(body, status.clone())),
        Reply::Created => (201, with_server_fields(body, None)),
        Reply::Onto(object) => {
            let mut object = object.clone();
            if let (Some(target), Some(fields)) = (object.as_object_mut(), body.as_object()) {
                for (key, value) in fields {
                    target.insert(key.clone(), value.clone());
                }
            }
            (200, object)
        }
        Reply::Merged(extra) => {
            let mut object = with_server_fields(body, None);
            merge_into(&mut object, extra);
            (200, object)
        }
        Reply::Error(code, reason) => (*code, status_body(*code, reason, path)),
    }
}

fn response(code: u16, reply: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status code"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(reply).expect("reply JSON")))
        .expect("response")
}

/// The answer of the subscription's own applies (finalizer, status) in a routed mock:
/// given the request, the object as the API server now holds it.
pub type OwnApply = Box<dyn FnMut(&Served) -> Value + Send>;

/// A lenient mock API for running the controller itself: every request is answered by
/// the first route with its method and path, as often as it is asked; Events are
/// accepted (created or patched as a series); the subscription's own applies go to
/// `own`. A request no route answers fails the test.
pub fn start_routed(
    routes: Vec<Expect>,
    mut own: OwnApply,
    graph: Arc<dyn GraphApi>,
    now: OffsetDateTime,
) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let task = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let served = Served {
                method: method.clone(),
                path: path.clone(),
                query,
                body: body.clone(),
            };
            let (code, reply) = if path.starts_with("/apis/events.k8s.io/") {
                let code = if method == Method::POST { 201 } else { 200 };
                (code, with_server_fields(body, None))
            } else if method == Method::PATCH && path.contains("/webhooksubscriptions/") {
                (200, own(&served))
            } else {
                let route = routes
                    .iter()
                    .find(|r| r.method == method && r.path == path)
                    .unwrap_or_else(|| panic!("no route answers {method} {path}"));
                render(&route.reply, body, &path)
            };
            send.send_response(response(code, &reply));
        }
    });
    let mut ctx = Context::new(
        client,
        Arc::new(Metrics::new().expect("metrics")),
        Settings {
            receiver_image: "metahook-receiver:test".to_owned(),
            certificate_lifetime: Duration::from_secs(90 * 24 * 3600),
            unregister_timeout: UNREGISTER_TIMEOUT,
            policy: test_policy(),
        },
        Capabilities::default(),
        Some("test".to_owned()),
    );
    ctx.clock = Box::new(move || now);
    ctx.graph = graph;
    (Arc::new(ctx), task)
}

/// Serves `script` in order on `handle`, recording every request; panics on the first
/// request that differs from the script, and on any request after it.
async fn serve(mut handle: Handle, script: Vec<Expect>, served: Arc<Mutex<Vec<Served>>>) {
    for (step, expect) in script.into_iter().enumerate() {
        let Some((request, send)) = handle.next_request().await else {
            panic!(
                "step {step}: the operator stopped calling the API; expected {} {}",
                expect.method, expect.path
            );
        };
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        served.lock().expect("lock").push(Served {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        assert_eq!(
            (&method, path.as_str()),
            (&expect.method, expect.path.as_str()),
            "step {step}: unexpected request (query {query})"
        );
        if method == Method::PATCH {
            let manager = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("fieldManager="))
                .unwrap_or_default();
            assert!(
                [
                    metahook_operator::FIELD_MANAGER,
                    metahook_operator::resources::autoscaling::HANDOVER_FIELD_MANAGER,
                    metahook_operator::controller::replay::FINALIZER_FIELD_MANAGER,
                ]
                .contains(&manager),
                "step {step}: {path} is not a server-side apply by metahook-operator (or its \
                 replicas hand-over or replay finalizer manager): {query}"
            );
            let own = path.contains("/webhooksubscriptions/") || path.contains("/webhookreplays/");
            let forced = query.contains("force=true");
            assert_eq!(
                forced,
                own || expect.force,
                "step {step}: {path}: only the subscription's own status and finalizer, and an adoption, are forced applies: {query}"
            );
        }
        let (code, reply) = render(&expect.reply, body, &path);
        send.send_response(response(code, &reply));
    }
    // Nothing more may be asked.
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!(
            "unexpected request after the script: {} {}",
            request.method(),
            request.uri()
        );
    }
}

/// An in-memory Graph API: Meta's state (the app's subscriptions, the nodes'
/// subscribed_apps) that the calls read and change, every call recorded, and an optional
/// error answering every call (an unreachable or refusing Graph API).
#[derive(Debug, Default)]
pub struct RecordingGraph {
    calls: Mutex<Vec<String>>,
    /// object → (callback, fields).
    pub app: Mutex<std::collections::BTreeMap<String, (String, Vec<String>)>>,
    /// node id → (app id, subscribed_fields, override).
    pub nodes: Mutex<std::collections::BTreeMap<String, SubscribedApp>>,
    /// phone number id → its own callback override.
    pub phones: Mutex<std::collections::BTreeMap<String, String>>,
    /// When set, every call fails with it.
    pub fail: Mutex<Option<GraphError>>,
}

impl RecordingGraph {
    /// The calls made so far (`POST /APP/subscriptions object=... fields=...`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }

    fn record(&self, call: String) -> Result<(), GraphError> {
        self.calls.lock().expect("lock").push(call);
        match self.fail.lock().expect("lock").clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

type GraphResult<'a, T> = futures_util::future::BoxFuture<'a, Result<T, GraphError>>;

impl GraphApi for RecordingGraph {
    fn app_subscriptions<'a>(
        &'a self,
        app_id: &'a str,
        _: &'a str,
    ) -> GraphResult<'a, Vec<AppSubscription>> {
        let result = self.record(format!("GET /{app_id}/subscriptions")).map(|()| {
            self.app
                .lock()
                .expect("lock")
                .iter()
                .map(|(object, (callback, fields))| {
                    serde_json::from_value(json!({
                        "object": object,
                        "callback_url": callback,
                        "active": true,
                        "fields": fields.iter().map(|f| json!({"name": f, "version": "v23.0"})).collect::<Vec<_>>(),
                    }))
                    .expect("subscription")
                })
                .collect()
        });
        Box::pin(async move { result })
    }

    fn subscribe_app<'a>(
        &'a self,
        app_id: &'a str,
        _: &'a str,
        request: &'a AppSubscribe,
    ) -> GraphResult<'a, ()> {
        let result = self
            .record(format!(
                "POST /{app_id}/subscriptions object={} fields={} callback_url={}",
                request.object,
                request.fields.join(","),
                request.callback_url
            ))
            .map(|()| {
                let mut app = self.app.lock().expect("lock");
                let entry = app.entry(request.object.clone()).or_default();
                entry.0 = request.callback_url.clone();
                for field in &request.fields {
                    if !entry.1.contains(field) {
                        entry.1.push(field.clone());
                    }
                }
            });
        Box::pin(async move { result })
    }

    fn unsubscribe_app<'a>(
        &'a self,
        app_id: &'a str,
        _: &'a str,
        object: &'a str,
        fields: &'a [String],
    ) -> GraphResult<'a, ()> {
        let result = self
            .record(format!(
                "DELETE /{app_id}/subscriptions object={object} fields={}",
                fields.join(",")
            ))
            .map(|()| {
                let mut app = self.app.lock().expect("lock");
                if let Some(entry) = app.get_mut(object) {
                    entry.1.retain(|f| !fields.contains(f));
                    if entry.1.is_empty() || fields.is_empty() {
                        app.remove(object);
                    }
                }
            });
        Box::pin(async move { result })
    }

    fn subscribed_apps<'a>(
        &'a self,
        node_id: &'a str,
        _: &'a Credentials,
    ) -> GraphResult<'a, Vec<SubscribedApp>> {
        let result = self
            .record(format!("GET /{node_id}/subscribed_apps"))
            .map(|()| {
                self.nodes
                    .lock()
                    .expect("lock")
                    .get(node_id)
                    .cloned()
                    .into_iter()
                    .collect()
            });
        Box::pin(async move { result })
    }

    fn subscribe_node<'a>(
        &'a self,
        node_id: &'a str,
        _: &'a Credentials,
        request: &'a NodeSubscribe,
    ) -> GraphResult<'a, ()> {
        let (described, app) = match request {
            NodeSubscribe::Fields(fields) => (
                format!("subscribed_fields={}", fields.join(",")),
                SubscribedApp {
                    app_id: "1234".into(),
                    subscribed_fields: fields.clone(),
                    override_callback_uri: None,
                },
            ),
            NodeSubscribe::Waba { override_callback } => (
                format!(
                    "override={}",
                    override_callback
                        .as_ref()
                        .map_or("none", |(uri, _)| uri.as_str())
                ),
                SubscribedApp {
                    app_id: "1234".into(),
                    subscribed_fields: vec![],
                    override_callback_uri: override_callback.as_ref().map(|(uri, _)| uri.clone()),
                },
            ),
        };
        let result = self
            .record(format!("POST /{node_id}/subscribed_apps {described}"))
            .map(|()| {
                self.nodes
                    .lock()
                    .expect("lock")
                    .insert(node_id.to_owned(), app);
            });
        Box::pin(async move { result })
    }

    fn unsubscribe_node<'a>(&'a self, node_id: &'a str, _: &'a Credentials) -> GraphResult<'a, ()> {
        let result = self
            .record(format!("DELETE /{node_id}/subscribed_apps"))
            .map(|()| {
                self.nodes.lock().expect("lock").remove(node_id);
            });
        Box::pin(async move { result })
    }

    fn phone_webhook_configuration<'a>(
        &'a self,
        phone_id: &'a str,
        _: &'a Credentials,
    ) -> GraphResult<'a, WebhookConfiguration> {
        let result = self
            .record(format!("GET /{phone_id} fields=webhook_configuration"))
            .map(|()| WebhookConfiguration {
                phone_number: self.phones.lock().expect("lock").get(phone_id).cloned(),
                ..WebhookConfiguration::default()
            });
        Box::pin(async move { result })
    }

    fn set_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        _: &'a Credentials,
        callback_uri: &'a str,
        _: &'a str,
    ) -> GraphResult<'a, ()> {
        let result = self
            .record(format!("POST /{phone_id} override={callback_uri}"))
            .map(|()| {
                self.phones
                    .lock()
                    .expect("lock")
                    .insert(phone_id.to_owned(), callback_uri.to_owned());
            });
        Box::pin(async move { result })
    }

    fn remove_phone_override<'a>(
        &'a self,
        phone_id: &'a str,
        _: &'a Credentials,
    ) -> GraphResult<'a, ()> {
        let result = self
            .record(format!("POST /{phone_id} override=none"))
            .map(|()| {
                self.phones.lock().expect("lock").remove(phone_id);
            });
        Box::pin(async move { result })
    }
}

/// A mock API server and a Context whose client talks to it.
pub struct MockApi {
    /// The operator's context.
    pub ctx: Arc<Context>,
    /// The context's Graph API client.
    pub graph: Arc<RecordingGraph>,
    served: Arc<Mutex<Vec<Served>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The finalizer's bound in these tests.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// The time tests run at.
pub fn test_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time")
}

impl MockApi {
    /// Starts serving `script`, with the clock at `now`.
    pub fn start(script: Vec<Expect>, capabilities: Capabilities, now: OffsetDateTime) -> MockApi {
        Self::start_with_graph(script, capabilities, now, None)
    }

    /// [`MockApi::start`] with this Graph API client instead of the recording one (whose
    /// handle `graph` then records nothing).
    pub fn start_with_graph(
        script: Vec<Expect>,
        capabilities: Capabilities,
        now: OffsetDateTime,
        client_override: Option<Arc<dyn GraphApi>>,
    ) -> MockApi {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let served = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(handle, script, served.clone()));
        let mut ctx = Context::new(
            client,
            Arc::new(Metrics::new().expect("metrics")),
            Settings {
                receiver_image: "metahook-receiver:test".to_owned(),
                certificate_lifetime: Duration::from_secs(90 * 24 * 3600),
                unregister_timeout: UNREGISTER_TIMEOUT,
                policy: test_policy(),
            },
            capabilities,
            Some("test".to_owned()),
        );
        ctx.clock = Box::new(move || now);
        let graph = Arc::new(RecordingGraph::default());
        ctx.graph = client_override.unwrap_or_else(|| graph.clone());
        MockApi {
            ctx: Arc::new(ctx),
            graph,
            served,
            task,
        }
    }

    /// Waits until the script is done (panicking like the script did), then returns every
    /// request served.
    pub async fn finish(self) -> Vec<Served> {
        let MockApi {
            ctx, served, task, ..
        } = self;
        drop(ctx);
        if let Err(err) = task.await {
            std::panic::resume_unwind(err.into_panic());
        }
        served.lock().map(|s| s.clone()).expect("lock")
    }
}

/// The body of the `n`th served request with this method and path.
pub fn body_of<'a>(served: &'a [Served], method: &Method, path: &str) -> &'a Value {
    &served
        .iter()
        .find(|s| s.method == *method && s.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} was served"))
        .body
}

/// The callback host the registration tests use.
pub const CALLBACK_HOST: &str = "hooks.example.com";

/// The operator's default policy, with [`CALLBACK_HOST`] allowed as a callback.
pub fn test_policy() -> metahook_operator::policy::Policy {
    metahook_operator::policy::Policy {
        callback_hosts: vec![CALLBACK_HOST.to_owned()],
        ..metahook_operator::policy::Policy::default()
    }
}

/// A subscription as the API server returns it (uid, generation, namespace set).
pub fn subscription(name: &str, namespace: &str, spec: &Value) -> WebhookSubscription {
    serde_json::from_value(json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "11111111-2222-3333-4444-555555555555",
            "generation": 3,
            "resourceVersion": "7",
        },
        "spec": spec,
    }))
    .expect("a valid WebhookSubscription")
}

/// A Secret object with these string keys, marked `metahook.io/referenceable: "true"` as
/// the operator requires of a Secret a subscription references (see [`unmarked`]).
pub fn secret(namespace: &str, name: &str, data: &[(&str, &[u8])]) -> Value {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| {
            (
                (*key).to_owned(),
                json!(base64::engine::general_purpose::STANDARD.encode(value)),
            )
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "secret-uid",
            "resourceVersion": "1",
            "labels": {metahook_operator::policy::REFERENCEABLE_LABEL: "true"},
        },
        "type": "Opaque",
        "data": data,
    })
}

/// `secret` without the referenceable label (as a Secret nobody marked).
pub fn unmarked(mut secret: Value) -> Value {
    if let Some(meta) = secret["metadata"].as_object_mut() {
        meta.remove("labels");
    }
    secret
}

/// Decodes a base64 `data` entry of a Secret body.
pub fn secret_value(secret: &Value, key: &str) -> Vec<u8> {
    use base64::Engine;
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret has no data key {key}: {secret}"));
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64")
}

/// The condition of a type in a status body.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// [`test_now`] as the API's timestamp type.
pub fn test_now_timestamp() -> k8s_openapi::jiff::Timestamp {
    metahook_operator::status::timestamp(test_now())
}

/// `object` as the subscription `name`'s own (as [`subscription`] makes it): a uid of its
/// own, and a controller reference to the subscription's uid.
pub fn owned_by(mut object: Value, name: &str) -> Value {
    let object_name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("object")
        .to_owned();
    object["metadata"]["uid"] = json!(format!("{object_name}-uid"));
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookSubscription",
        "name": name,
        "uid": SUBSCRIPTION_UID,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    object
}

/// The uid of every subscription [`subscription`] makes.
pub const SUBSCRIPTION_UID: &str = "11111111-2222-3333-4444-555555555555";

/// A minimal object of a kind, for step 0's answers.
pub fn object_in(namespace: &str, api_version: &str, kind: &str, name: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "5"},
    })
}

/// Step 0 of a pass of subscription `name` in `namespace`: a GET of each name it manages,
/// in the operator's order (the generated token's and the serving certificate's Secrets
/// only when the spec makes them). Those in `found` (by path) answer with that object, the
/// others 404.
pub fn claims_of(
    namespace: &str,
    name: &str,
    token: bool,
    tls: bool,
    found: &[(String, Value)],
) -> Vec<Expect> {
    let core = format!("/api/v1/namespaces/{namespace}");
    let apps = format!("/apis/apps/v1/namespaces/{namespace}");
    let net = format!("/apis/networking.k8s.io/v1/namespaces/{namespace}");
    let mut paths = vec![format!("{core}/configmaps/{name}-receiver")];
    if token {
        paths.push(format!("{core}/secrets/{name}-verify-token"));
    }
    let admin = format!("{core}/secrets/{name}-admin-token");
    paths.push(admin.clone());
    if tls {
        paths.push(format!("{core}/secrets/{name}-tls"));
    }
    paths.extend([
        format!("{apps}/deployments/{name}"),
        format!("{apps}/statefulsets/{name}"),
        format!("{core}/services/{name}"),
        format!("{net}/ingresses/{name}"),
    ]);
    paths
        .into_iter()
        .map(|path| {
            let reply = match found.iter().find(|(at, _)| *at == path) {
                // `null`: absent (for the admin token, which is otherwise found).
                Some((_, Value::Null)) => Reply::Error(404, "NotFound"),
                Some((_, object)) => Reply::Object(object.clone()),
                // The admin token exists unless a test says otherwise (it is made once).
                None if path == admin => Reply::Object(admin_token_secret(namespace, name)),
                None => Reply::Error(404, "NotFound"),
            };
            get(path, reply)
        })
        .collect()
}

/// The admin token's Secret as an earlier pass of subscription `name` left it.
pub fn admin_token_secret(namespace: &str, name: &str) -> Value {
    owned_by(
        secret(
            namespace,
            &format!("{name}-admin-token"),
            &[("admin-token", b"admin-s3cret")],
        ),
        name,
    )
}

/// Reconciles `sub` once against `script`, with no optional APIs and the clock at
/// [`test_now`]; returns the pass's result and every request served.
pub async fn reconcile_once(
    sub: WebhookSubscription,
    script: Vec<Expect>,
) -> (
    Result<kube::runtime::controller::Action, metahook_operator::Error>,
    Vec<Served>,
) {
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let result = metahook_operator::controller::reconcile(Arc::new(sub), api.ctx.clone()).await;
    (result, api.finish().await)
}
