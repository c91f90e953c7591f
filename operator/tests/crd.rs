//! The committed CRD and its documentation are what the code generates. Run with
//! `METAHOOK_UPDATE_DOCS=1` to rewrite them after a deliberate change.

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use metahook_operator::WebhookSubscription;
use serde_json::Value;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn updating() -> bool {
    std::env::var_os("METAHOOK_UPDATE_DOCS").is_some()
}

/// Compares a generated file with the committed one, or rewrites it when updating.
fn check_generated(relative: &str, generated: &str, regenerate: &str) {
    let path = repo_file(relative);
    if updating() {
        std::fs::write(&path, generated)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{relative} is stale (or missing; first difference at line {}): regenerate it with `{regenerate}`",
            line + 1
        );
    }
}

#[test]
fn committed_crd_matches_the_code() {
    let yaml = metahook_operator::crd::crd_yaml().expect("serialize the CRD");
    check_generated(
        "crds/webhooksubscription.yaml",
        &yaml,
        "cargo run -p metahook-operator --bin crdgen > crds/webhooksubscription.yaml \
         (or METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-operator --test crd)",
    );
}

#[test]
fn crd_reference_matches_the_code() {
    check_generated(
        "docs/crd-reference.md",
        &metahook_operator::reference::crd_reference_markdown(),
        "METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-operator --test crd",
    );
}

/// Every property's path whose description is empty.
fn undescribed(node: &Value, path: &str, out: &mut Vec<String>) {
    for (name, child) in node["properties"].as_object().into_iter().flatten() {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if child["description"]
            .as_str()
            .is_none_or(|d| d.trim().is_empty())
        {
            out.push(child_path.clone());
        }
        undescribed(child, &child_path, out);
    }
    if node["items"].is_object() {
        undescribed(&node["items"], &format!("{path}[]"), out);
    }
    if node["additionalProperties"].is_object() {
        undescribed(&node["additionalProperties"], &format!("{path}.<key>"), out);
    }
}

#[test]
fn every_property_has_a_description() {
    // kubectl explain shows them; a doc comment on the Rust field is the description.
    let mut missing = Vec::new();
    undescribed(&schema(), "", &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description (add a doc comment in operator/src/crd.rs): {missing:#?}"
    );
}

/// The CRD's openAPIV3Schema, as the API server holds it.
fn schema() -> Value {
    let crd = WebhookSubscription::crd();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|version| version.schema.as_ref())
        .and_then(|schema| schema.open_api_v3_schema.as_ref())
        .expect("the CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("schema as JSON")
}
