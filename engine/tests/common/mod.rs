//! Helpers of the engine tests that need no logic tier: an engine on loopback whose logic URL
//! leads nowhere, and a tungstenite client that speaks packets to it.

// Each test file uses its own subset.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use im_engine::{Config, Engine};
use im_proto::{Packet, PacketType};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Returns a logic URL where nothing listens: a port just bound and released.
pub(crate) fn dead_logic_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Starts an engine on free loopback ports with `shards` shards and no metrics endpoint,
/// changed by `adjust`.
pub(crate) fn start_engine(shards: usize, adjust: impl FnOnce(&mut Config)) -> Engine {
    let mut config = Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: String::new(),
        logic_url: dead_logic_url(),
        shards,
        ..Config::default()
    };
    adjust(&mut config);
    Engine::start(config).expect("engine starts")
}

pub(crate) async fn connect(engine: &Engine) -> Socket {
    let url = format!("ws://{}/ws", engine.ws_addr());
    let stream = tokio::net::TcpStream::connect(engine.ws_addr())
        .await
        .unwrap();
    let (socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    socket
}

pub(crate) fn packet(kind: PacketType, request_id: u64, data: Vec<u8>) -> Message {
    let packet = Packet {
        r#type: kind as i32,
        request_id,
        data: data.into(),
        ..Packet::default()
    };
    Message::Binary(packet.encode_to_vec().into())
}

/// Reads until a binary message arrives and decodes it as a Packet; a generous deadline for a
/// loaded machine.
pub(crate) async fn next_packet(socket: &mut Socket) -> Packet {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Binary(data) = message {
            return Packet::decode(data).expect("a Packet");
        }
    }
}

/// Reads until the close frame and returns its code.
pub(crate) async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a close within 10 s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Returns an HTTP upgrade request for `/ws` at `host`, with the key of RFC 6455's example.
pub(crate) fn upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// Encodes a masked client ping frame with a 125-byte payload.
pub(crate) fn masked_ping() -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x89, 0x80 | 125];
    frame.extend_from_slice(&mask);
    frame.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    frame
}

/// Sends pings on an upgraded `stream` and reads none of their pongs until the engine counts
/// the outbound queue limit. Then checks that the engine closed the connection with 4008 and
/// counted the limit once. The engine must run with a small `max_outbound_bytes` and its rate
/// limits off.
pub(crate) async fn assert_unread_pongs_close_with_4008<S>(stream: &mut S, engine: &Engine)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT_HIT: &str = "im_engine_limits_hit_total{kind=\"outbound_queue\"} 1";
    // Up to 200,000 pings carry 26 MB of pongs. On a plain connection only pongs the socket
    // rejects count against the 64 KiB queue limit, and on loopback, Linux lets the engine's
    // send buffer grow to net.ipv4.tcp_wmem's maximum (4 MiB on the Linux 6.18 test machine).
    let pings: Vec<u8> = (0..100).flat_map(|_| masked_ping()).collect();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let send_pings = async {
        for _ in 0..2_000 {
            let sent = tokio::time::timeout(Duration::from_secs(5), writer.write_all(&pings)).await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
    };
    // The close frame waits behind the pongs in the full socket, and the engine closes the
    // socket 2 s after it queued the close frame. So reading starts as soon as the limit is hit.
    let read_after_limit = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !engine.metrics().render().contains(LIMIT_HIT)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut received = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received)).await;
        received
    };
    let ((), received) = tokio::join!(send_pings, read_after_limit);

    let close_4008 = [0x88u8, 2 + 60, 0x0f, 0xa8];
    let found = received
        .windows(4)
        .any(|window| window[0] == close_4008[0] && window[2..] == close_4008[2..]);
    assert!(
        found,
        "no close frame with 4008 among {} bytes",
        received.len()
    );
    let metrics = engine.metrics().render();
    assert!(metrics.contains(LIMIT_HIT), "{metrics}");
}
