use std::io::Write;
use std::time::Duration;

use super::*;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        dedup_window: Duration::from_secs(60),
        dedup_max_entries: 1000,
        max_bytes: 0,
        group_commit_wait: Duration::from_millis(1),
        preallocate_segments: true,
        lock_wait: None,
        retention: None,
        segment_bytes: 4096,
        max_group_requests: 64,
    }
}

fn events(ids: &[&str]) -> Vec<Vec<u8>> {
    ids.iter()
        .map(|id| format!("{{\"id\":\"{id}\"}}").into_bytes())
        .collect()
}

fn seqs(spooled: &[Spooled]) -> Vec<u64> {
    spooled.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn appends_reads_dedups_and_compacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks = vec!["a".to_owned(), "b".to_owned()];
    let spool = Spool::open(&config(dir.path()), &sinks).expect("open");
    let outcome = spool
        .append([1; 16], events(&["1", "2"]))
        .await
        .expect("append");
    assert_eq!(
        outcome,
        AppendOutcome {
            stored: 2,
            duplicates: 0
        }
    );
    let again = spool
        .append([1; 16], events(&["1", "2"]))
        .await
        .expect("redelivery");
    assert_eq!(
        again,
        AppendOutcome {
            stored: 0,
            duplicates: 2
        }
    );
    spool
        .append([0; 16], events(&["3"]))
        .await
        .expect("append without key");
    assert_eq!(*spool.subscribe().borrow(), 3);

    let all = spool.read_after(0, 10).expect("read");
    assert_eq!(seqs(&all), [1, 2, 3]);
    assert_eq!(all[2].json, b"{\"id\":\"3\"}");
    assert_eq!(seqs(&spool.read_after(1, 1).expect("read")), [2]);
    assert_eq!(spool.stats().events, 3);

    spool
        .commit_cursor("a", Cursor::at(3, 7))
        .expect("cursor a");
    assert_eq!(spool.cursor("a").expect("cursor"), Cursor::at(3, 7));
    assert_eq!(spool.stats().events, 3, "b has delivered nothing");
    spool
        .commit_cursor("b", Cursor::at(2, 0))
        .expect("cursor b");
    assert_eq!(spool.stats().events, 1);

    // Progress not yet committed counts for the gauges, never against a committed cursor.
    spool.set_progress("b", 3, None);
    assert_eq!(spool.stats().events, 0);
    assert_eq!(
        spool.cursor("b").expect("cursor").seq,
        2,
        "nothing committed"
    );
    spool.set_progress("b", 1, Some(42));
    let stats = spool.stats();
    assert_eq!(
        (stats.events, stats.oldest_received_millis),
        (1, Some(42)),
        "the committed cursor is further"
    );
}

/// A spool in `dir` (sink `a`) holding seqs 1..=12, each record 1,509 bytes, across
/// several 4 KB segments.
async fn twelve_large_records(dir: &Path) -> Spool {
    let spool = Spool::open(&config(dir), &["a".to_owned()]).expect("open");
    let big = "x".repeat(1500);
    for i in 0..12u8 {
        spool
            .append([i + 1; 16], events(&[&big]))
            .await
            .expect("append");
    }
    spool
}

#[tokio::test]
async fn segments_rotate_and_are_deleted_once_every_sink_passed_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = twelve_large_records(dir.path()).await;
    let segments_dir = dir.path().join("segments");
    let before = std::fs::read_dir(&segments_dir).expect("dir").count();
    assert!(
        before >= 4,
        "1.5 KB events in 4 KB segments rotate: {before}"
    );
    assert_eq!(
        seqs(&spool.read_after(5, 100).expect("read across segments")),
        (6..=12).collect::<Vec<_>>()
    );
    spool.commit_cursor("a", Cursor::at(10, 0)).expect("cursor");
    let after = std::fs::read_dir(&segments_dir).expect("dir").count();
    assert!(
        after < before,
        "compaction deleted delivered segments ({before} -> {after})"
    );
    assert_eq!(seqs(&spool.read_after(10, 100).expect("read")), [11, 12]);
}

