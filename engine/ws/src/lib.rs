//! Sans-IO WebSocket (RFC 6455) server codec: the HTTP upgrade handshake, frame parsing and
//! encoding, and message assembly.
//!
//! The codec does no IO and never blocks. The caller reads socket bytes into a
//! [`bytes::BytesMut`], passes them to [`parse_upgrade`] and then to [`Decoder::decode`], and
//! writes the bytes that the `encode_*` functions append. Nothing is allocated for a size that
//! the peer only declares: frame and message limits are checked against each frame header before
//! its payload is read.
//!
//! Server frames are never masked, and no extension (such as permessage-deflate) is negotiated,
//! so frames with reserved bits set are rejected.

mod close;
mod decoder;
mod error;
mod frame;
mod handshake;

pub use close::{close_code, CloseFrame};
pub use decoder::{Decoder, DecoderLimits, Message};
pub use error::{HandshakeError, ProtocolError};
pub use frame::{
    apply_mask, encode_binary, encode_close, encode_close_empty, encode_header, encode_ping,
    encode_pong, encode_text, encoded_frame_len, frame_header_len, parse_header, FrameHeader,
    OpCode, MAX_CONTROL_PAYLOAD,
};
pub use handshake::{
    accept_key, accept_response, accept_response_with_protocol, parse_upgrade, reject_response,
    HandshakeLimits, UpgradeRequest, MAX_HEADERS,
};
