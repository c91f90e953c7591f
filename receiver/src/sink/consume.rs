//! The delivery loop: one task per sink reads the spool after its cursor, delivers, and
//! commits the cursor with the sink's resume state; failures are retried with backoff, then
//! dead-lettered. Every fsync (cursor commits, dead letters) runs on a blocking thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metahook_backoff::ExponentialBackoff;
use metahook_config::RetryConfig;
use metahook_config::retry::{FIRST_BACKOFF, JITTER};
use tokio::sync::{oneshot, watch};

use super::inbox::{Inbox, ParcelOutcome};
use super::{Delivered, Reopening, Sink, SinkError, bury, refused};
use crate::metrics::Metrics;
use crate::metrics::events::{AfterFailure, BatchDelivered, DeliveryFailed, SinkLag};
use crate::spool::dead_letters::DeadLetters;
use crate::spool::{Cursor, Spool, Spooled};

/// Events per delivered batch, unless the sink asks for another size
/// ([`Sink::batch_size`]).
pub const BATCH_SIZE: usize = 512;
/// Event bytes per batch read from the spool, at most (plus one event), whatever the
/// sink's batch size: large events are delivered a few at a time, so a sink's memory does
/// not grow with the events' sizes. Above what NATS's 4,096 ordinary events hold: at 8 MiB
/// the bench's events cut its batches short and JetStream drained about a fifth slower
/// (docs/benchmarks.md).
pub const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// After a batch smaller than the sink's batch size, how long a sink waits for more events before
/// reading again. Delivery is off the 200 path, so a few milliseconds of delay cost nothing,
/// while delivering (and fsyncing, and committing the cursor) per group commit would double
/// the receiver's I/O. Full batches never wait, so a sink keeps up at any rate.
pub const LINGER: Duration = Duration::from_millis(20);
/// The sinks' policy when [`Consumer::retry`] was never validated and is refused (only a
/// consumer built by hand gets there: the configuration is validated at load).
const FALLBACK_BACKOFF: ExponentialBackoff =
    ExponentialBackoff::new_const(FIRST_BACKOFF, Duration::from_secs(300), JITTER);
/// The shortest time between two lag updates made while a delivery is in flight.
const LAG_REFRESH: Duration = Duration::from_millis(100);
/// How often an idle sink looks for dead letters queued for retry.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What a consumer needs besides its sink.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The sink's name (its cursor, metrics label and dead-letter file).
    pub name: String,
    /// The spool it reads.
    pub spool: Arc<Spool>,
    /// Where metrics go.
    pub metrics: Arc<Metrics>,
    /// Retries before dead letters.
    pub retry: RetryConfig,
    /// Where given-up events go.
    pub dead_letters: DeadLetters,
    /// Batches handed to the loop from outside the spool (replays), if any.
    pub inbox: Option<Arc<Inbox>>,
    /// Deliver only what comes through the inbox: neither the spool after the cursor nor
    /// dead letters queued for retry (`replay` on a stopped spool).
    pub inbox_only: bool,
}

/// A batch to deliver, and where it came from.
#[derive(Debug)]
struct Batch {
    events: Vec<Spooled>,
    source: Source,
    /// Who waits for a replayed batch's outcome.
    reply: Option<oneshot::Sender<ParcelOutcome>>,
}

/// Where a batch came from decides where the cursor goes after it.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Read after the cursor: the cursor moves to `last`.
    Spool { last: u64 },
    /// Sent back by `dlq retry`: behind the cursor, which stays (only the sink's state moves).
    DeadLetters,
    /// Handed in through the [`Inbox`] (a replay): behind the cursor, which stays; what the
    /// destination refuses is reported back, not dead-lettered.
    Inbox,
}

/// What the delivery loops are asked to do, in this order (a [`watch`] channel carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Deliver events as they are spooled, lingering a little to fill batches.
    Run,
    /// Deliver everything spooled (dead letters queued for retry first), retrying failures
    /// with the sink's backoff and dead-lettering as configured, then return: the end of a
    /// receiver's life (SIGTERM, within `shutdown_grace`) and the `drain` command.
    Finish,
    /// Return now: a wait between attempts and an attempt in flight are abandoned. What
    /// was not delivered stays in the spool (an abandoned attempt is delivered again by
    /// the next start, at least once).
    Stop,
}

