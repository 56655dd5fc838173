//! Close frames: status code constants, which codes may appear on the wire, and the close
//! payload format (a 2-byte big-endian code followed by a UTF-8 reason, RFC 6455 section 5.5.1).

use crate::error::ProtocolError;

/// Maximum close reason length in bytes: a control frame payload is at most 125 bytes, and the
/// status code takes 2 of them.
pub(crate) const MAX_REASON_BYTES: usize = 123;

pub mod close_code {
    //! Close status codes (RFC 6455 section 7.4) and the check for codes a peer may send.
    //!
    //! | code | name | meaning | should the client reconnect? |
    //! | --- | --- | --- | --- |
    //! | 1000 | [`NORMAL`] | the connection did its job | only when it needs one again |
    //! | 1001 | [`GOING_AWAY`] | server shutting down, or page closed | yes, with backoff |
    //! | 1002 | [`PROTOCOL_ERROR`] | the peer broke RFC 6455 framing | no, it would fail again |
    //! | 1003 | [`UNSUPPORTED_DATA`] | a message type the endpoint cannot take | no |
    //! | 1007 | [`INVALID_PAYLOAD`] | text or close reason not UTF-8 | no |
    //! | 1008 | [`POLICY_VIOLATION`] | a server policy was broken, such as origin | no |
    //! | 1009 | [`MESSAGE_TOO_BIG`] | a frame or message above the limits | not with that message |
    //! | 1011 | [`INTERNAL_ERROR`] | the server failed | yes, with backoff |

    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away: a server shutting down, a browser leaving the page.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The endpoint received a type of data it cannot accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message's data does not match its type, such as a text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message broke the endpoint's policy.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message is too big to process.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server met an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;

    /// Checks whether a peer may send `code` in a close frame.
    ///
    /// Valid: 1000-1003, 1007-1014 (1012-1014 are registered with IANA) and 3000-4999 (for
    /// libraries and applications). Invalid: codes below 1000, 1004-1006 and 1015 (reserved, never
    /// sent), 1016-2999 (reserved for future RFCs) and 5000 and above.
    pub fn is_valid_received(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Close frame contents: a status code and a UTF-8 reason, possibly empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Status code, one that [`close_code::is_valid_received`] accepts.
    pub code: u16,
    /// Human-readable reason of up to 123 bytes.
    pub reason: String,
}

/// Parses an unmasked close frame payload. Returns `Ok(None)` for an empty payload, which carries
/// no code.
pub(crate) fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(ProtocolError::InvalidClosePayload),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    if !close_code::is_valid_received(code) {
        return Err(ProtocolError::InvalidCloseCode(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
    Ok(Some(CloseFrame {
        code,
        reason: reason.to_owned(),
    }))
}

/// Shortens `reason` to at most [`MAX_REASON_BYTES`] without splitting a character.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    let end = reason.floor_char_boundary(MAX_REASON_BYTES);
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_received_codes() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(close_code::is_valid_received(code), "{code}");
        }
        for code in [3000, 3999, 4000, 4999] {
            assert!(close_code::is_valid_received(code), "{code}");
        }
    }

    #[test]
    fn invalid_received_codes() {
        for code in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!close_code::is_valid_received(code), "{code}");
        }
    }

    #[test]
    fn close_payload_empty_has_no_code() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
    }

    #[test]
    fn close_payload_one_byte_is_rejected() {
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtocolError::InvalidClosePayload)
        );
    }

    #[test]
    fn close_payload_code_and_reason() {
        let frame = parse_close_payload(b"\x03\xe8bye").unwrap().unwrap();
        assert_eq!(frame.code, 1000);
        assert_eq!(frame.reason, "bye");
    }

    #[test]
    fn close_payload_reserved_code_is_rejected() {
        assert_eq!(
            parse_close_payload(&1005u16.to_be_bytes()),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
    }

    #[test]
    fn close_payload_reason_not_utf8_is_rejected() {
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidCloseReason)
        );
    }

    #[test]
    fn truncate_reason_keeps_short_reason() {
        assert_eq!(truncate_reason("bye"), "bye");
    }

    #[test]
    fn truncate_reason_stops_at_char_boundary() {
        // 41 three-byte characters are 123 bytes; the 42nd would straddle the limit.
        let reason = "€".repeat(42);
        let truncated = truncate_reason(&reason);
        assert_eq!(truncated.len(), 123);
        assert_eq!(truncated.chars().count(), 41);

        let reason = format!("a{}", "€".repeat(41));
        let truncated = truncate_reason(&reason);
        assert_eq!(truncated.len(), 121);
    }
}
