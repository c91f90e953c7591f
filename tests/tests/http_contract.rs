//! The receiver's HTTP contract over real sockets: handshake, signatures, bodies, limits,
//! probes and metrics. Every bad input has its own test and its exact status.

#![allow(clippy::print_stderr)] // tests report skips and figures on stderr

use std::time::Duration;

use anyhow::Result;
use http::StatusCode;
use metahook_receiver::verify;
use metahook_tests::testkit::{PATH, PREVIOUS_SECRET, SECRET, TestReceiver, VERIFY_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: &[u8] = br#"{"object":"whatsapp_business_account","entry":[{"id":"100200300400500","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"200300400500600"},"contacts":[{"profile":{"name":"Ada Lovelace"},"wa_id":"15551234567"}],"messages":[{"from":"15551234567","id":"wamid.contract.1","timestamp":"1700000000","type":"text","text":{"body":"Order 42 arrived?"}}]}}]}]}"#;

async fn post_signed_as(
    receiver: &TestReceiver,
    signature: &str,
    body: &[u8],
) -> Result<StatusCode> {
    Ok(receiver
        .post_with(PATH, &[("x-hub-signature-256", signature)], body)
        .await?
        .status)
}

#[tokio::test]
async fn signed_post_is_accepted_and_reaches_the_file_sink() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let reply = receiver.post(BODY).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let events = receiver.wait_for_events(1, Duration::from_secs(5)).await?;
    assert_eq!(events[0]["id"], "wamid.contract.1");
    assert_eq!(events[0]["message"]["text"], "Order 42 arrived?");
    assert_eq!(
        events[0]["conversation"]["participant"]["id"],
        "15551234567"
    );
    Ok(())
}

#[tokio::test]
async fn missing_signature_is_401() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(
        receiver.post_with(PATH, &[], BODY).await?.status,
        StatusCode::UNAUTHORIZED
    );
    let failures = receiver
        .metric(r#"metahook_signature_failures_total{endpoint="meta",reason="missing"}"#)
        .await?;
    assert_eq!(failures, 1.0);
    Ok(())
}

#[tokio::test]
async fn wrong_signature_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let signature = verify::sign(SECRET, b"another body");
    assert_eq!(
        post_signed_as(&receiver, &signature, BODY).await?,
        StatusCode::FORBIDDEN
    );
    let failures = receiver
        .metric(r#"metahook_signature_failures_total{endpoint="meta",reason="mismatch"}"#)
        .await?;
    assert_eq!(failures, 1.0);
    Ok(())
}

