//! WhatsApp Business Account changes: messages, statuses, echoes, calls, preferences, group
//! notifications, business-scoped user id changes, and account-level notifications.
//!
//! People are named by phone number where Meta shares one and by business-scoped user id
//! (BSUID) always since 2026: see [`participant`].

use serde_json::value::RawValue;

use super::{Scope, parse, parse_or_default};
use crate::event::{
    Attachment, BusinessPhone, Conversation, Event, Group, GroupMember, IdentityChange, Kind,
    Message, Participant, Pricing, Referral, Status, StatusConversation, StatusError,
};
use crate::meta::lenient::{Id, UnixTime};
use crate::meta::whatsapp::{
    AccountNotification, AccountSettingsValue, BusinessUsernameValue, Call, Contact, Error,
    GroupItem, GroupUser, ItemsValue, MESSAGE_TYPES, Media, Message as WaMessage, Metadata,
    Referral as WaReferral, StatusUpdate, UserIdUpdate, UserPreference,
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
    "group_lifecycle_update",
    "group_participants_update",
    "group_settings_update",
    "group_status_update",
    "user_id_update",
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
            let event = match field {
                "account_settings_update" => self.wa_account_settings(field, change_raw, value),
                "business_username_update" => self.wa_business_username(field, change_raw, value),
                _ => parse_or_default::<AccountNotification>(value)
                    .map(|_| self.event(field, kinds[0], change_raw)),
            };
            out.push(event.unwrap_or_else(|err| {
                self.unknown(field, change_raw, format!("{field} value: {err}"))
            }));
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
        for raw in &items.groups {
            out.push(self.wa_group(field, raw));
        }
        for raw in &items.user_id_update {
            out.push(self.wa_user_id_update(field, raw, &items.contacts));
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
        let sender = Who {
            wa_id: id_text(message.from.as_ref()),
            user_id: message.from_user_id.as_deref(),
            parent_user_id: message.from_parent_user_id.as_deref(),
        };
        let group_id = text(message.group_id.as_deref());
        event.conversation = Some(conversation(
            group_id.map(str::to_owned),
            participant(sender, contacts),
        ));
        if let Some(group) = group_id {
            event.group = Some(Group {
                id: Some(group.to_owned()),
                ..Group::default()
            });
        }
        event.identity_change = message.system.as_ref().and_then(|system| {
            let change = IdentityChange {
                previous_user_id: sender
                    .user_id
                    .and_then(|u| text(Some(u)))
                    .map(str::to_owned),
                user_id: text(system.user_id.as_deref()).map(str::to_owned),
                previous_parent_user_id: sender
                    .parent_user_id
                    .and_then(|u| text(Some(u)))
                    .map(str::to_owned),
                parent_user_id: text(system.parent_user_id.as_deref()).map(str::to_owned),
                wa_id: id_text(system.wa_id.as_ref()).map(str::to_owned),
            };
            (change.user_id.is_some() || change.parent_user_id.is_some() || change.wa_id.is_some())
                .then_some(change)
        });
        if let (Some(conversation), Some(change)) =
            (event.conversation.as_mut(), event.identity_change.as_ref())
        {
            // A system message of a person known only by the identifiers it replaces (Meta's
            // `user_changed_user_id` example has a `from` at most): name them by the new ones
            // rather than by nobody.
            if let Some(person) = conversation.participant.as_mut().filter(|p| p.id.is_none()) {
                person.id = change.wa_id.clone().or_else(|| change.user_id.clone());
                person.user_id = person.user_id.take().or_else(|| change.user_id.clone());
                person.parent_user_id = person
                    .parent_user_id
                    .take()
                    .or_else(|| change.parent_user_id.clone());
            }
        }
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
        let to = Who {
            wa_id: id_text(message.to.as_ref()),
            user_id: message.to_user_id.as_deref(),
            parent_user_id: message.to_parent_user_id.as_deref(),
        };
        event.conversation = Some(conversation(None, participant(to, contacts)));
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
        self.set_time(&mut event, status.timestamp);
        let to_group = status.recipient_type.as_deref() == Some("group");
        let (recipient, group_id) = if to_group {
            // A message sent to a group reports one status per participant: `recipient_id`
            // is the group, the person is `recipient_participant_*`.
            let who = Who {
                wa_id: id_text(status.recipient_participant_id.as_ref()),
                user_id: status.recipient_participant_user_id.as_deref(),
                parent_user_id: status.recipient_participant_parent_user_id.as_deref(),
            };
            (who, id_text(status.recipient_id.as_ref()))
        } else {
            let who = Who {
                wa_id: id_text(status.recipient_id.as_ref()),
                user_id: status.recipient_user_id.as_deref(),
                parent_user_id: status.recipient_parent_user_id.as_deref(),
            };
            (who, None)
        };
        let person = participant(recipient, contacts);
        if let Some(id) = &status.id {
            event.id = match (to_group, person.user_id.as_ref().or(person.id.as_ref())) {
                // Each participant's `read` of one group message is its own event.
                (true, Some(who)) => format!("{id}:{value}:{who}"),
                _ => format!("{id}:{value}"),
            };
        }
        let conversation_id = match group_id {
            Some(group) => Some(group.to_owned()),
            None => status.conversation.as_ref().and_then(|c| c.id.clone()),
        };
        event.conversation = Some(conversation(conversation_id, person));
        if let Some(group) = group_id {
            event.group = Some(Group {
                id: Some(group.to_owned()),
                ..Group::default()
            });
        }
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
            Who {
                wa_id: id_text(call.to.as_ref()),
                user_id: call.to_user_id.as_deref(),
                parent_user_id: call.to_parent_user_id.as_deref(),
            }
        } else {
            Who {
                wa_id: id_text(call.from.as_ref()),
                user_id: call.from_user_id.as_deref(),
                parent_user_id: call.from_parent_user_id.as_deref(),
            }
        };
        event.conversation = Some(conversation(None, participant(other, contacts)));
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
        let who = Who {
            wa_id: id_text(preference.wa_id.as_ref()),
            user_id: preference.user_id.as_deref(),
            parent_user_id: preference.parent_user_id.as_deref(),
        };
        event.conversation = Some(conversation(None, participant(who, contacts)));
        event
    }

    /// One `groups[]` item of a Groups API field: the group, what happened (`type`), who
    /// acted and who was affected. The person on the other side is set when the notification
    /// is about exactly one person (a join, a leave, a join request, one removal).
    fn wa_group(&self, field: &str, raw: &RawValue) -> Event {
        let item: GroupItem = match parse(raw) {
            Ok(item) => item,
            Err(err) => return self.unknown(field, raw, format!("group: {err}")),
        };
        let mut event = self.event(field, Kind::Group, raw);
        self.set_time(&mut event, item.timestamp);
        let kind = text(item.kind.as_deref());
        let mut members = Vec::new();
        for (change, users) in [
            ("added", &item.added_participants),
            ("removed", &item.removed_participants),
            ("failed", &item.failed_participants),
        ] {
            members.extend(users.iter().map(|user| GroupMember {
                change: change.to_owned(),
                participant: group_user(user),
            }));
        }
        let requester = Who {
            wa_id: id_text(item.wa_id.as_ref()),
            user_id: item.user_id.as_deref(),
            parent_user_id: item.parent_user_id.as_deref(),
        };
        if requester.wa_id.is_some() || requester.user_id.is_some() {
            let mut person = participant(requester, &[]);
            person.username = text(item.username.as_deref()).map(str::to_owned);
            let change = match kind {
                Some("group_join_request_revoked") => "join_request_revoked",
                _ => "join_requested",
            };
            members.push(GroupMember {
                change: change.to_owned(),
                participant: person,
            });
        }
        // Joins and join requests are the user's own doing; a removal says who did it.
        let initiated_by = text(item.initiated_by.as_deref())
            .map(str::to_owned)
            .or_else(|| {
                matches!(
                    kind,
                    Some(
                        "group_participants_add"
                            | "group_join_request_created"
                            | "group_join_request_revoked"
                    )
                )
                .then(|| "participant".to_owned())
            });
        let group_id = id_text(item.group_id.as_ref()).map(str::to_owned);
        let only = match members.as_slice() {
            [one] => Some(one.participant.clone()),
            _ => None,
        };
        event.conversation = (group_id.is_some() || only.is_some()).then(|| Conversation {
            id: group_id.clone(),
            participant: only,
        });
        let setting_text = |setting: &Option<crate::meta::whatsapp::GroupSetting>| {
            setting
                .as_ref()
                .and_then(|s| text(s.text.as_deref()))
                .map(str::to_owned)
        };
        event.group = Some(Group {
            id: group_id,
            kind: kind.map(str::to_owned),
            subject: text(item.subject.as_deref())
                .map(str::to_owned)
                .or_else(|| setting_text(&item.group_subject)),
            description: text(item.description.as_deref())
                .map(str::to_owned)
                .or_else(|| setting_text(&item.group_description)),
            invite_link: text(item.invite_link.as_deref()).map(str::to_owned),
            request_id: text(item.request_id.as_deref()).map(str::to_owned),
            join_request_id: text(item.join_request_id.as_deref()).map(str::to_owned),
            initiated_by,
            participants: members,
        });
        // Failures: of the whole request, of some participants, of some settings.
        let partial: Vec<StatusError> = item
            .failed_participants
            .iter()
            .flat_map(|u| &u.errors)
            .chain(
                [
                    &item.group_subject,
                    &item.group_description,
                    &item.profile_picture,
                ]
                .into_iter()
                .flatten()
                .flat_map(|s| &s.errors),
            )
            .map(status_error)
            .collect();
        if !item.errors.is_empty() {
            event.status = Some(Status {
                value: "failed".to_owned(),
                errors: item
                    .errors
                    .iter()
                    .map(status_error)
                    .chain(partial)
                    .collect(),
                ..Status::default()
            });
        } else if !partial.is_empty() {
            event.status = Some(Status {
                value: "partially_failed".to_owned(),
                errors: partial,
                ..Status::default()
            });
        }
        event
    }

    /// One `user_id_update[]` item: the person (by phone number if shared, else the new BSUID)
    /// and their previous and current business-scoped user ids.
    fn wa_user_id_update(&self, field: &str, raw: &RawValue, contacts: &[Contact]) -> Event {
        let update: UserIdUpdate = match parse(raw) {
            Ok(update) => update,
            Err(err) => return self.unknown(field, raw, format!("user id update: {err}")),
        };
        let mut event = self.event(field, Kind::IdentityChange, raw);
        self.set_time(&mut event, update.timestamp);
        let pick = |pair: &Option<crate::meta::whatsapp::PreviousCurrent>, previous: bool| {
            pair.as_ref()
                .and_then(|p| {
                    text(if previous {
                        p.previous.as_deref()
                    } else {
                        p.current.as_deref()
                    })
                })
                .map(str::to_owned)
        };
        let change = IdentityChange {
            previous_user_id: pick(&update.user_id, true),
            user_id: pick(&update.user_id, false),
            previous_parent_user_id: pick(&update.parent_user_id, true),
            parent_user_id: pick(&update.parent_user_id, false),
            wa_id: id_text(update.wa_id.as_ref()).map(str::to_owned),
        };
        let who = Who {
            wa_id: change.wa_id.as_deref(),
            user_id: change.user_id.as_deref(),
            parent_user_id: change.parent_user_id.as_deref(),
        };
        event.conversation = Some(conversation(None, participant(who, contacts)));
        event.identity_change = Some(change);
        event
    }

    /// `account_settings_update`: a business phone number's (calling) settings changed.
    fn wa_account_settings(
        &self,
        field: &str,
        raw: &RawValue,
        value: Option<&RawValue>,
    ) -> Result<Event, serde_json::Error> {
        let settings: AccountSettingsValue = parse_or_default(value)?;
        let mut event = self.event(field, Kind::AccountUpdate, raw);
        self.set_time(&mut event, settings.timestamp);
        let phone = settings
            .phone_number_settings
            .as_ref()
            .and_then(|s| id_text(s.phone_number_id.as_ref()));
        event.business_phone = phone.map(|id| BusinessPhone {
            id: Some(id.to_owned()),
            ..BusinessPhone::default()
        });
        event.status = text(settings.kind.as_deref()).map(|value| Status {
            value: value.to_owned(),
            ..Status::default()
        });
        Ok(event)
    }

    /// `business_username_update`: a business phone number's username changed status.
    fn wa_business_username(
        &self,
        field: &str,
        raw: &RawValue,
        value: Option<&RawValue>,
    ) -> Result<Event, serde_json::Error> {
        let update: BusinessUsernameValue = parse_or_default(value)?;
        let mut event = self.event(field, Kind::AccountUpdate, raw);
        let phone = BusinessPhone {
            id: None,
            display_number: id_text(update.display_phone_number.as_ref()).map(str::to_owned),
            username: text(update.username.as_deref()).map(str::to_owned),
        };
        if phone.display_number.is_some() || phone.username.is_some() {
            event.business_phone = Some(phone);
        }
        event.status = text(update.status.as_deref()).map(|value| Status {
            value: value.to_owned(),
            ..Status::default()
        });
        Ok(event)
    }
}

