//! HTTP: routing, limits, the webhook handler, and graceful shutdown.
//!
//! [`Receiver::handle`] is the whole request path and takes any body type, so tests can
//! drive it without a socket; [`serve`] runs it on a TCP listener with hyper, in plain HTTP
//! or over TLS ([`crate::tls`]), as the webhook listener or as the probes-only
//! `metrics_listen` one. Requests on endpoint paths pass [`crate::client_auth`] first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::acceptor::{self, AcceptError, Acceptor, Pending};
use crate::admission::{self, Admission, BodyRefused, Refused};
use crate::client_auth::{ClientAuth, Peer, Refusal};
use crate::config::{Config, ConfigError, EndpointConfig, Limits, RESERVED_PATHS};
use crate::metrics::Metrics;
use crate::metrics::events::{
    AdmissionRefused, BodyBudgetSampled, EndpointServed, EventsAccepted, ReadinessChanged,
    RequestAnswered, RequestNormalized, RequestRefused, SignatureRefused, SpoolCommitted,
};
use crate::normalize;
use crate::normalizer;
use crate::secrets::{SecretError, SecretStore};
use crate::spool::Key;
use crate::spool::record::{self, RawRequest};
use crate::tls::TlsServer;
use crate::verify::{self, Algorithm, HandshakeError, SignatureError};

/// One configured endpoint and its live secrets.
#[derive(Debug)]
pub struct Endpoint {
    /// Its configuration.
    pub config: EndpointConfig,
    /// Its secrets, reloaded while running.
    pub secrets: SecretStore,
}

/// The request handler and the state it shares across connections.
#[derive(Debug)]
pub struct Receiver {
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// Where verified events go before the 200: the spool, or the sinks directly.
    acceptor: Acceptor,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// What a POST must pass before its body is read, and the body's bounds.
    admission: Admission,
    ready: AtomicBool,
    log_message_text: bool,
    client_auth: ClientAuth,
}

/// Why a [`Receiver`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// An endpoint's secrets cannot be read.
    #[error("endpoint {endpoint}: {source}")]
    Secrets {
        /// The endpoint's name.
        endpoint: String,
        /// Why.
        source: SecretError,
    },
    /// The client-authentication settings cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `listen`: the webhook endpoints and the probes.
    Webhooks,
    /// `metrics_listen`: /metrics, /healthz and /readyz only.
    Probes,
}

/// The connection a request arrived on: who is at the other end, and which listener.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The peer and its verified client certificate, if any.
    pub peer: Peer,
    /// The listener.
    pub role: Role,
}

