//! A pod's volumes as host directories, made as the kubelet makes them: ConfigMap, Secret,
//! downward API and projected volumes written from the API server's objects with their
//! modes and the pod's fsGroup; emptyDirs per pod; and every PersistentVolumeClaim as one
//! directory per claim name under the harness's claims directory, so what a pod wrote on a
//! claim is there again for the next pod (or Job) that mounts the same claim, as on a real
//! volume.
//!
//! No provisioner runs in the test cluster, so claims stay Pending; the harness only
//! requires the claim to exist (the kubelet waits for it too) and gives its directory the
//! fsGroup ownership the kubelet gives a volume that supports it.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolumeClaim, Pod, PodSpec, Secret,
    ServiceAccount,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use super::Setup;

/// A volume's directory on the host, and whether every mount of it is read-only (the
/// kubelet mounts ConfigMap, Secret, downward API and projected volumes read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    /// The directory bind-mounted into the container.
    pub dir: PathBuf,
    /// Mounted read-only whatever the volumeMount says.
    pub read_only: bool,
}

/// Whether a pass makes the volumes (before the container starts) or refreshes the
/// API-backed ones while it runs (the kubelet's periodic sync: a rotated Secret reaches
/// the files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Every volume.
    Initial,
    /// ConfigMap, Secret, downward API and projected volumes only.
    Refresh,
}

/// Makes (or refreshes) the volumes of `pod`: per-pod ones under `pod_dir`, claims under
/// `claims_dir`. A missing object is [`Setup::Wait`] (the kubelet retries), a kind of
/// volume the harness cannot make is [`Setup::Fail`].
pub async fn materialize(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    claims_dir: &Path,
    pass: Pass,
) -> Result<BTreeMap<String, HostVolume>, Setup> {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Setup::Fail(anyhow!("the pod has no spec")))?;
    let fs_group = fs_group(spec).map_err(Setup::Fail)?;
    let sources = Sources {
        client,
        namespace: &namespace,
        pod,
    };
    let mut volumes = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let what = |kind: &str| format!("volume {} ({kind})", volume.name);
        let api_backed = volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.projected.is_some()
            || volume.downward_api.is_some();
        if pass == Pass::Refresh && !api_backed {
            continue;
        }
        if let Some(claim) = &volume.persistent_volume_claim {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
            let found = claims.get_opt(&claim.claim_name).await.map_err(|err| {
                Setup::Wait(anyhow!(err).context(format!(
                    "reading the claim of {}",
                    what("persistentVolumeClaim")
                )))
            })?;
            if found.is_none() {
                return Err(Setup::Wait(anyhow!(
                    "{}: PersistentVolumeClaim {} does not exist",
                    what("persistentVolumeClaim"),
                    claim.claim_name
                )));
            }
            let dir = claims_dir.join(&claim.claim_name);
            claim_dir(&dir, fs_group, spec).map_err(Setup::Fail)?;
            volumes.insert(
                volume.name.clone(),
                HostVolume {
                    dir,
                    read_only: claim.read_only == Some(true),
                },
            );
            continue;
        }
        make_dir(&dir).map_err(Setup::Fail)?;
        if volume.empty_dir.is_some() {
            // World-writable, group fsGroup with setgid, as the kubelet makes an emptyDir.
            set_mode(&dir, 0o2777).map_err(Setup::Fail)?;
            if let Some(group) = fs_group {
                chown_group(&dir, group).map_err(Setup::Fail)?;
            }
            volumes.insert(
                volume.name.clone(),
                HostVolume {
                    dir,
                    read_only: false,
                },
            );
            continue;
        }
        if let Some(source) = &volume.config_map {
            if let Some(data) = sources
                .config_map(&source.name, source.optional == Some(true))
                .await?
            {
                write_items(
                    &dir,
                    &data,
                    source.items.as_deref(),
                    source.default_mode.unwrap_or(0o644),
                    fs_group,
                    &format!("ConfigMap {}", source.name),
                )?;
            }
        } else if let Some(source) = &volume.secret {
            let name = source
                .secret_name
                .clone()
                .ok_or_else(|| Setup::Fail(anyhow!("{}: no secretName", what("secret"))))?;
            if let Some(data) = sources.secret(&name, source.optional == Some(true)).await? {
                write_items(
                    &dir,
                    &data,
                    source.items.as_deref(),
                    source.default_mode.unwrap_or(0o644),
                    fs_group,
                    &format!("Secret {name}"),
                )?;
            }
        } else if let Some(source) = &volume.downward_api {
            let files = downward_files(pod, source.items.as_deref().unwrap_or_default())
                .map_err(|err| Setup::Fail(err.context(what("downwardAPI"))))?;
            write_files(&dir, &files, source.default_mode.unwrap_or(0o644), fs_group)?;
        } else if let Some(projected) = &volume.projected {
            let mode = projected.default_mode.unwrap_or(0o644);
            for source in projected.sources.iter().flatten() {
                if let Some(secret) = &source.secret {
                    if let Some(data) = sources
                        .secret(&secret.name, secret.optional == Some(true))
                        .await?
                    {
                        write_items(
                            &dir,
                            &data,
                            secret.items.as_deref(),
                            mode,
                            fs_group,
                            &format!("Secret {}", secret.name),
                        )?;
                    }
                } else if let Some(config_map) = &source.config_map {
                    if let Some(data) = sources
                        .config_map(&config_map.name, config_map.optional == Some(true))
                        .await?
                    {
                        write_items(
                            &dir,
                            &data,
                            config_map.items.as_deref(),
                            mode,
                            fs_group,
                            &format!("ConfigMap {}", config_map.name),
                        )?;
                    }
                } else if let Some(downward) = &source.downward_api {
                    let files = downward_files(pod, downward.items.as_deref().unwrap_or_default())
                        .map_err(|err| Setup::Fail(err.context(what("projected downwardAPI"))))?;
                    write_files(&dir, &files, mode, fs_group)?;
                } else if let Some(token) = &source.service_account_token {
                    if pass == Pass::Refresh {
                        // Valid for its expiration (an hour by default): longer than a test.
                        continue;
                    }
                    let value = sources
                        .token(token.audience.as_deref(), token.expiration_seconds)
                        .await?;
                    let files = BTreeMap::from([(token.path.clone(), (value.into_bytes(), None))]);
                    write_files(&dir, &files, mode, fs_group)?;
                } else {
                    return Err(Setup::Fail(anyhow!(
                        "{}: a projection the harness does not make: {source:?}",
                        what("projected")
                    )));
                }
            }
        } else {
            return Err(Setup::Fail(anyhow!(
                "volume {} is of a kind the harness does not make (configMap, secret, \
                 projected, downwardAPI, emptyDir and persistentVolumeClaim are): {volume:?}",
                volume.name
            )));
        }
        open_dirs(&dir).map_err(Setup::Fail)?;
        volumes.insert(
            volume.name.clone(),
            HostVolume {
                dir,
                read_only: true,
            },
        );
    }
    Ok(volumes)
}

