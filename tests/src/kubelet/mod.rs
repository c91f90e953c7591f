//! A kubelet for the end-to-end tests: the test cluster runs no kubelet (and no
//! scheduler), so this harness plays both for the pods of one namespace. It registers a
//! Node, binds each new pod to it, makes the pod's volumes on the host, runs its container
//! with podman, probes it, and reports the pod's status as the kubelet does; when the pod
//! is deleted it stops the container within the grace period and removes the pod. The
//! real controllers (ReplicaSet, StatefulSet, Job, garbage collector) then see what they
//! would see on a real node.
//!
//! ```text
//! let kubelet = Kubelet::start(&client, &namespace, Some("app=receiver")).await?;
//! let pod = kubelet.wait_ready("receiver-0", WAIT).await?;
//! let reply = testkit::request(pod.addr("http")?, Method::GET, "/readyz", &[], Bytes::new()).await?;
//! let spool = kubelet.claim_dir("spool-receiver-0");   // the claim's data, on the host
//! kubelet.shutdown().await?;
//! ```
//!
//! What it does, by module: `node` (the Node, its heartbeat, binding), `volumes`
//! (ConfigMap, Secret, projected, downward API, emptyDir and claim directories), `env`
//! (the environment), `container` (the `podman run`), `probe`, `status` (phase,
//! conditions, container status, termination message), `runtime` (podman), and `pod` (one
//! pod's life, from binding to removal).
//!
//! A PersistentVolumeClaim is a directory per claim name under [`Kubelet::claims_dir`]
//! (the claim need not be bound: no provisioner runs); every pod or Job mounting the claim
//! gets that directory, so data outlives the pod as on a real volume.
//!
//! Pods get an address on podman's bridge network (the pod IP, reachable from the host:
//! the tests run as root); the operator and the tests reach a container's ports there, at
//! their container port numbers. Each pod runs in a task of its own, so pods run
//! concurrently while each pod's steps happen in order.
//!
//! Limits, said rather than hidden: one container per pod (no init or sidecar containers);
//! no `status.podIP` in the environment (the address exists once the container runs); a
//! restarted container may get a new address; probes run every second whatever their
//! period; after the first (immediate) restart a crashing container backs off 1 s, 2 s,
//! 4 s ... up to 30 s (not the kubelet's 10 s to 5 min); no Service environment variables
//! and no cluster DNS in the containers; images come from the local podman store only
//! (`--pull=never`); Kubernetes Events are not written.

mod container;
mod env;
mod node;
mod pod;
mod probe;
mod runtime;
mod status;
mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the node's Lease is renewed (the node lifecycle controller allows 40 s).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for the pods' workers to remove their containers.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// Why a pod could not be set up yet.
#[derive(Debug)]
pub(crate) enum Setup {
    /// Something it needs is missing for now (a ConfigMap, a Secret, a claim): the kubelet
    /// keeps trying.
    Wait(anyhow::Error),
    /// It cannot be run as specified (or the harness cannot translate it): reported on
    /// the pod and in [`Kubelet::errors`].
    Fail(anyhow::Error),
}

/// Where a pod is in its life, as the harness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bound; its volumes or container are being made (or cannot be: see
    /// [`PodView::error`]).
    Pending,
    /// The container runs (or restarts).
    Running,
    /// The container exited 0 and is not restarted.
    Succeeded,
    /// The container exited non-zero and is not restarted.
    Failed,
    /// Deleted: the container is being stopped.
    Terminating,
    /// The container is removed and the pod object with it.
    Gone,
}

