//! What a subscription may reach (issue 28), against the scripted mock API: a refused
//! image, ingress annotation, ingress host or callback host ends the pass with `Ready`
//! False, a Warning Event and nothing else written; an unmarked Secret is named and its
//! values are not used; a callback another party set is not replaced without
//! `takeOverCallback`; digests are keyed and tokens stay out of `Debug`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use metahook_operator::controller::registration::{
    self, CALLBACK_OWNED_ELSEWHERE, Desired, DesiredNode, converge,
};
use metahook_operator::controller::{self, REFUSED_RETRY};
use metahook_operator::crd::SecretKeyRef;
use metahook_operator::graph::{AppSubscribe, NodeSubscribe};
use metahook_operator::resources::Inputs;
use metahook_operator::resources::ingress::{OPERATOR_ANNOTATIONS, annotations};
use metahook_operator::resources::monitoring::Capabilities;
use metahook_operator::status::{self, Observed, RegistrationState};
use serde_json::{Value, json};
use support::*;

const NS: &str = "acme";
const CORE: &str = "/api/v1/namespaces/acme";
const SUBS: &str = "/apis/metahook.io/v1alpha1/namespaces/acme/webhooksubscriptions";
const UID: &str = "11111111-2222-3333-4444-555555555555";

fn whatsapp_spec() -> Value {
    json!({
        "object": "whatsapp_business_account",
        "fields": ["messages"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
    })
}

fn status_step(spec: &Value) -> Expect {
    let sub = serde_json::to_value(subscription("wa", NS, spec)).expect("json");
    apply(format!("{SUBS}/wa/status"), Reply::Onto(sub))
}

/// Reconciles `spec` against a script that expects `before` (e.g. the Ingress LIST), then
/// only the refusal's Warning Event and status; returns the Event and the status bodies.
async fn refused(spec: &Value, before: Vec<Expect>) -> (Value, Value) {
    let sub = subscription("wa", NS, spec);
    let mut script = before;
    let skip = script.len();
    script.push(event(NS));
    script.push(status_step(spec));
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(REFUSED_RETRY),
        "rechecked every minute"
    );
    let served = api.finish().await;
    assert_eq!(
        served.len(),
        skip + 2,
        "nothing but the Event and the status"
    );
    let event = served[skip].body.clone();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["action"], "Reconcile");
    (event, served[skip + 1].body.clone())
}

fn ready(status: &Value) -> (&str, &str, &str) {
    let ready = condition(status, "Ready");
    (
        ready["status"].as_str().expect("status"),
        ready["reason"].as_str().expect("reason"),
        ready["message"].as_str().expect("message"),
    )
}

#[tokio::test]
async fn an_image_outside_the_list_is_refused_before_any_request() {
    let mut spec = whatsapp_spec();
    spec["receiver"] = json!({"image": "evil.example/secret-reader:1"});
    let (event, status) = refused(&spec, vec![]).await;
    let message = "spec.receiver.image evil.example/secret-reader:1 is not allowed: the \
                   operator runs only metahook-receiver:test (--allowed-receiver-image, chart \
                   value operator.allowedReceiverImages); remove spec.receiver.image or ask the \
                   operator's administrators to allow it";
    assert_eq!(ready(&status), ("False", "ImageNotAllowed", message));
    assert_eq!(event["reason"], "ImageNotAllowed");
    assert_eq!(event["note"], message);
    assert_eq!(status["status"]["observedGeneration"], 3);
}

#[tokio::test]
async fn the_operators_own_image_is_allowed_when_named() {
    // The same image as --receiver-image: the pass goes on to step 0's reads (which the
    // script refuses with a 500, so the pass stops there).
    let mut spec = whatsapp_spec();
    spec["receiver"] = json!({"image": "metahook-receiver:test"});
    let sub = subscription("wa", NS, &spec);
    let script = vec![get(
        format!("{CORE}/configmaps/wa-receiver"),
        Reply::Error(500, "InternalError"),
    )];
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let result = controller::reconcile(Arc::new(sub), api.ctx.clone()).await;
    assert!(result.is_err(), "{result:?}");
    api.finish().await;
}

