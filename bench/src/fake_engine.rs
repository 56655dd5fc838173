//! A stand-in for the engine in tests: it accepts WebSocket connections on loopback,
//! answers SIGN_IN with token "good" and every HEARTBEAT, rejects other tokens with
//! TOKEN_INVALID, and never answers SIGN_IN with token "silent".
//!
//! It also routes messages between the connections signed in with "good": SEND is stored with
//! the next seq of the sender and pushed as MESSAGE to every connection of the receiving user
//! (USER), or of every other signed-in user (GROUP, whatever the group id). MESSAGE_ACK is
//! counted and gets no reply. [`FakeEngine::start_dropping`] makes it lose pushes.
//!
//! LOGIN succeeds for any password, except that a username ending in `-busyN` gets BUSY for
//! its first N attempts, as an engine with too many password calls in flight replies.
//! REGISTER succeeds once per username and then gets USERNAME_TAKEN. Both are recorded in
//! [`FakeEngine::password_requests`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt as _, StreamExt as _};
use im_proto::v1::{
    ConversationType, ErrorCode, LoginReply, LoginRequest, Message as ProtoMessage, Packet,
    PacketType, RegisterReply, RegisterRequest, SendReply, SendRequest, SignInReply, SignInRequest,
};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A running fake engine; it stops with the test's runtime.
pub(crate) struct FakeEngine {
    pub(crate) url: String,
    /// Close frames received from clients.
    pub(crate) closes: Arc<AtomicUsize>,
    /// MESSAGE_ACK packets received.
    pub(crate) acks: Arc<AtomicUsize>,
    /// WebSocket handshakes completed before the first SIGN_IN arrived; `usize::MAX` until
    /// then.
    pub(crate) opened_before_sign_in: Arc<AtomicUsize>,
    /// REGISTER and LOGIN requests in arrival order, as `"REGISTER name"` or `"LOGIN name"`.
    pub(crate) password_requests: Arc<Mutex<Vec<String>>>,
}

/// State shared by every connection of a fake engine.
#[derive(Default)]
struct Shared {
    closes: Arc<AtomicUsize>,
    acks: Arc<AtomicUsize>,
    /// WebSocket handshakes completed so far.
    opened: AtomicUsize,
    opened_before_sign_in: Arc<AtomicUsize>,
    /// Outbound queues of the signed-in connections, by user id.
    users: Mutex<HashMap<u64, Vec<mpsc::UnboundedSender<Packet>>>>,
    next_message_id: AtomicU64,
    /// Pushes made so far, for dropping every n-th one.
    pushes: AtomicU64,
    drop_every: Option<u64>,
    /// LOGIN attempts so far, by username.
    logins: Mutex<HashMap<String, u64>>,
    /// Usernames registered so far.
    registered: Mutex<HashSet<String>>,
    password_requests: Arc<Mutex<Vec<String>>>,
}

impl FakeEngine {
    pub(crate) async fn start() -> FakeEngine {
        FakeEngine::start_with(None).await
    }

    /// Connects to this engine and signs in as `user_id` with the token "good".
    pub(crate) async fn signed_in(&self, user_id: u64) -> im_client::Client {
        let options = im_client::ConnectOptions {
            timeout: std::time::Duration::from_secs(5),
            ..im_client::ConnectOptions::default()
        };
        let client = im_client::Client::connect(&self.url, &options)
            .await
            .expect("connect");
        client
            .sign_in(user_id, user_id + 100, "good")
            .await
            .expect("sign in");
        client
    }

    /// Starts a fake engine that loses every `drop_every`-th MESSAGE push.
    pub(crate) async fn start_dropping(drop_every: u64) -> FakeEngine {
        FakeEngine::start_with(Some(drop_every)).await
    }

    async fn start_with(drop_every: Option<u64>) -> FakeEngine {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            drop_every,
            opened_before_sign_in: Arc::new(AtomicUsize::new(usize::MAX)),
            ..Shared::default()
        });
        let engine = FakeEngine {
            url: format!("ws://{addr}/ws"),
            closes: Arc::clone(&shared.closes),
            acks: Arc::clone(&shared.acks),
            opened_before_sign_in: Arc::clone(&shared.opened_before_sign_in),
            password_requests: Arc::clone(&shared.password_requests),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, Arc::clone(&shared)));
            }
        });
        engine
    }
}

async fn serve(tcp: tokio::net::TcpStream, shared: Arc<Shared>) {
    let Ok(socket) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    shared.opened.fetch_add(1, Ordering::SeqCst);
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Packet>();
    let (flush_tx, mut flush_rx) = mpsc::unbounded_channel::<()>();
    let writer = tokio::spawn(async move {
        loop {
            let sent = tokio::select! {
                packet = rx.recv() => match packet {
                    Some(packet) => sink.send(Message::Binary(packet.encode_to_vec().into())).await,
                    None => return,
                },
                // tungstenite queues its reply to a close frame; a flush sends it.
                Some(()) = flush_rx.recv() => sink.flush().await,
            };
            if sent.is_err() {
                return;
            }
        }
    });

    let mut seq = 0;
    while let Some(Ok(message)) = stream.next().await {
        let packet = match message {
            Message::Binary(bytes) => Packet::decode(bytes).expect("client sends Packets"),
            Message::Close(_) => {
                shared.closes.fetch_add(1, Ordering::SeqCst);
                let _ = flush_tx.send(());
                continue;
            }
            _ => continue,
        };
        if let Some(reply) = handle(packet, &shared, &tx, &mut seq) {
            let _ = tx.send(reply);
        }
    }
    // The writer ends once no queue sender is left, so leave the routing table first.
    unregister(&shared, &tx);
    drop((tx, flush_tx));
    let _ = writer.await;
}

