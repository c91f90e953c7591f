//! The durable spool: every accepted event is committed here (fsync) before the 200.
//!
//! Storage is [redb](https://docs.rs/redb), an embedded copy-on-write B-tree with
//! checksummed commits: a crash leaves the last committed state, never a torn one. We chose
//! it over a segment log of our own because cursors, dead letters (next) and the dedup index
//! need transactional updates beside the events, which redb gives for free; its one cost,
//! an fsync per commit, is paid once per *group*:
//!
//! - **Group commit.** Request handlers send their events to one writer thread, which
//!   takes everything queued (up to `max_group_requests`), writes it in one transaction,
//!   commits with one fsync and then answers every waiter. Concurrent requests share it.
//! - **Sequence numbers.** Each stored event gets the next `u64`; sinks consume in order.
//! - **Cursors.** Each sink keeps `(last delivered seq, sink state)` in the spool; a sink's
//!   state lets it resume exactly (the file sink stores the file length it fsync'd).
//! - **Compaction.** Events every configured sink has passed are deleted when a cursor moves.
//! - **Dedup.** Records whose key was stored within `dedup_window` are not stored again. The
//!   server keys records by (digest of the signed body, item position), so a redelivery of
//!   a body Meta saw no 200 for is stored once (see `server::dedup_keys`).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SpoolConfig;

/// seq -> received-at millis (8 bytes, little endian) followed by the event's JSON.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// dedup key -> received-at millis.
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// (received-at millis, dedup key) -> (), to expire keys in time order.
const IDS_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("ids_by_time");
/// sink name -> (last delivered seq, sink state).
const CURSORS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("cursors");
/// Counters: `next_seq`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Ids expired per commit at most, so expiry never stalls a group commit.
const EXPIRE_PER_COMMIT: usize = 4096;

/// A spool failure; requests get 503 (Meta retries), sinks retry.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory could not be created.
    #[error("cannot create spool directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A storage error.
    #[error("spool storage: {0}")]
    Storage(#[from] redb::Error),
    /// The writer thread is gone (shutting down).
    #[error("the spool is closed")]
    Closed,
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for SpoolError {
            fn from(e: $t) -> Self {
                SpoolError::Storage(e.into())
            }
        }
    )*};
}
storage_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One event to store: its dedup key and its JSON.
#[derive(Debug, Clone)]
pub struct Record {
    /// Equal keys within the dedup window are stored once.
    pub key: String,
    /// The serialized event.
    pub json: Vec<u8>,
}

/// What an append stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Events stored.
    pub stored: usize,
    /// Events skipped because their id was already in the spool's dedup window.
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

/// A sink's position: the last seq it delivered and its own resume state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Last delivered sequence number (0 = none).
    pub seq: u64,
    /// Sink-specific state committed with the cursor.
    pub state: u64,
}

/// Gauges for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Events not yet delivered by every sink.
    pub events: u64,
    /// When the oldest of them was accepted (Unix millis).
    pub oldest_received_millis: Option<u64>,
}

struct Append {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<AppendOutcome, SpoolError>>,
}

struct Shared {
    db: Database,
    sinks: Vec<String>,
    dedup_window: Duration,
    head: watch::Sender<u64>,
}

