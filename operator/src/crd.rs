//! The `WebhookSubscription` custom resource (metahook.io/v1alpha1).
//!
//! Static checks live in the CRD as CEL rules (`x-kubernetes-validations`) so the API
//! server rejects a bad spec at `kubectl apply`, naming the field; checks that need the
//! cluster (a referenced Secret exists) become status conditions instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use metahook_config::META_CLIENT_NAME;
use metahook_config::objects::COVERAGE;
use metahook_config::redact::CREDENTIALS_IN_URL;
use metahook_config::sink::http::RESERVED_HEADERS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of metahook's resources.
pub const GROUP: &str = "metahook.io";

/// The transition rule's message, which the operator also enforces itself against what
/// `status.registration` says is registered (it has no `oldSelf`).
pub const REGISTERED_APP_IS_FIXED: &str = "object and registration.appId cannot change while registered: remove registration first (which unregisters) or recreate the subscription";

/// Paths the receiver serves itself (mirrors the receiver's `RESERVED_PATHS`).
const RESERVED_PATHS_CEL: &str = "['/metrics', '/healthz', '/readyz']";

/// A Meta webhook subscription: one endpoint of one Meta app, reconciled into a receiver
/// with its secrets, certificates, Service and monitoring.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "metahook.io",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    namespaced,
    shortname = "whsub",
    category = "metahook",
    status = "WebhookSubscriptionStatus",
    doc = "A Meta webhook subscription (WhatsApp, Facebook Page, Instagram) reconciled into a secured, observable metahook receiver.",
    printcolumn(name = "Object", type_ = "string", json_path = ".spec.object"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Spool", type_ = "string", json_path = ".status.spool.mode"),
    printcolumn(
        name = "Draining",
        type_ = "integer",
        json_path = ".status.spool.claimsDraining",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 47").message("metadata.name: at most 47 characters, so the names and label values made from it (e.g. NAME-verify-token) stay within 63"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: a DNS label starting with a letter (lowercase letters, digits and '-', no '.'), since the Service and the other objects are named after it")
)]
#[x_kube(validation = object_rule())]
#[x_kube(validation = fields_rule())]
#[x_kube(
    validation = Rule::new("self.delivery.mode != 'direct' || size(self.delivery.sinks) > 0")
        .message("direct delivery needs at least one sink").field_path(".delivery.sinks")
)]
#[x_kube(
    validation = Rule::new("self.delivery.mode != 'direct' || !has(self.delivery.spool)")
        .message("direct delivery keeps no spool volume").field_path(".delivery.spool")
)]
#[x_kube(
    validation = Rule::new("self.receiver.mode != 'sidecar' || (!has(self.ingress) && !self.monitoring.serviceMonitor && !has(self.delivery.spool))")
        .message("a sidecar runs in your own pod: ingress, monitoring.serviceMonitor and delivery.spool do not apply").field_path(".receiver.mode")
)]
#[x_kube(
    validation = Rule::new("!has(self.ingress) || self.ingress.tlsTermination != 'passthrough' || self.tls.mode != 'none'")
        .message("passthrough needs tls.mode server or mutual (the receiver terminates TLS)").field_path(".ingress.tlsTermination")
)]
#[x_kube(
    validation = Rule::new("self.tls.mode != 'mutual' || !has(self.ingress) || self.ingress.tlsTermination != 'ingress' || size(self.ingress.trustedProxyCIDRs) > 0")
        .message("when the ingress terminates mutual TLS the receiver must know the ingress's addresses").field_path(".ingress.trustedProxyCIDRs")
)]
#[x_kube(
    validation = Rule::new("!has(self.registration) || has(self.registration.callbackURL) || (self.receiver.mode != 'sidecar' && has(self.ingress))")
        .message("registration needs a public callback: set registration.callbackURL, or an ingress whose host Meta can reach").field_path(".registration.callbackURL")
)]
#[x_kube(
    validation = Rule::new("!has(self.registration) || !has(self.registration.fields) || self.registration.fields.all(f, f in self.fields)")
        .message("registration.fields must be among spec.fields (the fields the receiver accepts)").field_path(".registration.fields")
)]
#[x_kube(
    validation = Rule::new("!has(self.registration) || size(self.registration.pages) == 0 || self.object in ['page', 'instagram']")
        .message("registration.pages needs object page or instagram").field_path(".registration.pages")
)]
#[x_kube(
    validation = Rule::new("!has(self.registration) || self.object == 'instagram' || self.registration.pages.all(p, !has(p.login) || p.login == 'facebook')")
        .message("registration.pages[].login: instagram needs object instagram").field_path(".registration.pages")
)]
#[x_kube(
    validation = Rule::new("!has(self.registration) || size(self.registration.whatsappBusinessAccounts) == 0 || self.object == 'whatsapp_business_account'")
        .message("registration.whatsappBusinessAccounts needs object whatsapp_business_account").field_path(".registration.whatsappBusinessAccounts")
)]
#[x_kube(
    validation = Rule::new("!has(self.registration) || !has(oldSelf.registration) || (self.object == oldSelf.object && self.registration.appId == oldSelf.registration.appId)")
        .message(REGISTERED_APP_IS_FIXED).field_path(".registration.appId")
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionSpec {
    /// Meta's object, as in the Graph API subscription: whatsapp_business_account, page,
    /// instagram, or another Graph object (user, permissions, application, ...).
    #[schemars(length(min = 1, max = 64))]
    pub object: String,
    /// The subscribed fields (e.g. messages, feed, leadgen). Checked against the fields
    /// metahook knows for the object; Graph objects accept any field name.
    #[schemars(length(min = 1, max = 128), inner(length(min = 1, max = 64)))]
    pub fields: Vec<String>,
    /// URL path Meta is pointed at. Defaults to /webhooks/whatsapp, /webhooks/facebook-page,
    /// /webhooks/instagram or /webhooks/<object>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = path_rule())]
    #[schemars(length(max = 256))]
    pub path: Option<String>,
    /// The Meta app secret that signs every delivery (X-Hub-Signature-256).
    pub app_secret_ref: SecretKeyRef,
    /// The previous app secret, still accepted while Meta switches to the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_app_secret_ref: Option<SecretKeyRef>,
    /// The verify token of Meta's GET handshake. When absent, the operator generates one
    /// (32 random bytes, URL-safe) in the Secret `<name>-verify-token`, key `verify-token`,
    /// and never regenerates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token_ref: Option<SecretKeyRef>,
    /// How accepted events are stored and where they are delivered.
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// TLS on the receiver: none, server (HTTPS) or mutual (Meta's client certificate).
    #[serde(default)]
    pub tls: TlsSpec,
    /// An Ingress routing the public host to the receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// The receiver workload.
    #[serde(default)]
    pub receiver: ReceiverSpec,
    /// Prometheus integration.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Registration of the callback with Meta through the Graph API: the operator
    /// subscribes the app once the receiver is ready, converges it when the spec changes,
    /// and unregisters it when the subscription is deleted (docs/registration.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationSpec>,
}

