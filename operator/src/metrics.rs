//! The operator's metrics, and the small HTTP server for /metrics, /healthz and /readyz.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::Error;

/// The statuses a Kubernetes condition can have.
const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// The operator's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    certificate_expiry: GaugeVec,
    /// The (namespace, name) labels of `certificate_expiry`, so deleted subscriptions'
    /// series can be dropped (a stale expiry would fire alerts).
    certificate_labels: Arc<Mutex<BTreeSet<(String, String)>>>,
    subscription_condition: GaugeVec,
    /// The (namespace, name, condition) labels of `subscription_condition`, dropped with
    /// their subscription (a deleted subscription must not stay "not Ready" in alerts).
    condition_labels: Arc<Mutex<BTreeSet<(String, String, String)>>>,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Claims of removed replicas, by state (draining, stalled, kept), per subscription.
    claims: IntGaugeVec,
    /// Events the draining claims still held at their Jobs' last reports.
    drain_events_left: IntGaugeVec,
    /// Drain Jobs that ended, by outcome.
    drains_finished: IntCounterVec,
    /// The (namespace, name) labels of the drain series, dropped with their subscription.
    drain_labels: Arc<Mutex<BTreeSet<(String, String)>>>,
    graph_calls: IntCounterVec,
    graph_usage: GaugeVec,
}

/// The claims of one subscription's removed replicas, as `metahook_operator_claims` and
/// `metahook_operator_drain_events_left` report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainCounts {
    /// Claims not yet drained (stalled ones included).
    pub draining: i32,
    /// Claims whose last Job ran out of attempts with events left.
    pub stalled: i32,
    /// Claims kept for their dead letters.
    pub kept: i32,
    /// Events the draining claims held at their Jobs' last reports.
    pub events_left: i64,
}

/// The states `metahook_operator_claims` counts.
const CLAIM_STATES: [&str; 3] = ["draining", "stalled", "kept"];
/// The outcomes `metahook_operator_drains_total` counts.
const DRAIN_OUTCOMES: [&str; 3] = ["drained", "failed", "cancelled"];

/// Every `outcome` of `metahook_operator_graph_calls_total`: a 2xx answer, Meta's refusal,
/// a rate limit, no answer (or not Meta's shape).
pub const GRAPH_OUTCOMES: [&str; 4] = ["ok", "error", "throttled", "transport"];