/// Runs a sink: delivers while `phase` is [`Phase::Run`], returns once everything spooled
/// is delivered after it turns [`Phase::Finish`], and at once on [`Phase::Stop`] (or when
/// the sender is gone). A batch that fails `retry.max_attempts` times becomes dead letters
/// and the cursor moves past it; `dlq retry` sends dead letters back through this loop.
pub async fn consume<S: Sink>(consumer: Consumer, sink: S, phase: watch::Receiver<Phase>) {
    // The watcher never ends on its own: it stops when the delivery loop does.
    tokio::select! {
        () = deliver_all(&consumer, sink, phase) => {}
        () = consumer.watch_lag() => {}
    }
    if let Some(inbox) = &consumer.inbox {
        inbox.close();
    }
}

/// The delivery loop of [`consume`].
async fn deliver_all<S: Sink>(consumer: &Consumer, sink: S, mut phase: watch::Receiver<Phase>) {
    let mut head = consumer.spool.subscribe();
    let mut sink = Reopening::new(sink);
    let batch_size = sink.batch_size();
    let backoff = consumer.backoff();
    loop {
        let committed = consumer.spool.cursor(&consumer.name).unwrap_or_default();
        consumer.report_lag();
        // Read before the spool: Finish comes once everything to deliver is spooled, so if
        // it came before this read, the read sees all of it.
        let now = *phase.borrow();
        if now == Phase::Stop {
            return;
        }
        // Finishing (SIGTERM) delivers the backlog, not a replay: its batches wait, and the
        // replay fails once the loop is gone.
        let replays = now == Phase::Run;
        let batch = match consumer
            .next_batch(committed.seq, batch_size, replays)
            .await
        {
            Ok(batch) => batch,
            Err(NextBatch::Retry) => {
                if wait(&mut phase, FIRST_BACKOFF).await {
                    return;
                }
                continue;
            }
            Err(NextBatch::Stop) => return,
        };
        let Some(mut batch) = batch else {
            if now == Phase::Finish {
                return;
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = phase.changed() => {}
                // Also notices retries queued by `dlq retry` while idle.
                () = tokio::time::sleep(IDLE_CHECK) => {}
                () = inbox_arrival(consumer.inbox.as_deref()) => {}
            }
            continue;
        };
        if !consumer
            .deliver(&mut sink, &mut batch, &backoff, &mut phase)
            .await
        {
            return;
        }
        let spooled = matches!(batch.source, Source::Spool { .. });
        if spooled && batch.events.len() < batch_size && *phase.borrow() == Phase::Run {
            // Finishing interrupts the wait: what is left is delivered at once.
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                _ = phase.changed() => {}
            }
        }
    }
}

/// Resolves when a batch may have come into `inbox`; never without one.
async fn inbox_arrival(inbox: Option<&Inbox>) {
    match inbox {
        Some(inbox) => inbox.arrived().await,
        None => std::future::pending().await,
    }
}

/// Why no batch was read.
enum NextBatch {
    /// Reading failed; try again after a pause.
    Retry,
    /// The reading task itself failed: stop the consumer.
    Stop,
}

