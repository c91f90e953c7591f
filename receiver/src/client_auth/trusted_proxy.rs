//! Believing an ingress that terminated mTLS (`trusted_proxy`): its verdict headers count
//! only when the TCP peer is inside `trusted_proxy.cidrs`.
//!
//! Rules, in order, for every request on an endpoint path:
//!
//! 1. Peer outside the CIDRs: refused as `untrusted_proxy`, whether or not it sent the
//!    headers. With headers it is a forgery attempt or a wrong `cidrs`; without them it
//!    reached the receiver around the ingress, which would skip the certificate check the
//!    configuration demands. The log line tells the two apart.
//! 2. A header repeated: `untrusted` (a client's copy next to the proxy's must not win).
//! 3. Verdict (`ssl-client-verify`, nginx's `$ssl_client_verify`) absent, empty or `NONE`:
//!    `no_certificate`; `FAILED:<reason>` whose reason mentions expiry: `expired`; any other
//!    value but `SUCCESS`: `untrusted`.
//! 4. Subject DN (`ssl-client-subject-dn`) absent, unreadable, or without an allowed CN:
//!    `name_mismatch`.
//!
//! The subject is read in both forms nginx offers: RFC 2253/4514 (`$ssl_client_s_dn`,
//! `CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\, Inc.,C=US`) and the legacy
//! OpenSSL one (`$ssl_client_s_dn_legacy`, `/C=US/O=Meta/CN=client.webhooks.fbclientcerts.com`).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use metahook_config::{ConfigError, TrustedProxyConfig};

use super::{Refusal, Rejection, name_allowed, truncate};

/// Header values quoted in log lines at most this long.
const MAX_LOGGED: usize = 256;

/// The configured proxy and its headers.
#[derive(Debug)]
pub struct TrustedProxy {
    cidrs: Vec<ipnet::IpNet>,
    allowed: Vec<String>,
    verify_header: HeaderName,
    subject_header: HeaderName,
}

impl TrustedProxy {
    /// The proxy of `config` (header names were validated with the configuration).
    pub fn new(config: &TrustedProxyConfig) -> Result<TrustedProxy, ConfigError> {
        let header = |key: &str, name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| ConfigError::Invalid {
                key: key.to_owned(),
                message: format!("{name:?} is not a header name"),
            })
        };
        Ok(TrustedProxy {
            cidrs: config.cidrs.clone(),
            allowed: config.allowed_client_names.clone(),
            verify_header: header("trusted_proxy.verify_header", &config.verify_header)?,
            subject_header: header("trusted_proxy.subject_header", &config.subject_header)?,
        })
    }

    /// Whether a request from `peer` carrying `headers` passed the proxy's certificate check.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        // An IPv4 client of a dual-stack listener appears as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        let verify = headers.get_all(&self.verify_header);
        let subject = headers.get_all(&self.subject_header);
        let has_headers = verify.iter().next().is_some() || subject.iter().next().is_some();
        if !self.cidrs.iter().any(|net| net.contains(&peer)) {
            let detail = if has_headers {
                format!(
                    "client-certificate headers from {peer}, which is not in trusted_proxy.cidrs"
                )
            } else {
                format!(
                    "request from {peer}, which is not in trusted_proxy.cidrs (bypassed the proxy)"
                )
            };
            return Err(Refusal::new(Rejection::UntrustedProxy, detail));
        }
        if verify.iter().count() > 1 || subject.iter().count() > 1 {
            return Err(Refusal::new(
                Rejection::Untrusted,
                "a client-certificate header appears more than once",
            ));
        }
        let verdict = headers
            .get(&self.verify_header)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .unwrap_or_default();
        if verdict.is_empty() || verdict.eq_ignore_ascii_case("NONE") {
            return Err(Refusal::new(
                Rejection::NoCertificate,
                format!("{}: {:?}", self.verify_header, verdict),
            ));
        }
        if !verdict.eq_ignore_ascii_case("SUCCESS") {
            let reason = if verdict.to_ascii_lowercase().contains("expired") {
                Rejection::Expired
            } else {
                Rejection::Untrusted
            };
            return Err(Refusal::new(
                reason,
                format!(
                    "{}: {:?}",
                    self.verify_header,
                    truncate(&verdict, MAX_LOGGED)
                ),
            ));
        }
        let Some(dn) = headers
            .get(&self.subject_header)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(Refusal::new(
                Rejection::NameMismatch,
                format!("{} absent or not text", self.subject_header),
            ));
        };
        let names = common_names(dn);
        if name_allowed(names.iter().map(String::as_str), &self.allowed) {
            Ok(())
        } else {
            Err(Refusal::new(
                Rejection::NameMismatch,
                format!(
                    "{}: {:?}; allowed CNs: {:?}",
                    self.subject_header,
                    truncate(dn, MAX_LOGGED),
                    self.allowed
                ),
            ))
        }
    }
}