/// What the operator registers with Meta, and the tokens it needs for each edge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.appSubscription || size(self.pages) > 0 || size(self.whatsappBusinessAccounts) > 0")
        .message("registration manages nothing: set appSubscription, pages or whatsappBusinessAccounts")
)]
#[x_kube(
    validation = Rule::new("!has(self.callbackURL) || size(self.callbackURL) <= 200 || !self.whatsappBusinessAccounts.exists(w, w.overrideCallback || (has(w.phoneNumbers) && size(w.phoneNumbers) > 0))")
        .message("Meta accepts a WhatsApp callback override of at most 200 characters").field_path(".callbackURL")
)]
pub struct RegistrationSpec {
    /// The Meta app's id (App Dashboard, App settings, Basic).
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+$')").message("a numeric Meta app id"))]
    #[schemars(length(min = 1, max = 32))]
    pub app_id: String,
    /// The URL Meta calls. Default: status.endpoint, which is https://<ingress.host><path>
    /// with an ingress (required without one).
    #[serde(
        default,
        rename = "callbackURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("Meta calls only https:// callback URLs"))]
    #[schemars(length(min = 9, max = 2048))]
    pub callback_url: Option<String>,
    /// The fields registered with Meta. Default: spec.fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub fields: Option<Vec<String>>,
    /// The app secret making the app access token `{appId}|{secret}` of the app's
    /// subscriptions edge. Default: spec.appSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_ref: Option<SecretKeyRef>,
    /// Manage the app's subscription to spec.object (`POST /{app-id}/subscriptions`):
    /// the callback URL, the verify token and the fields. Turn off when another
    /// subscription or a person owns the app's callback (e.g. several WABAs, each with
    /// its own callback override). Default true.
    #[serde(default = "default_true")]
    pub app_subscription: bool,
    /// Replace the app's callback, a WABA's callback override or a phone number's
    /// override when Meta holds one this subscription did not set (by hand, or another
    /// subscription's). Default false: such a callback is left alone and `Registered` is
    /// False with reason CallbackOwnedElsewhere naming its host.
    #[serde(default)]
    pub take_over_callback: bool,
    /// Pages (object page) or Instagram accounts (object instagram) to subscribe the app
    /// to (`POST /{id}/subscribed_apps?subscribed_fields=…`). Ids are unique.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    #[schemars(length(max = 64))]
    pub pages: Vec<PageRegistrationSpec>,
    /// WhatsApp Business Accounts to subscribe the app to (`POST
    /// /{waba-id}/subscribed_apps`), with or without a callback override. Ids are unique.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    #[schemars(length(max = 64))]
    pub whatsapp_business_accounts: Vec<WabaRegistrationSpec>,
}

fn default_true() -> bool {
    true
}

/// How an Instagram account's token was issued: which host and which edge register it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstagramLogin {
    /// Facebook Login: `id` is the Facebook Page linked to the Instagram account and the
    /// token a Page token; the Page's `subscribed_apps` on graph.facebook.com gets a Page
    /// field (`feed`), and the Instagram fields are the app subscription's (object
    /// instagram).
    #[default]
    Facebook,
    /// Instagram Login: `id` is the Instagram professional account and the token an
    /// Instagram User token, valid only on graph.instagram.com, whose `subscribed_apps`
    /// gets the Instagram fields.
    Instagram,
}

