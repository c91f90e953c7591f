//! Where log lines go: one shared buffer that a background thread writes out.
//!
//! One line per request at tens of thousands of requests a second must not cost a write
//! system call each on the request path, nor an allocation, a channel send and a thread
//! wake-up each (tracing-appender's non-blocking writer did: its thread alone took 3.4% of
//! the server core, docs/benchmarks.md). A line is copied into the buffer under a short
//! lock; the thread takes the whole buffer every [`FLUSH_EVERY`], or sooner once it holds
//! [`FLUSH_AT`] bytes, and writes it with one call.
//!
//! A writer never waits for the output: the threads that log are the runtime's workers, and a
//! stuck standard error (a full pipe nobody reads) must degrade logging, never serving. While
//! the buffer holds [`LIMIT`] bytes a line is dropped and counted
//! (`metahook_log_lines_dropped_total`, [`dropped_lines`]); once the output moves again the
//! thread writes a line saying how many were lost. Lines buffered and not yet written are lost
//! only with the process (kill -9); [`LogGuard`]'s drop writes the rest.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Buffered bytes that wake the thread before [`FLUSH_EVERY`].
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes at which lines are dropped (and counted) instead of buffered.
pub const LIMIT: usize = 4 * 1024 * 1024;

/// Lines dropped by every log writer of the process since it started.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the output was stuck with the buffer full, since the process
/// started (`metahook_log_lines_dropped_total`).
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

struct State {
    lines: Vec<u8>,
    /// Lines dropped since the thread last reported a loss.
    dropped: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits on it for lines; writers wake it at [`FLUSH_AT`] and at close.
    filled: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines (each is one extend).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The [`MakeWriter`] log lines are written through.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the thread once everything buffered is written (keep it until the process ends).
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer of lines to `out` through a buffer, and the guard that flushes it at the end.
pub fn buffered<W: Write + Send + 'static>(out: W) -> io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lines: Vec::with_capacity(FLUSH_AT * 2),
            dropped: 0,
            closed: false,
        }),
        filled: Condvar::new(),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_out(&shared, out))?
    };
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The thread: takes the buffer whole and writes it, until closed and empty.
fn write_out<W: Write>(shared: &Shared, mut out: W) {
    let mut taken = Vec::with_capacity(FLUSH_AT * 2);
    loop {
        let (closed, dropped) = {
            let mut state = shared.lock();
            if state.lines.len() < FLUSH_AT && !state.closed {
                state = shared
                    .filled
                    .wait_timeout(state, FLUSH_EVERY)
                    .map(|(state, _)| state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
            std::mem::swap(&mut state.lines, &mut taken);
            (state.closed, std::mem::take(&mut state.dropped))
        };
        if dropped > 0 {
            // After the lines that were buffered before the loss, in the log's own shape
            // closely enough for a reader: the loss is visible where the gap is.
            let _ = writeln!(
                taken,
                r#"{{"level":"WARN","target":"metahook::log","message":"{dropped} log lines dropped: the log output did not keep up (metahook_log_lines_dropped_total)"}}"#
            );
        }
        if !taken.is_empty() {
            // Nowhere to report a failed write of the log itself; the lines are dropped.
            let _ = out.write_all(&taken).and_then(|()| out.flush());
            taken.clear();
        }
        if closed && shared.lock().lines.is_empty() {
            return;
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        if state.lines.len() >= LIMIT && !state.closed {
            // The output is stuck: drop the line rather than wait on a runtime worker.
            state.dropped += 1;
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        state.lines.extend_from_slice(line);
        if state.lines.len() >= FLUSH_AT {
            self.shared.filled.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.filled.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An output that records what reached it, and when it may proceed.
    #[derive(Clone, Default)]
    struct Recorded {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().expect("gate");
            *self.writes.lock().expect("writes") += 1;
            self.bytes.lock().expect("bytes").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorded {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().expect("bytes").clone()).expect("UTF-8")
        }
    }

    #[test]
    fn every_line_of_every_thread_is_written_whole_and_in_order_by_the_guards_drop() {
        let out = Recorded::default();
        let (writer, guard) = buffered(out.clone()).expect("log thread");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let mut line = writer.make_writer();
                        line.write_all(format!("{{\"thread\":{t},\"line\":{i}}}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer thread");
        }
        drop(guard);
        let text = out.text();
        let mut next = [0u64; 4];
        for line in text.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            let thread = parsed["thread"].as_u64().expect("thread") as usize;
            assert_eq!(parsed["line"].as_u64(), Some(next[thread]), "{line}");
            next[thread] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        // Batched: far fewer writes than lines.
        assert!(*out.writes.lock().expect("writes") < 2_000);
    }

    #[test]
    fn a_line_reaches_the_output_without_waiting_for_more() {
        let out = Recorded::default();
        let (writer, _guard) = buffered(out.clone()).expect("log thread");
        writer.make_writer().write_all(b"alone\n").expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.text(), "alone\n");
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_and_never_blocks_a_writer() {
        let out = Recorded::default();
        let stuck = out.gate.lock().expect("gate");
        let (writer, guard) = buffered(out.clone()).expect("log thread");
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let lines = 3 * LIMIT / line.len();
        let dropped_before = dropped_lines();
        // Every write returns while the output is stuck: this thread would hang otherwise.
        for _ in 0..lines {
            writer.make_writer().write_all(&line).expect("write");
        }
        // Checked while the output is stuck, on a path that releases it before the guard
        // joins the thread even when a check fails (a failure would hang otherwise).
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The thread holds at most one taken buffer (it is stuck writing it); the shared
            // one stops at the limit, and the rest are dropped and counted.
            let buffered_now = writer.shared.lock().lines.len();
            assert!(buffered_now <= LIMIT + line.len(), "{buffered_now}");
            // Counted in the process-wide counter: the thread may already have taken the
            // buffer's own count with the buffer it is stuck on.
            let dropped = dropped_lines() - dropped_before;
            assert!(
                dropped >= (lines - 2 * (LIMIT / line.len() + 1)) as u64,
                "{dropped} of {lines} dropped"
            );
            dropped
        }));
        drop(stuck);
        drop(guard);
        let dropped = checked.unwrap_or_else(|failed| std::panic::resume_unwind(failed));
        let text = out.text();
        let written = text.lines().filter(|l| l.starts_with('x')).count();
        assert_eq!(
            written as u64 + dropped,
            lines as u64,
            "every line written or counted"
        );
        // The loss is reported in the log, in one line or two (the count the thread took
        // before it was stuck, and the rest).
        let reported: u64 = text
            .lines()
            .filter_map(|l| l.split_once(" log lines dropped"))
            .filter_map(|(head, _)| head.rsplit('"').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(reported, dropped, "{text:.2000}");
    }
}
