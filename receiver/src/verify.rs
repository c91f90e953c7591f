//! Meta's verification handshake and request signatures (pure; no I/O).
//!
//! POST bodies are signed with HMAC-SHA256 keyed by the app secret, over the raw bytes as
//! received: never re-serialize before checking, since Meta signs its escaped form
//! (`\u00e4`, `\/`). Comparisons are constant time.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The signature header Meta sends on every POST.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The legacy SHA-1 signature header, honoured only where an endpoint opts in.
pub const LEGACY_SIGNATURE_HEADER: &str = "x-hub-signature";

/// Why a signature was not accepted. The reason is a metric label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header (HTTP 401).
    #[error("the request has no X-Hub-Signature-256 header")]
    Missing,
    /// The header is not `sha256=` followed by 64 hex digits (HTTP 403).
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    /// Well formed, but no configured secret produces it (HTTP 403).
    #[error("the signature does not match the body under any configured app secret")]
    Mismatch,
}

impl SignatureError {
    /// The `reason` label of `metahook_signature_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed(_) => "malformed",
            SignatureError::Mismatch => "mismatch",
        }
    }
}

/// The algorithm of a signature header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `X-Hub-Signature-256: sha256=<64 hex>`.
    Sha256,
    /// Legacy `X-Hub-Signature: sha1=<40 hex>`.
    Sha1,
}

impl Algorithm {
    fn prefix(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256=",
            Algorithm::Sha1 => "sha1=",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha1 => 20,
        }
    }
}

/// Checks a signature header value against the body under each secret (current first,
/// then the previous one during a rotation window). Returns the verified digest, which
/// identifies the body (a redelivery carries the same one).
pub fn verify_signature<S: AsRef<[u8]>>(
    algorithm: Algorithm,
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[S],
) -> Result<Vec<u8>, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let expected = decode_header(algorithm, header)?;
    let matched = secrets.iter().any(|secret| {
        let secret = secret.as_ref();
        match algorithm {
            Algorithm::Sha256 => hmac_matches::<Hmac<Sha256>>(secret, body, &expected),
            Algorithm::Sha1 => hmac_matches::<Hmac<Sha1>>(secret, body, &expected),
        }
    });
    if matched {
        Ok(expected)
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn hmac_matches<M: Mac + hmac::digest::KeyInit>(
    secret: &[u8],
    body: &[u8],
    expected: &[u8],
) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(expected).is_ok()
}

/// `sha256=<hex>` (either case) to the digest bytes.
fn decode_header(algorithm: Algorithm, header: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let header = header.trim_ascii();
    let prefix = algorithm.prefix().as_bytes();
    let hex_part = match header.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(prefix) => &header[prefix.len()..],
        _ => {
            return Err(SignatureError::Malformed(
                "it does not start with the algorithm prefix",
            ));
        }
    };
    if hex_part.len() % 2 != 0 {
        return Err(SignatureError::Malformed("odd number of hex digits"));
    }
    let digest = hex::decode(hex_part).map_err(|_| SignatureError::Malformed("not hexadecimal"))?;
    if digest.len() != algorithm.digest_len() {
        return Err(SignatureError::Malformed("wrong digest length"));
    }
    Ok(digest)
}

/// The `X-Hub-Signature-256` value Meta would send for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    sign_with(Algorithm::Sha256, secret, body)
}

/// The signature header value for `body` under `secret` with `algorithm`.
pub fn sign_with(algorithm: Algorithm, secret: &[u8], body: &[u8]) -> String {
    let digest = match algorithm {
        Algorithm::Sha256 => {
            let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret)
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            mac.finalize().into_bytes().to_vec()
        }
        Algorithm::Sha1 => {
            let mut mac = <Hmac<Sha1> as hmac::digest::KeyInit>::new_from_slice(secret)
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{}{}", algorithm.prefix(), hex::encode(digest))
}

/// Why a verification handshake was refused (HTTP 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// `hub.mode` absent or not `subscribe`.
    #[error("hub.mode is not subscribe")]
    Mode,
    /// `hub.verify_token` absent or different from the configured token.
    #[error("hub.verify_token does not match")]
    Token,
    /// `hub.challenge` absent.
    #[error("hub.challenge is missing")]
    Challenge,
}

