//! A tansu broker (a Kafka-compatible broker in Rust, installed by scripts/install-tools.sh)
//! of a test's or the bench's own. Killed on drop.
//!
//! Two kinds: [`Tansu::start`] keeps everything in memory (stopping it loses what it
//! stored); [`Tansu::start_authenticated`] demands a SCRAM login and holds the users and
//! topics it was given. Its users cannot be created through the broker itself: creating one
//! takes a request that must come logged in, and tansu 0.6 offers only SCRAM (its SASL
//! library is built without PLAIN), so no first user could ever log in. They are created on
//! a broker without `--authentication` over a file-backed store (`sqlite://`, tansu's
//! `libsql` feature), which the broker that demands logins then opens.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use metahook_receiver::config::SaslMechanism;

use crate::tools;

/// A running broker on 127.0.0.1.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    port: u16,
    advertised_port: u16,
}

/// A SCRAM user for [`Tansu::start_authenticated`].
#[derive(Debug, Clone, Copy)]
pub struct ScramUser<'a> {
    /// The user name.
    pub name: &'a str,
    /// The password.
    pub password: &'a str,
    /// SCRAM-SHA-256 or SCRAM-SHA-512 (tansu has no PLAIN).
    pub mechanism: SaslMechanism,
}

/// Where a broker keeps what it stores.
enum Storage<'a> {
    Memory,
    /// A SQLite file in this directory.
    File(&'a Path),
}

impl Tansu {
    /// Starts a broker in memory on `port` and waits until it listens; fails naming tansu
    /// when it is not installed.
    pub fn start(port: u16) -> Result<Tansu> {
        Tansu::spawn(port, port, &Storage::Memory, false)
    }

    /// A broker in memory listening on `port` that tells clients to connect to
    /// `advertised_port` (where a [`crate::tls_front::TlsFront`] forwards to `port`).
    pub fn start_advertising(port: u16, advertised_port: u16) -> Result<Tansu> {
        Tansu::spawn(port, advertised_port, &Storage::Memory, false)
    }

    /// A broker on `port` that demands a SCRAM login, advertises `advertised_port` and
    /// holds `users` and `topics` (one partition each), stored in a file under `dir`.
    pub fn start_authenticated(
        port: u16,
        advertised_port: u16,
        dir: &Path,
        users: &[ScramUser<'_>],
        topics: &[&str],
    ) -> Result<Tansu> {
        let setup = Tansu::spawn(port, port, &Storage::File(dir), false)?;
        for user in users {
            let mechanism = match user.mechanism {
                SaslMechanism::ScramSha256 => "scram256",
                SaslMechanism::ScramSha512 => "scram512",
                SaslMechanism::Plain => anyhow::bail!("tansu 0.6 has no SASL PLAIN"),
            };
            tools::run(
                "tansu",
                &[
                    "user",
                    "create",
                    user.name,
                    user.password,
                    "--mechanism",
                    mechanism,
                    "--broker",
                    &setup.url(),
                ],
            )
            .with_context(|| format!("creating the SCRAM user {}", user.name))?;
        }
        for topic in topics {
            setup.create_topic(topic, 1)?;
        }
        drop(setup);
        Tansu::spawn(port, advertised_port, &Storage::File(dir), true)
    }

    fn spawn(
        port: u16,
        advertised_port: u16,
        storage: &Storage<'_>,
        authentication: bool,
    ) -> Result<Tansu> {
        let bin = tools::find("tansu")?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised_port}");
        let mut command = Command::new(bin);
        command.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--silent",
        ]);
        match storage {
            Storage::Memory => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Storage::File(dir) => {
                // `sqlite://NAME` is NAME in the broker's working directory.
                command
                    .args(["--storage-engine", "sqlite://tansu.db"])
                    .current_dir(dir);
            }
        }
        if authentication {
            command.arg("--authentication");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        let mut broker = Tansu {
            child,
            port,
            advertised_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                anyhow::bail!("tansu exited with {status} before listening on {port}");
            }
            ensure!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// Its `bootstrap.servers`: the address it advertises.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// The address it listens on (plaintext, without a front).
    pub fn listener(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.listener())
    }

    /// Creates `topic` with `partitions` partitions (on a broker that demands no login).
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
                &self.url(),
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
