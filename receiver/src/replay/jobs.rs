//! Replays a receiver runs: started by `POST /admin/replay`, followed with `GET`, stopped
//! with `DELETE` ([`super::admin`]); one at a time, the last few kept for their results.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::engine::{self, Available, Progress, ReplayError};
use super::request::ReplayRequest;
use crate::sink::inbox::Inbox;
use crate::spool::Spool;
use crate::spool::dead_letters::DeadLetters;

/// Finished replays kept for `GET /admin/replay/ID`.
const KEPT: usize = 16;

/// Where a replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Delivering.
    Running,
    /// Every selected event was handed to the sink (see `failed` for those it did not take).
    Succeeded,
    /// Stopped by an error (see `error`).
    Failed,
    /// Stopped by `DELETE`.
    Cancelled,
}

/// A replay's status: what every admin call answers with (docs/replay.md).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Its id (`r-<n>`, unique within this receiver's life).
    pub id: String,
    /// Where it is.
    pub state: State,
    /// The request as given.
    pub request: ReplayRequest,
    /// What the spool held when it started.
    pub available: Available,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339), once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Counts so far.
    #[serde(flatten)]
    pub progress: Progress,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug)]
struct Job {
    status: Mutex<Status>,
    progress: Mutex<Progress>,
    cancel: AtomicBool,
}

impl Job {
    fn status(&self) -> Option<Status> {
        let mut status = self.status.lock().ok()?.clone();
        if let Ok(progress) = self.progress.lock() {
            status.progress = progress.clone();
        }
        Some(status)
    }
}

/// Why a replay was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request was refused.
    #[error(transparent)]
    Refused(#[from] ReplayError),
    /// Another replay is running.
    #[error("replay {0} is running; wait for it or cancel it (DELETE /admin/replay/{0})")]
    Busy(String),
    /// The sink has no delivery loop here.
    #[error("sink {0} is not delivering in this receiver")]
    NoLoop(String),
}

/// The replays of one receiver.
#[derive(Debug)]
pub struct Jobs {
    spool: Arc<Spool>,
    dead_letters: DeadLetters,
    inboxes: HashMap<String, Arc<Inbox>>,
    jobs: Mutex<(u64, VecDeque<Arc<Job>>)>,
}

impl Jobs {
    /// Replays over `spool`, delivered through the sinks' `inboxes` (by sink name).
    pub fn new(
        spool: Arc<Spool>,
        dead_letters: DeadLetters,
        inboxes: HashMap<String, Arc<Inbox>>,
    ) -> Jobs {
        Jobs {
            spool,
            dead_letters,
            inboxes,
            jobs: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Checks and starts a replay; a dry run is carried out before this returns.
    pub async fn start(&self, request: ReplayRequest) -> Result<Status, StartError> {
        let spool = Arc::clone(&self.spool);
        let prepared = tokio::task::spawn_blocking(move || engine::prepare(&spool, request))
            .await
            .map_err(ReplayError::from)??;
        let inbox = self.inboxes.get(&prepared.request.sink).cloned();
        if inbox.is_none() && !prepared.request.dry_run {
            return Err(StartError::NoLoop(prepared.request.sink.clone()));
        }
        let job = {
            let mut jobs = self
                .jobs
                .lock()
                .map_err(|_| StartError::NoLoop(String::new()))?;
            if !prepared.request.dry_run
                && let Some(running) = jobs
                    .1
                    .iter()
                    .find_map(|j| j.status().filter(|s| s.state == State::Running))
            {
                return Err(StartError::Busy(running.id));
            }
            jobs.0 += 1;
            let job = Arc::new(Job {
                status: Mutex::new(Status {
                    id: format!("r-{}", jobs.0),
                    state: State::Running,
                    request: prepared.request.clone(),
                    available: prepared.available.clone(),
                    started_at: engine::now(),
                    finished_at: None,
                    progress: Progress::default(),
                    error: None,
                }),
                progress: Mutex::new(Progress::default()),
                cancel: AtomicBool::new(false),
            });
            jobs.1.push_front(Arc::clone(&job));
            while jobs.1.len() > KEPT {
                jobs.1.pop_back();
            }
            job
        };
        let (spool, dead_letters) = (Arc::clone(&self.spool), self.dead_letters.clone());
        let running = Arc::clone(&job);
        let work = async move {
            let result = engine::run(
                spool,
                dead_letters,
                &prepared,
                inbox,
                &running.progress,
                &running.cancel,
            )
            .await;
            finish(&running, result);
        };
        if job.status().is_some_and(|s| s.request.dry_run) {
            work.await;
        } else {
            tokio::spawn(work);
        }
        job.status()
            .ok_or_else(|| StartError::NoLoop(String::new()))
    }

    /// The replay with this id, if kept.
    pub fn get(&self, id: &str) -> Option<Status> {
        let jobs = self.jobs.lock().ok()?;
        jobs.1
            .iter()
            .filter_map(|j| j.status())
            .find(|s| s.id == id)
    }

    /// Every replay kept, newest first.
    pub fn list(&self) -> Vec<Status> {
        self.jobs
            .lock()
            .map(|jobs| jobs.1.iter().filter_map(|j| j.status()).collect())
            .unwrap_or_default()
    }

    /// Asks a running replay to stop (between batches); its status.
    pub fn cancel(&self, id: &str) -> Option<Status> {
        let jobs = self.jobs.lock().ok()?;
        let job = jobs
            .1
            .iter()
            .find(|j| j.status().is_some_and(|s| s.id == id))?;
        job.cancel.store(true, Ordering::SeqCst);
        job.status()
    }
}

fn finish(job: &Job, result: Result<(), ReplayError>) {
    let Ok(mut status) = job.status.lock() else {
        return;
    };
    status.finished_at = Some(engine::now());
    match result {
        Ok(()) => status.state = State::Succeeded,
        Err(ReplayError::Cancelled) => status.state = State::Cancelled,
        Err(err) => {
            status.state = State::Failed;
            status.error = Some(err.to_string());
        }
    }
    let progress = job.progress.lock().map(|p| p.clone()).unwrap_or_default();
    tracing::info!(
        replay = %status.id,
        sink = %status.request.sink,
        state = ?status.state,
        matched = progress.matched,
        delivered = progress.delivered,
        failed = progress.failed,
        error = status.error.as_deref().unwrap_or(""),
        "replay ended"
    );
}
