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
use serde::{Deserialize, Serialize};

use super::{Delivered, Sink, SinkError};
use crate::config::{ConfigError, invalid};
use crate::redact::{Userinfo, redact_url, split_userinfo};
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
    /// File holding the user name (with `password_file`). The credential files are re-read
    /// at every (re)connection, so a rotated Secret is used at the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_file: Option<PathBuf>,
    /// File holding the password (with `user_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding an authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU...`); the server's nonce is signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed, as `nsc` writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// PEM bundle of the CAs the server's certificate must chain to (default: the system's);
    /// any TLS key makes TLS required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `client_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
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
            user_file: None,
            password_file: None,
            token_file: None,
            nkey_seed_file: None,
            credentials_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    /// Checks the URL, the credentials (at most one way to authenticate), the TLS files, the
    /// subject template and the stream name (`key`: `sinks[i].nats`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        if self.url.trim().is_empty() {
            return Err(invalid(key("url"), "must not be empty"));
        }
        if self.user_file.is_some() != self.password_file.is_some() {
            let missing = if self.user_file.is_some() {
                "password_file"
            } else {
                "user_file"
            };
            return Err(invalid(
                key(missing),
                "user_file and password_file go together",
            ));
        }
        let methods: Vec<&str> = [
            (
                split_userinfo(&self.url).1.is_some(),
                "url (user:password@)",
            ),
            (self.user_file.is_some(), "user_file/password_file"),
            (self.token_file.is_some(), "token_file"),
            (self.nkey_seed_file.is_some(), "nkey_seed_file"),
            (self.credentials_file.is_some(), "credentials_file"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if let [first, second, ..] = methods.as_slice() {
            let second_key = second.split(['/', ' ']).next().unwrap_or(second);
            return Err(invalid(
                key(second_key),
                format!("choose one way to authenticate: {first} and {second} are both set"),
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                key("client_cert_file"),
                "client_cert_file and client_key_file go together",
            ));
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
    use crate::config::{Config, SinkKind};

    /// A configuration whose one sink is `nats: {SINK}`.
    fn parse(sink: &str) -> Result<NatsSinkConfig, String> {
        let yaml = format!(
            "listen: 127.0.0.1:8080\nendpoints:\n  - {{name: wa, path: /wa, app_secret_file: a, verify_token_file: v}}\nspool: {{dir: data}}\nsinks:\n  - name: bus\n    nats: {{{sink}}}\n"
        );
        match Config::parse(&yaml).map_err(|e| e.to_string())?.sinks[0]
            .kind
            .clone()
        {
            SinkKind::Nats(nats) => Ok(nats),
            other => Err(format!("not nats: {other:?}")),
        }
    }

    #[test]
    fn credentials_and_tls_keys_are_read() {
        let nats = parse(
            "url: nats://n:4222, user_file: /s/user, password_file: /s/pass, ca_file: /s/ca.crt, \
             client_cert_file: /s/tls.crt, client_key_file: /s/tls.key",
        )
        .expect("valid");
        assert_eq!(nats.user_file, Some(PathBuf::from("/s/user")));
        assert_eq!(nats.password_file, Some(PathBuf::from("/s/pass")));
        assert_eq!(nats.ca_file, Some(PathBuf::from("/s/ca.crt")));
        assert_eq!(nats.client_cert_file, Some(PathBuf::from("/s/tls.crt")));
        assert_eq!(nats.client_key_file, Some(PathBuf::from("/s/tls.key")));
        for one in [
            "token_file: /s/t",
            "nkey_seed_file: /s/seed",
            "credentials_file: /s/user.creds",
        ] {
            parse(&format!("url: nats://n:4222, {one}")).expect(one);
        }
        // A URL with credentials stays usable on a laptop.
        parse("url: nats://bob:pw@n:4222").expect("userinfo");
    }

    #[test]
    fn each_refusal_names_its_key() {
        for (sink, key, says) in [
            (
                "url: nats://n, user_file: /u",
                "sinks[0].nats.password_file",
                "go together",
            ),
            (
                "url: nats://n, password_file: /p",
                "sinks[0].nats.user_file",
                "go together",
            ),
            (
                "url: nats://n, user_file: /u, password_file: /p, token_file: /t",
                "sinks[0].nats.token_file",
                "choose one way to authenticate",
            ),
            (
                "url: nats://n, token_file: /t, nkey_seed_file: /s",
                "sinks[0].nats.nkey_seed_file",
                "choose one way to authenticate",
            ),
            (
                "url: nats://n, nkey_seed_file: /s, credentials_file: /c",
                "sinks[0].nats.credentials_file",
                "choose one way to authenticate",
            ),
            (
                "url: 'nats://bob:pw@n', token_file: /t",
                "sinks[0].nats.token_file",
                "url (user:password@) and token_file",
            ),
            (
                "url: nats://n, client_cert_file: /c",
                "sinks[0].nats.client_cert_file",
                "go together",
            ),
            (
                "url: nats://n, client_key_file: /k",
                "sinks[0].nats.client_cert_file",
                "go together",
            ),
        ] {
            let err = parse(sink).expect_err(sink);
            assert!(
                err.contains(&format!("{key}: ")) && err.contains(says),
                "{sink}: {err}"
            );
            assert!(!err.contains("pw"), "no password in {err}");
        }
    }

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
