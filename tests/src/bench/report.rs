//! Printing the figures and judging them against the targets.
//!
//! The benchmark is a measuring instrument, not a test: targets are marked met or missed and
//! never fail the run. Only an unreliable measurement (more than [`MAX_FAILURE_RATIO`] of
//! requests failed) makes the program exit non-zero, because its figures would then mean
//! nothing.

use std::time::Duration;

use anyhow::{Result, bail};

use super::bodies::BodyKind;
use super::load::LoadResult;
use super::process::{Pinning, Stopped};
use super::servers::ServerKind;

/// Above this share of failed requests a run's figures are not trustworthy.
pub const MAX_FAILURE_RATIO: f64 = 0.01;

/// Receiver throughput (its 200s) must be at least this fraction of the baseline's.
const TARGET_MIN_THROUGHPUT_RATIO: f64 = 1.0;

/// The receiver's sustained rate (until the file sink caught up) must be at least this
/// fraction of the baseline's.
const TARGET_MIN_SUSTAINED_RATIO: f64 = 0.6;

/// Receiver p99 latency must be at most this multiple of the baseline's.
const TARGET_MAX_P99_RATIO: f64 = 1.5;

/// Receiver peak RSS must stay at or below this many MiB.
const TARGET_MAX_RSS_MIB: f64 = 64.0;

/// Conditions the figures were taken under, printed before the runs start.
#[derive(Debug)]
pub struct Setup {
    /// RFC 3339 timestamp of the run.
    pub date: String,
    /// CPUs available to the benchmark before pinning (what `nproc` prints).
    pub nproc: usize,
    /// CPU model, if /proc/cpuinfo names one.
    pub cpu_model: Option<String>,
    /// 1-minute load average before the runs, to show whether the machine was otherwise busy.
    pub load_average: Option<String>,
    /// Whether and where processes are pinned.
    pub pinning: Pinning,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// Discarded warm-up per run.
    pub warmup: Duration,
    /// Measured period per run.
    pub duration: Duration,
    /// Each body with its size in bytes and messages per request.
    pub bodies: Vec<(BodyKind, usize, usize)>,
    /// Whether the receiver is skipped.
    pub baseline_only: bool,
    /// The servers measured, in order.
    pub runs: Vec<&'static str>,
}

/// One server measured with one body.
#[derive(Debug)]
pub struct Measurement {
    /// Body sent.
    pub body: BodyKind,
    /// Server measured.
    pub server: ServerKind,
    /// Load generator figures.
    pub load: LoadResult,
    /// Peak RSS of the server process in KiB, sampled just before stopping it.
    pub peak_rss_kib: u64,
    /// CPU used during the measurement window.
    pub cpu: CpuUse,
    /// How the server ended.
    pub stopped: Stopped,
    /// How fast the NATS and PostgreSQL sinks drained (runs with sinks only).
    pub drains: Vec<super::drain::Drain>,
    /// From the start of the load until the file sink held every event of every 200 (the
    /// plain receiver run only).
    pub caught_up: Option<Duration>,
}

/// CPU used during a measurement window, in cores (1.0 = one CPU fully busy).
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// By the server under test.
    pub server: f64,
    /// By the bench process, i.e. the load generator.
    pub load_generator: f64,
}

/// Above this many cores the load generator is considered saturated.
const SATURATED_CORES: f64 = 0.9;

/// Below this many cores a process was clearly waiting rather than computing.
const IDLE_CORES: f64 = 0.7;

impl Measurement {
    fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }

    /// Requests per second from the start of the load until everything it was answered
    /// 200 for is in the file sink (the baseline stores nothing: until its load ended).
    fn sustained(&self) -> f64 {
        let until = self.caught_up.unwrap_or(self.load.ran);
        self.load.accepted as f64 / until.as_secs_f64().max(1e-9)
    }

    /// Whether the run's throughput and latency mean anything (see [`MAX_FAILURE_RATIO`]).
    fn reliable(&self) -> bool {
        self.load.succeeded > 0 && self.load.failure_ratio() <= MAX_FAILURE_RATIO
    }
}

