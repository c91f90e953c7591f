//! Controller scenarios against the scripted mock API: every request the operator makes
//! is asserted by method and path, its body checked, and answered as the API server would.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use metahook_operator::certs::{self, CaMaterial};
use metahook_operator::controller::{self, RESYNC, registration};
use metahook_operator::resources::monitoring::{Capabilities, PdbVersion};
use metahook_operator::resources::secrets::{CA_FINGERPRINT_ANNOTATION, CA_SECRET_NAME};
use serde_json::{Value, json};
use support::*;

use metahook_config::Config;

const NS: &str = "acme";
const CORE: &str = "/api/v1/namespaces/acme";
const APPS: &str = "/apis/apps/v1/namespaces/acme";
const NET: &str = "/apis/networking.k8s.io/v1/namespaces/acme";
const SUBS: &str = "/apis/metahook.io/v1alpha1/namespaces/acme/webhooksubscriptions";
/// The uid of every subscription [`subscription`] makes.
const SUB_UID: &str = "11111111-2222-3333-4444-555555555555";

fn whatsapp_spec() -> Value {
    json!({
        "object": "whatsapp_business_account",
        "fields": ["messages", "message_template_status_update"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        // Most tests here follow a Deployment; the default StatefulSet has tests of its own.
        "delivery": {
            "spool": {"ephemeral": true},
            "sinks": [{"name": "bus", "nats": {"url": "nats://nats.nats:4222"}}],
        },
    })
}

fn app_secret() -> Value {
    secret(NS, "meta-app", &[("app-secret", b"s3cret")])
}

/// The generated verify token's Secret, as an earlier pass left it.
fn token_secret() -> Value {
    owned(secret(
        NS,
        "wa-verify-token",
        &[("verify-token", b"existing-token")],
    ))
}

/// `object` as the subscription `wa`'s own.
fn owned(object: Value) -> Value {
    owned_by(object, "wa")
}

/// A minimal object of a kind at a name of `wa`'s, for step 0's answers.
fn object_at(api_version: &str, kind: &str, name: &str) -> Value {
    object_in(NS, api_version, kind, name)
}

/// Step 0 of a pass of `wa` (see [`claims_of`]).
fn claims(token: bool, tls: bool, found: &[(String, Value)]) -> Vec<Expect> {
    claims_of(NS, "wa", token, tls, found)
}

/// The requests of a pass once the Secrets resolved, for a plain-HTTP Deployment (no
/// StatefulSet or Ingress to delete: step 0 found none).
fn workload_steps(ready_replicas: i32) -> Vec<Expect> {
    vec![
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(
                json!({"replicas": 1, "readyReplicas": ready_replicas}),
            )),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
    ]
    .into_iter()
    .chain(drain_lists(NS, &[], &[]))
    .collect()
}

fn status_step() -> Expect {
    let sub = serde_json::to_value(subscription("wa", NS, &whatsapp_spec())).expect("json");
    apply(format!("{SUBS}/wa/status"), Reply::Onto(sub))
}

#[tokio::test]
async fn a_missing_admin_token_is_generated_once_owned_and_mounted() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut script = claims(
        false,
        false,
        &[(format!("{CORE}/secrets/wa-admin-token"), Value::Null)],
    );
    script.extend([
        apply(format!("{CORE}/secrets/wa-admin-token"), Reply::Echo(None)),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(secret(
                NS,
                "meta-app",
                &[("app-secret", b"s3cret"), ("verify-token", b"t")],
            )),
        ),
    ]);
    script.extend(workload_steps(0));
    script.push(status_step());
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let admin = body_of(
        &served,
        &Method::PATCH,
        &format!("{CORE}/secrets/wa-admin-token"),
    );
    let token = String::from_utf8(secret_value(admin, "admin-token")).expect("utf-8");
    assert_eq!(token.len(), 43, "32 bytes in unpadded base64: {token}");
    assert_eq!(
        admin["metadata"]["ownerReferences"][0]["kind"],
        "WebhookSubscription"
    );
    assert_eq!(
        admin["metadata"]["labels"][metahook_operator::policy::REFERENCEABLE_LABEL],
        "true"
    );
    // Mounted into the receivers and named in their configuration.
    let config = body_of(
        &served,
        &Method::PATCH,
        &format!("{CORE}/configmaps/wa-receiver"),
    );
    let yaml = config["data"]["config.yaml"].as_str().expect("config");
    assert!(
        yaml.contains("token_file: /etc/metahook/secrets/wa-admin-token/admin-token"),
        "{yaml}"
    );
    let deployment = body_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    let sources = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "secrets")
        .expect("secrets volume")["projected"]["sources"]
        .clone();
    assert!(
        sources
            .as_array()
            .expect("sources")
            .iter()
            .any(|s| s["secret"]["name"] == "wa-admin-token"),
        "{sources}"
    );
}

#[tokio::test]
async fn create_generates_the_token_and_applies_every_object() {
    let sub = subscription("wa", NS, &whatsapp_spec());
    let mut script = claims(true, false, &[]);
    script.extend([
        apply(format!("{CORE}/secrets/wa-verify-token"), Reply::Echo(None)),
        event(NS),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_secret()),
        ),
    ]);
    script.extend(workload_steps(0));
    script.push(status_step());
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));
    let served = api.finish().await;

    // The verify token: 32 random bytes, URL-safe, owned by the subscription.
    let token_secret = body_of(
        &served,
        &Method::PATCH,
        &format!("{CORE}/secrets/wa-verify-token"),
    );
    let token = String::from_utf8(secret_value(token_secret, "verify-token")).expect("utf-8");
    assert_eq!(token.len(), 43, "32 bytes in unpadded base64: {token}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_eq!(
        token_secret["metadata"]["ownerReferences"][0]["kind"],
        "WebhookSubscription"
    );
    assert_eq!(
        token_secret["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    // Created: no uid precondition (nothing to hold it against).
    assert!(token_secret["metadata"]["uid"].is_null());
    let generated = &served[8].body;
    assert_eq!(generated["reason"], "VerifyTokenGenerated");
    assert_eq!(generated["regarding"]["name"], "wa");

    // The ConfigMap holds the receiver's own config type, naming the mounted files.
    let config_map = body_of(
        &served,
        &Method::PATCH,
        &format!("{CORE}/configmaps/wa-receiver"),
    );
    let yaml = config_map["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml");
    let config = Config::parse(yaml).expect("the receiver accepts the config");
    let endpoint = &config.endpoints[0];
    assert_eq!(endpoint.name, "acme/wa");
    assert_eq!(endpoint.path, "/webhooks/whatsapp");
    assert_eq!(
        endpoint.objects.as_deref(),
        Some(&["whatsapp_business_account".to_owned()][..])
    );
    assert_eq!(
        endpoint.app_secret_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/metahook/secrets/meta-app/app-secret"
        ))
    );
    assert_eq!(
        endpoint.verify_token_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/metahook/secrets/wa-verify-token/verify-token"
        ))
    );
    assert_eq!(config.sinks[0].name, "bus");
    assert_eq!(
        match &config.sinks[0].kind {
            metahook_config::SinkKind::Nats(n) => Some(n.url.as_str()),
            _ => None,
        },
        Some("nats://nats.nats:4222")
    );
    assert!(config.tls.is_none());

    // The Deployment.
    let deployment = body_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    assert_eq!(deployment["metadata"]["ownerReferences"][0]["name"], "wa");
    let template = &deployment["spec"]["template"];
    let hash = template["metadata"]["annotations"]["metahook.io/config-hash"]
        .as_str()
        .expect("config hash");
    assert_eq!(hash.len(), 64);
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["image"], "metahook-receiver:test");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTP");

    // The Service and the status.
    let service = body_of(&served, &Method::PATCH, &format!("{CORE}/services/wa"));
    assert_eq!(service["spec"]["ports"][0]["name"], "http");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(
        status["status"]["endpoint"],
        "http://wa.acme.svc:80/webhooks/whatsapp"
    );
    assert_eq!(status["status"]["verifyToken"]["name"], "wa-verify-token");
    assert_eq!(condition(status, "SecretsResolved")["status"], "True");
    assert_eq!(
        condition(status, "CertificateReady")["reason"],
        "TLSDisabled"
    );
    // Never Ready before the workload is available.
    assert_eq!(condition(status, "ReceiverAvailable")["status"], "False");
    assert_eq!(
        condition(status, "ReceiverAvailable")["message"],
        "0 of 1 receiver pods of Deployment ready"
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(
        condition(status, "Ready")["reason"],
        "ReceiverAvailableFalse"
    );
}

