//! `metahook-receiver drain`: delivers what a spool's sinks have not delivered, without
//! taking requests, then says how it went (exit code and a JSON summary).
//!
//! The operator runs it as a Kubernetes Job on the claim of a replica that a scale-down
//! removed, so that the claim can be deleted once nothing in it is undelivered (DESIGN.md:
//! a 200 is a promise, whatever happens to the pod). It takes the spool's locks exactly as
//! `run` does and never opens a spool another process holds; it normalizes what the intake
//! log holds and the event log does not yet (requests acknowledged just before a crash),
//! then runs every configured sink's delivery loop ([`crate::sink::consume`], with its
//! retries, backoff and dead letters) in [`Phase::Finish`] until each sink is caught up, the
//! deadline passes, or SIGTERM/SIGINT comes. What is left stays in the spool for the next
//! attempt (a drain or a receiver).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use metahook_config::{Config, DeliveryMode};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lock_wait::{self, OpenError};
use crate::metrics::Metrics;
use crate::normalizer::{self, Normalizer};
use crate::server::Standby;
use crate::sink::kind::BuildSink;
use crate::sink::{self, Consumer, Phase};
use crate::spool::Spool;
use crate::spool::dead_letters::DeadLetters;

/// Kubernetes keeps at most this many bytes of a container's termination message
/// (`terminationMessagePath`), so the summary is kept under it.
pub const SUMMARY_MAX_BYTES: usize = 4096;
/// How often a drain says in the log how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long the sinks get to return once told to stop (deadline, signal).
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// The longest error text a summary carries.
const ERROR_MAX_CHARS: usize = 1024;

/// How a drain ended. Each outcome is the `outcome` of the summary and an exit status of
/// `metahook-receiver drain`, chosen here and nowhere else (`--help` and
/// docs/operations.md list them). Only [`Outcome::Drained`] means the spool holds nothing
/// that must be kept: the claim may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every sink delivered everything; no dead letters. Exit 0.
    Drained,
    /// The drain could not run (a bad configuration, a spool that cannot be opened, no
    /// sinks). Exit 1, as every other command's failure.
    Error,
    /// Everything was delivered, but dead letters remain (from before or from this drain):
    /// keep the claim and look at them (`dlq list`). Exit 3.
    DeadLetters,
    /// The deadline passed with events (or requests) left. Exit 4.
    Deadline,
    /// Another process held the spool for the whole `--lock-wait`; nothing was touched.
    /// Exit 5.
    Locked,
    /// SIGTERM or SIGINT came with events (or requests) left. Exit 6.
    Interrupted,
}

impl Outcome {
    /// Every outcome, in exit-code order (for the help text and the docs test).
    pub const ALL: [Outcome; 6] = [
        Outcome::Drained,
        Outcome::Error,
        Outcome::DeadLetters,
        Outcome::Deadline,
        Outcome::Locked,
        Outcome::Interrupted,
    ];

    /// The exit status of `metahook-receiver drain`. 2 is left to usage errors (clap).
    pub const fn exit_code(self) -> u8 {
        match self {
            Outcome::Drained => 0,
            Outcome::Error => 1,
            Outcome::DeadLetters => 3,
            Outcome::Deadline => 4,
            Outcome::Locked => 5,
            Outcome::Interrupted => 6,
        }
    }

