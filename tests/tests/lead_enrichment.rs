//! Lead Ads enrichment against the local fake Graph API: a normalized `leadgen` event gets
//! its answers; a Graph failure, an unknown lead or a Page without a token leaves the event
//! as it was (still delivered) and is counted in `metahook_enrichment_total{result}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Method;
use metahook_receiver::enrich::{Enricher, EnrichmentConfig, LeadAdsConfig, PageTokenConfig};
use metahook_receiver::event::{EnrichmentOutcome, Event, LeadAnswer, LeadEnrichment};
use metahook_receiver::metrics::Metrics;
use metahook_receiver::normalize::{self, Context};
use metahook_tests::fake_graph::{self, FakeGraph, Fault};
use metahook_tests::testkit::{SECRET, config_in, metric_value};
use serde_json::json;

const PAGE: &str = "111";
const PAGE_TOKEN: &str = "page-111-token";
/// A second endpoint's path, for WhatsApp messages that must not wait for a lead.
const WHATSAPP_PATH: &str = "/webhooks/whatsapp";

/// A signed-ready Page webhook with one `leadgen` change of [`PAGE`].
fn lead_body(leadgen_id: &str) -> Vec<u8> {
    json!({"object": "page", "entry": [{"id": PAGE, "time": 1_790_000_000, "changes": [
        {"field": "leadgen", "value": {"leadgen_id": leadgen_id, "page_id": PAGE,
         "form_id": "777", "created_time": 1_790_000_000}}
    ]}]})
    .to_string()
    .into_bytes()
}

/// A WhatsApp webhook with one text message `id`.
fn message_body(id: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp",
         "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN"},
         "messages": [{"from": "15551234567", "id": id, "timestamp": "1790000000",
                       "type": "text", "text": {"body": "hello"}}]}}
    ]}]})
    .to_string()
    .into_bytes()
}

fn leadgen_events(leadgen_ids: &[&str]) -> Vec<Event> {
    let changes: Vec<_> = leadgen_ids
        .iter()
        .map(|id| {
            json!({"field": "leadgen", "value": {
                "leadgen_id": id, "page_id": PAGE, "form_id": "777", "adgroup_id": "888",
                "ad_id": "999", "created_time": 1_790_000_000
            }})
        })
        .collect();
    let body = json!({"object": "page", "entry": [{"id": PAGE, "time": 1_790_000_000, "changes": changes}]});
    normalize::normalize(
        body.to_string().as_bytes(),
        &Context {
            endpoint: "meta",
            received_at: "2026-12-01T00:00:00Z",
            objects: None,
        },
    )
    .expect("normalizes")
}

/// Whether the enricher added the lead's answers to `event`.
fn has_answers(event: &Event) -> bool {
    event
        .lead
        .as_ref()
        .is_some_and(|lead| lead.field_data.is_some())
}

fn lead_object(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "created_time": "2026-09-21T14:13:20+0000",
        "ad_id": "999",
        "form_id": "777",
        "campaign_id": "555",
        "field_data": [
            {"name": "email", "values": ["ana@example.com"]},
            {"name": "interests", "values": ["solar", "storage"]}
        ]
    })
}

/// Lead Ads enrichment of [`PAGE`] against `graph`, its token in `token_file`.
fn enrichment(graph: &FakeGraph, token_file: PathBuf, max_attempts: u32) -> EnrichmentConfig {
    let mut lead_ads = LeadAdsConfig::new(vec![PageTokenConfig {
        page_id: PAGE.into(),
        token_file: Some(token_file),
        token_env: None,
        appsecret_proof: true,
    }]);
    lead_ads.graph_url = graph.url();
    lead_ads.api_version = fake_graph::VERSION.into();
    lead_ads.retry_backoff = Duration::from_millis(50);
    lead_ads.max_attempts = max_attempts;
    EnrichmentConfig {
        lead_ads: Some(lead_ads),
    }
}

/// The test receiver's endpoints (endpoint `meta`, its app secret [`SECRET`] in a file).
fn endpoints(dir: &tempfile::TempDir) -> Vec<metahook_receiver::config::EndpointConfig> {
    config_in(dir.path()).expect("config").endpoints
}

