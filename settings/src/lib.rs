//! Settings helpers shared by `im-engine` and `im-logic`: plain error text that names a setting
//! as im.toml and the environment spell it, and a check that a settings file contains only the
//! `[engine]` and `[logic]` tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::{Figment, Source};

/// Tables allowed at the top level of a settings file.
pub const TABLES: [&str; 2] = ["engine", "logic"];

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file is missing, unreadable or not TOML.
    #[error("cannot read the settings file {}: {reason}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The reason, such as the I/O or TOML error.
        reason: String,
    },
    /// A known table name is given a value that is not a single table, such as `[[engine]]` or
    /// `engine = 5`, whose settings would otherwise be skipped.
    #[error(
        "the settings file {} gives `{key}` a value that is not a table: write its settings \
         under one [{key}] header, not [[{key}]] or `{key} = ...`",
        .path.display()
    )]
    NotATable {
        /// The file.
        path: PathBuf,
        /// The top-level key.
        key: String,
    },
    /// A top-level key other than the known tables, such as a misspelt table name.
    #[error(
        "the settings file {} holds `{key}`, which is neither [engine] nor [logic]: \
         check its spelling, and put every setting inside one of those tables",
        .path.display()
    )]
    UnknownTable {
        /// The file.
        path: PathBuf,
        /// The top-level key.
        key: String,
    },
}

/// Checks that `path` is a TOML file whose top level contains only [`TABLES`], each of them a
/// table, so that a misspelt table or an array of tables is reported instead of being skipped
/// with all its settings.
///
/// # Errors
///
/// [`FileError`] naming the file and, for an unknown key, that key.
pub fn check_tables(path: &Path) -> Result<(), FileError> {
    let unreadable = |reason: String| FileError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    // Not `is_file`: /dev/null, an empty file that is no regular file, must pass.
    if !path.exists() {
        return Err(unreadable(
            "no such file: pass an existing file with --config or IM_CONFIG, or set neither to \
             use im.toml in the working directory if there is one, else the defaults"
                .to_owned(),
        ));
    }
    let top: BTreeMap<String, figment::value::Value> = Figment::from(Toml::file_exact(path))
        .extract()
        .map_err(|err| unreadable(describe(&err, "")))?;
    for (key, value) in top {
        if !TABLES.contains(&key.as_str()) {
            return Err(FileError::UnknownTable {
                path: path.to_path_buf(),
                key,
            });
        }
        if value.as_dict().is_none() {
            return Err(FileError::NotATable {
                path: path.to_path_buf(),
                key,
            });
        }
    }
    Ok(())
}

/// Describes each error of `err`, joined by "; ". Each part names the setting as im.toml spells
/// it, says what is wrong in plain words, and names the source of the value. For a value from the
/// environment, that source is the variable (`env_prefix` plus the setting in capitals).
pub fn describe(err: &figment::Error, env_prefix: &str) -> String {
    err.clone()
        .into_iter()
        .map(|one| describe_one(&one, env_prefix))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_one(one: &figment::Error, env_prefix: &str) -> String {
    let key = one.path.join(".").to_lowercase();
    let origin = match &one.metadata {
        Some(metadata) => match &metadata.source {
            Some(Source::File(path)) => format!(" (in {})", path.display()),
            // A list element's path ends in its index, which is no part of the variable's name.
            _ if metadata.name.contains("environment variable") && !key.is_empty() => {
                format!(" (from {env_prefix}{})", one.path[0].to_uppercase())
            }
            Some(source) => format!(" (from {} {source})", metadata.name),
            None => format!(" (from {})", metadata.name),
        },
        None => String::new(),
    };
    let what = match &one.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("found {actual}, expected {}", plain(expected))
        }
        other => other.to_string().trim().replace('\n', " "),
    };
    if key.is_empty() {
        format!("{what}{origin}")
    } else {
        format!("{key}: {what}{origin}")
    }
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
    use figment::providers::{Env, Serialized};
    use figment::Jail;
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
