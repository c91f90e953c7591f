//! Internal events: each one writes its log line and its metrics together, so a log line
//! and the counter an alert watches can never disagree (vector's `internal_events`).
//! Callers say what happened ([`Metrics::emit`]); only this module knows which metric
//! vectors and labels that touches.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};

use super::Metrics;
use super::labels::Rejection;
use crate::event::{Event, Kind};

/// What a log line shows with `%`: an error, a detail.
pub trait Shown: std::fmt::Display + std::fmt::Debug {}

impl<T: std::fmt::Display + std::fmt::Debug + ?Sized> Shown for T {}

/// Something that happened, written to the log and the metrics at once.
pub trait InternalEvent {
    /// Writes the event's log line (if any) and its metrics.
    fn emit(self, metrics: &Metrics);
}

/// An answered request: `metahook_requests_total`, `metahook_request_duration_seconds` and
/// the `metahook::request` log line. In spool mode the 200 comes before normalization, so
/// the line tells the body's size, not its events (see [`RequestNormalized`]).
#[derive(Debug)]
pub struct RequestAnswered<'a> {
    /// The endpoint's name; `None` for probes and unknown paths.
    pub endpoint: Option<&'a str>,
    /// The request's method.
    pub method: &'a Method,
    /// The request's path.
    pub path: &'a str,
    /// The answer's status.
    pub status: StatusCode,
    /// The outcome's name (`accepted`, `signature_rejected`, ...).
    pub outcome: &'static str,
    /// Whether the path is a probe's (logged at debug level).
    pub probe: bool,
    /// Bytes of the body read (0 when none was).
    pub bytes: usize,
    /// Whether the body was a redelivery, not stored again.
    pub duplicate: bool,
    /// Why the request was refused, if it was.
    pub detail: &'a str,
    /// Request to response.
    pub elapsed: Duration,
}

impl InternalEvent for RequestAnswered<'_> {
    fn emit(self, metrics: &Metrics) {
        self.count(metrics);
        let endpoint = self.endpoint.unwrap_or("none");
        let (path, status, outcome, detail) =
            (self.path, self.status.as_u16(), self.outcome, self.detail);
        let (bytes, duplicate) = (self.bytes, self.duplicate);
        let duration_ms = self.elapsed.as_secs_f64() * 1000.0;
        let method = self.method.as_str();
        if self.probe {
            tracing::debug!(target: "metahook::request", endpoint, method, path, status, outcome, duration_ms, "request");
        } else {
            tracing::info!(target: "metahook::request", endpoint, method, path, status, outcome, bytes, duplicate, duration_ms, detail, "request");
        }
    }
}

impl RequestAnswered<'_> {
    /// `metahook_requests_total` and `metahook_request_duration_seconds`.
    fn count(&self, metrics: &Metrics) {
        let endpoint = self.endpoint.unwrap_or("none");
        let method = match *self.method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::HEAD => "HEAD",
            _ => "other",
        };
        metrics
            .requests
            .with_label_values(&[endpoint, method, self.status.as_str()])
            .inc();
        if self.endpoint.is_some() {
            metrics
                .request_duration
                .with_label_values(&[endpoint])
                .observe(self.elapsed.as_secs_f64());
        }
    }
}

/// A refused request (no or a bad signature, a refused client, over a limit, too slow, no
/// such endpoint): counted like any [`RequestAnswered`], but logged at a bounded rate
/// ([`super::refusal_log`]), since anyone can send these as fast as they like.
#[derive(Debug)]
pub struct RequestRefused<'a> {
    /// The request and its answer.
    pub answered: RequestAnswered<'a>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Why the client-certificate policy refused it, when it did
    /// (`metahook_tls_client_rejections_total{reason}` and a `metahook::client_auth` warning).
    pub client: Option<Rejection>,
}

