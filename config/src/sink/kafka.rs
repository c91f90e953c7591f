//! The `kafka` sink's settings: the bootstrap servers, the topic template, the message key,
//! compression, TLS and SASL, and how long one attempt waits for the broker.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

/// The `kafka` sink: each event is one record (value: the event's JSON) produced by an
/// idempotent producer with `acks=all`, with the event id, object, field, kind and
/// received_at as headers; the cursor advances only after the broker acknowledged every
/// record of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port` of one or more brokers; the client learns the rest of the cluster from
    /// them.
    pub bootstrap_servers: Vec<String>,
    /// Topic template; `{platform}`, `{object}`, `{field}`, `{kind}` and `{endpoint}` are
    /// replaced by the event's values (characters other than letters, digits, `.`, `_` and
    /// `-` become `_`). The topics must exist (or the cluster must create them on first use).
    #[serde(default = "default_kafka_topic")]
    pub topic: String,
    /// The record key, which picks the partition and so the order consumers see
    /// ([`KafkaKey`]).
    #[serde(default)]
    pub key: KafkaKey,
    /// Compression of record batches.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Use TLS with the system's CAs even without `ca_file`; any TLS file implies it.
    #[serde(default)]
    pub tls: bool,
    /// PEM bundle of the CAs the brokers' certificates must chain to (default: the
    /// system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `client_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslConfig>,
    /// How long one attempt waits for the broker's acknowledgement of a record (the
    /// client's own retries included) before the batch counts as failed and is retried
    /// with the sink's backoff.
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
}

/// SASL: the mechanism and the credentials, each from a file (a mounted Secret), read
/// whenever the sink (re)connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// File holding the user name.
    pub user_file: PathBuf,
    /// File holding the password.
    pub password_file: PathBuf,
}

/// The SASL mechanisms the sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// The password in clear (over TLS only, in production).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256 (RFC 7677).
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name as Kafka writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The record key. Kafka keeps the order of records within a partition, and records with
/// one key land in one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// `account_id/conversation`: the business account (WABA, page or Instagram account)
    /// and the other side of the conversation, `conversation.id` where the platform has
    /// one (WhatsApp groups), else `conversation.participant.id` (WhatsApp `from`/`wa_id`,
    /// Messenger and Instagram `sender.id`, a Page `feed` item's `from.id`); events about
    /// no person (template status, account updates) are keyed by the account alone. One
    /// conversation's messages and statuses stay in order.
    #[default]
    Conversation,
    /// The business account: everything of one account in order, less spread.
    Account,
    /// The event id: spread evenly, no order between events.
    EventId,
    /// No key: the client spreads records (sticky partitioning), no order.
    None,
}

/// Compression of the record batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// None.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl KafkaCompression {
    /// The codec's name as Kafka clients write it (`compression.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

fn default_kafka_topic() -> String {
    "meta.{platform}".to_owned()
}

fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Placeholders a Kafka topic template may use.
pub const TOPIC_PLACEHOLDERS: &[&str] =
    &["{platform}", "{object}", "{field}", "{kind}", "{endpoint}"];

impl KafkaSinkConfig {
    /// Produces to `bootstrap_servers` with the default topic template, key and timeout,
    /// in plain text without authentication.
    pub fn new(bootstrap_servers: Vec<String>) -> KafkaSinkConfig {
        KafkaSinkConfig {
            bootstrap_servers,
            topic: default_kafka_topic(),
            key: KafkaKey::default(),
            compression: KafkaCompression::default(),
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            sasl: None,
            delivery_timeout: default_delivery_timeout(),
        }
    }

    /// Whether the connection uses TLS: asked for, or implied by a TLS file.
    pub fn uses_tls(&self) -> bool {
        self.tls
            || self.ca_file.is_some()
            || self.client_cert_file.is_some()
            || self.client_key_file.is_some()
    }

