//! The `http` sink's settings: where events are POSTed, how the requests authenticate, and
//! the headers the sink keeps for itself.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};
use crate::redact::{redact_url, split_userinfo};

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
    /// HTTP basic authentication: the user name (or `username_file`), with `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the basic-authentication user name (instead of `username`). The
    /// credential files are re-read whenever the sink reopens (after a failed delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// File holding the basic-authentication password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding a token sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Headers sent with every POST, each value read from a file (an API key, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderConfig>,
}

/// A header of every POST whose value is a secret kept in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeaderConfig {
    /// The header's name, e.g. `X-Api-Key`.
    pub name: String,
    /// File holding its value.
    pub value_file: PathBuf,
}

/// Headers the sink sets itself; `headers` may not set them.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "idempotency-key",
    "x-metahook-signature",
];

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
            username: None,
            username_file: None,
            password_file: None,
            bearer_token_file: None,
            headers: Vec::new(),
        }
    }

    /// Checks the URL's scheme, the batch size, the client certificate pair and the
    /// credentials (`key`: `sinks[i].http`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid(
                format!("{key}.url"),
                format!(
                    "{:?} must be an http:// or https:// URL",
                    redact_url(&self.url)
                ),
            ));
        }
        self.validate_credentials(key)?;
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

    /// At most one of basic (`username`/`username_file` with `password_file`, or the URL's
    /// user:password@) and bearer authentication; `headers` well formed, unique, and not
    /// among the headers the sink sets.
    fn validate_credentials(&self, key: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        if self.username.is_some() && self.username_file.is_some() {
            return Err(invalid(
                key("username_file"),
                "set either username or username_file, not both",
            ));
        }
        let user = self.username.is_some() || self.username_file.is_some();
        if user != self.password_file.is_some() {
            return Err(if user {
                invalid(
                    key("password_file"),
                    "basic authentication needs password_file with username or username_file",
                )
            } else {
                invalid(
                    key("password_file"),
                    "needs username or username_file (basic authentication)",
                )
            });
        }
        let in_url = split_userinfo(&self.url).1.is_some();
        let methods: Vec<&str> = [
            (in_url, "url (user:password@)"),
            (user, "username/password_file"),
            (self.bearer_token_file.is_some(), "bearer_token_file"),
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
        let mut names = std::collections::HashSet::new();
        for (j, header) in self.headers.iter().enumerate() {
            let name_key = key(&format!("headers[{j}].name"));
            let name = header.name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    name_key,
                    format!("{:?} is not a header name", header.name),
                ));
            }
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(invalid(
                    name_key,
                    format!("{} is set by the sink itself", header.name),
                ));
            }
            if name == "authorization" && !methods.is_empty() {
                return Err(invalid(
                    name_key,
                    format!(
                        "Authorization is already set by {}: choose one",
                        methods.join(", ")
                    ),
                ));
            }
            if !names.insert(name) {
                return Err(invalid(name_key, format!("{} is set twice", header.name)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::Config;

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
            crate::SinkKind::Http(http) => Ok(http.batch_size),
            other => Err(format!("not an http sink: {other:?}")),
        }
    }

    #[test]
    fn batch_size_defaults_to_one_and_is_bounded() {
        let plain = CONFIG.replace(", batch_size: BATCH", "");
        let config = Config::parse(&plain).expect("config without batch_size");
        assert!(matches!(
            &config.sinks[0].kind,
            crate::SinkKind::Http(http) if http.batch_size == 1
        ));
        assert_eq!(batch_size("100"), Ok(100));
        assert_eq!(batch_size("1000"), Ok(1000));
        for bad in ["0", "1001"] {
            let err = batch_size(bad).expect_err(bad);
            assert!(err.contains("sinks[0].http.batch_size"), "{err}");
        }
    }

    /// The http sink of `CONFIG` with `extra` keys (`, key: value`).
    fn with(extra: &str) -> Result<HttpSinkConfig, String> {
        let yaml = CONFIG.replace(", batch_size: BATCH", extra);
        match Config::parse(&yaml).map_err(|e| e.to_string())?.sinks[0]
            .kind
            .clone()
        {
            crate::SinkKind::Http(http) => Ok(http),
            other => Err(format!("not an http sink: {other:?}")),
        }
    }

    #[test]
    fn credential_keys_are_read() {
        let http = with(
            ", username: crm, password_file: /s/pass, headers: [{name: X-Api-Key, value_file: /s/key}]",
        )
        .expect("basic");
        assert_eq!(http.username.as_deref(), Some("crm"));
        assert_eq!(http.password_file, Some(PathBuf::from("/s/pass")));
        assert_eq!(
            http.headers,
            vec![HttpHeaderConfig {
                name: "X-Api-Key".into(),
                value_file: PathBuf::from("/s/key")
            }]
        );
        with(", username_file: /s/user, password_file: /s/pass").expect("username_file");
        with(", bearer_token_file: /s/token").expect("bearer");
        with(", headers: [{name: Authorization, value_file: /s/auth}]").expect("own Authorization");
    }

    #[test]
    fn each_credential_refusal_names_its_key() {
        for (extra, key, says) in [
            (
                ", username: a, username_file: /u, password_file: /p",
                "sinks[0].http.username_file",
                "not both",
            ),
            (
                ", username: a",
                "sinks[0].http.password_file",
                "needs password_file",
            ),
            (
                ", password_file: /p",
                "sinks[0].http.password_file",
                "needs username",
            ),
            (
                ", username: a, password_file: /p, bearer_token_file: /t",
                "sinks[0].http.bearer_token_file",
                "choose one way to authenticate",
            ),
            (
                ", headers: [{name: Content-Type, value_file: /h}]",
                "sinks[0].http.headers[0].name",
                "set by the sink itself",
            ),
            (
                ", headers: [{name: x-metahook-signature, value_file: /h}]",
                "sinks[0].http.headers[0].name",
                "set by the sink itself",
            ),
            (
                ", headers: [{name: Idempotency-Key, value_file: /h}]",
                "sinks[0].http.headers[0].name",
                "set by the sink itself",
            ),
            (
                ", bearer_token_file: /t, headers: [{name: authorization, value_file: /h}]",
                "sinks[0].http.headers[0].name",
                "already set by bearer_token_file",
            ),
            (
                ", headers: [{name: 'bad name', value_file: /h}]",
                "sinks[0].http.headers[0].name",
                "not a header name",
            ),
            (
                ", headers: [{name: X-A, value_file: /a}, {name: x-a, value_file: /b}]",
                "sinks[0].http.headers[1].name",
                "set twice",
            ),
        ] {
            let err = with(extra).expect_err(extra);
            assert!(
                err.contains(&format!("{key}: ")) && err.contains(says),
                "{extra}: {err}"
            );
        }
        let yaml = CONFIG.replace(
            "url: http://127.0.0.1:9/hooks, batch_size: BATCH",
            "url: 'http://alice:pw@127.0.0.1:9/hooks', bearer_token_file: /t",
        );
        let err = Config::parse(&yaml)
            .expect_err("userinfo and bearer")
            .to_string();
        assert!(
            err.contains("sinks[0].http.bearer_token_file: ")
                && err.contains("url (user:password@)"),
            "{err}"
        );
        let yaml = CONFIG.replace(
            "url: http://127.0.0.1:9/hooks, batch_size: BATCH",
            "url: 'ftp://alice:pw@127.0.0.1:9/hooks'",
        );
        let err = Config::parse(&yaml).expect_err("scheme").to_string();
        assert!(
            err.contains("sinks[0].http.url") && !err.contains("pw"),
            "{err}"
        );
    }
}
