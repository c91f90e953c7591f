//! `operator-bench`: reconciles 1,000 WebhookSubscriptions against an in-process fake
//! Kubernetes API and prints reconciliations/s and the process's peak RSS.
//!
//! The fake API is a tower service handed to `kube::Client::new`: it answers generically by
//! path from an in-memory map keyed by (resource, namespace, name), as an API server would
//! (GET, server-side apply PATCH, POST create, DELETE, the status subresource, Events), and
//! reports apps/v1 workloads as ready at once so subscriptions become Ready. The reconcile
//! function is the operator's own, called with the operator's own `Context`: two passes over
//! every subscription, `--concurrency` at a time like the controller's workers. The first
//! pass creates everything (and issues the certificates), the second finds everything in
//! place (the ten-minute resync).
//!
//! Both the operator and the fake API run in this process, so CPU time and peak RSS include
//! the fake API's JSON work and its store (printed apart). The program prints figures; only a
//! failed reconciliation or a subscription left not Ready makes it exit non-zero.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Bytes;
use kube::Client;
use kube::client::Body;
use metahook_operator::WebhookSubscription;
use metahook_operator::controller::{self, Context, Settings};
use metahook_operator::metrics::Metrics;
use metahook_operator::resources::autoscaling::AutoscalingVersion;
use metahook_operator::resources::monitoring::{Capabilities, PdbVersion};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The target: peak RSS of the process at most 100 MB (10^6 bytes).
const TARGET_MAX_RSS_BYTES: u64 = 100_000_000;

/// The WebhookSubscription resource, as the fake API keys it.
const SUBSCRIPTIONS: &str = "apis/metahook.io/v1alpha1/webhooksubscriptions";
/// The Secret resource.
const SECRETS: &str = "api/v1/secrets";

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "operator-bench",
    about = "Reconciliations per second and peak RSS of metahook-operator against an in-process fake Kubernetes API"
)]
struct Args {
    /// WebhookSubscriptions to reconcile.
    #[arg(long, default_value_t = 1000)]
    subscriptions: usize,
    /// Namespaces they are spread over (one CA each).
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Reconciliations in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

// ---------------------------------------------------------------------------------------
// The fake API.

/// Where a request points: `/api/v1/namespaces/ns/secrets/name` or
/// `/apis/apps/v1/namespaces/ns/deployments/name/status`.
#[derive(Debug)]
struct Target {
    /// `api/v1/secrets`, `apis/apps/v1/deployments`: the map's first key part.
    resource: String,
    /// `secrets`, `deployments`.
    plural: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let prefix = match segments.first() {
            Some(&"api") => 2,
            Some(&"apis") => 3,
            _ => return None,
        };
        let group_version = segments.get(..prefix)?.join("/");
        let mut rest = segments.get(prefix..)?;
        let mut namespace = String::new();
        if rest.len() >= 3 && rest[0] == "namespaces" {
            namespace = rest[1].to_owned();
            rest = &rest[2..];
        }
        let plural = (*rest.first()?).to_owned();
        Some(Target {
            resource: format!("{group_version}/{plural}"),
            plural,
            namespace,
            name: rest.get(1).map(|s| (*s).to_owned()),
            subresource: rest.get(2).map(|s| (*s).to_owned()),
        })
    }
}

type Key = (String, String, String);

/// Requests served, by method, resource and status code.
type Tally = BTreeMap<(String, String, u16), u64>;

/// An in-memory API server. Objects are stored as their JSON bytes (what a GET returns).
#[derive(Debug, Default)]
struct FakeApi {
    objects: Mutex<HashMap<Key, Bytes>>,
    resource_version: AtomicU64,
    uids: AtomicU64,
    requests: AtomicU64,
    /// Nanoseconds spent answering (after the request body was read).
    busy_nanos: AtomicU64,
    tally: Mutex<Tally>,
}

