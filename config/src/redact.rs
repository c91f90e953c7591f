//! Credentials in URLs: hidden wherever a URL is shown, refused where a URL is stored.
//!
//! A URL can carry a user and password (`nats://bob:pw@host`) or a secret query parameter
//! (`?access_token=…`). The receiver accepts one in its own configuration file (laptop use),
//! but a URL reaches a log line, an error, a metric label or a status only through
//! [`redact_url`]. The operator refuses one in a WebhookSubscription (it would land in the
//! ConfigMap): [`CREDENTIALS_IN_URL`] is that rule, read by the CRD's CEL rule and by the
//! operator's own check ([`has_credentials`]) alike.

use std::sync::LazyLock;

use regex::Regex;

/// What replaces a credential.
pub const REDACTED: &str = "***";

/// A URL with credentials: userinfo in an authority (`scheme://user[:password]@host`), or a
/// query parameter named like a secret (its name holds pass, pwd, token, secret, key, auth,
/// credential or signature). RE2 syntax, as CEL's `matches()` reads it, and Rust's `regex`.
pub const CREDENTIALS_IN_URL: &str =
    "(?i)://[^/?#]*@|[?&][^=&#]*(pass|pwd|token|secret|key|auth|credential|signature)[^=&#]*=";

/// Query parameter names holding any of these (lowercase) are redacted.
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "pwd",
    "token",
    "secret",
    "key",
    "auth",
    "credential",
    "signature",
];

static CREDENTIALS: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(CREDENTIALS_IN_URL).ok());

/// Does `url` carry credentials ([`CREDENTIALS_IN_URL`])? (A pattern that failed to compile,
/// which a unit test rules out, counts every URL as carrying them.)
pub fn has_credentials(url: &str) -> bool {
    CREDENTIALS.as_ref().is_none_or(|regex| regex.is_match(url))
}

/// `url` with its credentials replaced by `***`: the userinfo of every authority (also in a
/// comma-separated NATS server list) and the values of query parameters named like secrets.
/// Errs towards hiding: whatever precedes the last `@` of an authority is hidden, even when
/// a raw `/` in a password makes the URL malformed.
pub fn redact_url(url: &str) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (url, None),
    };
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query.split('&').map(redact_param).collect();
        out.push_str(&params.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Each `scheme://` part of `text` (before any query) with what precedes its last `@`
/// replaced; a part runs to the next `scheme://` or the end.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let Some(start) = rest.find("://") else {
            // No scheme: `user:password@host:port` is still an authority.
            out.push_str(&hide_before_last_at(rest));
            return out;
        };
        out.push_str(&rest[..start + 3]);
        rest = &rest[start + 3..];
        // The authority and path run to the next scheme (a NATS server list), whose name
        // starts after the last ',' before it.
        let end = match rest.find("://") {
            Some(next) => rest[..next].rfind(',').map_or(next, |comma| comma + 1),
            None => rest.len(),
        };
        out.push_str(&hide_before_last_at(&rest[..end]));
        rest = &rest[end..];
        if rest.is_empty() {
            return out;
        }
    }
}

fn hide_before_last_at(part: &str) -> String {
    match part.rfind('@') {
        Some(at) => format!("{REDACTED}{}", &part[at..]),
        None => part.to_owned(),
    }
}

fn redact_param(param: &str) -> String {
    match param.split_once('=') {
        Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
        _ => param.to_owned(),
    }
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|secret| name.contains(secret))
}

/// A user (and password) taken out of a URL, percent-decoded. Its `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Userinfo {
    /// The user, or a NATS token when there is no password.
    pub user: String,
    /// The password.
    pub password: Option<String>,
}

impl std::fmt::Debug for Userinfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Userinfo(***)")
    }
}

