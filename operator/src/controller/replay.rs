//! The WebhookReplay controller: carries a replay out on every ready receiver pod of the
//! subscription, through each pod's admin endpoint ([`super::replay_admin`]) on its
//! metrics port, with the subscription's admin token, and sums what they report.
//!
//! Per replica (a pod, by name): `POST /admin/replay` until it starts (a `409`, another
//! replay running there, is tried again at the next pass); its id is recorded, then
//! `GET /admin/replay/{id}` each pass until its state is final. A `422` (the window starts
//! before what the pod's spool holds) or `400` fails that replica with the receiver's
//! message (and the available range). A pod answering `404` for a recorded id restarted
//! and forgot it (replays live in memory): the replay is started there once more
//! (`restarted` set); a second loss fails the replica. A pod that is gone fails its
//! replica. Pods that become ready while the replay runs join it.
//!
//! A relative `since`/`until` (`24h`) is fixed against the WebhookReplay's creation time,
//! so a re-POST selects the same window. Passes come from the spec (generation) and the
//! deletion only ([`crate::watch`]'s predicate), never from the controller's own status
//! writes; while replicas run, the controller polls every [`POLL`]. A final phase removes
//! the finalizer and is left alone. Deleting the WebhookReplay while it runs (finalizer
//! `metahook.io/replay`) DELETEs each running replica's replay first.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use metahook_config::replay::ReplayRequest;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Context;
use super::api::apply_params;
use super::migration::metrics_base;
use super::replay_admin::{Admin, RemoteReplay, Started};
use crate::crd::WebhookSubscription;
use crate::error::Error;
use crate::replay_crd::{ReplayPhase, ReplicaReplay, WebhookReplay, WebhookReplayStatus};
use crate::resources::{ADMIN_TOKEN_KEY, SUBSCRIPTION_LABEL, admin_token_secret_name};

/// The finalizer that stops running replays when a WebhookReplay is deleted.
pub const FINALIZER: &str = "metahook.io/replay";
/// The field manager of the finalizer's applies: not [`crate::FIELD_MANAGER`], whose
/// status applies would take the finalizer from it on a server before 1.22 (there a
/// `/status` apply replaces the manager's whole entry, `metadata.finalizers` included, as
/// managed fields are not kept per subresource), and an apply of `finalizers: []` then
/// removes nothing: the finished replay kept its finalizer (seen by the e2e replay test on
/// 1.20).
pub const FINALIZER_FIELD_MANAGER: &str = "metahook-operator-replay-finalizer";
/// How often a running replay is polled.
pub const POLL: Duration = Duration::from_secs(5);
/// How soon a replay waiting for a pod (none ready, another replay running there, the
/// admin token not yet made) is tried again.
pub const WAIT: Duration = Duration::from_secs(30);

