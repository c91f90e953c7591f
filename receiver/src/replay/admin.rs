//! The admin endpoints on `metrics_listen` (docs/replay.md has the contract):
//!
//! - `POST /admin/replay` with a [`ReplayRequest`] as JSON: 202 and the replay's status
//!   (200 for a dry run, carried out at once); 400 for a request that does not parse or
//!   names a bad member, 422 for a window outside what the spool holds (with `available`),
//!   409 while another replay runs;
//! - `GET /admin/replay`: every replay kept, newest first; `GET /admin/replay/ID`: one;
//! - `DELETE /admin/replay/ID`: stops it between batches.
//!
//! Every call needs `Authorization: Bearer TOKEN`, the token read from `admin.token_file`
//! at each call (401 otherwise; 503 while the file cannot be read). Never on the webhook
//! listener, which Meta (and so the internet) reaches.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Body;
use serde_json::json;

use super::engine::ReplayError;
use super::jobs::{Jobs, StartError};
use super::request::ReplayRequest;

/// Largest request body taken.
const MAX_BODY: usize = 1024 * 1024;
/// Where the endpoints are.
pub const PREFIX: &str = "/admin/";

/// The admin endpoints of a receiver.
#[derive(Debug)]
pub struct Admin {
    token_file: PathBuf,
    jobs: Jobs,
}

impl Admin {
    /// Admin endpoints over `jobs`, behind the token in `token_file`.
    pub fn new(token_file: PathBuf, jobs: Jobs) -> Admin {
        Admin { token_file, jobs }
    }

    /// Answers one request whose path starts with [`PREFIX`].
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (status, body) = self.route(request).await;
        tracing::info!(method = %method, path = %path, status = status.as_u16(), "admin request");
        let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    async fn route<B>(&self, request: Request<B>) -> (StatusCode, serde_json::Value)
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if let Err(refused) = self.authorize(request.headers()) {
            return refused;
        }
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let id = path.strip_prefix("/admin/replay/").map(str::to_owned);
        match (request.method().clone(), path.as_str(), id) {
            (Method::POST, "/admin/replay", _) => {
                let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(err) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("cannot read the body: {err}"),
                        );
                    }
                };
                let replay: ReplayRequest = match serde_json::from_slice(&body) {
                    Ok(replay) => replay,
                    Err(err) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("not a replay request: {err}"),
                        );
                    }
                };
                let dry_run = replay.dry_run;
                match self.jobs.start(replay).await {
                    Ok(status) => {
                        let code = if dry_run {
                            StatusCode::OK
                        } else {
                            StatusCode::ACCEPTED
                        };
                        (code, json!(status))
                    }
                    Err(StartError::Busy(running)) => (
                        StatusCode::CONFLICT,
                        json!({"error": StartError::Busy(running.clone()).to_string(), "running": running}),
                    ),
                    Err(StartError::Refused(err)) => refused(&err),
                    Err(err @ StartError::NoLoop(_)) => {
                        error(StatusCode::CONFLICT, &err.to_string())
                    }
                }
            }
            (Method::GET, "/admin/replay", _) => {
                (StatusCode::OK, json!({"replays": self.jobs.list()}))
            }
            (Method::GET, _, Some(id)) => match self.jobs.get(&id) {
                Some(status) => (StatusCode::OK, json!(status)),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no replay {id} (kept: the last 16)"),
                ),
            },
            (Method::DELETE, _, Some(id)) => match self.jobs.cancel(&id) {
                Some(status) => (StatusCode::OK, json!(status)),
                None => error(StatusCode::NOT_FOUND, &format!("no replay {id}")),
            },
            (_, "/admin/replay", _) | (_, _, Some(_)) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /admin/replay, GET or DELETE /admin/replay/ID",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "no such admin endpoint (there is /admin/replay)",
            ),
        }
    }

    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), (StatusCode, serde_json::Value)> {
        let token = match std::fs::read(&self.token_file) {
            Ok(token) if !token.trim_ascii().is_empty() => token,
            Ok(_) | Err(_) => {
                tracing::error!(file = %self.token_file.display(), "admin.token_file cannot be read or is empty: refusing admin calls");
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the admin token (admin.token_file) cannot be read",
                ));
            }
        };
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii);
        match given {
            Some(given) if crate::verify::tokens_equal(given, token.trim_ascii()) => Ok(()),
            _ => Err(error(
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer with the admin token required",
            )),
        }
    }
}

fn error(status: StatusCode, message: &str) -> (StatusCode, serde_json::Value) {
    (status, json!({"error": message}))
}

/// A refused replay: 422 with the range held for a window outside it, else 400.
fn refused(err: &ReplayError) -> (StatusCode, serde_json::Value) {
    match err {
        ReplayError::OutsideRetention { available, .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": err.to_string(), "available": available}),
        ),
        ReplayError::NothingHeld => error(StatusCode::UNPROCESSABLE_ENTITY, &err.to_string()),
        ReplayError::Request(_) | ReplayError::UnknownSink { .. } => {
            error(StatusCode::BAD_REQUEST, &err.to_string())
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// Whether `path` is an admin endpoint's.
pub fn is_admin_path(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// The shared handle the server keeps.
pub type SharedAdmin = Arc<Admin>;