impl InternalEvent for RequestRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        let answered = self.answered;
        answered.count(metrics);
        if let Some(rejection) = self.client {
            metrics
                .tls_client_rejections
                .with_label_values(&[rejection.reason()])
                .inc();
        }
        let (log_it, ended) =
            metrics
                .refusal_log
                .admit(std::time::Instant::now(), answered.outcome, Some(self.peer));
        if let Some(summary) = ended {
            log_summary(&summary);
        }
        if !log_it {
            return;
        }
        let endpoint = answered.endpoint.unwrap_or("none");
        let (path, status, outcome, detail) = (
            answered.path,
            answered.status.as_u16(),
            answered.outcome,
            answered.detail,
        );
        let (method, peer) = (answered.method, self.peer);
        let duration_ms = answered.elapsed.as_secs_f64() * 1000.0;
        if let Some(rejection) = self.client {
            let reason = rejection.reason();
            tracing::warn!(target: "metahook::client_auth", reason, peer = %peer, endpoint, detail, "client refused");
        }
        if answered.probe {
            tracing::debug!(target: "metahook::request", endpoint, method = %method, path, status, outcome, peer = %peer, duration_ms, "request");
        } else {
            tracing::info!(target: "metahook::request", endpoint, method = %method, path, status, outcome, peer = %peer, duration_ms, detail, "request");
        }
    }
}

/// A request's events were made (after its 200 in spool mode, before it in direct mode):
/// the `metahook::normalize` log line, at info when it has something to show (unknown
/// events, or message texts with `log_message_text`), else at debug.
#[derive(Debug)]
pub struct RequestNormalized<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
    /// The request's intake seq (spool mode).
    pub seq: Option<u64>,
    /// Events made.
    pub events: usize,
    /// Of them, of kind `unknown`.
    pub unknown: usize,
    /// Message texts, when `log_message_text` is on.
    pub texts: &'a [String],
}

impl InternalEvent for RequestNormalized<'_> {
    fn emit(self, _metrics: &Metrics) {
        let (endpoint, events, unknown) = (self.endpoint, self.events, self.unknown);
        let seq = self.seq.unwrap_or(0);
        if !self.texts.is_empty() {
            tracing::info!(target: "metahook::normalize", endpoint, seq, events, unknown, texts = ?self.texts, "normalized");
        } else if unknown > 0 {
            tracing::info!(target: "metahook::normalize", endpoint, seq, events, unknown, "normalized");
        } else {
            tracing::debug!(target: "metahook::normalize", endpoint, seq, events, unknown, "normalized");
        }
    }
}

/// The summary line of refusals not logged one by one.
fn log_summary(summary: &super::refusal_log::Summary) {
    let suppressed = summary.suppressed;
    let by_outcome = summary.by_outcome.as_str();
    let window_seconds = summary.window.as_secs();
    match summary.sample_peer {
        Some(peer) => {
            tracing::warn!(target: "metahook::request", suppressed, by_outcome, sample_peer = %peer, window_seconds, "refused requests not logged one by one (counted in the metrics)");
        }
        None => {
            tracing::warn!(target: "metahook::request", suppressed, by_outcome, window_seconds, "refused requests not logged one by one (counted in the metrics)");
        }
    }
}

/// Time passed: the summary of the refusal log's window, if it ended with refusals not
/// logged (app.rs ticks this every few seconds so a flood's last window is reported too).
#[derive(Debug)]
pub struct RefusalLogTick {
    /// The receiver is stopping: end the window now, over or not.
    pub closing: bool,
}

impl InternalEvent for RefusalLogTick {
    fn emit(self, metrics: &Metrics) {
        let now = std::time::Instant::now();
        let summary = if self.closing {
            metrics.refusal_log.finish(now)
        } else {
            metrics.refusal_log.flush(now)
        };
        if let Some(summary) = summary {
            log_summary(&summary);
        }
    }
}

