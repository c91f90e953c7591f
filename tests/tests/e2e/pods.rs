//! The receiver pods the operator renders really run. No kubelet runs here, so the test
//! plays it: it reads the Pod the Deployment's ReplicaSet made, the ConfigMap and Secrets
//! its volumes name, materializes those volumes into a temporary directory (with the modes
//! and the fsGroup the kubelet would give them), and runs the container with podman with
//! the pod's image, args, env, ports, mounts and security context. Once the probes pass
//! it reports the pod Running and Ready in the Pod's status, as the kubelet would; the
//! real ReplicaSet and Deployment controllers (kube-controller-manager) then count it into
//! the Deployment's status, and the operator turns `ReceiverAvailable` and `Ready` True. A
//! signed fixture posted to the pod's port lands in its file sink.
//!
//! Reporting on the Pod rather than patching the Deployment's status is deliberate: the
//! Deployment controller recomputes that status from the ReplicaSets and would overwrite
//! a patch at once, while the Pod's status is the kubelet's to write.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::{Container as ContainerSpec, KeyToPath, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use metahook_operator::crd::{FileSinkSpec, SinkSpec, TlsModeSpec};
use metahook_tests::podman::{Container, podman, podman_ok};
use metahook_tests::testkit;

use super::*;

/// The file sink's name in the test's subscription.
const SINK_FILE: &str = "events.jsonl";

/// The one Pod of subscription `name` (its ReplicaSet creates it from the Deployment's
/// template), checked to belong to that Deployment's ReplicaSet.
pub(super) async fn the_pod(world: &World, namespace: &str, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(world.client.clone(), namespace);
    let selector = format!("metahook.io/subscription={name}");
    let pod = wait_for(
        &format!("the ReplicaSet to create the pod of {namespace}/{name}"),
        WAIT,
        Some(&world.operator),
        || {
            let pods = pods.clone();
            let selector = selector.clone();
            async move {
                let mut list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items;
                match list.len() {
                    0 => Ok(None),
                    1 => Ok(list.pop()),
                    n => bail!("{n} pods for one replica"),
                }
            }
        },
    )
    .await?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .context("the pod has no ReplicaSet")?
        .name
        .clone();
    let replica_set = replica_sets.get(&owner).await?;
    ensure!(
        replica_set
            .owner_references()
            .iter()
            .any(|o| o.kind == "Deployment" && o.name == name),
        "ReplicaSet {owner} does not belong to Deployment {name}"
    );
    Ok(pod)
}

/// Writes `data[item.key]` to `dir/item.path` (all keys when `items` is None), with `mode`
/// and group `fs_group` as the kubelet writes ConfigMap, Secret and projected volumes.
fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    fs_group: Option<u32>,
    source: &str,
) -> Result<()> {
    let all: Vec<KeyToPath> = data
        .keys()
        .map(|key| KeyToPath {
            key: key.clone(),
            path: key.clone(),
            mode: None,
        })
        .collect();
    for item in items.unwrap_or(&all) {
        let value = data
            .get(&item.key)
            .with_context(|| format!("{source} has no key {}", item.key))?;
        let path = dir.join(&item.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        let mode = u32::try_from(item.mode.unwrap_or(default_mode)).context("a file mode")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
        if let Some(group) = fs_group {
            std::os::unix::fs::chown(&path, Some(0), Some(group))
                .with_context(|| format!("chown {}", path.display()))?;
        }
    }
    Ok(())
}

/// Directories of a volume: readable and searchable by everyone, as the kubelet makes them.
fn open_dirs(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            open_dirs(&entry.path())?;
        }
    }
    Ok(())
}

