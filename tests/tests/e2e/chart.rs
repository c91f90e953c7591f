//! `helm install` of charts/metahook with the real helm 3 and helm 4, then the operator as
//! a local process with a token of the chart's ServiceAccount and the chart's own flags
//! (read back from the Deployment the chart installed): the chart's RBAC is enough for a
//! full reconcile with leader election, and an action outside it is forbidden.
//!
//! What differs from a production install, and why (each is forced by the 1.20 test
//! cluster; everything else is the chart as published):
//! - The chart is installed from a temporary copy whose Chart.yaml `kubeVersion` is
//!   relaxed to `>=1.20.0-0`: the chart requires 1.28 for its CRD's CEL rules
//!   (`x-kubernetes-validations`), which 1.20 drops or refuses, and helm refuses to install
//!   on a server outside `kubeVersion` (it has no override for install). No other file of
//!   the copy changes.
//! - `operator.podDisruptionBudget.enabled=false`: the chart's PodDisruptionBudget is
//!   policy/v1, which 1.20 does not serve (it has policy/v1beta1 only).
//! - helm 3 creates the chart's CRD itself (a plain create: 1.20 keeps it without the CEL
//!   rules, as `install_crd` does). helm 4 applies CRDs with server-side apply, which 1.20
//!   refuses for `x-kubernetes-validations`, so the helm 4 install runs with `--skip-crds`
//!   after `install_crd`, as a user of such a cluster would apply it.
//! - No kubelet runs: the chart's operator pods never start. The operator runs as a local
//!   process with the flags of the chart's container and a TokenRequest token of the
//!   chart's ServiceAccount, as the kubelet would mount one; `--metrics-addr` and
//!   `--log-format` are the test's (a loopback port, text logs to read), and the pod's
//!   `POD_NAMESPACE`/`POD_NAME` become `--lease-namespace`/`--identity`.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use metahook_tests::cluster::{Operator, client_for, service_account_token};
use metahook_tests::tools;

use super::*;

/// The Kubernetes floor of the temporary chart copy (see the module comment).
const RELAXED_KUBE_VERSION: &str = "kubeVersion: \">=1.20.0-0\"";

/// Copies charts/metahook into `into`, with Chart.yaml's `kubeVersion` relaxed (see the
/// module comment); returns the copy's directory.
fn chart_copy(into: &Path) -> Result<PathBuf> {
    fn copy_dir(from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for entry in
            std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", from.display()))?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_dir(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), &target).with_context(|| {
                    format!("copying {} to {}", entry.path().display(), target.display())
                })?;
            }
        }
        Ok(())
    }
    let copy = into.join("metahook");
    copy_dir(&metahook_tests::chart::chart_dir(), &copy)?;
    let chart_yaml = copy.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml)
        .with_context(|| format!("reading {}", chart_yaml.display()))?;
    let mut replaced = 0;
    let relaxed: Vec<&str> = text
        .lines()
        .map(|line| {
            if line.starts_with("kubeVersion:") {
                replaced += 1;
                RELAXED_KUBE_VERSION
            } else {
                line
            }
        })
        .collect();
    ensure!(
        replaced == 1,
        "charts/metahook/Chart.yaml has {replaced} kubeVersion lines; the test relaxes exactly one"
    );
    std::fs::write(&chart_yaml, relaxed.join("\n") + "\n")
        .with_context(|| format!("writing {}", chart_yaml.display()))?;
    Ok(copy)
}

