//! Sink credentials: read from files, used for real (a NATS server of the test's own with
//! user/password or token authentication, an HTTP service that sees the headers), and
//! never in the receiver's logs or metrics, even when a URL carries them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::Full;
use metahook_receiver::config::{
    Config, HttpHeaderConfig, HttpSinkConfig, NatsSinkConfig, RetryConfig, SinkConfig, SinkKind,
};
use metahook_receiver::verify;
use metahook_tests::testkit::{self, ReceiverProcess, SECRET, TestReceiver};

fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{{"from":"15551234567","id":"wamid.creds.{n}","timestamp":"1700000000","type":"text","text":{{"body":"creds {n}"}}}}]}}}}]}}]}}"#).into_bytes()
}

/// A local port nothing listens on.
fn closed_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write(dir: &Path, name: &str, value: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn quick_retries() -> RetryConfig {
    RetryConfig {
        max_attempts: 0,
        max_backoff: Duration::from_millis(200),
    }
}

fn sink(name: &str, kind: SinkKind) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind,
        retry: quick_retries(),
    }
}

/// Every log line (JSON) of `log` so far.
fn log_lines(log: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// Waits until every sink of `sinks` logged a failed delivery; returns each one's error.
async fn failed_attempts(log: &Path, sinks: &[&str]) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = log_lines(log)?;
        let errors: Vec<(String, String)> = sinks
            .iter()
            .filter_map(|name| {
                lines
                    .iter()
                    .find(|l| l["sink"] == *name && l["message"] == "delivery failed; will retry")
                    .map(|l| {
                        (
                            (*name).to_owned(),
                            l["error"].as_str().unwrap_or("").to_owned(),
                        )
                    })
            })
            .collect();
        if errors.len() == sinks.len() {
            return Ok(errors);
        }
        if Instant::now() > deadline {
            bail!(
                "not every sink logged a failed attempt within 30 s: {errors:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_files_and_urls_never_reach_the_logs_or_metrics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let secrets = [
        ("nats-user", "nats-user-7f3a"),
        ("nats-password", "nats-password-7f3a"),
        ("nats-token", "nats-token-7f3a"),
        ("http-user", "http-user-7f3a"),
        ("http-password", "http-password-7f3a"),
        ("http-bearer", "http-bearer-7f3a"),
        ("http-api-key", "http-api-key-7f3a"),
    ];
    for (name, value) in secrets {
        write(d, name, &format!("{value}\n"))?;
    }
    let in_urls = [
        "url-nats-user-7f3a",
        "url-nats-password-7f3a",
        "url-http-user-7f3a",
        "url-http-password-7f3a",
        "url-query-token-7f3a",
    ];
    let port = closed_port()?;
    let nats = |name: &str, url: &str, extra: &str| {
        format!(
            "  - name: {name}\n    retry: {{max_attempts: 0, max_backoff: 200ms}}\n    nats: {{url: '{url}'{extra}}}\n"
        )
    };
    let http = |name: &str, url: &str, extra: &str| {
        format!(
            "  - name: {name}\n    retry: {{max_attempts: 0, max_backoff: 200ms}}\n    http: {{url: '{url}', timeout: 1s{extra}}}\n"
        )
    };
    let closed = format!("127.0.0.1:{}", closed_port()?);
    let f = |name: &str| d.join(name).display().to_string();
    let sinks = [
        nats(
            "bus-files",
            &format!("nats://{closed}"),
            &format!(", user_file: {}, password_file: {}", f("nats-user"), f("nats-password")),
        ),
        nats("bus-token", &format!("nats://{closed}"), &format!(", token_file: {}", f("nats-token"))),
        nats("bus-url", &format!("nats://url-nats-user-7f3a:url-nats-password-7f3a@{closed}"), ""),
        http(
            "crm-basic",
            &format!("http://{closed}/hooks"),
            &format!(
                ", username_file: {}, password_file: {}, headers: [{{name: X-Api-Key, value_file: {}}}]",
                f("http-user"),
                f("http-password"),
                f("http-api-key")
            ),
        ),
        http("crm-bearer", &format!("http://{closed}/hooks"), &format!(", bearer_token_file: {}", f("http-bearer"))),
        http(
            "crm-url",
            &format!("http://url-http-user-7f3a:url-http-password-7f3a@{closed}/hooks?access_token=url-query-token-7f3a"),
            "",
        ),
    ]
    .concat();
    write(d, "app-secret", std::str::from_utf8(SECRET)?)?;
    write(d, "verify-token", "verify-token-7f3a")?;
    let config = write(
        d,
        "config.yaml",
        &format!(
            "listen: 127.0.0.1:{port}\nendpoints:\n  - name: wa\n    path: /wa\n    app_secret_file: {}\n    verify_token_file: {}\nspool:\n  dir: {}\nsinks:\n{sinks}",
            f("app-secret"),
            f("verify-token"),
            f("spool"),
        ),
    )?;
    Config::load(&config).context("the test's configuration")?;
    let log = d.join("receiver.log");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let receiver = ReceiverProcess::start_logged(&config, addr, &log).await?;
    let payload = body(1);
    let signature = verify::sign(SECRET, &payload);
    let reply = testkit::request(
        addr,
        http::Method::POST,
        "/wa",
        &[("x-hub-signature-256", &signature)],
        payload.into(),
    )
    .await?;
    ensure!(
        reply.status == http::StatusCode::OK,
        "POST: {}",
        reply.status
    );
    let names = [
        "bus-files",
        "bus-token",
        "bus-url",
        "crm-basic",
        "crm-bearer",
        "crm-url",
    ];
    let errors = failed_attempts(&log, &names).await?;
    // Each sink really tried its destination, and names it (redacted).
    for (name, error) in &errors {
        let expected = if name.starts_with("bus") {
            "cannot connect to NATS (nats://"
        } else {
            "POST failed (http://"
        };
        ensure!(error.contains(expected), "{name}: {error}");
    }
    let shown = |name: &str| {
        errors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.as_str())
    };
    ensure!(
        shown("bus-url").is_some_and(|e| e.contains(&format!("nats://***@{closed}"))),
        "the NATS URL is shown redacted: {:?}",
        shown("bus-url")
    );
    ensure!(
        shown("crm-url")
            .is_some_and(|e| e.contains(&format!("http://***@{closed}/hooks?access_token=***"))),
        "the HTTP URL is shown redacted: {:?}",
        shown("crm-url")
    );
    let metrics = testkit::request(addr, http::Method::GET, "/metrics", &[], Bytes::new())
        .await?
        .text();
    drop(receiver);
    let text = std::fs::read_to_string(&log)?;
    for secret in secrets.iter().map(|(_, value)| *value).chain(in_urls) {
        ensure!(!text.contains(secret), "the log holds {secret}:\n{text}");
        ensure!(!metrics.contains(secret), "/metrics holds {secret}");
    }
    Ok(())
}

