//! The pure builders, asserted field by field: spec → the objects the operator applies.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{PodSpec, Volume};
use metahook_operator::WebhookSubscription;
use metahook_operator::certs;
use metahook_operator::resources::config::{config_map, receiver_config};
use metahook_operator::resources::ingress::ingress;
use metahook_operator::resources::monitoring::{
    Capabilities, PdbVersion, pod_disruption_budget, service_monitor,
};
use metahook_operator::resources::service::{endpoint_url, service};
use metahook_operator::resources::workload::{Workload, workload};
use metahook_operator::resources::{Inputs, tls_secret_name};
use serde_json::{Value, json};
use support::subscription;

use metahook_config::{META_CLIENT_NAME, SinkKind, TlsMode};

fn spec() -> Value {
    json!({
        "object": "page",
        "fields": ["feed", "leadgen", "messages"],
        "appSecretRef": {"name": "meta-app", "key": "app-secret"},
        "verifyTokenRef": {"name": "meta-app", "key": "verify-token"},
        "delivery": {
            "sinks": [
                {"name": "crm", "http": {"url": "https://crm.internal/hooks",
                    "signingSecretRef": {"name": "crm", "key": "key"}}},
                {"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"}}},
                {"name": "audit", "file": {"name": "events.jsonl"}},
            ],
            "retry": {"maxAttempts": 7, "maxBackoff": "1m"},
        },
    })
}

fn inputs<'a>(sub: &'a WebhookSubscription) -> Inputs<'a> {
    let tls = (sub.spec.tls.mode != metahook_operator::crd::TlsModeSpec::None).then(|| {
        sub.spec
            .tls
            .secret_ref
            .as_ref()
            .map_or_else(|| tls_secret_name("fb"), |r| r.name.clone())
    });
    Inputs::new(sub, "metahook-receiver:test", tls, "digest".to_owned()).expect("inputs")
}

fn pod_spec(sub: &WebhookSubscription) -> PodSpec {
    match workload(&inputs(sub), "hash", false).expect("workload") {
        Workload::Deployment(d) => d.spec.and_then(|s| s.template.spec),
        Workload::StatefulSet(s) => s.spec.and_then(|s| s.template.spec),
    }
    .expect("pod spec")
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// Every projected Secret key, as (secret, key, path).
fn projected(pod: &PodSpec) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let sources = volume(pod, "secrets")
        .projected
        .as_ref()
        .and_then(|p| p.sources.clone())
        .unwrap_or_default();
    for source in sources {
        let secret = source.secret.expect("secret source");
        for item in secret.items.unwrap_or_default() {
            out.push((secret.name.clone(), item.key, item.path));
        }
    }
    out
}

#[test]
fn labels_and_owner_references_on_every_object() {
    let sub = subscription("fb", "acme", &spec());
    let inputs = inputs(&sub);
    let config = receiver_config(&inputs).expect("config");
    let expected_labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "metahook-receiver".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), "fb".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "metahook-operator".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "receiver".to_owned(),
        ),
        ("metahook.io/subscription".to_owned(), "fb".to_owned()),
    ]);
    let Workload::StatefulSet(stateful_set) = workload(&inputs, "hash", false).expect("workload")
    else {
        panic!("spool mode without a spool section: a StatefulSet");
    };
    let metas = [
        config_map(&inputs, &config.to_yaml().expect("yaml"))
            .expect("configmap")
            .metadata,
        stateful_set.metadata.clone(),
        service(&inputs, true).expect("service").metadata,
    ];
    for meta in metas {
        assert_eq!(meta.namespace.as_deref(), Some("acme"));
        assert_eq!(meta.labels.as_ref(), Some(&expected_labels));
        let owner = &meta.owner_references.expect("owner")[0];
        assert_eq!(owner.api_version, "metahook.io/v1alpha1");
        assert_eq!(owner.kind, "WebhookSubscription");
        assert_eq!(owner.name, "fb");
        assert_eq!(owner.uid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(owner.controller, Some(true));
    }
    let spec = stateful_set.spec.expect("spec");
    let selector = spec.selector.match_labels.expect("selector");
    assert_eq!(
        selector.len(),
        3,
        "selector labels never change: {selector:?}"
    );
    assert_eq!(
        spec.template.metadata.and_then(|m| m.annotations),
        Some(BTreeMap::from([(
            "metahook.io/config-hash".to_owned(),
            "hash".to_owned()
        )]))
    );
}

