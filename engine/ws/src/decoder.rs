//! Message assembly from client frames: fragmentation, control frames interleaved with
//! fragments, frame and message size limits, and UTF-8 checks of text messages.
//!
//! The caller owns the input buffer. The decoder keeps only the state of a fragmented message in
//! progress, including the unmasked payload received so far for it. An unfragmented message is
//! unmasked in place and split off the input buffer with no copy.

use bytes::{Buf, Bytes, BytesMut};

use crate::close::{self, CloseFrame};
use crate::error::ProtocolError;
use crate::frame::{self, FrameHeader, OpCode};

/// Size limits the decoder enforces as soon as a frame header shows they are passed, before the
/// payload arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Maximum payload of one data frame, in bytes, default 64 KiB. A larger declared payload
    /// fails with [`ProtocolError::FrameTooLarge`] (close code 1009). Control frames are held to
    /// 125 bytes whatever this is.
    pub max_frame_payload: usize,
    /// Maximum size of a whole message, all fragments added up, in bytes, default 64 KiB. A
    /// message that passes it fails with [`ProtocolError::MessageTooLarge`] (close code 1009) as
    /// soon as the frame header that makes the sum pass it is parsed.
    pub max_message_size: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_frame_payload: 64 * 1024,
            max_message_size: 64 * 1024,
        }
    }
}

/// A whole message, or a control frame, received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Binary message, all fragments joined.
    Binary(Bytes),
    /// Text message, all fragments joined, checked to be valid UTF-8.
    Text(Bytes),
    /// Ping. The engine replies with a pong that carries the same payload.
    Ping(Bytes),
    /// Pong.
    Pong(Bytes),
    /// Close frame, with `None` when its payload was empty.
    Close(Option<CloseFrame>),
}

/// Kind of a fragmented data message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// Assembles client frames into [`Message`]s, one connection each.
///
/// Between messages it owns no heap allocation and is 24 bytes on 64-bit targets. While a
/// fragmented message is in progress, its state is boxed and its buffer grows with the
/// payload that has arrived, up to `max_message_size`.
#[derive(Debug)]
pub struct Decoder {
    limits: DecoderLimits,
    /// The fragmented message in progress, or `None` between messages. Boxed because few
    /// clients fragment, and every idle connection keeps its decoder.
    fragmented: Option<Box<Fragmented>>,
}

/// State of a fragmented message in progress.
#[derive(Debug)]
struct Fragmented {
    kind: DataKind,
    /// Unmasked payload received so far.
    payload: BytesMut,
    /// Length of the prefix of `payload` already checked to be UTF-8, for text messages. A code
    /// point split across fragments stays after this prefix until the next fragment completes it.
    utf8_checked: usize,
}

