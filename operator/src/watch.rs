//! What the operator watches: the scopes (`--namespace`), and per scope the controller
//! with its watches (subscriptions, the objects they own, the Secrets they reference).
//!
//! A subscription's own changes trigger a pass only when they are the user's or the API
//! server's (its generation, that is its spec, its labels and annotations, which the
//! operator never writes, so `kubectl annotate` asks for a pass, or its deletion): the
//! operator's status and finalizer writes do not ([`pass_trigger`]), so a pass that fails
//! and writes its status is
//! retried after its backoff, never at once by its own write (META_WEBHOOKS.md §9: no retry
//! faster than the backoff). Owned children (the workload's readiness) and Secrets still
//! trigger passes.
//!
//! Secrets are watched as metadata only (`PartialObjectMetadata`: names, labels, owners,
//! never values) and only those marked `metahook.io/referenceable=true` (the label the
//! operator's own Secrets carry too): the operator holds no Secret's values in memory, and
//! reads a Secret's values only with a GET by name when a subscription references it.

use futures_util::Stream;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::crd::WebhookSubscription;
use crate::replay_crd::WebhookReplay;

/// Where the operator watches: the whole cluster, or one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (needs a ClusterRole).
    Cluster,
    /// One namespace (a Role there is enough).
    Namespace(String),
}

impl WatchScope {
    /// An API of kind `K` within this scope.
    pub(crate) fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            WatchScope::Cluster => Api::all(client.clone()),
            WatchScope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }
}

impl std::fmt::Display for WatchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchScope::Cluster => f.write_str("all namespaces"),
            WatchScope::Namespace(namespace) => write!(f, "namespace {namespace}"),
        }
    }
}

/// The scopes for `--namespace`: the cluster when none is named, else each distinct
/// non-empty namespace once.
pub fn watch_scopes(namespaces: &[String]) -> Vec<WatchScope> {
    let mut named: Vec<String> = namespaces
        .iter()
        .map(|namespace| namespace.trim().to_owned())
        .filter(|namespace| !namespace.is_empty())
        .collect();
    named.sort();
    named.dedup();
    if named.is_empty() {
        vec![WatchScope::Cluster]
    } else {
        named.into_iter().map(WatchScope::Namespace).collect()
    }
}

