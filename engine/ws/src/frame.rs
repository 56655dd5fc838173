//! WebSocket frames (RFC 6455 section 5.2): parsing and checking a client frame header,
//! unmasking a payload, and encoding unmasked server frames.
//!
//! Header parsing checks only what one header shows: reserved bits, opcode, the mask bit and
//! the control-frame rules. Limits and message sequencing belong to the
//! [`Decoder`](crate::Decoder).

use bytes::{BufMut, BytesMut};

use crate::close;
use crate::error::ProtocolError;

/// Maximum payload of a control frame (close, ping, pong), in bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0F;
const MASK_BIT: u8 = 0x80;
const LENGTH_BITS: u8 = 0x7F;
/// Value of the 7-bit length field that announces a 16-bit length.
const LENGTH_16: u8 = 126;
/// Value of the 7-bit length field that announces a 64-bit length.
const LENGTH_64: u8 = 127;
const MASK_KEY_LEN: usize = 4;

/// Frame opcodes defined by RFC 6455. The reserved values have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continues a fragmented text or binary message.
    Continuation = 0x0,
    /// First (or only) frame of a UTF-8 text message.
    Text = 0x1,
    /// First (or only) frame of a binary message.
    Binary = 0x2,
    /// Close handshake.
    Close = 0x8,
    /// Keep-alive request. The peer replies with a pong that carries the same payload.
    Ping = 0x9,
    /// Reply to a ping, or an unsolicited heartbeat.
    Pong = 0xA,
}

impl OpCode {
    /// Converts the 4-bit opcode field. Returns `None` for the reserved values 0x3-0x7 and
    /// 0xB-0xF.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// Checks whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Parsed header of a client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: this frame ends its message.
    pub fin: bool,
    /// Frame opcode.
    pub opcode: OpCode,
    /// Masking key that the payload is XORed with.
    pub mask: [u8; 4],
    /// Payload length as declared by the peer, in bytes. Nothing is allocated for it here.
    pub payload_len: u64,
    /// Header length in bytes (6 to 14), so the payload starts at `buf[header_len..]`.
    pub header_len: usize,
}

/// Parses the client frame header at the front of `buf` without consuming it.
///
/// Returns `Ok(None)` while the header is incomplete. Errors are reported as soon as the bytes
/// that show them have arrived, so a header of 2 bytes is enough to reject a bad opcode.
///
/// # Errors
///
/// [`ProtocolError`] (close code 1002) for reserved bits, a reserved opcode, an unmasked frame,
/// a fragmented control frame, a control payload above 125 bytes, or a 64-bit length with its
/// most significant bit set. Non-minimal length encodings are accepted.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let (fin, opcode) = parse_first_byte(first)?;
    if second & MASK_BIT == 0 {
        return Err(ProtocolError::UnmaskedFrame);
    }
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }

    let Some((payload_len, length_bytes)) = parse_payload_len(buf, second & LENGTH_BITS)? else {
        return Ok(None);
    };
    if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(ProtocolError::ControlFrameTooLarge(payload_len));
    }

    let mask_start = 2 + length_bytes;
    let header_len = mask_start + MASK_KEY_LEN;
    let Some(&[a, b, c, d]) = buf.get(mask_start..header_len) else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask: [a, b, c, d],
        payload_len,
        header_len,
    }))
}

/// Splits the first header byte into FIN and opcode, rejecting reserved bits and opcodes.
fn parse_first_byte(first: u8) -> Result<(bool, OpCode), ProtocolError> {
    // No extension is ever negotiated, so RSV1-3 must be clear (RFC 6455 section 5.2).
    if first & RSV_BITS != 0 {
        return Err(ProtocolError::ReservedBitsSet);
    }
    let bits = first & OPCODE_BITS;
    let opcode = OpCode::from_bits(bits).ok_or(ProtocolError::UnknownOpcode(bits))?;
    Ok((first & FIN_BIT != 0, opcode))
}

