//! No hot loop: the controller itself (kube's Controller over the operator's filtered
//! subscription watch, its real reconcile and error policy) runs for a virtual minute
//! against a Graph API that fails every call with a new `fbtrace_id`, as Meta's does, and
//! a mock API server that turns each of the operator's own writes to the subscription
//! (finalizer, status) into a watch event the way the API server does (only when the
//! object changed). Graph calls are counted on tokio's paused clock: a pass must come only
//! from the error policy's backoff (5 s, 10 s, 20 s, ...), never from the operator's own
//! status write (which used to start the next pass at once, every 0.05–0.15 s).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::reflector;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use metahook_operator::WebhookSubscription;
use metahook_operator::controller;
use metahook_operator::graph::{
    AppSubscribe, AppSubscription, Credentials, GraphApi, GraphError, MetaErrorFields,
    NodeSubscribe, SubscribedApp, WebhookConfiguration,
};
use metahook_operator::watch::pass_triggers;
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const NS: &str = "acme";
const CORE: &str = "/api/v1/namespaces/acme";
const APPS: &str = "/apis/apps/v1/namespaces/acme";

/// A Graph API that is down: every call fails with Meta's "service temporarily
/// unavailable" (code 2), each with its own trace id; the calls' times are kept.
#[derive(Default)]
struct DownGraph {
    calls: Mutex<Vec<Instant>>,
}

impl DownGraph {
    fn fail<'a, T: Send + 'a>(
        &'a self,
        call: &str,
    ) -> futures_util::future::BoxFuture<'a, Result<T, GraphError>> {
        let mut calls = self.calls.lock().expect("lock");
        calls.push(Instant::now());
        let error = GraphError {
            call: call.to_owned(),
            status: Some(503),
            message: "(#2) Service temporarily unavailable".to_owned(),
            meta: Some(Box::new(MetaErrorFields {
                kind: Some("OAuthException".to_owned()),
                code: Some(2),
                subcode: None,
                fbtrace_id: Some(format!("Trace{}", calls.len())),
            })),
            regain_access: None,
        };
        Box::pin(async move { Err(error) })
    }
}

type GraphResult<'a, T> = futures_util::future::BoxFuture<'a, Result<T, GraphError>>;

impl GraphApi for DownGraph {
    fn app_subscriptions<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> GraphResult<'a, Vec<AppSubscription>> {
        self.fail("GET /1234/subscriptions")
    }
    fn subscribe_app<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a AppSubscribe,
    ) -> GraphResult<'a, ()> {
        self.fail("POST /1234/subscriptions")
    }
    fn unsubscribe_app<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: &'a [String],
    ) -> GraphResult<'a, ()> {
        self.fail("DELETE /1234/subscriptions")
    }
    fn subscribed_apps<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
    ) -> GraphResult<'a, Vec<SubscribedApp>> {
        self.fail("GET subscribed_apps")
    }
    fn subscribe_node<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
        _: &'a NodeSubscribe,
    ) -> GraphResult<'a, ()> {
        self.fail("POST subscribed_apps")
    }
    fn unsubscribe_node<'a>(&'a self, _: &'a str, _: &'a Credentials) -> GraphResult<'a, ()> {
        self.fail("DELETE subscribed_apps")
    }
    fn phone_webhook_configuration<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
    ) -> GraphResult<'a, WebhookConfiguration> {
        self.fail("GET webhook_configuration")
    }
    fn set_phone_override<'a>(
        &'a self,
        _: &'a str,
        _: &'a Credentials,
        _: &'a str,
        _: &'a str,
    ) -> GraphResult<'a, ()> {
        self.fail("POST webhook_configuration")
    }
    fn remove_phone_override<'a>(&'a self, _: &'a str, _: &'a Credentials) -> GraphResult<'a, ()> {
        self.fail("POST webhook_configuration")
    }
}

