//! Typed models of Meta's webhook payloads, one module per product.
//!
//! The models are lenient: every field is optional, unknown keys are ignored, ids and
//! numbers are accepted as strings or numbers ([`lenient`]). A payload fails to parse only
//! when a known key holds the wrong kind of JSON (an object where text belongs), and then
//! only the one item is affected.

pub mod envelope;
pub mod graph;
pub mod instagram;
pub mod lenient;
pub mod messaging;
pub mod page;
pub mod whatsapp;
