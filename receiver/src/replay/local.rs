//! A replay on a stopped spool: `metahook-receiver replay` takes the event log's lock
//! itself (as `drain` does, so no receiver starts on the spool meanwhile), runs the one
//! sink's delivery loop for the replay only (it delivers nothing else: no backlog, no dead
//! letters queued for retry) and stops it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use metahook_config::Config;
use tokio::sync::watch;

use super::jobs::{Jobs, State, Status};
use super::request::ReplayRequest;
use crate::metrics::Metrics;
use crate::sink::inbox::Inbox;
use crate::sink::kind::BuildSink;
use crate::sink::{self, Consumer, Phase};
use crate::spool::Spool;
use crate::spool::dead_letters::DeadLetters;

/// How often `progress` is called.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Carries out `request` on the stopped spool of `config`, calling `progress` while it
/// runs; the final status. Fails when a receiver holds the spool.
pub async fn replay(
    config: &Config,
    request: ReplayRequest,
    mut progress: impl FnMut(&Status),
) -> anyhow::Result<Status> {
    let sink_config = config
        .sinks
        .iter()
        .find(|s| s.name == request.sink)
        .with_context(|| format!("no sink named {:?}", request.sink))?;
    let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    let spool_config = config.spool.clone();
    let spool = tokio::task::spawn_blocking(move || {
        Spool::open_events(&spool_config, &names, &Arc::new(AtomicU64::new(0)))
    })
    .await
    .context("spool task failed")??;
    let spool = Arc::new(spool);
    let dead_letters = DeadLetters::new(&config.spool.dir);
    let inbox = Inbox::new();
    let (phase, phase_rx) = watch::channel(Phase::Run);
    let consumer = Consumer {
        name: sink_config.name.clone(),
        spool: Arc::clone(&spool),
        metrics: Arc::new(Metrics::new().context("cannot create metrics")?),
        retry: sink_config.retry.clone(),
        dead_letters: dead_letters.clone(),
        inbox: Some(Arc::clone(&inbox)),
        inbox_only: true,
    };
    let delivering = tokio::spawn(sink::consume(consumer, sink_config.kind.build(), phase_rx));
    let jobs = Jobs::new(
        Arc::clone(&spool),
        dead_letters,
        HashMap::from([(sink_config.name.clone(), inbox)]),
    );
    let result = async {
        let mut status = jobs.start(request).await?;
        while status.state == State::Running {
            progress(&status);
            tokio::time::sleep(PROGRESS_EVERY).await;
            status = jobs.get(&status.id).context("the replay was forgotten")?;
        }
        anyhow::Ok(status)
    }
    .await;
    let _ = phase.send(Phase::Stop);
    let _ = delivering.await;
    let closing = Arc::clone(&spool);
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    result
}
