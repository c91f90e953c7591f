//! The reconcile loop: read what the builders need, apply what they produce with
//! server-side apply, publish Events, write status.
//!
//! One pass, in order (each step's requests are fixed, so the mock-API tests script them):
//! 1. the generated verify token (GET, then apply) when `verifyTokenRef` is absent;
//! 2. every referenced Secret (GET each, in name order); missing ones end the pass with
//!    `SecretsResolved=False` naming them, leaving running receivers untouched;
//! 3. TLS: the namespace CA (GET, created if absent) and the serving certificate (GET,
//!    re-issued when absent, for other names or CA, or past two thirds of its lifetime);
//! 4. the ConfigMap, the workload, the Service, then Ingress, ServiceMonitor and
//!    PodDisruptionBudget (applied when wanted, deleted when not);
//! 5. the status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use time::OffsetDateTime;

use crate::FIELD_MANAGER;
use crate::certs::{self, CaMaterial};
use crate::crd::{
    CertificateStatus, ReceiverModeSpec, SecretKeyRef, TlsModeSpec, WebhookSubscription,
};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::resources::monitoring::{self, Capabilities, PdbVersion};
use crate::resources::secrets::{
    self as secret_objects, CA_FINGERPRINT_ANNOTATION, CA_SECRET_NAME,
};
use crate::resources::workload::Workload;
use crate::resources::{self, Inputs, VERIFY_TOKEN_KEY};
use crate::status::{self, CertificateState, Missing, Observed, ReceiverState};

/// How often a subscription is reconciled when nothing changes (drift is undone then).
pub const RESYNC: Duration = Duration::from_secs(10 * 60);
/// Retry after a missing Secret (its creation also triggers a pass, through the watch).
pub const MISSING_SECRET_RETRY: Duration = Duration::from_secs(5 * 60);

/// Settings of the operator process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The receiver image when a subscription names none.
    pub receiver_image: String,
    /// Lifetime of the serving certificates the operator issues.
    pub certificate_lifetime: Duration,
}

/// What every reconciliation shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Process settings.
    pub settings: Settings,
    /// Optional APIs the cluster serves.
    pub capabilities: Mutex<Capabilities>,
    /// The clock (tests move it to make certificates due).
    pub clock: Box<dyn Fn() -> OffsetDateTime + Send + Sync>,
    /// Consecutive failures per subscription, for the error policy's backoff.
    failures: Mutex<HashMap<ObjectRef<WebhookSubscription>, u32>>,
    /// Kinds of unwanted children this process deleted or found absent, per subscription,
    /// so later passes skip the DELETE (a fresh process, e.g. a new leader, deletes once).
    absent: Mutex<HashSet<(ObjectRef<WebhookSubscription>, String)>>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context on the real clock.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        capabilities: Capabilities,
        instance: Option<String>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance,
            },
        );
        Context {
            client,
            recorder,
            metrics,
            settings,
            capabilities: Mutex::new(capabilities),
            clock: Box::new(OffsetDateTime::now_utc),
            failures: Mutex::new(HashMap::new()),
            absent: Mutex::new(HashSet::new()),
        }
    }

    /// Forgets what is remembered about subscriptions that no longer exist.
    pub fn forget_deleted(&self, exists: impl Fn(&ObjectRef<WebhookSubscription>) -> bool) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.retain(|sub, _| exists(sub));
        }
        if let Ok(mut absent) = self.absent.lock() {
            absent.retain(|(sub, _)| exists(sub));
        }
    }

    fn known_absent(&self, sub: &ObjectRef<WebhookSubscription>, kind: &str) -> bool {
        self.absent
            .lock()
            .is_ok_and(|absent| absent.contains(&(sub.clone(), kind.to_owned())))
    }

    fn set_absent(&self, sub: &ObjectRef<WebhookSubscription>, kind: &str, absent: bool) {
        if let Ok(mut set) = self.absent.lock() {
            if absent {
                set.insert((sub.clone(), kind.to_owned()));
            } else {
                set.remove(&(sub.clone(), kind.to_owned()));
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
            .lock()
            .map(|c| *c)
            .unwrap_or_else(|poisoned| *poisoned.into_inner())
    }
}

/// Which optional APIs the cluster serves (one request: the API group list).
pub async fn discover(client: &Client) -> Result<Capabilities, Error> {
    let groups = client
        .list_api_groups()
        .await
        .map_err(|e| Error::kube("discover API groups", e))?;
    let mut capabilities = Capabilities::default();
    for group in groups.groups {
        let versions: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
        match group.name.as_str() {
            "monitoring.coreos.com" => capabilities.service_monitor = versions.contains(&"v1"),
            "policy" => {
                capabilities.pdb = if versions.contains(&"v1") {
                    Some(PdbVersion::V1)
                } else if versions.contains(&"v1beta1") {
                    Some(PdbVersion::V1beta1)
                } else {
                    None
                };
            }
            _ => {}
        }
    }
    Ok(capabilities)
}

/// Reconciles one subscription; counts it and its duration.
pub async fn reconcile(sub: Arc<WebhookSubscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&sub, &ctx).await;
    ctx.metrics
        .reconciled(result.as_ref().map(|_| ()), started.elapsed());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(sub.as_ref()));
    }
    result
}

