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
        "delivery": {"sinks": [{"name": "bus", "nats": {"url": "nats://nats.nats:4222"}}]},
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
    routes
}

/// The most watch events the mock API sends: a hot loop passes in no virtual time, so
/// without a cap it would never let the clock reach the minute's end.
const MAX_WATCH_EVENTS: usize = 200;

#[tokio::test(start_paused = true)]
async fn a_failing_registration_is_retried_at_the_backoff_not_by_its_own_status_writes() {
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
        let events = events.clone();
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
    let graph = Arc::new(DownGraph::default());
    let (ctx, server) = start_routed(routes(), own, graph.clone(), test_now());

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
    let started = Instant::now();
    let run = Controller::for_stream(pass_triggers(subscriptions), reader)
        .run(controller::reconcile, controller::error_policy, ctx.clone())
        .for_each(|_| async {});
    let minute = tokio::time::timeout(Duration::from_secs(60), run).await;
    assert!(minute.is_err(), "the controller ran the whole minute");
    server.abort();

    let calls: Vec<Duration> = graph
        .calls
        .lock()
        .expect("lock")
        .iter()
        .map(|at| at.duration_since(started))
        .collect();
    // Passes at 0 s, then after 5 s, 10 s and 20 s of backoff: 0, 5, 15 and 35 s (the next
    // is due at 75 s). Each pass makes one call (the app's subscriptions, refused).
    let seconds: Vec<u64> = calls.iter().map(Duration::as_secs).collect();
    assert_eq!(seconds, [0, 5, 15, 35], "Graph calls at {calls:?}");
    // The statuses written: the first pass's and no other, since nothing in them changes
    // from one failure to the next (no fbtrace_id).
    let status = stored.lock().expect("lock")["status"].clone();
    let registered = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Registered"))
        .cloned()
        .expect("Registered condition");
    assert_eq!(registered["reason"], "GraphAPIError");
    assert!(
        !registered["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Trace"),
        "{registered}"
    );
    assert_eq!(
        *status_writes.lock().expect("lock"),
        4,
        "one status write per pass"
    );
    assert_eq!(
        *sent.lock().expect("lock"),
        2,
        "the watch saw the finalizer and the first status, nothing after"
    );
}
