//! The engine's limits and the internal secret end to end: a sign-in storm against the
//! in-flight caps, the shared secret on DeviceIntService and ConnectIntService, and frames
//! that declare huge payloads on signed-in connections. Engine, logic tier, PostgreSQL and
//! Redis are real; devices speak WebSocket over loopback.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_client::tungstenite::Message as WsMessage;
use im_client::Client;
use im_proto::connect_int_service_client::ConnectIntServiceClient;
use im_proto::device_int_service_client::DeviceIntServiceClient;
use im_proto::{
    DeliverRequest, Delivery, DeliveryTarget, ErrorCode, KickRequest, LoginReply, LoginRequest,
    Packet, PacketType, RegisterRequest, SendReply, SendRequest, SignInRequest, SyncReply,
    SyncRequest,
};
use prost::Message as _;
use support::front;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A secret that engine and logic share in these tests.
const SECRET: &str = "e2e-internal-secret-0123456789";

const SECRET_KEY: &str = "im-internal-secret";

/// Request ids far above the client's own counter, so that replies to packets sent with
/// `send_raw` arrive through `next_push` with every field.
const RAW_REQUEST_IDS: u64 = 1 << 40;

fn packet(kind: PacketType, request_id: u64, data: Vec<u8>) -> WsMessage {
    let packet = Packet {
        r#type: kind as i32,
        request_id,
        data: data.into(),
        ..Packet::default()
    };
    WsMessage::Binary(packet.encode_to_vec().into())
}

/// Reads the next packet that is not a reply to the client's own requests; a generous
/// deadline for a loaded machine.
async fn next_packet(client: &Client) -> Packet {
    tokio::time::timeout(Duration::from_secs(10), client.next_push())
        .await
        .expect("a packet within 10 s")
        .expect("the connection is open")
}

fn metric(stack: &Stack, series: &str) -> u64 {
    let text = stack.engine().metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// What one device of the storm saw: the BUSY replies with their hint and latency.
struct StormDevice {
    busy: Vec<(u32, Duration)>,
    login: LoginReply,
}

/// Sends LOGIN until it succeeds, waiting `retry_after_ms` after each BUSY.
async fn login_until_served(client: Client, login: Vec<u8>) -> StormDevice {
    let mut busy = Vec::new();
    for attempt in RAW_REQUEST_IDS..RAW_REQUEST_IDS + 200 {
        let started = Instant::now();
        client
            .send_raw(packet(PacketType::Login, attempt, login.clone()))
            .await
            .unwrap();
        let reply = next_packet(&client).await;
        let latency = started.elapsed();
        assert_eq!(reply.request_id, attempt);
        match ErrorCode::try_from(reply.code) {
            Ok(ErrorCode::Ok) => {
                let login = LoginReply::decode(reply.data).expect("a LoginReply");
                return StormDevice { busy, login };
            }
            Ok(ErrorCode::Busy) => {
                busy.push((reply.retry_after_ms, latency));
                let wait = Duration::from_millis(u64::from(reply.retry_after_ms));
                tokio::time::sleep(wait).await;
            }
            other => panic!("LOGIN got {other:?}: {}", reply.message),
        }
    }
    panic!("LOGIN still BUSY after 200 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_storm_gets_busy_then_succeeds() {
    const DEVICES: usize = 50;
    let stack = Stack::start_with(logic_config(), |engine| {
        engine.logic_max_password_calls = 2;
        engine.busy_retry_after_ms = 200;
    })
    .await;
    let (user, client) = stack.new_user("storm").await;
    client.close().await.unwrap();
    let login = LoginRequest {
        username: user.username.clone(),
        password: PASSWORD.to_owned(),
        device_id: 0,
        device: Some(test_device()),
    }
    .encode_to_vec();

    let mut sockets = Vec::new();
    for _ in 0..DEVICES {
        sockets.push(stack.connect().await);
    }
    // Every device sends its first LOGIN at the same moment.
    let start = Arc::new(tokio::sync::Barrier::new(DEVICES));
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let start = start.clone();
            let login = login.clone();
            tokio::spawn(async move {
                start.wait().await;
                login_until_served(socket, login).await
            })
        })
        .collect();
    let mut devices = Vec::new();
    for task in tasks {
        let device = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the storm ends within 120 s")
            .expect("no device panicked");
        devices.push(device);
    }

    let mut device_ids: Vec<u64> = devices
        .iter()
        .map(|device| device.login.device_id)
        .collect();
    device_ids.sort_unstable();
    device_ids.dedup();
    assert_eq!(
        device_ids.len(),
        DEVICES,
        "every LOGIN succeeded with its own device"
    );
    let busy: Vec<(u32, Duration)> = devices.into_iter().flat_map(|device| device.busy).collect();
    assert!(
        !busy.is_empty(),
        "50 LOGINs at once against 2 places got no BUSY"
    );
    for (retry_after_ms, latency) in &busy {
        // busy_retry_after_ms = 200 with jitter from half to one and a half times it.
        assert!(
            (100..=300).contains(retry_after_ms),
            "retry hint {retry_after_ms}"
        );
        // BUSY is sent without waiting for a place; one second is slack for a loaded machine.
        assert!(
            *latency < Duration::from_secs(1),
            "BUSY after {latency:?}: it waited"
        );
    }
    let busy_count = busy.len() as u64;
    assert_eq!(
        metric(&stack, "im_engine_limits_hit_total{kind=\"sign_in_busy\"}"),
        busy_count
    );
    assert_eq!(
        metric(
            &stack,
            "im_engine_sign_ins_total{kind=\"login\",result=\"busy\"}"
        ),
        busy_count
    );
    stack.stop().await;
}

