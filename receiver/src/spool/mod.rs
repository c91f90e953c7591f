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
//! - **Compaction**: a segment is deleted once every configured sink has passed it.
//! - **Dedup** ([`dedup`]): a request whose key (its HMAC) was accepted within the window
//!   is answered 200 without being stored again.
//! - **Recovery**: on open, every segment is scanned and an incomplete tail truncated.
//!   After an fsync error the spool refuses further writes (the page cache can no longer
//!   be trusted) and readiness turns false until a restart.

pub mod cursor;
pub mod dead_letters;
pub mod dedup;
pub mod segment;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

pub use cursor::Cursor;
pub use segment::Key;

use crate::config::SpoolConfig;
use segment::{FrameReader, INDEX_EVERY};

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

struct Append {
    key: Key,
    events: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<AppendOutcome, SpoolError>>,
}

/// A segment and its sparse index.
#[derive(Debug)]
struct SegmentInfo {
    first_seq: u64,
    path: PathBuf,
    /// (seq, offset) every [`INDEX_EVERY`] records and at the first.
    index: Vec<(u64, u64)>,
    /// Bytes of valid records in the file.
    bytes: u64,
}

struct Shared {
    dir: PathBuf,
    cursor_dir: PathBuf,
    sinks: Vec<String>,
    segments: RwLock<Vec<SegmentInfo>>,
    cursors: Mutex<HashMap<String, Cursor>>,
    pending: Mutex<HashMap<String, Option<u64>>>,
    head: watch::Sender<u64>,
    poisoned: AtomicBool,
    /// Requests being verified and normalized, about to append: the writer waits a little
    /// for them so they share the next fsync (see `group_commit_wait`).
    preparing: AtomicUsize,
    /// The writer thread, to unpark it.
    writer_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Bytes in all segments.
    bytes: AtomicU64,
    /// `spool.max_bytes` (0: no limit).
    max_bytes: u64,
}

/// The spool; see the module docs.
pub struct Spool {
    shared: Arc<Shared>,
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
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
    /// Opens (or creates) the spool in `config.dir` for the given sinks, recovers it, and
    /// starts the group-commit writer. A sink new to this spool starts at the oldest event.
    pub fn open(config: &SpoolConfig, sinks: &[String]) -> Result<Spool, SpoolError> {
        let dir = config.dir.join("segments");
        let cursor_dir = config.dir.join("cursors");
        for d in [&dir, &cursor_dir] {
            std::fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
        }
        let lock = lock_dir(&config.dir)?;
        let window = u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let mut recent = dedup::Recent::new(window, config.dedup_max_entries);
        let now = now_millis();

        let mut segments = Vec::new();
        let mut next_seq = 1;
        let listed = segment::list(&dir).map_err(io(format!("cannot list {}", dir.display())))?;
        for (first_seq, path) in listed {
            let scan = segment::recover(&path, first_seq, |frame| {
                recent.insert(frame.key, frame.received_millis, now);
            })
            .map_err(io(format!("cannot recover {}", path.display())))?;
            next_seq = next_seq.max(scan.last_seq.map_or(first_seq, |last| last + 1));
            segments.push(SegmentInfo {
                first_seq,
                path,
                index: scan.index,
                bytes: scan.valid_len,
            });
        }
        let oldest = segments.first().map_or(next_seq, |s| s.first_seq);
        let mut cursors = HashMap::new();
        for sink in sinks {
            let cursor = cursor::read(&cursor_dir, sink)
                .map_err(io(format!("cannot read the cursor of sink {sink}")))?;
            let cursor = cursor.unwrap_or(Cursor {
                seq: oldest.saturating_sub(1),
                state: 0,
            });
            cursors.insert(sink.clone(), cursor);
        }

        // Appends go to the last segment while it has room, else to a new one.
        let active = match segments.last() {
            Some(last)
                if std::fs::metadata(&last.path)
                    .map(|m| m.len())
                    .unwrap_or(u64::MAX)
                    < config.segment_bytes =>
            {
                OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io(format!("cannot open {}", last.path.display())))?
            }
            _ => {
                let (file, info) = create_segment(&dir, next_seq)?;
                segments.push(info);
                file
            }
        };
        let active_len = active
            .metadata()
            .map_err(io("cannot stat the active segment"))?
            .len();

        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let (head, _) = watch::channel(next_seq - 1);
        let shared = Arc::new(Shared {
            dir,
            cursor_dir,
            sinks: sinks.to_vec(),
            segments: RwLock::new(segments),
            cursors: Mutex::new(cursors),
            pending: Mutex::new(HashMap::new()),
            head,
            poisoned: AtomicBool::new(false),
            preparing: AtomicUsize::new(0),
            writer_thread: std::sync::OnceLock::new(),
            bytes: AtomicU64::new(total_bytes),
            max_bytes: config.max_bytes,
        });
        // Unbounded, but bounded in practice: each in-flight request (limits.max_in_flight)
        // sends at most one append.
        let (tx, rx) = mpsc::channel::<Append>();
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            active,
            active_len,
            next_seq,
            segment_bytes: config.segment_bytes,
            max_group: config.max_group_requests.max(1),
            group_wait: config.group_commit_wait,
            recent,
            buffer: Vec::new(),
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(io("cannot start the spool writer thread"))?;
        let _ = shared.writer_thread.set(thread.thread().clone());
        Ok(Spool {
            shared,
            appends: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
        })
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

