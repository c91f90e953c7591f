//! The field rules: for each Meta key that names an actor, a text, a payload, a lead id, a
//! price, a referral or a media item, the event field that must equal it. The table below is
//! checked against every fixture, the repository's own (receiver/tests/fixtures/meta) and the
//! shared real payloads (../shared/fixtures/meta, read in place; skipped when absent). A
//! fixture whose item carries a rule's key but whose event lacks (or differs in) the field
//! fails the test, naming the rule and the fixture; every rule must apply to at least one own
//! fixture, so each shape has a fixture of its own.

#![allow(clippy::print_stderr)] // the test reports its figures on stderr

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use metahook_receiver::meta::lenient::UnixTime;
use metahook_receiver::normalize::{Context, normalize};
use serde_json::Value;

/// How a Meta value compares with the event's.
#[derive(Clone, Copy)]
enum Match {
    /// The same text (ids sent as numbers compare as their decimal text, booleans as
    /// `true`/`false`).
    Same,
    /// A Unix time (seconds or milliseconds) equals the event's RFC 3339 text.
    Time,
}

/// One rule: in items selected by `platform`, `fields` (the event's, empty = any), `kinds`
/// (the event's, empty = any), `when`/`unless` (a raw key and the values it must / must not
/// have) and `without` (raw keys that must be absent or empty), the first of `keys` present in
/// the raw item must equal the event's `field`.
struct Rule {
    name: &'static str,
    platform: &'static [&'static str],
    fields: &'static [&'static str],
    kinds: &'static [&'static str],
    when: Option<(&'static str, &'static [&'static str])>,
    unless: Option<(&'static str, &'static [&'static str])>,
    without: &'static [&'static str],
    keys: &'static [&'static str],
    field: &'static str,
    how: Match,
}

const RULE: Rule = Rule {
    name: "",
    platform: &[],
    fields: &[],
    kinds: &[],
    when: None,
    unless: None,
    without: &[],
    keys: &[],
    field: "",
    how: Match::Same,
};

const PAGE: &[&str] = &["facebook"];
const MESSAGING: &[&str] = &["messenger", "instagram"];
const WHATSAPP: &[&str] = &["whatsapp"];
const INSTAGRAM: &[&str] = &["instagram"];
const IG_COMMENTS: &[&str] = &["comments", "live_comments"];
const WA_INCOMING: &[&str] = &["message", "reaction", "edit", "delete"];
const NOT_ECHO: Option<(&str, &[&str])> = Some(("message.is_echo", &["true"]));
/// A WhatsApp status of a message sent to a group (`recipient_id` is then the group).
const TO_GROUP: Option<(&str, &[&str])> = Some(("recipient_type", &["group"]));
const WA_GROUP_FIELDS: &[&str] = &[
    "group_lifecycle_update",
    "group_participants_update",
    "group_settings_update",
    "group_status_update",
];

const RULES: &[Rule] = &[
    // Actors: who commented, posted, reacted, rated, mentioned, messaged.
    Rule {
        name: "page feed author id (from.id, sender_id, legacy like user_id)",
        platform: PAGE,
        fields: &["feed"],
        keys: &["value.from.id", "value.sender_id", "value.user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "page feed author name (from.name, sender_name)",
        platform: PAGE,
        fields: &["feed"],
        keys: &["value.from.name", "value.sender_name"],
        field: "conversation.participant.name",
        ..RULE
    },
    Rule {
        name: "page mention author id (from.id, sender_id)",
        platform: PAGE,
        fields: &["mention"],
        keys: &["value.from.id", "value.sender_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "page mention author name (from.name, sender_name)",
        platform: PAGE,
        fields: &["mention"],
        keys: &["value.from.name", "value.sender_name"],
        field: "conversation.participant.name",
        ..RULE
    },
    Rule {
        name: "page ratings author id (from.id, sender_id, reviewer_id)",
        platform: PAGE,
        fields: &["ratings"],
        keys: &["value.from.id", "value.sender_id", "value.reviewer_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "page ratings author name (from.name, sender_name, reviewer_name)",
        platform: PAGE,
        fields: &["ratings"],
        keys: &[
            "value.from.name",
            "value.sender_name",
            "value.reviewer_name",
        ],
        field: "conversation.participant.name",
        ..RULE
    },
    Rule {
        name: "instagram comment author id (from.id)",
        platform: INSTAGRAM,
        fields: IG_COMMENTS,
        keys: &["value.from.id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "instagram comment author username (from.username)",
        platform: INSTAGRAM,
        fields: IG_COMMENTS,
        keys: &["value.from.username"],
        field: "conversation.participant.username",
        ..RULE
    },
    Rule {
        name: "messaging sender is the participant (not on echoes)",
        platform: MESSAGING,
        unless: NOT_ECHO,
        keys: &["sender.id", "sender.user_ref"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "messaging echo: the recipient is the participant",
        platform: MESSAGING,
        when: NOT_ECHO,
        keys: &["recipient.id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp message sender (from)",
        platform: WHATSAPP,
        kinds: WA_INCOMING,
        // Meta's pre-February 2026 shape sent `"from": ""` for a withheld number.
        unless: Some(("from", &[""])),
        keys: &["from"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp status recipient (recipient_id)",
        platform: WHATSAPP,
        kinds: &["status"],
        unless: TO_GROUP,
        keys: &["recipient_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    // Business-scoped user ids (BSUIDs): the stable key, and the participant when no phone
    // number is shared.
    Rule {
        name: "whatsapp message sender BSUID (from_user_id)",
        platform: WHATSAPP,
        kinds: WA_INCOMING,
        keys: &["from_user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp message sender without a phone number is the BSUID",
        platform: WHATSAPP,
        kinds: WA_INCOMING,
        without: &["from"],
        keys: &["from_user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp message sender parent BSUID (from_parent_user_id)",
        platform: WHATSAPP,
        keys: &["from_parent_user_id"],
        field: "conversation.participant.parent_user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp status recipient BSUID (recipient_user_id)",
        platform: WHATSAPP,
        kinds: &["status"],
        unless: TO_GROUP,
        keys: &["recipient_user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp status recipient without a phone number is the BSUID",
        platform: WHATSAPP,
        kinds: &["status"],
        unless: TO_GROUP,
        without: &["recipient_id"],
        keys: &["recipient_user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp status recipient parent BSUID (recipient_parent_user_id)",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["recipient_parent_user_id"],
        field: "conversation.participant.parent_user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp echo recipient BSUID (to_user_id)",
        platform: WHATSAPP,
        kinds: &["echo"],
        keys: &["to_user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp echo recipient without a phone number is the BSUID",
        platform: WHATSAPP,
        kinds: &["echo"],
        without: &["to"],
        keys: &["to_user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp user-initiated call: caller BSUID (from_user_id)",
        platform: WHATSAPP,
        kinds: &["call"],
        unless: Some(("direction", &["BUSINESS_INITIATED"])),
        keys: &["from_user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp user-initiated call: caller without a phone number is the BSUID",
        platform: WHATSAPP,
        kinds: &["call"],
        unless: Some(("direction", &["BUSINESS_INITIATED"])),
        without: &["from"],
        keys: &["from_user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp business-initiated call: callee (to, to_user_id)",
        platform: WHATSAPP,
        kinds: &["call"],
        when: Some(("direction", &["BUSINESS_INITIATED"])),
        keys: &["to", "to_user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp business-initiated call: callee BSUID (to_user_id)",
        platform: WHATSAPP,
        kinds: &["call"],
        when: Some(("direction", &["BUSINESS_INITIATED"])),
        keys: &["to_user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp preference: person (wa_id, else user_id) and BSUID",
        platform: WHATSAPP,
        fields: &["user_preferences"],
        keys: &["wa_id", "user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp preference BSUID (user_id)",
        platform: WHATSAPP,
        fields: &["user_preferences"],
        keys: &["user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp system message: new BSUID (system.user_id)",
        platform: WHATSAPP,
        keys: &["system.user_id"],
        field: "identity_change.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp system message: new phone number (system.wa_id)",
        platform: WHATSAPP,
        keys: &["system.wa_id"],
        field: "identity_change.wa_id",
        ..RULE
    },
    Rule {
        name: "whatsapp system message without a sender: the new identity is the participant",
        platform: WHATSAPP,
        when: Some(("type", &["system"])),
        without: &["from", "from_user_id"],
        keys: &["system.wa_id", "system.user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp user_id_update: previous BSUID",
        platform: WHATSAPP,
        fields: &["user_id_update"],
        keys: &["user_id.previous"],
        field: "identity_change.previous_user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp user_id_update: current BSUID",
        platform: WHATSAPP,
        fields: &["user_id_update"],
        keys: &["user_id.current"],
        field: "identity_change.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp user_id_update: current parent BSUID",
        platform: WHATSAPP,
        fields: &["user_id_update"],
        keys: &["parent_user_id.current"],
        field: "identity_change.parent_user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp user_id_update: person (wa_id, else the current BSUID)",
        platform: WHATSAPP,
        fields: &["user_id_update"],
        keys: &["wa_id", "user_id.current"],
        field: "conversation.participant.id",
        ..RULE
    },
    // Groups: messages sent in a group, statuses of messages sent to a group, and the Groups
    // API notifications.
    Rule {
        name: "whatsapp group message: the group (group_id)",
        platform: WHATSAPP,
        kinds: WA_INCOMING,
        keys: &["group_id"],
        field: "conversation.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group message: group.id (group_id)",
        platform: WHATSAPP,
        kinds: WA_INCOMING,
        keys: &["group_id"],
        field: "group.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group status: the group (recipient_id)",
        platform: WHATSAPP,
        kinds: &["status"],
        when: TO_GROUP,
        keys: &["recipient_id"],
        field: "group.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group status: the conversation is the group (recipient_id)",
        platform: WHATSAPP,
        kinds: &["status"],
        when: TO_GROUP,
        keys: &["recipient_id"],
        field: "conversation.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group status: the participant (recipient_participant_id, else BSUID)",
        platform: WHATSAPP,
        kinds: &["status"],
        when: TO_GROUP,
        keys: &["recipient_participant_id", "recipient_participant_user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group status: the participant's BSUID",
        platform: WHATSAPP,
        kinds: &["status"],
        when: TO_GROUP,
        keys: &["recipient_participant_user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp group status: the participant's parent BSUID",
        platform: WHATSAPP,
        kinds: &["status"],
        when: TO_GROUP,
        keys: &["recipient_participant_parent_user_id"],
        field: "conversation.participant.parent_user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: the group (group_id)",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["group_id"],
        field: "group.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: the conversation is the group (group_id)",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["group_id"],
        field: "conversation.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: what happened (type)",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["type"],
        field: "group.type",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: request id",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["request_id"],
        field: "group.request_id",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: subject (subject, group_subject.text)",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["subject", "group_subject.text"],
        field: "group.subject",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: description (description, group_description.text)",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["description", "group_description.text"],
        field: "group.description",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: join request id",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["join_request_id"],
        field: "group.join_request_id",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: invite link",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["invite_link"],
        field: "group.invite_link",
        ..RULE
    },
    Rule {
        name: "whatsapp group notification: who acted (initiated_by)",
        platform: WHATSAPP,
        fields: WA_GROUP_FIELDS,
        keys: &["initiated_by"],
        field: "group.initiated_by",
        ..RULE
    },
    Rule {
        name: "whatsapp group join request: the person (wa_id, else user_id)",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &["wa_id", "user_id"],
        field: "conversation.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group join request: the person's BSUID (user_id)",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &["user_id"],
        field: "conversation.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp group join request: the person's username",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &["username"],
        field: "conversation.participant.username",
        ..RULE
    },
    Rule {
        name: "whatsapp group: the first added participant (wa_id, else user_id)",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &["added_participants.0.wa_id", "added_participants.0.user_id"],
        field: "group.participants.0.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group: the first added participant's BSUID",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &["added_participants.0.user_id"],
        field: "group.participants.0.participant.user_id",
        ..RULE
    },
    Rule {
        name: "whatsapp group: the first removed participant (wa_id, else input)",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &[
            "removed_participants.0.wa_id",
            "removed_participants.0.input",
        ],
        field: "group.participants.0.participant.id",
        ..RULE
    },
    Rule {
        name: "whatsapp group: a second removed participant named by BSUID (input)",
        platform: WHATSAPP,
        fields: &["group_participants_update"],
        keys: &["removed_participants.1.input"],
        field: "group.participants.1.participant.user_id",
        ..RULE
    },
    // Account-level notifications with ids of their own.
    Rule {
        name: "whatsapp account_settings_update: the phone number (phone_number_id)",
        platform: WHATSAPP,
        fields: &["account_settings_update"],
        keys: &["value.phone_number_settings.phone_number_id"],
        field: "business_phone.id",
        ..RULE
    },
    Rule {
        name: "whatsapp account_settings_update: occurred_at (timestamp)",
        platform: WHATSAPP,
        fields: &["account_settings_update"],
        keys: &["value.timestamp"],
        field: "occurred_at",
        how: Match::Time,
        ..RULE
    },
    Rule {
        name: "whatsapp business_username_update: username",
        platform: WHATSAPP,
        fields: &["business_username_update"],
        keys: &["value.username"],
        field: "business_phone.username",
        ..RULE
    },
    Rule {
        name: "whatsapp business_username_update: status",
        platform: WHATSAPP,
        fields: &["business_username_update"],
        keys: &["value.status"],
        field: "status.value",
        ..RULE
    },
    Rule {
        name: "whatsapp echo recipient (to)",
        platform: WHATSAPP,
        kinds: &["echo"],
        keys: &["to"],
        field: "conversation.participant.id",
        ..RULE
    },
    // Texts.
    Rule {
        name: "page feed and mention text (message)",
        platform: PAGE,
        fields: &["feed", "mention"],
        keys: &["value.message"],
        field: "message.text",
        ..RULE
    },
    Rule {
        name: "page ratings text (review_text, message)",
        platform: PAGE,
        fields: &["ratings"],
        keys: &["value.review_text", "value.message"],
        field: "message.text",
        ..RULE
    },
    Rule {
        name: "instagram comment text (text)",
        platform: INSTAGRAM,
        fields: IG_COMMENTS,
        keys: &["value.text"],
        field: "message.text",
        ..RULE
    },
    Rule {
        name: "messaging text (message.text, message_edit.text)",
        platform: MESSAGING,
        keys: &["message.text", "message_edit.text"],
        field: "message.text",
        ..RULE
    },
    Rule {
        name: "whatsapp text (text.body)",
        platform: WHATSAPP,
        keys: &["text.body"],
        field: "message.text",
        ..RULE
    },
    // Payloads a bot routes on.
    Rule {
        name: "messaging quick reply payload",
        platform: MESSAGING,
        keys: &["message.quick_reply.payload"],
        field: "message.payload",
        ..RULE
    },
    Rule {
        name: "messaging postback payload",
        platform: MESSAGING,
        keys: &["postback.payload"],
        field: "message.payload",
        ..RULE
    },
    Rule {
        name: "whatsapp template button payload",
        platform: WHATSAPP,
        keys: &["button.payload"],
        field: "message.payload",
        ..RULE
    },
    Rule {
        name: "whatsapp interactive reply id (button_reply, list_reply)",
        platform: WHATSAPP,
        keys: &["interactive.button_reply.id", "interactive.list_reply.id"],
        field: "message.payload",
        ..RULE
    },
    // Lead Ads.
    Rule {
        name: "lead leadgen_id",
        platform: PAGE,
        fields: &["leadgen"],
        keys: &["value.leadgen_id"],
        field: "lead.leadgen_id",
        ..RULE
    },
    Rule {
        name: "lead form_id",
        platform: PAGE,
        fields: &["leadgen"],
        keys: &["value.form_id"],
        field: "lead.form_id",
        ..RULE
    },
    Rule {
        name: "lead ad_id",
        platform: PAGE,
        fields: &["leadgen"],
        keys: &["value.ad_id"],
        field: "lead.ad_id",
        ..RULE
    },
    Rule {
        name: "lead adgroup_id",
        platform: PAGE,
        fields: &["leadgen"],
        keys: &["value.adgroup_id"],
        field: "lead.adgroup_id",
        ..RULE
    },
    Rule {
        name: "lead page_id",
        platform: PAGE,
        fields: &["leadgen"],
        keys: &["value.page_id"],
        field: "lead.page_id",
        ..RULE
    },
    Rule {
        name: "lead created_time",
        platform: PAGE,
        fields: &["leadgen"],
        keys: &["value.created_time"],
        field: "lead.created_time",
        how: Match::Time,
        ..RULE
    },
    // WhatsApp pricing and conversation of a status.
    Rule {
        name: "status pricing category",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["pricing.category"],
        field: "status.pricing.category",
        ..RULE
    },
    Rule {
        name: "status pricing billable",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["pricing.billable"],
        field: "status.pricing.billable",
        ..RULE
    },
    Rule {
        name: "status pricing model (pricing_model)",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["pricing.pricing_model"],
        field: "status.pricing.model",
        ..RULE
    },
    Rule {
        name: "status conversation id",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["conversation.id"],
        field: "status.conversation.id",
        ..RULE
    },
    Rule {
        name: "status conversation origin (origin.type)",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["conversation.origin.type"],
        field: "status.conversation.origin",
        ..RULE
    },
    Rule {
        name: "status conversation expires_at (expiration_timestamp)",
        platform: WHATSAPP,
        kinds: &["status"],
        keys: &["conversation.expiration_timestamp"],
        field: "status.conversation.expires_at",
        how: Match::Time,
        ..RULE
    },
    // Referrals: Messenger / Instagram (item, message or postback) and Click-to-WhatsApp.
    Rule {
        name: "messaging referral source",
        platform: MESSAGING,
        keys: &[
            "referral.source",
            "message.referral.source",
            "postback.referral.source",
        ],
        field: "referral.source",
        ..RULE
    },
    Rule {
        name: "messaging referral type",
        platform: MESSAGING,
        keys: &[
            "referral.type",
            "message.referral.type",
            "postback.referral.type",
        ],
        field: "referral.type",
        ..RULE
    },
    Rule {
        name: "messaging referral ref",
        platform: MESSAGING,
        keys: &[
            "referral.ref",
            "message.referral.ref",
            "postback.referral.ref",
        ],
        field: "referral.ref",
        ..RULE
    },
    Rule {
        name: "messaging referral ad_id",
        platform: MESSAGING,
        keys: &[
            "referral.ad_id",
            "message.referral.ad_id",
            "postback.referral.ad_id",
        ],
        field: "referral.ad_id",
        ..RULE
    },
    Rule {
        name: "messaging referral source_url (chat plugin referer_uri)",
        platform: MESSAGING,
        keys: &[
            "referral.referer_uri",
            "message.referral.referer_uri",
            "postback.referral.referer_uri",
        ],
        field: "referral.source_url",
        ..RULE
    },
    Rule {
        name: "whatsapp referral source (source_type)",
        platform: WHATSAPP,
        keys: &["referral.source_type"],
        field: "referral.source",
        ..RULE
    },
    Rule {
        name: "whatsapp referral ad_id (source_id of an ad)",
        platform: WHATSAPP,
        when: Some(("referral.source_type", &["ad"])),
        keys: &["referral.source_id"],
        field: "referral.ad_id",
        ..RULE
    },
    Rule {
        name: "whatsapp referral ctwa_clid",
        platform: WHATSAPP,
        keys: &["referral.ctwa_clid"],
        field: "referral.ctwa_clid",
        ..RULE
    },
    Rule {
        name: "whatsapp referral source_url",
        platform: WHATSAPP,
        keys: &["referral.source_url"],
        field: "referral.source_url",
        ..RULE
    },
    // The media or post a comment, mention or reaction is about.
    Rule {
        name: "instagram comment media id",
        platform: INSTAGRAM,
        fields: IG_COMMENTS,
        keys: &["value.media.id"],
        field: "media.id",
        ..RULE
    },
    Rule {
        name: "instagram comment media product type",
        platform: INSTAGRAM,
        fields: IG_COMMENTS,
        keys: &["value.media.media_product_type"],
        field: "media.product_type",
        ..RULE
    },
    Rule {
        name: "instagram mention media id (media_id)",
        platform: INSTAGRAM,
        fields: &["mentions"],
        keys: &["value.media_id"],
        field: "media.id",
        ..RULE
    },
    Rule {
        name: "page feed comment or reaction: the post (post_id)",
        platform: PAGE,
        fields: &["feed"],
        kinds: &["comment", "reaction"],
        keys: &["value.post_id"],
        field: "media.id",
        ..RULE
    },
    Rule {
        name: "page mention: the post (post_id)",
        platform: PAGE,
        fields: &["mention"],
        keys: &["value.post_id"],
        field: "media.id",
        ..RULE
    },
    Rule {
        name: "page ratings comment or reaction: the review (post_id, open_graph_story_id)",
        platform: PAGE,
        fields: &["ratings"],
        unless: Some(("value.item", &["rating"])),
        keys: &["value.post_id", "value.open_graph_story_id"],
        field: "media.id",
        ..RULE
    },
];

/// A JSON value at a dotted path (a numeric segment indexes an array).
fn at<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |v, key| match (v, key.parse::<usize>()) {
            (Value::Array(items), Ok(index)) => items.get(index),
            _ => v.get(key),
        })
        .filter(|v| !v.is_null())
}

/// A scalar as text: strings as they are, integers in decimal, booleans as `true`/`false`.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (None, Some(i), _) => i.to_string(),
            (None, None, Some(f)) if f.fract() == 0.0 => format!("{f:.0}"),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

fn is_one_of(raw: &Value, (path, values): (&str, &[&str])) -> bool {
    at(raw, path)
        .and_then(text)
        .is_some_and(|t| values.contains(&t.as_str()))
}

/// What a rule expects of one event: `None` when it does not apply.
fn expected(rule: &Rule, event: &Value, raw: &Value) -> Option<(&'static str, Option<String>)> {
    let of = |key: &str| event[key].as_str().unwrap_or("").to_owned();
    let selected = event["kind"] != "unknown"
        && rule.platform.contains(&of("platform").as_str())
        && (rule.fields.is_empty() || rule.fields.contains(&of("field").as_str()))
        && (rule.kinds.is_empty() || rule.kinds.contains(&of("kind").as_str()))
        && rule.when.is_none_or(|w| is_one_of(raw, w))
        && !rule.unless.is_some_and(|u| is_one_of(raw, u))
        && rule
            .without
            .iter()
            .all(|key| at(raw, key).and_then(text).is_none_or(|t| t.is_empty()));
    if !selected {
        return None;
    }
    let (key, value) = rule
        .keys
        .iter()
        .find_map(|key| at(raw, key).map(|v| (*key, v)))?;
    let want = match rule.how {
        Match::Same => text(value),
        Match::Time => serde_json::from_value::<UnixTime>(value.clone())
            .ok()
            .and_then(UnixTime::to_rfc3339),
    };
    Some((key, want))
}

/// Per rule: items it applied to, and those that kept it.
#[derive(Default, Clone, Copy)]
struct Tally {
    applied: usize,
    kept: usize,
}

struct Outcome {
    tallies: Vec<Tally>,
    failures: Vec<String>,
}

fn check(source: &str, files: &[(String, Vec<u8>)]) -> Outcome {
    let ctx = Context {
        endpoint: "test",
        received_at: "2026-01-01T00:00:00Z",
        objects: None,
    };
    let mut outcome = Outcome {
        tallies: vec![Tally::default(); RULES.len()],
        failures: Vec::new(),
    };
    for (file, body) in files {
        let Ok(events) = normalize(body, &ctx) else {
            continue; // not an object: the conformance tests cover these
        };
        for event in events {
            let json = serde_json::to_value(&event).expect("an event serializes");
            let raw: Value = serde_json::from_str(event.raw.get()).expect("raw is JSON");
            for (rule, tally) in RULES.iter().zip(&mut outcome.tallies) {
                let Some((key, want)) = expected(rule, &json, &raw) else {
                    continue;
                };
                tally.applied += 1;
                let got = at(&json, rule.field).and_then(text);
                if got.is_some() && got == want {
                    tally.kept += 1;
                } else {
                    outcome.failures.push(format!(
                        "{source} {file}: rule \"{}\": {key} = {want:?} but {} = {got:?}",
                        rule.name, rule.field
                    ));
                }
            }
        }
    }
    outcome
}

/// The files an INDEX.tsv lists, with their bytes; doc examples wrapped in an array are
/// read as the objects inside (what Meta delivers).
fn indexed(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let index = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("INDEX.tsv");
    let mut out = Vec::new();
    for file in index
        .lines()
        .skip(1)
        .filter_map(|line| line.split('\t').next())
        .filter(|f| f.ends_with(".json"))
    {
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&bytes) {
            Ok(inner) => {
                out.extend(
                    inner
                        .iter()
                        .map(|raw| (file.to_owned(), raw.get().as_bytes().to_vec())),
                );
            }
            Err(_) => out.push((file.to_owned(), bytes)),
        }
    }
    out
}

fn own_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meta")
}

/// The shared fixtures (`META_FIXTURES_DIR`, else ../shared/fixtures/meta beside the
/// repository). Absent, the test fails naming the folder, unless `META_FIXTURES_OPTIONAL=1`
/// (a laptop without them): then `None` and the test skips only itself.
fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("META_FIXTURES_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/meta"),
        PathBuf::from,
    );
    if dir.join("INDEX.tsv").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("META_FIXTURES_OPTIONAL").is_some_and(|v| v == "1"),
        "the shared Meta fixtures are not at {} (no INDEX.tsv): set META_FIXTURES_DIR to the \
         folder, or META_FIXTURES_OPTIONAL=1 to skip the tests that read it",
        dir.display()
    );
    None
}

fn report(source: &str, outcome: &Outcome) {
    for (rule, tally) in RULES.iter().zip(&outcome.tallies) {
        if tally.applied > 0 {
            eprintln!(
                "{source}: {:>3}/{:<3} {}",
                tally.kept, tally.applied, rule.name
            );
        }
    }
}

#[test]
fn own_fixtures_keep_every_field_rule() {
    let outcome = check("own", &indexed(&own_dir()));
    report("own", &outcome);
    let unused: Vec<&str> = RULES
        .iter()
        .zip(&outcome.tallies)
        .filter(|(_, t)| t.applied == 0)
        .map(|(rule, _)| rule.name)
        .collect();
    assert!(
        outcome.failures.is_empty(),
        "{} field rules broken:\n{}",
        outcome.failures.len(),
        outcome.failures.join("\n")
    );
    assert!(
        unused.is_empty(),
        "rules without an own fixture of their shape:\n{}",
        unused.join("\n")
    );
}

#[test]
fn shared_fixtures_keep_every_field_rule() {
    let Some(dir) = shared_dir() else {
        eprintln!(
            "SKIP shared_fixtures_keep_every_field_rule: shared fixtures folder not found (META_FIXTURES_OPTIONAL=1)"
        );
        return;
    };
    let outcome = check("shared", &indexed(&dir));
    report("shared", &outcome);
    assert!(
        outcome.failures.is_empty(),
        "{} field rules broken:\n{}",
        outcome.failures.len(),
        outcome.failures.join("\n")
    );
}

/// The figure the issue asks about: Page and Instagram changes whose item names an author,
/// and how many of them carry it in `conversation.participant.id`, per fixture source.
#[test]
fn authored_changes_have_a_participant() {
    let mut sources = vec![("own", indexed(&own_dir()))];
    if let Some(dir) = shared_dir() {
        sources.push(("shared", indexed(&dir)));
    }
    let mut missing = Vec::new();
    for (source, files) in &sources {
        let figures = authored(files, &mut missing);
        let (total, filled) = figures
            .values()
            .fold((0, 0), |(t, f), (a, b)| (t + a, f + b));
        for ((platform, field, kind), (all, with)) in &figures {
            eprintln!("{source}: authored {platform} {field} {kind}: participant {with}/{all}");
        }
        eprintln!("{source}: authored changes: participant {filled}/{total}");
    }
    assert!(
        missing.is_empty(),
        "authored changes without a participant:\n{}",
        missing.join("\n")
    );
}

/// Per (platform, field, kind): authored change events, and those with a participant id.
fn authored(
    files: &[(String, Vec<u8>)],
    missing: &mut Vec<String>,
) -> BTreeMap<(String, String, String), (usize, usize)> {
    const AUTHOR_KEYS: &[&str] = &[
        "value.from.id",
        "value.sender_id",
        "value.reviewer_id",
        "value.user_id",
    ];
    let ctx = Context {
        endpoint: "test",
        received_at: "2026-01-01T00:00:00Z",
        objects: None,
    };
    let mut figures: BTreeMap<(String, String, String), (usize, usize)> = BTreeMap::new();
    for (file, body) in files {
        for event in normalize(body, &ctx).into_iter().flatten() {
            let json = serde_json::to_value(&event).expect("an event serializes");
            let raw: Value = serde_json::from_str(event.raw.get()).expect("raw is JSON");
            let platform = json["platform"].as_str().unwrap_or("");
            if event.kind == metahook_receiver::event::Kind::Unknown
                || !["facebook", "instagram"].contains(&platform)
                || !AUTHOR_KEYS.iter().any(|k| at(&raw, k).is_some())
            {
                continue;
            }
            let entry = figures
                .entry((
                    platform.to_owned(),
                    event.field.clone(),
                    event.kind.as_str().to_owned(),
                ))
                .or_default();
            entry.0 += 1;
            if at(&json, "conversation.participant.id").is_some() {
                entry.1 += 1;
            } else {
                missing.push(format!("{file}: {} {}", event.field, event.kind.as_str()));
            }
        }
    }
    figures
}
