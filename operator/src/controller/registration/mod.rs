//! Step 5: registration with Meta's Graph API (spec.registration), behind a finalizer so a
//! deleted subscription is unregistered before the API server removes it.
//!
//! Each pass reads Meta's current state (GET) and changes only what differs from the
//! spec: the app's subscription to the object (callback URL, verify token, fields), the
//! `subscribed_apps` edge of each Page, Instagram account or WhatsApp Business Account, the
//! WABAs' callback overrides and their phone numbers' overrides. What the operator
//! registered is kept in
//! `status.registration`; only that is ever changed or removed, so fields or edges made by
//! hand or by another subscription stay untouched. Nothing is registered until the
//! receiver is ready, since Meta verifies the callback at once.
//!
//! One file a job: [`desired`] (what the spec wants Meta to hold, tokens resolved), [`diff`]
//! (comparing with what Meta holds and changing only the difference), [`finalizer`] (the
//! finalizer and unregistration on deletion); this module runs the step of a pass.

mod desired;
mod diff;
mod finalizer;

pub use desired::{Desired, DesiredNode, SecretData, requested, token_digest};
pub use diff::{Converged, Tokens, converge, describe_left, remove_nodes, unregister};
pub use finalizer::FINALIZER;
pub(super) use finalizer::finalize;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::controller::Context;
use crate::controller::api::{get_secret, publish};
use crate::crd::WebhookSubscription;
use crate::crd::{RegistrationStatus, SecretKeyRef};
use crate::error::Error;
use crate::graph::GraphError;
use crate::status::{Observed, ReceiverState, RegistrationState};
use desired::secret_text;
use finalizer::{has_finalizer, set_finalizer};

pub use crate::graph::Unconfigured;

/// The `Registered` reason of a callback, WABA override or phone number override that
/// something other than this subscription set, which it does not replace unless
/// `spec.registration.takeOverCallback` says so.
pub const CALLBACK_OWNED_ELSEWHERE: &str = "CallbackOwnedElsewhere";

