//! The `postgres` sink over TLS, against a PostgreSQL server of the test's own: `ssl = on`
//! with a certificate made here (rcgen, signed by a test CA) for the name `db.metahook.test`
//! only, and a pg_hba.conf that takes TCP connections over TLS only, so a plaintext one
//! fails. verify-full with the CA delivers events when the host is that name (`hostaddr`
//! says where it is) and refuses the certificate for 127.0.0.1, which verify-ca accepts;
//! another CA is refused with a clear error that shows no credential; require works
//! without a CA; disable is refused by the server.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use metahook_receiver::config::{PostgresSinkConfig, RetryConfig, SinkConfig, SinkKind, SslMode};
use metahook_receiver::sink::Sink;
use metahook_receiver::sink::postgres::PostgresSink;
use metahook_tests::pki::Ca;
use metahook_tests::testkit::TestReceiver;

/// A password in the sink's URL: the server trusts every TLS connection, so it is never
/// checked, but no error may show it.
const PASSWORD: &str = "pg-password-5c1e";

/// The only name in the server's certificate (it resolves nowhere: `hostaddr` says where).
const HOST: &str = "db.metahook.test";

/// A PostgreSQL server in a temporary directory, run as user `postgres`, killed on drop.
struct PrivatePostgres {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The directory of Debian's PostgreSQL programs (the newest version installed).
fn postgres_bin() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's programs are not installed (/usr/lib/postgresql; Debian package postgresql, which scripts/test.sh installs)")?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().context(
        "no initdb and postgres under /usr/lib/postgresql/*/bin (Debian package postgresql)",
    )
}

