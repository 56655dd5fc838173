//! Stopping the logic server while a client keeps a call open, against the test PostgreSQL and
//! Redis.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestLogic;
use futures::StreamExt;
use tokio::net::TcpStream;

/// A gRPC call whose client sent the start of its request body and then nothing more cannot
/// hold up a shutdown beyond the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_despite_stalled_call() {
    let logic = TestLogic::start_default().await;
    let addr = logic.server.local_addr();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    // A gRPC message prefix that announces 16 bytes, none of which follow.
    let prefix = Bytes::from_static(&[0, 0, 0, 0, 16]);
    let body =
        futures::stream::iter([Ok::<_, std::io::Error>(prefix)]).chain(futures::stream::pending());
    let request = hyper::Request::post(format!("http://{addr}/im.v1.LogicExtService/FindUser"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(axum::body::Body::from_stream(body))
        .expect("a request");
    let call = tokio::spawn(async move { sender.send_request(request).await });
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
