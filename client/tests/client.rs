//! Client behaviour against the in-process test server in `support`.

mod support;

use std::time::Duration;

use im_client::tungstenite::Message;
use im_client::{Client, ClientError, ConnectOptions, DeviceInfo, ErrorCode, PacketType};
use im_proto::v1::{KickReason, Kicked};
use prost::Message as _;
use support::TestServer;

/// Generous enough for a loaded CI machine; tests that expect a timeout set their own.
const TIMEOUT: Duration = Duration::from_secs(5);

fn options() -> ConnectOptions {
    ConnectOptions {
        timeout: TIMEOUT,
        ..ConnectOptions::default()
    }
}

async fn connect(server: &TestServer) -> Client {
    Client::connect(&server.url, &options())
        .await
        .expect("connect to test server")
}

fn bench_device() -> DeviceInfo {
    DeviceInfo {
        platform: "bench".into(),
        model: "test".into(),
        app_version: "0".into(),
    }
}

#[tokio::test]
async fn heartbeat_returns_round_trip() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let rtt = client.heartbeat().await.expect("heartbeat");

    assert!(rtt < TIMEOUT, "round trip {rtt:?}");
}

#[tokio::test]
async fn concurrent_requests_get_their_own_replies() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    // The server delays the "slow" reply, so the replies arrive in reverse order.
    let (slow, fast) = tokio::join!(
        client.request(PacketType::Heartbeat, b"slow".to_vec()),
        client.request(PacketType::Heartbeat, b"fast".to_vec()),
    );

    let slow = slow.expect("slow reply");
    let fast = fast.expect("fast reply");
    assert_eq!(&slow.data[..], b"slow");
    assert_eq!(&fast.data[..], b"fast");
    assert_ne!(slow.request_id, fast.request_id);
}

#[tokio::test]
async fn register_returns_user_id() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let user_id = client.register("alice", "secret").await.expect("register");

    assert_eq!(user_id, 7);
}

#[tokio::test]
async fn register_taken_name_is_server_error() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let error = client.register("taken", "secret").await.unwrap_err();

    let ClientError::Server { code, message, .. } = error else {
        panic!("expected a server error, got {error:?}");
    };
    assert_eq!(code, ErrorCode::UsernameTaken);
    assert_eq!(message, "USERNAME_TAKEN from test server");
}

#[tokio::test]
async fn login_returns_device_and_token() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let reply = client
        .login("alice", "secret", 0, bench_device())
        .await
        .expect("login");

    assert_eq!(reply.user_id, 7);
    assert_eq!(reply.device_id, 99);
    assert_eq!(reply.token, "tok");
    assert_eq!(reply.heartbeat_interval_ms, 30_000);
}

#[tokio::test]
async fn login_wrong_password_is_invalid_credentials() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let error = client
        .login("alice", "wrong", 5, bench_device())
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            ClientError::Server {
                code: ErrorCode::InvalidCredentials,
                ..
            }
        ),
        "got {error:?}"
    );
}

#[tokio::test]
async fn sign_in_with_valid_token_succeeds() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let reply = client.sign_in(7, 99, "tok").await.expect("sign in");

    assert_eq!(reply.heartbeat_interval_ms, 30_000);
}

#[tokio::test]
async fn sign_in_with_bad_token_is_token_invalid() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let error = client.sign_in(7, 99, "bad").await.unwrap_err();

    assert!(
        matches!(
            error,
            ClientError::Server {
                code: ErrorCode::TokenInvalid,
                ..
            }
        ),
        "got {error:?}"
    );
}

#[tokio::test]
async fn reply_of_other_type_is_unexpected_reply() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let error = client
        .request(PacketType::Heartbeat, b"wrong-type".to_vec())
        .await
        .unwrap_err();

    let ClientError::UnexpectedReply { request, reply } = error else {
        panic!("expected UnexpectedReply, got {error:?}");
    };
    assert_eq!(request, PacketType::Heartbeat);
    assert_eq!(reply, PacketType::Login as i32);
}