/// A client refused for its certificate in the TLS handshake:
/// `metahook_tls_client_rejections_total{reason}` and a `metahook::client_auth` warning with
/// the peer, at the bounded rate of refusals. (Refused on an endpoint path, a request is a
/// [`RequestRefused`].)
#[derive(Debug)]
pub struct ClientRefused<'a> {
    /// Why.
    pub reason: Rejection,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The TLS error.
    pub detail: &'a dyn Shown,
}

impl InternalEvent for ClientRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        let reason = self.reason.reason();
        metrics
            .tls_client_rejections
            .with_label_values(&[reason])
            .inc();
        let (peer, detail) = (self.peer, self.detail);
        let (log_it, ended) = metrics.refusal_log.admit(
            std::time::Instant::now(),
            "tls_handshake_refused",
            Some(peer),
        );
        if let Some(summary) = ended {
            log_summary(&summary);
        }
        if !log_it {
            return;
        }
        tracing::warn!(target: "metahook::client_auth", reason, peer = %peer, detail = %detail, "client certificate refused in the TLS handshake");
    }
}

/// A POST refused for its signature: `metahook_signature_failures_total` (the request's
/// own log line says why).
#[derive(Debug)]
pub struct SignatureRefused<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
    /// `missing`, `malformed` or `mismatch`.
    pub reason: &'static str,
}

impl InternalEvent for SignatureRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .signature_failures
            .with_label_values(&[self.endpoint, self.reason])
            .inc();
    }
}

/// A POST refused by a request limit before or while its body was read (`limits.*`,
/// [`crate::admission`]): `metahook_admission_refusals_total{endpoint,reason}` (the request's
/// own log line says which).
#[derive(Debug)]
pub struct AdmissionRefused<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
    /// `in_flight`, `peer_limit`, `body_budget`, `too_large`, `body_timeout` or `body_error`.
    pub reason: &'static str,
}

/// Every `reason` of `metahook_admission_refusals_total`.
pub const ADMISSION_REASONS: [&str; 7] = [
    "in_flight",
    "peer_limit",
    "body_budget",
    "too_large",
    "body_timeout",
    "body_error",
    "spool_queue",
];

/// An endpoint is served: its `metahook_admission_refusals_total` series exist from the start
/// at 0, so a rate sees the first refusal too.
#[derive(Debug)]
pub struct EndpointServed<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
}

impl InternalEvent for EndpointServed<'_> {
    fn emit(self, metrics: &Metrics) {
        for reason in ADMISSION_REASONS {
            metrics
                .admission_refusals
                .with_label_values(&[self.endpoint, reason]);
        }
    }
}

impl InternalEvent for AdmissionRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .admission_refusals
            .with_label_values(&[self.endpoint, self.reason])
            .inc();
    }
}

/// The budget of buffered body bytes, sampled when /metrics is read:
/// `metahook_buffered_body_bytes`, `metahook_buffered_body_limit_bytes`.
#[derive(Debug)]
pub struct BodyBudgetSampled {
    /// Bytes reserved now.
    pub used: u64,
    /// The budget.
    pub limit: u64,
}

impl InternalEvent for BodyBudgetSampled {
    fn emit(self, metrics: &Metrics) {
        metrics.buffered_body_bytes.set(gauge(self.used));
        metrics.buffered_body_limit.set(gauge(self.limit));
    }
}

/// A request's events, accepted: `metahook_events_total`, `metahook_unknown_events_total`
/// and `metahook_duplicates_total`. In spool mode it is emitted by the normalization
/// stage once the events are in the event log (a redelivery, by the request handler).
#[derive(Debug)]
pub struct EventsAccepted<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
    /// The request's events; counted only when `stored` (not a redelivery).
    pub events: &'a [Event],
    /// Whether they were stored (false: every one was a duplicate).
    pub stored: bool,
    /// Events of a redelivered body, not stored again.
    pub duplicates: usize,
}

