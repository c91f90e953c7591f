//! Normalization: a verified webhook body becomes one [`Event`] per leaf item.
//!
//! Leaf items are each WhatsApp message, status, echo, call or preference; each Messenger
//! or Instagram messaging item; each other change. Nothing is dropped: an item that is not
//! in its documented shape, or of an undocumented object, field or type, becomes a
//! `kind: unknown` event carrying `raw` and an `error` note. Only a body that is not a JSON
//! object at all is rejected ([`BodyError`]), because Meta never sends one.
//!
//! This module is pure: no I/O, no clock (the caller passes `received_at`).

mod changes;
mod coverage;
mod messaging;
mod whatsapp;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

pub use coverage::{
    COVERAGE, CoverageRow, coverage_markdown, documented_objects, field_kinds, is_documented_object,
};
pub use whatsapp::unrecognized_value;

use crate::event::{Event, Kind, Platform};
use crate::meta::envelope::{Change, Entries, Entry, Envelope};
use crate::meta::lenient::UnixTime;

/// Why a body was rejected as a whole (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Empty body.
    #[error("the body is empty")]
    Empty,
    /// Not JSON, or truncated JSON.
    #[error("the body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Valid JSON, but not an object (an array, string, number, ...).
    #[error("the body is JSON but not an object (found {0}); Meta sends one object per request")]
    NotObject(&'static str),
    /// Arrays and objects nest deeper than `limits.max_json_depth`.
    #[error(
        "the body nests arrays and objects deeper than {limit} levels (limits.max_json_depth); \
         Meta's payloads nest about 10"
    )]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
}

/// Refuses a body whose arrays and objects nest deeper than `limit` (the top-level object
/// is level 1). One pass over the bytes, building nothing: it runs before
/// [`normalize`], which would otherwise store a deep body as an `unknown` event that
/// `jq` and Python's `json` cannot read back. Invalid JSON is left to [`validate`].
///
/// It runs on every request before the 200, so strings (most of a webhook's bytes: texts,
/// ids, URLs) are skipped with `memchr` to their closing quote rather than looked at byte
/// by byte (a byte loop took about 40% of a request handler's CPU on the 1.4 KB text body).
pub fn check_depth(body: &[u8], limit: usize) -> Result<(), BodyError> {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        at += 1;
        match byte {
            b'"' => match string_end(body, at) {
                Some(end) => at = end,
                // An unterminated string: not JSON, which `validate` says.
                None => return Ok(()),
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return Err(BodyError::TooDeep { limit });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Where the JSON string whose content starts at `from` ends: the offset just past its
/// closing quote, or `None` if the body ends first.
fn string_end(body: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let found = from + memchr::memchr2(b'"', b'\\', body.get(from..)?)?;
        if body[found] == b'"' {
            return Some(found + 1);
        }
        // A backslash escapes the byte after it (`\"`, `\\`): skip both.
        from = found + 2;
    }
}

/// What normalization needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The endpoint's name, recorded in every event.
    pub endpoint: &'a str,
    /// When the request was accepted, RFC 3339.
    pub received_at: &'a str,
    /// The objects this endpoint accepts (`None` = every object).
    pub objects: Option<&'a [String]>,
}

/// Turns a verified body into events; see the module docs.
pub fn normalize(body: &[u8], ctx: &Context<'_>) -> Result<Vec<Event>, BodyError> {
    let mut out = collect(body, ctx)?;
    for event in out.iter_mut().filter(|e| e.id.is_empty()) {
        event.id = hash_id(
            &event.object,
            event.account_id.as_deref(),
            &event.field,
            event.raw.get(),
        );
    }
    if let Some(accepted) = ctx.objects {
        for event in &mut out {
            if !accepted.contains(&event.object) {
                event.kind = Kind::Unknown;
                event.error = Some(format!(
                    "object {:?} is not among the objects endpoint {:?} accepts",
                    event.object, ctx.endpoint
                ));
            }
        }
    }
    Ok(out)
}

/// Checks, without building a DOM, that `body` is one the receiver accepts (HTTP 200):
/// exactly the bodies for which [`normalize`] returns events rather than a [`BodyError`].
/// It runs before the 200; [`normalize`] runs after, from the stored bytes. Both go
/// through [`read`], so they cannot disagree.
pub fn validate(body: &[u8]) -> Result<(), BodyError> {
    read(body).map(drop)
}

/// What the top level of a body holds.
enum Read<'a> {
    /// The envelope's `object` and its entries, raw.
    Entries {
        object: Option<String>,
        entries: Vec<&'a RawValue>,
    },
    /// A JSON object that is kept whole as one `unknown` event, and why.
    Whole {
        object: Option<String>,
        root: &'a RawValue,
        note: &'static str,
    },
}