#[test]
fn pods_are_hardened_and_probed() {
    let sub = subscription("fb", "acme", &spec());
    let pod = pod_spec(&sub);
    let security = pod.security_context.as_ref().expect("pod security");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.fs_group, Some(65532));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
    let container = &pod.containers[0];
    assert_eq!(container.name, "receiver");
    assert_eq!(container.image.as_deref(), Some("metahook-receiver:test"));
    assert_eq!(
        container.args,
        Some(vec![
            "--config".to_owned(),
            "/etc/metahook/config/config.yaml".to_owned()
        ])
    );
    let security = container
        .security_context
        .as_ref()
        .expect("container security");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.privileged, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTP"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".to_owned())
        );
    }
    let ports: Vec<(Option<&str>, i32)> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(ports, vec![(Some("http"), 8080), (Some("metrics"), 9090)]);
    // The spec gave no resources: the defaults.
    let resources = container.resources.as_ref().expect("resources");
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    // The claim of the volumeClaimTemplate is the data volume, not a pod volume.
    assert!(pod.volumes.iter().flatten().all(|v| v.name != "data"));
}

#[test]
fn the_admin_endpoint_is_on_behind_the_generated_token_and_retention_is_rendered() {
    let sub = subscription("fb", "acme", &spec());
    let config = receiver_config(&inputs(&sub)).expect("config");
    let admin = config.admin.expect("admin");
    assert_eq!(
        admin.token_file,
        Path::new("/etc/metahook/secrets/fb-admin-token/admin-token")
    );
    assert_eq!(config.spool.retention, None);

    let mut with_retention = spec();
    with_retention["delivery"]["spool"] =
        json!({"retention": {"maxAge": "72h", "maxBytes": "20GiB"}});
    let sub = subscription("fb", "acme", &with_retention);
    let config = receiver_config(&inputs(&sub)).expect("config");
    let retention = config.spool.retention.expect("retention");
    assert_eq!(
        retention.max_age,
        Some(std::time::Duration::from_secs(72 * 3600))
    );
    assert_eq!(retention.max_bytes, 20 << 30);

    for (retention, field) in [
        (json!({"maxAge": "soon"}), "delivery.spool.retention.maxAge"),
        (json!({"maxAge": "0s"}), "delivery.spool.retention.maxAge"),
        (
            json!({"maxBytes": "lots"}),
            "delivery.spool.retention.maxBytes",
        ),
        (
            json!({"maxBytes": "1MiB"}),
            "delivery.spool.retention.maxBytes",
        ),
        (json!({}), "delivery.spool.retention"),
    ] {
        let mut refused = spec();
        refused["delivery"]["spool"] = json!({"retention": retention});
        let sub = subscription("fb", "acme", &refused);
        let error = receiver_config(&inputs(&sub)).expect_err("refused");
        let metahook_operator::Error::Config(metahook_config::ConfigError::Invalid { key, .. }) =
            &error
        else {
            panic!("{error}")
        };
        assert_eq!(key, field, "{retention}");
    }
}

#[test]
fn only_the_referenced_secret_keys_are_mounted_and_named_in_the_config() {
    let sub = subscription("fb", "acme", &spec());
    let inputs = inputs(&sub);
    let pod = pod_spec(&sub);
    let mut mounted = projected(&pod);
    mounted.sort();
    let expected: Vec<(String, String, String)> = [
        ("crm", "key"),
        ("fb-admin-token", "admin-token"),
        ("meta-app", "app-secret"),
        ("meta-app", "verify-token"),
        ("pg", "url"),
    ]
    .iter()
    .map(|(s, k)| ((*s).to_owned(), (*k).to_owned(), format!("{s}/{k}")))
    .collect();
    assert_eq!(mounted, expected);
    let config = receiver_config(&inputs).expect("config");
    let sinks: BTreeMap<&str, _> = config.sinks.iter().map(|s| (s.name.as_str(), s)).collect();
    let SinkKind::Http(http) = &sinks["crm"].kind else {
        panic!("http")
    };
    assert_eq!(http.url, "https://crm.internal/hooks");
    assert_eq!(
        http.signing_secret_file.as_deref(),
        Some(Path::new("/etc/metahook/secrets/crm/key"))
    );
    let SinkKind::Postgres(postgres) = &sinks["db"].kind else {
        panic!("postgres")
    };
    assert_eq!(
        postgres.url_file.as_deref(),
        Some(Path::new("/etc/metahook/secrets/pg/url"))
    );
    assert!(postgres.url.is_empty(), "the password stays in the Secret");
    assert_eq!(
        match &sinks["audit"].kind {
            SinkKind::File(f) => Some(f.path.as_path()),
            _ => None,
        },
        Some(Path::new("/var/lib/metahook/files/events.jsonl"))
    );
    for sink in &config.sinks {
        assert_eq!(
            sink.retry.max_attempts, 7,
            "delivery.retry applies to {}",
            sink.name
        );
        assert_eq!(sink.retry.max_backoff, std::time::Duration::from_secs(60));
    }
    assert_eq!(config.spool.dir, Path::new("/var/lib/metahook/spool"));
    assert_eq!(config.metrics_listen.map(|a| a.port()), Some(9090));
    assert_eq!(config.endpoints[0].path, "/webhooks/facebook-page");
    assert_eq!(config.endpoints[0].objects, Some(vec!["page".to_owned()]));
}

