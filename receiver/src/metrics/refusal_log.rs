//! Refused requests are counted always but logged at a bounded rate.
//!
//! Anyone can send requests the receiver refuses (no or a bad signature, a refused client
//! certificate, over a limit, too slow), as fast as the network allows. One log line each
//! would let such a client fill the logging pipeline or a disk (470,000 bad signatures in
//! 15 s wrote 171 MB). So, per window of [`WINDOW`]: the first [`BURST`] refusals are logged
//! one by one, as before; the rest only counted, and when the window ends one summary line
//! says how many were not logged, by outcome, with a sample peer. At most `BURST + 1` lines
//! per window, whatever the rate; the metrics count every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Refusals logged one by one per window.
pub const BURST: u32 = 10;

/// The rate limiter of refusal log lines.
#[derive(Debug)]
pub struct RefusalLog {
    window: Duration,
    burst: u32,
    current: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: BTreeMap<&'static str, u64>,
    sample_peer: Option<SocketAddr>,
}

impl Window {
    fn new(started: Instant) -> Window {
        Window {
            started,
            logged: 0,
            suppressed: BTreeMap::new(),
            sample_peer: None,
        }
    }
}

/// Refusals of one window that were counted but not logged one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many.
    pub suppressed: u64,
    /// How many of each outcome (`signature_rejected=4990 overloaded=3`), by name.
    pub by_outcome: String,
    /// The peer of the first of them, when known.
    pub sample_peer: Option<SocketAddr>,
    /// How long the window lasted.
    pub window: Duration,
}

impl RefusalLog {
    /// [`WINDOW`] and [`BURST`].
    pub fn new() -> RefusalLog {
        RefusalLog::with(WINDOW, BURST, Instant::now())
    }

    /// A limiter of `burst` lines per `window`, its first window starting at `start`.
    pub fn with(window: Duration, burst: u32, start: Instant) -> RefusalLog {
        RefusalLog {
            window,
            burst,
            current: Mutex::new(Window::new(start)),
        }
    }

    /// A refusal with `outcome` from `peer` at `now`: whether to log it one by one, and the
    /// summary of the window that just ended, if one did with refusals not logged.
    pub fn admit(
        &self,
        now: Instant,
        outcome: &'static str,
        peer: Option<SocketAddr>,
    ) -> (bool, Option<Summary>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let ended = self.end_if_over(&mut current, now);
        if current.logged < self.burst {
            current.logged += 1;
            return (true, ended);
        }
        *current.suppressed.entry(outcome).or_insert(0) += 1;
        if current.sample_peer.is_none() {
            current.sample_peer = peer;
        }
        (false, ended)
    }

    /// The summary of the window, if it is over at `now` and had refusals not logged (called
    /// periodically, so the last window of a flood is summarized too).
    pub fn flush(&self, now: Instant) -> Option<Summary> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        self.end_if_over(&mut current, now)
    }

    /// Ends the window now, over or not (at shutdown): its summary, if it has one.
    pub fn finish(&self, now: Instant) -> Option<Summary> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        end(&mut current, now)
    }

    fn end_if_over(&self, current: &mut Window, now: Instant) -> Option<Summary> {
        if now.saturating_duration_since(current.started) < self.window {
            return None;
        }
        end(current, now)
    }
}

/// Starts a new window at `now`; the summary of the one it replaces, if it suppressed any.
fn end(current: &mut Window, now: Instant) -> Option<Summary> {
    let lasted = now.saturating_duration_since(current.started);
    let ended = std::mem::replace(current, Window::new(now));
    if ended.suppressed.is_empty() {
        return None;
    }
    let by_outcome = ended
        .suppressed
        .iter()
        .map(|(outcome, n)| format!("{outcome}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    Some(Summary {
        suppressed: ended.suppressed.values().sum(),
        by_outcome,
        sample_peer: ended.sample_peer,
        window: lasted,
    })
}

impl Default for RefusalLog {
    fn default() -> RefusalLog {
        RefusalLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn a_burst_is_logged_then_the_rest_is_summarized_once_per_window() {
        let start = Instant::now();
        let log = RefusalLog::with(Duration::from_secs(10), 3, start);
        let mut logged = 0;
        for i in 0..1000u16 {
            let outcome = if i % 2 == 0 {
                "signature_rejected"
            } else {
                "peer_limit"
            };
            let (log_it, summary) = log.admit(start, outcome, peer(i));
            logged += u32::from(log_it);
            assert_eq!(summary, None, "the window has not ended");
        }
        assert_eq!(logged, 3);
        assert_eq!(log.flush(start + Duration::from_secs(9)), None);
        let summary = log
            .flush(start + Duration::from_secs(10))
            .expect("a summary at the window's end");
        assert_eq!(
            summary,
            Summary {
                suppressed: 997,
                by_outcome: "peer_limit=499 signature_rejected=498".into(),
                sample_peer: peer(3),
                window: Duration::from_secs(10),
            }
        );
        assert_eq!(log.flush(start + Duration::from_secs(30)), None, "once");
    }

    #[test]
    fn the_next_window_logs_its_own_burst_and_reports_the_last_one() {
        let start = Instant::now();
        let log = RefusalLog::with(Duration::from_secs(1), 1, start);
        assert_eq!(log.admit(start, "timeout", None), (true, None));
        assert!(!log.admit(start, "timeout", None).0);
        let later = start + Duration::from_secs(2);
        let (log_it, summary) = log.admit(later, "timeout", None);
        assert!(log_it, "a new window logs again");
        assert_eq!(summary.map(|s| s.suppressed), Some(1));
    }

    #[test]
    fn a_quiet_window_has_no_summary() {
        let start = Instant::now();
        let log = RefusalLog::with(Duration::from_secs(1), 5, start);
        assert!(log.admit(start, "not_found", None).0);
        assert_eq!(log.flush(start + Duration::from_secs(5)), None);
    }

    #[test]
    fn finishing_summarizes_a_window_not_yet_over() {
        let start = Instant::now();
        let log = RefusalLog::with(Duration::from_secs(60), 0, start);
        assert!(!log.admit(start, "not_found", None).0);
        let summary = log.finish(start + Duration::from_secs(1));
        assert_eq!(summary.map(|s| s.by_outcome), Some("not_found=1".into()));
    }
}
