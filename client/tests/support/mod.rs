//! A small WebSocket server that speaks enough of the engine's protocol for the client tests.
//!
//! Behaviour by request:
//! - HEARTBEAT echoes `data` in a HEARTBEAT reply. `data` "slow" delays the reply by 200 ms,
//!   "wrong-type" replies with type LOGIN, and "code-99" replies with the undefined code 99.
//! - REGISTER returns user id 7, or USERNAME_TAKEN for the username "taken".
//! - LOGIN with password "secret" returns user 7, the requested device (99 when 0 is
//!   requested) and token "tok"; other passwords get INVALID_CREDENTIALS.
//! - SIGN_IN with token "tok" succeeds. Token "kick-me" succeeds, then the server pushes
//!   KICKED and closes with 4001. Token "drop" ends the TCP connection without a close frame.
//!   Other tokens get TOKEN_INVALID.
//! - KICKED sent by the client gets no reply, so a request can time out.
//! - A binary message that is not a Packet gets an ERROR push with INVALID_PACKET.
//!
//! Messaging works on one message sequence shared by every connection, `Observed::messages`,
//! which tests fill with [`TestServer::store_messages`]:
//! - SEND appends a message from user 7, device 99 and returns its seq; empty content gets
//!   CONTENT_EMPTY.
//! - SYNC returns the page after `after_seq` (100 messages for limit 0) and records the request.
//! - MESSAGE_ACK records its seq and gets no reply.
//! - HEARTBEAT with `data` "push:N" first pushes the stored message with seq N as MESSAGE.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_client::tungstenite::handshake::server::{Request, Response};
use im_client::tungstenite::protocol::frame::coding::CloseCode;
use im_client::tungstenite::protocol::CloseFrame;
use im_client::tungstenite::Message;
use im_proto::v1::{
    ConversationType, ErrorCode, KickReason, Kicked, LoginReply, LoginRequest,
    Message as ProtoMessage, MessageAck, Packet, PacketType, RegisterReply, RegisterRequest,
    SendReply, SendRequest, SignInReply, SignInRequest, SyncReply, SyncRequest,
};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the server observed, for assertions.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// Peer address of each accepted connection.
    pub(crate) peers: Vec<SocketAddr>,
    /// `Origin` header of each upgrade request, if any.
    pub(crate) origins: Vec<Option<String>>,
    /// Close code of each close frame received from a client.
    pub(crate) close_codes: Vec<u16>,
    /// The message sequence that SYNC pages through and SEND appends to; message i has seq
    /// i + 1.
    pub(crate) messages: Vec<ProtoMessage>,
    /// `after_seq` and `limit` of each SYNC.
    pub(crate) syncs: Vec<(u64, u32)>,
    /// Seq of each MESSAGE_ACK.
    pub(crate) acks: Vec<u64>,
    /// SYNCs still to reject with RATE_LIMITED, one after the other, as a rate limit would.
    pub(crate) syncs_to_reject: u32,
    /// `retry_after_ms` of those rejections.
    pub(crate) rejection_retry_after_ms: u32,
    /// MESSAGE_ACKs still to reject with an ERROR push, as a rate limit would.
    pub(crate) acks_to_reject: u32,
}

/// A running test server.
pub(crate) struct TestServer {
    pub(crate) url: String,
    pub(crate) observed: Arc<Mutex<Observed>>,
}

impl TestServer {
    /// Starts the server on an ephemeral loopback port. It stops with the test's runtime.
    pub(crate) async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let observed = Arc::new(Mutex::new(Observed::default()));
        tokio::spawn(accept_loop(listener, Arc::clone(&observed)));
        TestServer {
            url: format!("ws://{addr}/ws"),
            observed,
        }
    }

    pub(crate) fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().expect("observed lock")
    }

    /// Rejects the next `count` MESSAGE_ACKs with an ERROR push carrying RATE_LIMITED.
    pub(crate) fn reject_acks(&self, count: u32) {
        self.observed().acks_to_reject = count;
    }

    /// Rejects the next `count` SYNCs with RATE_LIMITED and `retry_after_ms`.
    pub(crate) fn reject_syncs(&self, count: u32, retry_after_ms: u32) {
        let mut observed = self.observed();
        observed.syncs_to_reject = count;
        observed.rejection_retry_after_ms = retry_after_ms;
    }

    /// Appends `count` messages from user 8 to the message sequence.
    pub(crate) fn store_messages(&self, count: u64) {
        let mut observed = self.observed();
        for _ in 0..count {
            let seq = observed.messages.len() as u64 + 1;
            let message = stored_message(seq, 8, 1, format!("message {seq}").into_bytes());
            observed.messages.push(message);
        }
    }
}

