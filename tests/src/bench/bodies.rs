//! The two webhook bodies the benchmark sends, built in code.
//!
//! Both are shaped like real WhatsApp Cloud API `messages` notifications so that a receiver
//! does the same verification, parsing and normalisation work it does in production. Every
//! value is invented here (no fixture files are read), so the benchmark has no dependency on
//! test data owned by someone else.
//!
//! Each request must carry message ids never seen before: a receiver that deduplicates by
//! message id would otherwise answer most requests from its dedup index and look faster than
//! it is. The body is therefore serialised once as a template whose message ids end in a
//! fixed-width placeholder; per request the placeholder bytes are overwritten with a counter
//! and the result is signed. That keeps per-request client work to one copy and one HMAC.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use serde_json::{Value, json};

use super::signature::Signer;

/// Placeholder written where each message id's unique suffix goes. Twenty bytes because
/// that is the widest decimal `u64`, so any counter value fits without moving other bytes.
const ID_PLACEHOLDER: &str = "####################";

/// Width of [`ID_PLACEHOLDER`], i.e. of the decimal suffix written into each message id.
const ID_WIDTH: usize = ID_PLACEHOLDER.len();

/// Size the single-message body is padded to (about 1.4 KB, a long customer message).
const TEXT_BODY_TARGET: usize = 1_400;

/// Number of `changes` in the batch body; Meta batches up to this many in busy periods.
const BATCH_CHANGES: usize = 10;

/// Size each change of the batch body is padded to (about 1.5 KB, so ≈15 KB in total).
const BATCH_CHANGE_TARGET: usize = 1_500;

/// Invented business account and phone identities (555-01xx numbers are reserved for fiction).
const WABA_ID: &str = "104729385610427";
const DISPLAY_PHONE_NUMBER: &str = "15550100100";
const PHONE_NUMBER_ID: &str = "118273645501928";
const CUSTOMER_WA_ID: &str = "15550123456";
const CUSTOMER_NAME: &str = "Jordan Reyes";
const MESSAGE_TIMESTAMP: &str = "1700000000";

/// Sentences a customer might plausibly send; message texts are cut from this passage so
/// their size and character mix look like real chat traffic (punctuation, digits, an accent,
/// an emoji) rather than a run of one repeated letter.
const PASSAGE: &[&str] = &[
    "Hi, good morning!",
    "I placed order A-48213 on Tuesday evening through your website and the confirmation email said it would arrive by Friday.",
    "The tracking page has shown 'label created' for three days now and nothing has moved since.",
    "I'm travelling on Monday, so I really need the package before the weekend or I won't be home to receive it.",
    "Could you check with the courier whether it was actually picked up from the warehouse?",
    "If it is lost, I would prefer a replacement shipped express rather than a refund, because the jacket was a birthday present.",
    "My delivery address is 42 Harbour View Road, apartment 7B, and the building has a concierge who can sign for it.",
    "Also, the invoice lists the size as M but I ordered L, so please confirm which one is actually in the box.",
    "I tried calling the support line twice yesterday but the wait time was over forty minutes both times.",
    "The chat on the website kept telling me to message you here instead, so here I am.",
    "By the way, the café pickup point near the station would also work for me if home delivery is difficult.",
    "Thanks a lot for your help, I know it's a busy time of year for everyone 🙏",
    "Please reply here on WhatsApp when you have an update, that's the easiest way to reach me during work hours.",
];

/// Which of the two benchmark bodies a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One entry, one change, one ≈1.4 KB text message.
    Text,
    /// One entry with ten `messages` changes of ≈1.5 KB each (≈15 KB).
    Batch,
}

impl BodyKind {
    /// Both bodies, in the order the benchmark runs them.
    pub const ALL: [Self; 2] = [Self::Text, Self::Batch];

    /// Short label used in progress lines and the results table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Text => "1.4 KB text",
            Self::Batch => "15 KB batch",
        }
    }
}

/// A serialised body with the byte offsets of every message-id placeholder.
#[derive(Debug, Clone)]
pub struct BodyTemplate {
    bytes: Vec<u8>,
    slots: Vec<usize>,
}

impl BodyTemplate {
    /// Builds the template for `kind`.
    pub fn new(kind: BodyKind) -> Result<Self> {
        let (value, expected_slots) = match kind {
            BodyKind::Text => (text_body()?, 1),
            BodyKind::Batch => (batch_body()?, BATCH_CHANGES),
        };
        let bytes = serde_json::to_vec(&value).context("serialising benchmark body")?;
        let slots = find_all(&bytes, ID_PLACEHOLDER.as_bytes());
        ensure!(
            slots.len() == expected_slots,
            "body template has {} message-id placeholders, expected {expected_slots}",
            slots.len()
        );
        Ok(Self { bytes, slots })
    }

    /// Size in bytes of every body rendered from this template.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false; present because clippy pairs `len` with `is_empty`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Number of messages (and thus unique ids) in each rendered body.
    pub fn messages(&self) -> usize {
        self.slots.len()
    }

    /// Renders the body for request number `seq`: message `i` gets the id suffix
    /// `seq * messages + i`, so ids are unique across requests and within a batch.
    pub fn render(&self, seq: u64) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        // Widening usize -> u64 is lossless on every supported target.
        let per_request = self.slots.len() as u64;
        for (index, &offset) in (0u64..).zip(&self.slots) {
            let id = seq.wrapping_mul(per_request).wrapping_add(index);
            write_decimal(&mut bytes[offset..offset + ID_WIDTH], id);
        }
        bytes
    }
}

/// Produces signed bodies with fresh message ids, shared by all connections of all runs of
/// one body kind so ids stay unique even across the baseline and receiver runs.
#[derive(Debug)]
pub struct SignedBodies {
    template: BodyTemplate,
    signer: Signer,
    next_seq: AtomicU64,
}