/// Prints the run conditions.
pub fn print_setup(setup: &Setup) {
    println!("metahook benchmark, {}", setup.date);
    println!(
        "machine: nproc {}{}{}",
        setup.nproc,
        setup
            .cpu_model
            .as_deref()
            .map(|model| format!(", {model}"))
            .unwrap_or_default(),
        setup
            .load_average
            .as_deref()
            .map(|load| format!(", load average {load} before the runs"))
            .unwrap_or_default()
    );
    println!("CPU pinning: {}", setup.pinning);
    println!(
        "load: {} keep-alive HTTP/1.1 connections on 127.0.0.1, one request in flight each; \
         {} warm-up (discarded) then {} measured, per server and body",
        setup.connections,
        humantime::format_duration(setup.warmup),
        humantime::format_duration(setup.duration),
    );
    for &(kind, bytes, messages) in &setup.bodies {
        println!(
            "body {}: {bytes} bytes, {messages} message(s) per request, unique ids, signed",
            kind.label()
        );
    }
    if setup.baseline_only {
        println!("receiver: skipped (--baseline-only)");
    }
    println!("runs per body: {}", setup.runs.join(", "));
    if setup.runs.contains(&"rcv+tls") {
        println!(
            "rcv+tls / rcv+mtls: the receiver over HTTPS (tls.mode: server) and with mutual TLS \
             (the load presents a client certificate); rustls + ring on both sides, ECDSA P-256 \
             certificates (rcgen), handshakes during the warm-up"
        );
    }
    println!();
}

/// Prints the results table, the receiver/baseline ratios with targets, and notes.
pub fn print_results(measurements: &[Measurement]) {
    println!();
    println!(
        "{:<12} {:<9} {:>10} {:>9} {:>9} {:>13} {:>8} {:>8}  errors",
        "body", "server", "req/s", "p50 ms", "p99 ms", "peak RSS MiB", "srv CPU", "gen CPU"
    );
    for m in measurements {
        println!(
            "{:<12} {:<9} {:>10.1} {:>9.3} {:>9.3} {:>13.1} {:>7.0}% {:>7.0}%  {}",
            m.body.label(),
            m.server.label(),
            m.load.requests_per_sec(),
            m.load.latency_ms(0.50),
            m.load.latency_ms(0.99),
            m.peak_rss_mib(),
            m.cpu.server * 100.0,
            m.cpu.load_generator * 100.0,
            errors(&m.load),
        );
    }
    println!(
        "(srv/gen CPU: cores used by the server and by the load generator while measuring; \
         100% = one CPU)"
    );
    print_targets(measurements);
    print_tls(measurements);
    print_sinks(measurements);
    print_notes(measurements);
}

/// TLS and mTLS throughput must be at least this fraction of the plain receiver's.
const TARGET_TLS_THROUGHPUT_RATIO: f64 = 0.8;

/// The HTTPS and mTLS runs against the plain receiver of the same body.
fn print_tls(measurements: &[Measurement]) {
    let runs: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| matches!(m.server, ServerKind::ReceiverTls | ServerKind::ReceiverMtls))
        .collect();
    if runs.is_empty() {
        println!("receiver over TLS: not measured (--no-tls)");
        return;
    }
    println!();
    println!(
        "{:<12} {:<9} {:<28} {:<12} {:<12} {:<16}",
        "TLS / plain",
        "server",
        format!("req/s ratio (≥ {TARGET_TLS_THROUGHPUT_RATIO:.2}×)"),
        "p50 ratio",
        "p99 ratio",
        "srv CPU/request"
    );
    for run in runs {
        let plain = measurements
            .iter()
            .find(|m| m.body == run.body && m.server == ServerKind::Receiver);
        let Some(plain) = plain else { continue };
        if !(plain.reliable() && run.reliable()) {
            println!(
                "{:<12} {:<9} n/a (failed run)",
                run.body.label(),
                run.server.label()
            );
            continue;
        }
        let throughput = run.load.requests_per_sec() / plain.load.requests_per_sec();
        let verdict = if throughput >= TARGET_TLS_THROUGHPUT_RATIO {
            "met"
        } else {
            "missed"
        };
        // Server CPU per request: less sensitive than req/s to other processes taking
        // the server's CPU away during one run but not the other.
        let cpu_per_request = |m: &Measurement| m.cpu.server / m.load.requests_per_sec();
        println!(
            "{:<12} {:<9} {:<28} {:<12} {:<12} {:<16}",
            run.body.label(),
            run.server.label(),
            format!("{throughput:.2}× {verdict}"),
            format!(
                "{:.2}×",
                run.load.latency_ms(0.50) / plain.load.latency_ms(0.50)
            ),
            format!(
                "{:.2}×",
                run.load.latency_ms(0.99) / plain.load.latency_ms(0.99)
            ),
            format!(
                "{:.2}× ({:.0} µs)",
                cpu_per_request(run) / cpu_per_request(plain),
                cpu_per_request(run) * 1e6
            ),
        );
    }
    println!("(srv CPU/request: the server's CPU time per answered request, against plain HTTP)");
}