/// The controller with its watches: subscriptions, the objects they own, and Secrets
/// (their own, and any a subscription references, so a created or rotated Secret
/// triggers a pass at once).
pub(crate) fn watches(client: &Client, scope: &WatchScope) -> Controller<WebhookSubscription> {
    let managed =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=metahook-operator");
    let (reader, writer) = reflector::store();
    let subscriptions = watcher(
        scope.api::<WebhookSubscription>(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    let controller = Controller::for_stream(pass_triggers(subscriptions), reader);
    let store = controller.store();
    controller
        .owns(scope.api::<Deployment>(client), managed.clone())
        .owns(scope.api::<StatefulSet>(client), managed.clone())
        .owns(scope.api::<Service>(client), managed.clone())
        .owns(scope.api::<ConfigMap>(client), managed.clone())
        .owns(scope.api::<Ingress>(client), managed)
        .watches(
            // An Api of PartialObjectMeta makes metadata-only requests (kube 5): no Secret's
            // value crosses the wire.
            scope.api::<PartialObjectMeta<Secret>>(client),
            watcher::Config::default().labels(&referenceable_selector()),
            move |secret| subscriptions_of_secret(&store, &secret),
        )
}

/// What of a subscription starts a pass when it changes: its generation (the API server
/// bumps it on every spec change), its labels and annotations (the user's alone: an
/// annotation is how to ask for a pass now) and its deletion timestamp. Not its status,
/// nor its finalizers or resourceVersion, which the operator's own writes change: a status that
/// changes with every failure (it did, with Meta's per-request `fbtrace_id`) would
/// otherwise start the next pass at once, bypassing the error policy's backoff.
pub fn pass_trigger(sub: &WebhookSubscription) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = sub.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The subscriptions' watch as the controller sees it: only the changes
/// [`pass_trigger`] names (the store still holds every version, so a pass reads the
/// latest status).
pub fn pass_triggers<S>(
    subscriptions: S,
) -> impl Stream<Item = Result<WebhookSubscription, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<WebhookSubscription, watcher::Error>> + Send + 'static,
{
    subscriptions.predicate_filter(pass_trigger, kube::runtime::PredicateConfig::default())
}

/// The WebhookReplay controller: replays, triggered by their spec (generation) and their
/// deletion only ([`replay_trigger`]); its own status and finalizer writes start no pass
/// (it polls running replays by requeueing).
pub(crate) fn replay_watches(client: &Client, scope: &WatchScope) -> Controller<WebhookReplay> {
    let (reader, writer) = reflector::store();
    let replays = watcher(
        scope.api::<WebhookReplay>(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(replay_trigger, kube::runtime::PredicateConfig::default());
    Controller::for_stream(replays, reader)
}

/// What of a WebhookReplay starts a pass: its generation and its deletion timestamp.
pub fn replay_trigger(replay: &WebhookReplay) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = replay.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The Secret watch's label selector: `metahook.io/referenceable=true`.
pub fn referenceable_selector() -> String {
    format!("{}=true", crate::policy::REFERENCEABLE_LABEL)
}

/// Subscriptions a Secret matters to: its owner, or those referencing it by name.
fn subscriptions_of_secret(
    store: &Store<WebhookSubscription>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<WebhookSubscription>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .into_iter()
        .filter(|sub| sub.namespace() == namespace)
        .filter(|sub| {
            let owned = secret
                .owner_references()
                .iter()
                .any(|owner| Some(&owner.uid) == sub.uid().as_ref());
            owned || crate::resources::referenced_secrets(sub).contains(&name)
        })
        .map(|sub| ObjectRef::from_obj(sub.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(generation: i64) -> WebhookSubscription {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "metahook.io/v1alpha1",
            "kind": "WebhookSubscription",
            "metadata": {"name": "wa", "namespace": "acme", "generation": generation, "resourceVersion": "7"},
            "spec": {
                "object": "page",
                "fields": ["feed"],
                "appSecretRef": {"name": "meta-app", "key": "app-secret"},
                "path": "/webhooks/page",
            },
        }))
        .expect("subscription")
    }

    #[test]
    fn a_replays_status_and_finalizer_writes_start_no_pass() {
        let replay = |generation: i64| -> WebhookReplay {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "metahook.io/v1alpha1",
                "kind": "WebhookReplay",
                "metadata": {"name": "rp", "namespace": "acme", "generation": generation,
                    "resourceVersion": "3"},
                "spec": {"subscription": "wa", "sink": "bus", "since": "24h"},
            }))
            .expect("replay")
        };
        let base = replay(1);
        let mut written = base.clone();
        written.metadata.resource_version = Some("4".to_owned());
        written.metadata.finalizers = Some(vec!["metahook.io/replay".into()]);
        written.status = Some(crate::replay_crd::WebhookReplayStatus {
            matched: 7,
            ..Default::default()
        });
        assert_eq!(replay_trigger(&base), replay_trigger(&written));
        assert_ne!(replay_trigger(&base), replay_trigger(&replay(2)));
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).expect("time"),
            ));
        assert_ne!(
            replay_trigger(&base),
            replay_trigger(&deleted),
            "a deletion"
        );
    }

    #[test]
    fn only_the_spec_the_users_metadata_and_the_deletion_start_a_pass() {
        let base = sub(3);
        let mut status_written = base.clone();
        status_written.metadata.resource_version = Some("8".to_owned());
        status_written.metadata.finalizers = Some(vec!["metahook.io/graph-registration".into()]);
        status_written.status = Some(crate::crd::WebhookSubscriptionStatus {
            observed_generation: Some(3),
            ..Default::default()
        });
        assert_eq!(pass_trigger(&base), pass_trigger(&status_written));
        assert_ne!(pass_trigger(&base), pass_trigger(&sub(4)), "a spec change");
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).expect("time"),
            ));
        assert_ne!(pass_trigger(&base), pass_trigger(&deleted), "a deletion");
        let mut annotated = base.clone();
        annotated.metadata.annotations =
            Some([("example.com/reconcile".to_owned(), "now".to_owned())].into());
        assert_ne!(
            pass_trigger(&base),
            pass_trigger(&annotated),
            "an annotation (the user's way to ask for a pass)"
        );
    }
}
