//! The receiver's admin endpoint as the replay controller calls it (docs/replay.md, "The
//! admin endpoint"): `POST /admin/replay`, `GET /admin/replay/{id}`,
//! `DELETE /admin/replay/{id}` on a pod's metrics port, with the subscription's admin token.

use std::time::Duration;

use metahook_config::replay::ReplayRequest;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

/// How long one admin call may take (a dry run is carried out before the answer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A replay's status as the receiver reports it (the members the operator records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RemoteReplay {
    /// The receiver's id, e.g. `r-1`.
    pub id: String,
    /// running, succeeded, failed or cancelled.
    pub state: String,
    /// Events selected.
    #[serde(default)]
    pub matched: u64,
    /// Events the sink took.
    #[serde(default)]
    pub delivered: u64,
    /// Events the sink did not take.
    #[serde(default)]
    pub failed: u64,
    /// Why it failed (state failed).
    #[serde(default)]
    pub error: Option<String>,
}

/// What a `POST /admin/replay` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// 202 (running) or 200 (a dry run, already done).
    Replay(RemoteReplay),
    /// 409: another replay runs on this receiver (its id); try again later.
    Busy(String),
    /// 422 or 400: refused for good (the message, with the available range for a window
    /// outside retention).
    Refused(String),
}

/// One pod's admin endpoint.
pub struct Admin<'a> {
    /// The operator's HTTP client.
    pub http: &'a reqwest::Client,
    /// `http://IP:PORT` of the pod's metrics port.
    pub base: String,
    /// The bearer token.
    pub token: &'a str,
}

impl Admin<'_> {
    /// Starts a replay (`request` is the admin request body).
    pub async fn start(&self, request: &ReplayRequest) -> Result<Started, String> {
        let url = format!("{}/admin/replay", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(self.token)
            .timeout(CALL_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(request).map_err(|e| format!("the replay request: {e}"))?)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("POST {url} answered {status}: {e}"))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("POST {url} answered {status} without JSON: {e}"))?;
        let error = body["error"].as_str().unwrap_or("").to_owned();
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => serde_json::from_value(body)
                .map(Started::Replay)
                .map_err(|e| format!("POST {url}: a status the operator cannot read: {e}")),
            StatusCode::CONFLICT => Ok(Started::Busy(
                body["running"].as_str().unwrap_or("?").to_owned(),
            )),
            StatusCode::UNPROCESSABLE_ENTITY => {
                let available = &body["available"];
                Ok(Started::Refused(
                    match (available["from"].as_str(), available["to"].as_str()) {
                        (Some(from), Some(to)) if !error.contains("available") => {
                            format!("{error}; available: {from} to {to}")
                        }
                        _ => error,
                    },
                ))
            }
            StatusCode::BAD_REQUEST => Ok(Started::Refused(error)),
            other => Err(format!("POST {url} answered {other}: {error}")),
        }
    }

    /// A replay's status; `None` when the receiver does not know the id (404: it
    /// restarted, or forgot it).
    pub async fn get(&self, id: &str) -> Result<Option<RemoteReplay>, String> {
        let url = format!("{}/admin/replay/{id}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(self.token)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| format!("GET {url}: a status the operator cannot read: {e}"))
            }
            other => Err(format!("GET {url} answered {other}")),
        }
    }

    /// Stops a replay; one the receiver no longer knows is stopped already.
    pub async fn cancel(&self, id: &str) -> Result<(), String> {
        let url = format!("{}/admin/replay/{id}", self.base);
        let response = self
            .http
            .delete(&url)
            .bearer_auth(self.token)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("DELETE {url}: {e}"))?;
        match response.status() {
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            other => Err(format!("DELETE {url} answered {other}")),
        }
    }
}