    /// Its name in the summary.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Drained => "drained",
            Outcome::Error => "error",
            Outcome::DeadLetters => "dead_letters",
            Outcome::Deadline => "deadline",
            Outcome::Locked => "locked",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// The exit codes, for `drain --help` (a test keeps it in step with [`Outcome`]).
pub const EXIT_CODES_HELP: &str = "\
Exit codes (the summary's \"outcome\"):
  0  drained       every sink delivered everything and there are no dead letters:
                   nothing in the spool needs keeping
  1  error         the drain could not run (configuration, spool, no sinks)
  3  dead_letters  everything delivered, but dead letters remain (kept; see
                   `dlq list`)
  4  deadline      --deadline passed with events left in the spool
  5  locked        another process held the spool for all of --lock-wait;
                   nothing was touched
  6  interrupted   SIGTERM or SIGINT came with events left in the spool

The summary, one JSON object on standard output (and in --summary-file):
  {\"outcome\":\"drained\",\"events_delivered\":N,\"events_left\":N,
   \"requests_left\":N,\"dead_letters\":N,
   \"per_sink\":{\"NAME\":{\"delivered\":N,\"left\":N,\"dead_letters\":N}},
   \"error\":\"...\" (error, locked)}
It stays under 4096 bytes (Kubernetes' termination message limit): past it,
sinks are left out of per_sink and counted in per_sink_omitted.";

/// What a sink did and what it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkSummary {
    /// Events it delivered during this drain.
    pub delivered: u64,
    /// Events in the spool it has not delivered.
    pub left: u64,
    /// Its dead letters in the spool (those from before the drain included, and those
    /// queued for retry).
    pub dead_letters: u64,
}

/// The summary a drain prints (one JSON object) and writes to `--summary-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// How it ended.
    pub outcome: Outcome,
    /// Events delivered during this drain, summed over the sinks (an event delivered to two
    /// sinks counts twice).
    pub events_delivered: u64,
    /// Events some sink has not delivered (the most any one sink has left).
    pub events_left: u64,
    /// Accepted requests not yet normalized into events (0 unless the drain stopped during
    /// normalization).
    pub requests_left: u64,
    /// Dead letters in the spool, every sink's.
    pub dead_letters: u64,
    /// Per sink, by name: the configured sinks, and any other sink that has dead letters.
    pub per_sink: BTreeMap<String, SinkSummary>,
    /// Sinks left out of `per_sink` to keep the summary under [`SUMMARY_MAX_BYTES`].
    #[serde(skip_serializing_if = "is_zero")]
    pub per_sink_omitted: usize,
    /// Why it failed (outcomes `error` and `locked`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Summary {
    /// A drain that did nothing, for `outcome`, with `error`.
    pub fn failed(outcome: Outcome, error: &str) -> Summary {
        let mut error = error.to_owned();
        if let Some((at, _)) = error.char_indices().nth(ERROR_MAX_CHARS) {
            error.truncate(at);
            error.push('…');
        }
        Summary {
            outcome,
            events_delivered: 0,
            events_left: 0,
            requests_left: 0,
            dead_letters: 0,
            per_sink: BTreeMap::new(),
            per_sink_omitted: 0,
            error: Some(error),
        }
    }

    /// One line of JSON, at most [`SUMMARY_MAX_BYTES`]: sinks are left out of `per_sink`
    /// (and counted in `per_sink_omitted`) until it fits; the totals are always there.
    pub fn to_json(&self) -> String {
        let mut summary = self.clone();
        loop {
            let json = serde_json::to_string(&summary).unwrap_or_else(|err| {
                format!(r#"{{"outcome":"error","error":"cannot write the summary: {err}"}}"#)
            });
            if json.len() <= SUMMARY_MAX_BYTES || summary.per_sink.is_empty() {
                return json;
            }
            summary.per_sink.pop_last();
            summary.per_sink_omitted += 1;
        }
    }

    /// Prints the summary on standard output and writes it to `file` (replacing it), if
    /// given. A file that cannot be written is said in the log; the outcome stands.
    pub fn report(&self, file: Option<&Path>) {
        let json = self.to_json();
        println!("{json}");
        if let Some(path) = file
            && let Err(err) = std::fs::write(path, format!("{json}\n"))
        {
            tracing::error!(path = %path.display(), error = %err, "cannot write the drain summary file");
        }
    }
}

/// How a drain runs (the command's flags).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long the sinks get, counted from when the drain holds the spool.
    pub deadline: Duration,
    /// How long to wait for a spool another process holds before giving up (0: not at all).
    pub lock_wait: Duration,
}

/// Drains the spool of `config` as [`Options`] say, stopping early when `interrupt`
/// resolves (SIGTERM, SIGINT). Never fails: a failure is the summary's `error`.
pub async fn drain(
    config: &Config,
    options: Options,
    interrupt: impl Future<Output = ()>,
) -> Summary {
    let metrics = match Metrics::new() {
        Ok(metrics) => Arc::new(metrics),
        Err(err) => {
            return Summary::failed(Outcome::Error, &format!("cannot create metrics: {err}"));
        }
    };
    if config.delivery.mode == DeliveryMode::Direct {
        return Summary::failed(
            Outcome::Error,
            "delivery.mode: direct keeps no spool of events to drain",
        );
    }
    if config.sinks.is_empty() {
        return Summary::failed(
            Outcome::Error,
            "no sinks configured: a drain delivers through the configured sinks",
        );
    }
    // A drain creates no spool: a directory that is not there is more likely a claim
    // mounted elsewhere than an empty spool, and "drained" would let the claim be deleted.
    if !config.spool.dir.is_dir() {
        return Summary::failed(
            Outcome::Error,
            &format!(
                "spool.dir {} does not exist: nothing here to drain (is the volume mounted \
                 where the configuration says?)",
                config.spool.dir.display()
            ),
        );
    }
    // Progress for Prometheus, when metrics_listen is set; never a reason to fail.
    let metrics_listener = match config.metrics_listen {
        Some(at) => match crate::app::bind("metrics_listen", at).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::warn!(error = %metahook_config::error_chain(err.as_ref()), "drain: not serving /metrics");
                None
            }
        },
        None => None,
    };
    let answers = Standby {
        metrics: Arc::clone(&metrics),
        why: "draining: this process delivers a spool's backlog and takes no requests",
        retry_after_seconds: config.limits.retry_after_seconds,
        header_read_timeout: config.limits.header_read_timeout,
    };
    let listeners = [metrics_listener.as_ref().map(|tcp| (tcp, None))];
    crate::app::standing_by(
        drain_spool(config, options, interrupt, &metrics),
        &listeners,
        &answers,
    )
    .await
}

