//! The rule for the free text fields that the logic tier stores in PostgreSQL: group names,
//! device info, and a message's content type and client message id.
//!
//! Such a field may not contain a control character, Unicode category Cc (U+0000 to U+001F and
//! U+007F to U+009F). PostgreSQL's text type cannot hold U+0000 at all, so a NUL that reached a
//! statement would fail it, and a send batch fails every send stored with the bad one. The other
//! control characters are rejected too, because these fields are shown to other users and
//! written to logs, where line breaks and terminal escapes would mislead.

use crate::error::LogicError;

/// Checks that `value` of request field `field` contains no control character.
///
/// # Errors
///
/// [`LogicError::ControlCharacter`] naming the field, the first control character and its
/// position.
pub fn check_no_control(field: &'static str, value: &str) -> Result<(), LogicError> {
    match value.chars().enumerate().find(|(_, c)| c.is_control()) {
        Some((position, c)) => Err(LogicError::ControlCharacter {
            field,
            code_point: u32::from(c),
            position,
        }),
        None => Ok(()),
    }
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
}
