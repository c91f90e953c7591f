//! The `metahook-operator` command line: its flags ([`Cli`]). The binary's entry point
//! ([`crate::operator::main`]) parses them and hands them to [`crate::operator::run`]; this
//! module knows nothing of the running operator.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Reconciles WebhookSubscription resources into metahook receivers.
///
/// Talks to the cluster of the in-cluster service account, or of KUBECONFIG /
/// ~/.kube/config when run as a local process.
#[derive(Debug, Parser)]
#[command(name = "metahook-operator", version)]
pub struct Cli {
    /// Receiver image for subscriptions that name none.
    #[arg(long, env = "METAHOOK_RECEIVER_IMAGE", default_value = concat!("metahook-receiver:", env!("CARGO_PKG_VERSION")))]
    pub receiver_image: String,
    /// Address of /metrics, /healthz and /readyz (8081, so it does not collide with a
    /// receiver on its default 8080 on the same machine).
    #[arg(long, env = "METAHOOK_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,
    /// Watch only these namespaces, comma-separated (all namespaces when absent), so the
    /// operator can run with Roles in those namespaces instead of a ClusterRole.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Run without the leader Lease (a single replica, e.g. on a laptop).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "metahook-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (default: host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lifetime of the serving certificates the operator issues (renewed at two thirds).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub certificate_lifetime: Duration,
    /// Base URL of Meta's Graph API (tests point it at a local fake).
    #[arg(
        long,
        env = "METAHOOK_GRAPH_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub graph_url: String,
    /// Base URL of the Graph API for Instagram User tokens (Instagram Login:
    /// `registration.pages[].login: instagram`).
    #[arg(
        long,
        env = "METAHOOK_GRAPH_INSTAGRAM_URL",
        default_value = "https://graph.instagram.com"
    )]
    pub graph_instagram_url: String,
    /// Graph API version of registration calls (the receiver's Lead Ads enrichment defaults
    /// to the same one).
    #[arg(long, env = "METAHOOK_GRAPH_API_VERSION", default_value = metahook_config::GRAPH_API_VERSION)]
    pub graph_api_version: String,
    /// Timeout of one Graph API request (a subscribe includes Meta's verification GET of
    /// the callback).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub graph_timeout: Duration,
    /// Attempts of one Graph API call when Meta answers 5xx, a rate limit or nothing;
    /// after them the pass fails and the controller backs off (5 s doubling to 5 min).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub graph_max_attempts: u32,
    /// First wait between those attempts (doubling; four times as long after a rate limit).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub graph_retry_backoff: Duration,
    /// How long after a deletion the finalizer keeps trying to unregister from Meta before
    /// it removes itself anyway, with a Warning Event naming what it left behind.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub graph_unregister_timeout: Duration,
    /// A receiver image a subscription's spec.receiver.image may name, besides
    /// --receiver-image (always allowed); repeatable, or comma-separated in the variable.
    /// An entry ending in `*` matches by prefix, e.g. `registry.example.com/metahook-receiver:*`.
    /// Any other image is refused (`Ready` False, reason ImageNotAllowed).
    #[arg(
        long = "allowed-receiver-image",
        env = "METAHOOK_ALLOWED_RECEIVER_IMAGES",
        value_delimiter = ','
    )]
    pub allowed_receiver_images: Vec<String>,
    /// An annotation key spec.ingress.annotations may set; repeatable, or comma-separated
    /// in the variable (an entry ending in `*` matches by prefix; an empty value allows
    /// none). Keys ending in `snippet`, and those the operator sets itself (TLS and
    /// client-certificate settings), are never allowed; any other key is refused (reason
    /// AnnotationNotAllowed).
    #[arg(
        long = "allowed-ingress-annotation",
        env = "METAHOOK_ALLOWED_INGRESS_ANNOTATIONS",
        value_delimiter = ',',
        default_values = crate::policy::DEFAULT_INGRESS_ANNOTATIONS
    )]
    pub allowed_ingress_annotations: Vec<String>,
    /// A host a registration's callback may name (spec.registration.callbackURL, or without
    /// it the ingress host's endpoint); repeatable, or comma-separated in the variable.
    /// `*.example.com` allows every host below example.com. With none set, only each
    /// subscription's own spec.ingress.host is allowed (the spec names it itself: set this
    /// in production). Any other host, or a URL that is not https, is refused before a
    /// Graph API call (reason CallbackNotAllowed).
    #[arg(
        long = "allowed-callback-host",
        env = "METAHOOK_ALLOWED_CALLBACK_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_callback_hosts: Vec<String>,
    /// Log lines as JSON (default) or text.
    #[arg(long, default_value = "json")]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}