impl InternalEvent for EventsAccepted<'_> {
    fn emit(self, metrics: &Metrics) {
        let endpoint = self.endpoint;
        if self.duplicates > 0 {
            metrics
                .duplicates
                .with_label_values(&[endpoint])
                .inc_by(count(self.duplicates));
        }
        if !self.stored {
            return;
        }
        for event in self.events {
            let field = metrics.label(&event.field);
            metrics
                .events
                .with_label_values(&[
                    endpoint,
                    event.platform.as_str(),
                    field,
                    event.kind.as_str(),
                ])
                .inc();
            if event.kind == Kind::Unknown {
                let object = metrics.label(&event.object);
                metrics
                    .unknown_events
                    .with_label_values(&[endpoint, object, field])
                    .inc();
            }
            if let Some(holder) = crate::normalize::unrecognized_value(event) {
                metrics
                    .unrecognized_values
                    .with_label_values(&[holder])
                    .inc();
                let id = event.id.as_str();
                tracing::info!(target: "metahook::normalize", endpoint, field = holder, id, "a value this receiver does not know (Meta added it since); the event keeps its documented kind and carries the value");
            }
        }
    }
}

/// A request's group commit finished: `metahook_spool_commit_duration_seconds`.
#[derive(Debug)]
pub struct SpoolCommitted {
    /// How long the request waited for its fsync.
    pub waited: Duration,
}

impl InternalEvent for SpoolCommitted {
    fn emit(self, metrics: &Metrics) {
        metrics
            .spool_commit_duration
            .observe(self.waited.as_secs_f64());
    }
}

/// The spool's size, sampled: `metahook_spool_bytes`, `metahook_spool_events`,
/// `metahook_spool_requests_waiting`, `metahook_spool_oldest_event_age_seconds`.
#[derive(Debug)]
pub struct SpoolSampled {
    /// Bytes of segment files.
    pub bytes: u64,
    /// Events not yet delivered by every sink.
    pub events: u64,
    /// Accepted requests not yet normalized into events.
    pub requests: u64,
    /// Age of the oldest of either.
    pub oldest_age: Duration,
    /// Bytes of delivered events kept for replay.
    pub retained_bytes: u64,
    /// When the oldest event the event log holds was written (Unix millis).
    pub oldest_retained_millis: Option<u64>,
}

impl InternalEvent for SpoolSampled {
    fn emit(self, metrics: &Metrics) {
        metrics.spool_bytes.set(gauge(self.bytes));
        metrics.spool_events.set(gauge(self.events));
        metrics.spool_requests_waiting.set(gauge(self.requests));
        metrics.spool_oldest_age.set(self.oldest_age.as_secs_f64());
        metrics.spool_retained_bytes.set(gauge(self.retained_bytes));
        #[allow(clippy::cast_precision_loss)] // Unix millis fit a f64's 53 bits
        metrics.spool_oldest_retained.set(
            self.oldest_retained_millis
                .map_or(0.0, |at| at as f64 / 1000.0),
        );
    }
}

/// The spool was opened with this size limit: `metahook_spool_limit_bytes`.
#[derive(Debug)]
pub struct SpoolLimit {
    /// `spool.max_bytes` (0: none).
    pub bytes: u64,
}

impl InternalEvent for SpoolLimit {
    fn emit(self, metrics: &Metrics) {
        metrics.spool_limit_bytes.set(gauge(self.bytes));
    }
}

/// Readiness changed: `metahook_ready`.
#[derive(Debug)]
pub struct ReadinessChanged {
    /// Ready for traffic?
    pub ready: bool,
}

impl InternalEvent for ReadinessChanged {
    fn emit(self, metrics: &Metrics) {
        metrics.ready.set(i64::from(self.ready));
    }
}

