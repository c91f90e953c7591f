//! Pure builders: a subscription (plus what the controller resolved) → the objects the
//! operator applies. No I/O here, so every object is asserted field by field in tests.
//!
//! One file per object family: [`config`] (the receiver's configuration), [`secrets`]
//! (verify token, serving certificate), [`workload`] (Deployment or StatefulSet),
//! [`service`], [`ingress`], [`monitoring`] (ServiceMonitor, PodDisruptionBudget),
//! [`autoscaling`] (HorizontalPodAutoscaler, and who owns the workload's replica count).

pub mod autoscaling;
pub mod config;
pub mod drain;
pub mod ingress;
pub mod monitoring;
pub mod secrets;
pub mod service;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{
    SecretKeyRef, TlsModeSpec, TlsTerminationSpec, WebhookSubscription, WebhookSubscriptionSpec,
};
use crate::error::Error;

/// Port of the webhook listener, plain HTTP.
pub const HTTP_PORT: i32 = 8080;
/// Port of the webhook listener with TLS.
pub const HTTPS_PORT: i32 = 8443;
/// Port of the plain-HTTP /metrics, /healthz, /readyz listener.
pub const METRICS_PORT: i32 = 9090;
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/metahook/config";
/// The configuration file's key in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where referenced Secret keys are mounted: `<dir>/<secret>/<key>`.
pub const SECRETS_DIR: &str = "/etc/metahook/secrets";
/// The receiver's data volume (spool, file sinks).
pub const DATA_DIR: &str = "/var/lib/metahook";
/// The key of the generated verify token.
pub const VERIFY_TOKEN_KEY: &str = "verify-token";
/// The key of the generated admin token (the bearer token of the receivers' admin
/// endpoint on the metrics port, docs/replay.md).
pub const ADMIN_TOKEN_KEY: &str = "admin-token";
/// The pod-template annotation that rolls receivers when their inputs change.
pub const CONFIG_HASH_ANNOTATION: &str = "metahook.io/config-hash";
/// The label naming the subscription an object belongs to.
pub const SUBSCRIPTION_LABEL: &str = "metahook.io/subscription";

/// Everything the builders need besides the spec, resolved by the controller.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The subscription.
    pub sub: &'a WebhookSubscription,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The receiver image (the spec's or the operator's default).
    pub image: String,
    /// Where the verify token is: the spec's reference or the generated Secret.
    pub verify_token: SecretKeyRef,
    /// The kubernetes.io/tls Secret the receiver serves (tls.mode server or mutual).
    pub tls_secret: Option<String>,
    /// A digest of the referenced Secrets' contents, so receivers roll when they change.
    pub secrets_digest: String,
}

impl<'a> Inputs<'a> {
    /// Inputs for `sub`, which must carry a name and namespace (as from the API server).
    pub fn new(
        sub: &'a WebhookSubscription,
        default_image: &str,
        tls_secret: Option<String>,
        secrets_digest: String,
    ) -> Result<Inputs<'a>, Error> {
        let name = sub.name_any();
        let namespace = sub.namespace().ok_or_else(|| {
            Error::Incomplete(format!("WebhookSubscription {name} has no namespace"))
        })?;
        let verify_token = verify_token_ref(sub).key;
        let image = sub
            .spec
            .receiver
            .image
            .clone()
            .filter(|image| !image.is_empty())
            .unwrap_or_else(|| default_image.to_owned());
        Ok(Inputs {
            sub,
            name,
            namespace,
            image,
            verify_token,
            tls_secret,
            secrets_digest,
        })
    }

    /// Does the receiver itself speak TLS?
    pub fn receiver_tls(&self) -> bool {
        self.sub.spec.tls.mode != TlsModeSpec::None
    }

    /// Does the receiver itself check the client certificate (rather than an ingress)?
    pub fn receiver_checks_client(&self) -> bool {
        self.sub.spec.tls.mode == TlsModeSpec::Mutual && !self.ingress_terminates()
    }

    /// Does an Ingress terminate Meta's TLS?
    pub fn ingress_terminates(&self) -> bool {
        ingress_terminates(&self.sub.spec)
    }

    /// The webhook container port.
    pub fn webhook_port(&self) -> i32 {
        if self.receiver_tls() {
            HTTPS_PORT
        } else {
            HTTP_PORT
        }
    }

    /// The webhook port's name, which tells its scheme (`https` or `http`).
    pub fn webhook_port_name(&self) -> &'static str {
        if self.receiver_tls() { "https" } else { "http" }
    }

    /// The Service port of the webhook listener.
    pub fn service_port(&self) -> i32 {
        if self.receiver_tls() { 443 } else { 80 }
    }

    /// Labels on every object made for this subscription.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            crate::FIELD_MANAGER.to_owned(),
        );
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            "receiver".to_owned(),
        );
        labels
    }

    /// The labels selecting this subscription's receiver pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "metahook-receiver".to_owned(),
            ),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            (SUBSCRIPTION_LABEL.to_owned(), self.name.clone()),
        ])
    }

    /// Metadata of an owned object: name, namespace, labels, controller owner reference.
    pub fn meta(&self, name: String) -> Result<ObjectMeta, Error> {
        Ok(ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![owner_reference(self.sub)?]),
            ..ObjectMeta::default()
        })
    }

    /// Every Secret key the receiver reads, by Secret: mounted at
    /// `SECRETS_DIR/<secret>/<key>`.
    pub fn mounted_secret_keys(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for reference in secret_references(self.sub) {
            if reference.reader == Reader::Receiver {
                keys.entry(reference.key.name)
                    .or_default()
                    .insert(reference.key.key);
            }
        }
        keys
    }
}

