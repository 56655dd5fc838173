//! A stand-in for the engine in unit tests: it accepts WebSocket connections on loopback,
//! answers SIGN_IN with token "good" and every HEARTBEAT, rejects other tokens with
//! TOKEN_INVALID, and never answers SIGN_IN with token "silent".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{SinkExt as _, StreamExt as _};
use im_proto::v1::{ErrorCode, Packet, PacketType, SignInReply, SignInRequest};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A running fake engine; it stops with the test's runtime.
pub(crate) struct FakeEngine {
    pub(crate) url: String,
    /// Close frames received from clients.
    pub(crate) closes: Arc<AtomicUsize>,
}

impl FakeEngine {
    pub(crate) async fn start() -> FakeEngine {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let closes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&closes);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, Arc::clone(&counter)));
            }
        });
        FakeEngine {
            url: format!("ws://{addr}/ws"),
            closes,
        }
    }
}

async fn serve(tcp: tokio::net::TcpStream, closes: Arc<AtomicUsize>) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(message)) = socket.next().await {
        let packet = match message {
            Message::Binary(bytes) => Packet::decode(bytes).expect("client sends Packets"),
            Message::Close(_) => {
                closes.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            _ => continue,
        };
        if let Some(reply) = reply_to(packet) {
            let bytes = reply.encode_to_vec();
            if socket.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
        }
    }
}

fn reply_to(packet: Packet) -> Option<Packet> {
    let mut reply = Packet {
        r#type: packet.r#type,
        request_id: packet.request_id,
        ..Packet::default()
    };
    match PacketType::try_from(packet.r#type) {
        Ok(PacketType::Heartbeat) => Some(reply),
        Ok(PacketType::SignIn) => {
            let request = SignInRequest::decode(packet.data).expect("SignInRequest");
            match request.token.as_str() {
                "good" => {
                    let body = SignInReply {
                        heartbeat_interval_ms: 30_000,
                    };
                    reply.data = body.encode_to_vec().into();
                }
                "silent" => return None,
                _ => reply.code = ErrorCode::TokenInvalid as i32,
            }
            Some(reply)
        }
        _ => None,
    }
}