#[test]
fn a_spool_size_makes_a_stateful_set_with_a_claim() {
    let mut spec = spec();
    spec["delivery"]["spool"] = json!({"size": "5Gi"});
    let sub = subscription("fb", "acme", &spec);
    let Workload::StatefulSet(set) = workload(&inputs(&sub), "hash", false).expect("workload")
    else {
        panic!("a spool size makes a StatefulSet");
    };
    let spec = set.spec.expect("spec");
    assert_eq!(spec.service_name.as_deref(), Some("fb"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let claim = &spec.volume_claim_templates.expect("claims")[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    let claim_spec = claim.spec.as_ref().expect("claim spec");
    assert_eq!(
        claim_spec.access_modes,
        Some(vec!["ReadWriteOnce".to_owned()])
    );
    assert_eq!(claim_spec.storage_class_name, None);
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str()),
        Some("5Gi")
    );
    let pod = spec.template.spec.expect("pod");
    assert!(
        pod.volumes.iter().flatten().all(|v| v.name != "data"),
        "the claim, not an emptyDir, is the data volume"
    );
}

#[test]
fn serving_certificate_names_cover_the_service_and_the_host() {
    let names = certs::serving_names("fb", "acme", Some("hooks.example.com"));
    let expected: Vec<&str> = vec![
        "fb",
        "fb.acme",
        "fb.acme.svc",
        "fb.acme.svc.cluster.local",
        "hooks.example.com",
    ];
    assert_eq!(
        names.iter().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    let now = support::test_now();
    let ca = certs::CaMaterial::generate("acme", now).expect("ca");
    let cert = ca
        .issue(&names, now, std::time::Duration::from_secs(90 * 86400))
        .expect("issue");
    let info = certs::inspect(cert.cert_pem.as_bytes()).expect("inspect");
    assert_eq!(info.dns_names, names);
    assert_eq!(
        certs::renew_at(info.not_before, info.not_after),
        info.not_before + (info.not_after - info.not_before) * 2 / 3
    );
}

fn mutual_spec(termination: &str) -> Value {
    let mut spec = spec();
    spec["tls"] = json!({
        "mode": "mutual",
        "clientCARef": {"name": "meta-client-ca", "key": "ca.crt"},
    });
    spec["ingress"] = json!({
        "host": "hooks.example.com",
        "className": "nginx",
        "tlsTermination": termination,
        "tlsSecretName": "hooks-public",
        "trustedProxyCIDRs": ["10.0.0.0/8"],
    });
    spec
}

#[test]
fn mutual_tls_at_the_receiver_mounts_the_certificate_and_ca_and_names_them() {
    let sub = subscription("fb", "acme", &mutual_spec("passthrough"));
    let inputs = inputs(&sub);
    let config = receiver_config(&inputs).expect("config");
    let tls = config.tls.as_ref().expect("tls");
    assert_eq!(tls.mode, TlsMode::Mutual);
    assert_eq!(
        tls.cert_file,
        Path::new("/etc/metahook/secrets/fb-tls/tls.crt")
    );
    assert_eq!(
        tls.key_file,
        Path::new("/etc/metahook/secrets/fb-tls/tls.key")
    );
    assert_eq!(
        tls.client_ca_file.as_deref(),
        Some(Path::new("/etc/metahook/secrets/meta-client-ca/ca.crt"))
    );
    assert_eq!(tls.allowed_client_names, vec![META_CLIENT_NAME.to_owned()]);
    assert!(config.trusted_proxy.is_none());
    assert_eq!(config.listen.port(), 8443);

    // Every file the config names is mounted.
    let pod = pod_spec(&sub);
    let mounted: Vec<String> = projected(&pod)
        .into_iter()
        .map(|(_, _, path)| format!("/etc/metahook/secrets/{path}"))
        .collect();
    for file in [
        &tls.cert_file,
        &tls.key_file,
        tls.client_ca_file.as_ref().expect("ca"),
    ] {
        assert!(
            mounted.iter().any(|m| Path::new(m) == file.as_path()),
            "{} is not mounted: {mounted:?}",
            file.display()
        );
    }
    let container = &pod.containers[0];
    let readiness = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("probe");
    assert_eq!(readiness.scheme.as_deref(), Some("HTTPS"));
    let service = service(&inputs, true).expect("service").spec.expect("spec");
    let port = &service.ports.expect("ports")[0];
    assert_eq!(
        (
            port.name.as_deref(),
            port.port,
            port.app_protocol.as_deref()
        ),
        (Some("https"), 443, Some("https"))
    );

    // The ingress passes TLS through to the receiver.
    let ingress = ingress(&inputs).expect("ingress").expect("wanted");
    let annotations = ingress.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/ssl-passthrough")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/backend-protocol")
            .map(String::as_str),
        Some("HTTPS")
    );
    assert!(!annotations.contains_key("nginx.ingress.kubernetes.io/auth-tls-verify-client"));
    assert!(
        ingress.spec.expect("spec").tls.is_none(),
        "passthrough: no TLS at the ingress"
    );
    assert_eq!(
        endpoint_url(&inputs),
        "https://hooks.example.com/webhooks/facebook-page"
    );
}

