//! Errors of the upgrade handshake and of the frame decoder, and their mapping to the wire:
//! an HTTP status for a rejected upgrade and a close code for a protocol violation.
//!
//! Every error here is the peer's fault. The engine responds to a [`HandshakeError`] with
//! [`reject_response`](crate::reject_response) and to a [`ProtocolError`] with a close frame that
//! carries [`ProtocolError::close_code`], then closes the connection.

use crate::close::close_code;

/// Reasons to reject an HTTP upgrade request.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The request is not valid HTTP/1.x.
    #[error("malformed HTTP request")]
    Malformed(#[source] httparse::Error),
    /// The header block passed the configured maximum size before it ended.
    #[error("request header block is larger than {max_bytes} bytes")]
    HeadersTooLarge {
        /// The configured maximum, in bytes.
        max_bytes: usize,
    },
    /// The request has more header fields than the parser accepts.
    #[error("request has more than {max} header fields")]
    TooManyHeaders {
        /// The maximum number of header fields.
        max: usize,
    },
    /// The request is HTTP/1.0, but a WebSocket upgrade needs HTTP/1.1.
    #[error("HTTP version not supported, a WebSocket upgrade needs HTTP/1.1")]
    UnsupportedHttpVersion,
    /// The request target is not the WebSocket endpoint.
    #[error("request path not found, the WebSocket endpoint is {expected}")]
    WrongPath {
        /// The configured endpoint path.
        expected: String,
    },
    /// The method is not GET.
    #[error("method not allowed, a WebSocket upgrade must use GET")]
    MethodNotAllowed,
    /// A required header field is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header field that must appear once appears more than once.
    #[error("duplicate {0} header")]
    DuplicateHeader(&'static str),
    /// The `Upgrade` header is absent or does not list the `websocket` token.
    #[error("Upgrade header must contain \"websocket\"")]
    NotWebSocketUpgrade,
    /// The `Connection` header is absent or does not list the `upgrade` token.
    #[error("Connection header must contain \"upgrade\"")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` is absent or not 13.
    #[error("unsupported Sec-WebSocket-Version, only 13 is supported")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is not base64 of exactly 16 bytes.
    #[error("Sec-WebSocket-Key must be base64 of 16 bytes")]
    InvalidKey,
    /// The request declares a body (`Content-Length` above 0 or `Transfer-Encoding`), which an
    /// upgrade request must not have.
    #[error("upgrade request must not have a body")]
    BodyNotAllowed,
    /// The engine rejected the `Origin` header. The codec never returns this variant itself.
    #[error(
        "origin \"{}\" is not allowed: add it to the engine's allowed_origins (under [engine] in \
         im.toml, or the list in IM_ENGINE_ALLOWED_ORIGINS)",
        shown_origin(.origin)
    )]
    OriginRejected {
        /// The `Origin` header as the request sent it.
        origin: String,
    },
}

/// Characters of a rejected origin that the error repeats. A longer origin is cut, followed
/// by "...", so that a large header cannot inflate the reply.
const MAX_SHOWN_ORIGIN_CHARS: usize = 256;

/// Returns `origin` for the error text: cut to [`MAX_SHOWN_ORIGIN_CHARS`] characters, with
/// control characters such as a tab written as escapes, so the text stays one line.
fn shown_origin(origin: &str) -> String {
    let mut text: String = origin
        .chars()
        .take(MAX_SHOWN_ORIGIN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if origin.chars().nth(MAX_SHOWN_ORIGIN_CHARS).is_some() {
        text.push_str("...");
    }
    text
}

impl HandshakeError {
    /// Returns the HTTP status code for the rejection response.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_)
            | Self::MissingHeader(_)
            | Self::DuplicateHeader(_)
            | Self::MissingConnectionUpgrade
            | Self::InvalidKey
            | Self::BodyNotAllowed => 400,
            Self::OriginRejected { .. } => 403,
            Self::WrongPath { .. } => 404,
            Self::MethodNotAllowed => 405,
            Self::NotWebSocketUpgrade | Self::UnsupportedVersion => 426,
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::UnsupportedHttpVersion => 505,
        }
    }
}