/// A nats-server of the test's own on a free port (JetStream on), killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` with `auth` arguments (`--user U --pass P`, `--auth TOKEN`).
    async fn start(auth: &[&str]) -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let port = closed_port()?;
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.push(dir.path().display().to_string());
        args.extend(auth.iter().map(ToString::to_string));
        Self::run(dir, port, &args).await
    }

    /// Starts `nats-server -c FILE` with `config` (its `listen` and `jetstream` added).
    async fn start_with_config(config: &str) -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let port = closed_port()?;
        let file = write(
            dir.path(),
            "nats.conf",
            &format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{config}",
                dir.path().join("js").display()
            ),
        )?;
        Self::run(dir, port, &["-c".to_owned(), file.display().to_string()]).await
    }

    async fn run(dir: tempfile::TempDir, port: u16, args: &[String]) -> Result<NatsServer> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("nats-server is not installed (/usr/sbin/nats-server, Debian package nats-server; scripts/test.sh installs it)")?;
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let mut server = NatsServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = server.child.try_wait()? {
                bail!("nats-server exited with {status}: {}", server.log());
            }
            ensure!(
                Instant::now() < deadline,
                "nats-server did not listen on {port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_sink(url: &str, tweak: impl FnOnce(&mut NatsSinkConfig)) -> SinkConfig {
    let mut nats = NatsSinkConfig::new(url);
    nats.subject = "creds.{platform}.{kind}".into();
    nats.stream = Some("CREDS".into());
    nats.create_stream = true;
    tweak(&mut nats);
    sink("bus", SinkKind::Nats(nats))
}