/// A spool log's writer stopped for good (a panic, a failed write or fsync): the receiver
/// is not ready from now on and refuses requests until a restart.
/// `metahook_spool_writer_failures_total{log,cause}`, `metahook_ready` 0, and an error line
/// with the panic's message or the error.
#[derive(Debug)]
pub struct SpoolWriterFailed<'a> {
    /// `intake` or `events`.
    pub log: &'static str,
    /// `panic` or `io`.
    pub cause: &'static str,
    /// The panic's message or the I/O error.
    pub detail: &'a str,
}

impl InternalEvent for SpoolWriterFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .spool_writer_failures
            .with_label_values(&[self.log, self.cause])
            .inc();
        metrics.ready.set(0);
        let (log, cause, error) = (self.log, self.cause, self.detail);
        tracing::error!(
            log,
            cause,
            error,
            "the spool writer stopped: not ready, and requests get 503 until a restart"
        );
    }
}

/// A request's events became one `unknown` event because normalizing them panicked (a bug
/// in this receiver): `metahook_normalization_panics_total{endpoint,object}` and an error
/// line with the intake record's seq and the panic's message.
#[derive(Debug)]
pub struct NormalizationPanicked<'a> {
    /// The endpoint the request came to.
    pub endpoint: &'a str,
    /// The body's `object`, when it could be read.
    pub object: Option<&'a str>,
    /// The intake record's seq (`None`: a redelivery counted on the request path).
    pub seq: Option<u64>,
    /// The panic's message.
    pub message: &'a str,
}

impl InternalEvent for NormalizationPanicked<'_> {
    fn emit(self, metrics: &Metrics) {
        let object = metrics.label(self.object.unwrap_or(""));
        metrics
            .normalization_panics
            .with_label_values(&[self.endpoint, object])
            .inc();
        let (endpoint, seq, message) = (self.endpoint, self.seq, self.message);
        tracing::error!(
            endpoint,
            object,
            seq,
            panic = message,
            "normalizing a request panicked (a bug in this receiver); its body is kept whole as one unknown event"
        );
    }
}

/// How far a sink is behind the spool: `metahook_sink_lag_events{sink}`.
#[derive(Debug)]
pub struct SinkLag<'a> {
    /// The sink.
    pub sink: &'a str,
    /// Events it has not delivered.
    pub events: u64,
}

impl InternalEvent for SinkLag<'_> {
    fn emit(self, metrics: &Metrics) {
        #[allow(clippy::cast_precision_loss)]
        metrics
            .sink_lag
            .with_label_values(&[self.sink])
            .set(self.events as f64);
    }
}

/// A sink delivered a batch: `metahook_sink_deliveries_total{result="success"}` (the events
/// it did not refuse), `metahook_sink_delivery_duration_seconds`, and for events the
/// destination refused for good (dead letters at once) `metahook_dead_letter_events_total`
/// and an error line.
#[derive(Debug)]
pub struct BatchDelivered<'a> {
    /// The sink.
    pub sink: &'a str,
    /// Events in the batch.
    pub events: usize,
    /// Of them, refused for good: (seq, why).
    pub refused: &'a [(u64, String)],
    /// The attempt's duration.
    pub elapsed: Duration,
}

impl InternalEvent for BatchDelivered<'_> {
    fn emit(self, metrics: &Metrics) {
        let sink = self.sink;
        let delivered = self.events.saturating_sub(self.refused.len());
        count_attempt(metrics, sink, "success", delivered, self.elapsed);
        if let Some((_, reason)) = self.refused.first() {
            let events = self.refused.len();
            metrics
                .dead_letters
                .with_label_values(&[sink])
                .inc_by(count(events));
            tracing::error!(sink = %sink, events, reason = %reason, "destination refused events: moved to the dead letters");
        }
    }
}

/// What follows a failed delivery.
#[derive(Debug, Clone, Copy)]
pub enum AfterFailure {
    /// The consumer retries the batch after `after`.
    Retry {
        /// Attempts so far.
        attempts: u32,
        /// The backoff.
        after: Duration,
    },
    /// The consumer gave up: the batch became dead letters.
    GiveUp {
        /// Attempts made.
        attempts: u32,
    },
    /// Direct delivery: the request is answered 503 and Meta sends it again.
    AnswerUnavailable,
    /// A replayed batch given up: reported to the replay, not dead-lettered (the events
    /// are still in the spool).
    ReplayGivenUp {
        /// Attempts made.
        attempts: u32,
    },
}