/// What the harness knows of one pod (one uid: a StatefulSet's replacement pod of the
/// same name is another view).
#[derive(Debug, Clone)]
pub struct PodView {
    /// The pod's name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// The podman container's name (`podman logs` it, `podman exec` into it).
    pub container: String,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its address on podman's bridge network (the podIP), while it runs.
    pub ip: Option<IpAddr>,
    /// Its container's ports: by name, and the numbers themselves.
    pub ports: BTreeMap<String, u16>,
    /// Its volumes' host directories by volume name (a claim's is the claim directory).
    pub volumes: BTreeMap<String, PathBuf>,
    /// The readiness probe passes (or the container runs and has none).
    pub ready: bool,
    /// The liveness probe passed at least once since the container last started.
    pub live: bool,
    /// Container restarts.
    pub restarts: i32,
    /// The last exit code.
    pub exit_code: Option<i32>,
    /// The termination message of the last exit.
    pub message: Option<String>,
    /// Why the harness cannot run it (it stays Pending until deleted).
    pub error: Option<String>,
    /// What it waits for: a missing ConfigMap, Secret or claim before it starts, a failing
    /// readiness probe while it runs.
    pub waiting: Option<String>,
}

impl PodView {
    /// Where the host reaches the container's port `port` (a name or a number): the pod
    /// IP and the container port.
    pub fn addr(&self, port: impl Into<PortRef>) -> Result<SocketAddr> {
        let ip = self
            .ip
            .with_context(|| format!("pod {} has no address ({:?})", self.name, self.phase))?;
        let number = match port.into() {
            PortRef::Number(number) => number,
            PortRef::Name(name) => *self.ports.get(&name).with_context(|| {
                format!(
                    "pod {} has no port named {name} (ports: {:?})",
                    self.name, self.ports
                )
            })?,
        };
        Ok(SocketAddr::new(ip, number))
    }

    /// The host directory of volume `name`.
    pub fn volume(&self, name: &str) -> Result<&Path> {
        self.volumes
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| format!("pod {} has no volume {name}", self.name))
    }
}

/// A container port, by name or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// One of the container's named ports.
    Name(String),
    /// A port number.
    Number(u16),
}

impl From<&str> for PortRef {
    fn from(name: &str) -> PortRef {
        PortRef::Name(name.to_owned())
    }
}

impl From<u16> for PortRef {
    fn from(number: u16) -> PortRef {
        PortRef::Number(number)
    }
}

/// State shared by the harness, its watcher and the pods' workers.
pub(crate) struct Shared {
    client: Client,
    namespace: String,
    /// The Node's name; also the value of the label on every container run here.
    node: String,
    /// The host address the containers see (the bridge's gateway): every pod's hostIP.
    host_ip: String,
    /// Per-pod directories (volumes, termination message files).
    pods_dir: PathBuf,
    /// One directory per claim name.
    claims_dir: PathBuf,
    /// Every pod run so far, in the order they came.
    views: Mutex<Vec<PodView>>,
    /// Logs of removed containers, by pod uid.
    archived_logs: Mutex<BTreeMap<String, String>>,
    /// What the harness could not do (pods it could not run, API errors).
    errors: Mutex<Vec<String>>,
    /// Bumped whenever a view changes (waiters wake up on it).
    changes: watch::Sender<u64>,
    /// Turns true when the harness stops.
    stopping: watch::Sender<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.namespace)
            .field("node", &self.node)
            .field("claims_dir", &self.claims_dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Adds or changes the view of pod `uid`.
    fn update(&self, uid: &str, change: impl FnOnce(&mut PodView)) {
        let mut views = lock(&self.views);
        if let Some(view) = views.iter_mut().find(|v| v.uid == uid) {
            change(view);
        }
        drop(views);
        self.changes.send_modify(|n| *n += 1);
    }

    fn insert(&self, view: PodView) {
        lock(&self.views).push(view);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records what went wrong, and prints it (shown with a failing test's output).
    fn error(&self, message: String) {
        println!("kubelet {}: {message}", self.node);
        lock(&self.errors).push(message);
    }
}

/// The harness: a Node of the test cluster that runs the pods of one namespace (those of
/// a label selector, or one pod by name) until it is shut down or dropped.
#[derive(Debug)]
pub struct Kubelet {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
    /// The harness's directory (pods' volumes, claims): removed with it.
    _root: tempfile::TempDir,
}

/// Which pods a [`Kubelet`] runs.
pub struct KubeletBuilder {
    client: Client,
    namespace: String,
    selector: Option<String>,
    pod_name: Option<String>,
}

impl std::fmt::Debug for KubeletBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletBuilder")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .field("pod_name", &self.pod_name)
            .finish_non_exhaustive()
    }
}

