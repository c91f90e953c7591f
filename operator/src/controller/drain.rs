//! Step 4b: the claims of removed replicas. A StatefulSet keeps a removed replica's
//! PersistentVolumeClaim (the operator asks it to, where the server knows the field), and
//! with it the events that replica acknowledged but did not deliver. For each such claim
//! the operator runs a drain Job ([`crate::resources::drain`]) once no pod of that ordinal
//! runs, deletes the claim once a Job finished with nothing left in it, and keeps (and
//! reports) a claim that holds dead letters.
//!
//! Who waits when a replica comes back while its claim is drained: the receiver. The
//! operator deletes that ordinal's drain Job at once (the Job's pod stops on SIGTERM,
//! leaving what it did not deliver in the spool), and the new receiver pod waits for the
//! spool's lock until the drain pod released it. Two processes never share a spool: the
//! receiver's LOCK refuses the second, and a drain Job is never created while a pod of its
//! ordinal exists.
//!
//! Requests each pass: a LIST of the subscription's claims and one of its drain Jobs; when
//! a claim is stranded or a Job exists, a LIST of its pods; then a create or deletes.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::EventType;
use serde::Deserialize;
use time::OffsetDateTime;

use super::Context;
use super::api::{delete_under_uid, publish};
use crate::crd::{DrainStatus, WebhookSubscription};
use crate::error::Error;
use crate::metrics::DrainCounts;
use crate::resources::drain::{DRAIN_LABEL, drain_job};
use crate::resources::workload::claim_ordinal;
use crate::resources::{Inputs, SUBSCRIPTION_LABEL};

/// A Job that ran out of attempts is kept this long (the claim reported `Stalled`) before
/// it is replaced by a new one: the Job controller's own backoff paced its attempts, and
/// this keeps a claim that cannot be drained from cycling faster.
pub const STALLED_RETRY: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// What the drain of the removed replicas' claims looks like after this pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains {
    /// One entry per claim of a removed replica still there.
    pub claims: Vec<DrainStatus>,
}

impl Drains {
    /// Claims whose events are not yet all delivered (every state but `Kept`).
    pub fn draining(&self) -> i32 {
        count(self.claims.iter().filter(|c| c.state != KEPT))
    }

    /// Claims kept for their dead letters.
    pub fn kept(&self) -> i32 {
        count(self.claims.iter().filter(|c| c.state == KEPT))
    }

    /// Claims whose last Job ran out of attempts with events left.
    pub fn stalled(&self) -> i32 {
        count(self.claims.iter().filter(|c| c.state == STALLED))
    }

    /// Events left in the draining claims, as their Jobs last reported.
    pub fn events_left(&self) -> i64 {
        self.claims.iter().filter_map(|c| c.events_left).sum()
    }

    /// What the metrics report of them.
    pub fn counts(&self) -> DrainCounts {
        DrainCounts {
            draining: self.draining(),
            stalled: self.stalled(),
            kept: self.kept(),
            events_left: self.events_left(),
        }
    }
}

fn count<'a>(items: impl Iterator<Item = &'a DrainStatus>) -> i32 {
    i32::try_from(items.count()).unwrap_or(i32::MAX)
}

/// A pod of the ordinal still runs (terminating): its drain waits.
pub const WAITING: &str = "Waiting";
/// A drain Job delivers the claim's events.
pub const DRAINING: &str = "Draining";
/// The Job ran out of attempts with events left; a new one follows after [`STALLED_RETRY`].
pub const STALLED: &str = "Stalled";
/// Everything is delivered but dead letters: the claim is kept.
pub const KEPT: &str = "Kept";

/// The summary `metahook-receiver drain` writes as its termination message.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// drained, dead_letters, deadline, interrupted, locked or error.
    #[serde(default)]
    pub outcome: String,
    /// Events not yet delivered by every sink (the most any sink has left).
    #[serde(default)]
    pub events_left: i64,
    /// Requests acknowledged but not yet normalized into events.
    #[serde(default)]
    pub requests_left: i64,
    /// Dead letters in the spool.
    #[serde(default)]
    pub dead_letters: i64,
}

/// The summary of a finished drain pod, from its termination message.
pub fn summary_of(pod: &Pod) -> Option<(OffsetDateTime, Summary)> {
    let terminated = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|status| status.state.as_ref()?.terminated.as_ref())?;
    let summary = terminated
        .message
        .as_deref()
        .and_then(|message| serde_json::from_str::<Summary>(message.trim()).ok())
        .unwrap_or_else(|| Summary {
            outcome: terminated
                .reason
                .clone()
                .unwrap_or_else(|| format!("exit code {}", terminated.exit_code)),
            ..Summary::default()
        });
    let finished = terminated
        .finished_at
        .as_ref()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    Some((finished, summary))
}

