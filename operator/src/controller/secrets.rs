//! Step 2: every Secret key the subscription references (all of
//! [`secret_references`] but the serving certificate and the admin token the operator makes itself). A
//! Secret the spec names is used only when it may be referenced
//! ([`crate::policy::not_referenceable`]: marked `metahook.io/referenceable: "true"` by a
//! namespace admin); an unmarked one is reported like a missing one and its values are
//! not used.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::api::get_secret;
use super::token::Token;
use crate::crd::{SecretKeyRef, WebhookSubscription};
use crate::error::Error;
use crate::policy::not_referenceable;
use crate::resources::{Reader, Source, secret_references};
use crate::status::{Missing, Unresolved};

/// What resolution found.
#[derive(Default)]
pub struct Resolved {
    /// The keys that are missing (the pass ends with `SecretsResolved=False`).
    pub missing: Vec<Missing>,
    /// Each referenced key's name and value, for the pods' rollout digest.
    pub digest_parts: Vec<Vec<u8>>,
    /// The data of each Secret read, by name.
    pub data: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl std::fmt::Debug for Resolved {
    /// The keys read, never their values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: BTreeMap<&String, Vec<&String>> = self
            .data
            .iter()
            .map(|(secret, data)| (secret, data.keys().collect()))
            .collect();
        f.debug_struct("Resolved")
            .field("missing", &self.missing)
            .field(
                "digest_parts",
                &format_args!("[{} redacted]", self.digest_parts.len()),
            )
            .field("data_keys", &keys)
            .finish()
    }
}

/// Resolves every referenced Secret key; the generated token's Secret is not read again.
pub(super) async fn step(
    sub: &WebhookSubscription,
    token: Token,
    secrets: &Api<Secret>,
) -> Result<Resolved, Error> {
    let refs: Vec<(SecretKeyRef, bool)> = secret_references(sub)
        .into_iter()
        .filter(|reference| {
            !matches!(
                reference.source,
                Source::IssuedCertificate | Source::GeneratedAdminToken
            )
        })
        .map(|reference| (reference.key, reference.reader != Reader::Operator))
        .collect();
    let known = token
        .generated
        .map(|secret| (secret.metadata.name.clone().unwrap_or_default(), secret))
        .into_iter()
        .collect();
    resolve(secrets, &refs, known, sub.metadata.uid.as_deref()).await
}

/// GETs each referenced Secret once (in name order; those in `known` were just read or
/// written, by the operator, for this subscription) and checks it may be referenced and
/// has the keys. Keys flagged `true` are part of the pods' rollout digest; the operator's
/// own tokens are not (a rotated Page token restarts no receiver).
async fn resolve(
    secrets: &Api<Secret>,
    refs: &[(SecretKeyRef, bool)],
    mut known: BTreeMap<String, Secret>,
    subscription_uid: Option<&str>,
) -> Result<Resolved, Error> {
    let mut by_secret: BTreeMap<&str, Vec<&SecretKeyRef>> = BTreeMap::new();
    for (reference, _) in refs {
        by_secret
            .entry(reference.name.as_str())
            .or_default()
            .push(reference);
    }
    let in_digest = |reference: &SecretKeyRef| {
        refs.iter()
            .any(|(candidate, digested)| *digested && candidate == reference)
    };
    let mut missing = Vec::new();
    let mut digest_parts = Vec::new();
    let mut fetched = BTreeMap::new();
    for (name, wanted) in by_secret {
        let secret = match known.remove(name) {
            Some(secret) => Some(secret),
            None => match get_secret(secrets, name).await? {
                Some(secret) => {
                    if let Some(why) = not_referenceable(&secret, subscription_uid) {
                        // One entry per Secret; its values go no further than here.
                        let mut sorted = wanted.clone();
                        sorted.sort();
                        missing.extend(sorted.first().map(|reference| Missing {
                            reference: (*reference).clone(),
                            problem: Unresolved::NotReferenceable(why),
                        }));
                        continue;
                    }
                    Some(secret)
                }
                None => None,
            },
        };
        let Some(secret) = secret else {
            for reference in wanted {
                if !missing.iter().any(|m: &Missing| m.reference == *reference) {
                    missing.push(Missing {
                        reference: reference.clone(),
                        problem: Unresolved::SecretAbsent,
                    });
                }
            }
            continue;
        };
        let data = keys_of(secret);
        let mut sorted = wanted.clone();
        sorted.sort();
        sorted.dedup();
        for reference in sorted {
            if let Some(value) = data.get(&reference.key) {
                if !in_digest(reference) {
                    continue;
                }
                digest_parts.push(format!("{}/{}", reference.name, reference.key).into_bytes());
                digest_parts.push(value.clone());
            } else if !missing.iter().any(|m: &Missing| m.reference == *reference) {
                missing.push(Missing {
                    reference: reference.clone(),
                    problem: Unresolved::KeyAbsent,
                });
            }
        }
        fetched.insert(name.to_owned(), data);
    }
    Ok(Resolved {
        missing,
        digest_parts,
        data: fetched,
    })
}

/// A Secret's keys and their bytes: `data`, with `stringData` over it (as the API server
/// merges them).
pub(super) fn keys_of(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut keys: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect();
    for (key, value) in secret.string_data.unwrap_or_default() {
        keys.insert(key, value.into_bytes());
    }
    keys
}
