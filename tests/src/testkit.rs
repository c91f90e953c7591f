//! Test support: a receiver started in-process on `127.0.0.1:0` with its own temporary
//! directory, secrets and file sink, a small HTTP(S) client that keeps response headers, and
//! the locations of the shared Meta fixtures and of the receiver binary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metahook_receiver::app::{self, Running};
use metahook_receiver::config::{
    Config, EndpointConfig, FileSinkConfig, HttpSinkConfig, Limits, RetryConfig, SinkConfig,
    SinkKind, SpoolConfig,
};
use metahook_receiver::verify;

use crate::bench::client::{self, Transport};

/// The app secret every test receiver uses.
pub const SECRET: &[u8] = b"test-app-secret";
/// The previous app secret, when a test configures rotation.
pub const PREVIOUS_SECRET: &[u8] = b"previous-app-secret";
/// The verify token every test receiver uses.
pub const VERIFY_TOKEN: &str = "test-verify-token";
/// The webhook path of the test endpoint.
pub const PATH: &str = "/webhooks/meta";

/// A response with its headers.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A configuration for a receiver under `dir`, listening on an ephemeral port.
pub fn config_in(dir: &Path) -> Result<Config> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).context("creating secrets dir")?;
    std::fs::write(secrets.join("app-secret"), SECRET).context("writing app secret")?;
    std::fs::write(secrets.join("verify-token"), format!("{VERIFY_TOKEN}\n"))
        .context("writing verify token")?;
    Ok(Config {
        listen: "127.0.0.1:0".parse()?,
        endpoints: vec![EndpointConfig {
            name: "meta".into(),
            path: PATH.into(),
            objects: None,
            app_secret_file: Some(secrets.join("app-secret")),
            app_secret_env: None,
            previous_app_secret_file: None,
            previous_app_secret_env: None,
            verify_token_file: Some(secrets.join("verify-token")),
            verify_token_env: None,
            legacy_sha1_signature: false,
        }],
        delivery: metahook_receiver::config::DeliveryConfig::default(),
        spool: SpoolConfig {
            dir: dir.join("spool"),
            dedup_window: Duration::from_secs(3600),
            dedup_max_entries: 100_000,
            max_bytes: 0,
            group_commit_wait: Duration::from_millis(1),
            preallocate_segments: true,
            lock_wait: None,
            retention: None,
            segment_bytes: 64 * 1024 * 1024,
            max_group_requests: 1024,
        },
        sinks: vec![SinkConfig {
            name: "local".into(),
            kind: SinkKind::File(FileSinkConfig {
                path: dir.join("events.jsonl"),
            }),
            retry: RetryConfig::default(),
        }],
        limits: Limits::default(),
        log_message_text: false,
        shutdown_grace: Duration::from_secs(5),
        shutdown_delay: Duration::ZERO,
        secret_reload_interval: Duration::from_millis(100),
        tls: None,
        trusted_proxy: None,
        metrics_listen: None,
        enrichment: None,
        admin: None,
    })
}

/// A receiver running in this process.
#[derive(Debug)]
pub struct TestReceiver {
    /// Its temporary directory (spool, secrets, events file).
    pub dir: tempfile::TempDir,
    /// Its address.
    pub addr: SocketAddr,
    running: Option<Running>,
}

impl TestReceiver {
    /// Starts a receiver with the default test configuration.
    pub async fn start() -> Result<TestReceiver> {
        Self::start_with(|_, _| {}).await
    }

