//! Limits on the web server's connections. Each open connection uses a file descriptor of the
//! logic process, which the gRPC server and the store pools need too. So a client that opens
//! connections and sends nothing, or stops halfway through a request, must neither keep them
//! forever nor open them without bound.
//!
//! [`GuardedListener`] accepts a connection only while fewer than its maximum are open; the
//! others wait in the kernel's accept queue. [`GuardedStream`] fails a connection on which no
//! byte was read or written for the idle timeout while no call of it was in progress, and hyper
//! then closes it. [`guard_router`] reads each request body within a deadline and a size
//! limit, and counts the call as in progress only after that, so a client cannot hold a
//! connection by stopping inside a request body either.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo};
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Time a web connection without a call in progress may stay without a byte read or written
/// before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Time a client has to send a whole request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest request body read, in bytes. It is above tonic's default limit of 4 MiB per
/// message, even in base64 (gRPC-Web text), so that tonic's error names that limit.
const MAX_BODY_BYTES: usize = 8 << 20;

/// Open web connections allowed when the open-file limit cannot be read: half of 1024, the
/// usual default soft limit on Linux.
const FALLBACK_MAX_CONNECTIONS: usize = 512;

/// Returns the maximum number of open web connections: half of the process's soft limit on
/// open files (`Max open files` in /proc/self/limits), so that the other half stays for the
/// gRPC server, the store pools and the engine channels. An unlimited limit gives no maximum,
/// and an unreadable one 512.
pub fn max_connections() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    match soft_open_files(&limits) {
        Some(OpenFiles::Limit(limit)) => (limit / 2).max(1),
        Some(OpenFiles::Unlimited) => Semaphore::MAX_PERMITS,
        None => FALLBACK_MAX_CONNECTIONS,
    }
}

/// The soft limit on open files.
#[derive(Debug, PartialEq, Eq)]
enum OpenFiles {
    Limit(usize),
    Unlimited,
}

/// Returns the soft limit of the `Max open files` row of a /proc/PID/limits text, or `None`
/// when the row is missing or malformed.
fn soft_open_files(limits: &str) -> Option<OpenFiles> {
    let row = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    match row.split_whitespace().next()? {
        "unlimited" => Some(OpenFiles::Unlimited),
        soft => soft.parse().ok().map(OpenFiles::Limit),
    }
}

/// A TCP listener that keeps at most `max_connections` connections open and closes idle ones.
pub struct GuardedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl GuardedListener {
    /// Wraps `listener`.
    pub fn new(listener: TcpListener, max_connections: usize, idle_timeout: Duration) -> Self {
        GuardedListener {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            idle_timeout,
        }
    }
}

impl Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed, so this branch never runs. It waits like a permit.
            Err(_) => std::future::pending().await,
        };
        // axum's accept logs and retries failed accepts, pausing 1 s after errors such as
        // EMFILE.
        let (stream, addr) = Listener::accept(&mut self.listener).await;
        let stream = GuardedStream {
            stream,
            idle_timeout: self.idle_timeout,
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
            calls: Arc::default(),
            _permit: permit,
        };
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection of a [`GuardedListener`]. Reads and writes fail with `TimedOut` once the
/// connection has transferred nothing for the idle timeout while none of its calls was in
/// progress. Dropping it frees its place among the open connections.
pub struct GuardedStream {
    stream: TcpStream,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// Calls of this connection in progress, counted by [`count_call`].
    calls: Arc<AtomicUsize>,
    _permit: OwnedSemaphorePermit,
}

impl GuardedStream {
    fn record_activity(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// Returns the error that ends a pending read or write once the idle timeout has passed
    /// without a call in progress, or `None` while time is left. `cx` is woken when the timeout
    /// passes. hyper keeps reading while a call runs, so a call that outlasts the timeout
    /// restarts it here.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.idle.as_mut().poll(cx).is_pending() {
            return None;
        }
        if self.calls.load(Ordering::Acquire) > 0 {
            self.record_activity();
            // Registers `cx` with the new deadline.
            let _ = self.idle.as_mut().poll(cx);
            return None;
        }
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "web connection idle for longer than its timeout",
        ))
    }
}

/// The call counter of a connection, which [`guard_router`] hands to each of its requests.
#[derive(Clone)]
pub struct ConnectionCalls(Arc<AtomicUsize>);

impl Connected<IncomingStream<'_, GuardedListener>> for ConnectionCalls {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        ConnectionCalls(stream.io().calls.clone())
    }
}

/// Returns the service that [`axum::serve`] needs to run `router` on a [`GuardedListener`]:
/// `router` behind [`read_then_count_call`].
pub fn guard_router(router: Router) -> IntoMakeServiceWithConnectInfo<Router, ConnectionCalls> {
    router
        .layer(middleware::from_fn(read_then_count_call))
        .into_make_service_with_connect_info::<ConnectionCalls>()
}