/// What became of a request. Each outcome's status code, its name (the `outcome` of the
/// request's log line) and its answer are written once, in the methods below.
#[derive(Debug)]
enum Outcome {
    /// `/healthz`: the process is alive.
    Health,
    /// `/readyz`.
    Readiness { ready: bool },
    /// `/metrics`.
    Metrics,
    /// The path does not serve this method.
    MethodNotAllowed { allow: &'static str },
    /// No endpoint here, or an endpoint path asked on the probes-only listener.
    NotFound { probes_only: bool },
    /// The verification handshake passed: the challenge is echoed.
    Handshake { challenge: String },
    /// The verification handshake failed.
    HandshakeRefused(HandshakeError),
    /// The client-certificate policy refused the client (before the body is read).
    ClientRefused(Refusal),
    /// `limits.max_in_flight` requests are being processed.
    Overloaded,
    /// `limits.max_in_flight_per_peer` requests from this client are being processed.
    PeerLimit,
    /// The body does not fit in `limits.max_buffered_body_bytes`.
    BodyBudget,
    /// The body exceeds `limits.max_body_bytes` (`limit`).
    TooLarge {
        /// The limit in bytes, said in the answer.
        limit: u64,
    },
    /// The body did not arrive within its deadline (`limits.body_timeout`,
    /// `limits.min_body_bytes_per_second`, `limits.request_timeout`).
    Timeout,
    /// The body could not be read.
    BodyError(String),
    /// The signature is missing, malformed or wrong.
    SignatureRejected(SignatureError),
    /// The body is not a JSON object.
    BadBody(String),
    /// The request is durable (or a redelivery of one), or every sink acknowledged its
    /// events.
    Accepted,
    /// The events were not accepted (spool full or failing, or a sink refused them).
    NotAccepted(AcceptError),
}

impl Outcome {
    /// The `outcome` of the request's log line.
    fn name(&self) -> &'static str {
        match self {
            Outcome::Health => "health",
            Outcome::Readiness { .. } => "readiness",
            Outcome::Metrics => "metrics",
            Outcome::MethodNotAllowed { .. } => "method_not_allowed",
            Outcome::NotFound { .. } => "not_found",
            Outcome::Handshake { .. } => "handshake",
            Outcome::HandshakeRefused(_) => "handshake_refused",
            Outcome::ClientRefused(_) => "client_refused",
            Outcome::Overloaded => "overloaded",
            Outcome::PeerLimit => "peer_limit",
            Outcome::BodyBudget => "body_budget",
            Outcome::TooLarge { .. } => "too_large",
            Outcome::Timeout => "timeout",
            Outcome::BodyError(_) => "body_error",
            Outcome::SignatureRejected(_) => "signature_rejected",
            Outcome::BadBody(_) => "bad_body",
            Outcome::Accepted => "accepted",
            Outcome::NotAccepted(AcceptError::SpoolFull(_)) => "spool_full",
            Outcome::NotAccepted(AcceptError::Spool(_)) => "spool_error",
            Outcome::NotAccepted(AcceptError::Sink(_)) => "sink_error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Outcome::Health
            | Outcome::Readiness { ready: true }
            | Outcome::Metrics
            | Outcome::Handshake { .. }
            | Outcome::Accepted => StatusCode::OK,
            Outcome::BodyError(_) | Outcome::BadBody(_) => StatusCode::BAD_REQUEST,
            Outcome::SignatureRejected(SignatureError::Missing) => StatusCode::UNAUTHORIZED,
            Outcome::SignatureRejected(_)
            | Outcome::HandshakeRefused(_)
            | Outcome::ClientRefused(_) => StatusCode::FORBIDDEN,
            Outcome::NotFound { .. } => StatusCode::NOT_FOUND,
            Outcome::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::Timeout => StatusCode::REQUEST_TIMEOUT,
            Outcome::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::PeerLimit => StatusCode::TOO_MANY_REQUESTS,
            Outcome::Readiness { ready: false }
            | Outcome::Overloaded
            | Outcome::BodyBudget
            | Outcome::NotAccepted(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer's body (`/metrics` is encoded by the caller).
    fn body(&self) -> Bytes {
        match self {
            Outcome::Health => Bytes::from_static(b"ok\n"),
            Outcome::Readiness { ready: true } => Bytes::from_static(b"ready\n"),
            Outcome::Readiness { ready: false } => Bytes::from_static(b"not ready\n"),
            Outcome::Metrics => Bytes::new(),
            Outcome::MethodNotAllowed { .. } => Bytes::from_static(b"method not allowed\n"),
            Outcome::NotFound { probes_only: true } => {
                Bytes::from_static(b"this listener serves only /metrics, /healthz and /readyz\n")
            }
            Outcome::NotFound { probes_only: false } => {
                Bytes::from_static(b"no webhook endpoint at this path\n")
            }
            Outcome::Handshake { challenge } => Bytes::from(challenge.clone()),
            Outcome::HandshakeRefused(err) => format!("verification refused: {err}\n").into(),
            Outcome::ClientRefused(refusal) => {
                Bytes::from_static(refusal.reason.message().as_bytes())
            }
            Outcome::Overloaded => {
                Bytes::from_static(b"too many requests in flight; retry later\n")
            }
            Outcome::PeerLimit => {
                Bytes::from_static(b"too many requests in flight from this client; retry later\n")
            }
            Outcome::BodyBudget => {
                Bytes::from_static(b"too many request bodies being received; retry later\n")
            }
            Outcome::TooLarge { limit } => {
                format!("request body over the {limit}-byte limit (limits.max_body_bytes)\n").into()
            }
            Outcome::Timeout => Bytes::from_static(b"the body did not arrive in time\n"),
            Outcome::BodyError(_) => Bytes::from_static(b"the body could not be read\n"),
            Outcome::SignatureRejected(err) => format!("{err}\n").into(),
            Outcome::BadBody(err) => format!("{err}\n").into(),
            Outcome::Accepted => Bytes::from_static(b"EVENT_RECEIVED\n"),
            Outcome::NotAccepted(AcceptError::Sink(_)) => {
                Bytes::from_static(b"a sink did not accept the events; retry later\n")
            }
            Outcome::NotAccepted(_) => Bytes::from_static(b"cannot store events; retry later\n"),
        }
    }

    /// Why the request was refused, for its log line.
    fn detail(&self) -> Option<String> {
        match self {
            Outcome::HandshakeRefused(err) => Some(err.to_string()),
            Outcome::ClientRefused(refusal) => {
                Some(format!("{}: {}", refusal.reason.reason(), refusal.detail))
            }
            Outcome::SignatureRejected(err) => Some(err.to_string()),
            Outcome::BodyError(err) | Outcome::BadBody(err) => Some(err.clone()),
            Outcome::NotAccepted(err) => Some(err.to_string()),
            _ => None,
        }
    }

    /// Answers after which the connection is closed: the rest of the body was not read.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            Outcome::ClientRefused(_)
                | Outcome::SignatureRejected(SignatureError::Missing)
                | Outcome::Overloaded
                | Outcome::PeerLimit
                | Outcome::BodyBudget
                | Outcome::TooLarge { .. }
                | Outcome::Timeout
                | Outcome::BodyError(_)
        )
    }

