//! User look-ups, the authentication of `LogicExtService` calls from request metadata, and
//! the rejection of requests that do not decode, on both gRPC services.

mod common;

use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use common::{as_device, conn, error_code, new_user_device, TestLogic, NODE};
use im_logic::Config;
use im_proto::v1::{ErrorCode, FindUserRequest, GetUserRequest, ListGroupsRequest};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[tokio::test]
async fn get_and_find_user_show_the_open_flag() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, caller) = new_user_device(&mut logic.client, "looker", false, conn(NODE, 1)).await;
    let (open_name, open) = new_user_device(&mut logic.client, "open", true, conn(NODE, 2)).await;

    let by_id = ext
        .get_user(as_device(
            &caller,
            GetUserRequest {
                user_id: open.user_id,
            },
        ))
        .await
        .expect("get user")
        .into_inner();
    let by_name = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: open_name.clone(),
            },
        ))
        .await
        .expect("find user")
        .into_inner();
    let closed = ext
        .get_user(as_device(
            &caller,
            GetUserRequest {
                user_id: caller.user_id,
            },
        ))
        .await
        .expect("get self")
        .into_inner();

    let by_other_case = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: open_name.to_uppercase(),
            },
        ))
        .await
        .expect("find user in upper case")
        .into_inner();

    assert_eq!(by_id, by_name);
    assert_eq!(by_other_case, by_name, "look-ups ignore letter case");
    assert_eq!(by_id.user_id, open.user_id);
    assert_eq!(by_id.username, open_name);
    assert!(by_id.open, "registered as open");
    assert!(by_id.created_at_ms > 1_600_000_000_000);
    assert!(!closed.open, "registered without open");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn unknown_users_are_not_found() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, caller) = new_user_device(&mut logic.client, "seeker", false, conn(NODE, 1)).await;

    let by_id = ext
        .get_user(as_device(
            &caller,
            GetUserRequest {
                user_id: i64::MAX as u64,
            },
        ))
        .await
        .expect_err("unknown id");
    let by_name = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: "nobody_by_this_name".to_owned(),
            },
        ))
        .await
        .expect_err("unknown name");
    let malformed = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: "no spaces".to_owned(),
            },
        ))
        .await
        .expect_err("malformed name");

    assert_eq!(by_id.code(), Code::NotFound);
    assert_eq!(error_code(&by_id), ErrorCode::NotFound);
    assert_eq!(error_code(&by_name), ErrorCode::NotFound);
    assert_eq!(error_code(&malformed), ErrorCode::InvalidArgument);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn calls_without_valid_credentials_are_unauthenticated() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, device) = new_user_device(&mut logic.client, "creds", false, conn(NODE, 1)).await;
    let (_, other) = new_user_device(&mut logic.client, "creds", false, conn(NODE, 2)).await;
    let wrong_token = im_proto::v1::LoginReply {
        token: "0".repeat(64),
        ..device.clone()
    };
    let foreign_device = im_proto::v1::LoginReply {
        device_id: other.device_id,
        ..device.clone()
    };
    let cases = [
        (
            tonic::Request::new(ListGroupsRequest {}),
            ErrorCode::TokenInvalid,
            "no metadata",
        ),
        (
            as_device(&wrong_token, ListGroupsRequest {}),
            ErrorCode::TokenInvalid,
            "wrong token",
        ),
        (
            as_device(&foreign_device, ListGroupsRequest {}),
            ErrorCode::DeviceUnknown,
            "another user's device",
        ),
    ];

    for (request, expected, case) in cases {
        let status = ext.list_groups(request).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        assert_eq!(error_code(&status), expected, "{case}");
    }
    let mut missing_token = as_device(&device, ListGroupsRequest {});
    missing_token.metadata_mut().remove("im-token");
    let status = ext.list_groups(missing_token).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("im-token"),
        "{}",
        status.message()
    );
    ext.list_groups(as_device(&device, ListGroupsRequest {}))
        .await
        .expect("valid credentials pass");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn user_lookup_errors_name_the_value() {
    let mut logic = TestLogic::start_default().await;
    let mut ext = logic.ext_client().await;
    let (_, caller) = new_user_device(&mut logic.client, "namer", false, conn(NODE, 1)).await;
    let unknown = i64::MAX as u64;

    let zero = ext
        .get_user(as_device(&caller, GetUserRequest { user_id: 0 }))
        .await
        .expect_err("user 0");
    let by_id = ext
        .get_user(as_device(&caller, GetUserRequest { user_id: unknown }))
        .await
        .expect_err("unknown id");
    let by_name = ext
        .find_user(as_device(
            &caller,
            FindUserRequest {
                username: "nobody_by_this_name".to_owned(),
            },
        ))
        .await
        .expect_err("unknown name");

    assert_eq!(zero.code(), Code::InvalidArgument);
    assert_eq!(error_code(&zero), ErrorCode::InvalidArgument);
    assert!(zero.message().contains("user_id"), "{}", zero.message());
    assert_eq!(error_code(&by_id), ErrorCode::NotFound);
    assert!(
        by_id.message().contains(&unknown.to_string()),
        "{}",
        by_id.message()
    );
    assert_eq!(error_code(&by_name), ErrorCode::NotFound);
    assert!(
        by_name.message().contains("nobody_by_this_name"),
        "{}",
        by_name.message()
    );
    logic.server.shutdown().await;
}

