//! WhatsApp Business Account changes: messages, statuses, echoes, calls, preferences, and
//! account-level notifications.

use serde_json::value::RawValue;

use super::{Scope, parse, parse_or_default};
use crate::event::{
    Attachment, BusinessPhone, Conversation, Event, Kind, Message, Participant, Pricing, Referral,
    Status, StatusConversation, StatusError,
};
use crate::meta::lenient::{Id, UnixTime};
use crate::meta::whatsapp::{
    AccountNotification, Call, Contact, Error, ItemsValue, MESSAGE_TYPES, Media,
    Message as WaMessage, Metadata, Referral as WaReferral, StatusUpdate, UserPreference,
};

/// A WhatsApp change read in one pass, its value taken as an item list. Any value that is
/// an object reads (every key is optional); anything else sends the change down the
/// general path, which reports it precisely.
#[derive(Debug, serde::Deserialize)]
pub(super) struct WaItemsChange<'a> {
    #[serde(default)]
    field: Option<String>,
    #[serde(default, borrow)]
    value: Option<ItemsValue<'a>>,
}

/// Fields whose value holds lists of items rather than one notification.
const ITEM_FIELDS: &[&str] = &[
    "messages",
    "smb_message_echoes",
    "calls",
    "user_preferences",
];

impl Scope<'_> {
    /// One change of a WhatsApp Business Account (the general path; see `whatsapp_fast`).
    pub(super) fn whatsapp_change(
        &self,
        field: &str,
        change_raw: &RawValue,
        value: Option<&RawValue>,
        kinds: &[Kind],
        out: &mut Vec<Event>,
    ) {
        if !ITEM_FIELDS.contains(&field) {
            match parse_or_default::<AccountNotification>(value) {
                Ok(_) => out.push(self.event(field, kinds[0], change_raw)),
                Err(err) => {
                    out.push(self.unknown(field, change_raw, format!("{field} value: {err}")));
                }
            }
            return;
        }
        let Some(value) = value else {
            out.push(self.unknown(field, change_raw, format!("{field} change has no value")));
            return;
        };
        match parse::<ItemsValue<'_>>(value) {
            Ok(items) => self.whatsapp_items(field, change_raw, &items, out),
            Err(err) => out.push(self.unknown(field, change_raw, format!("{field} value: {err}"))),
        }
    }

    /// The fast path for the common case: a change of an item-carrying field parsed in one
    /// pass ([`WaItemsChange`]). Returns false when the change must take the general path.
    pub(super) fn whatsapp_fast(
        &self,
        entry_field: Option<&str>,
        change_raw: &RawValue,
        out: &mut Vec<Event>,
    ) -> bool {
        let Ok(change) = parse::<WaItemsChange<'_>>(change_raw) else {
            return false;
        };
        let field = change.field.as_deref().or(entry_field).unwrap_or("");
        match change.value {
            Some(items) if ITEM_FIELDS.contains(&field) => {
                self.whatsapp_items(field, change_raw, &items, out);
                true
            }
            _ => false,
        }
    }

    /// One event per item of an item-carrying field's value.
    fn whatsapp_items(
        &self,
        field: &str,
        change_raw: &RawValue,
        items: &ItemsValue<'_>,
        out: &mut Vec<Event>,
    ) {
        let phone = items.metadata.as_ref().map(business_phone);
        let before = out.len();
        for raw in &items.messages {
            out.push(self.wa_message(field, raw, &items.contacts));
        }
        let status_kind = if field == "calls" {
            Kind::Call
        } else {
            Kind::Status
        };
        for raw in &items.statuses {
            out.push(self.wa_status(field, raw, status_kind, &items.contacts));
        }
        for raw in &items.message_echoes {
            out.push(self.wa_echo(field, raw, &items.contacts));
        }
        for raw in &items.calls {
            out.push(self.wa_call(field, raw, &items.contacts));
        }
        for raw in &items.user_preferences {
            out.push(self.wa_preference(field, raw, &items.contacts));
        }
        if out.len() == before {
            if items.errors.is_empty() {
                let note = format!("{field} value has no items");
                out.push(self.unknown(field, change_raw, note));
            } else {
                let mut event = self.event(field, Kind::Error, change_raw);
                event.status = Some(Status {
                    value: "error".to_owned(),
                    errors: items.errors.iter().map(status_error).collect(),
                    ..Status::default()
                });
                out.push(event);
            }
        }
        for event in &mut out[before..] {
            event.business_phone.clone_from(&phone);
        }
    }

    fn wa_message(&self, field: &str, raw: &RawValue, contacts: &[Contact]) -> Event {
        let message: WaMessage = match parse(raw) {
            Ok(message) => message,
            Err(err) => return self.unknown(field, raw, format!("message: {err}")),
        };
        let kind = match message.kind.as_deref() {
            Some("reaction") => Kind::Reaction,
            Some("edit") => Kind::Edit,
            Some("revoke") => Kind::Delete,
            // A type Meta added since: still a message, its type carried as-is.
            Some(_) => Kind::Message,
            None => return self.unknown(field, raw, "message has no type".to_owned()),
        };
        let mut event = self.event(field, kind, raw);
        if let Some(id) = &message.id {
            event.id.clone_from(id);
        }
        self.set_time(&mut event, message.timestamp);
        let sender = message.from.as_ref().map(|id| id.0.as_str());
        event.conversation = Some(conversation(
            None,
            participant(sender, message.from_user_id.as_deref(), contacts),
        ));
        if kind == Kind::Message && !message.errors.is_empty() {
            event.status = Some(Status {
                value: message.kind.clone().unwrap_or_default(),
                errors: message.errors.iter().map(status_error).collect(),
                ..Status::default()
            });
        }
        event.referral = message.referral.as_ref().map(referral);
        event.message = Some(wa_message_body(&message));
        event
    }

    fn wa_echo(&self, field: &str, raw: &RawValue, contacts: &[Contact]) -> Event {
        let message: WaMessage = match parse(raw) {
            Ok(message) => message,
            Err(err) => return self.unknown(field, raw, format!("message echo: {err}")),
        };
        let mut event = self.event(field, Kind::Echo, raw);
        if let Some(id) = &message.id {
            event.id = format!("{id}:echo");
        }
        self.set_time(&mut event, message.timestamp);
        let to = message.to.as_ref().map(|id| id.0.as_str());
        event.conversation = Some(conversation(
            None,
            participant(to, message.to_user_id.as_deref(), contacts),
        ));
        event.message = Some(wa_message_body(&message));
        event
    }

    fn wa_status(&self, field: &str, raw: &RawValue, kind: Kind, contacts: &[Contact]) -> Event {
        let status: StatusUpdate = match parse(raw) {
            Ok(status) => status,
            Err(err) => return self.unknown(field, raw, format!("status: {err}")),
        };
        let Some(value) = status.status.clone() else {
            return self.unknown(field, raw, "status has no status value".to_owned());
        };
        let mut event = self.event(field, kind, raw);
        if let Some(id) = &status.id {
            event.id = format!("{id}:{value}");
        }
        self.set_time(&mut event, status.timestamp);
        let recipient = status.recipient_id.as_ref().map(|id| id.0.as_str());
        let conversation_id = status.conversation.as_ref().and_then(|c| c.id.clone());
        event.conversation = Some(conversation(
            conversation_id,
            participant(recipient, status.recipient_user_id.as_deref(), contacts),
        ));
        event.message = status.id.as_ref().map(|id| Message {
            id: Some(id.clone()),
            kind: status.kind.clone().unwrap_or_else(|| "message".to_owned()),
            ..Message::default()
        });
        event.status = Some(Status {
            value,
            errors: status.errors.iter().map(status_error).collect(),
            pricing: status.pricing.as_ref().map(|p| Pricing {
                category: p.category.clone(),
                billable: p.billable,
                model: p.pricing_model.clone(),
            }),
            conversation: status.conversation.as_ref().map(|c| StatusConversation {
                id: c.id.clone(),
                origin: c
                    .origin
                    .as_ref()
                    .and_then(|o| o.get("type"))
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned),
                expires_at: c.expiration_timestamp.and_then(UnixTime::to_rfc3339),
            }),
        });
        event
    }

    fn wa_call(&self, field: &str, raw: &RawValue, contacts: &[Contact]) -> Event {
        let call: Call = match parse(raw) {
            Ok(call) => call,
            Err(err) => return self.unknown(field, raw, format!("call: {err}")),
        };
        let mut event = self.event(field, Kind::Call, raw);
        if let (Some(id), Some(what)) = (&call.id, &call.event) {
            event.id = format!("{id}:{what}");
        }
        self.set_time(&mut event, call.timestamp);
        let other = if call.direction.as_deref() == Some("BUSINESS_INITIATED") {
            &call.to
        } else {
            &call.from
        };
        event.conversation = Some(conversation(
            None,
            participant(other.as_ref().map(|id| id.0.as_str()), None, contacts),
        ));
        event.status = call.event.map(|value| Status {
            value,
            ..Status::default()
        });
        event
    }

    fn wa_preference(&self, field: &str, raw: &RawValue, contacts: &[Contact]) -> Event {
        let preference: UserPreference = match parse(raw) {
            Ok(preference) => preference,
            Err(err) => return self.unknown(field, raw, format!("user preference: {err}")),
        };
        let kind = match preference.value.as_deref() {
            Some("stop") => Kind::Optout,
            Some("resume") => Kind::Optin,
            // A value Meta added since (`signup`, ...): carried in `status.value`.
            Some(_) => Kind::Preference,
            None => return self.unknown(field, raw, "user preference has no value".to_owned()),
        };
        let mut event = self.event(field, kind, raw);
        if kind == Kind::Preference {
            event.status = preference.value.map(|value| Status {
                value,
                ..Status::default()
            });
        }
        self.set_time(&mut event, preference.timestamp);
        let who = preference.wa_id.as_ref().map(|id| id.0.as_str());
        event.conversation = Some(conversation(
            None,
            participant(who, preference.user_id.as_deref(), contacts),
        ));
        event
    }
}

