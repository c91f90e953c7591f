//! Minimal HTTP/1.1 client on hyper's connection API.
//!
//! The benchmark needs exactly one request in flight per connection and full control over
//! connection reuse, which the low-level `client::conn::http1` API gives directly (a pooled
//! client could open extra connections or hide reconnects). Used both by the load generator
//! and by the readiness probe, over plain TCP or TLS ([`Transport`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The sending half of one keep-alive connection.
pub type Connection = SendRequest<Full<Bytes>>;

/// How connections reach the server.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// Plain HTTP over TCP.
    #[default]
    Plain,
    /// HTTPS with this client configuration (its roots, and a client certificate for mTLS);
    /// the server is addressed by its IP, which its certificate must name.
    Tls(Arc<rustls::ClientConfig>),
}

/// A response reduced to what the benchmark looks at.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Entire response body, read so the connection can be reused.
    pub body: Bytes,
}

/// Opens a TCP connection to `addr` and performs the HTTP/1 handshake. The connection task
/// is spawned; its errors surface through the returned sender, so they are not lost.
pub async fn connect(addr: SocketAddr) -> Result<Connection> {
    connect_with(addr, &Transport::Plain).await
}

/// [`connect`] over `transport`: for TLS, the TLS handshake comes first.
pub async fn connect_with(addr: SocketAddr, transport: &Transport) -> Result<Connection> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // Requests are small and latency is what is measured: do not let Nagle delay them.
    stream
        .set_nodelay(true)
        .context("setting TCP_NODELAY on client socket")?;
    match transport {
        Transport::Plain => handshake(addr, TokioIo::new(stream)).await,
        Transport::Tls(config) => {
            let stream = TlsConnector::from(Arc::clone(config))
                .connect(ServerName::IpAddress(addr.ip().into()), stream)
                .await
                .with_context(|| format!("TLS handshake with {addr}"))?;
            handshake(addr, TokioIo::new(stream)).await
        }
    }
}

async fn handshake<T>(addr: SocketAddr, io: TokioIo<T>) -> Result<Connection>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .with_context(|| format!("HTTP/1 handshake with {addr}"))?;
    tokio::spawn(async move {
        // Any error here also fails the pending or next `send_request`, where it is counted.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends `request` on `connection` and reads the whole response.
pub async fn send(connection: &mut Connection, request: Request<Full<Bytes>>) -> Result<Reply> {
    connection
        .ready()
        .await
        .context("waiting for connection to accept a request")?;
    let response = connection
        .send_request(request)
        .await
        .context("sending request")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading response body")?
        .to_bytes();
    Ok(Reply { status, body })
}

/// `GET path` on a fresh connection, bounded by `timeout`; used to poll for readiness.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply> {
    get_with(addr, &Transport::Plain, path, timeout).await
}

/// [`get`] over `transport`.
pub async fn get_with(
    addr: SocketAddr,
    transport: &Transport,
    path: &str,
    timeout: Duration,
) -> Result<Reply> {
    let attempt = async {
        let mut connection = connect_with(addr, transport).await?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .context("building GET request")?;
        send(&mut connection, request).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .with_context(|| format!("GET {path} on {addr} took longer than {timeout:?}"))?
}
