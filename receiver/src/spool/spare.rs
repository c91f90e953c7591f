//! The spare segment: a file whose blocks are already allocated and durable, waiting to
//! become the next segment.
//!
//! Why: an `fdatasync` after an append must also commit the file system's journal (new
//! blocks, a new size); after overwriting blocks that were written and synced before, it
//! only flushes the data. On the machines we measured that halves a group commit's
//! `fdatasync` (0.27 ms → 0.13 ms), and every 200 waits for one (docs/benchmarks.md).
//!
//! A spare comes from one of two places:
//! - **recycled:** a segment that every consumer has passed is renamed to the spare
//!   instead of being deleted (compaction, [`Spare::offer`]). Its old frames stay in it
//!   until overwritten; they can never be read as new ones, because every frame carries its
//!   seq and a reader only accepts the seq it expects next, and all of them are older;
//! - **zero-filled:** a background thread writes `segment_bytes` of zeros and syncs them
//!   ([`Spare::prepare`]), for when nothing was recycled in time (a fresh spool, or
//!   consumers that lag).
//!
//! On disk the spare is `segments/spare` (complete and durable) or, while being filled,
//! `segments/spare.partial` (deleted at the next open). Neither ends in `.log`, so neither
//! is ever listed as a segment.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A complete spare.
const READY: &str = "spare";
/// A spare being zero-filled.
const FILLING: &str = "spare.partial";
/// Zeros written per `write` while filling.
const FILL_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No spare, none being made.
    Absent,
    /// A thread is zero-filling one.
    Filling,
    /// `segments/spare` is complete.
    Ready,
    /// Zero-filling failed: segments are created empty, as without preallocation, until a
    /// segment is recycled (the next fill is tried after that spare is taken).
    FillFailed,
}

/// At most one spare segment of one log; shared by its writer (which takes it) and its
/// compaction (which offers segments to it).
#[derive(Debug)]
pub struct Spare {
    dir: PathBuf,
    size: u64,
    state: Mutex<State>,
    closed: Arc<AtomicBool>,
}

impl Spare {
    /// The spare of the segments in `dir`, `size` bytes when zero-filled. A partial spare
    /// left by an earlier run is deleted; a complete one is kept only while the log has
    /// segments (`has_segments`): then all its records are older than any to come. A log
    /// started afresh numbers from 1 again, so an old spare could hold the very seqs it
    /// is about to write.
    pub fn open(dir: &Path, size: u64, has_segments: bool) -> std::io::Result<Arc<Spare>> {
        let mut leftovers = vec![dir.join(FILLING)];
        if !has_segments {
            leftovers.push(dir.join(READY));
        }
        for leftover in leftovers {
            match std::fs::remove_file(leftover) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        let state = if dir.join(READY).is_file() {
            State::Ready
        } else {
            State::Absent
        };
        Ok(Arc::new(Spare {
            dir: dir.to_owned(),
            size,
            state: Mutex::new(state),
            closed: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Whether a spare is waiting to be taken.
    pub fn is_ready(&self) -> bool {
        self.state() == State::Ready
    }

    fn state(&self) -> State {
        self.state.lock().map_or(State::FillFailed, |state| *state)
    }

    /// Renames the spare to `path`, a new segment, and opens it for writing in place.
    /// `None` when no spare is ready. The caller makes the rename durable (syncs the
    /// directory) before writing to it.
    pub fn take(&self, path: &Path) -> std::io::Result<Option<File>> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(None);
        };
        if *state != State::Ready {
            return Ok(None);
        }
        *state = State::Absent;
        std::fs::rename(self.dir.join(READY), path)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Some(file))
    }

    /// Offers a segment that every consumer has passed (sealed, so fsync'd whole) as the
    /// next spare. `true`: it was renamed to the spare and must not be deleted; `false`: a
    /// spare exists or is being made, and the caller deletes the segment as before.
    pub fn offer(&self, segment: &Path) -> std::io::Result<bool> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(false);
        };
        if !matches!(*state, State::Absent | State::FillFailed)
            || self.closed.load(Ordering::SeqCst)
        {
            return Ok(false);
        }
        std::fs::rename(segment, self.dir.join(READY))?;
        *state = State::Ready;
        Ok(true)
    }

    /// Starts zero-filling a spare in the background unless one is ready or being made.
    pub fn prepare(self: &Arc<Self>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if *state != State::Absent || self.closed.load(Ordering::SeqCst) {
            return;
        }
        *state = State::Filling;
        drop(state);
        let spare = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("spool-spare".into())
            .spawn(move || spare.fill());
        if let Err(err) = spawned {
            self.fill_failed(&err);
        }
    }