#[tokio::test]
async fn undefined_code_is_unknown_code() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    let error = client
        .request(PacketType::Heartbeat, b"code-99".to_vec())
        .await
        .unwrap_err();

    assert!(
        matches!(error, ClientError::UnknownCode { code: 99, .. }),
        "got {error:?}"
    );
}

#[tokio::test]
async fn unanswered_request_times_out_and_connection_stays_usable() {
    let server = TestServer::start().await;
    let opts = ConnectOptions {
        timeout: Duration::from_millis(300),
        ..ConnectOptions::default()
    };
    let client = Client::connect(&server.url, &opts).await.expect("connect");

    let error = client
        .request(PacketType::Kicked, Vec::new())
        .await
        .unwrap_err();
    let heartbeat = client.heartbeat().await;

    assert!(matches!(error, ClientError::Timeout), "got {error:?}");
    assert!(heartbeat.is_ok(), "heartbeat after timeout: {heartbeat:?}");
}

#[tokio::test]
async fn kicked_push_then_close_code_reported() {
    let server = TestServer::start().await;
    let mut client = connect(&server).await;

    client.sign_in(7, 99, "kick-me").await.expect("sign in");
    let push = client.next_push().await.expect("KICKED push");
    let closed = client.wait_closed(TIMEOUT).await.expect("closed");
    let after_close = client.next_push().await;
    let heartbeat = client.heartbeat().await.unwrap_err();

    assert_eq!(push.r#type, PacketType::Kicked as i32);
    assert_eq!(push.request_id, 0);
    let kicked = Kicked::decode(push.data.as_ref()).expect("Kicked");
    assert_eq!(kicked.reason, KickReason::SignedInElsewhere as i32);
    assert_eq!(closed, (4001, "signed in elsewhere".to_owned()));
    assert_eq!(client.close_frame(), Some(closed));
    assert!(after_close.is_none(), "push after close: {after_close:?}");
    assert!(
        matches!(heartbeat, ClientError::Closed { code: 4001, .. }),
        "got {heartbeat:?}"
    );
}

#[tokio::test]
async fn connection_end_without_close_frame_is_1006() {
    let server = TestServer::start().await;
    let mut client = connect(&server).await;

    let error = client.sign_in(7, 99, "drop").await.unwrap_err();
    let closed = client.wait_closed(TIMEOUT).await.expect("closed");

    assert!(
        matches!(error, ClientError::Closed { code: 1006, .. }),
        "got {error:?}"
    );
    assert_eq!(closed.0, 1006);
}

#[tokio::test]
async fn close_sends_normal_code() {
    let server = TestServer::start().await;
    let client = connect(&server).await;
    assert_eq!(client.close_frame(), None);

    client.close().await.expect("close");

    assert_eq!(server.observed().close_codes, vec![1000]);
}

#[tokio::test]
async fn close_after_server_close_succeeds() {
    let server = TestServer::start().await;
    let mut client = connect(&server).await;
    client.sign_in(7, 99, "kick-me").await.expect("sign in");
    client.wait_closed(TIMEOUT).await.expect("closed");

    let result = client.close().await;

    assert!(result.is_ok(), "got {result:?}");
    // The only close frame the server got is the client's automatic echo of its own 4001.
    assert_eq!(server.observed().close_codes, vec![4001]);
}

#[tokio::test]
async fn paused_reading_holds_frames_until_resumed() {
    let server = TestServer::start().await;
    server.store_messages(1);
    let opts = ConnectOptions {
        timeout: Duration::from_millis(300),
        ..ConnectOptions::default()
    };
    let client = Client::connect(&server.url, &opts).await.expect("connect");
    client.pause_reading();

    // The server replies to "push:1" with a MESSAGE push, then the HEARTBEAT reply.
    let error = client
        .request(PacketType::Heartbeat, b"push:1".to_vec())
        .await
        .unwrap_err();
    let while_paused = client.try_next_push();
    client.resume_reading();
    let message = tokio::time::timeout(TIMEOUT, client.next_push()).await;
    let late_reply = tokio::time::timeout(TIMEOUT, client.next_push()).await;

    assert!(matches!(error, ClientError::Timeout), "got {error:?}");
    assert!(
        while_paused.is_none(),
        "read while paused: {while_paused:?}"
    );
    let message = message.expect("a push after resuming").expect("open");
    assert_eq!(message.r#type, PacketType::Message as i32);
    // The reply came after its request gave up, so it arrives as a push.
    let late_reply = late_reply.expect("the late reply").expect("open");
    assert_eq!(late_reply.r#type, PacketType::Heartbeat as i32);
    assert_ne!(late_reply.request_id, 0);
}

#[tokio::test]
async fn close_while_paused_completes_handshake() {
    let server = TestServer::start().await;
    let client = connect(&server).await;
    client.pause_reading();

    let result = client.close().await;

    assert!(result.is_ok(), "got {result:?}");
    assert_eq!(server.observed().close_codes, vec![1000]);
}

#[tokio::test]
async fn undecodable_message_gets_error_push() {
    let server = TestServer::start().await;
    let client = connect(&server).await;

    // 0xff 0xff starts a varint that never ends, so it cannot decode as a Packet.
    client
        .send_raw(Message::Binary(vec![0xff, 0xff].into()))
        .await
        .expect("send raw");
    let push = client.next_push().await.expect("ERROR push");

    assert_eq!(push.r#type, PacketType::Error as i32);
    assert_eq!(push.code, ErrorCode::InvalidPacket as i32);
}

#[tokio::test]
async fn local_addr_sets_source_address() {
    let server = TestServer::start().await;
    let opts = ConnectOptions {
        local_addr: Some(support::second_loopback()),
        ..options()
    };

    let client = Client::connect(&server.url, &opts).await.expect("connect");
    client.heartbeat().await.expect("heartbeat");

    let peers = server.observed().peers.clone();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].ip(), support::second_loopback());
}

#[tokio::test]
async fn origin_header_is_sent() {
    let server = TestServer::start().await;
    let opts = ConnectOptions {
        origin: Some("http://127.0.0.1:5173".into()),
        ..options()
    };

    let client = Client::connect(&server.url, &opts).await.expect("connect");
    client.heartbeat().await.expect("heartbeat");

    let origins = server.observed().origins.clone();
    assert_eq!(origins, vec![Some("http://127.0.0.1:5173".to_owned())]);
}

#[tokio::test]
async fn no_origin_header_by_default() {
    let server = TestServer::start().await;

    let client = connect(&server).await;
    client.heartbeat().await.expect("heartbeat");

    assert_eq!(server.observed().origins, vec![None]);
}

#[tokio::test]
async fn silent_server_connect_times_out() {
    // Accepts TCP but never answers the upgrade request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let opts = ConnectOptions {
        timeout: Duration::from_millis(200),
        ..ConnectOptions::default()
    };

    let result = Client::connect(&url, &opts).await;

    assert!(
        matches!(result, Err(ClientError::Timeout)),
        "got {:?}",
        result.err()
    );
    drop(listener);
}

#[tokio::test]
async fn refused_connect_is_io_error() {
    // Bind, then drop the listener, so the port is very likely closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    drop(listener);

    let result = Client::connect(&url, &options()).await;

    assert!(
        matches!(result, Err(ClientError::Io(_))),
        "got {:?}",
        result.err()
    );
}

#[tokio::test]
async fn wss_url_is_rejected() {
    let result = Client::connect("wss://127.0.0.1:1/ws", &options()).await;

    assert!(
        matches!(result, Err(ClientError::WebSocket(_))),
        "got {:?}",
        result.err()
    );
}
