//! Meta's state against the desired one: each pass reads what Meta holds and changes only
//! what differs, and removes only what the status says the operator registered.

use std::collections::{BTreeMap, BTreeSet};

use super::desired::{Desired, DesiredNode, token_digest};
use crate::crd::{RegisteredNode, RegisteredPhoneNumber, RegistrationStatus, SecretKeyRef};
use crate::graph::{AppSubscribe, Credentials, GraphApi, GraphError, NodeSubscribe};

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
    /// The Secret key holding the token of the call that failed (the app secret for the
    /// app's edge): named when Meta refuses the token (code 190) so it can be rotated.
    pub failed_token: Option<SecretKeyRef>,
    /// Why it stopped before replacing a callback set by something else
    /// ([`CALLBACK_OWNED_ELSEWHERE`]; nothing of that callback was written).
    pub refused: Option<String>,
}

pub(super) fn sorted(fields: impl IntoIterator<Item = String>) -> Vec<String> {
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
    let mut using = None;
    let result = converge_into(graph, desired, &mut status, &mut changes, &mut using).await;
    let (error, refused) = match result {
        Ok(()) => (None, None),
        Err(Stop::Graph(error)) => (Some(error), None),
        Err(Stop::OwnedElsewhere(message)) => (None, Some(message)),
    };
    Converged {
        status,
        changes,
        failed_token: error.as_ref().and(using),
        error,
        refused,
    }
}

/// `using` is set to the token of each section's calls before they are made, so an error
/// names the Secret it came from.
async fn converge_into(
    graph: &dyn GraphApi,
    desired: &Desired,
    status: &mut RegistrationStatus,
    changes: &mut Vec<String>,
    using: &mut Option<SecretKeyRef>,
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
        *using = Some(desired.app_secret_ref.clone());
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
                // The whole set Meta should hold: the wanted fields and those present that
                // this subscription did not register (by hand, another subscription). Meta's
                // reference does not say whether a POST keeps fields it does not list; with
                // the whole set the result is the same either way.
                let foreign = present.difference(&owned).cloned();
                let fields: BTreeSet<String> = wanted.iter().cloned().chain(foreign).collect();
                graph
                    .subscribe_app(
                        &desired.app_id,
                        &desired.app_token,
                        &AppSubscribe {
                            object: desired.object.clone(),
                            callback_url: desired.callback_url.clone(),
                            fields: fields.iter().cloned().collect(),
                            verify_token: desired.verify_token.clone(),
                        },
                    )
                    .await?;
                let inactive = entry.is_some_and(|e| !e.active);
                changes.push(format!(
                    "subscribed app {} to {} fields {} at {}{}",
                    desired.app_id,
                    desired.object,
                    join(&fields),
                    desired.callback_url,
                    if inactive {
                        " (Meta listed the subscription inactive)"
                    } else {
                        ""
                    }
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
        *using = Some(page.token_ref.clone());
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
        let fields = page_fields(desired, page);
        let want: BTreeSet<String> = foreign.chain(fields.iter().cloned()).collect();
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
                without_app_secret_proof: page.token.proof().is_none(),
                instagram_login: page.token.is_instagram(),
                fields,
                override_callback_url: None,
                phone_numbers: Vec::new(),
            },
            |n| &n.id,
        );
    }

    // WhatsApp Business Accounts and their callback overrides.
    for waba in &desired.wabas {
        *using = Some(waba.token_ref.clone());
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
                without_app_secret_proof: waba.token.proof().is_none(),
                instagram_login: false,
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
    token: &Credentials,
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

/// The Page field set on a Page's `subscribed_apps` for object instagram with Facebook
/// Login: the edge takes only Page fields (Meta refuses `comments` there), and Meta's docs
/// ask for any one, e.g. `feed`; the Instagram fields are the app subscription's.
pub const INSTAGRAM_PAGE_FIELD: &str = "feed";

/// The fields a Page or Instagram account's `subscribed_apps` gets: the spec's, except for
/// an Instagram account registered through its Page (Facebook Login), whose Page gets
/// [`INSTAGRAM_PAGE_FIELD`].
fn page_fields(desired: &Desired, page: &DesiredNode) -> Vec<String> {
    if desired.object == "instagram" && !page.token.is_instagram() {
        vec![INSTAGRAM_PAGE_FIELD.to_owned()]
    } else {
        desired.fields.clone()
    }
}

pub(super) fn join(fields: &BTreeSet<String>) -> String {
    fields.iter().cloned().collect::<Vec<_>>().join(",")
}

/// Replaces the entry of `items` with `item`'s id (`id_of`), or adds it; kept sorted by id
/// so the status is stable.
pub(super) fn upsert<T>(items: &mut Vec<T>, item: T, id_of: impl Fn(&T) -> &str) {
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
    token: &Credentials,
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
    token: &Credentials,
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
    let app_secret = status
        .app_secret_ref
        .as_ref()
        .and_then(|r| tokens.get(r))
        .cloned();
    let app_secret = app_secret.as_deref();
    for node in status.pages.clone() {
        if keep_pages.contains(&node.id) {
            continue;
        }
        let token = credentials_for(tokens, app_secret, &node)?;
        changes.extend(remove_page(graph, &app_id, &node, &token).await?);
        status.pages.retain(|p| p.id != node.id);
    }
    for node in status.whatsapp_business_accounts.clone() {
        if keep_wabas.contains(&node.id) {
            continue;
        }
        let token = credentials_for(tokens, app_secret, &node)?;
        // The phone overrides first: they outrank the WABA's and outlive its edge.
        remove_phones(
            graph,
            status,
            &node.id,
            &node.phone_numbers,
            &token,
            changes,
        )
        .await?;
        changes.extend(remove_waba(graph, &app_id, &node, &token).await?);
        status
            .whatsapp_business_accounts
            .retain(|w| w.id != node.id);
    }
    Ok(())
}

/// The recorded node's token as registered: with its `appsecret_proof` (made with the app
/// secret recorded in the status) unless it was registered without one.
fn credentials_for(
    tokens: &Tokens,
    app_secret: Option<&str>,
    node: &RegisteredNode,
) -> Result<Credentials, GraphError> {
    let gone = |what: String| GraphError::transport(format!("unsubscribe {}", node.id), what);
    let token = tokens.get(&node.access_token_ref).ok_or_else(|| {
        gone(format!(
            "its token (Secret {} key {}) is gone",
            node.access_token_ref.name, node.access_token_ref.key
        ))
    })?;
    let credentials = if node.without_app_secret_proof {
        Credentials::bare(token.clone())
    } else {
        let app_secret = app_secret.ok_or_else(|| {
            gone("the app secret its appsecret_proof is made with is gone".to_owned())
        })?;
        Credentials::with_proof(token.clone(), app_secret)
    };
    Ok(if node.instagram_login {
        credentials.on_instagram()
    } else {
        credentials
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