async fn secret_stack() -> Stack {
    let logic = im_logic::Config {
        internal_secret: SECRET.to_owned(),
        ..logic_config()
    };
    Stack::start_with(logic, |engine| engine.internal_secret = SECRET.into()).await
}

fn with_secret<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(SECRET_KEY, secret.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_service_requires_internal_secret() {
    let stack = secret_stack().await;
    let mut client = DeviceIntServiceClient::connect(stack.logic_url())
        .await
        .expect("logic accepts gRPC connections");
    let register = || RegisterRequest {
        username: unique_username("secret"),
        password: PASSWORD.to_owned(),
        ..RegisterRequest::default()
    };

    let missing = client.register(register()).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let wrong = client
        .register(with_secret(register(), "not-the-internal-secret"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(!wrong.message().contains(SECRET));

    let reply = client
        .register(with_secret(register(), SECRET))
        .await
        .expect("a call with the secret is served");
    assert!(reply.into_inner().user_id > 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_service_requires_internal_secret() {
    let stack = secret_stack().await;
    let url = format!("http://{}", stack.engine().grpc_addr());
    let mut client = ConnectIntServiceClient::connect(url)
        .await
        .expect("engine accepts gRPC connections");
    let kick = KickRequest {
        device_id: 1,
        conn_id: 1,
        reason: 0,
    };

    let missing = client.kick(kick).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let reply = client
        .kick(with_secret(kick, SECRET))
        .await
        .expect("a call with the secret is served");
    assert!(!reply.into_inner().found, "no such connection");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_secrets_serve_sign_in_push_and_kick() {
    let stack = secret_stack().await;
    // The lease renewals, which the engine finishes once before it accepts, carry the secret.
    let incarnation: Option<String> = {
        let client = redis::Client::open(env_url("IM_LOGIC_REDIS_URL")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("HGET")
            .arg("lease:incarnation")
            .arg(stack.engine().node())
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(incarnation, Some(stack.engine().incarnation().to_string()));
    // REGISTER and LOGIN pass engine -> logic with the secret.
    let (alice, alice_client) = stack.new_user("secret-a").await;
    let (bob, bob_client) = stack.new_user("secret-b").await;
    // LogicExtService does not check the internal secret.
    make_friends(&alice, &bob).await;

    // Deliver passes logic -> engine with the secret.
    alice_client
        .send(
            im_proto::ConversationType::User,
            bob.id(),
            "hello",
            "text/plain",
            "secret-1",
        )
        .await
        .expect("send");
    let message = next_message(&bob_client, Duration::from_secs(10)).await;
    assert_eq!(message.content, b"hello".as_slice());

    // SIGN_IN elsewhere makes the logic tier call Kick on the engine, with the secret.
    let _replacement = stack.sign_in(&bob.login).await;
    let kicked = push_within(&bob_client, Duration::from_secs(10))
        .await
        .expect("KICKED push");
    assert_eq!(kicked.r#type, PacketType::Kicked as i32);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_secret_fails_sign_in() {
    let logic = im_logic::Config {
        internal_secret: SECRET.to_owned(),
        ..logic_config()
    };
    let stack = Stack::start_with(logic, |engine| {
        engine.internal_secret = "another-secret-0123456789".into();
    })
    .await;
    let client = stack.connect().await;
    let code = server_code(
        client
            .register(&unique_username("mismatch"), PASSWORD)
            .await,
    );
    assert_eq!(code, ErrorCode::Internal);
    stack.stop().await;
}

#[test]
fn public_internal_listener_without_secret_is_rejected() {
    let engine = im_engine::Config {
        grpc_addr: "0.0.0.0:50052".parse().unwrap(),
        ..im_engine::Config::default()
    };
    let message = engine.validate().unwrap_err().to_string();
    assert!(message.contains("internal_secret"), "{message}");
    assert!(message.contains("IM_ENGINE_INTERNAL_SECRET"), "{message}");

    let logic = im_logic::Config {
        listen_addr: "0.0.0.0:50051".to_owned(),
        ..im_logic::Config::default()
    };
    let message = logic.validate().unwrap_err().to_string();
    assert!(message.contains("internal_secret"), "{message}");
    assert!(message.contains("IM_LOGIC_INTERNAL_SECRET"), "{message}");

    let engine = im_engine::Config {
        internal_secret: SECRET.into(),
        ..engine
    };
    assert!(engine.validate().is_ok());
    let logic = im_logic::Config {
        internal_secret: SECRET.to_owned(),
        ..logic
    };
    assert!(logic.validate().is_ok());
}

/// Opens a raw TCP connection and completes the WebSocket upgrade by hand. A receive buffer
/// size, when given, is set before connecting.
async fn raw_upgrade(stack: &Stack, receive_buffer: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    let mut stream = socket.connect(stack.engine().ws_addr()).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade answered {head:?}"
    );
    stream
}

/// Encodes a masked client frame with a length that matches its payload.
fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![first_byte];
    match payload.len() {
        length @ 0..=125 => frame.push(0x80 | length as u8),
        length @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    frame
}

/// Reads one server frame (unmasked) and returns its opcode and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let length = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.unwrap()),
        127 => stream.read_u64().await.unwrap(),
        length => u64::from(length),
    };
    let mut payload = vec![0u8; usize::try_from(length).unwrap()];
    stream.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// Upgrades a raw connection and signs `login`'s device in on it.
async fn raw_signed_in(stack: &Stack, login: &LoginReply) -> TcpStream {
    raw_signed_in_with(stack, login, None).await
}

async fn raw_signed_in_with(
    stack: &Stack,
    login: &LoginReply,
    receive_buffer: Option<u32>,
) -> TcpStream {
    let mut stream = raw_upgrade(stack, receive_buffer).await;
    let sign_in = SignInRequest {
        user_id: login.user_id,
        device_id: login.device_id,
        token: login.token.clone(),
    };
    let request = Packet {
        r#type: PacketType::SignIn as i32,
        request_id: 1,
        data: sign_in.encode_to_vec().into(),
        ..Packet::default()
    };
    stream
        .write_all(&masked_frame(0x82, &request.encode_to_vec()))
        .await
        .unwrap();
    let (opcode, payload) = read_frame(&mut stream).await;
    assert_eq!(opcode, 2, "a binary reply");
    let reply = Packet::decode(payload.as_slice()).unwrap();
    assert_eq!(reply.code, ErrorCode::Ok as i32, "{}", reply.message);
    stream
}

/// Splits unmasked server frames from the front of `bytes` until a close frame. Returns the
/// opcodes before it and its code, or `None` when the bytes end first.
fn split_frames(mut bytes: &[u8]) -> (Vec<u8>, Option<u16>) {
    let mut opcodes = Vec::new();
    while bytes.len() >= 2 {
        let (length, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let length = u64::from_be_bytes(bytes[2..10].try_into().unwrap());
                (usize::try_from(length).unwrap(), 10)
            }
            126 | 127 => break,
            short => (usize::from(short), 2),
        };
        let Some(payload) = bytes.get(header..header + length) else {
            break;
        };
        let opcode = bytes[0] & 0x0f;
        if opcode == 8 {
            return (opcodes, Some(u16::from_be_bytes([payload[0], payload[1]])));
        }
        opcodes.push(opcode);
        bytes = &bytes[header + length..];
    }
    (opcodes, None)
}

/// Reads 1,500 bytes every 20 ms until `stop` is set, then everything until the engine closes
/// the connection or 10 s pass. Returns the bytes read.
async fn read_slowly_until(mut stream: TcpStream, stop: Arc<AtomicBool>) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return received,
            Ok(read) => received.extend_from_slice(&chunk[..read]),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    received
}

/// Sends `content` to user `to`, with send keys `<prefix>-<n>`, until the engine hits an
/// outbound queue limit or `max` were sent. After every tenth send, `bystander` (when given)
/// sends a heartbeat. Returns the messages sent and the slowest heartbeat.
async fn send_until_queue_full(
    stack: &Stack,
    client: &Client,
    to: u64,
    content: &[u8],
    prefix: &str,
    max: usize,
    bystander: Option<&Client>,
) -> (usize, Duration) {
    let mut sent = 0;
    let mut slowest_heartbeat = Duration::ZERO;
    while sent < max && metric(stack, "im_engine_limits_hit_total{kind=\"outbound_queue\"}") == 0 {
        client
            .send(
                im_proto::ConversationType::User,
                to,
                content.to_vec(),
                "text/plain",
                &format!("{prefix}-{sent}"),
            )
            .await
            .expect("send to a slow reader");
        sent += 1;
        if let Some(bystander) = bystander.filter(|_| sent % 10 == 0) {
            let started = Instant::now();
            bystander
                .heartbeat()
                .await
                .expect("the bystander is served");
            slowest_heartbeat = slowest_heartbeat.max(started.elapsed());
        }
    }
    (sent, slowest_heartbeat)
}

/// Asserts that `received` contains whole binary frames and then a close frame with 4008.
fn assert_binary_frames_then_4008(received: &[u8]) {
    let (frames, close) = split_frames(received);
    assert!(
        frames.iter().all(|opcode| *opcode == 2),
        "frames before the close: {frames:?}"
    );
    assert_eq!(
        close,
        Some(4008),
        "{} bytes, {} whole frames",
        received.len(),
        frames.len()
    );
}

/// Reads frames until a close frame and returns its code.
async fn raw_close_code(stream: &mut TcpStream) -> u16 {
    let read = async {
        loop {
            let (opcode, payload) = read_frame(stream).await;
            if opcode == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a close frame within 10 s")
}

/// Resident memory of this process (engine and logic tier included), in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_payloads_close_before_allocating() {
    // One shard, so that the bystander shares it with every offending connection.
    let stack = Stack::start_with(logic_config(), |engine| engine.shards = 1).await;
    let (user, bystander) = stack.new_user("huge").await;
    let (second_device, _client) = stack.another_device(&user).await;
    let resident_before = resident_kib();

    // A 64-bit length of 2^62 followed by 10 bytes.
    let mut stream = raw_signed_in(&stack, &second_device).await;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    header.extend_from_slice(&[0u8; 10]);
    stream.write_all(&header).await.unwrap();
    assert_eq!(raw_close_code(&mut stream).await, 1009);
    bystander
        .heartbeat()
        .await
        .expect("the bystander is served after the 2^62 header");

    // A 100 MiB message as a thousand 100 KiB frames: the first frame header is over
    // max_frame_bytes (64 KiB), so the engine closes before the first payload.
    let stream = raw_signed_in(&stack, &second_device).await;
    let (mut reader, writer) = stream.into_split();
    let writes = tokio::spawn(write_fragments(writer, 100 * 1024, 1000));
    assert_eq!(read_close_code(&mut reader).await, 1009);
    drop(reader);
    let written = writes_after_close(writes).await;
    assert!(written < 1000, "the engine read all of 100 MiB");
    bystander
        .heartbeat()
        .await
        .expect("the bystander is served after the 100 MiB message");

    // A 64-bit length with its most significant bit set (RFC 6455 section 5.2).
    let mut stream = raw_signed_in(&stack, &second_device).await;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63 | 10).to_be_bytes());
    header.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    header.extend_from_slice(&[0u8; 10]);
    stream.write_all(&header).await.unwrap();
    assert_eq!(raw_close_code(&mut stream).await, 1002);
    bystander
        .heartbeat()
        .await
        .expect("the bystander is served after the reserved length bit");

    // An upgrade request with a 1 MiB header.
    let mut stream = TcpStream::connect(stack.engine().ws_addr()).await.unwrap();
    let mut request = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
    request.resize(request.len() + 1024 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.write_all(&request)).await;
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut status))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert_eq!(&status, b"HTTP/1.1 431");

    let grown_kib = resident_kib().saturating_sub(resident_before);
    assert!(
        grown_kib < 32 * 1024,
        "resident memory grew {grown_kib} KiB"
    );
    bystander
        .heartbeat()
        .await
        .expect("the bystander is served after the 1 MiB upgrade header");
    stack.stop().await;
}

/// Writes one binary message as `count` masked fragments of `bytes` each, and returns how many
/// were written before the connection failed.
async fn write_fragments(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    bytes: usize,
    count: usize,
) -> usize {
    let chunk = vec![0u8; bytes];
    for index in 0..count {
        let opcode = if index == 0 { 0x02 } else { 0x00 };
        let fin = if index == count - 1 { 0x80 } else { 0 };
        if writer
            .write_all(&masked_frame(opcode | fin, &chunk))
            .await
            .is_err()
        {
            return index;
        }
    }
    count
}

/// Reads frames of up to 125 bytes until a close frame, within 10 s, and returns its code.
async fn read_close_code(reader: &mut tokio::net::tcp::OwnedReadHalf) -> u16 {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut head = [0u8; 2];
            reader.read_exact(&mut head).await.unwrap();
            let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
            reader.read_exact(&mut payload).await.unwrap();
            if head[0] & 0x0f == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    })
    .await
    .expect("a close frame within 10 s")
}

