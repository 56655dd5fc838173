//! Settings helpers shared by `im-engine` and `im-logic`: plain error text that names a setting
//! as im.toml and the environment spell it, a check that a settings file contains only the
//! `[engine]` and `[logic]` tables, and a check for prefixed variables that name no setting.
//! It also reads secret variables as raw text, hides passwords in connection strings
//! ([`redact_url`]), and parses whole-number flags within the ranges that errors about the file
//! and the environment give ([`whole_number_flag`]). Both tiers word an out-of-range value
//! with [`InvalidSetting`], which names the source of the value ([`origin_of`]). Its errors
//! never repeat the value of a secret setting ([`is_secret`]).

mod env;
mod file;
mod invalid;
mod ranges;
mod redact;
#[cfg(feature = "testing")]
pub mod testing;
mod text;

use figment::error::{Actual, Kind};
use figment::Source;

pub use env::{check_env, misspelt_prefix_vars, prefixed_env, raw_env_value, EnvError};
pub use file::{read_file, settings_file_path, FileError, SettingsFile, MAX_FILE_BYTES, TABLES};
pub use invalid::{check_range, flags, origin_of, raw_env, Flags, InvalidSetting, RawEnv};
pub use ranges::{whole_number_flag, SettingRange, WholeNumber, ENGINE_RANGES, LOGIC_RANGES};
pub use redact::redact_url;
pub use text::{escape_control, is_secret, is_url_setting, shown_name, MAX_SHOWN_CHARS};

/// Settings of the `[engine]` table. im-engine's tests check this list against its settings.
pub const ENGINE_FIELDS: &[&str] = &[
    "ws_addr",
    "ws_path",
    "tls_cert_file",
    "tls_key_file",
    "grpc_addr",
    "metrics_addr",
    "node_addr",
    "logic_url",
    "shards",
    "io_uring",
    "ring_entries",
    "sqpoll_idle_ms",
    "ring_coop_taskrun",
    "handshake_timeout_ms",
    "sign_in_timeout_ms",
    "heartbeat_interval_ms",
    "heartbeat_timeout_ms",
    "logic_call_timeout_ms",
    "logic_connect_timeout_ms",
    "max_connections",
    "max_connections_per_ip",
    "max_frame_bytes",
    "max_message_bytes",
    "max_header_bytes",
    "logic_max_in_flight",
    "logic_max_password_calls",
    "logic_gather_calls",
    "logic_gather_window_ms",
    "bridge_queue",
    "max_outbound_bytes",
    "write_timeout_ms",
    "allowed_origins",
    "offline_retries",
    "shutdown_grace_ms",
    "lease_interval_ms",
    "lease_ttl_ms",
    "rate_packets_per_sec",
    "rate_packet_burst",
    "rate_bytes_per_sec",
    "rate_byte_burst",
    "rate_limit_strikes",
    "busy_retry_after_ms",
    "internal_secret",
];

/// Settings of the `[logic]` table. im-logic's tests check this list against its settings.
pub const LOGIC_FIELDS: &[&str] = &[
    "listen_addr",
    "metrics_addr",
    "web_addr",
    "web_root",
    "database_url",
    "redis_url",
    "db_pool_size",
    "db_timeout_ms",
    "redis_timeout_ms",
    "token_ttl_secs",
    "argon2_memory_kib",
    "argon2_iterations",
    "argon2_parallelism",
    "max_password_hashes",
    "password_hash_wait_ms",
    "engine_call_timeout_ms",
    "request_timeout_ms",
    "redis_batch_max",
    "send_batch_max",
    "startup_retry_ms",
    "max_content_bytes",
    "max_group_members",
    "max_groups_per_user",
    "max_friends_per_user",
    "server_secret",
    "sync_max_page",
    "sync_max_page_bytes",
    "message_retention_days",
    "internal_secret",
];

/// Settings of the `[engine]` table whose value no error repeats ([`is_secret`]). Their
/// variables are read as raw text, so that a secret of digits stays a string.
pub const ENGINE_SECRETS: &[&str] = &["internal_secret"];

/// Settings of the `[logic]` table whose value no error repeats ([`is_secret`]). Their
/// variables are read as raw text, so that a secret of digits stays a string.
pub const LOGIC_SECRETS: &[&str] = &["server_secret", "internal_secret"];

/// Settings of the `[engine]` table that hold a URL, which may carry a password: errors show
/// their value through [`redact_url`].
pub const ENGINE_URLS: &[&str] = &["logic_url"];

/// Settings of the `[logic]` table that hold a connection string, which may carry a password:
/// errors and logs show their value through [`redact_url`].
pub const LOGIC_URLS: &[&str] = &["database_url", "redis_url"];

/// Describes each error of `err`, joined by "; ". Each part names the setting as im.toml spells
/// it, says what is wrong in plain words, and names the source of the value. For a value from the
/// environment, that source is the variable as written in the environment, or `env_prefix` plus
/// the setting in capitals when no variable of that setting is found. A value that is no whole
/// number of the setting's type gets the setting's range from [`ENGINE_RANGES`] or
/// [`LOGIC_RANGES`] (chosen by `env_prefix`) where it has one, else the type's bound. An
/// unknown key or variable gets the closest known one as a guess, never the list of all fields.
/// The value of a secret setting (see [`is_secret`]) is never repeated, and that of a
/// connection string (see [`is_url_setting`]) only through [`redact_url`]. A name longer than
/// [`MAX_SHOWN_CHARS`] is cut, and control characters are escaped, so the text is one line.
pub fn describe(err: &figment::Error, env_prefix: &str) -> String {
    let text = err
        .clone()
        .into_iter()
        .map(|one| describe_one(&one, env_prefix))
        .collect::<Vec<_>>()
        .join("; ");
    escape_control(&text).into_owned()
}

