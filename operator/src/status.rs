//! The status the operator writes: conditions keyed by type (server-side apply merges
//! them), each with a reason and a message that names what is missing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use time::OffsetDateTime;

use crate::crd::{
    CertificateStatus, ReceiverStatus, RegistrationStatus, SecretKeyRef, SpoolStatus,
    WebhookSubscriptionStatus,
};
use crate::graph::GraphError;

/// All is well: Meta can be pointed at `status.endpoint`.
pub const READY: &str = "Ready";
/// Every referenced Secret and key exists, and each Secret may be referenced.
pub const SECRETS_RESOLVED: &str = "SecretsResolved";
/// The serving certificate exists and is valid (or TLS is off).
pub const CERTIFICATE_READY: &str = "CertificateReady";
/// At least one receiver pod passes its readiness probe.
pub const RECEIVER_AVAILABLE: &str = "ReceiverAvailable";
/// Meta holds the registration spec.registration asks for (only with spec.registration).
pub const REGISTERED: &str = "Registered";
/// Acknowledged events survive what happens to a pod: False for an ephemeral spool.
pub const SPOOL_DURABLE: &str = "SpoolDurable";

/// The `Registered` reason when Meta refuses a token as expired, revoked or invalid (code
/// 190): the message names the Secret key to put a new token in.
pub const TOKEN_EXPIRED: &str = "TokenExpired";

/// Registration with Meta as one pass left it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RegistrationState {
    /// No spec.registration (and nothing left registered).
    #[default]
    NotRequested,
    /// Not attempted yet (the receiver is not ready); the last registration stays.
    Waiting {
        /// What was registered before.
        previous: Option<RegistrationStatus>,
        /// Why it waits.
        message: String,
    },
    /// Meta holds what the spec asks.
    Registered {
        /// What is registered.
        status: RegistrationStatus,
        /// A summary for the condition.
        message: String,
    },
    /// The spec cannot be registered as it is (e.g. an empty token).
    Failed {
        /// What is registered.
        status: RegistrationStatus,
        /// Why.
        message: String,
    },
    /// Not done because it would replace what something else registered (a callback
    /// or override this subscription did not set); nothing of it was written.
    Refused {
        /// What is registered (what was converged before the refusal included).
        status: RegistrationStatus,
        /// The `Registered` reason, e.g. `CallbackOwnedElsewhere`.
        reason: &'static str,
        /// What is in the way and which field allows taking it over.
        message: String,
    },
    /// The Graph API refused or failed; the pass fails after the status is written.
    GraphFailed {
        /// What is registered (partial progress included).
        status: RegistrationStatus,
        /// Meta's message, type and code (no fbtrace_id: see [`GraphError::for_status`]).
        message: String,
        /// The error.
        error: GraphError,
        /// The Secret key whose token Meta refused as expired or revoked (code 190).
        rejected_token: Option<SecretKeyRef>,
    },
}

/// A referenced Secret or key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The reference.
    pub reference: SecretKeyRef,
    /// What is wrong with it.
    pub problem: Unresolved,
}

/// Why a referenced key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// The whole Secret is absent.
    SecretAbsent,
    /// The Secret exists without the key.
    KeyAbsent,
    /// The Secret may not be referenced (its values were not used); the text says why
    /// and how to mark it ([`crate::policy::not_referenceable`]).
    NotReferenceable(String),
}

impl Missing {
    /// "Secret acme/meta-app not found", "Secret acme/meta-app has no key app-secret", or
    /// "Secret acme/db-creds may not be referenced: it is not marked referenceable: ...".
    pub fn describe(&self, namespace: &str) -> String {
        let SecretKeyRef { name, key } = &self.reference;
        match &self.problem {
            Unresolved::SecretAbsent => {
                format!("Secret {namespace}/{name} not found (wanted for key {key})")
            }
            Unresolved::KeyAbsent => format!("Secret {namespace}/{name} has no key {key}"),
            Unresolved::NotReferenceable(why) => {
                format!("Secret {namespace}/{name} may not be referenced: {why}")
            }
        }
    }
}