/// Sends and receives message bytes as they are, so that a test can send what the typed client
/// cannot encode, such as a string field that is not UTF-8.
struct RawCodec;

struct RawCoder;

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut message = vec![0; src.remaining()];
        src.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

/// Connects a gRPC client that sends and receives message bytes as they are.
async fn raw_client(logic: &TestLogic) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{}", logic.server.local_addr()))
        .expect("valid URI")
        .connect()
        .await
        .expect("connects");
    tonic::client::Grpc::new(channel)
}

/// Calls the method at `path` with a request body that contains no message, as a client stream
/// that ends at once sends it, and returns the error status.
async fn call_with_empty_body(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: String,
    secret: Option<&str>,
) -> Status {
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(futures::stream::empty::<Vec<u8>>());
    if let Some(secret) = secret {
        request.metadata_mut().insert(
            im_proto::internal_secret::INTERNAL_SECRET_METADATA_KEY,
            secret.parse().expect("ASCII"),
        );
    }
    let method = path.clone();
    grpc.client_streaming(
        request,
        PathAndQuery::try_from(path).expect("valid path"),
        RawCodec,
    )
    .await
    .expect_err(&method)
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    let mut logic = TestLogic::start_default().await;
    let (_, caller) = new_user_device(&mut logic.client, "raw", false, conn(NODE, 1)).await;
    let mut grpc = raw_client(&logic).await;
    let cases: [(&[u8], &str); 2] = [
        // FindUserRequest.username (field 1, length 3) with bytes that are not UTF-8.
        (&[0x0a, 0x03, 0xff, 0xfe, b'a'], "string not UTF-8"),
        // Field 1 claims 16 bytes, and 1 follows.
        (&[0x0a, 0x10, b'a'], "truncated message"),
    ];

    for (message, case) in cases {
        grpc.ready().await.expect("channel ready");
        let status = grpc
            .unary(
                as_device(&caller, message.to_vec()),
                PathAndQuery::from_static("/im.v1.LogicExtService/FindUser"),
                RawCodec,
            )
            .await
            .expect_err(case);
        common::assert_invalid(&status, "FindUserRequest.username", case);
    }
    // Rejected before any handler runs, yet counted as the handlers count their errors.
    let text = logic.server.metrics().render();
    assert!(
        text.contains("im_logic_requests_total{method=\"FindUser\",code=\"INVALID_ARGUMENT\"} 2\n"),
        "{text}"
    );
    logic.server.shutdown().await;
}

/// Every `LogicExtService` method, as named in its request path.
const EXT_METHODS: [&str; 15] = [
    "Register",
    "GetUser",
    "FindUser",
    "RequestFriend",
    "AcceptFriend",
    "ListFriends",
    "RemoveFriend",
    "CreateGroup",
    "AddGroupMembers",
    "RemoveGroupMembers",
    "ListGroups",
    "GetGroup",
    "ServerSend",
    "Logout",
    "KickDevice",
];

#[tokio::test]
async fn empty_request_bodies_are_invalid_argument() {
    let logic = TestLogic::start_default().await;
    let mut grpc = raw_client(&logic).await;

    for method in EXT_METHODS {
        let path = format!("/im.v1.LogicExtService/{method}");
        let status = call_with_empty_body(&mut grpc, path, None).await;
        common::assert_invalid(&status, "request body is empty", method);
    }
    let text = logic.server.metrics().render();
    assert!(
        text.contains("im_logic_requests_total{method=\"Register\",code=\"INVALID_ARGUMENT\"} 1\n"),
        "{text}"
    );
    logic.server.shutdown().await;
}

