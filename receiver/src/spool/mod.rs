//! The durable spool: every accepted event is written here and fsync'd before the 200.
//!
//! It is an append-only log of segment files ([`segment`]) written by one thread with
//! **group commit**: request handlers hand their events to the writer, which takes
//! everything queued (up to `max_group_requests` requests), writes it with one `write` and
//! makes it durable with one `fdatasync`, then answers every waiter. Concurrent requests
//! share the fsync, so its cost (~0.1–0.2 ms here) bounds latency, not throughput.
//!
//! We chose a log of our own over an embedded B-tree (redb, tried first): a B-tree commit
//! rewrites index pages copy-on-write, several times the bytes of the events themselves,
//! and measured at a fifth of the throughput; the spool's access pattern is append at the
//! head, read forward per sink, delete from the tail, which a log does with no write
//! amplification. What a database would have given is small and lives beside it:
//!
//! - **Cursors** ([`cursor`]): each sink's (last delivered seq, resume state), replaced
//!   atomically; sinks read forward from their own cursor, independently.
//! - **Compaction**: a segment is deleted once every configured sink has passed it, or
//!   kept as the next segment ([`spare`]): written over blocks that are already allocated
//!   and synced, a group commit's `fdatasync` flushes data without a journal commit, about
//!   half the cost of one after an append. A segment is cut after its last record when
//!   sealed.
//! - **Dedup** ([`dedup`]): a request whose key (its HMAC) was accepted within the window
//!   is answered 200 without being stored again.
//! - **Recovery** reads the tail only: the newest segment is scanned and an incomplete
//!   tail truncated; older segments are *sealed* (fsync'd whole before the next one was
//!   created), so their sizes and seq ranges come from their file names and lengths and
//!   their sparse index is built while the sinks read them. A log that dedups keeps a
//!   `.keys` file beside each segment (key and time of each record, fsync'd when the
//!   segment is sealed), so the dedup window is rebuilt without reading the records.
//!   After an fsync error the spool refuses further writes (the page cache can no longer
//!   be trusted) and readiness turns false until a restart.
//!
//! The receiver runs two of these logs ([`Spool::open_intake`] and [`Spool::open`]): the
//! *intake* log, one frame per accepted request, appended before the 200 (with dedup and
//! `spool.max_bytes`), and the *event* log the sinks read, appended by the normalization
//! stage ([`crate::normalizer`]). Both count their bytes into one total.

pub mod cursor;
pub mod dead_letters;
pub mod dedup;
#[cfg(test)]
pub(crate) mod faults;
pub mod record;
mod recovery;
pub mod segment;
mod spare;
mod writer;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use tokio::sync::{oneshot, watch};

pub use cursor::Cursor;
pub use segment::Key;

use crate::config::SpoolConfig;
use recovery::{Recovered, recover_tail, rewrite_keys};
use segment::{FrameReader, INDEX_EVERY};
use spare::Spare;
use writer::{Append, Writer, create_segment};

/// A spool failure; requests get 503 (Meta retries), sinks retry.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// File system error, with what was being done.
    #[error("spool: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An earlier fsync failed; nothing more is written until a restart.
    #[error("spool: an earlier write failed to reach disk; restart the receiver")]
    Poisoned,
    /// The spool holds `spool.max_bytes` of undelivered events: a sink is behind.
    #[error("spool: full ({limit} bytes of undelivered events); a sink is not keeping up")]
    Full {
        /// The configured limit.
        limit: u64,
    },
    /// The writer is gone (shutting down).
    #[error("spool: closed")]
    Closed,
    /// The append queue holds its most requests or bytes (the writer is slow, e.g. an
    /// fsync stall): a request is refused rather than queued without bound.
    #[error(
        "spool: the append queue is full ({requests} requests, {bytes} bytes waiting for the writer)"
    )]
    QueueFull {
        /// Requests queued when it was refused.
        requests: usize,
        /// Bytes queued when it was refused.
        bytes: u64,
    },
    /// Another receiver holds the spool's lock: two receivers on one spool would interleave
    /// their writes.
    #[error("spool: in use by another receiver (it holds {})", lock.display())]
    InUse {
        /// The lock file it holds.
        lock: PathBuf,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpoolError {
    let context = context.into();
    move |source| SpoolError::Io { context, source }
}

/// What an append stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Events stored.
    pub stored: usize,
    /// Events not stored again because their request was a redelivery.
    pub duplicates: usize,
}

/// An event read back for delivery.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Its sequence number.
    pub seq: u64,
    /// When it was accepted (Unix millis).
    pub received_millis: u64,
    /// The serialized event.
    pub json: Vec<u8>,
}

/// Gauges for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Events not yet delivered by every sink.
    pub events: u64,
    /// When the oldest of them was accepted (Unix millis), as the sinks last saw it.
    pub oldest_received_millis: Option<u64>,
    /// Bytes the segments take.
    pub bytes: u64,
}

