//! The check of environment variable names that the settings loader would skip.

/// An environment variable that starts with a settings prefix but names no setting.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid environment variable `{variable}`: it names no setting after {prefix}; rename it \
     to {prefix}<SETTING> with a setting listed in im.toml, or unset it"
)]
pub struct EnvError {
    /// The variable's name.
    pub variable: String,
    /// The prefix it starts with, such as `IM_ENGINE_`.
    pub prefix: String,
}

/// Rejects a variable named `prefix` followed by nothing, such as `IM_ENGINE_`, or by a name
/// with an empty part between dots, such as `IM_ENGINE_SHARDS.`. figment's `Env::prefixed`
/// skips such a variable without an error (figment 0.10.19), whereas it reports any other
/// unknown name as an unknown field. Like figment, the check trims the name and matches the
/// prefix in any case. The value is never read, since it may be a secret.
///
/// # Errors
///
/// [`EnvError`] naming the first such variable.
pub fn check_env(prefix: &str) -> Result<(), EnvError> {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let trimmed = name.trim();
        let Some(start) = trimmed.get(..prefix.len()) else {
            continue;
        };
        if !start.eq_ignore_ascii_case(prefix) {
            continue;
        }
        let setting = trimmed[prefix.len()..].trim();
        if setting.split('.').any(str::is_empty) {
            return Err(EnvError {
                variable: name.into_owned(),
                prefix: prefix.to_owned(),
            });
        }
    }
    Ok(())
}
