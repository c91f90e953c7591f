//! Standby: what a bound listener answers while the receiver cannot take webhooks yet (`run`
//! waiting for the spool's lock and opening it) or never will (`drain`).
//!
//! `/healthz` answers 200, so a liveness probe does not restart a receiver that waits for a
//! drain to let go of its volume; `/readyz` answers 503, so no traffic is routed to it;
//! `/metrics` is served, so the wait (or a drain's progress) can be watched; every other
//! request gets 503 with `Retry-After` and its body unread (Meta sends it again later).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::HttpResponse;
use crate::metrics::Metrics;
use crate::tls::TlsServer;

/// How long open standby connections get to finish once standby ends (probes and scrapes
/// are quick; an idle keep-alive connection is closed at once).
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// What standby answers with.
#[derive(Debug, Clone)]
pub struct Standby {
    /// Where `/metrics` comes from.
    pub metrics: Arc<Metrics>,
    /// Why the receiver is not ready, the body of `/readyz` and of the 503s.
    pub why: &'static str,
    /// `limits.retry_after_seconds`.
    pub retry_after_seconds: u32,
    /// `limits.header_read_timeout` (and the TLS handshake's bound).
    pub header_read_timeout: Duration,
}

/// Answers on `tcp` as [`Standby`] says (over TLS when `tls` is given) until `done` turns
/// true (or its sender is gone); then closes its connections, waiting up to
/// [`CLOSE_WITHIN`] for requests in progress, and hands the listener back.
pub async fn standby(
    tcp: &TcpListener,
    tls: Option<&Arc<TlsServer>>,
    answers: &Standby,
    mut done: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(answers.header_read_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = tcp.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let timeout = answers.header_read_timeout;
                let answers = answers.clone();
                let service = service_fn(move |request| {
                    let response = answer(&answers, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                match tls {
                    None => {
                        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            if let Err(err) = connection.await {
                                tracing::debug!(peer = %peer, error = %err, "standby connection ended with an error");
                            }
                        });
                    }
                    Some(tls) => {
                        let (watcher, tls, builder) = (graceful.watcher(), Arc::clone(tls), builder.clone());
                        tokio::spawn(async move {
                            let Some((stream, _)) = tls.accept(stream, peer, timeout).await else {
                                return;
                            };
                            if let Err(err) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                                tracing::debug!(peer = %peer, error = %err, "standby connection ended with an error");
                            }
                        });
                    }
                }
            }
            changed = done.changed() => {
                if changed.is_err() || *done.borrow() {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_WITHIN, graceful.shutdown()).await;
}

/// The answer to one request.
fn answer<B>(answers: &Standby, request: &Request<B>) -> HttpResponse {
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    let (status, body, content_type) = match request.uri().path() {
        "/healthz" if get => (StatusCode::OK, Bytes::from_static(b"ok\n"), TEXT),
        "/metrics" if get => (
            StatusCode::OK,
            Bytes::from(answers.metrics.encode()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(format!("not ready: {}\n", answers.why)),
            TEXT,
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::SERVICE_UNAVAILABLE && request.uri().path() != "/readyz" {
        headers.insert(RETRY_AFTER, HeaderValue::from(answers.retry_after_seconds));
        // Its body was not read.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Standby {
        Standby {
            metrics: Arc::new(Metrics::new().expect("metrics")),
            why: "waiting for the spool",
            retry_after_seconds: 7,
            header_read_timeout: Duration::from_secs(5),
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("request")
    }

    #[test]
    fn alive_not_ready_and_webhooks_retried_later() {
        let answers = answers();
        assert_eq!(answer(&answers, &get("/healthz")).status(), StatusCode::OK);
        let ready = answer(&answers, &get("/readyz"));
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready.headers().get(RETRY_AFTER).is_none());
        let metrics = answer(&answers, &get("/metrics"));
        assert_eq!(metrics.status(), StatusCode::OK);
        let webhook = Request::post("/webhooks/whatsapp")
            .body(())
            .expect("request");
        let refused = answer(&answers, &webhook);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[RETRY_AFTER], "7");
        assert_eq!(refused.headers()[CONNECTION], "close");
    }
}
