//! The Prometheus endpoint: counts after real sign-ins and a send, scraped over HTTP.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    as_device, conn, error_code, login, new_user_device, register, send_text, sign_in, test_config,
    unique_name, EngineRecorder, TestLogic, NODE,
};
use im_proto::v1::{ErrorCode, FriendRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP response split into its status line, head and body.
struct Scrape {
    status_line: String,
    head: String,
    body: String,
}

impl Scrape {
    /// Returns the value of the sample whose series is exactly `series`.
    fn value(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    fn expect_value(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.body))
    }
}

async fn get(addr: SocketAddr, path: &str) -> Scrape {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("metrics port accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("response within 5 s")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    Scrape {
        status_line: head.lines().next().unwrap_or_default().to_owned(),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Scrapes until `series` reaches `expected`, for counts written by the push task after the
/// send's reply. Panics after 5 s.
async fn scrape_until(addr: SocketAddr, series: &str, expected: f64) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = get(addr, "/metrics").await;
        if scrape.value(series) == Some(expected) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not reach {expected} within 5 s:\n{}",
            scrape.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_sign_ins_and_send() {
    let mut engine = EngineRecorder::start().await;
    let node = engine.node();
    let mut logic = TestLogic::start_default().await;
    let addr = logic.server.metrics_addr().expect("metrics on");
    let client = &mut logic.client;

    let (_, alice) = new_user_device(client, "metrics_a", true, conn(&node, 1)).await;
    let (_, bob) = new_user_device(client, "metrics_b", true, conn(&node, 2)).await;
    sign_in(
        client,
        alice.user_id,
        alice.device_id,
        &alice.token,
        conn(&node, 3),
    )
    .await
    .expect("sign-in with the token");
    let wrong = sign_in(
        client,
        alice.user_id,
        alice.device_id,
        "wrong",
        conn(&node, 4),
    )
    .await;
    assert_eq!(
        error_code(&wrong.expect_err("wrong token")),
        ErrorCode::TokenInvalid
    );
    send_text(client, &alice, bob.user_id, "hello")
        .await
        .expect("send succeeds");
    let delivery = engine.next_delivery().await;
    assert_eq!(delivery.deliveries.len(), 1);

    let scrape = scrape_until(addr, r#"im_logic_deliver_calls_total{result="ok"}"#, 1.0).await;

    assert_eq!(scrape.status_line, "HTTP/1.1 200 OK");
    assert!(
        scrape
            .head
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        scrape.head
    );
    let requests = |method: &str, code: &str| {
        scrape.expect_value(&format!(
            r#"im_logic_requests_total{{method="{method}",code="{code}"}}"#
        ))
    };
    assert_eq!(requests("Register", "OK"), 2.0);
    assert_eq!(requests("ConnLogin", "OK"), 2.0);
    assert_eq!(requests("ConnSignIn", "OK"), 1.0);
    assert_eq!(requests("ConnSignIn", "TOKEN_INVALID"), 1.0);
    assert_eq!(requests("Send", "OK"), 1.0);
    assert_eq!(
        scrape.expect_value(r#"im_logic_sign_ins_total{result="ok"}"#),
        3.0
    );
    assert_eq!(
        scrape.expect_value(r#"im_logic_sign_ins_total{result="rejected"}"#),
        1.0
    );
    assert_eq!(
        scrape.expect_value(r#"im_logic_request_seconds_count{method="Send"}"#),
        1.0
    );
    assert_eq!(scrape.expect_value("im_logic_messages_stored_total"), 1.0);
    // A direct message is stored for the sender and the receiver.
    assert_eq!(
        scrape.expect_value("im_logic_message_copies_stored_total"),
        2.0
    );
    assert_eq!(scrape.expect_value("im_logic_push_seconds_count"), 1.0);
    assert_eq!(
        scrape.expect_value("im_logic_password_hashes_in_flight"),
        0.0
    );
}

#[tokio::test]
async fn push_targets_counted_by_result() {
    // A node built before notices: it rejects each notice call and takes each message.
    let mut engine = EngineRecorder::start_without_notices().await;
    let node = engine.node();
    let mut logic = TestLogic::start_default().await;
    let addr = logic.server.metrics_addr().expect("metrics on");
    let mut ext = logic.ext_client().await;
    let client = &mut logic.client;
    let (_, alice) = new_user_device(client, "push_count_a", true, conn(&node, 1)).await;
    let (_, bob) = new_user_device(client, "push_count_b", true, conn(&node, 2)).await;

    ext.request_friend(as_device(
        &alice,
        FriendRequest {
            user_id: bob.user_id,
        },
    ))
    .await
    .expect("friend request");
    let notice = engine.notices.recv().await.expect("a notice call");
    send_text(client, &alice, bob.user_id, "hello")
        .await
        .expect("send succeeds");
    engine.next_delivery().await;

    let targets = |kind: &str, result: &str| {
        format!(r#"im_logic_push_targets_total{{kind="{kind}",result="{result}"}}"#)
    };
    // The notice went to both devices in one rejected call; the message to Bob's device.
    assert_eq!(notice.deliveries[0].targets.len(), 2);
    scrape_until(addr, &targets("notice", "failed"), 2.0).await;
    let scrape = scrape_until(addr, &targets("message", "delivered"), 1.0).await;
    assert_eq!(scrape.expect_value(&targets("notice", "delivered")), 0.0);
    assert_eq!(scrape.expect_value(&targets("message", "failed")), 0.0);
    assert_eq!(
        scrape.expect_value(r#"im_logic_deliver_calls_total{result="failed"}"#),
        1.0
    );
    assert_eq!(
        scrape.expect_value(r#"im_logic_pushes_dropped_total{kind="notice"}"#),
        0.0
    );
}

#[tokio::test]
async fn metrics_show_store_gauges() {
    let mut logic = TestLogic::start_default().await;
    let addr = logic.server.metrics_addr().expect("metrics on");
    // Registering opens a pooled connection, which stays open.
    register(&mut logic.client, &unique_name("pool")).await;

    let scrape = get(addr, "/metrics").await;

    let pipelines = scrape.expect_value("im_logic_redis_pipelines_total");
    let commands = scrape.expect_value("im_logic_redis_commands_total");
    // Start-up sends PING through the pipeline.
    assert!(pipelines >= 1.0, "{pipelines} pipelines");
    assert!(
        commands >= pipelines,
        "{commands} commands, {pipelines} pipelines"
    );
    let pool = |state: &str| {
        scrape.expect_value(&format!(
            r#"im_logic_db_pool_connections{{state="{state}"}}"#
        ))
    };
    assert!(pool("size") >= 1.0, "pool size {}", pool("size"));
    assert!(pool("available") <= pool("size"));
    assert_eq!(pool("max"), f64::from(test_config().db_pool_size));
}

#[tokio::test]
async fn metrics_endpoint_returns_404_elsewhere() {
    let logic = TestLogic::start_default().await;
    let addr = logic.server.metrics_addr().expect("metrics on");

    let scrape = get(addr, "/").await;

    assert_eq!(scrape.status_line, "HTTP/1.1 404 Not Found");
    assert!(scrape.body.contains("GET /metrics"), "{}", scrape.body);
}

#[tokio::test]
async fn metrics_endpoint_off_when_addr_empty() {
    let config = im_logic::Config {
        metrics_addr: String::new(),
        ..test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let client = &mut logic.client;
    let (username, device) = new_user_device(client, "metrics_off", false, conn(NODE, 1)).await;
    login(client, &username, device.device_id, conn(NODE, 2))
        .await
        .expect("second login");

    assert_eq!(logic.server.metrics_addr(), None);
    let text = logic.server.metrics().render();
    assert!(
        text.contains("im_logic_sign_ins_total{result=\"ok\"} 2\n"),
        "{text}"
    );
}
