//! The `kafka` sink against a real Kafka-compatible broker (tansu, started by each test on a
//! port of its own, found like the suite's other tools): every event of the repository's
//! fixtures becomes one record, with its key and headers as a real consumer reads them; a
//! broker outage only delays; a record the broker refuses becomes a dead letter with the
//! broker's reason; kill -9 of the receiver under load loses no acknowledged event and
//! doubles at most one batch; SCRAM-SHA-256/512 logins, mutual TLS and SASL over TLS
//! deliver, and refused logins and handshakes only wait (docs/configuration.md, "What the
//! tests check against a broker", says what tansu cannot serve and how TLS is tested).

#![allow(clippy::print_stderr)] // tests report on stderr

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http::StatusCode;
use metahook_receiver::config::{
    KafkaSaslConfig, KafkaSinkConfig, SaslMechanism, SinkConfig, SinkKind,
};
use metahook_receiver::sink::kafka::{
    HEADER_EVENT_ID, HEADER_FIELD, HEADER_KIND, HEADER_OBJECT, HEADER_RECEIVED_AT,
};
use metahook_tests::pki::{Ca, Validity};
use metahook_tests::tansu::{ScramUser, Tansu};
use metahook_tests::testkit::{self, TestReceiver};
use metahook_tests::tls_front::TlsFront;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn kafka_sink(bootstrap: &str, topic: &str) -> SinkConfig {
    let mut kafka = KafkaSinkConfig::new(vec![bootstrap.to_owned()]);
    kafka.topic = topic.to_owned();
    kafka.delivery_timeout = Duration::from_secs(3);
    SinkConfig {
        name: "log".into(),
        retry: metahook_receiver::config::RetryConfig {
            max_attempts: 0,
            max_backoff: Duration::from_millis(500),
        },
        kind: SinkKind::Kafka(kafka),
    }
}

/// One record as a consumer reads it.
#[derive(Debug)]
struct Record {
    partition: i32,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    value: serde_json::Value,
}

/// Every record of `topic` (all its partitions, from the beginning) once at least
/// `at_least` are there, or an error after `timeout`.
fn read_topic(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    read_topic_with(bootstrap, &[], topic, at_least, timeout)
}

/// [`read_topic`] with the consumer's `security` properties (TLS, SASL).
fn read_topic_with(
    bootstrap: &str,
    security: &[(&str, &str)],
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    read_until(bootstrap, security, topic, at_least, usize::MAX, timeout)
}

/// The records of `topic` up to the point where `at_least` records or `distinct` event ids
/// were read, whichever comes first.
fn read_until(
    bootstrap: &str,
    security: &[(&str, &str)],
    topic: &str,
    at_least: usize,
    distinct: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "metahook-test")
        .set("enable.auto.commit", "false");
    for (key, value) in security {
        client.set(*key, *value);
    }
    let consumer: BaseConsumer = client.create().context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .context("topic metadata")?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .context("the topic is not in the metadata")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, i32::try_from(p)?, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    // A consumer may be handed a record again (a fetch retried): each offset counts once.
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    let mut ids = std::collections::HashSet::new();
    while records.len() < at_least && ids.len() < distinct {
        ensure!(
            Instant::now() < deadline,
            "{topic} holds {} records ({} event ids), expected at least {at_least} ({distinct} ids)",
            records.len(),
            ids.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.context("consuming")?;
        if !seen.insert((message.partition(), message.offset())) {
            continue;
        }
        let mut headers = BTreeMap::new();
        if let Some(all) = message.headers() {
            for header in all.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.insert(header.key.to_owned(), value);
            }
        }
        if let Ok(value) =
            serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default())
            && let Some(id) = value["id"].as_str()
        {
            ids.insert(id.to_owned());
        }
        records.push(Record {
            partition: message.partition(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: serde_json::from_slice(message.payload().unwrap_or_default())
                .context("a record's value is not JSON")?,
        });
    }
    Ok(records)
}

/// Records in `topic` (the sum of its partitions' high watermarks); 0 while unreadable.
fn topic_size(bootstrap: &str, topic: &str) -> u64 {
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "metahook-test")
        .create::<BaseConsumer>()
    else {
        return 0;
    };
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) else {
        return 0;
    };
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    (0..partitions)
        .filter_map(|p| {
            consumer
                .fetch_watermarks(topic, i32::try_from(p).ok()?, Duration::from_secs(2))
                .ok()
        })
        .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
        .sum()
}

fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{{"from":"1555{}","id":"wamid.kafka.{n}","timestamp":"1700000000","type":"text","text":{{"body":"kafka {n}"}}}}]}}}}]}}]}}"#, n % 7).into_bytes()
}

/// The key the sink's `conversation` choice gives an event, from its JSON.
fn conversation_key(event: &serde_json::Value) -> String {
    let account = event["account_id"].as_str().unwrap_or("");
    let other = event["conversation"]["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            event["conversation"]["participant"]["id"]
                .as_str()
                .filter(|s| !s.is_empty())
        });
    match other {
        Some(other) => format!("{account}/{other}"),
        None => account.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_reach_the_topic_with_their_keys_and_headers() -> Result<()> {
    let broker = Tansu::start(free_port()?)?;
    broker.create_topic("meta-events", 3)?;
    let bootstrap = broker.bootstrap();
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(kafka_sink(&bootstrap, "meta-events"));
    })
    .await?;
    let bodies = testkit::own_fixture_bodies()?;
    for body in &bodies {
        let reply = receiver.post(body).await?;
        ensure!(reply.status == StatusCode::OK, "fixture: {}", reply.status);
    }
    let stored = testkit::own_fixture_events()?;
    let events = receiver
        .wait_for_events(stored, Duration::from_secs(30))
        .await?;
    receiver
        .wait_delivered("log", stored, Duration::from_secs(30))
        .await?;
    let records = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || read_topic(&bootstrap, "meta-events", stored, Duration::from_secs(30))
    })
    .await??;
    assert_eq!(records.len(), events.len(), "one record per event");

    // Per id, the file sink's event and the record's value are the same event; the
    // headers and the key are made of it.
    let by_id: HashMap<&str, &serde_json::Value> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap_or(""), e))
        .collect();
    let mut partitions_of_key: HashMap<String, i32> = HashMap::new();
    for record in &records {
        let id = record.value["id"].as_str().context("a record without id")?;
        let event = by_id.get(id).context("a record the file sink lacks")?;
        assert_eq!(&record.value, *event);
        let header = |name: &str| record.headers.get(name).map(String::as_str);
        assert_eq!(header(HEADER_EVENT_ID), Some(id));
        assert_eq!(header(HEADER_OBJECT), event["object"].as_str());
        assert_eq!(header(HEADER_FIELD), event["field"].as_str());
        assert_eq!(header(HEADER_KIND), event["kind"].as_str());
        assert_eq!(header(HEADER_RECEIVED_AT), event["received_at"].as_str());
        let key = record.key.clone().context("a record without key")?;
        assert_eq!(key, conversation_key(event), "key of {id}");
        // One key, one partition: a conversation stays in order.
        let partition = *partitions_of_key
            .entry(key.clone())
            .or_insert(record.partition);
        assert_eq!(partition, record.partition, "key {key} in two partitions");
    }
    eprintln!(
        "{} events from {} fixtures: {} records, {} keys over {} partitions",
        events.len(),
        bodies.len(),
        records.len(),
        partitions_of_key.len(),
        partitions_of_key
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    Ok(())
}