/// A Page or Instagram account whose `subscribed_apps` edge the operator manages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PageRegistrationSpec {
    /// The Page id (or, with `login: instagram`, the Instagram account id).
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+$')").message("a numeric Page or Instagram account id"))]
    #[schemars(length(min = 1, max = 32))]
    pub id: String,
    /// A Page access token of the app (pages_manage_metadata; leads_retrieval for lead
    /// enrichment) or, with `login: instagram`, an Instagram User token.
    pub access_token_ref: SecretKeyRef,
    /// For object instagram: how the token was issued, `facebook` (default: Facebook Login,
    /// a Page token, graph.facebook.com) or `instagram` (Instagram Login, an Instagram User
    /// token, graph.instagram.com). Only `facebook` with object page.
    #[serde(default)]
    pub login: InstagramLogin,
    /// Send `appsecret_proof` (hex HMAC-SHA256 of this token keyed with the app secret)
    /// with every Graph API call made with this token, as Meta asks of servers (an app with
    /// "Require App Secret" on refuses calls without it). Turn off only for a token issued
    /// to another app than registration.appId, whose secret the operator does not hold
    /// (Meta answers "Invalid appsecret_proof"). Default true.
    #[serde(default = "default_true")]
    pub app_secret_proof: bool,
}

/// A WhatsApp Business Account whose `subscribed_apps` edge the operator manages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WabaRegistrationSpec {
    /// The WhatsApp Business Account id.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+$')").message("a numeric WhatsApp Business Account id"))]
    #[schemars(length(min = 1, max = 32))]
    pub id: String,
    /// A system-user or business token with whatsapp_business_management.
    pub access_token_ref: SecretKeyRef,
    /// Send `appsecret_proof` (hex HMAC-SHA256 of this token keyed with the app secret)
    /// with every Graph API call made with this token, as Meta asks of servers (an app with
    /// "Require App Secret" on refuses calls without it). Turn off only for a token issued
    /// to another app than registration.appId, whose secret the operator does not hold
    /// (Meta answers "Invalid appsecret_proof"). Default true.
    #[serde(default = "default_true")]
    pub app_secret_proof: bool,
    /// Point this WABA's message-level fields (messages, calls, ...) at this
    /// subscription's callback with a per-WABA override, instead of the app's callback.
    /// Template and account-level fields still go to the app's callback. Default false.
    #[serde(default)]
    pub override_callback: bool,
    /// Phone numbers of this WABA whose own callback override (`POST /{phone-number-id}`
    /// with `webhook_configuration`) points at this subscription's callback, with this
    /// WABA's token. Meta prefers a phone number's override to the WABA's. Ids are unique.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    #[schemars(length(max = 64))]
    pub phone_numbers: Vec<PhoneNumberRegistrationSpec>,
}

/// A WhatsApp phone number whose callback override the operator manages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PhoneNumberRegistrationSpec {
    /// The phone number id (WhatsApp Manager, or `GET /{waba-id}/phone_numbers`), not the
    /// phone number itself.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+$')").message("a numeric WhatsApp phone number id"))]
    #[schemars(length(min = 1, max = 32))]
    pub id: String,
}

/// A key of a Secret in the subscription's namespace.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord,
)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[x_kube(validation = secret_name_rule())]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$') && self != '.' && self != '..'").message("a Secret key: letters, digits, '-', '_' and '.' (it becomes a file name in the receiver)"))]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Storage and delivery of accepted events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// spool: answer Meta once the events are fsync'd in the receiver's spool, then deliver;
    /// direct: answer once every sink acknowledged them (no spool).
    #[serde(default)]
    pub mode: DeliveryModeSpec,
    /// The spool's volume. In spool mode the receiver is a StatefulSet with a
    /// PersistentVolumeClaim per replica (2Gi unless `size` says otherwise), whether or not
    /// this is set; `ephemeral: true` alone makes it an emptyDir, lost with the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolSpec>,
    /// Where events are delivered. Names are unique.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 16))]
    pub sinks: Vec<SinkSpec>,
    /// Retries before an event goes to the dead letters (per sink unless the sink sets its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// How accepted events reach the sinks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryModeSpec {
    /// 200 once fsync'd in the spool; sinks consume it on their own.
    #[default]
    Spool,
    /// 200 once every sink acknowledged.
    Direct,
}

/// The spool's volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.ephemeral) || !self.ephemeral || (!has(self.size) && !has(self.storageClassName))")
        .message("an ephemeral spool is an emptyDir: size and storageClassName do not apply")
)]
pub struct SpoolSpec {
    /// Size of each replica's PersistentVolumeClaim, e.g. 4Gi; 2Gi when absent (see
    /// docs/operations.md, "Spool sizing").
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("a quantity such as 1Gi"))]
    #[schemars(length(min = 1, max = 32))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// StorageClass of the volumes; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// true: each receiver's spool is an emptyDir instead of a PersistentVolumeClaim, and
    /// events already acknowledged to Meta are lost when a pod is deleted (rollout, node
    /// drain, eviction, scale-down). The status says so (`SpoolDurable` False).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// Keep delivered events for replays (a WebhookReplay, docs/replay.md): the
    /// receivers' `spool.retention`. Absent: a segment is deleted once every sink has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<SpoolRetentionSpec>,
}

