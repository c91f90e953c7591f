//! Server child processes and the machine facts around them: free ports, CPU pinning,
//! readiness, peak memory and shutdown.
//!
//! Servers run as separate processes so each can be pinned to its own CPU, away from the
//! load generator, and so their peak RSS is theirs alone. A [`ServerProcess`] kills its child
//! when dropped, so no error path leaves a server running after the benchmark exits.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use super::client::{self, Transport};

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Bytes of a child's stderr quoted in error messages.
const STDERR_TAIL_BYTES: usize = 4_000;

/// A port on 127.0.0.1 that was free a moment ago: bind port 0, read it back, release it.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading ephemeral port")?
        .port())
}

/// Where servers and the load generator run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinning {
    /// Servers are pinned to `server`, the bench process to `load`.
    Pinned {
        /// CPU for the server child under test.
        server: usize,
        /// CPU for this process, i.e. the load generator.
        load: usize,
    },
    /// Nothing is pinned, for the reason given.
    Unpinned(String),
}

impl Pinning {
    /// Pins this process to a CPU of its own and reserves another for the servers, if
    /// `taskset` exists and at least two CPUs are allowed. Must run before the tokio runtime
    /// starts: `taskset -p` changes only the calling thread, and threads spawned afterwards
    /// inherit its affinity.
    pub fn apply(requested: bool) -> Self {
        if !requested {
            return Self::Unpinned("disabled with --no-pin".to_owned());
        }
        let cpus = match allowed_cpus() {
            Ok(cpus) => cpus,
            Err(err) => return Self::Unpinned(format!("cannot read allowed CPUs: {err:#}")),
        };
        let (server, load) = match cpus.as_slice() {
            [server, load, ..] => (*server, *load),
            _ => return Self::Unpinned("fewer than two CPUs available".to_owned()),
        };
        let pinned = Command::new("taskset")
            .args([
                "-p",
                "-c",
                &load.to_string(),
                &std::process::id().to_string(),
            ])
            .stdin(Stdio::null())
            .output();
        match pinned {
            Ok(output) if output.status.success() => Self::Pinned { server, load },
            Ok(output) => Self::Unpinned(format!(
                "taskset -p failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(err) => Self::Unpinned(format!("taskset not available: {err}")),
        }
    }

    /// CPU for server children, if pinning is in effect.
    pub fn server_cpu(&self) -> Option<usize> {
        match self {
            Self::Pinned { server, .. } => Some(*server),
            Self::Unpinned(_) => None,
        }
    }
}

impl std::fmt::Display for Pinning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pinned { server, load } => write!(
                f,
                "yes (taskset): server under test on CPU {server}, load generator on CPU {load}"
            ),
            Self::Unpinned(reason) => write!(f, "no ({reason})"),
        }
    }
}

/// CPUs this process may run on, from `Cpus_allowed_list` in /proc/self/status (which,
/// unlike a plain CPU count, respects container cpusets).
fn allowed_cpus() -> Result<Vec<usize>> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let list = status_field(&status, "Cpus_allowed_list")
        .context("no Cpus_allowed_list in /proc/self/status")?;
    parse_cpu_list(list)
}

/// Parses a kernel CPU list such as `0-3,6,8-9`.
fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let first: usize = first
            .parse()
            .with_context(|| format!("bad CPU list entry {part:?}"))?;
        let last: usize = last
            .parse()
            .with_context(|| format!("bad CPU list entry {part:?}"))?;
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// The value of `name:` in a /proc status file.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// How a server child ended when asked to stop.
#[derive(Debug)]
pub enum Stopped {
    /// It exited (after SIGTERM, or before it was asked).
    Exited(ExitStatus),
    /// It ignored SIGTERM for [`STOP_GRACE`] and was killed.
    Killed,
}

/// A running server child; killed on drop unless stopped cleanly first.
#[derive(Debug)]
pub struct ServerProcess {
    label: String,
    program: PathBuf,
    child: Option<Child>,
    stderr_log: PathBuf,
}