/// A pass with the generated token and every child already there, the subscription's
/// own: the token is read once (step 0) and not written, the Deployment is ready, the
/// subscription becomes Ready.
fn existing_token_pass() -> Vec<Expect> {
    let mut script = claims(
        true,
        false,
        &[
            (
                format!("{CORE}/configmaps/wa-receiver"),
                owned(object_at("v1", "ConfigMap", "wa-receiver")),
            ),
            (format!("{CORE}/secrets/wa-verify-token"), token_secret()),
            (
                format!("{APPS}/deployments/wa"),
                owned(object_at("apps/v1", "Deployment", "wa")),
            ),
            (
                format!("{CORE}/services/wa"),
                owned(object_at("v1", "Service", "wa")),
            ),
        ],
    );
    script.push(get(
        format!("{CORE}/secrets/meta-app"),
        Reply::Object(app_secret()),
    ));
    script.extend(workload_steps(1));
    script.push(status_step());
    // Becoming Ready is an Event too.
    script.push(event(NS));
    script
}

#[tokio::test]
async fn an_existing_token_is_kept_and_ready_follows_the_workload() {
    let sub = subscription("wa", NS, &whatsapp_spec());
    let script = existing_token_pass();
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    assert!(
        !served
            .iter()
            .any(|s| s.method == Method::PATCH && s.path.ends_with("/secrets/wa-verify-token")),
        "the token is the subscription's already: never written again"
    );
    // Each of its objects is applied under the uid step 0 read, without force (the mock
    // refuses a forced apply of a child).
    for (path, uid) in [
        (format!("{CORE}/configmaps/wa-receiver"), "wa-receiver-uid"),
        (format!("{APPS}/deployments/wa"), "wa-uid"),
        (format!("{CORE}/services/wa"), "wa-uid"),
    ] {
        let applied = body_of(&served, &Method::PATCH, &path);
        assert_eq!(applied["metadata"]["uid"], uid, "{path}");
        assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], SUB_UID);
    }
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(condition(status, "ReceiverAvailable")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(
        condition(status, "Ready")["message"],
        "register http://wa.acme.svc:80/webhooks/whatsapp with Meta"
    );
    assert_eq!(
        served.last().map(|s| &s.body["reason"]),
        Some(&json!("Ready"))
    );
}

/// Runs a steady-state pass and returns the Deployment's config hash.
async fn config_hash_of(spec: Value, app_secret_value: &[u8]) -> String {
    let mut spec = spec;
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let app = secret(
        NS,
        "meta-app",
        &[("app-secret", app_secret_value), ("verify-token", b"t")],
    );
    let mut script = claims(false, false, &[]);
    script.push(get(format!("{CORE}/secrets/meta-app"), Reply::Object(app)));
    script.extend(workload_steps(1));
    script.push(status_step());
    script.push(event(NS));
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let deployment = body_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    deployment["spec"]["template"]["metadata"]["annotations"]["metahook.io/config-hash"]
        .as_str()
        .expect("hash")
        .to_owned()
}

#[tokio::test]
async fn a_spec_or_secret_change_changes_the_config_hash() {
    let base = config_hash_of(whatsapp_spec(), b"s3cret").await;
    assert_eq!(
        base,
        config_hash_of(whatsapp_spec(), b"s3cret").await,
        "deterministic"
    );
    let mut more_fields = whatsapp_spec();
    more_fields["fields"] = json!([
        "messages",
        "message_template_status_update",
        "account_update"
    ]);
    let mut other_path = whatsapp_spec();
    other_path["path"] = json!("/hooks/wa");
    for (what, hash) in [
        ("path", config_hash_of(other_path, b"s3cret").await),
        (
            "app secret",
            config_hash_of(whatsapp_spec(), b"rotated").await,
        ),
    ] {
        assert_ne!(base, hash, "{what} changed but the pods would not roll");
    }
    // Fields are Meta-side (the subscription), not the receiver's: same config.
    assert_eq!(base, config_hash_of(more_fields, b"s3cret").await);
}

/// Found on a real API server (1.20): an apply that creates a Service can answer 409
/// AlreadyExists when another create of the same name lands between the server's read
/// and its create (its Service storage creates on update without retrying; a request the
/// client retried after a timeout is such a create). The object is read again: the
/// subscription's own (its retried create) is applied again under its uid.
#[tokio::test]
async fn an_apply_that_races_its_own_create_is_applied_again() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut script = claims(false, false, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 0}))),
        ),
        apply(
            format!("{CORE}/services/wa"),
            Reply::Error(409, "AlreadyExists"),
        ),
        get(
            format!("{CORE}/services/wa"),
            Reply::Object(owned(object_at("v1", "Service", "wa"))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        status_step(),
    ]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("the pass succeeds");
    assert_eq!(action, Action::requeue(RESYNC));
    let served = api.finish().await;
    let services: Vec<&Value> = served
        .iter()
        .filter(|s| s.method == Method::PATCH && s.path == format!("{CORE}/services/wa"))
        .map(|s| &s.body)
        .collect();
    assert_eq!(services.len(), 2);
    assert!(services[0]["metadata"]["uid"].is_null(), "a create");
    assert_eq!(
        services[1]["metadata"]["uid"], "wa-uid",
        "then an update under its uid"
    );
    assert_eq!(
        services[0]["spec"], services[1]["spec"],
        "the same apply, again"
    );
}

/// The same race lost to someone else's object: not applied again; the pass ends as a
/// Conflict naming it.
#[tokio::test]
async fn an_apply_that_races_someone_elses_create_is_a_conflict() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut script = claims(false, false, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 0}))),
        ),
        apply(
            format!("{CORE}/services/wa"),
            Reply::Error(409, "AlreadyExists"),
        ),
        get(
            format!("{CORE}/services/wa"),
            Reply::Object(object_at("v1", "Service", "wa")),
        ),
        event(NS),
        status_step(),
    ]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("a refusal is not a failure");
    assert_eq!(action, Action::requeue(controller::REFUSED_RETRY));
    let served = api.finish().await;
    let warning = &served[served.len() - 2].body;
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "Conflict");
    assert_eq!(
        warning["note"],
        "Service acme/wa was created by someone else while the operator was creating it"
    );
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(condition(status, "Ready")["reason"], "Conflict");
}

#[tokio::test]
async fn a_missing_secret_is_named_and_nothing_is_applied() {
    let mut spec = whatsapp_spec();
    spec["previousAppSecretRef"] = json!({"name": "meta-app", "key": "previous"});
    let sub = subscription("wa", NS, &spec);
    let mut script = claims(
        true,
        false,
        &[(format!("{CORE}/secrets/wa-verify-token"), token_secret())],
    );
    script.extend([
        // meta-app holds app-secret but not previous.
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_secret()),
        ),
        event(NS),
        status_step(),
    ]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(controller::MISSING_SECRET_RETRY));
    let served = api.finish().await;
    let warning = &served[8].body;
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "SecretNotResolved");
    assert_eq!(warning["note"], "Secret acme/meta-app has no key previous");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let resolved = condition(status, "SecretsResolved");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "SecretKeyNotFound");
    assert_eq!(
        resolved["message"],
        "Secret acme/meta-app has no key previous"
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "SecretsResolvedFalse");
    assert_eq!(
        condition(status, "ReceiverAvailable")["reason"],
        "NotApplied"
    );
}

#[tokio::test]
async fn an_absent_secret_is_named() {
    let sub = subscription("wa", NS, &whatsapp_spec());
    let mut script = claims(
        true,
        false,
        &[(format!("{CORE}/secrets/wa-verify-token"), token_secret())],
    );
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Error(404, "NotFound"),
        ),
        event(NS),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let resolved = condition(status, "SecretsResolved");
    assert_eq!(resolved["reason"], "SecretNotFound");
    assert_eq!(
        resolved["message"],
        "Secret acme/meta-app not found (wanted for key app-secret)"
    );
}

fn tls_spec() -> Value {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    spec["tls"] = json!({"mode": "server"});
    spec
}

fn app_with_token() -> Value {
    secret(
        NS,
        "meta-app",
        &[("app-secret", b"s3cret"), ("verify-token", b"t")],
    )
}

