//! The `http` sink: POST events as JSON to the user's service.
//!
//! With `batch_size: 1` (the default) each request is one event, with `Idempotency-Key` =
//! event id. With a larger `batch_size` each request is a JSON array of up to that many
//! events, each keeping its `id`, with `Idempotency-Key` = hex SHA-256 of the ids (one per
//! line). With a signing secret every request carries `X-Metahook-Signature: sha256=<hex
//! HMAC-SHA256 of the whole body>` so the receiving side can verify it came from metahook.
//! Answers: 2xx delivered; 401 (the credentials, re-read before the retry), 408, 429, 5xx,
//! timeouts and connection errors are retried (the whole batch, honouring `Retry-After`);
//! any other 4xx is a permanent refusal: a refused
//! event becomes a dead letter at once, and a refused array is sent again one event per
//! request (as one-element arrays), so only the events refused on their own become dead
//! letters.

mod request;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use metahook_config::redact::{redact_url, split_userinfo};
use metahook_config::sink::http::HttpSinkConfig;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use self::request::Request;
use super::{BATCH_SIZE, Delivered, Sink, SinkError};
use crate::spool::Spooled;
use crate::{secrets, verify};

/// Delivers events to an HTTP endpoint.
#[derive(Debug)]
pub struct HttpSink {
    config: HttpSinkConfig,
    client: Option<reqwest::Client>,
    secret: Option<Vec<u8>>,
    /// The URL requests go to: the configured one without its user:password@.
    target: std::sync::Arc<str>,
    /// Authorization and `headers`, read from their files at each open.
    headers: std::sync::Arc<HeaderMap>,
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
        let target = split_userinfo(&config.url).0.into();
        HttpSink {
            config,
            client: None,
            secret: None,
            target,
            headers: std::sync::Arc::default(),
        }
    }

    fn failure(&self, what: &str, err: impl std::fmt::Display) -> SinkError {
        SinkError::Remote {
            context: format!("{what} ({})", redact_url(&self.config.url)),
            message: err.to_string(),
        }
    }

    /// The signing secret, when there is one (blocking: see [`Sink::open`]).
    fn read_secret(&self) -> Result<Option<Vec<u8>>, SinkError> {
        self.config
            .signing_secret_file
            .as_ref()
            .map(|path| {
                secrets::read_file(path).map_err(|e| {
                    self.failure(
                        &format!("cannot read signing_secret_file {}", path.display()),
                        e,
                    )
                })
            })
            .transpose()
    }

    /// The Authorization header (basic from the files or the URL, or bearer) and the
    /// configured headers, each marked sensitive. Errors name the key and file, never a value.
    fn read_headers(&self) -> Result<HeaderMap, SinkError> {
        use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
        let config = &self.config;
        let read = |key: &str, path: &Path| {
            secrets::read_file(path)
                .map_err(|e| self.failure(&format!("cannot read http.{key}"), e))
        };
        let value = |key: &str, path: Option<&Path>, bytes: Vec<u8>| {
            let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| {
                let file = path
                    .map(|p| format!(" {}", p.display()))
                    .unwrap_or_default();
                self.failure(
                    &format!("http.{key}{file}"),
                    "holds characters a header value cannot carry",
                )
            })?;
            value.set_sensitive(true);
            Ok::<_, SinkError>(value)
        };
        let mut headers = HeaderMap::new();
        let basic = match (
            &config.username,
            &config.username_file,
            &config.password_file,
        ) {
            (Some(user), None, Some(password)) => {
                Some((user.clone().into_bytes(), read("password_file", password)?))
            }
            (None, Some(user), Some(password)) => Some((
                read("username_file", user)?,
                read("password_file", password)?,
            )),
            _ => split_userinfo(&config.url).1.map(|info| {
                (
                    info.user.into_bytes(),
                    info.password.unwrap_or_default().into_bytes(),
                )
            }),
        };
        if let Some((mut user, password)) = basic {
            user.push(b':');
            user.extend(password);
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, user);
            headers.insert(
                AUTHORIZATION,
                value(
                    "password_file",
                    None,
                    format!("Basic {encoded}").into_bytes(),
                )?,
            );
        }
        if let Some(path) = &config.bearer_token_file {
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend(read("bearer_token_file", path)?);
            headers.insert(
                AUTHORIZATION,
                value("bearer_token_file", Some(path), bearer)?,
            );
        }
        for (j, header) in config.headers.iter().enumerate() {
            let key = format!("headers[{j}].value_file");
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|e| self.failure(&format!("http.headers[{j}].name"), e))?;
            let bytes = read(&key, &header.value_file)?;
            headers.insert(name, value(&key, Some(&header.value_file), bytes)?);
        }
        Ok(headers)
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
    headers: std::sync::Arc<HeaderMap>,
    secret: Option<std::sync::Arc<[u8]>>,
    request: Request,
) -> Outcome {
    let signature = secret
        .as_ref()
        .map(|secret| verify::sign(secret, &request.body));
    let mut builder = client
        .post(&*url)
        .headers(HeaderMap::clone(&headers))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", request.key);
    if let Some(signature) = signature {
        builder = builder.header("X-Metahook-Signature", signature);
    }
    if request.replayed {
        builder = builder.header("X-Metahook-Replay", "1");
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
            if status == StatusCode::UNAUTHORIZED {
                // About the credentials, not the event: retried, and the credential files
                // are read again when the sink reopens (a rotation in progress).
                Outcome::Retry {
                    why: format!("answered {status}: the credentials were refused"),
                    after,
                }
            } else if status == StatusCode::REQUEST_TIMEOUT
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
            // Without the URL reqwest would add: the sink's context names it, redacted.
            why: super::error_chain(&err.without_url()),
            after: None,
        },
    }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