/// Materializes the pod's volumes under `root` (one directory per volume) from the
/// ConfigMaps and Secrets on the API server; returns each volume's directory.
async fn materialize_volumes(
    client: &Client,
    namespace: &str,
    spec: &PodSpec,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(u32::try_from)
        .transpose()
        .context("fsGroup")?;
    let config_map_data = |config_map: ConfigMap| -> BTreeMap<String, Vec<u8>> {
        let mut data: BTreeMap<String, Vec<u8>> = config_map
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            config_map
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        data
    };
    let secret_data = |secret: Secret| -> BTreeMap<String, Vec<u8>> {
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.extend(
            secret
                .string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        data
    };
    let mut dirs = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = root.join(&volume.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(source) = &volume.config_map {
            let config_map = config_maps
                .get(&source.name)
                .await
                .with_context(|| format!("ConfigMap {} of volume {}", source.name, volume.name))?;
            write_items(
                &dir,
                &config_map_data(config_map),
                source.items.as_deref(),
                source.default_mode.unwrap_or(0o644),
                fs_group,
                &format!("ConfigMap {}", source.name),
            )?;
        } else if let Some(source) = &volume.secret {
            let name = source
                .secret_name
                .clone()
                .context("a secret volume without secretName")?;
            let secret = secrets
                .get(&name)
                .await
                .with_context(|| format!("Secret {name}"))?;
            write_items(
                &dir,
                &secret_data(secret),
                source.items.as_deref(),
                source.default_mode.unwrap_or(0o644),
                fs_group,
                &format!("Secret {name}"),
            )?;
        } else if let Some(projected) = &volume.projected {
            let mode = projected.default_mode.unwrap_or(0o644);
            for source in projected.sources.iter().flatten() {
                if let Some(secret) = &source.secret {
                    let found = secrets.get(&secret.name).await.with_context(|| {
                        format!("Secret {} of volume {}", secret.name, volume.name)
                    })?;
                    write_items(
                        &dir,
                        &secret_data(found),
                        secret.items.as_deref(),
                        mode,
                        fs_group,
                        &format!("Secret {}", secret.name),
                    )?;
                } else if let Some(config_map) = &source.config_map {
                    let found = config_maps.get(&config_map.name).await.with_context(|| {
                        format!("ConfigMap {} of volume {}", config_map.name, volume.name)
                    })?;
                    write_items(
                        &dir,
                        &config_map_data(found),
                        config_map.items.as_deref(),
                        mode,
                        fs_group,
                        &format!("ConfigMap {}", config_map.name),
                    )?;
                } else {
                    bail!(
                        "volume {}: a projection the test does not materialize: {source:?}",
                        volume.name
                    );
                }
            }
        } else if volume.empty_dir.is_some() {
            // World-writable, group fsGroup with setgid, as the kubelet makes an emptyDir.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2777))
                .with_context(|| format!("chmod {}", dir.display()))?;
            if let Some(group) = fs_group {
                std::os::unix::fs::chown(&dir, Some(0), Some(group))
                    .with_context(|| format!("chown {}", dir.display()))?;
            }
            dirs.insert(volume.name.clone(), dir);
            continue;
        } else {
            bail!(
                "volume {} is of a kind the test does not materialize: {volume:?}",
                volume.name
            );
        }
        open_dirs(&dir)?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

/// `256Mi` as podman's `256m`.
fn podman_memory(quantity: &str) -> Result<String> {
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return Ok(format!("{number}{unit}"));
        }
    }
    bail!("a memory limit the test does not translate: {quantity}")
}

/// The podman arguments that run `container` of pod `spec` as the kubelet would, each
/// port published on a free loopback port (returned by container port).
fn podman_args(
    name: &str,
    spec: &PodSpec,
    container: &ContainerSpec,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<(Vec<String>, BTreeMap<i32, u16>)> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        "--name".into(),
        name.into(),
    ];
    // Security context: the container's fields override the pod's.
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let user = security.run_as_user.or(pod_security.run_as_user);
    let group = security.run_as_group.or(pod_security.run_as_group);
    let non_root = security.run_as_non_root.or(pod_security.run_as_non_root);
    if non_root == Some(true) {
        ensure!(
            user.is_some_and(|u| u != 0),
            "runAsNonRoot without a non-root runAsUser"
        );
    }
    if let Some(user) = user {
        args.push("--user".into());
        args.push(match group {
            Some(group) => format!("{user}:{group}"),
            None => user.to_string(),
        });
    }
    for group in pod_security
        .fs_group
        .iter()
        .chain(pod_security.supplemental_groups.iter().flatten())
    {
        args.push(format!("--group-add={group}"));
    }
    let seccomp = security.seccomp_profile.or(pod_security.seccomp_profile);
    ensure!(
        seccomp.as_ref().is_none_or(|s| s.type_ == "RuntimeDefault"),
        "a seccomp profile the test does not translate: {seccomp:?}"
    );
    // podman's default seccomp profile is the runtime default.
    if security.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts no tmpfs on /tmp and /run for a read-only root; podman would.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if security.allow_privilege_escalation == Some(false) {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    ensure!(security.privileged != Some(true), "a privileged container");
    if let Some(capabilities) = &security.capabilities {
        for drop in capabilities.drop.iter().flatten() {
            args.push(format!("--cap-drop={drop}"));
        }
        for add in capabilities.add.iter().flatten() {
            args.push(format!("--cap-add={add}"));
        }
    }
    if let Some(memory) = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    {
        args.push(format!("--memory={}", podman_memory(&memory.0)?));
    }
    for env in container.env.iter().flatten() {
        ensure!(
            env.value_from.is_none(),
            "env {} from a reference: not translated",
            env.name
        );
        args.push(format!(
            "--env={}={}",
            env.name,
            env.value.clone().unwrap_or_default()
        ));
    }
    ensure!(container.env_from.is_none(), "envFrom is not translated");
    let mut ports = BTreeMap::new();
    for port in container.ports.iter().flatten() {
        let host = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        args.push(format!(
            "--publish=127.0.0.1:{host}:{}",
            port.container_port
        ));
        ports.insert(port.container_port, host);
    }
    for mount in container.volume_mounts.iter().flatten() {
        ensure!(
            mount.sub_path.is_none(),
            "subPath mounts are not translated"
        );
        let dir = volumes
            .get(&mount.name)
            .with_context(|| format!("mount of unknown volume {}", mount.name))?;
        let mode = if mount.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        };
        args.push(format!(
            "--volume={}:{}:{mode}",
            dir.display(),
            mount.mount_path
        ));
    }
    if let Some(command) = &container.command {
        args.push(format!("--entrypoint={}", serde_json::to_string(command)?));
    }
    args.push(
        container
            .image
            .clone()
            .context("a container without image")?,
    );
    args.extend(container.args.iter().flatten().cloned());
    Ok((args, ports))
}

