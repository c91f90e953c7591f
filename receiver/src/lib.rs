//! metahook receiver: Meta webhooks verified, normalized and stored durably.
//!
//! # Layout
//!
//! - [`verify`]: the GET handshake and the `X-Hub-Signature-256` check (pure).
//! - [`meta`]: typed, lenient models of Meta's payloads, one module per product.
//! - [`normalize`]: a verified body becomes one [`event::Event`] per leaf item (pure).
//! - [`normalizer`]: the stage that normalizes accepted requests after the 200.
//! - [`priority`]: the work after the 200 (the stage, the sink consumers) yields the CPU to
//!   the request handlers.
//! - [`event`]: the unified event schema.
//! - [`enrich`]: optional enrichment of events after the 200 (Lead Ads answers from the
//!   Graph API).
//! - [`tls`], [`client_auth`] (with its [`client_auth::trusted_proxy`]): HTTPS, and who may
//!   call the endpoints.
//! - [`redact`]: credentials in URLs, hidden wherever a URL is shown.
//! - [`json_log`], [`log_writer`]: log lines, formatted and written cheaply enough for one
//!   per request; a stuck output drops and counts lines, never blocks a request.
//! - [`lock_wait`]: opening the spool, waiting while another process (a drain) holds it.
//! - [`drain`]: the `drain` command, delivering a spool's backlog without taking requests.
//! - [`panic_message`]: the text of a caught panic (the spool's writer, normalization).
//! - [`replay`]: re-delivering retained events to one sink (`replay`, `POST /admin/replay`).

pub mod acceptor;
pub mod admission;
pub mod app;
pub mod cli;
pub mod client_auth;
pub mod drain;
pub mod enrich;
pub mod event;
pub mod json_log;
pub mod lock_wait;
pub mod log_writer;
pub mod meta;
pub mod metrics;
pub mod normalize;
pub mod normalizer;
pub mod panic_message;
pub mod priority;
pub mod replay;
pub mod secrets;
pub mod server;
pub mod sink;
pub mod spool;
pub mod tls;
pub mod verify;

/// The configuration lives in the `metahook-config` crate (shared with the operator);
/// re-exported under its old paths so `metahook_receiver::config::Config` keeps working.
pub use metahook_config as config;
pub use metahook_config::redact;

#[cfg(test)]
mod tests {
    /// The configuration crate's table of documented objects and fields (what endpoints and
    /// the operator's CRD accept) is the normalizer's coverage table, row for row.
    #[test]
    fn the_configuration_documents_what_normalization_types() {
        let normalized: Vec<(&str, &str)> = crate::normalize::COVERAGE
            .iter()
            .map(|row| (row.object, row.field))
            .collect();
        let documented: Vec<(&str, &str)> = metahook_config::objects::COVERAGE
            .iter()
            .map(|row| (row.object, row.field))
            .collect();
        assert_eq!(normalized, documented);
    }
}
