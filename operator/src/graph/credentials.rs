//! A token as a Graph API call sends it: the access token and, for a user, Page,
//! system-user or phone-number token, its `appsecret_proof`.
//!
//! Meta asks servers to prove every call with `appsecret_proof` = hex HMAC-SHA256 of the
//! access token keyed with the app secret, and an app with "Require App Secret" on refuses
//! a call without it (code 100, "API calls from the server require an appsecret_proof
//! argument"). An app access token (`{app-id}|{app-secret}`) needs none. A token issued to
//! another app than the one whose secret the operator holds must go without a proof (Meta
//! answers a proof made with the wrong secret with "Invalid appsecret_proof"): that is the
//! `appSecretProof: false` switch of the spec.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// An access token and the proof sent with it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    token: String,
    proof: Option<String>,
    /// An Instagram User token (Instagram Login): valid only on graph.instagram.com.
    instagram: bool,
}

impl fmt::Debug for Credentials {
    /// Neither the token nor the proof.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &"redacted")
            .field("appsecret_proof", &self.proof.is_some())
            .finish()
    }
}

/// Hex HMAC-SHA256 of `token` keyed with `app_secret`: Meta's `appsecret_proof`.
pub fn appsecret_proof(app_secret: &str, token: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(app_secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl Credentials {
    /// A token sent with its proof, made with the secret of the app it was issued to.
    pub fn with_proof(token: impl Into<String>, app_secret: &str) -> Credentials {
        let token = token.into();
        let proof = appsecret_proof(app_secret, &token);
        Credentials {
            token,
            proof: Some(proof),
            instagram: false,
        }
    }

    /// A token sent as it is: an app access token, or a token of another app
    /// (`appSecretProof: false`).
    pub fn bare(token: impl Into<String>) -> Credentials {
        Credentials {
            token: token.into(),
            proof: None,
            instagram: false,
        }
    }

    /// With its proof when `proof` says so (the spec's `appSecretProof`), else bare.
    pub fn for_token(token: impl Into<String>, app_secret: &str, proof: bool) -> Credentials {
        if proof {
            Credentials::with_proof(token, app_secret)
        } else {
            Credentials::bare(token)
        }
    }

    /// The same token, as an Instagram User token (Instagram Login): its calls go to the
    /// Instagram host (graph.instagram.com).
    #[must_use]
    pub fn on_instagram(mut self) -> Credentials {
        self.instagram = true;
        self
    }

    /// Whether it is an Instagram User token (calls go to graph.instagram.com).
    pub fn is_instagram(&self) -> bool {
        self.instagram
    }

    /// The access token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `appsecret_proof`, when one is sent.
    pub fn proof(&self) -> Option<&str> {
        self.proof.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_is_metas_hmac_of_the_token() {
        // HMAC-SHA256(key "secret", "token"), as `openssl dgst -sha256 -hmac secret` prints it.
        assert_eq!(
            appsecret_proof("secret", "token"),
            "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
        );
        let proved = Credentials::with_proof("page-token", "app-secret");
        assert_eq!(proved.token(), "page-token");
        assert_eq!(
            proved.proof(),
            Some(appsecret_proof("app-secret", "page-token").as_str())
        );
        assert_eq!(Credentials::for_token("t", "s", false).proof(), None);
        assert!(!format!("{proved:?}").contains("page-token"));
    }
}
