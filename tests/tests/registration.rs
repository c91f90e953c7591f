//! Registration with Meta against the local fake Graph API (tests/src/fake_graph.rs), which
//! verifies each callback against a real receiver before it answers, as Meta does: the
//! operator's Graph client and its converge / unregister logic, end to end over HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use http::Method;
use metahook_operator::controller::registration::{
    self, Desired, DesiredNode, Tokens, converge, unregister,
};
use metahook_operator::crd::{RegisteredNode, RegistrationStatus, SecretKeyRef};
use metahook_operator::graph::{Credentials, GraphClient, GraphSettings};
use metahook_tests::fake_graph::{self, FakeGraph, Fault};
use metahook_tests::testkit::{PATH, TestReceiver, VERIFY_TOKEN};

const APP: &str = "1234";
const APP_SECRET: &str = "app-secret-value";
const BACKOFF: Duration = Duration::from_millis(100);

fn client(graph: &FakeGraph) -> GraphClient {
    GraphClient::new(GraphSettings {
        base_url: graph.url(),
        instagram_base_url: graph.instagram_url(),
        api_version: fake_graph::VERSION.to_owned(),
        timeout: Duration::from_secs(5),
        max_attempts: 3,
        retry_backoff: BACKOFF,
    })
    .expect("client")
}

fn key(name: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.to_owned(),
        key: "token".to_owned(),
    }
}

fn desired(receiver: &TestReceiver, object: &str, fields: &[&str]) -> Desired {
    Desired {
        app_id: APP.to_owned(),
        object: object.to_owned(),
        callback_url: format!("http://{}{PATH}", receiver.addr),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        verify_token: VERIFY_TOKEN.to_owned(),
        app_secret_ref: key("meta-app"),
        app_token: format!("{APP}|{APP_SECRET}"),
        app_subscription: true,
        take_over_callback: false,
        pages: Vec::new(),
        wabas: Vec::new(),
    }
}

fn tokens(pairs: &[(&str, &str)]) -> Tokens {
    pairs
        .iter()
        .map(|(name, token)| (key(name), (*token).to_owned()))
        .collect()
}

/// Unregisters everything `status` records, with the tokens of these Secret keys; returns
/// what the status still records and the changes made.
async fn unregister_all(
    client: &GraphClient,
    status: &RegistrationStatus,
    secrets: &[(&str, &str)],
) -> (RegistrationStatus, Vec<String>) {
    let mut status = status.clone();
    let mut changes = Vec::new();
    unregister(client, &mut status, &tokens(secrets), &mut changes)
        .await
        .expect("unregister");
    (status, changes)
}

fn fields_of(graph: &FakeGraph, object: &str) -> BTreeSet<String> {
    graph
        .subscription(object)
        .map(|s| s.fields.into_iter().collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|i| (*i).to_owned()).collect()
}

#[tokio::test]
async fn register_then_converge_after_a_fields_change_keeping_foreign_fields() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let client = client(&graph);

    let first = converge(
        &client,
        &desired(&receiver, "page", &["feed", "leadgen"]),
        None,
    )
    .await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let sub = graph.subscription("page").expect("registered");
    assert_eq!(sub.callback_url, format!("http://{}{PATH}", receiver.addr));
    assert_eq!(sub.verify_token, VERIFY_TOKEN);
    assert_eq!(fields_of(&graph, "page"), set(&["feed", "leadgen"]));
    assert_eq!(first.status.registered_fields, ["feed", "leadgen"]);
    assert_eq!(
        first.status.verify_token_digest.as_deref(),
        Some(registration::token_digest(&format!("{APP}|{APP_SECRET}"), VERIFY_TOKEN).as_str())
    );
    assert_eq!(first.changes.len(), 1, "{:?}", first.changes);

    // A second pass finds Meta as wanted: only the GET.
    let before = graph.log().len();
    let again = converge(
        &client,
        &desired(&receiver, "page", &["feed", "leadgen"]),
        Some(&first.status),
    )
    .await;
    assert!(
        again.error.is_none() && again.changes.is_empty(),
        "{:?}",
        again.changes
    );
    let log = graph.log();
    assert_eq!(log.len() - before, 1);
    assert_eq!(log[before].method, Method::GET);

    // Someone subscribes `mention` by hand; the spec drops `feed` and adds `ratings`.
    graph.with(|s| {
        s.subscriptions
            .get_mut("page")
            .expect("page")
            .fields
            .push("mention".to_owned());
    });
    let changed = converge(
        &client,
        &desired(&receiver, "page", &["leadgen", "ratings"]),
        Some(&first.status),
    )
    .await;
    assert!(changed.error.is_none(), "{:?}", changed.error);
    assert_eq!(
        fields_of(&graph, "page"),
        set(&["leadgen", "mention", "ratings"]),
        "feed removed, ratings added, the hand-made mention kept"
    );
    assert_eq!(changed.status.registered_fields, ["leadgen", "ratings"]);

    // Deleting removes only the operator's fields.
    let (status, _) = unregister_all(&client, &changed.status, &[("meta-app", APP_SECRET)]).await;
    assert_eq!(fields_of(&graph, "page"), set(&["mention"]));
    assert!(status.registered_fields.is_empty());
}

