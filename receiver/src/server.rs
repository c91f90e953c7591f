//! HTTP: routing, limits, the webhook handler, and graceful shutdown.
//!
//! [`Receiver::handle`] is the whole request path and takes any body type, so tests can
//! drive it without a socket; [`serve`] runs it on a TCP listener with hyper, in plain HTTP
//! or over TLS ([`crate::tls`]), as the webhook listener or as the probes-only
//! `metrics_listen` one. Requests on endpoint paths pass [`crate::client_auth`] first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::client_auth::{ClientAuth, Peer, Refusal};
use crate::config::{Config, ConfigError, EndpointConfig, Limits};
use crate::event::{Event, Kind};
use crate::metrics::Metrics;
use crate::normalize;
use crate::secrets::{SecretError, SecretStore};
use crate::sink::direct::DirectSinks;
use crate::spool::{Key, Spool};
use crate::tls::TlsServer;
use crate::verify::{self, Algorithm, SignatureError};

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
    spool: Arc<Spool>,
    /// Set in `delivery.mode: direct`: events go to the sinks instead of the spool.
    direct: Option<Arc<DirectSinks>>,
    metrics: Arc<Metrics>,
    limits: Limits,
    in_flight: Semaphore,
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

/// What happened to a request, for its log line.
#[derive(Debug, Default)]
struct Outcome {
    endpoint: Option<String>,
    outcome: &'static str,
    events: usize,
    duplicates: usize,
    unknown: usize,
    detail: Option<String>,
    texts: Vec<String>,
}

type HttpResponse = Response<Full<Bytes>>;

