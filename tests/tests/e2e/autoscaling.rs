//! `spec.receiver.autoscaling` on a real API server (1.20: autoscaling/v2beta2, found by
//! discovery) with kube-controller-manager's HorizontalPodAutoscaler controller running:
//! the server accepts the operator's HorizontalPodAutoscaler, the real autoscaler sets the
//! workload's count, someone scaling through `/scale` as the autoscaler does is left alone
//! pass after pass, and turning autoscaling off takes the count back and deletes the
//! autoscaler, all without a conflict or a warning. And the server behaviour the hand-over
//! of `spec.replicas` exists for: a field dropped from a server-side apply is reset when
//! no other manager holds it.

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Client, Resource, ResourceExt};
use metahook_operator::crd::WebhookSubscription;
use metahook_operator::resources::autoscaling::{HANDOVER_FIELD_MANAGER, hpa_resource};
use metahook_tests::cluster::wait_for;
use serde_json::{Value, json};

use super::scene::{Scene, scene, spec};
use super::{WAIT, assert_clean_log, condition, poke_with};

/// The subscription's workload, whichever kind it is, read as JSON.
struct Workload {
    kind: &'static str,
    api: Api<DynamicObject>,
    name: String,
}

impl Workload {
    /// The workload the operator made for `name` (Deployment or StatefulSet).
    async fn find(scene: &Scene, name: &str) -> Result<Workload> {
        let candidates = [
            ("Deployment", ApiResource::erase::<Deployment>(&())),
            ("StatefulSet", ApiResource::erase::<StatefulSet>(&())),
        ];
        wait_for(
            &format!("the workload of {name}"),
            WAIT,
            Some(&scene.operator),
            || async {
                for (kind, resource) in &candidates {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(scene.client.clone(), &scene.namespace, resource);
                    if api.get_opt(name).await?.is_some() {
                        return Ok(Some(Workload {
                            kind,
                            api,
                            name: name.to_owned(),
                        }));
                    }
                }
                Ok(None)
            },
        )
        .await
    }

    /// `spec.replicas` and `metadata.generation` as the server has them now.
    async fn replicas(&self) -> Result<(i64, i64)> {
        let object = self.api.get(&self.name).await?;
        let replicas = object.data["spec"]["replicas"]
            .as_i64()
            .context("no spec.replicas")?;
        Ok((replicas, object.metadata.generation.unwrap_or(0)))
    }

    /// Waits until `spec.replicas` is `wanted`; returns the generation then.
    async fn replicas_become(&self, scene: &Scene, wanted: i64, why: &str) -> Result<i64> {
        wait_for(
            &format!("{} {} at {wanted} replicas ({why})", self.kind, self.name),
            2 * WAIT,
            Some(&scene.operator),
            || async {
                let (replicas, generation) = self.replicas().await?;
                Ok((replicas == wanted).then_some(generation))
            },
        )
        .await
    }

    /// The field managers holding `spec.replicas`.
    async fn replicas_managers(&self) -> Result<Vec<String>> {
        let object = self.api.get(&self.name).await?;
        Ok(object
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter(|entry| {
                entry
                    .fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
            })
            .filter_map(|entry| entry.manager)
            .collect())
    }
}

/// The subscription once the operator has written a status for `generation`.
async fn observed(scene: &Scene, name: &str, generation: i64) -> Result<WebhookSubscription> {
    let api = scene.api::<WebhookSubscription>();
    wait_for(
        &format!("status of {name} for generation {generation}"),
        WAIT,
        Some(&scene.operator),
        || async {
            let current = api.get(name).await?;
            let observed = current.status.as_ref().and_then(|s| s.observed_generation);
            Ok((observed == Some(generation)).then_some(current))
        },
    )
    .await
}

/// The subscription's `spec.receiver` replaced by a merge patch of `receiver`.
async fn set_receiver(scene: &Scene, name: &str, receiver: &Value) -> Result<()> {
    scene
        .api::<WebhookSubscription>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"receiver": receiver}})),
        )
        .await
        .with_context(|| format!("changing spec.receiver of {name} to {receiver}"))?;
    Ok(())
}

async fn hpa_api(client: &Client, namespace: &str) -> Result<(ApiResource, Api<DynamicObject>)> {
    let capabilities = metahook_operator::controller::discover(client).await?;
    let version = capabilities
        .autoscaling
        .context("the server serves neither autoscaling/v2 nor v2beta2")?;
    let resource = hpa_resource(version);
    let api = Api::namespaced_with(client.clone(), namespace, &resource);
    Ok((resource, api))
}