impl Consumer {
    /// A replay's batch from the inbox (when `replays`), then dead letters queued for retry
    /// (`dlq retry`), else up to `max` events (and [`BATCH_BYTES`]) of the spool after
    /// `after`; `None` when there is nothing to deliver.
    async fn next_batch(
        &self,
        after: u64,
        max: usize,
        replays: bool,
    ) -> Result<Option<Batch>, NextBatch> {
        if let Some(parcel) = self
            .inbox
            .as_deref()
            .filter(|_| replays)
            .and_then(Inbox::take)
        {
            return Ok(Some(Batch {
                events: parcel.events,
                source: Source::Inbox,
                reply: Some(parcel.reply),
            }));
        }
        if self.inbox_only {
            return Ok(None);
        }
        let (store, name) = (self.dead_letters.clone(), self.name.clone());
        let retries = match tokio::task::spawn_blocking(move || store.take_retries(&name)).await {
            Ok(Ok(retries)) => retries,
            Ok(Err(err)) => {
                tracing::error!(sink = %self.name, error = %err, "cannot read dead letters queued for retry");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(sink = %self.name, error = %err, "dead-letter read task failed");
                return Err(NextBatch::Stop);
            }
        };
        if !retries.is_empty() {
            let events = retries
                .iter()
                .map(|d| Spooled {
                    seq: d.seq,
                    received_millis: 0,
                    json: d.event.get().as_bytes().to_vec(),
                })
                .collect();
            return Ok(Some(Batch {
                events,
                source: Source::DeadLetters,
                reply: None,
            }));
        }
        let reader = Arc::clone(&self.spool);
        let events =
            match tokio::task::spawn_blocking(move || reader.read_within(after, max, BATCH_BYTES))
                .await
            {
                Ok(Ok(events)) => events,
                Ok(Err(err)) => {
                    tracing::error!(sink = %self.name, error = %err, "cannot read the spool");
                    return Err(NextBatch::Retry);
                }
                Err(err) => {
                    tracing::error!(sink = %self.name, error = %err, "spool read task failed");
                    return Err(NextBatch::Stop);
                }
            };
        self.spool
            .set_pending(&self.name, events.first().map(|e| e.received_millis));
        Ok(events.last().map(|e| e.seq).map(|last| Batch {
            source: Source::Spool { last },
            events,
            reply: None,
        }))
    }

    /// The retry policy of [`Consumer::retry`] ([`RetryConfig::backoff`]); settings that
    /// were never validated and are refused fall back to the defaults, said in the log.
    fn backoff(&self) -> ExponentialBackoff {
        self.retry.backoff().unwrap_or_else(|err| {
            tracing::error!(sink = %self.name, error = %err, "invalid retry settings; using the default backoff");
            FALLBACK_BACKOFF
        })
    }

    /// Delivers `batch`, retrying with backoff until it is delivered or dead-lettered;
    /// false when [`Phase::Stop`] interrupted an attempt or a wait between attempts.
    async fn deliver<S: Sink>(
        &self,
        sink: &mut Reopening<S>,
        batch: &mut Batch,
        backoff: &ExponentialBackoff,
        phase: &mut watch::Receiver<Phase>,
    ) -> bool {
        let name = self.name.as_str();
        let events = batch.events.len();
        let mut attempts = 0u32;
        loop {
            let started = Instant::now();
            // An attempt abandoned here is safe to repeat: the cursor moves only after the
            // destination took the batch (a commit already on its blocking thread finishes).
            let attempted = tokio::select! {
                attempted = self.attempt(sink, batch) => attempted,
                () = stopped(phase) => return false,
            };
            let err = match attempted {
                Ok(rejected) => {
                    // A replay's refused events are reported to it, not dead-lettered.
                    let replayed = matches!(batch.source, Source::Inbox);
                    if let (true, Some((_, reason))) = (replayed, rejected.first()) {
                        tracing::warn!(sink = %name, events = rejected.len(), reason = %reason, "destination refused replayed events: reported to the replay");
                    }
                    self.metrics.emit(BatchDelivered {
                        sink: name,
                        events: if replayed {
                            events.saturating_sub(rejected.len())
                        } else {
                            events
                        },
                        refused: if replayed { &[] } else { &rejected },
                        elapsed: started.elapsed(),
                    });
                    if let Source::DeadLetters = batch.source {
                        self.retried(events).await;
                    }
                    if let Some(reply) = batch.reply.take() {
                        let _ = reply.send(ParcelOutcome {
                            delivered: events.saturating_sub(rejected.len()),
                            failed: rejected,
                        });
                    }
                    return true;
                }
                Err(err) => err,
            };
            let elapsed = started.elapsed();
            sink.close();
            attempts += 1;
            if let Source::Inbox = batch.source
                && self.retry.max_attempts > 0
                && attempts >= self.retry.max_attempts
            {
                let reason = give_up_reason(attempts, &err);
                self.metrics.emit(DeliveryFailed {
                    sink: name,
                    events,
                    error: &err,
                    elapsed,
                    then: AfterFailure::ReplayGivenUp { attempts },
                });
                if let Some(reply) = batch.reply.take() {
                    let failed = batch.events.iter().map(|e| (e.seq, reason.clone()));
                    let _ = reply.send(ParcelOutcome {
                        delivered: 0,
                        failed: failed.collect(),
                    });
                }
                return true;
            }
            if let Source::Spool { last } = batch.source
                && self.retry.max_attempts > 0
                && attempts >= self.retry.max_attempts
            {
                match self.give_up(batch, last, attempts, &err).await {
                    Ok(()) => {
                        self.metrics.emit(DeliveryFailed {
                            sink: name,
                            events,
                            error: &err,
                            elapsed,
                            then: AfterFailure::GiveUp { attempts },
                        });
                        return true;
                    }
                    Err(bury_err) => {
                        tracing::error!(sink = %name, error = %bury_err, "cannot write dead letters; retrying the batch");
                    }
                }
            }
            // A destination that said when to come back (`Retry-After`) is not asked sooner.
            let server = match &err {
                SinkError::Throttled { after, .. } => Some(*after),
                _ => None,
            };
            let delay = backoff.delay_honouring(attempts, server);
            self.metrics.emit(DeliveryFailed {
                sink: name,
                events,
                error: &err,
                elapsed,
                then: AfterFailure::Retry {
                    attempts,
                    after: delay,
                },
            });
            // The lag read before this batch may predate its events: while the sink is
            // failing, the gauge must show what is waiting.
            self.report_lag();
            if wait(phase, delay).await {
                return false;
            }
        }
    }