/// Waits up to 30 s for the writes of [`write_fragments`] to end after the engine closed.
async fn writes_after_close(writes: tokio::task::JoinHandle<usize>) -> usize {
    tokio::time::timeout(Duration::from_secs(30), writes)
        .await
        .expect("writes end once the engine closed")
        .unwrap()
}

/// A 100 MiB message sent as fragments that each stay below `max_frame_bytes` (64 KiB by
/// default) passes `max_message_bytes` (64 KiB as well) at its third fragment. The engine must
/// close the connection with 1009 there, so it never buffers more than that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_past_message_limit_close_with_1009() {
    const FRAGMENT_BYTES: usize = 32 * 1024;
    const FRAGMENTS: usize = 3200;
    // One shard, so that the bystander shares it with the offending connection.
    let stack = Stack::start_with(logic_config(), |engine| engine.shards = 1).await;
    let (user, bystander) = stack.new_user("fragments").await;
    let (second_device, _client) = stack.another_device(&user).await;
    let resident_before = resident_kib();

    let stream = raw_signed_in(&stack, &second_device).await;
    let (mut reader, writer) = stream.into_split();
    let writes = tokio::spawn(write_fragments(writer, FRAGMENT_BYTES, FRAGMENTS));
    assert_eq!(read_close_code(&mut reader).await, 1009);
    drop(reader);
    let written = writes_after_close(writes).await;
    assert!(
        written < FRAGMENTS,
        "the engine read all {FRAGMENTS} fragments"
    );
    assert_eq!(metric(&stack, "im_engine_closes_total{code=\"1009\"}"), 1);

    let grown_kib = resident_kib().saturating_sub(resident_before);
    assert!(
        grown_kib < 32 * 1024,
        "resident memory grew {grown_kib} KiB"
    );
    bystander
        .heartbeat()
        .await
        .expect("the bystander is served after the fragmented message");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_with_4008_then_syncs() {
    const MAX_SENDS: usize = 600;
    let stack = Stack::start_with(logic_config(), |engine| {
        engine.max_outbound_bytes = 128 * 1024;
        engine.write_timeout_ms = 60_000;
    })
    .await;
    let (alice, alice_client) = stack.new_user("slow-a").await;
    let (bob, bob_client) = stack.new_user("slow-b").await;
    let (_carol, carol_client) = stack.new_user("slow-c").await;
    make_friends(&alice, &bob).await;
    bob_client.close().await.unwrap();
    let resident_before = resident_kib();

    // Bob signs in and never reads: pushes fill his socket, then his queue in the engine.
    let mut bob_stream = raw_signed_in_with(&stack, &bob.login, Some(4096)).await;
    let content = vec![b'x'; 16 * 1024];
    let (sent, slowest_heartbeat) = send_until_queue_full(
        &stack,
        &alice_client,
        bob.id(),
        &content,
        "slow",
        MAX_SENDS,
        Some(&carol_client),
    )
    .await;
    assert!(
        sent < MAX_SENDS,
        "{sent} pushes of 16 KiB never filled a 128 KiB queue"
    );
    // One second is slack for a loaded machine; the heartbeat itself takes milliseconds.
    assert!(
        slowest_heartbeat < Duration::from_secs(1),
        "a bystander waited {slowest_heartbeat:?}"
    );

    let mut received = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        bob_stream.read_to_end(&mut received),
    )
    .await;
    // Whole frames up to the close frame, even though the engine dropped what it had not
    // begun to send: a frame cut short would hide the close frame inside its payload.
    assert_binary_frames_then_4008(&received);
    assert_eq!(metric(&stack, "im_engine_closes_total{code=\"4008\"}"), 1);
    let grown_kib = resident_kib().saturating_sub(resident_before);
    assert!(
        grown_kib < 64 * 1024,
        "resident memory grew {grown_kib} KiB"
    );

    let bob_again = stack.sign_in(&bob.login).await;
    // Pages of 4 messages: a reply must fit in max_outbound_bytes (128 KiB here) like any
    // other frame, so 16 KiB messages cannot come 100 to a page.
    let (messages, _pages) = sync_all(&bob_again, 0, 4).await;
    let from_alice: Vec<_> = messages
        .iter()
        .filter(|message| message.sender_user_id == alice.id())
        .collect();
    assert_eq!(from_alice.len(), sent, "every message is there after SYNC");
    assert!(from_alice
        .iter()
        .all(|message| message.content == content.as_slice()));
    stack.stop().await;
}