fn business_phone(metadata: &Metadata) -> BusinessPhone {
    BusinessPhone {
        id: metadata.phone_number_id.as_ref().map(|id| id.0.clone()),
        display_number: metadata
            .display_phone_number
            .as_ref()
            .map(|id| id.0.clone()),
    }
}

fn conversation(id: Option<String>, participant: Participant) -> Conversation {
    Conversation {
        id,
        participant: Some(participant),
    }
}

/// The person: their WhatsApp id if given, else the business-scoped user id; the name from
/// the matching `contacts[]` entry (or the only one).
fn participant(wa_id: Option<&str>, user_id: Option<&str>, contacts: &[Contact]) -> Participant {
    let contact = contacts
        .iter()
        .find(|c| wa_id.is_some() && c.wa_id.as_ref().map(Id::as_str) == wa_id)
        .or_else(|| user_id.and_then(|u| contacts.iter().find(|c| c.user_id.as_deref() == Some(u))))
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        });
    let user_id = user_id
        .map(str::to_owned)
        .or_else(|| contact.and_then(|c| c.user_id.clone()));
    Participant {
        id: wa_id
            .map(str::to_owned)
            .or_else(|| contact.and_then(|c| c.wa_id.as_ref().map(|id| id.0.clone())))
            .or_else(|| user_id.clone()),
        name: contact
            .and_then(|c| c.profile.as_ref())
            .and_then(|p| p.name.clone()),
        username: None,
        user_id,
    }
}

