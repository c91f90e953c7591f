//! The JSON log line, written directly.
//!
//! tracing-subscriber's JSON formatter (flattened, no current span) serializes each event
//! through a serde map over an adaptor that checks every piece for UTF-8; on the request
//! path that cost about 6% of the receiver's CPU (one line per request, docs/benchmarks.md).
//! [`JsonLines`] writes the same line, byte for byte, straight into the line buffer. Events
//! inside a span are handed to tracing-subscriber's own formatter, which adds their
//! `spans`; the receiver itself opens none. [`SecondStamp`] writes tracing-subscriber's
//! timestamp, reusing its date and time up to the second within a second.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::UNIX_EPOCH;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per line: `timestamp`, `level`, the event's fields in order (`message`
/// among them), `target`, exactly as tracing-subscriber's
/// `json().flatten_event(true).with_current_span(false)` writes them.
#[derive(Debug, Clone)]
pub struct JsonLines<T = SecondStamp> {
    timer: T,
    /// For events inside a span (their line carries the span list).
    in_span: Format<Json, T>,
}

impl JsonLines<SecondStamp> {
    /// Lines stamped with the system time (RFC 3339, microseconds, UTC).
    pub fn new() -> Self {
        Self::with_timer(SecondStamp)
    }
}

impl Default for JsonLines<SecondStamp> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: FormatTime + Clone> JsonLines<T> {
    /// Lines stamped by `timer`.
    pub fn with_timer(timer: T) -> Self {
        let in_span = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_timer(timer.clone());
        JsonLines { timer, in_span }
    }
}

impl<S, N, T> FormatEvent<S, N> for JsonLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.parent().is_some() || ctx.lookup_current().is_some() {
            return self.in_span.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        self.timer.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(level_name(*meta.level()))?;
        writer.write_str("\",")?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("\"target\":")?;
        write_string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// The system time as tracing-subscriber's [`SystemTime`] writes it
/// (`2026-12-02T03:33:11.123456Z`), with the part up to the second formatted once a second
/// per thread rather than for every line.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecondStamp;

thread_local! {
    /// The second last stamped on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for SecondStamp {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        let Ok(since_epoch) = std::time::SystemTime::now().duration_since(UNIX_EPOCH) else {
            return SystemTime.format_time(writer);
        };
        let (second, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
        SECOND.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                cached.1.clear();
                cached.0 = u64::MAX;
                if !write_second(&mut cached.1, second) {
                    // Past year 9999: tracing-subscriber's own rendering.
                    return SystemTime.format_time(writer);
                }
                cached.0 = second;
            }
            writer.write_str(&cached.1)?;
            write_fraction(writer, micros)
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second; false (nothing written) outside years 1970–9999.
fn write_second(out: &mut String, second: u64) -> bool {
    let Some(at) = i64::try_from(second)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|at| at.year() <= 9999)
    else {
        return false;
    };
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
    .is_ok()
}

/// `.ffffffZ`: the microseconds, six digits.
fn write_fraction(writer: &mut Writer<'_>, micros: u32) -> fmt::Result {
    let mut digits = *b".000000Z";
    let mut rest = micros % 1_000_000;
    for slot in digits[1..7].iter_mut().rev() {
        // `rest % 10` is a single digit.
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// As tracing-serde names levels.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// Writes each field as `"name":value,` (serde_json's rendering of the value).
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = write_string(self.writer, field.name())
            .and_then(|()| self.writer.write_char(':'))
            .and_then(|()| value(self.writer))
            .and_then(|()| self.writer.write_char(','));
    }
}