/// `url` without the userinfo of its authorities (every server of a NATS list), and the
/// first userinfo found: the URL a client is given, and the credentials it is given apart
/// (so neither the client's errors nor its debug logs can show them).
pub fn split_userinfo(url: &str) -> (String, Option<Userinfo>) {
    let mut out = String::with_capacity(url.len());
    let mut found = None;
    let mut rest = url;
    loop {
        let part_end = match rest.find("://") {
            Some(start) => {
                out.push_str(&rest[..start + 3]);
                rest = &rest[start + 3..];
                match rest.find("://") {
                    Some(next) => rest[..next].rfind(',').map_or(next, |comma| comma + 1),
                    None => rest.len(),
                }
            }
            None => rest.len(),
        };
        let part = &rest[..part_end];
        let authority_end = part.find(['/', '?', '#']).unwrap_or(part.len());
        match part[..authority_end].rfind('@') {
            Some(at) => {
                if found.is_none() {
                    found = Some(userinfo(&part[..at]));
                }
                out.push_str(&part[at + 1..]);
            }
            None => out.push_str(part),
        }
        rest = &rest[part_end..];
        if rest.is_empty() || !rest.contains("://") {
            out.push_str(rest);
            return (out, found);
        }
    }
}

fn userinfo(text: &str) -> Userinfo {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    match text.split_once(':') {
        Some((user, password)) => Userinfo {
            user: decode(user),
            password: Some(decode(password)),
        },
        None => Userinfo {
            user: decode(text),
            password: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secret_parameters_are_hidden() {
        for (url, redacted) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://bob:s3cret@nats:4222", "nats://***@nats:4222"),
            ("nats://t0ken@nats:4222", "nats://***@nats:4222"),
            (
                "nats://a:pw1@n1:4222,nats://b:pw2@n2:4222",
                "nats://***@n1:4222,nats://***@n2:4222",
            ),
            (
                "nats://n1:4222,nats://b:pw2@n2",
                "nats://n1:4222,nats://***@n2",
            ),
            ("bob:pw@127.0.0.1:4222", "***@127.0.0.1:4222"),
            (
                "http://alice:pa@ss@crm:8080/hooks?x=1",
                "http://***@crm:8080/hooks?x=1",
            ),
            ("http://alice:p/ss@crm/hooks", "http://***@crm/hooks"),
            (
                "https://crm/hooks?access_token=abc&team=7&API-KEY=k#top",
                "https://crm/hooks?access_token=***&team=7&API-KEY=***#top",
            ),
            (
                "postgres://u:pw@db/test?sslmode=require&password=x",
                "postgres://***@db/test?sslmode=require&password=***",
            ),
            ("https://crm.internal/hooks", "https://crm.internal/hooks"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn userinfo_is_split_from_every_server() {
        let (url, info) = split_userinfo("nats://bob:p%40ss@n1:4222,nats://bob:p%40ss@n2:4222");
        assert_eq!(url, "nats://n1:4222,nats://n2:4222");
        let info = info.expect("userinfo");
        assert_eq!(
            (info.user.as_str(), info.password.as_deref()),
            ("bob", Some("p@ss"))
        );
        assert_eq!(format!("{info:?}"), "Userinfo(***)");
        let (url, info) = split_userinfo("nats://t0ken@nats:4222");
        assert_eq!(url, "nats://nats:4222");
        assert_eq!(
            info.map(|i| (i.user, i.password)),
            Some(("t0ken".into(), None))
        );
        let (url, info) = split_userinfo("http://a:b@crm/users/@me?x=1");
        assert_eq!(url, "http://crm/users/@me?x=1");
        assert!(info.is_some());
        for plain in ["https://crm/users/@me", "nats://n:4222", "127.0.0.1:4222"] {
            assert_eq!(split_userinfo(plain), (plain.to_owned(), None));
        }
        assert_eq!(split_userinfo("bob:pw@127.0.0.1:4222").0, "127.0.0.1:4222");
    }

    #[test]
    fn the_pattern_compiles_and_finds_credentials() {
        assert!(CREDENTIALS.is_some(), "CREDENTIALS_IN_URL must compile");
        for url in [
            "nats://bob:pw@nats:4222",
            "nats://token@nats:4222",
            "nats://n1:4222,nats://bob:pw@n2:4222",
            "http://alice:pw@crm/hooks",
            "https://crm/hooks?access_token=abc",
            "https://crm/hooks?x=1&Password=abc",
            "https://crm/hooks?apikey=abc",
        ] {
            assert!(has_credentials(url), "{url} has credentials");
            assert_ne!(redact_url(url), url, "{url} is redacted");
        }
        for url in [
            "nats://nats.nats:4222",
            "nats://n1:4222,nats://n2:4222",
            "https://crm.internal/hooks?team=7",
            "https://crm.internal/users/@me",
            "http://crm:8080/hooks#frag@ment",
        ] {
            assert!(!has_credentials(url), "{url} has none");
        }
    }
}