/// Why a log's writer stopped writing for good (see [`Spool::on_failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterFailure {
    /// Which log: `intake` or `events`.
    pub log: &'static str,
    /// `panic` (a bug in the writer) or `io` (a write or fsync failed).
    pub cause: &'static str,
    /// The panic's message or the I/O error.
    pub detail: String,
}

/// What stopped a writer, as the writer saw it.
#[derive(Debug)]
enum Failure {
    /// The writer thread panicked, with this message.
    Panic(String),
    /// A commit failed (the page cache can no longer be trusted).
    Io {
        /// The error.
        error: String,
        /// Requests of the failed group.
        requests: usize,
    },
}

/// Called once when the writer stops for good, on the writer thread.
type FailureHook = Box<dyn Fn(&WriterFailure) + Send + Sync>;

/// The append queue's default bound, until [`Spool::bound_queue`] sets the receiver's
/// (derived from `limits`): requests.
pub const DEFAULT_MAX_QUEUED_REQUESTS: usize = 1024;
/// The append queue's default bound in bytes (see [`DEFAULT_MAX_QUEUED_REQUESTS`]).
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 32 * 1024 * 1024;

/// A segment and its sparse index.
#[derive(Debug)]
struct SegmentInfo {
    first_seq: u64,
    path: PathBuf,
    /// Known (seq, offset) points, sorted: every [`INDEX_EVERY`] records of the active
    /// segment, and of a sealed one as far as a reader has gone (filled in by
    /// [`Spool::read_after`]; a sealed segment is not read at start-up).
    index: Vec<(u64, u64)>,
    /// Bytes of valid records in the file.
    bytes: u64,
    /// Every sink has delivered it: it stays only while `spool.retention` keeps it, its
    /// bytes counted as retained, not against `spool.max_bytes`.
    delivered: bool,
    /// When it was last written (its file's modification time, Unix millis), once looked
    /// up: a sealed segment is never written again, so this is when its newest event was.
    last_millis: Option<u64>,
    /// When its first record was written (Unix millis), once read.
    first_millis: Option<u64>,
}

/// `spool.retention`, in the units compaction works in.
#[derive(Debug, Clone, Copy)]
struct Retention {
    /// Delivered segments whose newest event is older than this are deleted.
    max_age_millis: Option<u64>,
    /// Delivered segments are deleted, oldest first, while they hold more (0: no limit).
    max_bytes: u64,
}

impl Retention {
    fn of(config: &SpoolConfig) -> Option<Retention> {
        config.retention.as_ref().map(|r| Retention {
            max_age_millis: r
                .max_age
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            max_bytes: r.max_bytes,
        })
    }
}

/// What the event log keeps for replay, for `/metrics` and the replay's refusals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedStats {
    /// Bytes of delivered segments kept by `spool.retention`.
    pub bytes: u64,
    /// When the oldest record the log still holds (delivered or not) was written, Unix
    /// millis; `None` when it holds none.
    pub oldest_millis: Option<u64>,
}

/// How a log is opened: the event log and the intake log differ only in these.
#[derive(Debug, Clone)]
struct LogOptions {
    /// The log's name in logs and metrics (`intake`, `events`).
    name: &'static str,
    /// Where its `segments/` and `cursors/` are.
    dir: PathBuf,
    /// Whether appends are de-duplicated by key (and `.keys` files kept).
    dedup: bool,
    /// `spool.max_bytes` is checked against `total_bytes` (0: no limit).
    max_bytes: u64,
    /// Bytes of both logs, shared.
    total_bytes: Arc<AtomicU64>,
    /// Delivered segments kept for replay (the event log only).
    retention: Option<Retention>,
}