/// Answers `GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`: the challenge to
/// echo back exactly as received (it is not always an integer) when T matches.
pub fn handshake(query: Option<&str>, verify_token: &[u8]) -> Result<String, HandshakeError> {
    let (mut mode, mut token, mut challenge) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "hub.mode" => mode = Some(value),
            "hub.verify_token" => token = Some(value),
            "hub.challenge" => challenge = Some(value),
            _ => {}
        }
    }
    if mode.as_deref() != Some("subscribe") {
        return Err(HandshakeError::Mode);
    }
    let token = token.ok_or(HandshakeError::Token)?;
    if !tokens_equal(token.as_bytes(), verify_token) {
        return Err(HandshakeError::Token);
    }
    challenge
        .map(|c| c.into_owned())
        .ok_or(HandshakeError::Challenge)
}

/// Constant-time equality that also hides the lengths (both sides are hashed first).
pub fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"TEST_APP_SECRET";

    #[test]
    fn known_vector() {
        assert_eq!(
            sign(SECRET, b"test"),
            "sha256=0c61947b610d4f45e65f3d680e26027121ec2413e77598bcb6cfc6e0d9888221"
        );
    }

    #[test]
    fn accepts_either_hex_case_and_rejects_the_rest() {
        let good = sign(SECRET, b"body");
        let upper = format!("sha256={}", good["sha256=".len()..].to_uppercase());
        let verify = |h: &str| {
            verify_signature(Algorithm::Sha256, Some(h.as_bytes()), b"body", &[SECRET]).map(|_| ())
        };
        assert_eq!(verify(&good), Ok(()));
        assert_eq!(verify(&upper), Ok(()));
        assert_eq!(
            verify(&good[..good.len() - 1]),
            Err(SignatureError::Malformed("odd number of hex digits"))
        );
        assert_eq!(
            verify(&good.replace("sha256=", "sha1=")),
            Err(SignatureError::Malformed(
                "it does not start with the algorithm prefix"
            ))
        );
        assert_eq!(
            verify(&format!("sha256={}", "zz".repeat(32))),
            Err(SignatureError::Malformed("not hexadecimal"))
        );
        assert_eq!(
            verify(&good[..good.len() - 2]),
            Err(SignatureError::Malformed("wrong digest length"))
        );
        assert_eq!(
            verify(&sign(b"other", b"body")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature::<&[u8]>(Algorithm::Sha256, None, b"body", &[SECRET]).map(|_| ()),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn previous_secret_is_accepted_when_configured() {
        let header = sign(b"old", b"body");
        let both: [&[u8]; 2] = [SECRET, b"old"];
        assert_eq!(
            verify_signature(Algorithm::Sha256, Some(header.as_bytes()), b"body", &both)
                .map(|_| ()),
            Ok(())
        );
        assert_eq!(
            verify_signature(
                Algorithm::Sha256,
                Some(header.as_bytes()),
                b"body",
                &[SECRET]
            )
            .map(|_| ()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn handshake_echoes_the_challenge_verbatim() {
        let q = "hub.mode=subscribe&hub.verify_token=tok%20en&hub.challenge=abc%2B1";
        assert_eq!(handshake(Some(q), b"tok en").as_deref(), Ok("abc+1"));
        assert_eq!(handshake(Some(q), b"other"), Err(HandshakeError::Token));
        let q = "hub.mode=unsubscribe&hub.verify_token=t&hub.challenge=1";
        assert_eq!(handshake(Some(q), b"t"), Err(HandshakeError::Mode));
        assert_eq!(handshake(None, b"t"), Err(HandshakeError::Mode));
        assert_eq!(
            handshake(Some("hub.mode=subscribe&hub.verify_token=t"), b"t"),
            Err(HandshakeError::Challenge)
        );
    }
}
