//! Fuzzes `im_ws::Decoder` with an arbitrary client byte stream, fed once whole and once in
//! chunks, and checks that both give the same messages and error, and that every message
//! respects the limits.
//!
//! Input layout: byte 0 selects the limits, byte 1 is the message limit of the small limits,
//! bytes 2 and 3 are the split seed (big-endian), and the rest is the stream.

#![no_main]

use bytes::BytesMut;
use im_ws::{close_code, Decoder, DecoderLimits, Message, ProtocolError, MAX_CONTROL_PAYLOAD};
use libfuzzer_sys::fuzz_target;

/// Length of the setup bytes in front of the stream.
const SETUP_LEN: usize = 4;
/// Split seed that feeds the stream in one chunk.
const SPLIT_WHOLE: u16 = 0;
/// Split seed that feeds the stream one byte at a time.
const SPLIT_BYTES: u16 = 1;
/// Chunks of other split seeds are 0 to this many bytes long.
const MAX_CHUNK: u16 = 40;

fuzz_target!(|data: &[u8]| {
    let Some((setup, stream)) = data.split_first_chunk::<SETUP_LEN>() else {
        return;
    };
    let limits = limits(setup[0], setup[1]);
    let split_seed = u16::from_be_bytes([setup[2], setup[3]]);

    let whole = decode_chunks(limits, stream, &[stream.len()]);
    let split = decode_chunks(limits, stream, &chunk_lengths(stream.len(), split_seed));
    assert_eq!(split, whole, "split seed {split_seed} changes the outcome");
});

/// Messages decoded from a stream, then the error that stopped decoding or the number of bytes
/// left in the input buffer.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    end: Result<usize, ProtocolError>,
}

/// Picks the limits: 0xFF for no limit, 0x80-0xFE for the defaults, and otherwise a frame limit
/// of `mode` bytes and a message limit of `message_size` bytes.
fn limits(mode: u8, message_size: u8) -> DecoderLimits {
    match mode {
        0xFF => DecoderLimits {
            max_frame_payload: usize::MAX,
            max_message_size: usize::MAX,
        },
        0x80..=0xFE => DecoderLimits::default(),
        frame_size => DecoderLimits {
            max_frame_payload: usize::from(frame_size),
            max_message_size: usize::from(message_size),
        },
    }
}

/// Splits `len` bytes into chunk lengths that add up to `len`. Other seeds than
/// [`SPLIT_WHOLE`] and [`SPLIT_BYTES`] seed a xorshift generator, and chunks may be empty.
fn chunk_lengths(len: usize, seed: u16) -> Vec<usize> {
    match seed {
        SPLIT_WHOLE => return vec![len],
        SPLIT_BYTES => return vec![1; len],
        _ => {}
    }
    let mut state = seed;
    let mut lengths = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 7;
        state ^= state >> 9;
        state ^= state << 8;
        let chunk = usize::from(state % (MAX_CHUNK + 1)).min(left);
        lengths.push(chunk);
        left -= chunk;
    }
    lengths
}

/// Feeds `stream` to a new decoder in chunks of `lengths`, decoding after each chunk until
/// more bytes are needed, and stops at the first error.
fn decode_chunks(limits: DecoderLimits, stream: &[u8], lengths: &[usize]) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut rest = stream;
    for &length in lengths {
        let (chunk, tail) = rest.split_at(length);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    check_message(&message, &limits);
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => {
                    check_error(&error, &limits);
                    return Outcome {
                        messages,
                        end: Err(error),
                    };
                }
            }
        }
    }
    assert!(
        rest.is_empty(),
        "chunk lengths leave {} bytes unfed",
        rest.len()
    );
    assert!(payload_bytes(&messages) + buf.len() <= stream.len());
    Outcome {
        messages,
        end: Ok(buf.len()),
    }
}

fn check_message(message: &Message, limits: &DecoderLimits) {
    match message {
        Message::Binary(payload) => {
            assert!(payload.len() <= limits.max_message_size, "{limits:?}");
        }
        Message::Text(payload) => {
            assert!(payload.len() <= limits.max_message_size, "{limits:?}");
            assert!(std::str::from_utf8(payload).is_ok(), "text is not UTF-8");
        }
        Message::Ping(payload) | Message::Pong(payload) => {
            assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        }
        Message::Close(Some(close)) => {
            assert!(close_code::is_valid_received(close.code), "{close:?}");
            assert!(close.reason.len() <= MAX_CONTROL_PAYLOAD - 2, "{close:?}");
        }
        Message::Close(None) => {}
    }
}

fn check_error(error: &ProtocolError, limits: &DecoderLimits) {
    match *error {
        ProtocolError::FrameTooLarge { declared, max } => {
            assert_eq!(max, limits.max_frame_payload);
            assert!(declared > max as u64, "{error:?}");
        }
        ProtocolError::MessageTooLarge { size, max } => {
            assert_eq!(max, limits.max_message_size);
            assert!(size > max as u64, "{error:?}");
        }
        _ => {}
    }
    assert!(
        matches!(error.close_code(), 1002 | 1007 | 1009),
        "close code {} for {error:?}",
        error.close_code()
    );
}

/// Counts the stream bytes that the messages carry, the close code included.
fn payload_bytes(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|message| match message {
            Message::Binary(payload)
            | Message::Text(payload)
            | Message::Ping(payload)
            | Message::Pong(payload) => payload.len(),
            Message::Close(Some(close)) => 2 + close.reason.len(),
            Message::Close(None) => 0,
        })
        .sum()
}