    /// Stops a fill in progress (at its next chunk); no new one starts.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn fill(&self) {
        crate::priority::lower_this_thread();
        match self.write_zeros() {
            Ok(true) => {
                if let Ok(mut state) = self.state.lock() {
                    *state = State::Ready;
                }
            }
            Ok(false) => {
                // Closed meanwhile: the partial file goes at the next open.
                if let Ok(mut state) = self.state.lock() {
                    *state = State::Absent;
                }
            }
            Err(err) => {
                let _ = std::fs::remove_file(self.dir.join(FILLING));
                self.fill_failed(&err);
            }
        }
    }

    fn fill_failed(&self, err: &std::io::Error) {
        tracing::warn!(dir = %self.dir.display(), error = %err, "cannot preallocate the next spool segment; new segments are appended to instead (slower fsyncs)");
        if let Ok(mut state) = self.state.lock() {
            *state = State::FillFailed;
        }
    }

    /// Writes `size` zeros to `spare.partial`, syncs it, and renames it to `spare`.
    /// `false` if closed before the end.
    fn write_zeros(&self) -> std::io::Result<bool> {
        let partial = self.dir.join(FILLING);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&partial)?;
        let zeros = vec![0u8; FILL_CHUNK];
        let mut left = self.size;
        while left > 0 {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let n = usize::try_from(left).map_or(FILL_CHUNK, |left| left.min(FILL_CHUNK));
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        std::fs::rename(&partial, self.dir.join(READY))?;
        super::segment::sync_dir(&self.dir)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_ready(spare: &Spare) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !spare.is_ready() {
            assert!(Instant::now() < deadline, "the spare was not filled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_zero_filled_spare_becomes_the_named_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spare = Spare::open(dir.path(), 3 * FILL_CHUNK as u64 + 5, true).expect("open");
        assert!(!spare.is_ready());
        spare.prepare();
        wait_ready(&spare);
        let path = dir.path().join("00000000000000000001.log");
        let file = spare.take(&path).expect("take").expect("a spare");
        assert_eq!(
            file.metadata().expect("meta").len(),
            3 * FILL_CHUNK as u64 + 5
        );
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.iter().all(|b| *b == 0), "zeros only");
        assert!(!dir.path().join(READY).exists(), "the spare was renamed");
        assert!(spare.take(&path).expect("take").is_none(), "taken once");
    }

    #[test]
    fn a_passed_segment_is_recycled_unless_a_spare_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spare = Spare::open(dir.path(), 4096, true).expect("open");
        let old = dir.path().join("00000000000000000001.log");
        std::fs::write(&old, b"old frames").expect("write");
        assert!(spare.offer(&old).expect("offer"), "recycled");
        assert!(!old.exists());
        let other = dir.path().join("00000000000000000002.log");
        std::fs::write(&other, b"more").expect("write");
        assert!(!spare.offer(&other).expect("offer"), "one spare at a time");
        assert!(other.exists(), "left for the caller to delete");
        let next = dir.path().join("00000000000000000009.log");
        spare.take(&next).expect("take").expect("the recycled one");
        assert_eq!(std::fs::read(&next).expect("read"), b"old frames");
    }

    #[test]
    fn a_complete_spare_survives_a_restart_and_a_partial_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILLING), [0u8; 10]).expect("partial");
        let spare = Spare::open(dir.path(), 4096, true).expect("open");
        assert!(!spare.is_ready());
        assert!(
            !dir.path().join(FILLING).exists(),
            "a partial spare is deleted"
        );
        spare.prepare();
        wait_ready(&spare);
        drop(spare);
        let reopened = Spare::open(dir.path(), 4096, true).expect("reopen");
        assert!(reopened.is_ready(), "a complete spare is kept");
        drop(reopened);
        let afresh = Spare::open(dir.path(), 4096, false).expect("reopen afresh");
        assert!(
            !afresh.is_ready() && !dir.path().join(READY).exists(),
            "a log without segments starts without the old spare"
        );
    }

    #[test]
    fn a_closed_spare_neither_fills_nor_recycles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spare = Spare::open(dir.path(), 4096, true).expect("open");
        spare.close();
        spare.prepare();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!spare.is_ready());
        let old = dir.path().join("00000000000000000001.log");
        std::fs::write(&old, b"x").expect("write");
        assert!(!spare.offer(&old).expect("offer"));
    }
}
