//! The operator enforces its own spec on a server that does not: Kubernetes 1.20 predates
//! CEL, so the CRD is installed without its rules and the API server stores whatever it is
//! given. The operator refuses it itself (`InvalidSpec`) and creates nothing.

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;

use super::condition;
use super::scene::{scene, spec};

/// The findings, each stored by the server as it is: mutual TLS without its CA
/// (rendered as plain HTTPS before), a file sink named `../../etc/passwd`, an unknown
/// object. Each is refused, named, and nothing is made.
#[tokio::test]
async fn a_spec_the_server_stores_but_the_rules_refuse_is_refused_by_the_operator() -> Result<()> {
    let scene = scene("e2e-invalid").await?;
    let mut mutual = spec("deployment");
    mutual["tls"] = serde_json::json!({"mode": "mutual"});
    let mut traversal = spec("deployment");
    traversal["delivery"] =
        serde_json::json!({"sinks": [{"name": "audit", "file": {"name": "../../etc/passwd"}}]});
    let mut unknown = spec("deployment");
    unknown["object"] = serde_json::json!("tiktok");
    let cases = [
        (
            "mutual",
            mutual,
            "spec.tls.clientCARef: tls.mode mutual needs the CA bundle",
        ),
        (
            "traversal",
            traversal,
            "spec.delivery.sinks[0].file.name: a plain file name",
        ),
        ("unknown", unknown, "spec.object: "),
    ];
    for (name, spec, _) in &cases {
        scene.subscribe(name, spec.clone()).await?;
    }
    for (name, _, expected) in &cases {
        let sub = scene.ready_reason(name, "InvalidSpec").await?;
        let message = condition(&sub, "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(
            message.starts_with(expected),
            "{name}: the condition names the field and the rule: {message}"
        );
        ensure!(
            scene.api::<Deployment>().get_opt(name).await?.is_none()
                && scene
                    .api::<ConfigMap>()
                    .get_opt(&format!("{name}-receiver"))
                    .await?
                    .is_none(),
            "{name}: nothing is made of an invalid spec"
        );
    }
    Ok(())
}
