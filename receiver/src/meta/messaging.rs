//! Messenger and Instagram messaging items (`entry[].messaging[]` and `entry[].standby[]`).
//!
//! Each item is `{sender{id}, recipient{id}, timestamp, <event key>: {...}}`; the event key
//! says what happened. Messenger and Instagram share the shape and differ in field names.

use serde::{Deserialize, Serialize};

use super::lenient::{Id, Num, UnixTime};

/// Messenger's subscription fields (object `page`), current and beta/legacy.
pub use metahook_config::objects::MESSENGER_FIELDS;

/// Instagram's messaging subscription fields.
pub use metahook_config::objects::INSTAGRAM_MESSAGING_FIELDS as INSTAGRAM_FIELDS;

/// One messaging item. Exactly one event key is expected; the first one present wins.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Item {
    /// The person (PSID / IGSID), or the page for echoes. Absent on policy enforcement.
    #[serde(default)]
    pub sender: Option<Party>,
    /// The page or Instagram account, or the person for echoes.
    #[serde(default)]
    pub recipient: Option<Party>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: Option<UnixTime>,
    /// A message (text, attachments, quick reply, echo, deletion).
    #[serde(default)]
    pub message: Option<Message>,
    /// A message was edited.
    #[serde(default)]
    pub message_edit: Option<MessageEdit>,
    /// Messages up to the watermark were delivered.
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// Messages up to the watermark (or `mid`) were read.
    #[serde(default)]
    pub read: Option<Read>,
    /// A reaction to a message.
    #[serde(default)]
    pub reaction: Option<Reaction>,
    /// A postback button pressed.
    #[serde(default)]
    pub postback: Option<Postback>,
    /// An opt-in.
    #[serde(default)]
    pub optin: Option<Optin>,
    /// A referral (ad, link, plugin).
    #[serde(default)]
    pub referral: Option<Referral>,
    /// Account linking or unlinking.
    #[serde(default)]
    pub account_linking: Option<AccountLinking>,
    /// Handover: thread control passed to this app.
    #[serde(default)]
    pub pass_thread_control: Option<serde_json::Value>,
    /// Handover: thread control taken from this app.
    #[serde(default)]
    pub take_thread_control: Option<serde_json::Value>,
    /// Handover: another app requests thread control.
    #[serde(default)]
    pub request_thread_control: Option<serde_json::Value>,
    /// Handover: the app's roles changed.
    #[serde(default)]
    pub app_roles: Option<serde_json::Value>,
    /// Policy enforcement (warning, block, unblock).
    #[serde(default)]
    pub policy_enforcement: Option<PolicyEnforcement>,
    /// Older spelling of `policy_enforcement`.
    #[serde(default, rename = "policy-enforcement")]
    pub policy_enforcement_legacy: Option<PolicyEnforcement>,
    /// Checkout update (payments beta).
    #[serde(default)]
    pub checkout_update: Option<serde_json::Value>,
    /// Payment (payments beta).
    #[serde(default)]
    pub payment: Option<serde_json::Value>,
    /// Pre-checkout (payments beta).
    #[serde(default)]
    pub pre_checkout: Option<serde_json::Value>,
    /// An instant game was played.
    #[serde(default)]
    pub game_play: Option<serde_json::Value>,
    /// Customer feedback form submitted.
    #[serde(default)]
    pub messaging_feedback: Option<serde_json::Value>,
    /// Feedback on a response.
    #[serde(default)]
    pub response_feedback: Option<serde_json::Value>,
}

/// `sender` / `recipient`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Party {
    /// PSID, IGSID, page id or Instagram account id.
    #[serde(default)]
    pub id: Option<Id>,
    /// A checkbox-plugin `user_ref` when there is no id yet.
    #[serde(default)]
    pub user_ref: Option<Id>,
}

/// `message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Message {
    /// Message id.
    #[serde(default)]
    pub mid: Option<String>,
    /// Sequence number (older versions).
    #[serde(default)]
    pub seq: Option<Num>,
    /// Text.
    #[serde(default)]
    pub text: Option<String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// A quick reply tapped.
    #[serde(default)]
    pub quick_reply: Option<QuickReply>,
    /// The message replied to (`{mid}`) or story replied to (`{story{url,id}}`).
    #[serde(default)]
    pub reply_to: Option<ReplyTo>,
    /// Sent by the page / account itself.
    #[serde(default)]
    pub is_echo: Option<bool>,
    /// Sent by the account from another client (Instagram).
    #[serde(default)]
    pub is_self: Option<bool>,
    /// Unsent by its sender.
    #[serde(default)]
    pub is_deleted: Option<bool>,
    /// Content Meta cannot render.
    #[serde(default)]
    pub is_unsupported: Option<bool>,
    /// The app that sent an echo.
    #[serde(default)]
    pub app_id: Option<Id>,
    /// Developer metadata on an echo.
    #[serde(default)]
    pub metadata: Option<String>,
    /// An ad or link referral that started the conversation.
    #[serde(default)]
    pub referral: Option<Referral>,
    /// Built-in NLP entities (Messenger).
    #[serde(default)]
    pub nlp: Option<serde_json::Value>,
    /// The message before a conversation was handed over.
    #[serde(default)]
    pub prior_message: Option<serde_json::Value>,
    /// Commerce: a product the person asked about.
    #[serde(default)]
    pub commands: Option<serde_json::Value>,
}

