//! Ownership on a real API server: a subscription touches only what it owns. What the mock
//! API cannot prove is the server's own behaviour: that a team's objects survive byte for
//! byte, that an apply without force really refuses a field another manager owns (and
//! with which words), that a uid in an apply body is honoured, and what the garbage
//! collector takes when the subscription goes.

use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use metahook_operator::crd::WebhookSubscription;
use metahook_tests::cluster::wait_for;
use metahook_tests::pki::Ca;
use serde_json::json;

use super::scene::{Scene, scene, spec};
use super::{WAIT, condition, events_of};

/// The team's app: a Deployment and a Service named `orders`, made by kubectl's manager.
async fn team_app(scene: &Scene) -> Result<(Deployment, Service)> {
    let params = PatchParams::apply("kubectl");
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders", "labels": {"app": "orders"}},
        "spec": {
            "selector": {"matchLabels": {"app": "orders"}},
            "template": {
                "metadata": {"labels": {"app": "orders"}},
                "spec": {"containers": [{"name": "orders", "image": "registry.example.com/orders:1"}]},
            },
        },
    }))?;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "orders"},
        "spec": {"selector": {"app": "orders"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))?;
    let deployment = scene
        .api::<Deployment>()
        .patch("orders", &params, &Patch::Apply(&deployment))
        .await
        .context("the team's Deployment")?;
    let service = scene
        .api::<Service>()
        .patch("orders", &params, &Patch::Apply(&service))
        .await
        .context("the team's Service")?;
    Ok((deployment, service))
}

/// Has the operator's field manager written any field of the object?
fn touched_by_operator(meta: &ObjectMeta) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .any(|entry| entry.manager.as_deref() == Some("metahook-operator"))
}

/// The finding: the natural name for a sidecar in the `orders` pods is `orders`,
/// and the operator deleted the team's Deployment and Service. Now both survive untouched
/// (same uid, resourceVersion and owners), nothing is created, and the subscription says
/// Conflict, with a Warning Event.
#[tokio::test]
async fn a_sidecar_named_after_a_teams_deployment_and_service_leaves_both_alone() -> Result<()> {
    let scene = scene("e2e-own-sidecar").await?;
    let (deployment, service) = team_app(&scene).await?;
    scene.subscribe("orders", spec("sidecar")).await?;
    let sub = scene.ready_reason("orders", "Conflict").await?;
    let message = condition(&sub, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for named in ["Deployment", "Service"] {
        ensure!(
            message.contains(&format!(
                "{named} {}/orders exists and is not made by this subscription",
                scene.namespace
            )),
            "the condition names the team's {named}: {message}"
        );
    }
    // A few more passes (an annotation each), then look again: still untouched.
    for round in 0..2 {
        let poke =
            json!({"metadata": {"annotations": {"e2e.metahook.io/poke": round.to_string()}}});
        scene
            .api::<WebhookSubscription>()
            .patch("orders", &PatchParams::default(), &Patch::Merge(&poke))
            .await?;
    }
    let warnings = wait_for(
        "the Conflict Warning Event",
        WAIT,
        Some(&scene.operator),
        || async {
            let events = events_of(&scene.client, &sub).await?;
            Ok(events
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Conflict") && e.type_.as_deref() == Some("Warning")
                })
                .then_some(events))
        },
    )
    .await?;
    ensure!(!warnings.is_empty());
    let now_deployment = scene.api::<Deployment>().get("orders").await?;
    let now_service = scene.api::<Service>().get("orders").await?;
    // The Deployment controller writes its status (and a revision annotation), so its
    // resourceVersion moves: its spec's generation, owners and managers must not.
    ensure!(
        now_deployment.uid() == deployment.uid()
            && now_deployment.metadata.generation == deployment.metadata.generation
            && now_deployment.owner_references().is_empty()
            && !touched_by_operator(&now_deployment.metadata),
        "the team's Deployment changed: {:?}",
        now_deployment.metadata
    );
    ensure!(
        now_service.uid() == service.uid()
            && now_service.resource_version() == service.resource_version()
            && now_service.owner_references().is_empty()
            && !touched_by_operator(&now_service.metadata),
        "the team's Service changed: {:?}",
        now_service.metadata
    );
    ensure!(
        scene
            .api::<ConfigMap>()
            .get_opt("orders-receiver")
            .await?
            .is_none(),
        "a refused pass creates nothing"
    );
    Ok(())
}