impl SignedBodies {
    /// Wraps `template`, signing with `signer`.
    pub fn new(template: BodyTemplate, signer: Signer) -> Self {
        Self {
            template,
            signer,
            next_seq: AtomicU64::new(0),
        }
    }

    /// The next body and its `X-Hub-Signature-256` header value.
    pub fn next(&self) -> (Bytes, String) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let body = self.template.render(seq);
        let signature = self.signer.header_value(&body);
        (Bytes::from(body), signature)
    }

    /// The template the bodies are rendered from.
    pub fn template(&self) -> &BodyTemplate {
        &self.template
    }
}

/// The single-message body, padded to about [`TEXT_BODY_TARGET`] bytes.
fn text_body() -> Result<Value> {
    let overhead = serialised_len(&envelope(&[change("TXT", "", 0)]))?;
    let text = passage_text(0, TEXT_BODY_TARGET.saturating_sub(overhead));
    Ok(envelope(&[change("TXT", &text, 0)]))
}

/// The ten-change batch body, each change padded to about [`BATCH_CHANGE_TARGET`] bytes.
fn batch_body() -> Result<Value> {
    let overhead = serialised_len(&change("BAT", "", 0))?;
    let text_len = BATCH_CHANGE_TARGET.saturating_sub(overhead);
    let changes: Vec<Value> = (0..BATCH_CHANGES)
        .map(|i| change("BAT", &passage_text(i, text_len), i))
        .collect();
    Ok(envelope(&changes))
}

/// The outer notification object around `changes`.
fn envelope(changes: &[Value]) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": WABA_ID, "changes": changes }],
    })
}

/// One `messages` change carrying a text message. `tag` distinguishes the id spaces of the
/// two bodies; `index` varies the sender so a batch looks like several conversations.
fn change(tag: &str, text: &str, index: usize) -> Value {
    let from = format!("{}{index}", &CUSTOMER_WA_ID[..CUSTOMER_WA_ID.len() - 1]);
    json!({
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": DISPLAY_PHONE_NUMBER,
                "phone_number_id": PHONE_NUMBER_ID,
            },
            "contacts": [{ "profile": { "name": CUSTOMER_NAME }, "wa_id": from }],
            "messages": [{
                "from": from,
                "id": format!("wamid.HBgLMTU1NTAxMjM0NTYVAgASGCA{tag}{ID_PLACEHOLDER}"),
                "timestamp": MESSAGE_TIMESTAMP,
                "text": { "body": text },
                "type": "text",
            }],
        },
        "field": "messages",
    })
}

/// Roughly `len` bytes of [`PASSAGE`], starting at sentence `start` and cut at a word
/// boundary. The passage has no characters JSON must escape, so the serialised size grows
/// by exactly the text's byte length.
fn passage_text(start: usize, len: usize) -> String {
    let mut text = String::with_capacity(len + 128);
    for sentence in PASSAGE.iter().cycle().skip(start % PASSAGE.len()) {
        if text.len() >= len {
            break;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(sentence);
    }
    let mut limit = len.min(text.len());
    while !text.is_char_boundary(limit) {
        limit -= 1;
    }
    // Cutting at an ASCII space keeps whole words and is always a char boundary.
    if let Some(cut) = text[..limit].rfind(' ') {
        text.truncate(cut);
    }
    text
}

/// Length of `value` once serialised.
fn serialised_len(value: &Value) -> Result<usize> {
    Ok(serde_json::to_vec(value)
        .context("serialising benchmark body")?
        .len())
}

/// Start offsets of every non-overlapping occurrence of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = haystack[at..]
        .windows(needle.len())
        .position(|window| window == needle)
    {
        found.push(at + pos);
        at += pos + needle.len();
    }
    found
}

/// Writes `value` as zero-padded decimal filling all of `dst`.
fn write_decimal(dst: &mut [u8], mut value: u64) {
    for byte in dst.iter_mut().rev() {
        // `value % 10` is below 10, so the narrowing cannot truncate.
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn message_ids(body: &[u8]) -> Result<Vec<String>> {
        let value: Value = serde_json::from_slice(body)?;
        let mut ids = Vec::new();
        for change in value["entry"][0]["changes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for message in change["value"]["messages"].as_array().into_iter().flatten() {
                ids.push(message["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        Ok(ids)
    }

    #[test]
    fn text_body_is_about_1_4_kb_with_one_message() -> Result<()> {
        let template = BodyTemplate::new(BodyKind::Text)?;
        assert!(
            (1_300..=1_450).contains(&template.len()),
            "{}",
            template.len()
        );
        assert_eq!(message_ids(&template.render(7))?.len(), 1);
        Ok(())
    }

    #[test]
    fn batch_body_is_about_15_kb_with_ten_changes() -> Result<()> {
        let template = BodyTemplate::new(BodyKind::Batch)?;
        assert!(
            (14_000..=15_500).contains(&template.len()),
            "{}",
            template.len()
        );
        assert_eq!(message_ids(&template.render(7))?.len(), BATCH_CHANGES);
        Ok(())
    }

    #[test]
    fn rendered_ids_are_unique_across_requests() -> Result<()> {
        let template = BodyTemplate::new(BodyKind::Batch)?;
        let mut seen = HashSet::new();
        for seq in 0..50 {
            let body = template.render(seq);
            assert_eq!(body.len(), template.len());
            for id in message_ids(&body)? {
                assert!(!id.contains('#'), "{id}");
                assert!(seen.insert(id));
            }
        }
        Ok(())
    }

    #[test]
    fn decimal_is_zero_padded() {
        let mut buf = [0u8; 6];
        write_decimal(&mut buf, 4213);
        assert_eq!(&buf, b"004213");
    }
}