#[tokio::test]
async fn a_snippet_annotation_is_refused_before_the_ingress_list() {
    let mut spec = whatsapp_spec();
    spec["ingress"] = json!({
        "host": "hooks.example.com",
        "annotations": {
            "cert-manager.io/cluster-issuer": "letsencrypt",
            "nginx.ingress.kubernetes.io/server-snippet": "location / { return 200; }",
        },
    });
    let (_, status) = refused(&spec, vec![]).await;
    assert_eq!(
        ready(&status),
        (
            "False",
            "AnnotationNotAllowed",
            "spec.ingress.annotations key nginx.ingress.kubernetes.io/server-snippet is not \
             allowed: snippet annotations inject ingress configuration and are never allowed"
        )
    );
}

#[tokio::test]
async fn the_operators_tls_annotations_cannot_be_overridden() {
    let mut spec = whatsapp_spec();
    spec["ingress"] = json!({
        "host": "hooks.example.com",
        "annotations": {"nginx.ingress.kubernetes.io/auth-tls-verify-client": "off"},
    });
    let (_, status) = refused(&spec, vec![]).await;
    let (_, reason, message) = ready(&status);
    assert_eq!(reason, "AnnotationNotAllowed");
    assert_eq!(
        message,
        "spec.ingress.annotations key nginx.ingress.kubernetes.io/auth-tls-verify-client is not \
         allowed: the operator sets it itself (TLS and client-certificate settings cannot be \
         overridden)"
    );
}

#[tokio::test]
async fn an_annotation_off_the_list_is_refused_naming_the_list() {
    let mut spec = whatsapp_spec();
    spec["ingress"] = json!({
        "host": "hooks.example.com",
        "annotations": {"nginx.ingress.kubernetes.io/auth-url": "http://evil.example/"},
    });
    let (_, status) = refused(&spec, vec![]).await;
    let (_, reason, message) = ready(&status);
    assert_eq!(reason, "AnnotationNotAllowed");
    assert!(
        message.starts_with(
            "spec.ingress.annotations key nginx.ingress.kubernetes.io/auth-url is not allowed: \
             it is not on the operator's list (cert-manager.io/cluster-issuer, "
        ),
        "{message}"
    );
}

fn ingress(name: &str, host: &str, owner: Option<(&str, &str)>) -> Value {
    let mut object = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "uid": format!("{name}-uid")},
        "spec": {"rules": [{"host": host, "http": {"paths": []}}]},
    });
    if let Some((kind, uid)) = owner {
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": if kind == "WebhookSubscription" { "metahook.io/v1alpha1" } else { "apps/v1" },
            "kind": kind, "name": "x", "uid": uid, "controller": true,
        }]);
    }
    object
}

#[tokio::test]
async fn a_host_served_by_another_ingress_is_a_conflict_naming_it() {
    let mut spec = whatsapp_spec();
    spec["ingress"] = json!({"host": "shop.example.com"});
    let listed = ingresses_listed(
        NS,
        &[
            ingress("web", "www.example.com", None),
            ingress("shop", "SHOP.example.com", Some(("Deployment", "d-uid"))),
        ],
    );
    let (event, status) = refused(&spec, vec![listed]).await;
    let message = "spec.ingress.host shop.example.com is already served by Ingress acme/shop, \
                   which this subscription does not own: choose another host, or remove that \
                   Ingress's rule for it";
    assert_eq!(ready(&status), ("False", "Conflict", message));
    assert_eq!(event["reason"], "Conflict");
}

#[test]
fn its_own_ingress_and_other_subscriptions_are_no_conflict() {
    let sub = subscription("wa", NS, &whatsapp_spec());
    let parse = |value: Value| serde_json::from_value(value).expect("Ingress");
    let ingresses = vec![
        parse(ingress(
            "wa",
            "hooks.example.com",
            Some(("WebhookSubscription", UID)),
        )),
        // Another subscription of the namespace on the same host, by path.
        parse(ingress(
            "page",
            "hooks.example.com",
            Some(("WebhookSubscription", "other")),
        )),
    ];
    assert_eq!(
        controller::policy::host_conflict(&sub, "hooks.example.com", &ingresses),
        None
    );
}

#[tokio::test]
async fn a_callback_host_off_the_list_is_refused_before_any_request() {
    let mut spec = whatsapp_spec();
    spec["registration"] = json!({"appId": "1234", "callbackURL": "https://attacker.example/x"});
    let (_, status) = refused(&spec, vec![]).await;
    let (_, reason, message) = ready(&status);
    assert_eq!(reason, "CallbackNotAllowed");
    assert_eq!(
        message,
        "spec.registration.callbackURL host attacker.example is not allowed: the operator \
         registers only hosts on --allowed-callback-host (chart value \
         operator.registration.allowedCallbackHosts): hooks.example.com"
    );
}

