//! The web client's HTTP server: static files from `web_root` (content types, client-route
//! fallback, path traversal, a missing build) and `LogicExtService` over gRPC-Web, on a real
//! logic server with PostgreSQL and Redis.
//!
//! Requests go over raw TCP so that paths reach the server exactly as written, `..` included,
//! and so that a test can stop partway through a request. The test of HTTP/2 uses hyper's
//! client.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{new_user_device, test_config, unique_name, TestLogic, NODE};
use im_proto::v1::{
    ConversationType, FindUserRequest, KickDeviceRequest, SendRequest, ServerSendRequest, UserInfo,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INDEX_HTML: &str = "<!doctype html><title>im</title><div id=app></div>";
const APP_JS: &str = "console.log('app');";
const SECRET: &str = "outside the web root";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response: status, lower-cased header names with values, and the de-chunked body.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A built client in a fresh directory: index.html, assets/app.js, assets/style.css, and a
/// symbolic link `leak.txt` to a file outside the root.
struct WebRoot {
    base: PathBuf,
    root: PathBuf,
}

impl WebRoot {
    fn create() -> WebRoot {
        let base = std::env::temp_dir().join(unique_name("im-web-test"));
        let root = base.join("dist");
        std::fs::create_dir_all(root.join("assets")).expect("create root");
        std::fs::write(root.join("index.html"), INDEX_HTML).expect("write index");
        std::fs::write(root.join("assets/app.js"), APP_JS).expect("write js");
        std::fs::write(root.join("assets/style.css"), "body{}").expect("write css");
        std::fs::write(base.join("secret.txt"), SECRET).expect("write secret");
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("leak.txt"))
            .expect("symlink");
        WebRoot { base, root }
    }
}

impl Drop for WebRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

async fn start_with_root(root: &Path) -> TestLogic {
    let config = im_logic::Config {
        web_addr: "127.0.0.1:0".to_owned(),
        web_root: root.display().to_string(),
        ..test_config()
    };
    TestLogic::start(config).await
}

fn web_addr(logic: &TestLogic) -> SocketAddr {
    logic.server.web_addr().expect("web server is on")
}

/// Sends `head` (request line and headers, without the blank line) and `body` with
/// `Connection: close`, and reads the whole response.
async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let message = format!(
            "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(message.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no response to {head:?} within {REQUEST_TIMEOUT:?}"));
    parse_response(&raw)
}

/// Reads from `stream` until the server closes it or [`REQUEST_TIMEOUT`] passes, and returns
/// what was read. A reset connection counts as closed.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut raw)).await;
    raw
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, &format!("GET {path} HTTP/1.1"), &[]).await
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(key, value)| key == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).expect("hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Splits a gRPC-Web response body into its data messages and its trailer block.
fn grpc_web_frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut messages = Vec::new();
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flags = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + length];
        if flags & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + length..];
    }
    (messages, trailers)
}

fn grpc_web_frame(message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Returns the grpc-status from the headers (a trailers-only response) or the trailer block.
fn grpc_status(response: &HttpResponse, trailers: &str) -> Option<String> {
    if let Some(status) = response.header("grpc-status") {
        return Some(status.to_owned());
    }
    trailers
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("grpc-status"))
        .map(|(_, value)| value.trim().to_owned())
}

