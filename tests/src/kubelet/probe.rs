//! Startup, readiness and liveness probes as the kubelet runs them against the container's
//! address: HTTP(S) GET (success is 2xx or 3xx; HTTPS without verifying the certificate,
//! as the kubelet does), TCP connect, or a command run in the container. Thresholds and
//! the initial delay are honoured; the period is not: every probe runs each second while
//! the harness runs, so tests see a pod turn ready or unready within seconds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::Method;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::runtime;
use crate::bench::client::Transport;
use crate::testkit;

/// A probe's running tally: consecutive results against its thresholds.
#[derive(Debug)]
pub struct Tracker {
    probe: Probe,
    passing: bool,
    successes: i32,
    failures: i32,
    not_before: Instant,
    /// The last failure's description (for the harness's messages).
    pub last_failure: Option<String>,
    /// It passed at least once.
    pub ever_passed: bool,
}

impl Tracker {
    /// A probe of a container that started `started`: passing from the start (liveness)
    /// or not (startup, readiness).
    pub fn new(probe: Probe, initially_passing: bool, started: Instant) -> Tracker {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0);
        Tracker {
            probe,
            passing: initially_passing,
            successes: 0,
            failures: 0,
            not_before: started + Duration::from_secs(delay.unsigned_abs().into()),
            last_failure: None,
            ever_passed: false,
        }
    }

    /// Whether the probe counts as passing now.
    pub fn passing(&self) -> bool {
        self.passing
    }

    /// It failed its failure threshold in a row (a liveness or startup probe's cue to
    /// restart the container).
    pub fn failed(&self) -> bool {
        self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1)
    }

    /// Runs the probe once (unless still in its initial delay) and updates the verdict.
    pub async fn run(&mut self, target: &Target<'_>) {
        if Instant::now() < self.not_before {
            return;
        }
        match check(&self.probe, target).await {
            Ok(()) => {
                self.ever_passed = true;
                self.failures = 0;
                self.successes += 1;
                if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
                    self.passing = true;
                }
            }
            Err(err) => {
                self.last_failure = Some(format!("{err:#}"));
                self.successes = 0;
                self.failures += 1;
                if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
                    self.passing = false;
                }
            }
        }
    }
}

/// What a probe is run against.
#[derive(Debug)]
pub struct Target<'a> {
    /// The container's address.
    pub ip: IpAddr,
    /// Its spec (named ports).
    pub container: &'a Container,
    /// The podman container (exec probes).
    pub podman_name: &'a str,
}

/// Runs `probe` once against `target`: `Ok` when it passes.
pub async fn check(probe: &Probe, target: &Target<'_>) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(
        probe
            .timeout_seconds
            .unwrap_or(1)
            .max(1)
            .unsigned_abs()
            .into(),
    );
    let attempt = async {
        if let Some(get) = &probe.http_get {
            let port = port_number(target.container, &get.port)?;
            let transport = match get.scheme.as_deref().unwrap_or("HTTP") {
                "HTTP" => Transport::Plain,
                "HTTPS" => Transport::Tls(insecure_tls()?),
                other => bail!("probe scheme {other}"),
            };
            let path = get.path.clone().unwrap_or_else(|| "/".to_owned());
            let headers: Vec<(&str, &str)> = get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str()))
                .collect();
            let addr = SocketAddr::new(target.ip, port);
            let reply =
                testkit::request_over(addr, &transport, Method::GET, &path, &headers, Bytes::new())
                    .await?;
            if reply.status.is_success() || reply.status.is_redirection() {
                Ok(())
            } else {
                bail!(
                    "GET {path} on {addr}: {} {}",
                    reply.status,
                    reply.text().trim()
                )
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            let addr = SocketAddr::new(target.ip, port_number(target.container, &tcp.port)?);
            tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))
                .map(drop)
        } else if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            if runtime::exec(target.podman_name, &command).await? {
                Ok(())
            } else {
                bail!("{command:?} failed")
            }
        } else {
            bail!("a probe the harness does not run: {probe:?}")
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| anyhow!("timed out after {timeout:?}"))?
}

/// A port given by name (one of the container's) or number.
pub fn port_number(container: &Container, port: &IntOrString) -> anyhow::Result<u16> {
    let number = match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .with_context(|| {
                    format!("port {name} is not a port of container {}", container.name)
                })?
                .container_port
        }
    };
    u16::try_from(number).with_context(|| format!("port {number} is out of range"))
}

/// TLS that accepts any certificate (the kubelet does not verify probe targets), still
/// checking the handshake's signatures.
fn insecure_tls() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions for an HTTPS probe")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, TCPSocketAction};

    fn container() -> Container {
        Container {
            name: "receiver".to_owned(),
            ports: Some(vec![ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: 9090,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }
    }

    #[test]
    fn ports_resolve_by_name_or_number() -> anyhow::Result<()> {
        let c = container();
        assert_eq!(
            port_number(&c, &IntOrString::String("metrics".into()))?,
            9090
        );
        assert_eq!(port_number(&c, &IntOrString::Int(8080))?, 8080);
        assert!(port_number(&c, &IntOrString::String("http".into())).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn thresholds_decide_the_verdict() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let open = listener.local_addr()?.port();
        let closed = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let c = container();
        let target = Target {
            ip: IpAddr::from([127, 0, 0, 1]),
            container: &c,
            podman_name: "unused",
        };
        let tcp = |port: u16| Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port.into()),
                host: None,
            }),
            failure_threshold: Some(2),
            success_threshold: Some(1),
            ..Probe::default()
        };
        let mut readiness = Tracker::new(tcp(open), false, Instant::now());
        readiness.run(&target).await;
        assert!(readiness.passing() && readiness.ever_passed);
        let mut liveness = Tracker::new(tcp(closed), true, Instant::now());
        liveness.run(&target).await;
        assert!(
            liveness.passing(),
            "one failure is below the threshold of 2"
        );
        assert!(!liveness.failed());
        liveness.run(&target).await;
        assert!(!liveness.passing() && liveness.failed());
        assert!(liveness.last_failure.is_some());
        let mut delayed = Tracker::new(
            Probe {
                initial_delay_seconds: Some(3600),
                ..tcp(open)
            },
            false,
            Instant::now(),
        );
        delayed.run(&target).await;
        assert!(!delayed.ever_passed, "not probed during the initial delay");
        Ok(())
    }
}
