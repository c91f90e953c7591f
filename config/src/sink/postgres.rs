//! The `postgres` sink's settings: the connection URL (or the file holding it), the schema,
//! and TLS as libpq's `sslmode` ([`SslMode`], read from the settings or the URL).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

/// The `postgres` sink: events and their projections (conversations, messages, engagement)
/// upserted idempotently by event id; migrations run at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection URL, e.g. `postgres://postgres@127.0.0.1:5432/test`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// File holding the connection URL instead (a mounted Secret, since a URL can carry a
    /// password); re-read at every reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// The schema holding the tables (created if absent).
    #[serde(default = "default_postgres_schema")]
    pub schema: String,
    /// TLS as libpq's `sslmode`: `disable`, `prefer`, `require`, `verify-ca` or
    /// `verify-full`. Unset: the URL's `sslmode`, else `prefer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,
    /// PEM bundle of the CAs the server's certificate must chain to (`verify-ca`,
    /// `verify-full`; with `require` the chain is checked too); re-read at every reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_postgres_schema() -> String {
    "metahook".to_owned()
}

impl PostgresSinkConfig {
    /// Connects with the URL held in `url_file`, into the default schema.
    pub fn url_file(url_file: PathBuf) -> PostgresSinkConfig {
        PostgresSinkConfig {
            url: String::new(),
            url_file: Some(url_file),
            schema: default_postgres_schema(),
            ssl_mode: None,
            ca_file: None,
        }
    }

    /// Checks that one URL source is set and that the schema is a plain SQL identifier
    /// (it is written into the statements).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let schema = &self.schema;
        let valid = schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && schema.len() <= 63;
        if self.url.trim().is_empty() == self.url_file.is_none() {
            return Err(invalid(
                format!("{key}.url"),
                "set exactly one of url and url_file",
            ));
        }
        if !valid {
            return Err(invalid(
                format!("{key}.schema"),
                format!("{schema:?} must be a lowercase SQL identifier: a-z, 0-9, _"),
            ));
        }
        self.validate_tls(key)
    }

    /// The TLS keys, and the URL's `sslmode` where the URL is in the file (a `url_file` is
    /// checked the same way at each connection).
    fn validate_tls(&self, key: &str) -> Result<(), ConfigError> {
        let in_url = if self.url.is_empty() {
            None
        } else {
            take_ssl_mode(&self.url)
                .map_err(|e| invalid(format!("{key}.url"), e))?
                .1
        };
        let mode =
            resolve(self.ssl_mode, in_url).map_err(|e| invalid(format!("{key}.ssl_mode"), e))?;
        if mode.verifies() && self.ca_file.is_none() {
            return Err(invalid(
                format!("{key}.ca_file"),
                format!(
                    "ssl_mode {} checks the server's certificate against ca_file: set it",
                    mode.as_str()
                ),
            ));
        }
        if mode == SslMode::Disable && self.ca_file.is_some() {
            return Err(invalid(
                format!("{key}.ca_file"),
                "ssl_mode disable never uses it (no TLS)",
            ));
        }
        Ok(())
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unchecked; plain TCP otherwise (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked against `ca_file` when one is given.
    Require,
    /// TLS, with a certificate chaining to `ca_file` (any host name).
    VerifyCa,
    /// TLS, with a certificate chaining to `ca_file` and naming the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Does the mode check the certificate's chain, so it needs the CA?
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == value)
        .ok_or_else(|| {
            format!(
                "sslmode={value} is not one of disable, prefer, require, verify-ca, verify-full"
            )
        })
    }
}

/// A connection URL (`postgres://…?sslmode=…`) or key/value string (`host=… sslmode=…`)
/// without its `sslmode`, and that `sslmode`.
pub fn take_ssl_mode(url: &str) -> Result<(String, Option<SslMode>), String> {
    let mut mode = None;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None));
        };
        let mut kept = Vec::new();
        for param in query.split('&') {
            match param.split_once('=') {
                Some(("sslmode", value)) => {
                    let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                    mode = Some(SslMode::parse(&value)?);
                }
                _ => kept.push(param),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((url, mode));
    }
    let mut kept = Vec::new();
    for word in url.split_whitespace() {
        match word.split_once('=') {
            Some(("sslmode", value)) => mode = Some(SslMode::parse(value.trim_matches('\''))?),
            _ => kept.push(word),
        }
    }
    Ok((kept.join(" "), mode))
}

