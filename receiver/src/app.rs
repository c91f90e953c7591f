//! Assembly: opens the spool (or, in direct mode, the sinks), starts the sink consumers, the
//! secret and TLS reloaders, the gauges and the listeners, and shuts them down in order
//! (listeners drained, then sinks, then the spool).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use metahook_config::{Config, DeliveryMode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acceptor::Acceptor;
use crate::enrich::Enricher;
use crate::metrics::Metrics;
use crate::metrics::events::{RefusalLogTick, SpoolLimit, SpoolSampled};
use crate::metrics::refusal_log;
use crate::normalizer::{self, Normalizer};
use crate::priority::DeliveryRuntime;
use crate::server::{self, Listener, Receiver, Role};
use crate::sink::direct::DirectSinks;
use crate::sink::kind::BuildSink;
use crate::sink::{self, Consumer};
use crate::spool::Spool;
use crate::spool::dead_letters::DeadLetters;
use crate::tls::{self, TlsServer};

/// How often spool gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// A started receiver.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The address of the probes-only `metrics_listen` listener, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The shared handler (readiness, metrics).
    pub receiver: Arc<Receiver>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Begins a graceful shutdown: not ready, stop accepting, drain, deliver, close.
    pub fn shutdown(&self) {
        self.receiver.set_ready(false);
        let _ = self.stop.send(true);
    }

    /// Waits until the receiver has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("receiver task panicked")?
    }
}

/// Binds the listener configured as `key` (`listen`, `metrics_listen`) on `addr`, as a start
/// does (and `check-config`, which then drops it). A failure names the key, the address and
/// the cause: `listen 127.0.0.1:8080: address already in use`.
pub async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        let cause = match err.kind() {
            std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "address not available: no network interface of this machine has {}",
                addr.ip()
            ),
            std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
                "permission denied: port {} is below 1024 (needs CAP_NET_BIND_SERVICE)",
                addr.port()
            ),
            _ => err.to_string(),
        };
        anyhow::anyhow!("{key} {addr}: {cause}")
    })
}

