//! Step 5: registration with Meta's Graph API (spec.registration), behind a finalizer so a
//! deleted subscription is unregistered before the API server removes it.
//!
//! Each pass reads Meta's current state (GET) and changes only what differs from the
//! spec: the app's subscription to the object (callback URL, verify token, fields), the
//! `subscribed_apps` edge of each Page, Instagram account or WhatsApp Business Account, the
//! WABAs' callback overrides and their phone numbers' overrides. What the operator
//! registered is kept in
//! `status.registration`; only that is ever changed or removed, so fields or edges made by
//! hand or by another subscription stay untouched. Nothing is registered until the
//! receiver is ready, since Meta verifies the callback at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Context;
use super::api::{apply_params, get_secret, publish};
use crate::crd::WebhookSubscription;
use crate::crd::{
    RegisteredNode, RegisteredPhoneNumber, RegistrationSpec, RegistrationStatus, SecretKeyRef,
};
use crate::error::Error;
use crate::graph::{AppSubscribe, GraphApi, GraphError, NodeSubscribe};
use crate::status::{Observed, ReceiverState, RegistrationState};

pub use crate::graph::Unconfigured;

/// The finalizer on subscriptions registered with the Graph API: removed once the
/// registration is deleted (or given up on after the operator's unregister timeout).
pub const FINALIZER: &str = "metahook.io/graph-registration";

/// The registration a subscription asks for, if any.
pub fn requested(sub: &WebhookSubscription) -> Option<&RegistrationSpec> {
    sub.spec.registration.as_ref()
}

/// The Secret values a registration reads, by Secret name and key.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

fn secret_text(data: &SecretData, reference: &SecretKeyRef) -> Option<String> {
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

/// The `Registered` reason of a callback, WABA override or phone number override that
/// something other than this subscription set, which it does not replace unless
/// `spec.registration.takeOverCallback` says so.
pub const CALLBACK_OWNED_ELSEWHERE: &str = "CallbackOwnedElsewhere";

/// The host of a callback URL, for messages (a URL's path or query may carry a token).
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "(not a URL)".to_owned())
}

/// Why a pass stopped: Meta refused or failed, or a callback is someone else's.
#[derive(Debug)]
enum Stop {
    Graph(GraphError),
    OwnedElsewhere(String),
}

impl From<GraphError> for Stop {
    fn from(error: GraphError) -> Stop {
        Stop::Graph(error)
    }
}

/// Refuses to replace `current` (what Meta holds) with `wanted` when this subscription did
/// not set it (`recorded`) and the spec does not take it over.
fn check_owned(
    desired: &Desired,
    what: &str,
    current: Option<&str>,
    wanted: Option<&str>,
    recorded: Option<&str>,
) -> Result<(), Stop> {
    let Some(current) = current.filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    if Some(current) == wanted || Some(current) == recorded || desired.take_over_callback {
        return Ok(());
    }
    Err(Stop::OwnedElsewhere(format!(
        "{what} points at host {}, which this subscription did not set: it is left alone \
         (set spec.registration.takeOverCallback: true to replace it with {})",
        host_of(current),
        wanted.map_or_else(|| "none".to_owned(), host_of),
    )))
}

