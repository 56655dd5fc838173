//! The token cache: one line per bench user with the user id, device id, token and token
//! expiry from its last LOGIN, so that reruns skip password hashing on the server.
//!
//! The file is tab-separated: `username  user_id  device_id  token  token_expires_at_ms`.
//! Lines starting with `#` are comments. The file contains live tokens of bench users, so it is
//! written with mode 0600 and kept out of version control.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

const HEADER: &str = "# username\tuser_id\tdevice_id\ttoken\ttoken_expires_at_ms";

/// Ids, token and expiry from a successful LOGIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedToken {
    pub(crate) user_id: u64,
    pub(crate) device_id: u64,
    pub(crate) token: String,
    /// Milliseconds since the Unix epoch after which the server rejects the token.
    pub(crate) expires_at_ms: i64,
}

impl CachedToken {
    /// Tells whether the token stays valid for at least `margin_ms` after `now_ms`.
    pub(crate) fn valid_for(&self, now_ms: i64, margin_ms: i64) -> bool {
        self.expires_at_ms > now_ms.saturating_add(margin_ms)
    }
}

/// Cached tokens by username.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    pub(crate) entries: HashMap<String, CachedToken>,
    /// Lines that did not parse and were left out.
    pub(crate) skipped_lines: usize,
}

impl TokenCache {
    /// Parses the file's text. Malformed lines are counted and skipped, because the cache is
    /// disposable: a user without an entry only needs a new LOGIN.
    pub(crate) fn parse(text: &str) -> TokenCache {
        let mut cache = TokenCache::default();
        for line in text.lines() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Some((username, token)) => {
                    cache.entries.insert(username, token);
                }
                None => cache.skipped_lines += 1,
            }
        }
        cache
    }

    /// Formats the cache as file text, sorted by username.
    pub(crate) fn to_text(&self) -> String {
        let mut usernames: Vec<&String> = self.entries.keys().collect();
        usernames.sort();
        let mut text = String::from(HEADER);
        text.push('\n');
        for username in usernames {
            let entry = &self.entries[username];
            text.push_str(&format!(
                "{username}\t{}\t{}\t{}\t{}\n",
                entry.user_id, entry.device_id, entry.token, entry.expires_at_ms
            ));
        }
        text
    }

    /// Reads the cache at `path`. A missing file is an empty cache.
    pub(crate) fn load(path: &Path) -> std::io::Result<TokenCache> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(TokenCache::parse(&text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(TokenCache::default()),
            Err(error) => Err(error),
        }
    }

    /// Writes the cache to `path` through a temporary file and a rename, so a crash leaves
    /// either the old or the new file. Creates the parent directory.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = temporary_path(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(self.to_text().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }
}

/// Returns the cache file of the users named `<prefix>-<i>` in `dir`.
pub(crate) fn cache_path(dir: &Path, prefix: &str) -> PathBuf {
    dir.join(format!("{prefix}-tokens.tsv"))
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn parse_line(line: &str) -> Option<(String, CachedToken)> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [username, user_id, device_id, token, expires_at_ms] = fields.as_slice() else {
        return None;
    };
    if username.is_empty() || token.is_empty() {
        return None;
    }
    let token = CachedToken {
        user_id: user_id.parse().ok()?,
        device_id: device_id.parse().ok()?,
        token: (*token).to_owned(),
        expires_at_ms: expires_at_ms.trim_end().parse().ok()?,
    };
    Some(((*username).to_owned(), token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user_id: u64, token: &str) -> CachedToken {
        CachedToken {
            user_id,
            device_id: user_id * 10,
            token: token.into(),
            expires_at_ms: 1_900_000_000_000,
        }
    }

    #[test]
    fn parse_reads_valid_lines() {
        let text =
            "# comment\nbench-0\t1\t10\tabc\t1900000000000\nbench-1\t2\t20\tdef\t1900000000000\n";

        let cache = TokenCache::parse(text);

        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.entries["bench-0"], entry(1, "abc"));
        assert_eq!(cache.entries["bench-1"], entry(2, "def"));
        assert_eq!(cache.skipped_lines, 0);
    }

    #[test]
    fn parse_skips_malformed_lines() {
        let text = [
            "bench-0\t1\t10\tabc\t1900000000000",
            "bench-1\tnot-a-number\t20\tdef\t1900000000000",
            "bench-2\t3\t30\tghi",
            "bench-3\t4\t40\t\t1900000000000",
            "bench-4\t5\t50\tjkl\t1900000000000\textra",
            "",
        ]
        .join("\n");

        let cache = TokenCache::parse(&text);

        assert_eq!(cache.entries.len(), 1);
        assert!(cache.entries.contains_key("bench-0"));
        assert_eq!(cache.skipped_lines, 4);
    }

    #[test]
    fn parse_accepts_crlf_line_ends() {
        let cache = TokenCache::parse("bench-0\t1\t10\tabc\t1900000000000\r\n");

        assert_eq!(cache.entries["bench-0"].expires_at_ms, 1_900_000_000_000);
    }

    #[test]
    fn text_round_trips() {
        let mut cache = TokenCache::default();
        cache.entries.insert("bench-1".into(), entry(2, "def"));
        cache.entries.insert("bench-0".into(), entry(1, "abc"));

        let text = cache.to_text();
        let parsed = TokenCache::parse(&text);

        assert!(text.starts_with(HEADER));
        assert!(text.find("bench-0").unwrap() < text.find("bench-1").unwrap());
        assert_eq!(parsed.entries, cache.entries);
    }

    #[test]
    fn valid_for_needs_margin_before_expiry() {
        let token = entry(1, "abc");
        let day_ms = 86_400_000;

        assert!(token.valid_for(token.expires_at_ms - day_ms - 1, day_ms));
        assert!(!token.valid_for(token.expires_at_ms - day_ms, day_ms));
        assert!(!token.valid_for(token.expires_at_ms, day_ms));
    }

    #[test]
    fn save_then_load_keeps_entries() {
        let dir = std::env::temp_dir().join(format!("im-bench-cache-{}", std::process::id()));
        let path = cache_path(&dir, "bench");
        let mut cache = TokenCache::default();
        cache.entries.insert("bench-0".into(), entry(1, "abc"));

        cache.save(&path).expect("save");
        let loaded = TokenCache::load(&path).expect("load");
        let mode = std::fs::metadata(&path).expect("metadata");
        std::fs::remove_dir_all(&dir).expect("clean up");

        assert_eq!(loaded.entries, cache.entries);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn load_missing_file_is_empty() {
        let path = std::env::temp_dir().join("im-bench-no-such-dir/none-tokens.tsv");

        let cache = TokenCache::load(&path).expect("load");

        assert!(cache.entries.is_empty());
    }
}
