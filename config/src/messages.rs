//! What a person editing the file reads when it does not parse.

/// Messages for the person editing the file: serde-saphyr's user-facing messages, and in
/// place of the ones written for programmers (a duplicate key's "set DuplicateKeyPolicy in
/// Options", "invalid u64", "expected a duration") what is wrong and how to write it.
pub(crate) struct Messages<'a> {
    /// The YAML text (to find where a duplicated key was first set).
    pub(crate) text: &'a str,
}

impl serde_saphyr::MessageFormatter for Messages<'_> {
    fn format_message<'e>(&self, err: &'e serde_saphyr::Error) -> std::borrow::Cow<'e, str> {
        use serde_saphyr::Error;
        match err {
            Error::DuplicateMappingKey {
                key: Some(key),
                location,
            } => match first_set(self.text, key, *location) {
                Some(line) => format!("`{key}` is set twice (first on line {line}); keep one"),
                None => format!("`{key}` is set twice in this mapping; keep one"),
            }
            .into(),
            Error::DuplicateMappingKey { key: None, .. } => {
                "a key is set twice in this mapping; keep one".into()
            }
            Error::SerdeInvalidValue {
                unexpected,
                expected,
                ..
            }
            | Error::SerdeInvalidType {
                unexpected,
                expected,
                ..
            } if expected == "a duration" => {
                let value = unexpected
                    .strip_prefix("string ")
                    .or_else(|| unexpected.strip_prefix("integer "))
                    .unwrap_or(unexpected)
                    .trim_matches('"');
                format!(
                    "`{value}` is not a duration: write a number and a unit, e.g. 5s, 500ms, \
                     2m or 1h"
                )
                .into()
            }
            Error::InvalidScalar { ty, .. }
                if matches!(*ty, "u8" | "u16" | "u32" | "u64" | "u128" | "usize") =>
            {
                "not a whole number: write digits, e.g. 1024".into()
            }
            _ => serde_saphyr::UserMessageFormatter.format_message(err),
        }
    }
}

/// The line where `key`, reported duplicated at `at`, was first set in the same block
/// mapping (same column, no line of a shallower or sibling mapping in between).
fn first_set(text: &str, key: &str, at: serde_saphyr::Location) -> Option<u64> {
    let duplicate = usize::try_from(at.line()).ok()?;
    let column = usize::try_from(at.column()).ok()?.checked_sub(1)?;
    let before: Vec<&str> = text.lines().take(duplicate.checked_sub(1)?).collect();
    for (index, line) in before.iter().enumerate().rev() {
        let mut rest = line.trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let mut item = false;
        while let Some(after) = rest.strip_prefix('-') {
            if !after.starts_with(' ') {
                break;
            }
            rest = after.trim_start();
            item = true;
        }
        let start = line.len() - rest.len();
        if start < column {
            return None;
        }
        if start == column {
            let sets_key = rest
                .strip_prefix(key)
                .is_some_and(|after| after.trim_start().starts_with(':'));
            if sets_key {
                return Some(index as u64 + 1);
            }
            if item {
                // The mapping began on this list item's line.
                return None;
            }
        }
    }
    None
}