struct Shared {
    /// See [`LogOptions`].
    name: &'static str,
    dir: PathBuf,
    cursor_dir: PathBuf,
    sinks: Vec<String>,
    segments: RwLock<Vec<SegmentInfo>>,
    cursors: Mutex<HashMap<String, Cursor>>,
    pending: Mutex<HashMap<String, Option<u64>>>,
    /// How far each consumer has read and acted, committed or not (for the gauges only: a
    /// consumer that commits rarely, like the normalization stage, is not shown behind).
    progress: Mutex<HashMap<String, u64>>,
    head: watch::Sender<u64>,
    poisoned: AtomicBool,
    /// Requests being verified and normalized, about to append: the writer waits a little
    /// for them so they share the next fsync (see `group_commit_wait`).
    preparing: AtomicUsize,
    /// The writer thread, to unpark it.
    writer_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Bytes in the segments of this log and of its sibling (see [`LogOptions`]).
    bytes: Arc<AtomicU64>,
    /// `spool.max_bytes` (0: no limit).
    max_bytes: u64,
    /// Whether `.keys` files are kept beside the segments (a deduplicating log).
    keys: bool,
    /// A delivered segment kept as the next one (`spool.preallocate_segments`).
    spare: Option<Spare>,
    /// See [`LogOptions`].
    retention: Option<Retention>,
    /// Bytes of delivered segments kept by `retention`.
    retained_bytes: AtomicU64,
    /// Told when the writer stops for good ([`Spool::on_failure`]).
    on_failure: std::sync::OnceLock<FailureHook>,
    /// Whether the failure was reported (once).
    failed: AtomicBool,
    /// Requests' appends sent to the writer and not yet answered, and their bytes: a
    /// handler that timed out or whose client left no longer holds its admission slot,
    /// but its append stays queued until the writer takes it.
    queued_requests: AtomicUsize,
    queued_bytes: AtomicU64,
    /// The bound of the two ([`Spool::bound_queue`]).
    max_queued_requests: AtomicUsize,
    max_queued_bytes: AtomicU64,
    /// Faults tests inject into the writer.
    #[cfg(test)]
    faults: faults::Faults,
}

impl Shared {
    /// Stops the log for good: appends are refused from now on and readiness turns false
    /// (see [`Spool::is_poisoned`]); the failure is logged and reported to the hook.
    fn fail(&self, failure: Failure) {
        self.poisoned.store(true, Ordering::SeqCst);
        // Once: a group that reaches the writer after the failure is refused, not counted.
        if self.failed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (cause, detail, requests) = match failure {
            Failure::Panic(message) => ("panic", message, 0),
            Failure::Io { error, requests } => ("io", error, requests),
        };
        let failed = WriterFailure {
            log: self.name,
            cause,
            detail,
        };
        match self.on_failure.get() {
            Some(hook) => hook(&failed),
            None => tracing::error!(
                log = failed.log,
                cause = failed.cause,
                error = %failed.detail,
                requests,
                "the spool writer stopped; refusing further writes until a restart"
            ),
        }
    }

    /// Takes a request's append into the queue's bound, or refuses it when the queue is
    /// full. One request is always let in when none is queued, whatever its size.
    fn enqueue(&self, bytes: u64) -> Result<(), SpoolError> {
        let requests = self.queued_requests.fetch_add(1, Ordering::SeqCst);
        let held = self.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        let over = requests >= self.max_queued_requests.load(Ordering::Relaxed)
            || (requests > 0
                && held.saturating_add(bytes) > self.max_queued_bytes.load(Ordering::Relaxed));
        if over {
            self.queued_requests.fetch_sub(1, Ordering::SeqCst);
            self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
            return Err(SpoolError::QueueFull {
                requests,
                bytes: held,
            });
        }
        Ok(())
    }

    /// Releases an answered (or refused) append from the queue's bound.
    fn dequeued(&self, append: &Append) {
        if append.queued_bytes > 0 {
            self.queued_requests.fetch_sub(1, Ordering::SeqCst);
            self.queued_bytes
                .fetch_sub(append.queued_bytes, Ordering::SeqCst);
        }
    }
}