/// For an example with `receiver.autoscaling`: its HorizontalPodAutoscaler (of the version
/// the server serves) is the subscription's and targets its workload, which runs at the
/// autoscaler's floor. Nothing to check for the others.
pub(super) async fn check_example(client: &Client, sub: &WebhookSubscription) -> Result<()> {
    let Some(wanted) = &sub.spec.receiver.autoscaling else {
        return Ok(());
    };
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    let (_, hpas) = hpa_api(client, &namespace).await?;
    let hpa = hpas
        .get(&name)
        .await
        .with_context(|| format!("{name}: the HorizontalPodAutoscaler"))?;
    ensure!(
        hpa.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == sub.uid().as_ref()),
        "{name}: the HorizontalPodAutoscaler is not the subscription's"
    );
    let spec = &hpa.data["spec"];
    let kind = spec["scaleTargetRef"]["kind"].as_str().unwrap_or_default();
    let replicas = match kind {
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), &namespace)
            .get(&name)
            .await?
            .spec
            .and_then(|s| s.replicas),
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), &namespace)
            .get(&name)
            .await?
            .spec
            .and_then(|s| s.replicas),
        other => bail!("{name}: the HorizontalPodAutoscaler targets a {other:?}"),
    };
    ensure!(
        spec["minReplicas"] == wanted.min_replicas
            && spec["maxReplicas"] == wanted.max_replicas
            && replicas == Some(wanted.min_replicas),
        "{name}: HorizontalPodAutoscaler {spec}, {kind} at {replicas:?} replicas"
    );
    Ok(())
}