/// Reconciles one WebhookReplay.
pub async fn reconcile(replay: Arc<WebhookReplay>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = replay.name_any();
    let namespace = replay
        .namespace()
        .ok_or_else(|| Error::Incomplete(format!("WebhookReplay {name} has no namespace")))?;
    let has_finalizer = replay.finalizers().iter().any(|f| f == FINALIZER);
    if replay.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            cancel_all(&ctx, &replay, &namespace).await;
            set_finalizer(&ctx, &replay, &namespace, false).await?;
        }
        return Ok(Action::await_change());
    }
    let previous = replay.status.clone().unwrap_or_default();
    if is_final(previous.phase) && previous.observed_generation == replay.meta().generation {
        if has_finalizer {
            set_finalizer(&ctx, &replay, &namespace, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        set_finalizer(&ctx, &replay, &namespace, true).await?;
    }
    let (status, requeue) = pass(&ctx, &replay, &namespace, previous.clone()).await?;
    if Some(&status) != replay.status.as_ref() {
        write_status(&ctx, &replay, &namespace, &status).await?;
    }
    if is_final(status.phase) {
        set_finalizer(&ctx, &replay, &namespace, false).await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(requeue))
}

/// Retries a failed pass (an API error) after [`WAIT`].
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run wants
pub fn error_policy(replay: Arc<WebhookReplay>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(replay = %replay.name_any(), error = %error, "replay pass failed");
    Action::requeue(WAIT)
}

fn is_final(phase: ReplayPhase) -> bool {
    matches!(
        phase,
        ReplayPhase::Succeeded | ReplayPhase::Failed | ReplayPhase::Cancelled
    )
}

/// One pass: the new status, and when to look again.
async fn pass(
    ctx: &Context,
    replay: &WebhookReplay,
    namespace: &str,
    mut status: WebhookReplayStatus,
) -> Result<(WebhookReplayStatus, Duration), Error> {
    let now = (ctx.clock)();
    let spec = &replay.spec;
    status.observed_generation = replay.meta().generation;
    let subs: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), namespace);
    let sub = subs.get_opt(&spec.subscription).await.map_err(|e| {
        Error::kube(
            format!("get WebhookSubscription {namespace}/{}", spec.subscription),
            e,
        )
    })?;
    let Some(sub) = sub else {
        let message = format!("no WebhookSubscription {namespace}/{}", spec.subscription);
        return Ok((finish(status, &message, now), WAIT));
    };
    if !sub.spec.delivery.sinks.iter().any(|s| s.name == spec.sink) {
        let message = format!(
            "sink: WebhookSubscription {} has no sink named {:?}",
            spec.subscription, spec.sink
        );
        return Ok((finish(status, &message, now), WAIT));
    }
    let request = match admin_request(replay) {
        Ok(request) => request,
        Err(message) => return Ok((finish(status, &message, now), WAIT)),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_name = admin_token_secret_name(&spec.subscription);
    let token = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|e| Error::kube(format!("get Secret {namespace}/{secret_name}"), e))?
        .and_then(|secret| super::secrets::keys_of(secret).remove(ADMIN_TOKEN_KEY))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|token| token.trim_end().to_owned())
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        let message = format!("waiting for the admin token in Secret {namespace}/{secret_name}");
        return Ok((pending(status, &message, now), WAIT));
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{SUBSCRIPTION_LABEL}={}", spec.subscription)))
        .await
        .map_err(|e| Error::kube(format!("list pods of {namespace}/{}", spec.subscription), e))?
        .items;
    for pod in listed.iter().filter(|pod| ready(pod)) {
        let pod_name = pod.name_any();
        if !status.replicas.iter().any(|r| r.pod == pod_name) {
            status.replicas.push(ReplicaReplay {
                pod: pod_name,
                state: "pending".to_owned(),
                ..ReplicaReplay::default()
            });
        }
    }
    status.replicas.sort_by(|a, b| a.pod.cmp(&b.pod));
    if status.replicas.is_empty() {
        let message = format!("no ready receiver pod of {}", spec.subscription);
        return Ok((pending(status, &message, now), WAIT));
    }
    let mut requeue = POLL;
    for replica in &mut status.replicas {
        if matches!(replica.state.as_str(), "succeeded" | "failed" | "cancelled") {
            continue;
        }
        let Some(pod) = listed.iter().find(|pod| pod.name_any() == replica.pod) else {
            replica.state = "failed".to_owned();
            replica.error = Some("the pod is gone: its replay stopped with it".to_owned());
            continue;
        };
        let base = match metrics_base(pod) {
            Ok(base) => base,
            Err(why) => {
                replica.error = Some(why);
                continue;
            }
        };
        let admin = Admin {
            http: &ctx.http,
            base,
            token: &token,
        };
        if let Some(wait) = step_replica(&admin, replica, &request).await {
            requeue = requeue.max(wait);
        }
    }
    status.matched = status.replicas.iter().map(|r| r.matched).sum();
    status.delivered = status.replicas.iter().map(|r| r.delivered).sum();
    status.failed = status.replicas.iter().map(|r| r.failed).sum();
    let states = || status.replicas.iter().map(|r| r.state.as_str());
    let phase = if states().any(|s| s == "running") {
        ReplayPhase::Running
    } else if states().any(|s| s == "pending") {
        ReplayPhase::Pending
    } else if states().any(|s| s == "failed") {
        ReplayPhase::Failed
    } else if states().any(|s| s == "cancelled") {
        ReplayPhase::Cancelled
    } else {
        ReplayPhase::Succeeded
    };
    let message = status
        .replicas
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.pod)))
        .collect::<Vec<_>>()
        .join("; ");
    status.phase = phase;
    set_complete(&mut status, &message, now);
    Ok((status, requeue))
}