#[tokio::test]
async fn a_rotated_verify_token_or_moved_callback_is_registered_again() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let client = client(&graph);
    let wanted = desired(&receiver, "page", &["feed"]);
    let first = converge(&client, &wanted, None).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    // Registered with another token before (its digest differs): POSTed again.
    let mut previous = first.status.clone();
    previous.verify_token_digest = Some(registration::token_digest(
        &format!("{APP}|{APP_SECRET}"),
        "old-token",
    ));
    let rotated = converge(&client, &wanted, Some(&previous)).await;
    assert!(rotated.error.is_none(), "{:?}", rotated.error);
    assert_eq!(rotated.changes.len(), 1, "{:?}", rotated.changes);
    // Meta holds another callback (changed by hand): left alone, nothing written, and
    // said so naming its host and the field that takes it over.
    graph.with(|s| {
        s.subscriptions.get_mut("page").expect("page").callback_url =
            "https://elsewhere.example/x?token=t".into();
    });
    let before = graph.log().len();
    let refused = converge(&client, &wanted, Some(&rotated.status)).await;
    assert!(refused.error.is_none(), "{:?}", refused.error);
    assert_eq!(
        refused.refused.as_deref(),
        Some(
            "the app's page callback points at host elsewhere.example, which this subscription \
             did not set: it is left alone (set spec.registration.takeOverCallback: true to \
             replace it with 127.0.0.1)"
        )
    );
    assert!(refused.changes.is_empty(), "{:?}", refused.changes);
    let log = graph.log();
    assert!(
        log[before..].iter().all(|call| call.method == Method::GET),
        "a Graph write: {:?}",
        &log[before..]
    );
    assert_eq!(
        graph.subscription("page").expect("page").callback_url,
        "https://elsewhere.example/x?token=t"
    );
    // With takeOverCallback: POSTed again.
    let mut take_over = wanted.clone();
    take_over.take_over_callback = true;
    let moved = converge(&client, &take_over, Some(&rotated.status)).await;
    assert!(
        moved.error.is_none() && moved.refused.is_none(),
        "{:?}",
        moved.error
    );
    assert_eq!(
        graph.subscription("page").expect("page").callback_url,
        wanted.callback_url
    );
    // Once set by this subscription it is its own: moved by the spec without takeOverCallback.
    let mut elsewhere = wanted.clone();
    elsewhere.callback_url = format!("{}?moved=1", wanted.callback_url);
    let again = converge(&client, &elsewhere, Some(&moved.status)).await;
    assert!(
        again.error.is_none() && again.refused.is_none(),
        "{:?}",
        again.refused
    );
    assert_eq!(
        graph.subscription("page").expect("page").callback_url,
        elsewhere.callback_url
    );
}

#[tokio::test]
async fn a_waba_override_set_by_someone_else_is_left_alone_unless_taken_over() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("5550001", "waba-token");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "whatsapp_business_account", &["messages"]);
    wanted.app_subscription = false;
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: Credentials::with_proof("waba-token", APP_SECRET),
        override_callback: true,
        phone_numbers: Vec::new(),
    }];
    let first = converge(&client, &wanted, None).await;
    assert!(
        first.error.is_none() && first.refused.is_none(),
        "{:?}",
        first.error
    );
    // Someone points the override elsewhere; this subscription (its status lost, as for a
    // re-created subscription) does not take it back.
    graph.with(|s| {
        if let Some(edge) = s.nodes.get_mut("5550001") {
            edge.override_callback_uri = Some("https://other-team.example/hook".to_owned());
        }
    });
    let before = graph.log().len();
    let refused = converge(&client, &wanted, None).await;
    assert!(
        refused.refused.as_deref().is_some_and(|m| m.starts_with(
            "the callback override of WABA 5550001 points at host other-team.example"
        )),
        "{:?}",
        refused.refused
    );
    assert!(
        graph.log()[before..]
            .iter()
            .all(|call| call.method == Method::GET)
    );
    wanted.take_over_callback = true;
    let taken = converge(&client, &wanted, None).await;
    assert!(
        taken.error.is_none() && taken.refused.is_none(),
        "{:?}",
        taken.error
    );
    assert_eq!(
        graph.edge("5550001").and_then(|e| e.override_callback_uri),
        Some(wanted.callback_url.clone())
    );
}

#[tokio::test]
async fn a_wrong_verify_token_fails_with_metas_message() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "page", &["feed"]);
    wanted.verify_token = "not-the-receivers-token".to_owned();
    let result = converge(&client, &wanted, None).await;
    let error = result.error.expect("verification fails");
    assert_eq!(error.code(), Some(2200));
    assert!(
        error
            .fbtrace_id()
            .is_some_and(|t| t.starts_with("AfakeTrace")),
        "{error}"
    );
    assert!(
        error.message.contains("callback verification failed")
            && error.message.contains("HTTP Status Code = 403"),
        "{error}"
    );
    assert!(!error.is_transient(), "not retried");
    assert_eq!(
        graph
            .log()
            .iter()
            .filter(|l| l.method == Method::POST)
            .count(),
        1
    );
    assert!(graph.subscription("page").is_none(), "nothing registered");
    assert!(result.status.registered_fields.is_empty());
}

