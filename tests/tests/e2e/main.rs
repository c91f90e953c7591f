//! The operator against a real Kubernetes API server (etcd + kube-apiserver +
//! kube-controller-manager 1.20 from `scripts/kube-apiserver.sh`; see `metahook_tests::cluster`):
//! what kube's mock API cannot prove — structural schemas, server-side apply merges, the
//! status subresource, owner references and garbage collection, and the Deployment
//! controller's view of the pod template. The modules add the chart installed with the real
//! helm and its RBAC ([`chart`]), the rendered pods run with podman by the kubelet harness
//! ([`pods`]; the harness itself: [`kubelet`]), leader election between two replicas
//! ([`leader`]), registration with a fake Graph API ([`registration`]), what a subscription
//! may reach ([`policy`]), autoscaling beside kube-controller-manager's real
//! HorizontalPodAutoscaler controller ([`autoscaling`]), no acknowledged event lost to
//! a rollout or a scale-down ([`spool`]), and a WebhookReplay carried out on two receiver
//! pods ([`replay`]).
//!
//! Each test works in namespaces of its own (the examples' namespaces, prefixed) with an
//! operator process of its own restricted to them, so the tests share one cluster and run
//! in parallel (the cluster-wide chart install gets a cluster of its own). No kubelet runs:
//! pods are created by the controllers but never started, except where a test starts the
//! kubelet harness ([`metahook_tests::kubelet`]) for its namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use metahook_operator::crd::WebhookSubscription;
use metahook_tests::cluster::{Cluster, Operator, wait_for};
use metahook_tests::pki::Ca;
use metahook_tests::tools::repo_root;
use serde_json::json;

mod autoscaling;
mod chart;
mod kubelet;
mod leader;
mod ownership;
mod pods;
mod policy;
mod registration;
mod replay;
mod scene;
mod spool;
mod validation;

/// Bound of every wait for the operator or a controller (generous: 2 shared cores).
const WAIT: Duration = Duration::from_secs(60);
const CRD_NAME: &str = "webhooksubscriptions.metahook.io";
const REPLAY_CRD_NAME: &str = "webhookreplays.metahook.io";
const HASH_ANNOTATION: &str = "metahook.io/config-hash";

// ---------------------------------------------------------------------------------------
// The CRD

/// Applies crds/webhooksubscription.yaml, then crds/webhookreplay.yaml (the operator runs
/// its WebhookReplay controller only where that CRD is served, and warns otherwise), each
/// with server-side apply, waiting until it is Established; returns the subscription
/// CRD's file version, the server's, and whether the server refused the CEL rules (then
/// the CRDs were applied without them).
async fn install_crd(
    client: &Client,
) -> Result<(CustomResourceDefinition, CustomResourceDefinition, bool)> {
    let subscription = apply_crd(client, "crds/webhooksubscription.yaml", CRD_NAME).await?;
    apply_crd(client, "crds/webhookreplay.yaml", REPLAY_CRD_NAME).await?;
    Ok(subscription)
}

/// Applies the CRD file `file` (of repository path) named `name` with server-side apply
/// and waits until it is Established; returns the file's CRD, the server's, and whether
/// the server refused the CEL rules.
///
/// Kubernetes 1.20 predates CEL: server-side apply refuses `x-kubernetes-validations`
/// ("field not declared in schema"), a plain create silently drops them. Either way a
/// pre-1.25 cluster runs without the rules (they stay covered by operator/tests/crd.rs
/// with kube's CEL validator); here the refusal is checked to be about them alone, then
/// the CRD is applied without them, as such a cluster keeps it.
async fn apply_crd(
    client: &Client,
    file: &str,
    name: &'static str,
) -> Result<(CustomResourceDefinition, CustomResourceDefinition, bool)> {
    let path = repo_root().join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("metahook-e2e").force();
    let refused_cel = match api.patch(name, &params, &Patch::Apply(&crd)).await {
        Ok(_) => false,
        Err(kube::Error::Api(status))
            if status
                .message
                .contains("x-kubernetes-validations: field not declared in schema") =>
        {
            let complaints: Vec<&str> = status
                .message
                .lines()
                .skip(1)
                .filter(|line| !line.contains("x-kubernetes-validations: field not declared"))
                .collect();
            ensure!(
                complaints.is_empty(),
                "server-side apply of {file} refused more than the CEL rules: {}",
                status.message
            );
            let mut without = serde_json::to_value(&crd)?;
            strip_cel(&mut without);
            api.patch(name, &params, &Patch::Apply(&without))
                .await
                .with_context(|| format!("server-side apply of {file} without its CEL rules"))?;
            true
        }
        Err(err) => return Err(err).with_context(|| format!("server-side apply of {file}")),
    };
    let installed = wait_for(&format!("{name} to become Established"), WAIT, None, || {
        let api = api.clone();
        async move {
            let crd = api.get(name).await?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            Ok(established.then_some(crd))
        }
    })
    .await?;
    Ok((crd, installed, refused_cel))
}

/// Removes every `x-kubernetes-validations` from a CRD (as JSON).
fn strip_cel(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(strip_cel);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_cel),
        _ => {}
    }
}