/// The pod's fsGroup as a host group id.
fn fs_group(spec: &PodSpec) -> anyhow::Result<Option<u32>> {
    spec.security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(u32::try_from)
        .transpose()
        .context("securityContext.fsGroup is not a group id")
}

/// The objects volumes are made from.
struct Sources<'a> {
    client: &'a Client,
    namespace: &'a str,
    pod: &'a Pod,
}

impl Sources<'_> {
    /// A ConfigMap's data and binaryData; `None` when it is absent and optional.
    async fn config_map(
        &self,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Setup> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
        let found = api.get_opt(name).await.map_err(|err| {
            Setup::Wait(anyhow!(err).context(format!("reading ConfigMap {name}")))
        })?;
        let Some(config_map) = found else {
            return absent("ConfigMap", name, optional);
        };
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
        Ok(Some(data))
    }

    /// A Secret's data; `None` when it is absent and optional.
    async fn secret(
        &self,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Setup> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(|err| Setup::Wait(anyhow!(err).context(format!("reading Secret {name}"))))?;
        let Some(secret) = found else {
            return absent("Secret", name, optional);
        };
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
        Ok(Some(data))
    }

    /// A token of the pod's ServiceAccount from the TokenRequest API, as the kubelet gets
    /// one for a projected serviceAccountToken.
    async fn token(
        &self,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> Result<String, Setup> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
                expiration_seconds: Some(expiration.unwrap_or(3600)),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), self.namespace);
        let answer = api
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(|err| {
                Setup::Wait(anyhow!(err).context(format!(
                    "requesting a token of ServiceAccount {}/{account}",
                    self.namespace
                )))
            })?;
        answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Setup::Wait(anyhow!("the TokenRequest for {account} returned no token")))
    }
}