/// Reads the request body, within [`BODY_TIMEOUT`] and [`MAX_BODY_BYTES`], then runs the call
/// counted as in progress on its connection until its response is ready, so that the idle
/// timeout spares the connection meanwhile. A body that is late gets 408, one whose
/// Content-Length is too large 413, and one that is broken off or grows too large without a
/// Content-Length 400, all without running the call.
async fn read_then_count_call(
    ConnectInfo(calls): ConnectInfo<ConnectionCalls>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        tracing::debug!(path, content_length = declared, "request body too large");
        let text = "request body larger than 8 MiB: send a smaller request\n";
        return (StatusCode::PAYLOAD_TOO_LARGE, text).into_response();
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => return body_rejected(&path, &err),
        Err(_) => {
            tracing::debug!(
                path,
                timeout_s = BODY_TIMEOUT.as_secs(),
                "request body timed out"
            );
            let text = "request body not received in time: send the whole body within 60 s\n";
            return (StatusCode::REQUEST_TIMEOUT, text).into_response();
        }
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    count_call(calls, request, next).await
}

/// Returns 400 for a request body that broke off or passed [`MAX_BODY_BYTES`] while it was read.
fn body_rejected(path: &str, err: &axum::Error) -> Response {
    tracing::debug!(path, error = %err, "request body rejected");
    let text = format!("request body could not be read (at most 8 MiB): {err}\n");
    (StatusCode::BAD_REQUEST, text).into_response()
}

async fn count_call(calls: ConnectionCalls, request: Request, next: Next) -> Response {
    /// Ends the count when the call ends, also when the client cancels it.
    struct InProgress(Arc<AtomicUsize>);

    impl Drop for InProgress {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    calls.0.fetch_add(1, Ordering::AcqRel);
    let _in_progress = InProgress(calls.0);
    next.run(request).await
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.record_activity();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    this.record_activity();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match this.poll_idle(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TEST_IDLE: Duration = Duration::from_millis(300);

    /// Serves GET /fast at once and GET /slow after three idle timeouts on a guarded listener
    /// with room for two connections.
    async fn serve_guarded() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let router = axum::Router::new()
            .route("/fast", axum::routing::get(|| async { "fast" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(TEST_IDLE * 3).await;
                    "slow"
                }),
            );
        let guarded = GuardedListener::new(listener, 2, TEST_IDLE);
        tokio::spawn(async move { axum::serve(guarded, guard_router(router)).await });
        addr
    }

    /// Reads until the server closes the stream, for at most `limit`. Returns what was read,
    /// or `None` when the stream was still open at the limit.
    async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
        let mut received = Vec::new();
        let read = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
        match read {
            Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
            Err(_) => None,
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        read_until_closed(&mut stream, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn idle_and_stalled_connections_are_closed() {
        let addr = serve_guarded().await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        stalled
            .write_all(b"GET /fast HTTP/1.1\r\nHost: te")
            .await
            .expect("write");

        let limit = TEST_IDLE * 5;
        assert!(
            read_until_closed(&mut idle, limit).await.is_some(),
            "an idle connection is closed"
        );
        assert!(
            read_until_closed(&mut stalled, limit).await.is_some(),
            "a connection stalled inside its request head is closed"
        );
    }

    #[tokio::test]
    async fn stalled_request_body_is_closed() {
        let addr = serve_guarded().await;
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        let head = "POST /fast HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nhalf";
        stalled.write_all(head.as_bytes()).await.expect("write");

        let closed = read_until_closed(&mut stalled, TEST_IDLE * 5).await;

        assert!(
            closed.is_some(),
            "a connection stalled inside its body is closed"
        );
    }

    #[tokio::test]
    async fn oversized_request_body_is_rejected() {
        let addr = serve_guarded().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /fast HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        // The server may reply and close before the whole body is written.
        let _ = stream.write_all(&vec![b'x'; MAX_BODY_BYTES + 1]).await;

        let reply = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");

        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    }

    #[tokio::test]
    async fn call_longer_than_idle_timeout_completes() {
        let addr = serve_guarded().await;

        let reply = get(addr, "/slow").await.expect("a reply within 5 s");

        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("slow"), "{reply}");
    }

    #[tokio::test]
    async fn connections_beyond_the_maximum_wait() {
        let addr = serve_guarded().await;
        let first = TcpStream::connect(addr).await.expect("connect");
        let second = TcpStream::connect(addr).await.expect("connect");
        // Give the server time to accept both, so the next one finds no room.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let waiting = tokio::spawn(get(addr, "/fast"));
        tokio::time::sleep(TEST_IDLE / 2).await;
        assert!(!waiting.is_finished(), "a third connection waits");
        drop(first);
        drop(second);
        let reply = waiting.await.expect("task").expect("a reply within 5 s");

        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[test]
    fn open_file_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                40000                files\n";
        assert_eq!(soft_open_files(limits), Some(OpenFiles::Limit(20000)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_open_files(unlimited), Some(OpenFiles::Unlimited));
        assert_eq!(soft_open_files(""), None);
        assert!(max_connections() >= 1);
    }
}
