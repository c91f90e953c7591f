//! What a replay selects: the request as the admin endpoint and the command line take it
//! (JSON, docs/replay.md), and the pure matching of one event against it.

pub use metahook_config::replay::ReplayRequest;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A request that cannot be carried out as written; names the member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why}")]
pub struct RequestError {
    /// The request member (`since`, `until`, `sink`).
    pub field: &'static str,
    /// What is wrong.
    pub why: String,
}

/// A request's window and filters, parsed.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Inclusive start.
    pub since: OffsetDateTime,
    /// Exclusive end.
    pub until: Option<OffsetDateTime>,
    objects: Vec<String>,
    fields: Vec<String>,
    endpoints: Vec<String>,
    event_ids: std::collections::HashSet<String>,
}

/// The members of an event a selection looks at.
#[derive(Debug, Deserialize)]
pub struct EventView<'a> {
    /// `id`.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// `object`.
    #[serde(borrow, default)]
    pub object: std::borrow::Cow<'a, str>,
    /// `field`.
    #[serde(borrow, default)]
    pub field: std::borrow::Cow<'a, str>,
    /// `endpoint`.
    #[serde(borrow, default)]
    pub endpoint: std::borrow::Cow<'a, str>,
    /// `received_at` (RFC 3339).
    #[serde(borrow, default)]
    pub received_at: std::borrow::Cow<'a, str>,
}

impl<'a> EventView<'a> {
    /// The members of a stored event; `None` for bytes that are not an event.
    pub fn of(json: &'a [u8]) -> Option<EventView<'a>> {
        serde_json::from_slice(json).ok()
    }

    /// Its `received_at`, or `fallback_millis` (when the record was written) when it has
    /// none that parses.
    pub fn received(&self, fallback_millis: u64) -> OffsetDateTime {
        OffsetDateTime::parse(&self.received_at, &Rfc3339)
            .unwrap_or_else(|_| from_millis(fallback_millis))
    }
}

/// Unix millis as a time (the epoch when out of range).
pub fn from_millis(millis: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A time as RFC 3339.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn time(field: &'static str, text: &str) -> Result<OffsetDateTime, RequestError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|err| RequestError {
        field,
        why: format!("{text:?} is not an RFC 3339 time such as 2026-12-07T10:00:00Z ({err})"),
    })
}

/// The window and filters of `request`; refuses what cannot be carried out, naming the
/// member.
pub fn selection(request: &ReplayRequest) -> Result<Selection, RequestError> {
    if request.sink.trim().is_empty() {
        return Err(RequestError {
            field: "sink",
            why: "must name a configured sink".into(),
        });
    }
    let since = time("since", &request.since)?;
    let until = request
        .until
        .as_deref()
        .map(|u| time("until", u))
        .transpose()?;
    if let Some(until) = until
        && until <= since
    {
        return Err(RequestError {
            field: "until",
            why: format!("{} is not after since ({})", rfc3339(until), rfc3339(since)),
        });
    }
    Ok(Selection {
        since,
        until,
        objects: request.objects.clone(),
        fields: request.fields.clone(),
        endpoints: request.endpoints.clone(),
        event_ids: request.event_ids.iter().cloned().collect(),
    })
}

impl Selection {
    /// Whether the event is selected; `received` is its `received_at`.
    pub fn matches(&self, event: &EventView<'_>, received: OffsetDateTime) -> bool {
        let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        received >= self.since
            && self.until.is_none_or(|until| received < until)
            && any(&self.objects, &event.object)
            && any(&self.fields, &event.field)
            && any(&self.endpoints, &event.endpoint)
            && (self.event_ids.is_empty() || self.event_ids.contains(event.id.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ReplayRequest {
        ReplayRequest {
            sink: "pg".into(),
            since: "2026-12-07T10:00:00Z".into(),
            until: Some("2026-12-07T11:00:00Z".into()),
            objects: Vec::new(),
            fields: Vec::new(),
            endpoints: Vec::new(),
            event_ids: Vec::new(),
            dead_letters: false,
            dry_run: false,
        }
    }

    fn event(id: &str, object: &str, field: &str, at: &str) -> Vec<u8> {
        format!(r#"{{"id":"{id}","object":"{object}","field":"{field}","endpoint":"wa","received_at":"{at}"}}"#).into_bytes()
    }

    fn selected(selection: &Selection, json: &[u8]) -> bool {
        let view = EventView::of(json).expect("event");
        let at = view.received(0);
        selection.matches(&view, at)
    }

    #[test]
    fn the_window_is_half_open_and_filters_select_only_what_they_name() {
        let all = selection(&request()).expect("valid");
        assert!(selected(
            &all,
            &event("a", "page", "feed", "2026-12-07T10:00:00Z")
        ));
        assert!(!selected(
            &all,
            &event("a", "page", "feed", "2026-12-07T11:00:00Z")
        ));
        assert!(!selected(
            &all,
            &event("a", "page", "feed", "2026-12-07T09:59:59.999Z")
        ));
        let filtered = selection(&ReplayRequest {
            objects: vec!["page".into()],
            fields: vec!["feed".into()],
            event_ids: vec!["a".into(), "b".into()],
            ..request()
        })
        .expect("valid");
        assert!(selected(
            &filtered,
            &event("b", "page", "feed", "2026-12-07T10:30:00Z")
        ));
        assert!(!selected(
            &filtered,
            &event("c", "page", "feed", "2026-12-07T10:30:00Z")
        ));
        assert!(!selected(
            &filtered,
            &event("a", "instagram", "feed", "2026-12-07T10:30:00Z")
        ));
        assert!(!selected(
            &filtered,
            &event("a", "page", "messages", "2026-12-07T10:30:00Z")
        ));
    }

    #[test]
    fn errors_name_the_member() {
        let err = selection(&ReplayRequest {
            since: "yesterday".into(),
            ..request()
        })
        .expect_err("since");
        assert_eq!(err.field, "since");
        let err = selection(&ReplayRequest {
            until: Some("2026-12-07T09:00:00Z".into()),
            ..request()
        })
        .expect_err("until");
        assert_eq!(err.field, "until");
        let json =
            r#"{"sink":"pg","since":"2026-12-07T10:00:00Z","fields":["feed"],"dry_run":true}"#;
        let parsed: ReplayRequest = serde_json::from_str(json).expect("contract");
        assert!(parsed.dry_run && parsed.fields == ["feed"]);
        assert!(
            serde_json::from_str::<ReplayRequest>(r#"{"sink":"pg","since":"x","sinc":1}"#).is_err()
        );
    }
}
