//! Facebook Page changes (object `page`, `entry[].changes[]`): feed, mention, ratings,
//! leadgen, live_videos, videos and the Page's profile fields.

use serde::{Deserialize, Serialize};

use super::lenient::{Id, Num, UnixTime};

/// Page change fields with a typed value here.
pub use metahook_config::objects::PAGE_CHANGE_FIELDS as CHANGE_FIELDS;

/// Page profile and other documented fields whose change is reported as `kind: change`
/// (Page webhooks reference).
pub use metahook_config::objects::PAGE_PROFILE_FIELDS as PROFILE_FIELDS;

/// Who did it: `{id, name}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Actor {
    /// User or page id.
    #[serde(default)]
    pub id: Option<Id>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `feed` value: something happened on the Page's feed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct FeedValue {
    /// `comment`, `reaction`, `like`, `post`, `status`, `photo`, `video`, `share`, `album`, `event`, ...
    #[serde(default)]
    pub item: Option<String>,
    /// `add`, `edited`, `edit`, `remove`, `hide`, `unhide`, `block`, `unblock`, `mute`, ...
    #[serde(default)]
    pub verb: Option<String>,
    /// Who did it (the current shape).
    #[serde(default)]
    pub from: Option<Actor>,
    /// Who did it (the older shape, still delivered to apps on older API versions).
    #[serde(default)]
    pub sender_id: Option<Id>,
    /// Their name (older shape).
    #[serde(default)]
    pub sender_name: Option<String>,
    /// Who liked (the legacy `like` item's only actor key).
    #[serde(default)]
    pub user_id: Option<Id>,
    /// The post.
    #[serde(default)]
    pub post_id: Option<Id>,
    /// The comment.
    #[serde(default)]
    pub comment_id: Option<Id>,
    /// The parent (post or comment) of a comment or reaction.
    #[serde(default)]
    pub parent_id: Option<Id>,
    /// Text of the post or comment.
    #[serde(default)]
    pub message: Option<String>,
    /// `like`, `love`, `haha`, `wow`, `sad`, `angry`, `care`.
    #[serde(default)]
    pub reaction_type: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_time: Option<UnixTime>,
    /// Photo URL.
    #[serde(default)]
    pub photo: Option<String>,
    /// Photo URLs.
    #[serde(default)]
    pub photos: Option<Vec<String>>,
    /// Video id.
    #[serde(default)]
    pub video_id: Option<Id>,
    /// Shared link.
    #[serde(default)]
    pub link: Option<String>,
    /// Share id.
    #[serde(default)]
    pub share_id: Option<Id>,
    /// Event id.
    #[serde(default)]
    pub event_id: Option<Id>,
    /// Album id.
    #[serde(default)]
    pub album_id: Option<Id>,
    /// Photo id.
    #[serde(default)]
    pub photo_id: Option<Id>,
    /// Whether the post is published.
    #[serde(default)]
    pub published: Option<Num>,
    /// Whether the item is hidden.
    #[serde(default)]
    pub is_hidden: Option<bool>,
    /// Post URL.
    #[serde(default)]
    pub post: Option<serde_json::Value>,
}

/// `mention` value: the Page was mentioned in a post or comment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MentionValue {
    /// `post` or `comment`.
    #[serde(default)]
    pub item: Option<String>,
    /// `add`, `edit`, `remove`.
    #[serde(default)]
    pub verb: Option<String>,
    /// Post id.
    #[serde(default)]
    pub post_id: Option<Id>,
    /// Comment id.
    #[serde(default)]
    pub comment_id: Option<Id>,
    /// Who mentioned (the current shape).
    #[serde(default)]
    pub from: Option<Actor>,
    /// Who mentioned.
    #[serde(default)]
    pub sender_id: Option<Id>,
    /// Who mentioned.
    #[serde(default)]
    pub sender_name: Option<String>,
    /// The text.
    #[serde(default)]
    pub message: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_time: Option<UnixTime>,
}

/// `ratings` value: a recommendation or review, or a comment/reaction on one.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RatingsValue {
    /// `rating`, `comment`, `reaction`, `like`.
    #[serde(default)]
    pub item: Option<String>,
    /// `add`, `edit`, `edited`, `remove`.
    #[serde(default)]
    pub verb: Option<String>,
    /// Who did it (the current shape of comments and reactions).
    #[serde(default)]
    pub from: Option<Actor>,
    /// Reviewer (`reviewer_id`).
    #[serde(default)]
    pub reviewer_id: Option<Id>,
    /// Reviewer name.
    #[serde(default)]
    pub reviewer_name: Option<String>,
    /// Commenter / reactor.
    #[serde(default)]
    pub sender_id: Option<Id>,
    /// Commenter / reactor name.
    #[serde(default)]
    pub sender_name: Option<String>,
    /// `positive` / `negative`.
    #[serde(default)]
    pub recommendation_type: Option<String>,
    /// Star rating (legacy).
    #[serde(default)]
    pub rating: Option<Num>,
    /// Review text.
    #[serde(default)]
    pub review_text: Option<String>,
    /// Comment text.
    #[serde(default)]
    pub message: Option<String>,
    /// The review story.
    #[serde(default)]
    pub open_graph_story_id: Option<Id>,
    /// The review a comment or reaction is on.
    #[serde(default)]
    pub post_id: Option<Id>,
    /// Comment id.
    #[serde(default)]
    pub comment_id: Option<Id>,
    /// Reaction type.
    #[serde(default)]
    pub reaction_type: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_time: Option<UnixTime>,
}

/// `leadgen` value: a Lead Ads form was submitted. Fetch the answers with `GET /{leadgen_id}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LeadgenValue {
    /// The lead.
    #[serde(default)]
    pub leadgen_id: Option<Id>,
    /// The form.
    #[serde(default)]
    pub form_id: Option<Id>,
    /// The ad.
    #[serde(default)]
    pub ad_id: Option<Id>,
    /// The ad group.
    #[serde(default)]
    pub adgroup_id: Option<Id>,
    /// The page.
    #[serde(default)]
    pub page_id: Option<Id>,
    /// Unix seconds.
    #[serde(default)]
    pub created_time: Option<UnixTime>,
}

/// `live_videos` / `videos` value: a video's status changed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct VideoValue {
    /// Video id.
    #[serde(default)]
    pub id: Option<Id>,
    /// `live`, `live_stopped`, `vod`, `processing`, `ready`, `error`, ... or `{video_status}`.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}
