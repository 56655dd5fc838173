//! Engine behaviour that needs no logic tier: the upgrade, frame rules, sign-in
//! deadline, sign-in while the logic tier is down, and the checks of Deliver calls. Real
//! WebSocket and gRPC over loopback.

use std::time::{Duration, Instant};

use futures::SinkExt;
use im_engine::{Config, Engine};
use im_proto::connect_int_service_client::ConnectIntServiceClient;
use im_proto::{
    DeliverRequest, Delivery, DeliveryTarget, ErrorCode, Message as ChatMessage, Notice,
    NoticeKind, PacketType, SignInRequest,
};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{
    assert_unread_pongs_close_with_4008, close_code, connect, next_packet, packet, upgrade_request,
    Socket,
};

fn start_engine(adjust: impl FnOnce(&mut Config)) -> Engine {
    common::start_engine(2, |config| {
        config.metrics_addr = "127.0.0.1:0".to_owned();
        adjust(config);
    })
}

#[tokio::test]
async fn heartbeat_before_sign_in_is_rejected() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    socket
        .send(packet(PacketType::Heartbeat, 7, Vec::new()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.r#type, PacketType::Heartbeat as i32);
    assert_eq!(reply.request_id, 7);
    assert_eq!(reply.code, ErrorCode::NotSignedIn as i32);
    engine.shutdown();
}

#[tokio::test]
async fn undecodable_packet_gets_error_and_connection_stays() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    socket
        .send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.r#type, PacketType::Error as i32);
    assert_eq!(reply.code, ErrorCode::InvalidPacket as i32);
    socket
        .send(packet(PacketType::Heartbeat, 8, Vec::new()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.request_id, 8);
    engine.shutdown();
}

#[tokio::test]
async fn undecodable_login_names_type() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    // Field 1 (username) as a varint, where LoginRequest has a string.
    socket
        .send(packet(PacketType::Login, 5, vec![0x08, 0x01]))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.r#type, PacketType::Login as i32);
    assert_eq!(reply.request_id, 5);
    assert_eq!(reply.code, ErrorCode::InvalidPacket as i32);
    assert!(
        reply
            .message
            .contains("the data of a LOGIN packet does not decode as a LoginRequest"),
        "{}",
        reply.message
    );
    engine.shutdown();
}

/// Checks that a bystander connection on the same engine still gets replies.
async fn assert_still_serving(bystander: &mut Socket) {
    bystander
        .send(packet(PacketType::Heartbeat, 99, Vec::new()))
        .await
        .unwrap();
    let reply = next_packet(bystander).await;
    assert_eq!(reply.request_id, 99);
}

#[tokio::test]
async fn text_frame_is_closed_with_1003() {
    let engine = start_engine(|_| {});
    let mut bystander = connect(&engine).await;
    let mut socket = connect(&engine).await;
    socket.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(close_code(&mut socket).await, 1003);
    assert_still_serving(&mut bystander).await;
    engine.shutdown();
}

#[tokio::test]
async fn oversized_frame_is_closed_with_1009() {
    let engine = start_engine(|config| {
        config.max_frame_bytes = 1024;
        config.max_message_bytes = 1024;
    });
    let mut bystander = connect(&engine).await;
    let mut socket = connect(&engine).await;
    let _ = socket.send(Message::Binary(vec![0; 4096].into())).await;
    assert_eq!(close_code(&mut socket).await, 1009);
    assert_still_serving(&mut bystander).await;
    engine.shutdown();
}

#[tokio::test]
async fn missing_sign_in_is_closed_with_4001() {
    let engine = start_engine(|config| config.sign_in_timeout_ms = 300);
    let mut socket = connect(&engine).await;
    let started = Instant::now();
    assert_eq!(close_code(&mut socket).await, 4001);
    assert!(started.elapsed() >= Duration::from_millis(250));
    engine.shutdown();
}

