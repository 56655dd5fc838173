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
//! inside a request body either. The bytes of a body are charged to a budget that all
//! connections share as they arrive, and returned when the call ends. So a request without a
//! body takes nothing from the budget, and a stalled upload holds only what it has sent.
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
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
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

/// Request body bytes that all connections together may hold at once, received or being
/// received (64 MiB). Each body is charged the bytes it has sent so far.
const BODY_BUDGET_BYTES: usize = 64 << 20;

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
    guard_router_with_budget(router, Arc::new(Semaphore::new(BODY_BUDGET_BYTES)))
}

/// [`guard_router`] with `budget` as the shared request body budget, one permit a byte.
fn guard_router_with_budget(router: Router, budget: Arc<Semaphore>) -> Router {
    router.layer(middleware::from_fn_with_state(budget, read_then_count_call))
}

/// Reads the request body, within [`BODY_TIMEOUT`] and [`MAX_BODY_BYTES`], then runs the call
/// counted as in progress on its connection until its response is ready, so that the idle
/// timeout spares the connection meanwhile. A body that is late gets 408, one that is or grows
/// too large 413, and one that is broken off 400, all without running the call.
///
/// Each piece of the body takes its bytes from a budget that all connections share (one permit
/// a byte) when it arrives, and the request gives them back when its call ends. A body that
/// finds too little of the budget left for its next piece, or whose Content-Length is more
/// than is left, gets 503 at once, so that many clients sending large bodies together cannot
/// exhaust the memory. A request without a body takes nothing.
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
        return body_too_large();
    }
    // Nothing is reserved here, so this only rejects early a body that could not be read to
    // its end now. The bytes are taken as they arrive.
    if declared.is_some_and(|length| length > budget.available_permits() as u64) {
        tracing::debug!(
            path,
            content_length = declared,
            "request rejected: the shared request body budget is in use"
        );
        return budget_exhausted();
    }

    // Held until the call ends, because the body's bytes stay in memory until then.
    let mut charge = BodyCharge::new(budget);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_body(body, &mut charge)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => return body_rejected(&path, err),
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

/// Request body bytes taken from the shared budget. Dropping it gives them back.
struct BodyCharge {
    budget: Arc<Semaphore>,
    /// One permit per byte taken, `None` before the first byte.
    permits: Option<OwnedSemaphorePermit>,
    /// Bytes taken.
    bytes: usize,
}

impl BodyCharge {
    fn new(budget: Arc<Semaphore>) -> BodyCharge {
        BodyCharge {
            budget,
            permits: None,
            bytes: 0,
        }
    }

    /// Takes `bytes` more from the budget without waiting, or fails when the body would pass
    /// [`MAX_BODY_BYTES`] or the budget has less than `bytes` left.
    fn take(&mut self, bytes: usize) -> Result<(), BodyError> {
        let total = self.bytes.saturating_add(bytes);
        if total > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        // At most MAX_BODY_BYTES, so it fits a u32.
        let count = u32::try_from(bytes).map_err(|_| BodyError::TooLarge)?;
        let permits = self
            .budget
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| BodyError::BudgetExhausted)?;
        match &mut self.permits {
            Some(taken) => taken.merge(permits),
            None => self.permits = Some(permits),
        }
        self.bytes = total;
        Ok(())
    }
}

/// Reason a request body was not read to its end.
#[derive(Debug)]
enum BodyError {
    /// The body passed [`MAX_BODY_BYTES`].
    TooLarge,
    /// The shared budget had too little left for the next piece of the body.
    BudgetExhausted,
    /// The body broke off or was malformed.
    Read(axum::Error),
}

