//! The `postgres` sink against the real PostgreSQL server: every fixture event is stored
//! once (per kind as in the file sink), a redelivery changes nothing, a message's status only
//! moves forward, and migrations are idempotent.

#![allow(clippy::print_stderr)] // tests report on stderr

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use http::StatusCode;
use metahook_receiver::config::{PostgresSinkConfig, SinkConfig, SinkKind};
use metahook_receiver::sink::Sink;
use metahook_receiver::sink::postgres::PostgresSink;
use metahook_receiver::spool::Spooled;
use metahook_tests::testkit::{self, TestReceiver};
use tokio_postgres::NoTls;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn unique_schema() -> String {
    testkit::unique_name("metahook_test_")
}

fn store_config(schema: &str) -> PostgresSinkConfig {
    PostgresSinkConfig {
        url: URL.to_owned(),
        url_file: None,
        schema: schema.to_owned(),
        ..PostgresSinkConfig::url_file(std::path::PathBuf::new())
    }
}

fn postgres_sink(schema: &str) -> SinkConfig {
    SinkConfig {
        name: "store".into(),
        retry: metahook_receiver::config::RetryConfig::default(),
        kind: SinkKind::Postgres(store_config(schema)),
    }
}

/// The sink itself (no receiver), connected and migrated: a new connection each call.
async fn open_sink(schema: &str) -> Result<PostgresSink> {
    let mut sink = PostgresSink::new(store_config(schema));
    sink.open(None).await?;
    Ok(sink)
}

async fn connect() -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(URL, NoTls).await.context(
        "PostgreSQL must run on 127.0.0.1:5432 with database test (scripts/test.sh starts it)",
    )?;
    tokio::spawn(connection);
    Ok(client)
}

