//! Helpers for repeating names and values from settings in one-line error messages.

use std::borrow::Cow;

/// Characters of a name that an error repeats in full. A longer name is cut to this many
/// characters, followed by "...".
pub const MAX_SHOWN_CHARS: usize = 64;

/// Returns `text` with each control character (`\n`, ESC and the like) and each Unicode line or
/// paragraph separator written as a Rust escape such as `\n` or `\u{1b}`. A repeated key,
/// variable name or value thus cannot break an error over several lines or forge a log line.
/// Other characters, backslashes included, are kept as they are.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Returns `name` ready to repeat in an error: cut to [`MAX_SHOWN_CHARS`] characters followed by
/// "..." when it is longer, and with control characters escaped by [`escape_control`].
pub fn shown_name(name: &str) -> String {
    match name.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}...", escape_control(&name[..cut])),
        None => escape_control(name).into_owned(),
    }
}

/// True for a setting whose value no error may repeat: a name with a dotted part that ends in
/// `secret`, such as `internal_secret` or `server_secret.x`, or contains `password`, in any
/// case. Spaces and TOML quotes around a part are ignored, so `"internal_secret"` counts.
pub fn is_secret(name: &str) -> bool {
    name.split('.').any(|part| {
        let part = part
            .trim()
            .trim_matches(['"', '\''])
            .trim()
            .to_ascii_lowercase();
        part.ends_with("secret") || part.contains("password")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised() {
        for name in [
            "internal_secret",
            "server_secret",
            "\"internal_secret\"",
            "engine.internal_secret",
            "internal_secret.x",
            "INTERNAL_SECRET",
            "ssl_password",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["shards", "database_url", "secret_santa", "ws_path"] {
            assert!(!is_secret(name), "{name}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("a\nb\u{1b}[0m\t\\"), "a\\nb\\u{1b}[0m\\t\\");
        assert_eq!(escape_control("line\u{2028}break"), "line\\u{2028}break");
        assert_eq!(escape_control("plain ä"), "plain ä");
    }

    #[test]
    fn long_name_is_cut() {
        assert_eq!(shown_name(&"é".repeat(64)), "é".repeat(64));
        assert_eq!(
            shown_name(&"é".repeat(65)),
            format!("{}...", "é".repeat(64))
        );
        assert_eq!(shown_name("a\nb"), "a\\nb");
    }
}