/// The sidestep a reviewer found: without callbackURL the callback is the ingress host's
/// endpoint, and the spec names that host itself. With an allowlist set, it must be on it.
#[tokio::test]
async fn an_ingress_host_off_the_list_is_no_callback_either() {
    let mut spec = whatsapp_spec();
    spec["ingress"] = json!({"host": "attacker.example"});
    spec["registration"] = json!({"appId": "1234"});
    let (_, status) = refused(&spec, vec![]).await;
    let (_, reason, message) = ready(&status);
    assert_eq!(reason, "CallbackNotAllowed");
    assert!(
        message.starts_with("spec.registration.callbackURL host attacker.example is not allowed"),
        "{message}"
    );
}

#[tokio::test]
async fn a_listed_ingress_host_is_an_allowed_callback() {
    let mut spec = whatsapp_spec();
    spec["ingress"] = json!({"host": "hooks.example.com"});
    spec["registration"] = json!({"appId": "1234"});
    let sub = subscription("wa", NS, &spec);
    // Allowed: the pass goes on past the LIST to step 0's reads (refused here with a 500).
    let script = vec![
        ingresses_listed(NS, &[]),
        get(
            format!("{CORE}/configmaps/wa-receiver"),
            Reply::Error(500, "InternalError"),
        ),
    ];
    let api = MockApi::start(script, Capabilities::default(), test_now());
    assert!(
        controller::reconcile(Arc::new(sub), api.ctx.clone())
            .await
            .is_err()
    );
    api.finish().await;
}

#[tokio::test]
async fn an_unmarked_secret_is_named_with_how_to_mark_it_and_not_used() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "db-creds", "key": "password"});
    let sub = subscription("wa", NS, &spec);
    let mut script = claims_of(NS, "wa", false, false, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/db-creds"),
            Reply::Object(unmarked(secret(
                NS,
                "db-creds",
                &[("password", b"hunter2")],
            ))),
        ),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(secret(NS, "meta-app", &[("app-secret", b"s3cret")])),
        ),
        event(NS),
        status_step(&spec),
    ]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(controller::MISSING_SECRET_RETRY));
    let served = api.finish().await;
    let served = &served[6..];
    let message = "Secret acme/db-creds may not be referenced: it is not marked referenceable: \
                   a namespace admin marks it with `kubectl label secret db-creds \
                   metahook.io/referenceable=true`";
    assert_eq!(served[2].body["reason"], "SecretNotResolved");
    assert_eq!(served[2].body["note"], message);
    let status = body_of(served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let resolved = condition(status, "SecretsResolved");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "SecretNotReferenceable");
    assert_eq!(resolved["message"], message);
    assert_eq!(ready(status).1, "SecretsResolvedFalse");
    assert!(
        !served
            .iter()
            .any(|s| s.body.to_string().contains("hunter2")),
        "the value goes nowhere"
    );
}

#[tokio::test]
async fn another_subscriptions_generated_token_is_not_referenceable() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "page-verify-token", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut other = secret(NS, "page-verify-token", &[("verify-token", b"t")]);
    other["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("metahook-operator");
    other["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "metahook.io/v1alpha1", "kind": "WebhookSubscription",
        "name": "page", "uid": "other-uid", "controller": true,
    }]);
    let mut script = claims_of(NS, "wa", false, false, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(secret(NS, "meta-app", &[("app-secret", b"s3cret")])),
        ),
        get(
            format!("{CORE}/secrets/page-verify-token"),
            Reply::Object(other),
        ),
        event(NS),
        status_step(&spec),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        condition(status, "SecretsResolved")["message"],
        "Secret acme/page-verify-token may not be referenced: the operator made it for another \
         subscription or for the namespace (only its owner may reference it)"
    );
}

fn key(name: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.to_owned(),
        key: "token".to_owned(),
    }
}

fn desired() -> Desired {
    Desired {
        app_id: "1234".to_owned(),
        object: "whatsapp_business_account".to_owned(),
        callback_url: "https://hooks.example.com/webhooks/whatsapp".to_owned(),
        fields: vec!["messages".to_owned()],
        verify_token: "the-verify-token".to_owned(),
        app_secret_ref: key("meta-app"),
        app_token: "1234|the-app-secret".to_owned(),
        app_subscription: true,
        take_over_callback: false,
        pages: Vec::new(),
        wabas: Vec::new(),
    }
}

