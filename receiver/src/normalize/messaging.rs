//! Messenger and Instagram messaging items (`messaging[]`, `standby[]`).

use serde_json::value::RawValue;

use super::{Scope, parse};
use crate::event::{
    Attachment, Conversation, Event, Kind, Message, Participant, Platform, Referral,
};
use crate::meta::lenient::Id;
use crate::meta::messaging::{Item, Message as ItemMessage, Party, Referral as ItemReferral};

impl Scope<'_> {
    /// One messaging or standby item.
    pub(super) fn messaging_item(&self, raw: &RawValue, standby: bool, out: &mut Vec<Event>) {
        let instagram = self.object == "instagram";
        let mut scope = self.for_messaging(instagram);
        let item: Item = match parse(raw) {
            Ok(item) => item,
            Err(err) => {
                let field = if standby { "standby" } else { "" };
                out.push(scope.unknown(field, raw, format!("messaging item: {err}")));
                return;
            }
        };
        let Some((key, field, kind)) = classify(&item, instagram) else {
            let event_key = unknown_event_key(raw);
            let field = if standby {
                "standby"
            } else {
                event_key.as_deref().unwrap_or("")
            };
            let note = match &event_key {
                Some(key) => format!("messaging item has an undocumented event key {key:?}"),
                None => "messaging item has no event key".to_owned(),
            };
            out.push(scope.unknown(field, raw, note));
            return;
        };
        let field = if standby { "standby" } else { field };
        if scope.object.is_empty() {
            scope.object = "page";
        }
        let mut event = scope.event(field, kind, raw);
        scope.set_time(&mut event, item.timestamp);
        // The person is the sender, except on echoes, which the page itself sent.
        let person = if kind == Kind::Echo {
            &item.recipient
        } else {
            &item.sender
        };
        event.conversation = person.as_ref().map(conversation);
        // A referral arrives on its own, inside the first message, or with a Get Started
        // postback; wherever it is, it says where the conversation came from.
        event.referral = item
            .referral
            .as_ref()
            .or_else(|| item.message.as_ref().and_then(|m| m.referral.as_ref()))
            .or_else(|| item.postback.as_ref().and_then(|p| p.referral.as_ref()))
            .map(referral);
        match key {
            "message" => {
                if let Some(message) = &item.message {
                    event.message = Some(unified_message(message, kind));
                    if let Some(mid) = &message.mid {
                        event.id = match kind {
                            Kind::Delete => format!("{mid}:deleted"),
                            _ => mid.clone(),
                        };
                    }
                }
            }
            "message_edit" => {
                event.message = item.message_edit.as_ref().map(|edit| Message {
                    id: edit.mid.clone(),
                    kind: "edit".to_owned(),
                    text: edit.text.clone(),
                    reply_to: edit.mid.clone(),
                    ..Message::default()
                });
            }
            "reaction" => {
                event.message = item.reaction.as_ref().map(|reaction| Message {
                    kind: reaction
                        .action
                        .clone()
                        .unwrap_or_else(|| "react".to_owned()),
                    text: reaction.emoji.clone().or_else(|| reaction.reaction.clone()),
                    reply_to: reaction.mid.clone(),
                    ..Message::default()
                });
            }
            "postback" => {
                if let Some(postback) = &item.postback {
                    if let Some(mid) = &postback.mid {
                        event.id = format!("{mid}:postback");
                    }
                    event.message = Some(Message {
                        id: postback.mid.clone(),
                        kind: "postback".to_owned(),
                        text: postback.title.clone(),
                        payload: postback.payload.clone(),
                        ..Message::default()
                    });
                }
            }
            _ => {}
        }
        out.push(event);
    }

    /// The same scope, labelled as the messaging product of its object.
    fn for_messaging(&self, instagram: bool) -> Scope<'_> {
        Scope {
            ctx: self.ctx,
            object: self.object,
            platform: if instagram {
                Platform::Instagram
            } else {
                Platform::Messenger
            },
            account_id: self.account_id.clone(),
            entry_time: self.entry_time,
        }
    }
}

