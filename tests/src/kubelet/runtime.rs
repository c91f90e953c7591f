//! The container runtime under the harness: podman (rootful, bridge network, vfs storage,
//! runc; see [`crate::podman`]), driven without blocking the test's runtime.

use std::net::IpAddr;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::podman::{podman, podman_async, podman_async_ok};

/// The label on every container a harness runs; its value names the harness (its node).
pub const LABEL: &str = "io.metahook.e2e.kubelet";
/// The label holding the process id of the test binary that ran the container, so a later
/// run can remove what a killed one left behind.
pub const OWNER_LABEL: &str = "io.metahook.e2e.kubelet.owner";

/// What `podman container inspect` says about a container.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The container id.
    pub id: String,
    /// The image id.
    pub image_id: String,
    /// The exit code once exited.
    pub exit_code: i32,
    /// Killed for exceeding its memory limit.
    pub oom_killed: bool,
    /// When it (last) started.
    pub started_at: Option<Timestamp>,
    /// When it (last) ended.
    pub finished_at: Option<Timestamp>,
    /// Its address on the bridge network, while it runs.
    pub ip: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawInspect {
    id: String,
    #[serde(default)]
    image: String,
    state: RawState,
    #[serde(default)]
    network_settings: Option<RawNetwork>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawState {
    #[serde(default)]
    exit_code: i32,
    #[serde(rename = "OOMKilled", default)]
    oom_killed: bool,
    #[serde(default)]
    started_at: String,
    #[serde(default)]
    finished_at: String,
}

#[derive(Deserialize)]
struct RawNetwork {
    #[serde(rename = "IPAddress", default)]
    ip_address: String,
}

/// A podman time; Go's zero time (`0001-01-01T00:00:00Z`) is none.
fn timestamp(text: &str) -> Option<Timestamp> {
    text.parse::<Timestamp>().ok().filter(|t| t.as_second() > 0)
}

/// Inspects container `name`.
pub async fn inspect(name: &str) -> anyhow::Result<Inspected> {
    let out = podman_async_ok(&["container", "inspect", name]).await?;
    let mut parsed: Vec<RawInspect> =
        serde_json::from_str(&out).with_context(|| format!("parsing podman inspect {name}"))?;
    let raw = parsed
        .pop()
        .with_context(|| format!("podman inspect {name} returned nothing"))?;
    Ok(Inspected {
        id: raw.id,
        image_id: raw.image,
        exit_code: raw.state.exit_code,
        oom_killed: raw.state.oom_killed,
        started_at: timestamp(&raw.state.started_at),
        finished_at: timestamp(&raw.state.finished_at),
        ip: raw.network_settings.and_then(|n| n.ip_address.parse().ok()),
    })
}

/// Runs `podman ARGS` (a `run` made by [`super::container::run_args`]).
pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_async_ok(&args).await.map(drop)
}

/// Starts an exited container again (a restart: same container, same mounts and logs).
pub async fn start(name: &str) -> anyhow::Result<()> {
    podman_async_ok(&["start", name]).await.map(drop)
}

/// Waits until container `name` exits; its exit code.
pub async fn wait(name: &str) -> anyhow::Result<i32> {
    let out = podman_async_ok(&["wait", name]).await?;
    out.trim()
        .parse()
        .with_context(|| format!("podman wait {name} printed {out:?}"))
}

/// Stops container `name`: its stop signal (SIGTERM), then SIGKILL after `grace_seconds`.
pub async fn stop(name: &str, grace_seconds: u32) -> anyhow::Result<()> {
    podman_async_ok(&["stop", "--time", &grace_seconds.to_string(), name])
        .await
        .map(drop)
}

/// Removes container `name`, killing it if it still runs; an absent container is fine.
pub async fn remove(name: &str) -> anyhow::Result<()> {
    let output = podman_async(&["rm", "--force", "--time", "0", name]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || stderr.contains("no such container") {
        Ok(())
    } else {
        bail!("podman rm {name} failed: {stderr}")
    }
}

/// Runs `command` in container `name`; whether it exited 0 (an exec probe).
pub async fn exec(name: &str, command: &[String]) -> anyhow::Result<bool> {
    let mut args = vec!["exec", name];
    args.extend(command.iter().map(String::as_str));
    Ok(podman_async(&args).await?.status.success())
}

/// Container `name`'s logs so far (stdout, then stderr).
pub async fn logs(name: &str) -> String {
    match podman_async(&["logs", name]).await {
        Ok(output) => joined(&output),
        Err(err) => format!("(no logs: {err:#})"),
    }
}

/// [`logs`], blocking (for `Drop`).
pub fn logs_blocking(name: &str) -> String {
    match podman(&["logs", name]) {
        Ok(output) => joined(&output),
        Err(err) => format!("(no logs: {err:#})"),
    }
}

fn joined(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The user an image runs as (its `USER`), for the `runAsNonRoot` check.
pub async fn image_user(image: &str) -> anyhow::Result<String> {
    let out = podman_async_ok(&["image", "inspect", "--format", "{{.Config.User}}", image])
        .await
        .with_context(|| {
            format!("image {image} is not in the local store (scripts/build-images.sh builds metahook's)")
        })?;
    Ok(out.trim().to_owned())
}

/// The gateway of podman's bridge network: the host's address as containers see it (the
/// node's address, and every pod's hostIP).
pub async fn bridge_gateway() -> anyhow::Result<String> {
    let out = podman_async_ok(&["network", "inspect", "podman"]).await?;
    let parsed: serde_json::Value =
        serde_json::from_str(&out).context("parsing podman network inspect")?;
    parsed[0]["subnets"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| s["gateway"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("podman's bridge network has no gateway: {out}"))
}

/// Names of the containers labelled `label=value`.
pub fn labelled_blocking(label: &str, value: &str) -> anyhow::Result<Vec<String>> {
    let output = podman(&[
        "ps",
        "--all",
        "--filter",
        &format!("label={label}={value}"),
        "--format",
        "{{.Names}}",
    ])?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Removes (blocking) the containers labelled `label=value`.
pub fn remove_labelled_blocking(label: &str, value: &str) -> anyhow::Result<Vec<String>> {
    let names = labelled_blocking(label, value)?;
    for name in &names {
        let _ = podman(&["rm", "--force", "--time", "0", name]);
    }
    Ok(names)
}

/// Removes the containers of harnesses whose test binary is gone (killed before it could
/// clean up); those of live processes are left alone.
pub fn remove_orphans() -> anyhow::Result<()> {
    let output = podman(&[
        "ps",
        "--all",
        "--filter",
        &format!("label={OWNER_LABEL}"),
        "--format",
        &format!("{{{{.Names}}}} {{{{index .Labels \"{OWNER_LABEL}\"}}}}"),
    ])?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((name, owner)) = line.split_once(' ') else {
            continue;
        };
        let alive = owner
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = podman(&["rm", "--force", "--time", "0", name]);
        }
    }
    Ok(())
}