#[tokio::test]
async fn a_read_stops_at_its_byte_budget_and_always_reads_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Records of 1,509 bytes in 4 KB segments: budgets cross segment boundaries.
    let spool = twelve_large_records(dir.path()).await;
    let record = spool.read_after(0, 1).expect("read")[0].json.len();
    assert_eq!(record, 1509);
    // The record that reaches the budget is the last one read.
    let within = |after, max, bytes| seqs(&spool.read_within(after, max, bytes).expect("read"));
    assert_eq!(within(0, 100, 3 * record), [1, 2, 3]);
    assert_eq!(within(0, 100, 3 * record - 1), [1, 2, 3]);
    assert_eq!(within(0, 100, 2 * record + 1), [1, 2, 3]);
    assert_eq!(within(2, 100, 4 * record), [3, 4, 5, 6]);
    assert_eq!(within(2, 2, 4 * record), [3, 4], "the count still bounds");
    assert_eq!(within(7, 100, 1), [8], "one record larger than the budget");
    assert_eq!(within(7, 100, 0), [8], "even with no budget at all");
    assert_eq!(within(10, 100, usize::MAX), [11, 12]);
}

#[tokio::test]
async fn survives_reopen_with_cursors_dedup_and_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks = vec!["a".to_owned()];
    {
        let spool = Spool::open(&config(dir.path()), &sinks).expect("open");
        spool
            .append([7; 16], events(&["x", "y"]))
            .await
            .expect("append");
        spool.commit_cursor("a", Cursor::at(1, 3)).expect("cursor");
        spool.close();
    }
    // A crash in the middle of a write leaves a partial frame at the end.
    let (_, last) = segment::list(&dir.path().join("segments"))
        .expect("list")
        .pop()
        .expect("a segment");
    OpenOptions::new()
        .append(true)
        .open(&last)
        .and_then(|mut f| f.write_all(&[9, 0, 0, 0, 1, 2]))
        .expect("torn write");

    let spool = Spool::open(&config(dir.path()), &sinks).expect("reopen");
    assert_eq!(spool.cursor("a").expect("cursor"), Cursor::at(1, 3));
    assert_eq!(seqs(&spool.read_after(1, 10).expect("read")), [2]);
    let outcome = spool
        .append([7; 16], events(&["x", "y"]))
        .await
        .expect("append");
    assert_eq!(outcome.duplicates, 2, "dedup survives a restart");
    let outcome = spool.append([8; 16], events(&["z"])).await.expect("append");
    assert_eq!(outcome.stored, 1);
    assert_eq!(
        *spool.subscribe().borrow(),
        3,
        "seq continues after the torn tail"
    );
    assert_eq!(seqs(&spool.read_after(0, 10).expect("read")), [1, 2, 3]);
}

#[tokio::test]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(Spool::open(&config(dir.path()), &["a".to_owned()]).expect("open"));
    let tasks: Vec<_> = (0..200u8)
        .map(|i| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move { spool.append([i.wrapping_add(1); 16], events(&["e"])).await })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await.expect("join").expect("append").stored;
    }
    assert_eq!(stored, 200);
    assert_eq!(spool.read_after(0, 1000).expect("read").len(), 200);
}

#[test]
fn a_second_receiver_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Spool::open(&config(dir.path()), &[]).expect("open");
    let second = Spool::open(&config(dir.path()), &[]).expect_err("locked");
    assert!(second.to_string().contains("in use"), "{second}");
}

