//! Sink cursors: one small file per sink, replaced atomically.
//!
//! `cursors/<sink>.cursor` holds `<last delivered seq> <sink state>`, the state `-` while the
//! sink has none (it gave events up before it ever delivered one). It is written to a
//! temporary file, fsync'd, renamed over the old one and the directory fsync'd, so after a
//! crash it holds either the old or the new cursor, never a mix.

use std::io::Write;
use std::path::Path;

use super::segment::sync_dir;

/// A sink's position: the last seq it delivered and its own resume state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Last delivered sequence number (0 = none).
    pub seq: u64,
    /// Sink-specific state committed with the cursor (the file sink: its file length);
    /// `None` until the sink has committed one.
    pub state: Option<u64>,
}

impl Cursor {
    /// A cursor at `seq` with the sink state `state`.
    pub fn at(seq: u64, state: u64) -> Cursor {
        Cursor {
            seq,
            state: Some(state),
        }
    }
}

/// Reads a sink's cursor; `None` when the sink never committed one.
pub fn read(dir: &Path, sink: &str) -> std::io::Result<Option<Cursor>> {
    let text = match std::fs::read_to_string(dir.join(format!("{sink}.cursor"))) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut parts = text.split_ascii_whitespace();
    let seq = parts.next().map(str::parse::<u64>);
    let state = match parts.next() {
        Some("-") => Some(Ok(None)),
        Some(state) => Some(state.parse::<u64>().map(Some)),
        None => None,
    };
    match (seq, state) {
        (Some(Ok(seq)), Some(Ok(state))) => Ok(Some(Cursor { seq, state })),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cursor file of sink {sink} is not `<seq> <state>`: {text:?}"),
        )),
    }
}

/// Replaces a sink's cursor durably.
pub fn write(dir: &Path, sink: &str, cursor: Cursor) -> std::io::Result<()> {
    let tmp = dir.join(format!("{sink}.cursor.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    match cursor.state {
        Some(state) => writeln!(file, "{} {state}", cursor.seq)?,
        None => writeln!(file, "{} -", cursor.seq)?,
    }
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(format!("{sink}.cursor")))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path(), "a").expect("read"), None);
        write(dir.path(), "a", Cursor::at(42, 7)).expect("write");
        assert_eq!(
            read(dir.path(), "a").expect("read"),
            Some(Cursor::at(42, 7))
        );
        let stateless = Cursor {
            seq: 3,
            state: None,
        };
        write(dir.path(), "c", stateless).expect("write");
        assert_eq!(read(dir.path(), "c").expect("read"), Some(stateless));
        std::fs::write(dir.path().join("b.cursor"), "garbage").expect("write");
        assert!(read(dir.path(), "b").is_err());
    }
}