    /// 503s (and the per-client 429) that tell the client when to retry (`Retry-After`).
    fn retry_later(&self) -> bool {
        matches!(
            self,
            Outcome::Overloaded
                | Outcome::PeerLimit
                | Outcome::BodyBudget
                | Outcome::NotAccepted(_)
        )
    }

    /// Requests anyone could send, refused before they proved to come from Meta: logged at a
    /// bounded rate ([`crate::metrics::refusal_log`]).
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            Outcome::MethodNotAllowed { .. }
                | Outcome::NotFound { .. }
                | Outcome::HandshakeRefused(_)
                | Outcome::ClientRefused(_)
                | Outcome::Overloaded
                | Outcome::PeerLimit
                | Outcome::BodyBudget
                | Outcome::TooLarge { .. }
                | Outcome::Timeout
                | Outcome::BodyError(_)
                | Outcome::SignatureRejected(_)
        )
    }

    /// The `reason` of `metahook_admission_refusals_total`, for requests refused by a limit
    /// before or while their body was read.
    fn admission_refusal(&self) -> Option<&'static str> {
        match self {
            Outcome::Overloaded => Some("in_flight"),
            Outcome::PeerLimit => Some("peer_limit"),
            Outcome::BodyBudget => Some("body_budget"),
            Outcome::TooLarge { .. } => Some("too_large"),
            Outcome::Timeout => Some("body_timeout"),
            Outcome::BodyError(_) => Some("body_error"),
            _ => None,
        }
    }
}

/// What the request's log line says besides its outcome.
#[derive(Debug, Default)]
struct Seen {
    endpoint: Option<String>,
    bytes: usize,
    duplicate: bool,
}

type HttpResponse = Response<Full<Bytes>>;

impl Receiver {
    /// Builds the handler; reads every endpoint's secrets (failing names the endpoint).
    pub fn new(
        config: &Config,
        acceptor: Acceptor,
        metrics: Arc<Metrics>,
    ) -> Result<Receiver, ReceiverError> {
        let mut endpoints = HashMap::new();
        for endpoint in &config.endpoints {
            let secrets = SecretStore::load(endpoint).map_err(|source| ReceiverError::Secrets {
                endpoint: endpoint.name.clone(),
                source,
            })?;
            endpoints.insert(
                endpoint.path.clone(),
                Arc::new(Endpoint {
                    config: endpoint.clone(),
                    secrets,
                }),
            );
        }
        for endpoint in &config.endpoints {
            metrics.emit(EndpointServed {
                endpoint: &endpoint.name,
            });
        }
        let client_auth = ClientAuth::from_config(config)?;
        Ok(Receiver {
            endpoints,
            acceptor,
            metrics,
            limits: config.limits.clone(),
            admission: Admission::new(&config.limits, !client_auth.verifies_clients()),
            ready: AtomicBool::new(false),
            log_message_text: config.log_message_text,
            client_auth,
        })
    }