    /// Whether a failed fsync stopped the spool.    /// Whether a failed fsync stopped the spool.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// The newest durable seq, updated after each group commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// Up to `max` durable events after `after`, in order. Blocking.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        let head = *self.shared.head.borrow();
        let mut out = Vec::new();
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
            if want > head || out.len() >= max {
                break;
            }
            let mut reader = match FrameReader::open(&path, offset) {
                Ok(reader) => reader,
                // Compacted away meanwhile: those events were delivered by every sink.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io(format!("cannot read {}", path.display()))(err)),
            };
            let mut expected = from_seq;
            while out.len() < max {
                let frame = reader
                    .next_frame(Some(expected))
                    .map_err(io(format!("cannot read {}", path.display())))?;
                let Some(frame) = frame else { break };
                if frame.seq > head {
                    break;
                }
                expected = frame.seq + 1;
                if frame.seq >= want {
                    want = frame.seq + 1;
                    out.push(Spooled {
                        seq: frame.seq,
                        received_millis: frame.received_millis,
                        json: frame.json,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A sink's cursor.
    pub fn cursor(&self, sink: &str) -> Result<Cursor, SpoolError> {
        let cursors = self.shared.cursors.lock().map_err(|_| SpoolError::Closed)?;
        Ok(cursors.get(sink).copied().unwrap_or_default())
    }

    /// Moves a sink's cursor (with its state) durably, then deletes segments every sink has
    /// passed. Blocking.
    pub fn commit_cursor(&self, sink: &str, cursor: Cursor) -> Result<(), SpoolError> {
        cursor::write(&self.shared.cursor_dir, sink, cursor)
            .map_err(io(format!("cannot write the cursor of sink {sink}")))?;
        let low = {
            let mut cursors = self.shared.cursors.lock().map_err(|_| SpoolError::Closed)?;
            cursors.insert(sink.to_owned(), cursor);
            self.shared
                .sinks
                .iter()
                .map(|s| cursors.get(s).map_or(0, |c| c.seq))
                .min()
                .unwrap_or(0)
        };
        self.compact(low)
    }

    /// Deletes every segment whose events all have seq <= `low` (never the active one).
    fn compact(&self, low: u64) -> Result<(), SpoolError> {
        let removed: Vec<PathBuf> = {
            let mut segments = self
                .shared
                .segments
                .write()
                .map_err(|_| SpoolError::Closed)?;
            let mut removed = Vec::new();
            while segments.len() > 1 && segments[1].first_seq <= low.saturating_add(1) {
                let segment = segments.remove(0);
                self.shared.bytes.fetch_sub(segment.bytes, Ordering::SeqCst);
                removed.push(segment.path);
            }
            removed
        };
        for path in &removed {
            std::fs::remove_file(path).map_err(io(format!("cannot delete {}", path.display())))?;
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

    /// Events not yet delivered everywhere, and the age of the oldest.
    pub fn stats(&self) -> SpoolStats {
        let head = *self.shared.head.borrow();
        let low = self
            .shared
            .cursors
            .lock()
            .map(|c| {
                self.shared
                    .sinks
                    .iter()
                    .map(|s| c.get(s).map_or(0, |c| c.seq))
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

    /// Stops accepting appends and waits for the writer to commit what was queued.
    pub fn close(&self) {
        if let Ok(mut appends) = self.appends.lock() {
            appends.take();
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if writer.is_some_and(|w| w.join().is_err()) {
            tracing::error!("the spool writer thread panicked");
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
        let (reply, answer) = oneshot::channel();
        let sent = sender.send(Append { key, events, reply });
        self.withdraw();
        sent.map_err(|_| SpoolError::Closed)?;
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
        std::fs::TryLockError::WouldBlock => SpoolError::Io {
            context: format!("{} is in use by another receiver", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        },
        std::fs::TryLockError::Error(source) => SpoolError::Io {
            context: format!("cannot lock {}", path.display()),
            source,
        },
    })?;
    Ok(file)
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, SegmentInfo), SpoolError> {
    let path = segment::path(dir, first_seq);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    segment::sync_dir(dir).map_err(io("cannot sync the segment directory"))?;
    Ok((
        file,
        SegmentInfo {
            first_seq,
            path,
            index: Vec::new(),
            bytes: 0,
        },
    ))
}

/// The single writer: group commit and segment rotation.
struct Writer {
    shared: Arc<Shared>,
    active: File,
    active_len: u64,
    next_seq: u64,
    segment_bytes: u64,
    max_group: usize,
    group_wait: Duration,
    recent: dedup::Recent,
    buffer: Vec<u8>,
    _lock: File,
}

impl Writer {
    fn run(&mut self, appends: &mpsc::Receiver<Append>) {
        let mut group = Vec::with_capacity(self.max_group);
        while let Ok(first) = appends.recv() {
            group.push(first);
            self.gather(appends, &mut group);
            let result = self.commit(&group);
            match result {
                Ok(outcomes) => {
                    for (append, outcome) in group.drain(..).zip(outcomes) {
                        // A waiter that gave up (client gone) no longer needs its answer.
                        let _ = append.reply.send(outcome);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, requests = group.len(), "spool commit failed; refusing further writes");
                    self.shared.poisoned.store(true, Ordering::SeqCst);
                    for append in group.drain(..) {
                        let _ = append.reply.send(Err(SpoolError::Poisoned));
                    }
                }
            }
        }
        if let Err(err) = self.active.sync_all() {
            tracing::error!(error = %err, "final spool sync failed");
        }
    }

    /// Adds what is queued to the group, then, while other requests are about to append,
    /// waits for them up to `group_wait`: one fsync for all instead of one each. The wait is
    /// a park that only the last of those requests ends (see [`Preparing::append`]), so the
    /// handlers are not preempted by a writer waking once per arrival.
    fn gather(&self, appends: &mpsc::Receiver<Append>, group: &mut Vec<Append>) {
        let deadline = Instant::now() + self.group_wait;
        while self.shared.preparing.load(Ordering::SeqCst) > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        while group.len() < self.max_group {
            match appends.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
    }

    /// Writes a group with one write and one fdatasync.
    fn commit(
        &mut self,
        group: &[Append],
    ) -> Result<Vec<Result<AppendOutcome, SpoolError>>, SpoolError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(SpoolError::Poisoned);
        }
        let now = now_millis();
        self.buffer.clear();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut accepted_keys: Vec<Key> = Vec::new();
        let mut new_index = Vec::new();
        let mut seq = self.next_seq;
        for append in group {
            let repeated = append.key != [0; 16]
                && (self.recent.contains(&append.key, now) || accepted_keys.contains(&append.key));
            if repeated {
                outcomes.push(Ok(AppendOutcome {
                    stored: 0,
                    duplicates: append.events.len(),
                }));
                continue;
            }
            let size: usize = append
                .events
                .iter()
                .map(|e| e.len() + segment::FRAME_HEADER + segment::PAYLOAD_HEADER)
                .sum();
            let limit = self.shared.max_bytes;
            let held = self.shared.bytes.load(Ordering::SeqCst) + (self.buffer.len() + size) as u64;
            if limit > 0 && held > limit {
                outcomes.push(Err(SpoolError::Full { limit }));
                continue;
            }
            for json in &append.events {
                if seq.is_multiple_of(INDEX_EVERY) {
                    new_index.push((seq, self.active_len + self.buffer.len() as u64));
                }
                segment::encode(&mut self.buffer, seq, now, &append.key, json);
                seq += 1;
            }
            accepted_keys.push(append.key);
            outcomes.push(Ok(AppendOutcome {
                stored: append.events.len(),
                duplicates: 0,
            }));
        }
        if !self.buffer.is_empty() {
            self.active
                .write_all(&self.buffer)
                .map_err(io("cannot write the active segment"))?;
            self.active
                .sync_data()
                .map_err(io("cannot fsync the active segment"))?;
            let written = self.buffer.len() as u64;
            self.active_len += written;
            self.shared.bytes.fetch_add(written, Ordering::SeqCst);
            if let Ok(mut segments) = self.shared.segments.write()
                && let Some(last) = segments.last_mut()
            {
                last.index.extend(new_index);
                last.bytes += written;
            }
            self.next_seq = seq;
            self.shared.head.send_replace(seq - 1);
        }
        for key in accepted_keys {
            self.recent.insert(key, now, now);
        }
        if self.active_len >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(outcomes)
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.active
            .sync_all()
            .map_err(io("cannot sync the full segment"))?;
        let (file, info) = create_segment(&self.shared.dir, self.next_seq)?;
        self.active = file;
        self.active_len = 0;
        if let Ok(mut segments) = self.shared.segments.write() {
            segments.push(info);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