#[tokio::test]
async fn a_full_spool_refuses_until_sinks_catch_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SpoolConfig {
        max_bytes: 8192,
        ..config(dir.path())
    };
    let spool = Spool::open(&config, &["a".to_owned()]).expect("open");
    let big = "y".repeat(1500);
    let mut stored = 0u64;
    let mut refused = None;
    for i in 0..20u8 {
        match spool.append([i + 1; 16], events(&[&big])).await {
            Ok(outcome) => stored += outcome.stored as u64,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(SpoolError::Full { limit: 8192 })),
        "{refused:?}"
    );
    assert!(stored >= 4, "accepted up to the limit: {stored}");
    assert!(!spool.is_poisoned(), "full is not a failure");
    // The sink delivers everything: whole segments are deleted and appends fit again.
    spool
        .commit_cursor("a", Cursor::at(stored, 0))
        .expect("cursor");
    assert!(spool.stats().bytes < 8192);
    spool
        .append([99; 16], events(&[&big]))
        .await
        .expect("accepted again");
}

/// Appends `count` 1.5 KB records with keys 1..=count into 4 KB segments, then closes.
async fn filled(dir: &Path, count: u8) {
    let spool = Spool::open(&config(dir), &["a".to_owned()]).expect("open");
    let big = "z".repeat(1500);
    for i in 1..=count {
        spool
            .append([i; 16], events(&[&big]))
            .await
            .expect("append");
    }
    spool.close();
}

#[tokio::test]
async fn start_up_reads_only_the_newest_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path(), 30).await;
    let listed = segment::list(&dir.path().join("segments")).expect("list");
    assert!(listed.len() >= 8, "{} segments", listed.len());
    // Damage the middle of an old, sealed segment. A start-up that read every segment
    // would notice and cut it there; one that reads only the newest does not.
    let (old_first, old) = listed[1].clone();
    let mut bytes = std::fs::read(&old).expect("read");
    let length = bytes.len();
    let middle = length / 2;
    bytes[middle..middle + 16].fill(0xee);
    std::fs::write(&old, &bytes).expect("damage");

    let spool = Spool::open(&config(dir.path()), &["a".to_owned()]).expect("reopen");
    assert_eq!(
        std::fs::metadata(&old).expect("meta").len(),
        length as u64,
        "the damaged sealed segment was not read (nor truncated) at start-up"
    );
    assert_eq!(
        *spool.subscribe().borrow(),
        30,
        "the head comes from the tail"
    );
    assert_eq!(spool.recovered_tail().map(|(seq, _)| seq), Some(30));
    // Dedup keys of sealed segments come from their .keys files, not their records.
    let again = spool
        .append(
            [u8::try_from(old_first).expect("small seq"); 16],
            events(&["x"]),
        )
        .await
        .expect("redelivery");
    assert_eq!(
        again.duplicates, 1,
        "a key of the damaged segment is still known"
    );
    // Reading goes past the damage: the records before it, then the next segment's.
    let read = seqs(&spool.read_after(0, 100).expect("read"));
    assert!(read.contains(&1) && read.contains(&30), "{read:?}");
    assert!(
        !read.contains(&(old_first + 1)),
        "the damaged record is skipped: {read:?}"
    );
}

#[tokio::test]
async fn a_missing_keys_file_is_rebuilt_from_its_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path(), 12).await;
    let listed = segment::list(&dir.path().join("segments")).expect("list");
    let (first, oldest) = &listed[0];
    std::fs::remove_file(segment::keys_path(oldest)).expect("remove .keys");
    let spool = Spool::open(&config(dir.path()), &["a".to_owned()]).expect("reopen");
    let again = spool
        .append(
            [u8::try_from(*first).expect("small seq"); 16],
            events(&["x"]),
        )
        .await
        .expect("redelivery");
    assert_eq!(again.duplicates, 1);
}