/// SYNC requests sent in one write are handled one after another, each waiting for the logic
/// tier. Their replies together pass `max_outbound_bytes`, but the device reads all the time,
/// so the engine must write each reply before it waits for the next call rather than queue
/// them all and close the connection with 4008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_syncs_reach_a_reading_device() {
    const SYNCS: u64 = 4;
    let stack = Stack::start_with(logic_config(), |engine| {
        engine.max_outbound_bytes = 128 * 1024;
    })
    .await;
    let (alice, alice_client) = stack.new_user("pipe-a").await;
    let (bob, bob_client) = stack.new_user("pipe-b").await;
    make_friends(&alice, &bob).await;
    bob_client.close().await.unwrap();
    let content = vec![b'x'; 16 * 1024];
    for n in 0..4 {
        alice_client
            .send(
                im_proto::ConversationType::User,
                bob.id(),
                content.clone(),
                "text/plain",
                &format!("pipe-{n}"),
            )
            .await
            .expect("send to bob");
    }

    // Each reply contains the 4 messages, about 64 KiB, and together they pass the 128 KiB limit.
    let mut bob_stream = raw_signed_in(&stack, &bob.login).await;
    let sync = SyncRequest {
        after_seq: 0,
        limit: 4,
    };
    let mut write = Vec::new();
    for request_id in 1..=SYNCS {
        let request = Packet {
            r#type: PacketType::Sync as i32,
            request_id: RAW_REQUEST_IDS + request_id,
            data: sync.encode_to_vec().into(),
            ..Packet::default()
        };
        write.extend(masked_frame(0x82, &request.encode_to_vec()));
    }
    bob_stream.write_all(&write).await.unwrap();

    for request_id in 1..=SYNCS {
        let (opcode, payload) =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut bob_stream))
                .await
                .expect("a frame within 10 s");
        assert_eq!(
            opcode,
            2,
            "reply {request_id} of {SYNCS}: opcode {opcode}, payload {:?}",
            &payload[..payload.len().min(2)]
        );
        let reply = Packet::decode(payload.as_slice()).unwrap();
        assert_eq!(reply.request_id, RAW_REQUEST_IDS + request_id);
        assert_eq!(reply.code, ErrorCode::Ok as i32, "{}", reply.message);
        let page = SyncReply::decode(reply.data).unwrap();
        assert_eq!(page.messages.len(), 4);
    }
    assert_eq!(metric(&stack, "im_engine_closes_total{code=\"4008\"}"), 0);
    stack.stop().await;
}

