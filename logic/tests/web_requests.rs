//! Requests to `LogicExtService` over gRPC-Web on the web port that are rejected before any
//! handler runs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{test_config, TestLogic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Maximum wait for one response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The gRPC status of a gRPC-Web response, from its headers (a trailers-only response) or its
/// trailer frame, with names in lower case.
struct GrpcWebStatus {
    http_status: u16,
    metadata: Vec<(String, String)>,
}

impl GrpcWebStatus {
    fn get(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Returns `grpc-message` with its percent-encoding decoded.
    fn message(&self) -> String {
        let encoded = self.get("grpc-message").unwrap_or_default();
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8_lossy()
            .into_owned()
    }
}

/// Posts an empty body to `/im.v1.LogicExtService/{method}` as gRPC-Web and reads the whole
/// response.
async fn post_empty_body(addr: SocketAddr, method: &str) -> GrpcWebStatus {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /im.v1.LogicExtService/{method} HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no response to {method} within {REQUEST_TIMEOUT:?}"));
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> GrpcWebStatus {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let http_status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line {status_line:?}"));
    let mut metadata = header_lines(lines);
    let chunked = metadata
        .iter()
        .any(|(key, value)| key == "transfer-encoding" && value.contains("chunked"));
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    let trailers = trailer_block(&body);
    metadata.extend(header_lines(trailers.split("\r\n")));
    GrpcWebStatus {
        http_status,
        metadata,
    }
}

fn header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
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

/// Returns the text of the trailer frames (flag 0x80) of a gRPC-Web response body.
fn trailer_block(mut body: &[u8]) -> String {
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flags = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + length];
        if flags & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        }
        body = &body[5 + length..];
    }
    trailers
}

#[tokio::test]
async fn grpc_web_empty_bodies_are_invalid_argument() {
    let config = im_logic::Config {
        web_addr: "127.0.0.1:0".to_owned(),
        ..test_config()
    };
    let logic = TestLogic::start(config).await;
    let addr = logic.server.web_addr().expect("web server is on");

    for method in EXT_METHODS {
        let status = post_empty_body(addr, method).await;

        assert_eq!(
            status.http_status, 200,
            "{method}: gRPC errors travel in grpc-status"
        );
        assert_eq!(
            status.get("grpc-status"),
            Some("3"),
            "{method}: INVALID_ARGUMENT, not INTERNAL: {:?}",
            status.metadata
        );
        assert_eq!(
            status.get("im-error-code"),
            Some("5"),
            "{method}: the INVALID_ARGUMENT error code: {:?}",
            status.metadata
        );
        assert!(
            status.message().contains("request body is empty"),
            "{method}: {}",
            status.message()
        );
    }
    logic.server.shutdown().await;
}