/// The mode in force: the configured one, else the URL's, else `prefer`. A configured mode
/// that differs from the URL's is refused: one of them would silently lose.
pub fn resolve(configured: Option<SslMode>, in_url: Option<SslMode>) -> Result<SslMode, String> {
    match (configured, in_url) {
        (Some(configured), Some(url)) if configured != url => Err(format!(
            "ssl_mode is {} but the URL says sslmode={}: keep one",
            configured.as_str(),
            url.as_str()
        )),
        (Some(mode), _) | (None, Some(mode)) => Ok(mode),
        (None, None) => Ok(SslMode::Prefer),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The postgres sink of a configuration whose one sink is `postgres: {SINK}`.
    fn parse(sink: &str) -> Result<PostgresSinkConfig, String> {
        match crate::sink::parse_one_sink("postgres", sink)? {
            crate::SinkKind::Postgres(postgres) => Ok(postgres),
            other => Err(format!("not postgres: {other:?}")),
        }
    }

    #[test]
    fn tls_keys_are_read() {
        let postgres =
            parse("url_file: /s/url, ssl_mode: verify-full, ca_file: /s/ca.crt").expect("valid");
        assert_eq!(postgres.ssl_mode, Some(SslMode::VerifyFull));
        assert_eq!(postgres.ca_file, Some(PathBuf::from("/s/ca.crt")));
        for mode in ["disable", "prefer", "require"] {
            let postgres = parse(&format!("url_file: /u, ssl_mode: {mode}")).expect(mode);
            assert_eq!(postgres.ssl_mode.map(SslMode::as_str), Some(mode));
        }
        parse("url_file: /u, ssl_mode: verify-ca, ca_file: /ca").expect("verify-ca");
        parse("url_file: /u, ssl_mode: require, ca_file: /ca").expect("require with a CA");
        parse("url: 'postgres://u@db/t?sslmode=verify-full', ca_file: /ca").expect("in the URL");
    }

    #[test]
    fn each_tls_refusal_names_its_key() {
        for (sink, key, says) in [
            (
                "url_file: /u, ssl_mode: verify-full",
                "sinks[0].postgres.ca_file",
                "set it",
            ),
            (
                "url_file: /u, ssl_mode: verify-ca",
                "sinks[0].postgres.ca_file",
                "set it",
            ),
            (
                "url_file: /u, ssl_mode: disable, ca_file: /ca",
                "sinks[0].postgres.ca_file",
                "never uses it",
            ),
            (
                "url: 'postgres://u:pw@db/t?sslmode=verify-full'",
                "sinks[0].postgres.ca_file",
                "set it",
            ),
            (
                "url: 'postgres://u:pw@db/t?sslmode=verify-full', ssl_mode: require, ca_file: /ca",
                "sinks[0].postgres.ssl_mode",
                "keep one",
            ),
            (
                "url: 'postgres://u:pw@db/t?sslmode=allow'",
                "sinks[0].postgres.url",
                "sslmode=allow is not one of",
            ),
        ] {
            let err = parse(sink).expect_err(sink);
            assert!(
                err.contains(&format!("{key}: ")) && err.contains(says),
                "{sink}: {err}"
            );
            assert!(!err.contains("pw"), "no password in {err}");
        }
        let err = parse("url_file: /u, ssl_mode: verify_full").expect_err("spelling");
        assert!(err.contains("verify_full"), "{err}");
    }

    #[test]
    fn sslmode_is_taken_out_of_urls_and_key_values() {
        assert_eq!(
            take_ssl_mode("postgres://u@db/test?sslmode=verify-full&application_name=x"),
            Ok((
                "postgres://u@db/test?application_name=x".to_owned(),
                Some(SslMode::VerifyFull)
            ))
        );
        assert_eq!(
            take_ssl_mode("postgresql://u@db/test?sslmode=verify-ca"),
            Ok(("postgresql://u@db/test".to_owned(), Some(SslMode::VerifyCa)))
        );
        assert_eq!(
            take_ssl_mode("host=db user=u sslmode=require"),
            Ok(("host=db user=u".to_owned(), Some(SslMode::Require)))
        );
        assert_eq!(
            take_ssl_mode("postgres://u@db/test"),
            Ok(("postgres://u@db/test".to_owned(), None))
        );
        let err = take_ssl_mode("postgres://u:pw@db/test?sslmode=allow").expect_err("allow");
        assert!(
            err.contains("sslmode=allow") && !err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn the_configured_mode_wins_only_when_the_url_agrees() {
        assert_eq!(resolve(None, None), Ok(SslMode::Prefer));
        assert_eq!(resolve(None, Some(SslMode::Require)), Ok(SslMode::Require));
        assert_eq!(
            resolve(Some(SslMode::VerifyFull), Some(SslMode::VerifyFull)),
            Ok(SslMode::VerifyFull)
        );
        let err = resolve(Some(SslMode::Require), Some(SslMode::VerifyFull)).expect_err("differ");
        assert!(
            err.contains("ssl_mode is require") && err.contains("sslmode=verify-full"),
            "{err}"
        );
    }
}
