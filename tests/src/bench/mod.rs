//! The `bench` program: measures `metahook-receiver` against a minimal baseline server.
//!
//! Absolute throughput depends on the machine, so the receiver is judged relative to a
//! baseline that does only the unavoidable work (read, verify HMAC, parse JSON) on the same
//! stack, under the same load, on the same machine, in the same run. For each body (a 1.4 KB
//! text message and a 15 KB batch) each server is started fresh as a child process, driven
//! for a fixed time, sampled for peak RSS and stopped; then one table is printed.
//!
//! The receiver is also run over HTTPS and mutual TLS ([`tls`]), judged against itself in
//! plain HTTP in the same invocation.
//!
//! Modules by concept: [`bodies`] and [`signature`] make the requests, [`baseline`] is the
//! reference server, [`client`] and [`load`] generate load, [`process`] and [`servers`] run
//! the children, [`tls`] makes the certificates, [`report`] prints and judges the figures.
//! [`sink_drain`] (`--sink-drain`) measures how fast the NATS, PostgreSQL and Kafka sinks drain a
//! spooled backlog, apart from the 200 path.

pub mod baseline;
pub mod bodies;
pub mod client;
pub mod drain;
pub mod load;
pub mod process;
pub mod report;
pub mod restart;
pub mod servers;
pub mod signature;
pub mod sink_drain;
pub mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, ensure};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use self::bodies::{BodyKind, BodyTemplate, SignedBodies};
use self::load::LoadPlan;
use self::process::{Pinning, ServerProcess};
use self::report::{CpuUse, Measurement, Setup};
use self::servers::{APP_SECRET, Programs, ServerKind};
use self::signature::Signer;

/// Path webhooks are POSTed to, on both servers.
pub const WEBHOOK_PATH: &str = "/webhooks/whatsapp";

/// Readiness endpoint, on both servers.
pub const HEALTH_PATH: &str = "/healthz";

/// How long a freshly started server may take to answer its health check.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Command line of the bench program.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Throughput, latency and memory of metahook-receiver against a minimal hyper baseline"
)]
pub struct Args {
    /// Measured time per server and body (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Warm-up per server and body, excluded from the figures.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,

    /// Receiver binary [default: this program in receiver mode, which runs the same code].
    #[arg(long, value_name = "PATH")]
    pub receiver_bin: Option<PathBuf>,

    /// Skip the run with NATS and PostgreSQL sinks (it is skipped anyway when they do not
    /// answer on 127.0.0.1:4222 and :5432).
    #[arg(long)]
    pub no_sinks: bool,

    /// Measure only the baseline (e.g. while the receiver is not built).
    #[arg(long)]
    pub baseline_only: bool,

    /// Skip the receiver's HTTPS and mutual-TLS runs.
    #[arg(long, conflicts_with = "tls_only")]
    pub no_tls: bool,

    /// Measure only the receiver in plain HTTP, HTTPS and mutual TLS (no baseline, no
    /// sinks), for the TLS / plain ratios.
    #[arg(long, conflicts_with = "baseline_only")]
    pub tls_only: bool,

    /// Instead of the load runs: write this many MiB of undelivered events into a spool
    /// and time the receiver's start on it (spawn to `GET /readyz` 200), three times.
    #[arg(long, value_name = "MIB")]
    pub restart_backlog_mib: Option<u64>,

    /// Do not pin the servers and the load generator to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Measure only how fast the NATS, PostgreSQL and Kafka sinks drain a spooled backlog (see
    /// `sink_drain`): spool `--drain-events` events, then time each sink's drain.
    #[arg(long, conflicts_with_all = ["baseline_only", "tls_only"])]
    pub sink_drain: bool,

    /// Events spooled for `--sink-drain`.
    #[arg(long, default_value_t = 100_000, requires = "sink_drain")]
    pub drain_events: u64,

    /// Only this phase of `--sink-drain`: nats, postgres, both or kafka.
    #[arg(long, requires = "sink_drain", value_parser = clap::builder::PossibleValuesParser::new(sink_drain::PHASE_TAGS))]
    pub drain_only: Option<String>,

