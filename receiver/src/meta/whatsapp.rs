//! WhatsApp Business Platform payloads (object `whatsapp_business_account`).
//!
//! Every `changes[].value` of a WhatsApp Business Account carries `messaging_product`,
//! `metadata` and, per field, a list of items (`messages`, `statuses`, `message_echoes`,
//! `calls`, `user_preferences`) or one account-level notification. Items are kept as raw JSON
//! here and parsed into their typed shape one by one, so a malformed item spoils only itself.
//! Every field is optional: Meta adds fields freely and drops some (BSUID-only messages have
//! no `from`), and unknown keys are ignored.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::lenient::{Id, Num, UnixTime};

/// The subscription fields of a WhatsApp Business Account (one list, in the config crate,
/// which the operator's CRD shares).
pub use metahook_config::objects::WHATSAPP_FIELDS as FIELDS;

/// Message `type`s Meta documents for incoming messages.
pub const MESSAGE_TYPES: &[&str] = &[
    "audio",
    "button",
    "contacts",
    "document",
    "edit",
    "image",
    "interactive",
    "location",
    "order",
    "reaction",
    "request_welcome",
    "revoke",
    "sticker",
    "system",
    "text",
    "unknown",
    "unsupported",
    "video",
];

/// A change's `value` for the item-carrying fields, with the items left raw.
#[derive(Debug, Deserialize)]
pub struct ItemsValue<'a> {
    /// Always `whatsapp`.
    #[serde(default)]
    pub messaging_product: Option<String>,
    /// The business phone number the items are for.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Profiles of the people in `messages` / `statuses`.
    #[serde(default)]
    pub contacts: Vec<Contact>,
    /// Incoming messages (field `messages`).
    #[serde(default, borrow)]
    pub messages: Vec<&'a RawValue>,
    /// Status updates of outgoing messages (field `messages`) or calls (field `calls`).
    #[serde(default, borrow)]
    pub statuses: Vec<&'a RawValue>,
    /// Messages sent from the WhatsApp Business app on a coexistence number.
    #[serde(default, borrow)]
    pub message_echoes: Vec<&'a RawValue>,
    /// Call events (field `calls`).
    #[serde(default, borrow)]
    pub calls: Vec<&'a RawValue>,
    /// Marketing-message preference changes (field `user_preferences`).
    #[serde(default, borrow)]
    pub user_preferences: Vec<&'a RawValue>,
    /// Groups API notifications (fields `group_lifecycle_update`, `group_participants_update`,
    /// `group_settings_update`, `group_status_update`).
    #[serde(default, borrow)]
    pub groups: Vec<&'a RawValue>,
    /// Business-scoped user id changes (field `user_id_update`).
    #[serde(default, borrow)]
    pub user_id_update: Vec<&'a RawValue>,
    /// System-, app- or account-level errors.
    #[serde(default)]
    pub errors: Vec<Error>,
}

/// `value.metadata`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Metadata {
    /// The number as displayed to customers.
    #[serde(default)]
    pub display_phone_number: Option<Id>,
    /// The phone number id used with the Cloud API.
    #[serde(default)]
    pub phone_number_id: Option<Id>,
}

/// `value.contacts[]`: who sent the messages (or, on statuses, who received them; on a
/// group's statuses, one per participant).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Contact {
    /// `{name, username}` as set in the person's WhatsApp profile.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// The person's WhatsApp id (phone number); omitted since 2026 when the person uses a
    /// username and Meta may not share the number (empty in Meta's pre-February 2026 shapes).
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// Business-scoped user id (BSUID, 2026), e.g. `US.13491208655302741918`: always present.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The parent business-scoped user id (`US.ENT.…`), for enrolled business portfolios.
    #[serde(default)]
    pub parent_user_id: Option<String>,
}

/// A WhatsApp profile.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Profile {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The person's WhatsApp username, when they adopted one (2026).
    #[serde(default)]
    pub username: Option<String>,
}

/// One of Meta's error objects (`errors[]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Error {
    /// Numeric code, e.g. 131051.
    #[serde(default)]
    pub code: Option<Num>,
    /// Short title.
    #[serde(default)]
    pub title: Option<String>,
    /// Message.
    #[serde(default)]
    pub message: Option<String>,
    /// `{details}`.
    #[serde(default)]
    pub error_data: Option<ErrorData>,
    /// Link to the error code reference.
    #[serde(default)]
    pub href: Option<String>,
}

