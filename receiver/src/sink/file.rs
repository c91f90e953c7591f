//! The `file` sink: JSON lines, one event per line.
//!
//! Exactly once in the file, and never a torn line, across crashes: each batch is written at
//! the file length recorded with the last committed cursor and fsync'd, then the new length
//! is committed with the cursor. On open, anything beyond the recorded length (a batch whose
//! cursor commit did not happen, or a torn write) is truncated and delivered again. A sink
//! that starts elsewhere (its first use, where the file may hold lines of someone else's, or
//! a file rotated under it) appends, and has its starting length committed before its first
//! write, so the same holds from its first batch on.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Delivered, Sink, SinkError};
use crate::spool::Spooled;

/// Appends events to a JSON-lines file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: Option<Arc<File>>,
    len: u64,
}

impl FileSink {
    /// A sink writing to `path` (created on open, with its parent directories).
    pub fn new(path: PathBuf) -> FileSink {
        FileSink {
            path,
            file: None,
            len: 0,
        }
    }

    fn io(&self, what: &str, source: std::io::Error) -> SinkError {
        SinkError::Io {
            context: format!("{what} {}", self.path.display()),
            source,
        }
    }
}

impl Sink for FileSink {
    async fn open(&mut self, committed: Option<u64>) -> Result<Option<u64>, SinkError> {
        let path = self.path.clone();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64)> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let current = file.metadata()?.len();
            let len = match committed {
                Some(state) if current >= state => {
                    if current > state {
                        // Written but never committed: it will be delivered again.
                        file.set_len(state)?;
                        file.sync_all()?;
                    }
                    state
                }
                // First use (whatever the file holds is not ours), or the file was rotated
                // or truncated by someone else: append, on a line of its own.
                _ if current > 0 && !ends_with_newline(&file, current)? => {
                    file.write_all_at(b"\n", current)?;
                    file.sync_data()?;
                    current + 1
                }
                _ => current,
            };
            Ok((file, len))
        })
        .await?;
        let (file, len) = opened.map_err(|e| self.io("cannot open file sink", e))?;
        self.file = Some(Arc::new(file));
        self.len = len;
        // Starting anywhere but the committed length: that start must be committed before
        // the first write, or a crash right after it would append the write again.
        Ok((committed != Some(len)).then_some(len))
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        let Some(file) = self.file.clone() else {
            return Err(self.io("file sink is not open", std::io::Error::other("not open")));
        };
        let mut buffer = Vec::with_capacity(batch.iter().map(|e| e.json.len() + 1).sum());
        for event in batch {
            buffer.extend_from_slice(&event.json);
            buffer.push(b'\n');
        }
        let offset = self.len;
        let written = u64::try_from(buffer.len()).unwrap_or(u64::MAX);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.write_all_at(&buffer, offset)?;
            file.sync_data()
        })
        .await?
        .map_err(|e| self.io("cannot write file sink", e))?;
        self.len = offset + written;
        Ok(Delivered::all(self.len))
    }
}

fn ends_with_newline(file: &File, len: u64) -> std::io::Result<bool> {
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

/// Reads a JSON-lines file back (tests and tools).
pub fn read_lines(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, text: &str) -> Spooled {
        Spooled {
            seq,
            received_millis: 0,
            json: text.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn truncates_uncommitted_tail_on_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out/events.jsonl");
        let mut sink = FileSink::new(path.clone());
        let start = sink.open(None).await.expect("open");
        assert_eq!(start, Some(0), "a first use commits where it starts");
        let committed = sink
            .deliver(&[event(1, "{\"a\":1}")])
            .await
            .expect("deliver");
        sink.deliver(&[event(2, "{\"b\":2}")])
            .await
            .expect("deliver, not committed");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"torn\":"))
            .expect("torn write");

        let mut reopened = FileSink::new(path.clone());
        let start = reopened.open(Some(committed.state)).await.expect("reopen");
        assert_eq!(start, None, "resumes at the committed length");
        reopened
            .deliver(&[event(2, "{\"b\":2}")])
            .await
            .expect("redeliver");
        assert_eq!(read_lines(&path).expect("read"), ["{\"a\":1}", "{\"b\":2}"]);
    }

    #[tokio::test]
    async fn a_first_batch_never_committed_is_truncated_back_to_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"theirs\":1}\n").expect("write");
        let mut sink = FileSink::new(path.clone());
        let start = sink
            .open(None)
            .await
            .expect("open")
            .expect("a start to commit");
        sink.deliver(&[event(1, "{\"a\":1}")])
            .await
            .expect("deliver, then crash before the cursor");

        let mut reopened = FileSink::new(path.clone());
        reopened.open(Some(start)).await.expect("reopen");
        reopened
            .deliver(&[event(1, "{\"a\":1}")])
            .await
            .expect("redeliver");
        assert_eq!(
            read_lines(&path).expect("read"),
            ["{\"theirs\":1}", "{\"a\":1}"]
        );
    }

    #[tokio::test]
    async fn a_file_rotated_away_is_appended_to_and_its_start_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{}\n").expect("write");
        let mut sink = FileSink::new(path.clone());
        let start = sink.open(Some(4096)).await.expect("open");
        assert_eq!(
            start,
            Some(3),
            "shorter than committed: append and commit where"
        );
    }

    #[tokio::test]
    async fn appends_to_a_foreign_file_on_a_new_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "old line without newline").expect("write");
        let mut sink = FileSink::new(path.clone());
        let start = sink.open(None).await.expect("open");
        assert_eq!(
            start,
            Some(25),
            "after the foreign line and its added newline"
        );
        sink.deliver(&[event(1, "{}")]).await.expect("deliver");
        assert_eq!(
            read_lines(&path).expect("read"),
            ["old line without newline", "{}"]
        );
    }
}