/// Every `x-kubernetes-validations` rule in a CRD's schemas.
fn cel_rules(crd: &CustomResourceDefinition) -> Result<usize> {
    fn count(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(key, value)| {
                    if key == "x-kubernetes-validations" {
                        value.as_array().map_or(1, Vec::len)
                    } else {
                        count(value)
                    }
                })
                .sum(),
            serde_json::Value::Array(items) => items.iter().map(count).sum(),
            _ => 0,
        }
    }
    Ok(count(&serde_json::to_value(&crd.spec)?))
}

#[tokio::test]
async fn the_crd_applies_and_becomes_established() -> Result<()> {
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    let (file, installed, refused_cel) = install_crd(&client).await?;
    let versions: Vec<(&str, bool, bool)> = installed
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(versions, [("v1alpha1", true, true)]);
    let names = installed
        .status
        .as_ref()
        .and_then(|s| s.accepted_names.as_ref());
    assert_eq!(names.map(|n| n.kind.as_str()), Some("WebhookSubscription"));
    assert!(
        names
            .and_then(|n| n.short_names.as_ref())
            .is_some_and(|s| s.contains(&"whsub".to_owned())),
        "short name whsub: {names:?}"
    );
    // The status subresource (the operator writes status through it).
    assert!(
        installed.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        "status subresource"
    );
    // Kubernetes 1.20 predates CEL (see install_crd); a newer server keeps the rules.
    assert!(cel_rules(&file)? > 0, "the file has CEL rules");
    let version = client.apiserver_version().await?;
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
    if version.major == "1" && minor < 25 {
        assert!(
            refused_cel,
            "a {}.{} server refuses x-kubernetes-validations",
            version.major, version.minor
        );
        assert_eq!(cel_rules(&installed)?, 0);
    } else {
        assert_eq!(
            cel_rules(&installed)?,
            cel_rules(&file)?,
            "the server keeps the CEL rules"
        );
    }
    // Everything else of the schema is kept as written: the schema is structural.
    let mut expected = serde_json::to_value(&file.spec.versions[0].schema)?;
    strip_cel(&mut expected);
    let mut got = serde_json::to_value(&installed.spec.versions[0].schema)?;
    strip_cel(&mut got);
    assert_eq!(
        got, expected,
        "the installed schema differs from crds/webhooksubscription.yaml"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The examples, with the Secrets their header comments list

/// A WebhookSubscription from examples/, with the Secrets its header comment lists.
#[derive(Debug, Clone)]
struct Example {
    file: PathBuf,
    subscription: WebhookSubscription,
    secrets: Vec<ListedSecret>,
}

/// A Secret an example's header comment tells the user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedSecret {
    namespace: String,
    name: String,
    keys: Vec<String>,
    /// A kubernetes.io/tls Secret (a cert-manager Certificate's) for these DNS names.
    tls_names: Option<Vec<String>>,
    /// The header marks it `metahook.io/referenceable=true` (a `kubectl label` line, or
    /// the Certificate's secretTemplate), as the operator requires.
    referenceable: bool,
}

/// Every WebhookSubscription in examples/ (local.yaml is a receiver configuration).
fn examples() -> Result<Vec<Example>> {
    let dir = repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        if !text
            .lines()
            .any(|line| line.trim() == "kind: WebhookSubscription")
        {
            continue;
        }
        let subscription: WebhookSubscription =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let secrets = listed_secrets(&text);
        found.push(Example {
            file,
            subscription,
            secrets,
        });
    }
    ensure!(
        found.len() >= 5,
        "expected the five WebhookSubscription examples, found {}",
        found.len()
    );
    Ok(found)
}

/// The Secrets a header comment lists: `kubectl -n NS create secret generic NAME` with its
/// `--from-literal=KEY=`/`--from-file=KEY=` continuation lines, and cert-manager
/// Certificates' `secretName` with their `dnsNames`.
fn listed_secrets(text: &str) -> Vec<ListedSecret> {
    let comment: Vec<&str> = text
        .lines()
        .take_while(|line| line.starts_with('#'))
        .map(|line| line.trim_start_matches('#').trim())
        .collect();
    let mut secrets = Vec::new();
    let mut certificate_namespace = None;
    let mut certificate_secret = None;
    let mut certificate_referenceable = false;
    for (index, line) in comment.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [
            "kubectl",
            "-n",
            namespace,
            "create",
            "secret",
            "generic",
            name,
            ..,
        ] = words.as_slice()
        {
            let mut keys = Vec::new();
            for continued in &comment[index..] {
                for word in continued.split_whitespace() {
                    if let Some(rest) = word
                        .strip_prefix("--from-literal=")
                        .or_else(|| word.strip_prefix("--from-file="))
                        && let Some((key, _)) = rest.split_once('=')
                    {
                        keys.push(key.to_owned());
                    }
                }
                if !continued.ends_with('\\') {
                    break;
                }
            }
            secrets.push(ListedSecret {
                namespace: (*namespace).to_owned(),
                name: (*name).to_owned(),
                keys,
                tls_names: None,
                referenceable: false,
            });
        }
        if let Some(metadata) = line.strip_prefix("metadata:")
            && let Some(namespace) = metadata.split("namespace:").nth(1)
        {
            certificate_namespace = Some(namespace.trim_matches([' ', '}']).to_owned());
        }
        if let Some(name) = line.strip_prefix("secretName:") {
            certificate_secret = Some(name.trim().to_owned());
            certificate_referenceable = false;
        }
        if line.starts_with("secretTemplate:")
            && line.contains("metahook.io/referenceable: \"true\"")
        {
            certificate_referenceable = true;
        }
        if let [
            "kubectl",
            "-n",
            namespace,
            "label",
            "secret",
            name,
            "metahook.io/referenceable=true",
        ] = words.as_slice()
        {
            for listed in &mut secrets {
                if listed.namespace == *namespace && listed.name == *name {
                    listed.referenceable = true;
                }
            }
        }
        if let Some(names) = line.strip_prefix("dnsNames:")
            && let (Some(namespace), Some(name)) =
                (certificate_namespace.take(), certificate_secret.take())
        {
            let names = names
                .trim_matches([' ', '[', ']'])
                .split(',')
                .map(|n| n.trim().to_owned())
                .collect();
            secrets.push(ListedSecret {
                namespace,
                name,
                keys: vec!["tls.crt".to_owned(), "tls.key".to_owned()],
                tls_names: Some(names),
                referenceable: certificate_referenceable,
            });
        }
    }
    secrets
}