/// An error answer: a metav1 Status.
fn status(code: u16, reason: &str, message: &str) -> (u16, Reply) {
    (
        code,
        Reply::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "reason": reason,
            "code": code,
            "message": message,
        })),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeApi {
    fn get(&self, key: &Key) -> Option<Bytes> {
        lock(&self.objects).get(key).cloned()
    }

    fn put(&self, key: Key, object: &Value) -> Result<Bytes> {
        let bytes = Bytes::from(serde_json::to_vec(object)?);
        lock(&self.objects).insert(key, bytes.clone());
        Ok(bytes)
    }

    /// Server fields: uid and creationTimestamp kept from `existing` (else new), a new
    /// resourceVersion, the namespace of the path.
    fn fill_metadata(&self, object: &mut Value, existing: Option<&Value>, namespace: &str) {
        let kept = |field: &str| {
            existing
                .and_then(|e| e.pointer(&format!("/metadata/{field}")))
                .cloned()
        };
        let uid = kept("uid").unwrap_or_else(|| {
            let n = self.uids.fetch_add(1, Ordering::Relaxed) + 1;
            json!(format!("00000000-0000-4000-8000-{n:012x}"))
        });
        let created = kept("creationTimestamp").unwrap_or_else(|| json!("2026-01-01T00:00:00Z"));
        let version = self.resource_version.fetch_add(1, Ordering::Relaxed) + 1;
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        meta["resourceVersion"] = json!(version.to_string());
        if !namespace.is_empty() {
            meta["namespace"] = json!(namespace);
        }
    }

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let apply = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let started = Instant::now();
        let target = Target::parse(&path);
        let (code, reply) = match &target {
            Some(target) => self
                .answer(&method, target, apply, &body)
                .unwrap_or_else(|err| status(500, "InternalError", &format!("{path}: {err:#}"))),
            None => status(404, "NotFound", &format!("{path}: not an API path")),
        };
        let reply = match reply {
            Reply::Stored(bytes) => bytes,
            Reply::Json(value) => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let plural = target.map_or_else(|| path.clone(), |t| t.plural);
        *lock(&self.tally)
            .entry((method.to_string(), plural, code))
            .or_default() += 1;
        let mut response = Response::new(Body::from(reply));
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(took, Ordering::Relaxed);
        response
    }

    fn answer(
        &self,
        method: &Method,
        target: &Target,
        apply: bool,
        body: &[u8],
    ) -> Result<(u16, Reply)> {
        let namespace = target.namespace.as_str();
        let not_found = |name: &str| {
            status(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", target.plural),
            )
        };
        // Events are published, never read back: echo them.
        if target.plural == "events" {
            let mut event: Value = serde_json::from_slice(body)?;
            self.fill_metadata(&mut event, None, namespace);
            let code = if *method == Method::POST { 201 } else { 200 };
            return Ok((code, Reply::Json(event)));
        }
        let key_of = |name: &str| {
            (
                target.resource.clone(),
                namespace.to_owned(),
                name.to_owned(),
            )
        };
        match (
            method,
            target.name.as_deref(),
            target.subresource.as_deref(),
        ) {
            (&Method::GET, Some(name), None) => Ok(match self.get(&key_of(name)) {
                Some(bytes) => (200, Reply::Stored(bytes)),
                None => not_found(name),
            }),
            // A namespace's LIST (the policy step reads its Ingresses).
            (&Method::GET, None, None) => {
                let objects = lock(&self.objects);
                let mut items = objects
                    .iter()
                    .filter(|(key, _)| key.0 == target.resource && key.1 == namespace)
                    .map(|(key, bytes)| Ok((key.2.clone(), serde_json::from_slice(bytes)?)))
                    .collect::<Result<Vec<(String, Value)>>>()?;
                items.sort_by(|a, b| a.0.cmp(&b.0));
                let items: Vec<Value> = items.into_iter().map(|(_, item)| item).collect();
                Ok((
                    200,
                    Reply::Json(json!({
                        "apiVersion": "v1",
                        "kind": "List",
                        "metadata": {"resourceVersion": "1"},
                        "items": items,
                    })),
                ))
            }
            (&Method::PATCH, Some(name), Some("status")) => {
                let key = key_of(name);
                let Some(stored) = self.get(&key) else {
                    return Ok(not_found(name));
                };
                let mut object: Value = serde_json::from_slice(&stored)?;
                let patch: Value = serde_json::from_slice(body)?;
                object["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
                let existing = object.clone();
                self.fill_metadata(&mut object, Some(&existing), namespace);
                Ok((200, Reply::Stored(self.put(key, &object)?)))
            }
            (&Method::PATCH, Some(name), None) if apply => {
                let key = key_of(name);
                let existing: Option<Value> = self
                    .get(&key)
                    .map(|bytes| serde_json::from_slice(&bytes))
                    .transpose()?;
                let mut object: Value = serde_json::from_slice(body)?;
                self.fill_metadata(&mut object, existing.as_ref(), namespace);
                if target.resource == "apis/apps/v1/deployments"
                    || target.resource == "apis/apps/v1/statefulsets"
                {
                    // The pods came up at once.
                    let replicas = object
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    object["status"] = json!({
                        "observedGeneration": 1,
                        "replicas": replicas,
                        "readyReplicas": replicas,
                        "availableReplicas": replicas,
                        "updatedReplicas": replicas,
                    });
                }
                let code = if existing.is_some() { 200 } else { 201 };
                Ok((code, Reply::Stored(self.put(key, &object)?)))
            }
            (&Method::POST, None, None) => {
                let mut object: Value = serde_json::from_slice(body)?;
                let name = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let key = key_of(&name);
                if self.get(&key).is_some() {
                    return Ok(status(
                        409,
                        "AlreadyExists",
                        &format!("{} \"{name}\" already exists", target.plural),
                    ));
                }
                self.fill_metadata(&mut object, None, namespace);
                // Two creators racing: the first insert wins, the second gets 409.
                let bytes = Bytes::from(serde_json::to_vec(&object)?);
                let mut objects = lock(&self.objects);
                if objects.contains_key(&key) {
                    return Ok(status(
                        409,
                        "AlreadyExists",
                        &format!("{} \"{name}\" already exists", target.plural),
                    ));
                }
                objects.insert(key, bytes.clone());
                Ok((201, Reply::Stored(bytes)))
            }
            (&Method::DELETE, Some(name), None) => {
                Ok(match lock(&self.objects).remove(&key_of(name)) {
                    Some(bytes) => (200, Reply::Stored(bytes)),
                    None => not_found(name),
                })
            }
            _ => Ok(status(
                405,
                "MethodNotAllowed",
                &format!("the fake API does not serve {method} {target:?}"),
            )),
        }
    }

    /// Bytes of JSON stored.
    fn stored_bytes(&self) -> usize {
        lock(&self.objects).values().map(Bytes::len).sum()
    }

    /// The stored WebhookSubscriptions, in name order.
    fn subscriptions(&self) -> Result<Vec<WebhookSubscription>> {
        let objects = lock(&self.objects);
        let mut subs = objects
            .iter()
            .filter(|(key, _)| key.0 == SUBSCRIPTIONS)
            .map(|(_, bytes)| serde_json::from_slice(bytes))
            .collect::<Result<Vec<WebhookSubscription>, _>>()?;
        subs.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        Ok(subs)
    }

    /// Takes the request count, answering time and tally since the last call.
    fn take_counts(&self) -> (u64, Duration, Tally) {
        (
            self.requests.swap(0, Ordering::Relaxed),
            Duration::from_nanos(self.busy_nanos.swap(0, Ordering::Relaxed)),
            std::mem::take(&mut *lock(&self.tally)),
        )
    }
}

/// A response body: stored bytes as they are, or a value to serialize.
enum Reply {
    Stored(Bytes),
    Json(Value),
}

// ---------------------------------------------------------------------------------------
// The seed.

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn secret(namespace: &str, name: &str, type_: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(b64(v))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {metahook_operator::policy::REFERENCEABLE_LABEL: "true"},
        },
        "type": type_,
        "data": data,
    })
}