/// The namespace CA as the operator made it (labelled so: a Secret of that name without
/// the labels is someone else's).
fn ca_secret(ca: &CaMaterial) -> Value {
    let mut secret = secret(
        NS,
        CA_SECRET_NAME,
        &[
            ("tls.crt", ca.cert_pem.as_bytes()),
            ("tls.key", ca.key_pem.as_bytes()),
        ],
    );
    secret["metadata"]["labels"] = json!({
        "app.kubernetes.io/managed-by": "metahook-operator",
        "app.kubernetes.io/component": "ca",
    });
    secret
}

fn tls_path() -> String {
    format!("{CORE}/secrets/wa-tls")
}

fn names() -> BTreeSet<String> {
    certs::serving_names("wa", NS, None)
}

/// The requests of a first pass with `tls.mode` on: no CA yet (created), no serving
/// certificate yet (issued, with an Event), then the workload.
fn first_tls_pass_script() -> Vec<Expect> {
    let mut script = claims(false, true, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Error(404, "NotFound"),
        ),
        create(format!("{CORE}/secrets"), Reply::Created),
        apply(tls_path(), Reply::Echo(None)),
        event(NS),
    ]);
    script.extend(tls_workload_steps());
    script
}

fn tls_workload_steps() -> Vec<Expect> {
    vec![
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 1}))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        status_step(),
        event(NS),
    ]
}

#[tokio::test]
async fn first_tls_pass_creates_the_ca_and_issues_a_certificate() {
    let sub = subscription("wa", NS, &tls_spec());
    let script = first_tls_pass_script();
    let now = test_now();
    let api = MockApi::start(script, Capabilities::default(), now);
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;

    let ca = body_of(&served, &Method::POST, &format!("{CORE}/secrets"));
    assert_eq!(ca["metadata"]["name"], CA_SECRET_NAME);
    assert!(
        ca["metadata"]["ownerReferences"].is_null(),
        "the CA is shared: no owner"
    );
    let ca = CaMaterial {
        cert_pem: String::from_utf8(secret_value(ca, "tls.crt")).expect("pem"),
        key_pem: String::from_utf8(secret_value(ca, "tls.key")).expect("pem"),
    };
    let tls = body_of(&served, &Method::PATCH, &format!("{CORE}/secrets/wa-tls"));
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(
        tls["metadata"]["annotations"][CA_FINGERPRINT_ANNOTATION],
        ca.fingerprint().expect("fingerprint")
    );
    let info = certs::inspect(&secret_value(tls, "tls.crt")).expect("a certificate");
    assert_eq!(info.dns_names, names());
    assert!(info.not_before <= now && info.not_after > now + Duration::from_secs(89 * 86400));
    assert_eq!(secret_value(tls, "ca.crt"), ca.cert_pem.as_bytes());
    assert_eq!(served[11].body["reason"], "CertificateIssued");
    let note = served[11].body["note"].as_str().expect("note");
    assert!(
        note.starts_with("issued the serving certificate in Secret acme/wa-tls; valid until "),
        "a first issue gives no reason in parentheses: {note}"
    );

    // The receiver serves it, the probes speak HTTPS, the Service port says so.
    let config_map = body_of(
        &served,
        &Method::PATCH,
        &format!("{CORE}/configmaps/wa-receiver"),
    );
    let config =
        Config::parse(config_map["data"]["config.yaml"].as_str().expect("yaml")).expect("config");
    let tls_config = config.tls.expect("tls");
    assert_eq!(
        tls_config.cert_file,
        std::path::Path::new("/etc/metahook/secrets/wa-tls/tls.crt")
    );
    assert_eq!(
        tls_config.key_file,
        std::path::Path::new("/etc/metahook/secrets/wa-tls/tls.key")
    );
    assert_eq!(config.listen.port(), 8443);
    let deployment = body_of(&served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(container["ports"][0]["name"], "https");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(status["status"]["certificate"]["secretName"], "wa-tls");
    assert_eq!(condition(status, "CertificateReady")["status"], "True");
    assert_eq!(
        status["status"]["endpoint"],
        "https://wa.acme.svc:443/webhooks/whatsapp"
    );
    // Requeued at the renewal instant (two thirds of 90 days, from five minutes ago).
    let renew_at = certs::renew_at(info.not_before, info.not_after);
    let expected = Duration::from_secs((renew_at - now).whole_seconds().unsigned_abs());
    assert_eq!(action, Action::requeue(expected.min(RESYNC)));
}

fn config_hash_in(served: &[Served]) -> String {
    let deployment = body_of(served, &Method::PATCH, &format!("{APPS}/deployments/wa"));
    deployment["spec"]["template"]["metadata"]["annotations"]["metahook.io/config-hash"]
        .as_str()
        .expect("config hash")
        .to_owned()
}

/// Found on a real API server: the pass that issues the serving certificate digested the
/// leaf alone, later passes the Secret's tls.crt (leaf and CA), so every new subscription
/// with an operator-issued certificate rolled its pods a second time.
#[tokio::test]
async fn the_pass_after_issuing_a_certificate_keeps_the_config_hash() {
    let now = test_now();
    let script = first_tls_pass_script();
    let api = MockApi::start(script, Capabilities::default(), now);
    controller::reconcile(
        Arc::new(subscription("wa", NS, &tls_spec())),
        api.ctx.clone(),
    )
    .await
    .expect("first pass");
    let first = api.finish().await;
    let ca = body_of(&first, &Method::POST, &format!("{CORE}/secrets")).clone();
    let tls = body_of(&first, &Method::PATCH, &format!("{CORE}/secrets/wa-tls")).clone();

    // The next pass reads back what the first one wrote, and keeps it.
    let mut script = claims(false, true, &[(tls_path(), owned(tls))]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Object(ca),
        ),
    ]);
    script.extend(tls_workload_steps());
    let api = MockApi::start(
        script,
        Capabilities::default(),
        now + Duration::from_secs(5),
    );
    controller::reconcile(
        Arc::new(subscription("wa", NS, &tls_spec())),
        api.ctx.clone(),
    )
    .await
    .expect("second pass");
    let second = api.finish().await;
    assert_eq!(
        config_hash_in(&first),
        config_hash_in(&second),
        "the pod template must not change when nothing did"
    );
}

fn existing_tls(ca: &CaMaterial, issued_at: time::OffsetDateTime) -> Value {
    let cert = ca
        .issue(&names(), issued_at, Duration::from_secs(90 * 86400))
        .expect("issue");
    let mut secret = secret(
        NS,
        "wa-tls",
        &[
            (
                "tls.crt",
                format!("{}{}", cert.cert_pem, cert.ca_pem).as_bytes(),
            ),
            ("tls.key", cert.key_pem.as_bytes()),
            ("ca.crt", cert.ca_pem.as_bytes()),
        ],
    );
    secret["metadata"]["annotations"] =
        json!({ CA_FINGERPRINT_ANNOTATION: ca.fingerprint().expect("fingerprint") });
    secret
}

/// A TLS pass where the namespace CA is `ca` and `wa-tls` holds `existing`, which the
/// operator is expected to re-issue (with an Event); returns the requests served.
async fn reissuing_pass(
    ca: &CaMaterial,
    existing: Value,
    now: time::OffsetDateTime,
) -> Vec<Served> {
    let sub = subscription("wa", NS, &tls_spec());
    let mut script = claims(false, true, &[(tls_path(), owned(existing))]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Object(ca_secret(ca)),
        ),
        apply(tls_path(), Reply::Echo(None)),
        event(NS),
    ]);
    script.extend(tls_workload_steps());
    let api = MockApi::start(script, Capabilities::default(), now);
    controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    api.finish().await
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_reissued_with_an_event() {
    let issued_at = test_now();
    let ca = CaMaterial::generate(NS, issued_at).expect("ca");
    let now = issued_at + Duration::from_secs(61 * 86400);
    let served = reissuing_pass(&ca, existing_tls(&ca, issued_at), now).await;
    let renewed = &served[10].body;
    assert_eq!(renewed["reason"], "CertificateRenewed");
    assert!(
        renewed["note"]
            .as_str()
            .is_some_and(|n| n.contains("two thirds of its lifetime passed")),
        "{renewed}"
    );
    let tls = body_of(&served, &Method::PATCH, &format!("{CORE}/secrets/wa-tls"));
    let info = certs::inspect(&secret_value(tls, "tls.crt")).expect("certificate");
    assert!(
        info.not_before > issued_at + Duration::from_secs(60 * 86400),
        "a new certificate"
    );
}

