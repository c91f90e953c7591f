//! The `podman run` that runs a pod's container as the kubelet would run it: image,
//! command and args (with `$(VAR)` expansion), environment, working directory, volume
//! mounts, the termination message file, resources and the security context (the
//! container's fields over the pod's). Pure: the worker resolves the environment and makes
//! the volumes first. What cannot be translated faithfully is refused with the field's
//! name, never silently dropped.
//!
//! The container gets an address on podman's bridge network (the pod IP); no port is
//! published: the host reaches the container's ports at that address.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::env::expand;
use super::volumes::HostVolume;

/// Where the termination message file is mounted when the container does not say.
pub const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

/// Everything a container's `podman run` is made from.
#[derive(Debug)]
pub struct RunSpec<'a> {
    /// The podman container's name (unique per pod uid).
    pub name: &'a str,
    /// Labels of the podman container (the harness finds its containers by them).
    pub labels: &'a [(String, String)],
    /// The pod's hostname (`spec.hostname`, else its name).
    pub hostname: &'a str,
    /// The pod.
    pub pod: &'a PodSpec,
    /// The container.
    pub container: &'a Container,
    /// The resolved environment, in order.
    pub env: &'a [(String, String)],
    /// The pod's volumes by name.
    pub volumes: &'a BTreeMap<String, HostVolume>,
    /// The host file mounted at the termination message path.
    pub termination_log: &'a Path,
    /// The image's configured user (`podman image inspect`), for `runAsNonRoot`.
    pub image_user: &'a str,
}

/// The arguments of `podman run` (without the host's storage and runtime flags).
pub fn run_args(spec: &RunSpec<'_>) -> anyhow::Result<Vec<String>> {
    let container = spec.container;
    let pod = spec.pod;
    ensure!(
        pod.host_network != Some(true),
        "hostNetwork pods are not run"
    );
    ensure!(pod.host_pid != Some(true), "hostPID pods are not run");
    ensure!(pod.host_ipc != Some(true), "hostIPC pods are not run");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        format!("--name={}", spec.name),
        // Images come from the local store (scripts/build-images.sh); nothing is pulled.
        "--pull=never".into(),
        "--network=bridge".into(),
        format!("--hostname={}", spec.hostname),
    ];
    for (key, value) in spec.labels {
        args.push(format!("--label={key}={value}"));
    }
    security_args(spec, &mut args)?;
    resource_args(container, &mut args)?;
    for (name, value) in spec.env {
        args.push(format!("--env={name}={value}"));
    }
    if let Some(dir) = &container.working_dir {
        args.push(format!("--workdir={dir}"));
    }
    for mount in container.volume_mounts.iter().flatten() {
        ensure!(
            mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
            "volumeMount {}: subPath is not translated",
            mount.name
        );
        let volume = spec
            .volumes
            .get(&mount.name)
            .with_context(|| format!("volumeMount of unknown volume {}", mount.name))?;
        let mode = if volume.read_only || mount.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        };
        args.push(format!(
            "--volume={}:{}:{mode}",
            volume.dir.display(),
            mount.mount_path
        ));
    }
    let termination_path = container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_PATH);
    args.push(format!(
        "--volume={}:{termination_path}:rw",
        spec.termination_log.display()
    ));
    let expanded = |list: &Option<Vec<String>>| -> Option<Vec<String>> {
        list.as_ref()
            .map(|items| items.iter().map(|item| expand(item, spec.env)).collect())
    };
    let command = expanded(&container.command);
    if let Some(command) = &command {
        // podman drops the image's CMD with --entrypoint, as Kubernetes drops it when a
        // command is given.
        args.push(format!("--entrypoint={}", serde_json::to_string(command)?));
    }
    args.push(
        container
            .image
            .clone()
            .context("the container has no image")?,
    );
    args.extend(expanded(&container.args).unwrap_or_default());
    Ok(args)
}

