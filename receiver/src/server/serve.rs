//! Serving a listener with hyper, and graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Connection, HttpResponse, Receiver, Role};
use crate::client_auth::Peer;
use crate::tls::TlsServer;

/// A bound listener and how its connections are served.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// What it serves.
    pub role: Role,
    /// TLS, when connections are HTTPS.
    pub tls: Option<Arc<TlsServer>>,
}

/// The hyper service of one connection: every request goes to `handler` with the
/// connection's facts.
fn connection_service(
    handler: Arc<Receiver>,
    connection: Arc<Connection>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = HttpResponse,
    Error = Infallible,
    Future = impl Future<Output = Result<HttpResponse, Infallible>> + Send,
> + Clone {
    service_fn(move |request| {
        let handler = Arc::clone(&handler);
        let connection = Arc::clone(&connection);
        async move {
            // The admin endpoints only on the probes listener, never where Meta calls.
            if connection.role == Role::Probes
                && crate::replay::admin::is_admin_path(request.uri().path())
                && let Some(admin) = handler.admin()
            {
                return Ok::<_, Infallible>(admin.handle(request).await);
            }
            Ok::<_, Infallible>(handler.handle(request, &connection).await)
        }
    })
}

/// Serves `receiver` on `listener` until `stop` turns true; then keeps accepting for `delay`
/// (while load balancers notice /readyz failing), stops accepting, and waits up to `grace`
/// for open connections to finish their requests. Over TLS, the handshake runs in the
/// connection's own task, bounded by `limits.header_read_timeout`.
pub async fn serve(
    listener: Listener,
    receiver: Arc<Receiver>,
    mut stop: watch::Receiver<bool>,
    delay: Duration,
    grace: Duration,
) {
    let Listener { tcp, role, tls } = listener;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(receiver.limits.header_read_timeout)
        .keep_alive(true);
    let mut stop_accepting_at: Option<tokio::time::Instant> = None;
    loop {
        let until_stop = async {
            match stop_accepting_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = Arc::clone(&receiver);
                match &tls {
                    None => {
                        let connection = Arc::new(Connection { peer: Peer::plain(peer), role });
                        let service = connection_service(handler, connection);
                        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            if let Err(err) = connection.await {
                                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
                            }
                        });
                    }
                    Some(tls) => {
                        // Watched from now: a shutdown waits for handshakes in progress too.
                        let watcher = graceful.watcher();
                        let tls = Arc::clone(tls);
                        let builder = builder.clone();
                        let timeout = receiver.limits.header_read_timeout;
                        tokio::spawn(async move {
                            let Some((stream, verified)) = tls.accept(stream, peer, timeout).await else {
                                return;
                            };
                            let connection = Arc::new(Connection { peer: verified, role });
                            let service = connection_service(handler, connection);
                            if let Err(err) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            changed = stop.changed(), if stop_accepting_at.is_none() => {
                if changed.is_err() || *stop.borrow() {
                    stop_accepting_at = Some(tokio::time::Instant::now() + delay);
                }
            }
            () = until_stop => break,
        }
    }
    drop(tcp);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = ?role, "all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(listener = ?role, grace_seconds = grace.as_secs(), "grace period over with connections still open"),
    }
}