#[tokio::test]
async fn a_valid_certificate_is_kept_and_requeued_at_its_renewal() {
    let issued_at = test_now();
    let ca = CaMaterial::generate(NS, issued_at).expect("ca");
    // Five minutes before the renewal instant: kept, and requeued for that instant
    // rather than the ten-minute resync.
    let now = issued_at + Duration::from_secs(60 * 86400 - 400);
    let sub = subscription("wa", NS, &tls_spec());
    let existing = existing_tls(&ca, issued_at);
    let info = certs::inspect(&secret_value(&existing, "tls.crt")).expect("certificate");
    let mut script = claims(false, true, &[(tls_path(), owned(existing))]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Object(ca_secret(&ca)),
        ),
    ]);
    script.extend(tls_workload_steps());
    let api = MockApi::start(script, Capabilities::default(), now);
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    api.finish().await;
    let renew_at = certs::renew_at(info.not_before, info.not_after);
    let expected = Duration::from_secs((renew_at - now).whole_seconds().unsigned_abs());
    assert!(expected < RESYNC);
    assert_eq!(action, Action::requeue(expected));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_reissued() {
    let issued_at = test_now();
    let old_ca = CaMaterial::generate(NS, issued_at).expect("ca");
    let ca = CaMaterial::generate(NS, issued_at).expect("ca");
    let served = reissuing_pass(&ca, existing_tls(&old_ca, issued_at), issued_at).await;
    assert!(
        served[10].body["note"]
            .as_str()
            .is_some_and(|n| n.contains("issued by another CA"))
    );
}

#[tokio::test]
async fn a_ca_created_concurrently_is_read_back() {
    let now = test_now();
    let ca = CaMaterial::generate(NS, now).expect("ca");
    let sub = subscription("wa", NS, &tls_spec());
    let mut script = claims(false, true, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Error(404, "NotFound"),
        ),
        create(
            format!("{CORE}/secrets"),
            Reply::Error(409, "AlreadyExists"),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Object(ca_secret(&ca)),
        ),
        apply(tls_path(), Reply::Echo(None)),
        event(NS),
    ]);
    script.extend(tls_workload_steps());
    let api = MockApi::start(script, Capabilities::default(), now);
    controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;
    let tls = body_of(&served, &Method::PATCH, &format!("{CORE}/secrets/wa-tls"));
    assert_eq!(
        tls["metadata"]["annotations"][CA_FINGERPRINT_ANNOTATION],
        ca.fingerprint().expect("fingerprint"),
        "signed by the CA the other writer created"
    );
}

/// The subscription as the API server returns it once deleted (with a finalizer left).
fn being_deleted(finalizers: &[&str]) -> metahook_operator::WebhookSubscription {
    let mut sub = subscription("wa", NS, &whatsapp_spec());
    sub.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        test_now_timestamp(),
    ));
    if !finalizers.is_empty() {
        sub.metadata.finalizers = Some(finalizers.iter().map(|&f| f.to_owned()).collect());
    }
    sub
}

#[tokio::test]
async fn deletion_is_left_to_the_garbage_collector() {
    let sub = being_deleted(&[]);
    let api = MockApi::start(vec![], Capabilities::default(), test_now());
    let graph = api.graph.clone();
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    assert!(api.finish().await.is_empty(), "no request while deleting");
    assert!(
        graph.calls().is_empty(),
        "no Graph call without the finalizer"
    );
}

#[tokio::test]
async fn a_pass_without_registration_makes_no_graph_call_and_adds_no_finalizer() {
    let sub = subscription("wa", NS, &whatsapp_spec());
    assert!(registration::requested(&sub).is_none());
    let script = existing_token_pass();
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let graph = api.graph.clone();
    controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;
    assert!(graph.calls().is_empty(), "Graph calls: {:?}", graph.calls());
    assert!(
        served
            .iter()
            .all(|s| s.body["metadata"].get("finalizers").is_none()),
        "no finalizer is added"
    );
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert!(status["status"].get("registration").is_none());
    assert!(
        status["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["type"] != "Registered"))
    );
}

const CALLBACK: &str = "https://hooks.example.com/webhooks/whatsapp";

/// A WhatsApp subscription registering the app and one WABA with a callback override.
fn registering_spec() -> Value {
    let mut spec = whatsapp_spec();
    spec["registration"] = json!({
        "appId": "1234",
        "callbackURL": CALLBACK,
        "whatsappBusinessAccounts": [{
            "id": "5550001",
            "accessTokenRef": {"name": "wa-system-user", "key": "token"},
            "overrideCallback": true,
        }],
    });
    spec
}

/// The requests of a pass of [`registering_spec`] up to the workload.
fn registering_pass_until_workload(ready_replicas: i32) -> Vec<Expect> {
    let mut script = claims(
        true,
        false,
        &[(format!("{CORE}/secrets/wa-verify-token"), token_secret())],
    );
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_secret()),
        ),
        get(
            format!("{CORE}/secrets/wa-system-user"),
            Reply::Object(secret(NS, "wa-system-user", &[("token", b"su-token")])),
        ),
    ]);
    script.extend(workload_steps(ready_replicas));
    script
}

/// Reconciles subscription `wa` of `spec` once, against a ready receiver (the script of
/// [`registering_pass_with_ready_receiver`]); returns what the mock API served and the
/// Graph API client that recorded the calls.
async fn reconcile_registering(spec: &Value) -> (Vec<Served>, Arc<RecordingGraph>) {
    let sub = subscription("wa", NS, spec);
    let script = registering_pass_with_ready_receiver(spec);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let graph = api.graph.clone();
    controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    (api.finish().await, graph)
}

/// A registering pass with a ready receiver: up to the workload, then the finalizer's
/// patch, an Event, the status and an Event.
fn registering_pass_with_ready_receiver(spec: &Value) -> Vec<Expect> {
    let mut script = registering_pass_until_workload(1);
    script.push(apply(format!("{SUBS}/wa"), Reply::Onto(stored(spec))));
    script.push(event(NS));
    script.push(apply(
        format!("{SUBS}/wa/status"),
        Reply::Onto(stored(spec)),
    ));
    script.push(event(NS));
    script
}

fn stored(spec: &Value) -> Value {
    serde_json::to_value(subscription("wa", NS, spec)).expect("json")
}

#[tokio::test]
async fn registration_waits_for_a_ready_receiver() {
    let spec = registering_spec();
    let sub = subscription("wa", NS, &spec);
    let mut script = registering_pass_until_workload(0);
    script.push(apply(
        format!("{SUBS}/wa/status"),
        Reply::Onto(stored(&spec)),
    ));
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let graph = api.graph.clone();
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(controller::WAIT_FOR_RECEIVER));
    let served = api.finish().await;
    assert!(graph.calls().is_empty(), "{:?}", graph.calls());
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let registered = condition(status, "Registered");
    assert_eq!(registered["status"], "False");
    assert_eq!(registered["reason"], "WaitingForReceiver");
}

#[tokio::test]
async fn a_ready_receiver_is_registered_behind_the_finalizer() {
    let spec = registering_spec();
    let (served, graph) = reconcile_registering(&spec).await;
    assert_eq!(
        graph.calls(),
        [
            "GET /1234/subscriptions".to_owned(),
            format!(
                "POST /1234/subscriptions object=whatsapp_business_account fields=message_template_status_update,messages callback_url={CALLBACK}"
            ),
            "GET /5550001/subscribed_apps".to_owned(),
            format!("POST /5550001/subscribed_apps override={CALLBACK}"),
        ]
    );
    let finalizer = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa"));
    assert_eq!(
        finalizer["metadata"]["finalizers"],
        json!([registration::FINALIZER])
    );
    // The finalizer goes on before the first Graph call: the Event follows it.
    assert_eq!(served[15].body["reason"], "Registered");
    let note = served[15].body["note"].as_str().expect("note");
    assert!(note.contains("subscribed app 1234 to whatsapp_business_account fields message_template_status_update,messages"), "{note}");
    assert!(
        note.contains("WABA 5550001 with callback override"),
        "{note}"
    );
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let registration = &status["status"]["registration"];
    assert_eq!(registration["appId"], "1234");
    assert_eq!(registration["callbackURL"], CALLBACK);
    assert_eq!(
        registration["registeredFields"],
        json!(["message_template_status_update", "messages"])
    );
    assert_eq!(
        registration["verifyTokenDigest"],
        registration::token_digest("1234|s3cret", "existing-token")
    );
    assert_eq!(
        registration["whatsappBusinessAccounts"],
        json!([{"id": "5550001", "accessTokenRef": {"name": "wa-system-user", "key": "token"}, "overrideCallbackURL": CALLBACK}])
    );
    assert_eq!(registration["lastRegisteredTime"], "2026-09-21T14:13:20Z");
    assert!(registration.get("lastError").is_none());
    let registered = condition(status, "Registered");
    assert_eq!(registered["status"], "True");
    assert_eq!(
        registered["message"],
        format!(
            "app 1234 receives whatsapp_business_account fields message_template_status_update,messages at {CALLBACK}; WABA 5550001 overridden to {CALLBACK}"
        )
    );
}

