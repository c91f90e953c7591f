//! The reconcile loop: read what the builders need, apply what they produce with
//! server-side apply, publish Events, write status.
//!
//! A spec that breaks one of the CRD's rules ([`crate::spec_check`], the operator's own
//! evaluation of them) is refused before any request: `Ready` False, `InvalidSpec`.
//!
//! One pass, in order, one file a step, each returning a named struct (each step's
//! requests are fixed, so the mock-API tests script them):
//! 0. [`policy`]: what the subscription may reach (the image, ingress annotations and
//!    host, the callback's host; a LIST of the namespace's Ingresses when it wants one);
//!    a refusal ends the pass with `Ready` False and nothing written; then
//!    [`ownership`]: who holds each name the subscription manages (a GET each); one held
//!    by someone else ends the pass as a `Conflict` that changed nothing, and every later
//!    write or delete goes through the claims made here (uid preconditions, no force but
//!    an adoption's and [`autoscaling`]'s take-back of `spec.replicas`); autoscaling asked
//!    of a cluster without the HorizontalPodAutoscaler API is refused here too;
//! 1. [`token`]: the generated verify token (GET, then apply) when `verifyTokenRef` is
//!    absent; the admin token (applied only when step 0 found none of the
//!    subscription's);
//! 2. [`secrets`]: every referenced Secret (GET each, in name order); missing ones end the
//!    pass with `SecretsResolved=False` naming them, leaving running receivers untouched;
//! 3. [`tls`]: the namespace CA (GET, created if absent) and the serving certificate (GET,
//!    re-issued when absent, for other names or CA, or past two thirds of its lifetime);
//! 4. [`children`]: the ConfigMap, the workload (with [`autoscaling`]: its
//!    HorizontalPodAutoscaler first, and its replica count handed to or taken back from
//!    the autoscaler), the Service, then Ingress, ServiceMonitor and PodDisruptionBudget
//!    (applied when wanted, deleted when not; the HorizontalPodAutoscaler deleted last);
//! 5. [`registration`]: registration with Meta's Graph API (spec.registration), once the
//!    receiver is ready, behind a finalizer that unregisters on deletion;
//! 6. [`status`]: the status.
//!
//! [`replay`] is a second controller, of WebhookReplays (with `replay_admin.rs`, the
//! receivers' admin endpoint as it calls it).
//!
//! `api.rs` holds the requests the steps share (apply, delete, Events); `discovery.rs`
//! finds the optional APIs the cluster serves.

mod api;
pub mod autoscaling;
pub mod children;
mod discovery;
pub mod drain;
pub mod failures;
mod migration;
pub mod ownership;
pub mod policy;
pub mod registration;
pub mod replay;
mod replay_admin;
pub mod secrets;
pub mod status;
pub mod tls;
pub mod token;

pub use discovery::discover;

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use metahook_backoff::ExponentialBackoff;
use time::OffsetDateTime;

use crate::FIELD_MANAGER;
use crate::crd::{ReceiverModeSpec, WebhookSubscription};
use crate::error::Error;
use crate::graph::{GraphApi, Unconfigured};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::resources::monitoring::Capabilities;
use crate::resources::{self, Inputs};
use crate::spec_check;
use crate::status::{CertificateState, Observed, ReceiverState, Refusal, RegistrationState};
use failures::Failures;

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
    /// How long after a deletion the finalizer keeps trying to unregister from Meta
    /// before it gives up (with an Event naming what it left behind).
    pub unregister_timeout: Duration,
    /// What a subscription may reach: receiver images, ingress annotations, callback
    /// hosts (the `--allowed-*` flags).
    pub policy: Policy,
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
    /// The Graph API client of registration (tests record the calls).
    pub graph: Arc<dyn GraphApi>,
    /// Reads receivers' /metrics (the backlog of a Deployment being replaced).
    pub http: reqwest::Client,
    /// Consecutive failures per subscription, for the error policy's backoff: at most
    /// [`failures::MAX_TRACKED`], forgotten on success and on deletion.
    failures: Mutex<Failures<ObjectRef<WebhookSubscription>>>,
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
            graph: Arc::new(Unconfigured),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
            failures: Mutex::new(Failures::new(failures::MAX_TRACKED)),
        }
    }

    /// Forgets what is remembered about subscriptions that no longer exist.
    pub fn forget_deleted(&self, exists: impl Fn(&ObjectRef<WebhookSubscription>) -> bool) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.retain(|sub| exists(sub));
        }
    }

    /// Forgets what is remembered about one subscription: a pass succeeded, or it was
    /// deleted.
    pub fn forget(&self, sub: &ObjectRef<WebhookSubscription>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.forget(sub);
        }
    }

    /// Forgets a subscription the controller found deleted when its requeue came due (kube's
    /// `ObjectNotFound`, whose reference is type-erased). A subscription that failed always
    /// has a requeue pending, so each one that was deleted is forgotten at most one backoff
    /// (5 min) after its deletion, without waiting for the sweep of [`Context::forget_deleted`].
    pub fn forget_gone(&self, gone: &ObjectRef<kube::core::DynamicObject>) {
        let mut sub = ObjectRef::<WebhookSubscription>::new(&gone.name);
        if let Some(namespace) = &gone.namespace {
            sub = sub.within(namespace);
        }
        self.forget(&sub);
    }

    /// The consecutive failures remembered for `sub` (0 after a success or a deletion).
    pub fn failures_of(&self, sub: &ObjectRef<WebhookSubscription>) -> u32 {
        self.failures
            .lock()
            .map_or(0, |failures| failures.count(sub))
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
            .lock()
            .map(|c| *c)
            .unwrap_or_else(|poisoned| *poisoned.into_inner())
    }
}

