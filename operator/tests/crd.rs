//! The committed CRD and its documentation are what the code generates. Run with
//! `METAHOOK_UPDATE_DOCS=1` to rewrite them after a deliberate change.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::core::cel::{ErrorKind, ValidationError, ValidationErrors, Validator};
use kube::{CustomResourceExt, ResourceExt};
use metahook_operator::WebhookSubscription;
use metahook_operator::crd::TlsModeSpec;
use metahook_operator::resources::{self, Inputs};
use serde_json::{Value, json};

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
fn committed_replay_crd_matches_the_code() {
    let yaml = metahook_operator::replay_crd::crd_yaml().expect("serialize the CRD");
    check_generated(
        "crds/webhookreplay.yaml",
        &yaml,
        "cargo run -p metahook-operator --bin crdgen -- replay > crds/webhookreplay.yaml \
         (or METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-operator --test crd)",
    );
}

#[test]
fn replay_reference_matches_the_code() {
    check_generated(
        "docs/webhookreplay-reference.md",
        &metahook_operator::crd_reference::replay_reference_markdown(),
        "METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-operator --test crd",
    );
}

#[test]
fn crd_reference_matches_the_code() {
    check_generated(
        "docs/crd-reference.md",
        &metahook_operator::crd_reference::crd_reference_markdown(),
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

/// Every `x-kubernetes-validations` message in the schema, with the path carrying it.
fn rule_messages(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    for rule in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let message = rule["message"].as_str().unwrap_or_default().to_owned();
        out.push((path.to_owned(), message));
    }
    for (name, child) in node["properties"].as_object().into_iter().flatten() {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        rule_messages(child, &child_path, out);
    }
    if node["items"].is_object() {
        rule_messages(&node["items"], &format!("{path}[]"), out);
    }
}

/// JSON merge patch (RFC 7386): objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// A valid subscription as the API server stores it (defaulted fields spelled out), with
/// `patch` merged in.
fn subscription(patch: &Value) -> Value {
    let mut object = json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": {"name": "acme-whatsapp", "namespace": "messaging"},
        "spec": {
            "object": "whatsapp_business_account",
            "fields": ["messages"],
            "appSecretRef": {"name": "meta-app", "key": "app-secret"},
            "delivery": {
                "mode": "spool",
                "sinks": [{"name": "bus", "nats": {"url": "nats://nats.nats:4222", "createStream": false}}],
            },
            "tls": {"mode": "none", "allowedClientNames": ["client.webhooks.fbclientcerts.com"]},
            "receiver": {"mode": "deployment", "replicas": 1},
            "monitoring": {"serviceMonitor": false},
        },
    });
    merge(&mut object, patch);
    object
}

/// `subscription` with a patch of the spec.
fn with_spec(spec: &Value) -> Value {
    subscription(&json!({ "spec": spec }))
}

/// A sink list holding one sink.
fn sinks(sink: &Value) -> Value {
    json!({"delivery": {"sinks": [sink]}})
}

fn validate(schema: &Value, object: &Value) -> Result<(), Vec<ValidationError>> {
    Validator::new()
        .validate(schema, object, None)
        .map_err(ValidationErrors::into_vec)
}