/// How long delivered events stay in each receiver's spool; set maxAge, maxBytes or both.
/// Retained bytes are not counted against the spool's limit: size the volume for both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.maxAge) || has(self.maxBytes)")
        .message("set maxAge, maxBytes or both (omit retention to keep nothing)")
)]
pub struct SpoolRetentionSpec {
    /// Delivered events younger than this are kept, e.g. 72h.
    #[schemars(length(min = 1, max = 32))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Most bytes of delivered events kept, e.g. 20GiB (at least the 64 MiB segment).
    #[schemars(length(min = 1, max = 32))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
}

/// The claim size when `spec.delivery.spool.size` is absent: about five hours of a 50
/// webhooks/s, 2 KB stream with every sink down (docs/operations.md, "Spool sizing").
pub const DEFAULT_SPOOL_SIZE: &str = "2Gi";

/// One sink: set exactly one of nats, http, postgres, kafka, file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.nats), has(self.http), has(self.postgres), has(self.kafka), has(self.file)].filter(x, x).size() == 1")
        .message("set exactly one sink kind: nats, http, postgres, kafka or file")
)]
pub struct SinkSpec {
    /// The sink's name (its cursor, metrics label and dead-letter file).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$')").message("lowercase letters, digits, '-' and '_'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Publish to NATS JetStream (Nats-Msg-Id = event id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSinkSpec>,
    /// POST each event as JSON (Idempotency-Key = event id), or batchSize events per JSON
    /// array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSinkSpec>,
    /// Store events, conversations, messages and engagement in PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSinkSpec>,
    /// Produce each event to Kafka (idempotent producer, acks=all; the event id in the
    /// metahook-event-id header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,
    /// Append JSON lines to a file on the receiver's data volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkSpec>,
    /// Retries of this sink (overrides delivery.retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// NATS JetStream sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.createStream || has(self.stream)")
        .message("createStream needs the stream's name").field_path(".stream")
)]
#[x_kube(
    validation = Rule::new("has(self.userRef) == has(self.passwordRef)")
        .message("userRef and passwordRef go together").field_path(".passwordRef")
)]
#[x_kube(
    validation = Rule::new("[has(self.userRef), has(self.tokenRef), has(self.nkeySeedRef), has(self.credentialsRef)].filter(x, x).size() <= 1")
        .message("choose one way to authenticate: userRef/passwordRef, tokenRef, nkeySeedRef or credentialsRef")
)]
pub struct NatsSinkSpec {
    /// Server URL, e.g. nats://nats.nats:4222 (tls:// for TLS); several, comma-separated.
    /// Without credentials: they would be stored in the ConfigMap and logged.
    #[x_kube(validation = no_credentials_rule(NATS_CREDENTIALS))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Subject template; placeholders {platform}, {object}, {field}, {kind}, {endpoint}.
    /// Default meta.{platform}.{field}.{kind}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The stream (required with createStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Create the stream when absent.
    #[serde(default)]
    pub create_stream: bool,
    /// The user name (with passwordRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ref: Option<SecretKeyRef>,
    /// The password (with userRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_ref: Option<SecretKeyRef>,
    /// An authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ref: Option<SecretKeyRef>,
    /// An NKey seed (SU...), which signs the server's nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_ref: Option<SecretKeyRef>,
    /// A .creds file (user JWT and NKey seed, as nsc writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<SecretKeyRef>,
    /// TLS to the server (set, TLS is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSpec>,
}

/// TLS to a sink's servers (the NATS server, the Kafka brokers).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.clientCertRef) == has(self.clientKeyRef)")
        .message("clientCertRef and clientKeyRef go together").field_path(".clientKeyRef")
)]
pub struct ClientTlsSpec {
    /// PEM CA bundle the servers' certificates chain to (the system's roots otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<SecretKeyRef>,
    /// PEM client certificate, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_ref: Option<SecretKeyRef>,
    /// PEM private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_ref: Option<SecretKeyRef>,
}

/// Kafka sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSinkSpec {
    /// Brokers, host:port each; the client learns the rest of the cluster from them.
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[^/ ,]+:[0-9]{1,5}$'))").message("host:port of each broker"))]
    #[schemars(length(min = 1, max = 32))]
    pub bootstrap_servers: Vec<String>,
    /// Topic template; placeholders {platform}, {object}, {field}, {kind}, {endpoint}.
    /// The topics must exist. Default meta.{platform}.
    #[x_kube(validation = Rule::new("self.matches('^([A-Za-z0-9._-]|\\\\{(platform|object|field|kind|endpoint)\\\\})+$')").message("a topic name (letters, digits, '.', '_', '-') with the placeholders {platform}, {object}, {field}, {kind}, {endpoint}"))]
    #[schemars(length(min = 1, max = 249))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The record key: conversation (the account and the other side of the conversation:
    /// per-conversation order), account, eventId or none. Default conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KafkaKeySpec>,
    /// Compression of record batches: none, gzip, snappy, lz4, zstd. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<KafkaCompressionSpec>,
    /// TLS to the brokers (set, TLS is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSpec>,
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
    /// How long one attempt waits for the brokers' acknowledgement (e.g. 30s, the
    /// default) before the batch is retried with backoff.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("a duration such as 30s"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_timeout: Option<String>,
}