impl Decoder {
    /// Creates a decoder with no message in progress.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            fragmented: None,
        }
    }

    /// Consumes whole frames from the front of `buf` until one completes a message or is a
    /// control frame, and returns it. Returns `Ok(None)` when more bytes are needed, and leaves
    /// the bytes of an incomplete frame in `buf`.
    ///
    /// Control frames are returned at once, also between the fragments of a message.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the client breaks RFC 6455 or the limits. The connection must
    /// then be closed with [`ProtocolError::close_code`], because the decoder and `buf` are left
    /// in an unspecified state.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        loop {
            let Some(header) = frame::parse_header(buf)? else {
                return Ok(None);
            };
            let payload_len = self.check_header(&header)?;
            if buf.len() - header.header_len < payload_len {
                return Ok(None);
            }

            buf.advance(header.header_len);
            frame::apply_mask(&mut buf[..payload_len], header.mask);
            if let Some(message) = self.accept_frame(header, payload_len, buf)? {
                return Ok(Some(message));
            }
        }
    }

    /// Checks a header against the fragmentation state and the limits, before its payload has
    /// arrived, and returns its payload length. Changes no state, because the same header is
    /// checked again on each call until its payload is complete.
    fn check_header(&self, header: &FrameHeader) -> Result<usize, ProtocolError> {
        let assembled = match (header.opcode, &self.fragmented) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Continuation, Some(fragmented)) => fragmented.payload.len(),
            (OpCode::Text | OpCode::Binary, None) => 0,
            // parse_header already held control payloads to 125 bytes, so the cast is lossless.
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => {
                return Ok(header.payload_len as usize)
            }
        };

        let declared = header.payload_len;
        if declared > self.limits.max_frame_payload as u64 {
            return Err(ProtocolError::FrameTooLarge {
                declared,
                max: self.limits.max_frame_payload,
            });
        }
        let size = assembled as u64 + declared;
        if size > self.limits.max_message_size as u64 {
            return Err(ProtocolError::MessageTooLarge {
                size,
                max: self.limits.max_message_size,
            });
        }
        // At most max_frame_payload, a usize, so the cast is lossless.
        Ok(declared as usize)
    }

    /// Takes the unmasked payload of `payload_len` bytes from the front of `buf` and returns a
    /// message if this frame completes one.
    fn accept_frame(
        &mut self,
        header: FrameHeader,
        payload_len: usize,
        buf: &mut BytesMut,
    ) -> Result<Option<Message>, ProtocolError> {
        let message = match header.opcode {
            OpCode::Ping => Message::Ping(split_payload(buf, payload_len)),
            OpCode::Pong => Message::Pong(split_payload(buf, payload_len)),
            OpCode::Close => {
                let close = close::parse_close_payload(&buf[..payload_len])?;
                buf.advance(payload_len);
                Message::Close(close)
            }
            OpCode::Text | OpCode::Binary if header.fin => {
                let payload = split_payload(buf, payload_len);
                whole_message(header.opcode, payload)?
            }
            OpCode::Text | OpCode::Binary => {
                self.start_fragmented(header.opcode, &buf[..payload_len])?;
                buf.advance(payload_len);
                return Ok(None);
            }
            OpCode::Continuation => {
                self.append_fragment(&buf[..payload_len])?;
                buf.advance(payload_len);
                if !header.fin {
                    return Ok(None);
                }
                self.finish_fragmented()?
            }
        };
        Ok(Some(message))
    }

    fn start_fragmented(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), ProtocolError> {
        let kind = match opcode {
            OpCode::Text => DataKind::Text,
            _ => DataKind::Binary,
        };
        let fragmented = self.fragmented.insert(Box::new(Fragmented {
            kind,
            payload: BytesMut::new(),
            utf8_checked: 0,
        }));
        fragmented.append(payload)
    }

    /// Appends a continuation frame's payload to the message in progress, which
    /// `check_header` has made sure exists.
    fn append_fragment(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        match &mut self.fragmented {
            Some(fragmented) => fragmented.append(payload),
            None => Err(ProtocolError::UnexpectedContinuation),
        }
    }

    /// Hands over the assembled message and leaves the decoder between messages, with no heap
    /// memory held.
    fn finish_fragmented(&mut self) -> Result<Message, ProtocolError> {
        let Some(fragmented) = self.fragmented.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let Fragmented {
            kind,
            payload,
            utf8_checked,
        } = *fragmented;
        let payload = payload.freeze();
        match kind {
            // A code point still incomplete after the last fragment is invalid.
            DataKind::Text if utf8_checked != payload.len() => Err(ProtocolError::InvalidUtf8),
            DataKind::Text => Ok(Message::Text(payload)),
            DataKind::Binary => Ok(Message::Binary(payload)),
        }
    }
}