fn unregister(shared: &Shared, tx: &mpsc::UnboundedSender<Packet>) {
    let mut users = shared.users.lock().expect("users lock");
    for connections in users.values_mut() {
        connections.retain(|connection| !connection.same_channel(tx));
    }
}

/// Handles one packet; `seq` is the last seq given to this connection's user.
fn handle(
    packet: Packet,
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Packet>,
    seq: &mut u64,
) -> Option<Packet> {
    let mut reply = Packet {
        r#type: packet.r#type,
        request_id: packet.request_id,
        ..Packet::default()
    };
    match PacketType::try_from(packet.r#type) {
        Ok(PacketType::Heartbeat) => Some(reply),
        Ok(PacketType::Register) => {
            let request = RegisterRequest::decode(packet.data).expect("RegisterRequest");
            note_password_request(shared, "REGISTER", &request.username);
            let mut registered = shared.registered.lock().expect("registered lock");
            if registered.insert(request.username) {
                let body = RegisterReply {
                    user_id: registered.len() as u64,
                };
                reply.data = body.encode_to_vec().into();
            } else {
                reply.code = ErrorCode::UsernameTaken as i32;
            }
            Some(reply)
        }
        Ok(PacketType::Login) => {
            let request = LoginRequest::decode(packet.data).expect("LoginRequest");
            note_password_request(shared, "LOGIN", &request.username);
            let attempts = {
                let mut logins = shared.logins.lock().expect("logins lock");
                let attempts = logins.entry(request.username.clone()).or_default();
                *attempts += 1;
                *attempts
            };
            let busy_for = request
                .username
                .rsplit_once("-busy")
                .and_then(|(_, count)| count.parse::<u64>().ok())
                .unwrap_or(0);
            if attempts <= busy_for {
                reply.code = ErrorCode::Busy as i32;
                reply.retry_after_ms = 100;
            } else {
                let body = LoginReply {
                    user_id: 1,
                    device_id: 1,
                    token: "good".into(),
                    ..LoginReply::default()
                };
                reply.data = body.encode_to_vec().into();
            }
            Some(reply)
        }
        Ok(PacketType::SignIn) => {
            let opened = shared.opened.load(Ordering::SeqCst);
            let _ = shared.opened_before_sign_in.compare_exchange(
                usize::MAX,
                opened,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            let request = SignInRequest::decode(packet.data).expect("SignInRequest");
            match request.token.as_str() {
                "good" => {
                    let body = SignInReply {
                        heartbeat_interval_ms: 30_000,
                    };
                    reply.data = body.encode_to_vec().into();
                    let mut users = shared.users.lock().expect("users lock");
                    users.entry(request.user_id).or_default().push(tx.clone());
                }
                "silent" => return None,
                _ => reply.code = ErrorCode::TokenInvalid as i32,
            }
            Some(reply)
        }
        Ok(PacketType::Send) => {
            let request = SendRequest::decode(packet.data).expect("SendRequest");
            *seq += 1;
            let message_id = shared.next_message_id.fetch_add(1, Ordering::SeqCst) + 1;
            route(shared, tx, &request, message_id);
            let body = SendReply {
                message_id,
                seq: *seq,
                sent_at_ms: 0,
            };
            reply.data = body.encode_to_vec().into();
            Some(reply)
        }
        Ok(PacketType::MessageAck) => {
            shared.acks.fetch_add(1, Ordering::SeqCst);
            None
        }
        _ => None,
    }
}

fn note_password_request(shared: &Shared, kind: &str, username: &str) {
    let mut requests = shared.password_requests.lock().expect("requests lock");
    requests.push(format!("{kind} {username}"));
}

/// Pushes a sent message to its recipients' connections. Seqs of recipients are not tracked,
/// so every push carries the message id as its seq, which only grows.
fn route(
    shared: &Shared,
    sender: &mpsc::UnboundedSender<Packet>,
    request: &SendRequest,
    message_id: u64,
) {
    let message = ProtoMessage {
        seq: message_id,
        message_id,
        conversation_type: request.conversation_type,
        receiver_id: request.receiver_id,
        content: request.content.clone(),
        content_type: request.content_type.clone(),
        client_msg_id: request.client_msg_id.clone(),
        ..ProtoMessage::default()
    };
    let push = Packet {
        r#type: PacketType::Message as i32,
        data: message.encode_to_vec().into(),
        ..Packet::default()
    };
    let users = shared.users.lock().expect("users lock");
    let group = request.conversation_type == ConversationType::Group as i32;
    let recipients = users
        .iter()
        .filter(|(user_id, _)| group || **user_id == request.receiver_id)
        .flat_map(|(_, connections)| connections)
        .filter(|connection| !connection.same_channel(sender));
    for connection in recipients {
        let count = shared.pushes.fetch_add(1, Ordering::SeqCst) + 1;
        if shared
            .drop_every
            .is_some_and(|every| count.is_multiple_of(every))
        {
            continue;
        }
        let _ = connection.send(push.clone());
    }
}