/// How a Job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Running,
    Succeeded,
    /// Failed, since this time.
    Failed(OffsetDateTime),
}

fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    if status.succeeded.unwrap_or(0) >= 1 {
        return JobState::Succeeded;
    }
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    match failed {
        Some(condition) => JobState::Failed(
            condition
                .last_transition_time
                .as_ref()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ),
        None => JobState::Running,
    }
}

/// Drains the claims of ordinals at or above `live_replicas` (the StatefulSet's own
/// `spec.replicas`, which an autoscaler may have set; 0 when no StatefulSet of the
/// subscription runs).
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    config_hash: &str,
    live_replicas: i32,
    now: OffsetDateTime,
) -> Result<Drains, Error> {
    let namespace = &inputs.namespace;
    let name = &inputs.name;
    let sub_uid = sub.uid().unwrap_or_default();
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);

    let of_subscription = format!("{SUBSCRIPTION_LABEL}={name}");
    let claims: Vec<(u32, PersistentVolumeClaim)> = claims_api
        .list(&ListParams::default().labels(&of_subscription))
        .await
        .map_err(|e| {
            Error::kube(
                format!("list PersistentVolumeClaims of {namespace}/{name}"),
                e,
            )
        })?
        .items
        .into_iter()
        .filter_map(|claim| Some((claim_ordinal(name, &claim.name_any())?, claim)))
        .filter(|(_, claim)| is_subscriptions_claim(claim))
        // A claim being deleted (drained; Kubernetes keeps it until no pod uses it) is
        // drained no more.
        .filter(|(_, claim)| claim.metadata.deletion_timestamp.is_none())
        .collect();
    let jobs: BTreeMap<String, Job> = jobs_api
        .list(&ListParams::default().labels(&format!("{of_subscription},{DRAIN_LABEL}")))
        .await
        .map_err(|e| Error::kube(format!("list drain Jobs of {namespace}/{name}"), e))?
        .items
        .into_iter()
        .filter(|job| controlled_by(job, &sub_uid))
        .filter_map(|job| Some((job.labels().get(DRAIN_LABEL)?.clone(), job)))
        .collect();
    let live = u32::try_from(live_replicas.max(0)).unwrap_or(0);
    let stranded: Vec<&(u32, PersistentVolumeClaim)> = claims
        .iter()
        .filter(|(ordinal, _)| *ordinal >= live)
        .collect();
    if stranded.is_empty() && jobs.is_empty() {
        // Nothing to drain: series recorded before (a claim that went outside the
        // operator's passes) say so too.
        ctx.metrics.drains_cleared(namespace, name);
        return Ok(Drains::default());
    }
    let pods = pods_api
        .list(&ListParams::default().labels(&of_subscription))
        .await
        .map_err(|e| Error::kube(format!("list pods of {namespace}/{name}"), e))?
        .items;

    // A replica that came back: its drain stops, the receiver pod takes the spool over.
    for (claim, job) in &jobs {
        let back = claim_ordinal(name, claim).is_some_and(|ordinal| ordinal < live);
        let claim_gone = !claims.iter().any(|(_, c)| &c.name_any() == claim);
        if back || claim_gone {
            delete_job(&jobs_api, job).await?;
            if back {
                ctx.metrics.drain_finished(namespace, name, "cancelled");
                tracing::info!(subscription = %name, claim, "replica is back: its claim's drain Job is deleted and the receiver takes the spool over");
            }
        }
    }

    let mut drains = Drains::default();
    for (ordinal, claim) in stranded {
        let claim_name = claim.name_any();
        let latest = pods
            .iter()
            .filter(|pod| pod.labels().get(DRAIN_LABEL) == Some(&claim_name))
            .filter_map(summary_of)
            .max_by_key(|(finished, _)| *finished)
            .map(|(_, summary)| summary);
        let mut status = DrainStatus {
            claim: claim_name.clone(),
            state: DRAINING.to_owned(),
            job: None,
            events_left: latest.as_ref().map(|s| s.events_left + s.requests_left),
            dead_letters: latest.as_ref().map(|s| s.dead_letters),
            message: latest
                .as_ref()
                .map(|s| format!("last attempt: {}", s.outcome)),
        };
        match jobs.get(&claim_name) {
            None => {
                let pod_name = format!("{name}-{ordinal}");
                if pods.iter().any(|pod| {
                    pod.name_any() == pod_name && !pod.labels().contains_key(DRAIN_LABEL)
                }) {
                    status.state = WAITING.to_owned();
                    status.message = Some(format!(
                        "pod {pod_name} still runs: it delivers what it can before it exits"
                    ));
                } else {
                    let job = drain_job(inputs, config_hash, *ordinal)?;
                    let job_name = job.name_any();
                    match jobs_api.create(&PostParams::default(), &job).await {
                        Ok(_) => {
                            tracing::info!(subscription = %name, claim = %claim_name, job = %job_name, "started a drain Job for a removed replica's claim");
                            publish(
                                ctx,
                                sub,
                                EventType::Normal,
                                "DrainStarted",
                                "Drain",
                                format!(
                                    "replica {ordinal} was removed: Job {job_name} delivers what its claim {claim_name} holds"
                                ),
                            )
                            .await;
                        }
                        Err(kube::Error::Api(status)) if status.code == 409 => {}
                        Err(e) => {
                            return Err(Error::kube(
                                format!("create Job {namespace}/{job_name}"),
                                e,
                            ));
                        }
                    }
                    status.job = Some(job_name);
                }
            }
            Some(job) => {
                status.job = Some(job.name_any());
                match job_state(job) {
                    JobState::Succeeded => {
                        // The Job first: its pod goes with it, and the claim, which
                        // Kubernetes keeps while a pod uses it, follows.
                        delete_job(&jobs_api, job).await?;
                        delete_claim(&claims_api, claim).await?;
                        ctx.metrics.drain_finished(namespace, name, "drained");
                        publish(
                            ctx,
                            sub,
                            EventType::Normal,
                            "Drained",
                            "Drain",
                            format!(
                                "claim {claim_name} of a removed replica held nothing undelivered after Job {}: deleted",
                                job.name_any()
                            ),
                        )
                        .await;
                        continue;
                    }
                    JobState::Failed(since) => {
                        if latest.as_ref().is_some_and(only_dead_letters) {
                            status.state = KEPT.to_owned();
                        } else {
                            status.state = STALLED.to_owned();
                            let retry_at = since + STALLED_RETRY;
                            if now >= retry_at {
                                delete_job(&jobs_api, job).await?;
                                ctx.metrics.drain_finished(namespace, name, "failed");
                                publish(
                                    ctx,
                                    sub,
                                    EventType::Warning,
                                    "DrainStalled",
                                    "Drain",
                                    format!(
                                        "Job {} ran out of attempts with events left in claim {claim_name} ({}); a new Job follows",
                                        job.name_any(),
                                        status.message.as_deref().unwrap_or("no report")
                                    ),
                                )
                                .await;
                            }
                        }
                    }
                    JobState::Running => {
                        if latest.as_ref().is_some_and(only_dead_letters) {
                            status.state = KEPT.to_owned();
                        }
                    }
                }
            }
        }
        if status.state == KEPT {
            status.message = Some(format!(
                "every event is delivered but {} dead letters: the claim is kept (docs/operations.md, \"Claims kept for dead letters\")",
                status.dead_letters.unwrap_or(0)
            ));
        }
        drains.claims.push(status);
    }
    ctx.metrics.drains(namespace, name, drains.counts());
    Ok(drains)
}