#[test]
fn mutual_tls_at_the_ingress_verifies_there_and_trusts_its_headers() {
    let sub = subscription("fb", "acme", &mutual_spec("ingress"));
    let inputs = inputs(&sub);
    let config = receiver_config(&inputs).expect("config");
    let tls = config
        .tls
        .as_ref()
        .expect("the ingress re-encrypts to the receiver");
    assert_eq!(tls.mode, TlsMode::Server);
    assert!(tls.client_ca_file.is_none());
    let proxy = config.trusted_proxy.as_ref().expect("trusted_proxy");
    assert_eq!(
        proxy
            .cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.0.0.0/8".to_owned()]
    );
    assert_eq!(
        proxy.allowed_client_names,
        vec![META_CLIENT_NAME.to_owned()]
    );
    assert_eq!(proxy.verify_header, "ssl-client-verify");
    assert_eq!(proxy.subject_header, "ssl-client-subject-dn");
    // The CA is the ingress's business, not mounted in the receiver.
    let pod = pod_spec(&sub);
    assert!(
        projected(&pod)
            .iter()
            .all(|(secret, _, _)| secret != "meta-client-ca")
    );

    let ingress = ingress(&inputs).expect("ingress").expect("wanted");
    let annotations = ingress.metadata.annotations.clone().expect("annotations");
    let get = |key: &str| {
        annotations
            .get(&format!("nginx.ingress.kubernetes.io/{key}"))
            .map(String::as_str)
    };
    assert_eq!(get("auth-tls-verify-client"), Some("on"));
    assert_eq!(get("auth-tls-secret"), Some("acme/meta-client-ca"));
    assert_eq!(get("auth-tls-verify-depth"), Some("2"));
    assert_eq!(get("auth-tls-pass-certificate-to-upstream"), Some("true"));
    assert_eq!(get("backend-protocol"), Some("HTTPS"));
    assert_eq!(get("ssl-passthrough"), None);
    let spec = ingress.spec.expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let tls = &spec.tls.expect("tls")[0];
    assert_eq!(tls.secret_name.as_deref(), Some("hooks-public"));
    assert_eq!(tls.hosts, Some(vec!["hooks.example.com".to_owned()]));
    let rule = &spec.rules.expect("rules")[0];
    assert_eq!(rule.host.as_deref(), Some("hooks.example.com"));
    let path = &rule.http.as_ref().expect("http").paths[0];
    assert_eq!(path.path.as_deref(), Some("/webhooks/facebook-page"));
    assert_eq!(path.path_type, "Exact");
    let backend = path.backend.service.as_ref().expect("service backend");
    assert_eq!(backend.name, "fb");
    assert_eq!(
        backend.port.as_ref().and_then(|p| p.name.as_deref()),
        Some("https")
    );
}

#[test]
fn plain_http_has_no_tls_anywhere() {
    let sub = subscription("fb", "acme", &spec());
    let inputs = inputs(&sub);
    let config = receiver_config(&inputs).expect("config");
    assert!(config.tls.is_none() && config.trusted_proxy.is_none());
    assert_eq!(config.listen.port(), 8080);
    assert!(ingress(&inputs).expect("ingress").is_none());
    assert_eq!(
        endpoint_url(&inputs),
        "http://fb.acme.svc:80/webhooks/facebook-page"
    );
}