#[tokio::test]
async fn an_app_callback_set_elsewhere_is_not_replaced_without_take_over() {
    let api = MockApi::start(vec![], Capabilities::default(), test_now());
    let graph = api.graph.clone();
    graph.app.lock().expect("lock").insert(
        "whatsapp_business_account".to_owned(),
        (
            "https://prod.other-team.example/meta?key=k".to_owned(),
            vec!["messages".to_owned()],
        ),
    );
    let refused = converge(graph.as_ref(), &desired(), None).await;
    assert!(refused.error.is_none());
    let message = "the app's whatsapp_business_account callback points at host \
                   prod.other-team.example, which this subscription did not set: it is left \
                   alone (set spec.registration.takeOverCallback: true to replace it with \
                   hooks.example.com)";
    assert_eq!(refused.refused.as_deref(), Some(message));
    assert_eq!(graph.calls(), ["GET /1234/subscriptions"], "no Graph write");
    assert!(
        refused.status.callback_url.is_none(),
        "nothing recorded as set"
    );

    // The status the pass writes: Registered False, CallbackOwnedElsewhere.
    let observed = Observed {
        missing: Vec::new(),
        certificate: status::CertificateState::NotRequired,
        receiver: status::ReceiverState::Sidecar,
        endpoint: None,
        verify_token: None,
        registration: RegistrationState::Refused {
            status: refused.status.clone(),
            reason: CALLBACK_OWNED_ELSEWHERE,
            message: message.to_owned(),
        },
        refused: None,
        spool: None,
    };
    let built = status::build(None, Some(3), NS, &observed, test_now());
    let registered = built
        .conditions
        .iter()
        .find(|c| c.type_ == "Registered")
        .expect("Registered");
    assert_eq!(
        (registered.status.as_str(), registered.reason.as_str()),
        ("False", "CallbackOwnedElsewhere")
    );
    assert_eq!(registered.message, message);

    // With takeOverCallback it is replaced, and from then on it is this subscription's.
    let mut take_over = desired();
    take_over.take_over_callback = true;
    let taken = converge(graph.as_ref(), &take_over, None).await;
    assert!(taken.error.is_none() && taken.refused.is_none());
    assert_eq!(
        graph.calls()[2..],
        [
            "POST /1234/subscriptions object=whatsapp_business_account fields=messages \
             callback_url=https://hooks.example.com/webhooks/whatsapp"
                .to_owned()
        ]
    );
    let mut moved = desired();
    moved.callback_url = "https://hooks.example.com/webhooks/moved".to_owned();
    let again = converge(graph.as_ref(), &moved, Some(&taken.status)).await;
    assert!(again.refused.is_none(), "{:?}", again.refused);
    drop(api);
}

#[tokio::test]
async fn a_waba_override_set_elsewhere_is_not_removed_either() {
    // The spec wants no override, Meta holds one this subscription did not set: a
    // subscribe without override would remove it, so it is refused too.
    let api = MockApi::start(vec![], Capabilities::default(), test_now());
    let graph = api.graph.clone();
    graph.nodes.lock().expect("lock").insert(
        "5550001".to_owned(),
        metahook_operator::graph::SubscribedApp {
            app_id: "1234".to_owned(),
            subscribed_fields: vec![],
            override_callback_uri: Some("https://other.example/hook".to_owned()),
        },
    );
    let mut wanted = desired();
    wanted.app_subscription = false;
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: metahook_operator::graph::Credentials::with_proof("waba-token", "s3cret"),
        override_callback: false,
        phone_numbers: Vec::new(),
    }];
    let refused = converge(graph.as_ref(), &wanted, None).await;
    assert_eq!(
        refused.refused.as_deref(),
        Some(
            "the callback override of WABA 5550001 points at host other.example, which this \
             subscription did not set: it is left alone (set spec.registration.takeOverCallback: \
             true to replace it with none)"
        )
    );
    assert_eq!(graph.calls(), ["GET /5550001/subscribed_apps"]);
    drop(api);
}