    /// Keeps `metahook_sink_lag_events` true while a delivery attempt is in flight: a sink
    /// stuck in one long attempt (a PubAck timeout, a slow endpoint) must show the events
    /// that pile up behind it, not the lag read before the attempt. At most one update per
    /// [`LAG_REFRESH`]; the delivery loop also reports after each batch.
    async fn watch_lag(&self) {
        let mut head = self.spool.subscribe();
        loop {
            self.report_lag();
            if head.changed().await.is_err() {
                // The spool is gone; keep the delivery loop's reports.
                return std::future::pending().await;
            }
            tokio::time::sleep(LAG_REFRESH).await;
        }
    }

    /// `metahook_sink_lag_events`: events spooled and not yet delivered by this sink.
    fn report_lag(&self) {
        let committed = self.spool.cursor(&self.name).unwrap_or_default();
        let head = *self.spool.subscribe().borrow();
        self.metrics.emit(SinkLag {
            sink: &self.name,
            events: head.saturating_sub(committed.seq),
        });
    }

    /// One attempt: deliver (reopening the sink at its committed state if needed, and
    /// committing where it starts if it asks), bury what the destination refused, and commit
    /// the cursor.
    async fn attempt<S: Sink>(
        &self,
        sink: &mut Reopening<S>,
        batch: &Batch,
    ) -> Result<Vec<(u64, String)>, SinkError> {
        let committed = self.spool.cursor(&self.name)?;
        if let Some(start) = sink.open(committed.state).await? {
            self.commit(Cursor::at(committed.seq, start)).await?;
        }
        let Delivered { state, rejected } = sink.deliver(&batch.events).await?;
        if !matches!(batch.source, Source::Inbox) {
            bury(
                &self.dead_letters,
                &self.name,
                &refused(&batch.events, &rejected),
                1,
            )
            .await?;
        }
        let seq = match batch.source {
            Source::Spool { last } => last,
            Source::DeadLetters | Source::Inbox => committed.seq,
        };
        self.commit(Cursor::at(seq, state)).await?;
        Ok(rejected)
    }

    /// Moves a batch to the dead letters and the cursor past it (with the committed state).
    async fn give_up(
        &self,
        batch: &Batch,
        last: u64,
        attempts: u32,
        err: &SinkError,
    ) -> Result<(), SinkError> {
        let reason = give_up_reason(attempts, err);
        let entries: Vec<(&Spooled, &str)> =
            batch.events.iter().map(|e| (e, reason.as_str())).collect();
        bury(&self.dead_letters, &self.name, &entries, attempts).await?;
        let committed = self.spool.cursor(&self.name)?;
        self.commit(Cursor {
            seq: last,
            state: committed.state,
        })
        .await
    }