/// The record key of a Kafka sink.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KafkaKeySpec {
    /// The account and the other side of the conversation.
    Conversation,
    /// The business account.
    Account,
    /// The event id.
    EventId,
    /// No key.
    None,
}

/// The compression of a Kafka sink's record batches.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KafkaCompressionSpec {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// SASL to the Kafka brokers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: KafkaSaslMechanismSpec,
    /// The user name.
    pub user_ref: SecretKeyRef,
    /// The password.
    pub password_ref: SecretKeyRef,
}

/// A SASL mechanism.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaSaslMechanismSpec {
    /// The password in clear (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// HTTP sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.basicAuth) || !has(self.bearerTokenRef)")
        .message("choose one way to authenticate: basicAuth or bearerTokenRef").field_path(".bearerTokenRef")
)]
#[x_kube(
    validation = Rule::new("!(has(self.basicAuth) || has(self.bearerTokenRef)) || !has(self.headers) || !self.headers.exists(h, h.name.matches('(?i)^authorization$'))")
        .message("an Authorization header is already set by basicAuth or bearerTokenRef").field_path(".headers")
)]
pub struct HttpSinkSpec {
    /// The URL each event is POSTed to. Without credentials: they would be stored in the
    /// ConfigMap and logged.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("an http:// or https:// URL"))]
    #[x_kube(validation = no_credentials_rule(HTTP_CREDENTIALS))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Secret of the X-Metahook-Signature HMAC over each body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
    /// PEM CA bundle that signed the service's certificate (the system's roots otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<SecretKeyRef>,
    /// Events per POST. Absent or 1: each event is one JSON object. More: JSON arrays of up
    /// to this many events, each keeping its id, for services that accept them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: Option<u32>,
    /// HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<HttpBasicAuthSpec>,
    /// A token sent as Authorization: Bearer <token>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_ref: Option<SecretKeyRef>,
    /// Headers sent with every POST whose values are secrets (an API key, say). Names are
    /// unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeaderSpec>,
}

/// HTTP basic authentication: a user name (or a Secret key holding it) and a password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.username) != has(self.usernameRef)")
        .message("set one of username and usernameRef").field_path(".username")
)]
pub struct HttpBasicAuthSpec {
    /// The user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username: Option<String>,
    /// The user name, from a Secret (instead of username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_ref: Option<SecretKeyRef>,
    /// The password.
    pub password_ref: SecretKeyRef,
}

/// A header of every POST whose value is kept in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderSpec {
    /// The header's name, e.g. X-Api-Key; not one the sink sets itself (Content-Type,
    /// Content-Length, Transfer-Encoding, Host, Connection, Idempotency-Key,
    /// X-Metahook-Signature).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')").message("a header name: letters, digits and !#$%&*+.^_|~-"))]
    #[x_kube(validation = reserved_header_rule())]
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// The header's value.
    pub value_ref: SecretKeyRef,
}

/// PostgreSQL sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.sslMode) || !(self.sslMode in ['verify-ca', 'verify-full']) || has(self.caRef)")
        .message("sslMode verify-ca and verify-full check the server's certificate against caRef: set it").field_path(".caRef")
)]
#[x_kube(
    validation = Rule::new("!has(self.sslMode) || self.sslMode != 'disable' || !has(self.caRef)")
        .message("sslMode disable uses no caRef (no TLS)").field_path(".caRef")
)]
pub struct PostgresSinkSpec {
    /// The connection URL (postgres://user:password@host/db), kept in a Secret since it
    /// holds a password.
    pub url_secret_ref: SecretKeyRef,
    /// Schema of metahook's tables (migrated at start). Default metahook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// TLS as libpq's sslmode: disable, prefer, require (encrypted; the chain is checked
    /// when caRef is set), verify-ca (chain), verify-full (chain and host name). Default:
    /// the URL's sslmode, else prefer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<PostgresSslModeSpec>,
    /// PEM CA bundle the server's certificate chains to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<SecretKeyRef>,
}

/// libpq's sslmode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslModeSpec {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unchecked.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate chaining to caRef.
    VerifyCa,
    /// TLS with a certificate chaining to caRef and naming the host.
    VerifyFull,
}

/// File sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileSinkSpec {
    /// File name on the receiver's data volume (/var/lib/metahook/files/).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]+$') && self != '.' && self != '..'").message("a plain file name"))]
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
}

/// Retries before dead letters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts per batch before its events go to the dead letters; 0 retries forever.
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Longest wait between attempts, e.g. 5m. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("a duration such as 30s, 5m or 1h"))]
    #[schemars(length(min = 1, max = 32))]
    pub max_backoff: Option<String>,
}