/// `errors[].error_data`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ErrorData {
    /// Details.
    #[serde(default)]
    pub details: Option<String>,
}

/// An incoming message (`messages[]`), or an echo (`message_echoes[]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Message {
    /// Sender's WhatsApp id; absent for BSUID-only senders.
    #[serde(default)]
    pub from: Option<Id>,
    /// Sender's business-scoped user id, where given.
    #[serde(default)]
    pub from_user_id: Option<String>,
    /// Sender's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub from_parent_user_id: Option<String>,
    /// The group the message was sent in (Groups API), absent in a one-to-one chat.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Recipient (echoes only).
    #[serde(default)]
    pub to: Option<Id>,
    /// Recipient's business-scoped user id (echoes only).
    #[serde(default)]
    pub to_user_id: Option<String>,
    /// Recipient's parent business-scoped user id (echoes only), where enabled.
    #[serde(default)]
    pub to_parent_user_id: Option<String>,
    /// The message id (`wamid.…`).
    #[serde(default)]
    pub id: Option<String>,
    /// Unix seconds, as a string.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
    /// `text`, `image`, ..., see [`MESSAGE_TYPES`].
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Reply / forward context.
    #[serde(default)]
    pub context: Option<Context>,
    /// Click-to-WhatsApp ad referral.
    #[serde(default)]
    pub referral: Option<Referral>,
    /// Errors (type `unsupported` / `unknown`).
    #[serde(default)]
    pub errors: Vec<Error>,
    /// `type: text`.
    #[serde(default)]
    pub text: Option<Text>,
    /// `type: image`.
    #[serde(default)]
    pub image: Option<Media>,
    /// `type: audio` (`voice: true` for voice notes).
    #[serde(default)]
    pub audio: Option<Media>,
    /// `type: video`.
    #[serde(default)]
    pub video: Option<Media>,
    /// `type: document`.
    #[serde(default)]
    pub document: Option<Media>,
    /// `type: sticker`.
    #[serde(default)]
    pub sticker: Option<Media>,
    /// `type: location`.
    #[serde(default)]
    pub location: Option<Location>,
    /// `type: contacts`: shared contact cards (kept loosely typed: many optional parts).
    #[serde(default)]
    pub contacts: Option<Vec<serde_json::Value>>,
    /// `type: interactive`.
    #[serde(default)]
    pub interactive: Option<Interactive>,
    /// `type: button` (template quick reply).
    #[serde(default)]
    pub button: Option<Button>,
    /// `type: reaction`; empty or absent emoji = reaction removed.
    #[serde(default)]
    pub reaction: Option<Reaction>,
    /// `type: order`.
    #[serde(default)]
    pub order: Option<Order>,
    /// `type: system`.
    #[serde(default)]
    pub system: Option<System>,
    /// `type: edit`.
    #[serde(default)]
    pub edit: Option<Edit>,
    /// `type: revoke`.
    #[serde(default)]
    pub revoke: Option<Revoke>,
}

/// `text`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Text {
    /// The text.
    #[serde(default)]
    pub body: Option<String>,
}

/// Media of an image, audio, video, document or sticker message.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Media {
    /// Media id for the media endpoint.
    #[serde(default)]
    pub id: Option<Id>,
    /// MIME type.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// SHA-256 of the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Caption (image, video, document).
    #[serde(default)]
    pub caption: Option<String>,
    /// File name (document).
    #[serde(default)]
    pub filename: Option<String>,
    /// Voice note (audio).
    #[serde(default)]
    pub voice: Option<bool>,
    /// Animated (sticker).
    #[serde(default)]
    pub animated: Option<bool>,
    /// Download URL, where included.
    #[serde(default)]
    pub url: Option<String>,
}

/// `location`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Location {
    /// Latitude.
    #[serde(default)]
    pub latitude: Option<Num>,
    /// Longitude.
    #[serde(default)]
    pub longitude: Option<Num>,
    /// Place name.
    #[serde(default)]
    pub name: Option<String>,
    /// Address.
    #[serde(default)]
    pub address: Option<String>,
    /// URL.
    #[serde(default)]
    pub url: Option<String>,
}

