//! Who may call the webhook endpoints: the client-certificate policy applied to every
//! request on an endpoint path (GET handshake and POST alike).
//!
//! Where each rejection happens, and why there:
//!
//! - `untrusted` and `expired` (`tls.mode: mutual`): in the TLS handshake, by rustls'
//!   WebPKI client verifier against `tls.client_ca_file` ([`crate::tls`]). A certificate that
//!   does not chain is refused before any HTTP is read; the handshake fails with an alert.
//! - `no_certificate` and `name_mismatch` (`tls.mode: mutual`): here, per request. Client
//!   authentication is *offered*, not demanded, in the handshake so that kubelet probes and
//!   Prometheus, which present no certificate, can still reach `/healthz`, `/readyz` and
//!   `/metrics` over HTTPS; only the endpoint paths demand a certificate. The names are
//!   read from the verified certificate once per connection and compared here, so a
//!   refusal is an HTTP 403 that says why instead of a bare handshake failure.
//! - `trusted_proxy`: here, per request, from the TCP peer address and the ingress's verdict
//!   headers ([`trusted_proxy`]).
//!
//! Every refusal is answered 403 before the body is read (nothing is spooled), counted in
//! `metahook_tls_client_rejections_total{reason}` and logged with the peer address, at the
//! bounded rate of refused requests (`metrics::refusal_log`).

pub mod trusted_proxy;

use std::net::SocketAddr;

use http::HeaderMap;
use metahook_config::{Config, ConfigError, TlsMode};

pub use self::trusted_proxy::TrustedProxy;
pub use crate::metrics::labels::Rejection;

impl Rejection {
    /// The body of the 403 (no detail an attacker could use beyond the reason).
    pub fn message(self) -> &'static str {
        match self {
            Rejection::NoCertificate => "a client certificate is required\n",
            Rejection::Untrusted => "the client certificate is not trusted\n",
            Rejection::NameMismatch => {
                "the client certificate names a client that is not allowed\n"
            }
            Rejection::Expired => "the client certificate has expired\n",
            Rejection::UntrustedProxy => {
                "requests must come through the trusted proxy that checks client certificates\n"
            }
        }
    }
}

/// A refused request: the reason (for the metric) and what exactly was wrong (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The counted reason.
    pub reason: Rejection,
    /// Details for the log line: names seen, header values (truncated), peer checks.
    pub detail: String,
}

impl Refusal {
    /// A refusal for `reason` with a log detail.
    pub fn new(reason: Rejection, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

/// What is known about the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The TCP peer address (the ingress, when there is one).
    pub addr: SocketAddr,
    /// The subject CN(s) and DNS SANs of the client certificate the TLS handshake verified,
    /// lowercase; `None` when no certificate was presented or the connection is plain HTTP.
    pub client_names: Option<Vec<String>>,
}

impl Peer {
    /// A peer on a plain connection (or one without a client certificate).
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            client_names: None,
        }
    }
}

/// The policy for endpoint paths, from the configuration.
#[derive(Debug)]
pub enum ClientAuth {
    /// No client authentication beyond the signature (plain HTTP or `tls.mode: server`).
    Open,
    /// `tls.mode: mutual`: the handshake verified the chain; the names are checked here.
    Certificate {
        /// `tls.allowed_client_names`.
        allowed: Vec<String>,
    },
    /// `trusted_proxy`: an ingress terminated mTLS and passes its verdict in headers.
    Proxy(TrustedProxy),
}

impl ClientAuth {
    /// The policy `config` asks for (validation already forbids mutual TLS together with a
    /// trusted proxy).
    pub fn from_config(config: &Config) -> Result<ClientAuth, ConfigError> {
        if let Some(tls) = &config.tls
            && tls.mode == TlsMode::Mutual
        {
            return Ok(ClientAuth::Certificate {
                allowed: tls.allowed_client_names.clone(),
            });
        }
        match &config.trusted_proxy {
            Some(proxy) => Ok(ClientAuth::Proxy(TrustedProxy::new(proxy)?)),
            None => Ok(ClientAuth::Open),
        }
    }

    /// Whether every request reaching an endpoint was verified as Meta's by its client
    /// certificate (then limits per client address would only limit Meta, or the ingress
    /// all of Meta's requests come through).
    pub fn verifies_clients(&self) -> bool {
        !matches!(self, ClientAuth::Open)
    }

    /// Whether a request on an endpoint path from `peer` with `headers` may proceed.
    pub fn check(&self, peer: &Peer, headers: &HeaderMap) -> Result<(), Refusal> {
        match self {
            ClientAuth::Open => Ok(()),
            ClientAuth::Certificate { allowed } => check_names(peer, allowed),
            ClientAuth::Proxy(proxy) => proxy.check(peer.addr.ip(), headers),
        }
    }
}

fn check_names(peer: &Peer, allowed: &[String]) -> Result<(), Refusal> {
    let Some(names) = &peer.client_names else {
        return Err(Refusal::new(
            Rejection::NoCertificate,
            "no client certificate was presented",
        ));
    };
    if name_allowed(names.iter().map(String::as_str), allowed) {
        Ok(())
    } else {
        Err(Refusal::new(
            Rejection::NameMismatch,
            format!(
                "client certificate names {names:?}; allowed: {allowed:?}",
                names = names.iter().map(|n| truncate(n, 128)).collect::<Vec<_>>()
            ),
        ))
    }
}

/// Whether any of `names` is one of `allowed`: exact, ASCII case-insensitive (DNS names are
/// case-insensitive). No wildcard matching: a wildcard in a client certificate naming
/// whole domains of clients is not what `allowed_client_names` means.
pub fn name_allowed<'a>(mut names: impl Iterator<Item = &'a str>, allowed: &[String]) -> bool {
    names.any(|name| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// At most `max` bytes of `text` (on a character boundary), for log lines about input a
/// client controls.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(names: Option<&[&str]>) -> Peer {
        Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            client_names: names.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn names_are_checked_exactly_and_case_insensitively() {
        let policy = ClientAuth::Certificate {
            allowed: vec!["client.webhooks.fbclientcerts.com".into()],
        };
        let headers = HeaderMap::new();
        assert_eq!(
            policy.check(&peer(None), &headers).map_err(|r| r.reason),
            Err(Rejection::NoCertificate)
        );
        assert!(
            policy
                .check(
                    &peer(Some(&["other", "Client.Webhooks.FBClientCerts.com"])),
                    &headers
                )
                .is_ok()
        );
        for wrong in [
            "webhooks.fbclientcerts.com",
            "*.webhooks.fbclientcerts.com",
            "client.webhooks.fbclientcerts.com.evil",
        ] {
            assert_eq!(
                policy
                    .check(&peer(Some(&[wrong])), &headers)
                    .map_err(|r| r.reason),
                Err(Rejection::NameMismatch),
                "{wrong}"
            );
        }
        assert!(ClientAuth::Open.check(&peer(None), &headers).is_ok());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
