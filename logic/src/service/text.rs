//! The rule for the free text fields that the logic tier stores in PostgreSQL: group names,
//! device info, and a message's content type and client message id. Usernames allow only ASCII
//! letters, digits, '_', '-' and '.', and message content is opaque bytes, so neither is
//! checked here.
//!
//! Such a field may not contain a control character, Unicode category Cc (U+0000 to U+001F and
//! U+007F to U+009F). PostgreSQL's text type cannot hold U+0000 at all, so a NUL that reached a
//! statement would fail it, and a send batch fails every send stored with the bad one. The other
//! control characters are rejected too, because these fields are shown to other users and
//! written to logs, where line breaks and terminal escapes would mislead.
//!
//! Nor may it contain a bidirectional control character: the embeddings and overrides U+202A to
//! U+202E, the isolates U+2066 to U+2069, and the marks U+200E, U+200F and U+061C. They change
//! the order in which the characters around them are displayed, so a name could show as other
//! text than it holds, in the client and in an editor or terminal reading the logs. Other format
//! characters stay allowed, such as the zero-width joiner U+200D that emoji sequences need.

use crate::error::LogicError;

/// Checks that `value` of request field `field` contains no control character and no
/// bidirectional control character.
///
/// # Errors
///
/// [`LogicError::ControlCharacter`] or [`LogicError::BidiControl`] naming the field, the first
/// such character and its position.
pub fn check_no_control(field: &'static str, value: &str) -> Result<(), LogicError> {
    let found = value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() || is_bidi_control(*c));
    match found {
        Some((position, c)) if c.is_control() => Err(LogicError::ControlCharacter {
            field,
            code_point: u32::from(c),
            position,
        }),
        Some((position, c)) => Err(LogicError::BidiControl {
            field,
            code_point: u32::from(c),
            position,
        }),
        None => Ok(()),
    }
}

/// Tells whether `c` is one of the characters that set the direction of the text around them.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_passes() {
        for value in [
            "",
            "text/plain; charset=utf-8",
            "Ünïcode 👋",
            "a\u{200d}b",
            "👨\u{200d}👩\u{200d}👧",
            "עברית and العربية",
            " ",
        ] {
            assert!(check_no_control("f", value).is_ok(), "{value:?}");
        }
    }

    #[test]
    fn control_characters_are_named_with_their_position() {
        let cases = [
            ("\0", 0x00, 0),
            ("ab\n", 0x0a, 2),
            ("é\t", 0x09, 1),
            ("x\u{7f}", 0x7f, 1),
            ("\u{9f}", 0x9f, 0),
        ];
        for (value, expected_code_point, expected_position) in cases {
            match check_no_control("f", value) {
                Err(LogicError::ControlCharacter {
                    field,
                    code_point,
                    position,
                }) => {
                    assert_eq!(field, "f");
                    assert_eq!(code_point, expected_code_point, "{value:?}");
                    assert_eq!(position, expected_position, "{value:?}");
                }
                other => panic!("{value:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn bidirectional_controls_are_named_with_their_position() {
        let cases = [
            ("\u{202e}", 0x202e, 0),
            ("abc\u{202a}", 0x202a, 3),
            ("é\u{202b}", 0x202b, 1),
            ("x\u{202c}", 0x202c, 1),
            ("x\u{202d}", 0x202d, 1),
            ("x\u{2066}", 0x2066, 1),
            ("x\u{2067}", 0x2067, 1),
            ("x\u{2068}", 0x2068, 1),
            ("x\u{2069}", 0x2069, 1),
            ("x\u{200e}", 0x200e, 1),
            ("x\u{200f}", 0x200f, 1),
            ("x\u{061c}", 0x061c, 1),
            ("👨\u{200d}👩\u{2067}", 0x2067, 3),
        ];
        for (value, expected_code_point, expected_position) in cases {
            match check_no_control("f", value) {
                Err(LogicError::BidiControl {
                    field,
                    code_point,
                    position,
                }) => {
                    assert_eq!(field, "f");
                    assert_eq!(code_point, expected_code_point, "{value:?}");
                    assert_eq!(position, expected_position, "{value:?}");
                }
                other => panic!("{value:?}: unexpected {other:?}"),
            }
        }
        let message = check_no_control("name", "ab\u{202e}")
            .expect_err("an override")
            .to_string();
        assert!(message.starts_with("invalid name: "), "{message}");
        assert!(message.contains("U+202E at character 2"), "{message}");
    }
}
