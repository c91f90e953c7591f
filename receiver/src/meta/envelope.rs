//! The envelope every Meta webhook shares: `{object, entry: [{id, time, changes | messaging |
//! standby | changed_fields}]}`.
//!
//! Entries and their items stay raw ([`RawValue`] borrowed from the request body) so that
//! each item can be kept byte for byte and a malformed item spoils only itself.

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    pub entry: Option<Entries<'a>>,
}

/// `entry`, split into raw entries in the same pass as the envelope.
#[derive(Debug)]
pub enum Entries<'a> {
    /// An array: its entries, raw.
    List(Vec<&'a RawValue>),
    /// Anything else (Meta always sends an array).
    NotArray,
}

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntriesVisitor(std::marker::PhantomData))
    }
}

struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
    type Value = Entries<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries<'a>, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(entry) = seq.next_element::<&'a RawValue>()? {
            entries.push(entry);
        }
        Ok(Entries::List(entries))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Entries::NotArray)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Entries<'a>, E> {
        Ok(Entries::NotArray)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Entries<'a>, E> {
        Ok(Entries::NotArray)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Entries<'a>, E> {
        Ok(Entries::NotArray)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Entries<'a>, E> {
        Ok(Entries::NotArray)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Entries<'a>, E> {
        Ok(Entries::NotArray)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Entries<'a>, E> {
        Ok(Entries::NotArray)
    }
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