impl KubeletBuilder {
    /// Only the pods matching this label selector (`app=x,tier=y`).
    pub fn selector(mut self, selector: &str) -> KubeletBuilder {
        self.selector = Some(selector.to_owned());
        self
    }

    /// Only the pod of this name (every pod of that name: a StatefulSet's replacement too).
    pub fn pod_name(mut self, name: &str) -> KubeletBuilder {
        self.pod_name = Some(name.to_owned());
        self
    }

    /// Registers the node and starts running pods.
    pub async fn start(self) -> Result<Kubelet> {
        runtime::remove_orphans().context("removing containers of killed test runs")?;
        let root = tempfile::Builder::new()
            .prefix("metahook-kubelet-")
            .tempdir()
            .context("creating the harness's directory")?;
        let pods_dir = root.path().join("pods");
        let claims_dir = root.path().join("claims");
        for dir in [&pods_dir, &claims_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let host_ip = runtime::bridge_gateway().await?;
        let node = format!("e2e-kubelet-{}", unique_suffix());
        node::register(&self.client, &node, &host_ip).await?;
        let since = status::time(k8s_openapi::jiff::Timestamp::now());
        let (changes, _) = watch::channel(0);
        let (stopping, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            client: self.client,
            namespace: self.namespace,
            node,
            host_ip,
            pods_dir,
            claims_dir,
            views: Mutex::new(Vec::new()),
            archived_logs: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            changes,
            stopping,
        });
        let heartbeat = tokio::spawn(beat(Arc::clone(&shared), since));
        let mut config = watcher::Config::default();
        if let Some(selector) = &self.selector {
            config = config.labels(selector);
        }
        if let Some(name) = &self.pod_name {
            config = config.fields(&format!("metadata.name={name}"));
        }
        let watcher = tokio::spawn(watch_pods(Arc::clone(&shared), config));
        Ok(Kubelet {
            shared,
            watcher: Some(watcher),
            heartbeat: Some(heartbeat),
            _root: root,
        })
    }
}