    /// Checks the servers, the topic template, the TLS files and the timeout (`key`:
    /// `sinks[i].kafka`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        if self.bootstrap_servers.is_empty() {
            return Err(invalid(
                key("bootstrap_servers"),
                "name at least one broker (host:port)",
            ));
        }
        for (i, server) in self.bootstrap_servers.iter().enumerate() {
            let valid = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                && !server.contains(['/', ' ', ',']);
            if !valid {
                return Err(invalid(
                    key(&format!("bootstrap_servers[{i}]")),
                    format!("{server:?} is not host:port"),
                ));
            }
        }
        let mut rest = self.topic.clone();
        for placeholder in TOPIC_PLACEHOLDERS {
            rest = rest.replace(placeholder, "x");
        }
        // Kafka's own rule for topic names, with the placeholders standing for one
        // character each (their values are made safe when rendered).
        if rest.is_empty()
            || rest.len() > 249
            || rest == "."
            || rest == ".."
            || !rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                key("topic"),
                format!(
                    "{:?} must be a topic name (letters, digits, '.', '_', '-') using only {}",
                    self.topic,
                    TOPIC_PLACEHOLDERS.join(", ")
                ),
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                key("client_cert_file"),
                "client_cert_file and client_key_file go together",
            ));
        }
        if self.delivery_timeout < Duration::from_secs(1) {
            return Err(invalid(
                key("delivery_timeout"),
                "must be at least 1s (the broker's acknowledgement has to be awaited)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SinkKind;

    /// A configuration whose one sink is `kafka: {SINK}`.
    fn parse(sink: &str) -> Result<KafkaSinkConfig, String> {
        match crate::sink::parse_one_sink("kafka", sink)? {
            SinkKind::Kafka(kafka) => Ok(kafka),
            other => Err(format!("not kafka: {other:?}")),
        }
    }

    #[test]
    fn every_key_is_read() {
        let kafka = parse(
            "bootstrap_servers: [k1:9092, 'k2:9093'], topic: 'meta.{object}.{field}', key: account, \
             compression: zstd, ca_file: /s/ca.crt, client_cert_file: /s/tls.crt, \
             client_key_file: /s/tls.key, delivery_timeout: 5s, \
             sasl: {mechanism: SCRAM-SHA-512, user_file: /s/user, password_file: /s/pass}",
        )
        .expect("valid");
        assert_eq!(kafka.bootstrap_servers, ["k1:9092", "k2:9093"]);
        assert_eq!(kafka.topic, "meta.{object}.{field}");
        assert_eq!(kafka.key, KafkaKey::Account);
        assert_eq!(kafka.compression, KafkaCompression::Zstd);
        assert!(kafka.uses_tls());
        assert_eq!(kafka.delivery_timeout, Duration::from_secs(5));
        let sasl = kafka.sasl.expect("sasl");
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.password_file, PathBuf::from("/s/pass"));

        let plain = parse("bootstrap_servers: [k:9092]").expect("defaults");
        assert_eq!(plain, KafkaSinkConfig::new(vec!["k:9092".into()]));
        assert!(!plain.uses_tls());
        for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
            parse(&format!(
                "bootstrap_servers: [k:9092], sasl: {{mechanism: {mechanism}, user_file: /u, password_file: /p}}"
            ))
            .expect(mechanism);
        }
    }

    #[test]
    fn each_refusal_names_its_key() {
        for (sink, key, says) in [
            (
                "bootstrap_servers: []",
                "sinks[0].kafka.bootstrap_servers",
                "at least one",
            ),
            (
                "bootstrap_servers: [k:9092, 'kafka://k']",
                "sinks[0].kafka.bootstrap_servers[1]",
                "not host:port",
            ),
            (
                "bootstrap_servers: [k:9092], topic: 'a/{kind}'",
                "sinks[0].kafka.topic",
                "topic name",
            ),
            (
                "bootstrap_servers: [k:9092], topic: 'a.{type}'",
                "sinks[0].kafka.topic",
                "{platform}",
            ),
            (
                "bootstrap_servers: [k:9092], client_key_file: /k",
                "sinks[0].kafka.client_cert_file",
                "go together",
            ),
            (
                "bootstrap_servers: [k:9092], delivery_timeout: 10ms",
                "sinks[0].kafka.delivery_timeout",
                "at least 1s",
            ),
        ] {
            let err = parse(sink).expect_err(sink);
            assert!(
                err.contains(&format!("{key}: ")) && err.contains(says),
                "{sink}: {err}"
            );
        }
        for (sink, says) in [
            (
                "bootstrap_servers: [k:9092], sasl: {mechanism: GSSAPI, user_file: /u, password_file: /p}",
                "GSSAPI",
            ),
            (
                "bootstrap_servers: [k:9092], sasl: {mechanism: PLAIN, user_file: /u}",
                "password_file",
            ),
            ("bootstrap_servers: [k:9092], key: user", "user"),
            ("bootstrap_servers: [k:9092], compression: brotli", "brotli"),
        ] {
            // Refused by the parser, which names the line and the bad value.
            let err = parse(sink).expect_err(sink);
            assert!(
                err.contains("line 7") && err.contains(says),
                "{sink}: {err}"
            );
        }
    }
}