/// [`registering_spec`] with a phone number of the WABA given its own callback override.
fn registering_spec_with_phone() -> Value {
    let mut spec = registering_spec();
    spec["registration"]["whatsappBusinessAccounts"][0]["phoneNumbers"] =
        json!([{"id": "7770001"}]);
    spec
}

#[tokio::test]
async fn a_phone_number_override_is_set_after_its_waba_and_recorded() {
    let spec = registering_spec_with_phone();
    let (served, graph) = reconcile_registering(&spec).await;
    assert_eq!(
        graph.calls()[2..],
        [
            "GET /5550001/subscribed_apps".to_owned(),
            format!("POST /5550001/subscribed_apps override={CALLBACK}"),
            "GET /7770001 fields=webhook_configuration".to_owned(),
            format!("POST /7770001 override={CALLBACK}"),
        ]
    );
    let note = served[15].body["note"].as_str().expect("note");
    assert!(
        note.contains(&format!(
            "set the callback override of phone number 7770001 (WABA 5550001) to {CALLBACK}"
        )),
        "{note}"
    );
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        status["status"]["registration"]["whatsappBusinessAccounts"],
        json!([{
            "id": "5550001",
            "accessTokenRef": {"name": "wa-system-user", "key": "token"},
            "overrideCallbackURL": CALLBACK,
            "phoneNumbers": [{"id": "7770001", "overrideCallbackURL": CALLBACK}],
        }])
    );
    let message = condition(status, "Registered")["message"]
        .as_str()
        .expect("message");
    assert!(
        message.ends_with("; phone numbers 7770001 of WABA 5550001 overridden to their callback"),
        "{message}"
    );
}

fn graph_error() -> metahook_operator::graph::GraphError {
    metahook_operator::graph::GraphError {
        call: "POST /1234/subscriptions".to_owned(),
        status: Some(400),
        message: "(#2200) callback verification failed: HTTP Status Code = 403".to_owned(),
        meta: Some(Box::new(metahook_operator::graph::MetaErrorFields {
            kind: Some("OAuthException".to_owned()),
            code: Some(2200),
            subcode: None,
            fbtrace_id: Some("AbC123".to_owned()),
        })),
        regain_access: None,
    }
}

#[tokio::test]
async fn a_graph_error_is_reported_with_metas_message_and_fails_the_pass() {
    let spec = registering_spec();
    let sub = subscription("wa", NS, &spec);
    let script = registering_pass_with_ready_receiver(&spec);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    *api.graph.fail.lock().expect("lock") = Some(graph_error());
    let error = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect_err("the pass fails");
    assert_eq!(error.metric_label(), "graph_api");
    let served = api.finish().await;
    assert_eq!(served[15].body["reason"], "RegistrationFailed");
    // Meta's per-request trace id goes to the Event (what Meta's support asks for)...
    let note = served[15].body["note"].as_str().expect("note");
    assert!(note.contains("fbtrace_id AbC123"), "{note}");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let registered = condition(status, "Registered");
    assert_eq!(registered["status"], "False");
    assert_eq!(registered["reason"], "GraphAPIError");
    let message = registered["message"].as_str().expect("message");
    // ...never to the status, which would change with every failed call.
    assert_eq!(
        message,
        "POST /1234/subscriptions: HTTP 400: (#2200) callback verification failed: HTTP Status Code = 403 (type OAuthException, code 2200)"
    );
    assert_eq!(status["status"]["registration"]["lastError"], message);
    // Ready is about the receiver: still True.
    assert_eq!(condition(status, "Ready")["status"], "True");
}

/// A subscription being deleted whose status records a registration.
fn registered_being_deleted() -> metahook_operator::WebhookSubscription {
    let mut sub = being_deleted(&[registration::FINALIZER]);
    sub.spec = serde_json::from_value(registering_spec()).expect("spec");
    sub.status = Some(
        serde_json::from_value(json!({
            "registration": {
                "appId": "1234",
                "object": "whatsapp_business_account",
                "registeredFields": ["messages"],
                "appSecretRef": {"name": "meta-app", "key": "app-secret"},
                "whatsappBusinessAccounts": [{"id": "5550001", "accessTokenRef": {"name": "wa-system-user", "key": "token"}}],
            },
            "conditions": [],
        }))
        .expect("status"),
    );
    sub
}

fn deletion_reads() -> Vec<Expect> {
    vec![
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_secret()),
        ),
        get(
            format!("{CORE}/secrets/wa-system-user"),
            Reply::Object(secret(NS, "wa-system-user", &[("token", b"su-token")])),
        ),
    ]
}

/// A deletion pass of `sub` as the API server sees it: the token reads, the Event, the
/// finalizer's removal.
fn deletion_script(sub: &metahook_operator::WebhookSubscription) -> Vec<Expect> {
    let stored = serde_json::to_value(sub).expect("json");
    let mut script = deletion_reads();
    script.push(event(NS));
    script.push(apply(format!("{SUBS}/wa"), Reply::Onto(stored)));
    script
}

/// The mock API for a deletion pass of `sub` ([`deletion_script`]), with WABA 5550001
/// subscribed to the app on the Graph API side.
fn start_deletion(sub: &metahook_operator::WebhookSubscription) -> MockApi {
    let api = MockApi::start(deletion_script(sub), Capabilities::default(), test_now());
    api.graph.nodes.lock().expect("lock").insert(
        "5550001".to_owned(),
        metahook_operator::graph::SubscribedApp {
            app_id: "1234".to_owned(),
            subscribed_fields: vec![],
            override_callback_uri: None,
        },
    );
    api
}

/// Runs a deletion pass that ends with the finalizer removed (waiting for no change
/// after); what the mock API served.
async fn run_deletion(sub: metahook_operator::WebhookSubscription, api: MockApi) -> Vec<Served> {
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    let served = api.finish().await;
    let patch = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa"));
    assert_eq!(
        patch["metadata"]["finalizers"],
        json!([]),
        "finalizer removed"
    );
    served
}

#[tokio::test]
async fn deletion_with_the_registration_finalizer_unregisters_then_removes_it() {
    let sub = registered_being_deleted();
    let api = start_deletion(&sub);
    let graph = api.graph.clone();
    graph.app.lock().expect("lock").insert(
        "whatsapp_business_account".to_owned(),
        (
            CALLBACK.to_owned(),
            vec!["messages".to_owned(), "account_update".to_owned()],
        ),
    );
    let served = run_deletion(sub, api).await;
    assert_eq!(
        graph.calls(),
        [
            "GET /5550001/subscribed_apps",
            "DELETE /5550001/subscribed_apps",
            "GET /1234/subscriptions",
            "DELETE /1234/subscriptions object=whatsapp_business_account fields=messages",
        ]
    );
    assert_eq!(
        graph.app.lock().expect("lock")["whatsapp_business_account"].1,
        ["account_update"],
        "a field the operator did not register stays"
    );
    assert_eq!(served[2].body["reason"], "Unregistered");
}