impl Visit for Fields<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |w| write_json_number(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| write_string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaping(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A floating-point number as serde_json writes it (shortest round-trip form; `null` for
/// NaN and infinities).
fn write_json_number(writer: &mut Writer<'_>, value: f64) -> fmt::Result {
    let mut buffer = [0u8; 40];
    let mut out = std::io::Cursor::new(&mut buffer[..]);
    serde_json::to_writer(&mut out, &value).map_err(|_| fmt::Error)?;
    let written = usize::try_from(out.position()).map_err(|_| fmt::Error)?;
    let text = std::str::from_utf8(&buffer[..written]).map_err(|_| fmt::Error)?;
    writer.write_str(text)
}

/// `text` as a JSON string, escaped as serde_json escapes.
fn write_string(writer: &mut Writer<'_>, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaping(writer).write_str(text)?;
    writer.write_char('"')
}

/// Escapes what is written through it as the inside of a JSON string: `"`, `\` and the
/// control characters, with serde_json's short forms (`\n`, `\t`, ...) where it has them.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
            // Most values (names, paths, outcomes): nothing to escape.
            return self.0.write_str(text);
        }
        let mut start = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Every escaped byte is ASCII, so the cuts fall between characters.
            self.0.write_str(&text[start..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = at + 1;
        }
        self.0.write_str(&text[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;

    /// One fixed instant, so both formatters' lines can be compared whole.
    #[derive(Debug, Clone)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-02T03:33:11.123456Z")
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8")
        }
    }

    #[derive(Debug)]
    struct Odd;

    impl fmt::Display for Odd {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("odd \"display\"\n\u{1}\u{7f}")
        }
    }

    impl std::error::Error for Odd {}

    /// Every kind of field, and strings with everything JSON escapes.
    fn emit_all() {
        let awkward = "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} nul \u{0} \
                       bs \u{8} ff \u{c} us \u{1f} del \u{7f} é ✓ 😀";
        tracing::info!(target: "metahook::request", endpoint = "whatsapp", method = "POST", path = "/webhooks/whatsapp", status = 200u16, outcome = "accepted", bytes = 1395usize, duplicate = false, duration_ms = 0.123_456_f64, detail = "", "request");
        tracing::warn!(
            text = awkward,
            "a {} message with {:?}",
            "formatted",
            awkward
        );
        tracing::error!(error = %Odd, debug = ?Odd, "failed");
        tracing::debug!(
            negative = -42i64,
            big = u64::MAX,
            huge = i128::MIN,
            small = 1u128 << 100,
            "numbers"
        );
        for value in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e20,
            1e-7,
            123_456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            tracing::info!(value, "float");
        }
        tracing::info!(r#type = "raw identifier", "r#");
        tracing::trace!(flag = true, "no message fields besides this");
        tracing::info!(target: "some::dependency", "only a message");
        tracing::info!(
            error = &Odd as &(dyn std::error::Error + 'static),
            "an error value"
        );
        tracing::info!(bytes_field = ?b"bytes\x00", list = ?vec!["a", "b\""], "debug values");
    }

    fn lines(
        format: impl FormatEvent<tracing_subscriber::Registry, JsonFields> + Send + Sync + 'static,
    ) -> String {
        let out = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(Level::TRACE)
            .with_writer(out.clone())
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, emit_all);
        out.text()
    }

    #[test]
    fn lines_are_byte_for_byte_tracing_subscribers_flattened_json() {
        let ours = lines(JsonLines::with_timer(Fixed));
        let theirs = lines(
            tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_timer(Fixed),
        );
        assert_eq!(ours.lines().count(), 21, "{ours}");
        for (ours, theirs) in ours.lines().zip(theirs.lines()) {
            assert_eq!(ours, theirs);
            let parsed: serde_json::Value = serde_json::from_str(ours).expect("a JSON line");
            assert!(parsed.is_object(), "{ours}");
        }
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_stamp_is_tracing_subscribers_system_time() {
        let stamp = |timer: &dyn Fn(&mut Writer<'_>) -> fmt::Result| {
            let mut text = String::new();
            timer(&mut Writer::new(&mut text)).expect("stamp");
            text
        };
        for _ in 0..1_000 {
            let theirs = stamp(&|w| SystemTime.format_time(w));
            let ours = stamp(&|w| SecondStamp.format_time(w));
            let again = stamp(&|w| SystemTime.format_time(w));
            assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
            // Taken between the two: equal to one of them up to the second, and in order.
            assert!(
                ours[..19] == theirs[..19] || ours[..19] == again[..19],
                "{ours} / {theirs}"
            );
            assert!(
                theirs <= ours && ours <= again,
                "{theirs} <= {ours} <= {again}"
            );
        }
    }

    #[test]
    fn seconds_and_fractions_are_written_as_tracing_subscriber_writes_them() {
        let cases = [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_764_646_391, "2025-12-02T03:33:11"),
            (4_107_542_399, "2100-02-28T23:59:59"),
            (253_402_300_799, "9999-12-31T23:59:59"),
        ];
        for (second, expected) in cases {
            let mut out = String::new();
            assert!(write_second(&mut out, second));
            assert_eq!(out, expected);
        }
        let mut out = String::new();
        assert!(!write_second(&mut out, 253_402_300_800), "year 10000");
        assert!(out.is_empty());
        for (micros, expected) in [
            (0, ".000000Z"),
            (7, ".000007Z"),
            (123_456, ".123456Z"),
            (999_999, ".999999Z"),
        ] {
            let mut text = String::new();
            write_fraction(&mut Writer::new(&mut text), micros).expect("fraction");
            assert_eq!(text, expected);
        }
    }

    #[test]
    fn events_inside_a_span_keep_their_span_list() {
        let capture = |format: JsonLines<Fixed>| {
            let out = Lines::default();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(out.clone())
                .event_format(format)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("reconcile", subscription = "a \"quoted\" name");
                let _entered = span.enter();
                tracing::info!(step = 1u64, "inside");
            });
            out.text()
        };
        let line = capture(JsonLines::with_timer(Fixed));
        let parsed: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON line");
        assert_eq!(parsed["spans"][0]["name"], "reconcile", "{line}");
        assert_eq!(parsed["spans"][0]["subscription"], "a \"quoted\" name");
        assert_eq!(parsed["step"], 1);
        assert!(parsed.get("span").is_none(), "no current span: {line}");
    }
}