/// Starts a receiver for `config`; returns once it is listening and ready.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new().context("cannot create metrics")?);
    // Before anything else starts: a bad certificate file fails the start, naming the key.
    let tls_server = match &config.tls {
        Some(settings) => Some(Arc::new(TlsServer::load(settings, Arc::clone(&metrics))?)),
        None => None,
    };
    if config.sinks.is_empty() {
        tracing::warn!("no sinks configured: events are kept in the spool until a sink is added");
    }
    metrics.emit(SpoolLimit {
        bytes: config.spool.max_bytes,
    });
    let dead_letters = DeadLetters::new(&config.spool.dir);
    let acceptor = match config.delivery.mode {
        DeliveryMode::Spool => {
            let (intake, events) = open_spool(&config).await?;
            Acceptor::Spool {
                intake: Arc::new(intake),
                events: Arc::new(events),
            }
        }
        DeliveryMode::Direct => Acceptor::Direct(DirectSinks::new(
            &config.sinks,
            dead_letters.clone(),
            Arc::clone(&metrics),
        )),
    };
    // Direct delivery happens on the request path: no spool, no stage, no consumers.
    let logs = match &acceptor {
        Acceptor::Spool { intake, events } => Some((Arc::clone(intake), Arc::clone(events))),
        Acceptor::Direct(_) => None,
    };
    let spool = logs.as_ref().map(|(_, events)| Arc::clone(events));
    let receiver = Arc::new(Receiver::new(&config, acceptor, Arc::clone(&metrics))?);
    let listener = bind("listen", config.listen).await?;
    let addr = listener.local_addr().context("listener has no address")?;
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(bind("metrics_listen", at).await?),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("metrics listener has no address")?;

    let (stop, stop_rx) = watch::channel(false);
    let (sinks_stop, sinks_stop_rx) = watch::channel(false);
    let (normalizer_stop, normalizer_stop_rx) = watch::channel(false);
    let mut sink_tasks = Vec::new();
    let mut delivery = None;
    let mut gauges = None;
    let mut normalizer = None;
    if let Some((intake, events)) = &logs {
        let stage = Normalizer {
            intake: Arc::clone(intake),
            events: Arc::clone(events),
            objects: Normalizer::objects_of(&config.endpoints),
            metrics: Arc::clone(&metrics),
            log_message_text: config.log_message_text,
            enricher: enricher(&config, &metrics)?,
        };
        normalizer = Some(
            stage
                .start(normalizer_stop_rx)
                .context("cannot start the normalization thread")?,
        );
    }
    if let Some((intake, spool)) = &logs {
        // Off the 200 path, so on threads that yield the CPU to the request handlers; none
        // started while no sink is configured.
        if !config.sinks.is_empty() {
            let runtime = DeliveryRuntime::start().context("cannot start the delivery runtime")?;
            for sink_config in &config.sinks {
                let consumer = Consumer {
                    name: sink_config.name.clone(),
                    spool: Arc::clone(spool),
                    metrics: Arc::clone(&metrics),
                    retry: sink_config.retry.clone(),
                    dead_letters: dead_letters.clone(),
                };
                let sink = sink_config.kind.build();
                sink_tasks.push(runtime.spawn(sink::consume(
                    consumer,
                    sink,
                    sinks_stop_rx.clone(),
                )));
            }
            delivery = Some(runtime);
        }
        gauges = Some(tokio::spawn(update_gauges(
            Arc::clone(intake),
            Arc::clone(spool),
            Arc::clone(&metrics),
            stop_rx.clone(),
        )));
    }
    let refusals = tokio::spawn(summarize_refusals(Arc::clone(&metrics), stop_rx.clone()));
    let reloader = tokio::spawn(reload_secrets(
        Arc::clone(&receiver),
        config.secret_reload_interval,
        stop_rx.clone(),
    ));
    let tls_reloader = match (&tls_server, &config.tls) {
        (Some(server), Some(settings)) => Some(tokio::spawn(tls::watch_files(
            Arc::clone(server),
            settings.reload_interval,
            stop_rx.clone(),
        ))),
        _ => None,
    };

    receiver.set_ready(true);
    let tls_mode = config.tls.as_ref().map(|t| t.mode);
    tracing::info!(listen = %addr, metrics_listen = ?metrics_addr, tls = ?tls_mode, trusted_proxy = config.trusted_proxy.is_some(), endpoints = config.endpoints.len(), sinks = config.sinks.len(), "receiver ready");

    let grace = config.shutdown_grace;
    let delay = config.shutdown_delay;
    let serving = Arc::clone(&receiver);
    let webhooks = Listener {
        tcp: listener,
        role: Role::Webhooks,
        tls: tls_server,
    };
    let task = tokio::spawn(async move {
        let probes = async {
            if let Some(tcp) = metrics_listener {
                let probes = Listener {
                    tcp,
                    role: Role::Probes,
                    tls: None,
                };
                server::serve(probes, Arc::clone(&serving), stop_rx.clone(), delay, grace).await;
            }
        };
        tokio::join!(
            server::serve(
                webhooks,
                Arc::clone(&serving),
                stop_rx.clone(),
                delay,
                grace
            ),
            probes
        );
        let deadline = tokio::time::Instant::now() + grace;
        // Every request answered by now is normalized before the sinks are told to stop,
        // so they deliver it too.
        let _ = normalizer_stop.send(true);
        if let Some(stage) = normalizer {
            let joined = tokio::task::spawn_blocking(move || stage.join());
            match tokio::time::timeout_at(deadline, joined).await {
                Err(_) => tracing::warn!(
                    "normalization did not finish within the grace period; it resumes on restart"
                ),
                Ok(Ok(Err(_))) => tracing::error!("the normalization thread panicked"),
                Ok(_) => {}
            }
        }
        let _ = sinks_stop.send(true);
        for task in sink_tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(
                    "a sink did not finish delivering within the grace period; it resumes on restart"
                );
            }
        }
        drop(delivery);
        reloader.abort();
        refusals.abort();
        metrics.emit(RefusalLogTick { closing: true });
        if let Some(gauges) = gauges {
            gauges.abort();
        }
        if let Some(tls_reloader) = tls_reloader {
            tls_reloader.abort();
        }
        if let Some((intake, events)) = logs {
            drop(spool);
            tokio::task::spawn_blocking(move || {
                intake.close();
                events.close();
            })
            .await
            .context("spool close task failed")?;
        }
        tracing::info!("receiver stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        metrics_addr,
        receiver,
        stop,
        task,
    })
}