async fn setup(dir: &tempfile::TempDir) -> (FakeGraph, Enricher, Metrics) {
    // The app of the receiver's endpoint, which requires appsecret_proof.
    let app_secret = std::str::from_utf8(SECRET).expect("utf-8");
    let graph = FakeGraph::start("1234", app_secret)
        .await
        .expect("fake graph");
    graph.add_node(PAGE, PAGE_TOKEN);
    graph.with(|s| {
        s.leads
            .insert("L1".into(), (PAGE.into(), lead_object("L1")));
        s.leads
            .insert("L2".into(), (PAGE.into(), lead_object("L2")));
    });
    let token_file = dir.path().join("page-111");
    std::fs::write(&token_file, format!("{PAGE_TOKEN}\n")).expect("token file");
    let config = enrichment(&graph, token_file, 3);
    config.validate().expect("valid");
    let metrics = Metrics::new().expect("metrics");
    let enricher = Enricher::new(&config, &endpoints(dir), &metrics).expect("enricher");
    (graph, enricher, metrics)
}

fn count(metrics: &Metrics, result: &str) -> f64 {
    let text = String::from_utf8(metrics.encode()).expect("utf-8");
    metric_value(
        &text,
        &format!("metahook_enrichment_total{{result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no {result} series in {text}"))
}

#[tokio::test]
async fn leadgen_events_get_their_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, enricher, metrics) = setup(&dir).await;
    assert_eq!(
        count(&metrics, "enriched"),
        0.0,
        "series exist from the start"
    );
    let mut events = leadgen_events(&["L1", "L2"]);
    enricher.enrich(&mut events).await;
    for event in &events {
        let lead = event.lead.as_ref().expect("lead");
        // Not asked for by default: campaign_id needs ads_management.
        assert_eq!(lead.campaign_id, None);
        assert_eq!(
            lead.enrichment,
            Some(LeadEnrichment {
                outcome: EnrichmentOutcome::Ok,
                reason: None
            })
        );
        assert_eq!(
            lead.field_data.as_deref(),
            Some(
                &[
                    LeadAnswer {
                        name: "email".into(),
                        values: vec!["ana@example.com".into()]
                    },
                    LeadAnswer {
                        name: "interests".into(),
                        values: vec!["solar".into(), "storage".into()]
                    },
                ][..]
            )
        );
        // The webhook's own ids and time stay.
        assert_eq!(lead.adgroup_id.as_deref(), Some("888"));
        assert_eq!(lead.created_time.as_deref(), Some("2026-09-21T14:13:20Z"));
        let json = serde_json::to_value(event).expect("json");
        assert_eq!(json["lead"]["field_data"][0]["name"], "email");
        assert_eq!(json["lead"]["enrichment"], json!({"outcome": "ok"}));
    }
    assert_eq!(count(&metrics, "enriched"), 2.0);
    let gets = graph.log();
    assert_eq!(gets.len(), 2);
    assert!(
        gets.iter()
            .all(|l| l.method == Method::GET && l.status == 200)
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, enricher, metrics) = setup(&dir).await;
    graph.push_fault(Fault::server_error(None));
    graph.push_fault(Fault::rate_limit(None));
    let mut events = leadgen_events(&["L1"]);
    enricher.enrich(&mut events).await;
    assert!(has_answers(&events[0]));
    let log = graph.log();
    let statuses: Vec<u16> = log.iter().map(|l| l.status).collect();
    assert_eq!(statuses, [500, 400, 200]);
    assert!(log[1].at - log[0].at >= Duration::from_millis(50));
    assert!(log[2].at - log[1].at >= Duration::from_millis(100));
    assert_eq!(count(&metrics, "enriched"), 1.0);
}

