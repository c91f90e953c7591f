//! What one record of the `kafka` sink is: its topic, rendered from the template and the
//! event's fields; its key ([`KafkaKey`]); and its headers (event id, object, field, kind,
//! received_at), so consumers can route and de-duplicate without parsing the value.

use std::borrow::Cow;

use metahook_config::sink::kafka::KafkaKey;
use serde::Deserialize;

/// Header holding the event id: consumers de-duplicate by it (delivery is at least once).
pub const HEADER_EVENT_ID: &str = "metahook-event-id";
/// Header holding the event's `object`.
pub const HEADER_OBJECT: &str = "metahook-object";
/// Header holding the event's `field` (the change's type).
pub const HEADER_FIELD: &str = "metahook-field";
/// Header holding the event's `kind`.
pub const HEADER_KIND: &str = "metahook-kind";
/// Header holding the event's `received_at` (RFC 3339).
pub const HEADER_RECEIVED_AT: &str = "metahook-received-at";
/// Header `1` on a replayed event (docs/replay.md), beside its `replayed` field.
pub const HEADER_REPLAY: &str = "metahook-replay";

/// The fields of an event the topic, key and headers are made of.
#[derive(Debug, Deserialize)]
pub(super) struct Head<'a> {
    #[serde(borrow)]
    pub(super) id: Cow<'a, str>,
    #[serde(borrow, default)]
    platform: Cow<'a, str>,
    #[serde(borrow, default)]
    object: Cow<'a, str>,
    #[serde(borrow, default)]
    field: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    endpoint: Cow<'a, str>,
    #[serde(borrow, default)]
    received_at: Cow<'a, str>,
    #[serde(borrow, default)]
    account_id: Cow<'a, str>,
    #[serde(borrow, default)]
    conversation: Option<Conversation<'a>>,
    /// Set on a replayed event.
    #[serde(default)]
    replayed: bool,
}

#[derive(Debug, Deserialize)]
struct Conversation<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    participant: Option<Participant<'a>>,
}

#[derive(Debug, Deserialize)]
struct Participant<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

impl Head<'_> {
    /// The topic of the event: the template with each placeholder replaced by the event's
    /// value, made safe for a topic name.
    pub(super) fn topic(&self, template: &str) -> String {
        let mut topic = template.to_owned();
        for (placeholder, value) in [
            ("{platform}", &self.platform),
            ("{object}", &self.object),
            ("{field}", &self.field),
            ("{kind}", &self.kind),
            ("{endpoint}", &self.endpoint),
        ] {
            if topic.contains(placeholder) {
                topic = topic.replace(placeholder, &token(value));
            }
        }
        topic
    }

    /// The record key `choice` names, `None` for no key.
    pub(super) fn key(&self, choice: KafkaKey) -> Option<String> {
        match choice {
            KafkaKey::Conversation => {
                let other = self.conversation.as_ref().and_then(|c| {
                    c.id.as_deref().filter(|id| !id.is_empty()).or_else(|| {
                        c.participant
                            .as_ref()
                            .and_then(|p| p.id.as_deref())
                            .filter(|id| !id.is_empty())
                    })
                });
                Some(match other {
                    Some(other) => format!("{}/{other}", self.account_id),
                    None => self.account_id.clone().into_owned(),
                })
            }
            KafkaKey::Account => Some(self.account_id.clone().into_owned()),
            KafkaKey::EventId => Some(self.id.clone().into_owned()),
            KafkaKey::None => None,
        }
    }

    /// The record's headers: (name, value).
    pub(super) fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![
            (HEADER_EVENT_ID, self.id.as_ref()),
            (HEADER_OBJECT, &self.object),
            (HEADER_FIELD, &self.field),
            (HEADER_KIND, &self.kind),
            (HEADER_RECEIVED_AT, &self.received_at),
        ];
        if self.replayed {
            headers.push((HEADER_REPLAY, "1"));
        }
        headers
    }
}

fn token(value: &str) -> String {
    if value.is_empty() {
        return "none".to_owned();
    }
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(json: &str) -> Head<'_> {
        serde_json::from_str(json).expect("head")
    }

    #[test]
    fn topics_are_rendered_safely() {
        let event = head(
            r#"{"id":"x","platform":"whatsapp","object":"whatsapp_business_account",
               "field":"odd field/name","kind":"message","endpoint":"default/wa"}"#,
        );
        assert_eq!(
            event.topic("meta.{platform}.{field}.{kind}"),
            "meta.whatsapp.odd_field_name.message"
        );
        assert_eq!(
            event.topic("t-{endpoint}-{object}"),
            "t-default_wa-whatsapp_business_account"
        );
        assert_eq!(head(r#"{"id":"x"}"#).topic("m.{kind}"), "m.none");
    }

    #[test]
    fn keys_follow_the_conversation() {
        let whatsapp = head(
            r#"{"id":"wamid.1","account_id":"waba","conversation":{"participant":{"id":"15551234567"}}}"#,
        );
        assert_eq!(
            whatsapp.key(KafkaKey::Conversation).as_deref(),
            Some("waba/15551234567")
        );
        assert_eq!(whatsapp.key(KafkaKey::Account).as_deref(), Some("waba"));
        assert_eq!(whatsapp.key(KafkaKey::EventId).as_deref(), Some("wamid.1"));
        assert_eq!(whatsapp.key(KafkaKey::None), None);
        let group = head(
            r#"{"id":"g","account_id":"waba","conversation":{"id":"group-7","participant":{"id":"1555"}}}"#,
        );
        assert_eq!(
            group.key(KafkaKey::Conversation).as_deref(),
            Some("waba/group-7")
        );
        let account_update = head(r#"{"id":"a","account_id":"waba","conversation":null}"#);
        assert_eq!(
            account_update.key(KafkaKey::Conversation).as_deref(),
            Some("waba")
        );
    }

    #[test]
    fn headers_carry_the_event_id() {
        let event = head(
            r#"{"id":"wamid.1","object":"page","field":"messages","kind":"message","received_at":"2026-12-07T00:00:00Z"}"#,
        );
        assert_eq!(
            event.headers(),
            [
                (HEADER_EVENT_ID, "wamid.1"),
                (HEADER_OBJECT, "page"),
                (HEADER_FIELD, "messages"),
                (HEADER_KIND, "message"),
                (HEADER_RECEIVED_AT, "2026-12-07T00:00:00Z"),
            ]
        );
        let replayed = head(
            r#"{"replayed":true,"id":"wamid.1","object":"page","field":"messages","kind":"message","received_at":"2026-12-07T00:00:00Z"}"#,
        );
        assert_eq!(replayed.headers().last(), Some(&(HEADER_REPLAY, "1")));
    }
}
