//! The two servers under comparison and how each is launched.
//!
//! Every launch gets a fresh temporary directory holding its secret, its configuration, its
//! logs and (for the receiver) its spool and sink output, so runs cannot influence each other
//! and the disk space is returned as soon as a run ends.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use super::client::Transport;
use super::process::{ServerProcess, free_port};
use super::tls::BenchTls;

/// App secret both servers verify with (invented for the benchmark).
pub const APP_SECRET: &[u8] = b"bench-app-secret-5f0c9a7e21d84b36";

/// Verify token the receiver's configuration requires (unused by the benchmark's POSTs).
const VERIFY_TOKEN: &str = "bench-verify-token-8e41";

/// Hidden flag that turns the bench binary into the baseline server.
pub const BASELINE_FLAG: &str = "--baseline-server";
/// Hidden flag that makes this executable run as the receiver, with a config file.
pub const RECEIVER_FLAG: &str = "--receiver-server";

/// Hidden flag naming the baseline's secret file.
pub const SECRET_FILE_FLAG: &str = "--secret-file";

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// The in-tree minimal server (see `baseline`).
    Baseline,
    /// `metahook-receiver`.
    Receiver,
    /// `metahook-receiver` with the file, NATS JetStream and PostgreSQL sinks on.
    ReceiverSinks,
    /// `metahook-receiver` serving HTTPS (`tls.mode: server`).
    ReceiverTls,
    /// `metahook-receiver` requiring Meta's client certificate (`tls.mode: mutual`).
    ReceiverMtls,
}

impl ServerKind {
    /// Name used in progress lines and the results table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Receiver => "receiver",
            Self::ReceiverSinks => "rcv+sinks",
            Self::ReceiverTls => "rcv+tls",
            Self::ReceiverMtls => "rcv+mtls",
        }
    }
}

/// Programs for both servers, resolved once before any run starts.
#[derive(Debug)]
pub struct Programs {
    /// This executable, re-executed with [`BASELINE_FLAG`].
    pub bench: PathBuf,
    /// How the receiver runs, unless it is skipped.
    pub receiver: Option<ReceiverProgram>,
    /// Also measure the receiver with NATS and PostgreSQL sinks.
    pub with_sinks: bool,
    /// Certificates for the HTTPS and mTLS runs; `None` skips them.
    pub tls: Option<BenchTls>,
    /// Measure only the receiver in plain HTTP, TLS and mTLS (no baseline, no sinks).
    pub tls_only: bool,
}

/// The receiver under test.
#[derive(Debug, Clone)]
pub enum ReceiverProgram {
    /// This executable re-executed with [`RECEIVER_FLAG`]: it runs
    /// `metahook_receiver::cli`, the very code of the `metahook-receiver` binary, built with
    /// the same profile, so `cargo run --release --bin bench` needs no other build step.
    SelfExec,
    /// A given `metahook-receiver` binary (`--receiver-bin`).
    External(PathBuf),
}

impl Programs {
    /// Resolves the programs. The receiver defaults to this executable in receiver mode; a
    /// `--receiver-bin` is checked up front so a wrong path fails in a second rather than
    /// after the baseline runs.
    pub fn resolve(receiver_bin: Option<PathBuf>, skip_receiver: bool) -> Result<Self> {
        let bench = std::env::current_exe().context("locating the bench executable")?;
        let receiver = match (skip_receiver, receiver_bin) {
            (true, _) => None,
            (false, None) => Some(ReceiverProgram::SelfExec),
            (false, Some(path)) => {
                if !path.is_file() {
                    bail!("receiver binary not found at {}", path.display());
                }
                Some(ReceiverProgram::External(path))
            }
        };
        Ok(Self {
            bench,
            receiver,
            with_sinks: false,
            tls: None,
            tls_only: false,
        })
    }

    /// The server kinds to measure, in run order.
    pub fn kinds(&self) -> Vec<ServerKind> {
        let mut kinds = Vec::new();
        if !self.tls_only {
            kinds.push(ServerKind::Baseline);
        }
        if self.receiver.is_some() {
            kinds.push(ServerKind::Receiver);
            if self.tls.is_some() {
                kinds.extend([ServerKind::ReceiverTls, ServerKind::ReceiverMtls]);
            }
            if self.with_sinks && !self.tls_only {
                kinds.push(ServerKind::ReceiverSinks);
            }
        }
        kinds
    }
}