fn absent<T>(kind: &str, name: &str, optional: bool) -> Result<Option<T>, Setup> {
    if optional {
        Ok(None)
    } else {
        Err(Setup::Wait(anyhow!("{kind} {name} does not exist")))
    }
}

/// File contents by relative path, each with its own mode if it has one.
type Files = BTreeMap<String, (Vec<u8>, Option<i32>)>;

/// Writes `data[item.key]` to `dir/item.path` (all keys when `items` is None), with `mode`
/// and group `fs_group`, as the kubelet writes ConfigMap, Secret and projected volumes.
fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    fs_group: Option<u32>,
    source: &str,
) -> Result<(), Setup> {
    let mut files = Files::new();
    match items {
        None => {
            for (key, value) in data {
                files.insert(key.clone(), (value.clone(), None));
            }
        }
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| Setup::Wait(anyhow!("{source} has no key {}", item.key)))?;
                files.insert(item.path.clone(), (value.clone(), item.mode));
            }
        }
    }
    write_files(dir, &files, default_mode, fs_group)
}

/// Writes `files` under `dir`, each replaced atomically (a running container sees the old
/// content or the new, never half of it).
fn write_files(
    dir: &Path,
    files: &Files,
    default_mode: i32,
    fs_group: Option<u32>,
) -> Result<(), Setup> {
    for (relative, (value, mode)) in files {
        let relative = Path::new(relative);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Setup::Fail(anyhow!(
                "volume file path {} leaves the volume",
                relative.display()
            )));
        }
        let path = dir.join(relative);
        let wanted_mode = u32::try_from(mode.unwrap_or(default_mode)).unwrap_or(0o644);
        let unchanged = std::fs::metadata(&path).is_ok_and(|meta| {
            meta.mode() & 0o7777 == wanted_mode && fs_group.is_none_or(|g| meta.gid() == g)
        }) && std::fs::read(&path).is_ok_and(|current| current == *value);
        if unchanged {
            // A refresh rewrites nothing: a container watching its files sees no change.
            continue;
        }
        let write = || -> anyhow::Result<()> {
            let parent = path.parent().unwrap_or(dir);
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let staging = parent.join(format!(".{file_name}.staging"));
            std::fs::write(&staging, value)
                .with_context(|| format!("writing {}", staging.display()))?;
            let mode =
                u32::try_from(mode.unwrap_or(default_mode)).context("a negative file mode")?;
            set_mode(&staging, mode)?;
            if let Some(group) = fs_group {
                chown_group(&staging, group)?;
            }
            std::fs::rename(&staging, &path)
                .with_context(|| format!("renaming {} to {}", staging.display(), path.display()))
        };
        write().map_err(Setup::Fail)?;
    }
    Ok(())
}

/// The files of downward API items: the pod's name, namespace, uid, labels or annotations.
fn downward_files(pod: &Pod, items: &[DownwardAPIVolumeFile]) -> anyhow::Result<Files> {
    let mut files = Files::new();
    for item in items {
        let field = item
            .field_ref
            .as_ref()
            .with_context(|| format!("{}: only fieldRef items are made", item.path))?;
        let value = match field.field_path.as_str() {
            "metadata.labels" => map_file(pod.labels()),
            "metadata.annotations" => map_file(pod.annotations()),
            path => super::env::field_value(pod, path, None)?,
        };
        files.insert(item.path.clone(), (value.into_bytes(), item.mode));
    }
    Ok(files)
}

/// Labels or annotations as the downward API writes them: `key="value"` lines, sorted.
fn map_file(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={}", serde_json::Value::from(value.as_str())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A claim's directory: created on first use (world-writable without fsGroup, as the
/// usual local provisioners make theirs), then given the pod's fsGroup recursively as the
/// kubelet does on every mount (group owner, group read-write, setgid directories) unless
/// `fsGroupChangePolicy: OnRootMismatch` finds the root already right.
fn claim_dir(dir: &Path, fs_group: Option<u32>, spec: &PodSpec) -> anyhow::Result<()> {
    if !dir.exists() {
        make_dir(dir)?;
        set_mode(dir, if fs_group.is_some() { 0o755 } else { 0o777 })?;
    }
    let Some(group) = fs_group else {
        return Ok(());
    };
    let on_root_mismatch = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group_change_policy.as_deref())
        == Some("OnRootMismatch");
    if on_root_mismatch {
        let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        if meta.gid() == group && meta.mode() & 0o2070 == 0o2070 {
            return Ok(());
        }
    }
    set_ownership(dir, group)
}