/// The spool; see the module docs.
pub struct Spool {
    shared: Arc<Shared>,
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The newest record found at open: (seq, key).
    recovered_tail: Option<(u64, Key)>,
    /// How many records at the end carried that key at open.
    recovered_tail_run: usize,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .field("sinks", &self.shared.sinks)
            .finish_non_exhaustive()
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Spool {
    /// Opens (or creates) the event log in `config.dir` (`segments/`, `cursors/`) for the
    /// given sinks, recovers it, and starts its group-commit writer. A sink new to this spool
    /// starts at the oldest event. On its own (tests, tools) it counts only its own bytes
    /// against `spool.max_bytes`; the receiver opens it with [`Spool::open_events`].
    pub fn open(config: &SpoolConfig, sinks: &[String]) -> Result<Spool, SpoolError> {
        let options = LogOptions {
            name: "events",
            dir: config.dir.clone(),
            dedup: true,
            max_bytes: config.max_bytes,
            total_bytes: Arc::new(AtomicU64::new(0)),
            retention: Retention::of(config),
        };
        Spool::open_log(config, &options, sinks)
    }

    /// The event log of a receiver: no dedup (the intake log did it), no limit of its own
    /// (its events were accepted already), its bytes counted into `total_bytes`.
    pub fn open_events(
        config: &SpoolConfig,
        sinks: &[String],
        total_bytes: &Arc<AtomicU64>,
    ) -> Result<Spool, SpoolError> {
        let options = LogOptions {
            name: "events",
            dir: config.dir.clone(),
            dedup: false,
            max_bytes: 0,
            total_bytes: Arc::clone(total_bytes),
            retention: Retention::of(config),
        };
        Spool::open_log(config, &options, sinks)
    }

    /// The intake log of a receiver, in `config.dir/intake`: one frame per accepted
    /// request, de-duplicated, refused once `total_bytes` (both logs) reaches
    /// `spool.max_bytes`; its one consumer is `consumer` (the normalization stage).
    pub fn open_intake(
        config: &SpoolConfig,
        consumer: &str,
        total_bytes: &Arc<AtomicU64>,
    ) -> Result<Spool, SpoolError> {
        let options = LogOptions {
            name: "intake",
            dir: config.dir.join("intake"),
            dedup: true,
            max_bytes: config.max_bytes,
            total_bytes: Arc::clone(total_bytes),
            retention: None,
        };
        Spool::open_log(config, &options, &[consumer.to_owned()])
    }

    fn open_log(
        config: &SpoolConfig,
        options: &LogOptions,
        sinks: &[String],
    ) -> Result<Spool, SpoolError> {
        let dir = options.dir.join("segments");
        let cursor_dir = options.dir.join("cursors");
        for d in [&dir, &cursor_dir] {
            std::fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
        }
        let lock = lock_dir(&options.dir)?;
        let (window, capacity) = if options.dedup {
            (
                u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX),
                config.dedup_max_entries,
            )
        } else {
            (0, 0)
        };
        let mut recent = dedup::Recent::new(window, capacity);
        let now = now_millis();

        let listed = segment::list(&dir).map_err(io(format!("cannot list {}", dir.display())))?;
        let recovered = recover_tail(&listed, options.dedup, |key, at| {
            recent.insert(*key, at, now);
        })?;
        let Recovered {
            mut segments,
            next_seq,
            tail,
            tail_run,
            newest_keys,
        } = recovered;
        let oldest = segments.first().map_or(next_seq, |s| s.first_seq);
        let mut cursors = HashMap::new();
        for sink in sinks {
            let cursor = cursor::read(&cursor_dir, sink)
                .map_err(io(format!("cannot read the cursor of sink {sink}")))?;
            let cursor = cursor.unwrap_or(Cursor {
                seq: oldest.saturating_sub(1),
                state: None,
            });
            cursors.insert(sink.clone(), cursor);
        }

        let spare = if config.preallocate_segments {
            Some(
                Spare::open(&dir, !segments.is_empty())
                    .map_err(io("cannot open the spare segment"))?,
            )
        } else {
            None
        };
        // Appends go to the newest segment; the writer rotates before a write once it is
        // full, so the newest segment always holds the newest record (see `recover_tail`).
        // Recovery cut the newest segment after its last record, so writing goes on at
        // its end; a new one may be a spare, longer than what it holds.
        let (active, active_preallocated) = match segments.last() {
            Some(last) => (
                OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(io(format!("cannot open {}", last.path.display())))?,
                false,
            ),
            None => {
                let (file, info, preallocated) = create_segment(&dir, next_seq, spare.as_ref())?;
                segments.push(info);
                (file, preallocated)
            }
        };
        let active_len = segments.last().map_or(0, |s| s.bytes);
        let keys_file = match (options.dedup, segments.last()) {
            (true, Some(last)) => Some(rewrite_keys(&last.path, &newest_keys)?),
            _ => None,
        };

        let own_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        options.total_bytes.fetch_add(own_bytes, Ordering::SeqCst);
        let (head, _) = watch::channel(next_seq - 1);
        let shared = Arc::new(Shared {
            name: options.name,
            dir,
            cursor_dir,
            sinks: sinks.to_vec(),
            segments: RwLock::new(segments),
            cursors: Mutex::new(cursors),
            pending: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            head,
            poisoned: AtomicBool::new(false),
            preparing: AtomicUsize::new(0),
            writer_thread: std::sync::OnceLock::new(),
            bytes: Arc::clone(&options.total_bytes),
            max_bytes: options.max_bytes,
            keys: options.dedup,
            spare,
            retention: options.retention,
            retained_bytes: AtomicU64::new(0),
            on_failure: std::sync::OnceLock::new(),
            failed: AtomicBool::new(false),
            queued_requests: AtomicUsize::new(0),
            queued_bytes: AtomicU64::new(0),
            max_queued_requests: AtomicUsize::new(DEFAULT_MAX_QUEUED_REQUESTS),
            max_queued_bytes: AtomicU64::new(DEFAULT_MAX_QUEUED_BYTES),
            #[cfg(test)]
            faults: faults::Faults::default(),
        });
        // Bounded by requests and bytes (see `Shared::enqueue`): a request that gave up
        // leaves its append queued, so the number of requests in flight does not bound it.
        // The normalization stage's batches are not counted: it waits for each one.
        let (tx, rx) = mpsc::channel::<Append>();
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            active,
            active_len,
            active_preallocated,
            keys_file,
            next_seq,
            segment_bytes: config.segment_bytes,
            max_group: config.max_group_requests.max(1),
            group_wait: config.group_commit_wait,
            recent,
            buffer: Vec::new(),
            keys_buffer: Vec::new(),
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(io("cannot start the spool writer thread"))?;
        let _ = shared.writer_thread.set(thread.thread().clone());
        let spool = Spool {
            shared,
            appends: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
            recovered_tail: tail,
            recovered_tail_run: tail_run,
        };
        // What every sink delivered before the restart is retained (or expires) now, not at
        // the first commit.
        if spool.shared.retention.is_some() {
            spool.expire()?;
        }
        Ok(spool)
    }