/// Who reads a referenced Secret key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The receiver: the key is mounted at `SECRETS_DIR/<secret>/<key>`.
    Receiver,
    /// The ingress controller (the client CA bundle of mutual TLS it terminates).
    Ingress,
    /// The operator itself: the Graph API tokens of spec.registration (never mounted, and
    /// not part of the pods' rollout digest).
    Operator,
}

/// Where a referenced Secret comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Named in the spec: the user makes it.
    Spec,
    /// The verify token the operator generates when the spec names none.
    GeneratedToken,
    /// The serving certificate the operator issues when the spec names none.
    IssuedCertificate,
    /// The admin token the operator generates for every subscription (never in the spec;
    /// the operator itself reads it to drive replays).
    GeneratedAdminToken,
}

/// One Secret key a subscription needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReference {
    /// The Secret and key.
    pub key: SecretKeyRef,
    /// Who reads it.
    pub reader: Reader,
    /// Who makes it.
    pub source: Source,
}

/// Every Secret key a subscription needs, the one list that mounting (the receiver's
/// keys), resolution (the controller checks and digests all but the issued certificate
/// and the admin token, which it makes itself), and the Secret watch (the names the spec references) use: the
/// app secrets, the verify token, the sinks' keys, the serving certificate when the
/// receiver speaks TLS, the admin token, and the client CA of mutual TLS (for the receiver, or for the
/// ingress controller when an Ingress terminates TLS: ingress-nginx reads `ca.crt`).
pub fn secret_references(sub: &WebhookSubscription) -> Vec<SecretReference> {
    let spec = &sub.spec;
    let from_spec = |key: &SecretKeyRef| SecretReference {
        key: key.clone(),
        reader: Reader::Receiver,
        source: Source::Spec,
    };
    let mut refs = vec![from_spec(&spec.app_secret_ref)];
    refs.extend(spec.previous_app_secret_ref.iter().map(from_spec));
    refs.push(verify_token_ref(sub));
    refs.push(admin_token_ref(&sub.name_any()));
    refs.extend(sink_secret_refs(spec).map(from_spec));
    if spec.tls.mode != TlsModeSpec::None {
        let (name, source) = match &spec.tls.secret_ref {
            Some(secret) => (secret.name.clone(), Source::Spec),
            None => (tls_secret_name(&sub.name_any()), Source::IssuedCertificate),
        };
        for key in ["tls.crt", "tls.key"] {
            refs.push(SecretReference {
                key: SecretKeyRef {
                    name: name.clone(),
                    key: key.to_owned(),
                },
                reader: Reader::Receiver,
                source,
            });
        }
    }
    if spec.tls.mode == TlsModeSpec::Mutual
        && let Some(ca) = &spec.tls.client_ca_ref
    {
        refs.push(if ingress_terminates(spec) {
            SecretReference {
                key: SecretKeyRef {
                    name: ca.name.clone(),
                    key: "ca.crt".to_owned(),
                },
                reader: Reader::Ingress,
                source: Source::Spec,
            }
        } else {
            from_spec(ca)
        });
    }
    refs.extend(registration_refs(spec));
    refs
}

