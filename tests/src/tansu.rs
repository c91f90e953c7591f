//! A tansu broker (a Kafka-compatible broker in Rust, installed by scripts/install-tools.sh)
//! of a test's or the bench's own, in memory: stopping it loses what it stored. Killed on
//! drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::tools;

/// A running broker on 127.0.0.1.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    /// Starts a broker on `port` and waits until it listens; fails naming tansu when it is
    /// not installed.
    pub fn start(port: u16) -> Result<Tansu> {
        Tansu::start_with(port, &[])
    }

    /// [`Tansu::start`] with `extra` arguments (e.g. `--authentication`).
    pub fn start_with(port: u16, extra: &[&std::ffi::OsStr]) -> Result<Tansu> {
        let bin = tools::find("tansu")?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        let broker = Tansu { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// Its `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        tools::run(
            "tansu",
            &[
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://{}", self.bootstrap()),
            ],
        )
        .map(drop)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
