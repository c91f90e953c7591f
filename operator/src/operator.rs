//! The running operator: its metrics listener, leader election, one controller per
//! watched scope (with the watches of [`crate::watch`]), and the background tasks that
//! forget deleted subscriptions and re-discover optional APIs; and the binary's entry point
//! ([`main`]): flags, logging, the runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use futures_util::{FutureExt as _, StreamExt};
use kube::api::{Api, ListParams};
use kube::runtime::Controller;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;

use crate::cli::{Cli, LogFormat};
use crate::controller::{self, Context, Settings};
use crate::crd::WebhookSubscription;
use crate::graph::{GraphClient, GraphSettings};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::watch::{replay_watches, watch_scopes, watches};

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
            // Each cause once: kube's errors repeat their source's text in their own.
            let error = metahook_config::error_chain(err.as_ref());
            tracing::error!(error, "metahook-operator failed");
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
        unregister_timeout: cli.graph_unregister_timeout,
        policy: Policy::new(
            &cli.allowed_receiver_images,
            &cli.allowed_ingress_annotations,
            &cli.allowed_callback_hosts,
        ),
    };
    tracing::info!(policy = ?settings.policy, "what subscriptions may reach");
    let mut ctx = Context::new(
        client.clone(),
        metrics.clone(),
        settings,
        capabilities,
        Some(identity.clone()),
    );
    ctx.graph = Arc::new(
        GraphClient::new(GraphSettings {
            base_url: cli.graph_url.clone(),
            instagram_base_url: cli.graph_instagram_url.clone(),
            api_version: cli.graph_api_version.clone(),
            timeout: cli.graph_timeout,
            max_attempts: cli.graph_max_attempts,
            retry_backoff: cli.graph_retry_backoff,
        })
        .context("building the Graph API client")?
        .with_metrics(metrics.clone()),
    );
    let ctx = Arc::new(ctx);
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
        let ctx = ctx.clone();
        controller
            .shutdown_on_signal()
            .graceful_shutdown_on(lost.clone())
            .run(controller::reconcile, controller::error_policy, ctx.clone())
            .for_each(move |result| {
                // A requeue that came due for a deleted subscription: forget its failures.
                if let Err(kube::runtime::controller::Error::ObjectNotFound(gone)) = &result {
                    ctx.forget_gone(gone);
                }
                async move {
                    match result {
                        Ok((object, _)) => tracing::debug!(subscription = %object, "reconciled"),
                        Err(err) => tracing::debug!(error = %err, "controller event"),
                    }
                }
            })
    });
    // The WebhookReplay controller beside it, per scope, on the same context; only where
    // its CRD is installed (an older install upgraded without crds/webhookreplay.yaml
    // reconciles subscriptions as before).
    let replays_served = client
        .list_api_group_resources("metahook.io/v1alpha1")
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == "webhookreplays"));
    if !replays_served {
        tracing::warn!(
            "the WebhookReplay CRD (webhookreplays.metahook.io) is not installed: replays are \
             not carried out until it is applied (crds/webhookreplay.yaml) and the operator restarts"
        );
    }
    let replay_scopes = if replays_served {
        scopes.as_slice()
    } else {
        &[]
    };
    let replay_runs = replay_scopes.iter().map(|scope| {
        replay_watches(&client, scope)
            .shutdown_on_signal()
            .graceful_shutdown_on(lost.clone())
            .run(
                controller::replay::reconcile,
                controller::replay::error_policy,
                ctx.clone(),
            )
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(replay = %object, "reconciled"),
                    Err(err) => tracing::debug!(error = %err, "replay controller event"),
                }
            })
    });
    futures_util::future::join(
        futures_util::future::join_all(runs),
        futures_util::future::join_all(replay_runs),
    )
    .await;
    metrics.leader.set(0);
    server.abort();
    if !led.load(Ordering::Relaxed) {
        anyhow::bail!("lost the leader Lease; exiting so a restart campaigns again");
    }
    tracing::info!("stopped");
    Ok(())
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
