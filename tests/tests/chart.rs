//! The Helm chart `charts/metahook`, checked by the real tools (installed by
//! scripts/install-tools.sh): `helm lint --strict` and `helm template` with helm 3 and helm 4,
//! every rendered object against Kubernetes' schemas (kubernetes-validate) for the oldest and
//! newest version Chart.yaml claims, ServiceMonitor and PrometheusRule against the
//! prometheus-operator API; the operator's flags against its own command line; RBAC against
//! docs/operator.md; the CRD, version, schema and README against their sources.
//!
//! The PrometheusRule and dashboards come from files/prometheus-rules.yaml and
//! dashboards/*.json; with every option on, the chart refuses to render without them.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser as _;
use metahook_operator::cli::Cli;
use metahook_tests::chart::{self, chart_dir};
use metahook_tests::tools::{find, repo_root, run, run_in};
use serde_json::{Value, json};

/// Both major versions users run.
const HELMS: [&str; 2] = ["helm3", "helm4"];
/// The committed values file that turns every option on (chart-testing's ci/ convention).
const ALL_ON: &str = "ci/all-on-values.yaml";
const RELEASE: &str = "metahook";
const NAMESPACE: &str = "metahook-system";

/// `helm template` of the chart with `args` (e.g. `-f ci/all-on-values.yaml`), CRDs
/// included, as one JSON value per object.
fn render(helm: &str, args: &[&str]) -> Result<Vec<Value>> {
    let dir = chart_dir();
    let mut all = vec![
        "template",
        RELEASE,
        ".",
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    all.extend_from_slice(args);
    let output = run_in(helm, &all, &dir)?;
    let text = String::from_utf8(output.stdout).context("helm template printed non-UTF-8")?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing the output of {helm} template as YAML:\n{text}"))?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// `helm template` that must fail; returns its error.
fn render_error(helm: &str, args: &[&str]) -> Result<String> {
    match render(helm, args) {
        Ok(objects) => bail!(
            "{helm} template {} rendered {} objects instead of failing",
            args.join(" "),
            objects.len()
        ),
        Err(err) => Ok(format!("{err:#}")),
    }
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

fn one_of_kind<'a>(objects: &'a [Value], wanted: &str) -> Result<&'a Value> {
    match of_kind(objects, wanted).as_slice() {
        [one] => Ok(one),
        other => bail!("expected one {wanted}, rendered {}", other.len()),
    }
}

/// The operator container of the rendered Deployment.
fn operator_container(objects: &[Value]) -> Result<&Value> {
    let deployment = one_of_kind(objects, "Deployment")?;
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("the Deployment has no containers")?;
    containers
        .iter()
        .find(|c| c["name"] == "operator")
        .context("the Deployment has no container `operator`")
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|args| {
            args.iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The Kubernetes versions `kubeVersion` admits at its ends: `>=1.28.0-0 <1.38.0-0` gives
/// 1.28.0 and 1.37.0.
fn kube_versions() -> Result<(String, String)> {
    let chart = chart::read_yaml("charts/metahook/Chart.yaml")?;
    let range = chart["kubeVersion"]
        .as_str()
        .context("Chart.yaml has no kubeVersion")?;
    let minor = |bound: &str| -> Result<u32> {
        let version = bound.trim_start_matches(['>', '<', '=']);
        let mut parts = version.split(['.', '-']);
        ensure!(parts.next() == Some("1"), "kubeVersion {range}: not 1.x");
        parts
            .next()
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("kubeVersion {range}: no minor in {bound}"))
    };
    let bounds: Vec<&str> = range.split_whitespace().collect();
    let [lower, upper] = bounds.as_slice() else {
        bail!("kubeVersion {range}: expected `>=1.A.0-0 <1.B.0-0`");
    };
    ensure!(
        lower.starts_with(">=") && upper.starts_with('<') && !upper.starts_with("<="),
        "kubeVersion {range}: expected `>=1.A.0-0 <1.B.0-0`"
    );
    Ok((
        format!("1.{}.0", minor(lower)?),
        format!("1.{}.0", minor(upper)? - 1),
    ))
}

/// The kinds whose schemas the prometheus-operator defines (checked by
/// prometheus-operator-validate instead of kubernetes-validate).
fn prometheus_operator_kind(object: &Value) -> bool {
    object["apiVersion"] == "monitoring.coreos.com/v1"
}

/// Writes objects to a file for a validator, as JSON (which is YAML too).
fn write_objects(dir: &Path, file: &str, objects: &[&Value], yaml_stream: bool) -> Result<String> {
    let path = dir.join(file);
    let text = if yaml_stream {
        objects
            .iter()
            .map(|o| serde_json::to_string(o).map(|j| format!("---\n{j}\n")))
            .collect::<Result<String, _>>()?
    } else {
        serde_json::to_string_pretty(objects)?
    };
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

#[test]
fn lint_strict_with_helm_3_and_4() -> Result<()> {
    let dir = chart_dir();
    for helm in HELMS {
        run_in(helm, &["lint", "--strict", "."], &dir)?;
        run_in(helm, &["lint", "--strict", ".", "-f", ALL_ON], &dir)?;
    }
    Ok(())
}

#[test]
fn every_object_passes_kubernetes_validate_on_the_oldest_and_newest_kubernetes() -> Result<()> {
    find("kubernetes-validate")?;
    let (oldest, newest) = kube_versions()?;
    let scratch = tempfile::tempdir()?;
    for helm in HELMS {
        for (label, values) in [("default", &[][..]), ("all-on", &["-f", ALL_ON][..])] {
            for version in [&oldest, &newest] {
                // Rendering for that version also checks that kubeVersion admits it.
                let mut args = vec!["--kube-version", version.as_str()];
                args.extend_from_slice(values);
                let objects = render(helm, &args)?;
                ensure!(
                    objects
                        .iter()
                        .any(|o| kind(o) == "CustomResourceDefinition"),
                    "{helm} {label}: the CRD is not rendered"
                );
                let core: Vec<&Value> = objects
                    .iter()
                    .filter(|o| !prometheus_operator_kind(o))
                    .collect();
                let file = write_objects(
                    scratch.path(),
                    &format!("{helm}-{label}-{version}.yaml"),
                    &core,
                    true,
                )?;
                let output = run(
                    "kubernetes-validate",
                    &["--strict", "--kubernetes-version", version, &file],
                )?;
                let report = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                // An unknown kind is only a warning to kubernetes-validate: count the passes.
                let passed = report.matches(" passed for resource ").count();
                ensure!(
                    passed == core.len(),
                    "{helm} {label} on Kubernetes {version}: {passed} of {} objects passed:\n{report}",
                    core.len()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn service_monitor_and_prometheus_rule_pass_the_prometheus_operator_schemas() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    for helm in HELMS {
        let objects = render(helm, &["-f", ALL_ON])?;
        let monitoring: Vec<&Value> = objects
            .iter()
            .filter(|o| prometheus_operator_kind(o))
            .collect();
        let kinds: BTreeSet<&str> = monitoring.iter().map(|o| kind(o)).collect();
        ensure!(
            kinds == BTreeSet::from(["PrometheusRule", "ServiceMonitor"]),
            "{helm}: rendered monitoring.coreos.com kinds {kinds:?}"
        );
        let file = write_objects(scratch.path(), &format!("{helm}.json"), &monitoring, false)?;
        run("prometheus-operator-validate", &[&file])?;
    }
    // The validator is not a rubber stamp: a malformed interval and a rule without expr fail.
    let broken = [
        json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "broken"},
               "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "30 seconds"}]}}),
        json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
               "metadata": {"name": "broken"},
               "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}}),
    ];
    for object in &broken {
        let file = write_objects(scratch.path(), "broken.json", &[object], false)?;
        ensure!(
            run("prometheus-operator-validate", &[&file]).is_err(),
            "prometheus-operator-validate accepted {object}"
        );
    }
    Ok(())
}

#[test]
fn prometheus_rule_carries_the_rules_file_groups() -> Result<()> {
    let rules = chart::read_yaml("charts/metahook/files/prometheus-rules.yaml").context(
        "charts/metahook/files/prometheus-rules.yaml (the alert rules) is missing or not YAML",
    )?;
    for helm in HELMS {
        let objects = render(helm, &["--set", "prometheusRule.enabled=true"])?;
        let rule = one_of_kind(&objects, "PrometheusRule")?;
        ensure!(
            rule["spec"]["groups"] == rules["groups"],
            "{helm}: the PrometheusRule's groups differ from files/prometheus-rules.yaml"
        );
    }
    Ok(())
}

#[test]
fn operator_service_monitor_keeps_the_subscription_labels() -> Result<()> {
    // The operator's series label subscriptions by `namespace` and `name`; without
    // honorLabels Prometheus overwrites `namespace` with the operator's own.
    for helm in HELMS {
        let objects = render(helm, &["--set", "metrics.serviceMonitor.enabled=true"])?;
        let monitor = one_of_kind(&objects, "ServiceMonitor")?;
        ensure!(
            monitor["spec"]["endpoints"][0]["honorLabels"] == json!(true),
            "{helm}: the operator's ServiceMonitor lacks honorLabels: true"
        );
    }
    Ok(())
}

#[test]
fn one_dashboard_config_map_per_dashboard_file() -> Result<()> {
    let dir = chart_dir().join("dashboards");
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let content = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .context("a dashboard file name is not UTF-8")?
                .to_owned();
            files.insert((file, content));
        }
    }
    ensure!(!files.is_empty(), "no dashboards/*.json in the chart");
    for helm in HELMS {
        let objects = render(helm, &["-f", ALL_ON])?;
        let mut rendered = BTreeSet::new();
        for config_map in of_kind(&objects, "ConfigMap") {
            if config_map["metadata"]["labels"]["grafana_dashboard"] != "1" {
                continue;
            }
            ensure!(
                config_map["metadata"]["namespace"] == "monitoring",
                "{helm}: {} is not in dashboards.namespace",
                name(config_map)
            );
            let data = config_map["data"]
                .as_object()
                .with_context(|| format!("{helm}: {} has no data", name(config_map)))?;
            for (file, content) in data {
                let content = content.as_str().context("dashboard data is not a string")?;
                rendered.insert((file.clone(), content.to_owned()));
            }
        }
        let trimmed: BTreeSet<(String, String)> = files
            .iter()
            .map(|(f, c)| (f.clone(), c.trim_end().to_owned()))
            .collect();
        ensure!(
            rendered == trimmed,
            "{helm}: dashboard ConfigMaps {:?} are not the files {:?}",
            rendered.iter().map(|(f, _)| f).collect::<Vec<_>>(),
            files.iter().map(|(f, _)| f).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn chart_crd_is_the_repository_crd() -> Result<()> {
    let root = repo_root();
    let repo = std::fs::read(root.join("crds/webhooksubscription.yaml"))
        .context("reading crds/webhooksubscription.yaml")?;
    let chart = std::fs::read(chart_dir().join("crds/webhooksubscription.yaml"))
        .context("reading charts/metahook/crds/webhooksubscription.yaml")?;
    ensure!(
        repo == chart,
        "charts/metahook/crds/webhooksubscription.yaml differs from crds/webhooksubscription.yaml: \
         copy it with `cp crds/webhooksubscription.yaml charts/metahook/crds/`"
    );
    Ok(())
}

/// `[workspace.package]`'s `key = "value"` in Cargo.toml.
fn cargo_workspace_package(key: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(repo_root().join("Cargo.toml")).context("reading Cargo.toml")?;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Ok(v.trim().trim_matches('"').to_owned());
        }
    }
    bail!("Cargo.toml has no [workspace.package] {key}")
}

#[test]
fn chart_version_is_the_cargo_version() -> Result<()> {
    let version = cargo_workspace_package("version")?;
    let repository = cargo_workspace_package("repository")?;
    let chart = chart::read_yaml("charts/metahook/Chart.yaml")?;
    ensure!(
        chart["version"] == version.as_str() && chart["appVersion"] == version.as_str(),
        "Chart.yaml version {} and appVersion {} must both be Cargo's {version}",
        chart["version"],
        chart["appVersion"]
    );
    ensure!(
        chart["home"] == repository.as_str() && chart["sources"] == json!([repository]),
        "Chart.yaml home and sources must be Cargo's repository {repository}"
    );
    Ok(())
}

#[test]
fn every_value_has_a_described_schema_entry() -> Result<()> {
    let values = chart::values()?;
    let schema = chart::schema()?;
    let missing = chart::values_without_schema(&values, &schema);
    ensure!(
        missing.is_empty(),
        "values.yaml entries without a described entry in values.schema.json: {missing:?}"
    );
    let absent = chart::schema_without_values(&values, &schema);
    ensure!(
        absent.is_empty(),
        "values.schema.json names values that values.yaml lacks (give each a default): {absent:?}"
    );
    Ok(())
}

#[test]
fn readme_is_generated_from_the_values_and_schema() -> Result<()> {
    let generated = chart::readme(
        &chart::read_yaml("charts/metahook/Chart.yaml")?,
        &chart::values()?,
        &chart::schema()?,
    )?;
    let path = chart_dir().join("README.md");
    if std::env::var_os("METAHOOK_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        bail!(
            "charts/metahook/README.md is stale (or missing; first difference at line {}): \
             regenerate it with `METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-tests --test chart`",
            line + 1
        );
    }
    Ok(())
}

#[test]
fn no_leader_election_needs_one_replica() -> Result<()> {
    for helm in HELMS {
        let error = render_error(
            helm,
            &["--set", "operator.leaderElection=false,operator.replicas=2"],
        )?;
        ensure!(
            error.contains("operator.leaderElection=false")
                && error.contains("operator.replicas must be 1"),
            "{helm}: not the chart's message: {error}"
        );
        let objects = render(
            helm,
            &["--set", "operator.leaderElection=false,operator.replicas=1"],
        )?;
        let args = args_of(operator_container(&objects)?);
        ensure!(
            args.iter().any(|a| a == "--no-leader-election"),
            "{helm}: {args:?}"
        );
        ensure!(
            !objects
                .iter()
                .any(|o| name(o).ends_with("-leader-election")),
            "{helm}: a Lease Role without leader election"
        );
        ensure!(
            of_kind(&objects, "PodDisruptionBudget").is_empty(),
            "{helm}: a PodDisruptionBudget for one replica"
        );
    }
    Ok(())
}

#[test]
fn values_outside_the_schema_are_refused() -> Result<()> {
    for helm in HELMS {
        for (set, word) in [
            ("operator.typo=1", "typo"),
            ("operator.logFormat=yaml", "logFormat"),
            ("operator.replicas=0", "replicas"),
        ] {
            let error = render_error(helm, &["--set", set])?;
            ensure!(
                error.contains(word) && error.contains("schema"),
                "{helm} --set {set}: {error}"
            );
        }
    }
    Ok(())
}

/// (API group, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

/// docs/operator.md's permissions table, without the discovery row.
fn documented_permissions() -> Result<Grants> {
    permissions_table("docs/operator.md")
}

/// The permissions table (`| API group | resources | verbs |`) of a document, without the
/// discovery row.
fn permissions_table(doc: &str) -> Result<Grants> {
    let path = repo_root().join(doc);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {doc}"))?;
    let table = text
        .split("| API group | resources | verbs |")
        .nth(1)
        .with_context(|| format!("{doc} has no permissions table"))?;
    let mut grants = Grants::new();
    for line in table.lines().skip(2) {
        let Some(row) = line.strip_prefix('|') else {
            break;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let [group, resources, verbs, ..] = cells.as_slice() else {
            bail!("{doc}: a permissions row without three cells: {line}");
        };
        if *group == "(discovery)" {
            continue;
        }
        let group = group.trim_matches('"');
        for resource in resources.split(',') {
            for verb in verbs.split(',') {
                grants.insert((group.into(), resource.trim().into(), verb.trim().into()));
            }
        }
    }
    ensure!(!grants.is_empty(), "{doc}'s permissions table is empty");
    Ok(grants)
}

/// docs/security.md's RBAC table is what the chart grants, both ways: cluster-wide (the
/// ClusterRole and the Lease Role) and namespaced (each watched namespace's Role).
#[test]
fn security_md_rbac_table_is_what_the_chart_grants() -> Result<()> {
    let (documented_leases, documented) = leases(&permissions_table("docs/security.md")?);
    let differ = |what: &str, granted: &Grants, documented: &Grants| {
        format!(
            "{what} grants {:?} that docs/security.md's RBAC table lacks, and lacks {:?} that \
             it lists",
            granted.difference(documented).collect::<Vec<_>>(),
            documented.difference(granted).collect::<Vec<_>>()
        )
    };
    let objects = render(HELMS[0], &[])?;
    let (_, cluster) = leases(&grants_of(one_of_kind(&objects, "ClusterRole")?)?);
    ensure!(
        cluster == documented,
        "{}",
        differ("the ClusterRole", &cluster, &documented)
    );
    let lease_role = grants_of(one_of_kind(&objects, "Role")?)?;
    ensure!(
        lease_role == documented_leases,
        "{}",
        differ("the Lease Role", &lease_role, &documented_leases)
    );
    let namespaced = render(HELMS[0], &["--set", "operator.watchNamespaces={a}"])?;
    for role in of_kind(&namespaced, "Role") {
        let (_, grants) = leases(&grants_of(role)?);
        if role["metadata"]["namespace"] == "a" {
            ensure!(
                grants == documented,
                "{}",
                differ("the Role in a", &grants, &documented)
            );
        }
    }
    Ok(())
}

/// The grants of a Role's or ClusterRole's rules; resourceNames are checked apart.
fn grants_of(role: &Value) -> Result<Grants> {
    let mut grants = Grants::new();
    let rules = role["rules"]
        .as_array()
        .with_context(|| format!("{} {} has no rules", kind(role), name(role)))?;
    for rule in rules {
        ensure!(
            rule.get("nonResourceURLs").is_none(),
            "{}: a nonResourceURLs rule (discovery is granted by system:discovery)",
            name(role)
        );
        let strings = |field: &str| -> Vec<String> {
            rule[field]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                for verb in strings("verbs") {
                    ensure!(
                        group != "*" && resource != "*" && verb != "*",
                        "{}: a wildcard rule {rule}",
                        name(role)
                    );
                    grants.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    Ok(grants)
}

fn leases(grants: &Grants) -> (Grants, Grants) {
    grants
        .iter()
        .cloned()
        .partition(|(group, resource, _)| group == "coordination.k8s.io" && resource == "leases")
}

/// The service account every binding of the release names.
fn check_subjects(binding: &Value, account: &str) -> Result<()> {
    ensure!(
        binding["subjects"]
            == json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]),
        "{} {}: subjects {}",
        kind(binding),
        name(binding),
        binding["subjects"]
    );
    Ok(())
}

#[test]
fn rbac_grants_exactly_the_documented_permissions() -> Result<()> {
    let (documented_leases, documented) = leases(&documented_permissions()?);
    for helm in HELMS {
        let objects = render(helm, &[])?;
        let account = name(one_of_kind(&objects, "ServiceAccount")?).to_owned();
        let cluster_role = one_of_kind(&objects, "ClusterRole")?;
        let (lease_grants, cluster_grants) = leases(&grants_of(cluster_role)?);
        ensure!(
            lease_grants.is_empty(),
            "{helm}: Leases granted cluster-wide"
        );
        ensure!(
            cluster_grants == documented,
            "{helm}: the ClusterRole grants {:?} beyond docs/operator.md and lacks {:?}",
            cluster_grants.difference(&documented).collect::<Vec<_>>(),
            documented.difference(&cluster_grants).collect::<Vec<_>>()
        );
        check_subjects(one_of_kind(&objects, "ClusterRoleBinding")?, &account)?;

        // The Lease: in the release namespace, reading and renewing only the release's.
        let lease_role = one_of_kind(&objects, "Role")?;
        ensure!(
            lease_role["metadata"]["namespace"] == NAMESPACE,
            "{helm}: Lease Role namespace"
        );
        ensure!(
            grants_of(lease_role)? == documented_leases,
            "{helm}: the Lease Role grants {:?}, docs/operator.md {documented_leases:?}",
            grants_of(lease_role)?
        );
        let lease_name = args_of(operator_container(&objects)?)
            .iter()
            .find_map(|a| a.strip_prefix("--lease-name=").map(str::to_owned))
            .context("the operator gets no --lease-name")?;
        for rule in lease_role["rules"].as_array().into_iter().flatten() {
            let create_only = rule["verbs"] == json!(["create"]);
            ensure!(
                create_only || rule["resourceNames"] == json!([lease_name]),
                "{helm}: Lease rule {rule} is not limited to the Lease {lease_name}"
            );
        }
        check_subjects(one_of_kind(&objects, "RoleBinding")?, &account)?;
    }
    Ok(())
}

#[test]
fn watch_namespaces_grant_roles_there_and_no_cluster_role() -> Result<()> {
    let (_, documented) = leases(&documented_permissions()?);
    for helm in HELMS {
        let objects = render(helm, &["--set", "operator.watchNamespaces={a,b}"])?;
        ensure!(
            of_kind(&objects, "ClusterRole").is_empty()
                && of_kind(&objects, "ClusterRoleBinding").is_empty(),
            "{helm}: a ClusterRole or ClusterRoleBinding with watchNamespaces"
        );
        for namespace in ["a", "b"] {
            let roles: Vec<&Value> = of_kind(&objects, "Role")
                .into_iter()
                .filter(|r| r["metadata"]["namespace"] == namespace)
                .collect();
            let [role] = roles.as_slice() else {
                bail!("{helm}: {} Roles in namespace {namespace}", roles.len());
            };
            ensure!(
                grants_of(role)? == documented,
                "{helm}: the Role in {namespace} grants {:?}",
                grants_of(role)?
            );
            ensure!(
                of_kind(&objects, "RoleBinding")
                    .iter()
                    .any(|b| b["metadata"]["namespace"] == namespace
                        && b["roleRef"]["name"] == role["metadata"]["name"]),
                "{helm}: no RoleBinding in {namespace}"
            );
        }
        let others: Vec<&str> = of_kind(&objects, "Role")
            .iter()
            .filter_map(|r| r["metadata"]["namespace"].as_str())
            .filter(|ns| !["a", "b", NAMESPACE].contains(ns))
            .collect();
        ensure!(others.is_empty(), "{helm}: Roles in {others:?}");
        let args = args_of(operator_container(&objects)?);
        ensure!(
            args.iter().any(|a| a == "--namespace=a,b"),
            "{helm}: {args:?}"
        );
    }
    Ok(())
}

/// The rendered container's arguments, parsed by the operator's own command line.
fn parse_operator_args(container: &Value) -> Result<Cli> {
    let args = args_of(container);
    Cli::try_parse_from(std::iter::once("metahook-operator".to_owned()).chain(args.clone()))
        .with_context(|| format!("the operator refuses the chart's arguments {args:?}"))
}

#[test]
fn operator_gets_its_flags_env_and_probes() -> Result<()> {
    for helm in HELMS {
        let objects = render(helm, &[])?;
        let container = operator_container(&objects)?;
        let cli = parse_operator_args(container)?;
        ensure!(
            cli.receiver_image == "metahook-receiver:0.1.0",
            "{helm}: {cli:?}"
        );
        ensure!(
            cli.metrics_addr.to_string() == "0.0.0.0:8081",
            "{helm}: {cli:?}"
        );
        ensure!(!cli.no_leader_election, "{helm}: {cli:?}");
        ensure!(
            !args_of(container)
                .iter()
                .any(|a| a.starts_with("--namespace")),
            "{helm}: --namespace without watchNamespaces"
        );
        ensure!(
            cli.certificate_lifetime == std::time::Duration::from_secs(90 * 86_400),
            "{helm}: {cli:?}"
        );
        ensure!(
            cli.graph_url == "https://graph.facebook.com"
                && cli.graph_api_version == metahook_receiver::config::GRAPH_API_VERSION
                && cli.graph_timeout == std::time::Duration::from_secs(30)
                && cli.graph_unregister_timeout == std::time::Duration::from_secs(600),
            "{helm}: Graph API flags {cli:?}"
        );
        ensure!(
            container["image"] == "metahook-operator:0.1.0",
            "{helm}: image {}",
            container["image"]
        );
        for (env, field) in [
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_NAME", "metadata.name"),
        ] {
            ensure!(
                container["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["name"] == env && e["valueFrom"]["fieldRef"]["fieldPath"] == field),
                "{helm}: no {env} from {field}"
            );
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            ensure!(
                container[probe]["httpGet"] == json!({"path": path, "port": "metrics"}),
                "{helm}: {probe} {}",
                container[probe]
            );
        }
        ensure!(
            container["ports"]
                == json!([{"name": "metrics", "containerPort": 8081, "protocol": "TCP"}]),
            "{helm}: ports {}",
            container["ports"]
        );
        let security = &container["securityContext"];
        ensure!(
            security["readOnlyRootFilesystem"] == true
                && security["allowPrivilegeEscalation"] == false
                && security["capabilities"]["drop"] == json!(["ALL"]),
            "{helm}: securityContext {security}"
        );
        let deployment = one_of_kind(&objects, "Deployment")?;
        let pod = &deployment["spec"]["template"]["spec"];
        ensure!(
            pod["securityContext"]["runAsUser"] == 65532
                && pod["securityContext"]["runAsNonRoot"] == true
                && pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
            "{helm}: pod securityContext {}",
            pod["securityContext"]
        );
        ensure!(deployment["spec"]["replicas"] == 2, "{helm}: replicas");

        // Every option on: the registry prefix on both images, the namespaces, the port, the
        // Graph API.
        let objects = render(helm, &["-f", ALL_ON])?;
        let container = operator_container(&objects)?;
        let cli = parse_operator_args(container)?;
        ensure!(
            cli.receiver_image == "registry.example.com/metahook/metahook-receiver:0.1.0-rc.1",
            "{helm}: {cli:?}"
        );
        ensure!(
            container["image"] == "registry.example.com/metahook/metahook-operator:0.1.0-rc.1",
            "{helm}: image {}",
            container["image"]
        );
        ensure!(cli.metrics_addr.port() == 9100, "{helm}: {cli:?}");
        ensure!(
            cli.graph_url == "http://graph-fake.metahook-test.svc:8080"
                && cli.graph_api_version == "v24.0"
                && cli.graph_timeout == std::time::Duration::from_secs(10)
                && cli.graph_unregister_timeout == std::time::Duration::from_secs(120),
            "{helm}: Graph API flags {cli:?}"
        );
        ensure!(
            args_of(container).contains(&"--namespace=team-a,team-b".to_owned()),
            "{helm}: {cli:?}"
        );
        let service = one_of_kind(&objects, "Service")?;
        ensure!(
            service["spec"]["ports"][0]["port"] == 9100
                && service["spec"]["ports"][0]["targetPort"] == "metrics",
            "{helm}: metrics Service ports {}",
            service["spec"]["ports"]
        );
    }
    Ok(())
}

#[test]
fn notes_tell_the_next_step() -> Result<()> {
    // helm 4 renders NOTES.txt without a cluster (`--dry-run=client`); helm 3 wants one.
    let output = run_in(
        "helm4",
        &[
            "install",
            RELEASE,
            ".",
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ],
        &chart_dir(),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    let notes = text
        .split("NOTES:")
        .nth(1)
        .context("helm install --dry-run printed no NOTES")?;
    for needle in [
        "create secret generic",
        "metahook.io/referenceable=true",
        "kubectl apply -f examples/whatsapp.yaml",
        "kubectl get whsub",
        "docs/quickstart.md",
        "http://metahook-metrics.metahook-system.svc:8081/metrics",
        "kubectl apply --server-side -f metahook/crds/webhooksubscription.yaml",
    ] {
        ensure!(
            notes.contains(needle),
            "NOTES.txt lacks `{needle}`:\n{notes}"
        );
    }
    Ok(())
}