    /// Marks the receiver ready (or not: while starting and draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.metrics.emit(ReadinessChanged { ready });
    }

    /// Whether /readyz answers 200: started, not draining, and the spool can still write.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.acceptor.is_healthy()
    }

    /// The endpoints, for the secret reloader.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }

    /// Answers one request that arrived on `connection`: the whole receiver contract.
    pub async fn handle<B>(&self, request: Request<B>, connection: &Connection) -> HttpResponse
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut seen = Seen::default();
        let outcome = self.route(request, connection, &mut seen).await;
        let endpoint = seen.endpoint.as_deref();
        match (&outcome, endpoint) {
            (Outcome::SignatureRejected(err), Some(endpoint)) => {
                self.metrics.emit(SignatureRefused {
                    endpoint,
                    reason: err.reason(),
                });
            }
            (refused, Some(endpoint)) => {
                if let Some(reason) = refused.admission_refusal() {
                    self.metrics.emit(AdmissionRefused { endpoint, reason });
                }
            }
            _ => {}
        }
        let response = self.respond(&outcome);
        let detail = outcome.detail();
        let answered = RequestAnswered {
            endpoint,
            method: &method,
            path: &path,
            status: response.status(),
            outcome: outcome.name(),
            probe: RESERVED_PATHS.contains(&path.as_str()),
            bytes: seen.bytes,
            duplicate: seen.duplicate,
            detail: detail.as_deref().unwrap_or(""),
            elapsed: started.elapsed(),
        };
        if outcome.is_refusal() {
            let client = match &outcome {
                Outcome::ClientRefused(refusal) => Some(refusal.reason),
                _ => None,
            };
            self.metrics.emit(RequestRefused {
                answered,
                peer: connection.peer.addr,
                client,
            });
        } else {
            self.metrics.emit(answered);
        }
        response
    }

    /// The HTTP answer of an outcome.
    fn respond(&self, outcome: &Outcome) -> HttpResponse {
        let (body, content_type) = match outcome {
            Outcome::Metrics => (
                {
                    self.metrics.emit(BodyBudgetSampled {
                        used: self.admission.buffered_bytes(),
                        limit: self.admission.buffered_limit(),
                    });
                    Bytes::from(self.metrics.encode())
                },
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            _ => (outcome.body(), "text/plain; charset=utf-8"),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = outcome.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Outcome::MethodNotAllowed { allow } = outcome {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if outcome.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if outcome.retry_later() {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(self.limits.retry_after_seconds),
            );
        }
        response
    }

    async fn route<B>(
        &self,
        request: Request<B>,
        connection: &Connection,
        seen: &mut Seen,
    ) -> Outcome
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path();
        let get = matches!(*request.method(), Method::GET | Method::HEAD);
        match path {
            "/healthz" if get => return Outcome::Health,
            "/readyz" if get => {
                return Outcome::Readiness {
                    ready: self.is_ready(),
                };
            }
            "/metrics" if get => return Outcome::Metrics,
            probe if RESERVED_PATHS.contains(&probe) => {
                return Outcome::MethodNotAllowed { allow: "GET, HEAD" };
            }
            _ => {}
        }
        if connection.role == Role::Probes {
            return Outcome::NotFound { probes_only: true };
        }
        let Some(endpoint) = self.endpoints.get(path).cloned() else {
            return Outcome::NotFound { probes_only: false };
        };
        seen.endpoint = Some(endpoint.config.name.clone());
        // Before the body is read: a refused client never gets anything spooled.
        if let Err(refusal) = self.client_auth.check(&connection.peer, request.headers()) {
            return Outcome::ClientRefused(refusal);
        }
        match *request.method() {
            Method::GET => {
                let secrets = endpoint.secrets.current();
                match verify::handshake(request.uri().query(), &secrets.verify_token) {
                    Ok(challenge) => Outcome::Handshake { challenge },
                    Err(err) => Outcome::HandshakeRefused(err),
                }
            }
            Method::POST => {
                self.webhook(&endpoint, request, connection.peer.addr.ip(), seen)
                    .await
            }
            _ => Outcome::MethodNotAllowed { allow: "GET, POST" },
        }
    }

    async fn webhook<B>(
        &self,
        endpoint: &Endpoint,
        request: Request<B>,
        peer: IpAddr,
        seen: &mut Seen,
    ) -> Outcome
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let name = endpoint.config.name.as_str();
        // Before the body is read (crate::admission): no signature header, no reading; then
        // the concurrency limits and the byte budget.
        let (parts, body) = request.into_parts();
        if !admission::has_signature_header(&parts.headers, endpoint.config.legacy_sha1_signature) {
            return Outcome::SignatureRejected(SignatureError::Missing);
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut ticket = match self.admission.admit(peer, declared) {
            Ok(ticket) => ticket,
            Err(refused) => return Outcome::refused(refused, self.limits.max_body_bytes),
        };
        let body = match ticket.read_body(body).await {
            Ok(body) => body,
            Err(refused) => return Outcome::body_refused(refused, self.limits.max_body_bytes),
        };

        // From here on the request is CPU work only: let the spool writer wait for it.
        let pending = self.acceptor.prepare();
        seen.bytes = body.len();
        let secrets = endpoint.secrets.current();
        let sha256 = parts.headers.get(verify::SIGNATURE_HEADER);
        let legacy = parts.headers.get(verify::LEGACY_SIGNATURE_HEADER);
        let checked = match (sha256, legacy) {
            (None, Some(sha1)) if endpoint.config.legacy_sha1_signature => {
                verify::verify_signature(
                    Algorithm::Sha1,
                    Some(sha1.as_bytes()),
                    &body,
                    &secrets.app_secrets,
                )
            }
            (header, _) => verify::verify_signature(
                Algorithm::Sha256,
                header.map(HeaderValue::as_bytes),
                &body,
                &secrets.app_secrets,
            ),
        };
        // The verified HMAC identifies the body: a redelivery has the same one (dedup key).
        let key = match checked {
            Ok(digest) => {
                let mut key: Key = [0; 16];
                key.copy_from_slice(&digest[..16]);
                key
            }
            Err(err) => return Outcome::SignatureRejected(err),
        };
        if let Err(err) = normalize::check_depth(&body, self.limits.max_json_depth) {
            return Outcome::BadBody(err.to_string());
        }
        // The only check of the content before the 200: a JSON object (no DOM built).
        if let Err(err) = normalize::validate(&body) {
            return Outcome::BadBody(err.to_string());
        }
        match pending {
            Pending::Spool(preparing) => {
                let request = RawRequest {
                    received_nanos: record::now_nanos(),
                    endpoint: name,
                    body: &body,
                };
                match acceptor::store(preparing, key, &request).await {
                    Ok(stored) => {
                        self.metrics.emit(SpoolCommitted {
                            waited: stored.committed_in,
                        });
                        if stored.duplicate {
                            seen.duplicate = true;
                            // Rare (Meta's retries): its events are counted, never stored.
                            let events = normalizer::normalize_request(
                                &request,
                                endpoint.config.objects.as_deref(),
                            );
                            self.metrics.emit(EventsAccepted {
                                endpoint: name,
                                events: &events,
                                stored: false,
                                duplicates: events.len(),
                            });
                        }
                        Outcome::Accepted
                    }
                    Err(err) => Outcome::NotAccepted(err),
                }
            }
            Pending::Direct(sinks) => {
                let received_at = now_rfc3339();
                let context = normalize::Context {
                    endpoint: name,
                    received_at: &received_at,
                    objects: endpoint.config.objects.as_deref(),
                };
                let events = match normalize::normalize(&body, &context) {
                    Ok(events) => events,
                    Err(err) => return Outcome::BadBody(err.to_string()),
                };
                let records: Vec<Vec<u8>> =
                    events.iter().filter_map(normalizer::serialize).collect();
                if let Err(err) = sinks.deliver(&records).await {
                    return Outcome::NotAccepted(AcceptError::Sink(err));
                }
                self.metrics.emit(EventsAccepted {
                    endpoint: name,
                    events: &events,
                    stored: true,
                    duplicates: 0,
                });
                let texts = normalizer::message_texts(&events, self.log_message_text);
                self.metrics.emit(RequestNormalized {
                    endpoint: name,
                    seq: None,
                    events: events.len(),
                    unknown: normalizer::unknown_count(&events),
                    texts: &texts,
                });
                Outcome::Accepted
            }
        }
    }
}

