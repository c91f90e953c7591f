//! Step 0: what the subscription may reach, before the pass writes anything: the pure
//! checks of [`crate::policy`] (receiver image, ingress annotations, callback host), then,
//! when the spec wants an Ingress, a LIST of the namespace's Ingresses: a host already
//! served by one this subscription does not own is another's, and is not taken over.
//! The Ingresses of the namespace's other subscriptions are the exception: subscriptions
//! share a public host by path (examples/whatsapp.yaml and facebook-page.yaml do), and
//! each Ingress carries only the operator's annotations and the allowed ones.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Context;
use crate::crd::WebhookSubscription;
use crate::error::Error;
use crate::policy::CONFLICT;
use crate::resources::ingress::OPERATOR_ANNOTATIONS;
use crate::status::Refusal;

/// The refusal that ends the pass, if the spec reaches beyond what it may.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    namespace: &str,
) -> Result<Option<Refusal>, Error> {
    if let Err(refusal) = check(ctx, sub) {
        return Ok(Some(refusal));
    }
    let Some(ingress) = &sub.spec.ingress else {
        return Ok(None);
    };
    let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("list Ingresses in namespace {namespace}"), e))?;
    Ok(host_conflict(sub, &ingress.host, &list.items))
}

/// The checks that need no request.
fn check(ctx: &Context, sub: &WebhookSubscription) -> Result<(), Refusal> {
    let policy = &ctx.settings.policy;
    policy.check_image(
        sub.spec.receiver.image.as_deref(),
        &ctx.settings.receiver_image,
    )?;
    if let Some(ingress) = &sub.spec.ingress {
        let reserved: BTreeSet<&str> = OPERATOR_ANNOTATIONS.iter().copied().collect();
        policy.check_ingress_annotations(ingress.annotations.keys(), &reserved)?;
    }
    if let Some(registration) = &sub.spec.registration {
        let own = sub.spec.ingress.as_ref().map(|i| i.host.as_str());
        // Without callbackURL the callback is the ingress host's endpoint: the same check,
        // since the spec names that host too.
        let implicit = own.map(|host| format!("https://{host}{}", sub.spec.effective_path()));
        if let Some(url) = registration.callback_url.as_deref().or(implicit.as_deref()) {
            policy.check_callback(url, own)?;
        }
    }
    Ok(())
}

/// The first Ingress (in name order) that serves `host` and is owned neither by `sub` nor
/// by another WebhookSubscription.
pub fn host_conflict(
    sub: &WebhookSubscription,
    host: &str,
    ingresses: &[Ingress],
) -> Option<Refusal> {
    let uid = sub.uid();
    let mut serving: Vec<&Ingress> = ingresses
        .iter()
        .filter(|ingress| {
            !ingress.owner_references().iter().any(|owner| {
                Some(&owner.uid) == uid.as_ref()
                    || (owner.controller == Some(true)
                        && owner.kind == "WebhookSubscription"
                        && owner.api_version.starts_with("metahook.io/"))
            })
        })
        .filter(|ingress| {
            ingress
                .spec
                .iter()
                .flat_map(|spec| spec.rules.iter().flatten())
                .filter_map(|rule| rule.host.as_deref())
                .any(|served| served.eq_ignore_ascii_case(host))
        })
        .collect();
    serving.sort_by_key(|ingress| ingress.name_any());
    let other = serving.first()?;
    Some(Refusal {
        reason: CONFLICT,
        message: format!(
            "spec.ingress.host {host} is already served by Ingress {}/{}, which this \
             subscription does not own: choose another host, or remove that Ingress's rule \
             for it",
            other.namespace().unwrap_or_default(),
            other.name_any()
        ),
    })
}
