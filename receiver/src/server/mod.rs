//! HTTP: routing, limits, the webhook handler, and graceful shutdown.
//!
//! [`Receiver::handle`] is the whole request path and takes any body type, so tests can
//! drive it without a socket; [`serve`] runs it on a TCP listener with hyper, in plain HTTP
//! or over TLS ([`crate::tls`]), as the webhook listener or as the probes-only
//! `metrics_listen` one. Requests on endpoint paths pass [`crate::client_auth`] first.
//! Before the receiver can take requests (and in `drain`), [`standby`] answers instead.

mod handler;
mod response;
mod serve;
mod standby;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::acceptor::Acceptor;
use crate::admission::Admission;
use crate::client_auth::{ClientAuth, Peer};
use crate::config::{Config, ConfigError, EndpointConfig, Limits};
use crate::metrics::Metrics;
use crate::metrics::events::{EndpointServed, ReadinessChanged, SpoolWriterFailed};
use crate::secrets::{SecretError, SecretStore};

pub use serve::{Listener, serve};
pub use standby::{Standby, standby};

/// One configured endpoint and its live secrets.
#[derive(Debug)]
pub struct Endpoint {
    /// Its configuration.
    pub config: EndpointConfig,
    /// Its secrets, reloaded while running.
    pub secrets: SecretStore,
}

/// The request handler and the state it shares across connections.
#[derive(Debug)]
pub struct Receiver {
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// Where verified events go before the 200: the spool, or the sinks directly.
    acceptor: Acceptor,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// What a POST must pass before its body is read, and the body's bounds.
    admission: Admission,
    ready: AtomicBool,
    log_message_text: bool,
    client_auth: ClientAuth,
    /// The admin endpoints (`admin` in the configuration), on `metrics_listen` only.
    admin: std::sync::OnceLock<Arc<crate::replay::admin::Admin>>,
}

/// Why a [`Receiver`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// An endpoint's secrets cannot be read.
    #[error("endpoint {endpoint}: {source}")]
    Secrets {
        /// The endpoint's name.
        endpoint: String,
        /// Why.
        source: SecretError,
    },
    /// The client-authentication settings cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `listen`: the webhook endpoints and the probes.
    Webhooks,
    /// `metrics_listen`: /metrics, /healthz and /readyz only.
    Probes,
}

/// The connection a request arrived on: who is at the other end, and which listener.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The peer and its verified client certificate, if any.
    pub peer: Peer,
    /// The listener.
    pub role: Role,
}

/// What the request's log line says besides its outcome.
#[derive(Debug, Default)]
struct Seen {
    endpoint: Option<String>,
    bytes: usize,
    duplicate: bool,
}

type HttpResponse = Response<Full<Bytes>>;

impl Receiver {
    /// Builds the handler; reads every endpoint's secrets (failing names the endpoint).
    pub fn new(
        config: &Config,
        acceptor: Acceptor,
        metrics: Arc<Metrics>,
    ) -> Result<Receiver, ReceiverError> {
        let mut endpoints = HashMap::new();
        for endpoint in &config.endpoints {
            let secrets = SecretStore::load(endpoint).map_err(|source| ReceiverError::Secrets {
                endpoint: endpoint.name.clone(),
                source,
            })?;
            endpoints.insert(
                endpoint.path.clone(),
                Arc::new(Endpoint {
                    config: endpoint.clone(),
                    secrets,
                }),
            );
        }
        for endpoint in &config.endpoints {
            metrics.emit(EndpointServed {
                endpoint: &endpoint.name,
            });
        }
        if let Acceptor::Spool { intake, events } = &acceptor {
            intake.bound_queue(
                config.limits.queued_request_limit(),
                config.limits.queued_bytes_limit(),
            );
            // At once, on the writer's thread: /readyz answers 503 from the next probe on.
            for log in [intake, events] {
                let metrics = Arc::clone(&metrics);
                log.on_failure(move |failed| {
                    metrics.emit(SpoolWriterFailed {
                        log: failed.log,
                        cause: failed.cause,
                        detail: &failed.detail,
                    });
                });
            }
        }
        let client_auth = ClientAuth::from_config(config)?;
        Ok(Receiver {
            endpoints,
            acceptor,
            metrics,
            limits: config.limits.clone(),
            admission: Admission::new(&config.limits, !client_auth.verifies_clients()),
            ready: AtomicBool::new(false),
            log_message_text: config.log_message_text,
            client_auth,
            admin: std::sync::OnceLock::new(),
        })
    }

    /// Marks the receiver ready (or not: while starting and draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.metrics.emit(ReadinessChanged { ready });
    }

    /// Whether /readyz answers 200: started, not draining, and the spool can still write.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.acceptor.is_healthy()
    }

    /// Serves the admin endpoints on the probes listener (set once, before it serves).
    pub fn set_admin(&self, admin: Arc<crate::replay::admin::Admin>) {
        let _ = self.admin.set(admin);
    }

    /// The admin endpoints, when configured.
    pub(crate) fn admin(&self) -> Option<&crate::replay::admin::Admin> {
        self.admin.get().map(|a| &**a)
    }

    /// The endpoints, for the secret reloader.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }
}

#[cfg(test)]
mod tests;
