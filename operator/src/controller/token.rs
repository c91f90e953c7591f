//! Step 1: the generated verify token, when the spec names none, and the admin token
//! (always: the receivers' admin endpoint, which WebhookReplays drive).

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;

use super::Context;
use super::api::{apply_claimed, publish};
use super::ownership::Claim;
use crate::crd::WebhookSubscription;
use crate::error::Error;
use crate::ownership::Holder;
use crate::resources::secrets as secret_objects;
use crate::resources::{ADMIN_TOKEN_KEY, Inputs, VERIFY_TOKEN_KEY};

/// What the token step leaves for the next: the generated token's Secret, just read or
/// written (so resolution does not GET it again), or none when the spec names the token.
#[derive(Default)]
pub struct Token {
    /// The generated verify token's Secret.
    pub generated: Option<Secret>,
}

impl std::fmt::Debug for Token {
    /// The Secret's name, never its token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field(
                "generated",
                &self.generated.as_ref().map(|secret| secret.name_any()),
            )
            .finish()
    }
}

/// Reads or makes the generated verify token when the spec names none (an apply when the
/// token is new or the Secret is not yet the subscription's), from the Secret step 0 read.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
    claim: Option<&Claim<Secret>>,
) -> Result<Token, Error> {
    let Some(claim) = claim else {
        return Ok(Token::default());
    };
    Ok(Token {
        generated: Some(ensure_verify_token(ctx, sub, inputs, secrets, claim).await?),
    })
}

/// Reads the generated verify token, or makes it, and returns its Secret. The Secret is
/// applied when the token is new, or the Secret is not yet the subscription's (an
/// adoption) or lacks the referenceable label (one made before the label existed: the
/// operator's metadata-only Secret watch sees only labelled Secrets); an existing token is
/// never changed.
async fn ensure_verify_token(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
    claim: &Claim<Secret>,
) -> Result<Secret, Error> {
    let name = &claim.name;
    let token = claim
        .object
        .as_ref()
        .and_then(|secret| secret.data.as_ref())
        .and_then(|data| data.get(VERIFY_TOKEN_KEY))
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
        .filter(|token| !token.is_empty());
    let (token, generated) = match token {
        Some(token) => (token, false),
        None => (secret_objects::generate_verify_token(), true),
    };
    let owned = matches!(claim.holder, Holder::Subscription { .. });
    let desired = secret_objects::verify_token_secret(inputs, &token)?;
    let secret = match &claim.object {
        Some(existing) if owned && labelled(existing) && !generated => existing.clone(),
        _ => {
            apply_claimed(ctx, sub, secrets, claim, &desired).await?;
            desired
        }
    };
    if generated {
        publish(
            ctx,
            sub,
            EventType::Normal,
            "VerifyTokenGenerated",
            "Create",
            format!(
                "generated the verify token in Secret {}/{name}, key {VERIFY_TOKEN_KEY}",
                inputs.namespace
            ),
        )
        .await;
    }
    Ok(secret)
}

/// Makes the admin token's Secret when it is absent, empty, not yet the subscription's or
/// unlabelled (one apply); an existing token is never changed, so a pass makes no request
/// beyond step 0's GET once it exists.
pub(super) async fn admin_step(
    ctx: &Context,
    sub: &WebhookSubscription,
    inputs: &Inputs<'_>,
    secrets: &Api<Secret>,
    claim: &Claim<Secret>,
) -> Result<(), Error> {
    let token = claim
        .object
        .as_ref()
        .and_then(|secret| secret.data.as_ref())
        .and_then(|data| data.get(ADMIN_TOKEN_KEY))
        .and_then(|value| String::from_utf8(value.0.clone()).ok())
        .filter(|token| !token.is_empty());
    let owned = matches!(claim.holder, Holder::Subscription { .. });
    let fresh = token.is_none();
    let token = token.unwrap_or_else(secret_objects::generate_verify_token);
    let current = claim
        .object
        .as_ref()
        .is_some_and(|existing| owned && labelled(existing));
    if fresh || !current {
        let desired = secret_objects::admin_token_secret(inputs, &token)?;
        apply_claimed(ctx, sub, secrets, claim, &desired).await?;
    }
    Ok(())
}

/// Does the Secret carry `metahook.io/referenceable: "true"`?
fn labelled(secret: &Secret) -> bool {
    secret
        .labels()
        .get(crate::policy::REFERENCEABLE_LABEL)
        .is_some_and(|value| value == "true")
}
