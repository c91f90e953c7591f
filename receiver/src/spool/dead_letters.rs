//! Dead letters: events a sink gave up on, kept beside the spool until an operator retries
//! or purges them (`metahook-receiver dlq ...`).
//!
//! `dead-letters/<sink>.jsonl` holds one JSON object per event. `dlq retry` moves entries to
//! `<sink>.retry.jsonl`; the running receiver renames that to `<sink>.retrying.jsonl`,
//! delivers it and only then deletes it, so a crash in between retries again rather than
//! losing anything. Every change happens under an exclusive lock on `<sink>.lock`, which the
//! command line and the receiver share.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One dead-lettered event.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its spool sequence number.
    pub seq: u64,
    /// Why the sink gave up (the last error).
    pub reason: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339).
    pub dead_at: String,
    /// The event.
    pub event: Box<RawValue>,
}

/// The dead letters of every sink of a spool.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
}

impl DeadLetters {
    /// The dead letters kept in `spool_dir/dead-letters`.
    pub fn new(spool_dir: &Path) -> DeadLetters {
        DeadLetters {
            dir: spool_dir.join("dead-letters"),
        }
    }

    /// The directory they are kept in (`spool_dir/dead-letters`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sink: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{sink}{suffix}"))
    }

    /// Holds the sink's lock until dropped.
    fn lock(&self, sink: &str) -> std::io::Result<File> {
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(sink, ".lock"))?;
        file.lock()?;
        Ok(file)
    }

    /// Appends entries durably.
    pub fn append(&self, sink: &str, entries: &[DeadLetter]) -> std::io::Result<()> {
        let _lock = self.lock(sink)?;
        append_lines(&self.path(sink, ".jsonl"), entries)
    }

    /// The dead letters of `sink`, oldest first. Creates nothing: where no dead letter was
    /// ever written (no directory yet) there are none.
    pub fn list(&self, sink: &str) -> std::io::Result<Vec<DeadLetter>> {
        if !self.dir.is_dir() {
            return Ok(Vec::new());
        }
        let _lock = self.lock(sink)?;
        read_lines(&self.path(sink, ".jsonl"))
    }

    /// Deletes the entries with these seqs (all when `None`); returns how many.
    pub fn purge(&self, sink: &str, seqs: Option<&[u64]>) -> std::io::Result<usize> {
        if !self.dir.is_dir() {
            return Ok(0);
        }
        let _lock = self.lock(sink)?;
        let (chosen, kept) = split(read_lines(&self.path(sink, ".jsonl"))?, seqs);
        rewrite(&self.path(sink, ".jsonl"), &kept)?;
        Ok(chosen.len())
    }

    /// Queues the entries with these seqs (all when `None`) for redelivery by the running
    /// receiver; returns how many.
    pub fn request_retry(&self, sink: &str, seqs: Option<&[u64]>) -> std::io::Result<usize> {
        if !self.dir.is_dir() {
            return Ok(0);
        }
        let _lock = self.lock(sink)?;
        let (chosen, kept) = split(read_lines(&self.path(sink, ".jsonl"))?, seqs);
        if chosen.is_empty() {
            return Ok(0);
        }
        append_lines(&self.path(sink, ".retry.jsonl"), &chosen)?;
        rewrite(&self.path(sink, ".jsonl"), &kept)?;
        Ok(chosen.len())
    }

    /// Entries queued for redelivery, if any (see the module docs); call [`Self::retried`]
    /// once they are delivered.
    pub fn take_retries(&self, sink: &str) -> std::io::Result<Vec<DeadLetter>> {
        let retrying = self.path(sink, ".retrying.jsonl");
        let queued = self.path(sink, ".retry.jsonl");
        if !retrying.exists() && !queued.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock(sink)?;
        if !retrying.exists() && queued.exists() {
            std::fs::rename(&queued, &retrying)?;
            File::open(&self.dir)?.sync_all()?;
        }
        read_lines(&retrying)
    }

    /// The entries returned by [`Self::take_retries`] were delivered.
    pub fn retried(&self, sink: &str) -> std::io::Result<()> {
        let _lock = self.lock(sink)?;
        match std::fs::remove_file(self.path(sink, ".retrying.jsonl")) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// The files a sink's dead letters are kept in: given up on, queued for retry, being retried.
const FILES: [&str; 3] = [".retrying.jsonl", ".retry.jsonl", ".jsonl"];

impl DeadLetters {
    /// How many dead letters every sink has, by sink name, counting those queued for retry
    /// and being retried (still undelivered), and sinks no longer configured (their files
    /// are still here). Creates nothing where no dead letter was ever written.
    pub fn counts(&self) -> std::io::Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        if !self.dir.is_dir() {
            return Ok(counts);
        }
        let mut sinks = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(sink) = FILES.iter().find_map(|suffix| name.strip_suffix(suffix)) {
                sinks.insert(sink.to_owned());
            }
        }
        for sink in sinks {
            let _lock = self.lock(&sink)?;
            let mut count = 0;
            for suffix in FILES {
                count += count_lines(&self.path(&sink, suffix))?;
            }
            counts.insert(sink, count);
        }
        Ok(counts)
    }
}