#[test]
fn every_example_lists_the_secrets_it_references() -> Result<()> {
    for example in examples()? {
        let namespace = example
            .subscription
            .namespace()
            .context("example without namespace")?;
        for name in metahook_operator::resources::referenced_secrets(&example.subscription) {
            assert!(
                example
                    .secrets
                    .iter()
                    .any(|s| s.name == name && s.namespace == namespace),
                "{} references Secret {name} but its header does not say how to create it: {:?}",
                example.file.display(),
                example.secrets
            );
            assert!(
                example
                    .secrets
                    .iter()
                    .any(|s| s.name == name && s.namespace == namespace && s.referenceable),
                "{} references Secret {name} but its header does not mark it \
                 metahook.io/referenceable=true: {:?}",
                example.file.display(),
                example.secrets
            );
        }
    }
    Ok(())
}

/// A value that passes for the real thing: PEM where a certificate is expected.
fn dummy_value(key: &str, ca: &Ca) -> Vec<u8> {
    match key {
        "ca.crt" => ca.pem().into_bytes(),
        "url" => b"postgres://metahook:e2e-dummy@postgres.databases.svc:5432/metahook".to_vec(),
        other => format!("e2e-dummy-{other}").into_bytes(),
    }
}

/// Creates `secret` in `namespace` with dummy values (or replaces it).
async fn create_secret(
    client: &Client,
    namespace: &str,
    secret: &ListedSecret,
    ca: &Ca,
) -> Result<()> {
    let (type_, data) = match &secret.tls_names {
        Some(names) => {
            let leaf = ca.server(names.first().map_or("e2e.invalid", String::as_str))?;
            (
                "kubernetes.io/tls",
                BTreeMap::from([
                    (
                        "tls.crt".to_owned(),
                        format!("{}{}", leaf.cert_pem(), ca.pem()).into_bytes(),
                    ),
                    ("tls.key".to_owned(), leaf.key_pem().into_bytes()),
                ]),
            )
        }
        None => (
            "Opaque",
            secret
                .keys
                .iter()
                .map(|key| (key.clone(), dummy_value(key, ca)))
                .collect(),
        ),
    };
    let labels = secret.referenceable.then(|| {
        BTreeMap::from([(
            metahook_operator::policy::REFERENCEABLE_LABEL.to_owned(),
            "true".to_owned(),
        )])
    });
    let object = Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels,
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating Secret {namespace}/{}", secret.name))?;
    Ok(())
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err).with_context(|| format!("creating namespace {name}")),
    }
}

/// A test's world: its namespaces (the examples' ones with a prefix), the examples moved
/// there with their Secrets, and an operator watching only those namespaces.
struct World {
    client: Client,
    operator: Operator,
    subscriptions: Vec<WebhookSubscription>,
}

/// Installs the CRD, creates the examples' namespaces under `prefix` and their Secrets,
/// starts an operator on those namespaces, then creates the subscriptions.
async fn world(prefix: &str, only: Option<&str>) -> Result<World> {
    world_with(prefix, only, |_| {}).await
}

/// [`world`], with `tweak` applied to each subscription before it is created.
async fn world_with(
    prefix: &str,
    only: Option<&str>,
    tweak: impl Fn(&mut WebhookSubscription),
) -> Result<World> {
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    install_crd(&client).await?;
    let prepared = prepare(&client, prefix, only, tweak).await?;
    let operator = Operator::start(cluster, &prepared.watched())?;
    let subscriptions = create_subscriptions(&client, &prepared.subscriptions).await?;
    Ok(World {
        client,
        operator,
        subscriptions,
    })
}

/// Makes a subscription's spool ephemeral (an emptyDir), so its receivers are a
/// Deployment, for the tests that follow its pods through a Deployment's ReplicaSets; the
/// StatefulSet path is `every_example_reconciles_on_the_first_pass_into_owned_children`'s
/// (its rollout once) and the spool scenarios'.
fn as_deployment(sub: &mut WebhookSubscription) {
    sub.spec.delivery.spool = Some(metahook_operator::crd::SpoolSpec {
        ephemeral: true,
        ..metahook_operator::crd::SpoolSpec::default()
    });
}

