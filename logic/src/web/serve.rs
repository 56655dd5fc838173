//! The web port's connection loop: HTTP/1.1 only, on a [`GuardedListener`].
//!
//! The port serves no HTTP/2, neither with prior knowledge nor through an `Upgrade: h2c`
//! header, for two reasons:
//!
//! - Its clients do not need HTTP/2. Browsers speak HTTP/2 only over TLS (negotiated with
//!   ALPN), so to a plain `http://` origin they speak HTTP/1.1, and gRPC-Web runs over
//!   HTTP/1.1.
//! - The connection limit and the idle timeout of [`guard`](super::guard) count connections,
//!   which bounds the work of one client only while a connection carries one request at a
//!   time. One HTTP/2 connection carries many requests (streams) at once, 200 by default in
//!   hyper 1.13, each of which may read a body of up to 8 MiB. So a single connection could
//!   take the whole body budget that all connections share.
//!
//! A client that starts with the HTTP/2 preface (`PRI * HTTP/2.0`) gets no response, because
//! hyper's HTTP/1 server (hyper 1.13) rejects the preface and closes the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use super::guard::{GuardedListener, GuardedStream};

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown` completes. Each request carries
/// its connection's [`ConnectionCalls`](super::guard::ConnectionCalls) as [`ConnectInfo`], for
/// [`guard_router`](super::guard::guard_router).
///
/// At shutdown it stops accepting and signals every open connection to close. An idle one
/// closes at once, and one that has received part or all of a request serves it and then
/// closes.
/// Connections still open after `grace` are dropped, and it returns only once every connection
/// task has ended, so no request is served after it returns.
pub async fn serve_http1(
    mut listener: GuardedListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    // Dropping `stop` signals every connection to close after its current request.
    let (stop, stopped) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            (stream, addr) = listener.accept() => {
                let task = serve_connection(stream, addr, router.clone(), stopped.clone());
                connections.spawn(task);
            }
            // Collects ended tasks, whose results the set keeps until they are joined.
            Some(ended) = connections.join_next() => log_panic(ended),
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stop);

    let open = connections.len();
    let drain = async {
        while let Some(ended) = connections.join_next().await {
            log_panic(ended);
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        let dropped = connections.len();
        // Aborts the remaining tasks and waits until each has ended, which closes their
        // sockets.
        connections.shutdown().await;
        tracing::warn!(
            open,
            dropped,
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "web connections still open after the shutdown grace period were dropped"
        );
    }
}

/// Serves one connection until it closes, or until `stopped` reports a shutdown and the
/// connection has finished the request in progress.
async fn serve_connection(
    stream: GuardedStream,
    addr: SocketAddr,
    router: Router,
    mut stopped: watch::Receiver<()>,
) {
    let calls = stream.calls();
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(calls.clone()));
        hyper::service::Service::call(&router, request)
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.changed() => {
            // hyper 1.13 closes a connection that is idle or has received no byte yet, and
            // lets one that has received part of a request finish it first.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%addr, error = %err, "web connection ended with an error");
    }
}

fn log_panic(ended: Result<(), JoinError>) {
    if let Err(err) = ended {
        if err.is_panic() {
            tracing::error!(error = %err, "web connection task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::guard::guard_router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    /// A server of GET /fast whose shutdown starts when `stop` is sent.
    struct TestServer {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    impl TestServer {
        async fn start(grace: Duration) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let router = Router::new().route("/fast", axum::routing::get(|| async { "fast" }));
            let guarded = GuardedListener::new(listener, 8, Duration::from_secs(30));
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async {
                let _ = stopped.await;
            };
            let task = tokio::spawn(serve_http1(guarded, guard_router(router), shutdown, grace));
            TestServer { addr, stop, task }
        }

        /// Starts the shutdown and returns a handle that ends when `serve_http1` returns.
        fn shut_down(self) -> JoinHandle<()> {
            let _ = self.stop.send(());
            self.task
        }
    }

    /// Connects and sends the first half of a GET /fast head.
    async fn send_half_head(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /fast HTTP/1.1\r\nHost: test\r\n")
            .await
            .expect("write half a head");
        stream
    }

    /// Reads until the server closes the stream, for at most 5 s, and returns the text read.
    async fn read_reply(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received));
        let outcome = read
            .await
            .expect("the server closes the connection within 5 s");
        // A reset connection counts as closed.
        drop(outcome);
        String::from_utf8_lossy(&received).into_owned()
    }

    #[tokio::test]
    async fn shutdown_drops_connections_after_grace() {
        let grace = Duration::from_millis(300);
        let server = TestServer::start(grace).await;
        let mut stream = send_half_head(server.addr).await;
        tokio::time::sleep(Duration::from_millis(50)).await;

        let started = Instant::now();
        let stopped = server.shut_down();
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("serve_http1 returns within 5 s")
            .expect("serve task");
        assert!(started.elapsed() >= grace, "{:?}", started.elapsed());

        // The write may fail because the connection is closed, as it should be.
        let _ = stream.write_all(b"\r\n").await;
        let reply = read_reply(&mut stream).await;
        assert!(reply.is_empty(), "served after shutdown: {reply}");
    }

    #[tokio::test]
    async fn shutdown_finishes_request_in_progress() {
        let server = TestServer::start(Duration::from_secs(5)).await;
        let mut stream = send_half_head(server.addr).await;
        tokio::time::sleep(Duration::from_millis(50)).await;

        let started = Instant::now();
        let stopped = server.shut_down();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"\r\n").await.expect("write the rest");
        let reply = read_reply(&mut stream).await;

        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("connection: close"), "{reply}");
        assert!(reply.ends_with("fast"), "{reply}");
        tokio::time::timeout(Duration::from_secs(2), stopped)
            .await
            .expect("serve_http1 returns once the request is served, before the grace ends")
            .expect("serve task");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_at_once() {
        let server = TestServer::start(Duration::from_secs(5)).await;
        let mut fresh = TcpStream::connect(server.addr).await.expect("connect");
        let mut keep_alive = TcpStream::connect(server.addr).await.expect("connect");
        keep_alive
            .write_all(b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 256];
        let read = keep_alive.read(&mut first).await.expect("first reply");
        assert!(first[..read].starts_with(b"HTTP/1.1 200"));

        let stopped = server.shut_down();
        tokio::time::timeout(Duration::from_secs(2), stopped)
            .await
            .expect("serve_http1 returns before the grace ends")
            .expect("serve task");

        assert_eq!(read_reply(&mut fresh).await, "");
        assert_eq!(read_reply(&mut keep_alive).await, "");
    }
}