#[tokio::test]
async fn deletion_removes_the_phone_overrides_it_set_before_the_waba_edge() {
    let mut sub = registered_being_deleted();
    // Both recorded as set by this subscription; someone has since pointed 7770002
    // elsewhere.
    if let Some(registration) = sub.status.as_mut().and_then(|s| s.registration.as_mut()) {
        registration.whatsapp_business_accounts[0].phone_numbers = ["7770001", "7770002"]
            .into_iter()
            .map(|id| metahook_operator::crd::RegisteredPhoneNumber {
                id: id.to_owned(),
                override_callback_url: CALLBACK.to_owned(),
            })
            .collect();
    }
    let api = start_deletion(&sub);
    let graph = api.graph.clone();
    {
        let mut phones = graph.phones.lock().expect("lock");
        phones.insert("7770001".to_owned(), CALLBACK.to_owned());
        phones.insert(
            "7770002".to_owned(),
            "https://elsewhere.example/x".to_owned(),
        );
    }
    let served = run_deletion(sub, api).await;
    assert_eq!(
        graph.calls(),
        [
            "GET /7770001 fields=webhook_configuration",
            "POST /7770001 override=none",
            "GET /7770002 fields=webhook_configuration",
            "GET /5550001/subscribed_apps",
            "DELETE /5550001/subscribed_apps",
            "GET /1234/subscriptions",
        ]
    );
    assert_eq!(
        graph
            .phones
            .lock()
            .expect("lock")
            .get("7770002")
            .map(String::as_str),
        Some("https://elsewhere.example/x"),
        "an override someone else set stays"
    );
    let note = served[2].body["note"].as_str().expect("note");
    assert!(
        note.contains("removed the callback override of phone number 7770001 (WABA 5550001)")
            && note.contains("left the callback override of phone number 7770002 (WABA 5550001) alone: Meta holds https://elsewhere.example/x"),
        "{note}"
    );
}

#[tokio::test]
async fn an_unreachable_graph_api_within_the_bound_keeps_the_finalizer() {
    let sub = registered_being_deleted();
    let mut script = deletion_reads();
    script.push(event(NS));
    let api = MockApi::start(
        script,
        Capabilities::default(),
        test_now() + time::Duration::seconds(10),
    );
    *api.graph.fail.lock().expect("lock") = Some(metahook_operator::graph::GraphError::transport(
        "GET /5550001/subscribed_apps",
        "error sending request: connection refused",
    ));
    let error = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect_err("retried later");
    assert_eq!(error.metric_label(), "graph_api");
    let served = api.finish().await;
    assert_eq!(served[2].body["reason"], "UnregistrationFailed");
    assert!(
        served.iter().all(|s| s.method != Method::PATCH),
        "finalizer kept"
    );
}

#[tokio::test]
async fn past_the_bound_the_finalizer_gives_up_with_an_event_naming_what_was_left() {
    let sub = registered_being_deleted();
    let late = test_now() + time::Duration::seconds(UNREGISTER_TIMEOUT.as_secs() as i64 + 1);
    // A real client of a Graph API that is not there: a port just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let unreachable =
        metahook_operator::graph::GraphClient::new(metahook_operator::graph::GraphSettings {
            base_url: format!("http://{closed}"),
            instagram_base_url: format!("http://{closed}"),
            api_version: "v23.0".to_owned(),
            timeout: Duration::from_secs(2),
            max_attempts: 2,
            retry_backoff: Duration::from_millis(10),
        })
        .expect("client");
    let api = MockApi::start_with_graph(
        deletion_script(&sub),
        Capabilities::default(),
        late,
        Some(Arc::new(unreachable)),
    );
    let served = run_deletion(sub, api).await;
    assert_eq!(served[2].body["reason"], "UnregistrationAbandoned");
    assert_eq!(served[2].body["type"], "Warning");
    let note = served[2].body["note"].as_str().expect("note");
    assert!(
        note.contains("left at Meta: app 1234 subscription to whatsapp_business_account fields messages; subscribed_apps of WABA 5550001")
            && note.contains("GET /5550001/subscribed_apps: error sending request: client error (Connect)")
            && !note.contains("appsecret_proof")
            && !note.contains(&closed.to_string()),
        "{note}"
    );
}

#[tokio::test]
async fn persistent_spool_replicas_and_monitoring_where_the_cluster_serves_them() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    spec["delivery"]["spool"] = json!({"size": "2Gi", "storageClassName": "fast"});
    spec["receiver"] = json!({"replicas": 2});
    spec["monitoring"] = json!({"serviceMonitor": true});
    spec["ingress"] =
        json!({"host": "hooks.example.com", "className": "nginx", "tlsSecretName": "hooks-public"});
    let sub = subscription("wa", NS, &spec);
    // The policy step lists the Ingresses (the host must be free); step 0 reaches the
    // kinds the cluster serves too.
    let mut script = vec![ingresses_listed(NS, &[])];
    script.extend(claims(false, false, &[]));
    script.extend([
        get(
            "/apis/monitoring.coreos.com/v1/namespaces/acme/servicemonitors/wa",
            Reply::Error(404, "NotFound"),
        ),
        get(
            "/apis/policy/v1beta1/namespaces/acme/poddisruptionbudgets/wa",
            Reply::Error(404, "NotFound"),
        ),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 2, "readyReplicas": 2}))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        apply(format!("{NET}/ingresses/wa"), Reply::Echo(None)),
        apply(
            "/apis/monitoring.coreos.com/v1/namespaces/acme/servicemonitors/wa",
            Reply::Echo(None),
        ),
        apply(
            "/apis/policy/v1beta1/namespaces/acme/poddisruptionbudgets/wa",
            Reply::Echo(None),
        ),
        status_step(),
        event(NS),
    ]);
    let capabilities = Capabilities {
        service_monitor: true,
        pdb: Some(PdbVersion::V1beta1),
        ..Capabilities::default()
    };
    let api = MockApi::start(script, capabilities, test_now());
    controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("reconcile");
    let served = api.finish().await;
    let stateful_set = body_of(&served, &Method::PATCH, &format!("{APPS}/statefulsets/wa"));
    let claim = &stateful_set["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "data");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(claim["spec"]["storageClassName"], "fast");
    assert_eq!(stateful_set["spec"]["replicas"], 2);
    let monitor = body_of(
        &served,
        &Method::PATCH,
        "/apis/monitoring.coreos.com/v1/namespaces/acme/servicemonitors/wa",
    );
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let pdb = body_of(
        &served,
        &Method::PATCH,
        "/apis/policy/v1beta1/namespaces/acme/poddisruptionbudgets/wa",
    );
    assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        status["status"]["endpoint"],
        "https://hooks.example.com/webhooks/whatsapp"
    );
    assert_eq!(
        status["status"]["receiver"],
        json!({"replicas": 2, "readyReplicas": 2})
    );
}

#[tokio::test]
async fn sidecar_mode_prepares_configuration_but_runs_nothing() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    spec["receiver"] = json!({"mode": "sidecar"});
    spec["delivery"]
        .as_object_mut()
        .expect("delivery")
        .remove("spool");
    let sub = subscription("wa", NS, &spec);
    // Nothing at the workload's names: nothing to delete.
    let mut script = claims(false, false, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        // Claims an earlier StatefulSet left would be drained.
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        status_step(),
        event(NS),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(condition(status, "ReceiverAvailable")["reason"], "Sidecar");
    assert_eq!(status["status"]["spool"]["mode"], "sidecar");
    assert!(status["status"]["endpoint"].is_null());
}

