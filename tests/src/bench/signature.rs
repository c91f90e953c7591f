//! Meta's `X-Hub-Signature-256` scheme: `sha256=` followed by the lowercase hex
//! HMAC-SHA256 of the raw body, keyed with the app secret.
//!
//! The load generator signs with it and the baseline server verifies with it, so both sides
//! of the baseline measurement do the same cryptographic work a real receiver must do.

use anyhow::{Result, anyhow};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Prefix Meta puts before the hex digest.
const PREFIX: &[u8] = b"sha256=";

type HmacSha256 = Hmac<Sha256>;

/// An HMAC keyed once with the app secret; cloned per body so the key schedule is not
/// recomputed for every request.
#[derive(Clone)]
pub struct Signer {
    keyed: HmacSha256,
}

impl std::fmt::Debug for Signer {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

/// Outcome of checking a signature header against a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The header matches the body.
    Valid,
    /// The header is not `sha256=` followed by 64 hex digits.
    Malformed,
    /// The header is well formed but the digest does not match.
    Mismatch,
}

impl Signer {
    /// Keys an HMAC-SHA256 with `secret`.
    pub fn new(secret: &[u8]) -> Result<Self> {
        let keyed = HmacSha256::new_from_slice(secret)
            .map_err(|err| anyhow!("keying HMAC-SHA256: {err}"))?;
        Ok(Self { keyed })
    }

    /// The full header value (`sha256=<hex>`) for `body`.
    pub fn header_value(&self, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks `header` against `body`. The digest comparison is constant time
    /// (`Mac::verify_slice`), as it must be in a server that faces the internet.
    pub fn verify(&self, body: &[u8], header: &[u8]) -> Verdict {
        let Some(hex_digest) = header.strip_prefix(PREFIX) else {
            return Verdict::Malformed;
        };
        let mut expected = [0u8; 32];
        if hex::decode_to_slice(hex_digest, &mut expected).is_err() {
            return Verdict::Malformed;
        }
        let mut mac = self.keyed.clone();
        mac.update(body);
        match mac.verify_slice(&expected) {
            Ok(()) => Verdict::Valid,
            Err(_) => Verdict::Mismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_body_verifies_and_tampering_is_detected() -> Result<()> {
        let signer = Signer::new(b"secret")?;
        let header = signer.header_value(b"{\"a\":1}");
        assert!(header.starts_with("sha256="));
        assert_eq!(header.len(), "sha256=".len() + 64);
        assert_eq!(header, header.to_lowercase());
        assert_eq!(
            signer.verify(b"{\"a\":1}", header.as_bytes()),
            Verdict::Valid
        );
        assert_eq!(
            signer.verify(b"{\"a\":2}", header.as_bytes()),
            Verdict::Mismatch
        );
        assert_eq!(signer.verify(b"{\"a\":1}", b"sha1=abc"), Verdict::Malformed);
        assert_eq!(
            signer.verify(b"{\"a\":1}", b"sha256=zz"),
            Verdict::Malformed
        );
        Ok(())
    }

    #[test]
    fn matches_a_known_hmac_sha256_vector() -> Result<()> {
        // RFC 4231 test case 2.
        let signer = Signer::new(b"Jefe")?;
        assert_eq!(
            signer.header_value(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        Ok(())
    }
}