/// What was seeded, for the printout.
#[derive(Debug, Default)]
struct Mix {
    whatsapp: usize,
    page: usize,
    instagram: usize,
    tls: usize,
    ingress: usize,
    spool: usize,
    replicas_2: usize,
    service_monitor: usize,
    verify_token_given: usize,
}

/// Subscription `i` of the mix: three objects in turn; a third with an operator-issued
/// certificate, a quarter behind an Ingress, a fifth with a persistent spool (StatefulSet),
/// a seventh with two replicas (PDB), half with a ServiceMonitor, an eighth with their own
/// verify token (the others get one generated).
fn subscription(i: usize, namespace: &str, mix: &mut Mix) -> Value {
    let (object, fields, sinks, prefix) = match i % 3 {
        0 => {
            mix.whatsapp += 1;
            (
                "whatsapp_business_account",
                json!(["messages"]),
                json!([
                    {"name": "bus", "nats": {"url": "nats://nats.nats:4222", "stream": "META", "createStream": true}},
                    {"name": "db", "postgres": {"urlSecretRef": {"name": "pg-events", "key": "url"}}},
                ]),
                "wa",
            )
        }
        1 => {
            mix.page += 1;
            (
                "page",
                json!(["feed"]),
                json!([
                    {"name": "crm", "http": {"url": "https://crm.internal/meta", "signingSecretRef": {"name": "sink-signing", "key": "hmac"}}},
                ]),
                "fb",
            )
        }
        _ => {
            mix.instagram += 1;
            (
                "instagram",
                json!(["comments"]),
                json!([{"name": "archive", "file": {"name": "events.jsonl"}}]),
                "ig",
            )
        }
    };
    let name = format!("{prefix}-{i:04}");
    let tls = (i / 3).is_multiple_of(3);
    let mut spec = json!({
        "object": object,
        "fields": fields,
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        "delivery": {"mode": "spool", "sinks": sinks},
        "receiver": {"replicas": 1},
        "monitoring": {"serviceMonitor": i.is_multiple_of(2)},
    });
    if tls {
        mix.tls += 1;
        spec["tls"] = json!({"mode": "server"});
    }
    if i % 4 == 1 {
        mix.ingress += 1;
        spec["ingress"] = if tls {
            json!({"host": format!("{name}.hooks.example.com"), "className": "nginx", "tlsTermination": "passthrough"})
        } else {
            json!({"host": format!("{name}.hooks.example.com"), "className": "nginx", "tlsTermination": "ingress", "tlsSecretName": "ingress-tls"})
        };
    }
    if i % 5 == 2 {
        mix.spool += 1;
        spec["delivery"]["spool"] = json!({"size": "1Gi"});
    }
    if i % 7 == 3 {
        mix.replicas_2 += 1;
        spec["receiver"]["replicas"] = json!(2);
    }
    if i.is_multiple_of(2) {
        mix.service_monitor += 1;
    }
    if i % 8 == 5 {
        mix.verify_token_given += 1;
        spec["verifyTokenRef"] = json!({"name": "meta-verify", "key": "verify-token"});
    }
    if i % 10 == 7 {
        spec["previousAppSecretRef"] = json!({"name": "meta-app", "key": "previous-app-secret"});
    }
    json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": spec,
    })
}

