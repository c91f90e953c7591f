//! A TLS terminator in front of a plaintext TCP server: it accepts TLS (rustls, TLS 1.3 and
//! 1.2) with a serving certificate made by the test, requires a client certificate issued by
//! the test's CA when asked to, and copies each connection's plaintext to and from the
//! server behind it. The Kafka sink's TLS tests put it in front of tansu, which cannot
//! serve TLS itself (tansu 0.6 declares `broker --cert` and `--key` in one exclusive
//! argument group); the broker then advertises the front's address, so every connection a
//! client makes after the bootstrap goes through TLS too.
//!
//! It runs on a thread of its own with its own runtime, so synchronous and async tests
//! use it alike; dropping it stops accepting and closes every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::pki::{Ca, Leaf};

/// A running TLS terminator on 127.0.0.1.
#[derive(Debug)]
pub struct TlsFront {
    port: u16,
    refused: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Listens on 127.0.0.1:`port` serving `certificate`; with `client_ca`, a client must
    /// present a certificate that CA issued. Each accepted connection is forwarded to
    /// `upstream`.
    pub fn start(
        port: u16,
        certificate: &Leaf,
        client_ca: Option<&Ca>,
        upstream: SocketAddr,
    ) -> Result<TlsFront> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der()).context("adding the client CA")?;
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .context("client verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(vec![certificate.der()], certificate.key_der())
            .context("serving certificate")?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the TLS front to 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the TLS front's runtime")?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener).context("the TLS front's listener")?
        };
        let refused = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let counter = Arc::clone(&refused);
        let thread = std::thread::Builder::new()
            .name("tls-front".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, acceptor, upstream, counter) => {}
                    }
                });
                // Dropping the runtime here cancels every connection's task.
            })
            .context("starting the TLS front's thread")?;
        Ok(TlsFront {
            port,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Its address as `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many TLS handshakes it refused (no client certificate, one from another CA, a
    /// client that does not trust its certificate).
    pub fn refused_handshakes(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    refused: Arc<AtomicU64>,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let refused = Arc::clone(&refused);
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(socket).await else {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Ok(mut plain) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
