//! The `nats` sink's settings: the server, the subject template, the stream and the
//! credentials.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};
use crate::redact::split_userinfo;

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
}

/// Placeholders a NATS subject template may use.
pub const SUBJECT_PLACEHOLDERS: &[&str] =
    &["{platform}", "{object}", "{field}", "{kind}", "{endpoint}"];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::SinkKind;

    /// A configuration whose one sink is `nats: {SINK}`.
    fn parse(sink: &str) -> Result<NatsSinkConfig, String> {
        match crate::sink::parse_one_sink("nats", sink)? {
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
}