/// The host address of a probe's port (a name of the container's ports, or a number).
fn probe_addr(
    container: &ContainerSpec,
    port: &IntOrString,
    ports: &BTreeMap<i32, u16>,
) -> Result<SocketAddr> {
    let number = match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .with_context(|| format!("probe port {name} is not a port of the container"))?
                .container_port
        }
    };
    let host = ports
        .get(&number)
        .with_context(|| format!("container port {number} is not published"))?;
    Ok(SocketAddr::from(([127, 0, 0, 1], *host)))
}

/// Runs `probe` (an HTTP GET) until it succeeds (2xx or 3xx, as the kubelet counts it).
async fn probe_passes(
    what: &str,
    probe: &Probe,
    container: &ContainerSpec,
    ports: &BTreeMap<i32, u16>,
    running: &Container,
) -> Result<()> {
    let get = probe
        .http_get
        .as_ref()
        .with_context(|| format!("{what} is not an HTTP GET"))?;
    ensure!(
        get.scheme.as_deref().unwrap_or("HTTP") == "HTTP",
        "{what}: scheme {:?} (the test subscription serves plain HTTP)",
        get.scheme
    );
    let addr = probe_addr(container, &get.port, ports)?;
    let path = get.path.clone().unwrap_or_else(|| "/".to_owned());
    let headers: Vec<(String, String)> = get
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        match testkit::request(addr, Method::GET, &path, &headers, Bytes::new()).await {
            Ok(reply) if reply.status.is_success() || reply.status.is_redirection() => {
                return Ok(());
            }
            Ok(reply) => last = format!("{} {}", reply.status, reply.text()),
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{what} GET {path} on {addr} did not pass within 30s: {last}\n--- container logs:\n{}",
        running.logs()
    )
}