#[tokio::test]
async fn a_wrong_app_secret_is_metas_invalid_token_error() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "page", &["feed"]);
    wanted.app_token = format!("{APP}|wrong");
    let error = converge(&client, &wanted, None)
        .await
        .error
        .expect("refused");
    assert_eq!(error.code(), Some(190));
    assert!(
        error.message.contains("Invalid OAuth access token"),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_error_and_a_rate_limit_are_retried_with_backoff() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let client = client(&graph);
    graph.push_fault(Fault::server_error(Some(Method::POST)));
    graph.push_fault(Fault::rate_limit(Some(Method::POST)));
    let result = converge(&client, &desired(&receiver, "page", &["feed"]), None).await;
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(fields_of(&graph, "page"), set(&["feed"]));
    let posts: Vec<_> = graph
        .log()
        .into_iter()
        .filter(|l| l.method == Method::POST)
        .collect();
    let statuses: Vec<u16> = posts.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [500, 400, 200]);
    // 1st retry after the base backoff; after the rate limit, 4 × the doubled backoff.
    let first_wait = posts[1].at - posts[0].at;
    let second_wait = posts[2].at - posts[1].at;
    assert!(first_wait >= BACKOFF, "{first_wait:?}");
    assert!(second_wait >= BACKOFF * 8, "{second_wait:?}");

    // Out of attempts: the error is Meta's, marked a rate limit.
    for _ in 0..3 {
        graph.push_fault(Fault::rate_limit(Some(Method::POST)));
    }
    let mut wanted = desired(&receiver, "page", &["feed", "mention"]);
    wanted.fields.sort();
    let error = converge(&client, &wanted, Some(&result.status))
        .await
        .error
        .expect("rate limited");
    assert!(error.is_rate_limit(), "{error}");
    assert_eq!(error.code(), Some(4));
}

#[tokio::test]
async fn waba_override_set_then_removed_and_unregistered() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("5550001", "system-user-token");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "whatsapp_business_account", &["messages"]);
    // The app's callback belongs to someone else; this subscription only overrides.
    wanted.app_subscription = false;
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: Credentials::with_proof("system-user-token", APP_SECRET),
        override_callback: true,
        phone_numbers: Vec::new(),
    }];
    let set_override = converge(&client, &wanted, None).await;
    assert!(set_override.error.is_none(), "{:?}", set_override.error);
    assert_eq!(
        graph.edge("5550001").and_then(|e| e.override_callback_uri),
        Some(wanted.callback_url.clone()),
        "the override is set (and was verified against the receiver)"
    );
    assert!(graph.subscription("whatsapp_business_account").is_none());
    assert_eq!(
        set_override.status.whatsapp_business_accounts[0]
            .override_callback_url
            .as_deref(),
        Some(wanted.callback_url.as_str())
    );

    wanted.wabas[0].override_callback = false;
    let removed = converge(&client, &wanted, Some(&set_override.status)).await;
    assert!(removed.error.is_none(), "{:?}", removed.error);
    let edge = graph.edge("5550001").expect("still subscribed");
    assert_eq!(edge.override_callback_uri, None, "override removed");
    assert_eq!(
        removed.status.whatsapp_business_accounts[0].override_callback_url,
        None
    );

    let (status, _) = unregister_all(
        &client,
        &removed.status,
        &[
            ("meta-app", APP_SECRET),
            ("wa-system-user", "system-user-token"),
        ],
    )
    .await;
    assert!(graph.edge("5550001").is_none(), "edge removed");
    assert!(status.whatsapp_business_accounts.is_empty());
}

/// A WhatsApp registration that only manages WABA 5550001 (no override of its own) and
/// the overrides of these phone numbers.
fn phones_wanted(receiver: &TestReceiver, phones: &[&str]) -> Desired {
    let mut wanted = desired(receiver, "whatsapp_business_account", &["messages"]);
    wanted.app_subscription = false;
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: Credentials::with_proof("system-user-token", APP_SECRET),
        override_callback: false,
        phone_numbers: phones.iter().map(|p| (*p).to_owned()).collect(),
    }];
    wanted
}

/// The fake with WABA 5550001 and its phone numbers 7770001 and 7770002.
async fn graph_with_phones() -> FakeGraph {
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("5550001", "system-user-token");
    graph.add_phone("5550001", "7770001");
    graph.add_phone("5550001", "7770002");
    graph
}

fn phone_ids(status: &RegistrationStatus) -> Vec<String> {
    status
        .whatsapp_business_accounts
        .iter()
        .flat_map(|w| w.phone_numbers.iter().map(|p| p.id.clone()))
        .collect()
}