/// The spool; see the module docs. Cheap to share behind an `Arc`.
pub struct Spool {
    shared: Arc<Shared>,
    appends: std::sync::Mutex<Option<mpsc::Sender<Append>>>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
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
    /// Opens (or creates) the spool in `config.dir` for the given sinks, and starts the
    /// group-commit writer. A sink new to this spool starts at the oldest stored event.
    pub fn open(config: &SpoolConfig, sinks: &[String]) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| SpoolError::Dir {
            path: config.dir.clone(),
            source,
        })?;
        let db = Database::create(config.dir.join("spool.redb"))?;
        let txn = db.begin_write()?;
        let next_seq;
        {
            let mut meta = txn.open_table(META)?;
            next_seq = meta.get("next_seq")?.map_or(1, |v| v.value());
            meta.insert("next_seq", next_seq)?;
            let events = txn.open_table(EVENTS)?;
            let oldest = events.first()?.map_or(next_seq, |(k, _)| k.value());
            let mut cursors = txn.open_table(CURSORS)?;
            for sink in sinks {
                if cursors.get(sink.as_str())?.is_none() {
                    cursors.insert(sink.as_str(), (oldest.saturating_sub(1), 0))?;
                }
            }
            txn.open_table(IDS)?;
            txn.open_table(IDS_BY_TIME)?;
        }
        txn.commit()?;
        let (head, _) = watch::channel(next_seq - 1);
        let shared = Arc::new(Shared {
            db,
            sinks: sinks.to_vec(),
            dedup_window: config.dedup_window,
            head,
        });
        let (tx, rx) = mpsc::channel::<Append>(config.max_group_requests.max(1) * 4);
        let writer_shared = Arc::clone(&shared);
        let max_group = config.max_group_requests.max(1);
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(&writer_shared, rx, max_group))
            .map_err(|source| SpoolError::Dir {
                path: config.dir.clone(),
                source,
            })?;
        Ok(Spool {
            shared,
            appends: std::sync::Mutex::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(writer)),
        })
    }

    /// Stores the events durably; returns once they are fsync'd (shared with concurrent
    /// appends). An empty list returns at once.
    pub async fn append(&self, records: Vec<Record>) -> Result<AppendOutcome, SpoolError> {
        if records.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let sender = self
            .appends
            .lock()
            .map_err(|_| SpoolError::Closed)?
            .clone()
            .ok_or(SpoolError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Append { records, reply })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// The newest stored seq, updated after each commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// Up to `max` events after `after`, in order. Blocking: call from a blocking context.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Spooled>, SpoolError> {
        let txn = self.shared.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in events.range(after.saturating_add(1)..)?.take(max) {
            let (seq, value) = row?;
            out.push(decode(seq.value(), value.value()));
        }
        Ok(out)
    }

    /// A sink's cursor. Blocking.
    pub fn cursor(&self, sink: &str) -> Result<Cursor, SpoolError> {
        let txn = self.shared.db.begin_read()?;
        let cursors = txn.open_table(CURSORS)?;
        Ok(cursors
            .get(sink)?
            .map(|v| v.value())
            .map_or_else(Cursor::default, |(seq, state)| Cursor { seq, state }))
    }

    /// Moves a sink's cursor (with its state) and deletes events every sink has passed.
    /// Blocking; one fsync.
    pub fn commit_cursor(&self, sink: &str, cursor: Cursor) -> Result<(), SpoolError> {
        let txn = self.shared.db.begin_write()?;
        {
            let mut cursors = txn.open_table(CURSORS)?;
            cursors.insert(sink, (cursor.seq, cursor.state))?;
            let mut low = u64::MAX;
            for name in &self.shared.sinks {
                let seq = cursors.get(name.as_str())?.map_or(0, |v| v.value().0);
                low = low.min(seq);
            }
            if low != u64::MAX && low > 0 {
                let mut events = txn.open_table(EVENTS)?;
                events.retain_in(..=low, |_, _| false)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Events not yet delivered everywhere, and the age of the oldest. Blocking.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let txn = self.shared.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let cursors = txn.open_table(CURSORS)?;
        let head = *self.shared.head.borrow();
        let mut low = head;
        for name in &self.shared.sinks {
            low = low.min(cursors.get(name.as_str())?.map_or(0, |v| v.value().0));
        }
        let oldest = events.range(low.saturating_add(1)..)?.next().transpose()?;
        Ok(SpoolStats {
            events: head.saturating_sub(low),
            oldest_received_millis: oldest
                .map(|(seq, value)| decode(seq.value(), value.value()).received_millis),
        })
    }

    /// Stops accepting appends and waits for the writer to commit what was queued.
    pub fn close(&self) {
        if let Ok(mut appends) = self.appends.lock() {
            appends.take();
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the spool writer thread panicked");
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

fn decode(seq: u64, value: &[u8]) -> Spooled {
    let (millis, json) = value.split_at(value.len().min(8));
    let mut bytes = [0u8; 8];
    bytes[..millis.len()].copy_from_slice(millis);
    Spooled {
        seq,
        received_millis: u64::from_le_bytes(bytes),
        json: json.to_vec(),
    }
}

fn writer_loop(shared: &Shared, mut appends: mpsc::Receiver<Append>, max_group: usize) {
    let mut buffer = Vec::new();
    while let Some(first) = appends.blocking_recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match appends.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        match write_group(shared, &group, &mut buffer) {
            Ok((outcomes, head)) => {
                shared.head.send_replace(head);
                for (append, outcome) in group.into_iter().zip(outcomes) {
                    // A waiter that gave up (client gone) no longer needs its answer.
                    let _ = append.reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, requests = group.len(), "spool commit failed");
                let message = err.to_string();
                for append in group {
                    let _ = append
                        .reply
                        .send(Err(SpoolError::Storage(redb::Error::Corrupted(
                            message.clone(),
                        ))));
                }
            }
        }
    }
}

fn write_group(
    shared: &Shared,
    group: &[Append],
    buffer: &mut Vec<u8>,
) -> Result<(Vec<AppendOutcome>, u64), SpoolError> {
    let now = now_millis();
    let dedup = !shared.dedup_window.is_zero();
    let txn = shared.db.begin_write()?;
    let mut outcomes = Vec::with_capacity(group.len());
    let next_seq;
    {
        let mut meta = txn.open_table(META)?;
        let mut seq = meta.get("next_seq")?.map_or(1, |v| v.value());
        let mut events = txn.open_table(EVENTS)?;
        let mut ids = txn.open_table(IDS)?;
        let mut ids_by_time = txn.open_table(IDS_BY_TIME)?;
        for append in group {
            let mut outcome = AppendOutcome::default();
            for record in &append.records {
                if dedup {
                    if ids.get(record.key.as_str())?.is_some() {
                        outcome.duplicates += 1;
                        continue;
                    }
                    ids.insert(record.key.as_str(), now)?;
                    ids_by_time.insert((now, record.key.as_str()), ())?;
                }
                buffer.clear();
                buffer.extend_from_slice(&now.to_le_bytes());
                buffer.extend_from_slice(&record.json);
                events.insert(seq, buffer.as_slice())?;
                seq += 1;
                outcome.stored += 1;
            }
            outcomes.push(outcome);
        }
        if dedup {
            let horizon = now
                .saturating_sub(u64::try_from(shared.dedup_window.as_millis()).unwrap_or(u64::MAX));
            let mut expired = Vec::new();
            for row in ids_by_time
                .range((0, "")..(horizon, ""))?
                .take(EXPIRE_PER_COMMIT)
            {
                let (key, _) = row?;
                let (at, id) = key.value();
                expired.push((at, id.to_owned()));
            }
            for (at, id) in &expired {
                ids_by_time.remove((*at, id.as_str()))?;
                ids.remove(id.as_str())?;
            }
        }
        meta.insert("next_seq", seq)?;
        next_seq = seq;
    }
    txn.commit()?;
    Ok((outcomes, next_seq - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            dedup_window: Duration::from_secs(60),
            max_group_requests: 64,
        }
    }

    fn record(id: &str) -> Record {
        Record {
            key: id.to_owned(),
            json: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn appends_dedups_reads_and_compacts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sinks = vec!["a".to_owned(), "b".to_owned()];
        let spool = Spool::open(&config(dir.path()), &sinks).expect("open");
        let outcome = spool
            .append(vec![record("1"), record("2"), record("1")])
            .await
            .expect("append");
        assert_eq!(
            outcome,
            AppendOutcome {
                stored: 2,
                duplicates: 1
            }
        );
        let again = spool
            .append(vec![record("2"), record("3")])
            .await
            .expect("append");
        assert_eq!(
            again,
            AppendOutcome {
                stored: 1,
                duplicates: 1
            }
        );
        assert_eq!(*spool.subscribe().borrow(), 3);

        let all = spool.read_after(0, 10).expect("read");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[2].json, b"{\"id\":\"3\"}");
        assert_eq!(spool.stats().expect("stats").events, 3);

        spool
            .commit_cursor("a", Cursor { seq: 3, state: 7 })
            .expect("cursor a");
        assert_eq!(
            spool.cursor("a").expect("cursor"),
            Cursor { seq: 3, state: 7 }
        );
        assert_eq!(
            spool.read_after(0, 10).expect("read").len(),
            3,
            "b has not passed them"
        );
        spool
            .commit_cursor("b", Cursor { seq: 2, state: 0 })
            .expect("cursor b");
        let left = spool.read_after(0, 10).expect("read");
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(spool.stats().expect("stats").events, 1);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sinks = vec!["a".to_owned()];
        {
            let spool = Spool::open(&config(dir.path()), &sinks).expect("open");
            spool
                .append(vec![record("x"), record("y")])
                .await
                .expect("append");
            spool
                .commit_cursor("a", Cursor { seq: 1, state: 3 })
                .expect("cursor");
            spool.close();
        }
        let spool = Spool::open(&config(dir.path()), &sinks).expect("reopen");
        assert_eq!(
            spool.cursor("a").expect("cursor"),
            Cursor { seq: 1, state: 3 }
        );
        assert_eq!(spool.read_after(1, 10).expect("read").len(), 1);
        let outcome = spool
            .append(vec![record("y"), record("z")])
            .await
            .expect("append");
        assert_eq!(
            outcome,
            AppendOutcome {
                stored: 1,
                duplicates: 1
            },
            "dedup survives a restart"
        );
        assert_eq!(*spool.subscribe().borrow(), 3);
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Arc::new(Spool::open(&config(dir.path()), &["a".to_owned()]).expect("open"));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = Arc::clone(&spool);
                tokio::spawn(async move { spool.append(vec![record(&format!("e{i}"))]).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.expect("join").expect("append").stored, 1);
        }
        assert_eq!(spool.read_after(0, 1000).expect("read").len(), 200);
    }
}
