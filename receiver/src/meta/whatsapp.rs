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

/// The subscription fields of a WhatsApp Business Account (WA webhooks overview, Apr 2026),
/// plus `calls` and `flows`.
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

/// `value.contacts[]`: who sent the messages.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Contact {
    /// `{name}` as set in the person's WhatsApp profile.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// The person's WhatsApp id (phone number).
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// Business-scoped user id (2026), e.g. `US.13491208655302741918`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The parent business-scoped user id.
    #[serde(default)]
    pub parent_user_id: Option<String>,
}

/// A WhatsApp profile.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Profile {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
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
    /// Recipient (echoes only).
    #[serde(default)]
    pub to: Option<Id>,
    /// Recipient's business-scoped user id (echoes only).
    #[serde(default)]
    pub to_user_id: Option<String>,
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
    /// New WhatsApp id.
    #[serde(default)]
    pub wa_id: Option<Id>,
    /// `user_changed_number`, `customer_identity_changed`, ...
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
    /// The customer.
    #[serde(default)]
    pub recipient_id: Option<Id>,
    /// The customer's business-scoped user id.
    #[serde(default)]
    pub recipient_user_id: Option<String>,
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
    /// Callee.
    #[serde(default)]
    pub to: Option<Id>,
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
