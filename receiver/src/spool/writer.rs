//! The single writer thread: group commit and segment rotation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::panic_message::panic_message;

use super::segment::{self, INDEX_EVERY, Key};
use super::spare::Spare;
use super::{AppendOutcome, Failure, SegmentInfo, Shared, SpoolError, dedup, io, now_millis};

/// A request's events on their way to the writer, and where its answer goes.
pub(super) struct Append {
    pub(super) key: Key,
    pub(super) events: Vec<Vec<u8>>,
    pub(super) reply: oneshot::Sender<Result<AppendOutcome, SpoolError>>,
    /// Bytes it counts in the append queue's bound (0: not counted, see
    /// [`super::Preparing::append`]).
    pub(super) queued_bytes: u64,
}

/// Starts the segment whose first record will be `first_seq`: the spare if one is ready
/// (`true`: preallocated), else an empty file.
pub(super) fn create_segment(
    dir: &Path,
    first_seq: u64,
    spare: Option<&Spare>,
) -> Result<(File, SegmentInfo, bool), SpoolError> {
    let path = segment::path(dir, first_seq);
    let taken = match spare {
        Some(spare) => spare.take(&path).map_err(io(format!(
            "cannot make the spare segment {}",
            path.display()
        )))?,
        None => None,
    };
    let preallocated = taken.is_some();
    let file = match taken {
        Some(file) => file,
        None => OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io(format!("cannot create {}", path.display())))?,
    };
    segment::sync_dir(dir).map_err(io("cannot sync the segment directory"))?;
    Ok((
        file,
        SegmentInfo {
            first_seq,
            path,
            index: Vec::new(),
            bytes: 0,
            delivered: false,
            last_millis: None,
            first_millis: None,
        },
        preallocated,
    ))
}

/// The single writer: group commit and segment rotation.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) active: File,
    /// Bytes of records in the active segment: where the next write goes.
    pub(super) active_len: u64,
    /// Whether the active segment was a spare (writes overwrite allocated space).
    pub(super) active_preallocated: bool,
    /// The active segment's `.keys` file (deduplicating logs only).
    pub(super) keys_file: Option<File>,
    pub(super) next_seq: u64,
    pub(super) segment_bytes: u64,
    pub(super) max_group: usize,
    pub(super) group_wait: Duration,
    pub(super) recent: dedup::Recent,
    pub(super) buffer: Vec<u8>,
    pub(super) keys_buffer: Vec<u8>,
    pub(super) _lock: File,
}