#[test]
fn the_verify_token_digest_is_keyed_with_the_app_secret() {
    let digest = registration::token_digest("1234|the-app-secret", "the-verify-token");
    assert_eq!(digest.len(), 16);
    assert_ne!(
        digest,
        registration::token_digest("1234|another-secret", "the-verify-token"),
        "another key, another digest"
    );
    assert_ne!(
        digest,
        registration::token_digest("1234|the-app-secret", "another-token"),
        "a rotated token is seen"
    );
    // Not the unkeyed SHA-256 any reader of the status could test guesses against.
    use sha2::Digest as _;
    let unkeyed = hex::encode(sha2::Sha256::digest(b"the-verify-token"));
    assert_ne!(digest, unkeyed[..16]);
}

#[test]
fn tokens_are_redacted_in_debug() {
    let mut wanted = desired();
    wanted.wabas = vec![DesiredNode {
        id: "5550001".to_owned(),
        token_ref: key("wa-system-user"),
        token: metahook_operator::graph::Credentials::with_proof("the-waba-token", "s3cret"),
        override_callback: true,
        phone_numbers: Vec::new(),
    }];
    let subscribe = AppSubscribe {
        object: "page".to_owned(),
        callback_url: "https://hooks.example.com/x".to_owned(),
        fields: vec!["feed".to_owned()],
        verify_token: "the-verify-token".to_owned(),
    };
    let waba = NodeSubscribe::Waba {
        override_callback: Some((
            "https://hooks.example.com/x".to_owned(),
            "the-verify-token".to_owned(),
        )),
    };
    for printed in [
        format!("{wanted:?}"),
        format!("{subscribe:?}"),
        format!("{waba:?}"),
    ] {
        for secret in ["the-verify-token", "the-app-secret", "the-waba-token"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("redacted"), "{printed}");
    }
    assert!(
        format!("{wanted:?}").contains("hooks.example.com"),
        "the rest is shown"
    );
}

#[tokio::test]
async fn an_owned_token_secret_from_before_the_label_is_labelled_keeping_its_token() {
    let sub = subscription("wa", NS, &whatsapp_spec());
    let mut old = unmarked(secret(
        NS,
        "wa-verify-token",
        &[("verify-token", b"existing-token")],
    ));
    old["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "metahook.io/v1alpha1", "kind": "WebhookSubscription",
        "name": "wa", "uid": UID, "controller": true,
    }]);
    let mut script = claims_of(
        NS,
        "wa",
        true,
        false,
        &[(format!("{CORE}/secrets/wa-verify-token"), old)],
    );
    script.extend([
        apply(format!("{CORE}/secrets/wa-verify-token"), Reply::Echo(None)),
        // The pass stops here; the token step is what is asserted.
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Error(500, "InternalError"),
        ),
    ]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    assert!(
        controller::reconcile(Arc::new(sub), api.ctx.clone())
            .await
            .is_err()
    );
    let served = api.finish().await;
    let applied = body_of(
        &served,
        &Method::PATCH,
        &format!("{CORE}/secrets/wa-verify-token"),
    );
    assert_eq!(
        applied["metadata"]["labels"]["metahook.io/referenceable"],
        "true"
    );
    assert_eq!(secret_value(applied, "verify-token"), b"existing-token");
}

#[test]
fn the_operators_annotations_win_over_the_specs() {
    let mut spec = whatsapp_spec();
    spec["tls"] =
        json!({"mode": "mutual", "clientCARef": {"name": "meta-client-ca", "key": "ca.crt"}});
    spec["ingress"] = json!({
        "host": "hooks.example.com",
        "annotations": {
            "nginx.ingress.kubernetes.io/auth-tls-verify-client": "off",
            "cert-manager.io/cluster-issuer": "letsencrypt",
        },
    });
    let sub = subscription("wa", NS, &spec);
    let inputs = Inputs::new(&sub, "metahook-receiver:test", None, String::new()).expect("inputs");
    let built: BTreeMap<String, String> =
        annotations(&inputs, sub.spec.ingress.as_ref().expect("ingress"));
    assert_eq!(
        built["nginx.ingress.kubernetes.io/auth-tls-verify-client"], "on",
        "the policy refuses such a spec; the builder does not let it through either"
    );
    assert_eq!(built["cert-manager.io/cluster-issuer"], "letsencrypt");
    for key in built.keys() {
        assert!(
            OPERATOR_ANNOTATIONS.contains(&key.as_str()) || key.starts_with("cert-manager.io/"),
            "{key} is set by the operator but not in OPERATOR_ANNOTATIONS"
        );
    }
}
