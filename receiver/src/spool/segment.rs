//! Segment files: the spool's on-disk format.
//!
//! A segment is `segments/<first seq, 20 digits>.log`, a sequence of frames:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of payload | payload
//! payload = u64 LE seq | u64 LE received-at millis | 16-byte dedup key | event JSON
//! ```
//!
//! A frame is valid when its length fits, its CRC matches and its seq follows the previous
//! one. Recovery keeps every valid frame and truncates the first invalid one and everything
//! after it: a torn write from a crash is never read, and fsync'd frames are never lost.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes before the payload.
pub const FRAME_HEADER: usize = 8;
/// Bytes of the payload before the JSON.
pub const PAYLOAD_HEADER: usize = 8 + 8 + 16;
/// A sparse index entry is kept every this many records.
pub const INDEX_EVERY: u64 = 64;
/// Largest frame accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A request's dedup key (the first 16 bytes of its verified HMAC; zero = none).
pub type Key = [u8; 16];

/// One stored record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number.
    pub seq: u64,
    /// When it was accepted (Unix millis).
    pub received_millis: u64,
    /// The request's dedup key.
    pub key: Key,
    /// The event JSON.
    pub json: Vec<u8>,
}

/// Appends one frame to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, received_millis: u64, key: &Key, json: &[u8]) {
    let len = u32::try_from(PAYLOAD_HEADER + json.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&received_millis.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(json);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of one `.keys` entry: the record's dedup key and its time (u64 LE millis).
pub const KEY_ENTRY: usize = 16 + 8;

/// The `.keys` file beside a segment: one [`KEY_ENTRY`] per record, in seq order, so the
/// dedup window is rebuilt at start-up without reading the records themselves.
pub fn keys_path(segment: &Path) -> PathBuf {
    segment.with_extension("keys")
}

/// Appends one `.keys` entry to `out`.
pub fn encode_key(out: &mut Vec<u8>, key: &Key, received_millis: u64) {
    out.extend_from_slice(key);
    out.extend_from_slice(&received_millis.to_le_bytes());
}

/// The entries of a sealed segment's `.keys` file holding `records` records; `None` when
/// the file is missing or does not hold exactly that many (then read the segment).
pub fn read_keys(segment: &Path, records: u64) -> std::io::Result<Option<Vec<(Key, u64)>>> {
    let bytes = match std::fs::read(keys_path(segment)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    if u64::try_from(bytes.len()).ok() != records.checked_mul(KEY_ENTRY as u64) {
        return Ok(None);
    }
    let entries = bytes
        .chunks_exact(KEY_ENTRY)
        .map(|entry| {
            let mut key = [0u8; 16];
            key.copy_from_slice(&entry[..16]);
            let mut at = [0u8; 8];
            at.copy_from_slice(&entry[16..]);
            (key, u64::from_le_bytes(at))
        })
        .collect();
    Ok(Some(entries))
}

/// The path of the segment starting at `first_seq`.
pub fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// Segment files in `dir`, by first seq.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

/// A [`FrameReader`]'s buffer. Every read of the spool (the stage's, each sink's, many
/// times a second each) opens a reader, so the buffer stays under glibc's default
/// threshold for mapping fresh pages (128 KiB).
const READ_BUFFER: usize = 64 * 1024;

/// Reads frames sequentially from a position in a segment.
#[derive(Debug)]
pub struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
}

impl FrameReader {
    /// Opens `path` positioned at `offset`.
    pub fn open(path: &Path, offset: u64) -> std::io::Result<FrameReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(FrameReader {
            reader: BufReader::with_capacity(READ_BUFFER, file),
            offset,
        })
    }

    /// The offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next valid frame; `None` at the end or at the first invalid frame.
    pub fn next_frame(&mut self, expected_seq: Option<u64>) -> std::io::Result<Option<Frame>> {
        let mut header = [0u8; FRAME_HEADER + PAYLOAD_HEADER];
        if !read_full(&mut self.reader, &mut header[..FRAME_HEADER])? {
            return Ok(None);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(PAYLOAD_HEADER..=MAX_FRAME).contains(&len) {
            return Ok(None);
        }
        // The payload's header and its JSON are read apart, so the JSON lands where it is
        // kept (no copy to strip the header).
        let mut json = vec![0u8; len - PAYLOAD_HEADER];
        if !read_full(&mut self.reader, &mut header[FRAME_HEADER..])?
            || !read_full(&mut self.reader, &mut json)?
        {
            return Ok(None);
        }
        let payload = &header[FRAME_HEADER..];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(payload);
        hasher.update(&json);
        if hasher.finalize() != crc {
            return Ok(None);
        }
        let seq = u64::from_le_bytes(payload[0..8].try_into().unwrap_or_default());
        if expected_seq.is_some_and(|expected| expected != seq) {
            return Ok(None);
        }
        let received_millis = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
        let mut key = [0u8; 16];
        key.copy_from_slice(&payload[16..32]);
        self.offset += (FRAME_HEADER + len) as u64;
        Ok(Some(Frame {
            seq,
            received_millis,
            key,
            json,
        }))
    }
}

/// Fills `buf` completely; `false` on a clean or partial end of file.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// What recovery found in a segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// Last valid seq, if any frame.
    pub last_seq: Option<u64>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Sparse index (seq, offset).
    pub index: Vec<(u64, u64)>,
}