/// Retries a failed subscription with exponential backoff: 5 s doubling to 5 min.
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run wants
pub fn error_policy(sub: Arc<WebhookSubscription>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = match ctx.failures.lock() {
        Ok(mut failures) => {
            let count = failures
                .entry(ObjectRef::from_obj(sub.as_ref()))
                .or_insert(0);
            *count = count.saturating_add(1);
            *count
        }
        Err(_) => 1,
    };
    let delay = backoff(attempts);
    tracing::warn!(
        subscription = %ObjectRef::from_obj(sub.as_ref()),
        error = %error,
        attempts,
        retry_in = ?delay,
        "reconciliation failed"
    );
    Action::requeue(delay)
}

/// The wait before attempt `attempts + 1`.
pub fn backoff(attempts: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Is this the answer of an apply that raced a create of the same object?
///
/// An apply of an absent object is a create on the server, decided by a read first; a
/// create landing in between (a request the client retried after a timeout, another
/// replica, a user) makes it answer 409 AlreadyExists. Kubernetes' generic storage retries
/// that as an update, but not every kind's: 1.20's Services, for one, do not. The object
/// exists by then, so applying again updates it.
fn raced_a_create(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let what = || format!("apply {} {name}", K::kind(&K::DynamicType::default()));
    match api
        .patch(&name, &apply_params(), &Patch::Apply(object))
        .await
    {
        Err(error) if raced_a_create(&error) => {
            tracing::info!(%name, "apply raced a create of the same object; applying again");
            api.patch(&name, &apply_params(), &Patch::Apply(object))
                .await
                .map_err(|e| Error::kube(what(), e))
        }
        result => result.map_err(|e| Error::kube(what(), e)),
    }
}

/// Applies a child kind that is deleted when unwanted, and remembers it is present.
async fn apply_child<K>(
    ctx: &Context,
    sub: &ObjectRef<WebhookSubscription>,
    api: &Api<K>,
    object: &K,
) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let applied = apply(api, object).await?;
    ctx.set_absent(sub, &K::kind(&K::DynamicType::default()), false);
    Ok(applied)
}

async fn apply_dynamic(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    object: &DynamicObject,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let name = object.name_any();
    let mut result = api
        .patch(&name, &apply_params(), &Patch::Apply(object))
        .await;
    if let Err(error) = &result
        && raced_a_create(error)
    {
        tracing::info!(%name, "apply raced a create of the same object; applying again");
        result = api
            .patch(&name, &apply_params(), &Patch::Apply(object))
            .await;
    }
    result.map_err(|e| Error::kube(format!("apply {} {name}", resource.kind), e))?;
    Ok(())
}

/// Deletes an object that is no longer wanted; absent is fine. Skipped when this process
/// already saw it absent for the subscription.
async fn delete_unwanted<K>(
    ctx: &Context,
    sub: &ObjectRef<WebhookSubscription>,
    api: &Api<K>,
    name: &str,
    kind: &'static str,
) -> Result<(), Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    if ctx.known_absent(sub, kind) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            tracing::info!(%name, kind, "deleted an object the subscription no longer wants");
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(Error::kube(format!("delete {kind} {name}"), e)),
    }
    ctx.set_absent(sub, kind, true);
    Ok(())
}

async fn publish(
    ctx: &Context,
    sub: &WebhookSubscription,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    // An Event that cannot be published must not fail the reconciliation.
    if let Err(err) = ctx.recorder.publish(&event, &sub.object_ref(&())).await {
        tracing::warn!(error = %err, reason, "cannot publish Event");
    }
}