/// `context`: the message replied to, or forward markers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Context {
    /// The replied-to message's sender.
    #[serde(default)]
    pub from: Option<Id>,
    /// The replied-to message's id.
    #[serde(default)]
    pub id: Option<String>,
    /// Forwarded.
    #[serde(default)]
    pub forwarded: Option<bool>,
    /// Forwarded more than five times.
    #[serde(default)]
    pub frequently_forwarded: Option<bool>,
    /// Product enquiry.
    #[serde(default)]
    pub referred_product: Option<ReferredProduct>,
}

/// `context.referred_product`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ReferredProduct {
    /// Catalog id.
    #[serde(default)]
    pub catalog_id: Option<Id>,
    /// Product retailer id.
    #[serde(default)]
    pub product_retailer_id: Option<Id>,
}

/// `referral`: the ad a Click-to-WhatsApp conversation started from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Referral {
    /// Ad or post URL.
    #[serde(default)]
    pub source_url: Option<String>,
    /// `ad` or `post`.
    #[serde(default)]
    pub source_type: Option<String>,
    /// Ad or post id.
    #[serde(default)]
    pub source_id: Option<Id>,
    /// Headline.
    #[serde(default)]
    pub headline: Option<String>,
    /// Body.
    #[serde(default)]
    pub body: Option<String>,
    /// `image` or `video`.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Image URL.
    #[serde(default)]
    pub image_url: Option<String>,
    /// Video URL.
    #[serde(default)]
    pub video_url: Option<String>,
    /// Thumbnail URL.
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    /// Click id.
    #[serde(default)]
    pub ctwa_clid: Option<String>,
}

/// `interactive`: a reply to an interactive message.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Interactive {
    /// `button_reply`, `list_reply`, `nfm_reply`, `call_permission_reply`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// A reply button pressed.
    #[serde(default)]
    pub button_reply: Option<Choice>,
    /// A list row chosen.
    #[serde(default)]
    pub list_reply: Option<Choice>,
    /// A Flow completed: `{name, body, response_json}`.
    #[serde(default)]
    pub nfm_reply: Option<NfmReply>,
    /// A call-permission request answered.
    #[serde(default)]
    pub call_permission_reply: Option<serde_json::Value>,
}

/// A button or list row: `{id, title[, description]}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Choice {
    /// The id the business gave it.
    #[serde(default)]
    pub id: Option<Id>,
    /// Its title.
    #[serde(default)]
    pub title: Option<String>,
    /// Its description (list rows).
    #[serde(default)]
    pub description: Option<String>,
}

/// `interactive.nfm_reply`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NfmReply {
    /// `flow`.
    #[serde(default)]
    pub name: Option<String>,
    /// `Sent`.
    #[serde(default)]
    pub body: Option<String>,
    /// The Flow's response, as a JSON string.
    #[serde(default)]
    pub response_json: Option<String>,
}

/// `button`: a template quick-reply button pressed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Button {
    /// The button text.
    #[serde(default)]
    pub text: Option<String>,
    /// The payload the business set.
    #[serde(default)]
    pub payload: Option<String>,
}

/// `reaction`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Reaction {
    /// The message reacted to.
    #[serde(default)]
    pub message_id: Option<String>,
    /// The emoji; empty or absent when removed.
    #[serde(default)]
    pub emoji: Option<String>,
}

/// `order`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Order {
    /// Catalog id.
    #[serde(default)]
    pub catalog_id: Option<Id>,
    /// Text sent with the order.
    #[serde(default)]
    pub text: Option<String>,
    /// `[{product_retailer_id, quantity, item_price, currency}]`.
    #[serde(default)]
    pub product_items: Vec<ProductItem>,
}

/// `order.product_items[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ProductItem {
    /// Product id.
    #[serde(default)]
    pub product_retailer_id: Option<Id>,
    /// Quantity.
    #[serde(default)]
    pub quantity: Option<Num>,
    /// Unit price.
    #[serde(default)]
    pub item_price: Option<Num>,
    /// ISO 4217 currency.
    #[serde(default)]
    pub currency: Option<String>,
}

/// `system`: the customer changed number or identity.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct System {
    /// Description.
    #[serde(default)]
    pub body: Option<String>,
    /// New WhatsApp id (omitted when the person uses a username and the number is not shared).
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// The person's new business-scoped user id (a number change regenerates it).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The person's new parent business-scoped user id, where enabled.
    #[serde(default)]
    pub parent_user_id: Option<String>,
    /// `user_changed_number`, `user_changed_user_id`, `customer_identity_changed`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Identity hash (identity changes).
    #[serde(default)]
    pub identity: Option<String>,
    /// Old WhatsApp id (older shape).
    #[serde(default)]
    pub customer: Option<Id>,
}