fn spec() -> Value {
    json!({
        "object": "whatsapp_business_account",
        "fields": ["messages"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        "delivery": {
            "spool": {"ephemeral": true},
            "sinks": [{"name": "bus", "nats": {"url": "nats://nats.nats:4222"}}],
        },
        "registration": {
            "appId": "1234",
            "callbackURL": "https://hooks.example.com/webhooks/whatsapp",
            "whatsappBusinessAccounts": [{
                "id": "5550001",
                "accessTokenRef": {"name": "wa-system-user", "key": "token"},
            }],
        },
    })
}

/// Every request of a pass, answered alike each time: the names it manages (only its
/// verify token exists), its Secrets, and a ready Deployment.
fn routes() -> Vec<Expect> {
    let token = owned_by(
        secret(
            NS,
            "wa-verify-token",
            &[("verify-token", b"existing-token")],
        ),
        "wa",
    );
    let mut routes = claims_of(
        NS,
        "wa",
        true,
        false,
        &[(format!("{CORE}/secrets/wa-verify-token"), token)],
    );
    routes.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(secret(NS, "meta-app", &[("app-secret", b"s3cret")])),
        ),
        get(
            format!("{CORE}/secrets/wa-system-user"),
            Reply::Object(secret(NS, "wa-system-user", &[("token", b"su-token")])),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 1}))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]);
    // No claims of removed replicas.
    routes.extend(drain_lists(NS, &[], &[]));
    routes
}

/// The most watch events the mock API sends: a hot loop passes in no virtual time, so
/// without a cap it would never let the clock reach the minute's end.
const MAX_WATCH_EVENTS: usize = 200;

/// What the API server saw while the controller ran.
struct Run {
    /// The subscription as the API server holds it at the end.
    stored: Value,
    /// Watch events sent (changes of the object).
    sent: usize,
    /// Status applies.
    status_writes: usize,
    /// When the run started (tokio's paused clock).
    started: Instant,
}

/// Runs the controller over [`spec`] with this Graph API for `seconds` of virtual time.
async fn run_for(graph: Arc<dyn GraphApi>, seconds: u64) -> Run {
    let started = Instant::now();
    let stored = Arc::new(Mutex::new(
        serde_json::to_value(subscription("wa", NS, &spec())).expect("json"),
    ));
    let (events, mut watch) = tokio::sync::mpsc::unbounded_channel::<WebhookSubscription>();
    let sent = Arc::new(Mutex::new(0_usize));
    let status_writes = Arc::new(Mutex::new(0_usize));
    // The API server: an apply that changes the object bumps its resourceVersion and is
    // seen by the watch; one that changes nothing is not.
    let own: OwnApply = {
        let stored = stored.clone();
        let sent = sent.clone();
        let status_writes = status_writes.clone();
        Box::new(move |served: &Served| {
            let mut object = stored.lock().expect("lock");
            let before = object.clone();
            if served.path.ends_with("/status") {
                *status_writes.lock().expect("lock") += 1;
                object["status"] = served.body["status"].clone();
            } else {
                object["metadata"]["finalizers"] = served.body["metadata"]["finalizers"].clone();
            }
            if *object != before {
                let version: u64 = object["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                let mut sent = sent.lock().expect("lock");
                if *sent < MAX_WATCH_EVENTS {
                    *sent += 1;
                    let sub = serde_json::from_value(object.clone()).expect("subscription");
                    events.send(sub).expect("watch open");
                }
            }
            object.clone()
        })
    };
    let (ctx, server) = start_routed(routes(), own, graph, test_now());

    // The watch: the initial list, then every change the API server reports.
    let initial: WebhookSubscription =
        serde_json::from_value(stored.lock().expect("lock").clone()).expect("subscription");
    let listed = futures_util::stream::iter([
        Ok(watcher::Event::Init),
        Ok(watcher::Event::InitApply(initial)),
        Ok(watcher::Event::InitDone),
    ]);
    let changes = futures_util::stream::poll_fn(move |cx| watch.poll_recv(cx))
        .map(|sub| Ok::<_, watcher::Error>(watcher::Event::Apply(sub)));
    let (reader, writer) = reflector::store();
    let subscriptions = listed.chain(changes).reflect(writer).applied_objects();
    let run = Controller::for_stream(pass_triggers(subscriptions), reader)
        .run(controller::reconcile, controller::error_policy, ctx.clone())
        .for_each(|_| async {});
    let ran = tokio::time::timeout(Duration::from_secs(seconds), run).await;
    assert!(ran.is_err(), "the controller ran the whole time");
    server.abort();
    let stored = stored.lock().expect("lock").clone();
    let sent = *sent.lock().expect("lock");
    let status_writes = *status_writes.lock().expect("lock");
    Run {
        stored,
        sent,
        status_writes,
        started,
    }
}

/// The `Registered` condition of a stored object.
fn registered(object: &Value) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Registered"))
        .cloned()
        .expect("Registered condition")
}

