//! Byte sizes (`4194304`, `4MiB`, `500kB`), and their `serde(with)` forms.

use serde::{Deserialize as _, Deserializer, Serializer};

/// A byte size as written in the configuration: a whole number of bytes (`4194304`), or a
/// whole number and a unit, with or without a space, in any case: `KiB`, `MiB`, `GiB` (also
/// `Ki`, `Mi`, `Gi`, as in Kubernetes quantities) count 1024, 1024², 1024³ bytes; `kB`, `MB`,
/// `GB` (also `k`, `M`, `G`) count 1000, 1000², 1000³; `B` counts one.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let refuse = || {
        format!(
            "`{text}` is not a byte size: write bytes (4194304) or a whole number and a unit: \
             4MiB, 512KiB (1024-based), 4MB, 500kB (1000-based)"
        )
    };
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| refuse())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        _ => return Err(refuse()),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is more bytes than this receiver can count"))
}

/// A size from whatever YAML type it has.
fn from_value(value: &serde_json::Value) -> Result<u64, String> {
    match value {
        // A negative or fractional number gets the same message as text.
        serde_json::Value::Number(n) => n
            .as_u64()
            .map_or_else(|| parse_byte_size(&n.to_string()), Ok),
        serde_json::Value::String(text) => parse_byte_size(text),
        other => parse_byte_size(&other.to_string()),
    }
}

/// `serde(with)`: read from a number or a string with a unit, written as a number of bytes
/// (what the operator writes).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    from_value(&value).map_err(serde::de::Error::custom)
}

/// See [`deserialize`].
pub(crate) fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(*bytes)
}

/// The same, for an optional size.
pub(crate) mod optional {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => super::from_value(&value)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        bytes: &Option<u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(bytes),
            None => serializer.serialize_none(),
        }
    }
}