#[tokio::test]
async fn the_autoscaler_owns_the_count_and_the_operator_never_fights_it() -> Result<()> {
    let scene = scene("e2e-hpa").await?;
    let mut fixed = spec("deployment");
    fixed["receiver"]["replicas"] = json!(2);
    let sub = scene.subscribe("hooks", fixed).await?;
    observed(&scene, "hooks", 1).await?;
    let workload = Workload::find(&scene, "hooks").await?;
    let (replicas, first_generation) = workload.replicas().await?;
    ensure!(replicas == 2, "{} at {replicas} replicas", workload.kind);

    // Autoscaling on, with a floor (3) above the count (2): kube-controller-manager's
    // autoscaler raises it to the floor, which needs no metrics.
    set_receiver(
        &scene,
        "hooks",
        &json!({"replicas": 1, "autoscaling": {"minReplicas": 3, "maxReplicas": 5}}),
    )
    .await?;
    observed(&scene, "hooks", 2).await?;
    let (resource, hpas) = hpa_api(&scene.client, &scene.namespace).await?;
    let hpa = hpas
        .get("hooks")
        .await
        .context("the HorizontalPodAutoscaler")?;
    ensure!(
        hpa.owner_references()
            .iter()
            .any(|o| o.controller == Some(true)
                && o.kind == "WebhookSubscription"
                && Some(&o.uid) == sub.uid().as_ref()),
        "the HorizontalPodAutoscaler is the subscription's: {:?}",
        hpa.owner_references()
    );
    let applied_as: Vec<(String, String)> = hpa
        .managed_fields()
        .iter()
        .filter_map(|e| Some((e.manager.clone()?, e.api_version.clone()?)))
        .collect();
    ensure!(
        applied_as.contains(&("metahook-operator".to_owned(), resource.api_version.clone())),
        "applied by the operator as {} (the discovered version): {applied_as:?}",
        resource.api_version
    );
    let spec = &hpa.data["spec"];
    ensure!(
        spec["scaleTargetRef"]
            == json!({"apiVersion": "apps/v1", "kind": workload.kind, "name": "hooks"}),
        "scaleTargetRef {}",
        spec["scaleTargetRef"]
    );
    ensure!(
        spec["minReplicas"] == 3 && spec["maxReplicas"] == 5,
        "bounds {spec}"
    );
    ensure!(
        spec["metrics"]
            == json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        "the server keeps the metrics as applied: {}",
        spec["metrics"]
    );
    ensure!(
        spec["behavior"]["scaleDown"]["policies"]
            == json!([{"type": "Pods", "value": 1, "periodSeconds": 60}]),
        "the server keeps the scale-down policy: {}",
        spec["behavior"]
    );
    // The operator's apply no longer holds the count; dropping it did not reset it to 1.
    let managers = workload.replicas_managers().await?;
    ensure!(
        !managers.iter().any(|m| m == "metahook-operator"),
        "spec.replicas still held by the operator's apply: {managers:?}"
    );
    let (replicas, _) = workload.replicas().await?;
    ensure!(replicas >= 2, "the count fell to {replicas}");

    // The real autoscaler raises it to the floor: the workload's one spec change since it
    // was made (a reset to 1 on the way would have been another).
    let generation = workload
        .replicas_become(&scene, 3, "the autoscaler's minReplicas")
        .await?;
    ensure!(
        generation == first_generation + 1,
        "{} went from generation {first_generation} to {generation}: its count changed more \
         than once\n--- operator log:\n{}",
        workload.kind,
        scene.operator.log()
    );
    poke_with(&scene.client, &scene.operator, &sub, 2).await?;
    ensure!(
        workload.replicas().await? == (3, generation),
        "two passes later: {:?}",
        workload.replicas().await?
    );

    // Scaled through /scale by kube-controller-manager's manager, as the autoscaler does
    // when its metrics ask for more (4 is within its bounds, so it keeps it).
    workload
        .api
        .patch_scale(
            "hooks",
            &PatchParams {
                field_manager: Some("kube-controller-manager".to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&json!({"spec": {"replicas": 4}})),
        )
        .await
        .context("scaling through /scale as the autoscaler")?;
    poke_with(&scene.client, &scene.operator, &sub, 2).await?;
    let (replicas, _) = workload.replicas().await?;
    ensure!(replicas == 4, "two passes later: {replicas} replicas");
    let current = scene.api::<WebhookSubscription>().get("hooks").await?;
    let reported = current.status.as_ref().and_then(|s| s.receiver.clone());
    ensure!(
        reported.as_ref().map(|r| r.replicas) == Some(4),
        "the status reports the workload's count: {reported:?}"
    );
    let ready = condition(&current, "Ready").map(|c| c.reason.clone());
    ensure!(ready.as_deref() != Some("Conflict"), "Ready {ready:?}");
    assert_clean_log(&scene.operator)?;

    // Autoscaling off: the count is the operator's again, the autoscaler goes.
    set_receiver(
        &scene,
        "hooks",
        &json!({"replicas": 2, "autoscaling": null}),
    )
    .await?;
    observed(&scene, "hooks", 3).await?;
    wait_for(
        "the HorizontalPodAutoscaler to be deleted",
        WAIT,
        Some(&scene.operator),
        || async { Ok(hpas.get_opt("hooks").await?.is_none().then_some(())) },
    )
    .await?;
    workload
        .replicas_become(&scene, 2, "receiver.replicas again")
        .await?;
    poke_with(&scene.client, &scene.operator, &sub, 2).await?;
    let (replicas, _) = workload.replicas().await?;
    ensure!(replicas == 2, "two passes later: {replicas} replicas");
    let managers = workload.replicas_managers().await?;
    ensure!(
        managers == ["metahook-operator"],
        "spec.replicas held by {managers:?}, not the operator alone"
    );
    let current = scene.api::<WebhookSubscription>().get("hooks").await?;
    ensure!(
        current
            .status
            .as_ref()
            .and_then(|s| s.receiver.as_ref())
            .map(|r| r.replicas)
            == Some(2),
        "status {:?}",
        current.status.as_ref().and_then(|s| s.receiver.clone())
    );
    for line in [
        "handed spec.replicas over to the autoscaler",
        "took spec.replicas back from the autoscaler",
    ] {
        ensure!(
            scene.operator.lines_with(&[line]).len() == 1,
            "once in the operator's log: {line}\n--- operator log:\n{}",
            scene.operator.log()
        );
    }
    assert_clean_log(&scene.operator)?;
    Ok(())
}

/// Why the operator hands `spec.replicas` over before it drops the field from its apply,
/// shown on the server: dropped by its only manager, the field is reset to its default
/// (1); dropped while a second manager holds it too, it keeps its value.
#[tokio::test]
async fn a_field_dropped_from_an_apply_is_reset_unless_another_manager_holds_it() -> Result<()> {
    let scene = scene("e2e-ssa-drop").await?;
    let deployments = scene.api::<Deployment>();
    let deployment = |name: &str, replicas: Option<i64>| {
        let mut body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
                },
            },
        });
        if let Some(replicas) = replicas {
            body["spec"]["replicas"] = json!(replicas);
        }
        body
    };
    let apply = PatchParams::apply("e2e-owner");
    let replicas_of = |d: Deployment| d.spec.and_then(|s| s.replicas);
    for (name, hand_over, expected) in [("alone", false, 1), ("handed", true, 4)] {
        deployments
            .patch(name, &apply, &Patch::Apply(deployment(name, Some(4))))
            .await
            .with_context(|| format!("{name}: the apply with replicas"))?;
        if hand_over {
            deployments
                .patch(
                    name,
                    &PatchParams::apply(HANDOVER_FIELD_MANAGER),
                    &Patch::Apply(json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": name},
                        "spec": {"replicas": 4},
                    })),
                )
                .await
                .with_context(|| format!("{name}: the hand-over"))?;
        }
        let after = deployments
            .patch(name, &apply, &Patch::Apply(deployment(name, None)))
            .await
            .with_context(|| format!("{name}: the apply without replicas"))?;
        let replicas = replicas_of(after);
        if replicas != Some(expected) {
            bail!(
                "{name} (hand-over: {hand_over}): {replicas:?} replicas after the apply dropped \
                 the field, expected {expected}"
            );
        }
        let held_by: Vec<String> = deployments
            .get(name)
            .await?
            .meta()
            .managed_fields
            .iter()
            .flatten()
            .filter(|e| {
                e.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
            })
            .filter_map(|e| e.manager.clone())
            .collect();
        let expected_holders: &[&str] = if hand_over {
            &[HANDOVER_FIELD_MANAGER]
        } else {
            &[]
        };
        ensure!(
            held_by == expected_holders,
            "{name}: spec.replicas held by {held_by:?}"
        );
    }
    Ok(())
}