#[tokio::test]
async fn graph_failures_leave_the_event_as_it_was_and_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, enricher, metrics) = setup(&dir).await;
    // Three 500s exhaust the attempts; an unknown lead is refused at once (code 100).
    for _ in 0..3 {
        graph.push_fault(Fault::server_error(None));
    }
    let mut events = leadgen_events(&["L1"]);
    let started = Instant::now();
    enricher.enrich(&mut events).await;
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    let lead = events[0].lead.as_ref().expect("the webhook's ids stay");
    assert!(lead.field_data.is_none() && lead.campaign_id.is_none());
    assert_eq!(lead.leadgen_id.as_deref(), Some("L1"));
    // Delivered with the outcome that says why it has no answers.
    let outcome = lead.enrichment.as_ref().expect("outcome");
    assert_eq!(outcome.outcome, EnrichmentOutcome::Failed);
    let reason = outcome.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("GET /L1") && reason.contains("HTTP 500"),
        "{reason}"
    );
    assert_eq!(count(&metrics, "failed"), 1.0);

    let mut unknown = leadgen_events(&["NOPE"]);
    let before = graph.log().len();
    enricher.enrich(&mut unknown).await;
    assert_eq!(
        graph.log().len() - before,
        1,
        "a permanent error is not retried"
    );
    assert!(!has_answers(&unknown[0]));
    assert_eq!(count(&metrics, "failed"), 2.0);

    // An expired token (Meta answers 190) is a failure too; delivery goes on.
    std::fs::write(dir.path().join("page-111"), "expired").expect("rotate");
    let mut expired = leadgen_events(&["L2"]);
    enricher.enrich(&mut expired).await;
    assert!(!has_answers(&expired[0]));
    assert_eq!(count(&metrics, "failed"), 3.0);
    assert_eq!(count(&metrics, "enriched"), 0.0);
}

#[tokio::test]
async fn a_page_without_a_token_is_counted_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, enricher, metrics) = setup(&dir).await;
    let body = json!({"object": "page", "entry": [{"id": "222", "time": 1, "changes": [
        {"field": "leadgen", "value": {"leadgen_id": "L1", "page_id": "222"}}
    ]}]});
    let mut events = normalize::normalize(
        body.to_string().as_bytes(),
        &Context {
            endpoint: "meta",
            received_at: "2026-12-01T00:00:00Z",
            objects: None,
        },
    )
    .expect("normalizes");
    enricher.enrich(&mut events).await;
    assert!(!has_answers(&events[0]));
    assert_eq!(count(&metrics, "no_token"), 1.0);
    let outcome = events[0].lead.as_ref().and_then(|l| l.enrichment.clone());
    assert_eq!(
        outcome,
        Some(LeadEnrichment {
            outcome: EnrichmentOutcome::Skipped,
            reason: Some("no Page token configured for Page 222".to_owned())
        })
    );
    assert!(graph.log().is_empty(), "no call without a token");
}

/// The whole path: a signed `leadgen` webhook is answered 200 at once, and the event the
/// file sink receives carries the lead's answers; a lead the Graph API refuses is delivered
/// without them and counted. The enricher runs in the receiver's normalization stage.
#[tokio::test]
async fn a_receiver_delivers_leadgen_events_with_their_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, _, _) = setup(&dir).await;
    let enrichment = enrichment(&graph, dir.path().join("page-111"), 2);
    let receiver = metahook_tests::testkit::TestReceiver::start_with(|config, _| {
        config.enrichment = Some(enrichment);
    })
    .await
    .expect("receiver");
    let body = |id: &str| {
        json!({"object": "page", "entry": [{"id": PAGE, "time": 1_790_000_000, "changes": [
            {"field": "leadgen", "value": {"leadgen_id": id, "page_id": PAGE, "form_id": "777",
             "ad_id": "999", "created_time": 1_790_000_000}}
        ]}]})
        .to_string()
    };
    let reply = receiver.post(body("L1").as_bytes()).await.expect("post");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = receiver.post(body("NOPE").as_bytes()).await.expect("post");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let events = receiver
        .wait_for_events(2, Duration::from_secs(20))
        .await
        .expect("two events delivered");
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["lead"]["leadgen_id"] == id)
            .unwrap_or_else(|| panic!("no event of lead {id} in {events:?}"))
    };
    let enriched = by_id("L1");
    assert_eq!(enriched["kind"], "lead");
    assert_eq!(enriched["lead"]["enrichment"]["outcome"], "ok");
    assert_eq!(enriched["lead"]["field_data"][0]["name"], "email");
    assert_eq!(
        enriched["lead"]["field_data"][1]["values"],
        json!(["solar", "storage"])
    );
    let refused = by_id("NOPE");
    assert!(refused["lead"].get("field_data").is_none(), "{refused}");
    assert_eq!(refused["lead"]["enrichment"]["outcome"], "failed");
    assert!(
        refused["lead"]["enrichment"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not exist")),
        "{refused}"
    );
    assert_eq!(
        refused["lead"]["form_id"], "777",
        "the webhook's own ids stay"
    );
    assert_eq!(
        receiver
            .metric("metahook_enrichment_total{result=\"enriched\"}")
            .await
            .expect("metric"),
        1.0
    );
    assert_eq!(
        receiver
            .metric("metahook_enrichment_total{result=\"failed\"}")
            .await
            .expect("metric"),
        1.0
    );
}