/// One CEL rule: objects it accepts and objects it rejects with its message at `field_path`.
struct Case {
    /// How the rule's message starts.
    message: &'static str,
    /// Where the API server reports it.
    field_path: &'static str,
    valid: Vec<(&'static str, Value)>,
    invalid: Vec<(&'static str, Value)>,
}

#[allow(clippy::too_many_lines)] // one table of every rule
fn cases() -> Vec<Case> {
    let long_name = "a".repeat(48);
    let longest_name = "a".repeat(47);
    vec![
        Case {
            message: "metadata.name: at most 47 characters",
            field_path: "",
            valid: vec![(
                "47 characters",
                subscription(&json!({"metadata": {"name": longest_name}})),
            )],
            invalid: vec![(
                "48 characters",
                subscription(&json!({"metadata": {"name": long_name}})),
            )],
        },
        Case {
            message: "not an object Meta sends webhooks for",
            field_path: "spec.object",
            valid: vec![
                (
                    "page",
                    with_spec(&json!({"object": "page", "fields": ["feed"]})),
                ),
                (
                    "instagram",
                    with_spec(&json!({"object": "instagram", "fields": ["comments"]})),
                ),
                (
                    "Graph object user",
                    with_spec(&json!({"object": "user", "fields": ["email"]})),
                ),
            ],
            invalid: vec![
                (
                    "whatsapp (the object is whatsapp_business_account)",
                    with_spec(&json!({"object": "whatsapp"})),
                ),
                (
                    "facebook_page",
                    with_spec(&json!({"object": "facebook_page", "fields": ["feed"]})),
                ),
            ],
        },
        Case {
            message: "a field is not documented for this object",
            field_path: "spec.fields",
            valid: vec![
                (
                    "WhatsApp fields",
                    with_spec(&json!({"fields": [
                        "messages", "message_template_status_update", "account_update",
                    ]})),
                ),
                (
                    "page with Lead Ads and Messenger fields",
                    with_spec(&json!({"object": "page", "fields": [
                        "feed", "leadgen", "mention", "ratings", "messages", "messaging_postbacks",
                    ]})),
                ),
                (
                    "instagram fields",
                    with_spec(&json!({"object": "instagram", "fields": [
                        "comments", "mentions", "messages", "story_insights",
                    ]})),
                ),
                (
                    "Graph object permissions accepts any field",
                    with_spec(&json!({"object": "permissions", "fields": [
                        "email", "pages_manage_metadata", "anything_at_all",
                    ]})),
                ),
            ],
            invalid: vec![
                (
                    "page with statuses (a WhatsApp messages value, not a field)",
                    with_spec(&json!({"object": "page", "fields": ["feed", "statuses"]})),
                ),
                (
                    "whatsapp_business_account with leadgen (a page field)",
                    with_spec(&json!({"fields": ["messages", "leadgen"]})),
                ),
                (
                    "instagram with feed (a page field)",
                    with_spec(&json!({"object": "instagram", "fields": ["feed"]})),
                ),
            ],
        },
        Case {
            message: "direct delivery needs at least one sink",
            field_path: "spec.delivery.sinks",
            valid: vec![(
                "direct with one sink",
                with_spec(&json!({"delivery": {"mode": "direct"}})),
            )],
            invalid: vec![(
                "direct with no sinks",
                with_spec(&json!({"delivery": {"mode": "direct", "sinks": []}})),
            )],
        },
        Case {
            message: "an ephemeral spool is an emptyDir: size and storageClassName do not apply",
            field_path: "spec.delivery.spool",
            valid: vec![
                (
                    "ephemeral alone",
                    with_spec(&json!({"delivery": {"spool": {"ephemeral": true}}})),
                ),
                (
                    "a claim's size and class",
                    with_spec(
                        &json!({"delivery": {"spool": {"size": "4Gi", "storageClassName": "fast"}}}),
                    ),
                ),
                (
                    "not ephemeral, with a size",
                    with_spec(&json!({"delivery": {"spool": {"ephemeral": false, "size": "4Gi"}}})),
                ),
            ],
            invalid: vec![
                (
                    "ephemeral with a size",
                    with_spec(&json!({"delivery": {"spool": {"ephemeral": true, "size": "4Gi"}}})),
                ),
                (
                    "ephemeral with a class",
                    with_spec(
                        &json!({"delivery": {"spool": {"ephemeral": true, "storageClassName": "fast"}}}),
                    ),
                ),
            ],
        },
        Case {
            message: "set maxAge, maxBytes or both (omit retention to keep nothing)",
            field_path: "spec.delivery.spool.retention",
            valid: vec![
                (
                    "maxAge",
                    with_spec(&json!({"delivery": {"spool": {"retention": {"maxAge": "72h"}}}})),
                ),
                (
                    "maxBytes",
                    with_spec(
                        &json!({"delivery": {"spool": {"retention": {"maxBytes": "20GiB"}}}}),
                    ),
                ),
            ],
            invalid: vec![(
                "neither",
                with_spec(&json!({"delivery": {"spool": {"retention": {}}}})),
            )],
        },
        Case {
            message: "direct delivery keeps no spool volume",
            field_path: "spec.delivery.spool",
            valid: vec![(
                "spool mode with a persistent spool",
                with_spec(&json!({"delivery": {"spool": {"size": "1Gi"}}})),
            )],
            invalid: vec![(
                "direct with a spool",
                with_spec(&json!({"delivery": {"mode": "direct", "spool": {"size": "1Gi"}}})),
            )],
        },
        Case {
            message: "a sidecar runs in your own pod",
            field_path: "spec.receiver.mode",
            valid: vec![
                (
                    "sidecar",
                    with_spec(&json!({"receiver": {"mode": "sidecar"}})),
                ),
                (
                    "sidecar with TLS",
                    with_spec(&json!({"receiver": {"mode": "sidecar"}, "tls": {"mode": "server"}})),
                ),
            ],
            invalid: vec![
                (
                    "sidecar with an ingress",
                    with_spec(&json!({
                        "receiver": {"mode": "sidecar"},
                        "ingress": {"host": "hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []},
                    })),
                ),
                (
                    "sidecar with a ServiceMonitor",
                    with_spec(
                        &json!({"receiver": {"mode": "sidecar"}, "monitoring": {"serviceMonitor": true}}),
                    ),
                ),
                (
                    "sidecar with a persistent spool",
                    with_spec(
                        &json!({"receiver": {"mode": "sidecar"}, "delivery": {"spool": {"size": "1Gi"}}}),
                    ),
                ),
            ],
        },
        Case {
            message: "passthrough needs tls.mode server or mutual",
            field_path: "spec.ingress.tlsTermination",
            valid: vec![
                (
                    "passthrough with tls server",
                    with_spec(&json!({
                        "tls": {"mode": "server"},
                        "ingress": {"host": "hooks.example.com", "tlsTermination": "passthrough", "trustedProxyCIDRs": []},
                    })),
                ),
                (
                    "ingress termination with tls none",
                    with_spec(&json!({
                        "ingress": {"host": "hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []},
                    })),
                ),
            ],
            invalid: vec![(
                "passthrough with tls none",
                with_spec(&json!({
                    "ingress": {"host": "hooks.example.com", "tlsTermination": "passthrough", "trustedProxyCIDRs": []},
                })),
            )],
        },
        Case {
            message: "when the ingress terminates mutual TLS",
            field_path: "spec.ingress.trustedProxyCIDRs",
            valid: vec![
                (
                    "mutual at the ingress with the ingress's addresses",
                    with_spec(&json!({
                        "tls": {"mode": "mutual", "clientCARef": {"name": "meta-client-ca", "key": "ca.crt"}},
                        "ingress": {"host": "hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": ["10.0.0.0/8"]},
                    })),
                ),
                (
                    "mutual through passthrough needs no proxy addresses",
                    with_spec(&json!({
                        "tls": {"mode": "mutual", "clientCARef": {"name": "meta-client-ca", "key": "ca.crt"}},
                        "ingress": {"host": "hooks.example.com", "tlsTermination": "passthrough", "trustedProxyCIDRs": []},
                    })),
                ),
            ],
            invalid: vec![(
                "mutual at the ingress without trustedProxyCIDRs",
                with_spec(&json!({
                    "tls": {"mode": "mutual", "clientCARef": {"name": "meta-client-ca", "key": "ca.crt"}},
                    "ingress": {"host": "hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []},
                })),
            )],
        },
        Case {
            message: "tls.mode mutual needs the CA bundle",
            field_path: "spec.tls.clientCARef",
            valid: vec![(
                "mutual with clientCARef",
                with_spec(
                    &json!({"tls": {"mode": "mutual", "clientCARef": {"name": "meta-client-ca", "key": "ca.crt"}}}),
                ),
            )],
            invalid: vec![(
                "mutual without clientCARef",
                with_spec(&json!({"tls": {"mode": "mutual"}})),
            )],
        },
        Case {
            message: "secretRef and clientCARef need tls.mode server or mutual",
            field_path: "spec.tls.mode",
            valid: vec![(
                "server with secretRef",
                with_spec(
                    &json!({"tls": {"mode": "server", "secretRef": {"name": "hooks-example-com-tls"}}}),
                ),
            )],
            invalid: vec![
                (
                    "none with secretRef",
                    with_spec(&json!({"tls": {"secretRef": {"name": "hooks-example-com-tls"}}})),
                ),
                (
                    "none with clientCARef",
                    with_spec(
                        &json!({"tls": {"clientCARef": {"name": "meta-client-ca", "key": "ca.crt"}}}),
                    ),
                ),
            ],
        },
        Case {
            message: "set exactly one sink kind",
            field_path: "spec.delivery.sinks[0]",
            valid: vec![
                (
                    "http",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm.internal/hooks"}}),
                    )),
                ),
                (
                    "postgres",
                    with_spec(&sinks(
                        &json!({"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"}}}),
                    )),
                ),
                (
                    "file",
                    with_spec(&sinks(
                        &json!({"name": "audit", "file": {"name": "events.jsonl"}}),
                    )),
                ),
            ],
            invalid: vec![
                ("no kind", with_spec(&sinks(&json!({"name": "bus"})))),
                (
                    "nats and http",
                    with_spec(&sinks(&json!({
                        "name": "bus",
                        "nats": {"url": "nats://nats.nats:4222", "createStream": false},
                        "http": {"url": "https://crm.internal/hooks"},
                    }))),
                ),
            ],
        },
        Case {
            message: "lowercase letters, digits, '-' and '_'",
            field_path: "spec.delivery.sinks[0].name",
            valid: vec![(
                "crm_hooks-2",
                with_spec(&sinks(
                    &json!({"name": "crm_hooks-2", "http": {"url": "https://crm.internal/hooks"}}),
                )),
            )],
            invalid: vec![
                (
                    "upper case",
                    with_spec(&sinks(
                        &json!({"name": "Bus", "nats": {"url": "nats://n:4222"}}),
                    )),
                ),
                (
                    "leading dash",
                    with_spec(&sinks(
                        &json!({"name": "-bus", "nats": {"url": "nats://n:4222"}}),
                    )),
                ),
                (
                    "trailing dash",
                    with_spec(&sinks(
                        &json!({"name": "bus-", "nats": {"url": "nats://n:4222"}}),
                    )),
                ),
                (
                    "dot",
                    with_spec(&sinks(
                        &json!({"name": "bus.events", "nats": {"url": "nats://n:4222"}}),
                    )),
                ),
            ],
        },
        Case {
            message: "an http:// or https:// URL",
            field_path: "spec.delivery.sinks[0].http.url",
            valid: vec![(
                "http inside the cluster",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "http://crm.crm.svc:8080/hooks"}}),
                )),
            )],
            invalid: vec![
                (
                    "ftp",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "ftp://crm.internal/hooks"}}),
                    )),
                ),
                (
                    "no scheme",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "crm.internal/hooks"}}),
                    )),
                ),
            ],
        },
        Case {
            message: "metadata.name: a DNS label starting with a letter",
            field_path: "",
            valid: vec![(
                "hooks-v1",
                subscription(&json!({"metadata": {"name": "hooks-v1"}})),
            )],
            invalid: vec![
                (
                    "a dot (a Service cannot be named so)",
                    subscription(&json!({"metadata": {"name": "hooks.v1"}})),
                ),
                (
                    "a leading digit",
                    subscription(&json!({"metadata": {"name": "1hooks"}})),
                ),
            ],
        },
        Case {
            message: "a Secret name (lowercase letters, digits, '-' and '.')",
            field_path: "spec.appSecretRef.name",
            valid: vec![(
                "meta-app.v2",
                with_spec(&json!({"appSecretRef": {"name": "meta-app.v2", "key": "app-secret"}})),
            )],
            invalid: vec![
                (
                    "a path",
                    with_spec(
                        &json!({"appSecretRef": {"name": "../db-creds", "key": "app-secret"}}),
                    ),
                ),
                (
                    "capitals",
                    with_spec(&json!({"appSecretRef": {"name": "Meta_App", "key": "app-secret"}})),
                ),
            ],
        },
        Case {
            message: "a Secret key: letters, digits, '-', '_' and '.'",
            field_path: "spec.appSecretRef.key",
            valid: vec![(
                "tls.crt",
                with_spec(&json!({"appSecretRef": {"name": "meta-app", "key": "App_Secret.v2"}})),
            )],
            invalid: vec![
                (
                    "a path",
                    with_spec(
                        &json!({"appSecretRef": {"name": "meta-app", "key": "../../etc/passwd"}}),
                    ),
                ),
                (
                    "..",
                    with_spec(&json!({"appSecretRef": {"name": "meta-app", "key": ".."}})),
                ),
            ],
        },
        Case {
            message: "a plain file name",
            field_path: "spec.delivery.sinks[0].file.name",
            valid: vec![(
                "events.jsonl",
                with_spec(&sinks(
                    &json!({"name": "audit", "file": {"name": "events.jsonl"}}),
                )),
            )],
            invalid: vec![
                (
                    "a path",
                    with_spec(&sinks(
                        &json!({"name": "audit", "file": {"name": "audit/events.jsonl"}}),
                    )),
                ),
                (
                    "..",
                    with_spec(&sinks(&json!({"name": "audit", "file": {"name": ".."}}))),
                ),
                (
                    "escape",
                    with_spec(&sinks(
                        &json!({"name": "audit", "file": {"name": "../../etc/passwd"}}),
                    )),
                ),
            ],
        },
        Case {
            message: "a duration such as 30s, 5m or 1h",
            field_path: "spec.delivery.retry.maxBackoff",
            valid: vec![
                (
                    "5m",
                    with_spec(
                        &json!({"delivery": {"retry": {"maxAttempts": 20, "maxBackoff": "5m"}}}),
                    ),
                ),
                (
                    "1h30m",
                    with_spec(&json!({"delivery": {"retry": {"maxBackoff": "1h30m"}}})),
                ),
                (
                    "500ms",
                    with_spec(&json!({"delivery": {"retry": {"maxBackoff": "500ms"}}})),
                ),
            ],
            invalid: vec![
                (
                    "no unit",
                    with_spec(&json!({"delivery": {"retry": {"maxBackoff": "300"}}})),
                ),
                (
                    "days",
                    with_spec(&json!({"delivery": {"retry": {"maxBackoff": "1d"}}})),
                ),
                (
                    "words",
                    with_spec(&json!({"delivery": {"retry": {"maxBackoff": "5 minutes"}}})),
                ),
            ],
        },
        Case {
            message: "a duration such as 30s, 5m or 1h",
            field_path: "spec.delivery.sinks[0].retry.maxBackoff",
            valid: vec![(
                "a sink's own 30s",
                with_spec(&sinks(
                    &json!({"name": "bus", "nats": {"url": "nats://n:4222"}, "retry": {"maxBackoff": "30s"}}),
                )),
            )],
            invalid: vec![(
                "a sink's own 30 seconds",
                with_spec(&sinks(
                    &json!({"name": "bus", "nats": {"url": "nats://n:4222"}, "retry": {"maxBackoff": "30 seconds"}}),
                )),
            )],
        },
        Case {
            message: "a quantity such as 1Gi",
            field_path: "spec.delivery.spool.size",
            valid: vec![
                (
                    "1Gi",
                    with_spec(&json!({"delivery": {"spool": {"size": "1Gi"}}})),
                ),
                (
                    "1.5Gi",
                    with_spec(
                        &json!({"delivery": {"spool": {"size": "1.5Gi", "storageClassName": "fast"}}}),
                    ),
                ),
                (
                    "500M",
                    with_spec(&json!({"delivery": {"spool": {"size": "500M"}}})),
                ),
            ],
            invalid: vec![
                (
                    "GB",
                    with_spec(&json!({"delivery": {"spool": {"size": "1GB"}}})),
                ),
                (
                    "space",
                    with_spec(&json!({"delivery": {"spool": {"size": "1 Gi"}}})),
                ),
                (
                    "negative",
                    with_spec(&json!({"delivery": {"spool": {"size": "-1Gi"}}})),
                ),
                (
                    "empty",
                    with_spec(&json!({"delivery": {"spool": {"size": ""}}})),
                ),
            ],
        },
        Case {
            message: "a DNS name",
            field_path: "spec.ingress.host",
            valid: vec![(
                "hooks.example.com",
                with_spec(
                    &json!({"ingress": {"host": "hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []}}),
                ),
            )],
            invalid: vec![
                (
                    "upper case",
                    with_spec(
                        &json!({"ingress": {"host": "Hooks.Example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []}}),
                    ),
                ),
                (
                    "a URL",
                    with_spec(
                        &json!({"ingress": {"host": "https://hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []}}),
                    ),
                ),
                (
                    "underscore",
                    with_spec(
                        &json!({"ingress": {"host": "hooks_example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []}}),
                    ),
                ),
            ],
        },
        Case {
            message: "createStream needs the stream's name",
            field_path: "spec.delivery.sinks[0].nats.stream",
            valid: vec![(
                "createStream with a stream",
                with_spec(&json!({"delivery": {"sinks": [{"name": "bus", "nats": {
                    "url": "nats://nats:4222", "createStream": true, "stream": "META",
                }}]}})),
            )],
            invalid: vec![(
                "createStream without a stream",
                with_spec(&json!({"delivery": {"sinks": [{"name": "bus", "nats": {
                    "url": "nats://nats:4222", "createStream": true,
                }}]}})),
            )],
        },
        Case {
            message: "host:port of each broker",
            field_path: "spec.delivery.sinks[0].kafka.bootstrapServers",
            valid: vec![(
                "two brokers",
                with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                    "bootstrapServers": ["kafka-0.kafka:9092", "10.0.0.7:9093"],
                }}]}})),
            )],
            invalid: vec![
                (
                    "a URL",
                    with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                        "bootstrapServers": ["kafka://kafka:9092"],
                    }}]}})),
                ),
                (
                    "no port",
                    with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                        "bootstrapServers": ["kafka:9092", "kafka-1"],
                    }}]}})),
                ),
            ],
        },
        Case {
            message: "a topic name",
            field_path: "spec.delivery.sinks[0].kafka.topic",
            valid: vec![(
                "placeholders",
                with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                    "bootstrapServers": ["kafka:9092"], "topic": "meta.{object}.{field}-v1",
                }}]}})),
            )],
            invalid: vec![
                (
                    "a slash",
                    with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                        "bootstrapServers": ["kafka:9092"], "topic": "meta/{object}",
                    }}]}})),
                ),
                (
                    "an unknown placeholder",
                    with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                        "bootstrapServers": ["kafka:9092"], "topic": "meta.{type}",
                    }}]}})),
                ),
            ],
        },
        Case {
            message: "a duration such as 30s",
            field_path: "spec.delivery.sinks[0].kafka.deliveryTimeout",
            valid: vec![(
                "1m30s",
                with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                    "bootstrapServers": ["kafka:9092"], "deliveryTimeout": "1m30s",
                }}]}})),
            )],
            invalid: vec![(
                "30 seconds",
                with_spec(&json!({"delivery": {"sinks": [{"name": "log", "kafka": {
                    "bootstrapServers": ["kafka:9092"], "deliveryTimeout": "30 seconds",
                }}]}})),
            )],
        },
        Case {
            message: "starts with '/'",
            field_path: "spec.path",
            valid: vec![
                (
                    "/webhooks/whatsapp",
                    with_spec(&json!({"path": "/webhooks/whatsapp"})),
                ),
                (
                    "/meta/v1/hooks~acme",
                    with_spec(&json!({"path": "/meta/v1/hooks~acme"})),
                ),
            ],
            invalid: vec![
                (
                    "/metrics (reserved)",
                    with_spec(&json!({"path": "/metrics"})),
                ),
                (
                    "/healthz (reserved)",
                    with_spec(&json!({"path": "/healthz"})),
                ),
                ("/readyz (reserved)", with_spec(&json!({"path": "/readyz"}))),
                ("relative", with_spec(&json!({"path": "webhooks/whatsapp"}))),
                (
                    "query string",
                    with_spec(&json!({"path": "/webhooks?object=page"})),
                ),
                ("space", with_spec(&json!({"path": "/web hooks"}))),
            ],
        },
        Case {
            message: "registration needs a public callback",
            field_path: "spec.registration.callbackURL",
            valid: vec![
                (
                    "callbackURL",
                    with_spec(&json!({"registration": registration(&json!({}))})),
                ),
                (
                    "an ingress host",
                    with_spec(&json!({
                        "ingress": {"host": "hooks.example.com", "tlsTermination": "ingress", "trustedProxyCIDRs": []},
                        "registration": registration(&json!({"callbackURL": null})),
                    })),
                ),
            ],
            invalid: vec![(
                "neither",
                with_spec(&json!({"registration": registration(&json!({"callbackURL": null}))})),
            )],
        },
        Case {
            message: "registration.fields must be among spec.fields",
            field_path: "spec.registration.fields",
            valid: vec![(
                "a subset",
                with_spec(&json!({"registration": registration(&json!({"fields": ["messages"]}))})),
            )],
            invalid: vec![(
                "a field the receiver does not subscribe",
                with_spec(
                    &json!({"registration": registration(&json!({"fields": ["messages", "calls"]}))}),
                ),
            )],
        },
        Case {
            message: "registration.pages needs object page or instagram",
            field_path: "spec.registration.pages",
            valid: vec![(
                "page",
                with_spec(&json!({
                    "object": "page", "fields": ["feed"],
                    "registration": registration(&json!({"pages": [{"id": "111", "accessTokenRef": {"name": "p", "key": "t"}}]})),
                })),
            )],
            invalid: vec![(
                "whatsapp_business_account",
                with_spec(&json!({
                    "registration": registration(&json!({"pages": [{"id": "111", "accessTokenRef": {"name": "p", "key": "t"}}]})),
                })),
            )],
        },
        Case {
            message: "registration.pages[].login: instagram needs object instagram",
            field_path: "spec.registration.pages",
            valid: vec![
                (
                    "instagram login on object instagram",
                    with_spec(&json!({
                        "object": "instagram", "fields": ["comments"],
                        "registration": registration(&json!({"pages": [{"id": "178", "accessTokenRef": {"name": "p", "key": "t"}, "login": "instagram"}]})),
                    })),
                ),
                (
                    "facebook login on object page",
                    with_spec(&json!({
                        "object": "page", "fields": ["feed"],
                        "registration": registration(&json!({"pages": [{"id": "111", "accessTokenRef": {"name": "p", "key": "t"}, "login": "facebook"}]})),
                    })),
                ),
            ],
            invalid: vec![(
                "instagram login on object page",
                with_spec(&json!({
                    "object": "page", "fields": ["feed"],
                    "registration": registration(&json!({"pages": [{"id": "111", "accessTokenRef": {"name": "p", "key": "t"}, "login": "instagram"}]})),
                })),
            )],
        },
        Case {
            message: "registration.whatsappBusinessAccounts needs object whatsapp_business_account",
            field_path: "spec.registration.whatsappBusinessAccounts",
            valid: vec![(
                "whatsapp_business_account",
                with_spec(
                    &json!({"registration": registration(&json!({"whatsappBusinessAccounts": [waba(true)]}))}),
                ),
            )],
            invalid: vec![(
                "page",
                with_spec(&json!({
                    "object": "page", "fields": ["feed"],
                    "registration": registration(&json!({"whatsappBusinessAccounts": [waba(false)]})),
                })),
            )],
        },
        Case {
            // A transition rule: never evaluated on create (see
            // registration_identity_cannot_change_while_registered for updates).
            message: "object and registration.appId cannot change while registered",
            field_path: "spec.registration.appId",
            valid: vec![(
                "a create",
                with_spec(&json!({"registration": registration(&json!({}))})),
            )],
            invalid: vec![],
        },
        Case {
            message: "registration manages nothing",
            field_path: "spec.registration",
            valid: vec![(
                "only a WABA",
                with_spec(
                    &json!({"registration": registration(&json!({"appSubscription": false, "whatsappBusinessAccounts": [waba(true)]}))}),
                ),
            )],
            invalid: vec![(
                "no app subscription, Page or WABA",
                with_spec(
                    &json!({"registration": registration(&json!({"appSubscription": false}))}),
                ),
            )],
        },
        Case {
            message: "Meta accepts a WhatsApp callback override of at most 200 characters",
            field_path: "spec.registration.callbackURL",
            valid: vec![
                (
                    "a long callback without override",
                    with_spec(
                        &json!({"registration": registration(&json!({"callbackURL": long_callback(201), "whatsappBusinessAccounts": [waba(false)]}))}),
                    ),
                ),
                (
                    "a long callback with an empty phone number list",
                    with_spec(
                        &json!({"registration": registration(&json!({"callbackURL": long_callback(201), "whatsappBusinessAccounts": [{"id": "5550001", "accessTokenRef": {"name": "wa", "key": "token"}, "overrideCallback": false, "phoneNumbers": []}]}))}),
                    ),
                ),
                (
                    "200 characters with a phone number override",
                    with_spec(
                        &json!({"registration": registration(&json!({"callbackURL": long_callback(200), "whatsappBusinessAccounts": [waba_with_phone("7770001")]}))}),
                    ),
                ),
                (
                    "200 characters with override",
                    with_spec(
                        &json!({"registration": registration(&json!({"callbackURL": long_callback(200), "whatsappBusinessAccounts": [waba(true)]}))}),
                    ),
                ),
            ],
            invalid: vec![
                (
                    "201 characters with override",
                    with_spec(
                        &json!({"registration": registration(&json!({"callbackURL": long_callback(201), "whatsappBusinessAccounts": [waba(true)]}))}),
                    ),
                ),
                (
                    "201 characters with a phone number override only",
                    with_spec(
                        &json!({"registration": registration(&json!({"callbackURL": long_callback(201), "whatsappBusinessAccounts": [waba_with_phone("7770001")]}))}),
                    ),
                ),
            ],
        },
        Case {
            message: "a numeric Meta app id",
            field_path: "spec.registration.appId",
            valid: vec![(
                "digits",
                with_spec(&json!({"registration": registration(&json!({"appId": "0987"}))})),
            )],
            invalid: vec![(
                "a name",
                with_spec(&json!({"registration": registration(&json!({"appId": "my-app"}))})),
            )],
        },
        Case {
            message: "Meta calls only https:// callback URLs",
            field_path: "spec.registration.callbackURL",
            valid: vec![(
                "https",
                with_spec(&json!({"registration": registration(&json!({}))})),
            )],
            invalid: vec![(
                "http",
                with_spec(
                    &json!({"registration": registration(&json!({"callbackURL": "http://hooks.example.com/x"}))}),
                ),
            )],
        },
        Case {
            message: "a numeric Page or Instagram account id",
            field_path: "spec.registration.pages[0].id",
            valid: vec![],
            invalid: vec![(
                "a name",
                with_spec(&json!({
                    "object": "page", "fields": ["feed"],
                    "registration": registration(&json!({"pages": [{"id": "acme", "accessTokenRef": {"name": "p", "key": "t"}}]})),
                })),
            )],
        },
        Case {
            message: "a numeric WhatsApp Business Account id",
            field_path: "spec.registration.whatsappBusinessAccounts[0].id",
            valid: vec![],
            invalid: vec![(
                "a name",
                with_spec(
                    &json!({"registration": registration(&json!({"whatsappBusinessAccounts": [{"id": "acme", "accessTokenRef": {"name": "w", "key": "t"}, "overrideCallback": false}]}))}),
                ),
            )],
        },
        Case {
            message: "a numeric WhatsApp phone number id",
            field_path: "spec.registration.whatsappBusinessAccounts[0].phoneNumbers[0].id",
            valid: vec![(
                "digits",
                with_spec(
                    &json!({"registration": registration(&json!({"whatsappBusinessAccounts": [waba_with_phone("7770001")]}))}),
                ),
            )],
            invalid: vec![(
                "the phone number itself",
                with_spec(
                    &json!({"registration": registration(&json!({"whatsappBusinessAccounts": [waba_with_phone("+15550001111")]}))}),
                ),
            )],
        },
        Case {
            message: "credentials in a URL end up in the ConfigMap and logs; use userRef",
            field_path: "spec.delivery.sinks[0].nats.url",
            valid: vec![
                (
                    "a server list",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n1:4222,nats://n2:4222"}}),
                    )),
                ),
                (
                    "credentials from Secrets",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "tls://n:4222",
                        "userRef": {"name": "nats", "key": "user"}, "passwordRef": {"name": "nats", "key": "password"}}}),
                    )),
                ),
            ],
            invalid: vec![
                (
                    "user and password",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://bob:pw@n:4222"}}),
                    )),
                ),
                (
                    "a token",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://t0ken@n:4222"}}),
                    )),
                ),
                (
                    "in the second server",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n1:4222,nats://bob:pw@n2:4222"}}),
                    )),
                ),
            ],
        },
        Case {
            message: "userRef and passwordRef go together",
            field_path: "spec.delivery.sinks[0].nats.passwordRef",
            valid: vec![],
            invalid: vec![
                (
                    "userRef alone",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "userRef": {"name": "nats", "key": "user"}}}),
                    )),
                ),
                (
                    "passwordRef alone",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "passwordRef": {"name": "nats", "key": "password"}}}),
                    )),
                ),
            ],
        },
        Case {
            message: "choose one way to authenticate: userRef/passwordRef",
            field_path: "spec.delivery.sinks[0].nats",
            valid: vec![
                (
                    "tokenRef",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "tokenRef": {"name": "nats", "key": "token"}}}),
                    )),
                ),
                (
                    "nkeySeedRef",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "nkeySeedRef": {"name": "nats", "key": "seed"}}}),
                    )),
                ),
                (
                    "credentialsRef",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "credentialsRef": {"name": "nats", "key": "user.creds"}}}),
                    )),
                ),
            ],
            invalid: vec![
                (
                    "user and token",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "userRef": {"name": "nats", "key": "user"}, "passwordRef": {"name": "nats", "key": "password"},
                        "tokenRef": {"name": "nats", "key": "token"}}}),
                    )),
                ),
                (
                    "nkey and creds",
                    with_spec(&sinks(
                        &json!({"name": "bus", "nats": {"url": "nats://n:4222",
                        "nkeySeedRef": {"name": "nats", "key": "seed"},
                        "credentialsRef": {"name": "nats", "key": "user.creds"}}}),
                    )),
                ),
            ],
        },
        Case {
            message: "clientCertRef and clientKeyRef go together",
            field_path: "spec.delivery.sinks[0].nats.tls.clientKeyRef",
            valid: vec![(
                "a CA and a client certificate",
                with_spec(&sinks(
                    &json!({"name": "bus", "nats": {"url": "tls://n:4222",
                    "tls": {"caRef": {"name": "t", "key": "ca.crt"}, "clientCertRef": {"name": "t", "key": "tls.crt"},
                            "clientKeyRef": {"name": "t", "key": "tls.key"}}}}),
                )),
            )],
            invalid: vec![(
                "a certificate without its key",
                with_spec(&sinks(
                    &json!({"name": "bus", "nats": {"url": "tls://n:4222",
                    "tls": {"clientCertRef": {"name": "t", "key": "tls.crt"}}}}),
                )),
            )],
        },
        Case {
            message: "credentials in a URL end up in the ConfigMap and logs; use basicAuth",
            field_path: "spec.delivery.sinks[0].http.url",
            valid: vec![(
                "an @ in the path",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm.internal/users/@me?team=7"}}),
                )),
            )],
            invalid: vec![
                (
                    "user and password",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://alice:pw@crm.internal/hooks"}}),
                    )),
                ),
                (
                    "a token parameter",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm.internal/hooks?access_token=x"}}),
                    )),
                ),
                (
                    "an API key parameter",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm.internal/hooks?team=7&ApiKey=x"}}),
                    )),
                ),
            ],
        },
        Case {
            message: "choose one way to authenticate: basicAuth or bearerTokenRef",
            field_path: "spec.delivery.sinks[0].http.bearerTokenRef",
            valid: vec![(
                "bearer and an API key header",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                    "bearerTokenRef": {"name": "crm", "key": "token"},
                    "headers": [{"name": "X-Api-Key", "valueRef": {"name": "crm", "key": "key"}}]}}),
                )),
            )],
            invalid: vec![(
                "basic and bearer",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                    "basicAuth": {"username": "u", "passwordRef": {"name": "crm", "key": "password"}},
                    "bearerTokenRef": {"name": "crm", "key": "token"}}}),
                )),
            )],
        },
        Case {
            message: "an Authorization header is already set",
            field_path: "spec.delivery.sinks[0].http.headers",
            valid: vec![(
                "an Authorization header alone",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                    "headers": [{"name": "Authorization", "valueRef": {"name": "crm", "key": "auth"}}]}}),
                )),
            )],
            invalid: vec![(
                "with basicAuth",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                    "basicAuth": {"username": "u", "passwordRef": {"name": "crm", "key": "password"}},
                    "headers": [{"name": "authorization", "valueRef": {"name": "crm", "key": "auth"}}]}}),
                )),
            )],
        },
        Case {
            message: "set one of username and usernameRef",
            field_path: "spec.delivery.sinks[0].http.basicAuth.username",
            valid: vec![(
                "usernameRef",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                    "basicAuth": {"usernameRef": {"name": "crm", "key": "user"}, "passwordRef": {"name": "crm", "key": "password"}}}}),
                )),
            )],
            invalid: vec![
                (
                    "neither",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                        "basicAuth": {"passwordRef": {"name": "crm", "key": "password"}}}}),
                    )),
                ),
                (
                    "both",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                        "basicAuth": {"username": "u", "usernameRef": {"name": "crm", "key": "user"},
                                      "passwordRef": {"name": "crm", "key": "password"}}}}),
                    )),
                ),
            ],
        },
        Case {
            message: "a header name:",
            field_path: "spec.delivery.sinks[0].http.headers[0].name",
            valid: vec![],
            invalid: vec![(
                "a space",
                with_spec(&sinks(
                    &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                    "headers": [{"name": "X Api Key", "valueRef": {"name": "crm", "key": "key"}}]}}),
                )),
            )],
        },
        Case {
            message: "set by the sink itself",
            field_path: "spec.delivery.sinks[0].http.headers[0].name",
            valid: vec![],
            invalid: vec![
                (
                    "Content-Type",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                        "headers": [{"name": "content-type", "valueRef": {"name": "crm", "key": "key"}}]}}),
                    )),
                ),
                (
                    "X-Metahook-Signature",
                    with_spec(&sinks(
                        &json!({"name": "crm", "http": {"url": "https://crm/hooks",
                        "headers": [{"name": "X-Metahook-Signature", "valueRef": {"name": "crm", "key": "key"}}]}}),
                    )),
                ),
            ],
        },
        Case {
            message: "sslMode verify-ca and verify-full check the server's certificate",
            field_path: "spec.delivery.sinks[0].postgres.caRef",
            valid: vec![
                (
                    "verify-full with a CA",
                    with_spec(&sinks(
                        &json!({"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"},
                        "sslMode": "verify-full", "caRef": {"name": "pg", "key": "ca.crt"}}}),
                    )),
                ),
                (
                    "require without a CA",
                    with_spec(&sinks(
                        &json!({"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"},
                        "sslMode": "require"}}),
                    )),
                ),
            ],
            invalid: vec![(
                "verify-ca without a CA",
                with_spec(&sinks(
                    &json!({"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"},
                    "sslMode": "verify-ca"}}),
                )),
            )],
        },
        Case {
            message: "sslMode disable uses no caRef",
            field_path: "spec.delivery.sinks[0].postgres.caRef",
            valid: vec![],
            invalid: vec![(
                "disable with a CA",
                with_spec(&sinks(
                    &json!({"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"},
                    "sslMode": "disable", "caRef": {"name": "pg", "key": "ca.crt"}}}),
                )),
            )],
        },
        Case {
            message: "receiver.autoscaling does not apply to a sidecar",
            field_path: "spec.receiver.autoscaling",
            valid: vec![(
                "a Deployment-mode receiver with autoscaling",
                with_spec(
                    &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}}),
                ),
            )],
            invalid: vec![(
                "a sidecar with autoscaling",
                with_spec(&json!({"receiver": {"mode": "sidecar",
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}})),
            )],
        },
        Case {
            message: "with autoscaling the autoscaler sets the pod count",
            field_path: "spec.receiver.replicas",
            valid: vec![
                (
                    "autoscaling, replicas at its default",
                    with_spec(&json!({"receiver": {"replicas": 1,
                        "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}})),
                ),
                (
                    "replicas without autoscaling",
                    with_spec(&json!({"receiver": {"replicas": 3}})),
                ),
            ],
            invalid: vec![(
                "replicas 3 and autoscaling",
                with_spec(&json!({"receiver": {"replicas": 3,
                    "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}})),
            )],
        },
        Case {
            message: "autoscaling.minReplicas must not exceed maxReplicas",
            field_path: "spec.receiver.autoscaling.minReplicas",
            valid: vec![(
                "min = max",
                with_spec(
                    &json!({"receiver": {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}}}),
                ),
            )],
            invalid: vec![(
                "min 5, max 2",
                with_spec(
                    &json!({"receiver": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}),
                ),
            )],
        },
        Case {
            message: "a metric name",
            field_path: "spec.receiver.autoscaling.podsMetric.name",
            valid: vec![(
                "metahook_requests_per_second",
                with_spec(
                    &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                    "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "50"}}}}),
                ),
            )],
            invalid: vec![(
                "a name with a '/'",
                with_spec(
                    &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                    "podsMetric": {"name": "pods/requests", "targetAverageValue": "50"}}}}),
                ),
            )],
        },
        Case {
            message: "a positive quantity such as 50 or 500m",
            field_path: "spec.receiver.autoscaling.podsMetric.targetAverageValue",
            valid: vec![
                (
                    "500m",
                    with_spec(
                        &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                        "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "500m"}}}}),
                    ),
                ),
                (
                    "2.5",
                    with_spec(
                        &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                        "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "2.5"}}}}),
                    ),
                ),
            ],
            invalid: vec![
                (
                    "0",
                    with_spec(
                        &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                        "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "0"}}}}),
                    ),
                ),
                (
                    "fifty",
                    with_spec(
                        &json!({"receiver": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
                        "podsMetric": {"name": "metahook_requests_per_second", "targetAverageValue": "fifty"}}}}),
                    ),
                ),
            ],
        },
    ]
}