/// The examples moved to a test's namespaces, not yet created.
struct Prepared {
    namespaces: Vec<String>,
    subscriptions: Vec<WebhookSubscription>,
}

impl Prepared {
    fn watched(&self) -> Vec<&str> {
        self.namespaces.iter().map(String::as_str).collect()
    }
}

/// Creates the examples' namespaces under `prefix` (plus a per-run suffix) with the
/// Secrets their header comments list, and returns the subscriptions moved there (with
/// `tweak` applied), for the caller to create once its operator runs.
async fn prepare(
    client: &Client,
    prefix: &str,
    only: Option<&str>,
    tweak: impl Fn(&mut WebhookSubscription),
) -> Result<Prepared> {
    // A suffix per run: a cluster given by METAHOOK_KUBECONFIG keeps earlier runs' objects.
    let prefix = format!("{prefix}-{}", run_suffix());
    let ca = Ca::new("e2e example CA")?;
    let mut namespaces: Vec<String> = Vec::new();
    let mut subscriptions = Vec::new();
    for example in examples()? {
        if only.is_some_and(|name| example.subscription.name_any() != name) {
            continue;
        }
        let original = example
            .subscription
            .namespace()
            .context("example without namespace")?;
        let namespace = format!("{prefix}-{original}");
        if !namespaces.contains(&namespace) {
            create_namespace(client, &namespace).await?;
            namespaces.push(namespace.clone());
        }
        for secret in example.secrets.iter().filter(|s| s.namespace == original) {
            match create_secret(client, &namespace, secret, &ca).await {
                Ok(()) => {}
                // Two examples of one namespace list the same Secret.
                Err(err)
                    if err
                        .downcast_ref::<kube::Error>()
                        .is_some_and(|e| matches!(e, kube::Error::Api(s) if s.code == 409)) => {}
                Err(err) => return Err(err),
            }
        }
        let mut subscription = example.subscription.clone();
        subscription.metadata.namespace = Some(namespace);
        tweak(&mut subscription);
        subscriptions.push(subscription);
    }
    ensure!(!subscriptions.is_empty(), "no example named {only:?}");
    Ok(Prepared {
        namespaces,
        subscriptions,
    })
}

/// Creates `subscriptions`; returns them as the API server stored them.
async fn create_subscriptions(
    client: &Client,
    subscriptions: &[WebhookSubscription],
) -> Result<Vec<WebhookSubscription>> {
    let mut created = Vec::new();
    for subscription in subscriptions {
        let namespace = subscription.namespace().context("namespace")?;
        let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &namespace);
        created.push(
            api.create(&PostParams::default(), subscription)
                .await
                .with_context(|| {
                    format!(
                        "creating WebhookSubscription {namespace}/{}",
                        subscription.name_any()
                    )
                })?,
        );
    }
    Ok(created)
}

/// Five hex digits that differ between runs.
fn run_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

// ---------------------------------------------------------------------------------------
// Observations

fn condition<'a>(sub: &'a WebhookSubscription, type_: &str) -> Option<&'a Condition> {
    sub.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// The subscription once the operator has written a status for `generation`.
async fn reconciled(
    world: &World,
    sub: &WebhookSubscription,
    generation: i64,
) -> Result<WebhookSubscription> {
    let api: Api<WebhookSubscription> =
        Api::namespaced(world.client.clone(), &sub.namespace().context("namespace")?);
    let name = sub.name_any();
    wait_for(
        &format!("status of {name} for generation {generation}"),
        WAIT,
        Some(&world.operator),
        || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let current = api.get(&name).await?;
                let observed = current.status.as_ref().and_then(|s| s.observed_generation);
                Ok((observed == Some(generation)).then_some(current))
            }
        },
    )
    .await
}

/// Successful passes over `sub` so far, from the operator's debug log.
fn passes(operator: &Operator, sub: &WebhookSubscription) -> usize {
    let object = format!(
        "/{}.{}",
        sub.name_any(),
        sub.namespace().unwrap_or_default()
    );
    operator.lines_with(&["reconciled", &object]).len()
}

/// Makes the operator reconcile `sub` `count` more times (an annotation change each time
/// triggers a pass), waiting for each.
async fn poke(world: &World, sub: &WebhookSubscription, count: usize) -> Result<()> {
    poke_with(&world.client, &world.operator, sub, count).await
}

/// [`poke`] for a test with a client and an operator of its own (a [`scene::Scene`]).
async fn poke_with(
    client: &Client,
    operator: &Operator,
    sub: &WebhookSubscription,
    count: usize,
) -> Result<()> {
    let namespace = sub.namespace().context("namespace")?;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &namespace);
    for round in 0..count {
        let before = passes(operator, sub);
        let patch = json!({"metadata": {"annotations": {"e2e.metahook.io/poke": format!("{round}-{before}")}}});
        api.patch(
            &sub.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("annotating the subscription")?;
        wait_for(
            &format!("another pass over {} (after {before})", sub.name_any()),
            WAIT,
            Some(operator),
            || async { Ok((passes(operator, sub) > before).then_some(())) },
        )
        .await?;
    }
    Ok(())
}