#[tokio::test]
async fn the_token_is_proved_with_the_endpoints_app_secret_unless_it_is_another_apps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, _, _) = setup(&dir).await;
    let mut config = enrichment(&graph, dir.path().join("page-111"), 1);
    // Switched off (a token of another app): Meta's app requiring the proof refuses it.
    if let Some(lead_ads) = config.lead_ads.as_mut() {
        lead_ads.page_tokens[0].appsecret_proof = false;
    }
    let metrics = Metrics::new().expect("metrics");
    let bare = Enricher::new(&config, &endpoints(&dir), &metrics).expect("enricher");
    let mut events = leadgen_events(&["L1"]);
    bare.enrich(&mut events).await;
    assert!(!has_answers(&events[0]));
    assert_eq!(count(&metrics, "failed"), 1.0);
    assert_eq!(graph.log()[0].status, 400);
    // An app that does not require it answers the bare token.
    graph.with(|s| s.require_appsecret_proof = false);
    bare.enrich(&mut events).await;
    assert!(has_answers(&events[0]));
    // A proof made with another secret (an endpoint of another app) is refused either way.
    let other = tempfile::tempdir().expect("tempdir");
    let mut endpoints = endpoints(&other);
    let secret_file = other.path().join("other-app-secret");
    std::fs::write(&secret_file, "another-app").expect("secret");
    endpoints[0].app_secret_file = Some(secret_file);
    let config = enrichment(&graph, dir.path().join("page-111"), 1);
    let metrics = Metrics::new().expect("metrics");
    let wrong = Enricher::new(&config, &endpoints, &metrics).expect("enricher");
    let mut events = leadgen_events(&["L2"]);
    wrong.enrich(&mut events).await;
    assert!(!has_answers(&events[0]));
    assert_eq!(count(&metrics, "failed"), 1.0);
}

#[tokio::test]
async fn ad_and_campaign_ids_are_opt_in_and_need_ads_management() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, _, _) = setup(&dir).await;
    let mut config = enrichment(&graph, dir.path().join("page-111"), 1);
    if let Some(lead_ads) = config.lead_ads.as_mut() {
        lead_ads.ad_fields = true;
    }
    config.validate().expect("valid");
    let metrics = Metrics::new().expect("metrics");
    let enricher = Enricher::new(&config, &endpoints(&dir), &metrics).expect("enricher");
    // A token with only leads_retrieval and pages_manage_ads: Meta refuses the ad fields.
    let mut events = leadgen_events(&["L1"]);
    enricher.enrich(&mut events).await;
    let lead = events[0].lead.as_ref().expect("lead");
    assert!(lead.field_data.is_none());
    let outcome = lead.enrichment.as_ref().expect("outcome");
    assert_eq!(outcome.outcome, EnrichmentOutcome::Failed);
    assert!(
        outcome
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("ads_management")),
        "{outcome:?}"
    );
    // With ads_management: the campaign too.
    graph.with(|s| s.ads_management = true);
    let mut events = leadgen_events(&["L1"]);
    enricher.enrich(&mut events).await;
    let lead = events[0].lead.as_ref().expect("lead");
    assert_eq!(lead.campaign_id.as_deref(), Some("555"));
    assert!(has_answers(&events[0]));
}