#[tokio::test(start_paused = true)]
async fn a_failing_registration_is_retried_at_the_backoff_not_by_its_own_status_writes() {
    let graph = Arc::new(DownGraph::default());
    let run = run_for(graph.clone(), 60).await;
    let calls: Vec<Duration> = graph
        .calls
        .lock()
        .expect("lock")
        .iter()
        .map(|at| at.duration_since(run.started))
        .collect();
    // Passes at 0 s, then after 5 s, 10 s and 20 s of backoff: 0, 5, 15 and 35 s (the next
    // is due at 75 s). Each pass makes one call (the app's subscriptions, refused).
    let seconds: Vec<u64> = calls.iter().map(Duration::as_secs).collect();
    assert_eq!(seconds, [0, 5, 15, 35], "Graph calls at {calls:?}");
    // The statuses written: the first pass's and no other, since nothing in them changes
    // from one failure to the next (no fbtrace_id).
    let registered = registered(&run.stored);
    assert_eq!(registered["reason"], "GraphAPIError");
    assert!(
        !registered["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Trace"),
        "{registered}"
    );
    assert_eq!(run.status_writes, 4, "one status write per pass");
    assert_eq!(
        run.sent, 2,
        "the watch saw the finalizer and the first status, nothing after"
    );
}

/// A Graph API whose Business Use Case limit is exhausted until `until`: every call before
/// then is refused with code 80008 and the minutes left; after it, Meta as
/// [`RecordingGraph`] keeps it.
struct ThrottledGraph {
    until: Instant,
    calls: Mutex<Vec<Instant>>,
    inner: RecordingGraph,
}

impl ThrottledGraph {
    fn gate(&self) -> Result<(), GraphError> {
        let now = Instant::now();
        self.calls.lock().expect("lock").push(now);
        if now >= self.until {
            return Ok(());
        }
        Err(GraphError {
            call: "GET /1234/subscriptions".to_owned(),
            status: Some(400),
            message: "(#80008) There have been too many calls to this WhatsApp Business account."
                .to_owned(),
            meta: Some(Box::new(MetaErrorFields {
                kind: Some("OAuthException".to_owned()),
                code: Some(80_008),
                subcode: Some(2_446_079),
                fbtrace_id: Some("T".to_owned()),
            })),
            regain_access: Some(self.until - now),
        })
    }

    fn through<'a, T: Send + 'a>(&'a self, call: GraphResult<'a, T>) -> GraphResult<'a, T> {
        match self.gate() {
            Ok(()) => call,
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }
}