/// Fails when the operator logged a failed pass, an error or a warning.
fn assert_clean_log(operator: &Operator) -> Result<()> {
    let log = operator.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains(" WARN ")
                || line.contains(" ERROR ")
                || line.contains("reconciliation failed")
        })
        .collect();
    ensure!(
        bad.is_empty(),
        "the operator logged failures:\n{}\n--- full log:\n{log}",
        bad.join("\n")
    );
    Ok(())
}

/// The Events about `sub`.
async fn events_of(client: &Client, sub: &WebhookSubscription) -> Result<Vec<Event>> {
    let namespace = sub.namespace().context("namespace")?;
    let events = Api::<Event>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .context("listing Events")?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("WebhookSubscription")
                    && r.name.as_deref() == Some(&sub.name_any())
            })
        })
        .collect())
}

/// Checks that `object` is controlled by `sub`.
fn assert_owned<K: Resource>(object: &K, sub: &WebhookSubscription, what: &str) -> Result<()> {
    let owners = object.meta().owner_references.clone().unwrap_or_default();
    ensure!(
        owners.iter().any(|o| {
            o.controller == Some(true)
                && o.kind == "WebhookSubscription"
                && o.api_version == "metahook.io/v1alpha1"
                && Some(&o.uid) == sub.uid().as_ref()
        }),
        "{what} is not controlled by WebhookSubscription {} ({:?}): {owners:?}",
        sub.name_any(),
        sub.uid()
    );
    Ok(())
}

/// The pod template's config hash and ReplicaSet count of `name`'s Deployment once the
/// Deployment controller has seen its current generation.
async fn rollout(world: &World, namespace: &str, name: &str) -> Result<(i64, String, usize)> {
    let deployments: Api<Deployment> = Api::namespaced(world.client.clone(), namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(world.client.clone(), namespace);
    wait_for(
        &format!("the Deployment controller to process Deployment {namespace}/{name}"),
        WAIT,
        Some(&world.operator),
        || {
            let deployments = deployments.clone();
            let replica_sets = replica_sets.clone();
            async move {
                let deployment = deployments.get(name).await?;
                let generation = deployment.metadata.generation.unwrap_or(0);
                let observed = deployment
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation);
                if observed != Some(generation) {
                    bail!("Deployment generation {generation}, observed {observed:?}");
                }
                let hash = deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.annotations.as_ref())
                    .and_then(|a| a.get(HASH_ANNOTATION))
                    .cloned()
                    .context("no config hash on the pod template")?;
                let owned = replica_sets
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter(|rs| {
                        rs.owner_references()
                            .iter()
                            .any(|o| Some(&o.uid) == deployment.uid().as_ref())
                    })
                    .count();
                if owned == 0 {
                    bail!("no ReplicaSet yet");
                }
                Ok(Some((generation, hash, owned)))
            }
        },
    )
    .await
}