/// `edit`: the customer edited a message.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Edit {
    /// The edited message.
    #[serde(default)]
    pub original_message_id: Option<String>,
    /// The new content, itself a message.
    #[serde(default)]
    pub message: Option<Box<Message>>,
}

/// `revoke`: the customer deleted a message.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Revoke {
    /// The deleted message.
    #[serde(default)]
    pub original_message_id: Option<String>,
}

/// A status update (`statuses[]`) of an outgoing message or a call.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StatusUpdate {
    /// The message (`wamid.…`) or call (`wacid.…`) id.
    #[serde(default)]
    pub id: Option<String>,
    /// `sent`, `delivered`, `read`, `failed`, `played`; calls: `RINGING`, `ACCEPTED`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
    /// The customer's phone number; the group id when `recipient_type` is `group`; omitted
    /// when the message went to a business-scoped user id and the number is not shared.
    #[serde(default)]
    pub recipient_id: Option<Id>,
    /// The customer's business-scoped user id.
    #[serde(default)]
    pub recipient_user_id: Option<String>,
    /// The customer's parent business-scoped user id, where enabled (named
    /// `parent_recipient_user_id` in Meta's April 2026 text, renamed May 5, 2026).
    #[serde(default, alias = "parent_recipient_user_id")]
    pub recipient_parent_user_id: Option<String>,
    /// `individual` (default) or `group`: a message sent to a group reports one status per
    /// participant, `recipient_id` naming the group.
    #[serde(default)]
    pub recipient_type: Option<String>,
    /// The group participant the status is about: their phone number, where shared.
    #[serde(default)]
    pub recipient_participant_id: Option<Id>,
    /// The group participant's business-scoped user id.
    #[serde(default)]
    pub recipient_participant_user_id: Option<String>,
    /// The group participant's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub recipient_participant_parent_user_id: Option<String>,
    /// `call` for call statuses.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The conversation the message opened or belongs to.
    #[serde(default)]
    pub conversation: Option<StatusConversation>,
    /// Pricing.
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Why it failed.
    #[serde(default)]
    pub errors: Vec<Error>,
    /// The tracker the business attached when sending.
    #[serde(default)]
    pub biz_opaque_callback_data: Option<String>,
}

/// `statuses[].conversation`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StatusConversation {
    /// Conversation id.
    #[serde(default)]
    pub id: Option<String>,
    /// When it expires (Unix seconds).
    #[serde(default)]
    pub expiration_timestamp: Option<UnixTime>,
    /// `{type}`: marketing, utility, authentication, service, referral_conversion.
    #[serde(default)]
    pub origin: Option<serde_json::Value>,
}

/// `statuses[].pricing`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Pricing {
    /// Billable.
    #[serde(default)]
    pub billable: Option<bool>,
    /// `CBP`, `PMP`.
    #[serde(default)]
    pub pricing_model: Option<String>,
    /// Category.
    #[serde(default)]
    pub category: Option<String>,
    /// Type (per-message pricing).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// `calls[]`: a call connected or ended.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Call {
    /// Call id (`wacid.…`).
    #[serde(default)]
    pub id: Option<String>,
    /// Caller.
    #[serde(default)]
    pub from: Option<Id>,
    /// Caller's business-scoped user id (user-initiated calls).
    #[serde(default)]
    pub from_user_id: Option<String>,
    /// Caller's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub from_parent_user_id: Option<String>,
    /// Callee.
    #[serde(default)]
    pub to: Option<Id>,
    /// Callee's business-scoped user id (business-initiated calls).
    #[serde(default)]
    pub to_user_id: Option<String>,
    /// Callee's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub to_parent_user_id: Option<String>,
    /// `connect`, `terminate`.
    #[serde(default)]
    pub event: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
    /// `BUSINESS_INITIATED` / `USER_INITIATED`.
    #[serde(default)]
    pub direction: Option<String>,
    /// `{sdp, sdp_type}`.
    #[serde(default)]
    pub session: Option<serde_json::Value>,
    /// Terminate status.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
    /// Duration in seconds (terminate).
    #[serde(default)]
    pub duration: Option<Num>,
}