fn describe_one(one: &figment::Error, env_prefix: &str) -> String {
    let key = shown_name(&one.path.join(".").to_lowercase());
    let secret = one.path.iter().any(|part| is_secret(part));
    let url = one
        .path
        .first()
        .is_some_and(|setting| is_url_setting(setting));
    let from_env = one
        .metadata
        .as_ref()
        .is_some_and(|metadata| metadata.name.contains("environment variable"));
    // A list element's path ends in its index, which is no part of the variable's name.
    let variable = match one.path.first() {
        Some(first) if from_env => Some(variable_name(env_prefix, first)),
        _ => None,
    };
    let range = one.path.first().and_then(|setting| {
        ranges::ranges_for(env_prefix)
            .iter()
            .find(|range| range.setting == setting)
    });
    let file = one
        .metadata
        .as_ref()
        .and_then(|metadata| match &metadata.source {
            Some(Source::File(path)) => Some(path),
            _ => None,
        });
    let origin = if let Some(path) = file {
        format!(" (in {})", path.display())
    } else if let Some(variable) = &variable {
        format!(" (from {variable})")
    } else if let Some(metadata) = &one.metadata {
        match &metadata.source {
            Some(source) => format!(" (from {} {source})", metadata.name),
            None => format!(" (from {})", metadata.name),
        }
    } else {
        String::new()
    };
    let what = match &one.kind {
        Kind::UnknownField(found, fields) => {
            return match variable {
                Some(variable) => describe_unknown_variable(&variable, found, fields, env_prefix),
                None => describe_unknown_key(&one.path, found, fields, &origin, env_prefix),
            };
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) if secret => {
            format!(
                "found {} (value not shown), expected {}",
                type_name(actual),
                plain(expected)
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            let expected = range
                .and_then(|range| ranges::describe_range(range, expected))
                .unwrap_or_else(|| plain(expected));
            if url {
                describe_mismatch(&redacted(actual), &expected)
            } else {
                describe_mismatch(actual, &expected)
            }
        }
        Kind::InvalidLength(..) | Kind::MissingField(_) | Kind::DuplicateField(_) => {
            one.kind.to_string().trim().replace('\n', " ")
        }
        // Every other kind may repeat the value.
        _ if secret => "invalid value (not shown, because the setting is a secret)".to_owned(),
        _ if url => "invalid value (not shown, because it may contain a password)".to_owned(),
        other => other.to_string().trim().replace('\n', " "),
    };
    if key.is_empty() {
        format!("{what}{origin}")
    } else {
        format!("{key}: {what}{origin}")
    }
}

/// Returns `actual` with any password in its text hidden by [`redact_url`], for a setting whose
/// value is a connection string.
fn redacted(actual: &Actual) -> Actual {
    match actual {
        Actual::Str(text) => Actual::Str(redact_url(text)),
        Actual::Other(text) => Actual::Other(redact_url(text)),
        Actual::Bytes(bytes) => Actual::Str(redact_url(&String::from_utf8_lossy(bytes))),
        other => other.clone(),
    }
}

/// Returns the names of the variables that set `setting`, as written in the environment and
/// joined by " and ", such as `im_engine_shards` or `IM_ENGINE_SHARDS.X`. figment matches the
/// prefix in any case, trims the name, and takes a dotted name as a key inside the setting.
/// When no such variable is found, returns `env_prefix` followed by `setting` in capitals.
pub(crate) fn variable_name(env_prefix: &str, setting: &str) -> String {
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .filter(|name| {
            env::strip_env_prefix(name, env_prefix).is_some_and(|rest| {
                let first = rest.split('.').next().unwrap_or_default().trim();
                first.eq_ignore_ascii_case(setting)
            })
        })
        .map(|name| shown_name(&name))
        .collect();
    if names.is_empty() {
        return format!("{env_prefix}{}", shown_name(&setting.to_uppercase()));
    }
    names.sort_unstable();
    names.join(" and ")
}

/// Returns the table name and variable prefix of the tier that `env_prefix` does not name, with
/// its settings, for telling a user that a setting belongs to the other table.
fn other_tier(env_prefix: &str) -> Option<(&'static str, &'static str, &'static [&'static str])> {
    match env_prefix {
        "IM_ENGINE_" => Some(("logic", "IM_LOGIC_", LOGIC_FIELDS)),
        "IM_LOGIC_" => Some(("engine", "IM_ENGINE_", ENGINE_FIELDS)),
        _ => None,
    }
}

/// Describes an unknown key of a file, with a guess among `fields` instead of all of them. TOML
/// keys are case-sensitive, so a key in capitals is unknown even when its lower-case form is a
/// field.
fn describe_unknown_key(
    path: &[String],
    found: &str,
    fields: &[&str],
    origin: &str,
    env_prefix: &str,
) -> String {
    let name = shown_name(&if path.is_empty() {
        found.to_owned()
    } else {
        path.join(".")
    });
    let lower = found.to_lowercase();
    if let Some((table, _, other_fields)) = other_tier(env_prefix) {
        if lower == found && other_fields.contains(&found) {
            return format!(
                "`{name}`{origin} is a setting of the [{table}] table: move it under [{table}]"
            );
        }
    }
    let hint = if lower == found {
        closest_field(found, fields).map(|field| format!(": did you mean `{field}`?"))
    } else if fields.contains(&lower.as_str()) {
        Some(format!(": keys are lower case, write `{lower}`"))
    } else {
        Some(match closest_field(&lower, fields) {
            Some(field) => format!(": keys are lower case, did you mean `{field}`?"),
            None => ": keys are lower case".to_owned(),
        })
    };
    format!(
        "unknown setting `{name}`{origin}{}",
        hint.unwrap_or_default()
    )
}

