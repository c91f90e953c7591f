//! Step 3: TLS. The user's certificate is inspected; otherwise the namespace CA (GET,
//! created if absent) and the serving certificate (GET, re-issued when absent, for other
//! names or CA, or past two thirds of its lifetime).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use time::OffsetDateTime;

use super::Context;
use super::api::{apply_claimed, get_secret, publish};
use super::ownership::Claim;
use crate::certs::{self, CaMaterial};
use crate::crd::{CertificateStatus, TlsModeSpec, WebhookSubscription};
use crate::error::Error;
use crate::resources::secrets::{
    self as secret_objects, CA_FINGERPRINT_ANNOTATION, CA_SECRET_NAME,
};
use crate::resources::{self, Inputs};
use crate::status::CertificateState;

/// What the TLS step decided.
#[derive(Debug)]
pub struct Tls {
    /// The certificate's state, for the status.
    pub certificate: CertificateState,
    /// The kubernetes.io/tls Secret the receiver serves, when it speaks TLS.
    pub secret: Option<String>,
    /// When the operator-issued certificate is due for renewal.
    pub renew_at: Option<OffsetDateTime>,
    /// The issued certificate as stored, for the rollout digest (the user's is digested
    /// with the other referenced keys).
    pub digest_part: Option<Vec<u8>>,
}

/// The serving certificate: none, the user's (read at resolution), or the operator's.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
    resolved: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    claim: Option<&Claim<Secret>>,
    now: OffsetDateTime,
) -> Result<Tls, Error> {
    let (namespace, name) = (&inputs.namespace, &inputs.name);
    match (&sub.spec.tls.mode, &sub.spec.tls.secret_ref) {
        (TlsModeSpec::None, _) => {
            ctx.metrics.forget_certificate(namespace, name);
            Ok(Tls {
                certificate: CertificateState::NotRequired,
                secret: None,
                renew_at: None,
                digest_part: None,
            })
        }
        (_, Some(user_tls)) => {
            let cert_pem = resolved
                .get(&user_tls.name)
                .and_then(|data| data.get("tls.crt"))
                .cloned()
                .unwrap_or_default();
            let certificate = match certs::inspect(&cert_pem) {
                Ok(info) => {
                    ctx.metrics.certificate_expires(
                        namespace,
                        name,
                        info.not_after.unix_timestamp(),
                    );
                    CertificateState::Provided(CertificateStatus {
                        secret_name: user_tls.name.clone(),
                        not_after: Some(certs::rfc3339(info.not_after)),
                        renew_at: None,
                    })
                }
                Err(err) => CertificateState::Failed(format!(
                    "Secret {namespace}/{} key tls.crt: {err}",
                    user_tls.name
                )),
            };
            Ok(Tls {
                certificate,
                secret: Some(user_tls.name.clone()),
                renew_at: None,
                digest_part: None,
            })
        }
        (_, None) => {
            let claim = claim.ok_or_else(|| {
                Error::Incomplete(format!(
                    "WebhookSubscription {name}: no claim of its serving certificate's Secret"
                ))
            })?;
            ensure_serving_certificate(ctx, sub, inputs, secrets, claim, now).await
        }
    }
}

/// The namespace CA: read, or created when absent (create, not apply, so two
/// subscriptions reconciled at once cannot both write one: the loser reads the winner's).
/// A Secret of that name the operator did not make (no `managed-by` label of its own) is
/// a [`Error::Conflict`]: its key would sign every receiver's certificate.
async fn ensure_ca(
    secrets: &Api<Secret>,
    namespace: &str,
    now: OffsetDateTime,
) -> Result<CaMaterial, Error> {
    let read = |secret: &Secret| -> Result<CaMaterial, Error> {
        let data = secret.data.as_ref();
        let get = |key: &str| {
            data.and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .ok_or_else(|| {
                    Error::Certificate(format!(
                        "Secret {namespace}/{CA_SECRET_NAME} has no key {key}"
                    ))
                })
        };
        Ok(CaMaterial {
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        })
    };
    if let Some(secret) = get_secret(secrets, CA_SECRET_NAME).await? {
        if !secret_objects::is_operator_ca(&secret) {
            return Err(Error::Conflict(format!(
                "Secret {namespace}/{CA_SECRET_NAME} exists and was not made by the operator \
                 (it lacks the label app.kubernetes.io/managed-by={}): rename or remove it, \
                 the operator keeps the namespace's CA there",
                crate::FIELD_MANAGER
            )));
        }
        return read(&secret);
    }
    let ca = CaMaterial::generate(namespace, now)?;
    match secrets
        .create(
            &PostParams::default(),
            &secret_objects::ca_secret(namespace, &ca),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(%namespace, "created the namespace's metahook CA");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets
                .get(CA_SECRET_NAME)
                .await
                .map_err(|e| Error::kube(format!("get Secret {CA_SECRET_NAME}"), e))?;
            read(&secret)
        }
        Err(e) => Err(Error::kube(format!("create Secret {CA_SECRET_NAME}"), e)),
    }
}

