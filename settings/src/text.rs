//! Helpers for repeating names and values from settings in one-line error messages.

use std::borrow::Cow;

use crate::{ENGINE_SECRETS, ENGINE_URLS, LOGIC_SECRETS, LOGIC_URLS};

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

/// True for a setting whose value no error may repeat: a name with a dotted part that is one of
/// [`ENGINE_SECRETS`] or [`LOGIC_SECRETS`], such as `internal_secret` or `server_secret.x`, in
/// any case. Spaces and TOML quotes around a part are ignored, so `"internal_secret"` counts.
/// A name is no secret for what it contains: `max_password_hashes` is a number of hashes.
pub fn is_secret(name: &str) -> bool {
    names_one_of(name, ENGINE_SECRETS) || names_one_of(name, LOGIC_SECRETS)
}

/// True for a setting whose value is a connection string that may contain a password, so an
/// error shows it only through [`crate::redact_url`]: a name with a dotted part that is one of
/// [`ENGINE_URLS`] or [`LOGIC_URLS`], matched as [`is_secret`] matches.
pub fn is_url_setting(name: &str) -> bool {
    names_one_of(name, ENGINE_URLS) || names_one_of(name, LOGIC_URLS)
}

/// True when a dotted part of `name`, without spaces or TOML quotes around it, is one of
/// `settings` in any ASCII case.
fn names_one_of(name: &str, settings: &[&str]) -> bool {
    name.split('.').any(|part| {
        let part = part.trim().trim_matches(['"', '\'']).trim();
        settings
            .iter()
            .any(|setting| part.eq_ignore_ascii_case(setting))
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
            " 'server_secret' ",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in [
            "shards",
            "database_url",
            "secret_santa",
            "ws_path",
            "max_password_hashes",
            "password_hash_wait_ms",
            "logic_max_password_calls",
            "internal_secrets",
        ] {
            assert!(!is_secret(name), "{name}");
        }
    }

    #[test]
    fn url_settings_are_recognised() {
        for name in [
            "database_url",
            "redis_url",
            "logic_url",
            "logic.\"REDIS_URL\"",
        ] {
            assert!(is_url_setting(name), "{name}");
        }
        for name in ["internal_secret", "web_root", "database_urls", "url"] {
            assert!(!is_url_setting(name), "{name}");
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