/// A launched server with the directory it owns; the directory outlives the process because
/// the process field is dropped (and the child killed) first.
#[derive(Debug)]
pub struct Launched {
    /// The running child.
    pub process: ServerProcess,
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Its scratch directory, deleted on drop.
    pub dir: TempDir,
    /// The JetStream stream and PostgreSQL schema of a `ReceiverSinks` run.
    pub sink_targets: Option<SinkTargets>,
    /// How the load generator connects (with the client certificate in the mTLS run).
    pub transport: Transport,
    /// How the health check connects (never with a client certificate).
    pub probe: Transport,
}

/// Where a `ReceiverSinks` run delivers, named uniquely so runs never mix.
#[derive(Debug, Clone)]
pub struct SinkTargets {
    /// JetStream stream (created by the receiver).
    pub stream: String,
    /// PostgreSQL schema (migrated by the receiver).
    pub schema: String,
}

/// NATS (JetStream) the `ReceiverSinks` run publishes to.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// PostgreSQL the `ReceiverSinks` run stores into.
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Starts `kind` on a free loopback port, pinned to `cpu` if given.
pub fn launch(kind: ServerKind, programs: &Programs, cpu: Option<usize>) -> Result<Launched> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("metahook-bench-{}-", kind.label()))
        .tempdir()
        .context("creating a temporary directory")?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let secret_file = dir.path().join("app-secret");
    let sink_targets = (kind == ServerKind::ReceiverSinks).then(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        SinkTargets {
            stream: format!("BENCH_{}_{nanos}", std::process::id()),
            schema: format!("bench_{}_{nanos}", std::process::id()),
        }
    });
    std::fs::write(&secret_file, APP_SECRET)
        .with_context(|| format!("writing {}", secret_file.display()))?;

    let (program, args): (&Path, Vec<OsString>) = match kind {
        ServerKind::Baseline => (
            &programs.bench,
            vec![
                BASELINE_FLAG.into(),
                addr.to_string().into(),
                SECRET_FILE_FLAG.into(),
                secret_file.into(),
            ],
        ),
        ServerKind::Receiver
        | ServerKind::ReceiverSinks
        | ServerKind::ReceiverTls
        | ServerKind::ReceiverMtls => {
            let mut extra = match &sink_targets {
                Some(targets) => format!(
                    "  - name: bus\n    nats: {{url: {nats}, subject: {subject}, stream: {stream}, create_stream: true}}\n  \
                     - name: store\n    postgres: {{url: {pg}, schema: {schema}}}\n",
                    nats = quoted(NATS_URL),
                    subject = quoted(&format!(
                        "{}.{{platform}}.{{field}}.{{kind}}",
                        targets.schema
                    )),
                    stream = quoted(&targets.stream),
                    pg = quoted(POSTGRES_URL),
                    schema = quoted(&targets.schema),
                ),
                None => String::new(),
            };
            if let Some(mutual) = tls_mode(kind) {
                let tls = programs
                    .tls
                    .as_ref()
                    .context("a TLS run without certificates")?;
                extra.push_str(&tls.config_section(dir.path(), mutual)?);
            }
            let config = write_receiver_config(dir.path(), addr, &secret_file, &extra)?;
            match &programs.receiver {
                Some(ReceiverProgram::External(path)) => {
                    (path.as_path(), vec!["--config".into(), config.into()])
                }
                Some(ReceiverProgram::SelfExec) => (
                    programs.bench.as_path(),
                    vec![RECEIVER_FLAG.into(), config.into()],
                ),
                None => bail!("receiver requested but skipped"),
            }
        }
    };
    let (transport, probe) = match (tls_mode(kind), &programs.tls) {
        (Some(mutual), Some(tls)) => (tls.transport(mutual)?, tls.transport(false)?),
        _ => (Transport::Plain, Transport::Plain),
    };
    let process = ServerProcess::spawn(kind.label(), program, &args, cpu, dir.path())?;
    Ok(Launched {
        process,
        addr,
        dir,
        sink_targets,
        transport,
        probe,
    })
}

