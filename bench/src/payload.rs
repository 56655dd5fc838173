//! The content of bench messages. A fixed header names the run, the stream and the message and
//! gives the message's intended send time, so the receiving connection can measure latency and
//! find duplicates. Padding fills the rest up to the requested size.

/// Bytes of the header, the smallest content size.
pub(crate) const HEADER_BYTES: usize = 32;

/// Marks bench content, so that foreign messages are not mistaken for it.
const MAGIC: [u8; 4] = *b"imb1";

/// The header of one bench message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Payload {
    /// Random id of the run, so messages of an earlier run are recognised.
    pub(crate) run_id: u64,
    /// The sending stream.
    pub(crate) stream: u32,
    /// Position of the message in its stream.
    pub(crate) index: u64,
    /// Microseconds from the run's start to the message's intended send time.
    pub(crate) intended_us: u64,
}

impl Payload {
    /// Encodes the header, padded with `x` to `size` bytes (at least [`HEADER_BYTES`]).
    pub(crate) fn encode(&self, size: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(size.max(HEADER_BYTES));
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&self.run_id.to_le_bytes());
        bytes.extend_from_slice(&self.stream.to_le_bytes());
        bytes.extend_from_slice(&self.index.to_le_bytes());
        bytes.extend_from_slice(&self.intended_us.to_le_bytes());
        bytes.resize(size.max(HEADER_BYTES), b'x');
        bytes
    }

    /// Decodes the header of `content`, or returns `None` when it is not bench content.
    pub(crate) fn decode(content: &[u8]) -> Option<Payload> {
        let header = content.get(..HEADER_BYTES)?;
        if header[..4] != MAGIC {
            return None;
        }
        Some(Payload {
            run_id: u64::from_le_bytes(header[4..12].try_into().ok()?),
            stream: u32::from_le_bytes(header[12..16].try_into().ok()?),
            index: u64::from_le_bytes(header[16..24].try_into().ok()?),
            intended_us: u64::from_le_bytes(header[24..32].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        Payload {
            run_id: 0x0123_4567_89ab_cdef,
            stream: 42,
            index: 1_000_000,
            intended_us: 7_500_000,
        }
    }

    #[test]
    fn round_trips_with_padding() {
        let bytes = payload().encode(100);

        assert_eq!(bytes.len(), 100);
        assert!(bytes[HEADER_BYTES..].iter().all(|byte| *byte == b'x'));
        assert_eq!(Payload::decode(&bytes), Some(payload()));
    }

    #[test]
    fn small_size_keeps_whole_header() {
        let bytes = payload().encode(4);

        assert_eq!(bytes.len(), HEADER_BYTES);
        assert_eq!(Payload::decode(&bytes), Some(payload()));
    }

    #[test]
    fn foreign_content_is_none() {
        assert_eq!(Payload::decode(b"hello"), None);
        assert_eq!(Payload::decode(&[b'y'; 64]), None);
    }
}
