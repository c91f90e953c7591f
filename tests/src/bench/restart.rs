//! Start-up with a backlog: how long a receiver whose sinks are far behind takes to be
//! ready (`--restart-backlog-mib`).
//!
//! The backlog is written straight into a spool's event log with the receiver's own spool
//! code (1.4 KB events, as many as the size asks, none delivered: the file sink's cursor
//! is at 0), then the receiver is started on it, pinned like the load runs, and timed from
//! the spawn until `GET /readyz` answers 200. The process is killed right after (the file
//! sink would start delivering the backlog) and the run repeated on the same spool.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use metahook_receiver::config::SpoolConfig;
use metahook_receiver::spool::{Key, Spool};

use super::client::Transport;
use super::process::ServerProcess;
use super::servers::{self, Programs};

/// One event of the backlog: a WhatsApp text message event, about 1.4 KB.
fn event(n: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"wamid.backlog.{n}","platform":"whatsapp","object":"whatsapp_business_account","field":"messages","kind":"message","account_id":"100200300400500","occurred_at":"2026-12-01T00:00:00Z","received_at":"2026-12-01T00:00:00.123456789Z","endpoint":"whatsapp","message":{{"id":"wamid.backlog.{n}","type":"text","text":"{pad}"}},"raw":{{"from":"15551234567","id":"wamid.backlog.{n}","type":"text","text":{{"body":"{pad}"}}}}}}"#,
        pad = "x".repeat(560)
    )
    .into_bytes()
}

/// Writes at least `mib` MiB of undelivered events into `spool_dir`'s event log; returns
/// the events written.
pub fn build_backlog(spool_dir: &std::path::Path, mib: u64) -> Result<u64> {
    let config = SpoolConfig::new(spool_dir.to_owned());
    let total = Arc::new(AtomicU64::new(0));
    let events = Spool::open_events(&config, &["local".to_owned()], &total)
        .context("opening the backlog's event log")?;
    let target = mib * 1024 * 1024;
    let mut written = 0u64;
    while total.load(std::sync::atomic::Ordering::SeqCst) < target {
        let batch: Vec<(Key, Vec<Vec<u8>>)> = (0..1024)
            .map(|i| ([0; 16], vec![event(written + i)]))
            .collect();
        events
            .append_blocking(batch)
            .context("writing the backlog")?;
        written += 1024;
    }
    events.close();
    Ok(written)
}

/// Builds the backlog, then starts the receiver on it `runs` times; prints each time to
/// ready.
pub async fn measure(programs: &Programs, cpu: Option<usize>, mib: u64, runs: usize) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("metahook-bench-restart-")
        .tempdir()
        .context("creating a temporary directory")?;
    let building = Instant::now();
    let spool = dir.path().join("spool");
    let written = tokio::task::spawn_blocking({
        let spool = spool.clone();
        move || build_backlog(&spool, mib)
    })
    .await
    .context("backlog task")??;
    let bytes: u64 = std::fs::read_dir(spool.join("segments"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "backlog: {written} events, {:.0} MiB in the event log, written in {:.1} s",
        bytes as f64 / 1048576.0,
        building.elapsed().as_secs_f64()
    );
    for run in 1..=runs {
        let launched = servers::launch_on(dir.path(), programs, cpu)?;
        let started = Instant::now();
        let mut process: ServerProcess = launched.0;
        process
            .wait_healthy(
                launched.1,
                &Transport::Plain,
                "/readyz",
                Duration::from_secs(60),
            )
            .await?;
        let ready = started.elapsed();
        println!(
            "restart {run}: ready (GET /readyz 200) {:.0} ms after the spawn",
            ready.as_secs_f64() * 1000.0
        );
        process.kill()?;
    }
    dir.close().context("removing the backlog")?;
    Ok(())
}