/// A person as an item names them: phone number, business-scoped user id, parent BSUID.
#[derive(Debug, Clone, Copy, Default)]
struct Who<'a> {
    wa_id: Option<&'a str>,
    user_id: Option<&'a str>,
    parent_user_id: Option<&'a str>,
}

/// Text that names something: absent and empty are the same (Meta's shapes before February
/// 2026 sent `""` where a username user's phone number was withheld).
fn text(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn id_text(id: Option<&Id>) -> Option<&str> {
    text(id.map(Id::as_str))
}

/// A participant of a group notification: phone number, else BSUID, else the phone number or
/// BSUID the business's request named (`input`, a BSUID having a `.` after its country code).
fn group_user(user: &GroupUser) -> Participant {
    let input = text(user.input.as_deref());
    let input_is_bsuid = input.is_some_and(|i| i.contains('.'));
    let who = Who {
        wa_id: id_text(user.wa_id.as_ref()).or(input.filter(|_| !input_is_bsuid)),
        user_id: text(user.user_id.as_deref()).or(input.filter(|_| input_is_bsuid)),
        parent_user_id: user.parent_user_id.as_deref(),
    };
    let mut person = participant(who, &[]);
    person.username = text(user.username.as_deref()).map(str::to_owned);
    person
}

fn business_phone(metadata: &Metadata) -> BusinessPhone {
    BusinessPhone {
        id: metadata.phone_number_id.as_ref().map(|id| id.0.clone()),
        display_number: metadata
            .display_phone_number
            .as_ref()
            .map(|id| id.0.clone()),
        username: None,
    }
}

fn conversation(id: Option<String>, participant: Participant) -> Conversation {
    Conversation {
        id,
        participant: Some(participant),
    }
}

/// The person: `id` is their phone number if Meta gives one (in the item or its matching
/// `contacts[]` entry), else their business-scoped user id; `user_id` and `parent_user_id`
/// whenever given; name and username from the matching `contacts[]` entry (matched by phone
/// number, then BSUID, or the only one). Empty strings count as absent.
fn participant(who: Who<'_>, contacts: &[Contact]) -> Participant {
    let wa_id = text(who.wa_id);
    let user_id = text(who.user_id);
    let contact = contacts
        .iter()
        .find(|c| wa_id.is_some() && id_text(c.wa_id.as_ref()) == wa_id)
        .or_else(|| {
            user_id.and_then(|u| {
                contacts
                    .iter()
                    .find(|c| text(c.user_id.as_deref()) == Some(u))
            })
        })
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        });
    let user_id = user_id
        .or_else(|| contact.and_then(|c| text(c.user_id.as_deref())))
        .map(str::to_owned);
    let parent_user_id = text(who.parent_user_id)
        .or_else(|| contact.and_then(|c| text(c.parent_user_id.as_deref())))
        .map(str::to_owned);
    let profile = contact.and_then(|c| c.profile.as_ref());
    Participant {
        id: wa_id
            .or_else(|| contact.and_then(|c| id_text(c.wa_id.as_ref())))
            .map(str::to_owned)
            .or_else(|| user_id.clone()),
        name: profile
            .and_then(|p| text(p.name.as_deref()))
            .map(str::to_owned),
        username: profile
            .and_then(|p| text(p.username.as_deref()))
            .map(str::to_owned),
        user_id,
        parent_user_id,
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