/// Reads the payload length announced by the 7-bit field `length7`. Returns the length and the
/// number of extended length bytes, or `Ok(None)` while those bytes are incomplete.
fn parse_payload_len(buf: &[u8], length7: u8) -> Result<Option<(u64, usize)>, ProtocolError> {
    match length7 {
        LENGTH_16 => Ok(buf
            .get(2..4)
            .and_then(|bytes| bytes.try_into().ok())
            .map(|bytes| (u64::from(u16::from_be_bytes(bytes)), 2))),
        LENGTH_64 => {
            let Some(bytes) = buf.get(2..10).and_then(|bytes| bytes.try_into().ok()) else {
                return Ok(None);
            };
            let length = u64::from_be_bytes(bytes);
            // RFC 6455 section 5.2: the most significant bit of a 64-bit length must be 0.
            if length >> 63 != 0 {
                return Err(ProtocolError::InvalidPayloadLength);
            }
            Ok(Some((length, 8)))
        }
        short => Ok(Some((u64::from(short), 0))),
    }
}

/// XORs `payload` with the 4-byte masking key, masking and unmasking alike.
///
/// Works 8 bytes at a time with one `u64` XOR per word, then byte by byte for the tail. The
/// payload must start at the first payload byte of a frame, where the key offset is 0.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let mask_word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = payload.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ mask_word).to_ne_bytes();
    }
    // The words cover a multiple of 4 bytes, so the tail starts at key offset 0.
    for (byte, key) in tail.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Returns the length of an unmasked server frame header for a payload of `payload_len` bytes:
/// 2, 4 or 10.
pub fn frame_header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Returns the whole length (header and payload) of the frame encoded at the front of `buf`,
/// or `None` while its header is incomplete. It reads only the length fields, so it serves
/// frames this crate encoded, masked or not, without checking them.
pub fn encoded_frame_len(buf: &[u8]) -> Option<usize> {
    let [_, second, ..] = *buf else {
        return None;
    };
    let mask_len = if second & MASK_BIT == 0 {
        0
    } else {
        MASK_KEY_LEN
    };
    let (payload_len, length_bytes) = match second & LENGTH_BITS {
        LENGTH_16 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            2,
        ),
        LENGTH_64 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 8),
        short => (u64::from(short), 0),
    };
    let payload_len = usize::try_from(payload_len).ok()?;
    (2 + length_bytes + mask_len).checked_add(payload_len)
}

/// Appends an unmasked, final (FIN set) frame header for a payload of `payload_len` bytes.
///
/// Lets a caller encode the payload straight into `out` after the header, with no copy. A
/// control frame payload must not pass 125 bytes, which only the `encode_*` functions enforce.
pub fn encode_header(opcode: OpCode, payload_len: usize, out: &mut BytesMut) {
    out.reserve(frame_header_len(payload_len));
    out.put_u8(FIN_BIT | opcode as u8);
    match payload_len {
        // Each arm's range makes the cast lossless.
        0..=125 => out.put_u8(payload_len as u8),
        126..=0xFFFF => {
            out.put_u8(LENGTH_16);
            out.put_u16(payload_len as u16);
        }
        _ => {
            out.put_u8(LENGTH_64);
            out.put_u64(payload_len as u64);
        }
    }
}

