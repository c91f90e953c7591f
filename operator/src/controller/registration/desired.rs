//! What a registration pass wants Meta to hold: the spec with its tokens resolved.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crd::WebhookSubscription;
use crate::crd::{InstagramLogin, RegistrationSpec, SecretKeyRef};
use crate::graph::Credentials;

/// The registration a subscription asks for, if any.
pub fn requested(sub: &WebhookSubscription) -> Option<&RegistrationSpec> {
    sub.spec.registration.as_ref()
}

/// The Secret values a registration reads, by Secret name and key.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

pub(super) fn secret_text(data: &SecretData, reference: &SecretKeyRef) -> Option<String> {
    let value = data.get(&reference.name)?.get(&reference.key)?;
    let text = String::from_utf8(value.clone()).ok()?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The first 16 hex characters of the token's HMAC-SHA256 keyed with the app access token
/// `{app-id}|{app-secret}`: enough to see the token changed (and to register it again), and
/// useless to test a guessed token against, since only Meta and the operator hold the app
/// secret (an unkeyed hash in a status anyone may read let a chosen token be guessed
/// offline). A rotated app secret changes it too: the app is registered once more, with the
/// same token, which is harmless.
pub fn token_digest(app_token: &str, token: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(app_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())[..16].to_owned()
}

/// A Page or WABA edge as wanted, with its token.
#[derive(Clone)]
pub struct DesiredNode {
    /// The id.
    pub id: String,
    /// Its token's reference.
    pub token_ref: SecretKeyRef,
    /// Its token, with its `appsecret_proof` unless the spec turns that off.
    pub token: Credentials,
    /// For a WABA: set the callback override.
    pub override_callback: bool,
    /// For a WABA: the phone numbers whose callback override to set (with its token).
    pub phone_numbers: Vec<String>,
}

impl std::fmt::Debug for DesiredNode {
    /// Everything but the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredNode")
            .field("id", &self.id)
            .field("token_ref", &self.token_ref)
            .field("token", &self.token)
            .field("override_callback", &self.override_callback)
            .field("phone_numbers", &self.phone_numbers)
            .finish()
    }
}

/// Everything a registration pass wants Meta to hold, tokens resolved.
#[derive(Clone)]
pub struct Desired {
    /// The app.
    pub app_id: String,
    /// The object.
    pub object: String,
    /// The callback URL.
    pub callback_url: String,
    /// The fields.
    pub fields: Vec<String>,
    /// The verify token.
    pub verify_token: String,
    /// The app secret's reference and the app token made of it.
    pub app_secret_ref: SecretKeyRef,
    /// `{app-id}|{app-secret}`.
    pub app_token: String,
    /// Manage the app subscription.
    pub app_subscription: bool,
    /// Replace a callback, WABA override or phone number override this subscription did
    /// not set (`spec.registration.takeOverCallback`).
    pub take_over_callback: bool,
    /// The Pages or Instagram accounts.
    pub pages: Vec<DesiredNode>,
    /// The WABAs.
    pub wabas: Vec<DesiredNode>,
}

impl std::fmt::Debug for Desired {
    /// Everything but the verify token and the app token (which holds the app secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("app_id", &self.app_id)
            .field("object", &self.object)
            .field("callback_url", &self.callback_url)
            .field("fields", &self.fields)
            .field("verify_token", &"redacted")
            .field("app_secret_ref", &self.app_secret_ref)
            .field("app_token", &"redacted")
            .field("app_subscription", &self.app_subscription)
            .field("take_over_callback", &self.take_over_callback)
            .field("pages", &self.pages)
            .field("wabas", &self.wabas)
            .finish()
    }
}

impl Desired {
    /// Builds what the spec asks for from the resolved Secrets; the error names what is
    /// missing (secret resolution ran first, so only an empty value gets here).
    pub fn build(
        sub: &WebhookSubscription,
        spec: &RegistrationSpec,
        endpoint: Option<&str>,
        verify_token: &SecretKeyRef,
        data: &SecretData,
    ) -> Result<Desired, String> {
        let callback_url = spec
            .callback_url
            .clone()
            .or_else(|| endpoint.map(str::to_owned))
            .ok_or("registration.callbackURL is not set and the subscription has no endpoint")?;
        let mut fields = spec
            .fields
            .clone()
            .unwrap_or_else(|| sub.spec.fields.clone());
        fields.sort();
        fields.dedup();
        let text = |reference: &SecretKeyRef, what: &str| {
            secret_text(data, reference).ok_or_else(|| {
                format!(
                    "{what}: Secret {} key {} is empty or not UTF-8",
                    reference.name, reference.key
                )
            })
        };
        let verify_token = text(verify_token, "the verify token")?;
        let app_secret_ref = spec
            .app_secret_ref
            .clone()
            .unwrap_or_else(|| sub.spec.app_secret_ref.clone());
        let app_secret = text(&app_secret_ref, "the app secret")?;
        let node = |id: &str,
                    token_ref: &SecretKeyRef,
                    proof: bool,
                    override_callback: bool,
                    phone_numbers: Vec<String>| {
            let token = text(token_ref, &format!("the token of {id}"))?;
            Ok::<_, String>(DesiredNode {
                id: id.to_owned(),
                token_ref: token_ref.clone(),
                token: Credentials::for_token(token, &app_secret, proof),
                override_callback,
                phone_numbers,
            })
        };
        Ok(Desired {
            app_id: spec.app_id.clone(),
            object: sub.spec.object.clone(),
            callback_url,
            fields,
            verify_token,
            app_token: format!("{}|{app_secret}", spec.app_id),
            app_secret_ref,
            app_subscription: spec.app_subscription,
            take_over_callback: spec.take_over_callback,
            pages: spec
                .pages
                .iter()
                .map(|p| {
                    let mut page = node(
                        &p.id,
                        &p.access_token_ref,
                        p.app_secret_proof,
                        false,
                        Vec::new(),
                    )?;
                    // Instagram Login: an Instagram User token, valid on graph.instagram.com
                    // only (the CRD allows it with object instagram only).
                    if p.login == InstagramLogin::Instagram {
                        page.token = page.token.on_instagram();
                    }
                    Ok::<_, String>(page)
                })
                .collect::<Result<_, _>>()?,
            wabas: spec
                .whatsapp_business_accounts
                .iter()
                .map(|w| {
                    let phones = w.phone_numbers.iter().map(|p| p.id.clone()).collect();
                    node(
                        &w.id,
                        &w.access_token_ref,
                        w.app_secret_proof,
                        w.override_callback,
                        phones,
                    )
                })
                .collect::<Result<_, _>>()?,
        })
    }
}