#[test]
fn monitoring_objects_follow_the_spec_and_the_cluster() {
    let mut spec = spec();
    spec["monitoring"] = json!({"serviceMonitor": true});
    spec["receiver"] = json!({"replicas": 3});
    let sub = subscription("fb", "acme", &spec);
    let inputs = inputs(&sub);
    let none = Capabilities::default();
    assert!(
        service_monitor(&inputs, none).expect("sm").is_none(),
        "API absent: never assumed"
    );
    assert!(pod_disruption_budget(&inputs, none).expect("pdb").is_none());
    let all = Capabilities {
        service_monitor: true,
        pdb: Some(PdbVersion::V1),
        claim_retention_policy: true,
        ..Capabilities::default()
    };
    let monitor = service_monitor(&inputs, all).expect("sm").expect("wanted");
    assert_eq!(
        monitor.types.as_ref().map(|t| t.api_version.as_str()),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(monitor.data["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        monitor.data["spec"]["selector"]["matchLabels"]["metahook.io/subscription"],
        "fb"
    );
    let (resource, pdb) = pod_disruption_budget(&inputs, all)
        .expect("pdb")
        .expect("wanted");
    assert_eq!(resource.api_version, "policy/v1");
    assert_eq!(pdb.data["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb.metadata.owner_references.as_ref().map(Vec::len),
        Some(1)
    );

    // One replica: no budget (it would block node drains).
    let single = subscription("fb", "acme", &self::spec());
    assert!(
        pod_disruption_budget(&self::inputs(&single), all)
            .expect("pdb")
            .is_none()
    );
}

#[test]
fn an_http_sinks_batch_size_reaches_the_receiver_config() {
    let batch_size = |spec: &Value| {
        let sub = subscription("fb", "acme", spec);
        let config = receiver_config(&inputs(&sub)).expect("config");
        match &config.sinks[0].kind {
            SinkKind::Http(http) => http.batch_size,
            other => panic!("not http: {other:?}"),
        }
    };
    assert_eq!(batch_size(&spec()), 1, "one event per POST by default");
    let mut arrays = spec();
    arrays["delivery"]["sinks"][0]["http"]["batchSize"] = json!(50);
    assert_eq!(batch_size(&arrays), 50);
}

/// The issue's finding: `tls: {mode: mutual}` without `clientCARef`, where no CEL rule ran,
/// became plain HTTPS. The builder refuses it instead, naming the field: a security
/// setting is never downgraded.
#[test]
fn mutual_tls_without_its_ca_is_refused_not_downgraded() {
    let mut spec = spec();
    spec["tls"] = json!({"mode": "mutual"});
    let sub = subscription("fb", "acme", &spec);
    let error = receiver_config(&inputs(&sub)).expect_err("refused");
    let message = error.to_string();
    assert!(
        message.ends_with(
            "tls.clientCARef: tls.mode mutual needs the CA bundle Meta's client certificate chains to"
        ),
        "{message}"
    );
}

/// Sinks naming every credential and TLS reference, one way to authenticate each.
fn credential_sinks() -> Value {
    let mut spec = spec();
    spec["delivery"]["sinks"] = json!([
        {"name": "bus-user", "nats": {"url": "tls://nats.nats:4222",
            "userRef": {"name": "nats", "key": "user"},
            "passwordRef": {"name": "nats", "key": "password"},
            "tls": {"caRef": {"name": "nats-tls", "key": "ca.crt"},
                    "clientCertRef": {"name": "nats-tls", "key": "tls.crt"},
                    "clientKeyRef": {"name": "nats-tls", "key": "tls.key"}}}},
        {"name": "bus-token", "nats": {"url": "nats://nats.nats:4222",
            "tokenRef": {"name": "nats", "key": "token"}}},
        {"name": "bus-nkey", "nats": {"url": "nats://nats.nats:4222",
            "nkeySeedRef": {"name": "nats", "key": "seed"}}},
        {"name": "bus-creds", "nats": {"url": "nats://nats.nats:4222",
            "credentialsRef": {"name": "nats", "key": "user.creds"}}},
        {"name": "crm-basic", "http": {"url": "https://crm.internal/hooks",
            "basicAuth": {"usernameRef": {"name": "crm", "key": "user"},
                          "passwordRef": {"name": "crm", "key": "password"}},
            "headers": [{"name": "X-Api-Key", "valueRef": {"name": "crm", "key": "api-key"}}]}},
        {"name": "crm-plain", "http": {"url": "https://crm.internal/hooks",
            "basicAuth": {"username": "metahook", "passwordRef": {"name": "crm", "key": "password"}}}},
        {"name": "crm-bearer", "http": {"url": "https://crm.internal/hooks",
            "bearerTokenRef": {"name": "crm", "key": "token"}}},
        {"name": "db", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"},
            "sslMode": "verify-full", "caRef": {"name": "pg", "key": "ca.crt"}}},
        {"name": "log", "kafka": {"bootstrapServers": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"],
            "topic": "meta.{object}.{field}", "key": "account", "compression": "zstd",
            "deliveryTimeout": "45s",
            "tls": {"caRef": {"name": "kafka-tls", "key": "ca.crt"},
                    "clientCertRef": {"name": "kafka-tls", "key": "tls.crt"},
                    "clientKeyRef": {"name": "kafka-tls", "key": "tls.key"}},
            "sasl": {"mechanism": "SCRAM-SHA-512",
                     "userRef": {"name": "kafka", "key": "user"},
                     "passwordRef": {"name": "kafka", "key": "password"}}}},
        {"name": "log-plain", "kafka": {"bootstrapServers": ["kafka:9092"]}},
    ]);
    spec
}

fn secret_file(secret: &str, key: &str) -> Option<std::path::PathBuf> {
    Some(Path::new("/etc/metahook/secrets").join(secret).join(key))
}

#[test]
fn sink_credentials_are_mounted_and_named_in_the_config_field_by_field() {
    use metahook_config::{HttpHeaderConfig, SslMode};
    let sub = subscription("fb", "acme", &credential_sinks());
    let config = receiver_config(&inputs(&sub)).expect("config");
    let sinks: BTreeMap<&str, &SinkKind> = config
        .sinks
        .iter()
        .map(|s| (s.name.as_str(), &s.kind))
        .collect();
    let nats = |name: &str| match sinks[name] {
        SinkKind::Nats(nats) => nats.clone(),
        other => panic!("{name} is not nats: {other:?}"),
    };
    let http = |name: &str| match sinks[name] {
        SinkKind::Http(http) => http.clone(),
        other => panic!("{name} is not http: {other:?}"),
    };
    let user = nats("bus-user");
    assert_eq!(user.url, "tls://nats.nats:4222");
    assert_eq!(user.user_file, secret_file("nats", "user"));
    assert_eq!(user.password_file, secret_file("nats", "password"));
    assert_eq!(user.ca_file, secret_file("nats-tls", "ca.crt"));
    assert_eq!(user.client_cert_file, secret_file("nats-tls", "tls.crt"));
    assert_eq!(user.client_key_file, secret_file("nats-tls", "tls.key"));
    assert_eq!(
        (
            &user.token_file,
            &user.nkey_seed_file,
            &user.credentials_file
        ),
        (&None, &None, &None)
    );
    assert_eq!(nats("bus-token").token_file, secret_file("nats", "token"));
    assert_eq!(nats("bus-nkey").nkey_seed_file, secret_file("nats", "seed"));
    assert_eq!(
        nats("bus-creds").credentials_file,
        secret_file("nats", "user.creds")
    );
    let basic = http("crm-basic");
    assert_eq!(basic.username, None);
    assert_eq!(basic.username_file, secret_file("crm", "user"));
    assert_eq!(basic.password_file, secret_file("crm", "password"));
    assert_eq!(
        basic.headers,
        vec![HttpHeaderConfig {
            name: "X-Api-Key".into(),
            value_file: secret_file("crm", "api-key").expect("path"),
        }]
    );
    let plain = http("crm-plain");
    assert_eq!(plain.username.as_deref(), Some("metahook"));
    assert_eq!(plain.username_file, None);
    assert_eq!(plain.password_file, secret_file("crm", "password"));
    let bearer = http("crm-bearer");
    assert_eq!(bearer.bearer_token_file, secret_file("crm", "token"));
    assert_eq!((bearer.username_file, bearer.password_file), (None, None));
    let SinkKind::Postgres(postgres) = sinks["db"] else {
        panic!("postgres")
    };
    assert_eq!(postgres.ssl_mode, Some(SslMode::VerifyFull));
    assert_eq!(postgres.ca_file, secret_file("pg", "ca.crt"));
    let SinkKind::Kafka(kafka) = sinks["log"] else {
        panic!("kafka")
    };
    let mut expected_kafka = metahook_config::KafkaSinkConfig::new(vec![
        "kafka-0.kafka:9093".into(),
        "kafka-1.kafka:9093".into(),
    ]);
    expected_kafka.topic = "meta.{object}.{field}".into();
    expected_kafka.key = metahook_config::KafkaKey::Account;
    expected_kafka.compression = metahook_config::KafkaCompression::Zstd;
    expected_kafka.delivery_timeout = std::time::Duration::from_secs(45);
    expected_kafka.tls = true;
    expected_kafka.ca_file = secret_file("kafka-tls", "ca.crt");
    expected_kafka.client_cert_file = secret_file("kafka-tls", "tls.crt");
    expected_kafka.client_key_file = secret_file("kafka-tls", "tls.key");
    expected_kafka.sasl = Some(metahook_config::KafkaSaslConfig {
        mechanism: metahook_config::SaslMechanism::ScramSha512,
        user_file: secret_file("kafka", "user").expect("path"),
        password_file: secret_file("kafka", "password").expect("path"),
    });
    assert_eq!(kafka, &expected_kafka);
    let SinkKind::Kafka(plain) = sinks["log-plain"] else {
        panic!("kafka")
    };
    assert_eq!(
        plain,
        &metahook_config::KafkaSinkConfig::new(vec!["kafka:9092".into()]),
        "the receiver's defaults"
    );

    // Every file the configuration names is a projected key of the pod, and a Secret key
    // the controller resolves (secret_references); nothing else is mounted.
    let expected = [
        ("crm", "api-key"),
        ("crm", "password"),
        ("crm", "token"),
        ("crm", "user"),
        ("fb-admin-token", "admin-token"),
        ("kafka", "password"),
        ("kafka", "user"),
        ("kafka-tls", "ca.crt"),
        ("kafka-tls", "tls.crt"),
        ("kafka-tls", "tls.key"),
        ("meta-app", "app-secret"),
        ("meta-app", "verify-token"),
        ("nats", "password"),
        ("nats", "seed"),
        ("nats", "token"),
        ("nats", "user"),
        ("nats", "user.creds"),
        ("nats-tls", "ca.crt"),
        ("nats-tls", "tls.crt"),
        ("nats-tls", "tls.key"),
        ("pg", "ca.crt"),
        ("pg", "url"),
    ];
    let mut mounted = projected(&pod_spec(&sub));
    mounted.sort();
    let expected_mounts: Vec<(String, String, String)> = expected
        .iter()
        .map(|(s, k)| ((*s).to_owned(), (*k).to_owned(), format!("{s}/{k}")))
        .collect();
    assert_eq!(mounted, expected_mounts);
    let resolved: std::collections::BTreeSet<(String, String)> =
        metahook_operator::resources::secret_references(&sub)
            .into_iter()
            .map(|r| (r.key.name, r.key.key))
            .collect();
    for (secret, key) in expected {
        assert!(
            resolved.contains(&(secret.to_owned(), key.to_owned())),
            "{secret}/{key} is not resolved by the controller"
        );
    }
    // The ConfigMap names files, never a credential.
    let yaml = config.to_yaml().expect("yaml");
    assert!(yaml.contains("/etc/metahook/secrets/nats/token"), "{yaml}");
}

#[test]
fn a_sink_url_with_credentials_is_refused_naming_the_field() {
    for (sink, field, instead) in [
        (
            json!({"name": "bus", "nats": {"url": "nats://bob:s3cret@nats:4222"}}),
            "delivery.sinks[0].nats.url",
            "use userRef/passwordRef",
        ),
        (
            json!({"name": "bus", "nats": {"url": "nats://t0ken@nats:4222"}}),
            "delivery.sinks[0].nats.url",
            "use userRef/passwordRef",
        ),
        (
            json!({"name": "crm", "http": {"url": "https://alice:s3cret@crm.internal/hooks"}}),
            "delivery.sinks[0].http.url",
            "use basicAuth",
        ),
        (
            json!({"name": "crm", "http": {"url": "https://crm.internal/hooks?access_token=s3cret"}}),
            "delivery.sinks[0].http.url",
            "use basicAuth",
        ),
    ] {
        let mut spec = spec();
        spec["delivery"]["sinks"] = json!([sink]);
        let sub = subscription("fb", "acme", &spec);
        let err = receiver_config(&inputs(&sub))
            .expect_err("credentials in a URL")
            .to_string();
        assert!(
            err.contains(&format!(
                "{field}: credentials in a URL end up in the ConfigMap and logs; {instead}"
            )),
            "{err}"
        );
        assert!(!err.contains("s3cret") && !err.contains("t0ken"), "{err}");
    }
}

/// Without `delivery.spool` a spool-mode receiver keeps its events on a claim of the
/// default size, its pods say so by label, and their grace period leaves the receiver its
/// delivery time.
#[test]
fn the_default_spool_is_a_claim_of_2gi_with_a_grace_period_for_delivery() {
    let sub = subscription("fb", "acme", &spec());
    let inputs = inputs(&sub);
    let Workload::StatefulSet(set) = workload(&inputs, "hash", false).expect("workload") else {
        panic!("the default is a StatefulSet");
    };
    let spec = set.spec.expect("spec");
    let claim = &spec.volume_claim_templates.expect("claims")[0];
    assert_eq!(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str()),
        Some("2Gi")
    );
    assert_eq!(claim.metadata.labels.as_ref(), Some(&inputs.labels()));
    assert_eq!(
        spec.persistent_volume_claim_retention_policy, None,
        "not sent to a server that does not know the field"
    );
    let template = spec.template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get("metahook.io/spool"))
            .map(String::as_str),
        Some("persistent")
    );
    let pod = template.spec.expect("pod");
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
    let config = receiver_config(&inputs).expect("config");
    assert_eq!(config.shutdown_delay, std::time::Duration::from_secs(5));
    assert_eq!(config.shutdown_grace, std::time::Duration::from_secs(50));
}

