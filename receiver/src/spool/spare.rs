//! The spare segment: a delivered segment kept, instead of deleted, to become the next
//! one.
//!
//! Why: an `fdatasync` after an append must also commit the file system's journal (new
//! blocks, a new size); after overwriting blocks that were written and synced before, it
//! only flushes the data. On the machines we measured that halves a group commit's
//! `fdatasync` (0.27 ms → 0.13 ms), and more when other writers share the file system's
//! journal (docs/benchmarks.md); every 200 waits for one.
//!
//! A segment that every consumer has passed is renamed to `segments/spare` (compaction,
//! [`Spare::offer`]) and, at the next rotation, to the new segment's name
//! ([`Spare::take`]). Its old records stay in it until overwritten; they are never read
//! as new ones, because every frame carries its seq, a reader only accepts the seq it
//! expects next, and all of them are older. The name does not end in `.log`, so the spare
//! is never listed as a segment.
//!
//! Zero-filling spares in the background was tried too, for when nothing is recycled in
//! time; it doubled the bytes written and cost the batch body more than it gained
//! (docs/benchmarks.md), so a fresh spool appends until its first segment is delivered.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The spare's file name in the segment directory.
const NAME: &str = "spare";

/// At most one spare segment of one log; shared by its writer (which takes it) and its
/// compaction (which offers segments to it).
#[derive(Debug)]
pub struct Spare {
    path: PathBuf,
    ready: Mutex<bool>,
    closed: AtomicBool,
}

impl Spare {
    /// The spare of the segments in `dir`. One left by an earlier run is kept only while
    /// the log has segments (`has_segments`): then all its records are older than any to
    /// come. A log started afresh numbers from 1 again, so an old spare could hold the
    /// very seqs it is about to write.
    pub fn open(dir: &Path, has_segments: bool) -> std::io::Result<Spare> {
        let path = dir.join(NAME);
        if !has_segments {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(Spare {
            ready: Mutex::new(path.is_file()),
            path,
            closed: AtomicBool::new(false),
        })
    }

    /// Whether a spare is waiting to be taken.
    pub fn is_ready(&self) -> bool {
        self.ready.lock().is_ok_and(|ready| *ready)
    }

    /// Renames the spare to `path`, a new segment, and opens it for writing in place.
    /// `None` when there is no spare. The caller makes the rename durable (syncs the
    /// directory) before writing to it.
    pub fn take(&self, path: &Path) -> std::io::Result<Option<File>> {
        let Ok(mut ready) = self.ready.lock() else {
            return Ok(None);
        };
        if !*ready {
            return Ok(None);
        }
        *ready = false;
        std::fs::rename(&self.path, path)?;
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Some(file))
    }

    /// Offers a segment that every consumer has passed (sealed, so fsync'd whole) as the
    /// next spare. `true`: it was renamed to the spare and must not be deleted; `false`: a
    /// spare exists (or the log is closing), and the caller deletes the segment.
    pub fn offer(&self, segment: &Path) -> std::io::Result<bool> {
        let Ok(mut ready) = self.ready.lock() else {
            return Ok(false);
        };
        if *ready || self.closed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        std::fs::rename(segment, &self.path)?;
        *ready = true;
        Ok(true)
    }

    /// No segment is recycled from now on (the log is closing).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_segment_becomes_the_next_one_unless_a_spare_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spare = Spare::open(dir.path(), true).expect("open");
        assert!(!spare.is_ready());
        let next = dir.path().join("00000000000000000009.log");
        assert!(
            spare.take(&next).expect("take").is_none(),
            "nothing to take"
        );

        let old = dir.path().join("00000000000000000001.log");
        std::fs::write(&old, b"old frames").expect("write");
        assert!(spare.offer(&old).expect("offer"), "recycled");
        assert!(!old.exists() && spare.is_ready());
        let other = dir.path().join("00000000000000000002.log");
        std::fs::write(&other, b"more").expect("write");
        assert!(!spare.offer(&other).expect("offer"), "one spare at a time");
        assert!(other.exists(), "left for the caller to delete");

        spare.take(&next).expect("take").expect("the recycled one");
        assert_eq!(std::fs::read(&next).expect("read"), b"old frames");
        assert!(!dir.path().join(NAME).exists(), "the spare was renamed");
        assert!(spare.take(&next).expect("take").is_none(), "taken once");
    }

    #[test]
    fn a_spare_survives_a_restart_only_beside_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("00000000000000000001.log");
        std::fs::write(&old, b"x").expect("write");
        assert!(
            Spare::open(dir.path(), true)
                .expect("open")
                .offer(&old)
                .expect("offer")
        );
        assert!(Spare::open(dir.path(), true).expect("reopen").is_ready());
        let afresh = Spare::open(dir.path(), false).expect("reopen afresh");
        assert!(
            !afresh.is_ready() && !dir.path().join(NAME).exists(),
            "a log without segments starts without the old spare"
        );
    }

    #[test]
    fn a_closed_log_recycles_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spare = Spare::open(dir.path(), true).expect("open");
        spare.close();
        let old = dir.path().join("00000000000000000001.log");
        std::fs::write(&old, b"x").expect("write");
        assert!(!spare.offer(&old).expect("offer"));
        assert!(old.exists());
    }
}