async fn reconcile_inner(sub: &WebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    if sub.meta().deletion_timestamp.is_some() {
        // Every child has an owner reference: the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let now = (ctx.clock)();
    let name = sub.name_any();
    let namespace = sub
        .namespace()
        .ok_or_else(|| Error::Incomplete(format!("WebhookSubscription {name} has no namespace")))?;
    let sub_ref = ObjectRef::from_obj(sub);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let provisional = Inputs::new(sub, &ctx.settings.receiver_image, None, String::new())?;

    // 1. The verify token, generated once when not given.
    let mut known = BTreeMap::new();
    if sub.spec.verify_token_ref.is_none() {
        let secret = ensure_verify_token(ctx, sub, &provisional, &secrets).await?;
        known.insert(resources::verify_token_secret_name(&name), secret);
    }

    // 2. Every referenced Secret key.
    let mut refs = provisional.secret_refs();
    if sub.spec.tls.mode != TlsModeSpec::None
        && let Some(user_tls) = &sub.spec.tls.secret_ref
    {
        for key in ["tls.crt", "tls.key"] {
            refs.push(SecretKeyRef {
                name: user_tls.name.clone(),
                key: key.to_owned(),
            });
        }
    }
    if provisional.ingress_terminates()
        && sub.spec.tls.mode == TlsModeSpec::Mutual
        && let Some(ca) = &sub.spec.tls.client_ca_ref
    {
        // ingress-nginx reads the bundle of auth-tls-secret from its ca.crt key.
        refs.push(SecretKeyRef {
            name: ca.name.clone(),
            key: "ca.crt".to_owned(),
        });
    }
    let (missing, mut digest_parts, fetched) = resolve(&secrets, &refs, known).await?;
    let mut observed = Observed {
        missing,
        certificate: CertificateState::Unknown,
        receiver: ReceiverState::Unknown,
        endpoint: None,
        verify_token: Some(provisional.verify_token.clone()),
    };
    if !observed.missing.is_empty() {
        let described: Vec<String> = observed
            .missing
            .iter()
            .map(|m| m.describe(&namespace))
            .collect();
        publish(
            ctx,
            sub,
            EventType::Warning,
            "SecretNotResolved",
            "Resolve",
            described.join("; "),
        )
        .await;
        write_status(ctx, sub, &namespace, &observed, now).await?;
        return Ok(Action::requeue(MISSING_SECRET_RETRY));
    }

    // 3. TLS.
    let mut requeue = RESYNC;
    let tls_secret = match sub.spec.tls.mode {
        TlsModeSpec::None => {
            observed.certificate = CertificateState::NotRequired;
            ctx.metrics.forget_certificate(&namespace, &name);
            None
        }
        _ => match &sub.spec.tls.secret_ref {
            Some(user_tls) => {
                let cert_pem = fetched
                    .get(&user_tls.name)
                    .and_then(|data| data.get("tls.crt"))
                    .cloned()
                    .unwrap_or_default();
                observed.certificate = match certs::inspect(&cert_pem) {
                    Ok(info) => {
                        ctx.metrics.certificate_expires(
                            &namespace,
                            &name,
                            info.not_after.unix_timestamp(),
                        );
                        CertificateState::Ready(CertificateStatus {
                            secret_name: user_tls.name.clone(),
                            not_after: Some(certs::rfc3339(info.not_after)),
                            renew_at: None,
                        })
                    }
                    Err(err) => CertificateState::Failed(format!(
                        "Secret {namespace}/{} key tls.crt: {err}",
                        user_tls.name
                    )),
                };
                Some(user_tls.name.clone())
            }
            None => {
                let (state, renew_at, secret, digest) =
                    ensure_serving_certificate(ctx, sub, &provisional, &secrets, now).await?;
                observed.certificate = state;
                if let Some(renew_at) = renew_at {
                    let until = (renew_at - now).whole_seconds().max(1);
                    requeue = requeue.min(Duration::from_secs(until.unsigned_abs()));
                }
                digest_parts.push(digest);
                Some(secret)
            }
        },
    };
    if let CertificateState::Failed(message) = &observed.certificate {
        publish(
            ctx,
            sub,
            EventType::Warning,
            "CertificateInvalid",
            "Certificate",
            message.clone(),
        )
        .await;
        write_status(ctx, sub, &namespace, &observed, now).await?;
        return Ok(Action::requeue(MISSING_SECRET_RETRY));
    }

    // 4. Configuration and workload.
    let secrets_digest = resources::digest(digest_parts.iter().map(|p| p.as_slice()));
    let inputs = Inputs::new(
        sub,
        &ctx.settings.receiver_image,
        tls_secret,
        secrets_digest,
    )?;
    let config = resources::config::receiver_config(&inputs)?;
    let config_yaml = config.to_yaml()?;
    let config_map = resources::config::config_map(&inputs, &config_yaml)?;
    let config_hash = resources::digest([config_yaml.as_bytes(), inputs.secrets_digest.as_bytes()]);
    apply(
        &Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace),
        &config_map,
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), &namespace);
    let capabilities = ctx.capabilities();
    if sub.spec.receiver.mode == ReceiverModeSpec::Sidecar {
        observed.receiver = ReceiverState::Sidecar;
        delete_unwanted(ctx, &sub_ref, &deployments, &name, "Deployment").await?;
        delete_unwanted(ctx, &sub_ref, &stateful_sets, &name, "StatefulSet").await?;
        delete_unwanted(ctx, &sub_ref, &services, &name, "Service").await?;
    } else {
        observed.receiver = match resources::workload::workload(&inputs, &config_hash)? {
            Workload::Deployment(deployment) => {
                let applied = apply_child(ctx, &sub_ref, &deployments, &deployment).await?;
                delete_unwanted(ctx, &sub_ref, &stateful_sets, &name, "StatefulSet").await?;
                let status = applied.status.unwrap_or_default();
                ReceiverState::Workload {
                    kind: "Deployment",
                    replicas: sub.spec.receiver.replicas,
                    ready_replicas: status.ready_replicas.unwrap_or(0),
                }
            }
            Workload::StatefulSet(stateful_set) => {
                let applied = apply_child(ctx, &sub_ref, &stateful_sets, &stateful_set).await?;
                delete_unwanted(ctx, &sub_ref, &deployments, &name, "Deployment").await?;
                let status = applied.status.unwrap_or_default();
                ReceiverState::Workload {
                    kind: "StatefulSet",
                    replicas: sub.spec.receiver.replicas,
                    ready_replicas: status.ready_replicas.unwrap_or(0),
                }
            }
        };
        apply_child(
            ctx,
            &sub_ref,
            &services,
            &resources::service::service(&inputs)?,
        )
        .await?;
        observed.endpoint = Some(resources::service::endpoint_url(&inputs));
    }
    match resources::ingress::ingress(&inputs)? {
        Some(ingress) if sub.spec.receiver.mode != ReceiverModeSpec::Sidecar => {
            apply_child(ctx, &sub_ref, &ingresses, &ingress).await?;
        }
        _ => delete_unwanted(ctx, &sub_ref, &ingresses, &name, "Ingress").await?,
    }
    if capabilities.service_monitor {
        let resource = monitoring::service_monitor_resource();
        match monitoring::service_monitor(&inputs, capabilities)? {
            Some(object) => {
                apply_dynamic(&ctx.client, &namespace, &resource, &object).await?;
                ctx.set_absent(&sub_ref, "ServiceMonitor", false);
            }
            None => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
                delete_unwanted(ctx, &sub_ref, &api, &name, "ServiceMonitor").await?;
            }
        }
    }
    if let Some(version) = capabilities.pdb {
        let wanted = if sub.spec.receiver.mode == ReceiverModeSpec::Sidecar {
            None
        } else {
            monitoring::pod_disruption_budget(&inputs, capabilities)?
        };
        match wanted {
            Some((resource, object)) => {
                apply_dynamic(&ctx.client, &namespace, &resource, &object).await?;
                ctx.set_absent(&sub_ref, "PodDisruptionBudget", false);
            }
            None => {
                let resource = monitoring::pdb_resource(version);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
                delete_unwanted(ctx, &sub_ref, &api, &name, "PodDisruptionBudget").await?;
            }
        }
    }

    // 5. Status.
    write_status(ctx, sub, &namespace, &observed, now).await?;
    Ok(Action::requeue(requeue))
}