/// Messages in the server's stream CREDS, read by a client authenticated with `options`.
async fn stream_messages(server: &NatsServer, options: async_nats::ConnectOptions) -> Result<u64> {
    let client = options.connect(server.url()).await.context("test client")?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("CREDS").await.context("stream CREDS")?;
    Ok(stream.info().await.context("stream info")?.state.messages)
}

/// Delivers one event through a NATS sink configured by `tweak` to `server`.
async fn delivered_through(
    server: &NatsServer,
    tweak: impl FnOnce(&mut NatsSinkConfig, &Path),
) -> Result<TestReceiver> {
    let url = server.url();
    let receiver = TestReceiver::start_with(|config, dir| {
        config.sinks.push(nats_sink(&url, |nats| tweak(nats, dir)));
    })
    .await?;
    let reply = receiver.post(&body(1)).await?;
    ensure!(
        reply.status == http::StatusCode::OK,
        "POST: {}",
        reply.status
    );
    Ok(receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_user_and_password_from_files_authenticate() -> Result<()> {
    let server = NatsServer::start(&["--user", "metahook", "--pass", "pw-from-a-file"]).await?;
    let receiver = delivered_through(&server, |nats, dir| {
        nats.user_file = write(dir, "nats-user", "metahook\n").ok();
        nats.password_file = write(dir, "nats-password", "pw-from-a-file\n").ok();
    })
    .await?;
    receiver
        .wait_delivered("bus", 1, Duration::from_secs(30))
        .await?;
    let owner = async_nats::ConnectOptions::with_user_and_password(
        "metahook".into(),
        "pw-from-a-file".into(),
    );
    assert_eq!(stream_messages(&server, owner).await?, 1);

    // The server really checks: a wrong password delivers nothing.
    let wrong = delivered_through(&server, |nats, dir| {
        nats.user_file = write(dir, "nats-user", "metahook").ok();
        nats.password_file = write(dir, "nats-password", "not-the-password").ok();
    })
    .await?;
    wrong
        .wait_metric_at_least(
            r#"metahook_sink_deliveries_total{result="error",sink="bus"}"#,
            1.0,
            Duration::from_secs(30),
            "a refused connection",
        )
        .await?;
    assert!(
        wrong
            .metric(r#"metahook_sink_deliveries_total{result="success",sink="bus"}"#)
            .await
            .unwrap_or(0.0)
            < 1.0,
        "nothing is delivered with a wrong password"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tokens_from_a_file_or_the_url_authenticate() -> Result<()> {
    let server = NatsServer::start(&["--auth", "t0ken-from-a-file"]).await?;
    let receiver = delivered_through(&server, |nats, dir| {
        nats.token_file = write(dir, "nats-token", "t0ken-from-a-file\n").ok();
    })
    .await?;
    receiver
        .wait_delivered("bus", 1, Duration::from_secs(30))
        .await?;
    let owner = async_nats::ConnectOptions::with_token("t0ken-from-a-file".into());
    assert_eq!(stream_messages(&server, owner).await?, 1);

    // A token in the URL (laptop use) is given to the client apart from its URL.
    let in_url = format!("nats://t0ken-from-a-file@127.0.0.1:{}", server.port);
    let receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(nats_sink(&in_url, |_| {}));
    })
    .await?;
    let reply = receiver.post(&body(2)).await?;
    ensure!(
        reply.status == http::StatusCode::OK,
        "POST: {}",
        reply.status
    );
    receiver
        .wait_delivered("bus", 1, Duration::from_secs(30))
        .await?;
    let owner = async_nats::ConnectOptions::with_token("t0ken-from-a-file".into());
    assert_eq!(stream_messages(&server, owner).await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_from_a_file_signs_the_servers_nonce() -> Result<()> {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().context("the user's seed")?;
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ))
    .await?;
    let seed_file = seed.clone();
    let receiver = delivered_through(&server, move |nats, dir| {
        nats.nkey_seed_file = write(dir, "nkey-seed", &format!("{seed_file}\n")).ok();
    })
    .await?;
    receiver
        .wait_delivered("bus", 1, Duration::from_secs(30))
        .await?;
    let owner = async_nats::ConnectOptions::with_nkey(seed);
    assert_eq!(stream_messages(&server, owner).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_and_a_client_certificate_from_files() -> Result<()> {
    use metahook_tests::pki::{Ca, Validity};
    let certs = tempfile::tempdir()?;
    let ca = Ca::new("metahook test NATS CA")?;
    let ca_file = ca.write(&certs.path().join("ca.crt"))?;
    let (server_cert, server_key) = ca.server("nats")?.write(certs.path(), "server")?;
    let (client_cert, client_key) = ca
        .client("metahook", true, Validity::Current)?
        .write(certs.path(), "client")?;
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 5 }}\n",
        server_cert.display(),
        server_key.display(),
        ca_file.display()
    ))
    .await?;
    let (ca2, cert2, key2) = (ca_file.clone(), client_cert.clone(), client_key.clone());
    let receiver = delivered_through(&server, move |nats, _| {
        nats.ca_file = Some(ca2);
        nats.client_cert_file = Some(cert2);
        nats.client_key_file = Some(key2);
    })
    .await?;
    receiver
        .wait_delivered("bus", 1, Duration::from_secs(30))
        .await?;
    let owner = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_file.clone())
        .add_client_certificate(client_cert, client_key)
        .require_tls(true);
    assert_eq!(stream_messages(&server, owner).await?, 1);

    // Without its client certificate the server refuses the sink.
    let refused = delivered_through(&server, move |nats, _| nats.ca_file = Some(ca_file)).await?;
    refused
        .wait_metric_at_least(
            r#"metahook_sink_deliveries_total{result="error",sink="bus"}"#,
            1.0,
            Duration::from_secs(30),
            "a refused TLS connection",
        )
        .await?;
    assert!(
        refused
            .metric(r#"metahook_sink_deliveries_total{result="success",sink="bus"}"#)
            .await
            .unwrap_or(0.0)
            < 1.0,
        "nothing is delivered without the client certificate"
    );
    Ok(())
}

/// A JWT of the NATS decentralized auth (`ed25519-nkey`), `claims` issued by `issuer` for
/// `subject`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, claims: &serde_json::Value) -> Result<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = serde_json::json!({
        "jti": format!("{}{}", subject, claims["type"]).to_uppercase(),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": "metahook-test",
        "nats": claims,
    });
    let payload = b64.encode(serde_json::to_vec(&payload)?);
    let signature = issuer
        .sign(format!("{header}.{payload}").as_bytes())
        .context("signing a JWT")?;
    Ok(format!("{header}.{payload}.{}", b64.encode(signature)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_authenticates_with_its_jwt_and_seed() -> Result<()> {
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        &serde_json::json!({"type": "operator", "version": 2}),
    )?;
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        &serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    )?;
    // JetStream needs a system account.
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        &serde_json::json!({"type": "account", "version": 2}),
    )?;
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        &serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                           "subs": -1, "data": -1, "payload": -1}),
    )?;
    let server = NatsServer::start_with_config(&format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {sys}: {system_jwt}\n  {}: {account_jwt}\n}}\n",
        account.public_key(),
        sys = system.public_key(),
    ))
    .await?;
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().context("the user's seed")?
    );
    let creds_for_sink = creds.clone();
    let receiver = delivered_through(&server, move |nats, dir| {
        nats.credentials_file = write(dir, "user.creds", &creds_for_sink).ok();
    })
    .await?;
    receiver
        .wait_delivered("bus", 1, Duration::from_secs(30))
        .await
        .with_context(|| server.log())?;
    let owner = async_nats::ConnectOptions::with_credentials(&creds)?;
    assert_eq!(stream_messages(&server, owner).await?, 1);
    Ok(())
}