impl Outcome {
    /// The answer to a request refused before its body was read; `limit` is
    /// `limits.max_body_bytes`.
    fn refused(refused: Refused, limit: u64) -> Outcome {
        match refused {
            Refused::TooLarge => Outcome::TooLarge { limit },
            Refused::PeerLimit => Outcome::PeerLimit,
            Refused::InFlight => Outcome::Overloaded,
            Refused::BodyBudget => Outcome::BodyBudget,
        }
    }

    /// The answer to a request whose body could not be read; `limit` is
    /// `limits.max_body_bytes`.
    fn body_refused(refused: BodyRefused, limit: u64) -> Outcome {
        match refused {
            BodyRefused::TooLarge => Outcome::TooLarge { limit },
            BodyRefused::Timeout => Outcome::Timeout,
            BodyRefused::BodyBudget => Outcome::BodyBudget,
            BodyRefused::Read(err) => Outcome::BodyError(err),
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// A bound listener and how its connections are served.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// What it serves.
    pub role: Role,
    /// TLS, when connections are HTTPS.
    pub tls: Option<Arc<TlsServer>>,
}

/// The hyper service of one connection: every request goes to `handler` with the
/// connection's facts.
fn connection_service(
    handler: Arc<Receiver>,
    connection: Arc<Connection>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = HttpResponse,
    Error = Infallible,
    Future = impl Future<Output = Result<HttpResponse, Infallible>> + Send,
> + Clone {
    service_fn(move |request| {
        let handler = Arc::clone(&handler);
        let connection = Arc::clone(&connection);
        async move { Ok::<_, Infallible>(handler.handle(request, &connection).await) }
    })
}

/// Serves `receiver` on `listener` until `stop` turns true; then keeps accepting for `delay`
/// (while load balancers notice /readyz failing), stops accepting, and waits up to `grace`
/// for open connections to finish their requests. Over TLS, the handshake runs in the
/// connection's own task, bounded by `limits.header_read_timeout`.
pub async fn serve(
    listener: Listener,
    receiver: Arc<Receiver>,
    mut stop: watch::Receiver<bool>,
    delay: Duration,
    grace: Duration,
) {
    let Listener { tcp, role, tls } = listener;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(receiver.limits.header_read_timeout)
        .keep_alive(true);
    let mut stop_accepting_at: Option<tokio::time::Instant> = None;
    loop {
        let until_stop = async {
            match stop_accepting_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = Arc::clone(&receiver);
                match &tls {
                    None => {
                        let connection = Arc::new(Connection { peer: Peer::plain(peer), role });
                        let service = connection_service(handler, connection);
                        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            if let Err(err) = connection.await {
                                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
                            }
                        });
                    }
                    Some(tls) => {
                        // Watched from now: a shutdown waits for handshakes in progress too.
                        let watcher = graceful.watcher();
                        let tls = Arc::clone(tls);
                        let builder = builder.clone();
                        let timeout = receiver.limits.header_read_timeout;
                        tokio::spawn(async move {
                            let Some((stream, verified)) = tls.accept(stream, peer, timeout).await else {
                                return;
                            };
                            let connection = Arc::new(Connection { peer: verified, role });
                            let service = connection_service(handler, connection);
                            if let Err(err) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            changed = stop.changed(), if stop_accepting_at.is_none() => {
                if changed.is_err() || *stop.borrow() {
                    stop_accepting_at = Some(tokio::time::Instant::now() + delay);
                }
            }
            () = until_stop => break,
        }
    }
    drop(tcp);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = ?role, "all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(listener = ?role, grace_seconds = grace.as_secs(), "grace period over with connections still open"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    use super::*;
    use crate::config::{SpoolConfig, TrustedProxyConfig};
    use crate::sink::direct::DirectSinks;
    use crate::spool::Spool;
    use crate::spool::dead_letters::DeadLetters;

    const SECRET: &[u8] = b"app-secret";
    const BODY: &str = r#"{"object":"page","entry":[{"id":"1","time":1700000000,"changes":[{"field":"feed","value":{"item":"status","verb":"add"}}]}]}"#;

    fn config(dir: &Path) -> Config {
        std::fs::write(dir.join("secret"), SECRET).expect("secret");
        std::fs::write(dir.join("token"), "tok").expect("token");
        let endpoint = EndpointConfig {
            name: "wa".into(),
            path: "/wa".into(),
            objects: None,
            app_secret_file: Some(dir.join("secret")),
            app_secret_env: None,
            previous_app_secret_file: None,
            previous_app_secret_env: None,
            verify_token_file: Some(dir.join("token")),
            verify_token_env: None,
            legacy_sha1_signature: false,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = Config::new(addr, vec![endpoint], SpoolConfig::new(dir.join("spool")));
        config.limits.max_in_flight = 1;
        config.limits.max_body_bytes = 4096;
        config.limits.request_timeout = Duration::from_millis(200);
        config
    }

    fn spooled(config: &Config) -> Receiver {
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let intake = Spool::open_intake(&config.spool, "normalizer", &total).expect("intake");
        let events = Spool::open_events(&config.spool, &[], &total).expect("events");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let acceptor = Acceptor::Spool {
            intake: Arc::new(intake),
            events: Arc::new(events),
        };
        Receiver::new(config, acceptor, metrics).expect("receiver")
    }

    fn connection(role: Role) -> Connection {
        Connection {
            peer: Peer::plain(SocketAddr::from(([127, 0, 0, 1], 40000))),
            role,
        }
    }

    fn request(method: Method, uri: &str, body: &str, signed: bool) -> Request<Full<Bytes>> {
        let mut request = Request::builder().method(method).uri(uri);
        if signed {
            request = request.header(
                verify::SIGNATURE_HEADER,
                verify::sign(SECRET, body.as_bytes()),
            );
        }
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request")
    }

    async fn answer<B>(
        receiver: &Receiver,
        request: Request<B>,
    ) -> (StatusCode, String, http::HeaderMap)
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let response = receiver.handle(request, &connection(Role::Webhooks)).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        (parts.status, text, parts.headers)
    }

    #[tokio::test]
    async fn probes_answer_without_an_endpoint() {
        let dir = tempfile::tempdir().expect("dir");
        let receiver = spooled(&config(dir.path()));
        let get = |path: &str| request(Method::GET, path, "", false);
        assert_eq!(answer(&receiver, get("/healthz")).await.0, StatusCode::OK);
        let (status, body, _) = answer(&receiver, get("/readyz")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        );
        receiver.set_ready(true);
        assert_eq!(answer(&receiver, get("/readyz")).await.1, "ready\n");
        let (status, body, headers) = answer(&receiver, get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("metahook_requests_total"), "{body}");
        assert_eq!(
            headers[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let (status, _, headers) =
            answer(&receiver, request(Method::POST, "/healthz", "", false)).await;
        assert_eq!(
            (status, &headers[ALLOW]),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                &HeaderValue::from_static("GET, HEAD")
            )
        );
        let (status, body, _) = answer(&receiver, get("/nowhere")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "no webhook endpoint at this path\n")
        );
        let probes = receiver.handle(get("/wa"), &connection(Role::Probes)).await;
        assert_eq!(probes.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_handshake_echoes_the_challenge_only_for_the_token() {
        let dir = tempfile::tempdir().expect("dir");
        let receiver = spooled(&config(dir.path()));
        let query = "/wa?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=42";
        let (status, body, _) = answer(&receiver, request(Method::GET, query, "", false)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "42"));
        let wrong = query.replace("tok", "bad");
        let (status, body, _) = answer(&receiver, request(Method::GET, &wrong, "", false)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.starts_with("verification refused"), "{body}");
        let (status, _, headers) = answer(&receiver, request(Method::PUT, "/wa", "", false)).await;
        assert_eq!(
            (status, &headers[ALLOW]),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                &HeaderValue::from_static("GET, POST")
            )
        );
    }

    #[tokio::test]
    async fn posts_are_accepted_once_and_refused_for_each_fault() {
        let dir = tempfile::tempdir().expect("dir");
        let receiver = spooled(&config(dir.path()));
        let post = |body: &str, signed| request(Method::POST, "/wa", body, signed);
        let (status, body, _) = answer(&receiver, post(BODY, true)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "EVENT_RECEIVED\n")
        );
        let (status, _, _) = answer(&receiver, post(BODY, true)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a redelivery is a duplicate, answered 200"
        );
        let metrics = String::from_utf8(receiver.metrics.encode()).expect("utf8");
        assert!(
            metrics.contains(r#"metahook_duplicates_total{endpoint="wa"} 1"#),
            "{metrics}"
        );
        assert_eq!(
            answer(&receiver, post(BODY, false)).await.0,
            StatusCode::UNAUTHORIZED
        );
        let mut forged = post(BODY, false);
        forged.headers_mut().insert(
            verify::SIGNATURE_HEADER,
            HeaderValue::from_static("sha256=00"),
        );
        assert_eq!(answer(&receiver, forged).await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            answer(&receiver, post("[1]", true)).await.0,
            StatusCode::BAD_REQUEST
        );
        let mut declared = post(BODY, true);
        declared
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("999999"));
        let (status, _, headers) = answer(&receiver, declared).await;
        assert_eq!(
            (status, &headers[CONNECTION]),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                &HeaderValue::from_static("close")
            )
        );
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
        assert_eq!(
            answer(&receiver, post(&big, true)).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let broken = StreamBody::new(stream::iter([Err::<Frame<Bytes>, _>(
            std::io::Error::other("reset"),
        )]));
        let request = Request::post("/wa")
            .header(verify::SIGNATURE_HEADER, "sha256=00")
            .body(broken)
            .expect("request");
        assert_eq!(answer(&receiver, request).await.0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn every_admission_refusal_has_a_series_from_the_start() {
        let outcomes = [
            Outcome::Overloaded,
            Outcome::PeerLimit,
            Outcome::BodyBudget,
            Outcome::TooLarge { limit: 1 },
            Outcome::Timeout,
            Outcome::BodyError(String::new()),
        ];
        let reasons: Vec<&str> = outcomes
            .iter()
            .filter_map(Outcome::admission_refusal)
            .collect();
        assert_eq!(reasons, crate::metrics::events::ADMISSION_REASONS);
        let dir = tempfile::tempdir().expect("dir");
        let receiver = spooled(&config(dir.path()));
        let metrics = String::from_utf8(receiver.metrics.encode()).expect("utf8");
        for reason in reasons {
            let sample = format!(
                r#"metahook_admission_refusals_total{{endpoint="wa",reason="{reason}"}} 0"#
            );
            assert!(metrics.contains(&sample), "{sample} missing:\n{metrics}");
        }
    }

    #[tokio::test]
    async fn an_unsigned_post_is_refused_without_reading_its_body() {
        let dir = tempfile::tempdir().expect("dir");
        let receiver = spooled(&config(dir.path()));
        let polled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&polled);
        let body = StreamBody::new(stream::poll_fn(move |_| {
            flag.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(None::<Result<Frame<Bytes>, std::io::Error>>)
        }));
        let request = Request::post("/wa")
            .header(CONTENT_LENGTH, "1000")
            .body(body)
            .expect("request");
        let (status, body, headers) = answer(&receiver, request).await;
        assert_eq!(
            (status, body.as_str(), &headers[CONNECTION]),
            (
                StatusCode::UNAUTHORIZED,
                "the request has no X-Hub-Signature-256 header\n",
                &HeaderValue::from_static("close")
            )
        );
        assert!(!polled.load(Ordering::SeqCst), "the body was read");
    }

    #[tokio::test]
    async fn a_slow_body_times_out_and_holds_the_only_slot_meanwhile() {
        let dir = tempfile::tempdir().expect("dir");
        let receiver = Arc::new(spooled(&config(dir.path())));
        let pending = StreamBody::new(stream::pending::<Result<Frame<Bytes>, std::io::Error>>());
        let slow = Request::post("/wa")
            .header(verify::SIGNATURE_HEADER, "sha256=00")
            .body(pending)
            .expect("request");
        let handler = Arc::clone(&receiver);
        let slow = tokio::spawn(async move { answer(&handler, slow).await.0 });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _, headers) =
            answer(&receiver, request(Method::POST, "/wa", BODY, true)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "max_in_flight is 1"
        );
        assert_eq!(headers[RETRY_AFTER], "5");
        assert_eq!(
            slow.await.expect("slow request"),
            StatusCode::REQUEST_TIMEOUT
        );
    }

    #[tokio::test]
    async fn a_full_spool_and_a_failing_direct_sink_ask_meta_to_retry() {
        let dir = tempfile::tempdir().expect("dir");
        let mut full = config(dir.path());
        full.spool.max_bytes = 1; // less than any request
        let receiver = spooled(&full);
        let post = |body: &str| request(Method::POST, "/wa", body, true);
        let (status, body, headers) = answer(&receiver, post(BODY)).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store events; retry later\n"
            )
        );
        assert!(headers.contains_key(RETRY_AFTER));

        let mut direct = config(dir.path());
        direct.delivery.mode = crate::config::DeliveryMode::Direct;
        direct.sinks.push(crate::config::SinkConfig {
            name: "down".into(),
            kind: crate::config::SinkKind::Http(crate::config::HttpSinkConfig::new(
                "http://127.0.0.1:1/",
            )),
            retry: crate::config::RetryConfig::default(),
        });
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let sinks = DirectSinks::new(
            &direct.sinks,
            DeadLetters::new(dir.path()),
            Arc::clone(&metrics),
        );
        let receiver = Receiver::new(&direct, Acceptor::Direct(sinks), metrics).expect("receiver");
        let (status, body, headers) = answer(&receiver, post(BODY)).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "a sink did not accept the events; retry later\n"
            )
        );
        assert!(headers.contains_key(RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_client_outside_the_trusted_proxy_is_refused_before_its_body() {
        let dir = tempfile::tempdir().expect("dir");
        let mut proxied = config(dir.path());
        let cidr = "10.0.0.0/8".parse().expect("cidr");
        proxied.trusted_proxy = Some(TrustedProxyConfig::new(vec![cidr]));
        let receiver = spooled(&proxied);
        let (status, _, headers) =
            answer(&receiver, request(Method::POST, "/wa", BODY, true)).await;
        assert_eq!(
            (status, &headers[CONNECTION]),
            (StatusCode::FORBIDDEN, &HeaderValue::from_static("close"))
        );
        let metrics = String::from_utf8(receiver.metrics.encode()).expect("utf8");
        assert!(
            metrics.contains(r#"metahook_tls_client_rejections_total{reason="untrusted_proxy"} 1"#),
            "{metrics}"
        );
    }
}
