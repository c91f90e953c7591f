//! `bench --sink-drain`: how fast the NATS JetStream, PostgreSQL and Kafka sinks drain a
//! backlog, apart from the 200 path.
//!
//! In the `rcv+sinks` run the sinks drain while the load runs, so their rate is bounded by
//! (and shares the CPU with) the 200 path. Here the backlog is spooled first and drained
//! afterwards by a receiver that does nothing else:
//!
//! 1. a receiver whose sinks all point at a closed port (they retry forever, so their
//!    cursors stay at the start) takes `--drain-events` events over HTTP, then stops;
//! 2. the receiver is started again on the same spool with the measured sinks pointing at the
//!    real services (a fresh stream and schema each); the time from its start until each
//!    measured sink delivered every event (lag zero) gives the drain rate.
//!
//! Phase 2 runs four times: NATS alone, PostgreSQL alone, both together (as in production,
//! where they share the CPU), and Kafka alone, into a tansu broker (a Kafka-compatible
//! broker in Rust, in memory) the bench starts on a port of its own; without tansu
//! installed (`scripts/install-tools.sh`) that phase is left out, saying so.
//! `--drain-only PHASE` runs one phase. Each phase drains with sinks of its own names, so
//! the spool keeps the backlog for the next phase: a sink new to a spool starts at its oldest
//! event, and the segments stay until every listed sink has passed them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::task::JoinSet;

use super::bodies::{BodyKind, BodyTemplate, SignedBodies};
use super::client;
use super::load::webhook_request;
use super::process::{ServerProcess, free_port};
use super::servers::{APP_SECRET, NATS_URL, POSTGRES_URL, Programs, ReceiverProgram, SinkTargets};
use super::signature::Signer;
use super::{HEALTH_PATH, READY_TIMEOUT, WEBHOOK_PATH};
use crate::tansu::Tansu;
use crate::testkit::metric_value;

/// Connections that spool the backlog.
const SPOOL_CONNECTIONS: usize = 32;
/// How long one phase may take to drain before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often /metrics is read while draining.
const POLL: Duration = Duration::from_millis(50);

/// A sink of the drain runs: its name in the receiver's configuration and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nats,
    Postgres,
    Kafka,
}

/// One drain phase: the sinks it measures.
struct Phase {
    label: &'static str,
    /// Its name for `--drain-only`.
    tag: &'static str,
    sinks: &'static [(&'static str, Kind)],
}

/// The names `--drain-only` takes.
pub const PHASE_TAGS: &[&str] = &["nats", "postgres", "both", "kafka"];

/// Partitions of each Kafka phase's topic.
const KAFKA_PARTITIONS: u32 = 3;

/// Where a phase's sinks deliver: the stream and schema, and the Kafka topic.
struct Targets {
    sinks: SinkTargets,
    /// The broker's `host:port` and the phase's topic.
    kafka: Option<(String, String)>,
}

const PHASES: &[Phase] = &[
    Phase {
        label: "NATS alone",
        tag: "nats",
        sinks: &[("nats_alone", Kind::Nats)],
    },
    Phase {
        label: "PostgreSQL alone",
        tag: "postgres",
        sinks: &[("pg_alone", Kind::Postgres)],
    },
    Phase {
        label: "both together",
        tag: "both",
        sinks: &[("nats_both", Kind::Nats), ("pg_both", Kind::Postgres)],
    },
    Phase {
        label: "Kafka alone",
        tag: "kafka",
        sinks: &[("kafka_alone", Kind::Kafka)],
    },
];

/// The Kafka phase's broker on a free port, or `None` (saying why) when tansu is not
/// installed: the other phases still run.
fn start_tansu() -> Result<Option<Tansu>> {
    if let Err(err) = crate::tools::find("tansu") {
        println!("  Kafka phase left out: {err:#}");
        return Ok(None);
    }
    Tansu::start(free_port()?).map(Some)
}

/// One measured sink of one phase.
#[derive(Debug)]
struct Drained {
    phase: &'static str,
    sink: &'static str,
    events: u64,
    elapsed: Duration,
}

