//! Containers run with podman, as the image and end-to-end tests run the receiver image:
//! on the vfs storage buildah wrote the images to (scripts/build-images.sh), with runc
//! (crun fails on this host's hybrid cgroups).

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::tools;

/// The storage driver and runtime of this host, before every podman command.
const HOST_FLAGS: [&str; 4] = ["--storage-driver", "vfs", "--runtime", "runc"];

/// `podman ARGS` with the storage driver and runtime of this host; the caller judges the
/// exit status.
pub fn podman(args: &[&str]) -> Result<Output> {
    let program = tools::find("podman")?;
    Command::new(&program)
        .args(HOST_FLAGS)
        .args(args)
        .output()
        .with_context(|| format!("starting {}", program.display()))
}

/// [`podman`] without blocking the runtime (the kubelet harness runs many at once); the
/// caller judges the exit status. The process is left to finish if the future is dropped:
/// podman holds locks a killed client would leave behind.
pub async fn podman_async(args: &[&str]) -> Result<Output> {
    let program = tools::find("podman")?;
    tokio::process::Command::new(&program)
        .args(HOST_FLAGS)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("starting {}", program.display()))
}

/// [`podman_async`], failing with its output when it exits non-zero; returns its stdout.
pub async fn podman_async_ok(args: &[&str]) -> Result<String> {
    let output = podman_async(args).await?;
    if !output.status.success() {
        bail!(
            "`podman {}` failed with {}: {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// [`podman`], failing with its output when it exits non-zero; returns its stdout.
pub fn podman_ok(args: &[&str]) -> Result<String> {
    let all: Vec<&str> = HOST_FLAGS.iter().chain(args).copied().collect();
    let output = tools::run("podman", &all)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A container removed when dropped (pass or fail), its logs printed first: the test
/// harness shows them when the test fails.
#[derive(Debug)]
pub struct Container {
    /// The container's name.
    pub name: String,
}

impl Container {
    /// Its logs so far (stdout and stderr).
    pub fn logs(&self) -> String {
        match podman(&["logs", &self.name]) {
            Ok(output) => format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(err) => format!("(no logs: {err:#})"),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        println!("--- logs of container {}:\n{}", self.name, self.logs());
        let _ = podman(&["rm", "--force", "--time", "2", &self.name]);
    }
}