#[test]
fn where_the_server_knows_the_field_claims_are_retained_explicitly() {
    let sub = subscription("fb", "acme", &spec());
    let Workload::StatefulSet(set) = workload(&inputs(&sub), "hash", true).expect("workload")
    else {
        panic!("a StatefulSet");
    };
    let policy = set
        .spec
        .and_then(|s| s.persistent_volume_claim_retention_policy)
        .expect("the retention policy");
    assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
}

#[test]
fn a_longer_grace_period_gives_the_receiver_the_rest_for_delivery() {
    let mut spec = spec();
    spec["receiver"] = json!({"terminationGracePeriodSeconds": 300});
    let sub = subscription("fb", "acme", &spec);
    assert_eq!(pod_spec(&sub).termination_grace_period_seconds, Some(300));
    let config = receiver_config(&inputs(&sub)).expect("config");
    assert_eq!(config.shutdown_grace, std::time::Duration::from_secs(290));
}

/// `ephemeral: true` is the only way to an emptyDir spool; the pods are labelled so.
#[test]
fn an_ephemeral_spool_is_an_empty_dir_of_a_deployment() {
    let mut spec = spec();
    spec["delivery"]["spool"] = json!({"ephemeral": true});
    let sub = subscription("fb", "acme", &spec);
    let Workload::Deployment(deployment) = workload(&inputs(&sub), "hash", true).expect("workload")
    else {
        panic!("an ephemeral spool is a Deployment");
    };
    let spec = deployment.spec.expect("spec");
    let strategy = spec
        .strategy
        .expect("strategy")
        .rolling_update
        .expect("rolling");
    assert_eq!(
        strategy.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
        "never below the wanted replicas while rolling"
    );
    let template = spec.template;
    assert_eq!(
        template
            .metadata
            .and_then(|m| m.labels)
            .and_then(|l| l.get("metahook.io/spool").cloned())
            .as_deref(),
        Some("ephemeral")
    );
    let pod = template.spec.expect("pod");
    assert!(volume(&pod, "data").empty_dir.is_some());
}

