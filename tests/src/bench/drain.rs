//! How fast the receiver's NATS and PostgreSQL sinks drain what the load put in the spool:
//! after the load stops, the receiver's /metrics is polled until each sink's lag is zero.
//! And when the file sink holds every event the load got a 200 for (the sustained rate).

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::client;
use super::servers::{NATS_URL, POSTGRES_URL, SinkTargets};
use crate::testkit::metric_value;

/// The sinks measured, by their names in the receiver's config.
pub const SINKS: &[&str] = &["bus", "store"];

/// One sink's drain.
#[derive(Debug, Clone)]
pub struct Drain {
    /// The sink's name.
    pub sink: &'static str,
    /// Events it delivered from the start of the load until its lag was zero.
    pub events: u64,
    /// That time.
    pub elapsed: Duration,
}

impl Drain {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let events = self.events as f64;
        events / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Whether NATS and PostgreSQL answer on their standard ports.
pub fn services_available() -> bool {
    ["127.0.0.1:4222", "127.0.0.1:5432"].iter().all(|addr| {
        addr.parse::<SocketAddr>()
            .is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
    })
}

/// Polls the receiver until every sink in [`SINKS`] has no lag (5 minutes at most).
pub async fn measure(addr: SocketAddr, load_started: Instant) -> Result<Vec<Drain>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut drains: Vec<Drain> = Vec::new();
    while drains.len() < SINKS.len() {
        if Instant::now() > deadline {
            bail!("the sinks did not drain within 5 minutes");
        }
        let metrics = client::get(addr, "/metrics", Duration::from_secs(5)).await?;
        let text = String::from_utf8_lossy(&metrics.body);
        for sink in SINKS {
            if drains.iter().any(|d| d.sink == *sink) {
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
            if let (Some(lag), Some(delivered)) = (lag, delivered)
                && lag == 0.0
                && delivered > 0.0
            {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                drains.push(Drain {
                    sink,
                    events: delivered as u64,
                    elapsed: load_started.elapsed(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(drains)
}

/// Waits until the file at `path` holds `lines` lines (the file sink caught up with
/// everything the load got a 200 for); returns the time since `load_started`. Reads only
/// what was appended since the last look. Gives up after 5 minutes.
pub async fn file_caught_up(path: &Path, lines: u64, load_started: Instant) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut offset, mut seen) = (0u64, 0u64);
    loop {
        if let Ok(mut file) = std::fs::File::open(path) {
            file.seek(SeekFrom::Start(offset))
                .with_context(|| format!("seeking in {}", path.display()))?;
            let mut appended = Vec::new();
            file.read_to_end(&mut appended)
                .with_context(|| format!("reading {}", path.display()))?;
            offset += appended.len() as u64;
            seen += appended.iter().filter(|b| **b == b'\n').count() as u64;
        }
        if seen >= lines {
            return Ok(load_started.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the file sink holds {seen} of {lines} events 5 minutes after the load started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes the run's stream and schema.
pub async fn clean_up(targets: &SinkTargets) -> Result<()> {
    let client = async_nats::connect(NATS_URL)
        .await
        .context("connecting to NATS")?;
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&targets.stream)
        .await;
    let (db, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", targets.schema))
        .await
        .context("dropping the bench schema")?;
    Ok(())
}
