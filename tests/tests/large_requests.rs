//! A backlog of large requests (Meta's payloads reach 3 MB) is normalized and delivered
//! a few requests at a time: the receiver's memory does not grow with the requests' sizes.
//! Without the byte budgets of its batches, the normalization stage would read 128 such
//! requests at once and a sink 512 of their events, a crash loop under a pod's memory
//! limit.

#![allow(clippy::print_stderr)] // the test reports the peak it measured

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use metahook_receiver::config::SpoolConfig;
use metahook_receiver::spool::Spool;
use metahook_receiver::spool::record::RawRequest;
use metahook_tests::testkit::{self, ReceiverProcess, SECRET};

/// Requests in the backlog, and the size of each one's text.
const REQUESTS: usize = 48;
const TEXT_BYTES: usize = 3 * 1024 * 1024 - 1024;
/// The receiver's peak RSS must stay under the memory limit the operator and the chart
/// give a receiver pod by default (256Mi). The backlog is 144 MiB of requests and about
/// 290 MiB of events; read without byte budgets it took the debug build to about 1.2 GiB,
/// with them about 155 MiB (one request at a time: about 100 MiB).
const PEAK_RSS_MIB: f64 = 256.0;

/// One accepted WhatsApp text message of about 3 MB.
fn body(n: usize) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"123456789"}},"messages":[{{"from":"15551234567","id":"wamid.large.{n}","timestamp":"1700000000","type":"text","text":{{"body":"{text}"}}}}]}}}}]}}]}}"#,
        text = "x".repeat(TEXT_BYTES)
    )
    .into_bytes()
}

/// Writes the backlog into the intake log, as the 200 path would have: accepted, none
/// normalized yet.
async fn write_backlog(spool_dir: &Path) -> Result<()> {
    let total = Arc::new(AtomicU64::new(0));
    let intake = Spool::open_intake(
        &SpoolConfig::new(spool_dir.to_owned()),
        "normalizer",
        &total,
    )
    .context("opening the intake log")?;
    for n in 0..REQUESTS {
        let body = body(n);
        let record = RawRequest {
            received_nanos: 1_764_547_200_000_000_000,
            endpoint: "whatsapp",
            body: &body,
        }
        .encode();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
        intake
            .append(key, vec![record])
            .await
            .context("writing the backlog")?;
    }
    intake.close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_requests_is_worked_through_in_bounded_memory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    write_backlog(&d.join("spool")).await?;
    std::fs::write(d.join("app-secret"), SECRET)?;
    std::fs::write(d.join("verify-token"), "token")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = d.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nendpoints:\n  - name: whatsapp\n    path: /webhooks/whatsapp\n    app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\nspool:\n  dir: {d}/spool\nsinks:\n  - name: local\n    file: {{path: {d}/events.jsonl}}\n",
            d = d.display()
        ),
    )?;

    let receiver = ReceiverProcess::start(&config, addr).await?;
    let events_path = d.join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for event in testkit::read_events(&events_path)? {
            *counts
                .entry(event["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        if counts.len() == REQUESTS {
            break counts;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {REQUESTS} requests reached the file",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for n in 0..REQUESTS {
        let id = format!("wamid.large.{n}");
        ensure!(counts.get(&id) == Some(&1), "{id}: {:?}", counts.get(&id));
    }
    let peak = receiver.peak_rss_mib()?;
    eprintln!("peak RSS while working through the backlog: {peak:.1} MiB");
    ensure!(
        peak < PEAK_RSS_MIB,
        "the receiver held {peak:.1} MiB at its peak (bound {PEAK_RSS_MIB} MiB)"
    );
    Ok(())
}