/// How long the broker is down in [`a_broker_outage_only_delays`] (the scenario's length,
/// not a wait for a condition).
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_only_delays() -> Result<()> {
    let port = free_port()?;
    let broker = Tansu::start(port)?;
    broker.create_topic("outage", 1)?;
    let bootstrap = broker.bootstrap();
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(kafka_sink(&bootstrap, "outage"));
    })
    .await?;
    for n in 0..10 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    receiver
        .wait_delivered("log", 10, Duration::from_secs(20))
        .await?;

    // The broker goes away for the issue's 30 s: 200s continue, the lag rises, nothing is
    // given up.
    drop(broker);
    let down_since = Instant::now();
    for n in 10..40 {
        let reply = receiver.post(&body(n)).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "200s continue while Kafka is down: {}",
            reply.status
        );
    }
    let lag = receiver
        .wait_metric_at_least(
            r#"metahook_sink_lag_events{sink="log"}"#,
            30.0,
            Duration::from_secs(20),
            "lag during the outage",
        )
        .await?;
    ensure!(lag >= 30.0, "lag during the outage: {lag}");
    // Failed attempts, seen by the consumer loop (each waits delivery_timeout at most).
    receiver
        .wait_metric_at_least(
            r#"metahook_sink_deliveries_total{result="error",sink="log"}"#,
            1.0,
            Duration::from_secs(20),
            "a failed attempt during the outage",
        )
        .await?;

    // Back after the whole outage (in memory, so empty: the topic is made again): the 30
    // arrive, none dead.
    tokio::time::sleep_until((down_since + OUTAGE).into()).await;
    let broker = Tansu::start(port)?;
    broker.create_topic("outage", 1)?;
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "outage", 30, Duration::from_secs(60))
    })
    .await??;
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.value["id"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "every event of the outage, once");
    assert_eq!(
        receiver
            .metric(r#"metahook_dead_letter_events_total{sink="log"}"#)
            .await
            .unwrap_or(0.0),
        0.0
    );
    testkit::wait_until(
        "the lag returns to zero",
        Duration::from_secs(20),
        || async {
            receiver
                .metric(r#"metahook_sink_lag_events{sink="log"}"#)
                .await
                .map(|lag| lag == 0.0)
        },
    )
    .await?;
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_becomes_a_dead_letter_with_its_reason() -> Result<()> {
    let broker = Tansu::start(free_port()?)?;
    // Messages have a topic, statuses do not.
    broker.create_topic("refuse.message", 1)?;
    let bootstrap = broker.bootstrap();
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("receiver.yaml");
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(kafka_sink(&bootstrap, "refuse.{kind}"));
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("write config");
    })
    .await?;
    let status = br#"{"object":"whatsapp_business_account","entry":[{"id":"100200300400500","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","statuses":[{"id":"wamid.refused","status":"delivered","timestamp":"1700000000","recipient_id":"15551234567"}]}}]}]}"#;
    ensure!(receiver.post(&body(1)).await?.status == StatusCode::OK);
    ensure!(receiver.post(status).await?.status == StatusCode::OK);
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="log"}"#,
            1.0,
            Duration::from_secs(30),
            "the refused status never became a dead letter",
        )
        .await?;
    receiver
        .wait_delivered("log", 1, Duration::from_secs(30))
        .await?;
    let out = Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(&config_path)
        .args(["dlq", "list", "--sink", "log"])
        .output()?;
    let listed = String::from_utf8(out.stdout)?;
    eprintln!("dead letters: {listed}");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("wamid.refused"), "{listed}");
    assert!(
        listed.contains("Kafka refused the record") && listed.contains("nknown topic"),
        "the broker's reason: {listed}"
    );
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "refuse.message", 1, Duration::from_secs(20))
    })
    .await??;
    assert_eq!(records[0].value["id"], "wamid.kafka.1");
    Ok(())
}

/// A body with `count` WhatsApp messages, ids `wamid.load.{first}` onwards.
fn many(first: usize, count: usize) -> Vec<u8> {
    let messages: Vec<String> = (first..first + count)
        .map(|n| format!(r#"{{"from":"1555{}","id":"wamid.load.{n}","timestamp":"1700000000","type":"text","text":{{"body":"load {n}"}}}}"#, n % 50))
        .collect();
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{}]}}}}]}}]}}"#, messages.join(",")).into_bytes()
}