fn rfc3339(now: OffsetDateTime) -> String {
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The tokens `status` needs, read from `data`.
fn tokens_from(status: &RegistrationStatus, data: &SecretData) -> Tokens {
    let mut refs: Vec<&SecretKeyRef> = status.app_secret_ref.iter().collect();
    refs.extend(status.pages.iter().map(|p| &p.access_token_ref));
    refs.extend(
        status
            .whatsapp_business_accounts
            .iter()
            .map(|w| &w.access_token_ref),
    );
    refs.into_iter()
        .filter_map(|r| secret_text(data, r).map(|t| (r.clone(), t)))
        .collect()
}

/// Registers, converges or unregisters (when spec.registration went away) during a pass.
/// Returns the state for the status; a Graph API failure is in the state, and the caller
/// fails the pass after writing the status so the controller backs off.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    observed: &Observed,
    data: &SecretData,
    now: OffsetDateTime,
) -> Result<RegistrationState, Error> {
    let previous = sub.status.as_ref().and_then(|s| s.registration.clone());
    let Some(spec) = requested(sub) else {
        if !has_finalizer(sub) {
            return Ok(RegistrationState::NotRequested);
        }
        // spec.registration was removed: unregister what is recorded, then let go.
        let mut status = previous.unwrap_or_default();
        let tokens = tokens_from(&status, &fetch_secrets(ctx, sub, &status).await?);
        let mut changes = Vec::new();
        return match unregister(ctx.graph.as_ref(), &mut status, &tokens, &mut changes).await {
            Ok(()) => {
                publish_changes(ctx, sub, "Unregistered", &changes).await;
                set_finalizer(ctx, sub, false).await?;
                Ok(RegistrationState::NotRequested)
            }
            Err(error) => failed(ctx, sub, status, error).await,
        };
    };
    let ready = match &observed.receiver {
        ReceiverState::Sidecar => true,
        ReceiverState::Workload { ready_replicas, .. } => *ready_replicas >= 1,
        ReceiverState::Unknown => false,
    };
    if !ready {
        return Ok(RegistrationState::Waiting {
            previous,
            message: "waiting for a ready receiver: Meta verifies the callback at once".to_owned(),
        });
    }
    let verify_token = observed
        .verify_token
        .clone()
        .ok_or_else(|| Error::Incomplete("the verify token's location is unknown".to_owned()))?;
    let desired = match Desired::build(sub, spec, observed.endpoint.as_deref(), &verify_token, data)
    {
        Ok(desired) => desired,
        Err(message) => {
            return Ok(RegistrationState::Failed {
                status: previous.unwrap_or_default(),
                message,
            });
        }
    };
    if !has_finalizer(sub) {
        set_finalizer(ctx, sub, true).await?;
    }
    let mut converged = converge(ctx.graph.as_ref(), &desired, previous.as_ref()).await;
    if converged.error.is_none() && converged.refused.is_none() {
        // Edges dropped from the spec, with the tokens recorded for them.
        let keep_pages: BTreeSet<String> = desired.pages.iter().map(|p| p.id.clone()).collect();
        let keep_wabas: BTreeSet<String> = desired.wabas.iter().map(|w| w.id.clone()).collect();
        let dropped = RegistrationStatus {
            pages: converged
                .status
                .pages
                .iter()
                .filter(|p| !desired.pages.iter().any(|d| d.id == p.id))
                .cloned()
                .collect(),
            whatsapp_business_accounts: converged
                .status
                .whatsapp_business_accounts
                .iter()
                .filter(|w| !desired.wabas.iter().any(|d| d.id == w.id))
                .cloned()
                .collect(),
            // The app secret too: the dropped tokens' appsecret_proof is made with it.
            app_secret_ref: converged.status.app_secret_ref.clone(),
            ..RegistrationStatus::default()
        };
        if !(dropped.pages.is_empty() && dropped.whatsapp_business_accounts.is_empty()) {
            let tokens = tokens_from(&dropped, &fetch_secrets(ctx, sub, &dropped).await?);
            if let Err(error) = remove_nodes(
                ctx.graph.as_ref(),
                &mut converged.status,
                &tokens,
                &keep_pages,
                &keep_wabas,
                &mut converged.changes,
            )
            .await
            {
                converged.error = Some(error);
            }
        }
    }
    if !converged.changes.is_empty() {
        converged.status.last_registered_time = Some(rfc3339(now));
        publish_changes(ctx, sub, "Registered", &converged.changes).await;
    }
    if let Some(message) = converged.refused {
        publish(
            ctx,
            sub,
            EventType::Warning,
            CALLBACK_OWNED_ELSEWHERE,
            "Register",
            message.clone(),
        )
        .await;
        return Ok(RegistrationState::Refused {
            status: converged.status,
            reason: CALLBACK_OWNED_ELSEWHERE,
            message,
        });
    }
    match converged.error {
        None => {
            let message = registered_message(&converged.status);
            Ok(RegistrationState::Registered {
                status: converged.status,
                message,
            })
        }
        Some(error) => {
            let rejected = converged.failed_token.filter(|_| error.is_token_rejected());
            failed_with(ctx, sub, converged.status, error, rejected).await
        }
    }
}

/// A Graph API failure: the Event and the log carry Meta's `fbtrace_id` (what Meta's
/// support asks for), the status does not (see [`GraphError::for_status`]).
async fn failed(
    ctx: &Context,
    sub: &WebhookSubscription,
    status: RegistrationStatus,
    error: GraphError,
) -> Result<RegistrationState, Error> {
    failed_with(ctx, sub, status, error, None).await
}