    /// The newest record found when the log was opened: its seq and key.
    pub fn recovered_tail(&self) -> Option<(u64, Key)> {
        self.recovered_tail
    }

    /// How many records at the end of the log carried [`Self::recovered_tail`]'s key when
    /// it was opened: of a request cut short by a crash, the events that reached the log.
    pub fn recovered_tail_run(&self) -> usize {
        self.recovered_tail_run
    }

    /// Announces a request that will append soon (it is being verified and normalized), so
    /// the writer can include it in the next group; the guard's drop withdraws it.
    pub fn prepare(&self) -> Preparing<'_> {
        self.shared.preparing.fetch_add(1, Ordering::SeqCst);
        Preparing {
            spool: self,
            active: true,
        }
    }

    /// Stores a request's events durably; returns once they are fsync'd (sharing the fsync
    /// with concurrent appends). `key` identifies the request for dedup (zero: none).
    pub async fn append(
        &self,
        key: Key,
        events: Vec<Vec<u8>>,
    ) -> Result<AppendOutcome, SpoolError> {
        self.prepare().append(key, events).await
    }

    /// Stores several requests' events, each with its own key, in order, and waits until
    /// all are durable (they share group commits). Blocking: for a thread outside the
    /// async runtime (the normalization stage).
    pub fn append_blocking(&self, batch: Vec<(Key, Vec<Vec<u8>>)>) -> Result<(), SpoolError> {
        if self.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let sender = self
            .appends
            .lock()
            .map_err(|_| SpoolError::Closed)?
            .clone()
            .ok_or(SpoolError::Closed)?;
        let mut answers = Vec::with_capacity(batch.len());
        for (key, events) in batch.into_iter().filter(|(_, e)| !e.is_empty()) {
            let (reply, answer) = oneshot::channel();
            sender
                .send(Append {
                    key,
                    events,
                    reply,
                    queued_bytes: 0,
                })
                .map_err(|_| SpoolError::Closed)?;
            answers.push(answer);
        }
        for answer in answers {
            answer.blocking_recv().map_err(|_| SpoolError::Closed)??;
        }
        Ok(())
    }

    /// Whether the writer stopped for good: a failed write or fsync, or a panic.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// Where its consumers' cursors are (`cursors/`): a consumer may keep its own state
    /// there (the normalization stage's deferred requests).
    pub fn cursor_dir(&self) -> &Path {
        &self.shared.cursor_dir
    }

    /// This log's name in logs and metrics: `intake` or `events`.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// Sets what is called, on the writer thread and at once, when the writer stops for
    /// good (a panic, a failed fsync): the receiver counts it and logs it. Without one the
    /// spool logs it itself. Only the first hook set is kept.
    pub fn on_failure(&self, hook: impl Fn(&WriterFailure) + Send + Sync + 'static) {
        let _ = self.shared.on_failure.set(Box::new(hook));
    }

    /// Bounds the queue of requests' appends waiting for the writer: past `requests`
    /// requests or `bytes` bytes (one request is always let in), an append is refused with
    /// [`SpoolError::QueueFull`] (the receiver answers 503 with Retry-After).
    pub fn bound_queue(&self, requests: usize, bytes: u64) {
        let shared = &self.shared;
        shared
            .max_queued_requests
            .store(requests.max(1), Ordering::Relaxed);
        shared.max_queued_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Requests' appends queued for the writer now, and their bytes.
    pub fn queued(&self) -> (usize, u64) {
        let shared = &self.shared;
        (
            shared.queued_requests.load(Ordering::SeqCst),
            shared.queued_bytes.load(Ordering::SeqCst),
        )
    }

    /// Makes the writer fail at its next commit, for tests.
    #[cfg(test)]
    pub(crate) fn inject(&self, fault: faults::Fault) {
        self.shared.faults.set(fault);
    }

    /// The newest durable seq, updated after each group commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// Up to `max` durable events after `after`, in order. Blocking. Index points met on
    /// the way are remembered, so the next read starts near its first event.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        self.read_within(after, max, usize::MAX)
    }

    /// Like [`Spool::read_after`], and stops once the records read hold `max_bytes` of JSON:
    /// a batch's memory is bounded by the budget plus one record, whatever the records'
    /// sizes (a batch of large requests would otherwise hold `max` of them at once). At
    /// least one record is read, so a record larger than the budget still moves on.
    pub fn read_within(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let head = *self.shared.head.borrow();
        // At least one byte: the first record is always read.
        let max_bytes = max_bytes.max(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut want = after.saturating_add(1);
        let plan: Vec<(PathBuf, u64, u64)> = {
            let segments = self
                .shared
                .segments
                .read()
                .map_err(|_| SpoolError::Closed)?;
            let start = segments
                .partition_point(|s| s.first_seq <= want)
                .saturating_sub(1);
            segments[start..]
                .iter()
                .map(|s| {
                    let i = s.index.partition_point(|(seq, _)| *seq <= want);
                    let (from_seq, offset) = if i == 0 {
                        (s.first_seq, 0)
                    } else {
                        s.index[i - 1]
                    };
                    (s.path.clone(), from_seq, offset)
                })
                .collect()
        };
        for (path, from_seq, offset) in plan {
            if want > head || out.len() >= max || bytes >= max_bytes {
                break;
            }
            let mut reader = match FrameReader::open(&path, offset) {
                Ok(reader) => reader,
                // Compacted away meanwhile: those events were delivered by every sink.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io(format!("cannot read {}", path.display()))(err)),
            };
            let mut expected = from_seq;
            let mut found = Vec::new();
            // Past the head lies a write in progress, or a recycled segment's old records:
            // nothing to read.
            while out.len() < max && bytes < max_bytes && expected <= head {
                let at = reader.offset();
                let frame = reader
                    .next_frame(Some(expected))
                    .map_err(io(format!("cannot read {}", path.display())))?;
                let Some(frame) = frame else { break };
                if frame.seq > head {
                    break;
                }
                if frame.seq.is_multiple_of(INDEX_EVERY) {
                    found.push((frame.seq, at));
                }
                expected = frame.seq + 1;
                if frame.seq >= want {
                    if frame.seq > want {
                        tracing::error!(segment = %path.display(), from = want, to = frame.seq - 1, "records missing from the spool (a damaged segment); skipping to the next readable one");
                    }
                    want = frame.seq + 1;
                    bytes = bytes.saturating_add(frame.json.len());
                    out.push(Spooled {
                        seq: frame.seq,
                        received_millis: frame.received_millis,
                        json: frame.json,
                    });
                }
            }
            self.remember_index(&path, &found);
        }
        Ok(out)
    }

    /// Adds index points found by a reader to its segment's index.
    fn remember_index(&self, path: &Path, found: &[(u64, u64)]) {
        if found.is_empty() {
            return;
        }
        let Ok(mut segments) = self.shared.segments.write() else {
            return;
        };
        if let Some(segment) = segments.iter_mut().find(|s| s.path == path) {
            for point in found {
                if let Err(at) = segment.index.binary_search(point) {
                    segment.index.insert(at, *point);
                }
            }
        }
    }

    /// A sink's cursor.
    pub fn cursor(&self, sink: &str) -> Result<Cursor, SpoolError> {
        let cursors = self.shared.cursors.lock().map_err(|_| SpoolError::Closed)?;
        Ok(cursors.get(sink).copied().unwrap_or_default())
    }

    /// Events spooled and not yet delivered by `sink` (after its cursor).
    pub fn undelivered(&self, sink: &str) -> Result<u64, SpoolError> {
        let head = *self.shared.head.borrow();
        Ok(head.saturating_sub(self.cursor(sink)?.seq))
    }

    /// Moves a sink's cursor (with its state) durably, then deletes segments every sink has
    /// passed. Blocking.
    pub fn commit_cursor(&self, sink: &str, cursor: Cursor) -> Result<(), SpoolError> {
        cursor::write(&self.shared.cursor_dir, sink, cursor)
            .map_err(io(format!("cannot write the cursor of sink {sink}")))?;
        let low = {
            let mut cursors = self.shared.cursors.lock().map_err(|_| SpoolError::Closed)?;
            cursors.insert(sink.to_owned(), cursor);
            self.lowest_cursor(&cursors)
        };
        self.compact(low)
    }

    /// Applies compaction now, with the cursors as they are: segments every sink has
    /// delivered are deleted, or kept while `spool.retention` says so. Commits do this too;
    /// a receiver calls it periodically so retained segments expire while no event comes.
    pub fn expire(&self) -> Result<(), SpoolError> {
        let low = {
            let cursors = self.shared.cursors.lock().map_err(|_| SpoolError::Closed)?;
            self.lowest_cursor(&cursors)
        };
        self.compact(low)
    }

    /// The seq every configured sink has passed (0 for a sink without a cursor yet).
    fn lowest_cursor(&self, cursors: &HashMap<String, Cursor>) -> u64 {
        self.shared
            .sinks
            .iter()
            .map(|s| cursors.get(s).map_or(0, |c| c.seq))
            .min()
            .unwrap_or(0)
    }

    /// Deletes every segment whose events all have seq <= `low` (never the active one), or
    /// keeps one as the spare; with `spool.retention`, such segments are kept (and counted
    /// as retained) until they are too old or too many bytes.
    fn compact(&self, low: u64) -> Result<(), SpoolError> {
        let shared = &self.shared;
        let now = now_millis();
        let removed: Vec<PathBuf> = {
            let mut segments = shared.segments.write().map_err(|_| SpoolError::Closed)?;
            for i in 0..segments.len().saturating_sub(1) {
                if segments[i + 1].first_seq > low.saturating_add(1) {
                    break;
                }
                if !std::mem::replace(&mut segments[i].delivered, true)
                    && shared.retention.is_some()
                {
                    let bytes = segments[i].bytes;
                    shared.bytes.fetch_sub(bytes, Ordering::SeqCst);
                    shared.retained_bytes.fetch_add(bytes, Ordering::SeqCst);
                }
            }
            let mut removed = Vec::new();
            while segments.first().is_some_and(|s| s.delivered) {
                if let Some(retention) = shared.retention {
                    let over = retention.max_bytes > 0
                        && shared.retained_bytes.load(Ordering::SeqCst) > retention.max_bytes;
                    let expired = retention.max_age_millis.is_some_and(|age| {
                        last_written(&mut segments[0], now).saturating_add(age) < now
                    });
                    if !over && !expired {
                        break;
                    }
                }
                let segment = segments.remove(0);
                let counter = if shared.retention.is_some() {
                    &shared.retained_bytes
                } else {
                    &*shared.bytes
                };
                counter.fetch_sub(segment.bytes, Ordering::SeqCst);
                removed.push(segment.path);
            }
            removed
        };
        for path in &removed {
            let recycled = match &self.shared.spare {
                Some(spare) => spare
                    .offer(path)
                    .map_err(io(format!("cannot recycle {}", path.display())))?,
                None => false,
            };
            if !recycled {
                std::fs::remove_file(path)
                    .map_err(io(format!("cannot delete {}", path.display())))?;
            }
            if self.shared.keys {
                match std::fs::remove_file(segment::keys_path(path)) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(format!("cannot delete the keys of {}", path.display()))(
                            err,
                        ));
                    }
                    _ => {}
                }
            }
        }
        if !removed.is_empty() {
            segment::sync_dir(&self.shared.dir).map_err(io("cannot sync the segment directory"))?;
        }
        Ok(())
    }

    /// Records when the oldest event a sink has not delivered was accepted (`None`: caught up).
    pub fn set_pending(&self, sink: &str, oldest_received_millis: Option<u64>) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.insert(sink.to_owned(), oldest_received_millis);
        }
    }

    /// Records that a consumer has acted on everything up to `seq` (not yet committed) and
    /// when the oldest record after it was accepted (`None`: caught up), for [`Spool::stats`].
    pub fn set_progress(&self, consumer: &str, seq: u64, oldest_received_millis: Option<u64>) {
        if let Ok(mut progress) = self.shared.progress.lock() {
            progress.insert(consumer.to_owned(), seq);
        }
        self.set_pending(consumer, oldest_received_millis);
    }

    /// Events not yet delivered everywhere, and the age of the oldest.
    pub fn stats(&self) -> SpoolStats {
        let head = *self.shared.head.borrow();
        let progress = self
            .shared
            .progress
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let low = self
            .shared
            .cursors
            .lock()
            .map(|c| {
                self.shared
                    .sinks
                    .iter()
                    .map(|s| {
                        let committed = c.get(s).map_or(0, |c| c.seq);
                        progress.get(s).map_or(committed, |p| committed.max(*p))
                    })
                    .min()
                    .unwrap_or(head)
            })
            .unwrap_or(head);
        let events = head.saturating_sub(low);
        let oldest = if events == 0 {
            None
        } else {
            self.shared
                .pending
                .lock()
                .ok()
                .and_then(|p| p.values().flatten().min().copied())
        };
        SpoolStats {
            events,
            oldest_received_millis: oldest,
            bytes: self.shared.bytes.load(Ordering::SeqCst),
        }
    }

    /// Bytes kept for replay and when the oldest record still held was written.
    pub fn retained(&self) -> RetainedStats {
        let bytes = self.shared.retained_bytes.load(Ordering::SeqCst);
        let first = self
            .shared
            .segments
            .read()
            .ok()
            .and_then(|s| s.first().map(|s| (s.first_seq, s.first_millis)));
        let oldest_millis = match first {
            None => None,
            Some((_, Some(at))) => Some(at),
            Some((first_seq, None)) => {
                let at = self
                    .read_within(first_seq.saturating_sub(1), 1, 1)
                    .ok()
                    .and_then(|read| read.first().map(|e| e.received_millis));
                if let (Some(at), Ok(mut segments)) = (at, self.shared.segments.write())
                    && let Some(segment) = segments.first_mut().filter(|s| s.first_seq == first_seq)
                {
                    segment.first_millis = Some(at);
                }
                at
            }
        };
        RetainedStats {
            bytes,
            oldest_millis,
        }
    }

    /// The seq before the oldest record the log holds (delivered or not): reading after it
    /// reads everything there is, retained events included.
    pub fn before_oldest(&self) -> u64 {
        self.shared
            .segments
            .read()
            .ok()
            .and_then(|s| s.first().map(|s| s.first_seq.saturating_sub(1)))
            .unwrap_or_else(|| *self.shared.head.borrow())
    }

    /// The newest durable seq.
    pub fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    /// The configured sinks this log keeps cursors for.
    pub fn sinks(&self) -> &[String] {
        &self.shared.sinks
    }

    /// Stops accepting appends and waits for the writer to commit what was queued.
    pub fn close(&self) {
        if let Some(spare) = &self.shared.spare {
            spare.close();
        }
        if let Ok(mut appends) = self.appends.lock() {
            appends.take();
        }
        // A panic in the writer was caught and reported when it happened (see
        // `Writer::run`); a failed join would be one in its reporting.
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if writer.is_some_and(|w| w.join().is_err()) {
            tracing::error!(log = self.shared.name, "the spool writer thread panicked");
        }
    }
}

