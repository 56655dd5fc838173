//! Settings helpers shared by `im-engine` and `im-logic`: plain error text that names a setting
//! as im.toml and the environment spell it, a check that a settings file contains only the
//! `[engine]` and `[logic]` tables, and a check for prefixed variables that name no setting.

mod env;
mod file;

use figment::error::{Actual, Kind};
use figment::Source;

pub use env::{check_env, EnvError};
pub use file::{check_tables, FileError, TABLES};

/// Describes each error of `err`, joined by "; ". Each part names the setting as im.toml spells
/// it, says what is wrong in plain words, and names the source of the value. For a value from the
/// environment, that source is the variable (`env_prefix` plus the setting in capitals). An
/// unknown key or variable gets the closest known one as a guess, never the list of all fields.
pub fn describe(err: &figment::Error, env_prefix: &str) -> String {
    err.clone()
        .into_iter()
        .map(|one| describe_one(&one, env_prefix))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_one(one: &figment::Error, env_prefix: &str) -> String {
    let key = one.path.join(".").to_lowercase();
    let from_env = one
        .metadata
        .as_ref()
        .is_some_and(|metadata| metadata.name.contains("environment variable"));
    // A list element's path ends in its index, which is no part of the variable's name.
    let variable = match one.path.first() {
        Some(first) if from_env => Some(format!("{env_prefix}{}", first.to_uppercase())),
        _ => None,
    };
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
                None => describe_unknown_key(&one.path, found, fields, &origin),
            };
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            describe_mismatch(actual, expected)
        }
        other => other.to_string().trim().replace('\n', " "),
    };
    if key.is_empty() {
        format!("{what}{origin}")
    } else {
        format!("{key}: {what}{origin}")
    }
}

/// Describes an unknown key of a file, with a guess among `fields` instead of all of them. TOML
/// keys are case-sensitive, so a key in capitals is unknown even when its lower-case form is a
/// field.
fn describe_unknown_key(path: &[String], found: &str, fields: &[&str], origin: &str) -> String {
    let name = if path.is_empty() {
        found.to_owned()
    } else {
        path.join(".")
    };
    let lower = found.to_lowercase();
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
    let guess = closest_field(found, fields)
        .map(|field| format!(": did you mean {env_prefix}{}?", field.to_uppercase()));
    format!(
        "unknown environment variable {variable}{}",
        guess.unwrap_or_default()
    )
}

/// Returns the field of `fields` closest to `key`, if one is close enough to be a likely
/// misspelling: at most one edit in three characters apart (Damerau-Levenshtein distance), or a
/// start of the field such as `db_pool` for `db_pool_size`. On a tie, the earlier field wins.
fn closest_field<'a>(key: &str, fields: &[&'a str]) -> Option<&'a str> {
    let max_distance = (key.chars().count() / 3).max(1);
    let by_distance = fields
        .iter()
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
/// decimal point (`1.0`, where figment writes `1`), and digits that fit no integer, which
/// figment passes on as a string, are called out of range.
fn describe_mismatch(actual: &Actual, expected: &str) -> String {
    let expected = plain(expected);
    match actual {
        Actual::Float(value) => format!("found float `{value:?}`, expected {expected}"),
        Actual::Str(text) if expected.starts_with("a whole number") && is_integer(text) => {
            format!("{text} is out of range, expected {expected}")
        }
        other => format!("found {other}, expected {expected}"),
    }
}

/// True for decimal digits with an optional sign, such as `-12`.
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// Translates serde's name for an expected type into words for someone who writes settings.
fn plain(expected: &str) -> String {
    let max = match expected {
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        "a sequence" => {
            return "a list, written as a TOML array such as [\"https://a.example\", \
                    \"https://b.example\"], also in an environment variable"
                .to_owned()
        }
        other => return other.to_owned(),
    };
    format!("a whole number from 0 to {max}")
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
    }

    fn load() -> Result<Settings, figment::Error> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Figment::from(Toml::file_exact("im.toml")).focus("engine"))
            .merge(Env::prefixed("IM_TEST_"))
            .extract()
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
            let err = check_tables(Path::new("im.toml")).expect_err("beyond 64 bits");
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
            let err = check_tables(Path::new("im.toml")).expect_err("two equals signs");
            let text = err.to_string();
            assert!(
                text.starts_with("cannot read the settings file im.toml: line 2, column 10: "),
                "{text}"
            );
            assert!(!text.contains('\n'), "one line: {text}");
            Ok(())
        });
    }

    #[test]
    fn huge_integer_without_table_names_key() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "shards = -99999999999999999999\n")?;
            let err = check_tables(Path::new("im.toml")).expect_err("beyond 64 bits");
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
    fn misspelt_table_is_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("good.toml", "[engine]\nshards = 2\n[logic]\n")?;
            jail.create_file(
                "bad.toml",
                "[engine]\nshards = 2\n[logik]\ndb_pool_size = 4\n",
            )?;
            jail.create_file("loose.toml", "shards = 2\n")?;
            check_tables(Path::new("good.toml")).expect("known tables");
            let err = check_tables(Path::new("bad.toml")).expect_err("logik");
            assert!(err.to_string().contains("holds `logik`"), "{err}");
            let err = check_tables(Path::new("loose.toml")).expect_err("loose key");
            assert!(err.to_string().contains("holds `shards`"), "{err}");
            check_tables(Path::new("/dev/null")).expect("an empty file");
            jail.create_file("array.toml", "[[engine]]\nshards = 2\n")?;
            let err = check_tables(Path::new("array.toml")).expect_err("array of tables");
            assert!(
                err.to_string()
                    .contains("`engine` a value that is not a table"),
                "{err}"
            );
            jail.create_file("scalar.toml", "[engine]\nlogic = 5\n")?;
            check_tables(Path::new("scalar.toml")).expect("a setting named logic in [engine]");
            jail.create_file("scalar.toml", "logic = 5\n")?;
            let err = check_tables(Path::new("scalar.toml")).expect_err("a number");
            assert!(
                err.to_string()
                    .contains("`logic` a value that is not a table"),
                "{err}"
            );
            let err = check_tables(Path::new("missing.toml")).expect_err("missing");
            assert!(
                err.to_string().contains("missing.toml: no such file"),
                "{err}"
            );
            Ok(())
        });
    }
}