/// A name part unique to this process and harness.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{:04x}-{}",
        std::process::id(),
        nanos & 0xffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Kubelet {
    /// Runs every pod of `namespace` (matching `selector`, a label selector, when given)
    /// until shut down.
    pub async fn start(
        client: &Client,
        namespace: &str,
        selector: Option<&str>,
    ) -> Result<Kubelet> {
        let mut builder = Kubelet::builder(client, namespace);
        if let Some(selector) = selector {
            builder = builder.selector(selector);
        }
        builder.start().await
    }

    /// A harness for the pods of `namespace`, to narrow before starting it.
    pub fn builder(client: &Client, namespace: &str) -> KubeletBuilder {
        KubeletBuilder {
            client: client.clone(),
            namespace: namespace.to_owned(),
            selector: None,
            pod_name: None,
        }
    }

    /// The harness's Node.
    pub fn node_name(&self) -> &str {
        &self.shared.node
    }

    /// The host's address as the containers see it (the bridge's gateway): where a
    /// container reaches a server the test runs on the host, listening on every address.
    pub fn host_ip(&self) -> &str {
        &self.shared.host_ip
    }

    /// The directory holding one directory per PersistentVolumeClaim name.
    pub fn claims_dir(&self) -> &Path {
        &self.shared.claims_dir
    }

    /// The directory of claim `claim` (a StatefulSet's are `<template>-<set>-<ordinal>`):
    /// what the pods mounting it wrote. It exists once a pod mounted the claim.
    pub fn claim_dir(&self, claim: &str) -> PathBuf {
        self.shared.claims_dir.join(claim)
    }

    /// Every pod run so far (oldest first), including removed ones.
    pub fn pods(&self) -> Vec<PodView> {
        lock(&self.shared.views).clone()
    }

    /// The newest pod named `name`.
    pub fn pod(&self, name: &str) -> Option<PodView> {
        lock(&self.shared.views)
            .iter()
            .rev()
            .find(|v| v.name == name)
            .cloned()
    }

    /// What the harness could not do so far.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// Waits until `check` finds what it looks for in the pods' views (it is called again
    /// whenever a view changes); fails after `timeout` with `what`, the last observation
    /// (`check`'s error) and the harness's errors.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[PodView]) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changes.subscribe();
        let mut last = String::from("(no pod yet)");
        loop {
            let views = self.pods();
            match check(&views) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(err) => last = format!("{err:#}"),
            }
            // Wake on a change, or every second (the API's side may change too).
            let tick = tokio::time::Instant::now() + Duration::from_secs(1);
            if tokio::time::Instant::now() >= deadline {
                let errors = self.errors();
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last: {last}{}",
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!("\nkubelet errors:\n{}", errors.join("\n"))
                    }
                );
            }
            let _ = tokio::time::timeout_at(tick.min(deadline), changes.changed()).await;
        }
    }

    /// Waits until the newest pod named `name` runs and is ready; fails at once, with its
    /// logs, if it ended or the harness cannot run it.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<PodView> {
        let found = self
            .wait_for(&format!("pod {name} to be ready"), timeout, |views| {
                let Some(view) = views.iter().rev().find(|v| v.name == name) else {
                    return Ok(None);
                };
                match view.phase {
                    Phase::Running if view.ready => Ok(Some(Ok(view.clone()))),
                    _ if view.error.is_some() => Ok(Some(Err(anyhow!(
                        "the harness cannot run pod {name}: {}",
                        view.error.clone().unwrap_or_default()
                    )))),
                    Phase::Succeeded | Phase::Failed | Phase::Gone => Ok(Some(Err(anyhow!(
                        "pod {name} ended ({:?}, exit code {:?}, message {:?})",
                        view.phase,
                        view.exit_code,
                        view.message
                    )))),
                    phase => bail!(
                        "{phase:?}, ready {}, restarts {}{}",
                        view.ready,
                        view.restarts,
                        view.waiting
                            .as_ref()
                            .map(|w| format!(", waiting: {w}"))
                            .unwrap_or_default()
                    ),
                }
            })
            .await;
        match found {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(err)) | Err(err) => {
                bail!(
                    "{err:#}\n--- logs of pod {name}:\n{}",
                    self.logs(name).await
                )
            }
        }
    }

    /// The logs of every container of pods named `name` (a restarted or replaced pod's
    /// earlier ones too), each under a header naming the pod's uid.
    pub async fn logs(&self, name: &str) -> String {
        let views: Vec<PodView> = self.pods().into_iter().filter(|v| v.name == name).collect();
        let mut out = String::new();
        for view in views {
            out.push_str(&format!("--- pod {} (uid {}):\n", view.name, view.uid));
            out.push_str(&self.logs_of(&view).await);
        }
        out
    }

    async fn logs_of(&self, view: &PodView) -> String {
        let archived = lock(&self.shared.archived_logs).get(&view.uid).cloned();
        match archived {
            Some(logs) => logs,
            None => runtime::logs(&view.container).await,
        }
    }

    /// The logs of every pod run so far.
    pub async fn all_logs(&self) -> String {
        let mut out = String::new();
        for view in self.pods() {
            out.push_str(&format!(
                "--- pod {} (uid {}, {:?}, exit code {:?}):\n",
                view.name, view.uid, view.phase, view.exit_code
            ));
            out.push_str(&self.logs_of(&view).await);
        }
        out
    }

    /// Ends a scenario: fails naming what the harness could not do, if anything; else
    /// [`Kubelet::shutdown`].
    pub async fn finish(self) -> Result<()> {
        let errors = self.errors();
        anyhow::ensure!(
            errors.is_empty(),
            "the kubelet harness failed at: {errors:#?}"
        );
        self.shutdown().await
    }

    /// Stops: every container is removed (with its logs printed: a failing test shows
    /// them), the node is deleted. Pods left in the API are removed by the pod garbage
    /// collector once their node is gone.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shared.stopping.send_replace(true);
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        if let Some(watcher) = self.watcher.take() {
            // The watcher waits for the workers, which remove their containers.
            if tokio::time::timeout(SHUTDOWN_WAIT, watcher).await.is_err() {
                self.shared.error(format!(
                    "the pods' workers did not stop within {SHUTDOWN_WAIT:?}"
                ));
            }
        }
        println!("{}", self.all_logs().await);
        // Whatever a worker could not remove in time.
        let left = runtime::remove_labelled_blocking(runtime::LABEL, &self.shared.node)?;
        if !left.is_empty() {
            println!(
                "kubelet {}: removed containers its workers left: {left:?}",
                self.shared.node
            );
        }
        node::deregister(&self.shared.client, &self.shared.node).await
    }
}