#[tokio::test]
async fn a_phone_number_override_is_set_then_removed_when_it_leaves_the_spec() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = graph_with_phones().await;
    let client = client(&graph);
    let wanted = phones_wanted(&receiver, &["7770001", "7770002"]);
    let set = converge(&client, &wanted, None).await;
    assert!(set.error.is_none(), "{:?}", set.error);
    for phone in ["7770001", "7770002"] {
        assert_eq!(
            graph.phone_override(phone),
            Some(wanted.callback_url.clone()),
            "{phone}'s override is set (and was verified against the receiver)"
        );
        assert_eq!(
            graph
                .with(|s| s.phones[phone].verify_token.clone())
                .as_deref(),
            Some(VERIFY_TOKEN)
        );
    }
    assert_eq!(
        graph.edge("5550001").map(|e| e.override_callback_uri),
        Some(None),
        "the WABA is subscribed, without an override of its own"
    );
    assert_eq!(phone_ids(&set.status), ["7770001", "7770002"]);
    assert_eq!(
        set.status.whatsapp_business_accounts[0].phone_numbers[0].override_callback_url,
        wanted.callback_url
    );

    // Nothing differs: only reads.
    let before = graph.log().len();
    let again = converge(&client, &wanted, Some(&set.status)).await;
    assert!(
        again.error.is_none() && again.changes.is_empty(),
        "{:?}",
        again.changes
    );
    assert!(
        graph.log()[before..]
            .iter()
            .all(|l| l.method == Method::GET),
        "{:?}",
        &graph.log()[before..]
    );

    // Someone moves 7770001's override by hand: not this subscription's any more, so it
    // is left alone (no write) until the spec takes it over; then it is set again.
    graph.with(|s| {
        s.phones
            .get_mut("7770001")
            .expect("phone")
            .override_callback_uri = Some("https://elsewhere.example/x".into());
    });
    let before = graph.log().len();
    let refused = converge(&client, &wanted, Some(&again.status)).await;
    assert!(
        refused.refused.as_deref().is_some_and(|m| m.starts_with(
            "the callback override of phone number 7770001 (WABA 5550001) points at host \
             elsewhere.example"
        )),
        "{:?}",
        refused.refused
    );
    assert!(
        graph.log()[before..]
            .iter()
            .all(|l| l.method == Method::GET)
    );
    let mut take_over = wanted.clone();
    take_over.take_over_callback = true;
    let moved_back = converge(&client, &take_over, Some(&again.status)).await;
    assert!(moved_back.error.is_none(), "{:?}", moved_back.error);
    assert_eq!(
        graph.phone_override("7770001"),
        Some(wanted.callback_url.clone())
    );

    // 7770002 leaves the spec: its override goes, 7770001's stays.
    let fewer = phones_wanted(&receiver, &["7770001"]);
    let removed = converge(&client, &fewer, Some(&moved_back.status)).await;
    assert!(removed.error.is_none(), "{:?}", removed.error);
    assert_eq!(graph.phone_override("7770002"), None, "override removed");
    assert_eq!(
        graph.phone_override("7770001"),
        Some(wanted.callback_url.clone())
    );
    assert_eq!(phone_ids(&removed.status), ["7770001"]);
    assert!(
        removed
            .changes
            .iter()
            .any(|c| c == "removed the callback override of phone number 7770002 (WABA 5550001)"),
        "{:?}",
        removed.changes
    );
}

#[tokio::test]
async fn a_phone_override_someone_else_set_is_left_alone() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = graph_with_phones().await;
    let client = client(&graph);
    let set = converge(&client, &phones_wanted(&receiver, &["7770001"]), None).await;
    assert!(set.error.is_none(), "{:?}", set.error);
    // Someone points the phone number elsewhere, then it leaves the spec.
    graph.with(|s| {
        s.phones
            .get_mut("7770001")
            .expect("phone")
            .override_callback_uri = Some("https://elsewhere.example/x".into());
    });
    let dropped = converge(&client, &phones_wanted(&receiver, &[]), Some(&set.status)).await;
    assert!(dropped.error.is_none(), "{:?}", dropped.error);
    assert_eq!(
        graph.phone_override("7770001").as_deref(),
        Some("https://elsewhere.example/x"),
        "not the operator's to remove"
    );
    assert!(
        graph
            .log()
            .iter()
            .filter(|l| l.path == "/7770001" && l.method == Method::POST)
            .count()
            == 1,
        "only the first pass's set: {:?}",
        graph.log()
    );
    assert!(phone_ids(&dropped.status).is_empty(), "forgotten");
    assert!(
        dropped.changes.iter().any(|c| c.contains(
            "left the callback override of phone number 7770001 (WABA 5550001) alone: Meta holds https://elsewhere.example/x"
        )),
        "{:?}",
        dropped.changes
    );
}