/// TLS on the receiver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'mutual' || has(self.clientCARef)")
        .message("tls.mode mutual needs the CA bundle Meta's client certificate chains to").field_path(".clientCARef")
)]
#[x_kube(
    validation = Rule::new("self.mode != 'none' || (!has(self.secretRef) && !has(self.clientCARef))")
        .message("secretRef and clientCARef need tls.mode server or mutual").field_path(".mode")
)]
pub struct TlsSpec {
    /// none: plain HTTP (TLS ends before the receiver); server: HTTPS; mutual: HTTPS and
    /// Meta's client certificate required.
    #[serde(default)]
    pub mode: TlsModeSpec,
    /// A kubernetes.io/tls Secret to serve (e.g. issued by cert-manager), used as it is.
    /// When absent, the operator issues a certificate from the namespace's metahook CA and
    /// renews it at two thirds of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// The CA bundle client certificates must chain to (Meta's CA), for mutual.
    #[serde(
        default,
        rename = "clientCARef",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ca_ref: Option<SecretKeyRef>,
    /// Names accepted in the client certificate's CN or DNS SANs.
    #[serde(default = "default_allowed_client_names")]
    #[schemars(length(min = 1))]
    pub allowed_client_names: Vec<String>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            mode: TlsModeSpec::None,
            secret_ref: None,
            client_ca_ref: None,
            allowed_client_names: default_allowed_client_names(),
        }
    }
}

fn default_allowed_client_names() -> Vec<String> {
    vec![META_CLIENT_NAME.to_owned()]
}

/// What TLS the receiver speaks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsModeSpec {
    /// Plain HTTP.
    #[default]
    None,
    /// HTTPS.
    Server,
    /// HTTPS with a required client certificate.
    Mutual,
}

/// A Secret in the subscription's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// The Secret's name.
    #[x_kube(validation = secret_name_rule())]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An Ingress (ingress-nginx annotations) for the public host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The public host Meta calls, e.g. hooks.example.com.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("a DNS name"))]
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The IngressClass, e.g. nginx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// passthrough: the ingress forwards TLS untouched and the receiver terminates it
    /// (needs tls.mode server or mutual); ingress: the ingress terminates TLS (and checks
    /// the client certificate when tls.mode is mutual).
    #[serde(default)]
    pub tls_termination: TlsTerminationSpec,
    /// The kubernetes.io/tls Secret the ingress serves for host (tlsTermination ingress);
    /// it must be publicly trusted, since Meta calls it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = secret_name_rule())]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Addresses of the ingress controller's pods, whose client-certificate headers the
    /// receiver believes (tlsTermination ingress with tls.mode mutual).
    #[serde(default, rename = "trustedProxyCIDRs")]
    pub trusted_proxy_cidrs: Vec<String>,
    /// Extra annotations on the Ingress.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where TLS from Meta ends.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsTerminationSpec {
    /// At the ingress.
    #[default]
    Ingress,
    /// At the receiver (ingress-nginx ssl-passthrough).
    Passthrough,
}

/// The receiver workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'sidecar' || !has(self.autoscaling)")
        .message("receiver.autoscaling does not apply to a sidecar, which runs in your own pod: scale your own workload").field_path(".autoscaling")
)]
#[x_kube(
    validation = Rule::new("!has(self.autoscaling) || self.replicas == 1")
        .message("with autoscaling the autoscaler sets the pod count: remove replicas and set autoscaling.minReplicas instead").field_path(".replicas")
)]
pub struct ReceiverSpec {
    /// deployment: the operator runs the receiver; sidecar: it prepares the configuration,
    /// Secrets and certificates for a receiver container in your own pod (docs/sidecar.md).
    #[serde(default)]
    pub mode: ReceiverModeSpec,
    /// Receiver pods. Above 1 a PodDisruptionBudget keeps one available. Not with
    /// autoscaling (leave it at its default, 1): the autoscaler sets the count then.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Scale the receivers with a HorizontalPodAutoscaler between minReplicas and
    /// maxReplicas (docs/operations.md#autoscaling). The operator then leaves the workload's
    /// replica count to the autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Receiver image; the operator's --receiver-image when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the receiver container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Seconds a terminating receiver pod has (its terminationGracePeriodSeconds): it stops
    /// taking traffic for 5 s, then delivers its backlog for the rest but 5 s; what is
    /// left stays in its spool. 60 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 15, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}

impl Default for ReceiverSpec {
    fn default() -> Self {
        ReceiverSpec {
            mode: ReceiverModeSpec::Deployment,
            replicas: default_replicas(),
            autoscaling: None,
            image: None,
            resources: None,
            termination_grace_period_seconds: None,
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// The receivers' HorizontalPodAutoscaler: a CPU target, a per-pod custom metric, or both
/// (the autoscaler follows whichever wants more pods).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("autoscaling.minReplicas must not exceed maxReplicas").field_path(".minReplicas")
)]
pub struct AutoscalingSpec {
    /// The fewest receiver pods. Above 1 a PodDisruptionBudget lets voluntary
    /// disruptions (node drains) take one receiver at a time.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// The most receiver pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// The average CPU use to keep, in percent of the receiver container's CPU request
    /// (receiver.resources; 100m by default). Default 80 when no podsMetric is set; with
    /// podsMetric and without this, CPU is not a target.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// A per-pod metric of the custom metrics API (custom.metrics.k8s.io, e.g. served by
    /// prometheus-adapter) and the average value per pod to keep, e.g. requests per second
    /// from metahook_requests_total (docs/operations.md has the adapter rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_metric: Option<PodsMetricSpec>,
}

/// A per-pod metric the autoscaler averages over the receiver pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodsMetricSpec {
    /// The metric's name in the custom metrics API, e.g. metahook_requests_per_second.
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z_:][a-zA-Z0-9_:]*$')").message("a metric name: letters, digits, '_' and ':', not starting with a digit"))]
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// The average value per pod to keep, a quantity such as 50 or 500m (0.5).
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(m|k|M|G)?$') && !self.matches('^[0.]+(m|k|M|G)?$')").message("a positive quantity such as 50 or 500m"))]
    #[schemars(length(min = 1, max = 32))]
    pub target_average_value: String,
}