/// Reconciles one subscription; counts it and its duration.
pub async fn reconcile(sub: Arc<WebhookSubscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&sub, &ctx).await;
    ctx.metrics
        .reconciled(result.as_ref().map(|_| ()), started.elapsed());
    // A success starts the backoff over; so does a deletion's last pass (the finalizer
    // removed, the object goes).
    if result.is_ok() {
        ctx.forget(&ObjectRef::from_obj(sub.as_ref()));
    }
    result
}

/// The controller's requeue after a failed pass: 5 s doubling to 5 min, without jitter
/// (one leader reconciles, and kube's scheduler already spreads passes).
pub const BACKOFF: ExponentialBackoff =
    ExponentialBackoff::new_const(Duration::from_secs(5), Duration::from_secs(300), 0.0);

/// Retries a failed subscription with exponential backoff ([`BACKOFF`]).
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run wants
pub fn error_policy(sub: Arc<WebhookSubscription>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = match ctx.failures.lock() {
        Ok(mut failures) => failures.record(&ObjectRef::from_obj(sub.as_ref())),
        Err(_) => 1,
    };
    // A rate limit with Meta's estimated_time_to_regain_access: not before that time
    // (an hour or a day for Business Use Case limits), however few the failures.
    let regain = match error {
        Error::Graph(graph) => graph.regain_access,
        _ => None,
    };
    let delay = BACKOFF.delay_honouring(attempts, regain);
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
    BACKOFF.delay(attempts)
}

async fn reconcile_inner(sub: &WebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    if sub.meta().deletion_timestamp.is_some() {
        return registration::finalize(ctx, sub).await;
    }
    let now = (ctx.clock)();
    let name = sub.name_any();
    let namespace = sub
        .namespace()
        .ok_or_else(|| Error::Incomplete(format!("WebhookSubscription {name} has no namespace")))?;
    let violations = spec_check::violations(sub);
    if !violations.is_empty() {
        let refusal = Refusal {
            reason: spec_check::INVALID_SPEC,
            message: violations.join("; "),
        };
        return refuse(ctx, sub, &namespace, refusal, now).await;
    }
    match Box::pin(pass(sub, ctx, &namespace, now)).await {
        Err(Error::Conflict(message)) => {
            let refusal = Refusal {
                reason: CONFLICT,
                message,
            };
            refuse(ctx, sub, &namespace, refusal, now).await
        }
        // The receiver's own validation refused what the spec renders to: the spec's
        // fault, reported as such (not retried as a failure with nothing in the status).
        Err(Error::Config(error)) => {
            let refusal = Refusal {
                reason: spec_check::INVALID_SPEC,
                message: format!("the receiver configuration made from the spec: {error}"),
            };
            refuse(ctx, sub, &namespace, refusal, now).await
        }
        result => result,
    }
}

/// The `Ready` reason of a pass that found an object it may not touch.
pub const CONFLICT: &str = "Conflict";