/// Pushes `count` messages of `content` from `sender_id` to `receiver`'s signed-in device
/// through the engine's Deliver call, at seqs from `first_seq`, and checks that the engine
/// queued every one.
async fn deliver_to_device(
    stack: &Stack,
    sender_id: u64,
    receiver: &TestUser,
    first_seq: u64,
    count: u64,
    content: &[u8],
) {
    let conn_id = conn_id_of(receiver.id(), receiver.login.device_id).await;
    let mut engine = ConnectIntServiceClient::connect(format!("http://{}", stack.engine().node()))
        .await
        .expect("engine gRPC reachable");
    let deliveries = (first_seq..first_seq + count)
        .map(|seq| Delivery {
            message: Some(im_proto::Message {
                message_id: 1_000 + seq,
                sender_user_id: sender_id,
                conversation_type: im_proto::ConversationType::User as i32,
                receiver_id: receiver.id(),
                content: content.to_vec().into(),
                content_type: "text/plain".into(),
                client_msg_id: format!("delivered-{seq}"),
                ..im_proto::Message::default()
            }),
            targets: vec![DeliveryTarget {
                device_id: receiver.login.device_id,
                conn_id,
                seq,
            }],
            notice: None,
        })
        .collect();

    let reply = engine
        .deliver(DeliverRequest { deliveries })
        .await
        .expect("the delivery is accepted")
        .into_inner();

    assert_eq!((reply.delivered, reply.missed), (count as u32, 0));
}

