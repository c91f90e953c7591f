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
use std::path::PathBuf;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use metahook_config::redact::{Userinfo, redact_url, split_userinfo};
use metahook_config::sink::nats::NatsSinkConfig;
use serde::Deserialize;

use super::{Delivered, Sink, SinkError};
use crate::spool::Spooled;

/// Events the consumer reads per batch for this sink: the cursor's fsync and the wait for
/// the last PubAcks are paid once per batch.
pub const BATCH: usize = 4096;

/// PubAcks awaited at most at once: how far publishing runs ahead of the acknowledgements.
/// Below async-nats' own limit of pending acks (5,000), which fails a publish beyond it.
pub const WINDOW: usize = 1024;

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
            context: format!("{what} ({})", redact_url(&self.config.url)),
            message: err.to_string(),
        }
    }

    /// The client's options: the authentication (re-read at each connection, the client's
    /// own reconnections included) and TLS (whose files the client reads at each connection).
    fn options(&self, inline: Option<Userinfo>) -> async_nats::ConnectOptions {
        let config = &self.config;
        let auth = match (
            &config.user_file,
            &config.password_file,
            &config.token_file,
            &config.nkey_seed_file,
            &config.credentials_file,
        ) {
            (Some(user), Some(password), ..) => Some(Auth::UserPassword {
                user: Value::File(user.clone()),
                password: Value::File(password.clone()),
            }),
            (_, _, Some(token), ..) => Some(Auth::Token(Value::File(token.clone()))),
            (_, _, _, Some(seed), _) => Some(Auth::NkeySeed(seed.clone())),
            (.., Some(creds)) => Some(Auth::Credentials(creds.clone())),
            _ => inline.map(|info| match info.password {
                Some(password) => Auth::UserPassword {
                    user: Value::Inline(info.user),
                    password: Value::Inline(password),
                },
                None => Auth::Token(Value::Inline(info.user)),
            }),
        };
        let mut options = match auth {
            Some(auth) => async_nats::ConnectOptions::with_auth_callback(move |nonce| {
                let auth = auth.clone();
                async move {
                    auth.answer(&nonce)
                        .await
                        .map_err(async_nats::AuthError::new)
                }
            }),
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.client_cert_file, &config.client_key_file) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        options
    }
}

/// A credential: a file's content, or what the URL carried.
#[derive(Clone)]
enum Value {
    File(PathBuf),
    Inline(String),
}

impl Value {
    async fn read(&self, key: &str) -> Result<String, String> {
        match self {
            Value::File(path) => read_secret(key, path).await,
            Value::Inline(value) => Ok(value.clone()),
        }
    }
}

/// How the sink authenticates; each file is read when the server asks (its nonce).
#[derive(Clone)]
enum Auth {
    UserPassword { user: Value, password: Value },
    Token(Value),
    NkeySeed(PathBuf),
    Credentials(PathBuf),
}

impl Auth {
    /// The CONNECT's credentials for the server's `nonce`. Errors name the key and file,
    /// never a value.
    async fn answer(&self, nonce: &[u8]) -> Result<async_nats::Auth, String> {
        let mut auth = async_nats::Auth::new();
        match self {
            Auth::UserPassword { user, password } => {
                auth.username = Some(user.read("nats.user_file").await?);
                auth.password = Some(password.read("nats.password_file").await?);
            }
            Auth::Token(token) => auth.token = Some(token.read("nats.token_file").await?),
            Auth::NkeySeed(path) => {
                let seed = read_secret("nats.nkey_seed_file", path).await?;
                let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
                    format!(
                        "nats.nkey_seed_file {} holds no NKey seed: {e}",
                        path.display()
                    )
                })?;
                auth.signature = Some(sign(&pair, nonce, "nats.nkey_seed_file")?);
                auth.nkey = Some(pair.public_key());
            }
            Auth::Credentials(path) => {
                let creds = read_secret("nats.credentials_file", path).await?;
                let (jwt, seed) = parse_creds(&creds).ok_or_else(|| {
                    format!(
                        "nats.credentials_file {} is not a .creds file (a user JWT and an NKey seed)",
                        path.display()
                    )
                })?;
                let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| {
                    format!(
                        "nats.credentials_file {} holds no valid NKey seed: {e}",
                        path.display()
                    )
                })?;
                auth.signature = Some(sign(&pair, nonce, "nats.credentials_file")?);
                auth.jwt = Some(jwt.to_owned());
            }
        }
        Ok(auth)
    }
}

fn sign(pair: &nkeys::KeyPair, nonce: &[u8], key: &str) -> Result<Vec<u8>, String> {
    pair.sign(nonce)
        .map_err(|e| format!("cannot sign the server's nonce with {key}: {e}"))
}

/// A secret file's text without its trailing newlines; the error names the key and file.
async fn read_secret(key: &str, path: &std::path::Path) -> Result<String, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{key} {} is not UTF-8 text", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The user JWT and the NKey seed of a `.creds` file: the first line after each
/// `-----BEGIN ...-----` marker.
fn parse_creds(text: &str) -> Option<(&str, &str)> {
    let after = |marker: &str| {
        let start = text.find(marker)?;
        text[start..]
            .lines()
            .skip(1)
            .map(str::trim)
            .find(|line| !line.is_empty())
    };
    let jwt = after("BEGIN NATS USER JWT")?;
    let seed = after("BEGIN USER NKEY SEED")?;
    (!jwt.starts_with('-') && !seed.starts_with('-')).then_some((jwt, seed))
}

impl Sink for NatsSink {
    async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
        if self.context.is_some() {
            return Ok(None);
        }
        // The client never sees credentials in its URL (its errors and debug logs show it).
        let (servers, inline) = split_userinfo(&self.config.url);
        let client = self
            .options(inline)
            .connect(servers.as_str())
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
    fn creds_files_are_parsed() {
        let creds = "-----BEGIN NATS USER JWT-----\neyJhbGc.jwt\n------END NATS USER JWT------\n\n\
                     ** IMPORTANT **\n\n-----BEGIN USER NKEY SEED-----\nSUAEXAMPLE\n------END USER NKEY SEED------\n";
        assert_eq!(parse_creds(creds), Some(("eyJhbGc.jwt", "SUAEXAMPLE")));
        assert_eq!(parse_creds("just a token"), None);
    }

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
