//! Hiding of passwords in PostgreSQL and Redis connection strings before they are logged.

/// Text that replaces a password, or a whole connection string that cannot be parsed.
const HIDDEN: &str = "***";

/// Returns `url` with its passwords replaced by "***", so that it can go into logs and error
/// messages. Three forms are handled:
///
/// - A URL such as `postgres://app:pw@db:5432/im`: everything from the first `:` after the user
///   name to the last `@` of the text is hidden. A password that contains `/`, `?`, `#` or `@`
///   is therefore hidden whole, at the cost of hiding more than the password when a later part
///   contains `@`. Query parameters named `pass` (redis-rs) or containing `password` are hidden
///   too.
/// - libpq key=value pairs such as `host=db password='a b'`: the value of every key that
///   contains `password`, quoted (with `\'` and `\\` escapes) or not.
/// - Any other text that contains `@` or `password` is replaced whole, since the password in it
///   cannot be located, such as `postgresql:/app:pw@db/im` with one slash.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url_scheme_end(url) {
        return redact_url_form(url, scheme_end);
    }
    if let Some(redacted) = redact_key_value(url) {
        return redacted;
    }
    if url.contains('@') || url.to_ascii_lowercase().contains("password") {
        return HIDDEN.to_owned();
    }
    url.to_owned()
}

/// Returns the position of `://` when `text` starts with a URL scheme such as `postgres` or
/// `redis+unix` followed by it.
fn url_scheme_end(text: &str) -> Option<usize> {
    let end = text.find("://")?;
    let scheme = &text[..end];
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    is_scheme.then_some(end)
}

fn redact_url_form(url: &str, scheme_end: usize) -> String {
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let mut redacted = url.to_owned();
    let mut query_search_start = authority_start;
    if let Some(at) = rest.rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            let password_start = authority_start + colon + 1;
            redacted = format!("{}{HIDDEN}{}", &url[..password_start], &rest[at..]);
            query_search_start = password_start + HIDDEN.len();
        }
    }
    let Some(question) = redacted[query_search_start..].find('?') else {
        return redacted;
    };
    let query_start = query_search_start + question + 1;
    let query = redacted[query_start..]
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}={HIDDEN}"),
            _ => parameter.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{}{query}", &redacted[..query_start])
}

fn is_password_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "pass" || key.contains("password")
}

/// Redacts the passwords of libpq `key=value` pairs, keeping the rest of the text as it is.
/// Returns `None` when `conninfo` is not a list of such pairs, for example when a key has no
/// `=` or a quoted value no closing quote.
fn redact_key_value(conninfo: &str) -> Option<String> {
    let mut redacted = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    let mut pairs = 0;
    loop {
        rest = copy_whitespace(rest, &mut redacted);
        if rest.is_empty() {
            break;
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        if key.is_empty() {
            return None;
        }
        redacted.push_str(key);
        rest = copy_whitespace(&rest[key_end..], &mut redacted);
        rest = rest.strip_prefix('=')?;
        redacted.push('=');
        rest = copy_whitespace(rest, &mut redacted);
        let value_end = value_length(rest)?;
        let value = &rest[..value_end];
        if is_password_key(key) {
            redacted.push_str(HIDDEN);
        } else if url_scheme_end(value).is_some() {
            // libpq takes a URL as the value of `dbname`, password included.
            redacted.push_str(&redact_url(value));
        } else {
            redacted.push_str(value);
        }
        rest = &rest[value_end..];
        pairs += 1;
    }
    (pairs > 0).then_some(redacted)
}

/// Appends the leading whitespace of `text` to `output` and returns the rest of `text`.
fn copy_whitespace<'a>(text: &'a str, output: &mut String) -> &'a str {
    let rest = text.trim_start();
    output.push_str(&text[..text.len() - rest.len()]);
    rest
}

/// Returns the length in bytes of the libpq value at the start of `text`: up to the closing
/// quote of a value in single quotes, else up to the first whitespace. A backslash escapes the
/// next character in both forms. Returns `None` for a quoted value without its closing quote.
fn value_length(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    if text.starts_with('\'') {
        chars.next();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next()?;
                }
                '\'' => return Some(index + 1),
                _ => {}
            }
        }
        return None;
    }
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            c if c.is_whitespace() => return Some(index),
            _ => {}
        }
    }
    Some(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_hidden() {
        for (url, redacted) in [
            (
                "postgres://app:s3cret@db:5432/im",
                "postgres://app:***@db:5432/im",
            ),
            (
                "redis://:pw@127.0.0.1:6379/",
                "redis://:***@127.0.0.1:6379/",
            ),
            (
                "postgres://app:pa/ss@127.0.0.1:1/im",
                "postgres://app:***@127.0.0.1:1/im",
            ),
            (
                "postgres://app:pa?ss@127.0.0.1:1/im",
                "postgres://app:***@127.0.0.1:1/im",
            ),
            (
                "postgres://app:pa#ss@127.0.0.1:1/im",
                "postgres://app:***@127.0.0.1:1/im",
            ),
            (
                "postgres://app:p@ss@127.0.0.1:1/im",
                "postgres://app:***@127.0.0.1:1/im",
            ),
            ("redis://:pa/ss@127.0.0.1:1/", "redis://:***@127.0.0.1:1/"),
            (
                "postgres://app:pw@[::1]:5432/im",
                "postgres://app:***@[::1]:5432/im",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn url_without_password_is_unchanged() {
        for url in [
            "postgres://app@db:5432/im",
            "postgres://postgres@127.0.0.1:55432/im",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:56379/0",
            "postgresql:///im?host=/var/run/postgresql",
            "http://127.0.0.1:50051",
            "postgres://[::1]:5432/im?connect_timeout=10",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn url_password_parameter_is_hidden() {
        assert_eq!(
            redact_url("postgresql:///im?host=/tmp&password=s3cret&user=app"),
            "postgresql:///im?host=/tmp&password=***&user=app"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///tmp/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("postgres://app:pw@db/im?sslpassword=key"),
            "postgres://app:***@db/im?sslpassword=***"
        );
    }

    #[test]
    fn unparsable_text_with_password_is_hidden_whole() {
        for url in [
            "postgresql:/app:hunter2@host/db",
            "app:hunter2@host/db",
            "host=db password='unterminated",
            "password",
            "://app:hunter2@host",
        ] {
            assert_eq!(redact_url(url), "***", "{url}");
        }
    }

    #[test]
    fn unparsable_text_without_password_is_unchanged() {
        assert_eq!(redact_url("localhost"), "localhost");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn key_value_password_is_hidden() {
        for (conninfo, redacted) in [
            ("host=db password=x user=u", "host=db password=*** user=u"),
            (
                "host=127.0.0.1 port=x password='hun ter2' user=x",
                "host=127.0.0.1 port=x password=*** user=x",
            ),
            (
                r"host=db password='it\'s a secret' user=u",
                "host=db password=*** user=u",
            ),
            (r"password=a\ b user=u", "password=*** user=u"),
            ("host = db  password = x", "host = db  password = ***"),
            ("PASSWORD=x", "PASSWORD=***"),
            ("sslpassword=x host=db", "sslpassword=*** host=db"),
            (
                "dbname=postgres://app:pw@db/im",
                "dbname=postgres://app:***@db/im",
            ),
            ("host=db user=app", "host=db user=app"),
        ] {
            assert_eq!(redact_url(conninfo), redacted, "{conninfo}");
        }
    }
}