/// A request announced with [`Spool::prepare`].
#[derive(Debug)]
pub struct Preparing<'a> {
    spool: &'a Spool,
    active: bool,
}

impl Preparing<'_> {
    /// Withdraws the announcement; the last one withdrawn ends the writer's wait for it.
    fn withdraw(&mut self) {
        let shared = &self.spool.shared;
        if std::mem::take(&mut self.active)
            && shared.preparing.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(writer) = shared.writer_thread.get()
        {
            writer.unpark();
        }
    }

    /// Appends the request's events; see [`Spool::append`].
    pub async fn append(
        mut self,
        key: Key,
        events: Vec<Vec<u8>>,
    ) -> Result<AppendOutcome, SpoolError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        if self.spool.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let sender = self
            .spool
            .appends
            .lock()
            .map_err(|_| SpoolError::Closed)?
            .clone()
            .ok_or(SpoolError::Closed)?;
        // Counted in the queue's bound until the writer answers it (at least one byte, so
        // the release is told apart from an uncounted append).
        let queued_bytes = events.iter().map(|e| e.len() as u64).sum::<u64>().max(1);
        let shared = &self.spool.shared;
        if let Err(full) = shared.enqueue(queued_bytes) {
            self.withdraw();
            return Err(full);
        }
        let (reply, answer) = oneshot::channel();
        let sent = sender.send(Append {
            key,
            events,
            reply,
            queued_bytes,
        });
        self.withdraw();
        if let Err(mpsc::SendError(unsent)) = sent {
            shared.dequeued(&unsent);
            return Err(SpoolError::Closed);
        }
        answer.await.map_err(|_| SpoolError::Closed)?
    }
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