/// Reads the generated verify token, or makes it, and returns its Secret. The Secret is
/// applied when the token is new or the Secret lacks this subscription's owner reference;
/// an existing token is never changed.
async fn ensure_verify_token(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
) -> Result<Secret, Error> {
    let name = resources::verify_token_secret_name(&inputs.name);
    let existing = secrets
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("get Secret {name}"), e))?;
    let token = existing
        .as_ref()
        .and_then(|secret| secret.data.as_ref())
        .and_then(|data| data.get(VERIFY_TOKEN_KEY))
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
        .filter(|token| !token.is_empty());
    let (token, generated) = match token {
        Some(token) => (token, false),
        None => (secret_objects::generate_verify_token(), true),
    };
    let owned = existing.as_ref().is_some_and(|secret| {
        secret
            .owner_references()
            .iter()
            .any(|owner| Some(&owner.uid) == sub.uid().as_ref() && owner.controller == Some(true))
    });
    let desired = secret_objects::verify_token_secret(inputs, &token)?;
    let secret = match existing {
        Some(existing) if owned && !generated => existing,
        _ => {
            apply(secrets, &desired).await?;
            desired
        }
    };
    if generated {
        publish(
            ctx,
            sub,
            EventType::Normal,
            "VerifyTokenGenerated",
            "Create",
            format!(
                "generated the verify token in Secret {}/{name}, key {VERIFY_TOKEN_KEY}",
                inputs.namespace
            ),
        )
        .await;
    }
    Ok(secret)
}