#[tokio::test]
async fn unregistering_removes_the_phone_overrides_before_the_waba_edge() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = graph_with_phones().await;
    let client = client(&graph);
    let set = converge(
        &client,
        &phones_wanted(&receiver, &["7770001", "7770002"]),
        None,
    )
    .await;
    assert!(set.error.is_none(), "{:?}", set.error);
    let before = graph.log().len();
    let (status, changes) = unregister_all(
        &client,
        &set.status,
        &[
            ("meta-app", APP_SECRET),
            ("wa-system-user", "system-user-token"),
        ],
    )
    .await;
    assert_eq!(graph.phone_override("7770001"), None);
    assert_eq!(graph.phone_override("7770002"), None);
    assert!(graph.edge("5550001").is_none(), "edge removed");
    assert!(status.whatsapp_business_accounts.is_empty());
    let calls: Vec<String> = graph.log()[before..]
        .iter()
        .map(|l| format!("{} {}", l.method, l.path))
        .collect();
    assert_eq!(
        calls,
        [
            "GET /7770001",
            "POST /7770001",
            "GET /7770002",
            "POST /7770002",
            "GET /5550001/subscribed_apps",
            "DELETE /5550001/subscribed_apps",
        ]
    );
    assert_eq!(changes.len(), 3, "{changes:?}");
}

#[tokio::test]
async fn an_override_longer_than_metas_limit_is_refused() {
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("5550001", "system-user-token");
    let client = client(&graph);
    let receiver = TestReceiver::start().await.expect("receiver");
    let mut wanted = desired(&receiver, "whatsapp_business_account", &["messages"]);
    wanted.app_subscription = false;
    wanted.callback_url = format!("http://{}/{}", receiver.addr, "x".repeat(200));
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa"),
        token: Credentials::with_proof("system-user-token", APP_SECRET),
        override_callback: true,
        phone_numbers: Vec::new(),
    }];
    let error = converge(&client, &wanted, None)
        .await
        .error
        .expect("refused");
    assert_eq!(error.code(), Some(100));
    assert!(error.message.contains("200 characters"), "{error}");
}

#[tokio::test]
async fn page_edges_keep_other_fields_and_are_removed_on_delete() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("111", "page-111-token");
    graph.add_node("222", "page-222-token");
    let client = client(&graph);
    // Page 222 already delivers `messages` to the app (set up by hand).
    graph.with(|s| {
        s.nodes.insert(
            "222".to_owned(),
            fake_graph::NodeEdge {
                subscribed_fields: vec!["messages".to_owned()],
                override_callback_uri: None,
            },
        );
    });
    let mut wanted = desired(&receiver, "page", &["feed", "leadgen"]);
    wanted.pages = ["111", "222"]
        .into_iter()
        .map(|id| DesiredNode {
            id: id.to_owned(),
            token_ref: key(&format!("page-{id}")),
            token: Credentials::with_proof(format!("page-{id}-token"), APP_SECRET),
            override_callback: false,
            phone_numbers: Vec::new(),
        })
        .collect();
    let result = converge(&client, &wanted, None).await;
    assert!(result.error.is_none(), "{:?}", result.error);
    let fields = |id: &str| -> BTreeSet<String> {
        graph
            .edge(id)
            .map(|e| e.subscribed_fields.into_iter().collect())
            .unwrap_or_default()
    };
    assert_eq!(fields("111"), set(&["feed", "leadgen"]));
    assert_eq!(fields("222"), set(&["feed", "leadgen", "messages"]));

    let (_, changes) = unregister_all(
        &client,
        &result.status,
        &[
            ("meta-app", APP_SECRET),
            ("page-111", "page-111-token"),
            ("page-222", "page-222-token"),
        ],
    )
    .await;
    assert!(
        graph.edge("111").is_none(),
        "the operator's edge is removed"
    );
    assert_eq!(
        fields("222"),
        set(&["messages"]),
        "the hand-made field stays"
    );
    assert!(
        graph.subscription("page").is_none(),
        "app subscription removed"
    );
    assert_eq!(changes.len(), 3, "{changes:?}");
}

#[tokio::test]
async fn an_unreachable_graph_api_leaves_the_registration_recorded() {
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let url = graph.url();
    drop(graph);
    let client = GraphClient::new(GraphSettings {
        base_url: url.clone(),
        instagram_base_url: url,
        api_version: fake_graph::VERSION.to_owned(),
        timeout: Duration::from_secs(2),
        max_attempts: 2,
        retry_backoff: Duration::from_millis(10),
    })
    .expect("client");
    let mut status = RegistrationStatus {
        app_id: APP.to_owned(),
        object: "page".to_owned(),
        registered_fields: vec!["feed".to_owned()],
        app_secret_ref: Some(key("meta-app")),
        pages: vec![RegisteredNode {
            id: "111".to_owned(),
            access_token_ref: key("page-111"),
            ..RegisteredNode::default()
        }],
        ..RegistrationStatus::default()
    };
    let mut changes = Vec::new();
    let error = unregister(
        &client,
        &mut status,
        &tokens(&[("meta-app", APP_SECRET), ("page-111", "t")]),
        &mut changes,
    )
    .await
    .expect_err("unreachable");
    assert!(error.status.is_none() && error.is_transient(), "{error}");
    assert_eq!(
        registration::describe_left(&status),
        "app 1234 subscription to page fields feed; subscribed_apps of 111"
    );
}

