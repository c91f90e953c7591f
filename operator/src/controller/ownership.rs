//! Step 0, before anything is written: who holds each name the subscription manages (a
//! GET each). One held by someone else ends the pass as a `Conflict` naming every such
//! object, having changed nothing; the steps after it write and delete only through the
//! [`Claim`]s made here (see [`crate::ownership`]).
//!
//! The names are reserved per kind whether the spec wants the object or not: a sidecar
//! subscription `orders` beside a team's Deployment `orders` is a conflict, not a
//! Deployment to delete (nor one to ignore until the spec switches modes).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::Context;
use crate::crd::{TlsModeSpec, WebhookSubscription};
use crate::error::Error;
use crate::ownership::{self, Holder};
use crate::resources::monitoring::Capabilities;
use crate::resources::{self, autoscaling, monitoring};
use crate::status::ReceiverState;

/// One managed name of one kind, as found at the start of the pass.
#[derive(Debug, Clone)]
pub struct Claim<K> {
    /// The kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Who holds it.
    pub holder: Holder,
    /// The object, when it exists.
    pub object: Option<K>,
}

impl<K> Claim<K> {
    /// `Deployment shop/orders`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Every name the subscription manages, and who holds each.
#[derive(Debug)]
pub struct Claims {
    /// The receiver's ConfigMap, `NAME-receiver`.
    pub config_map: Claim<ConfigMap>,
    /// The generated verify token's Secret, when the spec names no token.
    pub verify_token: Option<Claim<Secret>>,
    /// The generated admin token's Secret (every subscription has one).
    pub admin_token: Claim<Secret>,
    /// The issued serving certificate's Secret, when the receiver speaks TLS with no
    /// certificate of the user's.
    pub serving_certificate: Option<Claim<Secret>>,
    /// The receiver Deployment.
    pub deployment: Claim<Deployment>,
    /// The receiver StatefulSet.
    pub stateful_set: Claim<StatefulSet>,
    /// The receivers' Service.
    pub service: Claim<Service>,
    /// The Ingress.
    pub ingress: Claim<Ingress>,
    /// The ServiceMonitor, where the cluster serves the kind.
    pub service_monitor: Option<(ApiResource, Claim<DynamicObject>)>,
    /// The PodDisruptionBudget, where the cluster serves the kind.
    pub pod_disruption_budget: Option<(ApiResource, Claim<DynamicObject>)>,
    /// The HorizontalPodAutoscaler, where the cluster serves autoscaling/v2 or v2beta2.
    pub horizontal_pod_autoscaler: Option<(ApiResource, Claim<DynamicObject>)>,
    /// The optional APIs as this pass found them (the children step builds for these).
    pub capabilities: Capabilities,
}

/// GETs every managed name; fails with [`Error::Conflict`] naming each one someone else
/// holds.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    namespace: &str,
) -> Result<Claims, Error> {
    let name = sub.name_any();
    let uid = sub.uid().ok_or_else(|| {
        Error::Incomplete(format!(
            "WebhookSubscription {name} has no uid (not read from the API server?)"
        ))
    })?;
    let finder = Finder {
        ctx,
        namespace,
        sub_name: &name,
        sub_uid: &uid,
    };
    let capabilities = ctx.capabilities();
    let spec = &sub.spec;
    let config_map = finder
        .claim::<ConfigMap>(resources::config_map_name(&name))
        .await?;
    let verify_token = match spec.verify_token_ref {
        Some(_) => None,
        None => Some(
            finder
                .claim::<Secret>(resources::verify_token_secret_name(&name))
                .await?,
        ),
    };
    let admin_token = finder
        .claim::<Secret>(resources::admin_token_secret_name(&name))
        .await?;
    let serving_certificate = match (&spec.tls.mode, &spec.tls.secret_ref) {
        (TlsModeSpec::None, _) | (_, Some(_)) => None,
        (_, None) => Some(
            finder
                .claim::<Secret>(resources::tls_secret_name(&name))
                .await?,
        ),
    };
    let deployment = finder.claim::<Deployment>(name.clone()).await?;
    let stateful_set = finder.claim::<StatefulSet>(name.clone()).await?;
    let service = finder.claim::<Service>(name.clone()).await?;
    let ingress = finder.claim::<Ingress>(name.clone()).await?;
    let service_monitor = match capabilities.service_monitor {
        true => {
            let resource = monitoring::service_monitor_resource();
            let claim = finder.dynamic_claim(&resource, &name).await?;
            Some((resource, claim))
        }
        false => None,
    };
    let pod_disruption_budget = match capabilities.pdb {
        Some(version) => {
            let resource = monitoring::pdb_resource(version);
            let claim = finder.dynamic_claim(&resource, &name).await?;
            Some((resource, claim))
        }
        None => None,
    };
    let horizontal_pod_autoscaler = match capabilities.autoscaling {
        Some(version) => {
            let resource = autoscaling::hpa_resource(version);
            let claim = finder.dynamic_claim(&resource, &name).await?;
            Some((resource, claim))
        }
        None => None,
    };
    let claims = Claims {
        config_map,
        verify_token,
        admin_token,
        serving_certificate,
        deployment,
        stateful_set,
        service,
        ingress,
        service_monitor,
        pod_disruption_budget,
        horizontal_pod_autoscaler,
        capabilities,
    };
    let conflicts = claims.conflicts(&name);
    if conflicts.is_empty() {
        Ok(claims)
    } else {
        Err(Error::Conflict(conflicts.join("; ")))
    }
}