impl Writer {
    /// Runs until every sender is gone. A panic in here (a bug, never expected) must not
    /// leave the receiver answering 200 to nothing: it poisons the log at once (readiness
    /// turns false, appends get 503), is reported with its message ([`Shared::fail`]), and
    /// the thread then answers what is still queued and what comes until the log is closed,
    /// so no request waits for a writer that is gone.
    pub(super) fn run(&mut self, appends: &mpsc::Receiver<Append>) {
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_groups(appends)));
        let Err(payload) = ran else {
            #[cfg(test)]
            if self.shared.faults.crashed() {
                return;
            }
            // As when sealed: a clean stop leaves no recycled tail.
            if let Err(err) = self
                .cut_after_last_record()
                .and_then(|()| self.active.sync_all())
            {
                tracing::error!(error = %err, "final spool sync failed");
            }
            return;
        };
        // The group being committed was refused as the panic unwound (`Unanswered`), after
        // the log was poisoned. Nothing more is written: the writer's state is not trusted
        // any more; recovery at the next start truncates whatever the panic left
        // half-written.
        self.shared
            .fail(Failure::Panic(panic_message(payload.as_ref())));
        for append in appends {
            self.shared.dequeued(&append);
            let _ = append.reply.send(Err(SpoolError::Poisoned));
        }
    }

    /// The group-commit loop: takes what is queued, commits it, answers it.
    fn run_groups(&mut self, appends: &mpsc::Receiver<Append>) {
        let mut group = Unanswered {
            shared: Arc::clone(&self.shared),
            appends: Vec::with_capacity(self.max_group),
        };
        while let Ok(first) = appends.recv() {
            group.appends.push(first);
            self.gather(appends, &mut group.appends);
            #[cfg(test)]
            self.shared.faults.before_commit();
            let result = self.commit(&group.appends);
            match result {
                Ok(outcomes) => {
                    for (append, outcome) in group.appends.drain(..).zip(outcomes) {
                        self.shared.dequeued(&append);
                        // A waiter that gave up (client gone) no longer needs its answer.
                        let _ = append.reply.send(outcome);
                    }
                }
                Err(err) => {
                    let requests = group.appends.len();
                    group.refuse();
                    self.shared.fail(Failure::Io {
                        error: err.to_string(),
                        requests,
                    });
                }
            }
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

    /// Writes a group with one write and one fdatasync (rotating first if the active
    /// segment is full, so a new segment is never empty).
    fn commit(
        &mut self,
        group: &[Append],
    ) -> Result<Vec<Result<AppendOutcome, SpoolError>>, SpoolError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(SpoolError::Poisoned);
        }
        // A full segment is sealed; so is one that was appended to, as soon as a spare
        // can take over (after a start-up, or when no spare was ready at the last rotation).
        let spare_waits = !self.active_preallocated
            && self.active_len > 0
            && self.shared.spare.as_ref().is_some_and(|s| s.is_ready());
        if self.active_len >= self.segment_bytes || spare_waits {
            self.rotate()?;
        }
        let now = now_millis();
        self.buffer.clear();
        self.keys_buffer.clear();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut accepted_keys: Vec<Key> = Vec::new();
        let mut new_index = Vec::new();
        let mut seq = self.next_seq;
        let dedup = self.recent.enabled();
        for append in group {
            let repeated = dedup
                && append.key != [0; 16]
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
                if self.keys_file.is_some() {
                    segment::encode_key(&mut self.keys_buffer, &append.key, now);
                }
                seq += 1;
            }
            if dedup {
                accepted_keys.push(append.key);
            }
            outcomes.push(Ok(AppendOutcome {
                stored: append.events.len(),
                duplicates: 0,
            }));
        }
        if !self.buffer.is_empty() {
            // The keys first: a `.keys` file is only trusted once its segment is sealed.
            if let Some(keys) = &mut self.keys_file {
                keys.write_all(&self.keys_buffer)
                    .map_err(io("cannot write the active segment's keys"))?;
            }
            self.active
                .write_all_at(&self.buffer, self.active_len)
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
        Ok(outcomes)
    }

    /// Cuts the active segment after its last record when it was written over a spare (an
    /// appended one already ends there). A sealed segment ends at its last record: start-up
    /// and readers of sealed segments take its length as it is (see `recover_tail`).
    fn cut_after_last_record(&self) -> std::io::Result<()> {
        if self.active_preallocated {
            self.active.set_len(self.active_len)
        } else {
            Ok(())
        }
    }

    /// Seals the full active segment (fsync'd whole, with its `.keys`) and starts the next.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.cut_after_last_record()
            .map_err(io("cannot cut the full segment after its last record"))?;
        self.active
            .sync_all()
            .map_err(io("cannot sync the full segment"))?;
        if let Some(keys) = &self.keys_file {
            keys.sync_all()
                .map_err(io("cannot sync the full segment's keys"))?;
        }
        let (file, info, preallocated) =
            create_segment(&self.shared.dir, self.next_seq, self.shared.spare.as_ref())?;
        if self.keys_file.is_some() {
            let keys = segment::keys_path(&info.path);
            self.keys_file = Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&keys)
                    .map_err(io(format!("cannot create {}", keys.display())))?,
            );
        }
        self.active = file;
        self.active_len = 0;
        self.active_preallocated = preallocated;
        if let Ok(mut segments) = self.shared.segments.write() {
            segments.push(info);
        }
        Ok(())
    }
}

/// The group being committed. Should the writer panic while it holds one, its drop (during
/// the unwinding) poisons the log first and then answers every request of the group with
/// [`SpoolError::Poisoned`], so a request refused this way finds the receiver unready.
struct Unanswered {
    shared: Arc<Shared>,
    appends: Vec<Append>,
}

impl Unanswered {
    /// Answers every request of the group: the log is poisoned.
    fn refuse(&mut self) {
        self.shared.poisoned.store(true, Ordering::SeqCst);
        for append in self.appends.drain(..) {
            self.shared.dequeued(&append);
            let _ = append.reply.send(Err(SpoolError::Poisoned));
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        // Empty when the writer stops cleanly: every group was answered.
        if !self.appends.is_empty() {
            self.refuse();
        }
    }
}
