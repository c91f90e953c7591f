//! What one message of the `nats` sink is: its subject, rendered from the template and the
//! event's fields, and its `Nats-Msg-Id` (the event id); and the stream's subject filter.

use serde::Deserialize;

/// The fields of an event the subject and message id are made of.
#[derive(Debug, Deserialize)]
pub(super) struct Head<'a> {
    #[serde(borrow)]
    pub(super) id: &'a str,
    #[serde(borrow, default)]
    platform: &'a str,
    #[serde(borrow, default)]
    object: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    field: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    kind: &'a str,
    #[serde(borrow, default)]
    endpoint: std::borrow::Cow<'a, str>,
}

/// The subject of an event: the template with each placeholder replaced by the event's
/// value, made safe as one subject token.
pub(super) fn render_subject(template: &str, head: &Head<'_>) -> String {
    let mut subject = template.to_owned();
    for (placeholder, value) in [
        ("{platform}", head.platform),
        ("{object}", &head.object),
        ("{field}", &head.field),
        ("{kind}", head.kind),
        ("{endpoint}", &head.endpoint),
    ] {
        if subject.contains(placeholder) {
            subject = subject.replace(placeholder, &token(value));
        }
    }
    subject
}

fn token(value: &str) -> String {
    if value.is_empty() {
        return "none".to_owned();
    }
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The stream's subject filter: each token holding a placeholder becomes `*`.
pub fn subject_filter(template: &str) -> String {
    template
        .split('.')
        .map(|t| if t.contains('{') { "*" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_rendered_and_filtered() {
        let head = Head {
            id: "x",
            platform: "whatsapp",
            object: "whatsapp_business_account".into(),
            field: "odd field.name".into(),
            kind: "message",
            endpoint: "default/wa".into(),
        };
        assert_eq!(
            render_subject("meta.{platform}.{field}.{kind}", &head),
            "meta.whatsapp.odd_field_name.message"
        );
        assert_eq!(
            render_subject("t.{endpoint}.{object}", &head),
            "t.default_wa.whatsapp_business_account"
        );
        assert_eq!(
            subject_filter("meta.{platform}.{field}.{kind}"),
            "meta.*.*.*"
        );
    }
}