/// The item's event key, its subscription field, and its kind.
fn classify(item: &Item, instagram: bool) -> Option<(&'static str, &'static str, Kind)> {
    let pick = |messenger: &'static str, ig: &'static str| if instagram { ig } else { messenger };
    if let Some(message) = &item.message {
        return Some(if message.is_echo == Some(true) {
            ("message", "message_echoes", Kind::Echo)
        } else if message.is_deleted == Some(true) {
            ("message", "messages", Kind::Delete)
        } else {
            ("message", "messages", Kind::Message)
        });
    }
    let found = if item.message_edit.is_some() {
        (
            "message_edit",
            pick("message_edits", "message_edit"),
            Kind::Edit,
        )
    } else if item.delivery.is_some() {
        ("delivery", "message_deliveries", Kind::Delivery)
    } else if item.read.is_some() {
        ("read", pick("message_reads", "messaging_seen"), Kind::Read)
    } else if item.reaction.is_some() {
        ("reaction", "message_reactions", Kind::Reaction)
    } else if item.postback.is_some() {
        ("postback", "messaging_postbacks", Kind::Postback)
    } else if let Some(optin) = &item.optin {
        let stop = optin.notification_messages_status.as_deref() == Some("STOP_NOTIFICATIONS");
        (
            "optin",
            "messaging_optins",
            if stop { Kind::Optout } else { Kind::Optin },
        )
    } else if item.referral.is_some() {
        (
            "referral",
            pick("messaging_referrals", "messaging_referral"),
            Kind::Referral,
        )
    } else if item.account_linking.is_some() {
        (
            "account_linking",
            "messaging_account_linking",
            Kind::AccountLinking,
        )
    } else if item.pass_thread_control.is_some()
        || item.take_thread_control.is_some()
        || item.request_thread_control.is_some()
        || item.app_roles.is_some()
    {
        (
            "handover",
            pick("messaging_handovers", "messaging_handover"),
            Kind::Handover,
        )
    } else if item.policy_enforcement.is_some() || item.policy_enforcement_legacy.is_some() {
        (
            "policy_enforcement",
            "messaging_policy_enforcement",
            Kind::PolicyEnforcement,
        )
    } else if item.checkout_update.is_some() {
        (
            "checkout_update",
            "messaging_checkout_updates",
            Kind::Payment,
        )
    } else if item.payment.is_some() {
        ("payment", "messaging_payments", Kind::Payment)
    } else if item.pre_checkout.is_some() {
        ("pre_checkout", "messaging_pre_checkouts", Kind::Payment)
    } else if item.game_play.is_some() {
        ("game_play", "messaging_game_plays", Kind::GamePlay)
    } else if item.messaging_feedback.is_some() {
        ("messaging_feedback", "messaging_feedback", Kind::Feedback)
    } else if item.response_feedback.is_some() {
        ("response_feedback", "response_feedback", Kind::Feedback)
    } else {
        return None;
    };
    Some(found)
}

/// The key that names an undocumented item's event (anything but sender, recipient, timestamp).
fn unknown_event_key(raw: &RawValue) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = parse(raw).ok()?;
    map.keys()
        .find(|k| !matches!(k.as_str(), "sender" | "recipient" | "timestamp"))
        .cloned()
}

fn conversation(party: &Party) -> Conversation {
    Conversation {
        id: None,
        participant: Some(Participant {
            id: party
                .id
                .as_ref()
                .or(party.user_ref.as_ref())
                .map(Id::to_string),
            ..Participant::default()
        }),
    }
}

fn referral(referral: &ItemReferral) -> Referral {
    Referral {
        source: referral.source.clone(),
        kind: referral.kind.clone(),
        reference: referral.reference.clone(),
        ad_id: referral.ad_id.as_ref().map(Id::to_string),
        ctwa_clid: None,
        source_url: referral.referer_uri.clone(),
    }
}

fn unified_message(message: &ItemMessage, kind: Kind) -> Message {
    let attachments: Vec<Attachment> = message
        .attachments
        .iter()
        .map(|a| Attachment {
            kind: a.kind.clone().unwrap_or_default(),
            id: a
                .payload
                .as_ref()
                .and_then(|p| p.sticker_id.as_ref().or(p.reel_video_id.as_ref()))
                .map(Id::to_string),
            url: a
                .payload
                .as_ref()
                .and_then(|p| p.url.clone())
                .or_else(|| a.url.clone()),
            mime_type: None,
        })
        .collect();
    let message_type = if kind == Kind::Delete {
        "deleted".to_owned()
    } else if message.text.is_some() {
        "text".to_owned()
    } else if let Some(first) = attachments.first() {
        first.kind.clone()
    } else if message.is_unsupported == Some(true) {
        "unsupported".to_owned()
    } else {
        "unknown".to_owned()
    };
    let reply_to = message.reply_to.as_ref().and_then(|r| {
        r.mid.clone().or_else(|| {
            r.story
                .as_ref()
                .and_then(|s| s.id.as_ref().map(Id::to_string))
        })
    });
    Message {
        id: message.mid.clone(),
        kind: message_type,
        text: message.text.clone(),
        attachments,
        reply_to,
        payload: message.quick_reply.as_ref().and_then(|q| q.payload.clone()),
    }
}