impl ServerProcess {
    /// Starts `program args`, pinned to `cpu` via `taskset -c` if given (taskset execs the
    /// program, so the child pid is the server's). Output goes to files in `log_dir` rather
    /// than pipes, so a chatty server can never block on a full pipe.
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[OsString],
        cpu: Option<usize>,
        log_dir: &Path,
    ) -> Result<Self> {
        let stdout_log = log_dir.join("stdout.log");
        let stderr_log = log_dir.join("stderr.log");
        let stdout = File::create(&stdout_log)
            .with_context(|| format!("creating {}", stdout_log.display()))?;
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg(program);
                command
            }
            None => Command::new(program),
        };
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {label} ({})", program.display()))?;
        Ok(Self {
            label: label.to_owned(),
            program: program.to_owned(),
            child: Some(child),
            stderr_log,
        })
    }

    /// Polls `GET /healthz` over `transport` until it answers 200. Fails early if the child
    /// exits, and after `timeout` otherwise, naming the binary and quoting its stderr.
    pub async fn wait_healthy(
        &mut self,
        addr: SocketAddr,
        transport: &Transport,
        path: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                bail!(
                    "{} ({}) exited with {status} before answering GET {path}\n{}",
                    self.label,
                    self.program.display(),
                    self.stderr_tail()
                );
            }
            let last = match client::get_with(addr, transport, path, Duration::from_secs(1)).await {
                Ok(reply) if reply.status.is_success() => return Ok(()),
                Ok(reply) => format!("HTTP {}", reply.status),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} ({}) did not answer GET {path} on {addr} with 200 within {timeout:?} \
                     (last attempt: {last})\n{}",
                    self.label,
                    self.program.display(),
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, quoting stderr, if the child has exited: a server that died under load must
    /// not be reported as if it had been measured.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exited()? {
            Some(status) => bail!(
                "{} ({}) exited with {status} during the run\n{}",
                self.label,
                self.program.display(),
                self.stderr_tail()
            ),
            None => Ok(()),
        }
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.pid()?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_kib(&status, "VmHWM").with_context(|| format!("no VmHWM in {path}"))
    }

    /// CPU time (user + system, all threads) the server has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time_of(&self.pid()?.to_string())
    }

    /// Kills the child at once (SIGKILL) and reaps it.
    pub fn kill(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("killing {}", self.label))?;
            child
                .wait()
                .with_context(|| format!("reaping {}", self.label))?;
        }
        Ok(())
    }

    /// Sends SIGTERM (via `kill`, as the workspace forbids unsafe code), waits up to
    /// [`STOP_GRACE`] for the child to exit, then kills it.
    pub async fn stop(mut self) -> Result<Stopped> {
        if let Some(status) = self.exited()? {
            self.child = None;
            return Ok(Stopped::Exited(status));
        }
        let pid = self.pid()?;
        let signalled = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running kill -TERM")?;
        let deadline = Instant::now() + STOP_GRACE;
        while signalled.success() && Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                self.child = None;
                return Ok(Stopped::Exited(status));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("killing {}", self.label))?;
            child
                .wait()
                .with_context(|| format!("reaping {}", self.label))?;
        }
        Ok(Stopped::Killed)
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("{} is no longer running", self.label))
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("checking whether {} is running", self.label)),
            None => bail!("{} has already been stopped", self.label),
        }
    }

    /// The end of the child's stderr, for error messages.
    fn stderr_tail(&self) -> String {
        match std::fs::read(&self.stderr_log) {
            Ok(bytes) if bytes.is_empty() => "(stderr was empty)".to_owned(),
            Ok(bytes) => {
                let tail = &bytes[bytes.len().saturating_sub(STDERR_TAIL_BYTES)..];
                format!(
                    "--- stderr (tail) ---\n{}",
                    String::from_utf8_lossy(tail).trim_end()
                )
            }
            Err(err) => format!("(cannot read {}: {err})", self.stderr_log.display()),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Error path: no time for a graceful stop. Both calls fail only if the child is
            // already gone, which is the desired state.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU time (user + system, all threads) this process, i.e. the load generator, has used.
pub fn own_cpu_time() -> Result<Duration> {
    cpu_time_of("self")
}

/// CPU time of process `pid` (a number or `self`) from /proc/PID/stat.
fn cpu_time_of(pid: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("malformed {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_sec(),
    ))
}

/// `utime + stime` in clock ticks from a /proc/PID/stat line. The command name (field 2) is
/// parenthesised and may contain spaces, so fields are counted after its closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let mut fields = after_comm.split_whitespace();
    // After the command come state (field 3) ... utime (field 14) and stime (field 15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's `USER_HZ`, via `getconf CLK_TCK`; 100 (its value on every common Linux
/// configuration) if getconf is unavailable.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .filter(|ticks: &f64| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Parses a `Name:   1234 kB` line of a /proc status file.
fn parse_kib(status: &str, name: &str) -> Option<u64> {
    status_field(status, name)?
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() -> Result<()> {
        assert_eq!(parse_cpu_list("0-1")?, vec![0, 1]);
        assert_eq!(parse_cpu_list("2,4-6,9\n")?, vec![2, 4, 5, 6, 9]);
        assert_eq!(parse_cpu_list("3")?, vec![3]);
        assert!(parse_cpu_list("a-b").is_err());
        Ok(())
    }

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tbench\nVmPeak:\t  20000 kB\nVmHWM:\t    8123 kB\nVmRSS:\t 8000 kB\n";
        assert_eq!(parse_kib(status, "VmHWM"), Some(8123));
        assert_eq!(parse_kib(status, "VmSwap"), None);
    }

    #[test]
    fn parses_cpu_ticks_despite_spaces_in_the_command_name() {
        let stat = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(175));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn reads_own_peak_rss_field() -> Result<()> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        assert!(parse_kib(&status, "VmHWM").is_some_and(|kib| kib > 0));
        assert!(!allowed_cpus()?.is_empty());
        own_cpu_time()?;
        Ok(())
    }
}