    /// Starts a receiver after `tweak` adjusts its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config, &Path)) -> Result<TestReceiver> {
        let dir = tempfile::tempdir().context("creating temp dir")?;
        let mut config = config_in(dir.path())?;
        tweak(&mut config, dir.path());
        config.validate()?;
        let running = app::start(config).await?;
        Ok(TestReceiver {
            addr: running.addr,
            dir,
            running: Some(running),
        })
    }

    /// Starts a receiver that serves HTTPS with a certificate for 127.0.0.1 issued by `ca`
    /// (a callback Meta could call: Meta calls only https).
    pub async fn start_https(ca: &crate::pki::Ca) -> Result<TestReceiver> {
        let leaf = ca.server("metahook test receiver")?;
        let mut written = None;
        let receiver = Self::start_with(|config, dir| {
            written = Some(leaf.write(dir, "serving"));
            if let Some(Ok((cert, key))) = &written {
                config.tls = Some(metahook_receiver::config::TlsConfig::new(
                    cert.clone(),
                    key.clone(),
                ));
            }
        })
        .await?;
        match written {
            Some(Ok(_)) => Ok(receiver),
            Some(Err(error)) => Err(error.context("writing the receiver's certificate")),
            None => anyhow::bail!("the receiver's configuration was never made"),
        }
    }

    /// The running receiver.
    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// Where /metrics is read: the `metrics_listen` listener when configured (plain HTTP
    /// even when the webhook listener is HTTPS), else the webhook listener.
    pub fn probes_addr(&self) -> SocketAddr {
        self.running
            .as_ref()
            .and_then(|r| r.metrics_addr)
            .unwrap_or(self.addr)
    }

    /// The file sink's path.
    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// POSTs `body` to the endpoint, signed with [`SECRET`].
    pub async fn post(&self, body: &[u8]) -> Result<Reply> {
        let signature = verify::sign(SECRET, body);
        self.post_with(PATH, &[("x-hub-signature-256", signature.as_str())], body)
            .await
    }

    /// POSTs `body` to `path` with exactly these extra headers.
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply> {
        request(
            self.addr,
            Method::POST,
            path,
            headers,
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// GETs `path_and_query`.
    pub async fn get(&self, path_and_query: &str) -> Result<Reply> {
        request(self.addr, Method::GET, path_and_query, &[], Bytes::new()).await
    }

    /// POSTs `body` to the endpoint over `transport`, signed with [`SECRET`].
    pub async fn post_over(&self, transport: &Transport, body: &[u8]) -> Result<Reply> {
        let signature = verify::sign(SECRET, body);
        request_over(
            self.addr,
            transport,
            Method::POST,
            PATH,
            &[("x-hub-signature-256", signature.as_str())],
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// GETs `path_and_query` over `transport`.
    pub async fn get_over(&self, transport: &Transport, path_and_query: &str) -> Result<Reply> {
        request_over(
            self.addr,
            transport,
            Method::GET,
            path_and_query,
            &[],
            Bytes::new(),
        )
        .await
    }

    /// Waits until the file sink holds at least `count` events; returns them all.
    pub async fn wait_for_events(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        wait_for_lines(&self.events_path(), count, timeout).await
    }

    /// Every event stored before this call, once nothing is left in flight: posts a marker
    /// (a WhatsApp text message with a fresh id, after every request the test made) and
    /// waits until the file sink holds it. Normalization and the file sink keep the order of
    /// acceptance, so what precedes the marker is all that earlier requests produced (but
    /// a lead being enriched, which follows the requests behind it).
    pub async fn settled_events(&self, timeout: Duration) -> Result<Vec<serde_json::Value>> {
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "wamid.settled.{}",
            MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"2"}},"messages":[{{"from":"15550002222","id":"{id}","timestamp":"1700000000","type":"text","text":{{"body":"marker"}}}}]}}}}]}}]}}"#
        );
        let reply = self.post(body.as_bytes()).await?;
        anyhow::ensure!(
            reply.status == StatusCode::OK,
            "the marker was refused: {} {}",
            reply.status,
            reply.text()
        );
        let deadline = Instant::now() + timeout;
        loop {
            let events = read_events(&self.events_path())?;
            if let Some(at) = events.iter().position(|event| event["id"] == id.as_str()) {
                return Ok(events[..at].to_vec());
            }
            if Instant::now() > deadline {
                bail!("the marker {id} never reached the file sink in {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the sink `sink` has delivered `count` events in total (per its metric).
    pub async fn wait_delivered(&self, sink: &str, count: usize, timeout: Duration) -> Result<()> {
        let sample = format!(r#"metahook_sink_deliveries_total{{result="success",sink="{sink}"}}"#);
        #[allow(clippy::cast_precision_loss)]
        let count = count as f64;
        self.wait_metric_at_least(&sample, count, timeout, &format!("sink {sink} delivering"))
            .await
            .map(drop)
    }

    /// Waits until the sample `sample` of /metrics reaches `at_least` (an absent sample
    /// counts as 0); fails after `timeout` saying `what` was awaited. Returns the value.
    pub async fn wait_metric_at_least(
        &self,
        sample: &str,
        at_least: f64,
        timeout: Duration,
        what: &str,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(sample).await.unwrap_or(0.0);
            if value >= at_least {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: {sample} is {value}, not {at_least}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A metric's value from /metrics (the sample whose name-and-labels text is given), read
    /// from [`TestReceiver::probes_addr`].
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.metrics_text().await?;
        metric_value(&text, sample).with_context(|| format!("no sample {sample} in\n{text}"))
    }

    /// The whole /metrics exposition, read from [`TestReceiver::probes_addr`].
    pub async fn metrics_text(&self) -> Result<String> {
        Ok(request(
            self.probes_addr(),
            Method::GET,
            "/metrics",
            &[],
            Bytes::new(),
        )
        .await?
        .text())
    }

    /// Shuts the receiver down and waits for it.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            running.shutdown();
            running.wait().await?;
        }
        Ok(())
    }
}

/// `prefix` followed by this process's id and the clock's nanoseconds: a name (a JetStream
/// stream, a PostgreSQL schema, a subject token) no other test or run uses at once on the
/// machine's shared servers.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{}_{nanos}", std::process::id())
}

/// The value of `sample` (e.g. `metahook_requests_total{code="200",endpoint="meta",method="POST"}`).
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
}

