//! Which objects and fields are documented, and the kinds each field's items become.
//!
//! One table serves normalization (documented or `unknown`), the coverage table in
//! docs/event-schema.md, and the tests that check every documented field has a fixture.

use crate::event::{Kind, Platform};
use crate::meta::{graph, instagram, messaging, page, whatsapp};

/// One row of the coverage table: an object's field and the kinds its items become.
#[derive(Debug, Clone, Copy)]
pub struct CoverageRow {
    /// Meta's object.
    pub object: &'static str,
    /// The product the events are labelled with.
    pub platform: Platform,
    /// The subscription field.
    pub field: &'static str,
    /// The kinds its items can become (besides `unknown` for malformed items).
    pub kinds: &'static [Kind],
}

/// Whether `object` is one Meta documents (and this receiver types): what an endpoint's
/// `objects` may name.
pub fn is_documented_object(object: &str) -> bool {
    platform_of(object).is_some()
}

/// The documented objects, in the coverage table's order.
pub fn documented_objects() -> Vec<&'static str> {
    let mut objects: Vec<&'static str> = COVERAGE.iter().map(|row| row.object).collect();
    objects.dedup();
    objects
}

/// The product an object belongs to; `None` for an undocumented object.
pub(crate) fn platform_of(object: &str) -> Option<Platform> {
    match object {
        "whatsapp_business_account" => Some(Platform::Whatsapp),
        "page" => Some(Platform::Facebook),
        "instagram" => Some(Platform::Instagram),
        other if graph::OBJECTS.contains(&other) => Some(Platform::Graph),
        _ => None,
    }
}

/// The kinds a documented field's items become; empty when the object or field is not
/// documented (its items become `unknown`). Graph objects accept any field name, since
/// their fields are the app's own (permission names, user profile fields).
pub fn field_kinds(object: &str, field: &str) -> &'static [Kind] {
    use Kind::*;
    match object {
        "whatsapp_business_account" => match field {
            "messages" => &[Message, Reaction, Edit, Delete, Status, Error],
            "smb_message_echoes" => &[Echo],
            "message_template_status_update"
            | "template_category_update"
            | "message_template_components_update" => &[TemplateStatus],
            "message_template_quality_update" | "phone_number_quality_update" => &[QualityUpdate],
            "account_update"
            | "account_review_update"
            | "account_alerts"
            | "account_settings_update"
            | "business_capability_update"
            | "business_username_update"
            | "partner_solutions"
            | "payment_configuration_update"
            | "phone_number_name_update" => &[AccountUpdate],
            "group_lifecycle_update"
            | "group_participants_update"
            | "group_settings_update"
            | "group_status_update" => &[Group],
            "user_id_update" => &[IdentityChange],
            "security" => &[Security],
            "history" | "smb_app_state_sync" => &[History],
            "user_preferences" => &[Optout, Optin, Preference],
            "automatic_events" => &[AutomaticEvent],
            "calls" => &[Call],
            "flows" => &[Flow],
            _ => &[],
        },
        "page" => match field {
            "feed" => &[Comment, Reaction, Post],
            "mention" => &[Mention],
            "ratings" => &[Rating],
            "leadgen" => &[Lead],
            "live_videos" | "videos" => &[Video],
            f if page::PROFILE_FIELDS.contains(&f) => &[Change],
            f if messaging::MESSENGER_FIELDS.contains(&f) => messaging_kinds(f),
            _ => &[],
        },
        "instagram" => match field {
            "comments" => &[Comment],
            "live_comments" => &[LiveComment],
            "mentions" => &[Mention],
            "story_insights" => &[StoryInsights],
            f if messaging::INSTAGRAM_FIELDS.contains(&f) => messaging_kinds(f),
            _ => &[],
        },
        o if graph::OBJECTS.contains(&o) => &[Change],
        _ => &[],
    }
}

/// Kinds of Messenger / Instagram messaging fields.
fn messaging_kinds(field: &str) -> &'static [Kind] {
    use Kind::*;
    match field {
        "messages" => &[Message, Delete],
        "message_echoes" => &[Echo],
        "message_deliveries" => &[Delivery],
        "message_reads" | "messaging_seen" => &[Read],
        "message_reactions" => &[Reaction],
        "message_edits" | "message_edit" => &[Edit],
        "messaging_postbacks" => &[Postback],
        "messaging_optins" => &[Optin, Optout],
        "messaging_referrals" | "messaging_referral" => &[Referral],
        "messaging_account_linking" => &[AccountLinking],
        "messaging_handovers" | "messaging_handover" => &[Handover],
        "messaging_policy_enforcement" => &[PolicyEnforcement],
        "messaging_checkout_updates"
        | "messaging_payments"
        | "messaging_pre_checkouts"
        | "send_cart" => &[Payment],
        "messaging_game_plays" => &[GamePlay],
        "messaging_feedback" | "response_feedback" => &[Feedback],
        "standby" => &[Message, Echo, Delivery, Read, Reaction, Postback, Handover],
        _ => &[Change],
    }
}

/// Every documented object × field, in the order the docs list them.
pub static COVERAGE: std::sync::LazyLock<Vec<CoverageRow>> = std::sync::LazyLock::new(|| {
    let mut rows = Vec::new();
    let mut add = |object: &'static str, platform: Platform, fields: &[&'static str]| {
        let mut fields = fields.to_vec();
        fields.sort_unstable();
        for field in fields {
            rows.push(CoverageRow {
                object,
                platform,
                field,
                kinds: field_kinds(object, field),
            });
        }
    };
    add(
        "whatsapp_business_account",
        Platform::Whatsapp,
        whatsapp::FIELDS,
    );
    add("page", Platform::Messenger, messaging::MESSENGER_FIELDS);
    let page_changes: Vec<&'static str> = page::CHANGE_FIELDS
        .iter()
        .chain(page::PROFILE_FIELDS)
        .copied()
        .collect();
    add("page", Platform::Facebook, &page_changes);
    let instagram_fields: Vec<&'static str> = instagram::CHANGE_FIELDS
        .iter()
        .chain(messaging::INSTAGRAM_FIELDS)
        .copied()
        .collect();
    add("instagram", Platform::Instagram, &instagram_fields);
    for object in graph::OBJECTS {
        add(object, Platform::Graph, &["*"]);
    }
    rows
});

/// The coverage table (Markdown) published in docs/event-schema.md.
pub fn coverage_markdown() -> String {
    let mut out = String::from("| object | platform | field | kinds |\n|---|---|---|---|\n");
    for row in COVERAGE.iter() {
        let kinds: Vec<&str> = row.kinds.iter().map(|k| k.as_str()).collect();
        let field = if row.field == "*" {
            "any field"
        } else {
            row.field
        };
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            row.object,
            row.platform.as_str(),
            field,
            kinds.join(", ")
        ));
    }
    out
}