/// kill -9 of the receiver while it drains a backlog into the topic: after a restart every
/// acknowledged event is in the topic; the duplicates (records produced before the kill
/// whose cursor was not yet committed) are counted and at most one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_and_doubles_at_most_a_batch() -> Result<()> {
    const REQUESTS: usize = 200;
    const PER_REQUEST: usize = 100;
    let total = REQUESTS * PER_REQUEST;
    let dir = tempfile::tempdir()?;
    let broker = Tansu::start(free_port()?)?;
    broker.create_topic("load", 3)?;
    let bootstrap = broker.bootstrap();
    let port = free_port()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    std::fs::write(dir.path().join("app-secret"), testkit::SECRET)?;
    std::fs::write(dir.path().join("verify-token"), "token")?;
    let config = dir.path().join("config.yaml");
    // The sink is held back (an unknown broker) while the backlog is written, then the
    // configuration names the real one: the receiver drains the whole backlog at once.
    let write_config = |servers: &str| {
        std::fs::write(
            &config,
            format!(
                "listen: {addr}\nendpoints:\n  - name: whatsapp\n    path: /webhooks/whatsapp\n    \
                 app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\n\
                 spool:\n  dir: {d}/spool\nsinks:\n  - name: log\n    kafka: {{bootstrap_servers: [\"{servers}\"], \
                 topic: load, delivery_timeout: 3s}}\n    retry: {{max_attempts: 0, max_backoff: 300ms}}\n",
                d = dir.path().display()
            ),
        )
    };
    write_config(&format!("127.0.0.1:{}", free_port()?))?;
    let receiver = testkit::ReceiverProcess::start(&config, addr).await?;
    for r in 0..REQUESTS {
        let payload = many(r * PER_REQUEST, PER_REQUEST);
        let reply = testkit::post_signed(addr, "/webhooks/whatsapp", &payload).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "request {r}: {}",
            reply.status
        );
    }
    // Every request normalized into the event log before the stop: the backlog is whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics =
            testkit::request(addr, http::Method::GET, "/metrics", &[], Vec::new().into()).await?;
        let lag = testkit::metric_value(&metrics.text(), r#"metahook_sink_lag_events{sink="log"}"#);
        if lag == Some(total as f64) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the backlog never reached {total}: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(receiver);
    write_config(&bootstrap)?;
    let receiver = testkit::ReceiverProcess::start(&config, addr).await?;
    // Killed (-9) once the drain is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before_kill = loop {
        let size = topic_size(&bootstrap, "load");
        if size > 0 {
            break size;
        }
        ensure!(Instant::now() < deadline, "nothing reached the topic");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(receiver);
    let at_kill = topic_size(&bootstrap, "load");
    if at_kill as usize >= total {
        bail!(
            "the backlog drained before the receiver was killed ({at_kill}): nothing was in flight"
        );
    }
    let receiver = testkit::ReceiverProcess::start(&config, addr).await?;
    // Read until every event id is there: the batch produced again after the restart (the
    // duplicates) comes before the events after it, so all of them are read by then.
    let records = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || {
            read_until(
                &bootstrap,
                &[],
                "load",
                usize::MAX,
                total,
                Duration::from_secs(120),
            )
        }
    })
    .await??;
    let size = records.len();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for record in &records {
        *counts
            .entry(record.value["id"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    let duplicates = size - counts.len();
    eprintln!(
        "{total} events: {before_kill} records when the kill was decided, {at_kill} right after it; \
         {size} records in the end, {} distinct, {duplicates} duplicates (one batch is {})",
        counts.len(),
        metahook_receiver::sink::kafka::BATCH
    );
    let mut missing: Vec<usize> = (0..total)
        .filter(|n| !counts.contains_key(&format!("wamid.load.{n}")))
        .collect();
    missing.truncate(20);
    eprintln!("missing (first 20): {missing:?}");
    assert_eq!(
        counts.len(),
        total,
        "every acknowledged event is in the topic"
    );
    assert!(
        duplicates <= metahook_receiver::sink::kafka::BATCH,
        "{duplicates} duplicates: more than one batch"
    );
    drop(receiver);
    Ok(())
}

/// A sink logging in with `mechanism` as `user` (the files' contents), to `topic`.
fn scram_sink(
    name: &str,
    bootstrap: &str,
    topic: &str,
    mechanism: SaslMechanism,
    dir: &Path,
    user: &str,
    password: &str,
) -> Result<SinkConfig> {
    let user_file = dir.join(format!("{name}.user"));
    let password_file = dir.join(format!("{name}.password"));
    std::fs::write(&user_file, format!("{user}\n"))?;
    std::fs::write(&password_file, format!("{password}\n"))?;
    let mut sink = kafka_sink(bootstrap, topic);
    sink.name = name.into();
    if let SinkKind::Kafka(kafka) = &mut sink.kind {
        kafka.sasl = Some(KafkaSaslConfig {
            mechanism,
            user_file,
            password_file,
        });
    }
    Ok(sink)
}

/// The event ids `receiver` wrote to its file sink.
fn ids_of(events: &[serde_json::Value]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

fn record_ids(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r.value["id"].as_str().map(str::to_owned))
        .collect()
}

/// `sink`'s attempts fail (counted as errors, at least twice: retried), its `events` wait,
/// and none became a dead letter: a refused login or handshake only delays.
async fn refused_and_waiting(receiver: &TestReceiver, sink: &str, events: usize) -> Result<()> {
    receiver
        .wait_metric_at_least(
            &format!(r#"metahook_sink_deliveries_total{{result="error",sink="{sink}"}}"#),
            2.0,
            Duration::from_secs(30),
            &format!("{sink}: the refused connection never counted as a failed attempt"),
        )
        .await?;
    receiver
        .wait_metric_at_least(
            &format!(r#"metahook_sink_lag_events{{sink="{sink}"}}"#),
            events as f64,
            Duration::from_secs(10),
            &format!("{sink}: every event waits"),
        )
        .await?;
    let dead = receiver
        .metric(&format!(
            r#"metahook_dead_letter_events_total{{sink="{sink}"}}"#
        ))
        .await
        .unwrap_or(0.0);
    ensure!(
        dead == 0.0,
        "{sink}: {dead} dead letters from a refused connection"
    );
    Ok(())
}

/// SASL/SCRAM against tansu with `--authentication`: sinks logging in with SCRAM-SHA-256
/// and SCRAM-SHA-512 as users the broker holds deliver every event, read back by consumers
/// logging in the same way; a sink with a known user and a wrong password, and one with a
/// user the broker does not know, are refused and their events wait (an authentication
/// failure is retried, never a dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_deliver_and_bad_ones_only_wait() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let broker = Tansu::start_authenticated(
        port,
        port,
        dir.path(),
        &[
            ScramUser {
                name: "sha256-user",
                password: "pass-256",
                mechanism: SaslMechanism::ScramSha256,
            },
            ScramUser {
                name: "sha512-user",
                password: "pass-512",
                mechanism: SaslMechanism::ScramSha512,
            },
        ],
        &["scram-256", "scram-512"],
    )?;
    let bootstrap = broker.bootstrap();
    let sinks = [
        scram_sink(
            "sha256",
            &bootstrap,
            "scram-256",
            SaslMechanism::ScramSha256,
            dir.path(),
            "sha256-user",
            "pass-256",
        )?,
        scram_sink(
            "sha512",
            &bootstrap,
            "scram-512",
            SaslMechanism::ScramSha512,
            dir.path(),
            "sha512-user",
            "pass-512",
        )?,
        scram_sink(
            "wrong-password",
            &bootstrap,
            "scram-512",
            SaslMechanism::ScramSha512,
            dir.path(),
            "sha512-user",
            "not-the-password",
        )?,
        scram_sink(
            "unknown-user",
            &bootstrap,
            "scram-512",
            SaslMechanism::ScramSha512,
            dir.path(),
            "nobody",
            "pass-512",
        )?,
    ];
    let receiver = TestReceiver::start_with(|config, _| config.sinks.extend(sinks)).await?;
    for n in 0..5 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    let events = receiver.wait_for_events(5, Duration::from_secs(30)).await?;
    for sink in ["sha256", "sha512"] {
        receiver
            .wait_delivered(sink, 5, Duration::from_secs(30))
            .await?;
    }
    for (topic, user, password, mechanism) in [
        ("scram-256", "sha256-user", "pass-256", "SCRAM-SHA-256"),
        ("scram-512", "sha512-user", "pass-512", "SCRAM-SHA-512"),
    ] {
        let bootstrap = bootstrap.clone();
        let records = tokio::task::spawn_blocking(move || {
            let security = [
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", user),
                ("sasl.password", password),
            ];
            read_topic_with(&bootstrap, &security, topic, 5, Duration::from_secs(30))
        })
        .await??;
        assert_eq!(
            record_ids(&records),
            ids_of(&events),
            "{topic}: every event, once"
        );
        assert_eq!(records.len(), 5, "{topic}: one record per event");
    }
    for sink in ["wrong-password", "unknown-user"] {
        refused_and_waiting(&receiver, sink, 5).await?;
    }
    drop(broker);
    Ok(())
}

/// TLS (tansu 0.6 cannot serve it: its `broker --cert` and `--key` are declared in one
/// exclusive argument group) through the tests' TLS front, which requires a client
/// certificate from the test's CA and which the broker advertises, so every connection
/// after the bootstrap is TLS too. A sink trusting the CA and presenting a client
/// certificate delivers, read back by a consumer over TLS; one trusting another CA, and one
/// presenting no certificate, are refused and their events wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_delivers_and_bad_ones_only_wait() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("kafka test CA")?;
    let ca_file = ca.write(&dir.path().join("ca.crt"))?;
    let other_ca_file = Ca::new("another CA")?.write(&dir.path().join("other-ca.crt"))?;
    let (cert_file, key_file) = ca
        .client("metahook-receiver", true, Validity::Current)?
        .write(dir.path(), "client")?;
    let front_port = free_port()?;
    let broker = Tansu::start_advertising(free_port()?, front_port)?;
    broker.create_topic("tls", 1)?;
    let front = TlsFront::start(
        front_port,
        &ca.server("kafka")?,
        Some(&ca),
        broker.listener(),
    )?;
    let bootstrap = front.address();
    let tls_sink = |name: &str, ca: &Path, client: bool| {
        let mut sink = kafka_sink(&bootstrap, "tls");
        sink.name = name.into();
        if let SinkKind::Kafka(kafka) = &mut sink.kind {
            kafka.tls = true;
            kafka.ca_file = Some(ca.to_owned());
            if client {
                kafka.client_cert_file = Some(cert_file.clone());
                kafka.client_key_file = Some(key_file.clone());
            }
        }
        sink
    };
    let sinks = [
        tls_sink("mtls", &ca_file, true),
        tls_sink("other-ca", &other_ca_file, true),
        tls_sink("no-certificate", &ca_file, false),
    ];
    let receiver = TestReceiver::start_with(|config, _| config.sinks.extend(sinks)).await?;
    for n in 0..5 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    let events = receiver.wait_for_events(5, Duration::from_secs(30)).await?;
    receiver
        .wait_delivered("mtls", 5, Duration::from_secs(30))
        .await?;
    let records = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        let (ca, cert, key) = (
            path_text(&ca_file),
            path_text(&cert_file),
            path_text(&key_file),
        );
        move || {
            let security = [
                ("security.protocol", "ssl"),
                ("ssl.ca.location", ca.as_str()),
                ("ssl.certificate.location", cert.as_str()),
                ("ssl.key.location", key.as_str()),
            ];
            read_topic_with(&bootstrap, &security, "tls", 5, Duration::from_secs(30))
        }
    })
    .await??;
    assert_eq!(
        record_ids(&records),
        ids_of(&events),
        "every event over TLS, once"
    );
    assert_eq!(records.len(), 5, "one record per event");
    for sink in ["other-ca", "no-certificate"] {
        refused_and_waiting(&receiver, sink, 5).await?;
    }
    ensure!(
        front.refused_handshakes() >= 1,
        "the front refused no handshake: the client without a certificate got through"
    );
    drop(front);
    drop(broker);
    Ok(())
}