impl Fragmented {
    /// Appends a fragment and, for text, checks the new bytes so invalid UTF-8 fails at the
    /// fragment that contains it rather than at the end of the message.
    fn append(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        self.payload.extend_from_slice(payload);
        if self.kind != DataKind::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.payload[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.payload.len(),
            // An incomplete code point at the end may be completed by the next fragment.
            Err(error) if error.error_len().is_none() => self.utf8_checked += error.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }
}

/// Splits the first `len` bytes off `buf`. When they are all of `buf`, as for a lone frame
/// read on its own, it takes the buffer whole, because `split_to` would allocate a shared
/// owner for the two halves.
fn split_payload(buf: &mut BytesMut, len: usize) -> Bytes {
    if len == buf.len() {
        std::mem::take(buf).freeze()
    } else {
        buf.split_to(len).freeze()
    }
}

/// Builds the message for an unfragmented text or binary frame.
fn whole_message(opcode: OpCode, payload: Bytes) -> Result<Message, ProtocolError> {
    if opcode == OpCode::Binary {
        return Ok(Message::Binary(payload));
    }
    std::str::from_utf8(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
    Ok(Message::Text(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::{client_frame, client_frame_with_length};

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONTINUATION: u8 = 0x0;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    fn decoder() -> Decoder {
        Decoder::new(DecoderLimits::default())
    }

    fn input(frames: &[Vec<u8>]) -> BytesMut {
        BytesMut::from(&frames.concat()[..])
    }

    /// Decodes every message in `buf`, stopping at the first error.
    fn decode_all(
        decoder: &mut Decoder,
        buf: &mut BytesMut,
    ) -> Result<Vec<Message>, ProtocolError> {
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode(buf)? {
            messages.push(message);
        }
        Ok(messages)
    }

    fn decode_err(frames: &[Vec<u8>]) -> ProtocolError {
        decode_all(&mut decoder(), &mut input(frames)).expect_err("input must be rejected")
    }

    #[test]
    fn decoder_size_is_small() {
        assert!(
            std::mem::size_of::<Decoder>() <= 24,
            "Decoder is {} bytes",
            std::mem::size_of::<Decoder>()
        );
    }

    #[test]
    fn single_text_and_binary() {
        let mut buf = input(&[
            client_frame(true, TEXT, "héllo".as_bytes()),
            client_frame(true, BINARY, &[1, 2, 3]),
        ]);
        let messages = decode_all(&mut decoder(), &mut buf).unwrap();
        assert_eq!(
            messages,
            [
                Message::Text(Bytes::from("héllo")),
                Message::Binary(Bytes::from_static(&[1, 2, 3])),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn lone_frame_takes_whole_buffer() {
        for (opcode, payload) in [(BINARY, &b"\x08\x04\x10\x01"[..]), (PING, &b"hi"[..])] {
            let mut buf = input(&[client_frame(true, opcode, payload)]);
            let message = decoder().decode(&mut buf).unwrap();
            let expected = match opcode {
                BINARY => Message::Binary(Bytes::copy_from_slice(payload)),
                _ => Message::Ping(Bytes::copy_from_slice(payload)),
            };
            assert_eq!(message, Some(expected));
            assert!(buf.is_empty());
            assert_eq!(
                buf.capacity(),
                0,
                "the buffer's allocation moved to the message"
            );
        }
    }

    #[test]
    fn unmasked_frame_is_protocol_error() {
        let mut frame = client_frame(true, TEXT, b"hi");
        frame[1] &= 0x7F;
        let error = decode_err(&[frame]);
        assert_eq!(error, ProtocolError::UnmaskedFrame);
        assert_eq!(error.close_code(), 1002);
    }

    #[test]
    fn reserved_bits_are_protocol_error() {
        for rsv in [0x40, 0x20, 0x10] {
            let mut frame = client_frame(true, TEXT, b"hi");
            frame[0] |= rsv;
            let error = decode_err(&[frame]);
            assert_eq!(error, ProtocolError::ReservedBitsSet);
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn unknown_opcodes_are_protocol_error() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let error = decode_err(&[client_frame(true, opcode, b"")]);
            assert_eq!(error, ProtocolError::UnknownOpcode(opcode));
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn fragmented_control_frame_is_protocol_error() {
        for opcode in [CLOSE, PING, PONG] {
            let error = decode_err(&[client_frame(false, opcode, b"")]);
            assert_eq!(error, ProtocolError::FragmentedControlFrame);
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn control_payload_above_125_is_protocol_error() {
        for opcode in [CLOSE, PING, PONG] {
            let error = decode_err(&[client_frame(true, opcode, &[0; 126])]);
            assert_eq!(error, ProtocolError::ControlFrameTooLarge(126));
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn control_payload_of_125_is_accepted() {
        let mut buf = input(&[client_frame(true, PING, &[9; 125])]);
        let message = decoder().decode(&mut buf).unwrap();
        assert_eq!(message, Some(Message::Ping(Bytes::from(vec![9; 125]))));
    }

    #[test]
    fn length_with_msb_set_is_protocol_error() {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(u64::MAX).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        let error = decode_err(&[frame]);
        assert_eq!(error, ProtocolError::InvalidPayloadLength);
        assert_eq!(error.close_code(), 1002);
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        let mut buf = input(&[
            client_frame_with_length(true, TEXT, b"a", 2),
            client_frame_with_length(true, BINARY, b"b", 8),
            client_frame_with_length(true, PING, b"c", 8),
        ]);
        let messages = decode_all(&mut decoder(), &mut buf).unwrap();
        assert_eq!(
            messages,
            [
                Message::Text(Bytes::from_static(b"a")),
                Message::Binary(Bytes::from_static(b"b")),
                Message::Ping(Bytes::from_static(b"c")),
            ]
        );
    }

    #[test]
    fn continuation_without_message_is_protocol_error() {
        let error = decode_err(&[client_frame(true, CONTINUATION, b"x")]);
        assert_eq!(error, ProtocolError::UnexpectedContinuation);
        assert_eq!(error.close_code(), 1002);
    }

    #[test]
    fn data_frame_during_fragmented_message_is_protocol_error() {
        for opcode in [TEXT, BINARY] {
            let error = decode_err(&[
                client_frame(false, BINARY, b"a"),
                client_frame(true, opcode, b"b"),
            ]);
            assert_eq!(error, ProtocolError::ExpectedContinuation);
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn control_frames_inside_fragmented_message_return_at_once() {
        let mut decoder = decoder();
        let mut buf = input(&[
            client_frame(false, TEXT, b"one "),
            client_frame(true, PING, b"p"),
            client_frame(false, CONTINUATION, b"two "),
            client_frame(true, PONG, b"q"),
            client_frame(true, CONTINUATION, b"three"),
        ]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Message::Pong(Bytes::from_static(b"q")))
        );
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static(b"one two three")))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn close_inside_fragmented_message_returns_at_once() {
        let mut buf = input(&[
            client_frame(false, BINARY, b"part"),
            client_frame(true, CLOSE, b"\x03\xe8"),
        ]);
        let message = decoder().decode(&mut buf).unwrap();
        assert_eq!(
            message,
            Some(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: String::new(),
            })))
        );
    }

    #[test]
    fn frame_above_max_frame_payload_fails_before_payload() {
        // The header declares 2^62 bytes, and only 10 payload bytes follow.
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend_from_slice(&[0; 10]);
        let mut buf = BytesMut::from(&frame[..]);
        let error = decoder().decode(&mut buf).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::FrameTooLarge {
                declared: 1 << 62,
                max: 64 * 1024,
            }
        );
        assert_eq!(error.close_code(), 1009);
    }

    #[test]
    fn frame_limit_needs_header_only() {
        let limits = DecoderLimits {
            max_frame_payload: 100,
            max_message_size: 1000,
        };
        // The whole 8-byte header: 2 bytes, a 16-bit length and the masking key.
        let frame = client_frame(true, BINARY, &[0; 101]);
        let mut buf = BytesMut::from(&frame[..8]);
        let error = Decoder::new(limits).decode(&mut buf).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::FrameTooLarge {
                declared: 101,
                max: 100
            }
        );
    }

    #[test]
    fn frame_at_max_frame_payload_is_accepted() {
        let limits = DecoderLimits {
            max_frame_payload: 100,
            max_message_size: 100,
        };
        let mut buf = input(&[client_frame(true, BINARY, &[5; 100])]);
        let message = Decoder::new(limits).decode(&mut buf).unwrap();
        assert_eq!(message, Some(Message::Binary(Bytes::from(vec![5; 100]))));
    }

    #[test]
    fn single_frame_above_message_limit() {
        let limits = DecoderLimits {
            max_frame_payload: 1000,
            max_message_size: 100,
        };
        let mut buf = input(&[client_frame(true, TEXT, &[b'a'; 101])]);
        let error = Decoder::new(limits).decode(&mut buf).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::MessageTooLarge {
                size: 101,
                max: 100
            }
        );
        assert_eq!(error.close_code(), 1009);
    }

    #[test]
    fn fragments_passing_message_limit_fail() {
        let limits = DecoderLimits {
            max_frame_payload: 64,
            max_message_size: 1000,
        };
        let mut decoder = Decoder::new(limits);
        // 1 + 99 frames of 10 bytes make exactly 1000 bytes, which is allowed.
        let mut frames = vec![client_frame(false, BINARY, &[1; 10])];
        frames.extend((0..99).map(|_| client_frame(false, CONTINUATION, &[1; 10])));
        let mut buf = input(&frames);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());

        // One more byte passes the limit; only the header of that frame is needed to tell.
        let frame = client_frame(true, CONTINUATION, &[1]);
        buf.extend_from_slice(&frame[..6]);
        let error = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::MessageTooLarge {
                size: 1001,
                max: 1000
            }
        );
        assert_eq!(error.close_code(), 1009);
    }

    #[test]
    fn invalid_utf8_text_is_invalid_payload() {
        let error = decode_err(&[client_frame(true, TEXT, b"ok \xff")]);
        assert_eq!(error, ProtocolError::InvalidUtf8);
        assert_eq!(error.close_code(), 1007);
    }

    #[test]
    fn invalid_utf8_in_fragment_fails_at_that_fragment() {
        let mut decoder = decoder();
        let mut buf = input(&[client_frame(false, TEXT, b"ok \xc0\xaf")]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn code_point_split_across_fragments_is_valid() {
        // "€" is E2 82 AC; each fragment boundary splits it.
        let mut buf = input(&[
            client_frame(false, TEXT, b"a\xe2"),
            client_frame(false, CONTINUATION, b"\x82"),
            client_frame(false, CONTINUATION, b""),
            client_frame(true, CONTINUATION, b"\xacb"),
        ]);
        let message = decoder().decode(&mut buf).unwrap();
        assert_eq!(message, Some(Message::Text(Bytes::from("a€b"))));
    }

    #[test]
    fn truncated_code_point_is_invalid() {
        let error = decode_err(&[
            client_frame(false, TEXT, b"a"),
            client_frame(true, CONTINUATION, b"\xe2\x82"),
        ]);
        assert_eq!(error, ProtocolError::InvalidUtf8);
    }

    #[test]
    fn binary_message_is_not_utf8_checked() {
        let mut buf = input(&[
            client_frame(false, BINARY, b"\xff"),
            client_frame(true, CONTINUATION, b"\xfe"),
        ]);
        let message = decoder().decode(&mut buf).unwrap();
        assert_eq!(
            message,
            Some(Message::Binary(Bytes::from_static(b"\xff\xfe")))
        );
    }

    #[test]
    fn close_payload_of_one_byte_is_protocol_error() {
        let error = decode_err(&[client_frame(true, CLOSE, b"\x03")]);
        assert_eq!(error, ProtocolError::InvalidClosePayload);
        assert_eq!(error.close_code(), 1002);
    }

    #[test]
    fn close_code_invalid_on_wire_is_protocol_error() {
        for code in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let error = decode_err(&[client_frame(true, CLOSE, &code.to_be_bytes())]);
            assert_eq!(error, ProtocolError::InvalidCloseCode(code));
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn close_reason_not_utf8_is_invalid_payload() {
        let error = decode_err(&[client_frame(true, CLOSE, b"\x03\xe8\xff\xfe")]);
        assert_eq!(error, ProtocolError::InvalidCloseReason);
        assert_eq!(error.close_code(), 1007);
    }

    #[test]
    fn close_with_code_reason_and_empty() {
        let mut buf = input(&[
            client_frame(true, CLOSE, b"\x0f\xa0bye"),
            client_frame(true, CLOSE, b""),
        ]);
        let messages = decode_all(&mut decoder(), &mut buf).unwrap();
        assert_eq!(
            messages,
            [
                Message::Close(Some(CloseFrame {
                    code: 4000,
                    reason: "bye".into(),
                })),
                Message::Close(None),
            ]
        );
    }

    #[test]
    fn zero_length_frames_work() {
        let mut buf = input(&[
            client_frame(true, TEXT, b""),
            client_frame(true, BINARY, b""),
            client_frame(true, PING, b""),
            client_frame(true, PONG, b""),
            client_frame(false, TEXT, b""),
            client_frame(true, CONTINUATION, b""),
        ]);
        let messages = decode_all(&mut decoder(), &mut buf).unwrap();
        assert_eq!(
            messages,
            [
                Message::Text(Bytes::new()),
                Message::Binary(Bytes::new()),
                Message::Ping(Bytes::new()),
                Message::Pong(Bytes::new()),
                Message::Text(Bytes::new()),
            ]
        );
    }

    #[test]
    fn byte_at_a_time_gives_same_messages() {
        let frames = [
            client_frame(true, TEXT, "héllo wörld".as_bytes()),
            client_frame(false, TEXT, b"split \xe2"),
            client_frame(true, PING, b"ping"),
            client_frame(false, CONTINUATION, b"\x82"),
            client_frame(true, CONTINUATION, b"\xac end"),
            client_frame(
                true,
                BINARY,
                &(0..=255).cycle().take(300).collect::<Vec<u8>>(),
            ),
            client_frame_with_length(true, BINARY, b"long length", 8),
            client_frame(true, BINARY, b""),
            client_frame(true, PONG, b""),
            client_frame(true, CLOSE, b"\x03\xe8done"),
        ];
        let stream = frames.concat();
        let expected = decode_all(&mut decoder(), &mut BytesMut::from(&stream[..])).unwrap();
        assert_eq!(expected.len(), 8);

        let mut decoder = decoder();
        let mut buf = BytesMut::new();
        let mut messages = Vec::new();
        for byte in &stream {
            buf.extend_from_slice(&[*byte]);
            messages.extend(decode_all(&mut decoder, &mut buf).unwrap());
        }
        assert_eq!(messages, expected);
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_frame_stays_in_buffer() {
        let frame = client_frame(true, BINARY, b"abcdef");
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(decoder().decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), frame.len() - 1);
    }

    #[test]
    fn finished_fragmented_message_frees_its_buffer() {
        let mut decoder = decoder();
        let mut buf = input(&[
            client_frame(false, BINARY, &[1; 50]),
            client_frame(true, CONTINUATION, &[2; 50]),
        ]);
        let message = decoder.decode(&mut buf).unwrap();
        assert!(matches!(message, Some(Message::Binary(payload)) if payload.len() == 100));
        assert!(decoder.fragmented.is_none());
    }
}
