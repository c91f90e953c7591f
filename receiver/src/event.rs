//! The unified event: one per Meta change, message, status or messaging item.
//!
//! Downstream consumers rely on these names (`id`, `platform`, `object`, `field`, `kind`,
//! `raw`, `message.text`, `status.value`, `conversation.participant.id`); add fields, never
//! rename them. The JSON schema in docs/event-schema.md is generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One normalized webhook item.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Stable id: the platform's own id where it has one (`wamid`, `wamid:status`, `mid`,
    /// `comment_id:verb`), else the hex SHA-256 of (object, entry id, field, the item's bytes).
    /// Meta's retries of the same item produce the same id.
    pub id: String,
    /// Which product sent it.
    pub platform: Platform,
    /// Meta's `object` (`whatsapp_business_account`, `page`, `instagram`, `user`, ...).
    pub object: String,
    /// The webhook field the app subscribes to (`messages`, `feed`, `message_deliveries`, ...).
    pub field: String,
    /// What happened, across platforms.
    pub kind: Kind,
    /// The entry's id: WhatsApp Business Account, Page, Instagram account or user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// When it happened (RFC 3339): the item's own timestamp, else the entry's `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// When this receiver accepted the request (RFC 3339).
    pub received_at: String,
    /// The receiver endpoint that accepted it (its configured name).
    pub endpoint: String,
    /// The business number that received a WhatsApp item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_phone: Option<BusinessPhone>,
    /// The conversation the item belongs to, and the person on the other side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Conversation>,
    /// The message, comment or post the item carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// A delivery status (`sent`, `delivered`, `read`, `failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// A Lead Ads submission's ids (Page `leadgen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead: Option<Lead>,
    /// The ad, link or plugin a conversation started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Referral>,
    /// The media or post a comment, mention or reaction is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// The WhatsApp group an item is about: a Groups API notification, a message sent in a
    /// group, or the status of a message sent to a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// A person's new identifiers (WhatsApp `user_id_update`, or a `system` message saying
    /// the person changed number or business-scoped user id): what to re-key stored data by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_change: Option<IdentityChange>,
    /// Why the item could not be read as its documented shape (only on `kind: unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The item exactly as Meta sent it (whitespace outside strings removed).
    #[schemars(with = "serde_json::Value")]
    pub raw: Box<RawValue>,
}

/// The Meta product an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// WhatsApp Business Platform (`whatsapp_business_account`).
    Whatsapp,
    /// Messenger: a Page's `messaging` and `standby` items.
    Messenger,
    /// Instagram messaging and changes.
    Instagram,
    /// A Facebook Page's changes (feed, leadgen, mention, ratings, ...).
    Facebook,
    /// App-level Graph objects (`user`, `permissions`, `application`, `ad_account`, ...).
    Graph,
}

impl Platform {
    /// The label used in metrics and subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Whatsapp => "whatsapp",
            Platform::Messenger => "messenger",
            Platform::Instagram => "instagram",
            Platform::Facebook => "facebook",
            Platform::Graph => "graph",
        }
    }
}

macro_rules! kinds {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// What an event is, across platforms. Metrics label by it, so it is a closed set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum Kind {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Kind {
            /// Every kind, in documentation order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The kind's name as serialized.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }
        }
    };
}

