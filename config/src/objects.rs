//! The objects and fields Meta sends webhooks for that metahook documents: what an
//! endpoint's `objects` may name, and what the operator's CRD accepts in a subscription.
//!
//! One table for the configuration's validation, the operator's CRD rules, and the
//! receiver's normalization (whose coverage table adds the kinds each field's items become,
//! from these same lists): a field added here reaches all three.

use std::sync::LazyLock;

/// Objects an app can subscribe to besides WhatsApp, Page and Instagram (app/subscriptions).
pub const GRAPH_OBJECTS: &[&str] = &[
    "ad_account",
    "application",
    "certificate_transparency",
    "group",
    "instagram_business_account",
    "link",
    "payment_subscriptions",
    "payments",
    "permissions",
    "threads",
    "user",
];

/// Instagram change fields (the messaging ones are in [`INSTAGRAM_MESSAGING_FIELDS`]).
pub const INSTAGRAM_CHANGE_FIELDS: &[&str] =
    &["comments", "live_comments", "mentions", "story_insights"];

/// Messenger's subscription fields (object `page`), current and beta/legacy.
pub const MESSENGER_FIELDS: &[&str] = &[
    "message_context",
    "message_deliveries",
    "message_echoes",
    "message_edits",
    "message_reactions",
    "message_reads",
    "messages",
    "messaging_account_linking",
    "messaging_checkout_updates",
    "messaging_customer_information",
    "messaging_feedback",
    "messaging_game_plays",
    "messaging_handovers",
    "messaging_in_thread_lead_form_submit",
    "messaging_optins",
    "messaging_payments",
    "messaging_policy_enforcement",
    "messaging_postbacks",
    "messaging_pre_checkouts",
    "messaging_referrals",
    "response_feedback",
    "send_cart",
    "standby",
];

/// Instagram's messaging subscription fields.
pub const INSTAGRAM_MESSAGING_FIELDS: &[&str] = &[
    "message_echoes",
    "message_edit",
    "message_reactions",
    "messages",
    "messaging_handover",
    "messaging_optins",
    "messaging_policy_enforcement",
    "messaging_postbacks",
    "messaging_referral",
    "messaging_seen",
    "response_feedback",
    "standby",
];

/// Page change fields with a typed value here.
pub const PAGE_CHANGE_FIELDS: &[&str] = &[
    "feed",
    "leadgen",
    "live_videos",
    "mention",
    "ratings",
    "videos",
];

/// Page profile and other documented fields whose change is reported as `kind: change`
/// (Page webhooks reference).
pub const PAGE_PROFILE_FIELDS: &[&str] = &[
    "affiliation",
    "attire",
    "awards",
    "bio",
    "birthday",
    "business_integrity",
    "category",
    "checkins",
    "company_overview",
    "conversations",
    "culinary_team",
    "current_location",
    "description",
    "email",
    "founded",
    "general_info",
    "general_manager",
    "group_feed",
    "hometown",
    "hours",
    "inbox_labels",
    "invoice_access_bank_slip_events",
    "invoice_access_invoice_change",
    "invoice_access_invoice_draft_change",
    "invoice_access_onboarding_status_active",
    "location",
    "members",
    "merchant_review",
    "mission",
    "name",
    "page_about_story",
    "page_change_proposal",
    "page_upcoming_change",
    "parking",
    "payment_options",
    "personal_info",
    "personal_interests",
    "phone",
    "picture",
    "price_range",
    "product_review",
    "products",
    "public_transit",
    "publisher_subscriptions",
    "website",
];

/// The subscription fields of a WhatsApp Business Account (WA webhooks overview, Apr 2026),
/// plus `calls` and `flows`; `account_settings_update` (Calling's "Call settings" page); the
/// four Groups API fields (Meta's "Webhooks for Groups API" page); `user_id_update` and
/// `business_username_update` (Meta's "Business-scoped user IDs" page, May 2026).
pub const WHATSAPP_FIELDS: &[&str] = &[
    "account_alerts",
    "account_review_update",
    "account_settings_update",
    "account_update",
    "automatic_events",
    "business_capability_update",
    "business_username_update",
    "calls",
    "flows",
    "group_lifecycle_update",
    "group_participants_update",
    "group_settings_update",
    "group_status_update",
    "history",
    "message_template_components_update",
    "message_template_quality_update",
    "message_template_status_update",
    "messages",
    "partner_solutions",
    "payment_configuration_update",
    "phone_number_name_update",
    "phone_number_quality_update",
    "security",
    "smb_app_state_sync",
    "smb_message_echoes",
    "template_category_update",
    "user_id_update",
    "user_preferences",
];

/// One documented object × field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentedField {
    /// Meta's object.
    pub object: &'static str,
    /// The subscription field; `*` for Graph objects, whose fields are the app's own.
    pub field: &'static str,
}

/// Every documented object × field, in the order docs/event-schema.md lists them: WhatsApp,
/// Messenger then the Page's changes, Instagram, then the Graph objects (each group sorted).
pub static COVERAGE: LazyLock<Vec<DocumentedField>> = LazyLock::new(|| {
    let mut rows = Vec::new();
    let mut add = |object: &'static str, fields: Vec<&'static str>| {
        let mut fields = fields;
        fields.sort_unstable();
        rows.extend(
            fields
                .into_iter()
                .map(|field| DocumentedField { object, field }),
        );
    };
    add("whatsapp_business_account", WHATSAPP_FIELDS.to_vec());
    add("page", MESSENGER_FIELDS.to_vec());
    add("page", [PAGE_CHANGE_FIELDS, PAGE_PROFILE_FIELDS].concat());
    add(
        "instagram",
        [INSTAGRAM_CHANGE_FIELDS, INSTAGRAM_MESSAGING_FIELDS].concat(),
    );
    for object in GRAPH_OBJECTS {
        add(object, vec!["*"]);
    }
    rows
});

/// Whether `object` is one Meta documents (and the receiver types): what an endpoint's
/// `objects` may name.
pub fn is_documented_object(object: &str) -> bool {
    matches!(object, "whatsapp_business_account" | "page" | "instagram")
        || GRAPH_OBJECTS.contains(&object)
}

/// The documented objects, in [`COVERAGE`]'s order.
pub fn documented_objects() -> Vec<&'static str> {
    let mut objects: Vec<&'static str> = COVERAGE.iter().map(|row| row.object).collect();
    objects.dedup();
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_of_the_table_is_documented_and_no_other() {
        let objects = documented_objects();
        assert!(objects.iter().all(|object| is_documented_object(object)));
        assert_eq!(objects.len(), 3 + GRAPH_OBJECTS.len(), "{objects:?}");
        assert!(!is_documented_object("whatsapp"));
    }
}