/// The kubelet's SetVolumeOwnership: every file and directory gets group `group`, group
/// read-write, and directories group search and setgid.
fn set_ownership(path: &Path, group: u32) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    chown_group(path, group)?;
    let mut mode = meta.mode() & 0o7777 | 0o660;
    if meta.is_dir() {
        mode |= 0o2110;
    }
    set_mode(path, mode)?;
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            set_ownership(&entry.path(), group)?;
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Root owns the file, `group` is its group (the kubelet runs as root).
fn chown_group(path: &Path, group: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(group))
        .with_context(|| format!("chown :{group} {}", path.display()))
}

/// Directories of a volume: readable and searchable by everyone, as the kubelet makes them.
fn open_dirs(dir: &Path) -> anyhow::Result<()> {
    set_mode(dir, 0o755)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry
            .file_type()
            .with_context(|| format!("stat {}", entry.path().display()))?
            .is_dir()
        {
            open_dirs(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_as_quoted_sorted_lines() {
        let map = BTreeMap::from([
            ("b".to_owned(), "two \"quoted\"".to_owned()),
            ("a".to_owned(), "one".to_owned()),
        ]);
        assert_eq!(map_file(&map), "a=\"one\"\nb=\"two \\\"quoted\\\"\"");
    }

    #[test]
    fn a_claim_gets_the_fs_group_recursively_and_keeps_its_data() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("spool-receiver-0");
        let spec = PodSpec::default();
        claim_dir(&dir, Some(4242), &spec)?;
        std::fs::create_dir(dir.join("segments"))?;
        std::fs::write(dir.join("segments/0001"), b"event")?;
        set_mode(&dir.join("segments/0001"), 0o600)?;
        // The next pod mounting the claim finds the data, group-owned and group-writable.
        claim_dir(&dir, Some(4242), &spec)?;
        assert_eq!(std::fs::read(dir.join("segments/0001"))?, b"event");
        for (path, mode) in [
            (dir.clone(), 0o2775),
            (dir.join("segments"), 0o2775),
            (dir.join("segments/0001"), 0o660),
        ] {
            let meta = std::fs::metadata(&path)?;
            assert_eq!(meta.gid(), 4242, "{}", path.display());
            assert_eq!(meta.mode() & 0o7777, mode, "{}", path.display());
        }
        let open = root.path().join("no-fs-group");
        claim_dir(&open, None, &spec)?;
        assert_eq!(std::fs::metadata(&open)?.mode() & 0o7777, 0o777);
        Ok(())
    }

    #[test]
    fn items_are_written_with_their_modes_and_may_not_leave_the_volume() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = BTreeMap::from([
            ("app-secret".to_owned(), b"s3cret".to_vec()),
            ("other".to_owned(), b"x".to_vec()),
        ]);
        let items = [KeyToPath {
            key: "app-secret".to_owned(),
            path: "meta-app/app-secret".to_owned(),
            mode: None,
        }];
        assert!(
            write_items(
                dir.path(),
                &data,
                Some(&items),
                0o440,
                Some(4242),
                "Secret s"
            )
            .is_ok()
        );
        let file = dir.path().join("meta-app/app-secret");
        assert_eq!(std::fs::read(&file)?, b"s3cret");
        let meta = std::fs::metadata(&file)?;
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o440, 4242));
        assert!(!dir.path().join("other").exists());
        let escaping = [KeyToPath {
            key: "other".to_owned(),
            path: "../escaped".to_owned(),
            mode: None,
        }];
        assert!(matches!(
            write_items(dir.path(), &data, Some(&escaping), 0o644, None, "Secret s"),
            Err(Setup::Fail(_))
        ));
        let missing = [KeyToPath {
            key: "absent".to_owned(),
            path: "absent".to_owned(),
            mode: None,
        }];
        assert!(matches!(
            write_items(dir.path(), &data, Some(&missing), 0o644, None, "Secret s"),
            Err(Setup::Wait(_))
        ));
        Ok(())
    }
}
