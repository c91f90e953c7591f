//! The Helm chart `charts/metahook` as data: its values and their JSON Schema, the walk
//! that finds a value without a schema entry, and the chart README generated from both.
//! tests/tests/chart.rs checks the committed README against [`readme`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::tools::repo_root;

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts").join("metahook")
}

/// Reads a YAML file of the repository (one document) as JSON values.
pub fn read_yaml(relative: &str) -> Result<Value> {
    let path = repo_root().join(relative);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {} as YAML", path.display()))
}

/// Reads a JSON file of the repository.
pub fn read_json(relative: &str) -> Result<Value> {
    let path = repo_root().join(relative);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {} as JSON", path.display()))
}

/// The chart's values.yaml.
pub fn values() -> Result<Value> {
    read_yaml("charts/metahook/values.yaml")
}

/// The chart's values.schema.json.
pub fn schema() -> Result<Value> {
    read_json("charts/metahook/values.schema.json")
}

/// The schema of `key` inside an object schema: its entry in `properties` (named: true),
/// else its `additionalProperties` when that is a schema (e.g. the quantities under
/// `requests`, or any key of a map of labels).
fn child_schema<'a>(schema: &'a Value, key: &str) -> Option<(&'a Value, bool)> {
    schema
        .get("properties")
        .and_then(|properties| properties.get(key))
        .map(|named| (named, true))
        .or_else(|| {
            schema
                .get("additionalProperties")
                .filter(|a| a.is_object())
                .map(|any| (any, false))
        })
}

/// A free-form schema: an object or array of a Kubernetes type (affinity, tolerations, ...)
/// that the chart passes through as it is; it covers everything below it.
fn free_form(schema: &Value) -> bool {
    schema.get("properties").is_none()
        && !schema
            .get("additionalProperties")
            .is_some_and(|a| a.is_object() || a == &Value::Bool(false))
        && schema
            .get("items")
            .is_none_or(|items| items.get("properties").is_none())
}

/// Every path of `values` that has no schema entry or whose entry has no description,
/// e.g. `operator.resources.requests.cpu`. Empty when each is described.
pub fn values_without_schema(values: &Value, schema: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    walk_values(values, schema, "", &mut missing);
    missing
}

fn walk_values(value: &Value, schema: &Value, path: &str, missing: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match child_schema(schema, key) {
                    Some((child_schema, named)) => {
                        if named
                            && child_schema.get("description").is_none()
                            && !child_path.contains('[')
                        {
                            missing.push(format!("{child_path} (no description)"));
                        }
                        walk_values(child, child_schema, &child_path, missing);
                    }
                    None if free_form(schema) && !path.is_empty() => {}
                    None => missing.push(child_path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    walk_values(item, item_schema, &format!("{path}[{index}]"), missing);
                }
            } else if !items.is_empty() {
                missing.push(format!("{path}[] (no items schema)"));
            }
        }
        _ => {}
    }
}

/// Every property the schema names that values.yaml lacks (so the README has a default
/// for each row).
pub fn schema_without_values(values: &Value, schema: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    walk_schema(values, schema, "", &mut missing);
    missing
}

fn walk_schema(values: &Value, schema: &Value, path: &str, missing: &mut Vec<String>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, child_schema) in properties {
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match values.get(key) {
            Some(child) => walk_schema(child, child_schema, &child_path, missing),
            None => missing.push(child_path),
        }
    }
}

/// One row of the README's table.
#[derive(Debug)]
struct Row {
    key: String,
    kind: String,
    default: String,
    description: String,
}

/// The README's rows: each schema property that has no sub-properties of its own.
fn rows(values: &Value, schema: &Value, path: &str, out: &mut Vec<Row>) -> Result<()> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, child_schema) in properties {
        let key_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let value = values
            .get(key)
            .with_context(|| format!("values.yaml has no {key_path}"))?;
        let nested = child_schema.get("properties").is_some();
        // An object with named fields gets a row per field; an open one (a Kubernetes type
        // with its common fields named, accepting the others) also one for itself.
        if nested && !child_schema_is_open(child_schema) {
            rows(value, child_schema, &key_path, out)?;
            continue;
        }
        out.push(Row {
            key: key_path.clone(),
            kind: type_of(child_schema),
            default: serde_json::to_string(value)
                .with_context(|| format!("serializing the default of {key_path}"))?,
            description: describe(child_schema)
                .with_context(|| format!("{key_path} has no description in the schema"))?,
        });
        if nested {
            rows(value, child_schema, &key_path, out)?;
        }
    }
    Ok(())
}

/// An object schema that names some fields and accepts others (a security context).
fn child_schema_is_open(schema: &Value) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(true))
}