/// The lock file a running receiver holds in the spool `dir` (its intake log's `LOCK`, or
/// its event log's, in the order a start takes them), if one does: what a receiver starting
/// on `dir` would be refused for. Creates nothing (a spool without lock files is held by no
/// one) and keeps no lock.
pub fn held_lock(dir: &Path) -> Result<Option<PathBuf>, SpoolError> {
    for path in [dir.join("intake").join("LOCK"), dir.join("LOCK")] {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io(format!("cannot open {}", path.display()))(err)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(Some(path)),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(io(format!("cannot lock {}", path.display()))(source));
            }
        }
    }
    Ok(None)
}

/// When a sealed segment was last written (Unix millis; `now` when that cannot be told,
/// so it is kept rather than deleted on a guess), looked up once.
fn last_written(segment: &mut SegmentInfo, now: u64) -> u64 {
    *segment.last_millis.get_or_insert_with(|| {
        std::fs::metadata(&segment.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(now, |d| u64::try_from(d.as_millis()).unwrap_or(now))
    })
}

/// Holds `dir/LOCK` open with an exclusive advisory lock: two receivers on one spool would
/// interleave their writes.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    file.try_lock().map_err(|err| match err {
        std::fs::TryLockError::WouldBlock => SpoolError::InUse { lock: path.clone() },
        std::fs::TryLockError::Error(source) => SpoolError::Io {
            context: format!("cannot lock {}", path.display()),
            source,
        },
    })?;
    Ok(file)
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