type Fetched = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// GETs each referenced Secret once (in name order; those in `known` were just read or
/// written) and checks its keys. Returns what is missing, the referenced values (for the
/// pods' rollout hash) and the data by Secret.
async fn resolve(
    secrets: &Api<Secret>,
    refs: &[SecretKeyRef],
    mut known: BTreeMap<String, Secret>,
) -> Result<(Vec<Missing>, Vec<Vec<u8>>, Fetched), Error> {
    let mut by_secret: BTreeMap<&str, Vec<&SecretKeyRef>> = BTreeMap::new();
    for reference in refs {
        by_secret
            .entry(reference.name.as_str())
            .or_default()
            .push(reference);
    }
    let mut missing = Vec::new();
    let mut digest_parts = Vec::new();
    let mut fetched = Fetched::new();
    for (name, wanted) in by_secret {
        let secret = match known.remove(name) {
            Some(secret) => Some(secret),
            None => secrets
                .get_opt(name)
                .await
                .map_err(|e| Error::kube(format!("get Secret {name}"), e))?,
        };
        let Some(secret) = secret else {
            for reference in wanted {
                if !missing.iter().any(|m: &Missing| m.reference == *reference) {
                    missing.push(Missing {
                        reference: reference.clone(),
                        secret_absent: true,
                    });
                }
            }
            continue;
        };
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        for (key, value) in secret.string_data.unwrap_or_default() {
            data.insert(key, value.into_bytes());
        }
        let mut sorted = wanted.clone();
        sorted.sort();
        sorted.dedup();
        for reference in sorted {
            if let Some(value) = data.get(&reference.key) {
                digest_parts.push(format!("{}/{}", reference.name, reference.key).into_bytes());
                digest_parts.push(value.clone());
            } else if !missing.iter().any(|m: &Missing| m.reference == *reference) {
                missing.push(Missing {
                    reference: reference.clone(),
                    secret_absent: false,
                });
            }
        }
        fetched.insert(name.to_owned(), data);
    }
    Ok((missing, digest_parts, fetched))
}

/// The namespace CA: read, or created when absent (create, not apply, so two
/// subscriptions reconciled at once cannot both write one: the loser reads the winner's).
async fn ensure_ca(
    secrets: &Api<Secret>,
    namespace: &str,
    now: OffsetDateTime,
) -> Result<CaMaterial, Error> {
    let read = |secret: &Secret| -> Result<CaMaterial, Error> {
        let data = secret.data.as_ref();
        let get = |key: &str| {
            data.and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .ok_or_else(|| {
                    Error::Certificate(format!(
                        "Secret {namespace}/{CA_SECRET_NAME} has no key {key}"
                    ))
                })
        };
        Ok(CaMaterial {
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        })
    };
    if let Some(secret) = secrets
        .get_opt(CA_SECRET_NAME)
        .await
        .map_err(|e| Error::kube(format!("get Secret {CA_SECRET_NAME}"), e))?
    {
        return read(&secret);
    }
    let ca = CaMaterial::generate(namespace, now)?;
    match secrets
        .create(
            &PostParams::default(),
            &secret_objects::ca_secret(namespace, &ca),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(%namespace, "created the namespace's metahook CA");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets
                .get(CA_SECRET_NAME)
                .await
                .map_err(|e| Error::kube(format!("get Secret {CA_SECRET_NAME}"), e))?;
            read(&secret)
        }
        Err(e) => Err(Error::kube(format!("create Secret {CA_SECRET_NAME}"), e)),
    }
}

