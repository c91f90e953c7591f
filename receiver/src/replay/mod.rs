//! Replay: re-delivering events the spool still holds (see `spool.retention`) to one sink,
//! with their original ids and a marker that they are replayed (docs/replay.md).
//!
//! - [`request`]: what a replay selects (window, filters), pure;
//! - [`engine`]: checks a request against what the spool holds and runs it, handing batches
//!   to the sink's delivery loop ([`crate::sink::inbox`]): the loop owns the sink, so a
//!   replay never fights it for the file sink's length or a connection, and never moves a
//!   cursor;
//! - [`jobs`]: the replays a running receiver carries out, one at a time;
//! - [`admin`]: the authenticated admin endpoint on `metrics_listen` that starts and
//!   follows them (what `metahook-receiver replay` and an operator call);
//! - [`local`]: a replay on a stopped spool, by the command line holding the spool's lock;
//! - [`cli`]: `metahook-receiver replay`.

pub mod admin;
pub mod cli;
pub mod engine;
pub mod jobs;
pub mod local;
pub mod request;

pub use engine::{Available, Progress, ReplayError};
pub use jobs::{State, Status};
pub use request::ReplayRequest;