/// One pass over a subscription that is not being deleted.
async fn pass(
    sub: &WebhookSubscription,
    ctx: &Context,
    namespace: &str,
    now: OffsetDateTime,
) -> Result<Action, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let provisional = Inputs::new(sub, &ctx.settings.receiver_image, None, String::new())?;

    // 0. What the subscription may reach: refused before anything is written.
    if let Some(refusal) = policy::step(ctx, sub, namespace).await? {
        return refuse(ctx, sub, namespace, refusal, now).await;
    }

    // Who holds each name the subscription manages; nothing is written before.
    let claims = ownership::step(ctx, sub, namespace).await?;
    if let Some(refusal) = autoscaling::unavailable(sub, &claims) {
        return refuse(ctx, sub, namespace, refusal, now).await;
    }

    // 1. The verify token, generated once when not given.
    let token = token::step(
        ctx,
        sub,
        &provisional,
        &secrets,
        claims.verify_token.as_ref(),
    )
    .await?;

    token::admin_step(ctx, sub, &provisional, &secrets, &claims.admin_token).await?;

    // 2. Every referenced Secret key.
    let resolved = secrets::step(sub, token, &secrets).await?;
    let mut observed = Observed {
        missing: resolved.missing,
        certificate: CertificateState::Unknown,
        // Until step 4 applies it: the workload as it runs now, if it does.
        receiver: if sub.spec.receiver.mode == ReceiverModeSpec::Sidecar {
            ReceiverState::Sidecar
        } else {
            claims.running_receiver()
        },
        endpoint: None,
        verify_token: Some(provisional.verify_token.clone()),
        registration: waiting_registration(sub),
        refused: None,
        spool: None,
    };
    if !observed.missing.is_empty() {
        let described: Vec<String> = observed
            .missing
            .iter()
            .map(|m| m.describe(namespace))
            .collect();
        api::publish(
            ctx,
            sub,
            EventType::Warning,
            "SecretNotResolved",
            "Resolve",
            described.join("; "),
        )
        .await;
        status::step(ctx, sub, namespace, &observed, now).await?;
        return Ok(Action::requeue(MISSING_SECRET_RETRY));
    }

    // 3. TLS.
    let tls = tls::step(
        ctx,
        sub,
        &provisional,
        &secrets,
        &resolved.data,
        claims.serving_certificate.as_ref(),
        now,
    )
    .await?;
    observed.certificate = tls.certificate;
    if let CertificateState::Failed(message) = &observed.certificate {
        api::publish(
            ctx,
            sub,
            EventType::Warning,
            "CertificateInvalid",
            "Certificate",
            message.clone(),
        )
        .await;
        status::step(ctx, sub, namespace, &observed, now).await?;
        return Ok(Action::requeue(MISSING_SECRET_RETRY));
    }
    let mut requeue = RESYNC;
    if let Some(renew_at) = tls.renew_at {
        let until = (renew_at - now).whole_seconds().max(1);
        requeue = requeue.min(Duration::from_secs(until.unsigned_abs()));
    }
    let mut digest_parts = resolved.digest_parts;
    digest_parts.extend(tls.digest_part);

    // 4. Configuration, workload and the other children.
    let secrets_digest = resources::digest(digest_parts.iter().map(Vec::as_slice));
    let inputs = Inputs::new(
        sub,
        &ctx.settings.receiver_image,
        tls.secret,
        secrets_digest,
    )?;
    let children = Box::pin(children::step(ctx, sub, &inputs, &claims)).await?;
    if !children.settled() {
        requeue = requeue.min(UNSETTLED_RETRY);
    }
    observed.receiver = children.receiver;
    observed.endpoint = children.endpoint;
    observed.spool = Some(children.spool);

    // 5. Registration with the Graph API.
    observed.registration = registration::step(ctx, sub, &observed, &resolved.data, now).await?;

    // 6. Status; a Graph API failure then fails the pass, so the controller backs off.
    status::step(ctx, sub, namespace, &observed, now).await?;
    match observed.registration {
        RegistrationState::GraphFailed { error, .. } => Err(Error::Graph(error)),
        RegistrationState::Waiting { .. } => Ok(Action::requeue(requeue.min(WAIT_FOR_RECEIVER))),
        _ => Ok(Action::requeue(requeue)),
    }
}

/// Re-check after this while a drain or a migration is under way (neither the Jobs nor the
/// pods are watched).
pub const UNSETTLED_RETRY: Duration = Duration::from_secs(30);

/// Re-check a refused subscription after this (the object in its way is not watched:
/// its removal triggers no pass).
pub const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// Ends a pass that changes nothing: a Warning Event with the refusal's reason, and the
/// status with `Ready` False naming what to change.
async fn refuse(
    ctx: &Context,
    sub: &WebhookSubscription,
    namespace: &str,
    refusal: Refusal,
    now: OffsetDateTime,
) -> Result<Action, Error> {
    tracing::warn!(
        subscription = %ObjectRef::from_obj(sub),
        reason = refusal.reason,
        message = %refusal.message,
        "refusing to reconcile"
    );
    api::publish(
        ctx,
        sub,
        EventType::Warning,
        refusal.reason,
        "Reconcile",
        refusal.message.clone(),
    )
    .await;
    let observed = Observed {
        missing: Vec::new(),
        certificate: CertificateState::Unknown,
        receiver: ReceiverState::Unknown,
        endpoint: sub.status.as_ref().and_then(|s| s.endpoint.clone()),
        verify_token: sub.status.as_ref().and_then(|s| s.verify_token.clone()),
        registration: waiting_registration(sub),
        refused: Some(refusal),
        spool: None,
    };
    status::step(ctx, sub, namespace, &observed, now).await?;
    Ok(Action::requeue(REFUSED_RETRY))
}

/// Re-check after this while registration waits for a ready receiver (the workload's
/// status change usually triggers a pass sooner, through the watch).
pub const WAIT_FOR_RECEIVER: Duration = Duration::from_secs(30);

/// The registration state of a pass that ends before step 5: what was registered stays in
/// the status.
fn waiting_registration(sub: &WebhookSubscription) -> RegistrationState {
    let previous = sub.status.as_ref().and_then(|s| s.registration.clone());
    if sub.spec.registration.is_none() && previous.is_none() {
        return RegistrationState::NotRequested;
    }
    RegistrationState::Waiting {
        previous,
        message: "waiting for the receiver's Secrets and certificate".to_owned(),
    }
}
