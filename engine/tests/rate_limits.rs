//! Per-connection rate limits over real WebSocket on loopback. HEARTBEAT before sign-in gets
//! NOT_SIGNED_IN without the logic tier, so every packet that passes the limits gets
//! a reply and no logic tier is needed.

use std::time::Duration;

use futures::SinkExt;
use im_engine::{Config, Engine};
use im_proto::{ErrorCode, PacketType};
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{close_code, connect, next_packet, packet};

fn start_engine(adjust: impl FnOnce(&mut Config)) -> Engine {
    common::start_engine(1, adjust)
}

fn heartbeat(request_id: u64) -> Message {
    packet(PacketType::Heartbeat, request_id, Vec::new())
}

/// Returns the value of one series of the engine's metrics, 0 when absent.
fn metric(engine: &Engine, series: &str) -> u64 {
    let text = engine.metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn packets_over_rate_are_limited_not_closed() {
    let engine = start_engine(|config| {
        config.rate_packets_per_sec = 10;
        config.rate_packet_burst = 5;
    });
    let mut socket = connect(&engine).await;
    for id in 1..=10 {
        socket.feed(heartbeat(id)).await.unwrap();
    }
    socket.flush().await.unwrap();

    let mut limited = Vec::new();
    for request_id in 1..=10 {
        let reply = next_packet(&mut socket).await;
        assert_eq!(reply.request_id, request_id);
        assert_eq!(reply.r#type, PacketType::Heartbeat as i32);
        if request_id <= 5 {
            assert_eq!(
                reply.code,
                ErrorCode::NotSignedIn as i32,
                "within the burst"
            );
        } else if reply.code == ErrorCode::RateLimited as i32 {
            limited.push(reply.retry_after_ms);
        }
    }
    // The burst is 5 and a token comes every 100 ms; the batch takes far less on loopback,
    // but a slow machine may earn one more token meanwhile.
    assert!(limited.len() >= 4, "rate limited: {limited:?}");
    for retry_after_ms in &limited {
        assert!(
            (1..=100).contains(retry_after_ms),
            "retry hint {retry_after_ms}"
        );
    }
    assert!(metric(&engine, "im_engine_limits_hit_total{kind=\"rate_packets\"}") >= 4);

    let wait = limited.last().copied().unwrap_or(100);
    tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
    socket.send(heartbeat(11)).await.unwrap();
    let reply = next_packet(&mut socket).await;
    assert_eq!(reply.request_id, 11);
    assert_eq!(
        reply.code,
        ErrorCode::NotSignedIn as i32,
        "handled after the wait"
    );
    engine.shutdown();
}

#[tokio::test]
async fn message_ack_over_rate_gets_error_packet() {
    let engine = start_engine(|config| {
        config.rate_packets_per_sec = 1;
        config.rate_packet_burst = 1;
    });
    let mut socket = connect(&engine).await;
    socket.send(heartbeat(1)).await.unwrap();
    socket
        .send(packet(PacketType::MessageAck, 2, Vec::new()))
        .await
        .unwrap();
    let first = next_packet(&mut socket).await;
    assert_eq!(first.code, ErrorCode::NotSignedIn as i32);
    let second = next_packet(&mut socket).await;
    assert_eq!(
        second.r#type,
        PacketType::Error as i32,
        "MESSAGE_ACK has no reply"
    );
    assert_eq!(second.request_id, 2);
    assert_eq!(second.code, ErrorCode::RateLimited as i32);
    assert!(second.retry_after_ms > 0);
    engine.shutdown();
}

#[tokio::test]
async fn sustained_flood_is_closed_with_4009() {
    let engine = start_engine(|config| {
        config.rate_packets_per_sec = 10;
        config.rate_packet_burst = 5;
        config.rate_limit_strikes = 20;
    });
    let mut bystander = connect(&engine).await;
    let mut socket = connect(&engine).await;
    for id in 1..=200 {
        // Writes may fail once the engine has closed the connection.
        if socket.feed(heartbeat(id)).await.is_err() {
            break;
        }
    }
    let _ = socket.flush().await;
    assert_eq!(close_code(&mut socket).await, 4009);
    assert_eq!(
        metric(&engine, "im_engine_limits_hit_total{kind=\"rate_close\"}"),
        1
    );
    assert_eq!(metric(&engine, "im_engine_closes_total{code=\"4009\"}"), 1);

    bystander.send(heartbeat(7)).await.unwrap();
    let reply = next_packet(&mut bystander).await;
    assert_eq!(
        reply.code,
        ErrorCode::NotSignedIn as i32,
        "other connections are served"
    );
    engine.shutdown();
}

#[tokio::test]
async fn bytes_over_rate_get_rate_limited() {
    let engine = start_engine(|config| {
        config.rate_packets_per_sec = 0;
        config.rate_bytes_per_sec = 64 * 1024;
        config.rate_byte_burst = 64 * 1024;
    });
    let mut socket = connect(&engine).await;
    let big = vec![7u8; 40 * 1024];
    socket
        .send(packet(PacketType::Heartbeat, 1, big.clone()))
        .await
        .unwrap();
    socket
        .send(packet(PacketType::Heartbeat, 2, big.clone()))
        .await
        .unwrap();
    let first = next_packet(&mut socket).await;
    assert_eq!(first.code, ErrorCode::NotSignedIn as i32);
    let second = next_packet(&mut socket).await;
    assert_eq!(second.request_id, 2);
    assert_eq!(second.code, ErrorCode::RateLimited as i32);
    // About 16 KiB short at 64 KiB/s: 250 ms, less what the clock added meanwhile.
    assert!(
        (1..=260).contains(&second.retry_after_ms),
        "retry hint {}",
        second.retry_after_ms
    );
    assert_eq!(
        metric(&engine, "im_engine_limits_hit_total{kind=\"rate_bytes\"}"),
        1
    );

    tokio::time::sleep(Duration::from_millis(u64::from(second.retry_after_ms))).await;
    socket
        .send(packet(PacketType::Heartbeat, 3, big))
        .await
        .unwrap();
    let third = next_packet(&mut socket).await;
    assert_eq!(third.request_id, 3);
    assert_eq!(
        third.code,
        ErrorCode::NotSignedIn as i32,
        "handled after the wait"
    );
    engine.shutdown();
}

#[tokio::test]
async fn byte_flood_is_closed_with_4009() {
    let engine = start_engine(|config| {
        config.rate_packets_per_sec = 0;
        config.rate_bytes_per_sec = 1024;
        config.rate_byte_burst = 64 * 1024;
    });
    let mut socket = connect(&engine).await;
    let big = vec![7u8; 60 * 1024];
    for id in 1..=8 {
        if socket
            .send(packet(PacketType::Heartbeat, id, big.clone()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut socket).await, 4009);
    engine.shutdown();
}

#[tokio::test]
async fn zero_rates_turn_the_limits_off() {
    let engine = start_engine(|config| {
        config.rate_packets_per_sec = 0;
        config.rate_bytes_per_sec = 0;
    });
    let mut socket = connect(&engine).await;
    for id in 1..=500 {
        socket.feed(heartbeat(id)).await.unwrap();
    }
    socket.flush().await.unwrap();
    for id in 1..=500 {
        let reply = next_packet(&mut socket).await;
        assert_eq!(reply.request_id, id);
        assert_eq!(reply.code, ErrorCode::NotSignedIn as i32);
    }
    engine.shutdown();
}