/// Moves one replica on: starts its replay, or reads how it is going. Returns a longer
/// wait when the pod is busy with another replay.
async fn step_replica(
    admin: &Admin<'_>,
    replica: &mut ReplicaReplay,
    request: &ReplayRequest,
) -> Option<Duration> {
    if let Some(id) = replica.replay_id.clone() {
        match admin.get(&id).await {
            Ok(Some(remote)) => record(replica, &remote),
            Ok(None) if !replica.restarted => {
                // The pod restarted (or forgot the replay): start it there once more.
                replica.restarted = true;
                replica.replay_id = None;
                replica.state = "pending".to_owned();
                return Box::pin(step_replica(admin, replica, request)).await;
            }
            Ok(None) => {
                replica.state = "failed".to_owned();
                replica.error = Some(format!(
                    "the pod forgot replay {id} again (restarted twice?)"
                ));
            }
            Err(why) => replica.error = Some(why),
        }
        return None;
    }
    match admin.start(request).await {
        Ok(Started::Replay(remote)) => {
            replica.replay_id = Some(remote.id.clone());
            record(replica, &remote);
            None
        }
        Ok(Started::Busy(running)) => {
            replica.error = Some(format!(
                "replay {running} is running on this pod; trying again"
            ));
            Some(WAIT)
        }
        Ok(Started::Refused(why)) => {
            replica.state = "failed".to_owned();
            replica.error = Some(why);
            None
        }
        Err(why) => {
            replica.error = Some(why);
            None
        }
    }
}

fn record(replica: &mut ReplicaReplay, remote: &RemoteReplay) {
    replica.state.clone_from(&remote.state);
    replica.matched = remote.matched;
    replica.delivered = remote.delivered;
    replica.failed = remote.failed;
    replica.error.clone_from(&remote.error);
}

/// The admin request for the spec, its relative times fixed against the creation time.
pub fn admin_request(replay: &WebhookReplay) -> Result<ReplayRequest, String> {
    let spec = &replay.spec;
    let created = replay
        .meta()
        .creation_timestamp
        .as_ref()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    let absolute = |field: &str, value: &str| -> Result<String, String> {
        if OffsetDateTime::parse(value, &Rfc3339).is_ok() {
            return Ok(value.to_owned());
        }
        let ago = humantime::parse_duration(value).map_err(|_| {
            format!("{field}: {value:?} is neither RFC 3339 nor a duration such as 24h")
        })?;
        let at = created - ago;
        at.format(&Rfc3339).map_err(|e| format!("{field}: {e}"))
    };
    Ok(ReplayRequest {
        sink: spec.sink.clone(),
        since: absolute("since", &spec.since)?,
        until: spec
            .until
            .as_deref()
            .map(|until| absolute("until", until))
            .transpose()?,
        objects: spec.objects.clone(),
        fields: spec.fields.clone(),
        endpoints: spec.endpoints.clone(),
        event_ids: spec.event_ids.clone(),
        dead_letters: spec.dead_letters,
        dry_run: spec.dry_run,
    })
}

