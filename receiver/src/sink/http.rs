//! The `http` sink: POST each event as JSON to the user's service.
//!
//! Each request carries `Idempotency-Key` = event id and, with a signing secret,
//! `X-Metahook-Signature: sha256=<hex HMAC-SHA256 of the body>` so the receiving side can
//! verify it came from metahook. Answers: 2xx delivered; 408, 429, 5xx, timeouts and
//! connection errors are retried (the whole batch, honouring `Retry-After`); any other 4xx
//! is a permanent refusal and the event becomes a dead letter at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Delivered, Sink, SinkError};
use crate::config::{ConfigError, invalid};
use crate::spool::Spooled;
use crate::{secrets, verify};

/// The `http` sink: POST each event as JSON.
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

impl HttpSinkConfig {
    /// POSTs to `url` with the default timeout and concurrency, unsigned, over the system's
    /// roots.
    pub fn new(url: impl Into<String>) -> HttpSinkConfig {
        HttpSinkConfig {
            url: url.into(),
            signing_secret_file: None,
            timeout: default_http_timeout(),
            concurrency: default_http_concurrency(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    /// Checks the URL's scheme and the client certificate pair (`key`: `sinks[i].http`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid(
                format!("{key}.url"),
                format!("{:?} must be an http:// or https:// URL", self.url),
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

/// One POST; owns its inputs so many can run at once (`buffer_unordered`).
async fn post(
    client: reqwest::Client,
    url: std::sync::Arc<str>,
    secret: Option<std::sync::Arc<[u8]>>,
    json: Vec<u8>,
) -> Outcome {
    let id = serde_json::from_slice::<IdOnly<'_>>(&json)
        .map(|e| e.id.to_owned())
        .unwrap_or_default();
    let signature = secret.as_ref().map(|secret| verify::sign(secret, &json));
    let mut request = client
        .post(&*url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", id);
    if let Some(signature) = signature {
        request = request.header("X-Metahook-Signature", signature);
    }
    match request.body(json).send().await {
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
            why: err.to_string(),
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
    async fn open(&mut self, _state: u64) -> Result<(), SinkError> {
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
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => return Err(self.failure("HTTP sink is not open", "no client")),
        };
        let url: std::sync::Arc<str> = self.config.url.as_str().into();
        let secret: Option<std::sync::Arc<[u8]>> = self.secret.as_deref().map(Into::into);
        let posts: Vec<_> = batch
            .iter()
            .map(|event| {
                let (client, url, secret, seq, json) = (
                    client.clone(),
                    url.clone(),
                    secret.clone(),
                    event.seq,
                    event.json.clone(),
                );
                async move { (seq, post(client, url, secret, json).await) }
            })
            .collect();
        let outcomes: Vec<(u64, Outcome)> = futures_util::stream::iter(posts)
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let mut rejected = Vec::new();
        let mut retry: Option<(String, Option<Duration>)> = None;
        for (seq, outcome) in outcomes {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Refused(why) => rejected.push((seq, why)),
                Outcome::Retry { why, after } => {
                    let longest = match &retry {
                        Some((_, previous)) => after.max(*previous),
                        None => after,
                    };
                    retry = Some((why, longest));
                }
            }
        }
        match retry {
            None => Ok(Delivered { state: 0, rejected }),
            Some((why, Some(after))) => Err(SinkError::Throttled {
                context: format!("POST {}", self.config.url),
                message: why,
                after,
            }),
            Some((why, None)) => Err(self.failure("POST failed; the batch is retried", why)),
        }
    }
}