/// Nothing but dead letters is left.
fn only_dead_letters(summary: &Summary) -> bool {
    summary.events_left == 0 && summary.requests_left == 0 && summary.dead_letters > 0
}

/// A claim the StatefulSet made from the subscription's template: the labels the
/// operator put on the template (the list already selected the subscription's label).
fn is_subscriptions_claim(claim: &PersistentVolumeClaim) -> bool {
    claim
        .labels()
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(crate::FIELD_MANAGER)
}

fn controlled_by(job: &Job, sub_uid: &str) -> bool {
    job.owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == sub_uid)
}

async fn delete_job(api: &Api<Job>, job: &Job) -> Result<(), Error> {
    let name = job.name_any();
    delete_under_uid(
        api,
        &name,
        &job.uid().unwrap_or_default(),
        &format!("Job {name}"),
    )
    .await?;
    Ok(())
}

async fn delete_claim(
    api: &Api<PersistentVolumeClaim>,
    claim: &PersistentVolumeClaim,
) -> Result<(), Error> {
    let name = claim.name_any();
    let what = format!("PersistentVolumeClaim {name}");
    if delete_under_uid(api, &name, &claim.uid().unwrap_or_default(), &what).await? {
        tracing::info!(claim = %name, "deleted a drained claim of a removed replica");
    }
    Ok(())
}
