//! The `nats` sink: JetStream publish with `Nats-Msg-Id` = event id.
//!
//! A batch is published through a sliding window: up to [`WINDOW`] messages are published
//! ahead of their PubAcks, and the oldest PubAck is awaited only when the window is full, so
//! publishing never stops to wait for a whole group of acknowledgements. The consumer hands
//! this sink large batches ([`BATCH`] events), so the one full stop per batch (the last
//! PubAcks, then the cursor's fsync) is rare. The cursor moves only when every PubAck of a
//! batch arrived; after a failure the batch is published again from its first event, and
//! JetStream drops what it already stored through the message ids (within the stream's
//! duplicate window), so a restart or an outage delivers each event into the stream once.

use std::collections::VecDeque;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Delivered, Sink, SinkError};
use crate::config::{ConfigError, invalid};
use crate::spool::Spooled;

/// The `nats` sink: each event is published to JetStream with `Nats-Msg-Id` = event id, so
/// the stream drops redeliveries within its duplicate window; the cursor advances only
/// after JetStream acknowledged every event of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject template; `{platform}`, `{object}`, `{field}`, `{kind}` and `{endpoint}` are
    /// replaced by the event's values (characters other than letters, digits, `_` and `-`
    /// become `_`).
    #[serde(default = "default_nats_subject")]
    pub subject: String,
    /// The stream the subjects belong to; required with `create_stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Create the stream (subjects: the template with each placeholder token as `*`) if it
    /// does not exist.
    #[serde(default)]
    pub create_stream: bool,
}

fn default_nats_subject() -> String {
    "meta.{platform}.{field}.{kind}".to_owned()
}

impl NatsSinkConfig {
    /// Publishes to `url` with the default subject template and no stream management.
    pub fn new(url: impl Into<String>) -> NatsSinkConfig {
        NatsSinkConfig {
            url: url.into(),
            subject: default_nats_subject(),
            stream: None,
            create_stream: false,
        }
    }

    /// Checks the URL, the subject template and the stream name (`key`: `sinks[i].nats`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        if self.url.trim().is_empty() {
            return Err(invalid(key("url"), "must not be empty"));
        }
        let mut rest = self.subject.clone();
        for placeholder in SUBJECT_PLACEHOLDERS {
            rest = rest.replace(placeholder, "x");
        }
        if self.subject.is_empty()
            || rest.contains(['{', '}', ' ', '*', '>'])
            || rest.split('.').any(str::is_empty)
        {
            return Err(invalid(
                key("subject"),
                format!(
                    "{:?} must be dot-separated tokens using only {}",
                    self.subject,
                    SUBJECT_PLACEHOLDERS.join(", ")
                ),
            ));
        }
        match &self.stream {
            Some(stream)
                if stream.is_empty() || stream.contains(['.', ' ', '*', '>', '/', '\\']) =>
            {
                Err(invalid(
                    key("stream"),
                    format!("{stream:?} is not a valid stream name"),
                ))
            }
            None if self.create_stream => {
                Err(invalid(key("stream"), "required with create_stream: true"))
            }
            _ => Ok(()),
        }
    }

    /// The sink; it connects when the consumer starts.
    pub(crate) fn build(&self) -> NatsSink {
        NatsSink::new(self.clone())
    }
}

/// Events the consumer reads per batch for this sink: the cursor's fsync and the wait for
/// the last PubAcks are paid once per batch.
pub const BATCH: usize = 4096;

/// PubAcks awaited at most at once: how far publishing runs ahead of the acknowledgements.
/// Below async-nats' own limit of pending acks (5,000), which fails a publish beyond it.
pub const WINDOW: usize = 1024;

/// Placeholders a NATS subject template may use.
pub const SUBJECT_PLACEHOLDERS: &[&str] =
    &["{platform}", "{object}", "{field}", "{kind}", "{endpoint}"];

/// Publishes events to NATS JetStream.
#[derive(Debug)]
pub struct NatsSink {
    config: NatsSinkConfig,
    context: Option<jetstream::Context>,
}

/// The fields of an event the subject and message id are made of.
#[derive(Debug, Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: &'a str,
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

impl NatsSink {
    /// A sink for `config`; it connects on open.
    pub fn new(config: NatsSinkConfig) -> NatsSink {
        NatsSink {
            config,
            context: None,
        }
    }

    fn remote(&self, what: &str, err: impl std::fmt::Display) -> SinkError {
        SinkError::Remote {
            context: format!("{what} ({})", self.config.url),
            message: err.to_string(),
        }
    }
}

impl Sink for NatsSink {
    async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
        if self.context.is_some() {
            return Ok(None);
        }
        let client = async_nats::connect(self.config.url.as_str())
            .await
            .map_err(|e| self.remote("cannot connect to NATS", e))?;
        let context = jetstream::new(client);
        if let (true, Some(name)) = (self.config.create_stream, &self.config.stream) {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject_filter(&self.config.subject)],
                ..stream::Config::default()
            };
            context
                .get_or_create_stream(config)
                .await
                .map_err(|e| self.remote(&format!("cannot create stream {name}"), e))?;
        }
        self.context = Some(context);
        Ok(None)
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        let Some(context) = self.context.clone() else {
            return Err(self.remote("NATS sink is not open", "not connected"));
        };
        let mut pending = VecDeque::with_capacity(WINDOW.min(batch.len()));
        for event in batch {
            if pending.len() >= WINDOW
                && let Some(oldest) = pending.pop_front()
            {
                self.acknowledged(oldest).await?;
            }
            let head: Head<'_> = serde_json::from_slice(&event.json)
                .map_err(|e| self.remote("spooled event is not an event", e))?;
            let subject = render_subject(&self.config.subject, &head);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", head.id);
            let ack = context
                .publish_with_headers(subject, headers, Bytes::copy_from_slice(&event.json))
                .await
                .map_err(|e| self.remote("cannot publish", e))?;
            pending.push_back(ack);
        }
        for ack in pending {
            self.acknowledged(ack).await?;
        }
        Ok(Delivered::all(0))
    }

    fn batch_size(&self) -> usize {
        BATCH
    }
}

impl NatsSink {
    /// Waits for one PubAck. On an error the PubAcks still pending are dropped (async-nats
    /// collects them in the background) and the whole batch is published again.
    async fn acknowledged(
        &self,
        ack: jetstream::context::PublishAckFuture,
    ) -> Result<(), SinkError> {
        ack.await
            .map(drop)
            .map_err(|e| self.remote("no acknowledgement from JetStream", e))
    }
}

/// The subject of an event: the template with each placeholder replaced by the event's
/// value, made safe as one subject token.
fn render_subject(template: &str, head: &Head<'_>) -> String {
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
