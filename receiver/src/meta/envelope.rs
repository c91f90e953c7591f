//! The envelope every Meta webhook shares: `{object, entry: [{id, time, changes | messaging |
//! standby | changed_fields}]}`.
//!
//! Entries and their items stay raw ([`RawValue`] borrowed from the request body) so that
//! each item can be kept byte for byte and a malformed item spoils only itself.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::lenient::{Id, UnixTime};

/// The top level of a webhook body.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// `whatsapp_business_account`, `page`, `instagram`, `user`, ...
    #[serde(default, borrow)]
    pub object: Option<&'a RawValue>,
    /// The entries; normally an array.
    #[serde(default, borrow)]
    pub entry: Option<&'a RawValue>,
}

/// One `entry[]`.
#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    /// WABA id, page id, Instagram account id or user id.
    #[serde(default)]
    pub id: Option<Id>,
    /// User id on `user` objects.
    #[serde(default)]
    pub uid: Option<Id>,
    /// When Meta sent the notification (seconds or milliseconds).
    #[serde(default)]
    pub time: Option<UnixTime>,
    /// Changes (`{field, value}`), when "Include Values" is on.
    #[serde(default, borrow)]
    pub changes: Option<Vec<&'a RawValue>>,
    /// Messenger / Instagram messaging items.
    #[serde(default, borrow)]
    pub messaging: Option<Vec<&'a RawValue>>,
    /// Messaging items for an app that does not hold thread control.
    #[serde(default, borrow)]
    pub standby: Option<Vec<&'a RawValue>>,
    /// Changed field names, when "Include Values" is off.
    #[serde(default)]
    pub changed_fields: Option<Vec<String>>,
    /// `field` misplaced at the entry level (seen in a WhatsApp doc example).
    #[serde(default)]
    pub field: Option<String>,
    /// `object` misplaced at the entry level (same example).
    #[serde(default)]
    pub object: Option<String>,
}

/// One `changes[]` item.
#[derive(Debug, Deserialize)]
pub struct Change<'a> {
    /// The subscription field.
    #[serde(default)]
    pub field: Option<String>,
    /// The field's value; absent for some doc examples and for permissions.
    #[serde(default, borrow)]
    pub value: Option<&'a RawValue>,
}