/// `user_preferences[]`: a customer stopped or resumed marketing messages.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct UserPreference {
    /// The customer.
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// The customer's business-scoped user id.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The customer's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub parent_user_id: Option<String>,
    /// Description.
    #[serde(default)]
    pub detail: Option<String>,
    /// `marketing_messages`.
    #[serde(default)]
    pub category: Option<String>,
    /// `stop` or `resume`.
    #[serde(default)]
    pub value: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
}

/// `groups[]` of the four Groups API fields (Meta's "Webhooks for Groups API" page and the
/// Groups sections of "Business-scoped user IDs"): one group notification. Which keys are
/// present depends on `type`; every one is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupItem {
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
    /// The group.
    #[serde(default)]
    pub group_id: Option<Id>,
    /// `group_create`, `group_delete`, `group_participants_add`, `group_participants_remove`,
    /// `group_join_request_created`, `group_join_request_revoked`, `group_settings_update`,
    /// `group_suspend`, `group_suspend_cleared`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The id of the business's API request this answers (create, delete, remove, update).
    #[serde(default)]
    pub request_id: Option<String>,
    /// The group's subject (create).
    #[serde(default)]
    pub subject: Option<String>,
    /// The group's description (create).
    #[serde(default)]
    pub description: Option<String>,
    /// The invite link (create).
    #[serde(default)]
    pub invite_link: Option<String>,
    /// `auto_approve` or `approval_required` (create).
    #[serde(default)]
    pub join_approval_mode: Option<String>,
    /// Why participants were added, e.g. `invite_link`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who removed participants: `business` or `participant` (a participant who left).
    #[serde(default)]
    pub initiated_by: Option<String>,
    /// Users who joined.
    #[serde(default)]
    pub added_participants: Vec<GroupUser>,
    /// Users who were removed or left.
    #[serde(default)]
    pub removed_participants: Vec<GroupUser>,
    /// Users the business's request could not add or remove, with `errors`.
    #[serde(default)]
    pub failed_participants: Vec<GroupUser>,
    /// A join request (join request created or revoked).
    #[serde(default)]
    pub join_request_id: Option<String>,
    /// The requesting user's phone number (join requests), where shared.
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// The requesting user's business-scoped user id (join requests).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The requesting user's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub parent_user_id: Option<String>,
    /// The requesting user's username, where they adopted one.
    #[serde(default)]
    pub username: Option<String>,
    /// The new subject and whether it was applied (settings update).
    #[serde(default)]
    pub group_subject: Option<GroupSetting>,
    /// The new description and whether it was applied (settings update).
    #[serde(default)]
    pub group_description: Option<GroupSetting>,
    /// The new picture and whether it was applied (settings update).
    #[serde(default)]
    pub profile_picture: Option<GroupSetting>,
    /// Why the request failed as a whole.
    #[serde(default)]
    pub errors: Vec<Error>,
}

/// A user in `added_participants`, `removed_participants` or `failed_participants`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupUser {
    /// The phone number or business-scoped user id the business named in its request.
    #[serde(default)]
    pub input: Option<String>,
    /// The user's phone number, where shared.
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// The user's business-scoped user id.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The user's parent business-scoped user id, where enabled.
    #[serde(default)]
    pub parent_user_id: Option<String>,
    /// The user's username, where they adopted one.
    #[serde(default)]
    pub username: Option<String>,
    /// Why this user could not be added or removed.
    #[serde(default)]
    pub errors: Vec<Error>,
}

/// `group_subject`, `group_description`, `profile_picture` of a settings update.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupSetting {
    /// The requested text (subject, description).
    #[serde(default)]
    pub text: Option<String>,
    /// Whether the change was applied.
    #[serde(default)]
    pub update_successful: Option<bool>,
    /// MIME type (picture).
    #[serde(default)]
    pub mime_type: Option<String>,
    /// SHA-256 (picture).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Why it was not applied.
    #[serde(default)]
    pub errors: Vec<Error>,
}

/// `user_id_update[]`: a person's business-scoped user id changed (Meta's "Business-scoped
/// user IDs" page, section "user_id_update webhooks").
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct UserIdUpdate {
    /// The person's phone number, where shared.
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// Human-readable description.
    #[serde(default)]
    pub detail: Option<String>,
    /// `{previous, current}` business-scoped user ids.
    #[serde(default)]
    pub user_id: Option<PreviousCurrent>,
    /// `{previous, current}` parent business-scoped user ids, where enabled.
    #[serde(default)]
    pub parent_user_id: Option<PreviousCurrent>,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
}

