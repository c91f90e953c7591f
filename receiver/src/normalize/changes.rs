//! `changes[]` items: routing by object, and the Page, Instagram and Graph changes.

use serde_json::value::RawValue;

use super::{Scope, parse_or_default, undocumented};
use crate::event::{Conversation, Event, Kind, Lead, Media, Message, Participant};
use crate::meta::graph::PermissionValue;
use crate::meta::instagram::{CommentValue, MentionValue as IgMentionValue, StoryInsightsValue};
use crate::meta::lenient::{Id, UnixTime};
use crate::meta::page::{FeedValue, LeadgenValue, MentionValue, RatingsValue, VideoValue};

impl Scope<'_> {
    /// One `changes[]` item of any object.
    pub(super) fn change(
        &self,
        field: &str,
        change_raw: &RawValue,
        value: Option<&RawValue>,
        out: &mut Vec<Event>,
    ) {
        let kinds = super::field_kinds(self.object, field);
        if kinds.is_empty() {
            out.push(self.unknown(field, change_raw, undocumented(self.object, field)));
            return;
        }
        let result = match self.object {
            "whatsapp_business_account" => {
                self.whatsapp_change(field, change_raw, value, kinds, out);
                return;
            }
            "page" => self.page_change(field, change_raw, value, kinds[0]),
            "instagram" => self.instagram_change(field, change_raw, value, kinds[0]),
            "permissions" => parse_or_default::<PermissionValue>(value)
                .map(|_| self.event(field, Kind::Change, change_raw)),
            _ => Ok(self.event(field, Kind::Change, change_raw)),
        };
        out.push(result.unwrap_or_else(|err| {
            self.unknown(field, change_raw, format!("{field} value: {err}"))
        }));
    }

    fn page_change(
        &self,
        field: &str,
        raw: &RawValue,
        value: Option<&RawValue>,
        default_kind: Kind,
    ) -> Result<Event, serde_json::Error> {
        match field {
            "feed" => {
                let feed: FeedValue = parse_or_default(value)?;
                let item = feed.item.as_deref().unwrap_or("");
                let kind = match item {
                    "comment" => Kind::Comment,
                    "reaction" | "like" => Kind::Reaction,
                    _ => Kind::Post,
                };
                let mut event = self.event(field, kind, raw);
                self.set_time(&mut event, feed.created_time);
                let verb = feed.verb.as_deref().unwrap_or("");
                if let (Kind::Comment, Some(comment), "add" | "remove" | "hide" | "unhide") =
                    (kind, &feed.comment_id, verb)
                {
                    event.id = format!("{comment}:{verb}");
                }
                let from = feed.from.as_ref();
                event.conversation = author(
                    &[
                        from.and_then(|f| f.id.as_ref()),
                        feed.sender_id.as_ref(),
                        feed.user_id.as_ref(),
                    ],
                    &[
                        from.and_then(|f| f.name.as_ref()),
                        feed.sender_name.as_ref(),
                    ],
                );
                if matches!(kind, Kind::Comment | Kind::Reaction) {
                    event.media = media(feed.post_id.as_ref(), None);
                }
                let (id, reply_to) = match kind {
                    Kind::Comment => (
                        &feed.comment_id,
                        feed.parent_id.as_ref().or(feed.post_id.as_ref()),
                    ),
                    Kind::Reaction => (&None, feed.comment_id.as_ref().or(feed.post_id.as_ref())),
                    _ => (&feed.post_id, None),
                };
                event.message = Some(Message {
                    id: id.as_ref().map(|id| id.0.clone()),
                    kind: if kind == Kind::Reaction {
                        feed.reaction_type
                            .clone()
                            .unwrap_or_else(|| item.to_owned())
                    } else {
                        item.to_owned()
                    },
                    text: feed.message,
                    reply_to: reply_to.map(|id| id.0.clone()),
                    ..Message::default()
                });
                Ok(event)
            }
            "mention" => {
                let mention: MentionValue = parse_or_default(value)?;
                let mut event = self.event(field, Kind::Mention, raw);
                self.set_time(&mut event, mention.created_time);
                let from = mention.from.as_ref();
                event.conversation = author(
                    &[from.and_then(|f| f.id.as_ref()), mention.sender_id.as_ref()],
                    &[
                        from.and_then(|f| f.name.as_ref()),
                        mention.sender_name.as_ref(),
                    ],
                );
                event.media = media(mention.post_id.as_ref(), None);
                event.message = Some(Message {
                    id: mention.comment_id.or(mention.post_id).map(|id| id.0),
                    kind: mention.item.unwrap_or_else(|| "post".to_owned()),
                    text: mention.message,
                    ..Message::default()
                });
                Ok(event)
            }
            "ratings" => {
                let rating: RatingsValue = parse_or_default(value)?;
                let mut event = self.event(field, Kind::Rating, raw);
                self.set_time(&mut event, rating.created_time);
                // The one who acted: a comment's or reaction's sender comes before the
                // reviewer, whose review it may be about.
                let from = rating.from.as_ref();
                event.conversation = author(
                    &[
                        from.and_then(|f| f.id.as_ref()),
                        rating.sender_id.as_ref(),
                        rating.reviewer_id.as_ref(),
                    ],
                    &[
                        from.and_then(|f| f.name.as_ref()),
                        rating.sender_name.as_ref(),
                        rating.reviewer_name.as_ref(),
                    ],
                );
                if rating.item.as_deref() != Some("rating") {
                    event.media = media(
                        rating
                            .post_id
                            .as_ref()
                            .or(rating.open_graph_story_id.as_ref()),
                        None,
                    );
                }
                event.message = Some(Message {
                    id: rating
                        .comment_id
                        .or(rating.open_graph_story_id)
                        .map(|id| id.0),
                    kind: rating.item.unwrap_or_else(|| "rating".to_owned()),
                    text: rating.review_text.or(rating.message),
                    ..Message::default()
                });
                Ok(event)
            }
            "leadgen" => {
                let lead: LeadgenValue = parse_or_default(value)?;
                let mut event = self.event(field, Kind::Lead, raw);
                self.set_time(&mut event, lead.created_time);
                if let Some(id) = &lead.leadgen_id {
                    event.id = format!("leadgen:{id}");
                }
                let text = |id: Option<Id>| id.map(|id| id.0);
                let typed = Lead {
                    leadgen_id: text(lead.leadgen_id),
                    form_id: text(lead.form_id),
                    ad_id: text(lead.ad_id),
                    adgroup_id: text(lead.adgroup_id),
                    page_id: text(lead.page_id),
                    created_time: lead.created_time.and_then(UnixTime::to_rfc3339),
                    ..Lead::default()
                };
                // A change without a value (seen in the wild) has no ids: no empty `lead`.
                let ids = [
                    &typed.leadgen_id,
                    &typed.form_id,
                    &typed.ad_id,
                    &typed.adgroup_id,
                    &typed.page_id,
                ];
                if ids.iter().any(|id| id.is_some()) {
                    event.lead = Some(typed);
                }
                Ok(event)
            }
            "live_videos" | "videos" => {
                let _: VideoValue = parse_or_default(value)?;
                Ok(self.event(field, Kind::Video, raw))
            }
            _ => Ok(self.event(field, default_kind, raw)),
        }
    }

    fn instagram_change(
        &self,
        field: &str,
        raw: &RawValue,
        value: Option<&RawValue>,
        default_kind: Kind,
    ) -> Result<Event, serde_json::Error> {
        match field {
            "comments" | "live_comments" => {
                let comment: CommentValue = parse_or_default(value)?;
                let mut event = self.event(field, default_kind, raw);
                if let Some(id) = &comment.id {
                    event.id = format!("{id}:{field}");
                }
                let from = comment.from.as_ref();
                let username = from.and_then(|f| f.username.clone());
                // `name` keeps the username, as before `username` existed.
                event.conversation =
                    actor(from.and_then(|f| f.id.as_ref()), username.clone(), username);
                let about = comment.media.as_ref();
                event.media = media(
                    about.and_then(|m| m.id.as_ref()),
                    about.and_then(|m| m.media_product_type.clone()),
                );
                event.message = Some(Message {
                    id: comment.id.map(|id| id.0),
                    kind: "comment".to_owned(),
                    text: comment.text,
                    reply_to: comment
                        .parent_id
                        .or(comment.media.and_then(|m| m.id))
                        .map(|id| id.0),
                    ..Message::default()
                });
                Ok(event)
            }
            "mentions" => {
                let mention: IgMentionValue = parse_or_default(value)?;
                let mut event = self.event(field, Kind::Mention, raw);
                event.media = media(mention.media_id.as_ref(), None);
                event.message = Some(Message {
                    id: mention.comment_id.or(mention.media_id).map(|id| id.0),
                    kind: "mention".to_owned(),
                    ..Message::default()
                });
                Ok(event)
            }
            "story_insights" => {
                let _: StoryInsightsValue = parse_or_default(value)?;
                Ok(self.event(field, Kind::StoryInsights, raw))
            }
            _ => Ok(self.event(field, default_kind, raw)),
        }
    }

    /// Sets `occurred_at` from the item's own time, when it has a usable one.
    pub(super) fn set_time(&self, event: &mut Event, time: Option<UnixTime>) {
        if let Some(at) = time.and_then(UnixTime::to_rfc3339) {
            event.occurred_at = Some(at);
        }
    }
}