/// "string", "integer or string", "array of string", ...
fn type_of(schema: &Value) -> String {
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        return match (kind, schema.get("items").and_then(|i| i.get("type"))) {
            ("array", Some(Value::String(item))) => format!("array of {item}"),
            _ => kind.to_owned(),
        };
    }
    if let Some(choices) = schema.get("anyOf").and_then(Value::as_array) {
        return choices.iter().map(type_of).collect::<Vec<_>>().join(" or ");
    }
    "any".to_owned()
}

/// The description, with the allowed values when the schema enumerates them.
fn describe(schema: &Value) -> Option<String> {
    let mut text = schema.get("description")?.as_str()?.to_owned();
    if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
        let choices: Vec<String> = choices.iter().map(|c| format!("`{}`", plain(c))).collect();
        text.push_str(&format!(" One of {}.", choices.join(", ")));
    }
    Some(text)
}

fn plain(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The chart's README.md: a fixed introduction, then every value (key, type, default,
/// description) from values.yaml and values.schema.json.
pub fn readme(chart: &Value, values: &Value, schema: &Value) -> Result<String> {
    let version = chart
        .get("version")
        .and_then(Value::as_str)
        .context("Chart.yaml has no version")?;
    let kube_version = chart
        .get("kubeVersion")
        .and_then(Value::as_str)
        .context("Chart.yaml has no kubeVersion")?;
    let mut table = Vec::new();
    rows(values, schema, "", &mut table)?;
    if table.is_empty() {
        bail!("the schema describes no values");
    }
    let mut out = String::new();
    out.push_str(
        &README_INTRO
            .replace("{version}", version)
            .replace("{kube_version}", kube_version),
    );
    out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    for row in &table {
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            row.key,
            row.kind,
            cell(&row.default),
            cell(&row.description)
        ));
    }
    Ok(out)
}

const README_INTRO: &str = r#"<!-- Generated from values.yaml and values.schema.json by tests/src/chart.rs; do not edit.
     Regenerate with: METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-tests --test chart -->
# metahook Helm chart

Chart version {version}, for Kubernetes `{kube_version}`.

Installs the metahook **operator**, which reconciles `WebhookSubscription` resources
(metahook.io/v1alpha1, `kubectl get whsub`) into receivers of Meta webhooks: WhatsApp
Business Platform, Facebook Pages and Messenger (Lead Ads included), Instagram.

## Install

```sh
scripts/build-images.sh --push registry.example.com/metahook   # no public registry: build and push
helm install metahook charts/metahook --namespace metahook-system --create-namespace \
  --set image.registry=registry.example.com/metahook
kubectl create namespace messaging   # examples/whatsapp.yaml's header lists the Secrets it reads
kubectl -n messaging create secret generic meta-whatsapp-app --from-literal=app-secret="$APP_SECRET"
kubectl -n messaging create secret generic metahook-postgres --from-literal=url="$POSTGRES_URL"
kubectl -n messaging create secret generic metahook-nats --from-literal=token="$NATS_TOKEN"
kubectl -n messaging label secret meta-whatsapp-app metahook-postgres metahook-nats \
  metahook.io/referenceable=true
kubectl apply -f examples/whatsapp.yaml
kubectl -n messaging get whsub
```

[docs/quickstart.md](../../docs/quickstart.md) goes from an empty cluster to an event in a
sink; [docs/operator.md](../../docs/operator.md) says what the operator does with a
subscription.

## What it creates

- the `WebhookSubscription` CRD (from `crds/`, on the first install only);
- the operator's Deployment (2 replicas, one leader through a `coordination.k8s.io` Lease;
  non-root 65532, read-only root filesystem, no capabilities, seccomp `RuntimeDefault`),
  its ServiceAccount and a PodDisruptionBudget;
- its permissions, exactly those docs/operator.md lists: a ClusterRole, or with
  `operator.watchNamespaces` a Role in each of those namespaces and no ClusterRole; the
  Lease's Role in the release namespace, limited to the release's Lease;
- a Service for its metrics (`/metrics`, `/healthz`, `/readyz` on `operator.metricsPort`);
- when enabled: a ServiceMonitor, a PrometheusRule with metahook's alerts (runbooks in
  docs/operations.md), the Grafana dashboards as ConfigMaps for Grafana's dashboard sidecar,
  and a NetworkPolicy for the operator pods.

The receivers themselves are not part of the chart: the operator creates one per
WebhookSubscription, with the image `receiver.image`.

## Upgrading

Helm installs `crds/` on the first install and never upgrades or deletes it. Before
upgrading the release, apply the new version's CRD:

```sh
kubectl apply --server-side -f charts/metahook/crds/webhooksubscription.yaml
helm upgrade metahook charts/metahook --namespace metahook-system
```

Uninstalling leaves the CRD, and so every WebhookSubscription and its receivers, in place.
Deleting the CRD deletes all of them.

## Values

"#;