#[tokio::test]
async fn api_errors_fail_the_pass_and_back_off() {
    let sub = Arc::new(subscription("wa", NS, &whatsapp_spec()));
    let script = vec![get(
        format!("{CORE}/configmaps/wa-receiver"),
        Reply::Error(500, "InternalError"),
    )];
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let err = controller::reconcile(sub.clone(), api.ctx.clone())
        .await
        .expect_err("a 500 fails the pass");
    assert_eq!(err.metric_label(), "kube_api");
    assert!(
        err.to_string().contains("get ConfigMap acme/wa-receiver"),
        "{err}"
    );
    let first = controller::error_policy(sub.clone(), &err, api.ctx.clone());
    let second = controller::error_policy(sub.clone(), &err, api.ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    let metrics = api.ctx.metrics.render();
    assert!(
        metrics.contains("metahook_operator_reconcile_errors_total{reason=\"kube_api\"} 1"),
        "{metrics}"
    );
    api.finish().await;
    assert_eq!(controller::backoff(20), Duration::from_secs(300));
}

#[tokio::test]
async fn a_deleted_subscriptions_failures_are_forgotten() {
    use kube::runtime::reflector::ObjectRef;
    use metahook_operator::error::Error;

    let sub = Arc::new(subscription("wa", NS, &whatsapp_spec()));
    let key = ObjectRef::from_obj(sub.as_ref());
    let api = MockApi::start(Vec::new(), Capabilities::default(), test_now());
    let err = Error::Incomplete("failing".to_owned());
    controller::error_policy(sub.clone(), &err, api.ctx.clone());
    controller::error_policy(sub.clone(), &err, api.ctx.clone());
    assert_eq!(api.ctx.failures_of(&key), 2);
    // The controller found it gone when its requeue came due (kube's ObjectNotFound).
    api.ctx.forget_gone(&key.clone().erase());
    assert_eq!(api.ctx.failures_of(&key), 0);
    let after = controller::error_policy(sub.clone(), &err, api.ctx.clone());
    assert_eq!(
        after,
        Action::requeue(Duration::from_secs(5)),
        "starts over"
    );
    // The sweep over the watch's store, for any deletion missed.
    api.ctx.forget_deleted(|_| false);
    assert_eq!(api.ctx.failures_of(&key), 0);
    api.finish().await;
}

#[tokio::test]
async fn mutual_tls_at_the_ingress_needs_the_ca_under_ca_crt() {
    let mut spec = tls_spec();
    spec["tls"] =
        json!({"mode": "mutual", "clientCARef": {"name": "meta-client-ca", "key": "meta.pem"}});
    spec["ingress"] = json!({
        "host": "hooks.example.com",
        "tlsTermination": "ingress",
        "trustedProxyCIDRs": ["10.0.0.0/8"],
    });
    let sub = subscription("wa", NS, &spec);
    let mut script = vec![ingresses_listed(NS, &[])];
    script.extend(claims(false, true, &[]));
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/meta-client-ca"),
            Reply::Object(secret(NS, "meta-client-ca", &[("meta.pem", b"PEM")])),
        ),
        event(NS),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(
        condition(status, "SecretsResolved")["message"],
        "Secret acme/meta-client-ca has no key ca.crt"
    );
}

#[tokio::test]
async fn a_user_certificate_that_is_not_one_is_reported_and_nothing_is_applied() {
    let mut spec = tls_spec();
    spec["tls"]["secretRef"] = json!({"name": "hooks-tls"});
    let sub = subscription("wa", NS, &spec);
    // The user's certificate is theirs: step 0 does not claim it.
    let mut script = claims(false, false, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/hooks-tls"),
            Reply::Object(secret(
                NS,
                "hooks-tls",
                &[("tls.crt", b"not a certificate"), ("tls.key", b"key")],
            )),
        ),
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        event(NS),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    assert_eq!(served[8].body["reason"], "CertificateInvalid");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let certificate = condition(status, "CertificateReady");
    assert_eq!(certificate["status"], "False");
    assert!(
        certificate["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Secret acme/hooks-tls key tls.crt:")),
        "{certificate}"
    );
    assert_eq!(
        condition(status, "Ready")["reason"],
        "CertificateReadyFalse"
    );
}

// Ownership: the operator touches only what is absent or the subscription's own.

/// A pass refused at step 0: the Warning Event, then the status; nothing else.
async fn refused_pass(
    spec: &Value,
    found: &[(String, Value)],
    token: bool,
    tls: bool,
) -> Vec<Served> {
    let sub = subscription("wa", NS, spec);
    let mut script = claims(token, tls, found);
    script.extend([event(NS), status_step()]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("a refusal is not a failure");
    assert_eq!(action, Action::requeue(controller::REFUSED_RETRY));
    api.finish().await
}

fn sidecar_spec() -> Value {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    spec["receiver"] = json!({"mode": "sidecar"});
    spec["delivery"]
        .as_object_mut()
        .expect("delivery")
        .remove("spool");
    spec
}

/// The issue's first finding: a sidecar subscription named after a team's Deployment and
/// Service deleted both. Now they are someone else's: nothing is written or deleted.
#[tokio::test]
async fn a_sidecar_named_after_a_teams_deployment_and_service_touches_neither() {
    let deployment = object_at("apps/v1", "Deployment", "wa");
    let service = object_at("v1", "Service", "wa");
    let served = refused_pass(
        &sidecar_spec(),
        &[
            (format!("{APPS}/deployments/wa"), deployment),
            (format!("{CORE}/services/wa"), service),
        ],
        false,
        false,
    )
    .await;
    let writes: Vec<String> = served
        .iter()
        .filter(|s| s.method != Method::GET && !s.path.contains("/events"))
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        writes,
        [format!("PATCH {SUBS}/wa/status")],
        "only the status is written"
    );
    let expected = "Deployment acme/wa exists and is not made by this subscription: the \
        subscription changes nothing until it is renamed or removed, or annotated \
        metahook.io/adopt=wa to let the operator take it over (and delete it with the \
        subscription); Service acme/wa exists and is not made by this subscription: the \
        subscription changes nothing until it is renamed or removed, or annotated \
        metahook.io/adopt=wa to let the operator take it over (and delete it with the \
        subscription)";
    let warning = &served[served.len() - 2].body;
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "Conflict");
    assert_eq!(warning["note"], expected);
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "Conflict");
    assert_eq!(ready["message"], expected);
}

/// A team's own certificate under the name the operator would issue into: not overwritten.
#[tokio::test]
async fn a_teams_secret_at_the_serving_certificates_name_is_a_conflict() {
    let mut team = secret(
        NS,
        "wa-tls",
        &[("tls.crt", b"theirs"), ("tls.key", b"theirs")],
    );
    team["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "name": "wa",
        "uid": "cert-uid", "controller": true,
    }]);
    let served = refused_pass(&tls_spec(), &[(tls_path(), team)], false, true).await;
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let message = condition(status, "Ready")["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.starts_with("Secret acme/wa-tls exists and is controlled by Certificate wa:"),
        "{message}"
    );
}

/// An object left by an earlier subscription of the same name (deleted and made again: a
/// new uid) is not the new one's.
#[tokio::test]
async fn an_object_of_an_earlier_subscription_of_the_same_name_is_a_conflict() {
    let mut earlier = owned(object_at("v1", "ConfigMap", "wa-receiver"));
    earlier["metadata"]["ownerReferences"][0]["uid"] = json!("an-earlier-uid");
    let served = refused_pass(
        &sidecar_spec(),
        &[(format!("{CORE}/configmaps/wa-receiver"), earlier)],
        false,
        false,
    )
    .await;
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert!(
        condition(status, "Ready")["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(
                "ConfigMap acme/wa-receiver exists and is controlled by WebhookSubscription wa:"
            )),
        "{status}"
    );
}

/// A refusal writes Ready only: the other conditions stay as the last complete pass left
/// them, and the endpoint stays in the status.
#[tokio::test]
async fn a_refusal_keeps_the_other_conditions() {
    let mut sub = subscription("wa", NS, &sidecar_spec());
    sub.status = Some(
        serde_json::from_value(json!({
            "endpoint": "http://wa.acme.svc:80/webhooks/whatsapp",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                 "lastTransitionTime": "2026-09-21T00:00:00Z"},
                {"type": "SecretsResolved", "status": "True", "reason": "Resolved",
                 "message": "every referenced Secret key exists",
                 "lastTransitionTime": "2026-09-21T00:00:00Z"},
            ],
        }))
        .expect("status"),
    );
    let mut script = claims(
        false,
        false,
        &[(
            format!("{CORE}/services/wa"),
            object_at("v1", "Service", "wa"),
        )],
    );
    script.extend([event(NS), status_step()]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("refused");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(condition(status, "Ready")["reason"], "Conflict");
    assert_eq!(
        condition(status, "Ready")["lastTransitionTime"],
        "2026-09-21T14:13:20Z",
        "Ready changed now"
    );
    let secrets = condition(status, "SecretsResolved");
    assert_eq!(secrets["status"], "True");
    assert_eq!(secrets["lastTransitionTime"], "2026-09-21T00:00:00Z");
    assert_eq!(
        status["status"]["endpoint"],
        "http://wa.acme.svc:80/webhooks/whatsapp"
    );
}