/// Targets of the delivery issue: events/s into JetStream and PostgreSQL, and the 200 path
/// with every sink on against the baseline.
const TARGET_JETSTREAM_EVENTS: f64 = 20_000.0;
const TARGET_POSTGRES_EVENTS: f64 = 10_000.0;
const TARGET_SINKS_THROUGHPUT_RATIO: f64 = 0.5;

/// The runs with sinks: their req/s against the baseline, and each sink's drain rate.
fn print_sinks(measurements: &[Measurement]) {
    let runs: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.server == ServerKind::ReceiverSinks)
        .collect();
    if runs.is_empty() {
        println!(
            "receiver with NATS + PostgreSQL sinks: not measured (services absent or --no-sinks)"
        );
        return;
    }
    println!();
    println!("receiver with file + NATS JetStream + PostgreSQL sinks:");
    for run in runs {
        let baseline = measurements
            .iter()
            .find(|m| m.body == run.body && m.server == ServerKind::Baseline);
        if let Some(baseline) = baseline {
            let ratio = run.load.requests_per_sec() / baseline.load.requests_per_sec();
            let verdict = if ratio >= TARGET_SINKS_THROUGHPUT_RATIO {
                "met"
            } else {
                "missed"
            };
            println!(
                "  {:<12} 200 path {ratio:.2}× baseline (≥ {TARGET_SINKS_THROUGHPUT_RATIO:.2}×) {verdict}",
                run.body.label()
            );
        }
        for drain in &run.drains {
            let target = if drain.sink == "bus" {
                TARGET_JETSTREAM_EVENTS
            } else {
                TARGET_POSTGRES_EVENTS
            };
            let into = if drain.sink == "bus" {
                "JetStream"
            } else {
                "PostgreSQL"
            };
            let verdict = if drain.rate() >= target {
                "met"
            } else {
                "missed"
            };
            println!(
                "  {:<12} into {into:<10} {:>9.0} events/s ({} events in {:.1} s; ≥ {target:.0}) {verdict}",
                run.body.label(),
                drain.rate(),
                drain.events,
                drain.elapsed.as_secs_f64(),
            );
        }
    }
}

/// Fails if any run had too many failed requests to be trusted.
pub fn check_failures(measurements: &[Measurement]) -> Result<()> {
    let unreliable: Vec<String> = measurements
        .iter()
        .filter(|m| !m.reliable())
        .map(|m| {
            format!(
                "{} / {} ({})",
                m.body.label(),
                m.server.label(),
                errors(&m.load)
            )
        })
        .collect();
    if !unreliable.is_empty() {
        bail!(
            "more than {:.0}% of requests failed in: {}",
            MAX_FAILURE_RATIO * 100.0,
            unreliable.join("; ")
        );
    }
    Ok(())
}

/// Error count with its share of all requests.
fn errors(load: &LoadResult) -> String {
    if load.failed == 0 {
        "0".to_owned()
    } else {
        format!("{} ({:.2}%)", load.failed, load.failure_ratio() * 100.0)
    }
}