/// Serves HTTP/1.1 on `listener` until the returned task is aborted: each request goes to
/// `answer` with the shared `state`. The loop of the tests' own services (the downstream
/// HTTP service, the fake Graph API).
pub fn serve_http<S, F, Fut>(
    listener: tokio::net::TcpListener,
    state: Arc<S>,
    answer: F,
) -> tokio::task::JoinHandle<()>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = Arc::clone(&state);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let answered = answer(Arc::clone(&state), request);
                    async move { Ok::<_, Infallible>(answered.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Waits until a receiver just started (a process or a container) answers `GET /readyz`
/// on `addr` with 200; the error says what it answered last.
pub async fn wait_ready(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match request(addr, Method::GET, "/readyz", &[], Bytes::new()).await {
            Ok(reply) if reply.status == StatusCode::OK => return Ok(()),
            Ok(reply) => last = format!("{} {}", reply.status, reply.text()),
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the receiver was not ready on {addr} within {within:?}: {last}")
}

/// Sends one request on a fresh connection and reads the whole response (10 s bound).
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply> {
    request_over(addr, &Transport::Plain, method, path, headers, body).await
}

/// POSTs `body` to `path` on `addr`, signed with [`SECRET`] as Meta signs (a receiver
/// process of a test's own; [`TestReceiver::post`] for one in the test's process).
pub async fn post_signed(addr: SocketAddr, path: &str, body: &[u8]) -> Result<Reply> {
    let signature = verify::sign(SECRET, body);
    request(
        addr,
        Method::POST,
        path,
        &[("x-hub-signature-256", signature.as_str())],
        Bytes::copy_from_slice(body),
    )
    .await
}

/// [`request`] over `transport` (plain HTTP or HTTPS).
pub async fn request_over(
    addr: SocketAddr,
    transport: &Transport,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply> {
    let attempt = async {
        let mut connection = client::connect_with(addr, transport).await?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).context("building request")?;
        connection.ready().await.context("connection not ready")?;
        let response = connection
            .send_request(request)
            .await
            .context("sending request")?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading response")?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .context("request timed out")?
}

/// Polls `check` every 25 ms until it returns true; fails after `timeout` saying `what` was
/// awaited. The tests wait on a condition this way, never on a fixed sleep.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not so after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `promtool check metrics` on an exposition: its findings (empty when clean), or an
/// error naming promtool when it is not installed (scripts/test.sh installs it).
pub fn promtool_findings(exposition: &[u8]) -> Result<String> {
    let promtool = crate::tools::find("promtool")?;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("promtool's stdin")?,
        exposition,
    )
    .context("writing to promtool")?;
    let output = child.wait_with_output().context("waiting for promtool")?;
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() && findings.trim().is_empty() {
        bail!("promtool failed with {}", output.status);
    }
    Ok(findings.trim().to_owned())
}

/// Waits until the JSON-lines file at `path` holds at least `count` complete lines.
pub async fn wait_for_lines(
    path: &Path,
    count: usize,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = read_events(path)?;
        if lines.len() >= count {
            return Ok(lines);
        }
        if Instant::now() > deadline {
            bail!(
                "{} holds {} events, expected at least {count}",
                path.display(),
                lines.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every complete line of a JSON-lines file, parsed; a line that is not JSON is an error.
pub fn read_events(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {} is not JSON: {line}", path.display(), i + 1))
        })
        .collect()
}

/// The shared Meta fixtures: `META_FIXTURES_DIR`, else `../shared/fixtures/meta` beside the
/// repository. Absent, it is an error naming the folder, unless `META_FIXTURES_OPTIONAL=1`
/// (a laptop without the shared folder): then `None`, and the test that needs them says so
/// and skips only itself.
pub fn shared_fixtures_dir() -> Result<Option<PathBuf>> {
    let dir = std::env::var_os("META_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/meta")
        });
    if dir.join("INDEX.tsv").is_file() {
        return Ok(Some(dir));
    }
    if std::env::var_os("META_FIXTURES_OPTIONAL").is_some_and(|v| v == "1") {
        return Ok(None);
    }
    bail!(
        "the shared Meta fixtures are not at {} (no INDEX.tsv): set META_FIXTURES_DIR to the \
         folder, or META_FIXTURES_OPTIONAL=1 to skip the tests that read it",
        dir.display()
    )
}

/// The repository's own fixtures.
pub fn own_fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../receiver/tests/fixtures/meta")
}

/// The bodies of the repository's own fixtures, in file-name order.
pub fn own_fixture_bodies() -> Result<Vec<Vec<u8>>> {
    let dir = own_fixtures_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| p.display().to_string()))
        .collect()
}