/// Every `DeviceIntService` method, as named in its request path.
const DEVICE_METHODS: [&str; 14] = [
    "Register",
    "ConnLogin",
    "ConnSignIn",
    "ConnSignInMany",
    "Offline",
    "OfflineMany",
    "Send",
    "SendMany",
    "Sync",
    "Ack",
    "AckMany",
    "Logout",
    "RenewLease",
    "RestoreOnline",
];

#[tokio::test]
async fn engine_calls_check_the_secret_then_the_body() {
    let secret = "a-secret-of-the-engine-nodes";
    let logic = TestLogic::start(Config {
        internal_secret: secret.to_owned(),
        ..common::test_config()
    })
    .await;
    let mut grpc = raw_client(&logic).await;
    let with_secret = |message: Vec<u8>| {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            im_proto::internal_secret::INTERNAL_SECRET_METADATA_KEY,
            secret.parse().expect("ASCII"),
        );
        request
    };
    let sign_in = PathAndQuery::from_static("/im.v1.DeviceIntService/ConnSignIn");
    // ConnSignInRequest.client_addr (field 3, length 2) with bytes that are not UTF-8.
    let not_utf8 = vec![0x1a, 0x02, 0xff, 0xfe];

    // Without the secret the body is never read.
    grpc.ready().await.expect("channel ready");
    let status = grpc
        .unary(
            tonic::Request::new(not_utf8.clone()),
            sign_in.clone(),
            RawCodec,
        )
        .await
        .expect_err("no secret");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    grpc.ready().await.expect("channel ready");
    let status = grpc
        .unary(with_secret(not_utf8), sign_in, RawCodec)
        .await
        .expect_err("string not UTF-8");
    common::assert_invalid(&status, "ConnSignInRequest.client_addr", "string not UTF-8");

    for method in DEVICE_METHODS {
        let path = format!("/im.v1.DeviceIntService/{method}");
        let status = call_with_empty_body(&mut grpc, path, Some(secret)).await;
        common::assert_invalid(&status, "request body is empty", method);
    }
    let text = logic.server.metrics().render();
    assert!(
        text.contains(
            "im_logic_requests_total{method=\"ConnSignIn\",code=\"INVALID_ARGUMENT\"} 2\n"
        ),
        "{text}"
    );
    logic.server.shutdown().await;
}

/// Sends `body` as the whole request body of a call to `path`, with `secret` in the internal
/// secret's metadata, and returns the status of the response, which carries it in its headers.
async fn raw_call(addr: SocketAddr, path: &str, secret: &str, body: &'static [u8]) -> Status {
    let mut sender = common::http2_sender(addr).await;
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            im_proto::internal_secret::INTERNAL_SECRET_METADATA_KEY,
            secret,
        )
        .body(axum::body::Body::from(body))
        .expect("a request");
    let response = sender.send_request(request).await.expect("a response");
    Status::from_header_map(response.headers()).expect("a trailers-only response")
}

#[tokio::test]
async fn garbage_bodies_are_invalid_argument() {
    let secret = "a-secret-of-the-engine-nodes";
    let logic = TestLogic::start(Config {
        internal_secret: secret.to_owned(),
        ..common::test_config()
    })
    .await;
    let addr = logic.server.local_addr();
    // A gRPC request body is a sequence of messages, each after a 5-byte header: a
    // compressed-flag byte, then the message length as a big-endian u32.
    let cases: [(&[u8], &str); 4] = [
        (b"hello", "text: compressed-flag 'h'"),
        (
            &[1, 0, 0, 0, 0],
            "compressed-flag set without grpc-encoding",
        ),
        (&[0, 0, 0], "body ends inside a header"),
        (&[0, 0, 0, 0, 16, b'a'], "body ends inside a message"),
    ];

    let status = raw_call(addr, "/im.v1.DeviceIntService/Send", "wrong", b"hello").await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    for (body, case) in cases {
        let status = raw_call(addr, "/im.v1.DeviceIntService/Send", secret, body).await;
        common::assert_invalid(&status, "invalid request body", case);
    }
    for method in DEVICE_METHODS {
        let path = format!("/im.v1.DeviceIntService/{method}");
        let status = raw_call(addr, &path, secret, b"hello").await;
        common::assert_invalid(&status, "invalid request body", method);
    }
    for method in EXT_METHODS {
        let path = format!("/im.v1.LogicExtService/{method}");
        let status = raw_call(addr, &path, secret, b"hello").await;
        common::assert_invalid(&status, "invalid request body", method);
    }
    let text = logic.server.metrics().render();
    assert!(
        text.contains("im_logic_requests_total{method=\"Send\",code=\"INVALID_ARGUMENT\"} 5\n"),
        "{text}"
    );
    logic.server.shutdown().await;
}