/// A `spec.registration` as stored (defaults spelled out), with `patch` merged in.
fn registration(patch: &Value) -> Value {
    let mut object = json!({
        "appId": "1234",
        "callbackURL": "https://hooks.example.com/webhooks/whatsapp",
        "appSubscription": true,
        "pages": [],
        "whatsappBusinessAccounts": [],
    });
    merge(&mut object, patch);
    object
}

fn waba(override_callback: bool) -> Value {
    json!({"id": "5550001", "accessTokenRef": {"name": "wa", "key": "token"}, "overrideCallback": override_callback})
}

/// A WABA without its own override, one of whose phone numbers gets one.
fn waba_with_phone(phone_id: &str) -> Value {
    json!({"id": "5550001", "accessTokenRef": {"name": "wa", "key": "token"}, "overrideCallback": false, "phoneNumbers": [{"id": phone_id}]})
}

fn long_callback(length: usize) -> String {
    let prefix = "https://hooks.example.com/";
    format!("{prefix}{}", "a".repeat(length - prefix.len()))
}

/// The transition rule, where no server evaluates it: the operator compares the spec with
/// what its status records as registered.
#[test]
fn the_operator_refuses_a_registered_apps_change_itself() {
    use metahook_operator::spec_check::violations;
    let mut object = with_spec(&json!({"registration": registration(&json!({"appId": "999"}))}));
    object["status"] =
        json!({"registration": {"appId": "1234", "object": "whatsapp_business_account"}});
    let typed: WebhookSubscription = serde_json::from_value(object.clone()).expect("typed");
    assert_eq!(
        violations(&typed),
        [format!(
            "spec.registration.appId: {} (registered: app 1234 for whatsapp_business_account)",
            metahook_operator::crd::REGISTERED_APP_IS_FIXED
        )]
    );
    object["spec"]["registration"]["appId"] = json!("1234");
    let same: WebhookSubscription = serde_json::from_value(object).expect("typed");
    assert!(violations(&same).is_empty());
}

