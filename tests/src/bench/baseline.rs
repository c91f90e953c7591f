//! The baseline server: the least work any correct webhook receiver must do.
//!
//! It reads the body, verifies the signature in constant time, parses the JSON, and answers,
//! on the same hyper/tokio stack as the receiver but with no storage. The receiver's
//! throughput and latency are judged relative to it, which makes the targets independent of
//! the machine the benchmark happens to run on.
//!
//! It runs in a child process (the bench binary re-executed with a hidden flag) so it can be
//! pinned to its own CPU and its memory measured, exactly like the receiver.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::signature::{SIGNATURE_HEADER, Signer, Verdict};
use super::{HEALTH_PATH, WEBHOOK_PATH};

/// Largest body accepted; Meta's batches stay far below this.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Entry point of the child process: serves on `addr` until SIGTERM.
pub fn run_process(addr: SocketAddr, secret_file: &Path) -> Result<()> {
    let secret = std::fs::read(secret_file)
        .with_context(|| format!("reading secret file {}", secret_file.display()))?;
    let signer = Signer::new(&secret)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building baseline tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding baseline listener on {addr}"))?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        serve(listener, signer, async move {
            terminate.recv().await;
        })
        .await
    })
}

/// Accepts keep-alive HTTP/1.1 connections on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    signer: Signer,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let signer = Arc::new(signer);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // Usually fd exhaustion; back off instead of spinning on accept.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Best effort, as in any server: a failure only costs latency.
                let _ = stream.set_nodelay(true);
                let signer = Arc::clone(&signer);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(request, Arc::clone(&signer)));
                    // A client going away mid-request is normal and not worth reporting.
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }
    }
}

/// Routes one request; every outcome is a status code with an empty body.
async fn handle(
    request: Request<Incoming>,
    signer: Arc<Signer>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match (request.method(), request.uri().path()) {
        (&Method::GET, HEALTH_PATH) => StatusCode::OK,
        (&Method::POST, WEBHOOK_PATH) => accept_webhook(request, &signer).await,
        _ => StatusCode::NOT_FOUND,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

/// Collects, verifies and parses a webhook POST: 401 without a usable signature header,
/// 403 when it does not match, 400 for a body that is too large or not JSON, else 200.
async fn accept_webhook(request: Request<Incoming>, signer: &Signer) -> StatusCode {
    let Some(signature) = request.headers().get(SIGNATURE_HEADER).cloned() else {
        return StatusCode::UNAUTHORIZED;
    };
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    match signer.verify(&body, signature.as_bytes()) {
        Verdict::Valid => {}
        Verdict::Malformed => return StatusCode::UNAUTHORIZED,
        Verdict::Mismatch => return StatusCode::FORBIDDEN,
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}