/// Spools `events` events of `body` (rounded up to whole requests), then drains them phase
/// by phase, printing each sink's rate.
pub async fn run(
    programs: &Programs,
    body: BodyKind,
    events: u64,
    only: Option<&str>,
) -> Result<()> {
    let template = BodyTemplate::new(body)?;
    let per_request = template.messages() as u64;
    let requests = events.div_ceil(per_request);
    let events = requests * per_request;
    let bodies = Arc::new(SignedBodies::new(template, Signer::new(APP_SECRET)?));
    let dir = tempfile::Builder::new()
        .prefix("metahook-bench-drain-")
        .tempdir()
        .context("creating a temporary directory")?;
    let closed = format!("127.0.0.1:{}", free_port()?);

    println!(
        "sink drain: {events} events ({requests} requests of the {} body), load average {}",
        body.label(),
        super::load_average().unwrap_or_else(|| "?".into())
    );
    let started = Instant::now();
    let receiver = Receiver::start(programs, dir.path(), &closed, None).await?;
    spool(receiver.addr, &bodies, requests).await?;
    receiver.process.stop().await?;
    println!(
        "  spooled in {:.1} s ({:.0} req/s)",
        started.elapsed().as_secs_f64(),
        requests as f64 / started.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    let mut tansu = None;
    for phase in PHASES.iter().filter(|p| only.is_none_or(|o| o == p.tag)) {
        let mut targets = Targets {
            sinks: unique_targets(phase.label),
            kafka: None,
        };
        if phase.sinks.iter().any(|(_, kind)| *kind == Kind::Kafka) {
            if tansu.is_none() {
                tansu = start_tansu()?;
            }
            let Some(broker) = &tansu else { continue };
            let topic = format!("drain-{}", targets.sinks.schema.replace('_', "-"));
            broker.create_topic(&topic, KAFKA_PARTITIONS)?;
            targets.kafka = Some((broker.bootstrap(), topic));
        }
        let outcome = drain(programs, dir.path(), &closed, phase, &targets, events).await;
        super::drain::clean_up(&targets.sinks).await?;
        results.extend(outcome?);
    }
    drop(tansu);
    println!("\n| phase | sink | events | seconds | events/s |\n|---|---|---|---|---|");
    for d in &results {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} |",
            d.phase,
            d.sink,
            d.events,
            d.elapsed.as_secs_f64(),
            d.events as f64 / d.elapsed.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "load average after: {}",
        super::load_average().unwrap_or_else(|| "?".into())
    );
    Ok(())
}

/// A stream and schema of their own for a phase.
fn unique_targets(label: &str) -> SinkTargets {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag: String = label
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    SinkTargets {
        stream: format!("DRAIN_{tag}_{}_{nanos}", std::process::id()),
        schema: format!("drain_{tag}_{}_{nanos}", std::process::id()),
    }
}