/// The operator-issued serving certificate: kept while valid for the right names and CA,
/// re-issued otherwise (with an Event). Returns its state, when it renews, its Secret's
/// name and a digest of its content.
async fn ensure_serving_certificate(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
    now: OffsetDateTime,
) -> Result<(CertificateState, Option<OffsetDateTime>, String, Vec<u8>), Error> {
    let ca = ensure_ca(secrets, &inputs.namespace, now).await?;
    let ca_fingerprint = ca.fingerprint()?;
    let secret_name = resources::tls_secret_name(&inputs.name);
    let host = sub.spec.ingress.as_ref().map(|i| i.host.as_str());
    let names = certs::serving_names(&inputs.name, &inputs.namespace, host);
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|e| Error::kube(format!("get Secret {secret_name}"), e))?;
    let existing_cert = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get("tls.crt"))
        .map(|v| v.0.clone());
    let info = existing_cert
        .as_deref()
        .and_then(|pem| certs::inspect(pem).ok());
    let existing_fingerprint = existing
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(CA_FINGERPRINT_ANNOTATION))
        .map(String::as_str);
    let reason = certs::renewal_reason(
        info.as_ref(),
        existing_fingerprint,
        &names,
        &ca_fingerprint,
        now,
    );
    let (not_before, not_after, content) = match reason {
        None => {
            let info = info.ok_or_else(|| {
                Error::Certificate("unreachable: kept certificate has no info".to_owned())
            })?;
            (
                info.not_before,
                info.not_after,
                existing_cert.unwrap_or_default(),
            )
        }
        Some(reason) => {
            let issued = ca.issue(&names, now, ctx.settings.certificate_lifetime)?;
            let secret = secret_objects::serving_secret(inputs, &issued)?;
            // The rollout digest covers tls.crt exactly as stored (leaf and CA), as later
            // passes read it back: digesting the leaf alone here rolled every new
            // receiver a second time on the next pass.
            let stored = secret
                .data
                .as_ref()
                .and_then(|data| data.get("tls.crt"))
                .map(|value| value.0.clone())
                .unwrap_or_default();
            apply(secrets, &secret).await?;
            let renewed = existing.is_some();
            publish(
                ctx,
                sub,
                EventType::Normal,
                if renewed { "CertificateRenewed" } else { "CertificateIssued" },
                "Certificate",
                format!(
                    "{} the serving certificate in Secret {}/{secret_name} ({reason}); valid until {}",
                    if renewed { "renewed" } else { "issued" },
                    inputs.namespace,
                    certs::rfc3339(issued.not_after)
                ),
            )
            .await;
            (issued.not_before, issued.not_after, stored)
        }
    };
    let renew_at = certs::renew_at(not_before, not_after);
    ctx.metrics
        .certificate_expires(&inputs.namespace, &inputs.name, not_after.unix_timestamp());
    let state = CertificateState::Ready(CertificateStatus {
        secret_name: secret_name.clone(),
        not_after: Some(certs::rfc3339(not_after)),
        renew_at: Some(certs::rfc3339(renew_at)),
    });
    Ok((state, Some(renew_at), secret_name, content))
}

async fn write_status(
    ctx: &Context,
    sub: &WebhookSubscription,
    namespace: &str,
    observed: &Observed,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let status = status::build(
        sub.status.as_ref(),
        sub.meta().generation,
        namespace,
        observed,
        now,
    );
    let was_ready = sub.status.as_ref().is_some_and(status::is_ready);
    let ready = status::is_ready(&status);
    let name = sub.name_any();
    let patch = json!({
        "apiVersion": WebhookSubscription::api_version(&()),
        "kind": WebhookSubscription::kind(&()),
        "status": status,
    });
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("apply status of WebhookSubscription {name}"), e))?;
    ctx.metrics
        .record_conditions(namespace, &name, &status.conditions);
    if ready && !was_ready {
        publish(
            ctx,
            sub,
            EventType::Normal,
            "Ready",
            "Reconcile",
            observed
                .endpoint
                .as_ref()
                .map_or_else(|| "ready".to_owned(), |e| format!("receiver ready at {e}")),
        )
        .await;
    }
    Ok(())
}
