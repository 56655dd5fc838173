//! Limits on the web server's connections. Each open connection uses a file descriptor of the
//! logic process, which the gRPC server and the store pools need too. So a client that opens
//! connections and sends nothing, or stops halfway through a request, must neither keep them
//! forever nor open them without bound.
//!
//! [`GuardedListener`] accepts a connection only while fewer than its maximum are open; the
//! others wait in the kernel's accept queue. [`GuardedStream`] gives a connection the idle
//! timeout to start a call, counted from its accept or from the end of its last call, and one
//! more timeout to send that call's response. When no call starts in time, it fails the
//! connection, and hyper then closes it. Bytes the client sends do not extend that time, so a
//! client that trickles a request head, or sends pings, cannot hold a connection.
//!
//! [`guard_router`] reads each request body within a deadline and a size limit, and counts the
//! call as in progress only after that, so a client cannot hold a connection by stopping
//! inside a request body either.
//!
//! These limits assume that a connection carries one request at a time, so the port serves
//! HTTP/1.1 only ([`serve`](super::serve)).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
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

/// Request body bytes that all connections together may hold at once, read or being read
/// (64 MiB), counted in KiB. A chunked body, whose size is not known, counts as
/// [`MAX_BODY_BYTES`].
const BODY_BUDGET_KIB: usize = 64 * 1024;

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

/// A connection of a [`GuardedListener`]. Reads and writes fail with `TimedOut` once the idle
/// timeout has passed with no call in progress and none ended since the timeout last passed.
/// Dropping it frees its place among the open connections.
pub struct GuardedStream {
    stream: TcpStream,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// The calls of this connection, counted by [`count_call`].
    calls: Arc<CallState>,
    _permit: OwnedSemaphorePermit,
}

/// The calls of one connection.
#[derive(Default)]
struct CallState {
    /// Calls in progress.
    in_progress: AtomicUsize,
    /// Whether a call ended since the idle timeout last passed.
    ended: AtomicBool,
}

impl GuardedStream {
    /// Returns the call counter of this connection, for its requests.
    pub fn calls(&self) -> ConnectionCalls {
        ConnectionCalls(self.calls.clone())
    }