/// The certificate as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateState {
    /// tls.mode none.
    NotRequired,
    /// In place, issued by the operator.
    Ready(CertificateStatus),
    /// In place, the user's own (`tls.secretRef`): inspected, never issued or renewed.
    Provided(CertificateStatus),
    /// Not usable; the message says why.
    Failed(String),
    /// Not looked at, since something earlier failed.
    Unknown,
}

/// The receiver as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverState {
    /// Runs in the user's pod; the operator does not observe it.
    Sidecar,
    /// The workload's pods.
    Workload {
        /// `Deployment` or `StatefulSet`.
        kind: &'static str,
        /// Wanted pods.
        replicas: i32,
        /// Pods passing /readyz.
        ready_replicas: i32,
    },
    /// Not applied, since something earlier failed.
    Unknown,
}

/// What one reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Missing Secrets or keys (empty when all resolved).
    pub missing: Vec<Missing>,
    /// The certificate.
    pub certificate: CertificateState,
    /// The receiver.
    pub receiver: ReceiverState,
    /// The callback URL.
    pub endpoint: Option<String>,
    /// The verify token's location.
    pub verify_token: Option<SecretKeyRef>,
    /// Registration with Meta.
    pub registration: RegistrationState,
    /// Why the pass refused to change anything (a conflict over an object's ownership, a
    /// policy the spec breaks): `Ready` is False with this reason and message, and the
    /// other conditions stay as the last complete pass left them.
    pub refused: Option<Refusal>,
    /// The spool, the drains and the migration (None before step 4: the status keeps what
    /// the last pass that got there wrote).
    pub spool: Option<SpoolStatus>,
}

/// A pass that changed nothing because the spec, or the cluster around it, may not be
/// acted on as it stands; the user must change the spec or the object named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `Ready` condition's reason, e.g. `Conflict`, `ImageNotAllowed`.
    pub reason: &'static str,
    /// What is wrong and what to do, naming the object or field.
    pub message: String,
}