/// Appends one unmasked, final frame with `payload`.
fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut BytesMut) {
    out.reserve(frame_header_len(payload.len()) + payload.len());
    encode_header(opcode, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends an unmasked binary frame. Server frames are never masked (RFC 6455 section 5.1).
pub fn encode_binary(payload: &[u8], out: &mut BytesMut) {
    encode_frame(OpCode::Binary, payload, out);
}

/// Appends an unmasked text frame.
pub fn encode_text(payload: &str, out: &mut BytesMut) {
    encode_frame(OpCode::Text, payload.as_bytes(), out);
}

/// Appends a ping frame. A payload above 125 bytes is truncated to 125, the control frame limit.
pub fn encode_ping(payload: &[u8], out: &mut BytesMut) {
    encode_frame(OpCode::Ping, control_payload(payload), out);
}

/// Appends a pong frame, normally echoing a ping's payload. A payload above 125 bytes is
/// truncated to 125, the control frame limit.
pub fn encode_pong(payload: &[u8], out: &mut BytesMut) {
    encode_frame(OpCode::Pong, control_payload(payload), out);
}

/// Appends a close frame with `code` and `reason`. The reason is truncated at a character
/// boundary to fit 123 bytes.
///
/// `code` should be one a peer may receive ([`crate::close_code::is_valid_received`]); 1005,
/// 1006 and 1015 are reserved for reporting and must not be sent.
pub fn encode_close(code: u16, reason: &str, out: &mut BytesMut) {
    let reason = close::truncate_reason(reason);
    let payload_len = 2 + reason.len();
    out.reserve(frame_header_len(payload_len) + payload_len);
    encode_header(OpCode::Close, payload_len, out);
    out.put_u16(code);
    out.extend_from_slice(reason.as_bytes());
}

/// Appends a close frame with an empty payload, which carries no status code.
pub fn encode_close_empty(out: &mut BytesMut) {
    encode_header(OpCode::Close, 0, out);
}

fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

/// Builders of client frames for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Masking key used by [`client_frame`].
    pub(crate) const TEST_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Builds a masked client frame with the minimal length encoding.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let length_bytes = match payload.len() {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        client_frame_with_length(fin, opcode, payload, length_bytes)
    }

    /// Builds a masked client frame with `length_bytes` (0, 2 or 8) extended length bytes.
    pub(crate) fn client_frame_with_length(
        fin: bool,
        opcode: u8,
        payload: &[u8],
        length_bytes: usize,
    ) -> Vec<u8> {
        let mut frame = vec![if fin { FIN_BIT | opcode } else { opcode }];
        match length_bytes {
            0 => frame.push(MASK_BIT | payload.len() as u8),
            2 => {
                frame.push(MASK_BIT | LENGTH_16);
                frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                frame.push(MASK_BIT | LENGTH_64);
                frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&TEST_MASK);
        let start = frame.len();
        frame.extend_from_slice(payload);
        apply_mask(&mut frame[start..], TEST_MASK);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn parse_err(bytes: &[u8]) -> ProtocolError {
        parse_header(bytes).expect_err("header must be rejected")
    }

    #[test]
    fn encoded_frame_len_of_each_length_form() {
        for payload_len in [0, 125, 126, 0xFFFF, 0x1_0000] {
            let mut out = BytesMut::new();
            encode_binary(&vec![7; payload_len], &mut out);
            assert_eq!(
                encoded_frame_len(&out),
                Some(out.len()),
                "payload {payload_len}"
            );
            let header = frame_header_len(payload_len);
            assert_eq!(encoded_frame_len(&out[..header - 1]), None);
        }
        let mut masked = vec![0x82, MASK_BIT | 3, 1, 2, 3, 4];
        masked.extend_from_slice(b"abc");
        assert_eq!(encoded_frame_len(&masked), Some(9));
        assert_eq!(encoded_frame_len(&[0x82]), None);
    }

    #[test]
    fn header_short_masked_text() {
        let frame = client_frame(true, 0x1, b"hello");
        let header = parse_header(&frame).unwrap().unwrap();
        assert!(header.fin);
        assert_eq!(header.opcode, OpCode::Text);
        assert_eq!(header.payload_len, 5);
        assert_eq!(header.header_len, 6);
        assert_eq!(header.mask, TEST_MASK);
    }

    #[test]
    fn header_16_and_64_bit_lengths() {
        let frame = client_frame(true, 0x2, &[0; 300]);
        let header = parse_header(&frame).unwrap().unwrap();
        assert_eq!(header.payload_len, 300);
        assert_eq!(header.header_len, 8);

        let frame = client_frame(true, 0x2, &[0; 70_000]);
        let header = parse_header(&frame).unwrap().unwrap();
        assert_eq!(header.payload_len, 70_000);
        assert_eq!(header.header_len, 14);
    }

    #[test]
    fn header_incomplete_at_every_length_returns_none() {
        for frame in [
            client_frame(true, 0x1, b"hi"),
            client_frame(true, 0x2, &[0; 300]),
            client_frame(true, 0x2, &[0; 70_000]),
        ] {
            let header_len = parse_header(&frame).unwrap().unwrap().header_len;
            for end in 0..header_len {
                assert_eq!(
                    parse_header(&frame[..end]),
                    Ok(None),
                    "prefix of {end} bytes"
                );
            }
        }
    }

    #[test]
    fn header_non_minimal_lengths_are_accepted() {
        let frame = client_frame_with_length(true, 0x1, b"hi", 2);
        let header = parse_header(&frame).unwrap().unwrap();
        assert_eq!(header.payload_len, 2);
        assert_eq!(header.header_len, 8);

        let frame = client_frame_with_length(true, 0x9, b"hi", 8);
        let header = parse_header(&frame).unwrap().unwrap();
        assert_eq!(header.payload_len, 2);
        assert_eq!(header.header_len, 14);
    }

    #[test]
    fn header_unmasked_is_rejected() {
        assert_eq!(parse_err(&[0x81, 0x05]), ProtocolError::UnmaskedFrame);
    }

    #[test]
    fn header_reserved_bits_are_rejected() {
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(
                parse_err(&[0x81 | rsv, 0x80]),
                ProtocolError::ReservedBitsSet
            );
        }
    }

    #[test]
    fn header_reserved_opcodes_are_rejected() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                parse_err(&[0x80 | opcode, 0x80]),
                ProtocolError::UnknownOpcode(opcode)
            );
        }
    }

    #[test]
    fn header_fragmented_control_is_rejected() {
        for opcode in [0x8, 0x9, 0xA] {
            assert_eq!(
                parse_err(&[opcode, 0x80]),
                ProtocolError::FragmentedControlFrame
            );
        }
    }

    #[test]
    fn header_control_above_125_is_rejected() {
        let frame = client_frame(true, 0x9, &[0; 126]);
        assert_eq!(parse_err(&frame), ProtocolError::ControlFrameTooLarge(126));
    }

    #[test]
    fn header_64_bit_length_with_msb_is_rejected() {
        let mut frame = vec![0x82, 0x80 | LENGTH_64];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse_err(&frame), ProtocolError::InvalidPayloadLength);
    }

    #[test]
    fn mask_round_trip_every_length() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut payload = original.clone();
            apply_mask(&mut payload, mask);
            let expected: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4])
                .collect();
            assert_eq!(payload, expected, "length {len}");
            apply_mask(&mut payload, mask);
            assert_eq!(payload, original, "length {len}");
        }
    }

    #[test]
    fn header_len_per_size_class() {
        assert_eq!(frame_header_len(0), 2);
        assert_eq!(frame_header_len(125), 2);
        assert_eq!(frame_header_len(126), 4);
        assert_eq!(frame_header_len(0xFFFF), 4);
        assert_eq!(frame_header_len(0x1_0000), 10);
    }

    #[test]
    fn encode_binary_sizes() {
        for len in [0, 125, 126, 0xFFFF, 0x1_0000] {
            let payload = vec![7u8; len];
            let mut out = BytesMut::new();
            encode_binary(&payload, &mut out);
            let header_len = frame_header_len(len);
            assert_eq!(out.len(), header_len + len, "length {len}");
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & MASK_BIT, 0, "server frames are unmasked");
            assert_eq!(&out[header_len..], &payload[..]);
        }
    }

    #[test]
    fn encode_header_length_fields() {
        let mut out = BytesMut::new();
        encode_header(OpCode::Binary, 300, &mut out);
        assert_eq!(&out[..], &[0x82, 126, 0x01, 0x2C]);

        let mut out = BytesMut::new();
        encode_header(OpCode::Binary, 0x1_0000, &mut out);
        assert_eq!(&out[..], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn encode_text_ping_pong() {
        let mut out = BytesMut::new();
        encode_text("hi", &mut out);
        encode_ping(b"p", &mut out);
        encode_pong(b"q", &mut out);
        assert_eq!(
            &out[..],
            &[0x81, 2, b'h', b'i', 0x89, 1, b'p', 0x8A, 1, b'q']
        );
    }

    #[test]
    fn encode_ping_truncates_to_125() {
        let mut out = BytesMut::new();
        encode_ping(&[0; 200], &mut out);
        assert_eq!(out[1], 125);
        assert_eq!(out.len(), 127);
    }

    #[test]
    fn encode_close_code_and_reason() {
        let mut out = BytesMut::new();
        encode_close(1000, "bye", &mut out);
        assert_eq!(&out[..], b"\x88\x05\x03\xe8bye");
    }

    #[test]
    fn encode_close_truncates_reason() {
        let mut out = BytesMut::new();
        encode_close(1001, &"é".repeat(100), &mut out);
        assert_eq!(out[1] as usize, 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn encode_close_empty_has_no_payload() {
        let mut out = BytesMut::new();
        encode_close_empty(&mut out);
        assert_eq!(&out[..], &[0x88, 0x00]);
    }
}