/// SASL over TLS (`sasl_ssl`): SCRAM-SHA-512 through a TLS front that asks for no client
/// certificate (the login is the identity), to a broker that demands a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_delivers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("kafka test CA")?;
    let ca_file = ca.write(&dir.path().join("ca.crt"))?;
    let front_port = free_port()?;
    let broker = Tansu::start_authenticated(
        free_port()?,
        front_port,
        dir.path(),
        &[ScramUser {
            name: "tls-user",
            password: "tls-pass",
            mechanism: SaslMechanism::ScramSha512,
        }],
        &["sasl-ssl"],
    )?;
    let front = TlsFront::start(front_port, &ca.server("kafka")?, None, broker.listener())?;
    let bootstrap = front.address();
    let mut sink = scram_sink(
        "sasl-ssl",
        &bootstrap,
        "sasl-ssl",
        SaslMechanism::ScramSha512,
        dir.path(),
        "tls-user",
        "tls-pass",
    )?;
    if let SinkKind::Kafka(kafka) = &mut sink.kind {
        kafka.ca_file = Some(ca_file.clone());
    }
    let receiver = TestReceiver::start_with(|config, _| config.sinks.push(sink)).await?;
    for n in 0..5 {
        ensure!(receiver.post(&body(n)).await?.status == StatusCode::OK);
    }
    let events = receiver.wait_for_events(5, Duration::from_secs(30)).await?;
    receiver
        .wait_delivered("sasl-ssl", 5, Duration::from_secs(30))
        .await?;
    let records = tokio::task::spawn_blocking({
        let ca = path_text(&ca_file);
        move || {
            let security = [
                ("security.protocol", "sasl_ssl"),
                ("ssl.ca.location", ca.as_str()),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "tls-user"),
                ("sasl.password", "tls-pass"),
            ];
            read_topic_with(
                &bootstrap,
                &security,
                "sasl-ssl",
                5,
                Duration::from_secs(30),
            )
        }
    })
    .await??;
    assert_eq!(
        record_ids(&records),
        ids_of(&events),
        "every event over SASL_SSL, once"
    );
    assert_eq!(records.len(), 5, "one record per event");
    drop(front);
    drop(broker);
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}