kinds! {
    /// A message a person sent to the business.
    Message => "message",
    /// A delivery status of a message the business sent (WhatsApp `statuses[]`).
    Status => "status",
    /// A reaction to a message or a post.
    Reaction => "reaction",
    /// A read receipt (Messenger `read`, Instagram `messaging_seen`).
    Read => "read",
    /// A delivery receipt (Messenger `delivery`).
    Delivery => "delivery",
    /// A postback: a button, menu item or ice breaker pressed.
    Postback => "postback",
    /// An opt-in (plugin, notification messages, WhatsApp marketing resume).
    Optin => "optin",
    /// An opt-out (notification messages stop, WhatsApp marketing stop).
    Optout => "optout",
    /// A referral: ad, m.me / ig.me link, shop or chat plugin entry.
    Referral => "referral",
    /// A comment added, edited, hidden or removed.
    Comment => "comment",
    /// The account was mentioned in a post, comment, caption or story.
    Mention => "mention",
    /// A page rating or recommendation.
    Rating => "rating",
    /// A Lead Ads form submission.
    Lead => "lead",
    /// A message template's status or category changed.
    TemplateStatus => "template_status",
    /// A template's or phone number's quality or limits changed.
    QualityUpdate => "quality_update",
    /// A change to the business account, its review, capabilities, partners or payments, or
    /// to a business phone number's settings or username.
    AccountUpdate => "account_update",
    /// A security notification (e.g. two-step verification PIN reset).
    Security => "security",
    /// Metrics of an Instagram story, after it expired.
    StoryInsights => "story_insights",
    /// A comment on an Instagram live broadcast.
    LiveComment => "live_comment",
    /// A message the business itself sent (Messenger/Instagram echo, WhatsApp SMB echo).
    Echo => "echo",
    /// A WhatsApp marketing-messages preference whose value is neither `stop` nor `resume`
    /// (e.g. `signup`): the value is in `status.value`.
    Preference => "preference",
    /// A message was edited.
    Edit => "edit",
    /// A message was deleted (unsent) by its sender.
    Delete => "delete",
    /// Thread control passed between apps (handover protocol).
    Handover => "handover",
    /// Meta enforced a messaging policy on the page or account.
    PolicyEnforcement => "policy_enforcement",
    /// Account linking or unlinking.
    AccountLinking => "account_linking",
    /// A payment, checkout or pre-checkout update.
    Payment => "payment",
    /// Customer feedback or response feedback.
    Feedback => "feedback",
    /// A Messenger game was played (`messaging_game_plays`).
    GamePlay => "game_play",
    /// A post, photo, video, status, share, album or event on a Page's feed.
    Post => "post",
    /// A Page video or live video changed status.
    Video => "video",
    /// A WhatsApp call was connected, changed or ended.
    Call => "call",
    /// A WhatsApp Flow changed status, or an endpoint alert.
    Flow => "flow",
    /// WhatsApp chat history or app-state sync for a coexistence (SMB app) number.
    History => "history",
    /// An ad-attributed event WhatsApp reports automatically (purchase, lead).
    AutomaticEvent => "automatic_event",
    /// A WhatsApp group was created or deleted, people joined, left, were removed or asked to
    /// join, its settings changed, or it was suspended (Groups API); what happened is in
    /// `group.type`.
    Group => "group",
    /// A WhatsApp user's business-scoped user id changed (`user_id_update`); the new ids are
    /// in `identity_change`.
    IdentityChange => "identity_change",
    /// An error Meta reports instead of an item (WhatsApp `value.errors`).
    Error => "error",
    /// A documented change of an app-level object (user, permissions, application, ...),
    /// or a field name reported without values (`changed_fields`).
    Change => "change",
    /// Not a documented object, field or type, or not in its documented shape; see `error`.
    Unknown => "unknown",
}

/// The business phone number a WhatsApp item is for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct BusinessPhone {
    /// `metadata.phone_number_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `metadata.display_phone_number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_number: Option<String>,
    /// The number's business username (`business_username_update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A conversation and its participant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Conversation {
    /// The platform's conversation id, where it gives one (WhatsApp `statuses[].conversation.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The person on the other side of the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Participant>,
}

/// The person on the other side: WhatsApp `from`/`wa_id`/`recipient_id` (or the business-scoped
/// user id when no phone number is given), Messenger PSID or Instagram IGSID; on a Page or
/// Instagram change, its author (`from`, `sender_id`, `reviewer_id`).
///
/// WhatsApp: `id` is the phone number when Meta gives one, else the business-scoped user id
/// (BSUID); `user_id` is the BSUID whenever Meta gives it. Since 2026 a person who adopts a
/// username may come without a phone number, and a number is shared only within 30 days of
/// contact: store `user_id` (or `parent_user_id`, across portfolios) as the stable key, and
/// the phone number as an attribute.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Participant {
    /// The person's id on the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The person's profile name, where Meta includes it (`from.name`, `sender_name`,
    /// `reviewer_name`, WhatsApp `contacts[].profile.name`; an Instagram username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Instagram username (`from.username`), which Instagram gives instead of a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// WhatsApp's business-scoped user id (`from_user_id`, `recipient_user_id`,
    /// `contacts[].user_id`, ...), where present: the key to store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// WhatsApp's parent business-scoped user id (`US.ENT.…`), shared across the business
    /// portfolios enrolled in one parent account, where enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
}