impl Drop for Kubelet {
    /// Without [`Kubelet::shutdown`] (a test that failed early): the containers are
    /// removed, their logs printed first; the node stays (its heartbeat stops).
    fn drop(&mut self) {
        let Some(watcher) = self.watcher.take() else {
            return;
        };
        self.shared.stopping.send_replace(true);
        watcher.abort();
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        for view in self.pods() {
            let archived = lock(&self.shared.archived_logs).get(&view.uid).cloned();
            let logs = archived.unwrap_or_else(|| runtime::logs_blocking(&view.container));
            println!(
                "--- pod {} (uid {}, {:?}, exit code {:?}):\n{logs}",
                view.name, view.uid, view.phase, view.exit_code
            );
        }
        if let Err(err) = runtime::remove_labelled_blocking(runtime::LABEL, &self.shared.node) {
            println!(
                "kubelet {}: removing its containers: {err:#}",
                self.shared.node
            );
        }
    }
}

/// Keeps the node healthy until the harness stops.
async fn beat(shared: Arc<Shared>, since: String) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        if let Err(err) = node::heartbeat(&shared.client, &shared.node, &since).await {
            shared.error(format!("{err:#}"));
        }
    }
}

/// A pod's worker, as the watcher keeps it.
struct Worker {
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Watches the namespace's pods and hands each to its worker (started for a new pod);
/// on stop, waits for the workers to remove their containers.
async fn watch_pods(shared: Arc<Shared>, config: watcher::Config) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &shared.namespace);
    let mut stream = Box::pin(watcher::watcher(api, config).default_backoff());
    let mut stopping = shared.stopping.subscribe();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // The uids listed by the current (re-)list, to notice pods deleted while not watching.
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
            event = stream.next() => event,
        };
        match event {
            None => break,
            Some(Err(err)) => shared.error(format!("watching pods: {err}")),
            Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(Event::InitApply(pod))) => {
                if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.uid()) {
                    listed.insert(uid);
                }
                dispatch(&shared, &mut workers, pod);
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(listed) = listed.take() {
                    for (uid, worker) in &workers {
                        if !listed.contains(uid) {
                            worker.updates.send_replace(None);
                        }
                    }
                }
            }
            Some(Ok(Event::Apply(pod))) => dispatch(&shared, &mut workers, pod),
            Some(Ok(Event::Delete(pod))) => {
                if let Some(worker) = pod.uid().and_then(|uid| workers.get(&uid)) {
                    worker.updates.send_replace(None);
                }
            }
        }
    }
    for (_, worker) in workers {
        if let Err(err) = worker.task.await {
            shared.error(format!("a pod's worker failed: {err}"));
        }
    }
}

/// Gives `pod` to its worker, starting one for a pod the harness should run: not bound
/// to another node, not finished.
fn dispatch(shared: &Arc<Shared>, workers: &mut HashMap<String, Worker>, pod: Pod) {
    let Some(uid) = pod.uid() else {
        return;
    };
    if let Some(worker) = workers.get(&uid) {
        worker.updates.send_replace(Some(pod));
        return;
    }
    let spec = pod.spec.as_ref();
    let node = spec.and_then(|s| s.node_name.as_deref());
    if node.is_some_and(|n| n != shared.node) {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    let (updates, receiver) = watch::channel(Some(pod));
    let task = tokio::spawn(pod::run(Arc::clone(shared), uid.clone(), receiver));
    workers.insert(uid, Worker { updates, task });
}