impl Metrics {
    /// Registers every series (label values that are known up front start at 0).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "metahook_operator_reconciliations_total",
                "Reconciliations of WebhookSubscriptions, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "metahook_operator_reconcile_errors_total",
                "Failed reconciliations, by reason.",
            ),
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "metahook_operator_reconcile_duration_seconds",
                "Time one reconciliation took.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &[],
        )?;
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "metahook_operator_certificate_expiry_timestamp_seconds",
                "When each subscription's serving certificate expires (Unix time).",
            ),
            &["namespace", "name"],
        )?;
        let subscription_condition = GaugeVec::new(
            Opts::new(
                "metahook_operator_subscription_condition",
                "1 for the current status (True, False, Unknown) of each condition of each \
                 WebhookSubscription, 0 for the other two.",
            ),
            &["namespace", "name", "condition", "status"],
        )?;
        let leader = IntGauge::new(
            "metahook_operator_leader",
            "1 while this replica holds the leader Lease and reconciles.",
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        registry.register(Box::new(subscription_condition.clone()))?;
        let claims = IntGaugeVec::new(
            Opts::new(
                "metahook_operator_claims",
                "PersistentVolumeClaims of removed receiver replicas, by state: draining (a \
                 drain Job delivers what they hold; stalled ones included), stalled (the last \
                 Job ran out of attempts with events left), kept (only dead letters are left).",
            ),
            &["namespace", "name", "state"],
        )?;
        let drain_events_left = IntGaugeVec::new(
            Opts::new(
                "metahook_operator_drain_events_left",
                "Events the claims of removed replicas still held when their drain Jobs last \
                 reported.",
            ),
            &["namespace", "name"],
        )?;
        let drains_finished = IntCounterVec::new(
            Opts::new(
                "metahook_operator_drains_total",
                "Drain Jobs that ended: drained (claim deleted), failed (out of attempts with \
                 events left; replaced), cancelled (the replica came back).",
            ),
            &["namespace", "name", "outcome"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(claims.clone()))?;
        registry.register(Box::new(drain_events_left.clone()))?;
        registry.register(Box::new(drains_finished.clone()))?;
        let graph_calls = IntCounterVec::new(
            Opts::new(
                "metahook_operator_graph_calls_total",
                "Graph API requests of registration (each attempt), by outcome: ok, error \
                 (Meta refused), throttled (a rate limit), transport (no answer or not Meta's).",
            ),
            &["outcome"],
        )?;
        let graph_usage = GaugeVec::new(
            Opts::new(
                "metahook_operator_graph_usage_percent",
                "The latest usage of a Meta rate limit, in percent (the highest of call_count, \
                 total_cputime and total_time): type app for an app (X-App-Usage, id the app id), \
                 else the Business Use Case type (pages, instagram, whatsapp_business_management, \
                 ...) of a business object (X-Business-Use-Case-Usage, id its id).",
            ),
            &["id", "type"],
        )?;
        registry.register(Box::new(graph_calls.clone()))?;
        registry.register(Box::new(graph_usage.clone()))?;
        for outcome in GRAPH_OUTCOMES {
            graph_calls.with_label_values(&[outcome]);
        }
        for result in ["success", "error"] {
            reconciliations.with_label_values(&[result]);
        }
        for reason in Error::METRIC_LABELS {
            errors.with_label_values(&[reason]);
        }
        Ok(Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            certificate_expiry,
            certificate_labels: Arc::default(),
            subscription_condition,
            condition_labels: Arc::default(),
            leader,
            claims,
            drain_events_left,
            drains_finished,
            drain_labels: Arc::default(),
            graph_calls,
            graph_usage,
        })
    }

    /// Counts one reconciliation and its duration.
    pub fn reconciled(&self, result: Result<(), &Error>, took: Duration) {
        self.duration
            .with_label_values::<&str>(&[])
            .observe(took.as_secs_f64());
        match result {
            Ok(()) => self.reconciliations.with_label_values(&["success"]).inc(),
            Err(err) => {
                self.reconciliations.with_label_values(&["error"]).inc();
                self.errors.with_label_values(&[err.metric_label()]).inc();
            }
        }
    }

    /// Records a subscription's certificate expiry.
    pub fn certificate_expires(&self, namespace: &str, name: &str, unix_seconds: i64) {
        self.certificate_expiry
            .with_label_values(&[namespace, name])
            .set(unix_seconds as f64);
        if let Ok(mut labels) = self.certificate_labels.lock() {
            labels.insert((namespace.to_owned(), name.to_owned()));
        }
    }

    /// Forgets a subscription's certificate (deleted, or TLS turned off).
    pub fn forget_certificate(&self, namespace: &str, name: &str) {
        let _ = self
            .certificate_expiry
            .remove_label_values(&[namespace, name]);
        if let Ok(mut labels) = self.certificate_labels.lock() {
            labels.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    /// Records the status of each of a subscription's conditions: the series of its
    /// current status is 1, those of the other two statuses 0, so both "how many are not
    /// Ready" and "since when" are plain PromQL.
    pub fn record_conditions(&self, namespace: &str, name: &str, conditions: &[Condition]) {
        for condition in conditions {
            for status in CONDITION_STATUSES {
                let value = if condition.status == status { 1.0 } else { 0.0 };
                self.subscription_condition
                    .with_label_values(&[namespace, name, &condition.type_, status])
                    .set(value);
            }
            if let Ok(mut labels) = self.condition_labels.lock() {
                labels.insert((
                    namespace.to_owned(),
                    name.to_owned(),
                    condition.type_.clone(),
                ));
            }
        }
    }

    /// Records the claims of a subscription's removed replicas after a pass.
    pub fn drains(&self, namespace: &str, name: &str, counts: DrainCounts) {
        for (state, value) in
            CLAIM_STATES
                .into_iter()
                .zip([counts.draining, counts.stalled, counts.kept])
        {
            self.claims
                .with_label_values(&[namespace, name, state])
                .set(i64::from(value));
        }
        self.drain_events_left
            .with_label_values(&[namespace, name])
            .set(counts.events_left);
        self.remember_drain_labels(namespace, name);
    }

    /// Sets a subscription's drain gauges to nothing left, if they were ever recorded (so
    /// that subscriptions that never drained get no series).
    pub fn drains_cleared(&self, namespace: &str, name: &str) {
        let recorded = self
            .drain_labels
            .lock()
            .is_ok_and(|labels| labels.contains(&(namespace.to_owned(), name.to_owned())));
        if recorded {
            self.drains(namespace, name, DrainCounts::default());
        }
    }

    /// Counts a drain Job that ended with `outcome` (one of [`DRAIN_OUTCOMES`]).
    pub fn drain_finished(&self, namespace: &str, name: &str, outcome: &str) {
        for known in DRAIN_OUTCOMES {
            self.drains_finished
                .with_label_values(&[namespace, name, known]);
        }
        self.drains_finished
            .with_label_values(&[namespace, name, outcome])
            .inc();
        self.remember_drain_labels(namespace, name);
    }

    fn remember_drain_labels(&self, namespace: &str, name: &str) {
        if let Ok(mut labels) = self.drain_labels.lock() {
            labels.insert((namespace.to_owned(), name.to_owned()));
        }
    }

    /// Forgets every per-subscription series (certificate expiry, conditions) of the
    /// subscriptions that no longer exist.
    pub fn retain_subscriptions(&self, exists: impl Fn(&str, &str) -> bool) {
        let gone: Vec<(String, String)> = match self.certificate_labels.lock() {
            Ok(labels) => labels
                .iter()
                .filter(|(namespace, name)| !exists(namespace, name))
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for (namespace, name) in gone {
            self.forget_certificate(&namespace, &name);
        }
        let gone: Vec<(String, String, String)> = match self.condition_labels.lock() {
            Ok(mut labels) => {
                let gone = labels
                    .iter()
                    .filter(|(namespace, name, _)| !exists(namespace, name))
                    .cloned()
                    .collect();
                labels.retain(|(namespace, name, _)| exists(namespace, name));
                gone
            }
            Err(_) => return,
        };
        let gone_drains: Vec<(String, String)> = match self.drain_labels.lock() {
            Ok(mut labels) => {
                let gone = labels
                    .iter()
                    .filter(|(namespace, name)| !exists(namespace, name))
                    .cloned()
                    .collect();
                labels.retain(|(namespace, name)| exists(namespace, name));
                gone
            }
            Err(_) => Vec::new(),
        };
        for (namespace, name) in gone_drains {
            for state in CLAIM_STATES {
                let _ = self.claims.remove_label_values(&[&namespace, &name, state]);
            }
            for outcome in DRAIN_OUTCOMES {
                let _ = self
                    .drains_finished
                    .remove_label_values(&[&namespace, &name, outcome]);
            }
            let _ = self
                .drain_events_left
                .remove_label_values(&[&namespace, &name]);
        }
        for (namespace, name, condition) in gone {
            for status in CONDITION_STATUSES {
                let _ = self
                    .subscription_condition
                    .remove_label_values(&[&namespace, &name, &condition, status]);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Binds the address of /metrics, /healthz and /readyz.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    Ok(listener)
}

/// Serves /metrics, /healthz (alive) and /readyz (`ready` is true) until the task ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = respond(request.uri().path(), &metrics, &ready);
                    async move { Ok::<_, Infallible>(response) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %err, "metrics connection ended");
            }
        });
    }
}

fn respond(path: &str, metrics: &Metrics, ready: &AtomicBool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// The Graph API client's report of each request (graph::GraphObserver).
impl crate::graph::GraphObserver for Metrics {
    /// Counts one Graph API request by outcome (one of [`GRAPH_OUTCOMES`]).
    fn graph_call(&self, outcome: &str) {
        self.graph_calls.with_label_values(&[outcome]).inc();
    }

    /// Records the latest usage Meta reported for an app or a business object's use case.
    /// The ids are those of the spec's apps, Pages and WABAs: a bounded set.
    fn graph_usage(&self, id: &str, kind: &str, percent: f64) {
        self.graph_usage.with_label_values(&[id, kind]).set(percent);
    }
}
