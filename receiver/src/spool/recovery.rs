//! Start-up: a log recovered from its tail (see the module docs of [`super`]).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::segment::{self, FrameReader, Key};
use super::{SegmentInfo, SpoolError, io};

/// What start-up found: the segments, the next seq, and the newest record's (seq, key).
pub(super) struct Recovered {
    pub(super) segments: Vec<SegmentInfo>,
    pub(super) next_seq: u64,
    pub(super) tail: Option<(u64, Key)>,
    /// How many records at the very end carry the tail's key (a request's or an intake
    /// record's events are consecutive records with one key).
    pub(super) tail_run: usize,
    /// The newest segment's `.keys` content, rebuilt from its records (with `keys`).
    pub(super) newest_keys: Vec<u8>,
}

/// Recovers a log from its tail. The newest segment is scanned whole (it may end with a
/// torn write, which is truncated); every older one was sealed — fsync'd whole before
/// the next was created — so it is taken as it is, its last seq being the next one's
/// first minus one, and is not read. If the newest segment is empty (a spool written
/// before the writer rotated lazily), the one before is scanned too, without
/// truncating, for the newest record. With `keys`, `each_key` gets every record's dedup
/// key and time, oldest first: from the sealed segments' `.keys` files (or, when one
/// is missing or short, from the segment itself), then from the scan.
/// The length of the run of records with one key that ends at `frame`, given the run that
/// ended at the record before it (`tail`).
fn extend_run(tail: Option<(u64, Key)>, run: usize, frame: &segment::Frame) -> usize {
    match tail {
        Some((_, key)) if key == frame.key => run + 1,
        _ => 1,
    }
}

pub(super) fn recover_tail(
    listed: &[(u64, PathBuf)],
    keys: bool,
    mut each_key: impl FnMut(&Key, u64),
) -> Result<Recovered, SpoolError> {
    let mut segments = Vec::with_capacity(listed.len());
    let Some(((newest_first, newest_path), sealed)) = listed.split_last() else {
        return Ok(Recovered {
            segments,
            next_seq: 1,
            tail: None,
            tail_run: 0,
            newest_keys: Vec::new(),
        });
    };
    for (i, (first_seq, path)) in sealed.iter().enumerate() {
        let next_first = listed[i + 1].0;
        let bytes = std::fs::metadata(path)
            .map_err(io(format!("cannot stat {}", path.display())))?
            .len();
        if keys {
            let records = next_first.saturating_sub(*first_seq);
            let read = segment::read_keys(path, records)
                .map_err(io(format!("cannot read the keys of {}", path.display())))?;
            match read {
                Some(entries) => entries.iter().for_each(|(k, at)| each_key(k, *at)),
                None => {
                    tracing::warn!(segment = %path.display(), "its .keys file is missing or short: reading the segment for dedup keys");
                    let mut reader = FrameReader::open(path, 0)
                        .map_err(io(format!("cannot read {}", path.display())))?;
                    while let Some(frame) = reader
                        .next_frame(None)
                        .map_err(io(format!("cannot read {}", path.display())))?
                    {
                        each_key(&frame.key, frame.received_millis);
                    }
                }
            }
        }
        segments.push(SegmentInfo {
            first_seq: *first_seq,
            path: path.clone(),
            index: Vec::new(),
            bytes,
            delivered: false,
            last_millis: None,
            first_millis: None,
        });
    }
    let mut tail: Option<(u64, Key)> = None;
    let mut tail_run = 0;
    let mut newest_keys = Vec::new();
    let scan = segment::recover(newest_path, *newest_first, |frame| {
        if keys {
            each_key(&frame.key, frame.received_millis);
            segment::encode_key(&mut newest_keys, &frame.key, frame.received_millis);
        }
        tail_run = extend_run(tail, tail_run, frame);
        tail = Some((frame.seq, frame.key));
    })
    .map_err(io(format!("cannot recover {}", newest_path.display())))?;
    let next_seq = scan.last_seq.map_or(*newest_first, |last| last + 1);
    if tail.is_none()
        && let Some((first_seq, path)) = sealed.last()
    {
        segment::scan(path, *first_seq, |frame| {
            tail_run = extend_run(tail, tail_run, frame);
            tail = Some((frame.seq, frame.key));
        })
        .map_err(io(format!("cannot read {}", path.display())))?;
    }
    segments.push(SegmentInfo {
        first_seq: *newest_first,
        path: newest_path.clone(),
        index: scan.index,
        bytes: scan.valid_len,
        delivered: false,
        last_millis: None,
        first_millis: None,
    });
    Ok(Recovered {
        segments,
        next_seq,
        tail,
        tail_run,
        newest_keys,
    })
}

/// Rewrites the active segment's `.keys` file with `entries` (rebuilt from its records:
/// the file may be behind or ahead of them after a crash) and opens it for appending.
pub(super) fn rewrite_keys(path: &Path, entries: &[u8]) -> Result<File, SpoolError> {
    let keys = segment::keys_path(path);
    std::fs::write(&keys, entries).map_err(io(format!("cannot write {}", keys.display())))?;
    OpenOptions::new()
        .append(true)
        .open(&keys)
        .map_err(io(format!("cannot open {}", keys.display())))
}