    /// Commits the cursor durably (fsync) on a blocking thread.
    async fn commit(&self, cursor: Cursor) -> Result<(), SinkError> {
        let (spool, name) = (Arc::clone(&self.spool), self.name.clone());
        tokio::task::spawn_blocking(move || spool.commit_cursor(&name, cursor)).await??;
        Ok(())
    }

    /// Retried dead letters were delivered: forget them.
    async fn retried(&self, events: usize) {
        let (store, name) = (self.dead_letters.clone(), self.name.clone());
        match tokio::task::spawn_blocking(move || store.retried(&name)).await {
            Ok(Ok(())) => {
                tracing::info!(sink = %self.name, events, "retried dead letters delivered");
            }
            Ok(Err(err)) => {
                tracing::error!(sink = %self.name, error = %err, "delivered retried dead letters but cannot clear them");
            }
            Err(err) => {
                tracing::error!(sink = %self.name, error = %err, "dead-letter task failed");
            }
        }
    }
}

/// Sleeps for `delay`; returns true when [`Phase::Stop`] came meanwhile (or before).
async fn wait(phase: &mut watch::Receiver<Phase>, delay: Duration) -> bool {
    let stopped = tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stopped(phase) => true,
    };
    stopped || *phase.borrow() == Phase::Stop
}

/// Resolves once the phase is [`Phase::Stop`] or its sender is gone.
async fn stopped(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
}

