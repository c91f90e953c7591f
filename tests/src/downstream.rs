//! A downstream HTTP service for sink tests: it records what it receives and can be told to
//! accept, answer an error status (optionally with Retry-After), hang, refuse chosen event
//! ids, or go away and come back on the same address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::testkit;

/// How the downstream service answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200, and the request is recorded.
    Accept,
    /// This status, with this Retry-After.
    Status(u16, Option<u64>),
    /// Never answers.
    Hang,
}

/// One request the service received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `Idempotency-Key`.
    pub idempotency_key: String,
    /// `X-Metahook-Signature`.
    pub signature: String,
    /// The body.
    pub body: Bytes,
    /// `X-Metahook-Replay` ("" when absent).
    pub replay: String,
}

/// What the service does and did.
#[derive(Debug)]
pub struct State {
    /// How it answers.
    pub mode: Mode,
    /// Event ids answered with this status instead: a request whose Idempotency-Key is one
    /// of them, or whose body holds an event with that id (`"id":"<id>"`, batch arrays).
    pub refuse: HashMap<String, u16>,
    /// Requests it accepted.
    pub received: Vec<Received>,
}

/// The downstream service.
#[derive(Debug)]
pub struct Downstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, shared with the test.
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Downstream {
    /// Serves on `addr` (port 0 for any) with `state`.
    pub async fn start(addr: SocketAddr, state: Arc<Mutex<State>>) -> Result<Downstream> {
        let listener = TcpListener::bind(addr)
            .await
            .context("binding the downstream service")?;
        let addr = listener.local_addr()?;
        let task = testkit::serve_http(listener, Arc::clone(&state), |state, request| async move {
            answer(&state, request).await
        });
        Ok(Downstream { addr, state, task })
    }

    /// Changes how it answers.
    pub fn set(&self, mode: Mode) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .mode = mode;
    }

    /// What it accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .received
            .clone()
    }

    /// Stops listening (an outage); the state can start it again.
    pub fn stop(self) -> Arc<Mutex<State>> {
        self.task.abort();
        self.state
    }
}

async fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (key, signature) = (header("idempotency-key"), header("x-metahook-signature"));
    let replay = header("x-metahook-replay");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mode = {
        let state = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let refused = state
            .refuse
            .iter()
            .find(|(id, _)| **id == key || contains(&body, format!(r#""id":"{id}""#).as_bytes()));
        match refused {
            Some((_, code)) => Mode::Status(*code, None),
            None => state.mode.clone(),
        }
    };
    let (status, retry_after) = match mode {
        Mode::Accept => {
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .received
                .push(Received {
                    idempotency_key: key,
                    signature,
                    body,
                    replay,
                });
            (200, None)
        }
        Mode::Status(code, after) => (code, after),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (200, None)
        }
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(after) = retry_after {
        response.headers_mut().insert("retry-after", after.into());
    }
    response
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A fresh state that accepts everything.
pub fn new_state() -> Arc<Mutex<State>> {
    Arc::new(Mutex::new(State {
        mode: Mode::Accept,
        refuse: HashMap::new(),
        received: Vec::new(),
    }))
}