/// The security context: user and groups, read-only root, privilege escalation,
/// capabilities and seccomp (podman's default profile is the runtime default).
fn security_args(spec: &RunSpec<'_>, args: &mut Vec<String>) -> anyhow::Result<()> {
    let pod_security = spec.pod.security_context.clone().unwrap_or_default();
    let security = spec.container.security_context.clone().unwrap_or_default();
    let user = security.run_as_user.or(pod_security.run_as_user);
    let group = security.run_as_group.or(pod_security.run_as_group);
    let non_root = security.run_as_non_root.or(pod_security.run_as_non_root);
    if non_root == Some(true) {
        match user {
            Some(0) => bail!("runAsNonRoot with runAsUser 0"),
            Some(_) => {}
            None => {
                // The kubelet's check of the image's user.
                let image_user = spec.image_user.split(':').next().unwrap_or_default();
                match image_user.parse::<u32>() {
                    Ok(0) => bail!("container has runAsNonRoot and image will run as root"),
                    Ok(_) => {}
                    Err(_) => bail!(
                        "container has runAsNonRoot and image has non-numeric user ({}), \
                         cannot verify user is non-root",
                        spec.image_user
                    ),
                }
            }
        }
    }
    if let Some(user) = user {
        args.push(match group {
            Some(group) => format!("--user={user}:{group}"),
            None => format!("--user={user}"),
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
    match seccomp.as_ref().map(|s| s.type_.as_str()) {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".into()),
        Some(other) => bail!("seccompProfile {other} is not translated"),
    }
    if security.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts no tmpfs on /tmp and /run for a read-only root; podman would.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if security.allow_privilege_escalation == Some(false) {
        args.push("--security-opt=no-new-privileges".into());
    }
    ensure!(
        security.privileged != Some(true),
        "privileged containers are not run"
    );
    if let Some(capabilities) = &security.capabilities {
        for drop in capabilities.drop.iter().flatten() {
            args.push(format!("--cap-drop={drop}"));
        }
        for add in capabilities.add.iter().flatten() {
            args.push(format!("--cap-add={add}"));
        }
    }
    Ok(())
}

/// Limits as podman enforces them: memory and CPU (requests only matter to a scheduler).
fn resource_args(container: &Container, args: &mut Vec<String>) -> anyhow::Result<()> {
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    if let Some(memory) = limits.and_then(|l| l.get("memory")) {
        args.push(format!("--memory={}", memory_bytes(&memory.0)?));
    }
    if let Some(cpu) = limits.and_then(|l| l.get("cpu")) {
        args.push(format!("--cpus={}", cpus(&cpu.0)?));
    }
    Ok(())
}

/// A memory quantity (`256Mi`, `1G`, `1048576`) in bytes.
fn memory_bytes(quantity: &str) -> anyhow::Result<u64> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| quantity.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((quantity, 1));
    let number: u64 = number
        .parse()
        .with_context(|| format!("memory limit {quantity} is not translated"))?;
    Ok(number * unit)
}

/// A CPU quantity (`500m`, `2`, `1.5`) as podman's `--cpus`.
fn cpus(quantity: &str) -> anyhow::Result<String> {
    let value = match quantity.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().map(|m| m / 1000.0),
        None => quantity.parse::<f64>(),
    }
    .with_context(|| format!("cpu limit {quantity} is not translated"))?;
    Ok(format!("{value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, PodSecurityContext, ResourceRequirements, SecurityContext, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::path::PathBuf;

    fn hardened() -> (PodSpec, Container) {
        let pod = PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                fs_group: Some(65532),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        };
        let container = Container {
            name: "receiver".to_owned(),
            image: Some("localhost/metahook-receiver:0.1.0".to_owned()),
            command: Some(vec!["/usr/local/bin/metahook-receiver".to_owned()]),
            args: Some(vec!["--config".to_owned(), "$(CONFIG)".to_owned()]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                ..SecurityContext::default()
            }),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([
                    ("memory".to_owned(), Quantity("256Mi".to_owned())),
                    ("cpu".to_owned(), Quantity("500m".to_owned())),
                ])),
                ..ResourceRequirements::default()
            }),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "config".to_owned(),
                    mount_path: "/etc/metahook/config".to_owned(),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "spool".to_owned(),
                    mount_path: "/var/lib/metahook".to_owned(),
                    ..VolumeMount::default()
                },
            ]),
            termination_message_path: Some("/tmp/done".to_owned()),
            ..Container::default()
        };
        (pod, container)
    }

    #[test]
    fn a_hardened_container_runs_as_the_kubelet_would_run_it() -> anyhow::Result<()> {
        let (pod, container) = hardened();
        let volumes = BTreeMap::from([
            (
                "config".to_owned(),
                HostVolume {
                    dir: PathBuf::from("/h/config"),
                    read_only: true,
                },
            ),
            (
                "spool".to_owned(),
                HostVolume {
                    dir: PathBuf::from("/h/claims/spool-r-0"),
                    read_only: false,
                },
            ),
        ]);
        let env = [(
            "CONFIG".to_owned(),
            "/etc/metahook/config/config.yaml".to_owned(),
        )];
        let labels = [("io.metahook.e2e.kubelet".to_owned(), "node-1".to_owned())];
        let args = run_args(&RunSpec {
            name: "e2e_receiver_r-0_uid",
            labels: &labels,
            hostname: "r-0",
            pod: &pod,
            container: &container,
            env: &env,
            volumes: &volumes,
            termination_log: Path::new("/h/termination"),
            image_user: "65532:65532",
        })?;
        let expected: Vec<String> = [
            "run",
            "--detach",
            "--name=e2e_receiver_r-0_uid",
            "--pull=never",
            "--network=bridge",
            "--hostname=r-0",
            "--label=io.metahook.e2e.kubelet=node-1",
            "--user=65532:65532",
            "--group-add=65532",
            "--read-only",
            "--read-only-tmpfs=false",
            "--security-opt=no-new-privileges",
            "--cap-drop=ALL",
            "--memory=268435456",
            "--cpus=0.5",
            "--env=CONFIG=/etc/metahook/config/config.yaml",
            "--volume=/h/config:/etc/metahook/config:ro",
            "--volume=/h/claims/spool-r-0:/var/lib/metahook:rw",
            "--volume=/h/termination:/tmp/done:rw",
            "--entrypoint=[\"/usr/local/bin/metahook-receiver\"]",
            "localhost/metahook-receiver:0.1.0",
            "--config",
            "/etc/metahook/config/config.yaml",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(args, expected);
        Ok(())
    }

    #[test]
    fn what_cannot_be_translated_is_refused_by_name() {
        let (mut pod, mut container) = hardened();
        let volumes = BTreeMap::new();
        let spec = |pod: &PodSpec, container: &Container, user: &'static str| {
            run_args(&RunSpec {
                name: "c",
                labels: &[],
                hostname: "h",
                pod,
                container,
                env: &[],
                volumes: &volumes,
                termination_log: Path::new("/t"),
                image_user: user,
            })
            .map_err(|e| format!("{e:#}"))
        };
        let err = spec(&pod, &container, "").expect_err("unknown volume");
        assert!(err.contains("unknown volume config"), "{err}");
        container.volume_mounts = None;
        assert!(spec(&pod, &container, "").is_ok());
        if let Some(security) = pod.security_context.as_mut() {
            security.run_as_user = None;
        }
        let err = spec(&pod, &container, "nonroot").expect_err("non-numeric user");
        assert!(err.contains("non-numeric user (nonroot)"), "{err}");
        let err = spec(&pod, &container, "0:0").expect_err("root image");
        assert!(err.contains("will run as root"), "{err}");
        assert!(spec(&pod, &container, "65532:65532").is_ok());
        pod.host_network = Some(true);
        let err = spec(&pod, &container, "65532").expect_err("hostNetwork");
        assert!(err.contains("hostNetwork"), "{err}");
    }

    #[test]
    fn quantities_translate() -> anyhow::Result<()> {
        assert_eq!(memory_bytes("64Mi")?, 64 << 20);
        assert_eq!(memory_bytes("1G")?, 1_000_000_000);
        assert_eq!(memory_bytes("4096")?, 4096);
        assert!(memory_bytes("1.5Gi").is_err());
        assert_eq!(cpus("250m")?, "0.25");
        assert_eq!(cpus("2")?, "2");
        Ok(())
    }
}
