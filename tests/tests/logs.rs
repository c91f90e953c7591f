//! The receiver's logs: one JSON line per request, never a secret, signature or message
//! text unless `log_message_text: true`.

#![allow(clippy::print_stderr)] // tests report on stderr

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use http::{Method, StatusCode};
use metahook_receiver::verify;
use metahook_tests::testkit::{self, SECRET};

const TEXT: &str = "my card number is 4111 1111 1111 1111";

fn body() -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"200300400500600"}},"messages":[{{"from":"15551234567","id":"wamid.logs.1","timestamp":"1700000000","type":"text","text":{{"body":"{TEXT}"}}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// Runs the binary with `extra` config lines, sends one good and one unsigned request,
/// stops it with SIGTERM, and returns its log lines.
async fn logs_of_a_run(dir: &Path, extra: &str) -> Result<Vec<serde_json::Value>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(dir.join("app-secret"), SECRET)?;
    std::fs::write(dir.join("verify-token"), "the-verify-token")?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nendpoints:\n  - name: wa\n    path: /wa\n    app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\nspool:\n  dir: {d}/spool\nsinks:\n  - name: local\n    file: {{path: {d}/events.jsonl}}\n{extra}",
            d = dir.display()
        ),
    )?;
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    let mut child = Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("spawning the receiver")?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    testkit::wait_ready(addr, Duration::from_secs(20)).await?;
    let payload = body();
    let signature = verify::sign(SECRET, &payload);
    let ok = testkit::request(
        addr,
        Method::POST,
        "/wa",
        &[("x-hub-signature-256", &signature)],
        payload.clone().into(),
    )
    .await?;
    ensure!(ok.status == StatusCode::OK, "signed request: {}", ok.status);
    let refused = testkit::request(addr, Method::POST, "/wa", &[], payload.into()).await?;
    ensure!(refused.status == StatusCode::UNAUTHORIZED);
    let handshake = testkit::request(
        addr,
        Method::GET,
        "/wa?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        &[],
        bytes::Bytes::new(),
    )
    .await?;
    ensure!(handshake.status == StatusCode::FORBIDDEN);
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    let status = child.wait()?;
    ensure!(status.success(), "exit status {status}");
    let text = std::fs::read_to_string(dir.join("stderr.log"))?;
    let lines: Result<Vec<serde_json::Value>> = text
        .lines()
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("log line is not JSON: {line}"))
        })
        .collect();
    let lines = lines?;
    // Nothing secret, whatever the setting.
    for forbidden in [
        std::str::from_utf8(SECRET)?,
        "the-verify-token",
        &signature[7..],
    ] {
        ensure!(
            !text.contains(forbidden),
            "the log contains a secret or signature"
        );
    }
    Ok(lines)
}

fn requests(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "metahook::request")
        .collect()
}

#[tokio::test]
async fn one_json_line_per_request_without_message_text() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lines = logs_of_a_run(dir.path(), "").await?;
    let requests = requests(&lines);
    assert_eq!(
        requests.len(),
        3,
        "one line per webhook request: {requests:?}"
    );
    let accepted = requests
        .iter()
        .find(|l| l["status"] == 200)
        .context("accepted line")?;
    assert_eq!(accepted["endpoint"], "wa");
    assert_eq!(accepted["outcome"], "accepted");
    // The 200 comes before normalization: the line tells the body's size, not its events.
    assert!(accepted["bytes"].as_u64().is_some_and(|bytes| bytes > 0));
    assert_eq!(accepted["duplicate"], false);
    assert!(accepted["duration_ms"].is_number());
    assert!(
        requests
            .iter()
            .any(|l| l["status"] == 401 && l["outcome"] == "signature_rejected")
    );
    let all = serde_json::to_string(&lines)?;
    assert!(
        !all.contains(TEXT),
        "message text must not be logged by default"
    );
    Ok(())
}

#[tokio::test]
async fn message_text_only_when_enabled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lines = logs_of_a_run(dir.path(), "log_message_text: true\n").await?;
    let all = serde_json::to_string(&lines)?;
    assert!(all.contains(TEXT), "log_message_text: true logs the text");
    Ok(())
}