/// Who runs the receiver.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverModeSpec {
    /// A Deployment (or StatefulSet with a persistent spool) and a Service.
    #[default]
    Deployment,
    /// A container in your own pod.
    Sidecar,
}

/// Prometheus integration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor (when the monitoring.coreos.com API exists on the cluster).
    #[serde(default)]
    pub service_monitor: bool,
}

/// What the operator observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The callback URL to register with Meta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Where the verify token is (the given one or the generated one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<SecretKeyRef>,
    /// Receiver pods, from the workload's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverStatus>,
    /// The serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// What the operator registered with Meta (spec.registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationStatus>,
    /// Where accepted events are kept, and the claims of removed replicas being drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolStatus>,
    /// Ready, SecretsResolved, CertificateReady, ReceiverAvailable, and Registered with
    /// spec.registration.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// What is registered with Meta: what the operator owns there, so it changes or removes
/// only that.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationStatus {
    /// The app.
    pub app_id: String,
    /// The object of the app subscription.
    pub object: String,
    /// The app subscription's fields the operator registered (empty when it manages no
    /// app subscription).
    #[serde(default)]
    pub registered_fields: Vec<String>,
    /// The callback URL registered.
    #[serde(
        default,
        rename = "callbackURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_url: Option<String>,
    /// HMAC-SHA256 of the verify token registered, keyed with the app access token
    /// (`{appId}|{app secret}`), hex, first 16 characters: a rotated token is registered
    /// again, and the digest tells nothing about the token to whoever lacks the app secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token_digest: Option<String>,
    /// The app secret the app token was made from (for unregistering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_ref: Option<SecretKeyRef>,
    /// Pages and Instagram accounts subscribed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<RegisteredNode>,
    /// WhatsApp Business Accounts subscribed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whatsapp_business_accounts: Vec<RegisteredNode>,
    /// When Meta last accepted a change (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_registered_time: Option<String>,
    /// The last Graph API error (Meta's message, type, code and subcode; the per-request
    /// fbtrace_id is only in the Event and the log); absent once a pass succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A Page, Instagram account or WABA the app is subscribed to by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredNode {
    /// Its id.
    pub id: String,
    /// The token used (for unregistering).
    pub access_token_ref: SecretKeyRef,
    /// The token was sent without `appsecret_proof` (spec `appSecretProof: false`), and is
    /// when unregistering.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_app_secret_proof: bool,
    /// The token is an Instagram User token (Instagram Login): the edge is on
    /// graph.instagram.com, where unregistering removes it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instagram_login: bool,
    /// The subscribed_fields the operator set (Pages and Instagram).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The callback override set (WABAs).
    #[serde(
        default,
        rename = "overrideCallbackURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub override_callback_url: Option<String>,
    /// For a WABA: its phone numbers whose callback override the operator set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phone_numbers: Vec<RegisteredPhoneNumber>,
}

/// A phone number whose callback override the operator set: removed only while Meta still
/// holds this URL, so an override someone else set since is never touched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredPhoneNumber {
    /// The phone number id.
    pub id: String,
    /// The override URL set.
    #[serde(rename = "overrideCallbackURL")]
    pub override_callback_url: String,
}

/// Receiver pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverStatus {
    /// Pods the workload wants.
    pub replicas: i32,
    /// Pods passing /readyz.
    pub ready_replicas: i32,
}

/// Where accepted events are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStatus {
    /// persistent (a PersistentVolumeClaim per replica), ephemeral (an emptyDir: events
    /// are lost with the pod), direct (no spool: Meta is answered once the sinks took the
    /// events) or sidecar (your pod's volumes).
    pub mode: String,
    /// Claims of replicas that no longer exist whose events are not yet delivered.
    #[serde(default)]
    pub claims_draining: i32,
    /// Events the draining claims still held when their drain Jobs last reported.
    #[serde(default)]
    pub events_left: i64,
    /// Claims kept because they hold dead letters (never deleted with a claim).
    #[serde(default)]
    pub claims_kept: i32,
    /// One entry per claim of a removed replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<DrainStatus>,
    /// While the receivers move from a Deployment to a StatefulSet (or back): what the
    /// previous workload still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
}