/// The tokens registration needs: the app secret of the app token (when it is not the
/// receiver's), each Page's and each WABA's token.
fn registration_refs(spec: &WebhookSubscriptionSpec) -> Vec<SecretReference> {
    let Some(registration) = &spec.registration else {
        return Vec::new();
    };
    let operator = |key: &SecretKeyRef| SecretReference {
        key: key.clone(),
        reader: Reader::Operator,
        source: Source::Spec,
    };
    let mut refs: Vec<SecretReference> = registration.app_secret_ref.iter().map(operator).collect();
    refs.extend(
        registration
            .pages
            .iter()
            .map(|page| operator(&page.access_token_ref)),
    );
    refs.extend(
        registration
            .whatsapp_business_accounts
            .iter()
            .map(|waba| operator(&waba.access_token_ref)),
    );
    refs
}

/// The verify token: the spec's reference, or the key of the Secret the operator generates.
fn verify_token_ref(sub: &WebhookSubscription) -> SecretReference {
    match &sub.spec.verify_token_ref {
        Some(key) => SecretReference {
            key: key.clone(),
            reader: Reader::Receiver,
            source: Source::Spec,
        },
        None => SecretReference {
            key: SecretKeyRef {
                name: verify_token_secret_name(&sub.name_any()),
                key: VERIFY_TOKEN_KEY.to_owned(),
            },
            reader: Reader::Receiver,
            source: Source::GeneratedToken,
        },
    }
}

/// The generated admin token: mounted into the receivers, which re-read it at every admin
/// call (so it is not part of the pods' rollout digest).
pub fn admin_token_ref(name: &str) -> SecretReference {
    SecretReference {
        key: SecretKeyRef {
            name: admin_token_secret_name(name),
            key: ADMIN_TOKEN_KEY.to_owned(),
        },
        reader: Reader::Receiver,
        source: Source::GeneratedAdminToken,
    }
}

/// Does an Ingress terminate Meta's TLS?
fn ingress_terminates(spec: &WebhookSubscriptionSpec) -> bool {
    spec.ingress
        .as_ref()
        .is_some_and(|ingress| ingress.tls_termination == TlsTerminationSpec::Ingress)
}

/// The file a mounted Secret key appears as in the receiver's container.
pub fn secret_path(reference: &SecretKeyRef) -> String {
    format!("{SECRETS_DIR}/{}/{}", reference.name, reference.key)
}

/// The controller owner reference to the subscription (garbage collection, and the
/// controller's `owns` watches).
pub fn owner_reference(sub: &WebhookSubscription) -> Result<OwnerReference, Error> {
    sub.controller_owner_ref(&()).ok_or_else(|| {
        Error::Incomplete(format!(
            "WebhookSubscription {} has no uid (not read from the API server?)",
            sub.name_any()
        ))
    })
}

/// Name of the generated verify-token Secret.
pub fn verify_token_secret_name(name: &str) -> String {
    format!("{name}-verify-token")
}

/// Name of the generated admin-token Secret.
pub fn admin_token_secret_name(name: &str) -> String {
    format!("{name}-admin-token")
}

/// Name of the operator-issued serving certificate's Secret.
pub fn tls_secret_name(name: &str) -> String {
    format!("{name}-tls")
}

/// Name of the receiver's ConfigMap.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-receiver")
}

/// Hex SHA-256 of some parts, each length-prefixed so their boundaries count.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Names of every Secret a subscription references (not those the operator makes), so a
/// change to one of them triggers a reconciliation: the spec's entries of
/// [`secret_references`].
pub fn referenced_secrets(sub: &WebhookSubscription) -> BTreeSet<String> {
    secret_references(sub)
        .into_iter()
        .filter(|reference| reference.source == Source::Spec)
        .map(|reference| reference.key.name)
        .collect()
}

/// The Secret keys the sinks read (HTTP signing secrets, CA bundles and credentials, NATS
/// credentials and TLS files, PostgreSQL URLs and CAs): those [`config::sink_kinds`] writes
/// into the receiver's configuration.
fn sink_secret_refs(spec: &WebhookSubscriptionSpec) -> impl Iterator<Item = &SecretKeyRef> {
    let mut refs = Vec::new();
    for sink in &spec.delivery.sinks {
        config::sink_kinds(sink, &mut refs);
    }
    refs.into_iter()
}