/// A dead letter's reason when its batch failed `attempts` times: what was done with it and
/// the last failure (the sink's error says what failed, never what comes next).
fn give_up_reason(attempts: u32, err: &SinkError) -> String {
    let plural = if attempts == 1 { "" } else { "s" };
    format!("dead-lettered after {attempts} failed attempt{plural}; the last: {err}")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sink::file::FileSink;
    use metahook_config::SpoolConfig;

    /// What the in-memory sink was asked to do.
    #[derive(Debug, Default)]
    struct Calls {
        opens: Vec<Option<u64>>,
        attempts: u32,
        delivered: Vec<u64>,
    }

    /// A sink in memory: fails its first `fail_first` deliveries (all with `always_fail`),
    /// refuses the events in `refuse`, and counts delivered events as its state.
    #[derive(Debug, Default)]
    struct MemorySink {
        fail_first: u32,
        always_fail: bool,
        refuse: Vec<u64>,
        state: u64,
        calls: Arc<Mutex<Calls>>,
    }

    impl Sink for MemorySink {
        async fn open(&mut self, state: Option<u64>) -> Result<Option<u64>, SinkError> {
            self.calls.lock().expect("calls").opens.push(state);
            self.state = state.unwrap_or(0);
            Ok(None)
        }

        async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
            let mut calls = self.calls.lock().expect("calls");
            calls.attempts += 1;
            if self.always_fail || calls.attempts <= self.fail_first {
                return Err(SinkError::Remote {
                    context: "memory".into(),
                    message: "down".into(),
                });
            }
            let mut rejected = Vec::new();
            for event in batch {
                if self.refuse.contains(&event.seq) {
                    rejected.push((event.seq, "refused".to_owned()));
                } else {
                    calls.delivered.push(event.seq);
                }
            }
            self.state += batch.len() as u64;
            Ok(Delivered {
                state: self.state,
                rejected,
            })
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        consumer: Consumer,
        calls: Arc<Mutex<Calls>>,
    }

    /// A spool holding `events` events (seqs 1..=events) and a consumer `mem` of it.
    async fn setup(events: usize, max_attempts: u32) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&SpoolConfig::new(dir.path().join("spool")), &["mem".into()])
            .expect("spool");
        let records = (0..events)
            .map(|i| format!(r#"{{"id":"e{i}"}}"#).into_bytes())
            .collect();
        spool.append([0; 16], records).await.expect("append");
        let consumer = Consumer {
            name: "mem".into(),
            spool: Arc::new(spool),
            metrics: Arc::new(Metrics::new().expect("metrics")),
            retry: RetryConfig {
                max_attempts,
                max_backoff: Duration::from_millis(10),
            },
            dead_letters: DeadLetters::new(dir.path()),
            inbox: None,
            inbox_only: false,
        };
        Setup {
            _dir: dir,
            consumer,
            calls: Arc::default(),
        }
    }

    /// Runs the consumer until its cursor reaches `seq`, then shuts it down.
    async fn run_until(setup: &Setup, mut sink: MemorySink, seq: u64) {
        sink.calls = Arc::clone(&setup.calls);
        run_sink_until(setup, sink, seq).await;
    }

    /// Runs the consumer of any sink until its cursor reaches `seq`, then shuts it down.
    async fn run_sink_until<S: Sink>(setup: &Setup, sink: S, seq: u64) {
        let (stop, stopped) = watch::channel(Phase::Run);
        let task = tokio::spawn(consume(setup.consumer.clone(), sink, stopped));
        let deadline = Instant::now() + Duration::from_secs(10);
        while setup.consumer.spool.cursor("mem").expect("cursor").seq < seq {
            assert!(Instant::now() < deadline, "the cursor never reached {seq}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(Phase::Finish).expect("finish");
        task.await.expect("consumer task");
    }

    /// The value of a sample of `name` whose labels include `labels`, from /metrics.
    fn sample(setup: &Setup, name: &str, labels: &[&str]) -> f64 {
        let text = String::from_utf8(setup.consumer.metrics.encode()).expect("utf8");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// A sink whose deliveries never finish (a PubAck that never comes).
    struct StuckSink;

    impl Sink for StuckSink {
        async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
            Ok(None)
        }

        async fn deliver(&mut self, _batch: &[Spooled]) -> Result<Delivered, SinkError> {
            std::future::pending().await
        }
    }

    #[test]
    fn the_retry_policy_is_the_documented_one() {
        // docs/configuration.md: min(100 ms × 2^(n−1), max_backoff), ±25%, never above it.
        let defaults = RetryConfig::default()
            .backoff()
            .expect("the defaults are valid");
        assert_eq!(
            (defaults.min(), defaults.max(), defaults.jitter()),
            (FIRST_BACKOFF, Duration::from_secs(300), JITTER)
        );
        assert_eq!(defaults.base(12), Duration::from_millis(204_800));
        assert_eq!(defaults.base(13), Duration::from_secs(300));
        for attempts in 1..=20 {
            let wait = defaults.delay(attempts);
            let base = defaults.base(attempts);
            assert!(
                wait >= base.mul_f64(0.75) && wait <= base.mul_f64(1.25).min(defaults.max()),
                "{attempts}: {wait:?}"
            );
        }
        // Shorter than the first wait: every wait is at most max_backoff.
        let short = RetryConfig {
            max_backoff: Duration::from_millis(10),
            ..RetryConfig::default()
        };
        assert_eq!(
            short.backoff().expect("valid").base(1),
            Duration::from_millis(10)
        );
        // 0 would retry a failing sink in a hot loop.
        let zero = RetryConfig {
            max_backoff: Duration::ZERO,
            ..RetryConfig::default()
        };
        assert_eq!(
            zero.backoff().expect_err("0 refused"),
            metahook_backoff::InvalidBackoff::ZeroMax
        );
    }

    #[tokio::test]
    async fn the_lag_rises_while_a_delivery_is_stuck() {
        let setup = setup(1, 5).await;
        let (stop, stopped) = watch::channel(Phase::Run);
        let task = tokio::spawn(consume(setup.consumer.clone(), StuckSink, stopped));
        let lag = || sample(&setup, "metahook_sink_lag_events", &[r#"sink="mem""#]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while lag() < 1.0 {
            assert!(
                Instant::now() < deadline,
                "the first event never showed as lag"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The consumer's first attempt never ends: what is spooled now shows as lag only
        // if something reports it while that attempt is in flight.
        let records = (0..4).map(|i| format!(r#"{{"id":"late{i}"}}"#).into_bytes());
        setup
            .consumer
            .spool
            .append([1; 16], records.collect())
            .await
            .expect("append");
        while lag() < 5.0 {
            assert!(
                Instant::now() < deadline,
                "events spooled during a stuck attempt never showed as lag: {}",
                lag()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Stop abandons the attempt in flight: the consumer returns, the cursor unmoved.
        stop.send(Phase::Stop).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("Stop ends a stuck attempt")
            .expect("consumer task");
        let cursor = setup.consumer.spool.cursor("mem").expect("cursor");
        assert_eq!(cursor.seq, 0, "nothing was delivered");
    }

    #[tokio::test]
    async fn finish_keeps_retrying_until_everything_is_delivered_then_returns() {
        let setup = setup(3, 0).await;
        let sink = MemorySink {
            fail_first: 3,
            calls: Arc::clone(&setup.calls),
            ..MemorySink::default()
        };
        // Finish from the start, as `drain` does: failures are retried, not given up.
        let (_phase, finishing) = watch::channel(Phase::Finish);
        tokio::time::timeout(
            Duration::from_secs(10),
            consume(setup.consumer.clone(), sink, finishing),
        )
        .await
        .expect("returns once everything is delivered");
        let calls = setup.calls.lock().expect("calls");
        assert_eq!((calls.attempts, calls.delivered.len()), (4, 3));
        assert_eq!(setup.consumer.spool.cursor("mem").expect("cursor").seq, 3);
    }

    #[tokio::test]
    async fn stop_while_finishing_a_failing_sink_leaves_its_events_spooled() {
        let setup = setup(2, 0).await;
        let sink = MemorySink {
            always_fail: true,
            calls: Arc::clone(&setup.calls),
            ..MemorySink::default()
        };
        let (phase, finishing) = watch::channel(Phase::Finish);
        let task = tokio::spawn(consume(setup.consumer.clone(), sink, finishing));
        let deadline = Instant::now() + Duration::from_secs(10);
        while setup.calls.lock().expect("calls").attempts < 2 {
            assert!(Instant::now() < deadline, "never retried while finishing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        phase.send(Phase::Stop).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("Stop ends the retries")
            .expect("consumer task");
        assert_eq!(setup.consumer.spool.cursor("mem").expect("cursor").seq, 0);
        assert!(
            setup
                .consumer
                .dead_letters
                .list("mem")
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn delivers_and_commits_the_cursor_with_the_sinks_state() {
        let setup = setup(3, 5).await;
        run_until(&setup, MemorySink::default(), 3).await;
        let cursor = setup.consumer.spool.cursor("mem").expect("cursor");
        assert_eq!((cursor.seq, cursor.state), (3, Some(3)));
        let calls = setup.calls.lock().expect("calls");
        assert_eq!(calls.opens, [None], "never committed before");
        assert_eq!(calls.delivered, [1, 2, 3]);
        let sink = r#"sink="mem""#;
        let success = [sink, r#"result="success""#];
        assert_eq!(
            sample(&setup, "metahook_sink_deliveries_total", &success),
            3.0
        );
        assert_eq!(
            sample(
                &setup,
                "metahook_sink_delivery_duration_seconds_count",
                &[sink]
            ),
            1.0
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_after_reopening_at_the_committed_state() {
        let setup = setup(3, 5).await;
        let sink = MemorySink {
            fail_first: 2,
            ..MemorySink::default()
        };
        run_until(&setup, sink, 3).await;
        let calls = setup.calls.lock().expect("calls");
        assert_eq!(calls.opens, [None; 3], "reopened after each failure");
        assert_eq!(calls.delivered, [1, 2, 3], "delivered once");
        let errors = [r#"sink="mem""#, r#"result="error""#];
        assert_eq!(
            sample(&setup, "metahook_sink_deliveries_total", &errors),
            6.0
        );
        assert_eq!(
            setup.consumer.dead_letters.list("mem").expect("list").len(),
            0
        );
    }

    #[tokio::test]
    async fn a_batch_failing_max_attempts_times_becomes_dead_letters() {
        let setup = setup(3, 2).await;
        let sink = MemorySink {
            always_fail: true,
            ..MemorySink::default()
        };
        run_until(&setup, sink, 3).await;
        assert_eq!(setup.calls.lock().expect("calls").attempts, 2);
        let cursor = setup.consumer.spool.cursor("mem").expect("cursor");
        assert_eq!(
            (cursor.seq, cursor.state),
            (3, None),
            "past the batch, no state made up"
        );
        let dead = setup.consumer.dead_letters.list("mem").expect("list");
        assert_eq!(dead.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(dead.iter().all(|d| d.attempts == 2
            && d.reason == "dead-lettered after 2 failed attempts; the last: memory: down"));
        assert_eq!(
            sample(
                &setup,
                "metahook_dead_letter_events_total",
                &[r#"sink="mem""#]
            ),
            3.0
        );
    }

    #[tokio::test]
    async fn events_the_destination_refuses_become_dead_letters_at_once() {
        let setup = setup(3, 5).await;
        let sink = MemorySink {
            refuse: vec![2],
            ..MemorySink::default()
        };
        run_until(&setup, sink, 3).await;
        assert_eq!(setup.calls.lock().expect("calls").delivered, [1, 3]);
        let dead = setup.consumer.dead_letters.list("mem").expect("list");
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].seq, dead[0].attempts), (2, 1));
        assert_eq!(dead[0].reason, "refused");
        let success = [r#"sink="mem""#, r#"result="success""#];
        assert_eq!(
            sample(&setup, "metahook_sink_deliveries_total", &success),
            2.0
        );
    }

    #[tokio::test]
    async fn retried_dead_letters_are_delivered_and_the_cursor_stays() {
        let setup = setup(2, 1).await;
        let failing = MemorySink {
            always_fail: true,
            ..MemorySink::default()
        };
        run_until(&setup, failing, 2).await;
        let queued = setup.consumer.dead_letters.request_retry("mem", None);
        assert_eq!(queued.expect("retry"), 2);
        *setup.calls.lock().expect("calls") = Calls::default();
        let (stop, stopped) = watch::channel(Phase::Run);
        let healthy = MemorySink {
            calls: Arc::clone(&setup.calls),
            ..MemorySink::default()
        };
        let task = tokio::spawn(consume(setup.consumer.clone(), healthy, stopped));
        let deadline = Instant::now() + Duration::from_secs(10);
        while setup.calls.lock().expect("calls").delivered.len() < 2 {
            assert!(Instant::now() < deadline, "retries never delivered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(Phase::Finish).expect("finish");
        task.await.expect("consumer task");
        assert_eq!(setup.calls.lock().expect("calls").delivered, [1, 2]);
        let cursor = setup.consumer.spool.cursor("mem").expect("cursor");
        assert_eq!(
            (cursor.seq, cursor.state),
            (2, Some(2)),
            "only the state moved"
        );
        let left = setup
            .consumer
            .dead_letters
            .take_retries("mem")
            .expect("retries");
        assert!(left.is_empty(), "cleared once delivered");
    }

    /// A file sink that dies (never answers again) right after its first write, before the
    /// consumer could commit the cursor: a kill -9 at the worst moment.
    struct DiesAfterWrite(FileSink);

    impl Sink for DiesAfterWrite {
        async fn open(&mut self, committed: Option<u64>) -> Result<Option<u64>, SinkError> {
            self.0.open(committed).await
        }

        async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
            self.0.deliver(batch).await?;
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_crash_after_a_file_sinks_first_write_doubles_nothing() {
        let setup = setup(3, 5).await;
        let path = setup._dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"theirs\":true}\n").expect("a line already there");
        let (_stop, stopped) = watch::channel(Phase::Run);
        let dying = DiesAfterWrite(FileSink::new(path.clone()));
        let task = tokio::spawn(consume(setup.consumer.clone(), dying, stopped));
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::sink::file::read_lines(&path).expect("read").len() < 4 {
            assert!(
                Instant::now() < deadline,
                "the first batch was never written"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        assert!(task.await.is_err(), "killed");
        let cursor = setup.consumer.spool.cursor("mem").expect("cursor");
        assert_eq!(cursor.seq, 0, "died before the cursor moved");

        run_sink_until(&setup, FileSink::new(path.clone()), 3).await;
        assert_eq!(
            crate::sink::file::read_lines(&path).expect("read"),
            [
                r#"{"theirs":true}"#,
                r#"{"id":"e0"}"#,
                r#"{"id":"e1"}"#,
                r#"{"id":"e2"}"#
            ],
            "every event once, the line before them kept"
        );
    }
}
