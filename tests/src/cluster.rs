//! A real Kubernetes control plane for the end-to-end tests, and the operator run against
//! it as a local process.
//!
//! [`Cluster::shared`] starts one etcd + kube-apiserver + kube-controller-manager per test
//! binary with `scripts/kube-apiserver.sh` (built by scripts/test.sh through
//! scripts/install-tools.sh), or uses the cluster of `METAHOOK_KUBECONFIG` when set (a
//! developer iterating on a test keeps one running: `scripts/kube-apiserver.sh start DIR`).
//! Tests share it and isolate themselves by namespace: each creates its own namespaces and
//! runs its own operator restricted to them (`--namespace`), so they can run in parallel.
//!
//! A cluster that cannot start is an error naming the reason (usually: the binaries are not
//! built, and how to build them): the suite never skips these tests silently.
//!
//! The kube [`Client`] is made per test ([`Cluster::client`]): a client is bound to the
//! tokio runtime that made it, and every `#[tokio::test]` has its own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::tools::repo_root;

/// A running control plane (or one given by `METAHOOK_KUBECONFIG`).
#[derive(Debug)]
pub struct Cluster {
    kubeconfig: PathBuf,
    /// The state directory of a cluster this process started (stopped on drop); `None` for
    /// one given by `METAHOOK_KUBECONFIG`.
    started: Option<tempfile::TempDir>,
}