/// [`drain`] once its metrics are served.
async fn drain_spool(
    config: &Config,
    options: Options,
    interrupt: impl Future<Output = ()>,
    metrics: &Arc<Metrics>,
) -> Summary {
    tokio::pin!(interrupt);
    let opening = lock_wait::open_spool(config, Some(options.lock_wait));
    let (intake, events) = tokio::select! {
        opened = opening => match opened {
            Ok((intake, events)) => (Arc::new(intake), Arc::new(events)),
            Err(err @ OpenError::Locked { .. }) => {
                let message = metahook_config::error_chain(&err);
                tracing::error!(error = %message, "drain: the spool is held by another process; nothing was touched");
                return Summary::failed(Outcome::Locked, &message);
            }
            Err(err) => {
                let message = metahook_config::error_chain(&err);
                return Summary::failed(Outcome::Error, &message);
            }
        },
        () = &mut interrupt => {
            tracing::info!("drain: interrupted while waiting for the spool");
            return Summary::failed(Outcome::Interrupted, "interrupted before the spool was opened");
        }
    };
    let deadline = Instant::now() + options.deadline;
    let dead_letters = DeadLetters::new(&config.spool.dir);
    tracing::info!(
        dir = %config.spool.dir.display(),
        deadline_s = options.deadline.as_secs(),
        requests = intake.undelivered(normalizer::CONSUMER).unwrap_or(0),
        sinks = config.sinks.len(),
        "drain: spool opened; normalizing what is not yet normalized, then delivering"
    );

    let mut stopped_by = None;
    // Normalization first: an acknowledged request may still be only in the intake log.
    match normalize(config, &intake, &events, metrics) {
        Err(err) => {
            return Summary::failed(Outcome::Error, &metahook_config::error_chain(err.as_ref()));
        }
        Ok(stage) => {
            let joined = tokio::task::spawn_blocking(move || stage.join());
            tokio::select! {
                joined = joined => {
                    if !matches!(joined, Ok(Ok(()))) {
                        return Summary::failed(Outcome::Error, "the normalization thread panicked");
                    }
                }
                () = tokio::time::sleep_until(deadline) => stopped_by = Some(Outcome::Deadline),
                () = &mut interrupt => stopped_by = Some(Outcome::Interrupted),
            }
        }
    }

    if stopped_by.is_none() {
        stopped_by = deliver(
            config,
            &events,
            metrics,
            &dead_letters,
            deadline,
            &mut interrupt,
        )
        .await;
    }
    summarize(config, &intake, &events, metrics, &dead_letters, stopped_by)
}