#[tokio::test]
async fn a_throttled_lead_is_retried_within_the_bound_then_delivered_with_its_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, enricher, metrics) = setup(&dir).await;
    // LeadGen's Business Use Case limit (80005) once: retried, then answered.
    graph.push_fault(Fault::business_use_case(None, 80_005, PAGE, "leadgen", 1));
    let mut events = leadgen_events(&["L1"]);
    enricher.enrich(&mut events).await;
    assert!(has_answers(&events[0]));
    // Throttled on every attempt (3): delivered without answers, saying why.
    for _ in 0..3 {
        graph.push_fault(Fault::business_use_case(None, 80_005, PAGE, "leadgen", 60));
    }
    let mut events = leadgen_events(&["L2"]);
    let started = Instant::now();
    enricher.enrich(&mut events).await;
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    let lead = events[0].lead.as_ref().expect("lead");
    assert!(lead.field_data.is_none());
    let outcome = lead.enrichment.as_ref().expect("outcome");
    assert_eq!(outcome.outcome, EnrichmentOutcome::Failed);
    let reason = outcome.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("code 80005") && reason.contains("attempt 3"),
        "{reason}"
    );
    assert_eq!(count(&metrics, "failed"), 1.0);
    assert_eq!(count(&metrics, "enriched"), 1.0);
}

/// A slow Graph API holds back only its lead: requests to another endpoint, accepted after
/// the lead, are normalized and reach the sink while the lead's read waits; the lead
/// follows with its answers once the Graph API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_graph_api_holds_back_only_its_lead_while_other_endpoints_deliver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, _, _) = setup(&dir).await;
    let mut enrichment = enrichment(&graph, dir.path().join("page-111"), 1);
    if let Some(lead_ads) = enrichment.lead_ads.as_mut() {
        lead_ads.timeout = Duration::from_secs(120);
    }
    let gate = graph.hold_leads();
    let receiver = metahook_tests::testkit::TestReceiver::start_with(|config, _| {
        config.enrichment = Some(enrichment);
        let mut whatsapp = config.endpoints[0].clone();
        whatsapp.name = "whatsapp".into();
        whatsapp.path = WHATSAPP_PATH.into();
        config.endpoints.push(whatsapp);
    })
    .await
    .expect("receiver");
    let reply = receiver.post(&lead_body("L1")).await.expect("post lead");
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_lead_held(&graph).await;

    for id in ["wamid.A", "wamid.B", "wamid.C"] {
        assert_eq!(
            post_signed(receiver.addr, WHATSAPP_PATH, &message_body(id)).await,
            200
        );
    }
    let delivered = receiver
        .wait_for_events(3, Duration::from_secs(20))
        .await
        .expect("the other endpoint's events are delivered while the lead waits");
    assert!(
        delivered.iter().all(|e| e["endpoint"] == "whatsapp"),
        "only the messages, the lead still waits: {delivered:?}"
    );
    assert_eq!(graph.leads_held(), 1, "the lead is still at the Graph API");

    gate.release();
    let events = receiver
        .wait_for_events(4, Duration::from_secs(20))
        .await
        .expect("the lead follows");
    let lead = &events[3];
    assert_eq!(lead["kind"], "lead", "{events:?}");
    assert_eq!(lead["lead"]["enrichment"]["outcome"], "ok", "{lead}");
    assert_eq!(lead["lead"]["field_data"][0]["name"], "email", "{lead}");
}

/// Waits until one lead read is held at the fake Graph API.
async fn wait_lead_held(graph: &FakeGraph) {
    metahook_tests::testkit::wait_until(
        "the lead's read waits at the Graph API",
        Duration::from_secs(20),
        || async { Ok(graph.leads_held() == 1) },
    )
    .await
    .expect("the lead is being read");
}

