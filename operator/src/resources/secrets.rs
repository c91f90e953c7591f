//! Secrets the operator creates: the generated verify token, the admin token, the serving
//! certificate, and the namespace's CA. Each carries [`REFERENCEABLE_LABEL`], so the operator's
//! metadata-only Secret watch (selected by that label) sees them change; only the
//! subscription owning one may reference it ([`crate::policy::not_referenceable`]).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ADMIN_TOKEN_KEY, Inputs, VERIFY_TOKEN_KEY};
use crate::certs::{CaMaterial, ServingCertificate};
use crate::error::Error;
use crate::policy::REFERENCEABLE_LABEL;

/// The metadata of a Secret the operator makes for a subscription: [`Inputs::meta`] and
/// the referenceable label.
fn owned_meta(inputs: &Inputs<'_>, name: String) -> Result<ObjectMeta, Error> {
    let mut metadata = inputs.meta(name)?;
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REFERENCEABLE_LABEL.to_owned(), "true".to_owned());
    Ok(metadata)
}

/// Name of the namespace's CA Secret.
pub const CA_SECRET_NAME: &str = "metahook-ca";
/// Annotation on a serving-certificate Secret: the SHA-256 of the CA certificate that
/// signed it, so a replaced CA re-issues its certificates.
pub const CA_FINGERPRINT_ANNOTATION: &str = "metahook.io/ca-fingerprint";

/// A new verify token: 32 random bytes, URL-safe base64 without padding (43 characters,
/// safe in a query string as Meta sends it).
pub fn generate_verify_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The generated verify-token Secret, owned by the subscription.
pub fn verify_token_secret(inputs: &Inputs<'_>, token: &str) -> Result<Secret, Error> {
    Ok(Secret {
        metadata: owned_meta(inputs, super::verify_token_secret_name(&inputs.name))?,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            VERIFY_TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The generated admin-token Secret, owned by the subscription: the bearer token of its
/// receivers' admin endpoint (mounted into them; the operator reads it to drive
/// WebhookReplays). Made like the verify token ([`generate_verify_token`]).
pub fn admin_token_secret(inputs: &Inputs<'_>, token: &str) -> Result<Secret, Error> {
    Ok(Secret {
        metadata: owned_meta(inputs, super::admin_token_secret_name(&inputs.name))?,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            ADMIN_TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The serving certificate's kubernetes.io/tls Secret (tls.crt holds the leaf then the CA,
/// ca.crt the CA alone, for clients inside the cluster).
pub fn serving_secret(inputs: &Inputs<'_>, cert: &ServingCertificate) -> Result<Secret, Error> {
    let mut metadata = owned_meta(inputs, super::tls_secret_name(&inputs.name))?;
    metadata.annotations = Some(BTreeMap::from([(
        CA_FINGERPRINT_ANNOTATION.to_owned(),
        cert.ca_fingerprint.clone(),
    )]));
    Ok(Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(format!("{}{}", cert.cert_pem, cert.ca_pem).into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(cert.key_pem.clone().into_bytes()),
            ),
            (
                "ca.crt".to_owned(),
                ByteString(cert.ca_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    })
}

/// Was this Secret made by the operator as its namespace CA (labelled as [`ca_secret`]
/// labels it)? Anything else under that name is someone else's.
pub fn is_operator_ca(secret: &Secret) -> bool {
    let labels = secret.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    label("app.kubernetes.io/managed-by") == Some(crate::FIELD_MANAGER)
        && label("app.kubernetes.io/component") == Some("ca")
}

/// The namespace's CA Secret. Shared by every subscription of the namespace, so it has no
/// owner: deleting one subscription must not revoke the others' certificates.
pub fn ca_secret(namespace: &str, ca: &CaMaterial) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    crate::FIELD_MANAGER.to_owned(),
                ),
                ("app.kubernetes.io/component".to_owned(), "ca".to_owned()),
                (REFERENCEABLE_LABEL.to_owned(), "true".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(ca.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}