/// Starts the normalization stage told to stop at once: it normalizes every request in the
/// intake log that the event log does not hold yet, then returns.
fn normalize(
    config: &Config,
    intake: &Arc<Spool>,
    events: &Arc<Spool>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let stage = Normalizer {
        intake: Arc::clone(intake),
        events: Arc::clone(events),
        objects: Normalizer::objects_of(&config.endpoints),
        metrics: Arc::clone(metrics),
        log_message_text: config.log_message_text,
        enricher: crate::app::enricher(config, metrics)?,
    };
    let (_stop, stopped) = watch::channel(true);
    anyhow::Context::context(
        stage.start(stopped),
        "cannot start the normalization thread",
    )
}

/// Runs every sink in [`Phase::Finish`] until all are caught up, `deadline` passes or
/// `interrupt` resolves (then they are stopped); returns which stopped them, if one did.
async fn deliver(
    config: &Config,
    events: &Arc<Spool>,
    metrics: &Arc<Metrics>,
    dead_letters: &DeadLetters,
    deadline: Instant,
    interrupt: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Outcome> {
    let (phase, phase_rx) = watch::channel(Phase::Finish);
    let mut tasks: Vec<JoinHandle<()>> = config
        .sinks
        .iter()
        .map(|sink_config| {
            let consumer = Consumer {
                name: sink_config.name.clone(),
                spool: Arc::clone(events),
                metrics: Arc::clone(metrics),
                retry: sink_config.retry.clone(),
                dead_letters: dead_letters.clone(),
                inbox: None,
                inbox_only: false,
            };
            tokio::spawn(sink::consume(
                consumer,
                sink_config.kind.build(),
                phase_rx.clone(),
            ))
        })
        .collect();
    let mut progress = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let stopped_by = loop {
        tokio::select! {
            true = crate::app::join_until(&mut tasks, deadline) => break None,
            () = tokio::time::sleep_until(deadline) => break Some(Outcome::Deadline),
            () = interrupt.as_mut() => break Some(Outcome::Interrupted),
            _ = progress.tick() => {
                let left: u64 = config.sinks.iter().map(|s| events.undelivered(&s.name).unwrap_or(0)).sum();
                tracing::info!(left, "drain: delivering");
            }
        }
    };
    if let Some(why) = stopped_by {
        tracing::warn!(
            outcome = why.name(),
            "drain: stopping the sinks; what they did not deliver stays in the spool"
        );
        let _ = phase.send(Phase::Stop);
        if !crate::app::join_until(&mut tasks, Instant::now() + STOP_WITHIN).await {
            tracing::error!("drain: a sink did not stop when told to");
        }
    }
    stopped_by
}

/// The summary of a drain that ran: what each sink delivered and left, the dead letters,
/// and the outcome they make (`stopped_by`: the deadline or a signal, if one ended it).
fn summarize(
    config: &Config,
    intake: &Spool,
    events: &Spool,
    metrics: &Metrics,
    dead_letters: &DeadLetters,
    stopped_by: Option<Outcome>,
) -> Summary {
    let counts = match dead_letters.counts() {
        Ok(counts) => counts,
        Err(err) => {
            return Summary::failed(
                Outcome::Error,
                &format!(
                    "cannot count the dead letters in {}: {err}",
                    dead_letters.dir().display()
                ),
            );
        }
    };
    let mut per_sink = BTreeMap::new();
    for sink in &config.sinks {
        let name = sink.name.as_str();
        per_sink.insert(
            name.to_owned(),
            SinkSummary {
                delivered: metrics.sink_totals(name).delivered,
                left: events.undelivered(name).unwrap_or(u64::MAX),
                dead_letters: counts.get(name).copied().unwrap_or(0),
            },
        );
    }
    for (name, count) in &counts {
        per_sink.entry(name.clone()).or_insert(SinkSummary {
            dead_letters: *count,
            ..SinkSummary::default()
        });
    }
    let requests_left = intake.undelivered(normalizer::CONSUMER).unwrap_or(u64::MAX);
    let events_left = per_sink.values().map(|s| s.left).max().unwrap_or(0);
    let dead = counts.values().sum();
    let mut error = None;
    let outcome = if events_left > 0 || requests_left > 0 {
        // A stop (deadline, signal) that came after everything was delivered is no failure;
        // without one, a sink's loop ended on its own (it says why in the log).
        stopped_by.unwrap_or_else(|| {
            error = Some("a sink stopped before delivering everything; see the log".to_owned());
            Outcome::Error
        })
    } else if dead > 0 {
        Outcome::DeadLetters
    } else {
        Outcome::Drained
    };
    let summary = Summary {
        outcome,
        events_delivered: per_sink.values().map(|s| s.delivered).sum(),
        events_left,
        requests_left,
        dead_letters: dead,
        per_sink,
        per_sink_omitted: 0,
        error,
    };
    tracing::info!(
        outcome = outcome.name(),
        exit_code = outcome.exit_code(),
        delivered = summary.events_delivered,
        left = summary.events_left,
        requests_left,
        dead_letters = dead,
        "drain finished"
    );
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_only_drained_is_zero() {
        let codes: std::collections::BTreeSet<u8> =
            Outcome::ALL.iter().map(|o| o.exit_code()).collect();
        assert_eq!(codes.len(), Outcome::ALL.len());
        assert!(!codes.contains(&2), "2 is clap's usage error");
        for outcome in Outcome::ALL {
            assert_eq!(outcome.exit_code() == 0, outcome == Outcome::Drained);
            let json = serde_json::to_value(outcome).expect("json");
            assert_eq!(json, outcome.name());
        }
    }

    #[test]
    fn a_summary_with_many_sinks_stays_under_the_termination_message_limit() {
        let per_sink = (0..200)
            .map(|i| {
                (
                    format!("sink-with-a-rather-long-name-{i:03}"),
                    SinkSummary {
                        delivered: 123_456,
                        left: 7,
                        dead_letters: 1,
                    },
                )
            })
            .collect();
        let summary = Summary {
            outcome: Outcome::Deadline,
            events_delivered: 200 * 123_456,
            events_left: 7,
            requests_left: 0,
            dead_letters: 200,
            per_sink,
            per_sink_omitted: 0,
            error: None,
        };
        let json = summary.to_json();
        assert!(json.len() <= SUMMARY_MAX_BYTES, "{} bytes", json.len());
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let kept = value["per_sink"].as_object().expect("per_sink").len();
        assert_eq!(
            kept + value["per_sink_omitted"].as_u64().expect("omitted") as usize,
            200
        );
        assert_eq!(value["events_left"], 7);
        assert_eq!(value["dead_letters"], 200);
        assert!(value.get("error").is_none());
    }

    #[test]
    fn the_help_lists_every_exit_code() {
        for outcome in Outcome::ALL {
            let line = format!("\n  {}  {}", outcome.exit_code(), outcome.name());
            assert!(EXIT_CODES_HELP.contains(&line), "{line:?} missing");
        }
    }

    #[tokio::test]
    async fn a_spool_dir_that_is_not_there_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        let mut config = Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            Vec::new(),
            metahook_config::SpoolConfig::new(spool.clone()),
        );
        config.sinks = Config::parse(crate::cli::EMBEDDED_CONFIG)
            .expect("the embedded configuration")
            .sinks;
        let options = Options {
            deadline: Duration::from_secs(1),
            lock_wait: Duration::ZERO,
        };
        let summary = drain(&config, options, std::future::pending()).await;
        assert_eq!(summary.outcome, Outcome::Error);
        assert!(
            summary
                .error
                .as_deref()
                .is_some_and(|e| e.contains("does not exist")),
            "{summary:?}"
        );
        assert!(!spool.exists(), "created the spool");
    }

    #[test]
    fn a_long_error_is_cut() {
        let summary = Summary::failed(Outcome::Error, &"x".repeat(10_000));
        assert!(summary.to_json().len() < SUMMARY_MAX_BYTES);
    }
}
