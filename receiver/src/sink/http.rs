//! The `http` sink: POST events as JSON to the user's service.
//!
//! With `batch_size: 1` (the default) each request is one event, with `Idempotency-Key` =
//! event id. With a larger `batch_size` each request is a JSON array of up to that many
//! events, each keeping its `id`, with `Idempotency-Key` = hex SHA-256 of the ids (one per
//! line). With a signing secret every request carries `X-Metahook-Signature: sha256=<hex
//! HMAC-SHA256 of the whole body>` so the receiving side can verify it came from metahook.
//! Answers: 2xx delivered; 408, 429, 5xx, timeouts and connection errors are retried (the
//! whole batch, honouring `Retry-After`); any other 4xx is a permanent refusal: a refused
//! event becomes a dead letter at once, and a refused array is sent again one event per
//! request (as one-element arrays), so only the events refused on their own become dead
//! letters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BATCH_SIZE, Delivered, Sink, SinkError};
use crate::config::{ConfigError, invalid};
use crate::spool::Spooled;
use crate::{secrets, verify};

/// The `http` sink: POST events as JSON, one per request or `batch_size` per JSON array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The URL events are POSTed to.
    pub url: String,
    /// File with the secret of the `X-Metahook-Signature` HMAC (no header when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_file: Option<PathBuf>,
    /// Time one POST may take before it is retried.
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// POSTs in flight at once.
    #[serde(default = "default_http_concurrency")]
    pub concurrency: usize,
    /// Events per POST: 1 sends each event as a JSON object; more sends JSON arrays of up
    /// to this many events (for services that accept them), at most [`MAX_BATCH_SIZE`].
    #[serde(default = "default_http_batch_size")]
    pub batch_size: usize,
    /// PEM bundle of the CAs the server's certificate must chain to (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mTLS to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_http_concurrency() -> usize {
    8
}

fn default_http_batch_size() -> usize {
    1
}

/// Largest `batch_size`: an array of 1,000 events is a few megabytes.
pub const MAX_BATCH_SIZE: usize = 1000;

impl HttpSinkConfig {
    /// POSTs to `url` with the default timeout and concurrency, unsigned, over the system's
    /// roots.
    pub fn new(url: impl Into<String>) -> HttpSinkConfig {
        HttpSinkConfig {
            url: url.into(),
            signing_secret_file: None,
            timeout: default_http_timeout(),
            concurrency: default_http_concurrency(),
            batch_size: default_http_batch_size(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    /// Checks the URL's scheme, the batch size and the client certificate pair (`key`:
    /// `sinks[i].http`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid(
                format!("{key}.url"),
                format!("{:?} must be an http:// or https:// URL", self.url),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(invalid(
                format!("{key}.batch_size"),
                format!(
                    "{} must be between 1 (one event per POST) and {MAX_BATCH_SIZE}",
                    self.batch_size
                ),
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                format!("{key}.client_cert_file"),
                "client_cert_file and client_key_file go together",
            ));
        }
        Ok(())
    }

    /// The sink; it builds its client and reads its secret when the consumer starts.
    pub(crate) fn build(&self) -> HttpSink {
        HttpSink::new(self.clone())
    }
}

/// Delivers events to an HTTP endpoint.
#[derive(Debug)]
pub struct HttpSink {
    config: HttpSinkConfig,
    client: Option<reqwest::Client>,
    secret: Option<Vec<u8>>,
}

/// What one POST came to.
enum Outcome {
    Delivered,
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Refused(String),
}

impl HttpSink {
    /// A sink for `config`; it builds its client (and reads its secret) on open.
    pub fn new(config: HttpSinkConfig) -> HttpSink {
        HttpSink {
            config,
            client: None,
            secret: None,
        }
    }

    fn failure(&self, what: &str, err: impl std::fmt::Display) -> SinkError {
        SinkError::Remote {
            context: format!("{what} ({})", self.config.url),
            message: err.to_string(),
        }
    }

