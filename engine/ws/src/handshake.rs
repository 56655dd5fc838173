//! The HTTP/1.1 upgrade handshake (RFC 6455 section 4.2): parsing and checking the client's
//! request, and building the 101 response or an HTTP error response.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;

/// Maximum number of header fields in an upgrade request.
pub const MAX_HEADERS: usize = 64;

/// GUID that RFC 6455 section 1.3 appends to the key before hashing it.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits and settings for the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Maximum size of the request line and header block, in bytes, default 8192. A request
    /// whose header block has not ended within this many bytes is rejected with 431 as soon as
    /// that many bytes have arrived.
    pub max_header_bytes: usize,
    /// Path of the WebSocket endpoint, default `/ws`. Other paths get 404. A query string after
    /// the path is allowed.
    pub path: String,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8192,
            path: "/ws".to_owned(),
        }
    }
}

/// A checked WebSocket upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Request path without the query string, equal to the configured path.
    pub path: String,
    /// Query string after `?`, if any, without the `?`. It may carry credentials, so it must not
    /// be logged.
    pub query: Option<String>,
    /// `Sec-WebSocket-Key`, checked to be base64 of 16 bytes.
    pub key: String,
    /// `Origin`, sent by browsers. The engine decides whether to accept it.
    pub origin: Option<String>,
    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order of preference.
    pub protocols: Vec<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `X-Forwarded-For` as sent, with several fields joined by ", ". Proxies set it, so it is
    /// trustworthy only behind a known proxy.
    pub forwarded_for: Option<String>,
}

/// Parses and checks an upgrade request at the front of `buf`.
///
/// Returns `Ok(None)` while the header block is incomplete, and `Ok(Some((request, consumed)))`
/// once it ends, where `consumed` is the length of the request line and headers. Bytes after
/// them belong to the WebSocket stream.
///
/// # Errors
///
/// A [`HandshakeError`] when the request is invalid, or when `limits.max_header_bytes` bytes
/// have arrived and the header block has not ended. The engine responds with
/// [`reject_response`] and closes the connection.
pub fn parse_upgrade(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    // Parsing only a window of max_header_bytes rejects an oversized block without waiting
    // for its end, and bounds the work of parsing the request again on each read.
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if window.len() >= limits.max_header_bytes => {
            return Err(HandshakeError::HeadersTooLarge {
                max_bytes: limits.max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders { max: MAX_HEADERS })
        }
        Err(error) => return Err(HandshakeError::Malformed(error)),
    };
    let upgrade = check_request(&request, limits)?;
    Ok(Some((upgrade, consumed)))
}

/// Checks the request line and headers of a complete request.
fn check_request(
    request: &httparse::Request<'_, '_>,
    limits: &HandshakeLimits,
) -> Result<UpgradeRequest, HandshakeError> {
    // RFC 6455 section 4.1: the HTTP version must be at least 1.1; httparse reads 1.0 as 0.
    if request.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let target = request.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != limits.path {
        return Err(HandshakeError::WrongPath {
            expected: limits.path.clone(),
        });
    }
    if request.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }

    let fields = HeaderFields::collect(request.headers)?;
    let key = fields.check()?;
    Ok(UpgradeRequest {
        path: path.to_owned(),
        query: query.map(str::to_owned),
        key,
        origin: fields.origin.map(lossy_string),
        protocols: fields.protocols,
        user_agent: fields.user_agent.map(lossy_string),
        forwarded_for: (!fields.forwarded_for.is_empty()).then(|| fields.forwarded_for.join(", ")),
    })
}

/// Header fields of an upgrade request, gathered in one pass, with values trimmed.
#[derive(Default)]
struct HeaderFields<'a> {
    host: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    version: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    forwarded_for: Vec<String>,
    protocols: Vec<String>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    has_body: bool,
}

