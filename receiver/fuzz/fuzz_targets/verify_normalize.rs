//! Verify + parse + normalize on arbitrary bytes: nothing may panic, every accepted body
//! yields events whose JSON round-trips and whose `raw` is valid single-line JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metahook_receiver::event::Event;
use metahook_receiver::normalize::{Context, normalize};
use metahook_receiver::verify::{self, Algorithm};

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    // Arbitrary header values must be refused without panicking.
    let split = data.len().min(80);
    let (header, body) = data.split_at(split);
    let _ = verify::verify_signature(Algorithm::Sha256, Some(header), body, &[SECRET]);
    let _ = verify::verify_signature(Algorithm::Sha1, Some(header), body, &[SECRET]);
    let _ = verify::handshake(std::str::from_utf8(header).ok(), b"token");

    // A correctly signed body always verifies, then normalizes or is rejected as a whole.
    let signature = verify::sign(SECRET, data);
    assert!(verify::verify_signature(Algorithm::Sha256, Some(signature.as_bytes()), data, &[SECRET]).is_ok());
    let ctx = Context { endpoint: "fuzz", received_at: "2026-01-01T00:00:00Z", objects: None };
    if let Ok(events) = normalize(data, &ctx) {
        for event in events {
            assert!(!event.raw.get().contains('\n'));
            let json = serde_json::to_vec(&event).expect("event serializes");
            let back: Event = serde_json::from_slice(&json).expect("event parses back");
            assert_eq!(back.id, event.id);
            assert!(!event.id.is_empty());
        }
    }
});