/// Describes an unknown `env_prefix` variable, with a guess spelt as a variable. figment has
/// already turned the name into lower case, so `found` is compared as it is.
fn describe_unknown_variable(
    variable: &str,
    found: &str,
    fields: &[&str],
    env_prefix: &str,
) -> String {
    if let Some((_, other_prefix, other_fields)) = other_tier(env_prefix) {
        if other_fields.contains(&found) {
            return format!(
                "environment variable {variable} names a setting of the other tier: set \
                 {other_prefix}{} for it instead",
                shown_name(&found.to_uppercase())
            );
        }
    }
    let guess = closest_field(found, fields)
        .map(|field| format!(": did you mean {env_prefix}{}?", field.to_uppercase()));
    format!(
        "unknown environment variable {variable}{}",
        guess.unwrap_or_default()
    )
}

/// Names the type of `actual` without its value, such as "signed int" for `Actual::Signed`.
fn type_name(actual: &Actual) -> String {
    match actual {
        Actual::Bool(_) => "bool".to_owned(),
        Actual::Unsigned(_) => "unsigned int".to_owned(),
        Actual::Signed(_) => "signed int".to_owned(),
        Actual::Float(_) => "float".to_owned(),
        Actual::Char(_) => "char".to_owned(),
        Actual::Str(_) => "string".to_owned(),
        Actual::Bytes(_) => "bytes".to_owned(),
        Actual::Other(_) => "a value".to_owned(),
        // The remaining kinds print no value.
        other => other.to_string(),
    }
}

/// Returns the field of `fields` closest to `key`, if one is close enough to be a likely
/// misspelling: at most one edit in three characters apart (Damerau-Levenshtein distance), or a
/// start of the field such as `db_pool` for `db_pool_size`. On a tie, the earlier field wins.
/// A key longer than [`MAX_SHOWN_CHARS`] gets no guess, which also bounds the time the
/// distance takes, since it grows with the product of both lengths.
fn closest_field<'a>(key: &str, fields: &[&'a str]) -> Option<&'a str> {
    let key_chars = key.chars().count();
    if key_chars > MAX_SHOWN_CHARS {
        return None;
    }
    let max_distance = (key_chars / 3).max(1);
    let by_distance = fields
        .iter()
        // The distance is at least the difference of the lengths.
        .filter(|field| field.chars().count().abs_diff(key_chars) <= max_distance)
        .map(|field| (strsim::damerau_levenshtein(key, field), *field))
        .filter(|(distance, _)| *distance <= max_distance)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, field)| field);
    // A start shorter than 4 characters, such as `ws`, is too short to guess from.
    by_distance.or_else(|| {
        let mut starting = fields.iter().filter(|field| field.starts_with(key));
        match (starting.next(), starting.next()) {
            (Some(field), None) if key.len() >= 4 => Some(*field),
            _ => None,
        }
    })
}

/// Describes a value of the wrong type or out of the type's range. A float is shown with its
/// decimal point (`1.0`, where figment writes `1`). Digits that fit no 64-bit integer, which
/// figment passes on as a string, are reported as out of range. Digits that fit one were a
/// quoted string in the file, and the message asks to remove the quotes.
fn describe_mismatch(actual: &Actual, expected: &str) -> String {
    let expected = plain(expected);
    match actual {
        Actual::Float(value) => format!("found float `{value:?}`, expected {expected}"),
        Actual::Str(text) if expected.starts_with("a whole number") && is_integer(text) => {
            if text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok() {
                format!("found string \"{text}\", expected {expected}: write it without quotes")
            } else {
                format!("{text} is out of range, expected {expected}")
            }
        }
        other => format!("found {other}, expected {expected}"),
    }
}

/// True for decimal digits with an optional sign, such as `-12`.
pub(crate) fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// Translates serde's name for an expected type into words for someone who writes settings.
fn plain(expected: &str) -> String {
    if let Some(max) = ranges::unsigned_type_max(expected) {
        return ranges::whole_numbers(0, max);
    }
    match expected {
        "a sequence" => "a list, written as a TOML array such as [\"https://a.example\", \
                         \"https://b.example\"], also in an environment variable"
            .to_owned(),
        other => other.to_owned(),
    }
}

// figment's Jail closures return its large error type, as `load` does.
#[allow(clippy::result_large_err)]
#[cfg(test)]
mod tests {
    use std::path::Path;