fn response(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response after which the connection is closed: the rest of the body was not read.
fn closing(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = response(status, body);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

impl Receiver {
    /// Builds the handler; reads every endpoint's secrets (failing names the endpoint).
    pub fn new(
        config: &Config,
        spool: Arc<Spool>,
        direct: Option<Arc<DirectSinks>>,
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
        Ok(Receiver {
            endpoints,
            spool,
            direct,
            metrics,
            limits: config.limits.clone(),
            in_flight: Semaphore::new(config.limits.max_in_flight),
            ready: AtomicBool::new(false),
            log_message_text: config.log_message_text,
            client_auth: ClientAuth::from_config(config)?,
        })
    }

    /// Marks the receiver ready (or not: while starting and draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.metrics.ready.set(i64::from(ready));
    }

    /// Whether /readyz answers 200: started, not draining, and the spool can still write.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.spool.is_poisoned()
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
        let mut outcome = Outcome::default();
        let response = self.route(request, connection, &mut outcome).await;
        let status = response.status();
        let endpoint = outcome.endpoint.as_deref().unwrap_or("none");
        let method_label = match method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::HEAD => "HEAD",
            _ => "other",
        };
        self.metrics
            .requests
            .with_label_values(&[endpoint, method_label, status.as_str()])
            .inc();
        let elapsed = started.elapsed();
        if outcome.endpoint.is_some() {
            self.metrics
                .request_duration
                .with_label_values(&[endpoint])
                .observe(elapsed.as_secs_f64());
        }
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let detail = outcome.detail.as_deref().unwrap_or("");
        if self.log_message_text && !outcome.texts.is_empty() {
            tracing::info!(target: "metahook::request", endpoint, method = %method, path, status = status.as_u16(), outcome = outcome.outcome, events = outcome.events, duplicates = outcome.duplicates, unknown = outcome.unknown, duration_ms, detail, texts = ?outcome.texts, "request");
        } else if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            tracing::debug!(target: "metahook::request", endpoint, method = %method, path, status = status.as_u16(), outcome = outcome.outcome, duration_ms, "request");
        } else {
            tracing::info!(target: "metahook::request", endpoint, method = %method, path, status = status.as_u16(), outcome = outcome.outcome, events = outcome.events, duplicates = outcome.duplicates, unknown = outcome.unknown, duration_ms, detail, "request");
        }
        response
    }

    async fn route<B>(
        &self,
        request: Request<B>,
        connection: &Connection,
        outcome: &mut Outcome,
    ) -> HttpResponse
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path();
        let get = matches!(*request.method(), Method::GET | Method::HEAD);
        match path {
            "/healthz" if get => {
                outcome.outcome = "health";
                return response(StatusCode::OK, "ok\n");
            }
            "/readyz" if get => {
                outcome.outcome = "readiness";
                return if self.is_ready() {
                    response(StatusCode::OK, "ready\n")
                } else {
                    response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                };
            }
            "/metrics" if get => {
                outcome.outcome = "metrics";
                let mut reply = response(StatusCode::OK, self.metrics.encode());
                reply.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return reply;
            }
            "/healthz" | "/readyz" | "/metrics" => {
                outcome.outcome = "method_not_allowed";
                return method_not_allowed("GET, HEAD");
            }
            _ => {}
        }
        if connection.role == Role::Probes {
            outcome.outcome = "not_found";
            return response(
                StatusCode::NOT_FOUND,
                "this listener serves only /metrics, /healthz and /readyz\n",
            );
        }
        let Some(endpoint) = self.endpoints.get(path).cloned() else {
            outcome.outcome = "not_found";
            return response(StatusCode::NOT_FOUND, "no webhook endpoint at this path\n");
        };
        outcome.endpoint = Some(endpoint.config.name.clone());
        // Before the body is read: a refused client never gets anything spooled.
        if let Err(refusal) = self.client_auth.check(&connection.peer, request.headers()) {
            return self.refuse_client(&endpoint.config.name, &connection.peer, &refusal, outcome);
        }
        match *request.method() {
            Method::GET => self.handshake(&endpoint, request.uri().query(), outcome),
            Method::POST => self.webhook(&endpoint, request, outcome).await,
            _ => {
                outcome.outcome = "method_not_allowed";
                method_not_allowed("GET, POST")
            }
        }
    }

    fn handshake(
        &self,
        endpoint: &Endpoint,
        query: Option<&str>,
        outcome: &mut Outcome,
    ) -> HttpResponse {
        let secrets = endpoint.secrets.current();
        match verify::handshake(query, &secrets.verify_token) {
            Ok(challenge) => {
                outcome.outcome = "handshake";
                response(StatusCode::OK, challenge)
            }
            Err(err) => {
                outcome.outcome = "handshake_refused";
                outcome.detail = Some(err.to_string());
                response(
                    StatusCode::FORBIDDEN,
                    format!("verification refused: {err}\n"),
                )
            }
        }
    }

    async fn webhook<B>(
        &self,
        endpoint: &Endpoint,
        request: Request<B>,
        outcome: &mut Outcome,
    ) -> HttpResponse
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let name = endpoint.config.name.as_str();
        let Ok(_permit) = self.in_flight.try_acquire() else {
            outcome.outcome = "overloaded";
            return self.retry_later(closing(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight; retry later\n",
            ));
        };
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limits.max_body_bytes) {
            outcome.outcome = "too_large";
            return closing(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body exceeds the configured maximum\n",
            );
        }
        let limit = usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX);
        let body = match tokio::time::timeout(
            self.limits.request_timeout,
            Limited::new(body, limit).collect(),
        )
        .await
        {
            Err(_) => {
                outcome.outcome = "timeout";
                return closing(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive within the request timeout\n",
                );
            }
            Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
                outcome.outcome = "too_large";
                return closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body exceeds the configured maximum\n",
                );
            }
            Ok(Err(err)) => {
                outcome.outcome = "body_error";
                outcome.detail = Some(err.to_string());
                return closing(StatusCode::BAD_REQUEST, "the body could not be read\n");
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };

        // From here on the request is CPU work only: let the spool writer wait for it.
        let preparing = self.spool.prepare();
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
            Err(err) => return self.refuse_signature(name, err, outcome),
        };
        let received_at = now_rfc3339();
        let context = normalize::Context {
            endpoint: name,
            received_at: &received_at,
            objects: endpoint.config.objects.as_deref(),
        };
        let events = match normalize::normalize(&body, &context) {
            Ok(events) => events,
            Err(err) => {
                outcome.outcome = "bad_body";
                outcome.detail = Some(err.to_string());
                return response(StatusCode::BAD_REQUEST, format!("{err}\n"));
            }
        };
        let records = match self.records(&events, outcome) {
            Ok(records) => records,
            Err(err) => {
                outcome.outcome = "encode_error";
                outcome.detail = Some(err.to_string());
                return response(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode events\n");
            }
        };
        if let Some(direct) = &self.direct {
            drop(preparing);
            return match direct.deliver(&records).await {
                Ok(()) => {
                    self.count_events(name, &events);
                    outcome.outcome = "accepted";
                    outcome.events = events.len();
                    response(StatusCode::OK, "EVENT_RECEIVED\n")
                }
                Err(err) => {
                    outcome.outcome = "sink_error";
                    outcome.detail = Some(err.to_string());
                    self.retry_later(response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a sink did not accept the events; retry later\n",
                    ))
                }
            };
        }
        let committing = Instant::now();
        match preparing.append(key, records).await {
            Ok(stored) => {
                self.metrics
                    .spool_commit_duration
                    .observe(committing.elapsed().as_secs_f64());
                if stored.duplicates > 0 {
                    self.metrics
                        .duplicates
                        .with_label_values(&[name])
                        .inc_by(u64::try_from(stored.duplicates).unwrap_or(u64::MAX));
                }
                if stored.stored > 0 {
                    self.count_events(name, &events);
                }
                outcome.outcome = "accepted";
                outcome.events = stored.stored;
                outcome.duplicates = stored.duplicates;
                response(StatusCode::OK, "EVENT_RECEIVED\n")
            }
            Err(err) => {
                outcome.outcome = if matches!(err, crate::spool::SpoolError::Full { .. }) {
                    "spool_full"
                } else {
                    "spool_error"
                };
                outcome.detail = Some(err.to_string());
                self.retry_later(response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot store events; retry later\n",
                ))
            }
        }
    }

    /// A 403 for a client the certificate policy refused: counted, logged with the peer.
    fn refuse_client(
        &self,
        endpoint: &str,
        peer: &Peer,
        refusal: &Refusal,
        outcome: &mut Outcome,
    ) -> HttpResponse {
        let reason = refusal.reason.reason();
        self.metrics
            .tls_client_rejections
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(target: "metahook::client_auth", reason, peer = %peer.addr, endpoint, detail = %refusal.detail, "client refused");
        outcome.outcome = "client_refused";
        outcome.detail = Some(format!("{reason}: {}", refusal.detail));
        closing(StatusCode::FORBIDDEN, refusal.reason.message())
    }

    /// A 503 that tells Meta when to retry.
    fn retry_later(&self, mut reply: HttpResponse) -> HttpResponse {
        reply.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(self.limits.retry_after_seconds),
        );
        reply
    }

    fn refuse_signature(
        &self,
        endpoint: &str,
        err: SignatureError,
        outcome: &mut Outcome,
    ) -> HttpResponse {
        self.metrics
            .signature_failures
            .with_label_values(&[endpoint, err.reason()])
            .inc();
        outcome.outcome = "signature_rejected";
        outcome.detail = Some(err.to_string());
        let status = match err {
            SignatureError::Missing => StatusCode::UNAUTHORIZED,
            SignatureError::Malformed(_) | SignatureError::Mismatch => StatusCode::FORBIDDEN,
        };
        response(status, format!("{err}\n"))
    }

    fn records(
        &self,
        events: &[Event],
        outcome: &mut Outcome,
    ) -> Result<Vec<Vec<u8>>, serde_json::Error> {
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            if event.kind == Kind::Unknown {
                outcome.unknown += 1;
            }
            if self.log_message_text
                && let Some(text) = event.message.as_ref().and_then(|m| m.text.clone())
            {
                outcome.texts.push(text);
            }
            records.push(serde_json::to_vec(event)?);
        }
        Ok(records)
    }

    fn count_events(&self, endpoint: &str, events: &[Event]) {
        for event in events {
            let field = self.metrics.label(&event.field);
            self.metrics
                .events
                .with_label_values(&[
                    endpoint,
                    event.platform.as_str(),
                    field,
                    event.kind.as_str(),
                ])
                .inc();
            if event.kind == Kind::Unknown {
                let object = self.metrics.label(&event.object);
                self.metrics
                    .unknown_events
                    .with_label_values(&[endpoint, object, field])
                    .inc();
            }
        }
    }
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut reply = response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    reply
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    reply
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
