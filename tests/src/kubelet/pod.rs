//! One pod's life on the harness, in order: bind it to the node, make its volumes and
//! environment, run its container, probe it and report its status every second, restart
//! or finish it on exit as its restart policy says, and on deletion stop it within the
//! grace period and remove the pod object (grace 0, as the kubelet does once the
//! containers are gone) so the controllers proceed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::container::{self, RunSpec};
use super::probe::{Target, Tracker};
use super::status::{self, Report, State, Termination};
use super::volumes::{self, Pass};
use super::{Phase, PodView, Setup, Shared, env, lock, node, runtime};

/// How often a running pod is probed and its status reconsidered.
const TICK: Duration = Duration::from_secs(1);
/// How often ConfigMap, Secret and projected volumes are refreshed from the API.
const REFRESH: Duration = Duration::from_secs(10);
/// The grace period when neither the deletion nor the pod gives one.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Runs the pod of `uid` (its latest object arrives on `updates`; `None` once it is
/// deleted) until it is removed or the harness stops; then removes its container.
pub(super) async fn run(shared: Arc<Shared>, uid: String, updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow().clone() else {
        return;
    };
    let mut worker = Worker::new(shared, uid, updates, pod);
    worker.live().await;
    worker.clean_up().await;
}

/// What woke the supervising loop.
enum Wake {
    /// The pod changed (`false`: the harness stops).
    Update(bool),
    /// The container exited with this code.
    Exit(anyhow::Result<i32>),
    /// A second passed.
    Tick,
}

/// Waits until the pod changes (`true`) or the harness stops (`false`).
async fn wait_update(
    updates: &mut watch::Receiver<Option<Pod>>,
    stopping: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = stopping.wait_for(|stop| *stop) => false,
        changed = updates.changed() => changed.is_ok(),
    }
}

/// The probes of the running container.
struct Probes {
    startup: Option<Tracker>,
    readiness: Option<Tracker>,
    liveness: Option<Tracker>,
}