    use figment::providers::{Env, Format, Serialized, Toml};
    use figment::{Figment, Jail};
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        shards: u32,
        origins: Vec<String>,
        internal_secret: String,
    }

    fn load() -> Result<Settings, figment::Error> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Figment::from(Toml::file_exact("im.toml")).focus("engine"))
            .merge(Env::prefixed("IM_TEST_"))
            .extract()
    }

    #[test]
    fn quoted_number_is_told_to_lose_its_quotes() {
        let quoted = describe_mismatch(&Actual::Str("4".to_owned()), "u32");
        let huge = describe_mismatch(&Actual::Str("99999999999999999999".to_owned()), "u32");

        assert_eq!(
            quoted,
            "found string \"4\", expected a whole number from 0 to 4294967295: write it \
             without quotes"
        );
        assert!(
            huge.starts_with("99999999999999999999 is out of range"),
            "{huge}"
        );
    }

    #[test]
    fn integer_types_read_as_words() {
        assert_eq!(plain("u16"), "a whole number from 0 to 65535");
        assert_eq!(plain("u32"), "a whole number from 0 to 4294967295");
        assert_eq!(plain("usize"), "a whole number, 0 or more");
        assert_eq!(plain("u64"), "a whole number, 0 or more");
        assert_eq!(plain("a string"), "a string");
    }

    #[test]
    fn type_error_names_variable_and_range() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env("IM_TEST_SHARDS", "abc");
            let err = load().expect_err("abc is no number");
            assert_eq!(
                describe(&err, "IM_TEST_"),
                "shards: found string \"abc\", expected a whole number from 0 to 4294967295 \
                 (from IM_TEST_SHARDS)"
            );
            Ok(())
        });
    }

    /// Settings named as in the `[engine]` and `[logic]` tables, with their types.
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct TierSettings {
        shards: usize,
        logic_gather_calls: usize,
        db_pool_size: u32,
        ring_entries: u32,
    }

    fn load_tier(env_prefix: &str) -> Result<TierSettings, figment::Error> {
        Figment::from(Serialized::defaults(TierSettings::default()))
            .merge(Figment::from(Toml::file_exact("im.toml")).focus("engine"))
            .merge(Env::prefixed(env_prefix))
            .extract()
    }

    #[test]
    fn whole_number_error_gives_setting_range() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            for (variable, value, expected) in [
                (
                    "IM_ENGINE_SHARDS",
                    "abc",
                    "shards: found string \"abc\", expected a whole number from 0 to 255 \
                     (from IM_ENGINE_SHARDS)",
                ),
                (
                    "IM_ENGINE_SHARDS",
                    "-1",
                    "shards: found signed int `-1`, expected a whole number from 0 to 255 \
                     (from IM_ENGINE_SHARDS)",
                ),
                (
                    "IM_ENGINE_SHARDS",
                    "99999999999999999999999",
                    "shards: 99999999999999999999999 is out of range, expected a whole number \
                     from 0 to 255 (from IM_ENGINE_SHARDS)",
                ),
                (
                    "IM_LOGIC_DB_POOL_SIZE",
                    "5000000000",
                    "db_pool_size: found unsigned int `5000000000`, expected a whole number \
                     from 1 to 1024 (from IM_LOGIC_DB_POOL_SIZE)",
                ),
                (
                    "IM_LOGIC_DB_POOL_SIZE",
                    "\"16\"",
                    "db_pool_size: found string \"16\", expected a whole number from 1 to \
                     1024: write it without quotes (from IM_LOGIC_DB_POOL_SIZE)",
                ),
            ] {
                jail.clear_env();
                jail.set_env(variable, value);
                let prefix = if variable.starts_with("IM_ENGINE_") {
                    "IM_ENGINE_"
                } else {
                    "IM_LOGIC_"
                };
                let err = load_tier(prefix).expect_err(value);
                assert_eq!(describe(&err, prefix), expected, "{variable}={value}");
            }
            Ok(())
        });
    }

    #[test]
    fn whole_number_error_in_file_gives_setting_range() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nlogic_gather_calls = 2.5\n")?;
            let err = load_tier("IM_ENGINE_").expect_err("a float");
            assert_eq!(
                describe(&err, "IM_ENGINE_"),
                "logic_gather_calls: found float `2.5`, expected a whole number from 1 to 64 \
                 (in im.toml)"
            );
            Ok(())
        });
    }

    #[test]
    fn setting_without_range_gives_type_bound() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env("IM_ENGINE_RING_ENTRIES", "many");
            let err = load_tier("IM_ENGINE_").expect_err("no number");
            assert_eq!(
                describe(&err, "IM_ENGINE_"),
                "ring_entries: found string \"many\", expected a whole number from 0 to \
                 4294967295 (from IM_ENGINE_RING_ENTRIES)"
            );
            Ok(())
        });
    }

    #[test]
    fn variable_is_named_as_written() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            for (variable, shown) in [
                ("IM_TEST_SHARDS.X", "(from IM_TEST_SHARDS.X)"),
                ("im_test_shards", "(from im_test_shards)"),
                ("Im_Test_Shards.x.Y", "(from Im_Test_Shards.x.Y)"),
            ] {
                jail.clear_env();
                jail.set_env(variable, "abc");
                let text = describe(&load().expect_err(variable), "IM_TEST_");
                assert!(text.starts_with("shards: "), "{variable}: {text}");
                assert!(text.ends_with(shown), "{variable}: {text}");
            }
            jail.clear_env();
            jail.set_env("IM_TEST_SHARDZ.X", "1");
            let text = describe(&load().expect_err("unknown"), "IM_TEST_");
            assert!(
                text.starts_with(
                    "unknown environment variable IM_TEST_SHARDZ.X: did you mean \
                                  IM_TEST_SHARDS?"
                ),
                "{text}"
            );
            Ok(())
        });
    }

    /// Settings whose names contain "password" but whose values are no secret, with the types
    /// the tiers give them.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    #[allow(dead_code)]
    struct PasswordLimits {
        max_password_hashes: u32,
        password_hash_wait_ms: u64,
        logic_max_password_calls: usize,
    }

    #[test]
    fn password_limit_errors_show_value_and_range() {
        for (toml, env_prefix, expected) in [
            (
                "max_password_hashes = -1",
                "IM_LOGIC_",
                "max_password_hashes: found signed int `-1`, expected a whole number from 0 to \
                 1024",
            ),
            (
                "password_hash_wait_ms = \"many\"",
                "IM_LOGIC_",
                "password_hash_wait_ms: found string \"many\", expected a whole number from 0 \
                 to 60000",
            ),
            (
                "password_hash_wait_ms = \"5\"",
                "IM_LOGIC_",
                "password_hash_wait_ms: found string \"5\", expected a whole number from 0 to \
                 60000: write it without quotes",
            ),
            (
                "logic_max_password_calls = 2.5",
                "IM_ENGINE_",
                "logic_max_password_calls: found float `2.5`, expected a whole number from 1 to \
                 65536",
            ),
        ] {
            let err = Figment::from(Toml::string(toml))
                .extract::<PasswordLimits>()
                .expect_err("a value of the wrong type");

            let text = describe(&err, env_prefix);

            assert_eq!(
                text,
                format!("{expected} (from TOML source string)"),
                "{toml}"
            );
        }
    }

    /// A setting named as a connection string, of a type that rejects every string.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    #[allow(dead_code)]
    struct TypedUrl {
        database_url: u32,
    }

    #[test]
    fn url_setting_error_hides_password() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_DATABASE_URL", "postgres://app:hunter2@db/im");
            let err = Figment::from(Env::prefixed("IM_LOGIC_"))
                .extract::<TypedUrl>()
                .expect_err("a string");

            let text = describe(&err, "IM_LOGIC_");

            assert!(
                text.starts_with("database_url: found string \"postgres://app:***@db/im\""),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn secret_lists_name_every_sensitive_field() {
        for (fields, secrets, urls) in [
            (ENGINE_FIELDS, ENGINE_SECRETS, ENGINE_URLS),
            (LOGIC_FIELDS, LOGIC_SECRETS, LOGIC_URLS),
        ] {
            for setting in secrets.iter().chain(urls) {
                assert!(fields.contains(setting), "{setting} is no setting");
            }
            for setting in secrets {
                assert!(!urls.contains(setting), "{setting} is in both lists");
            }
            for setting in fields {
                let sensitive = ["_secret", "_url", "_password", "_token"]
                    .iter()
                    .any(|suffix| setting.ends_with(suffix))
                    || ["password", "secret", "token"].contains(setting);
                let listed = secrets.contains(setting) || urls.contains(setting);
                assert!(
                    listed || !sensitive,
                    "{setting} looks like a secret or a connection string but is in neither list"
                );
                assert_eq!(is_secret(setting), secrets.contains(setting), "{setting}");
                assert_eq!(is_url_setting(setting), urls.contains(setting), "{setting}");
            }
        }
    }

    #[test]
    fn ranges_name_known_settings_once() {
        for (ranges, fields) in [(ENGINE_RANGES, ENGINE_FIELDS), (LOGIC_RANGES, LOGIC_FIELDS)] {
            for (index, range) in ranges.iter().enumerate() {
                assert!(fields.contains(&range.setting), "{}", range.setting);
                assert!(
                    ranges[index + 1..]
                        .iter()
                        .all(|other| other.setting != range.setting),
                    "{} appears twice",
                    range.setting
                );
                assert!(
                    range.max.is_none_or(|max| range.min <= max),
                    "{}",
                    range.setting
                );
            }
        }
    }

    #[test]
    fn list_element_error_names_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env("IM_TEST_ORIGINS", "[\"https://a\", 3]");
            let err = load().expect_err("3 is no string");
            let text = describe(&err, "IM_TEST_");
            assert!(text.starts_with("origins.1: found unsigned int"), "{text}");
            assert!(text.ends_with("(from IM_TEST_ORIGINS)"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn file_error_names_file_and_list_format() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\norigins = \"https://a\"\n")?;
            let err = load().expect_err("a string is no list");
            let text = describe(&err, "IM_TEST_");
            assert!(
                text.starts_with("origins: found string \"https://a\", expected a list"),
                "{text}"
            );
            assert!(text.contains("im.toml)"), "{text}");
            assert!(!text.contains("default."), "{text}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_gets_closest_field() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nshard = 2\n")?;
            let err = load().expect_err("shard is unknown");
            let text = describe(&err, "IM_TEST_");
            assert!(text.starts_with("unknown setting `shard`"), "{text}");
            assert!(text.contains("(in im.toml)"), "{text}");
            assert!(text.contains("did you mean `shards`?"), "{text}");
            assert!(!text.contains("origins"), "lists no other field: {text}");
            Ok(())
        });
    }

    #[test]
    fn unknown_variable_gets_closest_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env("IM_TEST_ORIGIN", "[]");
            let err = load().expect_err("origin is unknown");
            let text = describe(&err, "IM_TEST_");
            assert!(
                text.starts_with("unknown environment variable IM_TEST_ORIGIN:"),
                "{text}"
            );
            assert!(text.contains("did you mean IM_TEST_ORIGINS?"), "{text}");
            assert!(!text.contains("shards"), "lists no other field: {text}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_far_from_fields_gets_no_guess() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\ncolour = 2\n")?;
            let err = load().expect_err("colour is unknown");
            let text = describe(&err, "IM_TEST_");
            assert!(text.starts_with("unknown setting `colour`"), "{text}");
            assert!(!text.contains("did you mean"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn capitalised_key_names_lower_case_key() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nSHARDS = 2\n")?;
            let err = load().expect_err("keys are case-sensitive");
            let text = describe(&err, "IM_TEST_");
            assert!(text.starts_with("unknown setting `SHARDS`"), "{text}");
            assert!(text.contains("keys are lower case"), "{text}");
            assert!(text.contains("write `shards`"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn float_for_whole_number_shows_decimal_point() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nshards = 1.0\n")?;
            let err = load().expect_err("1.0 is a float");
            let text = describe(&err, "IM_TEST_");
            assert!(
                text.starts_with("shards: found float `1.0`, expected a whole number"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn huge_integer_in_file_names_setting() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "im.toml",
                "[logic]\n\n[engine]\nshards = 99999999999999999999999 # many\n",
            )?;
            let err = read_file(Path::new("im.toml")).expect_err("beyond 64 bits");
            let text = err.to_string();
            assert!(text.contains("im.toml, line 4"), "{text}");
            assert!(
                text.contains("shards = 99999999999999999999999 in [engine]"),
                "{text}"
            );
            assert!(text.contains("out of range"), "{text}");
            assert!(!text.contains('^'), "no snippet of the line: {text}");
            Ok(())
        });
    }

    #[test]
    fn huge_integer_in_file_names_setting_range() {
        Jail::expect_with(|jail| {
            for (text, expected) in [
                (
                    "[logic]\nmax_friends_per_user = 99999999999999999999\n",
                    "line 2: max_friends_per_user = 99999999999999999999 in [logic] is out of \
                     range, expected a whole number from 1 to 80000",
                ),
                (
                    "[engine]\n\"shards\" = -99999999999999999999\n",
                    "line 2: \"shards\" = -99999999999999999999 in [engine] is out of range, \
                     expected a whole number from 0 to 255",
                ),
                (
                    "logic.db_pool_size = 99999999999999999999\n",
                    "line 1: logic.db_pool_size = 99999999999999999999 is out of range, \
                     expected a whole number from 1 to 1024",
                ),
                (
                    "[engine]\nbridge_queue = 99999999999999999999\n",
                    "line 2: bridge_queue = 99999999999999999999 in [engine] is out of range, \
                     expected a whole number from 1 to 1048576",
                ),
                (
                    "[engine]\nlease_interval_ms = 99999999999999999999\n",
                    "line 2: lease_interval_ms = 99999999999999999999 in [engine] is out of \
                     range, expected a whole number from 1 to 9223372036854775807",
                ),
                (
                    "[engine]\nring_entries = 99999999999999999999\n",
                    "line 2: ring_entries = 99999999999999999999 in [engine] is out of range: a \
                     TOML integer must be from -9223372036854775808 to 9223372036854775807",
                ),
            ] {
                jail.create_file("im.toml", text)?;
                let err = read_file(Path::new("im.toml")).expect_err("beyond 64 bits");

                assert_eq!(
                    err.to_string(),
                    format!("the settings file im.toml, {expected}"),
                    "{text:?}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn huge_integer_of_unknown_key_is_not_shown() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "im.toml",
                "[engine]\ninternal_secert = 12345678901234567890123\n",
            )?;
            let text = read_file(Path::new("im.toml"))
                .expect_err("beyond 64 bits")
                .to_string();

            assert!(
                text.contains("line 2: internal_secert in [engine] is out of range"),
                "{text}"
            );
            assert!(!text.contains("1234567890"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn huge_integer_in_variable_is_out_of_range() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env("IM_TEST_SHARDS", "99999999999999999999999");
            let err = load().expect_err("beyond 64 bits");
            let text = describe(&err, "IM_TEST_");
            assert_eq!(
                text,
                "shards: 99999999999999999999999 is out of range, expected a whole number from \
                 0 to 4294967295 (from IM_TEST_SHARDS)"
            );
            Ok(())
        });
    }

    #[test]
    fn closest_field_guesses_likely_misspellings() {
        let fields = [
            "shards",
            "db_pool_size",
            "heartbeat_timeout_ms",
            "ws_addr",
            "ws_path",
        ];
        for (key, guess) in [
            ("shard", Some("shards")),
            ("sharsd", Some("shards")),
            ("db_pool", Some("db_pool_size")),
            ("heartbeat_timout_ms", Some("heartbeat_timeout_ms")),
            ("wsaddr", Some("ws_addr")),
            ("ws", None),
            ("colour", None),
            ("timeout", None),
        ] {
            assert_eq!(closest_field(key, &fields), guess, "{key}");
        }
    }

    #[test]
    fn toml_syntax_error_gives_line_and_column() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nshards = = 2\n")?;
            let err = read_file(Path::new("im.toml")).expect_err("two equals signs");
            let text = err.to_string();
            assert!(
                text.starts_with("parse error in the settings file im.toml at line 2, column 10: "),
                "{text}"
            );
            assert!(!text.contains('\n'), "one line: {text}");
            Ok(())
        });
    }

    #[test]
    fn duplicate_key_is_parse_error() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nshards = 2\nshards = 3\n")?;
            let err = read_file(Path::new("im.toml")).expect_err("a key given twice");
            let text = err.to_string();
            assert!(
                text.starts_with("parse error in the settings file im.toml at line 3, column 1: "),
                "{text}"
            );
            assert!(text.contains("duplicate key `shards`"), "{text}");
            assert!(text.ends_with(": keep one of them"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn huge_integer_without_table_names_key() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "shards = -99999999999999999999\n")?;
            let err = read_file(Path::new("im.toml")).expect_err("beyond 64 bits");
            let text = err.to_string();
            assert!(
                text.starts_with(
                    "the settings file im.toml, line 1: shards = -99999999999999999999 is out \
                     of range"
                ),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn check_env_rejects_variable_naming_no_setting() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_TEST_SHARDS", "2");
            check_env("IM_TEST_").expect("a setting is named");
            for name in ["IM_TEST_", "im_test_", "IM_TEST_SHARDS.", "IM_TEST_.SHARDS"] {
                jail.set_env(name, "3");
                let err = check_env("IM_TEST_").expect_err(name);
                let text = err.to_string();
                assert!(
                    text.starts_with(&format!("invalid environment variable `{name}`")),
                    "{text}"
                );
                assert!(!text.contains('3'), "the value stays hidden: {text}");
                std::env::remove_var(name);
            }
            Ok(())
        });
    }

    #[test]
    fn check_env_rejects_dotted_variable() {
        Jail::expect_with(|jail| {
            for (name, setting_variable) in [
                ("IM_TEST_SHARDS.X", "IM_TEST_SHARDS"),
                ("im_test_shards.x.y", "IM_TEST_SHARDS"),
            ] {
                jail.clear_env();
                jail.set_env(name, "31337");
                let text = check_env("IM_TEST_").expect_err(name).to_string();
                assert_eq!(
                    text,
                    format!(
                        "invalid environment variable `{name}`: a dot in the name sets a key \
                         inside a table, but no setting is a table: rename it to \
                         {setting_variable} or unset it"
                    )
                );
            }
            Ok(())
        });
    }

    #[test]
    fn variables_with_a_misspelt_prefix_are_found() {
        Jail::expect_with(|jail| {
            for name in [
                "IM_ENIGNE_SHARDS",
                "IM_ENGINES_SHARDS",
                "im_engne_shards",
                "IM_ENGINE_SHARDS",
                "IM_LOGIC_DB_POOL_SIZE",
                "IM_DATA_DIR",
                "IM_CONFIG",
            ] {
                jail.set_env(name, "1");
            }

            assert_eq!(
                misspelt_prefix_vars("IM_ENGINE_"),
                vec!["IM_ENGINES_SHARDS", "IM_ENIGNE_SHARDS", "im_engne_shards"]
            );
            Ok(())
        });
    }

    #[test]
    fn check_env_rejects_one_setting_in_two_cases() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_TEST_LISTEN_ADDR", "127.0.0.1:1");
            jail.set_env("im_test_listen_addr", "127.0.0.1:2");
            let text = check_env("IM_TEST_").expect_err("two names").to_string();
            assert!(text.contains("both set listen_addr"), "{text}");
            assert!(text.contains("IM_TEST_LISTEN_ADDR"), "{text}");
            assert!(text.contains("im_test_listen_addr"), "{text}");
            assert!(!text.contains("127.0.0.1"), "values stay hidden: {text}");
            Ok(())
        });
    }

    #[test]
    fn misspelt_table_is_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("good.toml", "[engine]\nshards = 2\n[logic]\n")?;
            jail.create_file(
                "bad.toml",
                "[engine]\nshards = 2\n[logik]\ndb_pool_size = 4\n",
            )?;
            jail.create_file("loose.toml", "shards = 2\n")?;
            read_file(Path::new("good.toml")).expect("known tables");
            let err = read_file(Path::new("bad.toml")).expect_err("logik");
            assert!(err.to_string().contains("holds `logik`"), "{err}");
            let err = read_file(Path::new("loose.toml")).expect_err("loose key");
            assert!(err.to_string().contains("holds `shards`"), "{err}");
            jail.create_file("capital.toml", "[ENGINE]\nshards = 2\n")?;
            let err = read_file(Path::new("capital.toml")).expect_err("capital table");
            assert!(
                err.to_string()
                    .contains("holds `ENGINE`: table names are lower case, write [engine]"),
                "{err}"
            );
            read_file(Path::new("/dev/null")).expect("an empty file");
            jail.create_file("array.toml", "[[engine]]\nshards = 2\n")?;
            let err = read_file(Path::new("array.toml")).expect_err("array of tables");
            assert!(
                err.to_string()
                    .contains("`engine` a value that is not a table"),
                "{err}"
            );
            jail.create_file("scalar.toml", "[engine]\nlogic = 5\n")?;
            read_file(Path::new("scalar.toml")).expect("a setting named logic in [engine]");
            jail.create_file("scalar.toml", "logic = 5\n")?;
            let err = read_file(Path::new("scalar.toml")).expect_err("a number");
            assert!(
                err.to_string()
                    .contains("`logic` a value that is not a table"),
                "{err}"
            );
            let err = read_file(Path::new("missing.toml")).expect_err("missing");
            let looked_at = std::env::current_dir()
                .expect("working directory")
                .join("missing.toml");
            assert!(
                err.to_string().starts_with(&format!(
                    "settings file {} not found: pass an existing file",
                    looked_at.display()
                )),
                "the error names the absolute path: {err}"
            );
            Ok(())
        });
    }

    #[test]
    fn numeric_secret_in_file_is_not_shown() {
        Jail::expect_with(|jail| {
            for (value, kind) in [
                ("1234567890123456789", "signed int"),
                ("9.876543210987654e16", "float"),
                ("true", "bool"),
            ] {
                jail.create_file("im.toml", &format!("[engine]\ninternal_secret = {value}\n"))?;
                let err = load().expect_err("a secret is a string");
                let text = describe(&err, "IM_TEST_");
                assert!(
                    text.starts_with(&format!(
                        "internal_secret: found {kind} (value not shown), expected a string"
                    )),
                    "{text}"
                );
                assert!(text.contains("(in im.toml)"), "{text}");
                assert!(!text.contains("123456"), "{text}");
                assert!(!text.contains("9.87"), "{text}");
                assert!(!text.contains("true"), "{text}");
            }
            Ok(())
        });
    }

    #[test]
    fn huge_secret_integer_in_file_is_not_shown() {
        Jail::expect_with(|jail| {
            for key in ["internal_secret", "server_secret", "\"internal_secret\""] {
                jail.create_file(
                    "im.toml",
                    &format!("[engine]\n{key} = 12345678901234567890123\n"),
                )?;
                let err = read_file(Path::new("im.toml")).expect_err("beyond 64 bits");
                let text = err.to_string();
                assert!(
                    text.contains(&format!("line 2: {key} in [engine] is out of range")),
                    "{text}"
                );
                assert!(!text.contains("1234567890"), "{text}");
            }
            Ok(())
        });
    }

    #[test]
    fn very_long_unknown_key_is_cut() {
        let key = "a".repeat(1_000_000);
        assert_eq!(closest_field(&key, &["shards", "origins"]), None);
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", &format!("[engine]\n{key} = 1\n"))?;
            let err = load().expect_err("an unknown key");
            let text = describe(&err, "IM_TEST_");
            let shown = format!("unknown setting `{}...` (in im.toml)", "a".repeat(64));
            assert_eq!(text, shown);
            Ok(())
        });
    }

    #[test]
    fn very_long_unknown_variable_is_cut() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env(format!("IM_TEST_{}", "A".repeat(100_000)), "1");
            let err = load().expect_err("an unknown variable");
            let text = describe(&err, "IM_TEST_");
            assert_eq!(
                text,
                format!("unknown environment variable IM_TEST_{}...", "A".repeat(56))
            );
            Ok(())
        });
    }

    #[test]
    fn control_characters_in_keys_are_escaped() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "im.toml",
                "[engine]\n\"shards\\n2026-01-01T00:00:00Z ERROR forged line\" = 2\n",
            )?;
            let text = describe(&load().expect_err("an unknown key"), "IM_TEST_");
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(
                text.starts_with(
                    "unknown setting `shards\\n2026-01-01T00:00:00Z ERROR forged line`"
                ),
                "{text}"
            );
            jail.create_file("im.toml", "[engine]\n\"\\u001b[31mRED\" = 2\n")?;
            let text = describe(&load().expect_err("an unknown key"), "IM_TEST_");
            assert!(!text.contains('\u{1b}'), "no escape sequence: {text}");
            assert!(
                text.starts_with("unknown setting `\\u{1b}[31mRED`"),
                "{text}"
            );
            jail.create_file("im.toml", "\"engine\\nFAKE LINE\" = 2\n")?;
            let err = read_file(Path::new("im.toml")).expect_err("an unknown table");
            let text = err.to_string();
            assert!(text.contains("holds `engine\\nFAKE LINE`"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn control_characters_in_variable_names_are_escaped() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            jail.set_env("IM_TEST_X\nFAKE LINE", "1");
            let text = describe(&load().expect_err("an unknown variable"), "IM_TEST_");
            assert_eq!(text, "unknown environment variable IM_TEST_X\\nFAKE LINE");
            std::env::remove_var("IM_TEST_X\nFAKE LINE");
            jail.set_env("IM_TEST_X..\nFAKE LINE", "1");
            let text = check_env("IM_TEST_")
                .expect_err("an empty part")
                .to_string();
            assert!(
                text.starts_with("invalid environment variable `IM_TEST_X..\\nFAKE LINE`"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn toml_error_at_end_of_file_has_reason() {
        Jail::expect_with(|jail| {
            for (text, column) in [
                ("[engine]\nshards =", 9),
                ("[engine]\nshards =\n", 9),
                ("[engine]\nshards = # none\n", 10),
            ] {
                jail.create_file("im.toml", text)?;
                let err = read_file(Path::new("im.toml")).expect_err("no value");
                assert_eq!(
                    err.to_string(),
                    format!(
                        "parse error in the settings file im.toml at line 2, column {column}: a \
                         value is missing after `=`"
                    ),
                    "{text:?}"
                );
            }
            jail.create_file("im.toml", "[engine\nshards = 2\n")?;
            let err = read_file(Path::new("im.toml")).expect_err("no closing bracket");
            assert_eq!(
                err.to_string(),
                "parse error in the settings file im.toml at line 1, column 8: invalid table \
                 header: expected `.`, `]`"
            );
            Ok(())
        });
    }

    #[test]
    fn file_over_size_limit_is_rejected() {
        Jail::expect_with(|jail| {
            let comment = format!("# {}\n", "x".repeat(1022));
            jail.create_file("big.toml", &format!("[engine]\n{}", comment.repeat(2048)))?;
            let err = read_file(Path::new("big.toml")).expect_err("2 MiB");
            assert_eq!(
                err.to_string(),
                "cannot read the settings file big.toml: it is larger than the maximum of \
                 1048576 bytes (1 MiB) for a settings file"
            );
            jail.create_file("fits.toml", &format!("[engine]\n{}", comment.repeat(1000)))?;
            read_file(Path::new("fits.toml")).expect("1000 KiB");
            Ok(())
        });
    }

    #[test]
    fn devices_other_than_dev_null_are_rejected_unread() {
        for device in ["/dev/zero", "/dev/tty", "/dev/urandom"] {
            if !Path::new(device).exists() {
                continue;
            }
            let err = read_file(Path::new(device)).expect_err("a device");
            let text = err.to_string();
            assert!(text.contains(device), "{text}");
            assert!(text.contains("it is a device"), "{text}");
        }
    }

    /// Runs [`read_file`] on `path` in a thread and returns its error, or panics when the read
    /// has not ended within 10 s.
    fn read_file_error_within_deadline(path: &'static str) -> FileError {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(read_file(Path::new(path)));
        });
        match receiver.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(result) => result.expect_err(path),
            Err(_) => panic!("reading {path} blocked for 10 s"),
        }
    }

    #[test]
    fn kernel_files_are_rejected_without_blocking() {
        for (path, file_system) in [
            ("/proc/kmsg", "procfs (/proc)"),
            ("/proc/self/status", "procfs (/proc)"),
            ("/sys/kernel/tracing/trace_pipe", "tracefs"),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "sysfs (/sys)",
            ),
        ] {
            if !Path::new(path).exists() {
                continue;
            }
            let text = read_file_error_within_deadline(path).to_string();
            assert!(
                text.starts_with(&format!("cannot read the settings file {path}: ")),
                "{text}"
            );
            assert!(
                text.contains(&format!("it is a file of {file_system}")),
                "{text}"
            );
            assert!(text.ends_with("pass a regular file"), "{text}");
        }
    }

    #[test]
    fn directory_is_rejected_by_name() {
        Jail::expect_with(|jail| {
            let dir = jail.directory().join("im.toml");
            std::fs::create_dir(&dir).expect("directory");
            let text = read_file(&dir).expect_err("a directory").to_string();
            assert!(
                text.contains("im.toml: it is a directory, not a file"),
                "{text}"
            );
            assert!(!text.contains("os error"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn fifo_is_rejected_without_blocking() {
        Jail::expect_with(|jail| {
            let fifo = jail.directory().join("im.toml");
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo runs");
            assert!(status.success(), "mkfifo {}", fifo.display());
            let err = read_file(&fifo).expect_err("a FIFO");
            let text = err.to_string();
            assert!(
                text.contains("im.toml: it is a FIFO (named pipe)"),
                "{text}"
            );
            assert!(text.contains("pass a regular file"), "{text}");
            Ok(())
        });
    }
}