/// A Click-to-WhatsApp referral. `source_id` names the ad only when `source_type` says the
/// conversation started from an ad (a post's id stays in `raw`).
fn referral(referral: &WaReferral) -> Referral {
    let from_ad = referral
        .source_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("ad"));
    Referral {
        source: referral.source_type.clone(),
        kind: None,
        reference: None,
        ad_id: referral
            .source_id
            .as_ref()
            .filter(|_| from_ad)
            .map(|id| id.0.clone()),
        ctwa_clid: referral.ctwa_clid.clone(),
        source_url: referral.source_url.clone(),
    }
}

fn status_error(error: &Error) -> StatusError {
    StatusError {
        code: error.code.map(|c| c.as_i64()),
        title: error.title.clone(),
        message: error
            .error_data
            .as_ref()
            .and_then(|d| d.details.clone())
            .or_else(|| error.message.clone()),
    }
}

fn media_attachment(kind: &str, media: &Media) -> Attachment {
    Attachment {
        kind: kind.to_owned(),
        id: media.id.as_ref().map(|id| id.0.clone()),
        url: media.url.clone(),
        mime_type: media.mime_type.clone(),
    }
}

/// The unified message of a WhatsApp message: its text (or caption, button, choice, emoji),
/// its media, and what it replies to.
fn wa_message_body(message: &WaMessage) -> Message {
    let kind = message.kind.clone().unwrap_or_default();
    let media = [
        ("image", &message.image),
        ("audio", &message.audio),
        ("video", &message.video),
        ("document", &message.document),
        ("sticker", &message.sticker),
    ];
    let attachments: Vec<Attachment> = media
        .iter()
        .filter_map(|(name, media)| media.as_ref().map(|m| media_attachment(name, m)))
        .collect();
    let caption = media
        .iter()
        .find_map(|(_, m)| m.as_ref().and_then(|m| m.caption.clone()));
    let interactive = message.interactive.as_ref().and_then(|i| {
        i.button_reply
            .as_ref()
            .or(i.list_reply.as_ref())
            .and_then(|choice| choice.title.clone())
            .or_else(|| i.nfm_reply.as_ref().and_then(|n| n.body.clone()))
    });
    let text = message
        .text
        .as_ref()
        .and_then(|t| t.body.clone())
        .or(caption)
        .or_else(|| message.button.as_ref().and_then(|b| b.text.clone()))
        .or(interactive)
        .or_else(|| message.reaction.as_ref().and_then(|r| r.emoji.clone()))
        .or_else(|| message.location.as_ref().and_then(|l| l.name.clone()))
        .or_else(|| message.order.as_ref().and_then(|o| o.text.clone()))
        .or_else(|| message.system.as_ref().and_then(|s| s.body.clone()))
        .or_else(|| {
            message
                .edit
                .as_ref()
                .and_then(|e| e.message.as_deref())
                .map(wa_message_body)
                .and_then(|m| m.text)
        });
    let reply_to = message
        .reaction
        .as_ref()
        .and_then(|r| r.message_id.clone())
        .or_else(|| {
            message
                .edit
                .as_ref()
                .and_then(|e| e.original_message_id.clone())
        })
        .or_else(|| {
            message
                .revoke
                .as_ref()
                .and_then(|r| r.original_message_id.clone())
        })
        .or_else(|| message.context.as_ref().and_then(|c| c.id.clone()));
    let mut attachments = attachments;
    if let Some(location) = &message.location {
        attachments.push(Attachment {
            kind: "location".to_owned(),
            url: location.url.clone(),
            ..Attachment::default()
        });
    }
    // What a bot routes on: a template button's payload, an interactive reply's id.
    let payload = message
        .button
        .as_ref()
        .and_then(|b| b.payload.clone())
        .or_else(|| {
            message.interactive.as_ref().and_then(|i| {
                i.button_reply
                    .as_ref()
                    .or(i.list_reply.as_ref())
                    .and_then(|choice| choice.id.as_ref())
                    .map(|id| id.0.clone())
            })
        });
    Message {
        id: message.id.clone(),
        kind,
        text,
        attachments,
        reply_to,
        payload,
    }
}

/// Which documented field of `event` holds a value this receiver does not recognize (one
/// Meta added since), for `metahook_unrecognized_values_total{field}`: a bounded set of
/// names. The event keeps its documented kind and carries the value as-is.
pub fn unrecognized_value(event: &Event) -> Option<&'static str> {
    if event.platform != crate::event::Platform::Whatsapp {
        return None;
    }
    match event.kind {
        Kind::Preference => Some("user_preferences.value"),
        Kind::Message
            if event
                .message
                .as_ref()
                .is_some_and(|m| !MESSAGE_TYPES.contains(&m.kind.as_str())) =>
        {
            Some("messages.type")
        }
        _ => None,
    }
}
