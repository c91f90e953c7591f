//! A model-based test of the spool (in the way of vector's disk-buffer model tests):
//! random appends, acknowledgements (cursor moves, which compact and recycle segments),
//! reads, crashes at random points (the writer gone without its clean stop, sometimes
//! with a torn write at the end of the newest segment) and recoveries, checked after every
//! step against a model that is a plain list of the acknowledged events and one cursor
//! per sink:
//!
//! - every acknowledged append is read back exactly once, in order, with its bytes;
//! - a torn (unacknowledged) write is never read back;
//! - a cursor never goes backwards, across restarts too;
//! - nothing at or below a sink's cursor is delivered to it again, and a segment every
//!   sink has passed is gone (deleted or recycled as the spare).
//!
//! `PROPTEST_CASES` sets the number of cases (default 48: a few seconds in a debug build).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const SINKS: [&str; 2] = ["a", "b"];

/// One step of a case.
#[derive(Debug, Clone)]
enum Op {
    /// Appends `events` events of about `size` bytes each, acknowledged when it returns.
    Append { events: usize, size: usize },
    /// Moves a sink's cursor `fraction` (per 256) of the way to the head.
    Ack { sink: usize, fraction: u8 },
    /// Reads what a sink has not delivered, at most `max` events.
    Read { sink: usize, max: usize },
    /// The process dies; with `torn`, mid-way through writing a record (this many bytes of
    /// it, per 256, reached the file). Then the spool is opened again.
    Crash { torn: Option<u8> },
    /// A clean stop and start.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 1usize..700).prop_map(|(events, size)| Op::Append { events, size }),
        3 => (0usize..2, any::<u8>()).prop_map(|(sink, fraction)| Op::Ack { sink, fraction }),
        2 => (0usize..2, 1usize..50).prop_map(|(sink, max)| Op::Read { sink, max }),
        1 => proptest::option::of(1u8..255).prop_map(|torn| Op::Crash { torn }),
        1 => Just(Op::Restart),
    ]
}

/// What the spool must hold.
#[derive(Debug, Default)]
struct Model {
    /// Every acknowledged event by seq (the head is the last key).
    events: BTreeMap<u64, Vec<u8>>,
    cursors: [u64; 2],
}

impl Model {
    fn head(&self) -> u64 {
        self.events.keys().next_back().copied().unwrap_or(0)
    }
}

fn config(dir: &Path, preallocate: bool) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        dedup_window: Duration::from_secs(600),
        dedup_max_entries: 100_000,
        max_bytes: 0,
        group_commit_wait: Duration::ZERO,
        preallocate_segments: preallocate,
        lock_wait: None,
        retention: None,
        segment_bytes: 2048,
        max_group_requests: 8,
    }
}

fn open(config: &SpoolConfig) -> Spool {
    let sinks: Vec<String> = SINKS.iter().map(|s| (*s).to_owned()).collect();
    Spool::open(config, &sinks).expect("open")
}

/// An event whose bytes say which one it is.
fn event(n: u64, size: usize) -> Vec<u8> {
    let mut json = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
    json.resize(json.len() + size, b'x');
    json.extend_from_slice(b"\"}");
    json
}

/// Everything the spool and the model must agree on; `compacted`: right after a cursor
/// moved (compaction runs then).
fn check(spool: &Spool, model: &Model, compacted: bool) {
    assert_eq!(*spool.subscribe().borrow(), model.head(), "head");
    for (i, sink) in SINKS.iter().enumerate() {
        let cursor = spool.cursor(sink).expect("cursor").seq;
        assert_eq!(cursor, model.cursors[i], "cursor of {sink}");
        let read = spool.read_after(cursor, usize::MAX).expect("read");
        let expected: Vec<(u64, &Vec<u8>)> = model
            .events
            .range(cursor + 1..)
            .map(|(s, e)| (*s, e))
            .collect();
        let got: Vec<(u64, &Vec<u8>)> = read.iter().map(|r| (r.seq, &r.json)).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "events after {sink}'s cursor {cursor}"
        );
        assert!(
            got == expected,
            "{sink} reads back exactly what was acknowledged after {cursor}"
        );
    }
    if !compacted {
        return;
    }
    // Compaction: a segment whose events every sink passed is gone.
    let low = model.cursors.iter().copied().min().unwrap_or(0);
    let segments = spool.shared.segments.read().expect("segments");
    if let Some(second) = segments.get(1) {
        assert!(
            second.first_seq > low + 1,
            "segment {} was passed by every sink (low {low}) and is still there",
            segments[0].first_seq
        );
    }
}

/// Stops the writer without its clean stop: what a killed process leaves (written pages
/// stay in the page cache, a recycled segment's old bytes after the last record).
fn crash(spool: Spool, torn: Option<u8>, next_seq: u64) {
    let (path, end) = {
        let segments = spool.shared.segments.read().expect("segments");
        let last = segments.last().expect("a segment");
        (last.path.clone(), last.bytes)
    };
    spool.shared.faults.crash();
    spool.close();
    drop(spool);
    if let Some(torn) = torn {
        // A write in progress: only its first bytes reached the file.
        let mut frame = Vec::new();
        segment::encode(
            &mut frame,
            next_seq,
            now_millis(),
            &[0xEE; 16],
            &event(next_seq, 300),
        );
        let cut = (frame.len() * usize::from(torn) / 256).clamp(1, frame.len() - 1);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the newest segment");
        file.write_all_at(&frame[..cut], end).expect("torn write");
    }
}

fn run(ops: &[Op], preallocate: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), preallocate);
    let mut spool = open(&config);
    let mut model = Model::default();
    let mut key = 0u64;
    for op in ops {
        match op {
            Op::Append { events, size } => {
                key += 1;
                let mut k: Key = [0; 16];
                k[..8].copy_from_slice(&key.to_le_bytes());
                let first = model.head() + 1;
                let batch: Vec<Vec<u8>> = (0..*events as u64)
                    .map(|i| event(first + i, *size))
                    .collect();
                spool
                    .append_blocking(vec![(k, batch.clone())])
                    .expect("append");
                for (i, json) in batch.into_iter().enumerate() {
                    model.events.insert(first + i as u64, json);
                }
            }
            Op::Ack { sink, fraction } => {
                let from = model.cursors[*sink];
                let to = from + (model.head() - from) * u64::from(*fraction) / 255;
                if to > from {
                    spool
                        .commit_cursor(SINKS[*sink], Cursor::at(to, 0))
                        .expect("commit");
                    model.cursors[*sink] = to;
                }
            }
            Op::Read { sink, max } => {
                let cursor = model.cursors[*sink];
                let read = spool.read_after(cursor, *max).expect("read");
                let expected: Vec<u64> = model
                    .events
                    .range(cursor + 1..)
                    .map(|(s, _)| *s)
                    .take(*max)
                    .collect();
                assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
            }
            Op::Crash { torn } => {
                let next = model.head() + 1;
                crash(spool, *torn, next);
                spool = open(&config);
            }
            Op::Restart => {
                spool.close();
                drop(spool);
                spool = open(&config);
            }
        }
        check(&spool, &model, matches!(op, Op::Ack { .. }));
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_spool_keeps_what_it_acknowledged_through_crashes_and_compaction(
        ops in proptest::collection::vec(op(), 1..60),
        preallocate in any::<bool>(),
    ) {
        run(&ops, preallocate);
    }
}