/// Stores the namespaces' Secrets and the subscriptions (through the fake API's own code,
/// so they carry uid, resourceVersion and namespace), without counting requests.
fn seed(api: &FakeApi, args: &Args) -> Result<Mix> {
    let namespaces: Vec<String> = (0..args.namespaces)
        .map(|n| format!("tenant-{n:02}"))
        .collect();
    for namespace in &namespaces {
        for secret in [
            secret(
                namespace,
                "meta-app",
                "Opaque",
                &[
                    ("app-secret", "0123456789abcdef0123456789abcdef"),
                    ("previous-app-secret", "fedcba9876543210fedcba9876543210"),
                ],
            ),
            secret(
                namespace,
                "meta-verify",
                "Opaque",
                &[("verify-token", "a-verify-token-chosen-by-the-team")],
            ),
            secret(
                namespace,
                "pg-events",
                "Opaque",
                &[("url", "postgres://metahook:secret@postgres.db:5432/events")],
            ),
            secret(
                namespace,
                "sink-signing",
                "Opaque",
                &[("hmac", "an-hmac-key-for-the-crm-sink")],
            ),
            secret(
                namespace,
                "ingress-tls",
                "kubernetes.io/tls",
                &[("tls.crt", "(public certificate)"), ("tls.key", "(key)")],
            ),
        ] {
            store_new(api, SECRETS, namespace, secret)?;
        }
    }
    let mut mix = Mix::default();
    for i in 0..args.subscriptions {
        let namespace = &namespaces[i % namespaces.len()];
        store_new(
            api,
            SUBSCRIPTIONS,
            namespace,
            subscription(i, namespace, &mut mix),
        )?;
    }
    api.take_counts();
    Ok(mix)
}

fn store_new(api: &FakeApi, resource: &str, namespace: &str, mut object: Value) -> Result<()> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .context("seeded object without a name")?
        .to_owned();
    api.fill_metadata(&mut object, None, namespace);
    api.put((resource.to_owned(), namespace.to_owned(), name), &object)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// Figures of one pass over every subscription.