/// What the test's HTTP service saw: each request's path and headers.
type Seen = Mutex<Vec<(String, HeaderMap)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_basic_bearer_and_secret_headers_reach_the_service() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen: Arc<Seen> = Arc::default();
    let server = testkit::serve_http(
        listener,
        Arc::clone(&seen),
        |seen: Arc<Seen>, request| async move {
            if let Ok(mut seen) = seen.lock() {
                seen.push((request.uri().path().to_owned(), request.headers().clone()));
            }
            Response::new(Full::new(Bytes::new()))
        },
    );
    let receiver = TestReceiver::start_with(|config, dir| {
        let mut basic = HttpSinkConfig::new(format!("http://{addr}/basic"));
        basic.username_file = write(dir, "user", "crm-user\n").ok();
        basic.password_file = write(dir, "password", "crm-password\n").ok();
        basic.headers = vec![HttpHeaderConfig {
            name: "X-Api-Key".into(),
            value_file: write(dir, "api-key", "k-123\n").unwrap_or_default(),
        }];
        let mut bearer = HttpSinkConfig::new(format!("http://{addr}/bearer"));
        bearer.bearer_token_file = write(dir, "token", "bearer-token\n").ok();
        let plain_user = {
            let mut http = HttpSinkConfig::new(format!("http://url-user:url%40pw@{addr}/url"));
            http.timeout = Duration::from_secs(5);
            http
        };
        config.sinks.push(sink("basic", SinkKind::Http(basic)));
        config.sinks.push(sink("bearer", SinkKind::Http(bearer)));
        config.sinks.push(sink("url", SinkKind::Http(plain_user)));
    })
    .await?;
    let reply = receiver.post(&body(1)).await?;
    ensure!(
        reply.status == http::StatusCode::OK,
        "POST: {}",
        reply.status
    );
    for name in ["basic", "bearer", "url"] {
        receiver
            .wait_delivered(name, 1, Duration::from_secs(30))
            .await?;
    }
    server.abort();
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let header = |path: &str, name: &str| {
        seen.iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, headers)| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // base64("crm-user:crm-password"), base64("url-user:url@pw")
    assert_eq!(
        header("/basic", "authorization").as_deref(),
        Some("Basic Y3JtLXVzZXI6Y3JtLXBhc3N3b3Jk")
    );
    assert_eq!(header("/basic", "x-api-key").as_deref(), Some("k-123"));
    assert_eq!(
        header("/bearer", "authorization").as_deref(),
        Some("Bearer bearer-token")
    );
    assert_eq!(
        header("/url", "authorization").as_deref(),
        Some("Basic dXJsLXVzZXI6dXJsQHB3")
    );
    // The sink's own headers are still there.
    assert_eq!(
        header("/basic", "content-type").as_deref(),
        Some("application/json")
    );
    assert!(header("/basic", "idempotency-key").is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_retried_with_the_rotated_file_and_nothing_is_dead_lettered()
-> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen: Arc<Seen> = Arc::default();
    let server = testkit::serve_http(
        listener,
        Arc::clone(&seen),
        |seen: Arc<Seen>, request| async move {
            let authorized = request
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer new-token");
            if let Ok(mut seen) = seen.lock() {
                seen.push((request.uri().path().to_owned(), request.headers().clone()));
            }
            let mut response = Response::new(Full::new(Bytes::new()));
            if !authorized {
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
            }
            response
        },
    );
    let token = Arc::new(Mutex::new(PathBuf::new()));
    let token_path = Arc::clone(&token);
    let receiver = TestReceiver::start_with(move |config, dir| {
        let mut bearer = HttpSinkConfig::new(format!("http://{addr}/hooks"));
        let path = write(dir, "token", "old-token\n").unwrap_or_default();
        bearer.bearer_token_file = Some(path.clone());
        if let Ok(mut shared) = token_path.lock() {
            *shared = path;
        }
        config.sinks.push(SinkConfig {
            name: "crm".into(),
            kind: SinkKind::Http(bearer),
            retry: RetryConfig {
                max_attempts: 3,
                max_backoff: Duration::from_millis(200),
            },
        });
    })
    .await?;
    let reply = receiver.post(&body(1)).await?;
    ensure!(
        reply.status == http::StatusCode::OK,
        "POST: {}",
        reply.status
    );
    // The service refuses the old token (the sink retries), then the Secret is rotated.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().map_or(0, |s| s.len()) == 0 {
        ensure!(
            Instant::now() < deadline,
            "the sink never called the service"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let path = token
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    std::fs::write(&path, "new-token\n")?;
    receiver
        .wait_delivered("crm", 1, Duration::from_secs(30))
        .await?;
    server.abort();
    assert_eq!(
        receiver
            .metric(r#"metahook_dead_letter_events_total{sink="crm"}"#)
            .await
            .unwrap_or(0.0),
        0.0,
        "a 401 is not a dead letter"
    );
    Ok(())
}