#[tokio::test]
async fn files_have_content_types() {
    let root = WebRoot::create();
    let logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);

    let index = get(addr, "/").await;
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(index.text(), INDEX_HTML);

    let script = get(addr, "/assets/app.js").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(script.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(script.text(), APP_JS);

    let style = get(addr, "/assets/style.css").await;
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );

    let head = request(addr, "HEAD /assets/app.js HTTP/1.1", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn client_routes_get_index() {
    let root = WebRoot::create();
    let logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);

    for path in ["/chat/user/7", "/friends", "/assets", "/assets/"] {
        let response = get(addr, path).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.text(), INDEX_HTML, "{path} returns index.html");
    }

    let missing = get(addr, "/assets/missing.js").await;
    assert_eq!(
        missing.status, 404,
        "a missing file is not replaced by the page"
    );

    let post = request(addr, "POST /index.html HTTP/1.1", b"x").await;
    assert_eq!(post.status, 405);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn path_traversal_is_rejected() {
    let root = WebRoot::create();
    let logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);

    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/leak.txt",
    ] {
        let response = get(addr, path).await;
        assert_eq!(response.status, 404, "{path}");
        assert!(!response.text().contains(SECRET), "{path} leaked the file");
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn missing_build_says_how_to_build() {
    let root = std::env::temp_dir().join(unique_name("im-web-missing"));
    let logic = start_with_root(&root).await;
    let addr = web_addr(&logic);

    for path in ["/", "/chat/user/1", "/assets/app.js"] {
        let response = get(addr, path).await;
        assert_eq!(response.status, 404, "{path}");
        assert!(
            response.text().contains("npm run build"),
            "{}",
            response.text()
        );
    }
    logic.server.shutdown().await;
}

#[tokio::test]
async fn grpc_web_find_user() {
    let root = WebRoot::create();
    let mut logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    let (username, device) =
        new_user_device(&mut logic.client, "web", false, common::conn(NODE, 1)).await;

    let body = grpc_web_frame(&FindUserRequest {
        username: username.clone(),
    });
    let head = format!(
        "POST /im.v1.LogicExtService/FindUser HTTP/1.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         im-user-id: {}\r\nim-device-id: {}\r\nim-token: {}",
        device.user_id, device.device_id, device.token
    );
    let response = request(addr, &head, &body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/grpc-web+proto")
    );
    let (messages, trailers) = grpc_web_frames(&response.body);
    assert_eq!(grpc_status(&response, &trailers).as_deref(), Some("0"));
    assert_eq!(messages.len(), 1, "one reply message");
    let user = UserInfo::decode(messages[0].as_slice()).expect("UserInfo decodes");
    assert_eq!(user.username, username);
    assert_eq!(user.user_id, device.user_id);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn grpc_web_rejects_bad_token() {
    let root = WebRoot::create();
    let mut logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    let (username, device) =
        new_user_device(&mut logic.client, "webbad", false, common::conn(NODE, 1)).await;

    let body = grpc_web_frame(&FindUserRequest { username });
    let head = format!(
        "POST /im.v1.LogicExtService/FindUser HTTP/1.1\r\n\
         Content-Type: application/grpc-web+proto\r\n\
         im-user-id: {}\r\nim-device-id: {}\r\nim-token: not-the-token",
        device.user_id, device.device_id
    );
    let response = request(addr, &head, &body).await;
    assert_eq!(response.status, 200, "gRPC errors travel in grpc-status");
    let (messages, trailers) = grpc_web_frames(&response.body);
    assert!(messages.is_empty(), "no reply message");
    let status = grpc_status(&response, &trailers).expect("a grpc-status");
    assert_ne!(status, "0", "a wrong token fails");
    let error_code = response
        .header("im-error-code")
        .map(str::to_owned)
        .or_else(|| {
            trailers
                .split("\r\n")
                .find_map(|line| line.strip_prefix("im-error-code:"))
                .map(|value| value.trim().to_owned())
        });
    assert_eq!(error_code.as_deref(), Some("11"), "TOKEN_INVALID");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn grpc_web_undecodable_request_is_invalid() {
    let root = WebRoot::create();
    let mut logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    let (_, device) =
        new_user_device(&mut logic.client, "webraw", false, common::conn(NODE, 1)).await;
    // FindUserRequest.username (field 1, length 3) with bytes that are not UTF-8.
    let payload = [0x0a, 0x03, 0xff, 0xfe, b'a'];
    let mut body = vec![0u8];
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);
    let head = format!(
        "POST /im.v1.LogicExtService/FindUser HTTP/1.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         im-user-id: {}\r\nim-device-id: {}\r\nim-token: {}",
        device.user_id, device.device_id, device.token
    );

    let response = request(addr, &head, &body).await;

    assert_eq!(response.status, 200, "gRPC errors travel in grpc-status");
    let (messages, trailers) = grpc_web_frames(&response.body);
    assert!(messages.is_empty(), "no reply message");
    assert_eq!(
        grpc_status(&response, &trailers).as_deref(),
        Some("3"),
        "INVALID_ARGUMENT: {:?}",
        response.headers
    );
    assert_eq!(
        response.header("im-error-code"),
        Some("5"),
        "the INVALID_ARGUMENT error code: {:?}",
        response.headers
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_refused() {
    let root = WebRoot::create();
    let logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    let stream = TcpStream::connect(addr).await.expect("connect");
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        let call = grpc_web_frame(&FindUserRequest {
            username: "nobody".to_owned(),
        });
        let request = hyper::Request::post(format!("http://{addr}/im.v1.LogicExtService/FindUser"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(axum::body::Body::from(call))
            .expect("a request");
        sender.send_request(request).await
    };

    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("the HTTP/2 client gets an answer or an error in time");

    if let Ok(response) = outcome {
        panic!("HTTP/2 was served: {}", response.status());
    }
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200, "HTTP/1.1 is still served");
    logic.server.shutdown().await;
}

#[tokio::test]
async fn empty_web_addr_turns_server_off() {
    let logic = TestLogic::start(test_config()).await;
    assert_eq!(logic.server.web_addr(), None);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn grpc_web_rejects_back_end_calls() {
    const SERVER_SECRET: &str = "a server secret of the back end";
    let root = WebRoot::create();
    let config = im_logic::Config {
        web_addr: "127.0.0.1:0".to_owned(),
        web_root: root.root.display().to_string(),
        server_secret: SERVER_SECRET.to_owned(),
        ..test_config()
    };
    let mut logic = TestLogic::start(config).await;
    let addr = web_addr(&logic);
    let (_, bot) = new_user_device(&mut logic.client, "webbot", true, common::conn(NODE, 1)).await;
    let send = SendRequest {
        conversation_type: ConversationType::User as i32,
        receiver_id: bot.user_id,
        content: bytes::Bytes::from_static(b"hello"),
        content_type: "text/plain".to_owned(),
        client_msg_id: unique_name("web-server-send"),
    };
    let calls = [
        (
            "ServerSend",
            grpc_web_frame(&ServerSendRequest {
                sender_user_id: bot.user_id,
                send: Some(send.clone()),
            }),
        ),
        (
            "KickDevice",
            grpc_web_frame(&KickDeviceRequest {
                user_id: bot.user_id,
                device_id: bot.device_id,
            }),
        ),
    ];
    for (method, body) in calls {
        let head = format!(
            "POST /im.v1.LogicExtService/{method} HTTP/1.1\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
             im-server-secret: {SERVER_SECRET}"
        );
        let response = request(addr, &head, &body).await;
        assert_eq!(response.status, 200, "gRPC errors travel in grpc-status");
        let (messages, trailers) = grpc_web_frames(&response.body);
        assert!(messages.is_empty(), "{method}: no reply message");
        assert_eq!(
            grpc_status(&response, &trailers).as_deref(),
            Some("7"),
            "{method}: PERMISSION_DENIED: {:?} {trailers}",
            response.headers
        );
        let text = format!("{:?} {trailers}", response.headers);
        assert!(text.contains("listen_addr"), "{method}: {text}");
    }

    // The same secret works on the gRPC address, so the refusal is the web port's.
    let mut ext = logic.ext_client().await;
    let mut call = tonic::Request::new(ServerSendRequest {
        sender_user_id: bot.user_id,
        send: Some(send),
    });
    call.metadata_mut()
        .insert("im-server-secret", SERVER_SECRET.parse().expect("ascii"));
    ext.server_send(call).await.expect("ServerSend over gRPC");
    let mut kick = tonic::Request::new(KickDeviceRequest {
        user_id: bot.user_id,
        device_id: bot.device_id,
    });
    kick.metadata_mut()
        .insert("im-server-secret", SERVER_SECRET.parse().expect("ascii"));
    let kicked = ext.kick_device(kick).await.expect("KickDevice over gRPC");
    assert_eq!(
        kicked.into_inner().revoked,
        1,
        "the bot's device was revoked"
    );
    logic.server.shutdown().await;
}

#[tokio::test]
async fn stalled_uploads_do_not_block_get() {
    let root = WebRoot::create();
    let logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    assert_eq!(get(addr, "/index.html").await.status, 200);

    // Eight chunked bodies of unknown size, once charged 8 MiB each of the 64 MiB budget
    // before any byte arrived, start and send nothing.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /im.v1.LogicExtService/FindUser HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/grpc-web+proto\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write head");
        stalled.push(stream);
    }
    // Lets the server parse the heads and start waiting for the bodies.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let page = get(addr, "/index.html").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.text(), INDEX_HTML);
    drop(stalled);
    logic.server.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_request_in_progress() {
    let root = WebRoot::create();
    let mut logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    let (username, device) =
        new_user_device(&mut logic.client, "web_stop", false, common::conn(NODE, 1)).await;
    let body = grpc_web_frame(&FindUserRequest {
        username: username.clone(),
    });
    let head = format!(
        "POST /im.v1.LogicExtService/FindUser HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         im-user-id: {}\r\nim-device-id: {}\r\nim-token: {}\r\nContent-Length: {}\r\n\r\n",
        device.user_id,
        device.device_id,
        device.token,
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
        .write_all(&body[..3])
        .await
        .expect("write part of the body");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let stopping = tokio::spawn(logic.server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(&body[3..])
        .await
        .expect("write the rest of the body");
    let response = parse_response(&read_until_closed(&mut stream).await);

    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    let (messages, trailers) = grpc_web_frames(&response.body);
    assert_eq!(grpc_status(&response, &trailers).as_deref(), Some("0"));
    assert_eq!(messages.len(), 1, "one reply message");
    let user = UserInfo::decode(messages[0].as_slice()).expect("UserInfo decodes");
    assert_eq!(user.username, username);
    // Once its last request has a response, the web server returns before its 5 s grace period.
    tokio::time::timeout(Duration::from_secs(4), stopping)
        .await
        .expect("shutdown returns within 4 s")
        .expect("shutdown task");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn no_request_served_after_shutdown() {
    let root = WebRoot::create();
    let logic = start_with_root(&root.root).await;
    let addr = web_addr(&logic);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let half_head = format!("GET /index.html HTTP/1.1\r\nHost: {addr}\r\n");
    stream
        .write_all(half_head.as_bytes())
        .await
        .expect("write half a head");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The request never completes within the grace period, so its connection is dropped.
    logic.server.shutdown().await;

    // The write may fail because the connection is closed, as it should be.
    let _ = stream.write_all(b"Connection: close\r\n\r\n").await;
    let reply = read_until_closed(&mut stream).await;
    assert!(
        reply.is_empty(),
        "a request finished after shutdown was served: {}",
        String::from_utf8_lossy(&reply)
    );
}