/// A WhatsApp group and what happened to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Group {
    /// The group id (`group_id`; a group message status's `recipient_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The notification's `type`: `group_create`, `group_delete`, `group_participants_add`,
    /// `group_participants_remove`, `group_join_request_created`, `group_join_request_revoked`,
    /// `group_settings_update`, `group_suspend`, `group_suspend_cleared`, ...
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The subject (at creation, or the one a settings update asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The description (at creation, or the one a settings update asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The invite link (at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_link: Option<String>,
    /// The business's API request this notification answers (`request_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The join request (`join_request_id`), to approve or reject with the Groups API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_request_id: Option<String>,
    /// Who acted: `business` or `participant` (`initiated_by` of a removal; `participant`
    /// for a user joining or asking to join).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiated_by: Option<String>,
    /// The people affected: added, removed, left, failed or asking to join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<GroupMember>,
}

/// A person a group notification is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct GroupMember {
    /// `added`, `removed`, `failed`, `join_requested` or `join_request_revoked`.
    pub change: String,
    /// Who: `id` is the phone number if given, else the business-scoped user id (or, for a
    /// removal the business requested, the phone number or BSUID it named: `input`).
    pub participant: Participant,
}

/// A person's new identifiers, and the ones they replace where Meta says.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct IdentityChange {
    /// The business-scoped user id before the change (`user_id_update`'s `user_id.previous`,
    /// or the `from_user_id` of a `system` message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_user_id: Option<String>,
    /// The new business-scoped user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The parent business-scoped user id before the change, where enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_parent_user_id: Option<String>,
    /// The new parent business-scoped user id, where enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// The person's (new) phone number, where shared (`system.wa_id`, `user_id_update`'s
    /// `wa_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
}

/// A message, comment or post carried by an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// The message's own id (`wamid`, `mid`, comment or post id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The type: `text`, `image`, `audio`, ... as the platform names it.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text message, comment or post; a caption; a button's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Media and other attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The id of the message this one replies to or acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The value the business set on what the person chose, which bots route on: a quick
    /// reply's or postback's `payload`, a template button's `payload`, an interactive reply's
    /// `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// A media item or other attachment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Attachment {
    /// `image`, `audio`, `video`, `document`, `sticker`, `location`, `file`, `share`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The media id to download it with (WhatsApp), where given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A URL to fetch it from (Messenger/Instagram CDN links expire), where given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// MIME type, where given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// A delivery status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// `sent`, `delivered`, `read`, `failed`, `played`, ... as Meta sends it.
    pub value: String,
    /// Errors Meta attached (a failed message's reasons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<StatusError>,
    /// How Meta prices the message (WhatsApp `pricing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// The conversation the message opened or belongs to (WhatsApp `conversation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<StatusConversation>,
}

/// WhatsApp's pricing of a message, as its status reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Pricing {
    /// `marketing`, `utility`, `authentication`, `service`, `referral_conversion`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Whether the message is charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billable: Option<bool>,
    /// `pricing_model`: `CBP` (per conversation) or `PMP` (per message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The WhatsApp conversation a status belongs to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct StatusConversation {
    /// Conversation id (also in `conversation.id` of the event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `origin.type`: what opened it (`marketing`, `utility`, `service`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When it expires (RFC 3339, from `expiration_timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A Lead Ads submission. The webhook carries only ids; with Lead Ads enrichment
/// (`enrichment.lead_ads`) the receiver fetches the answers with `GET /{leadgen_id}` and
/// adds `field_data` (and `campaign_id` with `ad_fields`), and says in `enrichment` what
/// it did: the answers are absent when enrichment is off, failed or skipped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Lead {
    /// The lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leadgen_id: Option<String>,
    /// The form it was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_id: Option<String>,
    /// The ad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    /// The ad group (ad set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adgroup_id: Option<String>,
    /// The Page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_id: Option<String>,
    /// When it was submitted (RFC 3339, from `created_time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<String>,
    /// The campaign (from the Graph API, with enrichment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// The form's answers, as the Graph API returns them (with enrichment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_data: Option<Vec<LeadAnswer>>,
    /// What Lead Ads enrichment did for this lead (present whenever `enrichment.lead_ads`
    /// is configured): a consumer tells a lead without answers from one whose answers
    /// could not be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<LeadEnrichment>,
}