/// Reports `pod` Running with its containers started and ready, as the kubelet does once
/// the readiness probe passes (a merge patch of the status subresource).
pub(super) async fn report_ready(client: &Client, pod: &Pod) -> Result<()> {
    let namespace = pod.namespace().context("pod namespace")?;
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .context("rounding the time")?
        .to_string();
    let statuses: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let patch = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "startTime": now,
        "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
        "containerStatuses": statuses,
    }});
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("reporting pod {namespace}/{} ready", pod.name_any()))?;
    Ok(())
}

/// Waits until the Deployment controller counts one ready, available, updated replica of
/// `name` (from the Pod's status, through its ReplicaSet) and the operator has turned
/// ReceiverAvailable and Ready True.
pub(super) async fn wait_available(
    world: &World,
    namespace: &str,
    name: &str,
) -> Result<WebhookSubscription> {
    let deployments: Api<Deployment> = Api::namespaced(world.client.clone(), namespace);
    wait_for(
        &format!("Deployment {namespace}/{name} to count the ready pod"),
        WAIT,
        Some(&world.operator),
        || {
            let deployments = deployments.clone();
            async move {
                let status = deployments.get(name).await?.status.unwrap_or_default();
                let counts = (
                    status.ready_replicas,
                    status.available_replicas,
                    status.updated_replicas,
                );
                if counts == (Some(1), Some(1), Some(1)) {
                    Ok(Some(()))
                } else {
                    bail!("ready, available, updated replicas: {counts:?}")
                }
            }
        },
    )
    .await?;
    let api: Api<WebhookSubscription> = Api::namespaced(world.client.clone(), namespace);
    wait_for(
        &format!("ReceiverAvailable and Ready on {namespace}/{name}"),
        WAIT,
        Some(&world.operator),
        || {
            let api = api.clone();
            async move {
                let current = api.get(name).await?;
                let status = |t: &str| {
                    condition(&current, t)
                        .map(|c| format!("{} ({}: {})", c.status, c.reason, c.message))
                };
                let (available, ready) = (status("ReceiverAvailable"), status("Ready"));
                if available.as_deref().is_some_and(|s| s.starts_with("True"))
                    && ready.as_deref().is_some_and(|s| s.starts_with("True"))
                {
                    Ok(Some(current))
                } else {
                    bail!("ReceiverAvailable {available:?}, Ready {ready:?}")
                }
            }
        },
    )
    .await
}

/// The WhatsApp example as a pod on this machine can run it: one replica, a file sink
/// (no NATS or PostgreSQL service names to reach), plain HTTP, no Ingress.
fn runnable(sub: &mut WebhookSubscription) {
    as_deployment(sub);
    sub.spec.receiver.replicas = 1;
    sub.spec.ingress = None;
    sub.spec.tls.mode = TlsModeSpec::None;
    sub.spec.tls.secret_ref = None;
    sub.spec.delivery.sinks = vec![SinkSpec {
        name: "local".to_owned(),
        nats: None,
        http: None,
        postgres: None,
        file: Some(FileSinkSpec {
            name: SINK_FILE.to_owned(),
        }),
        retry: None,
    }];
}

