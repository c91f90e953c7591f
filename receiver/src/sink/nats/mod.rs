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
//! A replayed event has a message id of its own ([`replay_msg_id`]), so the stream stores it
//! again.

mod auth;
mod request;

use std::collections::VecDeque;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use metahook_config::redact::{Userinfo, redact_url, split_userinfo};
use metahook_config::sink::nats::NatsSinkConfig;

use self::auth::{Auth, Value};
pub use self::request::subject_filter;
use self::request::{Head, render_subject};
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
            if crate::event::is_replayed(&event.json) {
                headers.insert("Nats-Msg-Id", replay_msg_id(head.id).as_str());
                headers.insert("Metahook-Replay", "1");
            } else {
                headers.insert("Nats-Msg-Id", head.id);
            }
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

/// A replayed event's `Nats-Msg-Id`: the event id with `:replay` after it. JetStream keeps
/// the ids it stored for the stream's duplicate window (2 minutes by default, and purging
/// the stream does not forget them), so with the event id itself a replay of a recent event
/// would be dropped as a duplicate of the first delivery. With its own id a replay is stored;
/// a retried batch of that replay is still de-duplicated, and so is a second replay of the
/// same event inside the window of the first (docs/replay.md).
fn replay_msg_id(event_id: &str) -> String {
    format!("{event_id}:replay")
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
