//! The `metahook-operator` command line: flags, logging, leader election, and the
//! controller's watches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{FutureExt as _, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;

use crate::controller::{self, Context, Settings};
use crate::crd::WebhookSubscription;
use crate::metrics::Metrics;

/// Reconciles WebhookSubscription resources into metahook receivers.
///
/// Talks to the cluster of the in-cluster service account, or of KUBECONFIG /
/// ~/.kube/config when run as a local process.
#[derive(Debug, Parser)]
#[command(name = "metahook-operator", version)]
pub struct Cli {
    /// Receiver image for subscriptions that name none.
    #[arg(long, env = "METAHOOK_RECEIVER_IMAGE", default_value = concat!("metahook-receiver:", env!("CARGO_PKG_VERSION")))]
    pub receiver_image: String,
    /// Address of /metrics, /healthz and /readyz (8081, so it does not collide with a
    /// receiver on its default 8080 on the same machine).
    #[arg(long, env = "METAHOOK_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,
    /// Watch only these namespaces, comma-separated (all namespaces when absent), so the
    /// operator can run with Roles in those namespaces instead of a ClusterRole.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Run without the leader Lease (a single replica, e.g. on a laptop).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "metahook-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (default: host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lifetime of the serving certificates the operator issues (renewed at two thirds).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub certificate_lifetime: Duration,
    /// Log lines as JSON (default) or text.
    #[arg(long, default_value = "json")]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// The binary's entry point.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "metahook-operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the operator until SIGTERM, or until this replica loses the leader Lease (then it
/// exits with an error so Kubernetes restarts it and it campaigns again).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster, KUBECONFIG or ~/.kube/config)")?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = crate::metrics::bind(cli.metrics_addr).await?;
    let server = tokio::spawn(crate::metrics::serve(
        listener,
        metrics.clone(),
        ready.clone(),
    ));

    let scopes = watch_scopes(&cli.namespaces);
    for scope in &scopes {
        let subscriptions: Api<WebhookSubscription> = scope.api(&client);
        subscriptions
            .list(&ListParams::default().limit(1))
            .await
            .with_context(|| format!("cannot list WebhookSubscriptions in {scope}: is the CRD installed (kubectl apply -f crds/webhooksubscription.yaml) and may this account list them?"))?;
    }
    let capabilities = controller::discover(&client).await?;
    tracing::info!(?capabilities, "discovered optional APIs");

    let identity = cli.identity.clone().unwrap_or_else(default_identity);
    let settings = Settings {
        receiver_image: cli.receiver_image.clone(),
        certificate_lifetime: cli.certificate_lifetime,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings,
        capabilities,
        Some(identity.clone()),
    ));
    tokio::spawn(refresh_capabilities(client.clone(), ctx.clone()));
    // Standby replicas are ready too: they serve metrics and wait for the Lease.
    ready.store(true, Ordering::Relaxed);

    let lost_leadership: std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>> =
        if cli.no_leader_election {
            Box::pin(std::future::pending())
        } else {
            let manager = LeaseManagerBuilder::new(client.clone(), &cli.lease_name)
                .with_namespace(&cli.lease_namespace)
                .with_identity(&identity)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .context("setting up leader election")?;
            let (mut leader, _task) = manager.watch().await;
            tracing::info!(lease = %cli.lease_name, %identity, "waiting for the leader Lease");
            while !*leader.borrow_and_update() {
                leader.changed().await.context("leader election stopped")?;
            }
            tracing::info!(%identity, "holding the leader Lease: reconciling");
            Box::pin(async move {
                loop {
                    if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                        return;
                    }
                }
            })
        };
    metrics.leader.set(1);
    let led = Arc::new(AtomicBool::new(true));
    let led_flag = led.clone();
    let lost = async move {
        lost_leadership.await;
        led_flag.store(false, Ordering::Relaxed);
    }
    .boxed()
    .shared();

    // One controller per watched namespace (or one for the whole cluster), all sharing the
    // context, so a namespaced install needs no cluster-wide read access.
    let controllers: Vec<Controller<WebhookSubscription>> =
        scopes.iter().map(|scope| watches(&client, scope)).collect();
    tokio::spawn(forget_deleted(
        controllers.iter().map(Controller::store).collect(),
        metrics.clone(),
        ctx.clone(),
    ));
    let runs = controllers.into_iter().map(|controller| {
        controller
            .shutdown_on_signal()
            .graceful_shutdown_on(lost.clone())
            .run(controller::reconcile, controller::error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(subscription = %object, "reconciled"),
                    Err(err) => tracing::debug!(error = %err, "controller event"),
                }
            })
    });
    futures_util::future::join_all(runs).await;
    metrics.leader.set(0);
    server.abort();
    if !led.load(Ordering::Relaxed) {
        anyhow::bail!("lost the leader Lease; exiting so a restart campaigns again");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where the operator watches: the whole cluster, or one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (needs a ClusterRole).
    Cluster,
    /// One namespace (a Role there is enough).
    Namespace(String),
}

