//! The metahook operator: reconciles `WebhookSubscription` resources into receivers.
//!
//! # Layout
//!
//! - [`crd`]: the custom resource, its CEL rules and printer columns; [`spec_check`]: the
//!   same rules evaluated by the operator itself, before it renders anything.
//! - [`replay_crd`]: the `WebhookReplay` resource (a replay of one sink on every replica).
//! - [`resources`]: pure builders, spec → the objects the operator applies (ConfigMap,
//!   Secrets, Deployment or StatefulSet, Service, Ingress, ServiceMonitor, PDB). No I/O.
//! - [`certs`]: the namespace CA and serving certificates (rcgen), and when to renew them.
//! - [`ownership`]: who holds an object at a name a subscription manages (the
//!   subscription by uid, someone else, no one); the operator touches only its own.
//! - [`status`]: conditions and the status written back.
//! - [`policy`]: what a subscription may reach (receiver images, ingress annotations,
//!   callback hosts, referenceable Secrets): the operator's allowlists, as pure checks.
//! - [`controller`]: the reconcile loop, one file a step (ownership, policy, token, secrets,
//!   TLS, children,
//!   Graph registration, status): reads what it needs, applies what the builders produce
//!   with server-side apply, publishes Events, writes status.
//! - [`cli`]: the flags and `main`; [`operator`]: `run()`, leader election and the
//!   background tasks; [`watch`]: the watch scopes and each controller's watches.
//! - [`crd_reference`]: docs/crd-reference.md, rendered from the CRD.
//! - [`metrics`]: the operator's Prometheus metrics and its /metrics, /healthz, /readyz.
//! - [`graph`]: Meta's Graph API calls of webhook registration, as a trait and an HTTP
//!   client.
//! - [`error`]: one error enum, whose variants are the `reason` metric label.

pub mod certs;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod crd_reference;
pub mod error;
pub mod graph;
pub mod metrics;
pub mod operator;
pub mod ownership;
pub mod policy;
pub mod replay_crd;
pub mod resources;
pub mod spec_check;
pub mod status;
pub mod watch;

pub use crd::{WebhookSubscription, WebhookSubscriptionSpec, WebhookSubscriptionStatus};
pub use error::Error;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "metahook-operator";