/// The CEL rule on sink URLs and the operator's own check refuse the same URLs.
#[test]
fn the_url_credentials_rule_and_the_operators_check_agree() {
    let schema = schema();
    for url in [
        "nats://nats.nats:4222",
        "nats://bob:pw@nats:4222",
        "nats://t0ken@nats:4222",
        "nats://n1:4222,nats://bob:pw@n2:4222",
        "https://crm.internal/hooks",
        "https://alice:pw@crm.internal/hooks",
        "https://crm.internal/users/@me",
        "https://crm.internal/hooks?team=7",
        "https://crm.internal/hooks?access_token=x",
        "https://crm.internal/hooks?x=1&client_secret=y",
        "http://crm:8080/hooks#a@b",
    ] {
        let sink = if url.starts_with("http") {
            json!({"name": "s", "http": {"url": url}})
        } else {
            json!({"name": "s", "nats": {"url": url}})
        };
        let object = with_spec(&sinks(&sink));
        let cel = validate(&schema, &object).is_ok();
        let mut sub: WebhookSubscription = serde_json::from_value(object).expect("typed");
        sub.metadata.uid = Some("uid".into());
        let inputs =
            Inputs::new(&sub, "metahook-receiver:test", None, String::new()).expect("inputs");
        let operator = resources::config::receiver_config(&inputs).is_ok();
        assert_eq!(
            cel, operator,
            "{url}: CEL accepts: {cel}, the operator accepts: {operator}"
        );
        assert_eq!(cel, !metahook_config::redact::has_credentials(url), "{url}");
    }
}