impl Sink for HttpSink {
    async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
        // Re-read on every (re)open: a rotated signing secret or credential is picked up
        // after a failure. The files (and the CA and client certificate, when the client is
        // built) are read on a blocking thread, never on a runtime worker.
        let files = HttpSink::new(self.config.clone());
        let build_client = self.client.is_none();
        let (secret, headers, client) = tokio::task::spawn_blocking(move || {
            let secret = files.read_secret()?;
            let headers = files.read_headers()?;
            let client = if build_client {
                Some(files.client()?)
            } else {
                None
            };
            Ok::<_, SinkError>((secret, headers, client))
        })
        .await
        .map_err(|e| self.failure("cannot read the credential files", e))??;
        self.secret = secret;
        self.headers = std::sync::Arc::new(headers);
        if let Some(client) = client {
            self.client = Some(client);
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
                context: format!("POST {}", redact_url(&self.config.url)),
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
        let url = std::sync::Arc::clone(&self.target);
        let headers = std::sync::Arc::clone(&self.headers);
        let secret: Option<std::sync::Arc<[u8]>> = self.secret.as_deref().map(Into::into);
        let posts: Vec<_> = groups
            .iter()
            .enumerate()
            .map(|(index, group)| {
                let request = match group {
                    [event] if !arrays => Request::single(event),
                    _ => Request::array(group),
                };
                let (client, url, headers, secret) =
                    (client.clone(), url.clone(), headers.clone(), secret.clone());
                async move { (index, post(client, url, headers, secret, request).await) }
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
    use metahook_config::sink::http::HttpHeaderConfig;

    #[test]
    fn credentials_become_sensitive_headers_read_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, value).expect("write");
            path
        };
        let mut config = HttpSinkConfig::new("http://127.0.0.1:9/hooks");
        config.username_file = Some(write("user", "alice\n"));
        config.password_file = Some(write("pass", "s3cret"));
        config.headers = vec![HttpHeaderConfig {
            name: "X-Api-Key".into(),
            value_file: write("key", "k-123\n"),
        }];
        let headers = HttpSink::new(config.clone())
            .read_headers()
            .expect("headers");
        let basic = &headers[reqwest::header::AUTHORIZATION];
        assert_eq!(basic, "Basic YWxpY2U6czNjcmV0");
        assert!(basic.is_sensitive() && headers["x-api-key"].is_sensitive());
        assert_eq!(headers["x-api-key"], "k-123");

        config.username_file = None;
        config.password_file = None;
        config.bearer_token_file = Some(write("token", "t0ken"));
        let headers = HttpSink::new(config.clone())
            .read_headers()
            .expect("bearer");
        assert_eq!(headers[reqwest::header::AUTHORIZATION], "Bearer t0ken");

        // The URL's user:password@ is taken out of the URL and sent as basic auth.
        let sink = HttpSink::new(HttpSinkConfig::new("http://alice:s3cret@127.0.0.1:9/hooks"));
        assert_eq!(&*sink.target, "http://127.0.0.1:9/hooks");
        let headers = sink.read_headers().expect("userinfo");
        assert_eq!(
            headers[reqwest::header::AUTHORIZATION],
            "Basic YWxpY2U6czNjcmV0"
        );

        // A value a header cannot carry is refused naming the file, not the value.
        config.bearer_token_file = Some(write("bad", "line1\nline2-s3cret"));
        let err = HttpSink::new(config)
            .read_headers()
            .expect_err("newline")
            .to_string();
        assert!(
            err.contains("bearer_token_file") && !err.contains("s3cret"),
            "{err}"
        );
    }
}
