//! Connection and request limits of the HTTP edge, so that no client can exhaust the
//! process's file descriptors or memory, or keep `/healthz` from answering.
//!
//! hyper is driven here rather than through `axum::serve`, which offers neither a header read
//! timeout nor a bound on the header buffer. Per connection: the request head must arrive
//! within [`Limits::request_timeout`] (that also closes idle keep-alive connections), it may
//! take at most [`MAX_HEADER_BYTES`], a body at most [`Limits::max_body_bytes`], and a handler
//! must answer within the timeout (a streamed body, such as the event stream, is not timed).
//!
//! At the connection cap a new connection closes the longest-idle one (no request in
//! progress) rather than being turned away: refusing would let a few thousand idle sockets
//! lock everyone out until they time out, while an idle keep-alive connection costs its
//! client only a reconnect. Only when every connection is busy with a request is the new one
//! answered `503` and closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use patchbay_listen::{Backoff, Gate, Seat, Seated};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::AppError;

/// The most a request head (request line and headers) may take; hyper answers 431 beyond it.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// The default body limit: JSON bodies here are small (a log chunk is at most 64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The default request timeout: generous for any handler, short for a stalled client.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the HTTP edge allows.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections at once (each holds a file descriptor).
    pub max_connections: usize,
    /// The request head must arrive, and the handler answer, within this long.
    pub request_timeout: Duration,
    /// Larger request bodies are answered 413.
    pub max_body_bytes: usize,
}

impl Limits {
    /// The defaults for everything but the cap, which depends on the process's descriptors.
    pub fn new(max_connections: usize) -> Self {
        Limits { max_connections, request_timeout: DEFAULT_REQUEST_TIMEOUT, max_body_bytes: DEFAULT_MAX_BODY_BYTES }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets the
/// requests in progress finish (at most one request timeout longer).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let router = TowerToHyperService::new(router.layer(DefaultBodyLimit::max(limits.max_body_bytes)));
    let mut gate = Gate::new("HTTP", limits.max_connections);
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = Backoff::new("HTTP");
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = patchbay_listen::accept(&listener, &mut backoff) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let Some(seat) = gate.admit(peer).await else {
            // A fresh socket's send buffer is empty: this never blocks the accept loop.
            let body = r#"{"error":"too many connections"}"#;
            let _ = stream.try_write(
                format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}", body.len())
                    .as_bytes(),
            );
            continue;
        };
        connections.spawn(connection(stream, peer, seat, router.clone(), limits.request_timeout, closing.clone()));
    }
    let _ = closing_tx.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.request_timeout, drained).await.is_err() {
        tracing::warn!(left = connections.len(), "HTTP connections still busy at shutdown; cut off.");
    }
    Ok(())
}

/// Serves one connection until it ends, is closed to make room, or the server shuts down.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    seated: Seated,
    router: TowerToHyperService<Router>,
    timeout: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let seat = seated.seat.clone();
    let io = TokioIo::new(Tracked { stream, seat: seat.clone() });
    let service = {
        let seat = seat.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // Handlers see the peer as `axum::serve` would show it (the publish check uses it).
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = seat.busy();
            let call = hyper::service::Service::call(&router, request);
            async move {
                let response = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => json_error(response),
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: format!("no answer within {} s", timeout.as_secs()) }
                            .into_response()
                    }
                };
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "HTTP connection ended with an error.");
                }
                break;
            }
            // Dropping the connection closes the socket; only idle ones are told to go.
            () = seat.evicted() => break,
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(seated);
}

/// The body limit's own answer is plain text; every error here is `{"error": "..."}`.
fn json_error(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE
        || response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        return response;
    }
    AppError { status: StatusCode::PAYLOAD_TOO_LARGE, message: "the request body is too large".into() }.into_response()
}

/// A connection's socket that notes when bytes last moved, for finding the longest idle.
struct Tracked {
    stream: TcpStream,
    seat: Arc<Seat>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.seat.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.seat.touch();
        }
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.seat.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn idle_connections_make_room_and_requests_are_bounded() {
        let router = Router::new()
            .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }))
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(60))))
            .route("/body", post(|body: axum::body::Bytes| async move { body.len().to_string() }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits { max_connections: 1, request_timeout: Duration::from_secs(1), max_body_bytes: 1024 };
        tokio::spawn(serve(listener, router, limits, std::future::pending()));

        // The one seat is taken by an idle connection; a new one closes it and is answered.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let peer = ask(addr, "GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(peer.starts_with("HTTP/1.1 200") && peer.ends_with("127.0.0.1"), "{peer}");
        let mut buf = [0u8; 16];
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.unwrap().unwrap(), 0, "closed");

        let started = Instant::now();
        let slow = ask(addr, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(slow.starts_with("HTTP/1.1 503") && slow.contains("{\"error\":\"no answer within 1 s\"}"), "{slow}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let big =
            ask(addr, &format!("POST /body HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2000\r\n\r\n{}", "x".repeat(2000)))
                .await;
        assert!(big.starts_with("HTTP/1.1 413") && big.contains("\"error\""), "{big}");
        let huge_head = ask(addr, &format!("GET /peer HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "h".repeat(2 * MAX_HEADER_BYTES))).await;
        assert!(huge_head.starts_with("HTTP/1.1 431"), "{huge_head}");

        // A client that never finishes its request head is closed after the timeout.
        let mut slowloris = TcpStream::connect(addr).await.unwrap();
        slowloris.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), slowloris.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a stalled request head is cut off");
    }
}