/// `message.attachments[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Attachment {
    /// `image`, `audio`, `video`, `file`, `location`, `fallback`, `template`, `share`,
    /// `story_mention`, `ig_reel`, `reel`, `ig_post`, `ig_story`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `{url, sticker_id, coordinates, title, ...}`; ignored when not an object (fallbacks).
    #[serde(default, deserialize_with = "super::lenient::object_or_none")]
    pub payload: Option<AttachmentPayload>,
    /// Title (fallback).
    #[serde(default)]
    pub title: Option<String>,
    /// URL (fallback).
    #[serde(default)]
    pub url: Option<String>,
}

/// `attachments[].payload`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AttachmentPayload {
    /// Media or link URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Sticker id.
    #[serde(default)]
    pub sticker_id: Option<Id>,
    /// Reel / post id.
    #[serde(default)]
    pub reel_video_id: Option<Id>,
    /// Title.
    #[serde(default)]
    pub title: Option<String>,
    /// `{lat, long}` (location).
    #[serde(default)]
    pub coordinates: Option<serde_json::Value>,
}

/// `quick_reply`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct QuickReply {
    /// The payload the business set.
    #[serde(default)]
    pub payload: Option<String>,
}

/// `reply_to`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ReplyTo {
    /// The message replied to.
    #[serde(default)]
    pub mid: Option<String>,
    /// The story replied to.
    #[serde(default)]
    pub story: Option<Story>,
    /// Whether the reply quotes itself (Messenger).
    #[serde(default)]
    pub is_self_reply: Option<bool>,
}

/// `reply_to.story`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Story {
    /// Story id.
    #[serde(default)]
    pub id: Option<Id>,
    /// CDN URL.
    #[serde(default)]
    pub url: Option<String>,
}

/// `message_edit`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MessageEdit {
    /// The edited message.
    #[serde(default)]
    pub mid: Option<String>,
    /// New text.
    #[serde(default)]
    pub text: Option<String>,
    /// How many times it was edited.
    #[serde(default)]
    pub num_edit: Option<Num>,
}

/// `delivery`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Delivery {
    /// Delivered messages (may be absent).
    #[serde(default)]
    pub mids: Vec<String>,
    /// Everything before this time was delivered.
    #[serde(default)]
    pub watermark: Option<UnixTime>,
    /// Sequence number.
    #[serde(default)]
    pub seq: Option<Num>,
}

/// `read`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Read {
    /// Everything before this time was read (Messenger).
    #[serde(default)]
    pub watermark: Option<UnixTime>,
    /// The message read (Instagram).
    #[serde(default)]
    pub mid: Option<String>,
    /// Sequence number.
    #[serde(default)]
    pub seq: Option<Num>,
}

/// `reaction`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Reaction {
    /// The message reacted to.
    #[serde(default)]
    pub mid: Option<String>,
    /// `react` or `unreact`.
    #[serde(default)]
    pub action: Option<String>,
    /// `love`, `like`, `other`, ...
    #[serde(default)]
    pub reaction: Option<String>,
    /// The emoji.
    #[serde(default)]
    pub emoji: Option<String>,
}

/// `postback`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Postback {
    /// Postback id (since v11).
    #[serde(default)]
    pub mid: Option<String>,
    /// Button title.
    #[serde(default)]
    pub title: Option<String>,
    /// The payload the business set.
    #[serde(default)]
    pub payload: Option<String>,
    /// Referral, when the postback started the conversation.
    #[serde(default)]
    pub referral: Option<Referral>,
}

/// `optin`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Optin {
    /// `notification_messages`, `one_time_notif_req`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Plugin data-ref.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// Checkbox-plugin user ref.
    #[serde(default)]
    pub user_ref: Option<String>,
    /// Payload of the opt-in request.
    #[serde(default)]
    pub payload: Option<String>,
    /// `STOP_NOTIFICATIONS` / `RESUME_NOTIFICATIONS`.
    #[serde(default)]
    pub notification_messages_status: Option<String>,
    /// Token to send notification messages with.
    #[serde(default)]
    pub notification_messages_token: Option<String>,
    /// `DAILY`, `WEEKLY`, `MONTHLY`.
    #[serde(default)]
    pub notification_messages_frequency: Option<String>,
    /// Token expiry (ms).
    #[serde(default)]
    pub token_expiry_timestamp: Option<UnixTime>,
    /// Title of the opt-in request.
    #[serde(default)]
    pub title: Option<String>,
}

/// `referral`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Referral {
    /// The ref parameter.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// `SHORTLINK`, `ADS`, `MESSENGER_CODE`, `CUSTOMER_CHAT_PLUGIN`, ...
    #[serde(default)]
    pub source: Option<String>,
    /// `OPEN_THREAD`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Ad id.
    #[serde(default)]
    pub ad_id: Option<Id>,
    /// Ad context.
    #[serde(default)]
    pub ads_context_data: Option<serde_json::Value>,
    /// The site of a chat plugin.
    #[serde(default)]
    pub referer_uri: Option<String>,
}

/// `account_linking`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AccountLinking {
    /// `linked` or `unlinked`.
    #[serde(default)]
    pub status: Option<String>,
    /// The business's code (linked).
    #[serde(default)]
    pub authorization_code: Option<String>,
}

/// `policy_enforcement`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PolicyEnforcement {
    /// `warning`, `block`, `unblock`.
    #[serde(default)]
    pub action: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}