    fn restart_idle(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// Returns the error that ends a pending read or write once the idle timeout has passed
    /// with no call in progress and none ended meanwhile, or `None` while time is left. `cx` is
    /// woken when the timeout passes. A call in progress restarts the timeout whenever it
    /// passes, and a call that ended gives one more, for its response and the next request.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.idle.as_mut().poll(cx).is_pending() {
            return None;
        }
        if self.calls.in_progress.load(Ordering::Acquire) > 0
            || self.calls.ended.swap(false, Ordering::AcqRel)
        {
            self.restart_idle();
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

/// The call counter of a connection, which [`serve_http1`](super::serve::serve_http1) hands to
/// each of its requests as [`ConnectInfo`].
#[derive(Clone)]
pub struct ConnectionCalls(Arc<CallState>);

/// Returns `router` behind [`read_then_count_call`], to run on a [`GuardedListener`] with
/// [`serve_http1`](super::serve::serve_http1).
pub fn guard_router(router: Router) -> Router {
    guard_router_with_budget(router, BODY_BUDGET_KIB)
}

fn guard_router_with_budget(router: Router, budget_kib: usize) -> Router {
    let budget = Arc::new(Semaphore::new(budget_kib));
    router.layer(middleware::from_fn_with_state(budget, read_then_count_call))
}

/// Reads the request body, within [`BODY_TIMEOUT`] and [`MAX_BODY_BYTES`], then runs the call
/// counted as in progress on its connection until its response is ready, so that the idle
/// timeout spares the connection meanwhile. A body that is late gets 408, one whose
/// Content-Length is too large 413, and one that is broken off or grows too large without a
/// Content-Length 400, all without running the call.
///
/// The body's bytes come out of a budget that all connections share, from before it is read
/// until the call ends. A request that finds too little of it left gets 503 at once, so that
/// many clients sending large bodies together cannot exhaust the memory.
async fn read_then_count_call(
    State(budget): State<Arc<Semaphore>>,
    ConnectInfo(calls): ConnectInfo<ConnectionCalls>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();

    // hyper reports the exact size of a body with a Content-Length, and 0 for a request with
    // neither a Content-Length nor chunked encoding. A chunked body's size is unknown.
    let declared = HttpBody::size_hint(&body).exact();
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        tracing::debug!(path, content_length = declared, "request body too large");
        let text = "request body larger than 8 MiB: send a smaller request\n";
        return (StatusCode::PAYLOAD_TOO_LARGE, text).into_response();
    }

    let body_bytes = declared.unwrap_or(MAX_BODY_BYTES as u64);
    let kib = u32::try_from(body_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    let Ok(_body_budget) = budget.try_acquire_many_owned(kib.max(1)) else {
        tracing::debug!(
            path,
            content_length = declared,
            "request rejected: the shared request body budget is in use"
        );
        let text = "the server is reading many request bodies at once: retry in a moment\n";
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    };

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
    struct InProgress(Arc<CallState>);

    impl Drop for InProgress {
        fn drop(&mut self) {
            self.0.ended.store(true, Ordering::Release);
            self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
        }
    }

    calls.0.in_progress.fetch_add(1, Ordering::AcqRel);
    let _in_progress = InProgress(calls.0);
    next.run(request).await
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Bytes read do not restart the idle timeout: otherwise a client could hold the
        // connection by sending a request head one byte at a time.
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => Poll::Ready(result),
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
                // A response that makes progress during a call keeps the connection. Writes
                // outside a call, such as the replies to HTTP/2 pings, do not.
                if written > 0 && this.calls.in_progress.load(Ordering::Acquire) > 0 {
                    this.restart_idle();
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
    use crate::web::serve::serve_http1;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TEST_IDLE: Duration = Duration::from_millis(300);

    /// Serves GET /fast at once and GET /slow after three idle timeouts on a guarded listener
    /// with room for two connections.
    async fn serve_guarded() -> SocketAddr {
        serve_with(2, BODY_BUDGET_KIB).await
    }

    /// [`serve_guarded`] with room for `connections` and a body budget of `budget_kib`.
    async fn serve_with(connections: usize, budget_kib: usize) -> SocketAddr {
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
        let guarded = GuardedListener::new(listener, connections, TEST_IDLE);
        let service = guard_router_with_budget(router, budget_kib);
        tokio::spawn(serve_http1(guarded, service, std::future::pending()));
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

    #[tokio::test]
    async fn trickled_heads_release_connections() {
        let addr = serve_guarded().await;
        let mut trickling = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /fast HTTP/1.1\r\nX-A: ")
                .await
                .expect("write");
            trickling.push(stream);
        }

        // Both places are taken, so the third client waits while the others send a byte every
        // 0.6 idle timeouts.
        let waiting = tokio::spawn(get(addr, "/fast"));
        let trickle = async {
            loop {
                tokio::time::sleep(TEST_IDLE * 3 / 5).await;
                for stream in &mut trickling {
                    if stream.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        };
        let raced = async {
            tokio::select! {
                reply = waiting => reply.expect("task"),
                () = trickle => None,
            }
        };

        let served = tokio::time::timeout(Duration::from_secs(5), raced)
            .await
            .expect("the trickling connections are closed within 5 s");
        // Their close stopped the trickle and let the third client in; its reply comes either
        // way once they are gone.
        let reply = match served {
            Some(reply) => reply,
            None => get(addr, "/fast").await.expect("a reply within 5 s"),
        };
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test]
    async fn keep_alive_serves_next_request() {
        let addr = serve_guarded().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n";
        stream.write_all(request).await.expect("first request");
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.expect("first reply");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Within the idle timeout after the call, the next request is served.
        tokio::time::sleep(TEST_IDLE / 2).await;
        stream.write_all(request).await.expect("second request");
        let n = stream.read(&mut buf).await.expect("second reply");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Without another call, the connection closes within two timeouts of the last one.
        let closed = read_until_closed(&mut stream, TEST_IDLE * 4).await;
        assert!(closed.is_some(), "an idle keep-alive connection is closed");
    }

    #[tokio::test]
    async fn bodies_beyond_the_shared_budget_get_503() {
        // Room for one 8 MiB body and a little more.
        let addr = serve_with(4, MAX_BODY_BYTES / 1024 + 1024).await;
        let mut large = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /fast HTTP/1.1\r\nHost: test\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\npart"
        );
        large.write_all(head.as_bytes()).await.expect("write");
        // Let the server take the first body's share before the second request arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let mut second = TcpStream::connect(addr).await.expect("connect");
        let head = "POST /fast HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Content-Length: 2097152\r\n\r\n";
        second.write_all(head.as_bytes()).await.expect("write");
        let refused = read_until_closed(&mut second, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

        let small = get(addr, "/fast").await.expect("a reply within 5 s");
        assert!(small.starts_with("HTTP/1.1 200"), "{small}");
        drop(large);
    }

    #[tokio::test]
    async fn http2_prior_knowledge_gets_no_response() {
        let addr = serve_guarded().await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let exchange = async {
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await?;
            tokio::spawn(connection);
            let request = axum::http::Request::get(format!("http://{addr}/fast"))
                .body(Body::empty())
                .expect("a request");
            sender.send_request(request).await
        };

        let outcome = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("the HTTP/2 client gets an answer or an error within 5 s");

        match outcome {
            Ok(response) => panic!("HTTP/2 was served: {}", response.status()),
            Err(err) => assert!(!err.is_timeout(), "{err}"),
        }
        let reply = get(addr, "/fast").await.expect("a reply within 5 s");
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "HTTP/1.1 still served: {reply}"
        );
    }

    #[tokio::test]
    async fn h2c_upgrade_is_answered_in_http1() {
        let addr = serve_guarded().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = "GET /fast HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, HTTP2-Settings, \
                       close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("write");

        let reply = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");

        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("fast"), "{reply}");
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