/// Revisions of `name`'s StatefulSet once its controller has seen its current generation.
async fn stateful_rollout(world: &World, namespace: &str, name: &str) -> Result<(i64, usize)> {
    let stateful_sets: Api<StatefulSet> = Api::namespaced(world.client.clone(), namespace);
    let revisions: Api<ControllerRevision> = Api::namespaced(world.client.clone(), namespace);
    wait_for(
        &format!("the StatefulSet controller to process StatefulSet {namespace}/{name}"),
        WAIT,
        Some(&world.operator),
        || {
            let stateful_sets = stateful_sets.clone();
            let revisions = revisions.clone();
            async move {
                let set = stateful_sets.get(name).await?;
                let generation = set.metadata.generation.unwrap_or(0);
                let observed = set.status.as_ref().and_then(|s| s.observed_generation);
                if observed != Some(generation) {
                    bail!("StatefulSet generation {generation}, observed {observed:?}");
                }
                let owned = revisions
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter(|r| {
                        r.owner_references()
                            .iter()
                            .any(|o| Some(&o.uid) == set.uid().as_ref())
                    })
                    .count();
                if owned == 0 {
                    bail!("no ControllerRevision yet");
                }
                Ok(Some((generation, owned)))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// The scenarios

#[tokio::test]
async fn every_example_reconciles_on_the_first_pass_into_owned_children() -> Result<()> {
    let mut world = world("e2e-examples", None).await?;
    let subscriptions = world.subscriptions.clone();
    let mut first = BTreeMap::new();
    for sub in &subscriptions {
        let name = sub.name_any();
        let namespace = sub.namespace().context("namespace")?;
        let current = reconciled(&world, sub, 1).await?;
        let secrets = condition(&current, "SecretsResolved");
        ensure!(
            secrets.is_some_and(|c| c.status == "True"),
            "{name}: SecretsResolved {secrets:?}\n--- operator log:\n{}",
            world.operator.log()
        );
        if current.spec.tls.mode != metahook_operator::crd::TlsModeSpec::None {
            let certificate = condition(&current, "CertificateReady");
            ensure!(
                certificate.is_some_and(|c| c.status == "True"),
                "{name}: CertificateReady {certificate:?}"
            );
        }

        // The children, each controlled by the subscription.
        let config_map = Api::<ConfigMap>::namespaced(world.client.clone(), &namespace)
            .get(&format!("{name}-receiver"))
            .await
            .with_context(|| format!("{name}: ConfigMap"))?;
        assert_owned(&config_map, &current, "the ConfigMap")?;
        if current.spec.verify_token_ref.is_none() {
            let token = Api::<Secret>::namespaced(world.client.clone(), &namespace)
                .get(&format!("{name}-verify-token"))
                .await
                .with_context(|| format!("{name}: the generated verify token"))?;
            assert_owned(&token, &current, "the verify-token Secret")?;
        }
        let sidecar =
            current.spec.receiver.mode == metahook_operator::crd::ReceiverModeSpec::Sidecar;
        let deployment = Api::<Deployment>::namespaced(world.client.clone(), &namespace)
            .get_opt(&name)
            .await?;
        let stateful_set = Api::<StatefulSet>::namespaced(world.client.clone(), &namespace)
            .get_opt(&name)
            .await?;
        let service = Api::<Service>::namespaced(world.client.clone(), &namespace)
            .get_opt(&name)
            .await?;
        let ingress = Api::<Ingress>::namespaced(world.client.clone(), &namespace)
            .get_opt(&name)
            .await?;
        if sidecar {
            ensure!(
                deployment.is_none()
                    && stateful_set.is_none()
                    && service.is_none()
                    && ingress.is_none(),
                "{name}: a sidecar subscription has no workload, Service or Ingress"
            );
            first.insert(name, None);
            continue;
        }
        match (&deployment, &stateful_set) {
            (Some(deployment), None) => assert_owned(deployment, &current, "the Deployment")?,
            (None, Some(set)) => assert_owned(set, &current, "the StatefulSet")?,
            other => bail!("{name}: expected one workload, found {other:?}"),
        }
        assert_owned(
            service
                .as_ref()
                .with_context(|| format!("{name}: Service"))?,
            &current,
            "the Service",
        )?;
        if current.spec.ingress.is_some() {
            assert_owned(
                ingress
                    .as_ref()
                    .with_context(|| format!("{name}: Ingress"))?,
                &current,
                "the Ingress",
            )?;
        }
        let rollout = if deployment.is_some() {
            let (generation, hash, replica_sets) = rollout(&world, &namespace, &name).await?;
            ensure!(
                (generation, replica_sets) == (1, 1),
                "{name}: after the first passes the Deployment is at generation {generation} with \
                 {replica_sets} ReplicaSets (the pod template changed)\n--- operator log:\n{}",
                world.operator.log()
            );
            Some(hash)
        } else {
            let (generation, revisions) = stateful_rollout(&world, &namespace, &name).await?;
            ensure!(
                (generation, revisions) == (1, 1),
                "{name}: StatefulSet at generation {generation} with {revisions} revisions"
            );
            None
        };
        autoscaling::check_example(&world.client, &current).await?;
        first.insert(name, rollout);
    }

    // Later passes change nothing the Deployment controller sees.
    for sub in &subscriptions {
        poke(&world, sub, 3).await?;
    }
    for sub in &subscriptions {
        let name = sub.name_any();
        let namespace = sub.namespace().context("namespace")?;
        match first.get(&name).cloned().flatten() {
            Some(hash) => {
                let (generation, later_hash, replica_sets) =
                    rollout(&world, &namespace, &name).await?;
                ensure!(
                    (generation, replica_sets) == (1, 1) && later_hash == hash,
                    "{name}: after more passes: generation {generation}, {replica_sets} ReplicaSets, \
                     config hash {later_hash} (first {hash})\n--- operator log:\n{}",
                    world.operator.log()
                );
            }
            None if sub.spec.receiver.mode != metahook_operator::crd::ReceiverModeSpec::Sidecar => {
                let (generation, revisions) = stateful_rollout(&world, &namespace, &name).await?;
                ensure!(
                    (generation, revisions) == (1, 1),
                    "{name}: StatefulSet at generation {generation} with {revisions} revisions after more passes"
                );
            }
            None => {}
        }
        let warnings: Vec<String> = events_of(&world.client, sub)
            .await?
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| format!("{:?}: {:?}", e.reason, e.note))
            .collect();
        ensure!(warnings.is_empty(), "{name}: Warning Events {warnings:?}");
    }
    assert_clean_log(&world.operator)?;
    world.operator.check_running()?;
    Ok(())
}

#[tokio::test]
async fn a_spec_change_rolls_the_pod_template_once() -> Result<()> {
    let world = world_with("e2e-change", Some("acme-whatsapp"), as_deployment).await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    reconciled(&world, &sub, 1).await?;
    let (_, first_hash, _) = rollout(&world, &namespace, &name).await?;

    let api: Api<WebhookSubscription> = Api::namespaced(world.client.clone(), &namespace);
    // Fewer delivery attempts: the receiver's configuration changes (unlike `fields`,
    // which only Meta reads).
    let patch = json!({"spec": {"delivery": {"retry": {"maxAttempts": 5}}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("changing the subscription's delivery retries")?;
    reconciled(&world, &sub, 2).await?;
    poke(&world, &sub, 3).await?;
    let (generation, hash, replica_sets) = rollout(&world, &namespace, &name).await?;
    ensure!(
        generation == 2 && replica_sets == 2 && hash != first_hash,
        "after one spec change: Deployment generation {generation}, {replica_sets} ReplicaSets, \
         hash {hash} (was {first_hash})\n--- operator log:\n{}",
        world.operator.log()
    );
    assert_clean_log(&world.operator)?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_secret_is_named_in_the_status_until_restored() -> Result<()> {
    let world = world_with("e2e-secret", Some("acme-whatsapp"), as_deployment).await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    reconciled(&world, &sub, 1).await?;
    let (_, hash, _) = rollout(&world, &namespace, &name).await?;
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), &namespace);
    let app_secret = secrets
        .get("meta-whatsapp-app")
        .await
        .context("the app secret")?;
    secrets
        .delete("meta-whatsapp-app", &DeleteParams::default())
        .await
        .context("deleting the app secret")?;

    let api: Api<WebhookSubscription> = Api::namespaced(world.client.clone(), &namespace);
    let resolved = |wanted: &'static str| {
        let api = api.clone();
        let name = name.clone();
        move || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let current = api.get(&name).await?;
                Ok(condition(&current, "SecretsResolved")
                    .filter(|c| c.status == wanted)
                    .cloned())
            }
        }
    };
    let missing = wait_for(
        "SecretsResolved=False",
        WAIT,
        Some(&world.operator),
        resolved("False"),
    )
    .await?;
    ensure!(
        missing.message.contains("meta-whatsapp-app") && missing.reason == "SecretNotFound",
        "the condition names the Secret: {missing:?}"
    );
    // The running receivers are left alone while a Secret is missing.
    let (generation, still, _) = rollout(&world, &namespace, &name).await?;
    ensure!(
        generation == 1 && still == hash,
        "the Deployment changed while the Secret was missing"
    );

    let mut restored = app_secret.clone();
    restored.metadata = ObjectMeta {
        name: app_secret.metadata.name.clone(),
        namespace: app_secret.metadata.namespace.clone(),
        labels: app_secret.metadata.labels.clone(),
        ..ObjectMeta::default()
    };
    secrets
        .create(&PostParams::default(), &restored)
        .await
        .context("restoring the app secret")?;
    wait_for(
        "SecretsResolved=True again",
        WAIT,
        Some(&world.operator),
        resolved("True"),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn deleting_the_subscription_collects_everything_it_owned() -> Result<()> {
    let world = world_with("e2e-delete", Some("acme-whatsapp"), as_deployment).await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    reconciled(&world, &sub, 1).await?;
    rollout(&world, &namespace, &name).await?;
    let uid = sub.uid().context("uid")?;

    let owned = |client: Client, namespace: String, uid: String| async move {
        let list = ListParams::default();
        let mut found = Vec::new();
        macro_rules! collect {
            ($kind:ty) => {
                for object in Api::<$kind>::namespaced(client.clone(), &namespace)
                    .list(&list)
                    .await?
                    .items
                {
                    if object.owner_references().iter().any(|o| o.uid == uid) {
                        found.push(format!("{} {}", stringify!($kind), object.name_any()));
                    }
                }
            };
        }
        collect!(ConfigMap);
        collect!(Secret);
        collect!(Deployment);
        collect!(Service);
        collect!(Ingress);
        Ok::<_, anyhow::Error>(found)
    };
    let before = owned(world.client.clone(), namespace.clone(), uid.clone()).await?;
    for kind in ["ConfigMap", "Secret", "Deployment", "Service", "Ingress"] {
        ensure!(
            before.iter().any(|f| f.starts_with(kind)),
            "no owned {kind} before deletion: {before:?}"
        );
    }

    Api::<WebhookSubscription>::namespaced(world.client.clone(), &namespace)
        .delete(&name, &DeleteParams::background())
        .await
        .context("deleting the subscription")?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(world.client.clone(), &namespace);
    wait_for(
        "garbage collection of the subscription's objects",
        // The garbage collector re-reads the API's kinds every 30 s: on a fresh cluster
        // it may learn of WebhookSubscriptions only then.
        2 * WAIT,
        Some(&world.operator),
        || {
            let (client, namespace, uid) = (world.client.clone(), namespace.clone(), uid.clone());
            let replica_sets = replica_sets.clone();
            let selector = format!("metahook.io/subscription={name}");
            async move {
                let left = owned(client, namespace, uid).await?;
                let sets = replica_sets
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items
                    .len();
                if left.is_empty() && sets == 0 {
                    Ok(Some(()))
                } else {
                    bail!("still there: {left:?} and {sets} ReplicaSets")
                }
            }
        },
    )
    .await?;
    // What the user made stays.
    Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get("meta-whatsapp-app")
        .await
        .context("the user's app secret survives")?;
    Ok(())
}

#[tokio::test]
async fn an_operator_issued_certificate_rolls_the_pods_once() -> Result<()> {
    // The WhatsApp example served over HTTPS by the receiver itself, with a certificate the
    // operator issues from the namespace CA (no tls.secretRef), and no Ingress.
    let world = world_with("e2e-issued", Some("acme-whatsapp"), |sub| {
        as_deployment(sub);
        sub.spec.tls.mode = metahook_operator::crd::TlsModeSpec::Server;
        sub.spec.tls.secret_ref = None;
        sub.spec.ingress = None;
    })
    .await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    let current = reconciled(&world, &sub, 1).await?;
    let certificate = condition(&current, "CertificateReady");
    ensure!(
        certificate.is_some_and(|c| c.status == "True"),
        "CertificateReady {certificate:?}"
    );
    let tls = Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get(&format!("{name}-tls"))
        .await
        .context("the issued certificate's Secret")?;
    assert_owned(&tls, &current, "the serving certificate's Secret")?;
    let (_, first_hash, _) = rollout(&world, &namespace, &name).await?;
    poke(&world, &sub, 3).await?;
    let (generation, hash, replica_sets) = rollout(&world, &namespace, &name).await?;
    ensure!(
        (generation, replica_sets) == (1, 1) && hash == first_hash,
        "the pod template changed without a change: Deployment generation {generation}, \
         {replica_sets} ReplicaSets, hash {hash} (first {first_hash})\n--- operator log:\n{}",
        world.operator.log()
    );
    assert_clean_log(&world.operator)?;
    Ok(())
}

/// Why the operator applies again after a 409 AlreadyExists (operator/src/controller/api.rs,
/// `raced_a_create`): on this server, applies that create the same Service at once can
/// answer AlreadyExists — its Service storage reads, then creates, without retrying —
/// where ConfigMaps (generic storage) never do. Counts both; the Service count is shown,
/// not required (it is a race).
#[tokio::test]
async fn concurrent_applies_that_create_a_service_can_answer_already_exists() -> Result<()> {
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    let namespace = format!("e2e-race-{}", run_suffix());
    create_namespace(&client, &namespace).await?;
    let params = PatchParams::apply("metahook-e2e-race").force();
    let mut service_conflicts = 0;
    let mut config_map_conflicts = 0;
    for round in 0..5 {
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let name = format!("race-{round}");
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        });
        let config_map = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"k": "v"},
        });
        let service_patch = Patch::Apply(&service);
        let config_map_patch = Patch::Apply(&config_map);
        let service_results = futures_util::future::join_all(
            (0..8).map(|_| services.patch(&name, &params, &service_patch)),
        )
        .await;
        let config_map_results = futures_util::future::join_all(
            (0..8).map(|_| config_maps.patch(&name, &params, &config_map_patch)),
        )
        .await;
        for result in service_results {
            match result {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
                    service_conflicts += 1;
                }
                Err(err) => return Err(err).context("applying a Service"),
            }
        }
        for result in config_map_results {
            match result {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
                    config_map_conflicts += 1;
                }
                Err(err) => return Err(err).context("applying a ConfigMap"),
            }
        }
    }
    println!(
        "of 40 concurrent creating applies each: {service_conflicts} Service and \
         {config_map_conflicts} ConfigMap answers were 409 AlreadyExists"
    );
    ensure!(
        config_map_conflicts == 0,
        "generic storage retries a raced create as an update"
    );
    Ok(())
}