/// Writes the refusal log's summary when a window ends, so the last window of a flood of
/// refused requests is reported even when no request follows it.
async fn summarize_refusals(metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(refusal_log::WINDOW / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => metrics.emit(RefusalLogTick { closing: false }),
            _ = stop.changed() => return,
        }
    }
}

/// The normalization stage's enricher, when `enrichment` is configured (its metric exists
/// only then).
fn enricher(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<dyn normalizer::Enrich>>> {
    let Some(enrichment) = &config.enrichment else {
        return Ok(None);
    };
    let enricher =
        Enricher::new(enrichment, &config.endpoints, metrics).context("cannot start enrichment")?;
    Ok(enricher
        .is_enabled()
        .then(|| Arc::new(enricher) as Arc<dyn normalizer::Enrich>))
}

async fn reload_secrets(receiver: Arc<Receiver>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        // File reads: on a blocking thread, never on a runtime worker (a stalled volume
        // must not stop request handling).
        let receiver = Arc::clone(&receiver);
        let reloaded = tokio::task::spawn_blocking(move || reload_secret_files(&receiver)).await;
        if let Err(err) = reloaded {
            tracing::error!(error = %err, "the secret reload task failed; trying again at the next tick");
        }
    }
}

/// One pass of [`reload_secrets`]: every endpoint's secret files read again.
fn reload_secret_files(receiver: &Receiver) {
    for endpoint in receiver.endpoints().filter(|e| e.secrets.has_files()) {
        match endpoint.secrets.reload() {
            Ok(true) => {
                tracing::info!(endpoint = %endpoint.config.name, "secrets changed on disk: now in force");
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(endpoint = %endpoint.config.name, error = %err, "cannot re-read secrets; keeping the previous ones");
            }
        }
    }
}

/// Opens the intake log and the event log (a cursor per sink), counting their bytes
/// together. Blocking (recovery reads each log's newest segment), so on a blocking thread.
async fn open_spool(config: &Config) -> anyhow::Result<(Spool, Spool)> {
    let spool_config = config.spool.clone();
    let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    let started = std::time::Instant::now();
    let opened = tokio::task::spawn_blocking(move || {
        let total = Arc::new(AtomicU64::new(0));
        let intake = Spool::open_intake(&spool_config, normalizer::CONSUMER, &total)?;
        let events = Spool::open_events(&spool_config, &names, &total)?;
        Ok::<_, crate::spool::SpoolError>((intake, events))
    })
    .await
    .context("spool open task failed")?
    .with_context(|| format!("cannot open the spool in {}", config.spool.dir.display()))?;
    tracing::info!(dir = %config.spool.dir.display(), elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "spool opened");
    Ok(opened)
}

/// Samples both logs: the events the sinks have not delivered, the requests the
/// normalization stage has not normalized, and the oldest of either.
async fn update_gauges(
    intake: Arc<Spool>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let (stats, waiting) = (spool.stats(), intake.stats());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        // The oldest of a request waiting for normalization and an event waiting for a
        // sink (an event-log record carries when it was normalized).
        let oldest = [waiting.oldest_received_millis, stats.oldest_received_millis]
            .into_iter()
            .flatten()
            .min();
        let oldest_age = oldest.map_or(Duration::ZERO, |at| {
            Duration::from_millis(now.saturating_sub(at))
        });
        metrics.emit(SpoolSampled {
            // Both logs count their bytes together.
            bytes: stats.bytes,
            events: stats.events,
            requests: waiting.events,
            oldest_age,
        });
    }
}