/// A team's own certificate Secret under `NAME-tls`: its content and owners stay as they
/// were (the operator used to overwrite it with one of its CA and garbage-collect it).
#[tokio::test]
async fn a_teams_certificate_at_the_serving_secrets_name_is_left_as_it_is() -> Result<()> {
    let scene = scene("e2e-own-tls").await?;
    let ca = Ca::new("the team's CA")?;
    let leaf = ca.server("hooks.example.com")?;
    let team = Secret {
        metadata: ObjectMeta {
            name: Some("wa-tls".to_owned()),
            namespace: Some(scene.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [("tls.crt", leaf.cert_pem()), ("tls.key", leaf.key_pem())]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    let team = scene
        .api::<Secret>()
        .create(&PostParams::default(), &team)
        .await
        .context("the team's certificate Secret")?;
    let mut tls_spec = spec("deployment");
    tls_spec["tls"] = json!({"mode": "server"});
    scene.subscribe("wa", tls_spec).await?;
    let sub = scene.ready_reason("wa", "Conflict").await?;
    let message = condition(&sub, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains(&format!("Secret {}/wa-tls exists", scene.namespace)),
        "{message}"
    );
    let now = scene.api::<Secret>().get("wa-tls").await?;
    ensure!(
        now.data == team.data
            && now.resource_version() == team.resource_version()
            && now.owner_references().is_empty()
            && !touched_by_operator(&now.metadata),
        "the team's Secret changed: {:?}",
        now.metadata
    );
    ensure!(
        scene.api::<Deployment>().get_opt("wa").await?.is_none(),
        "nothing is deployed while the conflict stands"
    );
    Ok(())
}

/// The way out: annotated `metahook.io/adopt: hooks`, the team's Service is taken over
/// (the subscription's controller reference, an Adopted Event). Then a field of the
/// subscription's Deployment set by another manager (`kubectl scale`'s way) is not
/// overwritten: the pass is a Conflict in the API server's words, naming field and
/// manager. Deleting the subscription collects what it created and adopted, nothing else.
#[tokio::test]
async fn adoption_field_conflicts_and_collection_touch_only_what_is_the_subscriptions() -> Result<()>
{
    let scene = scene("e2e-own-adopt").await?;
    let (team_deployment, _) = team_app(&scene).await?;
    // The team's own Service `hooks`, handed over.
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hooks", "annotations": {"metahook.io/adopt": "hooks"}},
        "spec": {"selector": {"app": "old-hooks"}, "ports": [{"name": "web", "port": 8000, "protocol": "TCP"}]},
    }))?;
    scene
        .api::<Service>()
        .patch(
            "hooks",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&service),
        )
        .await?;
    let sub = scene.subscribe("hooks", spec("deployment")).await?;
    let uid = sub.uid().context("uid")?;
    let adopted = wait_for(
        "the Service adopted",
        WAIT,
        Some(&scene.operator),
        || async {
            let service = scene.api::<Service>().get("hooks").await?;
            let ours = service
                .owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true));
            Ok(ours.then_some(service))
        },
    )
    .await?;
    let ports: Vec<String> = adopted
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().filter_map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    ensure!(
        ports.contains(&"http".to_owned()),
        "the operator's port is applied: {ports:?}"
    );
    let events = events_of(&scene.client, &sub).await?;
    ensure!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Adopted")),
        "an Adopted Event: {:?}",
        events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
    );

    // Someone else takes spec.replicas of the subscription's Deployment.
    scene
        .api::<Deployment>()
        .patch(
            "hooks",
            &PatchParams::apply("kubectl-scale").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "hooks"},
                "spec": {"replicas": 3},
            })),
        )
        .await
        .context("scaling the subscription's Deployment as another manager")?;
    let poke = json!({"spec": {"fields": ["messages", "account_update"]}});
    scene
        .api::<WebhookSubscription>()
        .patch("hooks", &PatchParams::default(), &Patch::Merge(&poke))
        .await?;
    let refused = scene.ready_reason("hooks", "Conflict").await?;
    let message = condition(&refused, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains("kubectl-scale") && message.contains(".spec.replicas"),
        "the conflict names the manager and the field: {message}"
    );
    let replicas = scene
        .api::<Deployment>()
        .get("hooks")
        .await?
        .spec
        .and_then(|s| s.replicas);
    ensure!(replicas == Some(3), "not overwritten: {replicas:?}");

    // Deleting the subscription collects its own (the adopted Service included), not the
    // team's Deployment `orders`.
    scene
        .api::<WebhookSubscription>()
        .delete("hooks", &DeleteParams::background())
        .await?;
    wait_for(
        "garbage collection of the subscription's objects",
        2 * WAIT,
        Some(&scene.operator),
        || async {
            let left = (
                scene.api::<Deployment>().get_opt("hooks").await?.is_some(),
                scene.api::<Service>().get_opt("hooks").await?.is_some(),
                scene
                    .api::<ConfigMap>()
                    .get_opt("hooks-receiver")
                    .await?
                    .is_some(),
            );
            match left {
                (false, false, false) => Ok(Some(())),
                left => anyhow::bail!("still there (Deployment, Service, ConfigMap): {left:?}"),
            }
        },
    )
    .await?;
    let team = scene.api::<Deployment>().get("orders").await?;
    ensure!(
        team.uid() == team_deployment.uid(),
        "the team's Deployment survives"
    );
    Ok(())
}