impl GraphApi for ThrottledGraph {
    fn app_subscriptions<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
    ) -> GraphResult<'a, Vec<AppSubscription>> {
        self.through(self.inner.app_subscriptions(a, b))
    }
    fn subscribe_app<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        c: &'a AppSubscribe,
    ) -> GraphResult<'a, ()> {
        self.through(self.inner.subscribe_app(a, b, c))
    }
    fn unsubscribe_app<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        c: &'a str,
        d: &'a [String],
    ) -> GraphResult<'a, ()> {
        self.through(self.inner.unsubscribe_app(a, b, c, d))
    }
    fn subscribed_apps<'a>(
        &'a self,
        a: &'a str,
        b: &'a Credentials,
    ) -> GraphResult<'a, Vec<SubscribedApp>> {
        self.through(self.inner.subscribed_apps(a, b))
    }
    fn subscribe_node<'a>(
        &'a self,
        a: &'a str,
        b: &'a Credentials,
        c: &'a NodeSubscribe,
    ) -> GraphResult<'a, ()> {
        self.through(self.inner.subscribe_node(a, b, c))
    }
    fn unsubscribe_node<'a>(&'a self, a: &'a str, b: &'a Credentials) -> GraphResult<'a, ()> {
        self.through(self.inner.unsubscribe_node(a, b))
    }
    fn phone_webhook_configuration<'a>(
        &'a self,
        a: &'a str,
        b: &'a Credentials,
    ) -> GraphResult<'a, WebhookConfiguration> {
        self.through(self.inner.phone_webhook_configuration(a, b))
    }
    fn set_phone_override<'a>(
        &'a self,
        a: &'a str,
        b: &'a Credentials,
        c: &'a str,
        d: &'a str,
    ) -> GraphResult<'a, ()> {
        self.through(self.inner.set_phone_override(a, b, c, d))
    }
    fn remove_phone_override<'a>(&'a self, a: &'a str, b: &'a Credentials) -> GraphResult<'a, ()> {
        self.through(self.inner.remove_phone_override(a, b))
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_registration_waits_the_announced_time_then_converges() {
    // Meta announces 30 minutes (estimated_time_to_regain_access) at the first call.
    let graph = Arc::new(ThrottledGraph {
        until: Instant::now() + Duration::from_secs(30 * 60),
        calls: Mutex::new(Vec::new()),
        inner: RecordingGraph::default(),
    });
    // 39 minutes: the converging pass at 30 min requeues at the 10-minute resync.
    let run = run_for(graph.clone(), 39 * 60).await;
    let seconds: Vec<u64> = graph
        .calls
        .lock()
        .expect("lock")
        .iter()
        .map(|at| at.duration_since(run.started).as_secs())
        .collect();
    // One refused call, nothing during the window (not 5 s, 10 s, ... of backoff), then
    // the pass at the announced time: the app's subscription and the WABA's edge.
    assert_eq!(
        seconds,
        [0, 1800, 1800, 1800, 1800],
        "Graph calls at {seconds:?} s"
    );
    assert_eq!(
        graph.inner.calls(),
        [
            // The refused call (the inner record is made before the gate answers).
            "GET /1234/subscriptions".to_owned(),
            "GET /1234/subscriptions".to_owned(),
            "POST /1234/subscriptions object=whatsapp_business_account fields=messages callback_url=https://hooks.example.com/webhooks/whatsapp".to_owned(),
            "GET /5550001/subscribed_apps".to_owned(),
            "POST /5550001/subscribed_apps override=none".to_owned(),
        ]
    );
    let registered = registered(&run.stored);
    assert_eq!(registered["status"], "True", "{registered}");
    assert_eq!(
        run.status_writes, 2,
        "the throttled pass's and the converged one's"
    );
}

/// While throttled, the condition says until when.
#[tokio::test(start_paused = true)]
async fn a_throttled_registration_says_until_when() {
    let graph = Arc::new(ThrottledGraph {
        until: Instant::now() + Duration::from_secs(90 * 60),
        calls: Mutex::new(Vec::new()),
        inner: RecordingGraph::default(),
    });
    let run = run_for(graph.clone(), 60).await;
    assert_eq!(graph.calls.lock().expect("lock").len(), 1);
    let registered = registered(&run.stored);
    assert_eq!(registered["reason"], "RateLimited");
    // test_now() is 2026-09-21T14:13:20Z; 90 minutes later.
    let message = registered["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "throttled by Meta until 2026-09-21T15:43:20Z (estimated_time_to_regain_access); retrying then: GET /1234/subscriptions: HTTP 400: (#80008)"
        ),
        "{message}"
    );
    assert!(
        message.contains("estimated_time_to_regain_access 90 min"),
        "{message}"
    );
}