/// The CN values of a subject DN in RFC 2253/4514 form (`CN=a,O=b`, also `;` and `+`
/// separators, `\,` / `\2C` escapes and quoted values) or the legacy OpenSSL form
/// (`/O=b/CN=a`). Values that are not UTF-8 or are hex-encoded BER (`#04...`) are skipped.
pub fn common_names(dn: &str) -> Vec<String> {
    let dn = dn.trim();
    let attributes = if dn.starts_with('/') {
        legacy_attributes(dn)
    } else {
        rfc4514_attributes(dn)
    };
    attributes
        .into_iter()
        .filter(|(kind, _)| kind.eq_ignore_ascii_case("CN") || kind == "2.5.4.3")
        .map(|(_, value)| value)
        .collect()
}

/// `type=value` pairs of an RFC 4514 DN, with escapes resolved.
fn rfc4514_attributes(dn: &str) -> Vec<(String, String)> {
    let mut attributes = Vec::new();
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // The attribute type runs to '='.
        let Some(eq) = bytes[i..].iter().position(|&b| b == b'=') else {
            break;
        };
        let kind = dn[i..i + eq].trim().to_owned();
        i += eq + 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let mut value = Vec::new();
        let mut valid = true;
        if bytes.get(i) == Some(&b'#') {
            valid = false; // BER-encoded value: not a name we could compare
        }
        let quoted = bytes.get(i) == Some(&b'"');
        if quoted {
            i += 1;
        }
        while i < bytes.len() {
            let b = bytes[i];
            if quoted && b == b'"' {
                i += 1;
                // Skip to the separator after the closing quote.
                while i < bytes.len() && !matches!(bytes[i], b',' | b';' | b'+') {
                    i += 1;
                }
                break;
            }
            if !quoted && matches!(b, b',' | b';' | b'+') {
                break;
            }
            if b == b'\\' {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok());
                match hex {
                    Some(byte) => {
                        value.push(byte);
                        i += 3;
                    }
                    None => {
                        if let Some(&escaped) = bytes.get(i + 1) {
                            value.push(escaped);
                        }
                        i += 2;
                    }
                }
                continue;
            }
            value.push(b);
            i += 1;
        }
        // The separator, if any.
        i += 1;
        if valid && let Ok(value) = String::from_utf8(value) {
            let value = if quoted {
                value
            } else {
                value.trim_end().to_owned()
            };
            attributes.push((kind, value));
        }
    }
    attributes
}