struct Wanted {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

/// The status for what was observed. Conditions whose status did not change keep their
/// lastTransitionTime from `previous`.
pub fn build(
    previous: Option<&WebhookSubscriptionStatus>,
    generation: Option<i64>,
    namespace: &str,
    observed: &Observed,
    now: OffsetDateTime,
) -> WebhookSubscriptionStatus {
    let secrets = if observed.missing.is_empty() {
        Wanted {
            type_: SECRETS_RESOLVED,
            ok: true,
            reason: "Resolved".to_owned(),
            message: "every referenced Secret key exists".to_owned(),
        }
    } else {
        let described: Vec<String> = observed
            .missing
            .iter()
            .map(|m| m.describe(namespace))
            .collect();
        Wanted {
            type_: SECRETS_RESOLVED,
            ok: false,
            reason: if observed
                .missing
                .iter()
                .any(|m| matches!(m.problem, Unresolved::NotReferenceable(_)))
            {
                "SecretNotReferenceable".to_owned()
            } else if observed
                .missing
                .iter()
                .any(|m| m.problem == Unresolved::SecretAbsent)
            {
                "SecretNotFound".to_owned()
            } else {
                "SecretKeyNotFound".to_owned()
            },
            message: described.join("; "),
        }
    };
    let certificate = match &observed.certificate {
        CertificateState::NotRequired => Wanted {
            type_: CERTIFICATE_READY,
            ok: true,
            reason: "TLSDisabled".to_owned(),
            message: "tls.mode is none: the receiver speaks plain HTTP".to_owned(),
        },
        CertificateState::Provided(cert) => Wanted {
            type_: CERTIFICATE_READY,
            ok: true,
            reason: "Provided".to_owned(),
            message: format!(
                "your certificate in Secret {namespace}/{} (tls.secretRef), valid until {}",
                cert.secret_name,
                cert.not_after.as_deref().unwrap_or("(unknown)")
            ),
        },
        CertificateState::Ready(cert) => Wanted {
            type_: CERTIFICATE_READY,
            ok: true,
            reason: "Issued".to_owned(),
            message: format!(
                "certificate in Secret {namespace}/{} valid until {}",
                cert.secret_name,
                cert.not_after.as_deref().unwrap_or("(unknown)")
            ),
        },
        CertificateState::Failed(message) => Wanted {
            type_: CERTIFICATE_READY,
            ok: false,
            reason: "CertificateInvalid".to_owned(),
            message: message.clone(),
        },
        CertificateState::Unknown => Wanted {
            type_: CERTIFICATE_READY,
            ok: false,
            reason: "Pending".to_owned(),
            message: "waiting for the referenced Secrets".to_owned(),
        },
    };
    let receiver = match &observed.receiver {
        ReceiverState::Sidecar => Wanted {
            type_: RECEIVER_AVAILABLE,
            ok: true,
            reason: "Sidecar".to_owned(),
            message: "receiver.mode is sidecar: it runs in your own pod (docs/sidecar.md)"
                .to_owned(),
        },
        ReceiverState::Workload {
            kind,
            replicas,
            ready_replicas,
        } => Wanted {
            type_: RECEIVER_AVAILABLE,
            ok: *ready_replicas >= 1,
            reason: if *ready_replicas >= 1 {
                "Available".to_owned()
            } else {
                "NoReadyReplicas".to_owned()
            },
            message: format!("{ready_replicas} of {replicas} receiver pods of {kind} ready"),
        },
        ReceiverState::Unknown => Wanted {
            type_: RECEIVER_AVAILABLE,
            ok: false,
            reason: "NotApplied".to_owned(),
            message: "the receiver is not applied until its Secrets and certificate are ready"
                .to_owned(),
        },
    };
    let failing = [&secrets, &certificate, &receiver]
        .into_iter()
        .find(|wanted| !wanted.ok);
    let ready = match failing {
        None => Wanted {
            type_: READY,
            ok: true,
            reason: "Ready".to_owned(),
            message: match &observed.endpoint {
                Some(endpoint) => format!("register {endpoint} with Meta"),
                None => "ready".to_owned(),
            },
        },
        Some(first) => Wanted {
            type_: READY,
            ok: false,
            reason: format!("{}False", first.type_),
            message: first.message.clone(),
        },
    };
    let registered = match &observed.registration {
        RegistrationState::NotRequested => None,
        RegistrationState::Waiting { message, .. } => Some(Wanted {
            type_: REGISTERED,
            ok: false,
            reason: "WaitingForReceiver".to_owned(),
            message: message.clone(),
        }),
        RegistrationState::Registered { message, .. } => Some(Wanted {
            type_: REGISTERED,
            ok: true,
            reason: "Registered".to_owned(),
            message: message.clone(),
        }),
        RegistrationState::Failed { message, .. } => Some(Wanted {
            type_: REGISTERED,
            ok: false,
            reason: "InvalidRegistration".to_owned(),
            message: message.clone(),
        }),
        RegistrationState::Refused {
            reason, message, ..
        } => Some(Wanted {
            type_: REGISTERED,
            ok: false,
            reason: (*reason).to_owned(),
            message: message.clone(),
        }),
        RegistrationState::GraphFailed { message, error, .. } => Some(Wanted {
            type_: REGISTERED,
            ok: false,
            reason: if error.is_rate_limit() {
                "RateLimited".to_owned()
            } else if error.is_token_rejected() {
                TOKEN_EXPIRED.to_owned()
            } else {
                "GraphAPIError".to_owned()
            },
            message: match error.regain_access {
                // Until when, as Meta announced it: the next pass comes then.
                Some(wait) => format!(
                    "throttled by Meta until {} (estimated_time_to_regain_access); retrying then: {message}",
                    rfc3339(now + wait)
                ),
                None => message.clone(),
            },
        }),
    };
    let spool = observed
        .spool
        .clone()
        .or_else(|| previous.and_then(|p| p.spool.clone()));
    let durable = spool.as_ref().map(|spool| spool_durable(&spool.mode));
    let conditions = match &observed.refused {
        None => [ready, secrets, certificate, receiver]
            .into_iter()
            .chain(registered)
            .chain(durable)
            .map(|wanted| condition(previous, generation, wanted, now))
            .collect(),
        Some(refusal) => {
            let ready = Wanted {
                type_: READY,
                ok: false,
                reason: refusal.reason.to_owned(),
                message: refusal.message.clone(),
            };
            // Nothing else was looked at: the other conditions stay as they were.
            let kept = previous
                .into_iter()
                .flat_map(|p| p.conditions.iter())
                .filter(|c| c.type_ != READY)
                .cloned();
            std::iter::once(condition(previous, generation, ready, now))
                .chain(kept)
                .collect()
        }
    };
    let registration = match &observed.registration {
        RegistrationState::NotRequested => None,
        RegistrationState::Waiting { previous, .. } => previous.clone(),
        RegistrationState::Registered { status, .. }
        | RegistrationState::Failed { status, .. }
        | RegistrationState::Refused { status, .. }
        | RegistrationState::GraphFailed { status, .. } => Some(status.clone()),
    };
    WebhookSubscriptionStatus {
        observed_generation: generation,
        endpoint: observed.endpoint.clone(),
        verify_token: observed.verify_token.clone(),
        receiver: match &observed.receiver {
            ReceiverState::Workload {
                replicas,
                ready_replicas,
                ..
            } => Some(ReceiverStatus {
                replicas: *replicas,
                ready_replicas: *ready_replicas,
            }),
            _ => None,
        },
        certificate: match &observed.certificate {
            CertificateState::Ready(cert) | CertificateState::Provided(cert) => Some(cert.clone()),
            _ => None,
        },
        registration,
        spool,
        conditions,
    }
}

/// The `SpoolDurable` condition of a spool mode.
fn spool_durable(mode: &str) -> Wanted {
    let (ok, reason, message) = match mode {
        "ephemeral" => (
            false,
            "EphemeralSpool",
            "spec.delivery.spool.ephemeral is true: each receiver's spool is an emptyDir, so events \
             already acknowledged to Meta are lost when a pod is deleted (rollout, node drain, \
             eviction, scale-down) before its sinks delivered them",
        ),
        "direct" => (
            true,
            "Direct",
            "delivery.mode is direct: Meta is answered once the sinks took the events",
        ),
        "sidecar" => (
            true,
            "Sidecar",
            "the receiver runs in your own pod: its spool is on the volume you give it",
        ),
        _ => (
            true,
            "PersistentVolumeClaims",
            "each receiver's spool is its own PersistentVolumeClaim; a removed replica's is \
             drained by a Job before it is deleted",
        ),
    };
    Wanted {
        type_: SPOOL_DURABLE,
        ok,
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

fn condition(
    previous: Option<&WebhookSubscriptionStatus>,
    generation: Option<i64>,
    wanted: Wanted,
    now: OffsetDateTime,
) -> Condition {
    let status = if wanted.ok { "True" } else { "False" };
    let unchanged = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == wanted.type_))
        .filter(|c| c.status == status);
    let last_transition_time = match unchanged {
        Some(c) => c.last_transition_time.clone(),
        None => Time(timestamp(now)),
    };
    Condition {
        last_transition_time,
        message: wanted.message,
        observed_generation: generation,
        reason: wanted.reason,
        status: status.to_owned(),
        type_: wanted.type_.to_owned(),
    }
}

/// `t` in RFC 3339, whole seconds.
fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A whole-second timestamp (what the API server stores for conditions).
pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_second(t.unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Is the Ready condition True?
pub fn is_ready(status: &WebhookSubscriptionStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}
