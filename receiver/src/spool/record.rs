//! What the intake log stores per accepted request, and how event-log records name the
//! request they came from.
//!
//! An intake record is the verified body, once, with what normalizing it needs besides
//! the body, so that normalization after the 200 is a pure function of the stored bytes:
//!
//! ```text
//! u64 LE received-at, Unix nanoseconds | u16 LE endpoint-name length | endpoint name | body
//! ```
//!
//! The received time is kept to the nanosecond because events carry it as an RFC 3339
//! string with full precision, exactly as when normalization ran before the 200.
//!
//! Each event-log record carries, in its 16-byte key, the intake seq of the request it
//! came from ([`source_key`]): the newest one tells, after a restart, which requests are
//! already normalized, so none is normalized into the event log twice. The events of a
//! request whose enrichment finished after later requests were appended carry instead
//! [`late_key`] with the newest request appended by then ([`normalized_through`] reads
//! both): they never move that mark back.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::segment::Key;

/// Marks an event-log key as [`source_key`] (an older receiver stored the request's HMAC
/// there: 8 bytes of it equal to this by chance is a 2^-64 event).
const SOURCE_MARK: [u8; 8] = *b"mh-src\x00\x01";

/// Marks an event-log key as [`late_key`].
const LATE_MARK: [u8; 8] = *b"mh-late\x01";

/// A stored request, borrowed from an intake record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRequest<'a> {
    /// When it was accepted, Unix nanoseconds.
    pub received_nanos: u64,
    /// The endpoint's configured name.
    pub endpoint: &'a str,
    /// The verified body, as received.
    pub body: &'a [u8],
}

/// Why an intake record cannot be read (a record written by something else).
#[derive(Debug, thiserror::Error)]
#[error("intake record: {0}")]
pub struct RecordError(&'static str);

const HEADER: usize = 8 + 2;

impl<'a> RawRequest<'a> {
    /// The record's bytes (one allocation, sized exactly).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.endpoint.as_bytes();
        let name = &name[..name.len().min(usize::from(u16::MAX))];
        let mut out = Vec::with_capacity(HEADER + name.len() + self.body.len());
        out.extend_from_slice(&self.received_nanos.to_le_bytes());
        out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(self.body);
        out
    }

    /// Reads a record.
    pub fn decode(bytes: &'a [u8]) -> Result<RawRequest<'a>, RecordError> {
        let (nanos, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or(RecordError("shorter than its header"))?;
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or(RecordError("shorter than its header"))?;
        let len = usize::from(u16::from_le_bytes(*len));
        if rest.len() < len {
            return Err(RecordError("endpoint name cut short"));
        }
        let (name, body) = rest.split_at(len);
        let endpoint =
            std::str::from_utf8(name).map_err(|_| RecordError("endpoint name is not UTF-8"))?;
        Ok(RawRequest {
            received_nanos: u64::from_le_bytes(*nanos),
            endpoint,
            body,
        })
    }

    /// `received_at` as events carry it (RFC 3339, UTC, full precision).
    pub fn received_at(&self) -> String {
        rfc3339(self.received_nanos)
    }
}

/// Now, as Unix nanoseconds (what [`RawRequest::received_nanos`] holds).
pub fn now_nanos() -> u64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    u64::try_from(nanos).unwrap_or(0)
}

/// Unix nanoseconds as RFC 3339 (UTC), as `OffsetDateTime::now_utc()` formats.
pub fn rfc3339(nanos: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// The event-log key of events normalized from intake record `seq`.
pub fn source_key(seq: u64) -> Key {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&seq.to_le_bytes());
    key[8..].copy_from_slice(&SOURCE_MARK);
    key
}

/// The intake seq an event-log key names (`None`: written before the intake log existed).
pub fn source_of(key: &Key) -> Option<u64> {
    let (seq, mark) = key.split_at(8);
    (mark == SOURCE_MARK).then(|| u64::from_le_bytes(seq.try_into().unwrap_or_default()))
}

/// The event-log key of events appended after their request's turn (enriched off the
/// normalization stage's thread), when the newest request already in the event log is
/// `normalized_through`.
pub fn late_key(normalized_through: u64) -> Key {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&normalized_through.to_le_bytes());
    key[8..].copy_from_slice(&LATE_MARK);
    key
}

/// The newest intake seq normalized into the event log when the record keyed `key` was
/// appended: its own ([`source_key`]) or the one a [`late_key`] names.
pub fn normalized_through(key: &Key) -> Option<u64> {
    let (seq, mark) = key.split_at(8);
    (mark == SOURCE_MARK || mark == LATE_MARK)
        .then(|| u64::from_le_bytes(seq.try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let request = RawRequest {
            received_nanos: 1_764_547_200_123_456_789,
            endpoint: "wa",
            body: br#"{"object":"page"}"#,
        };
        let bytes = request.encode();
        assert_eq!(RawRequest::decode(&bytes).expect("decode"), request);
        assert_eq!(request.received_at(), "2025-12-01T00:00:00.123456789Z");
        assert!(RawRequest::decode(&bytes[..5]).is_err());
        assert!(RawRequest::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9, 0, b'w']).is_err());
    }

    #[test]
    fn the_received_time_formats_as_now_utc_does() {
        let now = OffsetDateTime::now_utc();
        let nanos = u64::try_from(now.unix_timestamp_nanos()).expect("after 1970");
        assert_eq!(rfc3339(nanos), now.format(&Rfc3339).expect("format"));
    }

    #[test]
    fn source_keys_name_their_record_and_not_an_hmac() {
        assert_eq!(source_of(&source_key(42)), Some(42));
        assert_eq!(source_of(&[7; 16]), None);
        assert_eq!(
            source_of(&late_key(42)),
            None,
            "a late record is not its request's"
        );
        assert_eq!(normalized_through(&late_key(42)), Some(42));
        assert_eq!(normalized_through(&source_key(42)), Some(42));
        assert_eq!(normalized_through(&[7; 16]), None);
    }
}