#[tokio::test]
async fn sign_in_with_logic_down_fails_within_deadline() {
    let engine = start_engine(|config| config.logic_call_timeout_ms = 500);
    let mut socket = connect(&engine).await;
    let sign_in = SignInRequest {
        user_id: 1,
        device_id: 1,
        token: "00".repeat(32),
    };
    let started = Instant::now();
    socket
        .send(packet(PacketType::SignIn, 9, sign_in.encode_to_vec()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.request_id, 9);
    assert!(
        reply.code == ErrorCode::Unavailable as i32 || reply.code == ErrorCode::Timeout as i32,
        "code {} message {}",
        reply.code,
        reply.message
    );
    // busy_retry_after_ms is 500 by default, with jitter from half to one and a half times it.
    assert!(
        (250..=750).contains(&reply.retry_after_ms),
        "retry hint {}",
        reply.retry_after_ms
    );
    // The call deadline is 500 ms; the shard's own grace adds 500 ms at most.
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    engine.shutdown();
}

#[tokio::test]
async fn bad_upgrade_gets_http_error() {
    let engine = start_engine(|_| {});
    let cases: [(&str, &str); 3] = [
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "426"),
        ("GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "404"),
        ("POST /ws HTTP/1.1\r\nHost: x\r\n\r\n", "405"),
    ];
    for (request, status) in cases {
        let mut stream = tokio::net::TcpStream::connect(engine.ws_addr())
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("the engine answers and closes");
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "request {request:?} got {text:?}"
        );
    }
    engine.shutdown();
}

#[tokio::test]
async fn disallowed_origin_gets_403_with_fix() {
    let engine = start_engine(|config| {
        config.allowed_origins = vec!["https://chat.example.com".to_owned()];
    });
    let mut stream = tokio::net::TcpStream::connect(engine.ws_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://other.example\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the engine answers and closes");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.contains("\"https://other.example\""), "{body}");
    assert!(body.contains("allowed_origins"), "{body}");
    assert!(body.contains("IM_ENGINE_ALLOWED_ORIGINS"), "{body}");
    engine.shutdown();
}

#[tokio::test]
async fn partial_upgrade_gets_408_at_handshake_deadline() {
    let engine = start_engine(|config| config.handshake_timeout_ms = 300);
    let mut stream = tokio::net::TcpStream::connect(engine.ws_addr())
        .await
        .unwrap();
    // Headers without the blank line that ends them: the request never completes.
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the engine replies and closes within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(text.contains("handshake_timeout_ms"), "got {text:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed after {:?}, before the deadline",
        started.elapsed()
    );
    let metrics = engine.metrics().render();
    assert!(
        metrics.contains("im_engine_limits_hit_total{kind=\"handshake_timeout\"} 1"),
        "{metrics}"
    );
    engine.shutdown();
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    let stopper = std::thread::spawn(move || engine.shutdown());
    assert_eq!(close_code(&mut socket).await, u16::from(CloseCode::Away));
    stopper.join().unwrap();
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    socket.send(Message::Text("x".into())).await.unwrap();
    assert_eq!(close_code(&mut socket).await, 1003);

    let addr = engine.metrics_addr().expect("metrics on");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("im_engine_connections{shard=\"0\"}"));
    assert!(response.contains("im_engine_closes_total{code=\"1003\"} 1"));
    assert!(response.contains("im_engine_accepted_total{shard=\"1\"}"));
    engine.shutdown();
}

#[tokio::test]
async fn reader_that_stops_reading_is_closed_with_4008() {
    let engine = start_engine(|config| {
        config.max_outbound_bytes = 64 * 1024;
        config.write_timeout_ms = 30_000;
        // The flood of pings below would otherwise meet the rate limits first.
        config.rate_packets_per_sec = 0;
        config.rate_bytes_per_sec = 0;
    });
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(engine.ws_addr()).await.unwrap();
    stream.write_all(&upgrade_request("x")).await.unwrap();
    assert_unread_pongs_close_with_4008(&mut stream, &engine).await;
    engine.shutdown();
}

/// Sends an upgrade request from `source` and returns the status line of the response.
async fn upgrade_status_from(engine: &Engine, source: [u8; 4]) -> (String, tokio::net::TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let mut stream = socket.connect(engine.ws_addr()).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

#[tokio::test]
async fn connections_over_per_ip_limit_get_503() {
    let engine = start_engine(|config| config.max_connections_per_ip = 2);
    let (first, _keep_first) = upgrade_status_from(&engine, [127, 0, 0, 1]).await;
    let (second, _keep_second) = upgrade_status_from(&engine, [127, 0, 0, 1]).await;
    assert_eq!(first, "HTTP/1.1 101");
    assert_eq!(second, "HTTP/1.1 101");
    let (third, _) = upgrade_status_from(&engine, [127, 0, 0, 1]).await;
    assert_eq!(third, "HTTP/1.1 503");
    let (other_address, _keep_other) = upgrade_status_from(&engine, [127, 0, 0, 2]).await;
    assert_eq!(other_address, "HTTP/1.1 101");
    let metrics = engine.metrics().render();
    assert!(
        metrics.contains("im_engine_limits_hit_total{kind=\"max_connections_per_ip\"} 1"),
        "{metrics}"
    );
    engine.shutdown();
}

#[tokio::test]
async fn connections_over_node_limit_get_503_until_one_closes() {
    let engine = start_engine(|config| config.max_connections = 1);
    let (first, first_stream) = upgrade_status_from(&engine, [127, 0, 0, 1]).await;
    assert_eq!(first, "HTTP/1.1 101");
    let (second, _) = upgrade_status_from(&engine, [127, 0, 0, 3]).await;
    assert_eq!(second, "HTTP/1.1 503");
    drop(first_stream);
    // The engine notices the closed socket and releases the place.
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _) = upgrade_status_from(&engine, [127, 0, 0, 3]).await;
        if status == "HTTP/1.1 101" {
            admitted = true;
            break;
        }
    }
    assert!(
        admitted,
        "the place of the closed connection was not released"
    );
    engine.shutdown();
}