/// Reads the envelope of a body; the one place that decides whether a body is refused.
fn read(body: &[u8]) -> Result<Read<'_>, BodyError> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(BodyError::Empty);
    };
    if first != b'{' {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(BodyError::NotJson)?;
        return Err(BodyError::NotObject(json_type_name(first)));
    }
    // One pass reads the envelope, validates the whole body and splits the entries.
    let envelope: Envelope<'_> = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(err) => {
            // Valid JSON that is not a readable envelope (duplicate keys, ...) is kept.
            let root: &RawValue =
                serde_json::from_slice(body).map_err(|_| BodyError::NotJson(err))?;
            return Ok(Read::Whole {
                object: None,
                root,
                note: "the envelope cannot be read",
            });
        }
    };
    let object = envelope
        .object
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    match envelope.entry {
        Some(Entries::List(entries)) => Ok(Read::Entries { object, entries }),
        found => {
            let note = if found.is_some() {
                "entry is not an array"
            } else {
                "the body has no entry"
            };
            let root: &RawValue = serde_json::from_slice(body).map_err(BodyError::NotJson)?;
            Ok(Read::Whole { object, root, note })
        }
    }
}

/// The events of a body, before ids are completed and the endpoint's objects applied.
fn collect(body: &[u8], ctx: &Context<'_>) -> Result<Vec<Event>, BodyError> {
    let mut out = Vec::new();
    match read(body)? {
        Read::Whole { object, root, note } => {
            let scope = Scope::new(ctx, object.as_deref().unwrap_or(""), None);
            out.push(scope.unknown("", root, note.to_owned()));
        }
        Read::Entries { object, entries } => {
            for entry_raw in entries {
                normalize_entry(ctx, object.as_deref(), entry_raw, &mut out);
            }
        }
    }
    Ok(out)
}

/// The whole body as one `unknown` event with `error`: what a stored body becomes when
/// [`normalize`] cannot make events of it after the 200 (a body stored under other rules,
/// or a fault in this receiver), so that nothing acknowledged is dropped silently. `raw`
/// is the body when it is JSON, else the body as a JSON string (invalid UTF-8 replaced).
pub fn unreadable(body: &[u8], ctx: &Context<'_>, error: String) -> Event {
    let raw = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .map(compact)
        .or_else(|| {
            serde_json::to_string(&String::from_utf8_lossy(body))
                .ok()
                .and_then(|text| RawValue::from_string(text).ok())
        })
        .unwrap_or_else(|| RawValue::NULL.to_owned());
    let scope = Scope::new(ctx, "", None);
    let mut event = scope.unknown("", &raw, error);
    event.id = hash_id("", None, "", event.raw.get());
    event
}

fn json_type_name(first: u8) -> &'static str {
    match first {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

fn normalize_entry(ctx: &Context<'_>, object: Option<&str>, raw: &RawValue, out: &mut Vec<Event>) {
    let entry: Entry<'_> = match parse(raw) {
        Ok(entry) => entry,
        Err(err) => {
            let scope = Scope::new(ctx, object.unwrap_or(""), None);
            out.push(scope.unknown("", raw, format!("entry: {err}")));
            return;
        }
    };
    let object = object.or(entry.object.as_deref()).unwrap_or("");
    let account_id = entry
        .id
        .as_ref()
        .or(entry.uid.as_ref())
        .map(|id| id.0.clone());
    let mut scope = Scope::new(ctx, object, account_id);
    scope.entry_time = entry.time;
    let before = out.len();

    if let Some(changes) = &entry.changes {
        for change_raw in changes {
            if object == "whatsapp_business_account"
                && scope.whatsapp_fast(entry.field.as_deref(), change_raw, out)
            {
                continue;
            }
            match parse::<Change<'_>>(change_raw) {
                Ok(change) => {
                    let field = change
                        .field
                        .as_deref()
                        .or(entry.field.as_deref())
                        .unwrap_or("");
                    scope.change(field, change_raw, change.value, out);
                }
                Err(err) => out.push(scope.unknown("", change_raw, format!("change: {err}"))),
            }
        }
    }
    for (items, standby) in [(&entry.messaging, false), (&entry.standby, true)] {
        for item in items.iter().flatten() {
            scope.messaging_item(item, standby, out);
        }
    }
    for field in entry.changed_fields.iter().flatten() {
        let kind = if field_kinds(object, field).is_empty() {
            Kind::Unknown
        } else {
            Kind::Change
        };
        let mut event = scope.event(field, kind, raw);
        event.id = hash_id(
            object,
            scope.account_id.as_deref(),
            field,
            &format!("{}\u{0}{field}", raw.get()),
        );
        if kind == Kind::Unknown {
            event.error = Some(undocumented(object, field));
        }
        out.push(event);
    }
    if out.len() == before {
        let note = "the entry has no changes, messaging, standby or changed_fields items";
        out.push(scope.unknown(entry.field.as_deref().unwrap_or(""), raw, note.to_owned()));
    }
}

