//! Who holds an object at a name a subscription manages: the pure half of the rule that
//! the operator creates, changes and deletes only what is absent or controller-owned by
//! the subscription — by uid, never by name alone.
//!
//! A team's Deployment `orders` and a sidecar subscription `orders` share a name; an
//! operator that trusted names deleted the team's Deployment. Here an object is the
//! subscription's only when one of its owner references is a controller reference with
//! the subscription's uid. Anything else at a managed name is someone else's: the pass
//! that finds it changes nothing and says so (`Ready` False, reason `Conflict`), until the
//! object is renamed or removed, or its owner lets the operator take it over with the
//! [`ADOPT_ANNOTATION`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Set on an existing object, with a subscription's name as its value, to let that
/// subscription take the object over: its fields are applied with force and it gets the
/// subscription's controller reference (so it is garbage-collected with the subscription).
pub const ADOPT_ANNOTATION: &str = "metahook.io/adopt";

/// Who holds a managed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No object: the operator may create one.
    Absent,
    /// Controller-owned by the subscription, whose object has this uid.
    Subscription {
        /// The object's uid, a precondition of every later write or delete.
        uid: String,
    },
    /// Not the subscription's, but annotated for adoption by it (and controlled by no
    /// one else).
    Adoptable {
        /// The object's uid.
        uid: String,
    },
    /// Someone else's: never changed or deleted.
    Other {
        /// Who, as a user reads it: `controlled by Deployment orders`, `made by no
        /// controller`.
        holder: String,
    },
}

impl Holder {
    /// The uid to write or delete under, when the subscription may touch the object.
    pub fn writable_uid(&self) -> Option<&str> {
        match self {
            Holder::Subscription { uid } | Holder::Adoptable { uid } => Some(uid),
            Holder::Absent | Holder::Other { .. } => None,
        }
    }

    /// Is the object someone else's?
    pub fn is_other(&self) -> bool {
        matches!(self, Holder::Other { .. })
    }
}

/// Who holds the object with `meta` (none: absent), for the subscription `sub_name` whose
/// uid is `sub_uid`.
pub fn holder(meta: Option<&ObjectMeta>, sub_name: &str, sub_uid: &str) -> Holder {
    let Some(meta) = meta else {
        return Holder::Absent;
    };
    let uid = meta.uid.clone().unwrap_or_default();
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let controller = owners.iter().find(|owner| owner.controller == Some(true));
    if let Some(controller) = controller {
        if controller.uid == sub_uid {
            return Holder::Subscription { uid };
        }
        return Holder::Other {
            holder: format!("controlled by {} {}", controller.kind, controller.name),
        };
    }
    let adopt = meta
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(ADOPT_ANNOTATION));
    match adopt {
        Some(name) if name == sub_name => Holder::Adoptable { uid },
        Some(name) => Holder::Other {
            holder: format!("annotated {ADOPT_ANNOTATION}={name}, not {sub_name}"),
        },
        None => Holder::Other {
            holder: "not made by this subscription".to_owned(),
        },
    }
}

/// What a conflict tells the user: the object, who holds it, and the ways out.
pub fn conflict_message(
    kind: &str,
    namespace: &str,
    name: &str,
    holder: &str,
    sub: &str,
) -> String {
    format!(
        "{kind} {namespace}/{name} exists and is {holder}: the subscription changes nothing \
         until it is renamed or removed, or annotated {ADOPT_ANNOTATION}={sub} to let the \
         operator take it over (and delete it with the subscription)"
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    const SUB_UID: &str = "sub-uid";

    fn meta(owners: Vec<OwnerReference>, adopt: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("orders".to_owned()),
            uid: Some("object-uid".to_owned()),
            owner_references: Some(owners),
            annotations: adopt.map(|name| {
                [(ADOPT_ANNOTATION.to_owned(), name.to_owned())]
                    .into_iter()
                    .collect()
            }),
            ..ObjectMeta::default()
        }
    }

    fn owner(kind: &str, uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".to_owned(),
            kind: kind.to_owned(),
            name: "x".to_owned(),
            uid: uid.to_owned(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn absent_is_free() {
        assert_eq!(holder(None, "orders", SUB_UID), Holder::Absent);
    }

    #[test]
    fn only_a_controller_reference_with_the_uid_is_the_subscriptions() {
        let ours = meta(vec![owner("WebhookSubscription", SUB_UID, true)], None);
        assert_eq!(
            holder(Some(&ours), "orders", SUB_UID),
            Holder::Subscription {
                uid: "object-uid".to_owned()
            }
        );
        // The same name, another subscription's uid (deleted and recreated): not ours.
        let older = meta(vec![owner("WebhookSubscription", "older-uid", true)], None);
        assert_eq!(
            holder(Some(&older), "orders", SUB_UID),
            Holder::Other {
                holder: "controlled by WebhookSubscription x".to_owned()
            }
        );
        // Our uid, but not as the controller: not ours either.
        let referenced = meta(vec![owner("WebhookSubscription", SUB_UID, false)], None);
        assert!(holder(Some(&referenced), "orders", SUB_UID).is_other());
    }

    #[test]
    fn an_object_without_owner_is_someone_elses_unless_annotated_for_this_subscription() {
        let plain = meta(vec![], None);
        assert_eq!(
            holder(Some(&plain), "orders", SUB_UID),
            Holder::Other {
                holder: "not made by this subscription".to_owned()
            }
        );
        let adoptable = meta(vec![], Some("orders"));
        assert_eq!(
            holder(Some(&adoptable), "orders", SUB_UID),
            Holder::Adoptable {
                uid: "object-uid".to_owned()
            }
        );
        assert_eq!(
            holder(Some(&adoptable), "orders", SUB_UID).writable_uid(),
            Some("object-uid")
        );
        let for_another = meta(vec![], Some("billing"));
        assert!(holder(Some(&for_another), "orders", SUB_UID).is_other());
    }

    #[test]
    fn the_annotation_never_takes_an_object_from_another_controller() {
        let controlled = meta(vec![owner("ReplicaSet", "rs-uid", true)], Some("orders"));
        assert_eq!(
            holder(Some(&controlled), "orders", SUB_UID),
            Holder::Other {
                holder: "controlled by ReplicaSet x".to_owned()
            }
        );
    }

    #[test]
    fn the_conflict_names_the_object_and_the_ways_out() {
        let message = conflict_message(
            "Deployment",
            "shop",
            "orders",
            "not made by this subscription",
            "orders",
        );
        assert_eq!(
            message,
            "Deployment shop/orders exists and is not made by this subscription: the \
             subscription changes nothing until it is renamed or removed, or annotated \
             metahook.io/adopt=orders to let the operator take it over (and delete it with \
             the subscription)"
        );
    }
}