impl WatchScope {
    /// An API of kind `K` within this scope.
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            WatchScope::Cluster => Api::all(client.clone()),
            WatchScope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }
}

impl std::fmt::Display for WatchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchScope::Cluster => f.write_str("all namespaces"),
            WatchScope::Namespace(namespace) => write!(f, "namespace {namespace}"),
        }
    }
}

/// The scopes for `--namespace`: the cluster when none is named, else each distinct
/// non-empty namespace once.
pub fn watch_scopes(namespaces: &[String]) -> Vec<WatchScope> {
    let mut named: Vec<String> = namespaces
        .iter()
        .map(|namespace| namespace.trim().to_owned())
        .filter(|namespace| !namespace.is_empty())
        .collect();
    named.sort();
    named.dedup();
    if named.is_empty() {
        vec![WatchScope::Cluster]
    } else {
        named.into_iter().map(WatchScope::Namespace).collect()
    }
}

/// The controller with its watches: subscriptions, the objects they own, and Secrets
/// (their own, and any a subscription references, so a created or rotated Secret
/// triggers a pass at once).
fn watches(client: &Client, scope: &WatchScope) -> Controller<WebhookSubscription> {
    let managed =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=metahook-operator");
    let controller = Controller::new(
        scope.api::<WebhookSubscription>(client),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    controller
        .owns(scope.api::<Deployment>(client), managed.clone())
        .owns(scope.api::<StatefulSet>(client), managed.clone())
        .owns(scope.api::<Service>(client), managed.clone())
        .owns(scope.api::<ConfigMap>(client), managed.clone())
        .owns(scope.api::<Ingress>(client), managed)
        .watches(
            scope.api::<Secret>(client),
            watcher::Config::default(),
            move |secret| subscriptions_of_secret(&store, &secret),
        )
}

/// Subscriptions a Secret matters to: its owner, or those referencing it by name.
fn subscriptions_of_secret(
    store: &Store<WebhookSubscription>,
    secret: &Secret,
) -> Vec<ObjectRef<WebhookSubscription>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .into_iter()
        .filter(|sub| sub.namespace() == namespace)
        .filter(|sub| {
            let owned = secret
                .owner_references()
                .iter()
                .any(|owner| Some(&owner.uid) == sub.uid().as_ref());
            owned || crate::resources::referenced_secrets(sub).contains(&name)
        })
        .map(|sub| ObjectRef::from_obj(sub.as_ref()))
        .collect()
}

/// Drops metric series and remembered state of deleted subscriptions every minute (a deleted subscription
/// has no finalizer, so no reconciliation sees it go).
async fn forget_deleted(
    stores: Vec<Store<WebhookSubscription>>,
    metrics: Arc<Metrics>,
    ctx: Arc<Context>,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(60));
    loop {
        interval.tick().await;
        let existing: std::collections::BTreeSet<(String, String)> = stores
            .iter()
            .flat_map(Store::state)
            .map(|sub| (sub.namespace().unwrap_or_default(), sub.name_any()))
            .collect();
        metrics.retain_subscriptions(|namespace, name| {
            existing.contains(&(namespace.to_owned(), name.to_owned()))
        });
        ctx.forget_deleted(|sub| {
            existing.contains(&(sub.namespace.clone().unwrap_or_default(), sub.name.clone()))
        });
    }
}

/// Re-discovers the optional APIs every 5 minutes (Prometheus Operator installed later).
async fn refresh_capabilities(client: Client, ctx: Arc<Context>) {
    let mut interval = tokio::time::interval(Duration::from_secs(300));
    interval.tick().await;
    loop {
        interval.tick().await;
        match controller::discover(&client).await {
            Ok(found) => {
                if let Ok(mut capabilities) = ctx.capabilities.lock()
                    && *capabilities != found
                {
                    tracing::info!(?found, "optional APIs changed");
                    *capabilities = found;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "API discovery failed; keeping the last result");
            }
        }
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "metahook-operator".to_owned());
    format!("{host}-{}", std::process::id())
}