#[tokio::test]
async fn signature_with_the_wrong_secret_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let signature = verify::sign(b"not-the-app-secret", BODY);
    assert_eq!(
        post_signed_as(&receiver, &signature, BODY).await?,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn odd_length_signature_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let signature = verify::sign(SECRET, BODY);
    assert_eq!(
        post_signed_as(&receiver, &signature[..signature.len() - 1], BODY).await?,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn non_hex_signature_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let signature = format!("sha256={}", "g".repeat(64));
    assert_eq!(
        post_signed_as(&receiver, &signature, BODY).await?,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn wrong_prefix_signature_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let signature = verify::sign(SECRET, BODY).replace("sha256=", "sha1=");
    assert_eq!(
        post_signed_as(&receiver, &signature, BODY).await?,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn uppercase_hex_signature_is_accepted() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let signature = verify::sign(SECRET, BODY);
    let upper = format!("sha256={}", signature["sha256=".len()..].to_uppercase());
    assert_eq!(
        post_signed_as(&receiver, &upper, BODY).await?,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn previous_secret_is_accepted_only_while_configured() -> Result<()> {
    let without = TestReceiver::start().await?;
    let old = verify::sign(PREVIOUS_SECRET, BODY);
    assert_eq!(
        post_signed_as(&without, &old, BODY).await?,
        StatusCode::FORBIDDEN
    );

    let with = TestReceiver::start_with(|config, dir| {
        let file = dir.join("secrets/previous-app-secret");
        std::fs::write(&file, PREVIOUS_SECRET).expect("write previous secret");
        config.endpoints[0].previous_app_secret_file = Some(file);
    })
    .await?;
    assert_eq!(post_signed_as(&with, &old, BODY).await?, StatusCode::OK);
    assert_eq!(
        with.post(BODY).await?.status,
        StatusCode::OK,
        "the current secret still works"
    );
    Ok(())
}

#[tokio::test]
async fn secret_file_change_takes_effect_without_restart() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    std::fs::write(
        receiver.dir.path().join("secrets/app-secret"),
        "rotated-secret\n",
    )?;
    let rotated = verify::sign(b"rotated-secret", BODY);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = post_signed_as(&receiver, &rotated, BODY).await?;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated secret never accepted (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        receiver.post(BODY).await?.status,
        StatusCode::FORBIDDEN,
        "the replaced secret is refused"
    );
    Ok(())
}

#[tokio::test]
async fn legacy_sha1_signature_only_where_enabled() -> Result<()> {
    let sha1 = verify::sign_with(verify::Algorithm::Sha1, SECRET, BODY);
    let default = TestReceiver::start().await?;
    let reply = default
        .post_with(PATH, &[("x-hub-signature", &sha1)], BODY)
        .await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let opted_in =
        TestReceiver::start_with(|config, _| config.endpoints[0].legacy_sha1_signature = true)
            .await?;
    let reply = opted_in
        .post_with(PATH, &[("x-hub-signature", &sha1)], BODY)
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    let wrong = verify::sign_with(verify::Algorithm::Sha1, b"nope", BODY);
    assert_eq!(
        opted_in
            .post_with(PATH, &[("x-hub-signature", &wrong)], BODY)
            .await?
            .status,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn handshake_echoes_the_challenge() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let reply = receiver
        .get(&format!(
            "{PATH}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "1158201444");
    assert!(
        reply.headers["content-type"]
            .to_str()?
            .starts_with("text/plain")
    );
    Ok(())
}

#[tokio::test]
async fn handshake_with_wrong_verify_token_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let reply = receiver
        .get(&format!(
            "{PATH}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1"
        ))
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!reply.text().contains(VERIFY_TOKEN));
    Ok(())
}

#[tokio::test]
async fn handshake_with_other_mode_is_403() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let reply = receiver
        .get(&format!(
            "{PATH}?hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
        ))
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn non_json_body_is_400() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(
        receiver.post(b"object=page&entry=1").await?.status,
        StatusCode::BAD_REQUEST
    );
    Ok(())
}

#[tokio::test]
async fn truncated_json_is_400() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(
        receiver.post(&BODY[..BODY.len() / 2]).await?.status,
        StatusCode::BAD_REQUEST
    );
    Ok(())
}

#[tokio::test]
async fn array_body_is_400() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let wrapped = [b"[".as_slice(), BODY, b"]"].concat();
    let reply = receiver.post(&wrapped).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("array"), "{}", reply.text());
    Ok(())
}

#[tokio::test]
async fn empty_body_is_400() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(receiver.post(b"").await?.status, StatusCode::BAD_REQUEST);
    Ok(())
}

/// A signed Page body whose messaging item nests `levels` arrays in total.
fn nested_body(levels: usize) -> Vec<u8> {
    // The envelope, entry array, entry, messaging array and item are 5 levels.
    let inner = levels - 5;
    format!(
        r#"{{"object":"page","entry":[{{"id":"1","time":1700000000,"messaging":[{{"x":{}{}}}]}}]}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
    .into_bytes()
}

#[tokio::test]
async fn too_deep_body_is_400_and_nothing_is_stored() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    for levels in [129, 100_000] {
        let reply = receiver.post(&nested_body(levels)).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{levels} levels");
        assert_eq!(
            reply.text(),
            "the body nests arrays and objects deeper than 128 levels (limits.max_json_depth); \
             Meta's payloads nest about 10\n"
        );
    }
    // 128 levels (the default limit) are accepted; the deep bodies left nothing behind.
    assert_eq!(
        receiver.post(&nested_body(128)).await?.status,
        StatusCode::OK
    );
    assert_eq!(receiver.post(BODY).await?.status, StatusCode::OK);
    let events = receiver.settled_events(Duration::from_secs(5)).await?;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["id"], "wamid.contract.1");
    Ok(())
}