fn stored_message(
    seq: u64,
    sender_user_id: u64,
    sender_device_id: u64,
    content: Vec<u8>,
) -> ProtoMessage {
    ProtoMessage {
        seq,
        message_id: 1000 + seq,
        sender_user_id,
        sender_device_id,
        conversation_type: ConversationType::User as i32,
        receiver_id: 7,
        content: content.into(),
        content_type: "text/plain".into(),
        client_msg_id: format!("c{seq}"),
        sent_at_ms: 1_800_000_000_000 + seq as i64,
    }
}

async fn accept_loop(listener: TcpListener, observed: Arc<Mutex<Observed>>) {
    while let Ok((tcp, peer)) = listener.accept().await {
        observed.lock().expect("observed lock").peers.push(peer);
        tokio::spawn(serve(tcp, Arc::clone(&observed)));
    }
}

/// What the connection does after a packet.
enum Next {
    Continue,
    /// End the TCP connection without a close frame.
    Drop,
}

// The header callback's error type, an HTTP response, is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, observed: Arc<Mutex<Observed>>) {
    let record_origin = {
        let observed = Arc::clone(&observed);
        move |request: &Request, response: Response| {
            let origin = request
                .headers()
                .get("origin")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            observed.lock().expect("observed lock").origins.push(origin);
            Ok(response)
        }
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(tcp, record_origin).await else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();

    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    });

    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(bytes) => {
                if let Next::Drop = handle_packet(&bytes, &tx, &observed) {
                    // Dropping both halves ends TCP with no close frame.
                    writer.abort();
                    return;
                }
            }
            Message::Close(frame) => {
                let code = frame.map_or(1005, |frame| u16::from(frame.code));
                observed
                    .lock()
                    .expect("observed lock")
                    .close_codes
                    .push(code);
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn handle_packet(
    bytes: &[u8],
    tx: &mpsc::UnboundedSender<Message>,
    observed: &Mutex<Observed>,
) -> Next {
    let Ok(packet) = Packet::decode(bytes) else {
        let error = Packet {
            r#type: PacketType::Error as i32,
            code: ErrorCode::InvalidPacket as i32,
            message: "not a Packet".into(),
            ..Packet::default()
        };
        send(tx, error);
        return Next::Continue;
    };
    match PacketType::try_from(packet.r#type) {
        Ok(PacketType::Heartbeat) => heartbeat(packet, tx, observed),
        Ok(PacketType::Register) => register(packet, tx),
        Ok(PacketType::Login) => login(packet, tx),
        Ok(PacketType::SignIn) => return sign_in(packet, tx),
        Ok(PacketType::Send) => send_message(packet, tx, observed),
        Ok(PacketType::Sync) => sync(packet, tx, observed),
        Ok(PacketType::MessageAck) => {
            let ack = MessageAck::decode(packet.data.as_ref()).expect("MessageAck");
            let mut observed = lock(observed);
            if observed.acks_to_reject > 0 {
                observed.acks_to_reject -= 1;
                let rejection = Packet {
                    r#type: PacketType::Error as i32,
                    code: ErrorCode::RateLimited as i32,
                    message: "rate limit exceeded".into(),
                    retry_after_ms: 20,
                    ..Packet::default()
                };
                send(tx, rejection);
            } else {
                observed.acks.push(ack.seq);
            }
        }
        _ => {}
    }
    Next::Continue
}

fn heartbeat(packet: Packet, tx: &mpsc::UnboundedSender<Message>, observed: &Mutex<Observed>) {
    let mut reply = ok_reply(&packet, packet.data.clone());
    if let Some(seq) = packet.data.strip_prefix(b"push:") {
        let seq: usize = std::str::from_utf8(seq)
            .expect("utf-8")
            .parse()
            .expect("seq");
        let message = lock(observed).messages[seq - 1].clone();
        let push = Packet {
            r#type: PacketType::Message as i32,
            data: message.encode_to_vec().into(),
            ..Packet::default()
        };
        send(tx, push);
    }
    match packet.data.as_ref() {
        b"slow" => {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                send(&tx, reply);
            });
            return;
        }
        b"wrong-type" => reply.r#type = PacketType::Login as i32,
        b"code-99" => reply.code = 99,
        _ => {}
    }
    send(tx, reply);
}

fn register(packet: Packet, tx: &mpsc::UnboundedSender<Message>) {
    let request = RegisterRequest::decode(packet.data.as_ref()).expect("RegisterRequest");
    let reply = if request.username == "taken" {
        error_reply(&packet, ErrorCode::UsernameTaken)
    } else {
        ok_reply(&packet, RegisterReply { user_id: 7 }.encode_to_vec())
    };
    send(tx, reply);
}