    fn client(&self) -> Result<reqwest::Client, SinkError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .use_rustls_tls();
        if let Some(ca) = &self.config.ca_file {
            let pem = read(ca).map_err(|e| self.failure("cannot read ca_file", e))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| self.failure("ca_file is not a PEM certificate", e))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) =
            (&self.config.client_cert_file, &self.config.client_key_file)
        {
            let mut pem =
                read(cert).map_err(|e| self.failure("cannot read client_cert_file", e))?;
            pem.extend(read(key).map_err(|e| self.failure("cannot read client_key_file", e))?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| self.failure("client certificate and key are not usable", e))?;
            builder = builder.identity(identity);
        }
        builder
            .build()
            .map_err(|e| self.failure("cannot build the HTTP client", e))
    }
}

/// One request's body and `Idempotency-Key`, made from its events.
#[derive(Debug)]
struct Request {
    body: Vec<u8>,
    key: String,
}

impl Request {
    /// One event, as it is: the body is the event, the key its id.
    fn single(event: &Spooled) -> Request {
        Request {
            key: event_id(&event.json).to_owned(),
            body: event.json.clone(),
        }
    }

    /// A JSON array of `events`; the key is the hex SHA-256 of their ids, one per line, so
    /// a retry of the same array carries the same key.
    fn array(events: &[Spooled]) -> Request {
        let size = events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 1;
        let mut body = Vec::with_capacity(size);
        let mut ids = Sha256::new();
        body.push(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&event.json);
            ids.update(event_id(&event.json).as_bytes());
            ids.update(b"\n");
        }
        body.push(b']');
        Request {
            body,
            key: hex::encode(ids.finalize()),
        }
    }
}

/// An event's id ("" if the spooled bytes have none, which normalization never produces).
fn event_id(json: &[u8]) -> &str {
    serde_json::from_slice::<IdOnly<'_>>(json).map_or("", |e| e.id)
}

/// One POST; owns its inputs so many can run at once (`buffer_unordered`).
async fn post(
    client: reqwest::Client,
    url: std::sync::Arc<str>,
    secret: Option<std::sync::Arc<[u8]>>,
    request: Request,
) -> Outcome {
    let signature = secret
        .as_ref()
        .map(|secret| verify::sign(secret, &request.body));
    let mut builder = client
        .post(&*url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", request.key);
    if let Some(signature) = signature {
        builder = builder.header("X-Metahook-Signature", signature);
    }
    match builder.body(request.body).send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                return Outcome::Delivered;
            }
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
            {
                Outcome::Retry {
                    why: format!("answered {status}"),
                    after,
                }
            } else {
                Outcome::Refused(format!("answered {status}"))
            }
        }
        Err(err) => Outcome::Retry {
            why: super::error_chain(&err.without_url()),
            after: None,
        },
    }
}

#[derive(serde::Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: &'a str,
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

impl Sink for HttpSink {
    async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
        // Re-read on every (re)open: a rotated signing secret is picked up after a failure.
        self.secret = match &self.config.signing_secret_file {
            Some(path) => Some(secrets::read_file(path).map_err(|e| {
                self.failure(
                    &format!("cannot read signing_secret_file {}", path.display()),
                    e,
                )
            })?),
            None => None,
        };
        if self.client.is_none() {
            self.client = Some(self.client()?);
        }
        Ok(None)
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        let arrays = self.config.batch_size > 1;
        let groups: Vec<&[Spooled]> = batch.chunks(self.config.batch_size.max(1)).collect();
        let outcomes = self.post_all(&groups, arrays).await?;
        let mut rejected = Vec::new();
        let mut retry = Retry::default();
        let mut split: Vec<&[Spooled]> = Vec::new();
        for (group, outcome) in groups.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Refused(why) => match group {
                    [event] => rejected.push((event.seq, why)),
                    _ => split.extend(group.chunks(1)),
                },
                Outcome::Retry { why, after } => retry.add(why, after),
            }
        }
        // A refused array: find the events refused on their own (pointless if the batch
        // is retried anyway).
        if retry.why.is_none() && !split.is_empty() {
            for (group, outcome) in split.iter().zip(self.post_all(&split, true).await?) {
                match outcome {
                    Outcome::Delivered => {}
                    Outcome::Refused(why) => {
                        rejected.extend(group.iter().map(|e| (e.seq, why.clone())));
                    }
                    Outcome::Retry { why, after } => retry.add(why, after),
                }
            }
        }
        match retry {
            Retry { why: None, .. } => Ok(Delivered { state: 0, rejected }),
            Retry {
                why: Some(why),
                after: Some(after),
            } => Err(SinkError::Throttled {
                context: format!("POST {}", self.config.url),
                message: why,
                after,
            }),
            Retry { why: Some(why), .. } => Err(self.failure("POST failed", why)),
        }
    }

    fn batch_size(&self) -> usize {
        // Enough events for every POST in flight to carry a full array.
        (self.config.batch_size.max(1) * self.config.concurrency.max(1)).max(BATCH_SIZE)
    }
}