#[tokio::test]
async fn the_rendered_pod_runs_passes_its_probes_and_stores_a_signed_fixture() -> Result<()> {
    let started = Instant::now();
    let world = world_with("e2e-pod", Some("acme-whatsapp"), runnable).await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    reconciled(&world, &sub, 1).await?;
    let pod = the_pod(&world, &namespace, &name).await?;
    let spec = pod.spec.clone().context("pod without spec")?;
    ensure!(
        spec.containers.len() == 1 && spec.init_containers.is_none(),
        "one container: {spec:?}"
    );
    let container = spec.containers[0].clone();

    let dir = tempfile::Builder::new()
        .prefix("metahook-e2e-pod-")
        .tempdir()?;
    let volumes = materialize_volumes(&world.client, &namespace, &spec, dir.path()).await?;
    let container_name = format!("metahook-e2e-{}", pod.name_any());
    let (args, ports) = podman_args(&container_name, &spec, &container, &volumes)?;
    let _ = podman(&["rm", "--force", &container_name]);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(&arg_refs)
        .context("running the pod's container (are the images built? scripts/build-images.sh)")?;
    let running = Container {
        name: container_name,
    };
    println!("podman {}", args.join(" "));

    for (what, probe) in [
        ("the readiness probe", &container.readiness_probe),
        ("the liveness probe", &container.liveness_probe),
    ] {
        let probe = probe
            .as_ref()
            .with_context(|| format!("the container has no {what}"))?;
        probe_passes(what, probe, &container, &ports, &running).await?;
    }
    report_ready(&world.client, &pod).await?;
    wait_available(&world, &namespace, &name).await?;

    // The configuration the pod runs: its endpoint's path and its secrets' files.
    let config: serde_json::Value = {
        let path = volumes
            .get("config")
            .context("no config volume")?
            .join("config.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).context("parsing the receiver's config.yaml")?
    };
    let endpoint = &config["endpoints"][0];
    let path = endpoint["path"].as_str().context("endpoint path")?;
    let webhook_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .context("no http port")?
        .container_port;
    let addr = SocketAddr::from((
        [127, 0, 0, 1],
        *ports.get(&webhook_port).context("http port")?,
    ));

    // Meta's handshake with the verify token the operator generated.
    let token = Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get(&format!("{name}-verify-token"))
        .await
        .context("the generated verify token")?
        .data
        .and_then(|d| {
            d.get("verify-token")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
        .context("verify-token key")?;
    let challenge = testkit::request(
        addr,
        Method::GET,
        &format!("{path}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=4242"),
        &[],
        Bytes::new(),
    )
    .await?;
    ensure!(
        challenge.status == StatusCode::OK && challenge.text() == "4242",
        "handshake: {} {}",
        challenge.status,
        challenge.text()
    );

    // A fixture signed with the app secret put in the Secret.
    let app_secret = Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get("meta-whatsapp-app")
        .await?
        .data
        .and_then(|d| d.get("app-secret").map(|v| v.0.clone()))
        .context("app-secret key")?;
    let body = std::fs::read(testkit::own_fixtures_dir().join("whatsapp__messages.text.json"))
        .context("reading the text fixture")?;
    let signature = metahook_receiver::verify::sign(&app_secret, &body);
    let answer = testkit::request(
        addr,
        Method::POST,
        path,
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &signature),
        ],
        Bytes::from(body),
    )
    .await?;
    ensure!(
        answer.status == StatusCode::OK,
        "signed fixture: {} {}",
        answer.status,
        answer.text()
    );
    let sink = volumes
        .get("data")
        .context("no data volume")?
        .join("files")
        .join(SINK_FILE);
    let events = testkit::wait_for_lines(&sink, 1, Duration::from_secs(15))
        .await
        .with_context(|| {
            format!(
                "the file sink {}\n--- container logs:\n{}",
                sink.display(),
                running.logs()
            )
        })?;
    ensure!(
        events.len() == 1 && events[0]["kind"] == "message" && events[0]["platform"] == "whatsapp",
        "the file sink holds {events:?}"
    );
    assert_clean_log(&world.operator)?;
    println!("pod scenario took {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