/// Receiver-to-baseline ratios per body, each against its target.
fn print_targets(measurements: &[Measurement]) {
    let find = |body: BodyKind, server: ServerKind| {
        measurements
            .iter()
            .find(|m| m.body == body && m.server == server)
    };
    let pairs: Vec<(BodyKind, &Measurement, &Measurement)> = BodyKind::ALL
        .into_iter()
        .filter_map(|body| {
            Some((
                body,
                find(body, ServerKind::Baseline)?,
                find(body, ServerKind::Receiver)?,
            ))
        })
        .collect();
    println!();
    if pairs.is_empty() {
        println!("receiver/baseline ratios: not computed (baseline or receiver not measured)");
        return;
    }
    println!(
        "{:<12} {:<24} {:<34} {:<24} {:<22}",
        "receiver",
        format!("req/s ratio (≥ {TARGET_MIN_THROUGHPUT_RATIO:.2}×)"),
        format!("sustained ratio (≥ {TARGET_MIN_SUSTAINED_RATIO:.2}×)"),
        format!("p99 ratio (≤ {TARGET_MAX_P99_RATIO:.2}×)"),
        format!("peak RSS (≤ {TARGET_MAX_RSS_MIB:.0} MiB)"),
    );
    let (mut met, mut total, mut unjudged) = (0, 0, 0);
    let mut judge = |ok: bool| {
        total += 1;
        if ok {
            met += 1;
            "met"
        } else {
            "missed"
        }
    };
    for (body, baseline, receiver) in pairs {
        // Ratios of runs whose requests mostly failed would compare nothing.
        let (throughput, sustained, p99) = if baseline.reliable() && receiver.reliable() {
            let throughput = receiver.load.requests_per_sec() / baseline.load.requests_per_sec();
            let sustained = receiver.sustained() / baseline.sustained();
            let p99 = receiver.load.latency_ms(0.99) / baseline.load.latency_ms(0.99);
            (
                format!(
                    "{throughput:.2}× {}",
                    judge(throughput >= TARGET_MIN_THROUGHPUT_RATIO)
                ),
                format!(
                    "{sustained:.2}× {} ({:.0} req/s)",
                    judge(sustained >= TARGET_MIN_SUSTAINED_RATIO),
                    receiver.sustained()
                ),
                format!("{p99:.2}× {}", judge(p99 <= TARGET_MAX_P99_RATIO)),
            )
        } else {
            unjudged += 3;
            let na = || "n/a (failed run)".to_owned();
            (na(), na(), na())
        };
        let rss = receiver.peak_rss_mib();
        println!(
            "{:<12} {throughput:<24} {sustained:<34} {p99:<24} {:<22}",
            body.label(),
            format!("{rss:.1} MiB {}", judge(rss <= TARGET_MAX_RSS_MIB)),
        );
    }
    if unjudged == 0 {
        println!("targets met: {met} of {total}");
    } else {
        println!(
            "targets met: {met} of {}, of which {unjudged} not judged (failed runs)",
            total + unjudged
        );
    }
}

/// First failure of each run with errors, servers that needed killing, and runs where the
/// load generator rather than the server was the bottleneck.
fn print_notes(measurements: &[Measurement]) {
    for m in measurements {
        if m.cpu.load_generator >= SATURATED_CORES && m.cpu.server < SATURATED_CORES {
            println!(
                "note: {} / {}: the load generator was saturated ({:.0}% CPU) while the server \
                 used {:.0}%, so this server's figures are a lower bound",
                m.body.label(),
                m.server.label(),
                m.cpu.load_generator * 100.0,
                m.cpu.server * 100.0
            );
        } else if m.cpu.load_generator < IDLE_CORES && m.cpu.server < IDLE_CORES {
            println!(
                "note: {} / {}: neither the server ({:.0}% CPU) nor the load generator ({:.0}%) \
                 was CPU-bound; the limit was elsewhere (disk waits, or other processes \
                 competing for the CPUs)",
                m.body.label(),
                m.server.label(),
                m.cpu.server * 100.0,
                m.cpu.load_generator * 100.0
            );
        }
        if let Some(failure) = &m.load.first_failure {
            println!(
                "note: {} / {} first failure: {failure}",
                m.body.label(),
                m.server.label()
            );
        }
        match &m.stopped {
            Stopped::Exited(status) if status.success() => {}
            Stopped::Exited(status) => println!(
                "note: {} / {} ended with {status} after SIGTERM",
                m.body.label(),
                m.server.label()
            ),
            Stopped::Killed => println!(
                "note: {} / {} ignored SIGTERM and was killed",
                m.body.label(),
                m.server.label()
            ),
        }
    }
}
