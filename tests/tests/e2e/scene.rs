//! A scene for tests that make their own subscriptions: a namespace of its own with the
//! app's Secret (marked referenceable), an operator watching only it, and helpers to
//! create subscriptions and wait on their Ready condition.

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use metahook_operator::crd::WebhookSubscription;
use metahook_tests::cluster::{Cluster, Operator, wait_for};
use serde_json::{Value, json};

use super::{WAIT, condition, create_namespace, install_crd, run_suffix};

/// A namespace of its own with the app's Secret, and an operator watching only it.
pub struct Scene {
    pub client: Client,
    pub namespace: String,
    pub operator: Operator,
}

pub async fn scene(prefix: &str) -> Result<Scene> {
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    install_crd(&client).await?;
    let namespace = format!("{prefix}-{}", run_suffix());
    create_namespace(&client, &namespace).await?;
    let app = Secret {
        metadata: ObjectMeta {
            name: Some("meta-app".to_owned()),
            namespace: Some(namespace.clone()),
            labels: Some([("metahook.io/referenceable".to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("app-secret", "e2e-app-secret"),
                ("verify-token", "e2e-verify-token"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &app)
        .await
        .context("creating the app's Secret")?;
    let operator = Operator::start(cluster, &[namespace.as_str()])?;
    Ok(Scene {
        client,
        namespace,
        operator,
    })
}

impl Scene {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a subscription of `spec` named `name`; returns it as stored.
    pub async fn subscribe(&self, name: &str, spec: Value) -> Result<WebhookSubscription> {
        let sub: WebhookSubscription = serde_json::from_value(json!({
            "apiVersion": "metahook.io/v1alpha1",
            "kind": "WebhookSubscription",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }))?;
        self.api::<WebhookSubscription>()
            .create(&PostParams::default(), &sub)
            .await
            .with_context(|| format!("creating WebhookSubscription {name}"))
    }

    /// The subscription once its Ready condition has `reason`.
    pub async fn ready_reason(&self, name: &str, reason: &str) -> Result<WebhookSubscription> {
        let api = self.api::<WebhookSubscription>();
        wait_for(
            &format!("{name}'s Ready reason {reason}"),
            WAIT,
            Some(&self.operator),
            || {
                let api = api.clone();
                async move {
                    let sub = api.get(name).await?;
                    let found = condition(&sub, "Ready").map(|c| c.reason.clone());
                    match found {
                        Some(found) if found == reason => Ok(Some(sub)),
                        other => anyhow::bail!("Ready reason {other:?}"),
                    }
                }
            },
        )
        .await
    }
}

/// A WhatsApp subscription of receiver mode `mode`, with the scene's app Secret; run by
/// the operator, its receivers are a Deployment (an ephemeral spool: these scenes follow
/// ownership, not storage).
pub fn spec(mode: &str) -> Value {
    let mut spec = json!({
        "object": "whatsapp_business_account",
        "fields": ["messages"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        "verifyTokenRef": {"name": "meta-app", "key": "verify-token"},
        "receiver": {"mode": mode},
    });
    if mode != "sidecar" {
        spec["delivery"] = json!({"spool": {"ephemeral": true}});
    }
    spec
}
