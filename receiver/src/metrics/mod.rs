//! Prometheus metrics. Names are a contract with the dashboard and alerts (DESIGN.md).
//!
//! Labels are bounded sets: endpoint and sink names come from the configuration, kinds and
//! platforms are closed enums, and object / field names from payloads pass through
//! [`Metrics::label`], which admits only a bounded number of distinct well-formed names.
//!
//! The vectors are private: the rest of the receiver reports what happened as an
//! [`events`] value, which writes the log line and the metrics together.

pub mod events;
pub mod labels;
pub mod refusal_log;

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use self::labels::Rejection;

/// Distinct payload-derived label values admitted before the rest read `other`.
const MAX_DYNAMIC_LABELS: usize = 256;

/// A sink's counters, read back ([`Metrics::sink_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkTotals {
    /// Events delivered.
    pub delivered: u64,
    /// Events moved to the dead letters.
    pub dead_lettered: u64,
}

/// The receiver's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `metahook_requests_total{endpoint,method,code}`.
    requests: IntCounterVec,
    /// `metahook_signature_failures_total{endpoint,reason}`.
    signature_failures: IntCounterVec,
    /// `metahook_admission_refusals_total{endpoint,reason}`.
    admission_refusals: IntCounterVec,
    /// `metahook_buffered_body_bytes`.
    buffered_body_bytes: IntGauge,
    /// `metahook_buffered_body_limit_bytes`.
    buffered_body_limit: IntGauge,
    /// `metahook_request_duration_seconds{endpoint}`.
    request_duration: HistogramVec,
    /// `metahook_events_total{endpoint,platform,field,kind}`.
    events: IntCounterVec,
    /// `metahook_unknown_events_total{endpoint,object,field}`.
    unknown_events: IntCounterVec,
    /// `metahook_unrecognized_values_total{field}`.
    unrecognized_values: IntCounterVec,
    /// `metahook_duplicates_total{endpoint}`.
    duplicates: IntCounterVec,
    /// `metahook_spool_events`.
    spool_events: IntGauge,
    /// `metahook_spool_requests_waiting`.
    spool_requests_waiting: IntGauge,
    /// `metahook_spool_oldest_event_age_seconds`.
    spool_oldest_age: Gauge,
    /// `metahook_spool_bytes`.
    spool_bytes: IntGauge,
    /// `metahook_spool_limit_bytes`.
    spool_limit_bytes: IntGauge,
    /// `metahook_spool_retained_bytes`.
    spool_retained_bytes: IntGauge,
    /// `metahook_spool_oldest_retained_timestamp_seconds`.
    spool_oldest_retained: Gauge,
    /// `metahook_spool_commit_duration_seconds`.
    spool_commit_duration: Histogram,
    /// `metahook_spool_writer_failures_total{log,cause}`.
    spool_writer_failures: IntCounterVec,
    /// `metahook_normalization_panics_total{endpoint,object}`.
    normalization_panics: IntCounterVec,
    /// `metahook_sink_deliveries_total{sink,result}`.
    sink_deliveries: IntCounterVec,
    /// `metahook_sink_delivery_duration_seconds{sink}`.
    sink_delivery_duration: HistogramVec,
    /// `metahook_sink_lag_events{sink}`.
    sink_lag: GaugeVec,
    /// `metahook_dead_letter_events_total{sink}`.
    dead_letters: IntCounterVec,
    /// `metahook_ready`.
    ready: IntGauge,
    /// `metahook_tls_client_rejections_total{reason}`.
    tls_client_rejections: IntCounterVec,
    /// `metahook_tls_reload_errors_total{file}`.
    tls_reload_errors: IntCounterVec,
    /// `metahook_tls_certificate_expiry_timestamp_seconds`, registered only with TLS on (a
    /// 0 would read as "expired long ago" to an expiry alert).
    tls_certificate_expiry: Gauge,
    /// `metahook_log_lines_dropped_total`: brought up to [`crate::log_writer::dropped_lines`]
    /// at each scrape (the log writer is the process's, these metrics one receiver's).
    log_lines_dropped: IntCounter,
    dynamic_labels: Mutex<HashSet<String>>,
    /// Refused requests are logged at a bounded rate.
    refusal_log: refusal_log::RefusalLog,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let requests = counter(
            &registry,
            "metahook_requests_total",
            "HTTP requests answered, by endpoint, method and status code.",
            &["endpoint", "method", "code"],
        )?;
        let signature_failures = counter(
            &registry,
            "metahook_signature_failures_total",
            "POSTs rejected for a missing, malformed or mismatching signature.",
            &["endpoint", "reason"],
        )?;
        let admission_refusals = counter(
            &registry,
            "metahook_admission_refusals_total",
            "POSTs refused by a request limit before or while their body was read, by reason.",
            &["endpoint", "reason"],
        )?;
        let buffered_body_bytes = IntGauge::new(
            "metahook_buffered_body_bytes",
            "Bytes of request bodies reserved now (declared lengths of bodies being read, and bodies held).",
        )?;
        registry.register(Box::new(buffered_body_bytes.clone()))?;
        let buffered_body_limit = IntGauge::new(
            "metahook_buffered_body_limit_bytes",
            "The budget of buffered body bytes (limits.max_buffered_body_bytes): past it POSTs get 503.",
        )?;
        registry.register(Box::new(buffered_body_limit.clone()))?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "metahook_request_duration_seconds",
                "Time from request to response, including the spool commit.",
            )
            .buckets(latency.clone()),
            &["endpoint"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let events = counter(
            &registry,
            "metahook_events_total",
            "Events accepted into the spool, by endpoint, platform, field and kind.",
            &["endpoint", "platform", "field", "kind"],
        )?;
        let unknown_events = counter(
            &registry,
            "metahook_unknown_events_total",
            "Events of an undocumented object, field or type, or not in their documented shape.",
            &["endpoint", "object", "field"],
        )?;
        let unrecognized_values = counter(
            &registry,
            "metahook_unrecognized_values_total",
            "Events of a documented kind holding a value Meta added since (a message type, a preference value), by the field holding it.",
            &["field"],
        )?;
        let duplicates = counter(
            &registry,
            "metahook_duplicates_total",
            "Events not stored again because their id was already in the spool.",
            &["endpoint"],
        )?;
        let spool_events = IntGauge::new(
            "metahook_spool_events",
            "Events in the spool not yet delivered by every sink.",
        )?;
        registry.register(Box::new(spool_events.clone()))?;
        let spool_requests_waiting = IntGauge::new(
            "metahook_spool_requests_waiting",
            "Accepted requests (answered 200) not yet normalized into events for the sinks.",
        )?;
        registry.register(Box::new(spool_requests_waiting.clone()))?;
        let spool_oldest_age = Gauge::new(
            "metahook_spool_oldest_event_age_seconds",
            "Age of the oldest accepted request not yet normalized or event not yet delivered by every sink (0 when none).",
        )?;
        registry.register(Box::new(spool_oldest_age.clone()))?;
        let spool_bytes = IntGauge::new(
            "metahook_spool_bytes",
            "Bytes of records in the spool's segment files (spare segments not counted).",
        )?;
        registry.register(Box::new(spool_bytes.clone()))?;
        let spool_limit_bytes = IntGauge::new(
            "metahook_spool_limit_bytes",
            "The spool's size limit (spool.max_bytes; 0 = none): past it requests get 503.",
        )?;
        registry.register(Box::new(spool_limit_bytes.clone()))?;
        let spool_retained_bytes = IntGauge::new(
            "metahook_spool_retained_bytes",
            "Bytes of delivered events the event log keeps for replay (spool.retention; not counted in metahook_spool_bytes).",
        )?;
        registry.register(Box::new(spool_retained_bytes.clone()))?;
        let spool_oldest_retained = Gauge::new(
            "metahook_spool_oldest_retained_timestamp_seconds",
            "When the oldest event the event log still holds (delivered or not) was written, Unix seconds: the start of what a replay can reach (0 when none).",
        )?;
        registry.register(Box::new(spool_oldest_retained.clone()))?;
        let spool_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "metahook_spool_commit_duration_seconds",
                "Time a request waits for its group commit (fsync).",
            )
            .buckets(latency.clone()),
        )?;
        registry.register(Box::new(spool_commit_duration.clone()))?;
        let spool_writer_failures = counter(
            &registry,
            "metahook_spool_writer_failures_total",
            "Spool writers stopped for good (the receiver is not ready until a restart), by log (intake, events) and cause (panic, io).",
            &["log", "cause"],
        )?;
        for log in ["intake", "events"] {
            for cause in ["panic", "io"] {
                spool_writer_failures.with_label_values(&[log, cause]);
            }
        }
        let normalization_panics = counter(
            &registry,
            "metahook_normalization_panics_total",
            "Requests whose normalization panicked (a bug in this receiver), kept whole as one unknown event, by endpoint and object.",
            &["endpoint", "object"],
        )?;
        let sink_deliveries = counter(
            &registry,
            "metahook_sink_deliveries_total",
            "Events delivered by sinks, by result (success, error).",
            &["sink", "result"],
        )?;
        let sink_delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "metahook_sink_delivery_duration_seconds",
                "Time a sink takes to deliver one batch.",
            )
            .buckets(latency),
            &["sink"],
        )?;
        registry.register(Box::new(sink_delivery_duration.clone()))?;
        let sink_lag = GaugeVec::new(
            Opts::new(
                "metahook_sink_lag_events",
                "Events in the spool the sink has not delivered yet.",
            ),
            &["sink"],
        )?;
        registry.register(Box::new(sink_lag.clone()))?;
        let dead_letters = counter(
            &registry,
            "metahook_dead_letter_events_total",
            "Events a sink gave up on after its retries, moved to the dead letters.",
            &["sink"],
        )?;
        let build_info = GaugeVec::new(
            Opts::new(
                "metahook_build_info",
                "Always 1; the version label tells the build.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let ready = IntGauge::new(
            "metahook_ready",
            "1 while the receiver is ready for traffic, 0 while starting or draining.",
        )?;
        registry.register(Box::new(ready.clone()))?;
        let tls_client_rejections = counter(
            &registry,
            "metahook_tls_client_rejections_total",
            "Requests or TLS handshakes refused for their client certificate, by reason.",
            &["reason"],
        )?;
        for rejection in Rejection::ALL {
            tls_client_rejections.with_label_values(&[rejection.reason()]);
        }
        let tls_reload_errors = counter(
            &registry,
            "metahook_tls_reload_errors_total",
            "Changed TLS files that could not be loaded (the previous material stays in force).",
            &["file"],
        )?;
        for file in ["certificate", "client_ca"] {
            tls_reload_errors.with_label_values(&[file]);
        }
        let tls_certificate_expiry = Gauge::new(
            "metahook_tls_certificate_expiry_timestamp_seconds",
            "When the serving certificate in force expires (notAfter, Unix seconds).",
        )?;
        let log_lines_dropped = IntCounter::new(
            "metahook_log_lines_dropped_total",
            "Log lines dropped because the log output (standard error) did not keep up.",
        )?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            signature_failures,
            admission_refusals,
            buffered_body_bytes,
            buffered_body_limit,
            request_duration,
            events,
            unknown_events,
            unrecognized_values,
            duplicates,
            spool_events,
            spool_requests_waiting,
            spool_oldest_age,
            spool_bytes,
            spool_limit_bytes,
            spool_retained_bytes,
            spool_oldest_retained,
            spool_commit_duration,
            spool_writer_failures,
            normalization_panics,
            sink_deliveries,
            sink_delivery_duration,
            sink_lag,
            dead_letters,
            ready,
            tls_client_rejections,
            tls_reload_errors,
            tls_certificate_expiry,
            log_lines_dropped,
            dynamic_labels: Mutex::new(HashSet::new()),
            refusal_log: refusal_log::RefusalLog::new(),
        })
    }

    /// Reports an event: its log line and its metrics.
    pub fn emit(&self, event: impl events::InternalEvent) {
        event.emit(self);
    }

    /// What a sink did since this process started: events delivered
    /// (`metahook_sink_deliveries_total{result="success"}`) and dead-lettered
    /// (`metahook_dead_letter_events_total`), for the outcome of a shutdown or a drain.
    pub fn sink_totals(&self, sink: &str) -> SinkTotals {
        SinkTotals {
            delivered: self
                .sink_deliveries
                .with_label_values(&[sink, "success"])
                .get(),
            dead_lettered: self.dead_letters.with_label_values(&[sink]).get(),
        }
    }

    /// `metahook_tls_reload_errors_total{file}`, for tests.
    #[cfg(test)]
    pub(crate) fn tls_reload_errors(&self, file: &str) -> u64 {
        self.tls_reload_errors.with_label_values(&[file]).get()
    }

    /// Exposes `metahook_tls_certificate_expiry_timestamp_seconds` (once TLS is configured).
    pub fn register_tls(&self) -> prometheus::Result<()> {
        match self
            .registry
            .register(Box::new(self.tls_certificate_expiry.clone()))
        {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// A payload-derived name as a label value: kept when short and well formed and
    /// while fewer than [`MAX_DYNAMIC_LABELS`] distinct ones were seen, else `other`.
    pub fn label<'a>(&self, name: &'a str) -> &'a str {
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
            });
        if !well_formed {
            return if name.is_empty() { "none" } else { "other" };
        }
        let Ok(mut seen) = self.dynamic_labels.lock() else {
            return "other";
        };
        if seen.contains(name) {
            return name;
        }
        if seen.len() < MAX_DYNAMIC_LABELS {
            seen.insert(name.to_owned());
            return name;
        }
        "other"
    }

    /// Registers the metrics of a self-contained stage (e.g. [`crate::enrich`]) so
    /// /metrics exposes them with the rest.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        let dropped = crate::log_writer::dropped_lines();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let metrics = Metrics::new().expect("metrics");
        assert_eq!(metrics.label("messages"), "messages");
        assert_eq!(metrics.label("Bad Label"), "other");
        assert_eq!(metrics.label(""), "none");
        for i in 0..MAX_DYNAMIC_LABELS {
            metrics.label(&format!("f{i}"));
        }
        assert_eq!(metrics.label("one_too_many"), "other");
        assert_eq!(
            metrics.label("messages"),
            "messages",
            "already admitted names stay"
        );
    }

    #[test]
    fn exposition_has_the_contract_names() {
        let metrics = Metrics::new().expect("metrics");
        metrics
            .requests
            .with_label_values(&["e", "POST", "200"])
            .inc();
        let text = String::from_utf8(metrics.encode()).expect("utf8");
        for name in [
            "metahook_requests_total",
            "metahook_spool_events",
            "metahook_spool_requests_waiting",
            "metahook_build_info",
            "metahook_spool_oldest_event_age_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