impl Cluster {
    /// The cluster of this test binary, started on first use. Its processes stop when the
    /// test binary exits (the start script watches this process; statics are never dropped).
    pub fn shared() -> Result<&'static Cluster> {
        static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Cluster::start().map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| anyhow::anyhow!("the test cluster did not start: {err}"))
    }

    /// Starts a cluster of its own (stopped on drop), or returns the one of
    /// `METAHOOK_KUBECONFIG`.
    pub fn start() -> Result<Cluster> {
        if let Some(path) = std::env::var_os("METAHOOK_KUBECONFIG") {
            let kubeconfig = PathBuf::from(path);
            if !kubeconfig.is_file() {
                bail!("METAHOOK_KUBECONFIG={} is not a file", kubeconfig.display());
            }
            return Ok(Cluster {
                kubeconfig,
                started: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("metahook-kube-")
            .tempdir()
            .context("creating the cluster's state directory")?;
        let started = Instant::now();
        let output = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            // The script's watchdog stops the cluster when this process is gone, however
            // it ends (a shared cluster lives in a static, which is never dropped).
            .env("METAHOOK_KUBE_OWNER_PID", std::process::id().to_string())
            .env("METAHOOK_KUBE_REMOVE", "1")
            .stdin(Stdio::null())
            .output()
            .context("running scripts/kube-apiserver.sh start")?;
        if !output.status.success() {
            bail!(
                "scripts/kube-apiserver.sh start failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        println!(
            "test cluster started in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            dir.path().display()
        );
        Ok(Cluster {
            kubeconfig: dir.path().join("kubeconfig"),
            started: Some(dir),
        })
    }

    /// The admin kubeconfig (system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state directory (logs of etcd, kube-apiserver, kube-controller-manager), when
    /// this process started the cluster.
    pub fn dir(&self) -> Option<&Path> {
        self.started.as_ref().map(tempfile::TempDir::path)
    }

    /// A client with the admin kubeconfig.
    pub async fn client(&self) -> Result<Client> {
        client_for(&self.kubeconfig).await
    }

    /// Writes to `path` a kubeconfig for this cluster that authenticates with `token`
    /// (e.g. a ServiceAccount's, so an operator run with it meets RBAC as in a pod).
    pub fn kubeconfig_with_token(&self, token: &str, path: &Path) -> Result<PathBuf> {
        let mut config = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        if config.auth_infos.is_empty() {
            bail!("{} has no user to replace", self.kubeconfig.display());
        }
        for user in &mut config.auth_infos {
            let auth = kube::config::AuthInfo {
                token: Some(token.to_owned().into()),
                ..kube::config::AuthInfo::default()
            };
            user.auth_info = Some(auth);
        }
        let yaml = serde_saphyr::to_string(&config).context("serializing the kubeconfig")?;
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.started {
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(dir.path())
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// A token of ServiceAccount `namespace/name` from the TokenRequest API (valid one hour),
/// as the kubelet gets one for a pod's projected service-account volume: an operator run
/// with it meets the same RBAC as in a pod. The API exists since 1.20 on every cluster,
/// where the legacy token Secrets are no longer created since 1.24.
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;

    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let answer = api
        .create_token_request(name, &kube::api::PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token of ServiceAccount {namespace}/{name}"))?;
    answer
        .status
        .map(|status| status.token)
        .filter(|token| !token.is_empty())
        .with_context(|| format!("the TokenRequest for {namespace}/{name} returned no token"))
}

/// A client for the cluster of a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let parsed = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("using {}", kubeconfig.display()))?;
    Client::try_from(config).context("making a kube client")
}

fn script() -> PathBuf {
    repo_root().join("scripts/kube-apiserver.sh")
}

/// The `metahook-operator` binary of this build (scripts/test.sh builds every binary
/// before the tests), or `METAHOOK_OPERATOR_BIN`.
pub fn operator_bin() -> Result<PathBuf> {
    crate::testkit::workspace_bin("metahook-operator", "METAHOOK_OPERATOR_BIN")
}

/// `metahook-operator` running as a local process (as the README's "without a cluster
/// image registry" does), logging text into a file; killed on drop.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Runs the operator with the admin kubeconfig on `namespaces` only, without leader
    /// election.
    pub fn start(cluster: &Cluster, namespaces: &[&str]) -> Result<Operator> {
        let mut args = vec!["--no-leader-election".to_owned()];
        if !namespaces.is_empty() {
            args.push(format!("--namespace={}", namespaces.join(",")));
        }
        Operator::start_with(cluster.kubeconfig(), &args)
    }

    /// Runs the operator with `kubeconfig` (e.g. one holding a ServiceAccount's token) and
    /// `args`, plus the flags every test run wants: metrics on an ephemeral loopback port,
    /// text logs, and debug logs of the operator's own crate (one "reconciled" line per
    /// successful pass, which the tests count).
    pub fn start_with(kubeconfig: &Path, args: &[String]) -> Result<Operator> {
        let bin = operator_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("metahook-operator-")
            .tempdir()
            .context("creating the operator's directory")?;
        let log = dir.path().join("operator.log");
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stderr = file.try_clone().context("duplicating the log file")?;
        let child = Command::new(&bin)
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,metahook_operator=debug")
            .env("NO_COLOR", "1")
            .env_remove("WATCH_NAMESPACE")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Operator {
            child,
            log,
            _dir: dir,
        })
    }

    /// Everything the operator logged so far (ANSI colour codes removed).
    pub fn log(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => strip_ansi(&String::from_utf8_lossy(&bytes)),
            Err(err) => format!("(cannot read {}: {err})", self.log.display()),
        }
    }

    /// Log lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_owned)
            .collect()
    }

    /// Fails when the process has exited (with its log).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling the operator")? {
            bail!(
                "the operator exited with {status}; its log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if self
            .child
            .try_wait()
            .context("polling the operator")?
            .is_none()
        {
            self.child.kill().context("killing the operator")?;
        }
        self.child.wait().context("waiting for the operator")?;
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for end in chars.by_ref() {
                if end.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `check` every 200 ms until it yields a value, or fails after `timeout` with
/// `what`, the last error or observation, and the operator's log when given: the message
/// a failing end-to-end test needs.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    operator: Option<&Operator>,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(no observation)");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if Instant::now() > deadline {
            let log = operator.map_or_else(String::new, |op| {
                format!("\n--- operator log:\n{}", op.log())
            });
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m hi"),
            "2026  INFO hi"
        );
    }
}