/// The outcome of a lead's enrichment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeadEnrichment {
    /// `ok` (the answers are in `field_data`), `failed` (the Graph API refused or did not
    /// answer within the retries) or `skipped` (no token for the lead's Page, or no
    /// `leadgen_id`).
    pub outcome: EnrichmentOutcome,
    /// Why, for `failed` and `skipped` (Meta's message and code, or what is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// [`LeadEnrichment::outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnrichmentOutcome {
    /// The answers were fetched.
    Ok,
    /// They could not be fetched.
    Failed,
    /// They were not asked for.
    Skipped,
}

/// One answer of a Lead Ads form (`field_data[]` of `GET /{leadgen_id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeadAnswer {
    /// The question's key, e.g. `email`, `full_name` or a custom question's key.
    pub name: String,
    /// The answers (several for multiple-choice questions).
    #[serde(default)]
    pub values: Vec<String>,
}

/// Where a conversation came from: a Messenger / Instagram referral (ad, m.me / ig.me link,
/// chat plugin) or a Click-to-WhatsApp ad or post.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Referral {
    /// Messenger / Instagram `source` (`ADS`, `SHORTLINK`, `CUSTOMER_CHAT_PLUGIN`, ...);
    /// WhatsApp `source_type` (`ad` or `post`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Messenger / Instagram `type` (`OPEN_THREAD`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The `ref` parameter of the link, ad or plugin.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The ad: Messenger / Instagram `ad_id`, WhatsApp `source_id` when `source_type` is `ad`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    /// WhatsApp's click id, for conversion reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<String>,
    /// WhatsApp `source_url` (the ad or post); Messenger `referer_uri` (the chat plugin's page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
}

/// The Instagram media or Page post an item is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Media {
    /// Media id (Instagram `media.id` / `media_id`) or post id (Page `post_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Instagram `media_product_type`: `FEED`, `REELS`, `STORY`, `AD`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_type: Option<String>,
}

/// One of Meta's error objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct StatusError {
    /// Meta's numeric error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Short title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Longer message or details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a replayed event's JSON starts: `"replayed": true` as its first member (docs/replay.md).
/// Only `metahook-receiver replay` (and the admin endpoint) adds it; the event's `id` and
/// every other member stay as first delivered, so consumers de-duplicate as before.
pub const REPLAYED_PREFIX: &[u8] = br#"{"replayed":true,"#;

/// An event's JSON with the replay marker added (see [`REPLAYED_PREFIX`]); a JSON text that
/// is not an object, or already marked, is returned as it is.
pub fn mark_replayed(json: &[u8]) -> Vec<u8> {
    let Some(rest) = json.trim_ascii_start().strip_prefix(b"{") else {
        return json.to_vec();
    };
    if is_replayed(json) {
        return json.to_vec();
    }
    let rest = rest.trim_ascii_start();
    let mut out = Vec::with_capacity(json.len() + REPLAYED_PREFIX.len());
    if rest.starts_with(b"}") {
        out.extend_from_slice(br#"{"replayed":true"#);
    } else {
        out.extend_from_slice(REPLAYED_PREFIX);
    }
    out.extend_from_slice(rest);
    out
}

/// Whether an event's JSON carries the replay marker [`mark_replayed`] adds.
pub fn is_replayed(json: &[u8]) -> bool {
    json.starts_with(br#"{"replayed":true"#)
}

/// The event's JSON schema (draft 2020-12), as published in docs/event-schema.md.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Event);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_marker_leads_the_object_and_keeps_everything_else() {
        let marked = mark_replayed(br#"{"id":"wamid.1","kind":"message"}"#);
        assert_eq!(
            marked,
            br#"{"replayed":true,"id":"wamid.1","kind":"message"}"#
        );
        assert!(is_replayed(&marked));
        assert_eq!(mark_replayed(&marked), marked, "marked once");
        assert_eq!(mark_replayed(b"{}"), br#"{"replayed":true}"#);
        assert_eq!(mark_replayed(b"[1]"), b"[1]", "not an object: as it is");
        let value: serde_json::Value = serde_json::from_slice(&marked).expect("still JSON");
        assert_eq!(value["id"], "wamid.1");
    }
}
