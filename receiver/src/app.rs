//! Assembly: opens the spool (or, in direct mode, the sinks), starts the sink consumers, the
//! secret and TLS reloaders, the gauges and the listeners, and shuts them down in order
//! (listeners drained, then sinks, then the spool).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use metahook_config::{Config, DeliveryMode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acceptor::Acceptor;
use crate::enrich::Enricher;
use crate::lock_wait;
use crate::metrics::Metrics;
use crate::metrics::events::{RefusalLogTick, SpoolLimit, SpoolSampled};
use crate::metrics::refusal_log;
use crate::normalizer::{self, Normalizer};
use crate::priority::DeliveryRuntime;
use crate::server::{self, Listener, Receiver, Role, Standby};
use crate::sink::direct::DirectSinks;
use crate::sink::kind::BuildSink;
use crate::sink::{self, Consumer, Phase};
use crate::spool::Spool;
use crate::spool::dead_letters::DeadLetters;
use crate::tls::{self, TlsServer};

/// How often spool gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the sinks get to return once told to stop at the end of the grace period.
const STOP_WITHIN: Duration = Duration::from_secs(2);

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
    // Bound before the spool is opened: while a start waits for the spool's lock (a drain
    // holds it) and recovers it, the listeners answer as standby, alive and not ready.
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
    let acceptor = match config.delivery.mode {
        DeliveryMode::Spool => {
            let answers = Standby {
                metrics: Arc::clone(&metrics),
                why: "starting: opening the spool (waiting for its lock while another process holds it)",
                retry_after_seconds: config.limits.retry_after_seconds,
                header_read_timeout: config.limits.header_read_timeout,
            };
            let listeners = [
                Some((&listener, tls_server.as_ref())),
                metrics_listener.as_ref().map(|tcp| (tcp, None)),
            ];
            let opening = lock_wait::open_spool(&config, config.spool.lock_wait);
            let (intake, events) = standing_by(opening, &listeners, &answers).await?;
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

    let (stop, stop_rx) = watch::channel(false);
    let (sinks_phase, sinks_phase_rx) = watch::channel(Phase::Run);
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
            let mut inboxes = std::collections::HashMap::new();
            for sink_config in &config.sinks {
                let inbox = sink::inbox::Inbox::new();
                inboxes.insert(sink_config.name.clone(), Arc::clone(&inbox));
                let consumer = Consumer {
                    name: sink_config.name.clone(),
                    spool: Arc::clone(spool),
                    metrics: Arc::clone(&metrics),
                    retry: sink_config.retry.clone(),
                    dead_letters: dead_letters.clone(),
                    inbox: Some(inbox),
                    inbox_only: false,
                };
                let sink = sink_config.kind.build();
                sink_tasks.push(runtime.spawn(sink::consume(
                    consumer,
                    sink,
                    sinks_phase_rx.clone(),
                )));
            }
            delivery = Some(runtime);
            if let Some(admin) = &config.admin {
                let jobs = crate::replay::jobs::Jobs::new(
                    Arc::clone(spool),
                    dead_letters.clone(),
                    inboxes,
                );
                receiver.set_admin(Arc::new(crate::replay::admin::Admin::new(
                    admin.token_file.clone(),
                    jobs,
                )));
            }
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
    let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
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
        // One deadline for all that follows SIGTERM: `shutdown_delay` of accepting, then
        // `shutdown_grace` for open requests, normalization and the sinks together.
        let mut stopping = stop_rx.clone();
        let deadline = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::Instant::now() + delay + grace
        };
        let ((), (), deadline) = tokio::join!(
            server::serve(
                webhooks,
                Arc::clone(&serving),
                stop_rx.clone(),
                delay,
                grace
            ),
            probes,
            deadline
        );
        // Every request answered by now is normalized before the sinks are told to finish,
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
        if let Some(events) = &spool {
            finish_delivery(
                events,
                &metrics,
                &sink_names,
                &sinks_phase,
                sink_tasks,
                deadline,
            )
            .await;
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

/// A bound listener and its TLS, if it serves HTTPS.
pub type Bound<'a> = (&'a TcpListener, Option<&'a Arc<TlsServer>>);

/// Runs `opening` while `listeners` (a listener and its TLS, if any) answer as
/// [`server::standby`]; their standby ends, its connections closed, once `opening` is done.
pub async fn standing_by<T>(
    opening: impl Future<Output = T>,
    listeners: &[Option<Bound<'_>>],
    answers: &Standby,
) -> T {
    let (done, done_rx) = watch::channel(false);
    let serving = futures_util::future::join_all(
        listeners
            .iter()
            .flatten()
            .map(|(tcp, tls)| server::standby(tcp, *tls, answers, done_rx.clone())),
    );
    let (opened, _) = tokio::join!(
        async {
            let opened = opening.await;
            let _ = done.send(true);
            opened
        },
        serving
    );
    opened
}

/// The sinks' part of a shutdown: they deliver the whole backlog (retrying failures with
/// their backoff) until it is empty or `deadline` passes; then whatever is in flight is
/// abandoned and stays in the spool for the next start. Logs what was delivered and what
/// is left, per sink.
async fn finish_delivery(
    events: &Spool,
    metrics: &Metrics,
    sinks: &[String],
    phase: &watch::Sender<Phase>,
    mut tasks: Vec<JoinHandle<()>>,
    deadline: tokio::time::Instant,
) {
    let before: Vec<_> = sinks.iter().map(|s| metrics.sink_totals(s)).collect();
    let _ = phase.send(Phase::Finish);
    if !join_until(&mut tasks, deadline).await {
        let _ = phase.send(Phase::Stop);
        // Stop ends every wait and attempt at once; a cursor commit already on its blocking
        // thread finishes on its own.
        if !join_until(&mut tasks, tokio::time::Instant::now() + STOP_WITHIN).await {
            tracing::error!("a sink did not stop when told to; its events stay in the spool");
        }
    }
    let (mut delivered, mut left) = (0, 0);
    for (sink, before) in sinks.iter().zip(before) {
        let after = metrics.sink_totals(sink);
        let sent = after.delivered.saturating_sub(before.delivered);
        let waiting = events.undelivered(sink).unwrap_or(0);
        delivered += sent;
        left += waiting;
        tracing::info!(sink = %sink, delivered = sent, left = waiting, dead_lettered = after.dead_lettered.saturating_sub(before.dead_lettered), "sink stopped");
    }
    if left == 0 {
        tracing::info!(
            delivered,
            left,
            "the sinks delivered the whole backlog before stopping"
        );
    } else {
        tracing::warn!(
            delivered,
            left,
            "the grace period ended with events undelivered; they stay in the spool and the next start on it delivers them"
        );
    }
}

/// Waits for the tasks still running until `deadline`; true when all have ended. Can be
/// called again after a timeout (a handle already awaited to its end is not polled again).
pub(crate) async fn join_until(
    tasks: &mut [JoinHandle<()>],
    deadline: tokio::time::Instant,
) -> bool {
    let running = tasks.iter_mut().filter(|task| !task.is_finished());
    tokio::time::timeout_at(deadline, futures_util::future::join_all(running))
        .await
        .is_ok()
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
pub(crate) fn enricher(
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
        // Retained segments expire while no sink commits (a quiet receiver), here.
        let expiring = Arc::clone(&spool);
        let retained = tokio::task::spawn_blocking(move || {
            if let Err(err) = expiring.expire() {
                tracing::error!(error = %err, "cannot expire retained spool segments");
            }
            expiring.retained()
        })
        .await
        .unwrap_or_default();
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
            retained_bytes: retained.bytes,
            oldest_retained_millis: retained.oldest_millis,
        });
    }
}