/// The author of a Page change from whichever shape Meta sent: `from {id, name}` (current),
/// `sender_id` / `sender_name` (older API versions, still delivered), `reviewer_id` /
/// `reviewer_name` (a rating), `user_id` (a legacy like). The first id present wins, and the
/// first name, in the caller's order.
fn author(ids: &[Option<&Id>], names: &[Option<&String>]) -> Option<Conversation> {
    let id = ids.iter().find_map(|id| *id);
    let name = names.iter().find_map(|name| *name).cloned();
    actor(id, name, None)
}

/// A conversation whose participant is the actor of a change.
fn actor(id: Option<&Id>, name: Option<String>, username: Option<String>) -> Option<Conversation> {
    if id.is_none() && name.is_none() && username.is_none() {
        return None;
    }
    Some(Conversation {
        id: None,
        participant: Some(Participant {
            id: id.map(|id| id.0.clone()),
            name,
            username,
            user_id: None,
            parent_user_id: None,
        }),
    })
}

/// The media or post an item is about, when its id or type is known.
fn media(id: Option<&Id>, product_type: Option<String>) -> Option<Media> {
    if id.is_none() && product_type.is_none() {
        return None;
    }
    Some(Media {
        id: id.map(|id| id.0.clone()),
        product_type,
    })
}