#[tokio::test]
async fn lists_are_followed_to_their_last_page() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("1111", "page-token");
    // One entry a page; the app's other objects and three other apps on the Page come
    // first, so this app's entries are on the last page of each list.
    graph.set_page_size(1);
    for app in ["901", "902", "903"] {
        graph.add_other_app("1111", app, &["feed"]);
    }
    graph.with(|s| {
        for object in ["application", "instagram"] {
            s.subscriptions.insert(
                object.to_owned(),
                fake_graph::AppSub {
                    callback_url: "https://elsewhere.example/hook".to_owned(),
                    fields: vec!["other".to_owned()],
                    verify_token: "t".to_owned(),
                    active: true,
                },
            );
        }
    });
    let client = client(&graph);
    let mut wanted = desired(&receiver, "page", &["feed", "leadgen"]);
    wanted.pages = vec![DesiredNode {
        id: "1111".to_owned(),
        token_ref: key("page-token"),
        token: Credentials::with_proof("page-token", APP_SECRET),
        override_callback: false,
        phone_numbers: Vec::new(),
    }];
    let first = converge(&client, &wanted, None).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(first.changes.len(), 2, "{:?}", first.changes);

    // Meta holds what is wanted, on the last pages: nothing is written again.
    let before = graph.log().len();
    let again = converge(&client, &wanted, Some(&first.status)).await;
    assert!(again.error.is_none(), "{:?}", again.error);
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    let log = graph.log();
    assert!(
        log[before..].iter().all(|call| call.method == Method::GET),
        "{:?}",
        &log[before..]
    );
    // Three pages of subscriptions, four of subscribed_apps.
    assert_eq!(log.len() - before, 7, "{:?}", &log[before..]);

    // Unregistering finds its edge on the last page and removes it, and only its own.
    let (status, changes) = unregister_all(
        &client,
        &first.status,
        &[("meta-app", APP_SECRET), ("page-token", "page-token")],
    )
    .await;
    assert!(status.pages.is_empty(), "{status:?}");
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(graph.edge("1111"), None);
    assert!(graph.subscription("page").is_none());
    assert!(
        graph.subscription("instagram").is_some(),
        "another object's subscription stays"
    );
    assert_eq!(graph.with(|s| s.other_apps["1111"].len()), 3);
}

#[tokio::test]
async fn a_next_page_on_another_host_is_not_followed() {
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.set_page_size(1);
    graph.with(|s| {
        s.base_url = "http://attacker.invalid:9".to_owned();
        for object in ["application", "instagram"] {
            s.subscriptions.insert(
                object.to_owned(),
                fake_graph::AppSub {
                    callback_url: "https://elsewhere.example/hook".to_owned(),
                    fields: vec!["other".to_owned()],
                    verify_token: "t".to_owned(),
                    active: true,
                },
            );
        }
    });
    let client = client(&graph);
    let error = metahook_operator::graph::GraphApi::app_subscriptions(
        &client,
        APP,
        &format!("{APP}|{APP_SECRET}"),
    )
    .await
    .expect_err("refused");
    assert!(
        error
            .message
            .contains("paging.next points at http://attacker.invalid:9"),
        "{error}"
    );
    assert_eq!(graph.log().len(), 1, "the token was not sent elsewhere");
}

#[tokio::test]
async fn node_calls_carry_appsecret_proof_unless_the_token_is_another_apps() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    assert!(
        graph.with(|s| s.require_appsecret_proof),
        "the fake requires it"
    );
    graph.add_node("1111", "page-token");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "page", &["feed"]);
    wanted.app_subscription = false;
    let page = |token: Credentials| DesiredNode {
        id: "1111".to_owned(),
        token_ref: key("page-token"),
        token,
        override_callback: false,
        phone_numbers: Vec::new(),
    };
    // Without a proof, an app requiring the app secret refuses the Page token.
    wanted.pages = vec![page(Credentials::bare("page-token"))];
    let error = converge(&client, &wanted, None)
        .await
        .error
        .expect("refused");
    assert_eq!(error.code(), Some(100));
    assert!(
        error
            .message
            .contains("require an appsecret_proof argument"),
        "{error}"
    );
    // A proof made with another app's secret (a token of another app with the switch on).
    wanted.pages = vec![page(Credentials::with_proof(
        "page-token",
        "other-app-secret",
    ))];
    let error = converge(&client, &wanted, None)
        .await
        .error
        .expect("refused");
    assert!(error.message.contains("Invalid appsecret_proof"), "{error}");
    // With the proof: registered, and the proof rode on every node call.
    wanted.pages = vec![page(Credentials::with_proof("page-token", APP_SECRET))];
    let done = converge(&client, &wanted, None).await;
    assert!(done.error.is_none(), "{:?}", done.error);
    assert_eq!(
        graph.edge("1111").map(|e| e.subscribed_fields),
        Some(vec!["feed".to_owned()])
    );
    assert!(!done.status.pages[0].without_app_secret_proof);
    // Unregistering proves the token too (with the app secret recorded in the status).
    let (status, _) = unregister_all(
        &client,
        &done.status,
        &[("meta-app", APP_SECRET), ("page-token", "page-token")],
    )
    .await;
    assert!(status.pages.is_empty());
    assert_eq!(graph.edge("1111"), None);
    // An app that does not require it takes a bare token (appSecretProof: false), and
    // the status records that it was sent bare.
    graph.with(|s| s.require_appsecret_proof = false);
    wanted.pages = vec![page(Credentials::bare("page-token"))];
    let bare = converge(&client, &wanted, None).await;
    assert!(bare.error.is_none(), "{:?}", bare.error);
    assert!(bare.status.pages[0].without_app_secret_proof);
}

