//! The request path: routing, the verification handshake, and the webhook POST up to
//! its acceptance.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request};
use hyper::body::Body;

use super::response::Outcome;
use super::{Connection, Endpoint, HttpResponse, Receiver, Role, Seen};
use crate::acceptor::{self, AcceptError, Pending};
use crate::admission;
use crate::config::RESERVED_PATHS;
use crate::metrics::events::{
    AdmissionRefused, EventsAccepted, RequestAnswered, RequestNormalized, RequestRefused,
    SignatureRefused, SpoolCommitted,
};
use crate::normalize;
use crate::normalizer;
use crate::spool::Key;
use crate::spool::record::{self, RawRequest};
use crate::verify::{self, Algorithm, SignatureError};

impl Receiver {
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
                                None,
                                &self.metrics,
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

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}
