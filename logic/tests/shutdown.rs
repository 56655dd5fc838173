//! Stalled calls and calls in progress at a stop, against the test PostgreSQL and Redis. The
//! request deadline ends a call whose client stops sending its body. A shutdown waits for no
//! call past its grace, and every send that got OK is stored.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    conn, new_device, new_user_device, postgres, send, sender_and_receiver, sync, test_config,
    text_to, HeldBatch, TestLogic, NODE,
};
use futures::StreamExt;
use im_logic::Config;
use im_proto::v1::ConversationType;
use tokio::task::JoinHandle;

type CallResult = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>;

/// Starts a FindUser call on `addr` whose body announces a 16-byte message and sends none of
/// it, and returns the task that waits for the response.
async fn stalled_call(addr: SocketAddr) -> JoinHandle<CallResult> {
    let mut sender = common::http2_sender(addr).await;
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

/// A send that is still waiting for PostgreSQL when the stop comes, and that PostgreSQL lets
/// through within the grace period, is stored and gets its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_slow_send_finish() {
    let mut logic = TestLogic::start_default().await;
    let (sender, receiver) = sender_and_receiver(&mut logic.client, "draining", NODE).await;
    // A lock on the receiver's seq row holds the next send in its transaction.
    let slow = HeldBatch::start(&logic.client, &sender, &receiver, "slow").await;

    let started = Instant::now();
    let stop = tokio::spawn(logic.server.shutdown());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = slow.release().await;
    tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .expect("shutdown ends")
        .expect("task");

    let reply = reply.expect("the send finishes within the grace period");
    assert_eq!(reply.seq, 2);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?} though the only call ended after 1.5 s",
        started.elapsed()
    );
    let restarted = TestLogic::start_default().await;
    let mut client = restarted.client.clone();
    let inbox = sync(&mut client, &receiver, 0, 10).await.expect("sync");
    let contents: Vec<&[u8]> = inbox.messages.iter().map(|m| &m.content[..]).collect();
    assert_eq!(contents, [&b"first"[..], &b"slow"[..]]);
    restarted.server.shutdown().await;
}

/// Many connections with a stalled call each still end the shutdown at the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_despite_many_stalled_calls() {
    let logic = TestLogic::start_default().await;
    let addr = logic.server.local_addr();
    let mut calls = Vec::new();
    for _ in 0..200 {
        calls.push(stalled_call(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), logic.server.shutdown()).await;

    assert!(stopped.is_ok(), "shutdown still waited after 20 s");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    for call in calls {
        call.abort();
    }
}

/// Sends that keep coming while the server stops: each that got OK is stored, and each that
/// failed is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_load_keeps_replies_true() {
    let mut logic = TestLogic::start_default().await;
    let sender = new_device(&mut logic.client, "stop_load", conn(NODE, 1)).await;
    let (_, receiver) =
        new_user_device(&mut logic.client, "stop_load_to", true, conn(NODE, 2)).await;
    let mut loops = Vec::new();
    for _ in 0..8 {
        let mut client = logic.client.clone();
        let (sender, receiver_id) = (sender.clone(), receiver.user_id);
        loops.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..10_000 {
                let request = text_to(ConversationType::User, receiver_id, &format!("m{n}"));
                let key = request.client_msg_id.clone();
                let result = send(&mut client, &sender, request).await;
                let failed = result.is_err();
                outcomes.push((key, result));
                if failed {
                    break;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::time::timeout(Duration::from_secs(20), logic.server.shutdown())
        .await
        .expect("shutdown ends");

    let db = postgres().await;
    let sender_id = i64::try_from(sender.user_id).unwrap();
    let rows = db
        .query(
            "SELECT client_msg_id FROM sent_messages WHERE sender_user_id = $1",
            &[&sender_id],
        )
        .await
        .expect("read the stored keys");
    let stored: std::collections::HashSet<String> = rows.iter().map(|row| row.get(0)).collect();
    let mut succeeded = 0;
    for task in loops {
        for (key, result) in task.await.expect("task") {
            // A send stored after its caller saw an error is no loss: a retry with its key
            // returns the stored reply. So only the sends that got OK are checked.
            if result.is_ok() {
                succeeded += 1;
                assert!(stored.contains(&key), "{key} got OK but is not stored");
            }
        }
    }
    assert!(succeeded > 0, "no send succeeded before the stop");
}