/// One Deliver call queues more than `max_outbound_bytes` for a device before the device's
/// task runs to write it. The device reads all the time, so it must get every message,
/// because only bytes its socket rejects count against the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_delivery_reaches_reading_device() {
    const PUSHES: u64 = 24;
    let stack = Stack::start_with(logic_config(), |engine| {
        engine.max_outbound_bytes = 256 * 1024;
    })
    .await;
    let (bob, bob_client) = stack.new_user("burst-b").await;
    // 24 messages of 32 KiB: three times the limit in one call.
    let content = vec![b'x'; 32 * 1024];

    deliver_to_device(&stack, bob.id(), &bob, 1, PUSHES, &content).await;

    for seq in 1..=PUSHES {
        let message = next_message(&bob_client, Duration::from_secs(10)).await;
        assert_eq!(message.seq, seq);
        assert_eq!(message.content.len(), content.len());
    }
    assert_eq!(metric(&stack, "im_engine_closes_total{code=\"4008\"}"), 0);
    bob_client
        .heartbeat()
        .await
        .expect("the device stays connected");
    stack.stop().await;
}

/// How long the logic tier's front holds back the replies to SYNC calls.
const SYNC_HOLD: Duration = Duration::from_millis(1500);

/// Pushes queued while a SYNC waits for the logic tier stay under `max_outbound_bytes`, and
/// the SYNC's page then takes the queue past it. The device reads all the time, so its socket
/// takes the whole queue. Only bytes the socket rejects count against the limit, for a reply
/// as for a push, so the device gets the pushes and the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_page_after_pushes_reaches_reading_device() {
    const PUSHES: u64 = 3;
    let script = front::hold_replies(&["Sync"], SYNC_HOLD);
    let (stack, seen) = Stack::start_behind_front(script, |engine| {
        engine.max_outbound_bytes = 128 * 1024;
        engine.logic_call_timeout_ms = 5_000;
    })
    .await;
    let (alice, alice_client) = stack.new_user("page-a").await;
    let (bob, bob_client) = stack.new_user("page-b").await;
    make_friends(&alice, &bob).await;
    bob_client.close().await.unwrap();
    // Two stored messages of 16 KiB make a page of about 33 KiB.
    for n in 0..2 {
        alice_client
            .send(
                im_proto::ConversationType::User,
                bob.id(),
                vec![b'p'; 16 * 1024],
                "text/plain",
                &format!("page-{n}"),
            )
            .await
            .expect("send to bob");
    }
    let mut bob_stream = raw_signed_in(&stack, &bob.login).await;

    let sync = SyncRequest {
        after_seq: 0,
        limit: 10,
    };
    let request = Packet {
        r#type: PacketType::Sync as i32,
        request_id: RAW_REQUEST_IDS,
        data: sync.encode_to_vec().into(),
        ..Packet::default()
    };
    bob_stream
        .write_all(&masked_frame(0x82, &request.encode_to_vec()))
        .await
        .unwrap();
    let passed_on = eventually(Duration::from_secs(5), || async { seen.count("Sync") == 1 }).await;
    assert!(passed_on, "bob's SYNC did not reach the logic tier's front");
    // Three pushes of 36 KiB (about 108 KiB) queue under the 128 KiB limit while the SYNC
    // waits; the page passes it.
    let content = vec![b'q'; 36 * 1024];
    deliver_to_device(&stack, alice.id(), &bob, 3, PUSHES, &content).await;

    let mut pushes = 0;
    let reply = loop {
        let (opcode, payload) =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut bob_stream))
                .await
                .expect("a frame within 10 s");
        let close_code = (opcode == 8).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        assert_eq!(
            close_code, None,
            "closed after {pushes} pushes, before the SYNC reply"
        );
        let packet = Packet::decode(payload.as_slice()).unwrap();
        if packet.request_id == RAW_REQUEST_IDS {
            break packet;
        }
        assert_eq!(
            packet.r#type,
            PacketType::Message as i32,
            "a push before the reply"
        );
        pushes += 1;
    };
    // Pushes queued while a SYNC waits go ahead of its page.
    assert_eq!(pushes, PUSHES);
    assert_eq!(reply.request_id, RAW_REQUEST_IDS);
    assert_eq!(reply.code, ErrorCode::Ok as i32, "{}", reply.message);
    assert_eq!(SyncReply::decode(reply.data).unwrap().messages.len(), 2);
    assert_eq!(metric(&stack, "im_engine_closes_total{code=\"4008\"}"), 0);
    stack.stop().await;
}

