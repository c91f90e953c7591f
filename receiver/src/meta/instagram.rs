//! Instagram changes (object `instagram`, `entry[].changes[]`): comments, live comments,
//! mentions and story insights. Instagram messaging items are in [`super::messaging`].

use serde::{Deserialize, Serialize};

use super::lenient::{Id, Num};

/// Instagram change fields (the messaging ones are in [`super::messaging::INSTAGRAM_FIELDS`]).
pub use metahook_config::objects::INSTAGRAM_CHANGE_FIELDS as CHANGE_FIELDS;

/// `comments` / `live_comments` value.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct CommentValue {
    /// Comment id.
    #[serde(default)]
    pub id: Option<Id>,
    /// Text.
    #[serde(default)]
    pub text: Option<String>,
    /// `{id, username}` of the commenter.
    #[serde(default)]
    pub from: Option<From>,
    /// The comment replied to.
    #[serde(default)]
    pub parent_id: Option<Id>,
    /// `{id, media_product_type}`.
    #[serde(default)]
    pub media: Option<Media>,
}

/// `from` of a comment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct From {
    /// Instagram-scoped id.
    #[serde(default)]
    pub id: Option<Id>,
    /// Username.
    #[serde(default)]
    pub username: Option<String>,
    /// Whether it is the account itself (Instagram Login).
    #[serde(default)]
    pub self_ig_scoped_id: Option<Id>,
}

/// `media` of a comment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Media {
    /// Media id.
    #[serde(default)]
    pub id: Option<Id>,
    /// `FEED`, `REELS`, `STORY`, `AD`.
    #[serde(default)]
    pub media_product_type: Option<String>,
    /// Ad id when the media is an ad.
    #[serde(default)]
    pub ad_id: Option<Id>,
}

/// `mentions` value: the account was @mentioned in a caption or comment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MentionValue {
    /// The media mentioning the account.
    #[serde(default)]
    pub media_id: Option<Id>,
    /// The comment mentioning the account (absent for captions).
    #[serde(default)]
    pub comment_id: Option<Id>,
}

/// `story_insights` value: a story's metrics after it expired.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StoryInsightsValue {
    /// Story id.
    #[serde(default)]
    pub media_id: Option<Id>,
    /// Exits.
    #[serde(default)]
    pub exits: Option<Num>,
    /// Replies.
    #[serde(default)]
    pub replies: Option<Num>,
    /// Reach.
    #[serde(default)]
    pub reach: Option<Num>,
    /// Taps forward.
    #[serde(default)]
    pub taps_forward: Option<Num>,
    /// Taps back.
    #[serde(default)]
    pub taps_back: Option<Num>,
    /// Impressions.
    #[serde(default)]
    pub impressions: Option<Num>,
}