#[tokio::test]
async fn max_json_depth_is_configurable() -> Result<()> {
    let receiver = TestReceiver::start_with(|config, _| config.limits.max_json_depth = 16).await?;
    let reply = receiver.post(&nested_body(17)).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.text().contains("deeper than 16 levels"),
        "{}",
        reply.text()
    );
    assert_eq!(
        receiver.post(&nested_body(16)).await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn oversized_body_is_413_without_reading_it() -> Result<()> {
    let receiver =
        TestReceiver::start_with(|config, _| config.limits.max_body_bytes = 1024).await?;
    let big = vec![b' '; 64 * 1024];
    let reply = receiver.post(&big).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.text(),
        "request body over the 1024-byte limit (limits.max_body_bytes)\n"
    );

    // Declared small enough is not trusted: a body that grows past the limit is cut too.
    let mut stream = TcpStream::connect(receiver.addr).await?;
    stream
        .write_all(
            format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-hub-signature-256: sha256=00\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    for _ in 0..4 {
        stream.write_all(b"200\r\n").await?;
        stream.write_all(&[b' '; 0x200]).await?;
        stream.write_all(b"\r\n").await?;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    assert_eq!(&head, b"HTTP/1.1 413");
    Ok(())
}

#[tokio::test]
async fn slow_body_is_408() -> Result<()> {
    let receiver = TestReceiver::start_with(|config, _| {
        config.limits.request_timeout = Duration::from_millis(300);
    })
    .await?;
    let mut stream = TcpStream::connect(receiver.addr).await?;
    stream
        .write_all(
            format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nx-hub-signature-256: sha256=00\r\n\r\n{{\"obj")
                .as_bytes(),
        )
        .await?;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head)).await??;
    assert_eq!(&head, b"HTTP/1.1 408");
    Ok(())
}

#[tokio::test]
async fn slow_headers_close_the_connection() -> Result<()> {
    let receiver = TestReceiver::start_with(|config, _| {
        config.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await?;
    let mut stream = TcpStream::connect(receiver.addr).await?;
    stream
        .write_all(format!("POST {PATH} HTTP/1.1\r\nhost: x\r\n").as_bytes())
        .await?;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the connection was not closed after the header timeout"
    );
    // Whatever hyper sends (nothing, or a 408), it is never a 2xx and the socket is closed.
    assert!(!String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 2"));
    assert_eq!(
        receiver.get("/healthz").await?.status,
        StatusCode::OK,
        "the receiver is unaffected"
    );
    Ok(())
}

#[tokio::test]
async fn over_max_in_flight_is_503_with_retry_after() -> Result<()> {
    let receiver = TestReceiver::start_with(|config, _| config.limits.max_in_flight = 1).await?;
    // Holds the one slot: headers (with a signature header, else it is refused at once)
    // sent, body never completed.
    let mut holder = TcpStream::connect(receiver.addr).await?;
    holder
        .write_all(
            format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nx-hub-signature-256: sha256=00\r\n\r\n{{").as_bytes(),
        )
        .await?;
    // Admitted, the holder reserves its declared 100 bytes of the body budget: then the
    // next POST finds no slot.
    receiver
        .wait_metric_at_least(
            "metahook_buffered_body_bytes",
            100.0,
            Duration::from_secs(5),
            "the holder admitted",
        )
        .await?;
    let reply = receiver.post(BODY).await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["retry-after"], "5");
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(35);
    while receiver.post(BODY).await?.status != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_method_is_405() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let reply = metahook_tests::testkit::request(
        receiver.addr,
        http::Method::PUT,
        PATH,
        &[],
        bytes::Bytes::new(),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, POST");
    Ok(())
}

#[tokio::test]
async fn unknown_path_is_404() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(
        receiver
            .post_with("/webhooks/other", &[], BODY)
            .await?
            .status,
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn unknown_object_and_field_are_kept_as_unknown_events() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let body = br#"{"object":"hologram","entry":[{"id":"1","time":1700000000,"changes":[{"field":"beam","value":{"x":18446744073709551617}}]}]}"#;
    assert_eq!(receiver.post(body).await?.status, StatusCode::OK);
    let events = receiver.wait_for_events(1, Duration::from_secs(5)).await?;
    assert_eq!(events[0]["kind"], "unknown");
    assert!(
        events[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("hologram")
    );
    let line = std::fs::read_to_string(receiver.events_path())?;
    assert!(
        line.contains("18446744073709551617"),
        "big integers are kept digit for digit: {line}"
    );
    let unknown = receiver
        .metric(r#"metahook_unknown_events_total{endpoint="meta",field="beam",object="hologram"}"#)
        .await?;
    assert_eq!(unknown, 1.0);
    Ok(())
}

/// Normalization runs after the 200: a JSON object it cannot read as an envelope (here a
/// duplicate key) is answered 200 and still reaches the sinks, as one `unknown` event
/// carrying why.
#[tokio::test]
async fn a_body_whose_normalization_fails_after_the_200_is_an_unknown_event() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let body = br#"{"object":"page","object":"page","entry":[]}"#;
    assert_eq!(receiver.post(body).await?.status, StatusCode::OK);
    let events = receiver.wait_for_events(1, Duration::from_secs(5)).await?;
    assert_eq!(events[0]["kind"], "unknown");
    assert_eq!(events[0]["error"], "the envelope cannot be read");
    assert_eq!(events[0]["endpoint"], "meta");
    let line = std::fs::read_to_string(receiver.events_path())?;
    assert!(
        line.contains(r#""raw":{"object":"page","object":"page","entry":[]}"#),
        "the body is kept whole: {line}"
    );
    Ok(())
}

#[tokio::test]
async fn unrecognized_values_keep_their_documented_kind_and_are_counted() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    let hologram = br#"{"object":"whatsapp_business_account","entry":[{"id":"100200300400500","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"200300400500600"},"contacts":[{"profile":{"name":"Ada"},"wa_id":"15551234567"}],"messages":[{"from":"15551234567","id":"wamid.hologram.1","timestamp":"1700000000","type":"hologram","hologram":{"frames":24}}]}}]}]}"#;
    let signup = br#"{"object":"whatsapp_business_account","entry":[{"id":"100200300400500","changes":[{"field":"user_preferences","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"200300400500600"},"user_preferences":[{"wa_id":"15551234567","category":"marketing_messages","value":"signup","timestamp":1700000001}]}}]}]}"#;
    assert_eq!(receiver.post(hologram).await?.status, StatusCode::OK);
    assert_eq!(receiver.post(signup).await?.status, StatusCode::OK);
    let events = receiver.wait_for_events(2, Duration::from_secs(5)).await?;
    let message = &events[0];
    assert_eq!(message["kind"], "message");
    assert_eq!(message["id"], "wamid.hologram.1");
    assert_eq!(message["message"]["type"], "hologram");
    assert_eq!(message["conversation"]["participant"]["id"], "15551234567");
    assert_eq!(message["occurred_at"], "2023-11-14T22:13:20Z");
    let preference = &events[1];
    assert_eq!(preference["kind"], "preference");
    assert_eq!(preference["field"], "user_preferences");
    assert_eq!(preference["status"]["value"], "signup");
    assert_eq!(
        preference["conversation"]["participant"]["id"],
        "15551234567"
    );
    for field in ["messages.type", "user_preferences.value"] {
        let sample = format!(r#"metahook_unrecognized_values_total{{field="{field}"}}"#);
        assert_eq!(receiver.metric(&sample).await?, 1.0, "{sample}");
    }
    let unknown = receiver
        .metric(r#"metahook_unknown_events_total{endpoint="meta",field="messages",object="whatsapp_business_account"}"#)
        .await
        .unwrap_or(0.0);
    assert_eq!(unknown, 0.0);
    Ok(())
}

#[tokio::test]
async fn redelivery_is_stored_once() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(receiver.post(BODY).await?.status, StatusCode::OK);
    assert_eq!(receiver.post(BODY).await?.status, StatusCode::OK);
    let events = receiver.settled_events(Duration::from_secs(5)).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(
        receiver
            .metric(r#"metahook_duplicates_total{endpoint="meta"}"#)
            .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn probes_and_metrics() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    assert_eq!(receiver.get("/healthz").await?.status, StatusCode::OK);
    assert_eq!(receiver.get("/readyz").await?.status, StatusCode::OK);
    receiver.post(BODY).await?;
    // metahook_events_total moves when the normalization stage has made the events (after
    // the 200); they are in the file sink after that.
    receiver.wait_for_events(1, Duration::from_secs(5)).await?;
    let metrics = receiver.get("/metrics").await?;
    assert!(
        metrics.headers["content-type"]
            .to_str()?
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    for name in [
        "metahook_requests_total",
        "metahook_request_duration_seconds",
        "metahook_events_total",
        "metahook_spool_events",
        "metahook_spool_oldest_event_age_seconds",
        "metahook_build_info",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    assert!(
        !text.contains(std::str::from_utf8(SECRET)?),
        "no secret in metrics"
    );
    assert_eq!(
        receiver.metric(r#"metahook_events_total{endpoint="meta",field="messages",kind="message",platform="whatsapp"}"#).await?,
        1.0
    );
    Ok(())
}

/// `promtool check metrics` accepts the exposition with no lint findings (promtool comes
/// from scripts/test.sh; without it the test fails, naming it).
#[tokio::test]
async fn promtool_accepts_the_metrics() -> Result<()> {
    let receiver = TestReceiver::start().await?;
    receiver.post(BODY).await?;
    receiver.post_with(PATH, &[], BODY).await?;
    receiver.wait_for_events(1, Duration::from_secs(5)).await?;
    // The spool's gauges are sampled every second: the lint sees them once sampled.
    receiver
        .wait_metric_at_least(
            "metahook_spool_bytes",
            1.0,
            Duration::from_secs(5),
            "sampling",
        )
        .await?;
    let text = receiver.get("/metrics").await?.body;
    let findings = metahook_tests::testkit::promtool_findings(&text)?;
    assert!(findings.is_empty(), "promtool findings:\n{findings}");
    Ok(())
}

#[tokio::test]
async fn draining_turns_readiness_off_and_finishes() -> Result<()> {
    let mut receiver =
        TestReceiver::start_with(|config, _| config.shutdown_delay = Duration::from_millis(500))
            .await?;
    receiver.running().expect("running").shutdown();
    assert_eq!(
        receiver.get("/readyz").await?.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        receiver.post(BODY).await?.status,
        StatusCode::OK,
        "still serving during the delay"
    );
    receiver.stop().await?;
    let events = metahook_tests::testkit::read_events(&receiver.events_path())?;
    assert_eq!(events.len(), 1, "delivered before exit");
    Ok(())
}