/// The way out the conflict names: annotated for adoption by this subscription, the
/// team's Service is taken over with a forced apply under its uid, and said so.
#[tokio::test]
async fn an_object_annotated_for_adoption_is_taken_over_with_an_event() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut service = object_at("v1", "Service", "wa");
    service["metadata"]["uid"] = json!("team-service-uid");
    service["metadata"]["annotations"] = json!({"metahook.io/adopt": "wa"});
    let mut script = claims(false, false, &[(format!("{CORE}/services/wa"), service)]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 0}))),
        ),
        adopt(format!("{CORE}/services/wa"), Reply::Echo(None)),
        event(NS),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let applied = body_of(&served, &Method::PATCH, &format!("{CORE}/services/wa"));
    assert_eq!(applied["metadata"]["uid"], "team-service-uid");
    assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], SUB_UID);
    let adopted = &served[served.len() - 4].body;
    assert_eq!(adopted["reason"], "Adopted");
    assert_eq!(
        adopted["note"],
        "took over Service acme/wa as its metahook.io/adopt annotation allows; it is now deleted with the subscription"
    );
}

/// An apply without force that meets a field another manager owns (a `kubectl edit` of
/// the subscription's Deployment) overwrites nothing: the pass ends as a Conflict naming
/// the field and the manager, as the API server words it.
#[tokio::test]
async fn a_field_another_manager_owns_is_a_conflict_not_overwritten() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut script = claims(
        false,
        false,
        &[(
            format!("{APPS}/deployments/wa"),
            owned(object_at("apps/v1", "Deployment", "wa")),
        )],
    );
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/deployments/wa"),
            Reply::Error(409, "Conflict"),
        ),
        event(NS),
        status_step(),
    ]);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    let action = controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect("refused");
    assert_eq!(action, Action::requeue(controller::REFUSED_RETRY));
    let served = api.finish().await;
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(condition(status, "Ready")["reason"], "Conflict");
    assert_eq!(
        condition(status, "Ready")["message"],
        format!("Deployment acme/wa: {APPS}/deployments/wa: Conflict")
    );
}

/// A Secret named like the namespace CA that the operator did not make would sign every
/// receiver's certificate with someone else's key: a conflict, nothing issued.
#[tokio::test]
async fn a_foreign_secret_at_the_cas_name_is_a_conflict() {
    let sub = subscription("wa", NS, &tls_spec());
    let mut script = claims(false, true, &[]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        get(
            format!("{CORE}/secrets/{CA_SECRET_NAME}"),
            Reply::Object(secret(
                NS,
                CA_SECRET_NAME,
                &[("tls.crt", b"x"), ("tls.key", b"y")],
            )),
        ),
        event(NS),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("refused");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    assert_eq!(condition(status, "Ready")["reason"], "Conflict");
    assert!(
        condition(status, "Ready")["message"]
            .as_str()
            .is_some_and(|m| m
                .starts_with("Secret acme/metahook-ca exists and was not made by the operator")),
        "{status}"
    );
}

/// Switching from a Deployment to a StatefulSet deletes the subscription's Deployment,
/// under its uid; a Deployment annotated for adoption but not yet adopted is not the
/// subscription's, so it is never deleted.
#[tokio::test]
async fn an_unwanted_object_is_deleted_only_when_it_is_the_subscriptions() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    spec["delivery"]["spool"] = json!({"size": "1Gi"});
    let sub = subscription("wa", NS, &spec);
    let mut adoptable = object_at("apps/v1", "Deployment", "wa");
    adoptable["metadata"]["uid"] = json!("team-uid");
    adoptable["metadata"]["annotations"] = json!({"metahook.io/adopt": "wa"});
    let mut script = claims(
        false,
        false,
        &[(format!("{APPS}/deployments/wa"), adoptable)],
    );
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Object(app_with_token()),
        ),
        apply(format!("{CORE}/configmaps/wa-receiver"), Reply::Echo(None)),
        apply(
            format!("{APPS}/statefulsets/wa"),
            Reply::Echo(Some(json!({"replicas": 1, "readyReplicas": 0}))),
        ),
        apply(format!("{CORE}/services/wa"), Reply::Echo(None)),
        listed(
            format!("{CORE}/persistentvolumeclaims"),
            "PersistentVolumeClaimList",
            &[],
        ),
        listed("/apis/batch/v1/namespaces/acme/jobs", "JobList", &[]),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    assert!(
        served.iter().all(|s| s.method != Method::DELETE),
        "nothing deleted"
    );
}

/// A certificate of the user's own (`tls.secretRef`) is `Provided`, not `Issued`: the
/// operator neither issued nor renews it.
#[test]
fn a_users_certificate_is_provided_not_issued() {
    use metahook_operator::crd::CertificateStatus;
    use metahook_operator::status::{
        self, CertificateState, Observed, ReceiverState, RegistrationState,
    };
    let observed = Observed {
        missing: Vec::new(),
        certificate: CertificateState::Provided(CertificateStatus {
            secret_name: "hooks-tls".to_owned(),
            not_after: Some("2027-01-01T00:00:00Z".to_owned()),
            renew_at: None,
        }),
        receiver: ReceiverState::Sidecar,
        endpoint: None,
        verify_token: None,
        registration: RegistrationState::NotRequested,
        refused: None,
        spool: None,
    };
    let built = status::build(None, Some(1), NS, &observed, test_now());
    let certificate = built
        .conditions
        .iter()
        .find(|c| c.type_ == "CertificateReady")
        .expect("condition");
    assert_eq!(certificate.reason, "Provided");
    assert_eq!(
        certificate.message,
        "your certificate in Secret acme/hooks-tls (tls.secretRef), valid until 2027-01-01T00:00:00Z"
    );
    assert_eq!(
        built.certificate.map(|c| c.secret_name).as_deref(),
        Some("hooks-tls")
    );
}

/// Found by a new user: after a referenced Secret was deleted, the status said the receiver
/// "is not applied" while its Deployment ran on. The pass still stops before the workload,
/// but ReceiverAvailable says what runs.
#[tokio::test]
async fn a_missing_secret_reports_the_receivers_that_still_run() {
    let mut spec = whatsapp_spec();
    spec["verifyTokenRef"] = json!({"name": "meta-app", "key": "verify-token"});
    let sub = subscription("wa", NS, &spec);
    let mut running = owned(object_at("apps/v1", "Deployment", "wa"));
    running["spec"] = json!({"replicas": 2});
    running["status"] = json!({"replicas": 2, "readyReplicas": 2});
    let mut script = claims(false, false, &[(format!("{APPS}/deployments/wa"), running)]);
    script.extend([
        get(
            format!("{CORE}/secrets/meta-app"),
            Reply::Error(404, "NotFound"),
        ),
        event(NS),
        status_step(),
    ]);
    let (result, served) = reconcile_once(sub, script).await;
    result.expect("reconcile");
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let receiver = condition(status, "ReceiverAvailable");
    assert_eq!(receiver["reason"], "Available");
    assert_eq!(
        receiver["message"],
        "2 of 2 receiver pods of Deployment ready"
    );
    assert_eq!(condition(status, "Ready")["reason"], "SecretsResolvedFalse");
}

#[tokio::test]
async fn an_expired_token_is_a_condition_and_an_event_naming_the_secret_to_rotate() {
    let spec = registering_spec();
    let sub = subscription("wa", NS, &spec);
    let script = registering_pass_with_ready_receiver(&spec);
    let api = MockApi::start(script, Capabilities::default(), test_now());
    *api.graph.fail.lock().expect("lock") = Some(metahook_operator::graph::GraphError {
        call: "GET /1234/subscriptions".to_owned(),
        status: Some(400),
        message: "Error validating access token: Session has expired".to_owned(),
        meta: Some(Box::new(metahook_operator::graph::MetaErrorFields {
            kind: Some("OAuthException".to_owned()),
            code: Some(190),
            subcode: Some(463),
            fbtrace_id: Some("Tr4ce".to_owned()),
        })),
        regain_access: None,
    });
    controller::reconcile(Arc::new(sub), api.ctx.clone())
        .await
        .expect_err("the pass fails");
    let served = api.finish().await;
    assert_eq!(served[15].body["reason"], "TokenExpired");
    assert_eq!(served[15].body["type"], "Warning");
    let note = served[15].body["note"].as_str().expect("note");
    assert!(
        note.starts_with("Meta refused the token in Secret meta-app key app-secret as expired or revoked: put a new one there")
            && note.contains("fbtrace_id Tr4ce"),
        "{note}"
    );
    let status = body_of(&served, &Method::PATCH, &format!("{SUBS}/wa/status"));
    let registered = condition(status, "Registered");
    assert_eq!(registered["reason"], "TokenExpired");
    let message = registered["message"].as_str().expect("message");
    assert!(
        message.contains("Secret meta-app key app-secret") && !message.contains("Tr4ce"),
        "{message}"
    );
}