/// Starts the plain receiver with `dir` as its directory (configuration, logs, and the
/// spool `dir/spool` as it is there), pinned to `cpu` if given; for the restart runs.
pub fn launch_on(
    dir: &Path,
    programs: &Programs,
    cpu: Option<usize>,
) -> Result<(ServerProcess, SocketAddr)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let secret_file = dir.join("app-secret");
    std::fs::write(&secret_file, APP_SECRET)
        .with_context(|| format!("writing {}", secret_file.display()))?;
    let config = write_receiver_config(dir, addr, &secret_file, "")?;
    let (program, args): (&Path, Vec<OsString>) = match &programs.receiver {
        Some(ReceiverProgram::External(path)) => {
            (path.as_path(), vec!["--config".into(), config.into()])
        }
        Some(ReceiverProgram::SelfExec) => (
            programs.bench.as_path(),
            vec![RECEIVER_FLAG.into(), config.into()],
        ),
        None => bail!("receiver requested but skipped"),
    };
    let process = ServerProcess::spawn("receiver", program, &args, cpu, dir)?;
    Ok((process, addr))
}

/// For a TLS run, whether it is mutual; `None` for plain HTTP.
fn tls_mode(kind: ServerKind) -> Option<bool> {
    match kind {
        ServerKind::ReceiverTls => Some(false),
        ServerKind::ReceiverMtls => Some(true),
        _ => None,
    }
}

/// Writes the receiver's `config.yaml` (and its verify-token file) into `dir`; `extra` is
/// appended (more sinks, a `tls:` section). Paths are written as JSON strings, which YAML
/// reads as double-quoted scalars, so unusual temp-dir names cannot break the file.
fn write_receiver_config(
    dir: &Path,
    addr: SocketAddr,
    secret_file: &Path,
    extra: &str,
) -> Result<PathBuf> {
    let verify_token_file = dir.join("verify-token");
    std::fs::write(&verify_token_file, VERIFY_TOKEN)
        .with_context(|| format!("writing {}", verify_token_file.display()))?;
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).with_context(|| format!("creating {}", spool.display()))?;
    let events = dir.join("events.jsonl");

    let config = format!(
        "listen: {listen}\n\
         endpoints:\n  \
           - name: whatsapp\n    \
             path: {path}\n    \
             app_secret_file: {secret}\n    \
             verify_token_file: {token}\n\
         spool:\n  \
           dir: {spool}\n\
         sinks:\n  \
           - name: local\n    \
             file: {{path: {events}}}\n{extra}",
        listen = quoted(&addr.to_string()),
        path = quoted(super::WEBHOOK_PATH),
        secret = quoted_path(secret_file)?,
        token = quoted_path(&verify_token_file)?,
        spool = quoted_path(&spool)?,
        events = quoted_path(&events)?,
    );
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    Ok(config_path)
}

/// `value` as a double-quoted YAML scalar.
fn quoted(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// `path` as a double-quoted YAML scalar; config paths must be UTF-8.
fn quoted_path(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))?;
    Ok(quoted(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_config_has_the_contract_keys() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let addr: SocketAddr = "127.0.0.1:4321".parse()?;
        let secret = dir.path().join("app-secret");
        let config =
            std::fs::read_to_string(write_receiver_config(dir.path(), addr, &secret, "")?)?;
        let root = dir.path().display();
        let expected = format!(
            "listen: \"127.0.0.1:4321\"\n\
             endpoints:\n  - name: whatsapp\n    path: \"/webhooks/whatsapp\"\n    \
             app_secret_file: \"{root}/app-secret\"\n    \
             verify_token_file: \"{root}/verify-token\"\n\
             spool:\n  dir: \"{root}/spool\"\n\
             sinks:\n  - name: local\n    file: {{path: \"{root}/events.jsonl\"}}\n"
        );
        assert_eq!(config, expected);
        assert!(dir.path().join("spool").is_dir());
        Ok(())
    }

    #[test]
    fn tls_runs_write_a_configuration_the_receiver_loads() -> Result<()> {
        let tls = BenchTls::new()?;
        for mutual in [false, true] {
            let dir = tempfile::tempdir()?;
            let section = tls.config_section(dir.path(), mutual)?;
            let path = write_receiver_config(
                dir.path(),
                "127.0.0.1:4321".parse()?,
                &dir.path().join("app-secret"),
                &section,
            )?;
            let config = metahook_receiver::config::Config::load(&path)?;
            let settings = config.tls.context("tls section")?;
            let expected = if mutual {
                metahook_receiver::config::TlsMode::Mutual
            } else {
                metahook_receiver::config::TlsMode::Server
            };
            assert_eq!(settings.mode, expected);
            metahook_receiver::tls::check(&settings)?;
        }
        Ok(())
    }
}