/// `helm install` of the chart copy as `release` into `namespace`, with helm's own state
/// (cache, config, data) kept in `dir`.
fn helm_install(
    helm: &str,
    kubeconfig: &Path,
    chart: &Path,
    release: &str,
    namespace: &str,
    extra: &[&str],
    dir: &Path,
) -> Result<String> {
    let program = tools::find(helm)?;
    let output = Command::new(&program)
        .arg("install")
        .arg(release)
        .arg(chart)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--namespace", namespace])
        .args(["--set", "operator.podDisruptionBudget.enabled=false"])
        .args(extra)
        .env("HELM_CACHE_HOME", dir.join("cache"))
        .env("HELM_CONFIG_HOME", dir.join("config"))
        .env("HELM_DATA_HOME", dir.join("data"))
        .output()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "`{helm} install {release}` failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// The chart's operator flags, from the Deployment it installed, made fit for a local
/// process (see the module comment).
async fn chart_operator_args(
    client: &Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<Vec<String>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("the chart's Deployment {namespace}/{name}"))?;
    let pod = deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .context("the chart's Deployment has no pod spec")?;
    ensure!(
        pod.service_account_name.as_deref() == Some(name),
        "the chart's pods run as {:?}, not ServiceAccount {name}",
        pod.service_account_name
    );
    let container = pod
        .containers
        .into_iter()
        .find(|c| c.name == "operator")
        .context("the chart's Deployment has no operator container")?;
    let mut args: Vec<String> = container
        .args
        .unwrap_or_default()
        .into_iter()
        .filter(|arg| !arg.starts_with("--metrics-addr") && !arg.starts_with("--log-format"))
        .collect();
    let env: Vec<String> = container
        .env
        .unwrap_or_default()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    ensure!(
        env.contains(&"POD_NAMESPACE".to_owned()) && env.contains(&"POD_NAME".to_owned()),
        "the chart's operator container lacks POD_NAMESPACE/POD_NAME: {env:?}"
    );
    args.push(format!("--lease-namespace={namespace}"));
    args.push(format!("--identity={identity}"));
    Ok(args)
}