/// RBAC is enforced for ServiceAccount tokens (the chart's RBAC test builds on this):
/// a ServiceAccount without bindings may not list WebhookSubscriptions, and may once a
/// Role allows it.
#[tokio::test]
async fn a_service_account_token_meets_rbac() -> Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

    let cluster = Cluster::shared()?;
    let admin = cluster.client().await?;
    install_crd(&admin).await?;
    let namespace = format!("e2e-rbac-{}", run_suffix());
    create_namespace(&admin, &namespace).await?;
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("e2e-reader".to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &account)
        .await
        .context("creating the ServiceAccount")?;
    // 1.20's token controller (kube-controller-manager) writes a token Secret per account.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    let token = wait_for("the ServiceAccount's token Secret", WAIT, None, || {
        let secrets = secrets.clone();
        async move {
            let list = secrets.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find_map(|secret| {
                let for_account = secret
                    .annotations()
                    .get("kubernetes.io/service-account.name")
                    .is_some_and(|name| name == "e2e-reader");
                let token = secret.data.as_ref()?.get("token")?.0.clone();
                for_account.then(|| String::from_utf8_lossy(&token).into_owned())
            }))
        }
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = cluster.kubeconfig_with_token(&token, &dir.path().join("kubeconfig"))?;
    let reader = metahook_tests::cluster::client_for(&kubeconfig).await?;
    let subscriptions: Api<WebhookSubscription> = Api::namespaced(reader, &namespace);
    match subscriptions.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("an account without bindings listed WebhookSubscriptions: {other:?}"),
    }

    let role = Role {
        metadata: ObjectMeta {
            name: Some("e2e-reader".to_owned()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["metahook.io".to_owned()]),
            resources: Some(vec!["webhooksubscriptions".to_owned()]),
            verbs: vec!["list".to_owned()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &role)
        .await
        .context("creating the Role")?;
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("e2e-reader".to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: "e2e-reader".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "e2e-reader".to_owned(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &binding)
        .await
        .context("creating the RoleBinding")?;
    wait_for("the Role to take effect", WAIT, None, || {
        let subscriptions = subscriptions.clone();
        async move {
            Ok(subscriptions
                .list(&ListParams::default())
                .await
                .ok()
                .map(|_| ()))
        }
    })
    .await?;
    Ok(())
}
