//! What the operator watches: the scopes (`--namespace`), and per scope the controller
//! with its watches (subscriptions, the objects they own, the Secrets they reference).
//!
//! Secrets are watched as metadata only (`PartialObjectMetadata`: names, labels, owners,
//! never values) and only those marked `metahook.io/referenceable=true` (the label the
//! operator's own Secrets carry too): the operator holds no Secret's values in memory, and
//! reads a Secret's values only with a GET by name when a subscription references it.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};

use crate::crd::WebhookSubscription;

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
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
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
    let controller = Controller::new(
        scope.api::<WebhookSubscription>(client),
        watcher::Config::default().any_semantic(),
    );
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
