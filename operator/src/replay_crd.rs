//! The `WebhookReplay` custom resource (metahook.io/v1alpha1): re-deliver what one sink of
//! a WebhookSubscription lost, from every replica's retained spool (docs/replay.md). The
//! replay controller ([`crate::controller::replay`]) carries it out through each receiver
//! pod's admin endpoint and writes the status.

// Several printer columns share a `type_`, which kube's derive re-emits as attributes the
// lint reads as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A replay of one sink of one subscription, on every receiver replica.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "metahook.io",
    version = "v1alpha1",
    kind = "WebhookReplay",
    namespaced,
    shortname = "whreplay",
    category = "metahook",
    status = "WebhookReplayStatus",
    doc = "Re-delivers the events a WebhookSubscription's receivers still hold (spool.retention) to one of its sinks, on every replica.",
    printcolumn(
        name = "Subscription",
        type_ = "string",
        json_path = ".spec.subscription"
    ),
    printcolumn(name = "Sink", type_ = "string", json_path = ".spec.sink"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.matched"),
    printcolumn(name = "Delivered", type_ = "integer", json_path = ".status.delivered"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self == oldSelf").message("a replay's spec cannot change: delete it (which stops it) and create another")
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReplaySpec {
    /// The WebhookSubscription (in this namespace) whose receivers replay.
    #[schemars(length(min = 1, max = 63))]
    pub subscription: String,
    /// The one sink (spec.delivery.sinks[].name) to deliver to.
    #[schemars(length(min = 1, max = 63))]
    pub sink: String,
    /// Start of the window, inclusive, on the events' received_at: RFC 3339, or a duration
    /// before the replay was created (`90m`, `24h`).
    #[schemars(length(min = 1, max = 64))]
    pub since: String,
    /// End of the window, exclusive (RFC 3339 or a duration ago); default: the newest event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub until: Option<String>,
    /// Only events of these objects (`page`, `whatsapp_business_account`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// Only events of these fields (`messages`, `feed`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Only events received on these endpoints (their configured names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Only these events (their ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_ids: Vec<String>,
    /// Also re-deliver the sink's matching dead letters (they stay dead letters).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_letters: bool,
    /// Count what matches, deliver nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Where a replay is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayPhase {
    /// Not started on every replica yet (no ready receiver, or one running another replay).
    #[default]
    Pending,
    /// Running on at least one replica.
    Running,
    /// Every replica finished and handed every selected event to the sink (its `failed`
    /// counts those the sink did not take).
    Succeeded,
    /// At least one replica failed (see its `error`), or the subscription is missing.
    Failed,
    /// Stopped (a replica's replay was cancelled).
    Cancelled,
}

/// One receiver pod's part of the replay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReplay {
    /// The pod's name.
    pub pod: String,
    /// The replay's id on that pod (`GET /admin/replay/{id}`); absent until it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_id: Option<String>,
    /// pending, running, succeeded, failed or cancelled.
    pub state: String,
    /// Events selected on this replica.
    #[serde(default)]
    pub matched: u64,
    /// Events the sink took.
    #[serde(default)]
    pub delivered: u64,
    /// Events the sink refused.
    #[serde(default)]
    pub failed: u64,
    /// Why the replica failed (the receiver's message; for a window outside retention,
    /// the range the spool holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The replay was started again once after the pod forgot it (a restart).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restarted: bool,
}

/// What the replay controller observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReplayStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Succeeded, Failed or Cancelled.
    #[serde(default)]
    pub phase: ReplayPhase,
    /// Each receiver pod's replay, by pod name.
    #[serde(default)]
    pub replicas: Vec<ReplicaReplay>,
    /// Sum of the replicas' matched.
    #[serde(default)]
    pub matched: u64,
    /// Sum of the replicas' delivered.
    #[serde(default)]
    pub delivered: u64,
    /// Sum of the replicas' failed.
    #[serde(default)]
    pub failed: u64,
    /// Complete (True once the phase is final).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The WebhookReplay CRD as YAML (`crds/webhookreplay.yaml` is its committed output).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    let body = serde_saphyr::to_string(&WebhookReplay::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p metahook-operator --bin crdgen -- replay`; do not edit.\n{body}"
    ))
}
