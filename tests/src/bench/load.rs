//! Closed-loop load generator.
//!
//! A fixed number of keep-alive connections each keep exactly one request in flight, sending
//! the next as soon as the previous response has been read. With the same connection count
//! and bodies for every server, the resulting throughput and latency are directly comparable.
//! A warm-up period lets connections, allocators and caches settle; only requests completing
//! inside the measurement window are counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, header};
use http_body_util::Full;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::bodies::SignedBodies;
use super::client::{self, Connection, Transport};
use super::signature::SIGNATURE_HEADER;

/// A request not answered within this time counts as failed and its connection is replaced,
/// so a stalled server cannot stretch the run indefinitely.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failure before reconnecting, so a dead server is not hammered in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Latencies are recorded in microseconds, up to a minute, with three significant digits.
const HISTOGRAM_MAX_MICROS: u64 = 60_000_000;

/// What load to apply and where.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Server address.
    pub addr: SocketAddr,
    /// Request path.
    pub path: &'static str,
    /// Number of concurrent keep-alive connections.
    pub connections: usize,
    /// Discarded period before measuring.
    pub warmup: Duration,
    /// Measured period.
    pub duration: Duration,
    /// Plain HTTP or TLS (with or without a client certificate).
    pub transport: Transport,
}

/// What one measurement window produced.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests answered with 2xx.
    pub succeeded: u64,
    /// Requests answered with 2xx over the whole run, warm-up included (what the server
    /// took in, for the sustained rate).
    pub accepted: u64,
    /// The whole run, warm-up included.
    pub ran: Duration,
    /// Requests answered with another status, or failed at the connection level.
    pub failed: u64,
    /// Latency of successful requests, in microseconds.
    pub latency_micros: Histogram<u64>,
    /// Length of the measurement window.
    pub measured: Duration,
    /// Description of the first failure, to explain a non-zero error count.
    pub first_failure: Option<String>,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn requests_per_sec(&self) -> f64 {
        // Counts stay far below 2^52, so the conversion is exact.
        self.succeeded as f64 / self.measured.as_secs_f64()
    }

    /// Latency at `quantile` (0..=1) in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_micros.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// Failed share of all requests; 1.0 when nothing completed at all.
    pub fn failure_ratio(&self) -> f64 {
        let total = self.succeeded + self.failed;
        if total == 0 {
            1.0
        } else {
            self.failed as f64 / total as f64
        }
    }
}

/// Start of measurement and end of the run, shared by all connection tasks.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }
}

/// Per-connection tallies, merged after the run so recording needs no synchronisation.
#[derive(Debug)]
struct Tally {
    succeeded: u64,
    accepted: u64,
    failed: u64,
    latency_micros: Histogram<u64>,
    first_failure: Option<String>,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Self {
            succeeded: 0,
            accepted: 0,
            failed: 0,
            latency_micros: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
                .context("creating latency histogram")?,
            first_failure: None,
        })
    }

    fn fail(&mut self, why: impl FnOnce() -> String) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(why());
        }
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        self.succeeded += other.succeeded;
        self.accepted += other.accepted;
        self.failed += other.failed;
        self.latency_micros
            .add(&other.latency_micros)
            .context("merging latency histograms")?;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        Ok(())
    }
}

/// Applies `plan` with bodies from `bodies` and returns the measured figures.
pub async fn run(plan: &LoadPlan, bodies: &Arc<SignedBodies>) -> Result<LoadResult> {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let window = Window {
        measure_from,
        end: measure_from + plan.duration,
    };
    let mut tasks = JoinSet::new();
    for _ in 0..plan.connections {
        let bodies = Arc::clone(bodies);
        let (addr, path, transport) = (plan.addr, plan.path, plan.transport.clone());
        tasks.spawn(async move { drive_connection(addr, path, &transport, &bodies, window).await });
    }
    let mut total = Tally::new()?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("load connection task panicked")??)?;
    }
    Ok(LoadResult {
        succeeded: total.succeeded,
        accepted: total.accepted,
        ran: start.elapsed(),
        failed: total.failed,
        latency_micros: total.latency_micros,
        measured: plan.duration,
        first_failure: total.first_failure,
    })
}