#[tokio::test]
async fn sealed_segments_are_indexed_as_they_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = SpoolConfig {
        segment_bytes: 1 << 20,
        ..config(dir.path())
    };
    {
        let spool = Spool::open(&small, &["a".to_owned()]).expect("open");
        let batch: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        spool.append([1; 16], batch).await.expect("append");
        spool.close();
    }
    // A new segment after the first; at the next start the first is sealed, not read.
    let next = SpoolConfig {
        segment_bytes: 4096,
        ..small
    };
    {
        let spool = Spool::open(&next, &["a".to_owned()]).expect("reopen");
        spool
            .append([2; 16], events(&["late"]))
            .await
            .expect("append");
        spool.close();
    }
    let spool = Spool::open(&next, &["a".to_owned()]).expect("reopen again");
    assert!(
        spool.shared.segments.read().expect("segments")[0]
            .index
            .is_empty(),
        "a sealed segment is not indexed at start-up"
    );
    let mut after = 0;
    while let Some(last) = spool.read_after(after, 50).expect("read").last() {
        after = last.seq;
    }
    assert_eq!(after, 301);
    let segments = spool.shared.segments.read().expect("segments");
    assert!(
        segments[0].index.len() >= 4,
        "index points remembered: {:?}",
        segments[0].index
    );
}

/// The records of every segment file, read by chaining seqs from its first, and whether
/// the file ends right after them.
fn chained(dir: &Path) -> Vec<(u64, bool)> {
    segment::list(&dir.join("segments"))
        .expect("list")
        .into_iter()
        .map(|(first, path)| {
            let mut count = 0;
            let scan = segment::scan(&path, first, |_| count += 1).expect("scan");
            let len = std::fs::metadata(&path).expect("meta").len();
            (count, scan.valid_len == len)
        })
        .collect()
}

fn padded(i: u64) -> Vec<u8> {
    let pad = "p".repeat(700 + usize::try_from(i % 5).expect("small") * 100);
    format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into_bytes()
}

/// Appends records `seqs` one request each, the sink following 6 records behind, so
/// segments are compacted, and so recycled, as the log grows.
async fn append_following(spool: &Spool, seqs: std::ops::RangeInclusive<u64>) {
    for i in seqs {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        spool.append(key, vec![padded(i)]).await.expect("append");
        spool
            .commit_cursor("a", Cursor::at(i.saturating_sub(6), 0))
            .expect("cursor");
    }
}

/// The last 6 records read back as appended.
fn assert_tail(spool: &Spool, head: u64) {
    let read = spool.read_after(head - 6, 100).expect("read");
    let got: Vec<(u64, Vec<u8>)> = read.into_iter().map(|r| (r.seq, r.json)).collect();
    let want: Vec<(u64, Vec<u8>)> = (head - 5..=head).map(|i| (i, padded(i))).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn records_written_over_recycled_segments_read_back_exactly_across_restarts() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let segments_dir = dir.path().join("segments");
    let sinks = ["a".to_owned()];
    let spool = Spool::open(&config(dir.path()), &sinks).expect("open");
    append_following(&spool, 1..=80).await;
    assert_tail(&spool, 80);
    let spare = std::fs::metadata(segments_dir.join("spare"))
        .expect("a delivered segment waits as the spare");
    spool.close();
    drop(spool);
    let segments = chained(dir.path());
    assert!(
        segments.iter().all(|(count, ends)| *count > 0 && *ends),
        "every segment ends after its last record (sealed, or cut at close): {segments:?}"
    );

    // After a restart the spare is still there, and the next append goes into it.
    let spool = Spool::open(&config(dir.path()), &sinks).expect("reopen");
    assert_eq!(*spool.subscribe().borrow(), 80, "the head survives");
    assert_tail(&spool, 80);
    append_following(&spool, 81..=81).await;
    let (_, newest) = segment::list(&segments_dir)
        .expect("list")
        .pop()
        .expect("a segment");
    assert_eq!(
        std::fs::metadata(&newest).expect("meta").ino(),
        spare.ino(),
        "the new segment is the recycled one"
    );
    assert_eq!(
        chained(dir.path()).last(),
        Some(&(1, false)),
        "one record, then the recycled segment's older ones"
    );
    assert_tail(&spool, 81);
    spool.close();
    drop(spool);

    let spool = Spool::open(&config(dir.path()), &sinks).expect("reopen");
    assert_eq!(
        chained(dir.path()).last(),
        Some(&(1, true)),
        "cut at start-up"
    );
    assert_eq!(*spool.subscribe().borrow(), 81);
    append_following(&spool, 82..=120).await;
    assert_tail(&spool, 120);
}