impl Claims {
    /// The subscription's receiver workload as step 0 found it, for a pass that ends before
    /// applying one (a missing Secret, an unusable certificate): receivers keep running
    /// their last good configuration, and the status says how many are ready rather than
    /// "not applied".
    pub fn running_receiver(&self) -> ReceiverState {
        let ours = |holder: &Holder| matches!(holder, Holder::Subscription { .. });
        if let Some(deployment) = self
            .deployment
            .object
            .as_ref()
            .filter(|_| ours(&self.deployment.holder))
        {
            let status = deployment.status.clone().unwrap_or_default();
            return ReceiverState::Workload {
                kind: self.deployment.kind,
                replicas: deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1),
                ready_replicas: status.ready_replicas.unwrap_or(0),
            };
        }
        if let Some(stateful_set) = self
            .stateful_set
            .object
            .as_ref()
            .filter(|_| ours(&self.stateful_set.holder))
        {
            let status = stateful_set.status.clone().unwrap_or_default();
            return ReceiverState::Workload {
                kind: self.stateful_set.kind,
                replicas: stateful_set
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1),
                ready_replicas: status.ready_replicas.unwrap_or(0),
            };
        }
        ReceiverState::Unknown
    }

    /// What each name held by someone else tells the user.
    fn conflicts(&self, sub_name: &str) -> Vec<String> {
        let dynamic = |pair: &Option<(ApiResource, Claim<DynamicObject>)>| {
            pair.as_ref()
                .and_then(|(_, claim)| conflict(claim, sub_name))
        };
        [
            conflict(&self.config_map, sub_name),
            self.verify_token
                .as_ref()
                .and_then(|claim| conflict(claim, sub_name)),
            conflict(&self.admin_token, sub_name),
            self.serving_certificate
                .as_ref()
                .and_then(|claim| conflict(claim, sub_name)),
            conflict(&self.deployment, sub_name),
            conflict(&self.stateful_set, sub_name),
            conflict(&self.service, sub_name),
            conflict(&self.ingress, sub_name),
            dynamic(&self.service_monitor),
            dynamic(&self.pod_disruption_budget),
            dynamic(&self.horizontal_pod_autoscaler),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The conflict a claim held by someone else reports.
fn conflict<K>(claim: &Claim<K>, sub_name: &str) -> Option<String> {
    match &claim.holder {
        Holder::Other { holder } => Some(ownership::conflict_message(
            claim.kind,
            &claim.namespace,
            &claim.name,
            holder,
            sub_name,
        )),
        _ => None,
    }
}

/// GETs managed names for one subscription.
struct Finder<'a> {
    ctx: &'a Context,
    namespace: &'a str,
    sub_name: &'a str,
    sub_uid: &'a str,
}

impl Finder<'_> {
    async fn claim<K>(&self, name: String) -> Result<Claim<K>, Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let kind = static_kind(&K::kind(&K::DynamicType::default()));
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), self.namespace);
        let object = api
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube(format!("get {kind} {}/{name}", self.namespace), e))?;
        Ok(self.found(kind, name, object))
    }

    async fn dynamic_claim(
        &self,
        resource: &ApiResource,
        name: &str,
    ) -> Result<Claim<DynamicObject>, Error> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.ctx.client.clone(), self.namespace, resource);
        let object = api.get_opt(name).await.map_err(|e| {
            Error::kube(
                format!("get {} {}/{name}", resource.kind, self.namespace),
                e,
            )
        })?;
        Ok(self.found(static_kind(&resource.kind), name.to_owned(), object))
    }

    fn found<K: Resource>(&self, kind: &'static str, name: String, object: Option<K>) -> Claim<K> {
        let holder = ownership::holder(
            object.as_ref().map(Resource::meta),
            self.sub_name,
            self.sub_uid,
        );
        Claim {
            kind,
            namespace: self.namespace.to_owned(),
            name,
            holder,
            object,
        }
    }
}

/// The kinds the operator manages, as `'static` names.
fn static_kind(kind: &str) -> &'static str {
    use k8s_openapi::Resource as _;
    [
        ConfigMap::KIND,
        Secret::KIND,
        Deployment::KIND,
        StatefulSet::KIND,
        Service::KIND,
        Ingress::KIND,
        monitoring::SERVICE_MONITOR_KIND,
        monitoring::PDB_KIND,
        autoscaling::HPA_KIND,
    ]
    .into_iter()
    .find(|known| *known == kind)
    .unwrap_or("object")
}