    /// Send the 15 KB batch body (ten events per request) for `--sink-drain` instead of the
    /// 1.4 KB text body.
    #[arg(long, requires = "sink_drain")]
    pub drain_batch_body: bool,

    /// Internal: run as the baseline server on this address.
    #[arg(long = "baseline-server", hide = true, requires = "secret_file")]
    pub baseline_server: Option<SocketAddr>,

    /// Internal: run as the receiver with this config file (see `servers::RECEIVER_FLAG`).
    #[arg(long = "receiver-server", hide = true, value_name = "CONFIG")]
    pub receiver_server: Option<PathBuf>,

    /// Internal: app secret file for the baseline server.
    #[arg(long, hide = true)]
    pub secret_file: Option<PathBuf>,
}

/// Runs the program for parsed `args`: either the whole benchmark or, when re-executed with
/// the hidden flag, the baseline server.
pub fn main(args: Args) -> Result<()> {
    if let Some(config) = args.receiver_server {
        let argv = [
            "metahook-receiver".into(),
            "--config".into(),
            config.into_os_string(),
        ];
        std::process::exit(i32::from(metahook_receiver::cli::status_with::<
            _,
            std::ffi::OsString,
        >(argv)));
    }
    if let Some(addr) = args.baseline_server {
        let secret_file = args
            .secret_file
            .context("--baseline-server needs --secret-file")?;
        return baseline::run_process(addr, &secret_file);
    }
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(!args.duration.is_zero(), "--duration must be positive");

    let mut programs = Programs::resolve(args.receiver_bin.clone(), args.baseline_only)?;
    if args.sink_drain {
        ensure!(args.drain_events > 0, "--drain-events must be at least 1");
        ensure!(
            drain::services_available(),
            "--sink-drain needs NATS on 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432"
        );
        let body = if args.drain_batch_body {
            BodyKind::Batch
        } else {
            BodyKind::Text
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("building the drain runtime")?;
        return runtime.block_on(async {
            tokio::select! {
                drained = sink_drain::run(&programs, body, args.drain_events, args.drain_only.as_deref()) => drained,
                signal = interrupted() => Err(anyhow!("interrupted by {}", signal?)),
            }
        });
    }
    programs.with_sinks = !args.no_sinks && !args.tls_only && drain::services_available();
    programs.tls_only = args.tls_only;
    if !args.no_tls && !args.baseline_only {
        programs.tls = Some(tls::BenchTls::new().context("generating the TLS runs' certificates")?);
    }
    let templates = BodyKind::ALL
        .into_iter()
        .map(|kind| Ok((kind, BodyTemplate::new(kind)?)))
        .collect::<Result<Vec<_>>>()?;
    // Read before pinning, which shrinks this process to one CPU.
    let nproc = std::thread::available_parallelism()
        .context("counting available CPUs")?
        .get();
    // Before the runtime exists, so every runtime thread inherits the affinity.
    let pinning = Pinning::apply(!args.no_pin);

    report::print_setup(&Setup {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        nproc,
        cpu_model: cpu_model(),
        load_average: load_average(),
        pinning: pinning.clone(),
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        bodies: templates
            .iter()
            .map(|(kind, template)| (*kind, template.len(), template.messages()))
            .collect(),
        baseline_only: programs.receiver.is_none(),
        runs: programs.kinds().iter().map(|k| k.label()).collect(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building load generator tokio runtime")?;
    if let Some(mib) = args.restart_backlog_mib {
        return runtime.block_on(restart::measure(&programs, pinning.server_cpu(), mib, 3));
    }
    let measurements = runtime.block_on(async {
        tokio::select! {
            measured = run_all(&args, &programs, &pinning, templates) => measured,
            // Returning drops the run in progress, whose guard kills the server child.
            signal = interrupted() => Err(anyhow!("interrupted by {}", signal?)),
        }
    })?;
    report::print_results(&measurements);
    report::check_failures(&measurements)
}

/// Measures every server with every body, one run at a time.
async fn run_all(
    args: &Args,
    programs: &Programs,
    pinning: &Pinning,
    templates: Vec<(BodyKind, BodyTemplate)>,
) -> Result<Vec<Measurement>> {
    let mut measurements = Vec::new();
    for (body, template) in templates {
        // One source per body across both servers keeps message ids unique run-wide.
        let bodies = Arc::new(SignedBodies::new(template, Signer::new(APP_SECRET)?));
        for server in programs.kinds() {
            print!(
                "running {:<12} against {:<9} ... ",
                body.label(),
                server.label()
            );
            std::io::stdout().flush().context("flushing stdout")?;
            let measurement = measure(args, programs, pinning, &bodies, body, server).await?;
            println!(
                "{:.1} req/s, {} errors",
                measurement.load.requests_per_sec(),
                measurement.load.failed
            );
            measurements.push(measurement);
        }
    }
    Ok(measurements)
}

/// One run: start `server` fresh, wait for health, apply load, sample RSS, stop.
async fn measure(
    args: &Args,
    programs: &Programs,
    pinning: &Pinning,
    bodies: &Arc<SignedBodies>,
    body: BodyKind,
    server: ServerKind,
) -> Result<Measurement> {
    // Kept whole until the end: dropping it on an error path kills the server before its
    // directory is removed (fields drop in declaration order).
    let mut launched = servers::launch(server, programs, pinning.server_cpu())?;
    let addr = launched.addr;
    launched
        .process
        .wait_healthy(addr, &launched.probe, HEALTH_PATH, READY_TIMEOUT)
        .await?;
    let plan = LoadPlan {
        addr,
        path: WEBHOOK_PATH,
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        transport: launched.transport.clone(),
    };
    let load_started = std::time::Instant::now();
    let (load, cpu) = tokio::join!(
        load::run(&plan, bodies),
        cpu_during_window(&launched.process, args.warmup, args.duration)
    );
    let (load, cpu) = (load?, cpu?);
    launched.process.ensure_running()?;
    let drains = match &launched.sink_targets {
        Some(_) => drain::measure(addr, load_started).await?,
        None => Vec::new(),
    };
    // The plain receiver: until the file sink holds every event of every 200.
    let caught_up = match server {
        ServerKind::Receiver => {
            let events = load.accepted * bodies.template().messages() as u64;
            let path = launched.dir.path().join("events.jsonl");
            Some(drain::file_caught_up(&path, events, load_started).await?)
        }
        _ => None,
    };
    let peak_rss_kib = launched.process.peak_rss_kib()?;
    let stopped = launched.process.stop().await?;
    // Only now: the server must be gone before its spool and sink files are deleted.
    launched
        .dir
        .close()
        .context("removing the run's temporary directory")?;
    if let Some(targets) = &launched.sink_targets {
        drain::clean_up(targets).await?;
    }
    Ok(Measurement {
        body,
        server,
        load,
        peak_rss_kib,
        cpu,
        stopped,
        drains,
        caught_up,
    })
}

/// CPU used by the server and by the load generator over the measurement window, sampled
/// alongside the load. It shows whether the server was actually saturated: if the load
/// generator is the one at 100%, the server's figures are a lower bound.
async fn cpu_during_window(
    server: &ServerProcess,
    warmup: Duration,
    duration: Duration,
) -> Result<CpuUse> {
    tokio::time::sleep(warmup).await;
    let (server_start, own_start) = (server.cpu_time()?, process::own_cpu_time()?);
    tokio::time::sleep(duration).await;
    let (server_end, own_end) = (server.cpu_time()?, process::own_cpu_time()?);
    let window = duration.as_secs_f64();
    Ok(CpuUse {
        server: (server_end.saturating_sub(server_start)).as_secs_f64() / window,
        load_generator: (own_end.saturating_sub(own_start)).as_secs_f64() / window,
    })
}

/// Resolves on SIGINT or SIGTERM with the signal's name, so an interrupted benchmark still
/// stops its server child instead of leaving it running.
async fn interrupted() -> Result<&'static str> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}

/// The 1-minute load average from /proc/loadavg.
pub(crate) fn load_average() -> Option<String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    loadavg.split_whitespace().next().map(str::to_owned)
}

/// The CPU model from /proc/cpuinfo, to tell readers what hardware the figures are from.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}