/// An identifier before and after a change.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PreviousCurrent {
    /// The old value.
    #[serde(default)]
    pub previous: Option<String>,
    /// The new value.
    #[serde(default)]
    pub current: Option<String>,
}

/// The value of `account_settings_update` (Calling's "Call settings" page): a business phone
/// number's settings changed (today only its calling settings).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AccountSettingsValue {
    /// Always `whatsapp`.
    #[serde(default)]
    pub messaging_product: Option<String>,
    /// When the settings changed (Unix seconds).
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
    /// `PHONE_NUMBER_SETTINGS`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The phone number and its changed settings.
    #[serde(default)]
    pub phone_number_settings: Option<PhoneNumberSettings>,
}

/// `phone_number_settings` of `account_settings_update`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PhoneNumberSettings {
    /// The business phone number whose settings changed.
    #[serde(default)]
    pub phone_number_id: Option<Id>,
    /// The calling settings, as the Get settings API returns them (null when calling did not
    /// change); kept loosely typed, its parts are in `raw`.
    #[serde(default)]
    pub calling: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The value of `business_username_update`: a business phone number's username changed status
/// (Meta's "Business-scoped user IDs" page; it replaced `phone_number_username_update` on
/// February 6, 2026).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct BusinessUsernameValue {
    /// The business number, as displayed.
    #[serde(default)]
    pub display_phone_number: Option<Id>,
    /// The username (omitted when `status` is `deleted`).
    #[serde(default)]
    pub username: Option<String>,
    /// `approved`, `reserved` or `deleted`.
    #[serde(default)]
    pub status: Option<String>,
}

/// The value of an account-level field (account_update, template status, quality, security,
/// flows, history, ...). These notifications share a loose shape: an `event` and ids.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AccountNotification {
    /// The event name, e.g. `APPROVED`, `VERIFIED_ACCOUNT`, `PIN_RESET_REQUEST`, `FLAGGED`.
    #[serde(default)]
    pub event: Option<String>,
    /// Template id (template fields).
    #[serde(default)]
    pub message_template_id: Option<Id>,
    /// Template name (template fields).
    #[serde(default)]
    pub message_template_name: Option<String>,
    /// Template language (template fields).
    #[serde(default)]
    pub message_template_language: Option<String>,
    /// Rejection or change reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Previous quality score (template quality).
    #[serde(default)]
    pub previous_quality_score: Option<String>,
    /// New quality score (template quality).
    #[serde(default)]
    pub new_quality_score: Option<String>,
    /// Display phone number (phone number fields).
    #[serde(default)]
    pub display_phone_number: Option<Id>,
    /// Current messaging limit (phone number quality).
    #[serde(default)]
    pub current_limit: Option<String>,
    /// Old and new category (template category update).
    #[serde(default)]
    pub previous_category: Option<String>,
    /// New category (template category update).
    #[serde(default)]
    pub new_category: Option<String>,
    /// Review decision (account_review_update).
    #[serde(default)]
    pub decision: Option<String>,
    /// Flow id (flows).
    #[serde(default)]
    pub flow_id: Option<Id>,
    /// Free text (flows, alerts).
    #[serde(default)]
    pub message: Option<String>,
    /// Requester (security).
    #[serde(default)]
    pub requester: Option<Id>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_reads_numeric_ids_and_string_timestamps() {
        let m: Message = serde_json::from_str(
            r#"{"from": 15551234567, "id": "wamid.A", "timestamp": "1700000000",
                "type": "text", "text": {"body": "hi"}, "future_key": {"x": 1}}"#,
        )
        .expect("message");
        assert_eq!(m.from.as_ref().map(Id::as_str), Some("15551234567"));
        assert_eq!(m.timestamp, Some(UnixTime(1_700_000_000)));
        assert_eq!(m.text.and_then(|t| t.body).as_deref(), Some("hi"));
    }

    #[test]
    fn a_text_that_is_not_an_object_is_an_error() {
        assert!(serde_json::from_str::<Message>(r#"{"type": "text", "text": 5}"#).is_err());
    }
}
