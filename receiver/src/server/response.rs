//! What became of a request, and the HTTP answer each outcome gets.

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::{HttpResponse, Receiver};
use crate::acceptor::AcceptError;
use crate::admission::{BodyRefused, Refused};
use crate::client_auth::Refusal;
use crate::metrics::events::BodyBudgetSampled;
use crate::verify::{HandshakeError, SignatureError};

/// What became of a request. Each outcome's status code, its name (the `outcome` of the
/// request's log line) and its answer are written once, in the methods below.
#[derive(Debug)]
pub(super) enum Outcome {
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
    pub(super) fn name(&self) -> &'static str {
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
            Outcome::NotAccepted(AcceptError::QueueFull(_)) => "spool_queue_full",
            Outcome::NotAccepted(AcceptError::Spool(_)) => "spool_error",
            Outcome::NotAccepted(AcceptError::Sink(_)) => "sink_error",
        }
    }

    pub(super) fn status(&self) -> StatusCode {
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
    pub(super) fn body(&self) -> Bytes {
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
    pub(super) fn detail(&self) -> Option<String> {
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
    pub(super) fn closes_connection(&self) -> bool {
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
    pub(super) fn retry_later(&self) -> bool {
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
    pub(super) fn is_refusal(&self) -> bool {
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
    pub(super) fn admission_refusal(&self) -> Option<&'static str> {
        match self {
            Outcome::Overloaded => Some("in_flight"),
            Outcome::PeerLimit => Some("peer_limit"),
            Outcome::BodyBudget => Some("body_budget"),
            Outcome::TooLarge { .. } => Some("too_large"),
            Outcome::Timeout => Some("body_timeout"),
            Outcome::BodyError(_) => Some("body_error"),
            Outcome::NotAccepted(AcceptError::QueueFull(_)) => Some("spool_queue"),
            _ => None,
        }
    }
}

impl Outcome {
    /// The answer to a request refused before its body was read; `limit` is
    /// `limits.max_body_bytes`.
    pub(super) fn refused(refused: Refused, limit: u64) -> Outcome {
        match refused {
            Refused::TooLarge => Outcome::TooLarge { limit },
            Refused::PeerLimit => Outcome::PeerLimit,
            Refused::InFlight => Outcome::Overloaded,
            Refused::BodyBudget => Outcome::BodyBudget,
        }
    }

    /// The answer to a request whose body could not be read; `limit` is
    /// `limits.max_body_bytes`.
    pub(super) fn body_refused(refused: BodyRefused, limit: u64) -> Outcome {
        match refused {
            BodyRefused::TooLarge => Outcome::TooLarge { limit },
            BodyRefused::Timeout => Outcome::Timeout,
            BodyRefused::BodyBudget => Outcome::BodyBudget,
            BodyRefused::Read(err) => Outcome::BodyError(err),
        }
    }
}

impl Receiver {
    /// The HTTP answer of an outcome.
    pub(super) fn respond(&self, outcome: &Outcome) -> HttpResponse {
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
}
