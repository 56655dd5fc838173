//! Calls whose client stops sending its request body, against the test PostgreSQL and Redis:
//! the request deadline ends them, and a shutdown does not wait for them past its grace.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{test_config, TestLogic};
use futures::StreamExt;
use im_logic::Config;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

type CallResult = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>;

/// Starts a FindUser call on `addr` whose body announces a 16-byte message and sends none of
/// it, and returns the task that waits for the response.
async fn stalled_call(addr: SocketAddr) -> JoinHandle<CallResult> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let prefix = Bytes::from_static(&[0, 0, 0, 0, 16]);
    let body =
        futures::stream::iter([Ok::<_, std::io::Error>(prefix)]).chain(futures::stream::pending());
    let request = hyper::Request::post(format!("http://{addr}/im.v1.LogicExtService/FindUser"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(axum::body::Body::from_stream(body))
        .expect("a request");
    tokio::spawn(async move { sender.send_request(request).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_call_ends_at_request_timeout() {
    let logic = TestLogic::start(Config {
        request_timeout_ms: 1_000,
        ..test_config()
    })
    .await;
    let started = Instant::now();

    let call = stalled_call(logic.server.local_addr()).await;
    let response = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends within 10 s")
        .expect("task")
        .expect("a response");

    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended after {:?}",
        started.elapsed()
    );
    let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    logic.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_despite_stalled_call() {
    let logic = TestLogic::start_default().await;
    let call = stalled_call(logic.server.local_addr()).await;
    // Gives the server time to start the call before the stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the call waits for its body");

    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), logic.server.shutdown()).await;

    assert!(
        stopped.is_ok(),
        "shutdown still waited for the stalled call after 20 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "shutdown returned after {:?}, before the grace period",
        started.elapsed()
    );
    call.abort();
}
