//! Lenient scalar types for Meta payloads.
//!
//! Meta (and the libraries that replay its payloads) send the same field as a string in one
//! place and as a number in another: WhatsApp timestamps are strings of seconds, Messenger's
//! are integers of milliseconds, page ids arrive both ways. These types accept either, so a
//! documented item never turns into an `unknown` event over a quoting difference.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// An identifier sent as a JSON string or number; kept as its decimal text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct Id(pub String);

impl Id {
    /// The identifier's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id as a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                // Ids beyond u64 parse as floats; keep the text integral when it is.
                if v.fract() == 0.0 && v.is_finite() {
                    Ok(Id(format!("{v:.0}")))
                } else {
                    Ok(Id(v.to_string()))
                }
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// A number sent as a JSON number or as a string holding one (`"1458668856463"`).
/// Text that is not a number reads as NaN rather than failing the item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(transparent)]
pub struct Num(pub f64);

impl Num {
    /// The value as an integer, truncating any fraction.
    #[allow(clippy::cast_possible_truncation)]
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumVisitor;
        impl Visitor<'_> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or a string holding a number")
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
                // Doc examples carry placeholders ("<TIMESTAMP>", "LOCATION_LATITUDE"):
                // such text reads as NaN, so the item keeps its documented kind.
                Ok(Num(v.trim().parse::<f64>().unwrap_or(f64::NAN)))
            }
        }
        deserializer.deserialize_any(NumVisitor)
    }
}

/// A Unix time in seconds or milliseconds, as a number or a numeric string.
///
/// Meta mixes both units (WhatsApp: seconds, Messenger: milliseconds); values above
/// 10^11 are taken as milliseconds, which is unambiguous until the year 5138.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(transparent)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// Milliseconds since the Unix epoch ([`i64::MIN`] when the time was not a number).
    pub fn millis(self) -> i64 {
        if self.0.unsigned_abs() >= 100_000_000_000 {
            self.0
        } else {
            self.0.saturating_mul(1000)
        }
    }

    /// RFC 3339 text in UTC, or `None` when the value is outside the representable range.
    pub fn to_rfc3339(self) -> Option<String> {
        let nanos = i128::from(self.millis()) * 1_000_000;
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
        at.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }
}

impl<'de> Deserialize<'de> for UnixTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Num(v) = Num::deserialize(deserializer)?;
        // `as` saturates, and NaN becomes 0; keep "not a time" distinct from the epoch.
        #[allow(clippy::cast_possible_truncation)]
        Ok(UnixTime(if v.is_finite() { v as i64 } else { i64::MIN }))
    }
}

/// Reads a field that is documented as an object but sometimes arrives as something else
/// (an attachment `payload` of `"BLOB"`): an object is parsed, anything else is `None`.
pub fn object_or_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::DeserializeOwned,
{
    match serde_json::Value::deserialize(deserializer)? {
        value @ serde_json::Value::Object(_) => serde_json::from_value(value)
            .map(Some)
            .map_err(de::Error::custom),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_accepts_strings_and_numbers() {
        let ids: Vec<Id> =
            serde_json::from_str(r#"["123", 456, 18446744073709551615, -7]"#).expect("ids");
        let texts: Vec<&str> = ids.iter().map(Id::as_str).collect();
        assert_eq!(texts, ["123", "456", "18446744073709551615", "-7"]);
    }

    #[test]
    fn id_rejects_objects() {
        assert!(serde_json::from_str::<Id>(r#"{"id": 1}"#).is_err());
    }

    #[test]
    fn num_reads_numeric_strings_and_placeholders() {
        assert_eq!(serde_json::from_str::<Num>(r#""38""#).expect("num").0, 38.0);
        assert_eq!(serde_json::from_str::<Num>("4.5").expect("num").0, 4.5);
        assert!(
            serde_json::from_str::<Num>(r#""<LATITUDE>""#)
                .expect("num")
                .0
                .is_nan()
        );
        assert!(serde_json::from_str::<Num>(r#"{"x": 1}"#).is_err());
    }

    #[test]
    fn placeholder_time_has_no_rfc3339() {
        let t: UnixTime = serde_json::from_str(r#""<TIMESTAMP>""#).expect("time");
        assert_eq!(t.to_rfc3339(), None);
    }

    #[test]
    fn object_or_none_skips_non_objects() {
        #[derive(Deserialize)]
        struct Inner {
            url: Option<String>,
        }
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default, deserialize_with = "object_or_none")]
            payload: Option<Inner>,
        }
        let blob: Outer = serde_json::from_str(r#"{"payload": "BLOB"}"#).expect("blob");
        assert!(blob.payload.is_none());
        let url: Outer = serde_json::from_str(r#"{"payload": {"url": "u"}}"#).expect("object");
        assert_eq!(url.payload.and_then(|p| p.url).as_deref(), Some("u"));
    }

    #[test]
    fn unix_time_detects_milliseconds() {
        let secs: UnixTime = serde_json::from_str(r#""1671644824""#).expect("seconds");
        let millis: UnixTime = serde_json::from_str("1458668856463").expect("millis");
        assert_eq!(secs.to_rfc3339().as_deref(), Some("2022-12-21T17:47:04Z"));
        assert_eq!(
            millis.to_rfc3339().as_deref(),
            Some("2016-03-22T17:47:36.463Z")
        );
    }
}