/// The uid and gid of user `postgres`.
fn postgres_user() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .context("running id")?;
        ensure!(
            out.status.success(),
            "there is no user postgres (Debian package postgresql makes it)"
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// `command` run as user postgres.
fn as_postgres(command: &mut Command, (uid, gid): (u32, u32)) -> &mut Command {
    command.uid(uid).gid(gid).env("LC_ALL", "C")
}

impl PrivatePostgres {
    /// initdb, the certificate and key from `ca`, `ssl = on`, TLS-only pg_hba.conf, start,
    /// and wait until it accepts connections.
    async fn start(ca: &Ca) -> Result<PrivatePostgres> {
        let bin = postgres_bin()?;
        let user = postgres_user()?;
        let dir = tempfile::tempdir()?;
        std::os::unix::fs::chown(dir.path(), Some(user.0), Some(user.1))?;
        let data = dir.path().join("data");
        let initdb = as_postgres(&mut Command::new(bin.join("initdb")), user)
            .args([
                "--no-sync",
                "--auth=trust",
                "--username=postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "-D",
            ])
            .arg(&data)
            .output()
            .context("running initdb")?;
        ensure!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let leaf = ca.server_for("postgres", &[HOST])?;
        let (cert, key) = leaf.write(&data, "server")?;
        for file in [&cert, &key] {
            std::os::unix::fs::chown(file, Some(user.0), Some(user.1))?;
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let socket = dir.path().join("socket");
        std::fs::create_dir(&socket)?;
        std::os::unix::fs::chown(&socket, Some(user.0), Some(user.1))?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            format!(
                "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\n",
                socket.display()
            )
            .as_bytes(),
        )?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
        )?;
        let log = std::fs::File::create(dir.path().join("postgres.log"))?;
        let child = as_postgres(&mut Command::new(bin.join("postgres")), user)
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let mut server = PrivatePostgres { child, port, dir };
        server.wait_ready(&bin).await?;
        Ok(server)
    }

    /// Polls pg_isready on the server's socket until it answers.
    async fn wait_ready(&mut self, bin: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path().join("socket"))
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("postgres exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("postgres was not ready within 30 s: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The sink's URL to the certificate's name, at 127.0.0.1 (with a password the server
    /// never asks for).
    fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{HOST}:{}/postgres?hostaddr=127.0.0.1",
            self.port
        )
    }

    /// The sink's URL to 127.0.0.1, a name the certificate does not hold.
    fn url_by_address(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// A client on the server's unix socket (no TLS needed there).
    async fn local_client(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(self.dir.path().join("socket"))
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting on the unix socket")?;
        tokio::spawn(connection);
        Ok(client)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(
    url: String,
    mode: Option<SslMode>,
    ca_file: Option<PathBuf>,
    schema: &str,
) -> PostgresSinkConfig {
    let mut config = PostgresSinkConfig::url_file(PathBuf::new());
    config.url = url;
    config.url_file = None;
    config.schema = schema.to_owned();
    config.ssl_mode = mode;
    config.ca_file = ca_file;
    config
}

/// Opens (connects and migrates) a sink; the error as the receiver would log it.
async fn open(config: PostgresSinkConfig) -> Result<(), String> {
    let mut sink = PostgresSink::new(config);
    sink.open(None).await.map(drop).map_err(|e| e.to_string())
}

fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{{"from":"15551234567","id":"wamid.pgtls.{n}","timestamp":"1700000000","type":"text","text":{{"body":"over TLS {n}"}}}}]}}}}]}}]}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_sink_speaks_tls_as_libpq_does() -> Result<()> {
    let ca = Ca::new("metahook test PostgreSQL CA")?;
    let server = PrivatePostgres::start(&ca).await?;
    let certs = tempfile::tempdir()?;
    let ca_file = ca.write(&certs.path().join("ca.crt"))?;
    let other_ca = Ca::new("another CA")?.write(&certs.path().join("other-ca.crt"))?;

    // verify-full with the CA: events are delivered, over TLS (the server takes nothing else).
    let url = server.url();
    let full = config(
        url.clone(),
        Some(SslMode::VerifyFull),
        Some(ca_file.clone()),
        "tls_full",
    );
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(SinkConfig {
            name: "store".into(),
            kind: SinkKind::Postgres(full),
            retry: RetryConfig::default(),
        });
    })
    .await?;
    for n in 0..3 {
        let reply = receiver.post(&body(n)).await?;
        ensure!(
            reply.status == http::StatusCode::OK,
            "POST: {}",
            reply.status
        );
    }
    receiver
        .wait_delivered("store", 3, Duration::from_secs(30))
        .await?;
    let db = server.local_client().await?;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM tls_full.events", &[])
        .await?
        .get(0);
    assert_eq!(stored, 3);
    let ssl: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND client_addr IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl >= 1, "the receiver's connection is encrypted");

    // The same with the mode in the URL instead (tokio-postgres cannot parse verify-full).
    open(config(
        format!("{url}&sslmode=verify-full"),
        None,
        Some(ca_file.clone()),
        "tls_url",
    ))
    .await
    .map_err(anyhow::Error::msg)?;

    // verify-full checks the host name: 127.0.0.1 is not in the certificate ...
    let by_address = server.url_by_address();
    let err = open(config(
        by_address.clone(),
        Some(SslMode::VerifyFull),
        Some(ca_file.clone()),
        "tls_name",
    ))
    .await
    .expect_err("a certificate for another name");
    assert!(
        err.contains("cannot connect to PostgreSQL (sslmode verify-full)")
            && err.contains("not valid for name"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    // ... which verify-ca does not check (the chain only).
    open(config(
        by_address.clone(),
        Some(SslMode::VerifyCa),
        Some(ca_file.clone()),
        "tls_ca",
    ))
    .await
    .map_err(anyhow::Error::msg)?;

    // verify-full with another CA: refused, saying why, showing no password.
    let err = open(config(
        url.clone(),
        Some(SslMode::VerifyFull),
        Some(other_ca.clone()),
        "tls_other",
    ))
    .await
    .expect_err("a certificate from another CA");
    assert!(
        err.contains("cannot connect to PostgreSQL (sslmode verify-full)")
            && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    // require with that CA checks the chain too, as libpq does.
    let err = open(config(
        url.clone(),
        Some(SslMode::Require),
        Some(other_ca),
        "tls_other",
    ))
    .await
    .expect_err("require with a CA checks the chain");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // require without a CA: encrypted, unchecked (any name, any issuer).
    open(config(
        by_address.clone(),
        Some(SslMode::Require),
        None,
        "tls_require",
    ))
    .await
    .map_err(anyhow::Error::msg)?;

    // disable: the server takes no plaintext TCP connection.
    let err = open(config(
        by_address,
        Some(SslMode::Disable),
        None,
        "tls_disable",
    ))
    .await
    .expect_err("plaintext is refused");
    assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    Ok(())
}
