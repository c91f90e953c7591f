//! HTTPS, mutual TLS and the trusted proxy over real sockets and real TLS, with certificates
//! generated here (rcgen): who is accepted, who is refused and how each refusal is counted,
//! probes without a client certificate, the probes-only listener, certificate and CA
//! reloads without a restart, real curl, and unusable files named by their key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use metahook_receiver::config::{Config, TlsConfig, TlsMode, TrustedProxyConfig};
use metahook_receiver::verify;
use metahook_tests::bench::client::Transport;
use metahook_tests::pki::{self, Ca, Leaf, META_CLIENT_NAME, Validity, Versions};
use metahook_tests::testkit::{self, PATH, SECRET, TestReceiver, VERIFY_TOKEN};
use rustls::HandshakeKind;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A WhatsApp text message whose event id is `id`.
fn body(id: &str) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"200300400500600"}},"contacts":[{{"profile":{{"name":"Ada"}},"wa_id":"15551234567"}}],"messages":[{{"from":"15551234567","id":"{id}","timestamp":"1700000000","type":"text","text":{{"body":"hello over TLS"}}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// The test CA and the serving certificate it issued.
struct Pki {
    ca: Ca,
    server: Leaf,
}

impl Pki {
    fn new() -> Result<Pki> {
        let ca = Ca::new("metahook test CA")?;
        let server = ca.server("metahook test server")?;
        Ok(Pki { ca, server })
    }

    /// HTTPS trusting the test CA, presenting `client` when asked.
    fn https(&self, client: Option<&Leaf>) -> Result<Transport> {
        Ok(Transport::Tls(pki::client_config(
            &[self.ca.der()],
            client,
            Versions::Both,
        )?))
    }

    /// A client certificate of the test CA with Meta's name.
    fn meta(&self) -> Result<Leaf> {
        self.ca.client(META_CLIENT_NAME, true, Validity::Current)
    }
}

/// Where the serving certificate lives: `<dir>/tls/current/{tls.crt,tls.key}`, `current`
/// being a symlink swapped atomically, as Kubernetes updates a mounted Secret.
fn write_serving(dir: &Path, version: &str, cert: &str, key: &str) -> Result<(PathBuf, PathBuf)> {
    let tls = dir.join("tls");
    let versioned = tls.join(version);
    std::fs::create_dir_all(&versioned)?;
    std::fs::write(versioned.join("tls.crt"), cert)?;
    std::fs::write(versioned.join("tls.key"), key)?;
    let next = tls.join("current.next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(version, &next)?;
    std::fs::rename(&next, tls.join("current"))?;
    Ok((tls.join("current/tls.crt"), tls.join("current/tls.key")))
}

/// Starts a receiver serving HTTPS in `mode` (client CA: the test CA), with a plain-HTTP
/// `metrics_listen` for reading metrics, then applies `tweak`.
async fn tls_receiver(
    pki: &Pki,
    mode: TlsMode,
    tweak: impl FnOnce(&mut Config, &Path),
) -> Result<TestReceiver> {
    TestReceiver::start_with(|config, dir| {
        let (cert_file, key_file) =
            write_serving(dir, "v1", &pki.server.cert_pem(), &pki.server.key_pem())
                .expect("serving certificate");
        let client_ca = pki.ca.write(&dir.join("client-ca.crt")).expect("client CA");
        config.tls = Some(TlsConfig {
            cert_file,
            key_file,
            mode,
            client_ca_file: (mode == TlsMode::Mutual).then_some(client_ca),
            allowed_client_names: vec![META_CLIENT_NAME.to_owned()],
            reload_interval: Duration::from_millis(50),
        });
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
        tweak(config, dir);
    })
    .await
}

fn rejections(reason: &str) -> String {
    format!(r#"metahook_tls_client_rejections_total{{reason="{reason}"}}"#)
}

/// Polls a metric until it equals `expected` (a handshake refusal is counted by the server
/// task right after the client saw the alert).
async fn wait_metric(receiver: &TestReceiver, sample: &str, expected: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = receiver.metric(sample).await?;
        if (value - expected).abs() < f64::EPSILON {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{sample} is {value}, expected {expected}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops the receiver (its sinks deliver everything spooled first) and returns the ids of
/// the events in the file sink: what was accepted, in order.
async fn stored_ids(receiver: &mut TestReceiver) -> Result<Vec<String>> {
    receiver.stop().await?;
    Ok(testkit::read_events(&receiver.events_path())?
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect())
}

fn handshake_query() -> String {
    format!("{PATH}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444")
}

#[tokio::test]
async fn mutual_tls_accepts_meta_client_certificates() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let meta = pki.meta()?;
    for (versions, id) in [
        (Versions::Both, "wamid.tls13"),
        (Versions::Tls12, "wamid.tls12"),
    ] {
        let transport = Transport::Tls(pki::client_config(&[pki.ca.der()], Some(&meta), versions)?);
        let reply = receiver.post_over(&transport, &body(id)).await?;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{versions:?}: {}",
            reply.text()
        );
    }
    // The CN alone (no DNS SAN) is enough, as in Meta's certificate.
    let cn_only = pki.ca.client(META_CLIENT_NAME, false, Validity::Current)?;
    let reply = receiver
        .post_over(&pki.https(Some(&cn_only))?, &body("wamid.cn-only"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The verification GET follows the same rule, and passes with the certificate.
    let reply = receiver
        .get_over(&pki.https(Some(&meta))?, &handshake_query())
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "1158201444");
    for reason in [
        "no_certificate",
        "untrusted",
        "name_mismatch",
        "expired",
        "untrusted_proxy",
    ] {
        assert_eq!(receiver.metric(&rejections(reason)).await?, 0.0, "{reason}");
    }
    assert_eq!(
        stored_ids(&mut receiver).await?,
        ["wamid.tls13", "wamid.tls12", "wamid.cn-only"]
    );
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_a_webhook_without_a_client_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let anonymous = pki.https(None)?;
    let reply = receiver
        .post_over(&anonymous, &body("wamid.anonymous"))
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.text().contains("client certificate is required"),
        "{}",
        reply.text()
    );
    let reply = receiver.get_over(&anonymous, &handshake_query()).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "the GET handshake too");
    assert_eq!(receiver.metric(&rejections("no_certificate")).await?, 2.0);

    let reply = receiver
        .post_over(&pki.https(Some(&pki.meta()?))?, &body("wamid.good"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(stored_ids(&mut receiver).await?, ["wamid.good"]);
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_a_certificate_from_another_ca_in_the_handshake() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let stranger =
        Ca::new("someone else's CA")?.client(META_CLIENT_NAME, true, Validity::Current)?;
    let result = receiver
        .post_over(&pki.https(Some(&stranger))?, &body("wamid.stranger"))
        .await;
    assert!(result.is_err(), "the handshake must fail: {result:?}");
    wait_metric(&receiver, &rejections("untrusted"), 1.0).await?;

    let reply = receiver
        .post_over(&pki.https(Some(&pki.meta()?))?, &body("wamid.good"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(receiver.metric(&rejections("untrusted")).await?, 1.0);
    assert_eq!(stored_ids(&mut receiver).await?, ["wamid.good"]);
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_a_certificate_with_another_name() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let impostor = pki
        .ca
        .client("client.webhooks.example.com", true, Validity::Current)?;
    let reply = receiver
        .post_over(&pki.https(Some(&impostor))?, &body("wamid.impostor"))
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("not allowed"), "{}", reply.text());
    assert_eq!(receiver.metric(&rejections("name_mismatch")).await?, 1.0);

    let reply = receiver
        .post_over(&pki.https(Some(&pki.meta()?))?, &body("wamid.good"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(stored_ids(&mut receiver).await?, ["wamid.good"]);
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_an_expired_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let expired = pki.ca.client(META_CLIENT_NAME, true, Validity::Expired)?;
    let result = receiver
        .post_over(&pki.https(Some(&expired))?, &body("wamid.expired"))
        .await;
    assert!(result.is_err(), "the handshake must fail: {result:?}");
    wait_metric(&receiver, &rejections("expired"), 1.0).await?;
    assert_eq!(receiver.metric(&rejections("untrusted")).await?, 0.0);

    let reply = receiver
        .post_over(&pki.https(Some(&pki.meta()?))?, &body("wamid.good"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(stored_ids(&mut receiver).await?, ["wamid.good"]);
    Ok(())
}

#[tokio::test]
async fn probes_answer_over_https_without_a_client_certificate_and_on_metrics_listen() -> Result<()>
{
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let anonymous = pki.https(None)?;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = receiver.get_over(&anonymous, path).await?;
        assert_eq!(reply.status, StatusCode::OK, "{path} over HTTPS");
    }
    // Plain HTTP on the HTTPS port is not answered.
    assert!(receiver.get("/healthz").await.is_err());

    // The probes-only listener: plain HTTP, /metrics, /healthz, /readyz and nothing else.
    let probes = receiver.probes_addr();
    assert_ne!(probes, receiver.addr);
    for path in ["/healthz", "/readyz"] {
        let reply = testkit::request(probes, Method::GET, path, &[], Bytes::new()).await?;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let metrics = testkit::request(probes, Method::GET, "/metrics", &[], Bytes::new())
        .await?
        .text();
    assert!(
        metrics.contains(r#"metahook_tls_client_rejections_total{reason="untrusted_proxy"} 0"#),
        "{metrics}"
    );
    let expiry = testkit::metric_value(
        &metrics,
        "metahook_tls_certificate_expiry_timestamp_seconds",
    )
    .context("expiry gauge")?;
    assert!(
        expiry > 4.0e9,
        "the test certificate runs to 4096: {expiry}"
    );
    let findings = testkit::promtool_findings(metrics.as_bytes())?;
    assert!(findings.is_empty(), "promtool findings:\n{findings}");
    let signature = verify::sign(SECRET, &body("wamid.probes"));
    let reply = testkit::request(
        probes,
        Method::POST,
        PATH,
        &[("x-hub-signature-256", signature.as_str())],
        Bytes::from(body("wamid.probes")),
    )
    .await?;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "no webhooks on metrics_listen"
    );
    assert!(stored_ids(&mut receiver).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn server_mode_serves_https_without_client_authentication() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Server, |_, _| {}).await?;
    let reply = receiver
        .post_over(&pki.https(None)?, &body("wamid.server-mode"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A client that does not trust the serving certificate's CA does not get through.
    let other = Transport::Tls(pki::client_config(
        &[Ca::new("another root")?.der()],
        None,
        Versions::Both,
    )?);
    assert!(
        receiver
            .post_over(&other, &body("wamid.distrust"))
            .await
            .is_err()
    );
    assert_eq!(stored_ids(&mut receiver).await?, ["wamid.server-mode"]);
    Ok(())
}

/// Opens a TLS connection with `config`.
async fn connect_with(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    Ok(TlsConnector::from(Arc::clone(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?)
}

/// Opens a TLS connection trusting `roots`; returns it with the certificate it was served.
async fn tls_connect(
    addr: std::net::SocketAddr,
    roots: &[CertificateDer<'static>],
) -> Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
)> {
    let stream = connect_with(addr, &pki::client_config(roots, None, Versions::Both)?).await?;
    let served = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .context("no server certificate")?
        .clone();
    Ok((stream, served))
}

/// The head of a signed POST of `body` that closes the connection after the response.
fn post_head(addr: std::net::SocketAddr, body: &[u8]) -> String {
    format!(
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        verify::sign(SECRET, body),
        body.len()
    )
}

/// Everything the server sends until it closes the connection (10 s bound).
async fn read_answer(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Result<String> {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .context("waiting for the response")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn mutual_tls_keeps_the_client_identity_on_a_resumed_session() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    // One client configuration, so the second connection resumes the first one's session.
    let config = pki::client_config(&[pki.ca.der()], Some(&pki.meta()?), Versions::Both)?;
    for (id, kind) in [
        ("wamid.full", HandshakeKind::Full),
        ("wamid.resumed", HandshakeKind::Resumed),
    ] {
        let mut stream = connect_with(receiver.addr, &config).await?;
        let head = post_head(receiver.addr, &body(id));
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body(id)).await?;
        stream.flush().await?;
        let answer = read_answer(&mut stream).await?;
        assert_eq!(stream.get_ref().1.handshake_kind(), Some(kind), "{id}");
        assert!(answer.starts_with("HTTP/1.1 200"), "{id}: {answer}");
    }
    assert_eq!(receiver.metric(&rejections("no_certificate")).await?, 0.0);
    assert_eq!(
        stored_ids(&mut receiver).await?,
        ["wamid.full", "wamid.resumed"]
    );
    Ok(())
}

/// Polls new connections until they are served `expected`.
async fn wait_served(
    receiver: &TestReceiver,
    roots: &[CertificateDer<'static>],
    expected: &CertificateDer<'_>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, served) = tls_connect(receiver.addr, roots).await?;
        if served == *expected {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "new connections still get the previous certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serving_certificate_is_reloaded_for_new_connections_without_dropping_old_ones()
-> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Server, |_, _| {}).await?;
    let roots = [pki.ca.der()];

    // A request in flight on a connection made with the first certificate: headers and
    // half of the body now, the rest after the swap.
    let (mut old, served) = tls_connect(receiver.addr, &roots).await?;
    assert_eq!(served, pki.server.der());
    let slow = body("wamid.slow");
    let head = post_head(receiver.addr, &slow);
    let half = slow.len() / 2;
    old.write_all(head.as_bytes()).await?;
    old.write_all(&slow[..half]).await?;
    old.flush().await?;

    let next = pki.ca.server("metahook second serving certificate")?;
    write_serving(receiver.dir.path(), "v2", &next.cert_pem(), &next.key_pem())?;
    wait_served(&receiver, &roots, &next.der()).await?;

    old.write_all(&slow[half..]).await?;
    old.flush().await?;
    let answer = read_answer(&mut old).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let reply = receiver
        .post_over(&pki.https(None)?, &body("wamid.after-swap"))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    let reload_errors = r#"metahook_tls_reload_errors_total{file="certificate"}"#;
    assert_eq!(receiver.metric(reload_errors).await?, 0.0);

    // A broken replacement keeps the certificate in force, and is counted once.
    write_serving(
        receiver.dir.path(),
        "v3",
        "not a certificate\n",
        &next.key_pem(),
    )?;
    wait_metric(&receiver, reload_errors, 1.0).await?;
    let (_, served) = tls_connect(receiver.addr, &roots).await?;
    assert_eq!(served, next.der());
    tokio::time::sleep(Duration::from_millis(200)).await; // several more checks of the same file
    assert_eq!(receiver.metric(reload_errors).await?, 1.0);

    assert_eq!(
        stored_ids(&mut receiver).await?,
        ["wamid.slow", "wamid.after-swap"]
    );
    Ok(())
}

#[tokio::test]
async fn client_ca_bundle_is_reloaded_so_meta_can_rotate_its_ca() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let next_ca = Ca::new("Meta's next CA")?;
    let newcomer = next_ca.client(META_CLIENT_NAME, true, Validity::Current)?;
    assert!(
        receiver
            .post_over(&pki.https(Some(&newcomer))?, &body("wamid.early"))
            .await
            .is_err()
    );
    wait_metric(&receiver, &rejections("untrusted"), 1.0).await?;

    // Both CAs in the bundle during the overlap, replaced atomically.
    let bundle = receiver.dir.path().join("client-ca.crt");
    let staged = receiver.dir.path().join("client-ca.crt.next");
    std::fs::write(&staged, format!("{}{}", pki.ca.pem(), next_ca.pem()))?;
    std::fs::rename(&staged, &bundle)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let newcomer_https = pki.https(Some(&newcomer))?;
    loop {
        if let Ok(reply) = receiver
            .post_over(&newcomer_https, &body("wamid.rotated"))
            .await
        {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the new CA is not trusted after the reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = receiver
        .post_over(&pki.https(Some(&pki.meta()?))?, &body("wamid.old-ca"))
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the old CA still counts during the overlap"
    );
    assert_eq!(
        receiver
            .metric(r#"metahook_tls_reload_errors_total{file="client_ca"}"#)
            .await?,
        0.0
    );
    assert_eq!(
        stored_ids(&mut receiver).await?,
        ["wamid.rotated", "wamid.old-ca"]
    );
    Ok(())
}

/// Runs curl (scripts/test.sh installs it; missing, the test fails naming it) against the
/// receiver; returns the HTTP status it printed.
async fn curl(args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = tokio::process::Command::new(metahook_tests::tools::find("curl")?)
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .await
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn curl_with_a_client_certificate_is_accepted_and_without_one_refused() -> Result<()> {
    let pki = Pki::new()?;
    let mut receiver = tls_receiver(&pki, TlsMode::Mutual, |_, _| {}).await?;
    let dir = receiver.dir.path().to_owned();
    let (cert, key) = pki.meta()?.write(&dir, "meta-client")?;
    let ca = dir.join("client-ca.crt"); // the test CA also issued the serving certificate
    let url = format!("https://127.0.0.1:{}{PATH}", receiver.addr.port());
    let post = |id: &str| -> Result<(PathBuf, String)> {
        let file = dir.join(format!("{id}.json"));
        std::fs::write(&file, body(id))?;
        Ok((file, verify::sign(SECRET, &body(id))))
    };

    let (accepted, signature) = post("wamid.curl")?;
    let signature = format!("X-Hub-Signature-256: {signature}");
    let data = format!("@{}", accepted.display());
    let status = curl(&[
        "--cacert".as_ref(),
        ca.as_os_str(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "-H".as_ref(),
        "Content-Type: application/json".as_ref(),
        "-H".as_ref(),
        signature.as_ref(),
        "--data-binary".as_ref(),
        data.as_ref(),
        url.as_ref(),
    ])
    .await?;
    assert_eq!(status, "200");

    let (refused, signature) = post("wamid.curl-anonymous")?;
    let signature = format!("X-Hub-Signature-256: {signature}");
    let data = format!("@{}", refused.display());
    let status = curl(&[
        "--cacert".as_ref(),
        ca.as_os_str(),
        "-H".as_ref(),
        "Content-Type: application/json".as_ref(),
        "-H".as_ref(),
        signature.as_ref(),
        "--data-binary".as_ref(),
        data.as_ref(),
        url.as_ref(),
    ])
    .await?;
    assert_eq!(status, "403");
    assert_eq!(receiver.metric(&rejections("no_certificate")).await?, 1.0);
    assert_eq!(stored_ids(&mut receiver).await?, ["wamid.curl"]);
    Ok(())
}

fn proxy_config(cidrs: &[&str]) -> TrustedProxyConfig {
    TrustedProxyConfig {
        cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
        allowed_client_names: vec![META_CLIENT_NAME.to_owned()],
        verify_header: "ssl-client-verify".to_owned(),
        subject_header: "ssl-client-subject-dn".to_owned(),
    }
}

/// POSTs `id`'s body, signed, with `headers` added.
async fn post_via_proxy(
    receiver: &TestReceiver,
    id: &str,
    headers: &[(&str, &str)],
) -> Result<StatusCode> {
    let body = body(id);
    let signature = verify::sign(SECRET, &body);
    let mut all = vec![("x-hub-signature-256", signature.as_str())];
    all.extend_from_slice(headers);
    Ok(receiver.post_with(PATH, &all, &body).await?.status)
}

const VERIFIED: (&str, &str) = ("ssl-client-verify", "SUCCESS");
const META_DN: (&str, &str) = (
    "ssl-client-subject-dn",
    r"CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\, Inc.,L=Menlo Park,ST=California,C=US",
);

#[tokio::test]
async fn trusted_proxy_verdict_from_a_trusted_peer_is_believed() -> Result<()> {
    let mut receiver = TestReceiver::start_with(|config, _| {
        config.trusted_proxy = Some(proxy_config(&["127.0.0.0/8"]));
    })
    .await?;
    assert_eq!(
        post_via_proxy(&receiver, "wamid.proxied", &[VERIFIED, META_DN]).await?,
        StatusCode::OK
    );
    let legacy = (
        "ssl-client-subject-dn",
        "/C=US/ST=California/L=Menlo Park/O=Meta Platforms, Inc./CN=client.webhooks.fbclientcerts.com",
    );
    assert_eq!(
        post_via_proxy(&receiver, "wamid.legacy-dn", &[VERIFIED, legacy]).await?,
        StatusCode::OK
    );

    let wrong_cn = (
        "ssl-client-subject-dn",
        "CN=client.webhooks.example.com,O=Meta Platforms",
    );
    assert_eq!(
        post_via_proxy(&receiver, "wamid.wrong-cn", &[VERIFIED, wrong_cn]).await?,
        StatusCode::FORBIDDEN
    );
    assert_eq!(receiver.metric(&rejections("name_mismatch")).await?, 1.0);
    assert_eq!(
        post_via_proxy(&receiver, "wamid.no-headers", &[]).await?,
        StatusCode::FORBIDDEN
    );
    assert_eq!(receiver.metric(&rejections("no_certificate")).await?, 1.0);
    let failed = (
        "ssl-client-verify",
        "FAILED:unable to verify the first certificate",
    );
    assert_eq!(
        post_via_proxy(&receiver, "wamid.failed", &[failed, META_DN]).await?,
        StatusCode::FORBIDDEN
    );
    assert_eq!(receiver.metric(&rejections("untrusted")).await?, 1.0);

    // The verification GET follows the same rule.
    let query = handshake_query();
    let reply = testkit::request(
        receiver.addr,
        Method::GET,
        &query,
        &[VERIFIED, META_DN],
        Bytes::new(),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "1158201444");
    assert_eq!(receiver.get(&query).await?.status, StatusCode::FORBIDDEN);
    assert_eq!(receiver.metric(&rejections("no_certificate")).await?, 2.0);
    assert_eq!(receiver.metric(&rejections("untrusted_proxy")).await?, 0.0);
    assert_eq!(
        stored_ids(&mut receiver).await?,
        ["wamid.proxied", "wamid.legacy-dn"]
    );
    Ok(())
}

#[tokio::test]
async fn trusted_proxy_verdict_from_an_untrusted_peer_is_refused() -> Result<()> {
    let mut receiver = TestReceiver::start_with(|config, _| {
        config.trusted_proxy = Some(proxy_config(&["10.0.0.0/8"]));
    })
    .await?;
    assert_eq!(
        post_via_proxy(&receiver, "wamid.forged", &[VERIFIED, META_DN]).await?,
        StatusCode::FORBIDDEN
    );
    assert_eq!(receiver.metric(&rejections("untrusted_proxy")).await?, 1.0);
    // Around the proxy without its headers: refused too, mTLS is what the config demands.
    assert_eq!(
        post_via_proxy(&receiver, "wamid.bypass", &[]).await?,
        StatusCode::FORBIDDEN
    );
    let reply = testkit::request(
        receiver.addr,
        Method::GET,
        &handshake_query(),
        &[VERIFIED, META_DN],
        Bytes::new(),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(receiver.metric(&rejections("untrusted_proxy")).await?, 3.0);
    assert_eq!(receiver.metric(&rejections("no_certificate")).await?, 0.0);
    assert!(stored_ids(&mut receiver).await?.is_empty());
    Ok(())
}

/// Makes one TLS setting unusable.
type Breakage = dyn Fn(&mut TlsConfig, &Path);

#[tokio::test]
async fn unusable_tls_files_fail_the_start_naming_the_key() -> Result<()> {
    let pki = Pki::new()?;
    let other_key = pki.ca.server("another server")?.key_pem();
    let cases: [(&str, Box<Breakage>); 4] = [
        (
            "tls.cert_file",
            Box::new(|tls, dir| tls.cert_file = dir.join("missing.crt")),
        ),
        (
            "tls.key_file",
            Box::new(|tls, dir| tls.key_file = dir.join("missing.key")),
        ),
        (
            "tls.key_file",
            Box::new(move |tls, dir| {
                let path = dir.join("other.key");
                std::fs::write(&path, &other_key).expect("key");
                tls.key_file = path;
            }),
        ),
        (
            "tls.client_ca_file",
            Box::new(|tls, dir| {
                let path = dir.join("not-a-ca.pem");
                std::fs::write(&path, "hello\n").expect("ca");
                tls.client_ca_file = Some(path);
            }),
        ),
    ];
    for (key, break_it) in cases {
        let started = tls_receiver(&pki, TlsMode::Mutual, |config, dir| {
            if let Some(tls) = config.tls.as_mut() {
                break_it(tls, dir);
            }
        })
        .await;
        let err = format!("{:#}", started.err().context("the start must fail")?);
        assert!(err.contains(key), "{key}: {err}");
    }

    // check-config reads the files too, and names the key.
    let dir = tempfile::tempdir()?;
    let (cert, key) = pki.server.write(dir.path(), "server")?;
    let ca = pki.ca.write(&dir.path().join("ca.crt"))?;
    let config = |key_file: &Path| {
        format!(
            "listen: 127.0.0.1:0\nendpoints:\n  - name: a\n    path: /a\n    app_secret_env: \"X:-x\"\n    verify_token_env: \"T:-t\"\nspool: {{dir: {spool}}}\ntls:\n  cert_file: {cert}\n  key_file: {key}\n  mode: mutual\n  client_ca_file: {ca}\n",
            spool = dir.path().join("spool").display(),
            cert = cert.display(),
            key = key_file.display(),
            ca = ca.display(),
        )
    };
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config(&dir.path().join("nope.key")))?;
    let out = std::process::Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tls.key_file") && stderr.contains("nope.key"),
        "{stderr}"
    );
    std::fs::write(&file, config(&key))?;
    let out = std::process::Command::new(testkit::receiver_bin()?)
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mutual TLS"));
    Ok(())
}