/// Violations of RFC 6455 framing, or of the configured size limits, by the peer.
///
/// After any of these the connection is unusable: the decoder and the input buffer are left in
/// an unspecified state, and the engine closes the connection with [`Self::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A client frame arrived without a masking key (RFC 6455 section 5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// RSV1, RSV2 or RSV3 is set, but no extension was negotiated.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsSet,
    /// The opcode is one of the reserved values 0x3-0x7 or 0xB-0xF.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame (close, ping, pong) has FIN clear.
    #[error("control frame is fragmented")]
    FragmentedControlFrame,
    /// A control frame declares a payload above 125 bytes.
    #[error("control frame payload of {0} bytes is above 125")]
    ControlFrameTooLarge(u64),
    /// A 64-bit payload length has its most significant bit set.
    #[error("64-bit payload length has its most significant bit set")]
    InvalidPayloadLength,
    /// A continuation frame arrived while no fragmented message was in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A text or binary frame arrived while a fragmented message was in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A data frame declares a payload above the configured frame limit.
    #[error("frame payload of {declared} bytes is above the limit of {max} bytes")]
    FrameTooLarge {
        /// The payload length from the frame header, in bytes.
        declared: u64,
        /// The configured `max_frame_payload`, in bytes.
        max: usize,
    },
    /// The message assembled so far, plus the frame being read, is above the message limit.
    #[error("message of at least {size} bytes is above the limit of {max} bytes")]
    MessageTooLarge {
        /// Bytes already assembled plus the declared payload of the current frame.
        size: u64,
        /// The configured `max_message_size`, in bytes.
        max: usize,
    },
    /// A text message is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame has a 1-byte payload, too short for a status code.
    #[error("close frame payload of 1 byte is too short for a status code")]
    InvalidClosePayload,
    /// A close frame carries a status code that must not appear on the wire.
    #[error("close code {0} is not valid on the wire")]
    InvalidCloseCode(u16),
    /// A close frame's reason is not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl ProtocolError {
    /// Returns the close code to send before closing: 1002 for a framing violation, 1007 for
    /// invalid UTF-8, 1009 for a frame or message above the limits.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason => close_code::INVALID_PAYLOAD,
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } => {
                close_code::MESSAGE_TOO_BIG
            }
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_status_per_variant() {
        let cases = [
            (HandshakeError::Malformed(httparse::Error::Token), 400),
            (HandshakeError::HeadersTooLarge { max_bytes: 1 }, 431),
            (HandshakeError::TooManyHeaders { max: 64 }, 431),
            (HandshakeError::UnsupportedHttpVersion, 505),
            (
                HandshakeError::WrongPath {
                    expected: "/ws".into(),
                },
                404,
            ),
            (HandshakeError::MethodNotAllowed, 405),
            (HandshakeError::MissingHeader("Host"), 400),
            (HandshakeError::DuplicateHeader("Host"), 400),
            (HandshakeError::NotWebSocketUpgrade, 426),
            (HandshakeError::MissingConnectionUpgrade, 400),
            (HandshakeError::UnsupportedVersion, 426),
            (HandshakeError::InvalidKey, 400),
            (HandshakeError::BodyNotAllowed, 400),
            (
                HandshakeError::OriginRejected {
                    origin: "https://a.example".into(),
                },
                403,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status(), status, "{error:?}");
        }
    }

    #[test]
    fn protocol_close_code_per_variant() {
        let cases = [
            (ProtocolError::UnmaskedFrame, 1002),
            (ProtocolError::ReservedBitsSet, 1002),
            (ProtocolError::UnknownOpcode(3), 1002),
            (ProtocolError::FragmentedControlFrame, 1002),
            (ProtocolError::ControlFrameTooLarge(126), 1002),
            (ProtocolError::InvalidPayloadLength, 1002),
            (ProtocolError::UnexpectedContinuation, 1002),
            (ProtocolError::ExpectedContinuation, 1002),
            (
                ProtocolError::FrameTooLarge {
                    declared: 2,
                    max: 1,
                },
                1009,
            ),
            (ProtocolError::MessageTooLarge { size: 2, max: 1 }, 1009),
            (ProtocolError::InvalidUtf8, 1007),
            (ProtocolError::InvalidClosePayload, 1002),
            (ProtocolError::InvalidCloseCode(1005), 1002),
            (ProtocolError::InvalidCloseReason, 1007),
        ];
        for (error, code) in cases {
            assert_eq!(error.close_code(), code, "{error:?}");
        }
    }
}