impl<'a> HeaderFields<'a> {
    fn collect(headers: &[httparse::Header<'a>]) -> Result<Self, HandshakeError> {
        let mut fields = Self::default();
        for header in headers {
            fields.add(header.name, header.value.trim_ascii())?;
        }
        Ok(fields)
    }

    fn add(&mut self, name: &str, value: &'a [u8]) -> Result<(), HandshakeError> {
        let is = |expected: &str| name.eq_ignore_ascii_case(expected);
        if is("host") {
            set_once(&mut self.host, value, "Host")?;
        } else if is("sec-websocket-key") {
            set_once(&mut self.key, value, "Sec-WebSocket-Key")?;
        } else if is("sec-websocket-version") {
            set_once(&mut self.version, value, "Sec-WebSocket-Version")?;
        } else if is("origin") {
            set_once(&mut self.origin, value, "Origin")?;
        } else if is("upgrade") {
            self.upgrade_websocket |= has_token(value, "websocket");
        } else if is("connection") {
            self.connection_upgrade |= has_token(value, "upgrade");
        } else if is("sec-websocket-protocol") {
            self.protocols.extend(tokens(value).map(lossy_string));
        } else if is("user-agent") {
            // Only the first User-Agent is kept, because it is informational.
            self.user_agent.get_or_insert(value);
        } else if is("x-forwarded-for") {
            self.forwarded_for.push(lossy_string(value));
        } else if is("transfer-encoding") || (is("content-length") && value != b"0") {
            self.has_body = true;
        }
        Ok(())
    }

    /// Checks the fields that a WebSocket upgrade requires and returns the key.
    fn check(&self) -> Result<String, HandshakeError> {
        if self.host.is_none() {
            return Err(HandshakeError::MissingHeader("Host"));
        }
        if !self.upgrade_websocket {
            return Err(HandshakeError::NotWebSocketUpgrade);
        }
        if !self.connection_upgrade {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if self.version != Some(b"13") {
            return Err(HandshakeError::UnsupportedVersion);
        }
        // A body would be read as WebSocket frames after the upgrade.
        if self.has_body {
            return Err(HandshakeError::BodyNotAllowed);
        }
        let key = self
            .key
            .ok_or(HandshakeError::MissingHeader("Sec-WebSocket-Key"))?;
        check_key(key)
    }
}

fn set_once<'a>(
    slot: &mut Option<&'a [u8]>,
    value: &'a [u8],
    name: &'static str,
) -> Result<(), HandshakeError> {
    if slot.replace(value).is_some() {
        return Err(HandshakeError::DuplicateHeader(name));
    }
    Ok(())
}

/// Splits a comma-separated header value into trimmed, non-empty tokens.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Checks whether a comma-separated header value lists `token`, ignoring ASCII case.
fn has_token(value: &[u8], token: &str) -> bool {
    tokens(value).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks that the key is base64 of exactly 16 bytes (RFC 6455 section 4.1), so 24 characters
/// with padding.
fn check_key(key: &[u8]) -> Result<String, HandshakeError> {
    let mut decoded = [0u8; 18];
    if key.len() != 24 {
        return Err(HandshakeError::InvalidKey);
    }
    match BASE64.decode_slice(key, &mut decoded) {
        // Base64 is ASCII, so the key is valid UTF-8.
        Ok(16) => Ok(lossy_string(key)),
        _ => Err(HandshakeError::InvalidKey),
    }
}

fn lossy_string(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Computes `Sec-WebSocket-Accept` for a client key: base64 of the SHA-1 of the key followed by
/// the RFC 6455 GUID.
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// Builds the `101 Switching Protocols` response that completes the handshake.
pub fn accept_response(request: &UpgradeRequest) -> Vec<u8> {
    accept_response_with_protocol(request, None)
}

/// Builds the `101 Switching Protocols` response and selects `protocol` as the subprotocol.
///
/// `protocol` is sent only if the client offered it, because a client must fail the connection
/// when the server selects a subprotocol it did not offer.
pub fn accept_response_with_protocol(request: &UpgradeRequest, protocol: Option<&str>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(&request.key)
    );
    if let Some(protocol) = protocol.filter(|p| request.protocols.iter().any(|o| o == p)) {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(protocol);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// Builds the HTTP error response for a rejected upgrade: the status from
/// [`HandshakeError::status`], `Connection: close`, and a one-line text body that describes
/// what was wrong. A 426 also carries `Upgrade: websocket` and `Sec-WebSocket-Version: 13`, and
/// a 405 carries `Allow: GET`.
pub fn reject_response(error: &HandshakeError) -> Vec<u8> {
    let status = error.status();
    let body = format!("{error}\n");
    let extra_headers = match status {
        // RFC 9110 section 7.8: a 426 lists the acceptable protocols in Upgrade, and a sender
        // of Upgrade also lists "upgrade" in Connection.
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nConnection: Upgrade, close\r\n",
        405 => "Allow: GET\r\nConnection: close\r\n",
        _ => "Connection: close\r\n",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {length}\r\n\
         {extra_headers}\
         \r\n\
         {body}",
        reason = reason_phrase(status),
        length = body.len(),
    )
    .into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// Builds a valid upgrade request with `extra` header lines (each ending in CRLF) added.
    fn request_with(request_line: &str, extra: &str) -> String {
        format!(
            "{request_line}\r\n\
             Host: chat.example.com\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: {RFC_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n\
             {extra}\r\n"
        )
    }

    /// Builds a request from the request line and exactly the given header lines.
    fn request_from(request_line: &str, headers: &[&str]) -> String {
        let mut request = format!("{request_line}\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request
    }

    const VALID_HEADERS: [&str; 5] = [
        "Host: chat.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    /// Valid headers with the one whose name starts with `prefix` replaced by `replacement`,
    /// or removed when `replacement` is `None`.
    fn headers_replacing<'a>(prefix: &str, replacement: Option<&'a str>) -> Vec<&'a str> {
        VALID_HEADERS
            .iter()
            .filter_map(|header| match header.starts_with(prefix) {
                true => replacement,
                false => Some(*header),
            })
            .collect()
    }

    fn parse(request: &str) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
        parse_upgrade(request.as_bytes(), &HandshakeLimits::default())
    }

    fn parse_err(request: &str) -> HandshakeError {
        parse(request).expect_err("request must be rejected")
    }

    #[test]
    fn valid_request_is_parsed() {
        let request = request_with(
            "GET /ws?v=1 HTTP/1.1",
            "Origin: https://chat.example.com\r\n\
             Sec-WebSocket-Protocol: im.v1, im.v2\r\n\
             User-Agent: test-agent\r\n\
             X-Forwarded-For: 203.0.113.7\r\n",
        );
        let (upgrade, consumed) = parse(&request).unwrap().unwrap();
        assert_eq!(consumed, request.len());
        assert_eq!(upgrade.path, "/ws");
        assert_eq!(upgrade.query.as_deref(), Some("v=1"));
        assert_eq!(upgrade.key, RFC_KEY);
        assert_eq!(upgrade.origin.as_deref(), Some("https://chat.example.com"));
        assert_eq!(upgrade.protocols, ["im.v1", "im.v2"]);
        assert_eq!(upgrade.user_agent.as_deref(), Some("test-agent"));
        assert_eq!(upgrade.forwarded_for.as_deref(), Some("203.0.113.7"));
    }

    #[test]
    fn bytes_after_headers_are_not_consumed() {
        let request = request_with("GET /ws HTTP/1.1", "");
        let mut input = request.clone().into_bytes();
        input.extend_from_slice(&[0x81, 0x80]);
        let (_, consumed) = parse_upgrade(&input, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(consumed, request.len());
    }

    #[test]
    fn incomplete_request_needs_more_bytes() {
        let request = request_with("GET /ws HTTP/1.1", "");
        for end in 0..request.len() {
            assert!(parse(&request[..end]).unwrap().is_none(), "prefix {end}");
        }
    }

    #[test]
    fn rfc_example_key_gives_rfc_accept() {
        assert_eq!(accept_key(RFC_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accept_response_has_accept_header() {
        let (upgrade, _) = parse(&request_with("GET /ws HTTP/1.1", ""))
            .unwrap()
            .unwrap();
        let response = String::from_utf8(accept_response(&upgrade)).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("\r\nUpgrade: websocket\r\n"));
        assert!(response.contains("\r\nConnection: Upgrade\r\n"));
        assert!(response.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
        assert!(!response.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn accept_response_selects_offered_protocol_only() {
        let request = request_with("GET /ws HTTP/1.1", "Sec-WebSocket-Protocol: im.v1\r\n");
        let (upgrade, _) = parse(&request).unwrap().unwrap();
        let offered = accept_response_with_protocol(&upgrade, Some("im.v1"));
        let offered = String::from_utf8(offered).unwrap();
        assert!(offered.contains("\r\nSec-WebSocket-Protocol: im.v1\r\n"));

        let not_offered = accept_response_with_protocol(&upgrade, Some("other"));
        let not_offered = String::from_utf8(not_offered).unwrap();
        assert!(!not_offered.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn method_other_than_get_is_405() {
        for method in ["POST", "PUT", "HEAD", "get"] {
            let error = parse_err(&request_with(&format!("{method} /ws HTTP/1.1"), ""));
            assert!(
                matches!(error, HandshakeError::MethodNotAllowed),
                "{method}"
            );
            assert_eq!(error.status(), 405);
        }
    }

    #[test]
    fn http_1_0_is_rejected() {
        let error = parse_err(&request_with("GET /ws HTTP/1.0", ""));
        assert!(matches!(error, HandshakeError::UnsupportedHttpVersion));
        assert_eq!(error.status(), 505);
    }

    #[test]
    fn garbage_request_line_is_400() {
        let error = parse_err("GET /ws HTTP/9.9\r\n\r\n");
        assert!(matches!(error, HandshakeError::Malformed(_)));
        assert_eq!(error.status(), 400);

        let tls_client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let error = parse_upgrade(tls_client_hello, &HandshakeLimits::default()).unwrap_err();
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn missing_host_is_400() {
        let error = parse_err(&request_from(
            "GET /ws HTTP/1.1",
            &headers_replacing("Host", None),
        ));
        assert!(matches!(error, HandshakeError::MissingHeader("Host")));
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn duplicate_host_or_key_is_400() {
        let error = parse_err(&request_with("GET /ws HTTP/1.1", "Host: other\r\n"));
        assert!(matches!(error, HandshakeError::DuplicateHeader("Host")));
        assert_eq!(error.status(), 400);

        let extra = format!("Sec-WebSocket-Key: {RFC_KEY}\r\n");
        let error = parse_err(&request_with("GET /ws HTTP/1.1", &extra));
        assert!(matches!(
            error,
            HandshakeError::DuplicateHeader("Sec-WebSocket-Key")
        ));
    }

    #[test]
    fn upgrade_header_token_list_case_insensitive() {
        for value in [
            "websocket",
            "WebSocket",
            "h2c, WEBSOCKET",
            " websocket ,foo",
        ] {
            let header = format!("Upgrade: {value}");
            let headers = headers_replacing("Upgrade", Some(&header));
            let request = request_from("GET /ws HTTP/1.1", &headers);
            assert!(parse(&request).unwrap().is_some(), "{value}");
        }
    }

    #[test]
    fn upgrade_missing_or_not_websocket_is_426() {
        for replacement in [None, Some("Upgrade: h2c"), Some("Upgrade: websockets")] {
            let request = request_from(
                "GET /ws HTTP/1.1",
                &headers_replacing("Upgrade", replacement),
            );
            let error = parse_err(&request);
            assert!(
                matches!(error, HandshakeError::NotWebSocketUpgrade),
                "{replacement:?}"
            );
            assert_eq!(error.status(), 426);
        }
    }

    #[test]
    fn connection_header_token_list_case_insensitive() {
        for value in [
            "Upgrade",
            "upgrade",
            "keep-alive, Upgrade",
            "keep-alive,UPGRADE",
        ] {
            let header = format!("Connection: {value}");
            let headers = headers_replacing("Connection", Some(&header));
            let request = request_from("GET /ws HTTP/1.1", &headers);
            assert!(parse(&request).unwrap().is_some(), "{value}");
        }
    }

    #[test]
    fn connection_without_upgrade_is_400() {
        for replacement in [
            None,
            Some("Connection: keep-alive"),
            Some("Connection: upgraded"),
        ] {
            let headers = headers_replacing("Connection", replacement);
            let error = parse_err(&request_from("GET /ws HTTP/1.1", &headers));
            assert!(
                matches!(error, HandshakeError::MissingConnectionUpgrade),
                "{replacement:?}"
            );
            assert_eq!(error.status(), 400);
        }
    }

    #[test]
    fn version_other_than_13_is_426() {
        for replacement in [
            None,
            Some("Sec-WebSocket-Version: 8"),
            Some("Sec-WebSocket-Version: 14"),
        ] {
            let headers = headers_replacing("Sec-WebSocket-Version", replacement);
            let error = parse_err(&request_from("GET /ws HTTP/1.1", &headers));
            assert!(
                matches!(error, HandshakeError::UnsupportedVersion),
                "{replacement:?}"
            );
            assert_eq!(error.status(), 426);
        }
    }

    #[test]
    fn key_missing_is_400() {
        let headers = headers_replacing("Sec-WebSocket-Key", None);
        let error = parse_err(&request_from("GET /ws HTTP/1.1", &headers));
        assert!(matches!(
            error,
            HandshakeError::MissingHeader("Sec-WebSocket-Key")
        ));
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn key_not_base64_of_16_bytes_is_400() {
        for key in [
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZWU=",
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "Sec-WebSocket-Key: ",
        ] {
            let headers = headers_replacing("Sec-WebSocket-Key", Some(key));
            let error = parse_err(&request_from("GET /ws HTTP/1.1", &headers));
            assert!(matches!(error, HandshakeError::InvalidKey), "{key}");
            assert_eq!(error.status(), 400);
        }
    }

    #[test]
    fn wrong_path_is_404() {
        for target in ["/", "/ws/", "/wss", "/other?x=/ws"] {
            let error = parse_err(&request_with(&format!("GET {target} HTTP/1.1"), ""));
            assert!(
                matches!(error, HandshakeError::WrongPath { .. }),
                "{target}"
            );
            assert_eq!(error.status(), 404);
        }
    }

    #[test]
    fn configured_path_with_query_is_accepted() {
        let limits = HandshakeLimits {
            path: "/chat".into(),
            ..HandshakeLimits::default()
        };
        let request = request_with("GET /chat?token=abc&x=1 HTTP/1.1", "");
        let (upgrade, _) = parse_upgrade(request.as_bytes(), &limits).unwrap().unwrap();
        assert_eq!(upgrade.path, "/chat");
        assert_eq!(upgrade.query.as_deref(), Some("token=abc&x=1"));
    }

    #[test]
    fn body_is_rejected() {
        for extra in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
            let error = parse_err(&request_with("GET /ws HTTP/1.1", extra));
            assert!(matches!(error, HandshakeError::BodyNotAllowed), "{extra}");
            assert_eq!(error.status(), 400);
        }
        let request = request_with("GET /ws HTTP/1.1", "Content-Length: 0\r\n");
        assert!(parse(&request).unwrap().is_some());
    }

    #[test]
    fn one_mib_header_is_431_early() {
        let mut request = b"GET /ws HTTP/1.1\r\nX-Filler: ".to_vec();
        request.resize(1024 * 1024, b'a');
        let limits = HandshakeLimits::default();
        let error = parse_upgrade(&request, &limits).unwrap_err();
        assert!(matches!(
            error,
            HandshakeError::HeadersTooLarge { max_bytes: 8192 }
        ));
        assert_eq!(error.status(), 431);

        // Just below the limit, the same unterminated header only needs more bytes.
        assert!(parse_upgrade(&request[..8191], &limits).unwrap().is_none());
        assert!(parse_upgrade(&request[..8192], &limits).is_err());
    }

    #[test]
    fn header_block_ending_at_limit_is_accepted() {
        let request = request_with("GET /ws HTTP/1.1", "");
        let limits = HandshakeLimits {
            max_header_bytes: request.len(),
            ..HandshakeLimits::default()
        };
        assert!(parse_upgrade(request.as_bytes(), &limits)
            .unwrap()
            .is_some());
    }

    #[test]
    fn up_to_64_headers_are_accepted() {
        let filler: String = (0..MAX_HEADERS - VALID_HEADERS.len())
            .map(|i| format!("X-Filler-{i}: v\r\n"))
            .collect();
        assert!(parse(&request_with("GET /ws HTTP/1.1", &filler))
            .unwrap()
            .is_some());

        let filler = format!("{filler}X-One-More: v\r\n");
        let error = parse_err(&request_with("GET /ws HTTP/1.1", &filler));
        assert!(matches!(error, HandshakeError::TooManyHeaders { max: 64 }));
        assert_eq!(error.status(), 431);
    }

    #[test]
    fn forwarded_for_fields_are_joined() {
        let extra = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.2\r\n";
        let (upgrade, _) = parse(&request_with("GET /ws HTTP/1.1", extra))
            .unwrap()
            .unwrap();
        assert_eq!(
            upgrade.forwarded_for.as_deref(),
            Some("203.0.113.7, 198.51.100.2")
        );
    }

    #[test]
    fn reject_response_400_has_close_and_body() {
        let response = reject_response(&HandshakeError::InvalidKey);
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(response.contains("\r\nConnection: close\r\n"));
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "Sec-WebSocket-Key must be base64 of 16 bytes\n");
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
    }

    #[test]
    fn reject_response_403_names_origin() {
        let error = HandshakeError::OriginRejected {
            origin: "https://chat.example.com".into(),
        };
        let response = String::from_utf8(reject_response(&error)).unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            body,
            "origin \"https://chat.example.com\" is not allowed: add it to the engine's \
             allowed_origins (under [engine] in im.toml, or the list in \
             IM_ENGINE_ALLOWED_ORIGINS)\n"
        );
    }

    #[test]
    fn rejected_origin_is_cut_and_escaped() {
        let long = format!("https://{}.example\tx", "a".repeat(300));
        let text = HandshakeError::OriginRejected { origin: long }.to_string();
        assert!(
            text.starts_with(&format!("origin \"https://{}...\"", "a".repeat(248))),
            "{text}"
        );
        let tab = HandshakeError::OriginRejected {
            origin: "https://a.example\tx".into(),
        };
        assert!(
            tab.to_string()
                .starts_with("origin \"https://a.example\\tx\""),
            "{tab}"
        );
    }

    #[test]
    fn reject_response_426_names_version_13() {
        let response = reject_response(&HandshakeError::UnsupportedVersion);
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(response.contains("\r\nUpgrade: websocket\r\n"));
        assert!(response.contains("close\r\n"));
    }

    #[test]
    fn reject_response_status_lines() {
        let cases = [
            (
                HandshakeError::OriginRejected {
                    origin: "https://a.example".into(),
                },
                "403 Forbidden",
            ),
            (
                HandshakeError::WrongPath {
                    expected: "/ws".into(),
                },
                "404 Not Found",
            ),
            (HandshakeError::MethodNotAllowed, "405 Method Not Allowed"),
            (
                HandshakeError::HeadersTooLarge { max_bytes: 8192 },
                "431 Request Header Fields Too Large",
            ),
        ];
        for (error, status_line) in cases {
            let response = String::from_utf8(reject_response(&error)).unwrap();
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status_line}\r\n")),
                "{response}"
            );
            assert!(response.contains("Connection: close\r\n"), "{response}");
        }
        let response = String::from_utf8(reject_response(&HandshakeError::MethodNotAllowed));
        assert!(response.unwrap().contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn reject_response_parses_as_http() {
        let response = reject_response(&HandshakeError::NotWebSocketUpgrade);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        let status = parsed.parse(&response).unwrap();
        assert!(status.is_complete());
        assert_eq!(parsed.code, Some(426));
    }
}