fn undocumented(object: &str, field: &str) -> String {
    if coverage::platform_of(object).is_none() {
        format!("object {object:?} is not a documented Meta webhook object")
    } else {
        format!("field {field:?} is not a documented field of object {object:?}")
    }
}

/// Parses a raw item into a borrowed or owned type.
fn parse<'a, T: serde::Deserialize<'a>>(raw: &'a RawValue) -> Result<T, serde_json::Error> {
    serde_json::from_str(raw.get())
}

/// Parses an optional raw value into an owned type, treating absence as the default.
fn parse_or_default<T: DeserializeOwned + Default>(
    raw: Option<&RawValue>,
) -> Result<T, serde_json::Error> {
    raw.map_or_else(|| Ok(T::default()), |raw| serde_json::from_str(raw.get()))
}

/// Everything events of one entry share, and the builders that fill them.
struct Scope<'c> {
    ctx: &'c Context<'c>,
    object: &'c str,
    platform: Platform,
    account_id: Option<String>,
    entry_time: Option<UnixTime>,
}

impl<'c> Scope<'c> {
    fn new(ctx: &'c Context<'c>, object: &'c str, account_id: Option<String>) -> Self {
        Scope {
            ctx,
            object,
            platform: coverage::platform_of(object).unwrap_or(Platform::Graph),
            account_id,
            entry_time: None,
        }
    }

    /// A new event with the common fields; unless a builder sets the platform's own id,
    /// `normalize` sets the hash of the item (computed only for those that need it).
    fn event(&self, field: &str, kind: Kind, raw: &RawValue) -> Event {
        let raw = compact(raw);
        Event {
            // Filled in by `normalize` unless a builder sets the platform's own id.
            id: String::new(),
            platform: self.platform,
            object: self.object.to_owned(),
            field: field.to_owned(),
            kind,
            account_id: self.account_id.clone(),
            occurred_at: self.entry_time.and_then(UnixTime::to_rfc3339),
            received_at: self.ctx.received_at.to_owned(),
            endpoint: self.ctx.endpoint.to_owned(),
            business_phone: None,
            conversation: None,
            message: None,
            status: None,
            lead: None,
            referral: None,
            media: None,
            group: None,
            identity_change: None,
            error: None,
            raw,
        }
    }

    /// An `unknown` event with the reason it could not be read.
    fn unknown(&self, field: &str, raw: &RawValue, error: String) -> Event {
        let mut event = self.event(field, Kind::Unknown, raw);
        event.error = Some(error);
        event
    }
}

/// The item's JSON with whitespace outside strings removed, so a JSON-lines file keeps one
/// event per line; the value (every key, every digit) is unchanged. Meta sends compact JSON,
/// so the usual case is one scan and no copy; strings are skipped with `memchr`, as in
/// [`check_depth`].
fn compact(raw: &RawValue) -> Box<RawValue> {
    let bytes = raw.get().as_bytes();
    // Allocated only at the first whitespace outside a string; until then nothing is copied.
    let mut out: Option<Vec<u8>> = None;
    // Where the bytes not yet copied into `out` start.
    let mut uncopied = 0;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            // Unterminated (not JSON, which the parser refused already): kept whole.
            b'"' => at = string_end(bytes, at + 1).unwrap_or(bytes.len()),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.get_or_insert_with(|| Vec::with_capacity(bytes.len()))
                    .extend_from_slice(&bytes[uncopied..at]);
                at += 1;
                uncopied = at;
            }
            _ => at += 1,
        }
    }
    let Some(mut out) = out else {
        return raw.to_owned();
    };
    out.extend_from_slice(&bytes[uncopied..]);
    // Removing insignificant whitespace from valid JSON leaves valid UTF-8 JSON (only ASCII
    // bytes outside strings are dropped); fall back to the original rather than fail.
    String::from_utf8(out)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .unwrap_or_else(|| raw.to_owned())
}

/// `sha256(object, entry id, field, item bytes)`, hex: stable across Meta's retries.
fn hash_id(object: &str, account_id: Option<&str>, field: &str, item: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [object, account_id.unwrap_or(""), field] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update(item.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests;