/// A device that reads slowly keeps taking part of its queue, so the engine's writes end
/// inside frames. When the queue passes the limit, the frame the engine has begun must still
/// reach the device whole, and the close frame after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_frame_close_keeps_frames_whole() {
    const MAX_SENDS: usize = 2000;
    let stack = Stack::start_with(logic_config(), |engine| {
        // Many frames long, so that the socket takes the queue in parts that end inside
        // frames, which a 64 KiB queue on Linux 6.18 loopback did not.
        engine.max_outbound_bytes = 256 * 1024;
        engine.write_timeout_ms = 60_000;
        engine.rate_packets_per_sec = 0;
        engine.rate_bytes_per_sec = 0;
    })
    .await;
    let (alice, alice_client) = stack.new_user("midframe-a").await;
    let (bob, bob_client) = stack.new_user("midframe-b").await;
    make_friends(&alice, &bob).await;
    bob_client.close().await.unwrap();

    let bob_stream = raw_signed_in_with(&stack, &bob.login, Some(4096)).await;
    let stop_reading_slowly = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_slowly_until(
        bob_stream,
        Arc::clone(&stop_reading_slowly),
    ));
    let content = vec![b'x'; 16 * 1024];
    let (sent, _) = send_until_queue_full(
        &stack,
        &alice_client,
        bob.id(),
        &content,
        "midframe",
        MAX_SENDS,
        None,
    )
    .await;
    stop_reading_slowly.store(true, Ordering::Relaxed);
    let received = reader.await.unwrap();

    assert!(
        sent < MAX_SENDS,
        "{sent} pushes of 16 KiB never filled a 256 KiB queue"
    );
    assert_binary_frames_then_4008(&received);
    stack.stop().await;
}