#[tokio::test]
async fn an_inactive_subscription_is_posted_again_with_the_whole_field_set() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    let client = client(&graph);
    let wanted = desired(&receiver, "page", &["feed"]);
    let first = converge(&client, &wanted, None).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    // Someone adds `mention` by hand; later Meta marks the subscription inactive (its
    // callback kept failing).
    graph.with(|s| {
        let sub = s.subscriptions.get_mut("page").expect("page");
        sub.fields.push("mention".to_owned());
        sub.active = false;
    });
    let again = converge(&client, &wanted, Some(&first.status)).await;
    assert!(again.error.is_none(), "{:?}", again.error);
    assert_eq!(
        again.changes,
        [format!(
            "subscribed app {APP} to page fields feed,mention at {} (Meta listed the subscription inactive)",
            wanted.callback_url
        )]
    );
    let sub = graph.subscription("page").expect("page");
    assert!(sub.active, "POSTed again: active");
    // The fake replaces the fields with those POSTed: the hand-made one survived because
    // the whole set was sent.
    assert_eq!(fields_of(&graph, "page"), set(&["feed", "mention"]));
    assert_eq!(again.status.registered_fields, ["feed"]);
}

#[tokio::test]
async fn an_expired_token_names_its_secret() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("5550001", "system-user-token");
    graph.with(|s| s.expired_tokens.push("system-user-token".to_owned()));
    let client = client(&graph);
    let mut wanted = desired(&receiver, "whatsapp_business_account", &["messages"]);
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: Credentials::with_proof("system-user-token", APP_SECRET),
        override_callback: false,
        phone_numbers: Vec::new(),
    }];
    let converged = converge(&client, &wanted, None).await;
    let error = converged.error.expect("refused");
    assert!(
        error.is_token_rejected() && !error.is_transient(),
        "{error}"
    );
    assert_eq!(error.meta.as_ref().and_then(|m| m.subcode), Some(463));
    assert_eq!(converged.failed_token, Some(key("wa-system-user")));
    // The app's own subscription went through before: its token is fine.
    assert!(graph.subscription("whatsapp_business_account").is_some());
    // Only one call with the expired token: not retried.
    let with_waba = graph
        .log()
        .iter()
        .filter(|l| l.path.starts_with("/5550001"))
        .count();
    assert_eq!(with_waba, 1);
}