/// Waits (polling) until `spool` holds `requests` queued appends.
async fn wait_queued(spool: &Spool, requests: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while spool.queued().0 != requests {
        assert!(
            std::time::Instant::now() < deadline,
            "{requests} appends never queued: {:?}",
            spool.queued()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_bounds_its_queue_and_commits_all_of_it_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks = vec!["a".to_owned()];
    let spool = Arc::new(Spool::open(&config(dir.path()), &sinks).expect("open"));
    // Three events of 1000 bytes fit in the bytes bound, not four.
    spool.bound_queue(100, 3000);
    let event = |i: u8| vec![vec![b'0' + i % 10; 1000]];
    let (release, stalled) = mpsc::channel();
    spool.inject(faults::Fault::Stall(stalled));
    let mut waiting = Vec::new();
    for i in 0..3u8 {
        let spool = Arc::clone(&spool);
        waiting.push(tokio::spawn(async move {
            spool.append([i + 1; 16], event(i)).await
        }));
    }
    wait_queued(&spool, 3).await;
    // Two handlers give up (a timeout, a client gone): their appends stay queued, and
    // counted, until the writer takes them.
    waiting[1].abort();
    waiting[2].abort();
    assert_eq!(spool.queued(), (3, 3000));
    for i in 3..20u8 {
        let refused = spool.append([i + 1; 16], event(i)).await;
        assert!(
            matches!(
                refused,
                Err(SpoolError::QueueFull {
                    requests: 3,
                    bytes: 3000
                })
            ),
            "{refused:?}"
        );
        assert_eq!(spool.queued(), (3, 3000), "the queue does not grow");
    }
    // The stall ends: everything queued is committed, the waiter that stayed is answered.
    release.send(()).expect("the writer waits");
    let first = waiting.remove(0).await.expect("task").expect("append");
    assert_eq!(first.stored, 1);
    wait_queued(&spool, 0).await;
    assert_eq!(spool.queued(), (0, 0));
    assert_eq!(seqs(&spool.read_after(0, 100).expect("read")), [1, 2, 3]);
    let next = spool.append([50; 16], event(0)).await.expect("taken again");
    assert_eq!(next.stored, 1);
    // Nothing acknowledged is lost across a restart.
    spool.close();
    drop(spool);
    let spool = Spool::open(&config(dir.path()), &sinks).expect("reopen");
    assert_eq!(seqs(&spool.read_after(0, 100).expect("read")), [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_panic_in_the_writer_poisons_the_log_before_anyone_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(&config(dir.path()), &["a".to_owned()]).expect("open");
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&failures);
    spool.on_failure(move |failed| seen.lock().expect("lock").push(failed.clone()));
    spool.append([1; 16], events(&["1"])).await.expect("append");
    spool.inject(faults::Fault::Panic("injected writer fault"));
    let refused = spool.append([2; 16], events(&["2"])).await;
    assert!(matches!(refused, Err(SpoolError::Poisoned)), "{refused:?}");
    assert!(
        spool.is_poisoned(),
        "poisoned before the refused request was answered"
    );
    let refused = spool.append([3; 16], events(&["3"])).await;
    assert!(matches!(refused, Err(SpoolError::Poisoned)), "{refused:?}");
    let refused = spool.append_blocking(vec![([4; 16], events(&["4"]))]);
    assert!(matches!(refused, Err(SpoolError::Poisoned)), "{refused:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while failures.lock().expect("lock").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook was never called"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        *failures.lock().expect("lock"),
        [WriterFailure {
            log: "events",
            cause: "panic",
            detail: "injected writer fault".to_owned(),
        }]
    );
    // What was acknowledged before the panic is there after a restart.
    spool.close();
    drop(spool);
    let spool = Spool::open(&config(dir.path()), &["a".to_owned()]).expect("reopen");
    assert_eq!(seqs(&spool.read_after(0, 10).expect("read")), [1]);
}

#[tokio::test]
async fn a_clean_close_does_not_poison() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(&config(dir.path()), &["a".to_owned()]).expect("open");
    spool.append([1; 16], events(&["1"])).await.expect("append");
    spool.close();
    assert!(!spool.is_poisoned());
    let closed = spool.append([2; 16], events(&["2"])).await;
    assert!(matches!(closed, Err(SpoolError::Closed)), "{closed:?}");
}

/// A spool under `dir` (one sink, `a`) that keeps delivered segments for `max_age`,
/// holding twelve 1.5 KB events (seqs 1..=12, a few to each 4 KB segment); with its config.
async fn twelve_retained(dir: &Path, max_age: Duration) -> (SpoolConfig, Spool) {
    let mut retained = config(dir);
    retained.preallocate_segments = false;
    retained.retention = Some(metahook_config::RetentionConfig {
        max_age: Some(max_age),
        max_bytes: 0,
    });
    let spool = Spool::open(&retained, &["a".to_owned()]).expect("open");
    let big = "x".repeat(1500);
    for i in 0..12u8 {
        spool
            .append([i + 1; 16], events(&[&big]))
            .await
            .expect("append");
    }
    (retained, spool)
}

#[tokio::test]
async fn retention_keeps_delivered_segments_within_its_bytes_and_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut retained, spool) = twelve_retained(dir.path(), Duration::from_secs(3600)).await;
    let bytes_before = spool.stats().bytes;
    spool.commit_cursor("a", Cursor::at(12, 0)).expect("cursor");
    // Everything delivered, nothing deleted: all of it can be read again.
    assert_eq!(
        seqs(&spool.read_after(spool.before_oldest(), 100).expect("read")),
        (1..=12).collect::<Vec<_>>()
    );
    let kept = spool.retained();
    assert!(kept.bytes > 0 && kept.oldest_millis.is_some(), "{kept:?}");
    assert_eq!(
        spool.stats().bytes + kept.bytes,
        bytes_before,
        "retained bytes move out of the undelivered count"
    );
    drop(spool);

    // Reopened with a byte limit of one segment: the oldest go, the newest stay.
    retained.retention = Some(metahook_config::RetentionConfig {
        max_age: None,
        max_bytes: 4096,
    });
    let spool = Spool::open(&retained, &["a".to_owned()]).expect("reopen");
    let kept = spool.retained();
    assert!(kept.bytes <= 4096, "{kept:?}");
    let left = seqs(&spool.read_after(spool.before_oldest(), 100).expect("read"));
    assert!(
        left.first().is_some_and(|first| *first > 1) && left.last() == Some(&12),
        "{left:?}"
    );
    drop(spool);

    // Without retention a reopened spool deletes what was delivered at the next commit:
    // only the active segment is left (its last records: 1.5 KB ones in 4 KB segments).
    retained.retention = None;
    let spool = Spool::open(&retained, &["a".to_owned()]).expect("reopen");
    spool.commit_cursor("a", Cursor::at(12, 0)).expect("cursor");
    assert_eq!(spool.retained().bytes, 0);
    assert!(spool.before_oldest() >= 9, "{}", spool.before_oldest());
    assert!(
        spool
            .read_after(spool.before_oldest(), 100)
            .expect("read")
            .len()
            <= 3
    );
}

#[tokio::test]
async fn retained_segments_expire_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, spool) = twelve_retained(dir.path(), Duration::from_millis(200)).await;
    spool.commit_cursor("a", Cursor::at(12, 0)).expect("cursor");
    assert!(spool.retained().bytes > 0, "kept at first");
    // Expiry is what a receiver's gauge tick calls; wait for the age to pass.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while spool.retained().bytes > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "retained segments never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        spool.expire().expect("expire");
    }
    assert!(
        spool.before_oldest() >= 9,
        "only the active segment is left"
    );
}