/// One chart scenario: install with `helm` (cluster-wide, or watching the example's
/// namespace), run the operator with the chart's ServiceAccount and flags, reconcile the
/// WhatsApp example fully, and check what the account may not do.
async fn install_and_reconcile(
    cluster: &Cluster,
    helm: &str,
    watch_namespaces: bool,
) -> Result<()> {
    let admin = cluster.client().await?;
    let suffix = run_suffix();
    // The release name contains the chart's name, so it is also the full name: the
    // ServiceAccount's, the ClusterRole's and the Lease's.
    let release = format!("metahook-{helm}-{suffix}");
    let release_namespace = format!("e2e-{helm}-system-{suffix}");
    create_namespace(&admin, &release_namespace).await?;
    let prepared = prepare(
        &admin,
        &format!("e2e-{helm}"),
        Some("acme-whatsapp"),
        as_deployment,
    )
    .await?;
    let watched = prepared.namespaces.join(",");
    let dir = tempfile::tempdir()?;
    let chart = chart_copy(dir.path())?;
    let mut extra: Vec<String> = Vec::new();
    if watch_namespaces {
        extra.push("--set".to_owned());
        extra.push(format!("operator.watchNamespaces={{{watched}}}"));
    }
    if helm == "helm4" {
        // helm 4 applies CRDs server-side, which 1.20 refuses (module comment).
        install_crd(&admin).await?;
        extra.push("--skip-crds".to_owned());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    helm_install(
        helm,
        cluster.kubeconfig(),
        &chart,
        &release,
        &release_namespace,
        &extra,
        dir.path(),
    )?;
    println!(
        "{helm} install took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // helm 3 created the chart's CRD; it must be served before a subscription is made.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    wait_for("the chart's CRD to become Established", WAIT, None, || {
        let crds = crds.clone();
        async move {
            let crd = crds.get(CRD_NAME).await?;
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
                .then_some(()))
        }
    })
    .await?;

    let token = service_account_token(&admin, &release_namespace, &release).await?;
    let kubeconfig =
        cluster.kubeconfig_with_token(&token, &dir.path().join("operator.kubeconfig"))?;
    let identity = format!("{release}-e2e-0");
    let args = chart_operator_args(&admin, &release_namespace, &release, &identity).await?;
    ensure!(
        args.iter().any(|a| a == &format!("--lease-name={release}")),
        "the chart runs the operator with leader election: {args:?}"
    );
    ensure!(
        watch_namespaces == args.iter().any(|a| a == &format!("--namespace={watched}")),
        "--namespace in the chart's flags {args:?} (watchNamespaces: {watch_namespaces})"
    );
    let operator = Operator::start_with(&kubeconfig, &args)?;
    let subscriptions = create_subscriptions(&admin, &prepared.subscriptions).await?;
    let mut world = World {
        client: admin.clone(),
        operator,
        subscriptions,
    };
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    let current = reconciled(&world, &sub, 1).await?;
    for (type_, wanted) in [("SecretsResolved", "True"), ("CertificateReady", "True")] {
        let found = condition(&current, type_);
        ensure!(
            found.is_some_and(|c| c.status == wanted),
            "{type_} {found:?}\n--- operator log:\n{}",
            world.operator.log()
        );
    }
    let (generation, _, replica_sets) = rollout(&world, &namespace, &name).await?;
    ensure!(
        (generation, replica_sets) == (1, 1),
        "generation {generation}, {replica_sets} ReplicaSets"
    );
    for (kind, found) in [
        (
            "ConfigMap",
            Api::<ConfigMap>::namespaced(admin.clone(), &namespace)
                .get_opt(&format!("{name}-receiver"))
                .await?
                .is_some(),
        ),
        (
            "Service",
            Api::<Service>::namespaced(admin.clone(), &namespace)
                .get_opt(&name)
                .await?
                .is_some(),
        ),
        (
            "Ingress",
            Api::<Ingress>::namespaced(admin.clone(), &namespace)
                .get_opt(&name)
                .await?
                .is_some(),
        ),
    ] {
        ensure!(found, "the operator with the chart's RBAC made no {kind}");
    }
    // Leader election through the chart's leader-election Role.
    let lease = Api::<Lease>::namespaced(admin.clone(), &release_namespace)
        .get(&release)
        .await
        .context("the chart's leader Lease")?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    ensure!(
        holder.as_deref() == Some(identity.as_str()),
        "Lease {release} held by {holder:?}, not {identity}"
    );
    // Nothing was refused: a 403 shows as a failed pass, a warning or an error.
    assert_clean_log(&world.operator)?;

    // Outside the chart's RBAC.
    let account = client_for(&kubeconfig).await?;
    match Api::<Node>::all(account.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("the chart's ServiceAccount listed nodes: {other:?}"),
    }
    match Api::<Secret>::namespaced(account.clone(), &namespace)
        .delete("meta-whatsapp-app", &DeleteParams::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("the chart's ServiceAccount deleted a user's Secret: {other:?}"),
    }
    if watch_namespaces {
        // Roles in the watched namespaces only: nothing cluster-wide, nothing elsewhere.
        match Api::<WebhookSubscription>::all(account.clone())
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => {
                bail!("a watchNamespaces install listed subscriptions cluster-wide: {other:?}")
            }
        }
        match Api::<Secret>::namespaced(account, &release_namespace)
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => bail!("a watchNamespaces install listed Secrets outside them: {other:?}"),
        }
    }
    world.operator.check_running()?;
    Ok(())
}

/// The default install (a ClusterRole) with helm 3. Its operator watches every namespace,
/// so it gets a cluster of its own: on the shared one it would reconcile the other tests'
/// subscriptions too (with `METAHOOK_KUBECONFIG` it is that cluster: run it alone there).
#[tokio::test]
async fn helm3_install_cluster_wide_grants_a_full_reconcile_and_no_more() -> Result<()> {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    install_and_reconcile(&cluster, "helm3", false).await
}

/// An `operator.watchNamespaces` install (Roles in those namespaces) with helm 4, on the
/// shared cluster (its operator watches its own namespace only).
#[tokio::test]
async fn helm4_install_with_watch_namespaces_grants_a_full_reconcile_there_only() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_and_reconcile(cluster, "helm4", true).await
}