/// The Service selects the current workload's pods by their spool label, or every
/// receiver pod of the subscription while the workload being replaced still serves.
#[test]
fn the_service_selects_the_current_workloads_pods_once_it_may() {
    let sub = subscription("fb", "acme", &spec());
    let inputs = inputs(&sub);
    let selector = |current_only| {
        service(&inputs, current_only)
            .expect("service")
            .spec
            .and_then(|s| s.selector)
            .expect("selector")
    };
    let mut expected = inputs.selector_labels();
    assert_eq!(selector(false), expected);
    expected.insert("metahook.io/spool".to_owned(), "persistent".to_owned());
    assert_eq!(selector(true), expected);
}

/// The drain Job of a removed replica: the receiver image in drain mode on that replica's
/// claim, with the receiver's configuration, Secrets and hardening, its summary in the
/// termination message, and labels that keep it out of the Service and the budget.
#[test]
fn a_drain_job_runs_the_receiver_in_drain_mode_on_the_removed_replicas_claim() {
    use metahook_operator::resources::drain::drain_job;
    let sub = subscription("fb", "acme", &spec());
    let inputs = inputs(&sub);
    let job = drain_job(&inputs, "hash", 2).expect("job");
    assert_eq!(job.metadata.name.as_deref(), Some("fb-drain-2"));
    let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("WebhookSubscription", Some(true))
    );
    let labels = job.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels.get("metahook.io/drain").map(String::as_str),
        Some("data-fb-2")
    );
    assert_eq!(
        labels.get("metahook.io/subscription").map(String::as_str),
        Some("fb")
    );
    assert!(
        !labels.contains_key("app.kubernetes.io/name"),
        "not a receiver pod to the Service's or the budget's selector"
    );
    let spec = job.spec.expect("spec");
    assert_eq!(spec.backoff_limit, Some(6));
    assert_eq!(spec.completions, Some(1));
    assert_eq!(spec.template.metadata.and_then(|m| m.labels), Some(labels));
    let pod = spec.template.spec.expect("pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        volume(&pod, "data")
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("data-fb-2")
    );
    assert!(volume(&pod, "config").config_map.is_some());
    assert!(volume(&pod, "secrets").projected.is_some());
    assert_eq!(
        pod.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(65532)
    );
    let container = &pod.containers[0];
    assert_eq!(container.name, "drain");
    assert_eq!(container.image.as_deref(), Some("metahook-receiver:test"));
    assert_eq!(
        container.args.clone().expect("args"),
        [
            "--config",
            "/etc/metahook/config/config.yaml",
            "drain",
            "--deadline",
            "5m",
            "--lock-wait",
            "60s",
            "--summary-file",
            "/dev/termination-log"
        ]
    );
    assert!(container.ports.is_none() && container.readiness_probe.is_none());
    assert!(container.liveness_probe.is_none());
    assert_eq!(
        container.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
    let mounts: Vec<(&str, &str)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/metahook/config"),
            ("secrets", "/etc/metahook/secrets"),
            ("data", "/var/lib/metahook")
        ]
    );
}

#[test]
fn claim_names_and_ordinals_round_trip_and_nothing_else_parses() {
    use metahook_operator::resources::workload::{claim_name, claim_ordinal};
    assert_eq!(claim_name("fb", 3), "data-fb-3");
    assert_eq!(claim_ordinal("fb", "data-fb-3"), Some(3));
    assert_eq!(claim_ordinal("fb", "data-fb-12"), Some(12));
    for other in [
        "data-fb-",
        "data-fb-x",
        "data-fb-03",
        "data-fbx-1",
        "data-fb-1-2",
        "cache-fb-1",
    ] {
        assert_eq!(claim_ordinal("fb", other), None, "{other}");
    }
}