/// `type=value` pairs of a legacy `/A=x/B=y` DN. Values may contain `/`, so a component
/// starts only at a `/` followed by an attribute type and `=`.
fn legacy_attributes(dn: &str) -> Vec<(String, String)> {
    let starts: Vec<usize> = dn
        .char_indices()
        .filter(|&(at, c)| {
            c == '/' && {
                let rest = &dn[at + 1..];
                rest.find('=').is_some_and(|eq| {
                    eq > 0
                        && rest[..eq]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '.')
                })
            }
        })
        .map(|(at, _)| at)
        .collect();
    starts
        .iter()
        .enumerate()
        .filter_map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(dn.len());
            let (kind, value) = dn[start + 1..end].split_once('=')?;
            Some((kind.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const META: &str = "client.webhooks.fbclientcerts.com";

    fn proxy(cidrs: &[&str]) -> TrustedProxy {
        TrustedProxy::new(&TrustedProxyConfig {
            cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
            allowed_client_names: vec![META.into()],
            verify_header: "ssl-client-verify".into(),
            subject_header: "ssl-client-subject-dn".into(),
        })
        .expect("proxy")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    fn reason(result: Result<(), Refusal>) -> Option<&'static str> {
        result.err().map(|r| r.reason.reason())
    }

    #[test]
    fn parses_both_dn_forms() {
        assert_eq!(
            common_names(
                "CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\\, Inc.,L=Menlo Park,ST=California,C=US"
            ),
            vec![META]
        );
        assert_eq!(
            common_names(
                "/C=US/ST=California/L=Menlo Park/O=Meta Platforms, Inc./CN=client.webhooks.fbclientcerts.com"
            ),
            vec![META]
        );
        assert_eq!(common_names("O=A/B,CN=x\\2Cy"), vec!["x,y"]);
        assert_eq!(
            common_names("cn = \"quoted, name\" ; o=x"),
            vec!["quoted, name"]
        );
        assert_eq!(common_names("OU=a+CN=b,C=US"), vec!["b"]);
        assert_eq!(common_names("2.5.4.3=oid-form"), vec!["oid-form"]);
        assert_eq!(common_names("/O=a/b/CN=c"), vec!["c"]);
        assert_eq!(
            common_names("/O=path/with/slashes=odd/CN=c"),
            vec!["c"],
            "a '/' followed by type= starts a component"
        );
        assert!(common_names("CN=#0403616263").is_empty());
        assert!(common_names("").is_empty());
        assert!(common_names("no equals sign").is_empty());
        assert!(common_names("O=Meta,OU=client.webhooks.fbclientcerts.com").is_empty());
    }

    #[test]
    fn believes_verdicts_only_from_the_cidrs() {
        let p = proxy(&["10.0.0.0/8", "fd00::/8"]);
        let good = headers(&[
            ("ssl-client-verify", "SUCCESS"),
            (
                "ssl-client-subject-dn",
                "CN=client.webhooks.fbclientcerts.com,O=Meta",
            ),
        ]);
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        let outside: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(reason(p.check(inside, &good)), None);
        assert_eq!(reason(p.check(mapped, &good)), None);
        assert_eq!(reason(p.check(outside, &good)), Some("untrusted_proxy"));
        assert_eq!(
            reason(p.check(outside, &HeaderMap::new())),
            Some("untrusted_proxy")
        );
        assert_eq!(
            reason(p.check(inside, &HeaderMap::new())),
            Some("no_certificate")
        );
        let none = headers(&[("ssl-client-verify", "NONE")]);
        assert_eq!(reason(p.check(inside, &none)), Some("no_certificate"));
        let failed = headers(&[(
            "ssl-client-verify",
            "FAILED:unable to get local issuer certificate",
        )]);
        assert_eq!(reason(p.check(inside, &failed)), Some("untrusted"));
        let expired = headers(&[("ssl-client-verify", "FAILED:certificate has expired")]);
        assert_eq!(reason(p.check(inside, &expired)), Some("expired"));
        let no_dn = headers(&[("ssl-client-verify", "SUCCESS")]);
        assert_eq!(reason(p.check(inside, &no_dn)), Some("name_mismatch"));
        let wrong = headers(&[
            ("ssl-client-verify", "SUCCESS"),
            ("ssl-client-subject-dn", "CN=someone.else.example,O=Meta"),
        ]);
        assert_eq!(reason(p.check(inside, &wrong)), Some("name_mismatch"));
        let twice = headers(&[
            ("ssl-client-verify", "SUCCESS"),
            ("ssl-client-verify", "SUCCESS"),
            (
                "ssl-client-subject-dn",
                "CN=client.webhooks.fbclientcerts.com",
            ),
        ]);
        assert_eq!(reason(p.check(inside, &twice)), Some("untrusted"));
    }
}