/// Sends `requests` signed webhooks over [`SPOOL_CONNECTIONS`] connections; every one must
/// be answered 200.
async fn spool(addr: SocketAddr, bodies: &Arc<SignedBodies>, requests: u64) -> Result<()> {
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..SPOOL_CONNECTIONS {
        let (bodies, sent) = (Arc::clone(bodies), Arc::clone(&sent));
        tasks.spawn(async move {
            let mut connection = client::connect(addr).await?;
            let authority = addr.to_string();
            while sent.fetch_add(1, Ordering::Relaxed) < requests {
                let (body, signature) = bodies.next();
                let request = webhook_request(WEBHOOK_PATH, &authority, body, &signature)?;
                let reply = client::send(&mut connection, request).await?;
                ensure!(
                    reply.status.is_success(),
                    "spooling: HTTP {} {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("spooling task panicked")??;
    }
    Ok(())
}

/// Restarts the receiver on the spool with `phase`'s sinks live and waits until each has
/// delivered all `events`.
async fn drain(
    programs: &Programs,
    dir: &Path,
    closed: &str,
    phase: &Phase,
    targets: &Targets,
    events: u64,
) -> Result<Vec<Drained>> {
    let started = Instant::now();
    let mut receiver = Receiver::start(programs, dir, closed, Some((phase, targets))).await?;
    let mut drained: Vec<Drained> = Vec::new();
    while drained.len() < phase.sinks.len() {
        ensure!(
            started.elapsed() < DRAIN_TIMEOUT,
            "{}: the sinks did not drain within {DRAIN_TIMEOUT:?}",
            phase.label
        );
        receiver.process.ensure_running()?;
        let metrics = client::get(receiver.addr, "/metrics", Duration::from_secs(5)).await?;
        let text = String::from_utf8_lossy(&metrics.body);
        for (sink, _) in phase.sinks {
            if drained.iter().any(|d| d.sink == *sink) {
                continue;
            }
            let lag = metric_value(
                &text,
                &format!(r#"metahook_sink_lag_events{{sink="{sink}"}}"#),
            );
            let delivered = metric_value(
                &text,
                &format!(r#"metahook_sink_deliveries_total{{result="success",sink="{sink}"}}"#),
            );
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            if let (Some(lag), Some(delivered)) = (lag, delivered)
                && lag == 0.0
                && delivered as u64 >= events
            {
                drained.push(Drained {
                    phase: phase.label,
                    sink,
                    events: delivered as u64,
                    elapsed: started.elapsed(),
                });
                println!(
                    "  {}: {sink} drained {} events in {:.2} s",
                    phase.label,
                    delivered as u64,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
    receiver.process.stop().await?;
    Ok(drained)
}

/// A receiver of the drain runs.
struct Receiver {
    process: ServerProcess,
    addr: SocketAddr,
}

impl Receiver {
    /// Starts a receiver on the spool in `dir` with every sink of every phase; those of
    /// `live` (a phase and its stream and schema) deliver, the others point at `closed`.
    async fn start(
        programs: &Programs,
        dir: &Path,
        closed: &str,
        live: Option<(&Phase, &Targets)>,
    ) -> Result<Receiver> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let config = write_config(dir, addr, closed, live)?;
        let (program, args): (&Path, Vec<std::ffi::OsString>) = match &programs.receiver {
            Some(ReceiverProgram::External(path)) => {
                (path.as_path(), vec!["--config".into(), config.into()])
            }
            Some(ReceiverProgram::SelfExec) => (
                programs.bench.as_path(),
                vec![super::servers::RECEIVER_FLAG.into(), config.into()],
            ),
            None => bail!("the sink drain needs the receiver"),
        };
        let label = live.map_or("drain-spool", |(phase, _)| phase.label);
        let mut process = ServerProcess::spawn(label, program, &args, None, dir)?;
        process
            .wait_healthy(addr, &client::Transport::Plain, HEALTH_PATH, READY_TIMEOUT)
            .await?;
        Ok(Receiver { process, addr })
    }
}

/// The receiver's configuration: every phase's sinks, retrying forever.
fn write_config(
    dir: &Path,
    addr: SocketAddr,
    closed: &str,
    live: Option<(&Phase, &Targets)>,
) -> Result<std::path::PathBuf> {
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    let path_of = |p: &Path| -> Result<String> {
        Ok(quoted(p.to_str().with_context(|| {
            format!("path {} is not UTF-8", p.display())
        })?))
    };
    let secret = dir.join("app-secret");
    std::fs::write(&secret, APP_SECRET).with_context(|| format!("writing {}", secret.display()))?;
    let token = dir.join("verify-token");
    std::fs::write(&token, "drain-verify-token")
        .with_context(|| format!("writing {}", token.display()))?;
    let mut config = format!(
        "listen: {listen}\nendpoints:\n  - name: whatsapp\n    path: {path}\n    \
         app_secret_file: {secret}\n    verify_token_file: {token}\nspool:\n  dir: {spool}\nsinks:\n",
        listen = quoted(&addr.to_string()),
        path = quoted(WEBHOOK_PATH),
        secret = path_of(&secret)?,
        token = path_of(&token)?,
        spool = path_of(&dir.join("spool"))?,
    );
    for phase in PHASES {
        for (name, kind) in phase.sinks {
            let targets = live.filter(|(p, _)| p.label == phase.label).map(|(_, t)| t);
            let sink = match (kind, targets) {
                (Kind::Nats, Some(t)) => format!(
                    "nats: {{url: {}, subject: {}, stream: {}, create_stream: true}}",
                    quoted(NATS_URL),
                    quoted(&format!(
                        "{}.{{platform}}.{{field}}.{{kind}}",
                        t.sinks.schema
                    )),
                    quoted(&t.sinks.stream)
                ),
                (Kind::Nats, None) => {
                    format!("nats: {{url: {}}}", quoted(&format!("nats://{closed}")))
                }
                (Kind::Postgres, Some(t)) => format!(
                    "postgres: {{url: {}, schema: {}}}",
                    quoted(POSTGRES_URL),
                    quoted(&t.sinks.schema)
                ),
                (Kind::Postgres, None) => format!(
                    "postgres: {{url: {}}}",
                    quoted(&format!("postgres://postgres@{closed}/test"))
                ),
                (
                    Kind::Kafka,
                    Some(Targets {
                        kafka: Some((bootstrap, topic)),
                        ..
                    }),
                ) => format!(
                    "kafka: {{bootstrap_servers: [{}], topic: {}}}",
                    quoted(bootstrap),
                    quoted(topic)
                ),
                (Kind::Kafka, _) => {
                    format!("kafka: {{bootstrap_servers: [{}]}}", quoted(closed))
                }
            };
            config.push_str(&format!(
                "  - name: {name}\n    {sink}\n    retry: {{max_attempts: 0, max_backoff: 1s}}\n"
            ));
        }
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