/// One connection's request loop: reconnects after failures and stops at the window's end.
async fn drive_connection(
    addr: SocketAddr,
    path: &'static str,
    transport: &Transport,
    bodies: &SignedBodies,
    window: Window,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let authority = addr.to_string();
    let mut connection: Option<Connection> = None;
    while Instant::now() < window.end {
        let mut open = match connection.take() {
            Some(open) if !open.is_closed() => open,
            _ => match tokio::time::timeout(REQUEST_TIMEOUT, client::connect_with(addr, transport))
                .await
            {
                Ok(Ok(open)) => open,
                outcome => {
                    if window.contains(Instant::now()) {
                        tally.fail(|| match outcome {
                            Ok(Err(err)) => format!("{err:#}"),
                            _ => format!("connecting to {addr} timed out"),
                        });
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        let (body, signature) = bodies.next();
        let request = webhook_request(path, &authority, body, &signature)?;
        let sent = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, client::send(&mut open, request)).await;
        let done = Instant::now();
        let counted = window.contains(done);
        match outcome {
            Ok(Ok(reply)) if reply.status.is_success() => {
                connection = Some(open);
                tally.accepted += 1;
                if counted {
                    tally.succeeded += 1;
                    let micros = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                    tally.latency_micros.saturating_record(micros.max(1));
                }
            }
            Ok(Ok(reply)) => {
                connection = Some(open);
                if counted {
                    tally.fail(|| {
                        let snippet =
                            String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]);
                        format!("HTTP {} {}", reply.status, snippet.trim())
                            .trim_end()
                            .to_owned()
                    });
                }
            }
            Ok(Err(err)) => {
                if counted {
                    tally.fail(|| format!("{err:#}"));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_elapsed) => {
                if counted {
                    tally.fail(|| format!("no response within {REQUEST_TIMEOUT:?}"));
                }
            }
        }
    }
    Ok(tally)
}

/// A signed webhook POST as Meta sends it.
pub(crate) fn webhook_request(
    path: &str,
    authority: &str,
    body: Bytes,
    signature: &str,
) -> Result<Request<Full<Bytes>>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(body))
        .map_err(|err| anyhow!("building webhook request: {err}"))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::bench::baseline;
    use crate::bench::bodies::{BodyKind, BodyTemplate};
    use crate::bench::signature::Signer;
    use crate::bench::{HEALTH_PATH, WEBHOOK_PATH};

    /// Drives the in-process baseline briefly: every request must succeed, proving bodies,
    /// signatures and the client agree with the server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn baseline_accepts_generated_load() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(baseline::serve(listener, Signer::new(b"k")?, async move {
            let _ = stopped.await;
        }));
        assert!(
            client::get(addr, HEALTH_PATH, REQUEST_TIMEOUT)
                .await?
                .status
                .is_success()
        );

        for kind in BodyKind::ALL {
            let bodies = Arc::new(SignedBodies::new(
                BodyTemplate::new(kind)?,
                Signer::new(b"k")?,
            ));
            let plan = LoadPlan {
                addr,
                path: WEBHOOK_PATH,
                connections: 4,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(300),
                transport: Transport::Plain,
            };
            let result = run(&plan, &bodies).await?;
            assert_eq!(result.failed, 0, "{:?}", result.first_failure);
            assert!(result.succeeded > 0);
            assert!(result.latency_ms(0.99) > 0.0);
        }

        let wrong = Arc::new(SignedBodies::new(
            BodyTemplate::new(BodyKind::Text)?,
            Signer::new(b"other")?,
        ));
        let plan = LoadPlan {
            addr,
            path: WEBHOOK_PATH,
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(100),
            transport: Transport::Plain,
        };
        let rejected = run(&plan, &wrong).await?;
        assert_eq!(rejected.succeeded, 0);
        assert!(rejected.failed > 0);
        assert!(rejected.first_failure.unwrap_or_default().contains("403"));

        let _ = stop.send(());
        server.await??;
        Ok(())
    }
}
