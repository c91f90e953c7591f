//! The drain Job of a removed replica's claim: the receiver image in drain-only mode
//! (`metahook-receiver drain`), mounting that claim as its spool, delivering what its sinks
//! have not, and reporting a summary in its termination message.
//!
//! Its pods carry the subscription's label but not the selector's `app.kubernetes.io/name`,
//! so neither the Service nor the PodDisruptionBudget counts them as receivers.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::workload::{claim_name, pod_template};
use super::{CONFIG_DIR, CONFIG_KEY, Inputs, SUBSCRIPTION_LABEL};
use crate::error::Error;

/// The label marking a drain Job and its pods: `metahook.io/drain=<claim>`.
pub const DRAIN_LABEL: &str = "metahook.io/drain";
/// How long one drain attempt delivers before it exits and reports what is left (the Job
/// then retries it with the Job controller's backoff).
pub const ATTEMPT_DEADLINE: &str = "5m";
/// How long an attempt waits for the spool's lock (a terminating receiver pod may still
/// hold it) before it gives up and is retried.
pub const LOCK_WAIT: &str = "60s";
/// Attempts of one Job before it fails (about 10 minutes of the Job controller's backoff
/// between them, plus the attempts' own time); the operator then reports the claim
/// `Stalled` and starts a new Job.
pub const BACKOFF_LIMIT: i32 = 6;
/// Where Kubernetes reads the container's termination message from.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The drain Job's name for replica `ordinal`: `NAME-drain-<ordinal>`.
pub fn job_name(name: &str, ordinal: u32) -> String {
    format!("{name}-drain-{ordinal}")
}

/// Labels of a drain Job and its pods.
pub fn drain_labels(inputs: &Inputs<'_>, claim: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SUBSCRIPTION_LABEL.to_owned(), inputs.name.clone()),
        ("app.kubernetes.io/instance".to_owned(), inputs.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            crate::FIELD_MANAGER.to_owned(),
        ),
        ("app.kubernetes.io/component".to_owned(), "drain".to_owned()),
        (DRAIN_LABEL.to_owned(), claim.to_owned()),
    ])
}

/// The Job draining the claim of StatefulSet replica `ordinal`, owned by the subscription.
pub fn drain_job(inputs: &Inputs<'_>, config_hash: &str, ordinal: u32) -> Result<Job, Error> {
    let claim = claim_name(&inputs.name, ordinal);
    let labels = drain_labels(inputs, &claim);
    let mut template = pod_template(inputs, config_hash);
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata.labels = Some(labels.clone());
    let spec = template
        .spec
        .as_mut()
        .ok_or_else(|| Error::Incomplete("the receiver pod template has no spec".to_owned()))?;
    spec.restart_policy = Some("Never".to_owned());
    for volume in spec.volumes.iter_mut().flatten() {
        if volume.name == "data" {
            *volume = Volume {
                name: "data".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(false),
                }),
                ..Volume::default()
            };
        }
    }
    if !spec.volumes.iter().flatten().any(|v| v.name == "data") {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "data".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: Some(false),
            }),
            ..Volume::default()
        });
    }
    for container in &mut spec.containers {
        container.name = "drain".to_owned();
        container.args = Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            "drain".to_owned(),
            "--deadline".to_owned(),
            ATTEMPT_DEADLINE.to_owned(),
            "--lock-wait".to_owned(),
            LOCK_WAIT.to_owned(),
            "--summary-file".to_owned(),
            TERMINATION_LOG.to_owned(),
        ]);
        // No webhook listener: no ports, no probes. It still serves /metrics.
        container.ports = None;
        container.liveness_probe = None;
        container.readiness_probe = None;
        container.termination_message_path = Some(TERMINATION_LOG.to_owned());
        container.termination_message_policy = Some("File".to_owned());
    }
    let mut meta = inputs.meta(job_name(&inputs.name, ordinal))?;
    meta.labels = Some(labels);
    Ok(Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            completions: Some(1),
            parallelism: Some(1),
            template,
            ..JobSpec::default()
        }),
        status: None,
    })
}