#[tokio::test]
async fn notice_sent_by_device_gets_unknown_type() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    let notice = Notice {
        kind: NoticeKind::FriendRequested as i32,
        ..Notice::default()
    };
    socket
        .send(packet(PacketType::Notice, 9, notice.encode_to_vec()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(
        reply.r#type,
        PacketType::Error as i32,
        "never a NOTICE back"
    );
    assert_eq!(reply.request_id, 9);
    assert_eq!(reply.code, ErrorCode::UnknownType as i32);
    assert!(
        reply
            .message
            .starts_with("packet type 12 (NOTICE) is not accepted from devices: send "),
        "{}",
        reply.message
    );
    engine.shutdown();
}

#[tokio::test]
async fn unknown_type_number_names_the_accepted_types() {
    let engine = start_engine(|_| {});
    let mut socket = connect(&engine).await;
    let unknown = im_proto::Packet {
        r#type: 99,
        request_id: 4,
        ..im_proto::Packet::default()
    };
    socket
        .send(Message::Binary(unknown.encode_to_vec().into()))
        .await
        .unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.code, ErrorCode::UnknownType as i32);
    assert_eq!(
        reply.message,
        "packet type 99 is not accepted from devices: send REGISTER, LOGIN, SIGN_IN, HEARTBEAT, \
         SEND, MESSAGE_ACK, SYNC or LOGOUT"
    );
    engine.shutdown();
}

/// Returns a target whose connection id names no open connection of the node.
fn closed_target() -> DeliveryTarget {
    DeliveryTarget {
        device_id: 1,
        conn_id: 1,
        seq: 0,
    }
}

fn notice_delivery() -> Delivery {
    Delivery {
        message: None,
        targets: vec![closed_target()],
        notice: Some(Notice {
            kind: NoticeKind::GroupCreated as i32,
            group_id: 5,
            ..Notice::default()
        }),
    }
}

async fn push_client(engine: &Engine) -> ConnectIntServiceClient<tonic::transport::Channel> {
    ConnectIntServiceClient::connect(format!("http://{}", engine.grpc_addr()))
        .await
        .expect("the engine serves gRPC")
}

#[tokio::test]
async fn deliver_accepts_notice_delivery() {
    let engine = start_engine(|_| {});
    let mut client = push_client(&engine).await;

    let reply = client
        .deliver(DeliverRequest {
            deliveries: vec![notice_delivery()],
        })
        .await
        .expect("a notice delivery is accepted")
        .into_inner();

    assert_eq!(reply.delivered, 0);
    assert_eq!(reply.missed, 1, "no connection holds the target's id");
    engine.shutdown();
}

#[tokio::test]
async fn deliver_rejects_delivery_without_one_payload() {
    let engine = start_engine(|_| {});
    let mut client = push_client(&engine).await;
    let neither = Delivery {
        message: None,
        targets: vec![closed_target()],
        notice: None,
    };
    let both = Delivery {
        message: Some(ChatMessage::default()),
        ..notice_delivery()
    };

    for (case, delivery, text) in [
        ("neither", neither, "neither a message nor a notice"),
        ("both", both, "both a message and a notice"),
    ] {
        let request = DeliverRequest {
            deliveries: vec![notice_delivery(), delivery],
        };
        let status = client.deliver(request).await.expect_err(case);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}");
        assert!(
            status.message().contains("delivery 1"),
            "{case}: {status:?}"
        );
        assert!(status.message().contains(text), "{case}: {status:?}");
    }
    engine.shutdown();
}
