//! The check of environment variable names that the settings loader would skip, and the
//! reading of variables that figment must not parse as TOML values.

use figment::providers::Env;

use crate::text::shown_name;

/// An environment variable of a settings prefix that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A variable that starts with the prefix but names no setting.
    #[error(
        "invalid environment variable `{variable}`: it names no setting after {prefix}; rename \
         it to {prefix}<SETTING> with a setting listed in im.toml, or unset it"
    )]
    NoSetting {
        /// The variable's name, cut and escaped as [`shown_name`] does.
        variable: String,
        /// The prefix it starts with, such as `IM_ENGINE_`.
        prefix: String,
    },
    /// A variable whose name has a dot after the prefix, such as `IM_ENGINE_SHARDS.X`. figment
    /// takes the part after the dot as a key inside the setting, but no setting is a table. So
    /// figment would fail with a type error or an unknown field, named after the part before
    /// the dot.
    #[error(
        "invalid environment variable `{variable}`: a dot in the name sets a key inside a \
         table, but no setting is a table: rename it to {setting_variable} or unset it"
    )]
    Dotted {
        /// The variable's name, cut and escaped as [`shown_name`] does.
        variable: String,
        /// The variable of the setting before the first dot, such as `IM_ENGINE_SHARDS`.
        setting_variable: String,
    },
    /// Two variables that name the same setting in different case or spacing, such as
    /// `IM_LOGIC_LISTEN_ADDR` and `im_logic_listen_addr`, of which figment would silently take
    /// one.
    #[error(
        "environment variables `{first}` and `{second}` both set {setting}: unset one of them"
    )]
    Duplicate {
        /// The name found first, cut and escaped.
        first: String,
        /// The name found second, cut and escaped.
        second: String,
        /// The setting, in lower case.
        setting: String,
    },
}

/// Rejects a variable named `prefix` followed by nothing, such as `IM_ENGINE_`, or by a name
/// with an empty part between dots, such as `IM_ENGINE_SHARDS.`. figment's `Env::prefixed`
/// skips such a variable without an error (figment 0.10.19), whereas it reports any other
/// unknown name as an unknown field. It also rejects any other name with a dot, such as
/// `IM_ENGINE_SHARDS.X`, which figment would report under the name before the dot. Like
/// figment, the check trims the name and matches the prefix in any case, so it also rejects two
/// variables that name one setting in different case. Values are never read, since they may be
/// secrets.
///
/// # Errors
///
/// [`EnvError`] naming the first such variable.
pub fn check_env(prefix: &str) -> Result<(), EnvError> {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let Some(setting) = strip_env_prefix(&name, prefix) else {
            continue;
        };
        if setting.split('.').any(str::is_empty) {
            return Err(EnvError::NoSetting {
                variable: shown_name(&name),
                prefix: prefix.to_owned(),
            });
        }
        if let Some((first, _)) = setting.split_once('.') {
            return Err(EnvError::Dotted {
                variable: shown_name(&name),
                setting_variable: shown_name(&format!(
                    "{prefix}{}",
                    first.trim().to_ascii_uppercase()
                )),
            });
        }
        let setting = setting.to_ascii_lowercase();
        if let Some(first) = seen.get(&setting) {
            return Err(EnvError::Duplicate {
                first: shown_name(first),
                second: shown_name(&name),
                setting: shown_name(&setting),
            });
        }
        seen.insert(setting, name.into_owned());
    }
    Ok(())
}

/// Returns the names of variables whose prefix is one or two edits away from `prefix`, such
/// as `IM_ENIGNE_SHARDS` for `IM_ENGINE_`. figment never reads them, so their settings are left
/// out without a word unless the caller warns. Names are cut and escaped as [`shown_name`] does.
pub fn misspelt_prefix_vars(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let upper = name.trim().to_ascii_uppercase();
        if upper.starts_with(prefix) {
            continue;
        }
        let close = (prefix.len().saturating_sub(1)..=prefix.len() + 1).any(|len| {
            upper.get(..len).is_some_and(|head| {
                head.ends_with('_') && strsim::damerau_levenshtein(head, prefix) <= 2
            })
        });
        if close {
            found.push(shown_name(&name));
        }
    }
    found.sort_unstable();
    found
}

/// Returns figment's provider of the `prefix` variables without those that name one of
/// `raw_text` settings, which [`raw_env_value`] reads instead. figment parses each value as a
/// TOML value, so a secret of digits would become a number and fail to load as a string.
pub fn prefixed_env(prefix: &str, raw_text: &'static [&'static str]) -> Env {
    // figment 0.10.19 passes the name without the prefix, not yet trimmed, to the filter.
    Env::prefixed(prefix).filter(move |key| {
        !raw_text
            .iter()
            .any(|setting| key.as_str().trim().eq_ignore_ascii_case(setting))
    })
}

/// Returns the raw value of the variable that sets `setting`, matched as figment 0.10.19's
/// `Env::prefixed` matches names. The name is trimmed, and the prefix and the setting may be in
/// any ASCII case, so `im_engine_internal_secret` and `"IM_ENGINE_INTERNAL_SECRET "` both set
/// `internal_secret`. As in figment, the last matching variable in the environment wins, and
/// a value that is not UTF-8 is converted lossily.
pub fn raw_env_value(prefix: &str, setting: &str) -> Option<String> {
    std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            strip_env_prefix(&name, prefix).is_some_and(|rest| rest.eq_ignore_ascii_case(setting))
        })
        .last()
        .map(|(_, value)| value.to_string_lossy().into_owned())
}

/// Returns the trimmed rest of the trimmed `name` after `prefix`, matched in any ASCII case, or
/// `None` when `name` does not start with `prefix`.
pub(crate) fn strip_env_prefix<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let trimmed = name.trim();
    let start = trimmed.get(..prefix.len())?;
    start
        .eq_ignore_ascii_case(prefix)
        .then(|| trimmed[prefix.len()..].trim())
}