/// The status of `body` POSTed, signed, to `path` of a receiver process on `addr`.
async fn post_signed(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> u16 {
    metahook_tests::testkit::post_signed(addr, path, body)
        .await
        .expect("post")
        .status
        .as_u16()
}

/// kill -9 of the real binary while a lead waits at a slow Graph API, after the requests
/// behind it were delivered: started again, it enriches and delivers the lead, once, and
/// delivers none of the others twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_while_a_lead_waits_delivers_it_once_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, _, _) = setup(&dir).await;
    let d = dir.path();
    std::fs::write(d.join("app-secret"), SECRET).expect("app secret");
    std::fs::write(d.join("verify-token"), "token").expect("verify token");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let endpoint = |name: &str, path: &str| {
        format!(
            "  - name: {name}\n    path: {path}\n    app_secret_file: {d}/app-secret\n    verify_token_file: {d}/verify-token\n",
            d = d.display()
        )
    };
    let config = format!(
        "listen: 127.0.0.1:{port}\nendpoints:\n{meta}{whatsapp}spool:\n  dir: {d}/spool\nsinks:\n  - name: local\n    file: {{path: {d}/events.jsonl}}\nenrichment:\n  lead_ads:\n    graph_url: {graph}\n    api_version: {version}\n    timeout: 120s\n    max_attempts: 1\n    page_tokens:\n      - {{page_id: \"{PAGE}\", token_file: {d}/page-111}}\n",
        meta = endpoint("meta", metahook_tests::testkit::PATH),
        whatsapp = endpoint("whatsapp", WHATSAPP_PATH),
        d = d.display(),
        graph = graph.url(),
        version = fake_graph::VERSION,
    );
    let config_path = d.join("config.yaml");
    std::fs::write(&config_path, config).expect("config");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let events = d.join("events.jsonl");

    let gate = graph.hold_leads();
    let receiver = metahook_tests::testkit::ReceiverProcess::start(&config_path, addr)
        .await
        .expect("receiver");
    assert_eq!(
        post_signed(addr, metahook_tests::testkit::PATH, &lead_body("L1")).await,
        200
    );
    wait_lead_held(&graph).await;
    for id in ["wamid.A", "wamid.B"] {
        assert_eq!(
            post_signed(addr, WHATSAPP_PATH, &message_body(id)).await,
            200
        );
    }
    let delivered = metahook_tests::testkit::wait_for_lines(&events, 2, Duration::from_secs(20))
        .await
        .expect("the messages are delivered while the lead waits");
    assert!(
        delivered.iter().all(|e| e["kind"] == "message"),
        "{delivered:?}"
    );
    drop(receiver); // SIGKILL
    gate.release();

    let _receiver = metahook_tests::testkit::ReceiverProcess::start(&config_path, addr)
        .await
        .expect("receiver started again");
    // A marker after everything: once it is in the file, so is what precedes it but a
    // lead still being read; the lead is waited for by itself.
    assert_eq!(
        post_signed(addr, WHATSAPP_PATH, &message_body("wamid.after")).await,
        200
    );
    let ids = |events: &[serde_json::Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| match e["kind"].as_str() {
                Some("lead") => format!("lead {}", e["lead"]["leadgen_id"].as_str().unwrap_or("?")),
                _ => e["id"].as_str().unwrap_or("?").to_owned(),
            })
            .collect()
    };
    metahook_tests::testkit::wait_for_lines(&events, 4, Duration::from_secs(30))
        .await
        .expect("the lead and the marker are delivered");
    // Once more, so that anything delivered twice would be in the file by now.
    assert_eq!(
        post_signed(addr, WHATSAPP_PATH, &message_body("wamid.last")).await,
        200
    );
    let all = metahook_tests::testkit::wait_for_lines(&events, 5, Duration::from_secs(30))
        .await
        .expect("the last marker is delivered");
    let mut seen = ids(&all);
    seen.sort();
    assert_eq!(
        seen,
        ["lead L1", "wamid.A", "wamid.B", "wamid.after", "wamid.last"],
        "each once"
    );
    let lead = all.iter().find(|e| e["kind"] == "lead").expect("the lead");
    assert_eq!(lead["lead"]["enrichment"]["outcome"], "ok", "{lead}");
}