/// How long the logic tier's front holds back the replies to SEND calls.
const SEND_HOLD: Duration = Duration::from_millis(600);

/// Alice's SEND is stored at once, but its reply comes late, as from a slow network between
/// the engine and the logic tier. Bob's message to Alice, stored after it with the next seq,
/// is pushed meanwhile. The push must not reach Alice before her own SEND's reply: she would
/// take the seq between for a hole and SYNC for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_wait_behind_own_send_replies() {
    let script = front::hold_replies(&["SendMany", "Send"], SEND_HOLD);
    let (stack, seen) = Stack::start_behind_front(script, |_| {}).await;
    let (alice, alice_client) = stack.new_user("order-a").await;
    let (bob, bob_client) = stack.new_user("order-b").await;
    make_friends(&alice, &bob).await;
    alice_client.close().await.unwrap();
    let mut alice_stream = raw_signed_in(&stack, &alice.login).await;

    let send = SendRequest {
        conversation_type: im_proto::ConversationType::User as i32,
        receiver_id: bob.id(),
        content: b"from alice".to_vec().into(),
        content_type: "text/plain".to_owned(),
        client_msg_id: "order-alice".to_owned(),
    };
    let request = Packet {
        r#type: PacketType::Send as i32,
        request_id: RAW_REQUEST_IDS,
        data: send.encode_to_vec().into(),
        ..Packet::default()
    };
    alice_stream
        .write_all(&masked_frame(0x82, &request.encode_to_vec()))
        .await
        .unwrap();
    let passed_on = eventually(Duration::from_secs(5), || async {
        seen.count("SendMany") + seen.count("Send") == 1
    })
    .await;
    assert!(
        passed_on,
        "alice's SEND did not reach the logic tier's front"
    );
    // The front passed the call on at once; give the logic tier time to store it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bob_send = bob_client.send(
        im_proto::ConversationType::User,
        alice.id(),
        b"from bob".to_vec(),
        "text/plain",
        "order-bob",
    );

    let read_two = async {
        let mut order = Vec::new();
        while order.len() < 2 {
            let (opcode, payload) =
                tokio::time::timeout(Duration::from_secs(10), read_frame(&mut alice_stream))
                    .await
                    .expect("a frame within 10 s");
            assert_eq!(opcode, 2, "a binary frame, got opcode {opcode}");
            let packet = Packet::decode(payload.as_slice()).unwrap();
            match PacketType::try_from(packet.r#type) {
                Ok(PacketType::Send) => {
                    assert_eq!(packet.code, ErrorCode::Ok as i32, "{}", packet.message);
                    order.push(Arrival::Reply(SendReply::decode(packet.data).unwrap().seq));
                }
                Ok(PacketType::Message) => {
                    let message = im_proto::Message::decode(packet.data).unwrap();
                    order.push(Arrival::Push(message.seq));
                }
                Ok(PacketType::Notice) => {}
                other => panic!("unexpected packet {other:?}: {}", packet.message),
            }
        }
        order
    };
    let (bob_reply, order) = tokio::join!(bob_send, read_two);
    bob_reply.expect("bob's send");
    assert_eq!(order, [Arrival::Reply(1), Arrival::Push(2)]);
    stack.stop().await;
}

/// A SEND reply or a MESSAGE push, with the seq it carries in the receiving user's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    Reply(u64),
    Push(u64),
}