#[derive(Debug)]
struct Pass {
    label: &'static str,
    reconciled: usize,
    failed: Vec<String>,
    wall: Duration,
    cpu: Option<Duration>,
    requests: u64,
    api_busy: Duration,
    tally: Tally,
}

impl Pass {
    fn per_second(&self) -> f64 {
        self.reconciled as f64 / self.wall.as_secs_f64()
    }

    fn requests_per_reconcile(&self) -> f64 {
        self.requests as f64 / self.reconciled.max(1) as f64
    }

    fn count(&self, method: &str, plural: &str) -> u64 {
        self.tally
            .iter()
            .filter(|((m, p, _), _)| m == method && p == plural)
            .map(|(_, n)| n)
            .sum()
    }
}

async fn run_pass(
    label: &'static str,
    api: &FakeApi,
    ctx: &Arc<Context>,
    concurrency: usize,
) -> Result<Pass> {
    // What the controller's reflector would hold: the subscriptions as stored, with the
    // status of the previous pass.
    let subs: Vec<Arc<WebhookSubscription>> =
        api.subscriptions()?.into_iter().map(Arc::new).collect();
    let reconciled = subs.len();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let results: Vec<(
        String,
        Result<kube::runtime::controller::Action, metahook_operator::Error>,
    )> = futures_util::stream::iter(subs)
        .map(|sub| {
            let ctx = ctx.clone();
            async move {
                let name = format!(
                    "{}/{}",
                    sub.metadata.namespace.as_deref().unwrap_or_default(),
                    sub.metadata.name.as_deref().unwrap_or_default()
                );
                (name, controller::reconcile(sub, ctx).await)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    let failed = results
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|err| format!("{name}: {err}")))
        .collect();
    let (requests, api_busy, tally) = api.take_counts();
    Ok(Pass {
        label,
        reconciled,
        failed,
        wall,
        cpu,
        requests,
        api_busy,
        tally,
    })
}

/// Subscriptions whose stored status is not Ready=True, with their Ready message.
fn not_ready(api: &FakeApi) -> Result<(usize, Vec<String>)> {
    let subs = api.subscriptions()?;
    let total = subs.len();
    let failing = subs
        .iter()
        .filter(|sub| {
            !sub.status
                .as_ref()
                .is_some_and(metahook_operator::status::is_ready)
        })
        .map(|sub| {
            let why = sub
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map_or_else(
                    || "no status".to_owned(),
                    |c| format!("{}: {}", c.reason, c.message),
                );
            format!(
                "{}/{}: {why}",
                sub.metadata.namespace.as_deref().unwrap_or_default(),
                sub.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    Ok((total, failing))
}

/// CPU time of this process (user + system), from /proc/self/stat in clock ticks
/// (USER_HZ, 100 on Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A `VmHWM`-style line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        });
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    format!(
        "nproc {nproc}{}{}",
        model.map(|m| format!(", {m}")).unwrap_or_default(),
        load.map(|l| format!(", load average {l} before the run"))
            .unwrap_or_default()
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_pass_table(passes: &[Pass]) {
    println!(
        "{:<8} {:>8} {:>8} {:>13} {:>9} {:>9} {:>9} {:>11} {:>7}",
        "pass",
        "reconc.",
        "wall s",
        "reconciles/s",
        "requests",
        "req/rec",
        "CPU s",
        "fake API s",
        "Events"
    );
    for pass in passes {
        println!(
            "{:<8} {:>8} {:>8.3} {:>13.1} {:>9} {:>9.1} {:>9} {:>11.3} {:>7}",
            pass.label,
            pass.reconciled,
            pass.wall.as_secs_f64(),
            pass.per_second(),
            pass.requests,
            pass.requests_per_reconcile(),
            pass.cpu
                .map_or_else(|| "n/a".to_owned(), |c| format!("{:.2}", c.as_secs_f64())),
            pass.api_busy.as_secs_f64(),
            pass.count("POST", "events") + pass.count("PATCH", "events"),
        );
    }
    println!(
        "(CPU s: user + system time of the whole process, operator and fake API; fake API s: \
         time the fake API spent answering, included in it)"
    );
    for pass in passes {
        println!();
        println!(
            "{} pass, requests by method, resource and status:",
            pass.label
        );
        for ((method, plural, code), n) in &pass.tally {
            println!(
                "  {method:<6} {plural:<22} {code}  {n:>6}  ({:.2} per reconcile)",
                *n as f64 / pass.reconciled.max(1) as f64
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.subscriptions == 0 || args.namespaces == 0 || args.concurrency == 0 {
        bail!("--subscriptions, --namespaces and --concurrency must be at least 1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let api = Arc::new(FakeApi::default());
    let mix = seed(&api, &args)?;
    let service = tower::service_fn({
        let api = api.clone();
        move |request: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.serve(request).await) }
        }
    });
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::new()?);
    let settings = Settings {
        receiver_image: concat!("metahook-receiver:", env!("CARGO_PKG_VERSION")).to_owned(),
        certificate_lifetime: metahook_operator::certs::SERVING_LIFETIME,
        unregister_timeout: Duration::from_secs(600),
        policy: metahook_operator::policy::Policy::default(),
    };
    // A cluster with the Prometheus Operator, policy/v1 and autoscaling/v2.
    let capabilities = Capabilities {
        service_monitor: true,
        pdb: Some(PdbVersion::V1),
        claim_retention_policy: true,
        autoscaling: Some(AutoscalingVersion::V2),
    };
    let ctx = Arc::new(Context::new(client, metrics, settings, capabilities, None));

    println!(
        "metahook operator benchmark, {}",
        OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default()
    );
    println!("machine: {}", machine());
    println!(
        "{} WebhookSubscriptions in {} namespaces: {} WhatsApp (NATS + PostgreSQL sinks), {} \
         Facebook Page (HTTP sink), {} Instagram (file sink); {} with tls.mode server \
         (operator-issued certificates), {} with an Ingress, {} with a persistent spool \
         (StatefulSet), {} with 2 replicas (PDB), {} with a ServiceMonitor, {} with their own \
         verify token",
        args.subscriptions,
        args.namespaces,
        mix.whatsapp,
        mix.page,
        mix.instagram,
        mix.tls,
        mix.ingress,
        mix.spool,
        mix.replicas_2,
        mix.service_monitor,
        mix.verify_token_given,
    );
    println!(
        "fake Kubernetes API in process (tower service behind kube::Client); {} reconciliations \
         in flight; ServiceMonitor and policy/v1 served",
        args.concurrency
    );
    println!();

    let mut passes = Vec::new();
    let mut not_ready_after = Vec::new();
    for label in ["first", "steady"] {
        let pass = run_pass(label, &api, &ctx, args.concurrency).await?;
        not_ready_after.push(not_ready(&api)?);
        passes.push(pass);
    }
    let peak_kib = status_kib("VmHWM").unwrap_or(0);
    let rss_kib = status_kib("VmRSS").unwrap_or(0);

    print_pass_table(&passes);
    println!();
    for (pass, (total, failing)) in passes.iter().zip(&not_ready_after) {
        println!(
            "after the {} pass: {} of {total} subscriptions Ready=True; {} reconciliations failed",
            pass.label,
            total - failing.len(),
            pass.failed.len()
        );
    }
    let peak_bytes = peak_kib * 1024;
    println!(
        "peak RSS (VmHWM): {:.1} MiB = {:.1} MB (target ≤ {} MB: {}); RSS at the end {:.1} MiB; \
         the fake API holds {:.1} MiB of JSON",
        mib(peak_kib),
        peak_bytes as f64 / 1e6,
        TARGET_MAX_RSS_BYTES / 1_000_000,
        if peak_bytes > 0 && peak_bytes <= TARGET_MAX_RSS_BYTES {
            "met"
        } else {
            "missed"
        },
        mib(rss_kib),
        api.stored_bytes() as f64 / (1024.0 * 1024.0),
    );

    let mut problems = Vec::new();
    for pass in &passes {
        for failure in pass.failed.iter().take(5) {
            problems.push(format!("{} pass: {failure}", pass.label));
        }
    }
    if let Some((_, failing)) = not_ready_after.last() {
        for sub in failing.iter().take(5) {
            problems.push(format!("not Ready: {sub}"));
        }
    }
    if !problems.is_empty() {
        bail!("the run is not valid:\n  {}", problems.join("\n  "));
    }
    Ok(())
}