/// Is the pod Ready and not terminating?
fn ready(pod: &Pod) -> bool {
    pod.meta().deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// A replay that cannot run (no subscription, no such sink, a bad window): Failed.
fn finish(
    mut status: WebhookReplayStatus,
    message: &str,
    now: OffsetDateTime,
) -> WebhookReplayStatus {
    status.phase = ReplayPhase::Failed;
    set_complete(&mut status, message, now);
    status
}

/// A replay waiting for something before it can start on any pod.
fn pending(
    mut status: WebhookReplayStatus,
    message: &str,
    now: OffsetDateTime,
) -> WebhookReplayStatus {
    if status.replicas.is_empty() {
        status.phase = ReplayPhase::Pending;
    }
    set_complete(&mut status, message, now);
    status
}

/// The `Complete` condition: True once the phase is final, its reason the phase. Its
/// transition time moves only when its status or reason does (no write per poll).
///
/// The message is never empty: without an error to name it sums the replicas up, because
/// a 1.20 API server's server-side apply of the status refuses an empty message
/// (`status.conditions.message: Invalid value: "null"`, seen by the e2e replay test).
fn set_complete(status: &mut WebhookReplayStatus, message: &str, now: OffsetDateTime) {
    let message = if message.is_empty() {
        format!(
            "{} replicas: {} matched, {} delivered, {} failed",
            status.replicas.len(),
            status.matched,
            status.delivered,
            status.failed
        )
    } else {
        message.to_owned()
    };
    let done = is_final(status.phase);
    let reason = format!("{:?}", status.phase);
    let condition_status = if done { "True" } else { "False" };
    let previous = status.conditions.iter().find(|c| c.type_ == "Complete");
    let since = match previous {
        Some(c) if c.status == condition_status && c.reason == reason => {
            c.last_transition_time.clone()
        }
        _ => k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::status::timestamp(now)),
    };
    status.conditions = vec![Condition {
        type_: "Complete".to_owned(),
        status: condition_status.to_owned(),
        reason,
        message,
        last_transition_time: since,
        observed_generation: status.observed_generation,
    }];
}

/// Stops each running replica's replay (best effort: a pod gone or unreachable stopped it
/// already, or will forget it when it restarts).
async fn cancel_all(ctx: &Context, replay: &WebhookReplay, namespace: &str) {
    let Some(status) = &replay.status else {
        return;
    };
    let running: Vec<&ReplicaReplay> = status
        .replicas
        .iter()
        .filter(|r| r.state == "running" && r.replay_id.is_some())
        .collect();
    if running.is_empty() {
        return;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let token = match secrets
        .get_opt(&admin_token_secret_name(&replay.spec.subscription))
        .await
    {
        Ok(Some(secret)) => super::secrets::keys_of(secret)
            .remove(ADMIN_TOKEN_KEY)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(|token| token.trim_end().to_owned()),
        _ => None,
    };
    let Some(token) = token else {
        return;
    };
    // A LIST, as the passes read pods (the operator may list pods, not get them).
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{SUBSCRIPTION_LABEL}={}", replay.spec.subscription);
    let Ok(listed) = pods.list(&ListParams::default().labels(&selector)).await else {
        return;
    };
    for replica in running {
        let Some(pod) = listed
            .items
            .iter()
            .find(|pod| pod.name_any() == replica.pod)
        else {
            continue;
        };
        let (Ok(base), Some(id)) = (metrics_base(pod), replica.replay_id.as_deref()) else {
            continue;
        };
        let admin = Admin {
            http: &ctx.http,
            base,
            token: &token,
        };
        if let Err(why) = admin.cancel(id).await {
            tracing::warn!(replay = %replay.name_any(), pod = %replica.pod, error = %why, "cannot stop a replica's replay");
        }
    }
}

async fn write_status(
    ctx: &Context,
    replay: &WebhookReplay,
    namespace: &str,
    status: &WebhookReplayStatus,
) -> Result<(), Error> {
    let name = replay.name_any();
    let patch = json!({
        "apiVersion": WebhookReplay::api_version(&()),
        "kind": WebhookReplay::kind(&()),
        "status": status,
    });
    let api: Api<WebhookReplay> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|e| {
            Error::kube(
                format!("apply status of WebhookReplay {namespace}/{name}"),
                e,
            )
        })?;
    Ok(())
}

/// Adds or removes the finalizer with a server-side apply of `metadata.finalizers` alone.
async fn set_finalizer(
    ctx: &Context,
    replay: &WebhookReplay,
    namespace: &str,
    present: bool,
) -> Result<(), Error> {
    let name = replay.name_any();
    let finalizers: &[&str] = if present { &[FINALIZER] } else { &[] };
    let patch = json!({
        "apiVersion": WebhookReplay::api_version(&()),
        "kind": WebhookReplay::kind(&()),
        "metadata": {"name": name, "finalizers": finalizers},
    });
    let api: Api<WebhookReplay> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(FINALIZER_FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| {
            Error::kube(
                format!("apply finalizers of WebhookReplay {namespace}/{name}"),
                e,
            )
        })?;
    Ok(())
}