/// A sink failed to deliver a batch: `metahook_sink_deliveries_total{result="error"}`,
/// `metahook_sink_delivery_duration_seconds`, on giving up
/// `metahook_dead_letter_events_total`, and a line saying what comes next.
#[derive(Debug)]
pub struct DeliveryFailed<'a> {
    /// The sink.
    pub sink: &'a str,
    /// Events in the batch.
    pub events: usize,
    /// Why.
    pub error: &'a dyn Shown,
    /// The attempt's duration.
    pub elapsed: Duration,
    /// What happens next.
    pub then: AfterFailure,
}

impl InternalEvent for DeliveryFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        let (sink, events, error) = (self.sink, self.events, self.error);
        count_attempt(metrics, sink, "error", events, self.elapsed);
        match self.then {
            AfterFailure::Retry { attempts, after } => {
                tracing::warn!(sink = %sink, error = %error, events, attempts, retry_in_ms = after.as_millis(), "delivery failed; will retry");
            }
            AfterFailure::GiveUp { attempts } => {
                metrics
                    .dead_letters
                    .with_label_values(&[sink])
                    .inc_by(count(events));
                let plural = if attempts == 1 { "" } else { "s" };
                tracing::error!(sink = %sink, error = %error, events, attempts, "gave up after {attempts} failed attempt{plural}: the events are dead letters now (`dlq list --sink {sink}`)");
            }
            AfterFailure::AnswerUnavailable => {
                tracing::warn!(sink = %sink, error = %error, events, "delivery failed; the request is answered 503 and Meta retries it");
            }
            AfterFailure::ReplayGivenUp { attempts } => {
                tracing::error!(sink = %sink, error = %error, events, attempts, "gave up a replayed batch after {attempts} failed attempts: reported as failed to the replay (the events are still in the spool)");
            }
        }
    }
}

/// A TLS file changed but cannot be used; the previous material stays in force:
/// `metahook_tls_reload_errors_total{file}` and an error line.
#[derive(Debug)]
pub struct TlsReloadFailed<'a> {
    /// `certificate` or `client_ca`.
    pub file: &'static str,
    /// Why.
    pub error: &'a dyn Shown,
    /// Whether the files were read but the configuration could not be built from them.
    pub building: bool,
}

impl InternalEvent for TlsReloadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .tls_reload_errors
            .with_label_values(&[self.file])
            .inc();
        let (file, error) = (self.file, self.error);
        if self.building {
            tracing::error!(error = %error, "cannot build the new TLS configuration; keeping the previous one");
        } else {
            tracing::error!(file, error = %error, "cannot reload TLS material; the previous one stays in force");
        }
    }
}

/// The serving certificate in force: `metahook_tls_certificate_expiry_timestamp_seconds`.
#[derive(Debug)]
pub struct CertificateInForce {
    /// Its notAfter, Unix seconds.
    pub not_after: i64,
}

impl InternalEvent for CertificateInForce {
    fn emit(self, metrics: &Metrics) {
        #[allow(clippy::cast_precision_loss)] // seconds since 1970 fit a f64 exactly
        metrics.tls_certificate_expiry.set(self.not_after as f64);
    }
}

/// One delivery attempt: its duration, and its events by result (`success`, `error`).
fn count_attempt(metrics: &Metrics, sink: &str, result: &str, events: usize, elapsed: Duration) {
    metrics
        .sink_delivery_duration
        .with_label_values(&[sink])
        .observe(elapsed.as_secs_f64());
    metrics
        .sink_deliveries
        .with_label_values(&[sink, result])
        .inc_by(count(events));
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