impl Probes {
    fn new(container: &Container) -> Probes {
        let now = Instant::now();
        Probes {
            startup: container
                .startup_probe
                .clone()
                .map(|p| Tracker::new(p, false, now)),
            readiness: container
                .readiness_probe
                .clone()
                .map(|p| Tracker::new(p, false, now)),
            liveness: container
                .liveness_probe
                .clone()
                .map(|p| Tracker::new(p, true, now)),
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    uid: String,
    name: String,
    pods: Api<Pod>,
    updates: watch::Receiver<Option<Pod>>,
    stopping: watch::Receiver<bool>,
    /// The pod as last seen (kept after it is deleted, for its grace period).
    pod: Pod,
    /// Its (one) container.
    container: Container,
    /// The podman container's name: unique per pod uid.
    podman_name: String,
    /// The pod's own directory (volumes, termination message file).
    dir: PathBuf,
    /// The host file mounted at the container's terminationMessagePath.
    termination_log: PathBuf,
    /// The podman container exists.
    created: bool,
    /// What the status is computed from.
    report: Report,
    /// The status last written to the API.
    reported: Option<Value>,
    view: PodView,
    probes: Probes,
    /// `podman wait` on the running container.
    exit: Option<JoinHandle<anyhow::Result<i32>>>,
    /// When a crashed container starts again.
    restart_at: Option<Instant>,
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        uid: String,
        updates: watch::Receiver<Option<Pod>>,
        pod: Pod,
    ) -> Worker {
        let name = pod.name_any();
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first().cloned())
            .unwrap_or_default();
        let podman_name = format!("e2e_{}_{name}_{}_{uid}", container.name, shared.namespace);
        let dir = shared.pods_dir.join(&uid);
        let termination_log = dir.join(format!("termination-{}", container.name));
        let now = Timestamp::now();
        let report = Report {
            restart_policy: pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".to_owned()),
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            state: State::waiting("ContainerCreating"),
            last_state: None,
            ready: false,
            started: false,
            restart_count: 0,
            host_ip: Some(shared.host_ip.clone()),
            pod_ip: None,
            start_time: now,
            ready_since: now,
        };
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let number = u16::try_from(p.container_port).ok()?;
                Some((p.name.clone().unwrap_or_else(|| number.to_string()), number))
            })
            .collect();
        let view = PodView {
            name: name.clone(),
            uid: uid.clone(),
            container: podman_name.clone(),
            phase: Phase::Pending,
            ip: None,
            ports,
            volumes: Default::default(),
            ready: false,
            live: false,
            restarts: 0,
            exit_code: None,
            message: None,
            error: None,
            waiting: None,
        };
        let probes = Probes::new(&container);
        Worker {
            pods: Api::namespaced(shared.client.clone(), &shared.namespace),
            stopping: shared.stopping.subscribe(),
            shared,
            uid,
            name,
            updates,
            pod,
            container,
            podman_name,
            dir,
            termination_log,
            created: false,
            report,
            reported: None,
            view,
            probes,
            exit: None,
            restart_at: None,
        }
    }

    /// The pod has been deleted (or is being deleted).
    fn deleting(&self) -> bool {
        self.updates
            .borrow()
            .as_ref()
            .is_none_or(|pod| pod.metadata.deletion_timestamp.is_some())
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Waits for the pod's next object; `false` once the harness stops (or its watcher
    /// ended).
    async fn next_update(&mut self) -> bool {
        let more = wait_update(&mut self.updates, &mut self.stopping).await;
        if more {
            self.take_update();
        }
        more
    }

    /// Keeps the latest object of the pod (the last one seen stays once it is deleted).
    fn take_update(&mut self) {
        if let Some(pod) = self.updates.borrow().clone() {
            self.pod = pod;
        }
    }

    async fn live(&mut self) {
        if self.deleting() {
            // Never bound here (an unbound pod is deleted at once): nothing ran.
            return;
        }
        let bound_here = self.pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            == Some(self.shared.node.as_str());
        if !bound_here {
            match node::bind(&self.pods, &self.name, &self.uid, &self.shared.node).await {
                Ok(true) => {
                    if let Some(spec) = self.pod.spec.as_mut() {
                        spec.node_name = Some(self.shared.node.clone());
                    }
                }
                Ok(false) => return,
                Err(err) => {
                    self.shared.error(format!("{err:#}"));
                    return;
                }
            }
        }
        self.shared.insert(self.view.clone());
        self.report_status().await;
        let args = loop {
            if self.stopping() {
                return;
            }
            if self.deleting() {
                self.remove_pod().await;
                return;
            }
            match self.set_up().await {
                Ok(args) => break args,
                Err(Setup::Wait(err)) => {
                    let message = format!("{err:#}");
                    self.view.waiting = Some(message.clone());
                    self.report.state = State::Waiting {
                        reason: "ContainerCreating".to_owned(),
                        message: Some(message),
                    };
                    self.report_status().await;
                    let retry = tokio::time::sleep(TICK);
                    tokio::select! {
                        () = retry => {}
                        more = self.next_update() => if !more { return },
                    }
                }
                Err(Setup::Fail(err)) => {
                    self.fail("CreateContainerConfigError", &err).await;
                    self.idle_until_deleted().await;
                    return;
                }
            }
        };
        self.view.waiting = None;
        if let Err(err) = runtime::run(&args).await {
            self.created = true;
            self.fail("CreateContainerError", &err).await;
            self.idle_until_deleted().await;
            return;
        }
        self.created = true;
        println!(
            "kubelet {}: pod {} runs as podman container {} (podman {})",
            self.shared.node,
            self.name,
            self.podman_name,
            args.join(" ")
        );
        self.started().await;
        self.supervise().await;
    }

    /// Makes the volumes and the environment; the `podman run` arguments.
    async fn set_up(&mut self) -> Result<Vec<String>, Setup> {
        let spec = self
            .pod
            .spec
            .clone()
            .ok_or_else(|| Setup::Fail(anyhow!("the pod has no spec")))?;
        if spec.containers.len() != 1
            || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty())
        {
            return Err(Setup::Fail(anyhow!(
                "the harness runs pods of exactly one container and no init containers; \
                 this one has {} and {} init containers",
                spec.containers.len(),
                spec.init_containers.as_ref().map_or(0, Vec::len)
            )));
        }
        let volumes = volumes::materialize(
            &self.shared.client,
            &self.pod,
            &self.dir,
            &self.shared.claims_dir,
            Pass::Initial,
        )
        .await?;
        self.view.volumes = volumes
            .iter()
            .map(|(name, volume)| (name.clone(), volume.dir.clone()))
            .collect();
        let env = env::resolve(
            &self.shared.client,
            &self.pod,
            &self.container,
            Some(&self.shared.host_ip),
        )
        .await?;
        let image = self.container.image.clone().ok_or_else(|| {
            Setup::Fail(anyhow!("container {} has no image", self.container.name))
        })?;
        let image_user = runtime::image_user(&image).await.map_err(Setup::Fail)?;
        self.fresh_termination_log().map_err(Setup::Fail)?;
        let labels = [
            (runtime::LABEL.to_owned(), self.shared.node.clone()),
            (
                runtime::OWNER_LABEL.to_owned(),
                std::process::id().to_string(),
            ),
            ("io.kubernetes.pod.name".to_owned(), self.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                self.shared.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), self.uid.clone()),
        ];
        let mut hostname = spec.hostname.clone().unwrap_or_else(|| self.name.clone());
        hostname.truncate(63);
        container::run_args(&RunSpec {
            name: &self.podman_name,
            labels: &labels,
            hostname: &hostname,
            pod: &spec,
            container: &self.container,
            env: &env,
            volumes: &volumes,
            termination_log: &self.termination_log,
            image_user: &image_user,
        })
        .map_err(Setup::Fail)
    }

    /// An empty termination message file any user of the container may write (a new one
    /// per run of the container, as the kubelet gives each).
    fn fresh_termination_log(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(&self.termination_log, b"")
            .with_context(|| format!("creating {}", self.termination_log.display()))?;
        std::fs::set_permissions(
            &self.termination_log,
            std::fs::Permissions::from_mode(0o666),
        )
        .with_context(|| format!("chmod {}", self.termination_log.display()))
    }

    /// The pod cannot run: said on the pod (a waiting reason, as the kubelet says it) and
    /// in the harness's errors.
    async fn fail(&mut self, reason: &str, err: &anyhow::Error) {
        let message = format!("{err:#}");
        self.shared
            .error(format!("cannot run pod {}: {reason}: {message}", self.name));
        self.view.error = Some(format!("{reason}: {message}"));
        self.report.state = State::Waiting {
            reason: reason.to_owned(),
            message: Some(message),
        };
        self.report_status().await;
    }

    /// The container (re)started: its address, start time and fresh probes.
    async fn started(&mut self) {
        match runtime::inspect(&self.podman_name).await {
            Ok(inspected) => {
                self.report.container_id = Some(format!("podman://{}", inspected.id));
                self.report.image_id = inspected.image_id;
                if inspected.ip.is_some() {
                    self.report.pod_ip = inspected.ip.map(|ip| ip.to_string());
                    self.view.ip = inspected.ip;
                }
                self.report.state = State::Running {
                    started_at: inspected.started_at.unwrap_or_else(Timestamp::now),
                };
            }
            Err(err) => {
                self.shared
                    .error(format!("inspecting {}: {err:#}", self.podman_name));
                self.report.state = State::Running {
                    started_at: Timestamp::now(),
                };
            }
        }
        self.probes = Probes::new(&self.container);
        self.report.started = self.probes.startup.is_none();
        self.set_ready(self.probes.readiness.is_none() && self.report.started);
        self.view.live = false;
        let name = self.podman_name.clone();
        self.exit = Some(tokio::spawn(async move { runtime::wait(&name).await }));
        self.report_status().await;
    }

    fn set_ready(&mut self, ready: bool) {
        if ready != self.report.ready {
            self.report.ready = ready;
            self.report.ready_since = Timestamp::now();
        }
        self.view.ready = ready;
    }

    /// Probes, exits, restarts and deletion, until the pod is removed or the harness stops.
    async fn supervise(&mut self) {
        let mut tick = tokio::time::interval(TICK);
        // A slow probe delays the next round rather than bunching the ones it missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refreshed = Instant::now();
        loop {
            let mut exit = self.exit.take();
            let wake = {
                let exited = async {
                    match exit.as_mut() {
                        Some(exit) => exit.await.map_err(|e| anyhow!(e)).and_then(|c| c),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    more = wait_update(&mut self.updates, &mut self.stopping) => Wake::Update(more),
                    code = exited => Wake::Exit(code),
                    _ = tick.tick() => Wake::Tick,
                }
            };
            match wake {
                Wake::Update(more) => {
                    self.exit = exit;
                    if !more {
                        return;
                    }
                    self.take_update();
                    if self.deleting() {
                        self.terminate().await;
                        return;
                    }
                }
                Wake::Exit(code) => {
                    self.exited(code).await;
                    if self.restart_at.is_some_and(|at| Instant::now() >= at) {
                        self.restart().await;
                    }
                }
                Wake::Tick => {
                    self.exit = exit;
                    if self.restart_at.is_some_and(|at| Instant::now() >= at) {
                        self.restart().await;
                    }
                    if matches!(self.report.state, State::Running { .. }) {
                        self.probe().await;
                    }
                    if refreshed.elapsed() >= REFRESH {
                        refreshed = Instant::now();
                        // A Secret that vanished keeps its files, as on a real node.
                        let _ = volumes::materialize(
                            &self.shared.client,
                            &self.pod,
                            &self.dir,
                            &self.shared.claims_dir,
                            Pass::Refresh,
                        )
                        .await;
                    }
                    self.report_status().await;
                }
            }
        }
    }

    /// Runs the probes once; a container failing its liveness (or startup) probe is
    /// stopped, and restarted like any exited container.
    async fn probe(&mut self) {
        let Some(ip) = self.view.ip else {
            return;
        };
        let target = Target {
            ip,
            container: &self.container,
            podman_name: &self.podman_name,
        };
        let mut kill = None;
        if !self.report.started
            && let Some(startup) = self.probes.startup.as_mut()
        {
            startup.run(&target).await;
            if startup.passing() {
                self.report.started = true;
            } else if startup.failed() {
                kill = Some(format!(
                    "startup probe: {}",
                    startup.last_failure.clone().unwrap_or_default()
                ));
            }
        }
        let mut ready = None;
        if self.report.started {
            ready = Some(true);
            if let Some(readiness) = self.probes.readiness.as_mut() {
                readiness.run(&target).await;
                ready = Some(readiness.passing());
                self.view.waiting = (!readiness.passing())
                    .then(|| readiness.last_failure.clone())
                    .flatten()
                    .map(|f| format!("readiness probe: {f}"));
            }
            if let Some(liveness) = self.probes.liveness.as_mut() {
                liveness.run(&target).await;
                if liveness.ever_passed {
                    self.view.live = true;
                }
                if liveness.failed() {
                    kill = Some(format!(
                        "liveness probe: {}",
                        liveness.last_failure.clone().unwrap_or_default()
                    ));
                }
            }
        }
        if let Some(ready) = ready {
            self.set_ready(ready);
        }
        if let Some(why) = kill {
            println!(
                "kubelet {}: pod {} failed its {why}: restarting its container",
                self.shared.node, self.name
            );
            let grace = self.grace_seconds();
            if let Err(err) = runtime::stop(&self.podman_name, grace).await {
                self.shared
                    .error(format!("stopping {}: {err:#}", self.podman_name));
            }
        }
        self.publish();
    }

    /// The container exited: restarted later as the restart policy says, or finished.
    async fn exited(&mut self, waited: anyhow::Result<i32>) {
        let inspected = runtime::inspect(&self.podman_name).await;
        let (exit_code, oom_killed, started_at, finished_at) = match (&inspected, &waited) {
            (Ok(i), _) => (i.exit_code, i.oom_killed, i.started_at, i.finished_at),
            (Err(_), Ok(code)) => (*code, false, None, Some(Timestamp::now())),
            (Err(err), Err(wait_err)) => {
                self.shared.error(format!(
                    "container {} exited unobserved: {err:#}; {wait_err:#}",
                    self.podman_name
                ));
                (-1, false, None, Some(Timestamp::now()))
            }
        };
        let file = std::fs::read(&self.termination_log).unwrap_or_default();
        let policy = self.container.termination_message_policy.clone();
        let logs = if file.is_empty()
            && policy.as_deref() == Some("FallbackToLogsOnError")
            && exit_code != 0
        {
            runtime::logs(&self.podman_name).await
        } else {
            String::new()
        };
        let message = status::termination_message(policy.as_deref(), &file, exit_code, || logs);
        let termination = Termination {
            exit_code,
            reason: Termination::reason_for(exit_code, oom_killed).to_owned(),
            message: message.clone(),
            started_at,
            finished_at,
            container_id: self.report.container_id.clone().unwrap_or_default(),
        };
        self.view.exit_code = Some(exit_code);
        self.view.message = message;
        self.set_ready(false);
        self.view.live = false;
        if status::restarts(&self.report.restart_policy, exit_code) && !self.deleting() {
            self.report.last_state = Some(termination);
            // As the kubelet: the first restart at once, then a doubling back-off (from 1 s
            // to 30 s here, 10 s to 5 min there). restartCount counts the restarts done.
            let backoff = match self.report.restart_count {
                0 => Duration::ZERO,
                done => Duration::from_secs((1u64 << (done - 1).clamp(0, 5)).min(30)),
            };
            self.restart_at = Some(Instant::now() + backoff);
            self.report.state = State::Waiting {
                reason: "CrashLoopBackOff".to_owned(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}",
                    backoff.as_secs(),
                    self.container.name,
                    self.name
                )),
            };
        } else {
            self.report.state = State::Terminated(termination);
        }
        self.report_status().await;
    }

    /// Starts the exited container again, with a fresh termination message file.
    async fn restart(&mut self) {
        self.restart_at = None;
        let started = match self.fresh_termination_log() {
            Ok(()) => runtime::start(&self.podman_name).await,
            Err(err) => Err(err),
        };
        match started {
            Ok(()) => {
                self.report.restart_count += 1;
                self.view.restarts = self.report.restart_count;
                self.started().await;
            }
            Err(err) => {
                self.shared
                    .error(format!("restarting {}: {err:#}", self.podman_name));
                self.report.state = State::Waiting {
                    reason: "RunContainerError".to_owned(),
                    message: Some(format!("{err:#}")),
                };
                self.restart_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// The deletion's grace period, else the pod's, else 30 s.
    fn grace_seconds(&self) -> u32 {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        u32::try_from(seconds.max(0)).unwrap_or(u32::MAX)
    }

    /// The pod was deleted: SIGTERM, up to the grace period for the container to exit,
    /// then the pod object goes.
    async fn terminate(&mut self) {
        self.view.phase = Phase::Terminating;
        self.restart_at = None;
        self.set_ready(false);
        self.publish();
        if matches!(self.report.state, State::Running { .. }) {
            let grace = self.grace_seconds();
            let stopped = Instant::now();
            let name = self.podman_name.clone();
            tokio::select! {
                result = runtime::stop(&name, grace) => {
                    if let Err(err) = result {
                        self.shared.error(format!("stopping {name}: {err:#}"));
                    }
                }
                // The harness stops: the container is removed at once (clean_up).
                _ = self.stopping.wait_for(|stop| *stop) => return,
            }
            if let Some(exit) = self.exit.take() {
                match exit.await {
                    Ok(Ok(code)) => self.view.exit_code = Some(code),
                    Ok(Err(err)) => self.shared.error(format!("{err:#}")),
                    Err(err) => self.shared.error(format!("{err}")),
                }
            }
            println!(
                "kubelet {}: pod {} stopped in {:.1}s (grace {grace}s), exit code {:?}",
                self.shared.node,
                self.name,
                stopped.elapsed().as_secs_f64(),
                self.view.exit_code
            );
        }
        self.remove_pod().await;
    }

    /// Removes the pod object (grace 0, only this uid: a StatefulSet's replacement of the
    /// same name is left alone); an already removed pod is fine.
    async fn remove_pod(&mut self) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods.delete(&self.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => self
                .shared
                .error(format!("removing pod {}: {err}", self.name)),
        }
        self.view.phase = Phase::Gone;
        self.publish();
    }

    /// For a pod that cannot run: waits for its deletion, then removes it.
    async fn idle_until_deleted(&mut self) {
        while !self.deleting() {
            if !self.next_update().await {
                return;
            }
        }
        self.remove_pod().await;
    }

    /// Writes the status when it changed (a merge patch of the status subresource).
    async fn report_status(&mut self) {
        let status = status::status(&self.report);
        self.view.phase = match (self.view.phase, status::phase(&self.report)) {
            (Phase::Terminating | Phase::Gone, _) => self.view.phase,
            (_, "Running") => Phase::Running,
            (_, "Succeeded") => Phase::Succeeded,
            (_, "Failed") => Phase::Failed,
            _ => Phase::Pending,
        };
        self.publish();
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({ "status": status });
        match self
            .pods
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.reported = Some(status),
            // Deleted meanwhile: the watcher says so next.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => self
                .shared
                .error(format!("reporting the status of pod {}: {err}", self.name)),
        }
    }

    /// Shows the worker's view to the harness.
    fn publish(&self) {
        let view = self.view.clone();
        self.shared.update(&self.uid, |v| *v = view);
    }

    /// Removes the container, keeping its logs.
    async fn clean_up(&mut self) {
        if let Some(exit) = self.exit.take() {
            exit.abort();
        }
        if !self.created {
            return;
        }
        let logs = runtime::logs(&self.podman_name).await;
        lock(&self.shared.archived_logs).insert(self.uid.clone(), logs);
        if let Err(err) = runtime::remove(&self.podman_name).await {
            self.shared.error(format!("{err:#}"));
        }
        self.created = false;
    }
}