/// A Page or WABA edge as wanted, with its token.
#[derive(Clone)]
pub struct DesiredNode {
    /// The id.
    pub id: String,
    /// Its token's reference.
    pub token_ref: SecretKeyRef,
    /// Its token.
    pub token: String,
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
            .field("token", &"redacted")
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
                    override_callback: bool,
                    phone_numbers: Vec<String>| {
            Ok::<_, String>(DesiredNode {
                id: id.to_owned(),
                token_ref: token_ref.clone(),
                token: text(token_ref, &format!("the token of {id}"))?,
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
                .map(|p| node(&p.id, &p.access_token_ref, false, Vec::new()))
                .collect::<Result<_, _>>()?,
            wabas: spec
                .whatsapp_business_accounts
                .iter()
                .map(|w| {
                    let phones = w.phone_numbers.iter().map(|p| p.id.clone()).collect();
                    node(&w.id, &w.access_token_ref, w.override_callback, phones)
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// What a converge pass did: the registration as it now stands at Meta, the changes it
/// made (for the Event), and the error that stopped it, if one did.
#[derive(Debug, Clone)]
pub struct Converged {
    /// What is registered now (partial progress included).
    pub status: RegistrationStatus,
    /// Each change made, e.g. `subscribed app 1 to page fields feed,leadgen`.
    pub changes: Vec<String>,
    /// The Graph API error that stopped the pass.
    pub error: Option<GraphError>,
    /// Why it stopped before replacing a callback set by something else
    /// ([`CALLBACK_OWNED_ELSEWHERE`]; nothing of that callback was written).
    pub refused: Option<String>,
}

fn sorted(fields: impl IntoIterator<Item = String>) -> Vec<String> {
    fields
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Brings Meta's state to `desired`, changing only what differs and removing only what
/// `previous` says the operator registered.
pub async fn converge(
    graph: &dyn GraphApi,
    desired: &Desired,
    previous: Option<&RegistrationStatus>,
) -> Converged {
    // Ownership carries over only for the same app and object (the CRD forbids changing
    // either while registered).
    let previous = previous.filter(|p| p.app_id == desired.app_id && p.object == desired.object);
    let mut status = previous.cloned().unwrap_or_else(|| RegistrationStatus {
        app_id: desired.app_id.clone(),
        object: desired.object.clone(),
        ..RegistrationStatus::default()
    });
    status.last_error = None;
    let mut changes = Vec::new();
    let result = converge_into(graph, desired, &mut status, &mut changes).await;
    let (error, refused) = match result {
        Ok(()) => (None, None),
        Err(Stop::Graph(error)) => (Some(error), None),
        Err(Stop::OwnedElsewhere(message)) => (None, Some(message)),
    };
    Converged {
        status,
        changes,
        error,
        refused,
    }
}

async fn converge_into(
    graph: &dyn GraphApi,
    desired: &Desired,
    status: &mut RegistrationStatus,
    changes: &mut Vec<String>,
) -> Result<(), Stop> {
    let digest = token_digest(&desired.app_token, &desired.verify_token);
    let registered_digest = status.verify_token_digest.clone();
    let token_changed = registered_digest.as_deref() != Some(digest.as_str());
    status.app_secret_ref = Some(desired.app_secret_ref.clone());

    // The app's subscription to the object.
    let owned: BTreeSet<String> = status.registered_fields.iter().cloned().collect();
    let wanted: BTreeSet<String> = if desired.app_subscription {
        desired.fields.iter().cloned().collect()
    } else {
        BTreeSet::new()
    };
    if desired.app_subscription || !owned.is_empty() {
        let current = graph
            .app_subscriptions(&desired.app_id, &desired.app_token)
            .await?;
        let entry = current.iter().find(|s| s.object == desired.object);
        let present: BTreeSet<String> = entry
            .map(|e| e.field_names().into_iter().collect())
            .unwrap_or_default();
        if desired.app_subscription {
            check_owned(
                desired,
                &format!("the app's {} callback", desired.object),
                entry.map(|e| e.callback_url.as_str()),
                Some(&desired.callback_url),
                status.callback_url.as_deref(),
            )?;
            let stale = entry.is_none_or(|e| {
                e.callback_url != desired.callback_url
                    || !e.active
                    || !wanted.is_subset(&present)
                    || token_changed
            });
            if stale {
                graph
                    .subscribe_app(
                        &desired.app_id,
                        &desired.app_token,
                        &AppSubscribe {
                            object: desired.object.clone(),
                            callback_url: desired.callback_url.clone(),
                            fields: wanted.iter().cloned().collect(),
                            verify_token: desired.verify_token.clone(),
                        },
                    )
                    .await?;
                changes.push(format!(
                    "subscribed app {} to {} fields {} at {}",
                    desired.app_id,
                    desired.object,
                    join(&wanted),
                    desired.callback_url
                ));
            }
            status.callback_url = Some(desired.callback_url.clone());
            status.verify_token_digest = Some(digest.clone());
        }
        // Merge the new fields in before removing the dropped ones, so a removal that
        // fails leaves a superset, never less than asked.
        status.registered_fields = sorted(owned.union(&wanted).cloned());
        let dropped: Vec<String> = owned
            .difference(&wanted)
            .filter(|f| present.contains(*f))
            .cloned()
            .collect();
        if !dropped.is_empty() {
            graph
                .unsubscribe_app(
                    &desired.app_id,
                    &desired.app_token,
                    &desired.object,
                    &dropped,
                )
                .await?;
            changes.push(format!(
                "removed {} fields {} of app {}",
                desired.object,
                dropped.join(","),
                desired.app_id
            ));
        }
        status.registered_fields = sorted(wanted.iter().cloned());
        if !desired.app_subscription {
            status.callback_url = None;
            status.verify_token_digest = None;
        }
    }

    // Pages and Instagram accounts.
    for page in &desired.pages {
        let previously: BTreeSet<String> = status
            .pages
            .iter()
            .find(|p| p.id == page.id)
            .map(|p| p.fields.iter().cloned().collect())
            .unwrap_or_default();
        let apps = graph.subscribed_apps(&page.id, &page.token).await?;
        let mine = apps.iter().find(|a| a.app_id == desired.app_id);
        let present: BTreeSet<String> = mine
            .map(|a| a.subscribed_fields.iter().cloned().collect())
            .unwrap_or_default();
        let foreign = present.difference(&previously).cloned();
        let want: BTreeSet<String> = foreign.chain(desired.fields.iter().cloned()).collect();
        if mine.is_none() || present != want {
            let fields: Vec<String> = want.iter().cloned().collect();
            graph
                .subscribe_node(&page.id, &page.token, &NodeSubscribe::Fields(fields))
                .await?;
            changes.push(format!(
                "subscribed app {} to {} {} fields {}",
                desired.app_id,
                desired.object,
                page.id,
                join(&want)
            ));
        }
        upsert(
            &mut status.pages,
            RegisteredNode {
                id: page.id.clone(),
                access_token_ref: page.token_ref.clone(),
                fields: desired.fields.clone(),
                override_callback_url: None,
                phone_numbers: Vec::new(),
            },
            |n| &n.id,
        );
    }

    // WhatsApp Business Accounts and their callback overrides.
    for waba in &desired.wabas {
        let apps = graph.subscribed_apps(&waba.id, &waba.token).await?;
        let mine = apps.iter().find(|a| a.app_id == desired.app_id);
        let override_wanted = waba.override_callback.then(|| desired.callback_url.clone());
        let recorded = status
            .whatsapp_business_accounts
            .iter()
            .find(|w| w.id == waba.id)
            .and_then(|w| w.override_callback_url.clone());
        check_owned(
            desired,
            &format!("the callback override of WABA {}", waba.id),
            mine.and_then(|a| a.override_callback_uri.as_deref()),
            override_wanted.as_deref(),
            recorded.as_deref(),
        )?;
        let token_rotated = override_wanted.is_some() && token_changed;
        let stale = mine.is_none_or(|a| a.override_callback_uri != override_wanted);
        if stale || token_rotated {
            graph
                .subscribe_node(
                    &waba.id,
                    &waba.token,
                    &NodeSubscribe::Waba {
                        override_callback: override_wanted
                            .clone()
                            .map(|uri| (uri, desired.verify_token.clone())),
                    },
                )
                .await?;
            changes.push(match &override_wanted {
                Some(uri) => format!(
                    "subscribed app {} to WABA {} with callback override {uri}",
                    desired.app_id, waba.id
                ),
                None => format!(
                    "subscribed app {} to WABA {} (no callback override)",
                    desired.app_id, waba.id
                ),
            });
        }
        // The phone overrides already set stay recorded until removed.
        let phone_numbers = status
            .whatsapp_business_accounts
            .iter()
            .find(|w| w.id == waba.id)
            .map(|w| w.phone_numbers.clone())
            .unwrap_or_default();
        upsert(
            &mut status.whatsapp_business_accounts,
            RegisteredNode {
                id: waba.id.clone(),
                access_token_ref: waba.token_ref.clone(),
                fields: Vec::new(),
                override_callback_url: override_wanted,
                phone_numbers,
            },
            |n| &n.id,
        );
        converge_phones(graph, desired, waba, token_changed, status, changes).await?;
    }
    if !desired.wabas.is_empty() && !desired.app_subscription {
        status.verify_token_digest = Some(digest.clone());
    }
    // Edges dropped from the spec are removed by the caller with [`remove_nodes`], with
    // the tokens recorded for them.
    Ok(())
}

/// Sets the callback override of each phone number the WABA lists (after its
/// `subscribed_apps` edge is in place), then removes the overrides the operator set on
/// phone numbers it no longer lists.
async fn converge_phones(
    graph: &dyn GraphApi,
    desired: &Desired,
    waba: &DesiredNode,
    token_changed: bool,
    status: &mut RegistrationStatus,
    changes: &mut Vec<String>,
) -> Result<(), Stop> {
    for phone in &waba.phone_numbers {
        let config = graph
            .phone_webhook_configuration(phone, &waba.token)
            .await?;
        let recorded = status
            .whatsapp_business_accounts
            .iter()
            .find(|w| w.id == waba.id)
            .and_then(|w| w.phone_numbers.iter().find(|p| p.id == *phone))
            .map(|p| p.override_callback_url.clone());
        check_owned(
            desired,
            &format!(
                "the callback override of phone number {phone} (WABA {})",
                waba.id
            ),
            config.phone_number.as_deref(),
            Some(&desired.callback_url),
            recorded.as_deref(),
        )?;
        if config.phone_number.as_deref() != Some(desired.callback_url.as_str()) || token_changed {
            graph
                .set_phone_override(
                    phone,
                    &waba.token,
                    &desired.callback_url,
                    &desired.verify_token,
                )
                .await?;
            changes.push(format!(
                "set the callback override of phone number {phone} (WABA {}) to {}",
                waba.id, desired.callback_url
            ));
        }
        if let Some(node) = status
            .whatsapp_business_accounts
            .iter_mut()
            .find(|w| w.id == waba.id)
        {
            let recorded = RegisteredPhoneNumber {
                id: phone.clone(),
                override_callback_url: desired.callback_url.clone(),
            };
            upsert(&mut node.phone_numbers, recorded, |p| &p.id);
        }
    }
    let dropped: Vec<RegisteredPhoneNumber> = status
        .whatsapp_business_accounts
        .iter()
        .filter(|w| w.id == waba.id)
        .flat_map(|w| w.phone_numbers.iter())
        .filter(|p| !waba.phone_numbers.contains(&p.id))
        .cloned()
        .collect();
    Ok(remove_phones(graph, status, &waba.id, &dropped, &waba.token, changes).await?)
}

/// Removes the phone overrides the operator set, each only while Meta still holds the URL
/// it set (an override someone else set since is left alone, and said so), forgetting each
/// in `status` as it goes.
async fn remove_phones(
    graph: &dyn GraphApi,
    status: &mut RegistrationStatus,
    waba_id: &str,
    phones: &[RegisteredPhoneNumber],
    token: &str,
    changes: &mut Vec<String>,
) -> Result<(), GraphError> {
    for phone in phones {
        let config = graph.phone_webhook_configuration(&phone.id, token).await?;
        match config.phone_number {
            Some(uri) if uri == phone.override_callback_url => {
                graph.remove_phone_override(&phone.id, token).await?;
                changes.push(format!(
                    "removed the callback override of phone number {} (WABA {waba_id})",
                    phone.id
                ));
            }
            Some(other) => {
                tracing::warn!(
                    phone_number = %phone.id,
                    waba = %waba_id,
                    current = %other,
                    set = %phone.override_callback_url,
                    "not removing a phone number's callback override someone else set"
                );
                changes.push(format!(
                    "left the callback override of phone number {} (WABA {waba_id}) alone: Meta holds {other}, not {} as set by this subscription",
                    phone.id, phone.override_callback_url
                ));
            }
            None => {}
        }
        if let Some(node) = status
            .whatsapp_business_accounts
            .iter_mut()
            .find(|w| w.id == waba_id)
        {
            node.phone_numbers.retain(|p| p.id != phone.id);
        }
    }
    Ok(())
}

fn join(fields: &BTreeSet<String>) -> String {
    fields.iter().cloned().collect::<Vec<_>>().join(",")
}

/// Replaces the entry of `items` with `item`'s id (`id_of`), or adds it; kept sorted by id
/// so the status is stable.
fn upsert<T>(items: &mut Vec<T>, item: T, id_of: impl Fn(&T) -> &str) {
    match items.iter_mut().find(|i| id_of(i) == id_of(&item)) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
    items.sort_by(|a, b| id_of(a).cmp(id_of(b)));
}

/// Removes a Page's or Instagram account's fields the operator set: the edge goes when
/// no other field remains, else the other fields are kept.
async fn remove_page(
    graph: &dyn GraphApi,
    app_id: &str,
    node: &RegisteredNode,
    token: &str,
) -> Result<Option<String>, GraphError> {
    let apps = graph.subscribed_apps(&node.id, token).await?;
    let Some(mine) = apps.iter().find(|a| a.app_id == app_id) else {
        return Ok(None);
    };
    let ours: BTreeSet<&String> = node.fields.iter().collect();
    let remaining: Vec<String> = mine
        .subscribed_fields
        .iter()
        .filter(|f| !ours.contains(f))
        .cloned()
        .collect();
    if remaining.is_empty() {
        graph.unsubscribe_node(&node.id, token).await?;
        Ok(Some(format!("unsubscribed app {app_id} from {}", node.id)))
    } else {
        graph
            .subscribe_node(&node.id, token, &NodeSubscribe::Fields(remaining.clone()))
            .await?;
        Ok(Some(format!(
            "removed fields {} of app {app_id} from {} (kept {})",
            node.fields.join(","),
            node.id,
            remaining.join(",")
        )))
    }
}

/// Removes a WABA edge the operator made (and with it its override).
async fn remove_waba(
    graph: &dyn GraphApi,
    app_id: &str,
    node: &RegisteredNode,
    token: &str,
) -> Result<Option<String>, GraphError> {
    let apps = graph.subscribed_apps(&node.id, token).await?;
    if !apps.iter().any(|a| a.app_id == app_id) {
        return Ok(None);
    }
    graph.unsubscribe_node(&node.id, token).await?;
    Ok(Some(format!(
        "unsubscribed app {app_id} from WABA {}",
        node.id
    )))
}

/// Tokens by reference, for removing what `status` records.
pub type Tokens = BTreeMap<SecretKeyRef, String>;

/// Removes the Page and WABA edges recorded in `status` but not kept in `keep_pages` /
/// `keep_wabas` (a WABA's phone overrides before its edge), updating `status` as each
/// goes. Stops at the first error.
pub async fn remove_nodes(
    graph: &dyn GraphApi,
    status: &mut RegistrationStatus,
    tokens: &Tokens,
    keep_pages: &BTreeSet<String>,
    keep_wabas: &BTreeSet<String>,
    changes: &mut Vec<String>,
) -> Result<(), GraphError> {
    let app_id = status.app_id.clone();
    for node in status.pages.clone() {
        if keep_pages.contains(&node.id) {
            continue;
        }
        let token = token_for(tokens, &node)?;
        changes.extend(remove_page(graph, &app_id, &node, token).await?);
        status.pages.retain(|p| p.id != node.id);
    }
    for node in status.whatsapp_business_accounts.clone() {
        if keep_wabas.contains(&node.id) {
            continue;
        }
        let token = token_for(tokens, &node)?;
        // The phone overrides first: they outrank the WABA's and outlive its edge.
        remove_phones(graph, status, &node.id, &node.phone_numbers, token, changes).await?;
        changes.extend(remove_waba(graph, &app_id, &node, token).await?);
        status
            .whatsapp_business_accounts
            .retain(|w| w.id != node.id);
    }
    Ok(())
}

fn token_for<'a>(tokens: &'a Tokens, node: &RegisteredNode) -> Result<&'a str, GraphError> {
    tokens
        .get(&node.access_token_ref)
        .map(String::as_str)
        .ok_or_else(|| {
            GraphError::transport(
                format!("unsubscribe {}", node.id),
                format!(
                    "its token (Secret {} key {}) is gone",
                    node.access_token_ref.name, node.access_token_ref.key
                ),
            )
        })
}

/// Removes everything `status` records: the app subscription's fields (Meta drops the
/// object when none remains), the Page and WABA edges and the phone overrides. `status` shrinks as parts go, so
/// what is left in it is what is still registered.
pub async fn unregister(
    graph: &dyn GraphApi,
    status: &mut RegistrationStatus,
    tokens: &Tokens,
    changes: &mut Vec<String>,
) -> Result<(), GraphError> {
    remove_nodes(
        graph,
        status,
        tokens,
        &BTreeSet::new(),
        &BTreeSet::new(),
        changes,
    )
    .await?;
    if !status.registered_fields.is_empty() {
        let app_secret = status
            .app_secret_ref
            .as_ref()
            .and_then(|r| tokens.get(r))
            .ok_or_else(|| {
                GraphError::transport(
                    format!("DELETE /{}/subscriptions", status.app_id),
                    "the app secret is gone",
                )
            })?;
        let app_token = format!("{}|{app_secret}", status.app_id);
        let current = graph.app_subscriptions(&status.app_id, &app_token).await?;
        let present: BTreeSet<String> = current
            .iter()
            .find(|s| s.object == status.object)
            .map(|e| e.field_names().into_iter().collect())
            .unwrap_or_default();
        let ours: Vec<String> = status
            .registered_fields
            .iter()
            .filter(|f| present.contains(*f))
            .cloned()
            .collect();
        if !ours.is_empty() {
            graph
                .unsubscribe_app(&status.app_id, &app_token, &status.object, &ours)
                .await?;
            changes.push(format!(
                "removed {} fields {} of app {}",
                status.object,
                ours.join(","),
                status.app_id
            ));
        }
        status.registered_fields.clear();
        status.callback_url = None;
    }
    Ok(())
}

/// What registration left behind, for the give-up Event.
pub fn describe_left(status: &RegistrationStatus) -> String {
    let mut parts = Vec::new();
    if !status.registered_fields.is_empty() {
        parts.push(format!(
            "app {} subscription to {} fields {}",
            status.app_id,
            status.object,
            status.registered_fields.join(",")
        ));
    }
    for page in &status.pages {
        parts.push(format!("subscribed_apps of {}", page.id));
    }
    for waba in &status.whatsapp_business_accounts {
        match &waba.override_callback_url {
            Some(uri) => parts.push(format!(
                "subscribed_apps of WABA {} (override {uri})",
                waba.id
            )),
            None => parts.push(format!("subscribed_apps of WABA {}", waba.id)),
        }
        for phone in &waba.phone_numbers {
            parts.push(format!(
                "callback override of phone number {} (WABA {}, {})",
                phone.id, waba.id, phone.override_callback_url
            ));
        }
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join("; ")
    }
}

fn rfc3339(now: OffsetDateTime) -> String {
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The tokens `status` needs, read from `data`.
fn tokens_from(status: &RegistrationStatus, data: &SecretData) -> Tokens {
    let mut refs: Vec<&SecretKeyRef> = status.app_secret_ref.iter().collect();
    refs.extend(status.pages.iter().map(|p| &p.access_token_ref));
    refs.extend(
        status
            .whatsapp_business_accounts
            .iter()
            .map(|w| &w.access_token_ref),
    );
    refs.into_iter()
        .filter_map(|r| secret_text(data, r).map(|t| (r.clone(), t)))
        .collect()
}

/// Registers, converges or unregisters (when spec.registration went away) during a pass.
/// Returns the state for the status; a Graph API failure is in the state, and the caller
/// fails the pass after writing the status so the controller backs off.
pub(super) async fn step(
    ctx: &Context,
    sub: &WebhookSubscription,
    observed: &Observed,
    data: &SecretData,
    now: OffsetDateTime,
) -> Result<RegistrationState, Error> {
    let previous = sub.status.as_ref().and_then(|s| s.registration.clone());
    let Some(spec) = requested(sub) else {
        if !has_finalizer(sub) {
            return Ok(RegistrationState::NotRequested);
        }
        // spec.registration was removed: unregister what is recorded, then let go.
        let mut status = previous.unwrap_or_default();
        let tokens = tokens_from(&status, &fetch_secrets(ctx, sub, &status).await?);
        let mut changes = Vec::new();
        return match unregister(ctx.graph.as_ref(), &mut status, &tokens, &mut changes).await {
            Ok(()) => {
                publish_changes(ctx, sub, "Unregistered", &changes).await;
                set_finalizer(ctx, sub, false).await?;
                Ok(RegistrationState::NotRequested)
            }
            Err(error) => {
                status.last_error = Some(error.to_string());
                failed(ctx, sub, status, error).await
            }
        };
    };
    let ready = match &observed.receiver {
        ReceiverState::Sidecar => true,
        ReceiverState::Workload { ready_replicas, .. } => *ready_replicas >= 1,
        ReceiverState::Unknown => false,
    };
    if !ready {
        return Ok(RegistrationState::Waiting {
            previous,
            message: "waiting for a ready receiver: Meta verifies the callback at once".to_owned(),
        });
    }
    let verify_token = observed
        .verify_token
        .clone()
        .ok_or_else(|| Error::Incomplete("the verify token's location is unknown".to_owned()))?;
    let desired = match Desired::build(sub, spec, observed.endpoint.as_deref(), &verify_token, data)
    {
        Ok(desired) => desired,
        Err(message) => {
            return Ok(RegistrationState::Failed {
                status: previous.unwrap_or_default(),
                message,
            });
        }
    };
    if !has_finalizer(sub) {
        set_finalizer(ctx, sub, true).await?;
    }
    let mut converged = converge(ctx.graph.as_ref(), &desired, previous.as_ref()).await;
    if converged.error.is_none() && converged.refused.is_none() {
        // Edges dropped from the spec, with the tokens recorded for them.
        let keep_pages: BTreeSet<String> = desired.pages.iter().map(|p| p.id.clone()).collect();
        let keep_wabas: BTreeSet<String> = desired.wabas.iter().map(|w| w.id.clone()).collect();
        let dropped = RegistrationStatus {
            pages: converged
                .status
                .pages
                .iter()
                .filter(|p| !desired.pages.iter().any(|d| d.id == p.id))
                .cloned()
                .collect(),
            whatsapp_business_accounts: converged
                .status
                .whatsapp_business_accounts
                .iter()
                .filter(|w| !desired.wabas.iter().any(|d| d.id == w.id))
                .cloned()
                .collect(),
            ..RegistrationStatus::default()
        };
        if !(dropped.pages.is_empty() && dropped.whatsapp_business_accounts.is_empty()) {
            let tokens = tokens_from(&dropped, &fetch_secrets(ctx, sub, &dropped).await?);
            if let Err(error) = remove_nodes(
                ctx.graph.as_ref(),
                &mut converged.status,
                &tokens,
                &keep_pages,
                &keep_wabas,
                &mut converged.changes,
            )
            .await
            {
                converged.error = Some(error);
            }
        }
    }
    if !converged.changes.is_empty() {
        converged.status.last_registered_time = Some(rfc3339(now));
        publish_changes(ctx, sub, "Registered", &converged.changes).await;
    }
    if let Some(message) = converged.refused {
        publish(
            ctx,
            sub,
            EventType::Warning,
            CALLBACK_OWNED_ELSEWHERE,
            "Register",
            message.clone(),
        )
        .await;
        return Ok(RegistrationState::Refused {
            status: converged.status,
            reason: CALLBACK_OWNED_ELSEWHERE,
            message,
        });
    }
    match converged.error {
        None => {
            let message = registered_message(&converged.status);
            Ok(RegistrationState::Registered {
                status: converged.status,
                message,
            })
        }
        Some(error) => {
            converged.status.last_error = Some(error.to_string());
            failed(ctx, sub, converged.status, error).await
        }
    }
}

async fn failed(
    ctx: &Context,
    sub: &WebhookSubscription,
    mut status: RegistrationStatus,
    error: GraphError,
) -> Result<RegistrationState, Error> {
    let message = error.to_string();
    status.last_error = Some(message.clone());
    publish(
        ctx,
        sub,
        EventType::Warning,
        "RegistrationFailed",
        "Register",
        message.clone(),
    )
    .await;
    Ok(RegistrationState::GraphFailed {
        status,
        message,
        error,
    })
}

fn registered_message(status: &RegistrationStatus) -> String {
    let mut parts = Vec::new();
    if !status.registered_fields.is_empty() {
        parts.push(format!(
            "app {} receives {} fields {} at {}",
            status.app_id,
            status.object,
            status.registered_fields.join(","),
            status.callback_url.as_deref().unwrap_or("(unknown)")
        ));
    }
    if !status.pages.is_empty() {
        let ids: Vec<&str> = status.pages.iter().map(|p| p.id.as_str()).collect();
        parts.push(format!("subscribed to {}", ids.join(",")));
    }
    for waba in &status.whatsapp_business_accounts {
        parts.push(match &waba.override_callback_url {
            Some(uri) => format!("WABA {} overridden to {uri}", waba.id),
            None => format!("subscribed to WABA {}", waba.id),
        });
        if !waba.phone_numbers.is_empty() {
            let ids: Vec<&str> = waba.phone_numbers.iter().map(|p| p.id.as_str()).collect();
            parts.push(format!(
                "phone numbers {} of WABA {} overridden to their callback",
                ids.join(","),
                waba.id
            ));
        }
    }
    parts.join("; ")
}

async fn publish_changes(
    ctx: &Context,
    sub: &WebhookSubscription,
    reason: &str,
    changes: &[String],
) {
    if changes.is_empty() {
        return;
    }
    publish(
        ctx,
        sub,
        EventType::Normal,
        reason,
        "Register",
        changes.join("; "),
    )
    .await;
}

/// GETs the Secrets `status` references (the finalizer's and a dropped edge's tokens);
/// an absent one, or one that may not be referenced, simply yields no token.
async fn fetch_secrets(
    ctx: &Context,
    sub: &WebhookSubscription,
    status: &RegistrationStatus,
) -> Result<SecretData, Error> {
    let namespace = sub.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut names: BTreeSet<&str> = status
        .app_secret_ref
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    names.extend(
        status
            .pages
            .iter()
            .map(|p| p.access_token_ref.name.as_str()),
    );
    names.extend(
        status
            .whatsapp_business_accounts
            .iter()
            .map(|w| w.access_token_ref.name.as_str()),
    );
    let mut data = SecretData::new();
    for name in names {
        if let Some(secret) = get_secret(&secrets, name).await? {
            // An unmarked Secret's values are not used here either: no token, so the
            // unregistration names the token as gone.
            if let Some(why) = crate::policy::not_referenceable(&secret, sub.uid().as_deref()) {
                tracing::warn!(secret = %name, %why, "not using a Secret that may not be referenced");
                continue;
            }
            data.insert(name.to_owned(), super::secrets::keys_of(secret));
        }
    }
    Ok(data)
}

/// A subscription being deleted: unregistered, then its finalizer removed. Past the
/// operator's unregister timeout (counted from the deletion) it gives up, says in a
/// Warning Event what it left at Meta, and removes the finalizer anyway, so a namespace
/// can always be deleted. Without the finalizer there is nothing to do (every child has an
/// owner reference: the garbage collector removes them).
pub(super) async fn finalize(ctx: &Context, sub: &WebhookSubscription) -> Result<Action, Error> {
    if !has_finalizer(sub) {
        return Ok(Action::await_change());
    }
    let mut status = sub
        .status
        .as_ref()
        .and_then(|s| s.registration.clone())
        .unwrap_or_default();
    let now = (ctx.clock)();
    let deleted_at = sub
        .meta()
        .deletion_timestamp
        .as_ref()
        .map_or(now.unix_timestamp(), |t| t.0.as_second());
    let elapsed = Duration::from_secs((now.unix_timestamp() - deleted_at).max(0).unsigned_abs());
    let timeout = ctx.settings.unregister_timeout;
    let result = match fetch_secrets(ctx, sub, &status).await {
        Ok(data) => {
            let tokens = tokens_from(&status, &data);
            let mut changes = Vec::new();
            let result = unregister(ctx.graph.as_ref(), &mut status, &tokens, &mut changes).await;
            publish_changes(ctx, sub, "Unregistered", &changes).await;
            result.map_err(Error::from)
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => {
            set_finalizer(ctx, sub, false).await?;
            Ok(Action::await_change())
        }
        Err(error) if elapsed >= timeout => {
            publish(
                ctx,
                sub,
                EventType::Warning,
                "UnregistrationAbandoned",
                "Unregister",
                format!(
                    "gave up unregistering after {}s (--graph-unregister-timeout): left at Meta: {}; last error: {error}",
                    elapsed.as_secs(),
                    describe_left(&status)
                ),
            )
            .await;
            set_finalizer(ctx, sub, false).await?;
            Ok(Action::await_change())
        }
        Err(error) => {
            publish(
                ctx,
                sub,
                EventType::Warning,
                "UnregistrationFailed",
                "Unregister",
                format!(
                    "{error}; retrying until {}s after the deletion",
                    timeout.as_secs()
                ),
            )
            .await;
            Err(error)
        }
    }
}

fn has_finalizer(sub: &WebhookSubscription) -> bool {
    sub.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer with a server-side apply of `metadata.finalizers` alone
/// (a set: the operator's apply owns its entry and no other).
async fn set_finalizer(
    ctx: &Context,
    sub: &WebhookSubscription,
    present: bool,
) -> Result<(), Error> {
    let name = sub.name_any();
    let namespace = sub.namespace().unwrap_or_default();
    let finalizers: &[&str] = if present { &[FINALIZER] } else { &[] };
    let patch = json!({
        "apiVersion": WebhookSubscription::api_version(&()),
        "kind": WebhookSubscription::kind(&()),
        "metadata": {"name": name, "finalizers": finalizers},
    });
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("apply finalizers of WebhookSubscription {name}"), e))?;
    Ok(())
}
