//! Step 5: the status (server-side apply of the status subresource), its condition
//! metrics, and the `Ready` Event when the subscription becomes ready.

use kube::api::{Api, Patch};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;

use super::Context;
use super::api::{apply_params, publish};
use crate::crd::WebhookSubscription;
use crate::error::Error;
use crate::status::{self, Observed};

/// What the status step wrote.
#[derive(Debug, Clone, Copy)]
pub struct Reported {
    /// Whether the written status says Ready.
    pub ready: bool,
}

/// Writes the status built from what the pass observed.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    namespace: &str,
    observed: &Observed,
    now: OffsetDateTime,
) -> Result<Reported, Error> {
    let status = status::build(
        sub.status.as_ref(),
        sub.meta().generation,
        namespace,
        observed,
        now,
    );
    let was_ready = sub.status.as_ref().is_some_and(status::is_ready);
    let ready = status::is_ready(&status);
    let name = sub.name_any();
    let patch = json!({
        "apiVersion": WebhookSubscription::api_version(&()),
        "kind": WebhookSubscription::kind(&()),
        "status": status,
    });
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("apply status of WebhookSubscription {name}"), e))?;
    ctx.metrics
        .record_conditions(namespace, &name, &status.conditions);
    if ready && !was_ready {
        publish(
            ctx,
            sub,
            EventType::Normal,
            "Ready",
            "Reconcile",
            observed
                .endpoint
                .as_ref()
                .map_or_else(|| "ready".to_owned(), |e| format!("receiver ready at {e}")),
        )
        .await;
    }
    Ok(Reported { ready })
}