/// The non-blank lines of `path` (0 when it does not exist).
fn count_lines(path: &Path) -> std::io::Result<u64> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut count = 0;
    for line in BufReader::new(file).lines() {
        if !line?.trim().is_empty() {
            count += 1;
        }
    }
    Ok(count)
}

fn split(entries: Vec<DeadLetter>, seqs: Option<&[u64]>) -> (Vec<DeadLetter>, Vec<DeadLetter>) {
    entries
        .into_iter()
        .partition(|e| seqs.is_none_or(|s| s.contains(&e.seq)))
}

fn read_lines(path: &Path) -> std::io::Result<Vec<DeadLetter>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut entries = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

fn append_lines(path: &Path, entries: &[DeadLetter]) -> std::io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut buffer = Vec::new();
    for entry in entries {
        serde_json::to_writer(&mut buffer, entry)?;
        buffer.push(b'\n');
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&buffer)?;
    file.sync_data()
}

fn rewrite(path: &Path, entries: &[DeadLetter]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut buffer = Vec::new();
    for entry in entries {
        serde_json::to_writer(&mut buffer, entry)?;
        buffer.push(b'\n');
    }
    let mut file = File::create(&tmp)?;
    file.write_all(&buffer)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> DeadLetter {
        DeadLetter {
            seq,
            reason: "refused".into(),
            attempts: 3,
            dead_at: "2026-01-01T00:00:00Z".into(),
            event: RawValue::from_string(format!("{{\"id\":\"e{seq}\"}}")).expect("raw"),
        }
    }

    #[test]
    fn reading_an_absent_store_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = DeadLetters::new(&dir.path().join("spool"));
        assert!(dead.list("bus").expect("list").is_empty());
        assert_eq!(dead.purge("bus", None).expect("purge"), 0);
        assert_eq!(dead.request_retry("bus", None).expect("retry"), 0);
        assert!(!dir.path().join("spool").exists(), "created the store");
    }

    #[test]
    fn append_list_purge_retry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = DeadLetters::new(dir.path());
        dead.append("bus", &[entry(1), entry(2), entry(3)])
            .expect("append");
        assert_eq!(dead.list("bus").expect("list").len(), 3);
        assert_eq!(dead.purge("bus", Some(&[2])).expect("purge"), 1);
        assert_eq!(dead.request_retry("bus", None).expect("retry"), 2);
        assert!(dead.list("bus").expect("list").is_empty());
        let retries = dead.take_retries("bus").expect("take");
        assert_eq!(retries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            dead.take_retries("bus").expect("again").len(),
            2,
            "kept until delivered"
        );
        dead.retried("bus").expect("done");
        assert!(dead.take_retries("bus").expect("none").is_empty());
    }

    #[test]
    fn counts_include_retries_and_sinks_no_longer_configured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = DeadLetters::new(dir.path());
        assert!(dead.counts().expect("none yet").is_empty());
        dead.append("bus", &[entry(1), entry(2), entry(3)])
            .expect("append");
        dead.append("old.sink", &[entry(9)]).expect("append");
        assert_eq!(dead.request_retry("bus", Some(&[1])).expect("retry"), 1);
        assert_eq!(dead.take_retries("bus").expect("take").len(), 1);
        assert_eq!(dead.request_retry("bus", Some(&[2])).expect("retry"), 1);
        let counts = dead.counts().expect("counts");
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("bus".to_owned(), 3), ("old.sink".to_owned(), 1)]
        );
    }
}