/// [`failed`], naming the Secret key of a token Meta refused (code 190) in the condition
/// and in a `TokenExpired` Warning Event, so the person on call knows what to rotate.
async fn failed_with(
    ctx: &Context,
    sub: &WebhookSubscription,
    mut status: RegistrationStatus,
    error: GraphError,
    rejected_token: Option<SecretKeyRef>,
) -> Result<RegistrationState, Error> {
    tracing::warn!(subscription = %sub.name_any(), error = %error, "Graph API call failed");
    let rotate = rejected_token.as_ref().map(|token| {
        format!(
            "Meta refused the token in Secret {} key {} as expired or revoked: put a new one there (its change starts a pass)",
            token.name, token.key
        )
    });
    let message = match &rotate {
        Some(rotate) => format!("{rotate}; {}", error.for_status()),
        None => error.for_status(),
    };
    status.last_error = Some(error.for_status());
    let (reason, note) = match &rotate {
        Some(rotate) => (crate::status::TOKEN_EXPIRED, format!("{rotate}; {error}")),
        None => ("RegistrationFailed", error.to_string()),
    };
    publish(ctx, sub, EventType::Warning, reason, "Register", note).await;
    Ok(RegistrationState::GraphFailed {
        status,
        message,
        error,
        rejected_token,
    })
}

fn registered_message(status: &RegistrationStatus) -> String {
    let mut parts = Vec::new();
    if !status.registered_fields.is_empty() {
        parts.push(format!(
            "app {} receives {} fields {} at {}",
            status.app_id,
            status.object,
            status.registered_fields.join(","),
            status.callback_url.as_deref().unwrap_or("(unknown)")
        ));
    }
    if !status.pages.is_empty() {
        let ids: Vec<&str> = status.pages.iter().map(|p| p.id.as_str()).collect();
        parts.push(format!("subscribed to {}", ids.join(",")));
    }
    for waba in &status.whatsapp_business_accounts {
        parts.push(match &waba.override_callback_url {
            Some(uri) => format!("WABA {} overridden to {uri}", waba.id),
            None => format!("subscribed to WABA {}", waba.id),
        });
        if !waba.phone_numbers.is_empty() {
            let ids: Vec<&str> = waba.phone_numbers.iter().map(|p| p.id.as_str()).collect();
            parts.push(format!(
                "phone numbers {} of WABA {} overridden to their callback",
                ids.join(","),
                waba.id
            ));
        }
    }
    parts.join("; ")
}

async fn publish_changes(
    ctx: &Context,
    sub: &WebhookSubscription,
    reason: &str,
    changes: &[String],
) {
    if changes.is_empty() {
        return;
    }
    publish(
        ctx,
        sub,
        EventType::Normal,
        reason,
        "Register",
        changes.join("; "),
    )
    .await;
}

/// GETs the Secrets `status` references (the finalizer's and a dropped edge's tokens);
/// an absent one, or one that may not be referenced, simply yields no token.
async fn fetch_secrets(
    ctx: &Context,
    sub: &WebhookSubscription,
    status: &RegistrationStatus,
) -> Result<SecretData, Error> {
    let namespace = sub.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut names: BTreeSet<&str> = status
        .app_secret_ref
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    names.extend(
        status
            .pages
            .iter()
            .map(|p| p.access_token_ref.name.as_str()),
    );
    names.extend(
        status
            .whatsapp_business_accounts
            .iter()
            .map(|w| w.access_token_ref.name.as_str()),
    );
    let mut data = SecretData::new();
    for name in names {
        if let Some(secret) = get_secret(&secrets, name).await? {
            // An unmarked Secret's values are not used here either: no token, so the
            // unregistration names the token as gone.
            if let Some(why) = crate::policy::not_referenceable(&secret, sub.uid().as_deref()) {
                tracing::warn!(secret = %name, %why, "not using a Secret that may not be referenced");
                continue;
            }
            data.insert(name.to_owned(), super::secrets::keys_of(secret));
        }
    }
    Ok(data)
}