/// Reads a segment's records as they chain from `first_seq` (each the seq after the one
/// before), calling `each` for every one; stops at the first that does not (a torn
/// write, or a recycled segment's older records). Reads only.
pub fn scan(path: &Path, first_seq: u64, mut each: impl FnMut(&Frame)) -> std::io::Result<Scan> {
    let mut reader = FrameReader::open(path, 0)?;
    let mut scan = Scan::default();
    let mut expected = first_seq;
    loop {
        let offset = reader.offset();
        let Some(frame) = reader.next_frame(Some(expected))? else {
            break;
        };
        if frame.seq == first_seq || frame.seq % INDEX_EVERY == 0 {
            scan.index.push((frame.seq, offset));
        }
        each(&frame);
        scan.last_seq = Some(frame.seq);
        expected = frame.seq + 1;
    }
    scan.valid_len = reader.offset();
    Ok(scan)
}

/// [`scan`]s a segment and cuts it after its last valid record.
pub fn recover(path: &Path, first_seq: u64, each: impl FnMut(&Frame)) -> std::io::Result<Scan> {
    let scan = scan(path, first_seq, each)?;
    let expected = scan.last_seq.map_or(first_seq, |last| last + 1);
    let file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() > scan.valid_len {
        if is_recycled_space(path, scan.valid_len, expected)? {
            tracing::debug!(segment = %path.display(), valid_bytes = scan.valid_len, "cutting a recycled segment after its last record");
        } else {
            tracing::warn!(segment = %path.display(), valid_bytes = scan.valid_len, "truncating an incomplete tail (a write cut by a crash)");
        }
        file.set_len(scan.valid_len)?;
        file.sync_all()?;
    }
    Ok(scan)
}

/// Whether what follows the last valid record (at `offset`) is the rest of a recycled
/// segment (an older record) rather than a torn write.
fn is_recycled_space(path: &Path, offset: u64, expected_seq: u64) -> std::io::Result<bool> {
    let older = FrameReader::open(path, offset)?.next_frame(None)?;
    Ok(older.is_some_and(|frame| frame.seq < expected_seq))
}

/// Makes a directory entry (a new or removed file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), 1);
        let mut bytes = Vec::new();
        encode(&mut bytes, 1, 10, &[1; 16], b"{\"a\":1}");
        encode(&mut bytes, 2, 11, &[0; 16], b"{\"b\":2}");
        let whole = bytes.len();
        encode(&mut bytes, 3, 12, &[0; 16], b"{\"c\":3}");
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&file, &bytes).expect("write");

        let mut seen = Vec::new();
        let scan = recover(&file, 1, |f| seen.push((f.seq, f.json.clone()))).expect("recover");
        assert_eq!(
            seen,
            vec![(1, b"{\"a\":1}".to_vec()), (2, b"{\"b\":2}".to_vec())]
        );
        assert_eq!(scan.last_seq, Some(2));
        assert_eq!(std::fs::metadata(&file).expect("meta").len(), whole as u64);
    }

    #[test]
    fn a_recycled_segments_older_records_are_never_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Records 10 and 11 written over a segment that held 3, 4 and 5, the old ones
        // lying exactly where the next record would start.
        let recycled = path(dir.path(), 10);
        let mut bytes = Vec::new();
        encode(&mut bytes, 10, 1, &[0; 16], b"{\"new\":10}");
        encode(&mut bytes, 11, 1, &[0; 16], b"{\"new\":11}");
        let written = bytes.len();
        for seq in 3..=5 {
            encode(&mut bytes, seq, 1, &[0; 16], b"{\"old\":1}");
        }
        std::fs::write(&recycled, &bytes).expect("write");
        let mut read = Vec::new();
        scan(&recycled, 10, |frame| read.push(frame.seq)).expect("scan");
        assert_eq!(read, [10, 11], "a reader stops at the older records");
        assert!(is_recycled_space(&recycled, written as u64, 12).expect("peek"));
        let scan = recover(&recycled, 10, |_| {}).expect("recover");
        assert_eq!((scan.last_seq, scan.valid_len), (Some(11), written as u64));
        assert_eq!(
            std::fs::metadata(&recycled).expect("meta").len(),
            written as u64,
            "recovery cuts the segment after its last record"
        );

        // A torn write, or zeros where a crash left the data unwritten, is told apart.
        let torn = path(dir.path(), 30);
        let mut bytes = Vec::new();
        encode(&mut bytes, 30, 1, &[0; 16], b"{}");
        let written = bytes.len();
        encode(&mut bytes, 31, 1, &[0; 16], b"{\"cut\":true}");
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&torn, &bytes).expect("write");
        assert!(!is_recycled_space(&torn, written as u64, 31).expect("peek"));
        bytes.truncate(written);
        bytes.resize(written + 4096, 0);
        std::fs::write(&torn, &bytes).expect("write");
        assert!(!is_recycled_space(&torn, written as u64, 31).expect("peek"));
    }

    #[test]
    fn a_corrupt_frame_ends_the_valid_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = path(dir.path(), 5);
        let mut bytes = Vec::new();
        encode(&mut bytes, 5, 1, &[0; 16], b"{}");
        let first = bytes.len();
        encode(&mut bytes, 6, 1, &[0; 16], b"{\"x\":1}");
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).expect("write");
        let scan = recover(&file, 5, |_| {}).expect("recover");
        assert_eq!((scan.last_seq, scan.valid_len), (Some(5), first as u64));
    }
}