/// How many events the own fixtures yield, from their INDEX.tsv.
pub fn own_fixture_events() -> Result<usize> {
    let index = std::fs::read_to_string(own_fixtures_dir().join("INDEX.tsv"))
        .context("reading INDEX.tsv")?;
    index
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .nth(4)
                .unwrap_or("")
                .parse::<usize>()
                .context("INDEX.tsv events column")
        })
        .sum()
}

/// The `metahook-receiver` binary of this build (built by scripts/test.sh before the tests).
pub fn receiver_bin() -> Result<PathBuf> {
    workspace_bin("metahook-receiver", "METAHOOK_RECEIVER_BIN")
}

/// The receiver binary running on a configuration file, ready (`/readyz` 200); killed
/// (SIGKILL) on drop. For what needs a process of its own: a crash, a signal, its memory.
#[derive(Debug)]
pub struct ReceiverProcess(std::process::Child);

impl ReceiverProcess {
    /// Starts the receiver on `config` and waits until it is ready on `addr`.
    pub async fn start(config: &Path, addr: SocketAddr) -> Result<ReceiverProcess> {
        Self::spawn(
            config,
            addr,
            std::process::Stdio::null(),
            std::process::Stdio::null(),
        )
        .await
    }

    /// [`ReceiverProcess::start`] with the process's whole output (stdout and stderr) written
    /// to `log`, for tests that read what it logged.
    pub async fn start_logged(
        config: &Path,
        addr: SocketAddr,
        log: &Path,
    ) -> Result<ReceiverProcess> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let copy = file.try_clone().context("sharing the log file")?;
        Self::spawn(config, addr, file.into(), copy.into()).await
    }

    async fn spawn(
        config: &Path,
        addr: SocketAddr,
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<ReceiverProcess> {
        let child = std::process::Command::new(receiver_bin()?)
            .arg("--config")
            .arg(config)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting metahook-receiver")?;
        let receiver = ReceiverProcess(child);
        wait_ready(addr, Duration::from_secs(20)).await?;
        Ok(receiver)
    }

    /// The process, to signal or wait for.
    pub fn child(&mut self) -> &mut std::process::Child {
        &mut self.0
    }

    /// The most memory the process has held so far (`VmHWM`, peak resident set), in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        let path = format!("/proc/{}/status", self.0.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM line in {path}"))?;
        Ok(kib / 1024.0)
    }
}

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary of this build: `env_override` when set, else `name` in the profile directory of
/// the running test executable (scripts/test.sh builds every binary before the tests).
pub fn workspace_bin(name: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_override) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no profile directory")?;
    let bin = profile_dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --bins), or set {env_override}",
            bin.display()
        );
    }
    Ok(bin)
}

/// An HTTP sink named `name` whose destination is a closed local port: every attempt fails,
/// and after two attempts its events become dead letters (for alert and metric tests).
pub fn failing_http_sink(name: &str) -> Result<SinkConfig> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("finding a free port")?;
    Ok(SinkConfig {
        name: name.into(),
        kind: SinkKind::Http(HttpSinkConfig {
            url: format!("http://{closed}/hooks"),
            signing_secret_file: None,
            timeout: Duration::from_millis(500),
            concurrency: 1,
            batch_size: 1,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            ..HttpSinkConfig::new(String::new())
        }),
        retry: RetryConfig {
            max_attempts: 2,
            max_backoff: Duration::from_millis(100),
        },
    })
}