fn login(packet: Packet, tx: &mpsc::UnboundedSender<Message>) {
    let request = LoginRequest::decode(packet.data.as_ref()).expect("LoginRequest");
    if request.password != "secret" {
        send(tx, error_reply(&packet, ErrorCode::InvalidCredentials));
        return;
    }
    let body = LoginReply {
        user_id: 7,
        device_id: if request.device_id == 0 {
            99
        } else {
            request.device_id
        },
        token: "tok".into(),
        token_expires_at_ms: 1_900_000_000_000,
        heartbeat_interval_ms: 30_000,
    };
    send(tx, ok_reply(&packet, body.encode_to_vec()));
}

fn sign_in(packet: Packet, tx: &mpsc::UnboundedSender<Message>) -> Next {
    let request = SignInRequest::decode(packet.data.as_ref()).expect("SignInRequest");
    let accepted = ok_reply(
        &packet,
        SignInReply {
            heartbeat_interval_ms: 30_000,
        }
        .encode_to_vec(),
    );
    match request.token.as_str() {
        "tok" => send(tx, accepted),
        "kick-me" => {
            send(tx, accepted);
            kick(tx);
        }
        "drop" => return Next::Drop,
        _ => send(tx, error_reply(&packet, ErrorCode::TokenInvalid)),
    }
    Next::Continue
}

fn send_message(packet: Packet, tx: &mpsc::UnboundedSender<Message>, observed: &Mutex<Observed>) {
    let request = SendRequest::decode(packet.data.as_ref()).expect("SendRequest");
    if request.content.is_empty() {
        send(tx, error_reply(&packet, ErrorCode::ContentEmpty));
        return;
    }
    let mut observed = lock(observed);
    let seq = observed.messages.len() as u64 + 1;
    let message = stored_message(seq, 7, 99, request.content.to_vec());
    let reply = SendReply {
        message_id: message.message_id,
        seq,
        sent_at_ms: message.sent_at_ms,
    };
    observed.messages.push(message);
    send(tx, ok_reply(&packet, reply.encode_to_vec()));
}

fn sync(packet: Packet, tx: &mpsc::UnboundedSender<Message>, observed: &Mutex<Observed>) {
    let request = SyncRequest::decode(packet.data.as_ref()).expect("SyncRequest");
    let mut observed = lock(observed);
    observed.syncs.push((request.after_seq, request.limit));
    if observed.syncs_to_reject > 0 {
        observed.syncs_to_reject -= 1;
        let mut reply = error_reply(&packet, ErrorCode::RateLimited);
        reply.retry_after_ms = observed.rejection_retry_after_ms;
        send(tx, reply);
        return;
    }
    let limit = match request.limit {
        0 => 100,
        limit => limit as usize,
    };
    let after: Vec<ProtoMessage> = observed
        .messages
        .iter()
        .filter(|message| message.seq > request.after_seq)
        .cloned()
        .collect();
    let reply = SyncReply {
        has_more: after.len() > limit,
        messages: after.into_iter().take(limit).collect(),
    };
    send(tx, ok_reply(&packet, reply.encode_to_vec()));
}

fn lock(observed: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().expect("observed lock")
}

fn kick(tx: &mpsc::UnboundedSender<Message>) {
    let kicked = Kicked {
        reason: KickReason::SignedInElsewhere as i32,
        message: "signed in elsewhere".into(),
    };
    let push = Packet {
        r#type: PacketType::Kicked as i32,
        data: kicked.encode_to_vec().into(),
        ..Packet::default()
    };
    send(tx, push);
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "signed in elsewhere".into(),
    };
    let _ = tx.send(Message::Close(Some(frame)));
}

fn ok_reply(request: &Packet, data: impl Into<prost::bytes::Bytes>) -> Packet {
    Packet {
        r#type: request.r#type,
        request_id: request.request_id,
        data: data.into(),
        ..Packet::default()
    }
}

fn error_reply(request: &Packet, code: ErrorCode) -> Packet {
    Packet {
        r#type: request.r#type,
        request_id: request.request_id,
        code: code as i32,
        message: format!("{} from test server", code.as_str_name()),
        data: Default::default(),
        retry_after_ms: 0,
    }
}

fn send(tx: &mpsc::UnboundedSender<Message>, packet: Packet) {
    let message = Message::Binary(packet.encode_to_vec().into());
    let _ = tx.send(message);
}

/// An address in 127.0.0.0/8 other than 127.0.0.1, to check source binding.
pub(crate) fn second_loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 2])
}