#[tokio::test]
async fn a_business_use_case_limit_is_not_retried_in_seconds_and_usage_is_recorded() {
    use metahook_tests::testkit::metric_value;
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("5550001", "system-user-token");
    graph.with(|s| {
        s.usage_headers = vec![(
            "x-app-usage".to_owned(),
            r#"{"call_count":12,"total_cputime":3,"total_time":40}"#.to_owned(),
        )];
    });
    let metrics = std::sync::Arc::new(metahook_operator::metrics::Metrics::new().expect("metrics"));
    let client = client(&graph).with_metrics(metrics.clone());
    // The app's subscription first (app-token calls report X-App-Usage).
    let mut wanted = desired(&receiver, "whatsapp_business_account", &["messages"]);
    let first = converge(&client, &wanted, None).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    // Then the WABA, whose Business Use Case limit is exhausted for 45 minutes (80008).
    wanted.app_subscription = false;
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: Credentials::with_proof("system-user-token", APP_SECRET),
        override_callback: false,
        phone_numbers: Vec::new(),
    }];
    graph.push_fault(Fault::business_use_case(
        None,
        80_008,
        "5550001",
        "whatsapp_business_management",
        45,
    ));
    let converged = converge(&client, &wanted, None).await;
    let error = converged.error.expect("throttled");
    assert!(
        error.is_rate_limit() && error.code() == Some(80_008),
        "{error}"
    );
    assert_eq!(error.regain_access, Some(Duration::from_secs(45 * 60)));
    assert!(
        error
            .to_string()
            .contains("estimated_time_to_regain_access 45 min"),
        "{error}"
    );
    assert!(
        !error.for_status().contains("fbtrace_id"),
        "{}",
        error.for_status()
    );
    // The throttled call was made once: no retry within the pass.
    let statuses: Vec<(String, u16)> = graph
        .log()
        .iter()
        .map(|l| (l.path.clone(), l.status))
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|(p, _)| p == "/5550001/subscribed_apps")
            .count(),
        1,
        "{statuses:?}"
    );
    let text = metrics.render();
    let value = |series: &str| {
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert_eq!(
        value(r#"metahook_operator_graph_calls_total{outcome="throttled"}"#),
        1.0
    );
    assert_eq!(
        value(r#"metahook_operator_graph_calls_total{outcome="error"}"#),
        0.0
    );
    assert!(value(r#"metahook_operator_graph_calls_total{outcome="ok"}"#) >= 2.0);
    assert_eq!(
        value(
            r#"metahook_operator_graph_usage_percent{id="5550001",type="whatsapp_business_management"}"#
        ),
        100.0
    );
    assert_eq!(
        value(&format!(
            r#"metahook_operator_graph_usage_percent{{id="{APP}",type="app"}}"#
        )),
        40.0
    );
}

#[tokio::test]
async fn an_instagram_account_with_facebook_login_gets_a_page_field_on_its_page() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_node("2222", "page-token");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "instagram", &["comments", "messages"]);
    wanted.pages = vec![DesiredNode {
        id: "2222".to_owned(),
        token_ref: key("page-token"),
        token: Credentials::with_proof("page-token", APP_SECRET),
        override_callback: false,
        phone_numbers: Vec::new(),
    }];
    let converged = converge(&client, &wanted, None).await;
    assert!(converged.error.is_none(), "{:?}", converged.error);
    // The Instagram fields are the app subscription's; the Page gets a Page field.
    assert_eq!(
        fields_of(&graph, "instagram"),
        set(&["comments", "messages"])
    );
    assert_eq!(
        graph.edge("2222").map(|e| e.subscribed_fields),
        Some(vec!["feed".to_owned()])
    );
    assert_eq!(converged.status.pages[0].fields, ["feed"]);
    assert!(!converged.status.pages[0].instagram_login);
    assert!(
        graph.log().iter().all(|l| !l.instagram),
        "graph.facebook.com only"
    );
    // A Page refuses Instagram fields, as Meta does.
    graph.with(|s| s.nodes.clear());
    let refused = metahook_operator::graph::GraphApi::subscribe_node(
        &client,
        "2222",
        &Credentials::with_proof("page-token", APP_SECRET),
        &metahook_operator::graph::NodeSubscribe::Fields(vec!["comments".to_owned()]),
    )
    .await
    .expect_err("refused");
    assert!(
        refused.message.contains("must be one of") && refused.message.contains("got \"comments\""),
        "{refused}"
    );
}

#[tokio::test]
async fn an_instagram_account_with_instagram_login_is_registered_on_graph_instagram_com() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let graph = FakeGraph::start(APP, APP_SECRET).await.expect("fake graph");
    graph.add_instagram_user("17841400000000001", "ig-user-token");
    let client = client(&graph);
    let mut wanted = desired(&receiver, "instagram", &["comments", "messages"]);
    let node = |token: Credentials| DesiredNode {
        id: "17841400000000001".to_owned(),
        token_ref: key("ig-token"),
        token,
        override_callback: false,
        phone_numbers: Vec::new(),
    };
    // On graph.facebook.com the Instagram User token is not one Meta can parse.
    wanted.pages = vec![node(Credentials::with_proof("ig-user-token", APP_SECRET))];
    let error = converge(&client, &wanted, None)
        .await
        .error
        .expect("refused");
    assert_eq!(error.code(), Some(190), "{error}");
    // On graph.instagram.com: the account's subscribed_apps gets the Instagram fields.
    wanted.pages = vec![node(
        Credentials::with_proof("ig-user-token", APP_SECRET).on_instagram(),
    )];
    let converged = converge(&client, &wanted, None).await;
    assert!(converged.error.is_none(), "{:?}", converged.error);
    assert_eq!(
        graph.edge("17841400000000001").map(|e| e.subscribed_fields),
        Some(vec!["comments".to_owned(), "messages".to_owned()])
    );
    assert!(converged.status.pages[0].instagram_login);
    let log = graph.log();
    assert!(
        log.iter()
            .rfind(|l| l.path.starts_with("/17841400000000001"))
            .is_some_and(|l| l.instagram && l.status == 200),
        "{log:?}"
    );
    assert!(
        log.iter()
            .filter(|l| l.path.ends_with("/subscriptions"))
            .all(|l| !l.instagram),
        "the app's subscription stays on graph.facebook.com"
    );
    // Unregistering goes to graph.instagram.com too.
    let (status, _) = unregister_all(
        &client,
        &converged.status,
        &[("meta-app", APP_SECRET), ("ig-token", "ig-user-token")],
    )
    .await;
    assert!(status.pages.is_empty());
    assert_eq!(graph.edge("17841400000000001"), None);
}