/// Reads `body` to its end, taking each piece's bytes from `charge` as it arrives.
async fn read_body(body: Body, charge: &mut BodyCharge) -> Result<Bytes, BodyError> {
    let mut pieces = body.into_data_stream();
    // Most bodies arrive in one piece, which is kept as it is. Once a second piece arrives,
    // every piece is copied out: a piece may keep hyper's whole read buffer alive, so a body
    // sent in 1-byte chunks would otherwise hold about 50 times the bytes it was charged.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(piece) = pieces.next().await {
        let piece = piece.map_err(BodyError::Read)?;
        charge.take(piece.len())?;
        if let Some(joined) = joined.as_mut() {
            joined.extend_from_slice(&piece);
        } else if let Some(earlier) = first.take() {
            let mut copy = BytesMut::with_capacity(earlier.len() + piece.len());
            copy.extend_from_slice(&earlier);
            copy.extend_from_slice(&piece);
            joined = Some(copy);
        } else {
            first = Some(piece);
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

fn body_too_large() -> Response {
    let text = "request body larger than 8 MiB: send a smaller request\n";
    (StatusCode::PAYLOAD_TOO_LARGE, text).into_response()
}

fn budget_exhausted() -> Response {
    let text = "the server is reading many request bodies at once: retry in a moment\n";
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

/// Returns the response for a request body that could not be read to its end.
fn body_rejected(path: &str, err: BodyError) -> Response {
    match err {
        BodyError::TooLarge => {
            tracing::debug!(path, "request body grew too large");
            body_too_large()
        }
        BodyError::BudgetExhausted => {
            tracing::debug!(
                path,
                "request body rejected: the shared request body budget is in use"
            );
            budget_exhausted()
        }
        BodyError::Read(err) => {
            tracing::debug!(path, error = %err, "request body could not be read");
            let text = format!("request body could not be read: {err}\n");
            (StatusCode::BAD_REQUEST, text).into_response()
        }
    }
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

    /// Serves GET /fast at once, GET /slow after three idle timeouts, and POST /upload with the
    /// body's length, on a guarded listener with room for two connections.
    async fn serve_guarded() -> SocketAddr {
        let budget = Arc::new(Semaphore::new(BODY_BUDGET_BYTES));
        serve_with(2, TEST_IDLE, budget).await
    }

    /// [`serve_guarded`] with room for `connections`, an idle timeout of `idle_timeout`, and
    /// `budget` as the shared request body budget.
    async fn serve_with(
        connections: usize,
        idle_timeout: Duration,
        budget: Arc<Semaphore>,
    ) -> SocketAddr {
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
            )
            .route(
                "/upload",
                axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
            );
        let guarded = GuardedListener::new(listener, connections, idle_timeout);
        let service = guard_router_with_budget(router, budget);
        let shutdown = std::future::pending();
        tokio::spawn(serve_http1(guarded, service, shutdown, Duration::ZERO));
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

    /// Idle timeout of the body budget tests, longer than any of them runs.
    const BUDGET_TEST_IDLE: Duration = Duration::from_secs(30);

    /// Waits until `budget` has exactly `available` permits left, for at most 5 s.
    async fn wait_for_available(budget: &Semaphore, available: usize) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while budget.available_permits() != available {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "budget has {} bytes left, not {available}",
            budget.available_permits()
        );
    }

    /// Sends `head` and `body` on a new connection without waiting for a reply.
    async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write head");
        stream.write_all(body).await.expect("write body");
        stream
    }

    #[tokio::test]
    async fn bodies_beyond_the_shared_budget_get_503() {
        // Room for 1 MiB of body bytes and 64 KiB more. The long idle timeout keeps the
        // stalled connection open for the whole test.
        let budget = Arc::new(Semaphore::new((1 << 20) + (64 << 10)));
        let addr = serve_with(5, BUDGET_TEST_IDLE, budget.clone()).await;
        // The first body sends 1 MiB of its 1 MiB and 32 KiB, and stops, holding 1 MiB.
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1081344\r\n\r\n";
        let large = send(addr, head, &vec![b'x'; 1 << 20]).await;
        wait_for_available(&budget, 64 << 10).await;

        // A Content-Length above what is left is rejected before its body is read.
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Content-Length: 131072\r\n\r\n";
        let mut declared = send(addr, head, &[]).await;
        let refused = read_until_closed(&mut declared, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

        // A chunked body is rejected when a chunk finds too little left.
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Transfer-Encoding: chunked\r\n\r\n20000\r\n";
        let mut chunked = send(addr, head, &[b'x'; 0x20000]).await;
        // The server may reply and close before the rest is written.
        let _ = chunked.write_all(b"\r\n0\r\n\r\n").await;
        let refused = read_until_closed(&mut chunked, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

        // A body that fits in what is left, and a request without a body, are served.
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Content-Length: 1000\r\n\r\n";
        let mut small = send(addr, head, &[b'x'; 1000]).await;
        let served = read_until_closed(&mut small, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        assert!(served.ends_with("1000"), "{served}");
        let fast = get(addr, "/fast").await.expect("a reply within 5 s");
        assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");

        // The stalled body's bytes come back when its client goes away.
        drop(large);
        wait_for_available(&budget, (1 << 20) + (64 << 10)).await;
    }

    #[tokio::test]
    async fn budget_returns_when_the_call_ends() {
        // Room for one 1 MiB body at a time.
        let budget = Arc::new(Semaphore::new(1 << 20));
        let addr = serve_with(2, BUDGET_TEST_IDLE, budget.clone()).await;
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Content-Length: 1048576\r\n\r\n";
        for round in 0..3 {
            let mut stream = send(addr, head, &vec![b'x'; 1 << 20]).await;
            let reply = read_until_closed(&mut stream, Duration::from_secs(5))
                .await
                .expect("a reply within 5 s");
            assert!(reply.starts_with("HTTP/1.1 200"), "round {round}: {reply}");
            assert!(reply.ends_with("1048576"), "round {round}: {reply}");
        }
        assert_eq!(budget.available_permits(), 1 << 20);
    }

    #[tokio::test]
    async fn stalled_chunked_bodies_take_no_budget() {
        // Room for 16 KiB, much less than the 8 MiB each chunked body was once charged.
        let budget = Arc::new(Semaphore::new(16 << 10));
        let addr = serve_with(8, BUDGET_TEST_IDLE, budget.clone()).await;
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stalled = Vec::new();
        for _ in 0..4 {
            stalled.push(send(addr, head, &[]).await);
        }
        // Let the server parse the heads and start waiting for the bodies.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(budget.available_permits(), 16 << 10);

        let fast = get(addr, "/fast").await.expect("a reply within 5 s");
        assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Content-Length: 8192\r\n\r\n";
        let mut upload = send(addr, head, &[b'x'; 8192]).await;
        let served = read_until_closed(&mut upload, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        drop(stalled);
    }

    #[tokio::test]
    async fn chunked_body_past_the_limit_gets_413() {
        let addr = serve_guarded().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = "POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("write");
        // 9 chunks of 1 MiB; the server may reply and close before all are written.
        let chunk = [b"100000\r\n".as_slice(), &[b'x'; 1 << 20], b"\r\n"].concat();
        for _ in 0..9 {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
        }

        let reply = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .expect("a reply within 5 s");

        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
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
