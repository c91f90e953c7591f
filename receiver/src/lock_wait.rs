//! Opening a receiver's spool (its intake log, then its event log) for `run` and `drain`,
//! waiting while another process holds it.
//!
//! Each log holds an exclusive lock on its `LOCK` file while open: two processes on one spool
//! would interleave their writes. Under Kubernetes the other holder is usually a `drain` Job
//! delivering the backlog of a volume whose replica was scaled away, or a receiver still
//! stopping; both let go on their own, so a start waits (polling, as `flock` cannot be
//! waited on with a timeout or cancelled) rather than failing into a restart loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use metahook_config::Config;
use tokio::time::Instant;

use crate::normalizer;
use crate::spool::{Spool, SpoolError};

/// How often a held lock is tried again.
pub const POLL: Duration = Duration::from_millis(250);
/// How often the wait is said again in the log after its first line.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Why the spool was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process held the lock for the whole wait.
    #[error("cannot open the spool in {}{}", dir.display(), waited_note(*waited))]
    Locked {
        /// `spool.dir`.
        dir: PathBuf,
        /// The lock file the other process holds.
        lock: PathBuf,
        /// How long this one waited (`spool.lock_wait`, `--lock-wait`).
        waited: Duration,
        /// [`SpoolError::InUse`], naming the lock.
        source: SpoolError,
    },
    /// Opening failed otherwise (a file system error, a spool that cannot be recovered).
    #[error("cannot open the spool in {}", dir.display())]
    Failed {
        /// `spool.dir`.
        dir: PathBuf,
        /// Why.
        source: SpoolError,
    },
    /// The blocking task that opens the logs failed.
    #[error("spool open task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn waited_note(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(
            " (waited {} for its lock)",
            humantime::format_duration(Duration::from_millis(
                u64::try_from(waited.as_millis()).unwrap_or(u64::MAX)
            ))
        )
    }
}

/// Opens the intake log and the event log of `config` (a cursor per sink), counting their
/// bytes together. While another process holds either log's lock, tries again every
/// [`POLL`] for up to `wait` (`None`: until it is free), saying so in the log at once and
/// every [`REMIND_EVERY`]. Recovery reads each log's newest segment, on a blocking thread.
pub async fn open_spool(
    config: &Config,
    wait: Option<Duration>,
) -> Result<(Spool, Spool), OpenError> {
    let dir = config.spool.dir.clone();
    let started = Instant::now();
    let mut remind_at: Option<Instant> = None;
    loop {
        let spool_config = config.spool.clone();
        let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
        let opened = tokio::task::spawn_blocking(move || {
            let total = Arc::new(AtomicU64::new(0));
            let intake = Spool::open_intake(&spool_config, normalizer::CONSUMER, &total)?;
            let events = Spool::open_events(&spool_config, &names, &total)?;
            Ok::<_, SpoolError>((intake, events))
        })
        .await?;
        let lock = match opened {
            Ok(logs) => {
                let waited = started.elapsed();
                tracing::info!(dir = %dir.display(), elapsed_ms = waited.as_secs_f64() * 1000.0, "spool opened");
                return Ok(logs);
            }
            Err(SpoolError::InUse { lock }) => lock,
            Err(source) => return Err(OpenError::Failed { dir, source }),
        };
        let waited = started.elapsed();
        let left = wait.map(|limit| limit.saturating_sub(waited));
        if left.is_some_and(|left| left.is_zero()) {
            return Err(OpenError::Locked {
                dir,
                lock: lock.clone(),
                waited: wait.unwrap_or(waited),
                source: SpoolError::InUse { lock },
            });
        }
        let now = Instant::now();
        if remind_at.is_none_or(|at| now >= at) {
            let limit = wait.map_or_else(
                || "until it is released".to_owned(),
                |limit| format!("up to {}", humantime::format_duration(limit)),
            );
            tracing::warn!(lock = %lock.display(), waited_s = waited.as_secs(), "another process holds the spool (a drain, or a receiver still stopping): waiting for {} {limit}", lock.display());
            remind_at = Some(now + REMIND_EVERY);
        }
        tokio::time::sleep(left.map_or(POLL, |left| left.min(POLL))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metahook_config::SpoolConfig;

    fn config(dir: &std::path::Path) -> Config {
        let mut config = Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            Vec::new(),
            SpoolConfig::new(dir.join("spool")),
        );
        config.sinks.clear();
        config
    }

    #[tokio::test]
    async fn a_held_spool_is_refused_after_the_wait_naming_its_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let held = open_spool(&config, Some(Duration::ZERO))
            .await
            .expect("free at first");
        let started = std::time::Instant::now();
        let err = open_spool(&config, Some(Duration::from_millis(600)))
            .await
            .expect_err("held");
        assert!(started.elapsed() >= Duration::from_millis(600), "waited");
        assert!(
            matches!(&err, OpenError::Locked { lock, .. } if lock == &dir.path().join("spool").join("intake").join("LOCK")),
            "{err}"
        );
        let message = crate::cli::error_chain(&anyhow::Error::new(err));
        let spool = dir.path().join("spool");
        assert!(
            message.starts_with(&format!(
                "cannot open the spool in {} (waited ",
                spool.display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with(&format!(
                " for its lock): spool: in use by another receiver (it holds {})",
                spool.join("intake").join("LOCK").display()
            )),
            "{message}"
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_start_waits_for_the_holder_to_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let held = open_spool(&config, Some(Duration::ZERO))
            .await
            .expect("free at first");
        let waiting = tokio::spawn({
            let config = config.clone();
            async move { open_spool(&config, None).await }
        });
        tokio::time::sleep(POLL * 3).await;
        assert!(!waiting.is_finished(), "opened a spool another holds");
        drop(held);
        let opened = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("opened once released")
            .expect("task");
        assert!(opened.is_ok(), "{:?}", opened.err());
    }
}