#[test]
fn registration_identity_cannot_change_while_registered() {
    let schema = schema();
    let old = with_spec(&json!({"registration": registration(&json!({}))}));
    let check = |new: &Value| Validator::new().validate(&schema, new, Some(&old));
    assert_eq!(check(&old).map_err(ValidationErrors::into_vec), Ok(()));
    let other_app = with_spec(&json!({"registration": registration(&json!({"appId": "999"}))}));
    let errors = check(&other_app).expect_err("appId changed").into_vec();
    assert!(
        errors.len() == 1
            && errors[0].field_path == "spec.registration.appId"
            && errors[0]
                .message
                .starts_with("object and registration.appId cannot change while registered"),
        "{errors:?}"
    );
    // Removing the registration (which unregisters) is allowed.
    let removed = with_spec(&json!({}));
    assert_eq!(check(&removed).map_err(ValidationErrors::into_vec), Ok(()));
}

#[test]
fn every_cel_rule_accepts_the_valid_and_rejects_the_invalid() {
    let schema = schema();
    let mut failures = Vec::new();
    for case in cases() {
        for (label, object) in &case.valid {
            if let Err(errors) = validate(&schema, object) {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                failures.push(format!("[{}] {label}: rejected: {errors:?}", case.message));
            }
        }
        for (label, object) in &case.invalid {
            match validate(&schema, object) {
                Ok(()) => failures.push(format!("[{}] {label}: accepted", case.message)),
                Err(errors) => {
                    let expected = errors.len() == 1
                        && errors.iter().all(|e| {
                            e.kind == ErrorKind::ValidationFailure
                                && e.field_path == case.field_path
                                && e.message.starts_with(case.message)
                        });
                    if !expected {
                        let errors: Vec<String> = errors
                            .iter()
                            .map(|e| format!("{:?} at {:?}: {}", e.kind, e.field_path, e.message))
                            .collect();
                        failures.push(format!(
                            "[{}] {label}: expected only this rule at {:?}, got {errors:?}",
                            case.message, case.field_path
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The issue's finding: on a server without CEL (Kubernetes < 1.25, or a CRD applied
/// without its rules) the operator rendered whatever it was given. Here the rules are absent
/// (the mock API server evaluates nothing): every rule's failing case, fed to the operator,
/// ends as `Ready` False, `InvalidSpec`, naming the field and the rule's message, with a
/// Warning Event and no other request; every passing case is not refused.
#[tokio::test]
async fn the_operator_refuses_every_rules_failing_case_itself() {
    use metahook_operator::controller;
    use metahook_operator::resources::monitoring::Capabilities;
    use metahook_operator::spec_check::violations;
    use support::{MockApi, Reply, apply, condition, event, test_now};

    let mut failures = Vec::new();
    for case in cases() {
        for (label, object) in &case.valid {
            let typed: WebhookSubscription = serde_json::from_value(object.clone())
                .unwrap_or_else(|e| panic!("[{}] {label}: not a subscription: {e}", case.message));
            let found = violations(&typed);
            if !found.is_empty() {
                failures.push(format!("[{}] {label}: refused: {found:?}", case.message));
            }
        }
        for (label, object) in &case.invalid {
            let mut object = object.clone();
            object["metadata"]["uid"] = json!("11111111-2222-3333-4444-555555555555");
            let typed: WebhookSubscription = serde_json::from_value(object.clone())
                .unwrap_or_else(|e| panic!("[{}] {label}: not a subscription: {e}", case.message));
            let (namespace, name) = (typed.namespace().unwrap_or_default(), typed.name_any());
            let script = vec![
                event(&namespace),
                apply(
                    format!(
                        "/apis/metahook.io/v1alpha1/namespaces/{namespace}/webhooksubscriptions/{name}/status"
                    ),
                    Reply::Onto(object.clone()),
                ),
            ];
            let api = MockApi::start(script, Capabilities::default(), test_now());
            let action = controller::reconcile(Arc::new(typed), api.ctx.clone()).await;
            let served = api.finish().await;
            let Some(status) = served.last().map(|s| &s.body) else {
                failures.push(format!("[{}] {label}: no status written", case.message));
                continue;
            };
            let ready = condition(status, "Ready");
            let message = ready["message"].as_str().unwrap_or_default();
            let place = if case.field_path.is_empty() {
                String::new()
            } else {
                format!("{}: ", case.field_path)
            };
            if action.is_err()
                || ready["reason"] != "InvalidSpec"
                || !message.starts_with(&format!("{place}{}", case.message))
                || served[0].body["reason"] != "InvalidSpec"
            {
                failures.push(format!(
                    "[{}] {label}: {action:?}, Ready {ready}, Event {}",
                    case.message, served[0].body
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_cel_rule_has_a_case() {
    let mut rules = Vec::new();
    rule_messages(&schema(), "", &mut rules);
    let cases = cases();
    let untested: Vec<String> = rules
        .iter()
        .filter(|(_, message)| !cases.iter().any(|c| message.starts_with(c.message)))
        .map(|(path, message)| format!("{path}: {message}"))
        .collect();
    assert!(
        untested.is_empty(),
        "CEL rules without a case: {untested:#?}"
    );
}

#[test]
fn the_rust_defaults_are_the_schema_defaults() {
    // A minimal manifest read through the Rust types (which fill the defaults) passes the
    // rules exactly as the API server's defaulting would let it.
    let manifest = json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": {"name": "acme-page", "namespace": "messaging"},
        "spec": {"object": "page", "fields": ["feed"], "appSecretRef": {"name": "meta-app", "key": "app-secret"}},
    });
    let typed: WebhookSubscription = serde_json::from_value(manifest.clone()).expect("typed");
    let filled = serde_json::to_value(&typed).expect("as JSON");
    let schema = schema();
    assert_eq!(validate(&schema, &filled), Ok(()));
    assert_eq!(validate(&schema, &manifest), Ok(()));
    let spec = &filled["spec"];
    assert_eq!(spec["tls"]["mode"], "none");
    assert_eq!(spec["delivery"]["mode"], "spool");
    assert_eq!(spec["receiver"]["mode"], "deployment");
    assert_eq!(spec["monitoring"]["serviceMonitor"], false);
}

/// The sample subscriptions in examples/ (local.yaml is a receiver configuration).
const EXAMPLES: &[&str] = &[
    "whatsapp.yaml",
    "facebook-page.yaml",
    "instagram.yaml",
    "mtls.yaml",
    "sidecar.yaml",
];

#[test]
fn every_example_subscription_is_accepted() {
    let listed: Vec<String> = std::fs::read_dir(repo_file("examples"))
        .expect("examples/")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml") && name != "local.yaml")
        .collect();
    for name in &listed {
        assert!(
            EXAMPLES.contains(&name.as_str()),
            "examples/{name} is not checked: add it to EXAMPLES"
        );
    }
    let schema = schema();
    for name in EXAMPLES {
        let path = repo_file(&format!("examples/{name}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // As kubectl sends it (the validator applies the schema's defaults) ...
        let raw: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name} as YAML: {e}"));
        if let Err(errors) = validate(&schema, &raw) {
            panic!("examples/{name} is refused: {errors:#?}");
        }
        // ... and as the operator reads it.
        let sub: WebhookSubscription = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} as a WebhookSubscription: {e}"));
        let typed = serde_json::to_value(&sub).expect("as JSON");
        if let Err(errors) = validate(&schema, &typed) {
            panic!("examples/{name} (typed) is refused: {errors:#?}");
        }
        // The operator can build a receiver configuration from it.
        let tls_secret = (sub.spec.tls.mode != TlsModeSpec::None).then(|| {
            sub.spec.tls.secret_ref.as_ref().map_or_else(
                || resources::tls_secret_name(&sub.name_any()),
                |secret| secret.name.clone(),
            )
        });
        let inputs = Inputs::new(&sub, "metahook-receiver:test", tls_secret, String::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = resources::config::receiver_config(&inputs) {
            panic!("examples/{name}: the operator cannot configure a receiver from it: {e}");
        }
    }
}

/// The YAML between `<!-- snippet:begin -->` and `<!-- snippet:end -->` in docs/sidecar.md.
fn sidecar_snippet() -> Value {
    let text = std::fs::read_to_string(repo_file("docs/sidecar.md")).expect("docs/sidecar.md");
    let begin = text
        .find("<!-- snippet:begin -->")
        .expect("snippet:begin marker");
    let end = text
        .find("<!-- snippet:end -->")
        .expect("snippet:end marker");
    let block = &text[begin..end];
    let yaml = block
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml)
        .expect("a yaml block between the markers");
    serde_saphyr::from_str(yaml).expect("the snippet is YAML")
}

#[test]
fn sidecar_snippet_uses_the_operators_paths_and_ports() {
    use metahook_operator::resources::workload::RUN_AS;
    use metahook_operator::resources::{
        CONFIG_DIR, CONFIG_KEY, DATA_DIR, HTTP_PORT, METRICS_PORT, SECRETS_DIR,
    };
    let pod = sidecar_snippet();
    let receiver = pod["containers"]
        .as_array()
        .and_then(|containers| containers.iter().find(|c| c["name"] == "receiver"))
        .expect("a container named receiver");
    assert_eq!(
        receiver["args"],
        json!(["--config", format!("{CONFIG_DIR}/{CONFIG_KEY}")])
    );
    let mounts: Vec<(&str, &str)> = receiver["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["mountPath"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", CONFIG_DIR),
            ("secrets", SECRETS_DIR),
            ("data", DATA_DIR)
        ]
    );
    let ports: Vec<i64> = receiver["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [i64::from(HTTP_PORT), i64::from(METRICS_PORT)]);
    assert_eq!(pod["securityContext"]["runAsUser"], json!(RUN_AS));
    assert_eq!(pod["securityContext"]["fsGroup"], json!(RUN_AS));
    let config_volume = pod["volumes"]
        .as_array()
        .and_then(|volumes| volumes.iter().find(|v| v["name"] == "config"))
        .expect("the config volume");
    assert_eq!(
        config_volume["configMap"]["name"],
        resources::config_map_name("acme-support-inbox")
    );
    assert_eq!(config_volume["configMap"]["items"][0]["key"], CONFIG_KEY);
}
