//! Fuzzes `im_ws::parse_upgrade` with arbitrary bytes under three sets of limits, and checks
//! what it accepts and the responses built from its results.

#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use im_ws::{
    accept_response_with_protocol, parse_upgrade, reject_response, HandshakeError, HandshakeLimits,
    UpgradeRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data, &HandshakeLimits::default());
    check(
        data,
        &HandshakeLimits {
            max_header_bytes: 160,
            path: "/chat".to_owned(),
        },
    );
    // A limit inside the input moves the size boundary to where a request may end.
    check(
        data,
        &HandshakeLimits {
            max_header_bytes: data.len() / 2,
            path: "/".to_owned(),
        },
    );
});

fn check(data: &[u8], limits: &HandshakeLimits) {
    match parse_upgrade(data, limits) {
        Ok(Some((request, consumed))) => check_accepted(data, limits, &request, consumed),
        Ok(None) => assert!(
            data.len() < limits.max_header_bytes,
            "incomplete request of {} bytes is not rejected at the limit of {} bytes",
            data.len(),
            limits.max_header_bytes
        ),
        Err(error) => check_rejected(&error),
    }
}

fn check_accepted(
    data: &[u8],
    limits: &HandshakeLimits,
    request: &UpgradeRequest,
    consumed: usize,
) {
    assert!(
        consumed <= data.len(),
        "consumed {consumed} of {} bytes",
        data.len()
    );
    assert!(
        consumed <= limits.max_header_bytes,
        "consumed {consumed} bytes above the limit of {}",
        limits.max_header_bytes
    );
    assert_eq!(request.path, limits.path);
    assert_eq!(request.key.len(), 24, "key {:?}", request.key);
    let key = BASE64.decode(&request.key).expect("accepted key is base64");
    assert_eq!(key.len(), 16, "key {:?}", request.key);

    // The bytes after the header block belong to the WebSocket stream and change nothing.
    let head = parse_upgrade(&data[..consumed], limits).expect("header block alone is accepted");
    assert_eq!(head, Some((request.clone(), consumed)));
    // One byte less and the header block has not ended.
    let short = parse_upgrade(&data[..consumed - 1], limits);
    assert!(
        matches!(short, Ok(None)),
        "prefix of {consumed} - 1 bytes gives {short:?}"
    );

    let protocol = request.protocols.first().map(String::as_str);
    let response = accept_response_with_protocol(request, protocol);
    assert_eq!(parse_response(&response), 101);
}

fn check_rejected(error: &HandshakeError) {
    let status = error.status();
    assert!(
        matches!(status, 400 | 403..=405 | 426 | 431 | 505),
        "status {status} for {error:?}"
    );
    assert_eq!(parse_response(&reject_response(error)), status, "{error:?}");
}

/// Parses a whole HTTP response, checks that the body matches `Content-Length`, and returns the
/// status code.
fn parse_response(response: &[u8]) -> u16 {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(response) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        other => panic!(
            "response does not parse: {other:?}: {:?}",
            String::from_utf8_lossy(response)
        ),
    };
    let content_length = parsed
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |header| {
            let value = String::from_utf8_lossy(header.value);
            value.parse::<usize>().expect("Content-Length is a number")
        });
    assert_eq!(response.len() - head_len, content_length);
    parsed.code.expect("complete response has a status code")
}