/// The drain of one removed replica's claim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// The PersistentVolumeClaim, e.g. data-NAME-2.
    pub claim: String,
    /// Waiting (its pod still terminates), Draining (a Job delivers its events), Stalled
    /// (the Job ran out of attempts; retried), Kept (it holds dead letters).
    pub state: String,
    /// The drain Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Undelivered events at the Job's last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_left: Option<i64>,
    /// Dead letters at the Job's last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    /// What the Job last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The serving certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The kubernetes.io/tls Secret holding it.
    pub secret_name: String,
    /// Its expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator renews it (RFC 3339); absent for a user-provided certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
}

/// Objects metahook documents (others are accepted by the receiver as `unknown`, but a
/// subscription names what Meta will send).
pub fn documented_objects() -> Vec<&'static str> {
    let mut objects: Vec<&'static str> = COVERAGE.iter().map(|row| row.object).collect();
    objects.dedup();
    objects
}

/// Fields metahook documents for an object; `None` where any field is accepted (Graph
/// objects, whose fields are the app's own).
pub fn documented_fields(object: &str) -> Option<Vec<&'static str>> {
    let fields: Vec<&'static str> = COVERAGE
        .iter()
        .filter(|row| row.object == object)
        .map(|row| row.field)
        .collect();
    if fields.is_empty() || fields.contains(&"*") {
        None
    } else {
        Some(fields)
    }
}

fn cel_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("'{item}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn object_rule() -> Rule {
    Rule::new(format!(
        "self.object in {}",
        cel_list(&documented_objects())
    ))
    .message("not an object Meta sends webhooks for (see docs/crd-reference.md)")
    .field_path(".object")
}

/// One rule per documented object with a closed field list, generated from the receiver's
/// coverage table so the CRD and the normalizer never disagree.
fn fields_rule() -> Rule {
    let mut clauses = Vec::new();
    for object in documented_objects() {
        if let Some(fields) = documented_fields(object) {
            clauses.push(format!(
                "(self.object != '{object}' || self.fields.all(f, f in {}))",
                cel_list(&fields)
            ));
        }
    }
    Rule::new(clauses.join(" && "))
        .message("a field is not documented for this object (see docs/crd-reference.md)")
        .field_path(".fields")
}

/// A Secret's name as Kubernetes allows it (a DNS subdomain): it names a volume's
/// directory in the receiver, so nothing else (no '/', no '..') may pass.
fn secret_name_rule() -> Rule {
    Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
    )
    .message("a Secret name (lowercase letters, digits, '-' and '.')")
}

/// What a NATS sink uses instead of credentials in its URL.
pub const NATS_CREDENTIALS: &str = "userRef/passwordRef, tokenRef, nkeySeedRef or credentialsRef";
/// What an HTTP sink uses instead of credentials in its URL.
pub const HTTP_CREDENTIALS: &str = "basicAuth, bearerTokenRef or headers";

/// Why a sink URL with credentials is refused, and what to use instead: the message of the
/// CEL rule and of the operator's own check.
pub fn url_credentials_message(instead: &str) -> String {
    format!("credentials in a URL end up in the ConfigMap and logs; use {instead}")
}

/// A sink URL holds no credentials: the receiver's [`CREDENTIALS_IN_URL`] pattern, which
/// the operator's check (`resources::config`) matches too.
fn no_credentials_rule(instead: &str) -> Rule {
    let pattern = CREDENTIALS_IN_URL
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    Rule::new(format!("!self.matches('{pattern}')")).message(kube::core::Message::Message(
        url_credentials_message(instead),
    ))
}

/// A header the HTTP sink sets itself cannot be configured (the receiver's
/// `RESERVED_HEADERS`).
fn reserved_header_rule() -> Rule {
    Rule::new(format!(
        "!self.matches('(?i)^({})$')",
        RESERVED_HEADERS.join("|")
    ))
    .message("set by the sink itself: Content-Type, Content-Length, Transfer-Encoding, Host, Connection, Idempotency-Key, X-Metahook-Signature")
}

fn path_rule() -> Rule {
    Rule::new(format!(
        "self.matches('^/[A-Za-z0-9._~/-]*$') && !(self in {RESERVED_PATHS_CEL})"
    ))
    .message("starts with '/', holds only A-Z a-z 0-9 . _ ~ / -, and is not /metrics, /healthz or /readyz")
}

impl WebhookSubscriptionSpec {
    /// The endpoint path: the spec's, or the default for the object.
    pub fn effective_path(&self) -> String {
        if let Some(path) = &self.path {
            return path.clone();
        }
        match self.object.as_str() {
            "whatsapp_business_account" => "/webhooks/whatsapp".to_owned(),
            "page" => "/webhooks/facebook-page".to_owned(),
            "instagram" => "/webhooks/instagram".to_owned(),
            other => format!("/webhooks/{}", other.replace('_', "-")),
        }
    }
}

/// The CRD as YAML, as committed in crds/webhooksubscription.yaml.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    let body = serde_saphyr::to_string(&WebhookSubscription::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p metahook-operator --bin crdgen`; do not edit.\n{body}"
    ))
}