async fn wait_delivered(receiver: &TestReceiver, count: usize) -> Result<()> {
    receiver
        .wait_delivered("store", count, Duration::from_secs(30))
        .await
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> Result<i64> {
    Ok(db
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_owned())?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_once() -> Result<()> {
    let db = connect().await?;
    let schema = unique_schema();
    let receiver =
        TestReceiver::start_with(|config, _| config.sinks.push(postgres_sink(&schema))).await?;
    let bodies = testkit::own_fixture_bodies()?;
    for body in &bodies {
        ensure!(receiver.post(body).await?.status == StatusCode::OK);
    }
    let expected = testkit::own_fixture_events()?;
    let events = receiver
        .wait_for_events(expected, Duration::from_secs(30))
        .await?;
    wait_delivered(&receiver, expected).await?;

    let mut seen = HashSet::new();
    let mut file_kinds: BTreeMap<String, i64> = BTreeMap::new();
    for event in &events {
        if seen.insert(event["id"].as_str().unwrap_or("").to_owned()) {
            *file_kinds
                .entry(event["kind"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    let rows = db
        .query(
            &format!("SELECT kind, count(*) FROM {schema}.events GROUP BY kind"),
            &[],
        )
        .await?;
    let stored: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        stored, file_kinds,
        "per-kind counts: PostgreSQL vs file sink"
    );

    let tables = ["events", "conversations", "messages", "engagement"];
    let mut before = Vec::new();
    for table in tables {
        before.push(count(&db, &format!("SELECT count(*) FROM {schema}.{table}")).await?);
    }
    assert!(
        before.iter().all(|n| *n > 0),
        "every table is filled: {before:?}"
    );
    let raw_ok = count(
        &db,
        &format!("SELECT count(*) FROM {schema}.events WHERE event ? 'raw'"),
    )
    .await?;
    assert_eq!(
        raw_ok, before[0],
        "the whole event, raw included, is stored as jsonb"
    );

    // The same events again (new bytes, so the spool stores them): nothing changes.
    for body in &bodies {
        let mut again = body.clone();
        again.push(b'\n');
        ensure!(receiver.post(&again).await?.status == StatusCode::OK);
    }
    wait_delivered(&receiver, 2 * expected).await?;
    for (table, n) in tables.iter().zip(&before) {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {schema}.{table}")).await?,
            *n,
            "{table} changed on redelivery"
        );
    }
    eprintln!(
        "{expected} events from {} fixtures stored once; redelivery changed nothing ({before:?})",
        bodies.len()
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

fn status_body(wamid: &str, status: &str, at: u32) -> Vec<u8> {
    let errors = if status == "failed" {
        r#","errors":[{"code":131026,"title":"Message undeliverable"}]"#
    } else {
        ""
    };
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","statuses":[{{"id":"{wamid}","status":"{status}","timestamp":"{at}","recipient_id":"15551234567"{errors}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_only_moves_forward() -> Result<()> {
    let db = connect().await?;
    let schema = unique_schema();
    let receiver =
        TestReceiver::start_with(|config, _| config.sinks.push(postgres_sink(&schema))).await?;
    let status_of = |wamid: &'static str| {
        let sql = format!("SELECT status FROM {schema}.messages WHERE id = '{wamid}'");
        let db = &db;
        async move { Ok::<String, anyhow::Error>(db.query_one(&sql, &[]).await?.get(0)) }
    };
    let mut delivered = 0;
    for (status, at) in [
        ("read", 1_700_000_300),
        ("delivered", 1_700_000_200),
        ("sent", 1_700_000_100),
    ] {
        ensure!(
            receiver
                .post(&status_body("wamid.mono.1", status, at))
                .await?
                .status
                == StatusCode::OK
        );
        delivered += 1;
        wait_delivered(&receiver, delivered).await?;
    }
    assert_eq!(
        status_of("wamid.mono.1").await?,
        "read",
        "late sent/delivered do not move read back"
    );

    for (status, at) in [("sent", 1_700_000_100), ("failed", 1_700_000_200)] {
        ensure!(
            receiver
                .post(&status_body("wamid.mono.2", status, at))
                .await?
                .status
                == StatusCode::OK
        );
        delivered += 1;
        wait_delivered(&receiver, delivered).await?;
    }
    assert_eq!(status_of("wamid.mono.2").await?, "failed");
    let errors: Option<serde_json::Value> = db
        .query_one(
            &format!("SELECT errors::text FROM {schema}.messages WHERE id = 'wamid.mono.2'"),
            &[],
        )
        .await?
        .get::<_, Option<String>>(0)
        .map(|t| serde_json::from_str(&t))
        .transpose()?;
    assert_eq!(
        errors.as_ref().and_then(|e| e[0]["code"].as_i64()),
        Some(131_026),
        "failed is recorded with its errors"
    );
    drop(receiver);

    // Migrations are idempotent: a second receiver on the same schema starts and stores.
    let again =
        TestReceiver::start_with(|config, _| config.sinks.push(postgres_sink(&schema))).await?;
    ensure!(
        again
            .post(&status_body("wamid.mono.3", "sent", 1_700_000_100))
            .await?
            .status
            == StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &db,
        &format!("SELECT count(*) FROM {schema}.messages WHERE id = 'wamid.mono.3'"),
    )
    .await?
        == 0
    {
        ensure!(
            Instant::now() < deadline,
            "the second receiver never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each migration is recorded once (two: the tables, then the typed-field projections).
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM {schema}.schema_migrations")
        )
        .await?,
        2
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

fn status_with_pricing(wamid: &str, status: &str, at: u32, pricing: bool) -> Vec<u8> {
    let extra = if pricing {
        r#","conversation":{"id":"conv-42","expiration_timestamp":"1767312000","origin":{"type":"marketing"}},"pricing":{"billable":true,"pricing_model":"PMP","category":"marketing"}"#
    } else {
        ""
    };
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","statuses":[{{"id":"{wamid}","status":"{status}","timestamp":"{at}","recipient_id":"15551234567"{extra}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// The typed fields reach their projections: a comment's author (older `sender_id` shape),
/// name and post in `engagement`; a lead's ids in `leads`; a payload and a referral on an
/// incoming message; pricing and conversation on the message a status is about, kept when a
/// later status has none and filled when a late, lower status brings them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_fields_are_projected() -> Result<()> {
    let db = connect().await?;
    let schema = unique_schema();
    let receiver =
        TestReceiver::start_with(|config, _| config.sinks.push(postgres_sink(&schema))).await?;
    let mut bodies = Vec::new();
    for file in [
        "facebook__feed.comment.add.sender_id.json",
        "facebook__ratings.rating.add.from.json",
        "facebook__leadgen.json",
        "whatsapp__messages.button.json",
        "whatsapp__messages.text.referral_ad.json",
    ] {
        let path = testkit::own_fixtures_dir().join(file);
        bodies.push(std::fs::read(&path).with_context(|| path.display().to_string())?);
    }
    bodies.push(status_with_pricing(
        "wamid.price.1",
        "sent",
        1_700_000_100,
        true,
    ));
    bodies.push(status_with_pricing(
        "wamid.price.1",
        "read",
        1_700_000_300,
        false,
    ));
    bodies.push(status_with_pricing(
        "wamid.price.2",
        "read",
        1_700_000_300,
        false,
    ));
    bodies.push(status_with_pricing(
        "wamid.price.2",
        "sent",
        1_700_000_100,
        true,
    ));
    for (delivered, body) in bodies.iter().enumerate() {
        ensure!(receiver.post(body).await?.status == StatusCode::OK);
        // One at a time: the status order is part of what is tested.
        wait_delivered(&receiver, delivered + 1).await?;
    }
    let row = |sql: String| {
        let db = &db;
        async move { db.query_one(&sql, &[]).await.with_context(|| sql.clone()) }
    };

    let comment = row(format!(
        "SELECT participant_id, participant_name, media_id, text FROM {schema}.engagement
         WHERE kind = 'comment' AND participant_id = '6001002003004008'"
    ))
    .await?;
    assert_eq!(
        (
            comment.get::<_, Option<String>>(1).as_deref(),
            comment.get::<_, Option<String>>(2).as_deref(),
            comment.get::<_, Option<String>>(3).as_deref(),
        ),
        (
            Some("Charles Babbage"),
            Some("200300400500600_123456789012345"),
            Some("Is the brass one in stock?")
        ),
        "a comment's author (sender_id shape), name and post"
    );
    let rating: Option<String> = row(format!(
        "SELECT participant_id FROM {schema}.engagement WHERE kind = 'rating'"
    ))
    .await?
    .get(0);
    assert_eq!(
        rating.as_deref(),
        Some("6001002003004008"),
        "a rating's author (from shape)"
    );

    let lead = row(format!(
        "SELECT form_id, ad_id, adgroup_id, page_id, created_time = to_timestamp(1767236200), event_id
         FROM {schema}.leads WHERE leadgen_id = '900800700600500'"
    ))
    .await?;
    let ids: Vec<Option<String>> = (0..4).map(|i| lead.get(i)).collect();
    assert_eq!(
        ids,
        [
            Some("900800700600501".to_owned()),
            Some("120200300400500602".to_owned()),
            Some("120200300400500603".to_owned()),
            Some("200300400500600".to_owned())
        ],
        "a lead's form, ad, ad group and page"
    );
    assert!(lead.get::<_, bool>(4), "created_time");
    assert_eq!(lead.get::<_, String>(5), "leadgen:900800700600500");

    let payload: Option<String> = row(format!(
        "SELECT payload FROM {schema}.messages WHERE id = 'wamid.MH0000ADA0000000000000016'"
    ))
    .await?
    .get(0);
    assert_eq!(
        payload.as_deref(),
        Some("RESCHEDULE_42"),
        "a button's payload"
    );
    let referral = row(format!(
        "SELECT referral->>'source', referral->>'ad_id', referral->>'ctwa_clid' IS NOT NULL
         FROM {schema}.messages WHERE id = 'wamid.MH0000ADA0000000000000004'"
    ))
    .await?;
    assert_eq!(
        (
            referral.get::<_, Option<String>>(0).as_deref(),
            referral.get::<_, Option<String>>(1).as_deref(),
            referral.get::<_, bool>(2)
        ),
        (Some("ad"), Some("120200300400500600"), true),
        "a Click-to-WhatsApp referral"
    );

    for wamid in ["wamid.price.1", "wamid.price.2"] {
        let priced = row(format!(
            "SELECT status, pricing_category, pricing_billable, pricing_model, conversation_id,
                    conversation_origin, conversation_expires_at = to_timestamp(1767312000)
             FROM {schema}.messages WHERE id = '{wamid}'"
        ))
        .await?;
        assert_eq!(
            (
                priced.get::<_, String>(0),
                priced.get::<_, Option<String>>(1),
                priced.get::<_, Option<bool>>(2),
                priced.get::<_, Option<String>>(3),
                priced.get::<_, Option<String>>(4),
                priced.get::<_, Option<String>>(5),
                priced.get::<_, Option<bool>>(6),
            ),
            (
                "read".to_owned(),
                Some("marketing".to_owned()),
                Some(true),
                Some("PMP".to_owned()),
                Some("conv-42".to_owned()),
                Some("marketing".to_owned()),
                Some(true)
            ),
            "{wamid}: the status moves forward only, its pricing stays whatever the order"
        );
    }
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

/// The URL can come from a file (a mounted Secret: URLs carry passwords), as the operator
/// configures it; while the file is missing the sink retries rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_can_come_from_a_file() -> Result<()> {
    let db = connect().await?;
    let schema = unique_schema();
    let dir = tempfile::tempdir()?;
    let url_file = dir.path().join("url");
    let receiver = TestReceiver::start_with(|config, _| {
        let mut sink = postgres_sink(&schema);
        if let SinkKind::Postgres(postgres) = &mut sink.kind {
            postgres.url = String::new();
            postgres.url_file = Some(url_file.clone());
        }
        config.sinks.push(sink);
    })
    .await?;
    let body = testkit::own_fixture_bodies()?
        .into_iter()
        .next()
        .context("an own fixture")?;
    ensure!(receiver.post(&body).await?.status == StatusCode::OK);
    // Not deliverable until the file exists (a failed attempt shows the sink tried); then
    // delivered.
    receiver
        .wait_metric_at_least(
            r#"metahook_sink_deliveries_total{result="error",sink="store"}"#,
            1.0,
            Duration::from_secs(10),
            "an attempt without the URL file",
        )
        .await?;
    std::fs::write(&url_file, format!("{URL}\n"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = db
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'events'",
                &[&schema],
            )
            .await?
            .is_some();
        if stored && count(&db, &format!("SELECT count(*) FROM {schema}.events")).await? > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "events never reached PostgreSQL via url_file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// An event as the spool holds it: a WhatsApp message (`status: None`) or a status of the
/// message `wamid`.
fn spooled(seq: u64, id: &str, wamid: &str, status: Option<&str>) -> Spooled {
    let (kind, status) = match status {
        Some(value) => ("status", format!(r#","status":{{"value":"{value}"}}"#)),
        None => ("message", String::new()),
    };
    let json = format!(
        r#"{{"id":"{id}","platform":"whatsapp","object":"whatsapp_business_account","field":"messages","kind":"{kind}","account_id":"100200300400500","occurred_at":"2023-11-14T22:13:20Z","received_at":"2026-12-01T10:00:00Z","endpoint":"whatsapp","conversation":{{"participant":{{"id":"15551234567","name":"Copy Test"}}}},"message":{{"id":"{wamid}","type":"text","text":"copy {seq}"}}{status},"raw":{{"seq":{seq}}}}}"#
    );
    Spooled {
        seq,
        received_millis: 0,
        json: json.into_bytes(),
    }
}

/// The `COPY` path at the sink itself: a batch delivered twice (a redelivery after a crash
/// between the commit and the cursor) stores nothing twice, a batch holding one id twice
/// keeps the first, and a status delivered again or late never moves a message's status
/// back; the stored jsonb is the spooled event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_copy_batch_changes_nothing() -> Result<()> {
    let db = connect().await?;
    let schema = unique_schema();
    let mut sink = open_sink(&schema).await?;
    let counts = || async {
        let mut counts = Vec::new();
        for table in ["events", "messages", "conversations"] {
            counts.push(count(&db, &format!("SELECT count(*) FROM {schema}.{table}")).await?);
        }
        anyhow::Ok(counts)
    };
    let status = || async {
        let row = db
            .query_one(
                &format!(
                    "SELECT status, status_rank FROM {schema}.messages WHERE id = 'wamid.copy.out'"
                ),
                &[],
            )
            .await?;
        anyhow::Ok((row.get::<_, String>(0), row.get::<_, i32>(1)))
    };

    // Many rows (several COPY messages), one id twice, and two statuses of one message.
    let mut batch: Vec<Spooled> = (0..3000)
        .map(|n| {
            spooled(
                n,
                &format!("wamid.copy.{n}"),
                &format!("wamid.copy.{n}"),
                None,
            )
        })
        .collect();
    let mut duplicate = spooled(3000, "wamid.copy.7", "wamid.copy.7", None);
    duplicate.json = String::from_utf8(duplicate.json)?
        .replace(r#""text":"copy 3000""#, r#""text":"second copy""#)
        .into_bytes();
    batch.push(duplicate);
    batch.push(spooled(
        3001,
        "wamid.copy.out:read",
        "wamid.copy.out",
        Some("read"),
    ));
    batch.push(spooled(
        3002,
        "wamid.copy.out:sent",
        "wamid.copy.out",
        Some("sent"),
    ));
    sink.deliver(&batch).await?;
    let first = counts().await?;
    assert_eq!(first, [3002, 3001, 1], "events, messages, conversations");
    assert_eq!(status().await?, ("read".to_owned(), 3));
    let text: String = db
        .query_one(
            &format!("SELECT text FROM {schema}.messages WHERE id = 'wamid.copy.7'"),
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        text, "copy 7",
        "of one id twice in a batch, the first is kept"
    );
    let same: bool = db
        .query_one(
            &format!("SELECT event = $1::text::jsonb FROM {schema}.events WHERE id = 'wamid.copy.out:read'"),
            &[&String::from_utf8(batch[3001].json.clone())?],
        )
        .await?
        .get(0);
    assert!(same, "the stored jsonb is the spooled event");

    // The same batch again: nothing changes.
    sink.deliver(&batch).await?;
    assert_eq!(counts().await?, first, "a redelivered batch added rows");
    assert_eq!(status().await?, ("read".to_owned(), 3));

    // A late, lower status (new event) and the read one again: read stays; failed moves on.
    let late = [
        spooled(
            4000,
            "wamid.copy.out:delivered",
            "wamid.copy.out",
            Some("delivered"),
        ),
        spooled(4001, "wamid.copy.out:read", "wamid.copy.out", Some("read")),
    ];
    sink.deliver(&late).await?;
    assert_eq!(
        status().await?,
        ("read".to_owned(), 3),
        "a late delivered does not move read back"
    );
    sink.deliver(&[spooled(
        4002,
        "wamid.copy.out:failed",
        "wamid.copy.out",
        Some("failed"),
    )])
    .await?;
    assert_eq!(status().await?, ("failed".to_owned(), 5));
    assert_eq!(
        counts().await?[0],
        3004,
        "two new status events, nothing else"
    );

    // A new connection (as after a restart) redelivers: still nothing twice.
    let mut again = open_sink(&schema).await?;
    again.deliver(&batch).await?;
    assert_eq!(counts().await?, [3004, 3001, 1]);
    assert_eq!(status().await?, ("failed".to_owned(), 5));
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

/// Large events (PostgreSQL compresses values over about 2 KB) are compressed with lz4
/// where the server has it, pglz otherwise, and read back the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_compressed_with_lz4_where_the_server_has_it() -> Result<()> {
    let db = connect().await?;
    let lz4: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_settings \
             WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals))",
            &[],
        )
        .await?
        .get(0);
    let schema = unique_schema();
    let mut sink = open_sink(&schema).await?;
    let mut large = spooled(1, "wamid.large", "wamid.large", None);
    let padding = "a long, repetitive message text ".repeat(300);
    large.json = String::from_utf8(large.json)?
        .replace(r#""text":"copy 1""#, &format!(r#""text":"{padding}""#))
        .into_bytes();
    sink.deliver(&[
        large.clone(),
        spooled(2, "wamid.small", "wamid.small", None),
    ])
    .await?;
    let row = db
        .query_one(
            &format!(
                "SELECT pg_column_compression(event), event::text FROM {schema}.events \
                 WHERE id = 'wamid.large'"
            ),
            &[],
        )
        .await?;
    let compression: Option<String> = row.get(0);
    let expected = if lz4 { "lz4" } else { "pglz" };
    assert_eq!(
        compression.as_deref(),
        Some(expected),
        "server has lz4: {lz4}"
    );
    let stored: serde_json::Value = serde_json::from_str(row.get(1))?;
    let spooled: serde_json::Value = serde_json::from_slice(&large.json)?;
    assert_eq!(stored, spooled, "read back as spooled");
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}