/// The operator-issued serving certificate: kept while valid for the right names and CA,
/// re-issued otherwise (with an Event).
async fn ensure_serving_certificate(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
    claim: &Claim<Secret>,
    now: OffsetDateTime,
) -> Result<Tls, Error> {
    let ca = ensure_ca(secrets, &inputs.namespace, now).await?;
    let ca_fingerprint = ca.fingerprint()?;
    let secret_name = resources::tls_secret_name(&inputs.name);
    let host = sub.spec.ingress.as_ref().map(|i| i.host.as_str());
    let names = certs::serving_names(&inputs.name, &inputs.namespace, host);
    let existing = claim.object.as_ref();
    let existing_cert = existing
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get("tls.crt"))
        .map(|v| v.0.clone());
    let info = existing_cert
        .as_deref()
        .and_then(|pem| certs::inspect(pem).ok());
    let existing_fingerprint = existing
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(CA_FINGERPRINT_ANNOTATION))
        .map(String::as_str);
    let reason = certs::renewal_reason(
        info.as_ref(),
        existing_fingerprint,
        &names,
        &ca_fingerprint,
        now,
    );
    let (not_before, not_after, content) = match reason {
        None => {
            let info = info.ok_or_else(|| {
                Error::Certificate("unreachable: kept certificate has no info".to_owned())
            })?;
            (
                info.not_before,
                info.not_after,
                existing_cert.unwrap_or_default(),
            )
        }
        Some(reason) => {
            let issued = ca.issue(&names, now, ctx.settings.certificate_lifetime)?;
            let secret = secret_objects::serving_secret(inputs, &issued)?;
            // The rollout digest covers tls.crt exactly as stored (leaf and CA), as later
            // passes read it back: digesting the leaf alone here rolled every new
            // receiver a second time on the next pass.
            let stored = secret
                .data
                .as_ref()
                .and_then(|data| data.get("tls.crt"))
                .map(|value| value.0.clone())
                .unwrap_or_default();
            apply_claimed(ctx, sub, secrets, claim, &secret).await?;
            // A first issue says so; a renewal says why (another CA, new names, age).
            let (event_reason, note) = match existing {
                Some(_) => (
                    "CertificateRenewed",
                    format!(
                        "renewed the serving certificate in Secret {}/{secret_name} ({reason}); valid until {}",
                        inputs.namespace,
                        certs::rfc3339(issued.not_after)
                    ),
                ),
                None => (
                    "CertificateIssued",
                    format!(
                        "issued the serving certificate in Secret {}/{secret_name}; valid until {}",
                        inputs.namespace,
                        certs::rfc3339(issued.not_after)
                    ),
                ),
            };
            publish(
                ctx,
                sub,
                EventType::Normal,
                event_reason,
                "Certificate",
                note,
            )
            .await;
            (issued.not_before, issued.not_after, stored)
        }
    };
    let renew_at = certs::renew_at(not_before, not_after);
    ctx.metrics
        .certificate_expires(&inputs.namespace, &inputs.name, not_after.unix_timestamp());
    let state = CertificateState::Ready(CertificateStatus {
        secret_name: secret_name.clone(),
        not_after: Some(certs::rfc3339(not_after)),
        renew_at: Some(certs::rfc3339(renew_at)),
    });
    Ok(Tls {
        certificate: state,
        secret: Some(secret_name),
        renew_at: Some(renew_at),
        digest_part: Some(content),
    })
}