/// Why a batch is retried (the last reason seen) and the longest wait asked for.
#[derive(Debug, Default)]
struct Retry {
    why: Option<String>,
    after: Option<Duration>,
}

impl Retry {
    fn add(&mut self, why: String, after: Option<Duration>) {
        self.after = self.after.max(after);
        self.why = Some(why);
    }
}

impl HttpSink {
    /// POSTs each group (as one event, or as an array when `arrays`), `concurrency` at a
    /// time; the outcomes are in the groups' order.
    async fn post_all(
        &self,
        groups: &[&[Spooled]],
        arrays: bool,
    ) -> Result<Vec<Outcome>, SinkError> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => return Err(self.failure("HTTP sink is not open", "no client")),
        };
        let url: std::sync::Arc<str> = self.config.url.as_str().into();
        let secret: Option<std::sync::Arc<[u8]>> = self.secret.as_deref().map(Into::into);
        let posts: Vec<_> = groups
            .iter()
            .enumerate()
            .map(|(index, group)| {
                let request = match group {
                    [event] if !arrays => Request::single(event),
                    _ => Request::array(group),
                };
                let (client, url, secret) = (client.clone(), url.clone(), secret.clone());
                async move { (index, post(client, url, secret, request).await) }
            })
            .collect();
        let mut outcomes: Vec<(usize, Outcome)> = futures_util::stream::iter(posts)
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        outcomes.sort_by_key(|(index, _)| *index);
        Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = "
listen: 127.0.0.1:8080
endpoints:
  - name: wa
    path: /webhooks/meta
    app_secret_file: secrets/app-secret
    verify_token_file: secrets/verify-token
spool:
  dir: data/spool
sinks:
  - name: crm
    http: {url: http://127.0.0.1:9/hooks, batch_size: BATCH}
";

    fn batch_size(value: &str) -> Result<usize, String> {
        let config = Config::parse(&CONFIG.replace("BATCH", value)).map_err(|e| e.to_string())?;
        match &config.sinks[0].kind {
            crate::config::SinkKind::Http(http) => Ok(http.batch_size),
            other => Err(format!("not an http sink: {other:?}")),
        }
    }

    #[test]
    fn batch_size_defaults_to_one_and_is_bounded() {
        let plain = CONFIG.replace(", batch_size: BATCH", "");
        let config = Config::parse(&plain).expect("config without batch_size");
        assert!(matches!(
            &config.sinks[0].kind,
            crate::config::SinkKind::Http(http) if http.batch_size == 1
        ));
        assert_eq!(batch_size("100"), Ok(100));
        assert_eq!(batch_size("1000"), Ok(1000));
        for bad in ["0", "1001"] {
            let err = batch_size(bad).expect_err(bad);
            assert!(err.contains("sinks[0].http.batch_size"), "{err}");
        }
    }

    fn spooled(seq: u64, id: &str) -> Spooled {
        Spooled {
            seq,
            received_millis: 0,
            json: format!(r#"{{"id":"{id}","kind":"message"}}"#).into_bytes(),
        }
    }

    #[test]
    fn an_array_holds_each_event_whole_and_is_keyed_by_its_ids() {
        let events = [spooled(1, "a"), spooled(2, "b:read")];
        let request = Request::array(&events);
        let body: Vec<serde_json::Value> =
            serde_json::from_slice(&request.body).expect("a JSON array");
        assert_eq!(body.len(), 2);
        assert_eq!(body[1]["id"], "b:read");
        assert_eq!(
            request.key,
            hex::encode(Sha256::digest(b"a\nb:read\n")),
            "the key is the hash of the ids"
        );
        let single = Request::single(&events[0]);
        assert_eq!(
            (single.key.as_str(), single.body.as_slice()),
            ("a", events[0].json.as_slice())
        );
    }
}
