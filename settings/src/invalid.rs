//! The error of a setting whose value has the right type but is not accepted, worded the same
//! for both tiers. It names the source that set the value: the settings file, a variable, a
//! flag or the default.

use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Serialize;

use crate::text::escape_control;

/// The name of the provider of command-line flags, which [`origin_of`] looks for.
const FLAGS_PROVIDER: &str = "command-line flags";

/// A setting whose value has the right type but is out of range or does not fit the other
/// settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {table} setting {setting} = {value}{}: {fix}",
    .origin.as_ref().map(|origin| format!(" ({origin})")).unwrap_or_default()
)]
pub struct InvalidSetting {
    /// The table of the setting, "engine" or "logic".
    pub table: &'static str,
    /// The setting, as im.toml spells it.
    pub setting: &'static str,
    /// The rejected value as errors may show it: escaped, without a secret or a password.
    pub value: String,
    /// The fix, such as "use a value from 1 to 64".
    pub fix: String,
    /// The source of the value, as [`origin_of`] names it, or `None` for settings built in
    /// code.
    pub origin: Option<String>,
}

impl InvalidSetting {
    /// Returns the error for `value` of `setting` in `table`, with control characters of the
    /// value escaped. The caller must hide a secret or a password first.
    pub fn new(
        table: &'static str,
        setting: &'static str,
        value: impl ToString,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            table,
            setting,
            value: escape_control(&value.to_string()).into_owned(),
            fix: fix.into(),
            origin: None,
        }
    }

    /// Returns the error for `value` of `setting` outside `min..=max`, with the fix "use a
    /// value from MIN to MAX".
    pub fn out_of_range(
        table: &'static str,
        setting: &'static str,
        value: u64,
        min: u64,
        max: u64,
    ) -> Self {
        Self::new(
            table,
            setting,
            value,
            format!("use a value from {min} to {max}"),
        )
    }

    /// Returns the error with the source of the value in `figment`, as [`origin_of`] names it.
    #[must_use]
    pub fn located(self, figment: &Figment, env_prefix: &str) -> Self {
        let origin = origin_of(figment, self.setting, env_prefix);
        Self {
            origin: Some(origin),
            ..self
        }
    }
}

/// Returns `Ok` when `value` of `setting` is in `min..=max`, else [`InvalidSetting::out_of_range`].
///
/// # Errors
///
/// [`InvalidSetting`] naming the setting, the value and the range.
pub fn check_range(
    table: &'static str,
    setting: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), InvalidSetting> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(InvalidSetting::out_of_range(
        table, setting, value, min, max,
    ))
}

/// Names the source of the value of `setting` in `figment`: "in PATH" for the settings file,
/// "from VARIABLE" for an environment variable, named as written in the environment, "from
/// --flag" for a flag given through [`flags`], and "the default" for anything else.
pub fn origin_of(figment: &Figment, setting: &str, env_prefix: &str) -> String {
    let Some(metadata) = figment.find_metadata(setting) else {
        return "the default".to_owned();
    };
    if let Some(Source::File(path)) = &metadata.source {
        return format!("in {}", escape_control(&path.display().to_string()));
    }
    if metadata.name.contains("environment variable") {
        return format!("from {}", crate::variable_name(env_prefix, setting));
    }
    if metadata.name == FLAGS_PROVIDER {
        return format!("from --{}", setting.replace('_', "-"));
    }
    "the default".to_owned()
}

/// figment's provider of the command-line flags in `cli`, a clap struct that serializes only the
/// flags given. Its name lets [`origin_of`] tell a flag from a default.
pub fn flags<T: Serialize>(cli: T) -> Flags<T> {
    Flags(cli)
}

/// The provider that [`flags`] returns.
#[derive(Debug)]
pub struct Flags<T>(T);

impl<T: Serialize> Provider for Flags<T> {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAGS_PROVIDER)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        figment::providers::Serialized::defaults(&self.0).data()
    }
}

/// figment's provider of the `settings` whose variables are read as raw text (see
/// [`crate::raw_env_value`]), named as figment names its environment provider, so that errors
/// name the variable that set them.
pub fn raw_env(prefix: &str, settings: &'static [&'static str]) -> RawEnv {
    RawEnv {
        prefix: prefix.to_owned(),
        settings,
    }
}

/// The provider that [`raw_env`] returns.
#[derive(Debug)]
pub struct RawEnv {
    prefix: String,
    settings: &'static [&'static str],
}

impl Provider for RawEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{}` environment variable(s)", self.prefix))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for setting in self.settings {
            if let Some(value) = crate::raw_env_value(&self.prefix, setting) {
                dict.insert((*setting).to_owned(), value.into());
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::providers::{Env, Serialized};
    use figment::Jail;
    use serde::Deserialize;

    use super::*;
    use crate::SettingsFile;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Settings {
        shards: u32,
        bridge_queue: u32,
        ring_entries: u32,
        internal_secret: String,
    }

    /// Flags as clap would give them: `None` for a flag not given.
    #[derive(Debug, Default, Serialize)]
    struct Cli {
        #[serde(skip_serializing_if = "Option::is_none")]
        bridge_queue: Option<u32>,
    }

    fn figment(file: SettingsFile, cli: Cli) -> Figment {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Figment::from(file).focus("engine"))
            .merge(crate::prefixed_env("IM_ENGINE_", &["internal_secret"]))
            .merge(raw_env("IM_ENGINE_", &["internal_secret"]))
            .merge(flags(cli))
    }

    #[test]
    fn origin_names_file_variable_flag_or_default() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nshards = 3\n")?;
            jail.set_env("im_engine_ring_entries", "8");
            jail.set_env("IM_ENGINE_INTERNAL_SECRET", "0123456789abcdef");
            let file = crate::read_file(std::path::Path::new("im.toml")).expect("a file");
            let cli = Cli {
                bridge_queue: Some(9),
            };
            let figment = figment(file, cli);

            assert_eq!(origin_of(&figment, "shards", "IM_ENGINE_"), "in im.toml");
            assert_eq!(
                origin_of(&figment, "ring_entries", "IM_ENGINE_"),
                "from im_engine_ring_entries"
            );
            assert_eq!(
                origin_of(&figment, "internal_secret", "IM_ENGINE_"),
                "from IM_ENGINE_INTERNAL_SECRET"
            );
            assert_eq!(
                origin_of(&figment, "bridge_queue", "IM_ENGINE_"),
                "from --bridge-queue"
            );
            assert_eq!(
                origin_of(&figment, "sqpoll_idle_ms", "IM_ENGINE_"),
                "the default"
            );
            Ok(())
        });
    }

    #[test]
    fn default_value_is_named_as_default() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\n")?;
            let file = crate::read_file(std::path::Path::new("im.toml")).expect("a file");
            let figment = figment(file, Cli::default());

            assert_eq!(origin_of(&figment, "shards", "IM_ENGINE_"), "the default");
            Ok(())
        });
    }

    #[test]
    fn raw_variable_keeps_digits_as_text() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_ENGINE_INTERNAL_SECRET", "0123456789012345");
            let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
                .merge(Env::prefixed("IM_ENGINE_").ignore(&["internal_secret"]))
                .merge(raw_env("IM_ENGINE_", &["internal_secret"]))
                .extract()?;

            assert_eq!(settings.internal_secret, "0123456789012345");
            Ok(())
        });
    }

    #[test]
    fn invalid_setting_names_origin_after_value() {
        let plain = InvalidSetting::out_of_range("logic", "db_pool_size", 5000, 1, 1024);
        assert_eq!(
            plain.to_string(),
            "invalid logic setting db_pool_size = 5000: use a value from 1 to 1024"
        );
        let located = InvalidSetting {
            origin: Some("from IM_LOGIC_DB_POOL_SIZE".to_owned()),
            ..plain
        };
        assert_eq!(
            located.to_string(),
            "invalid logic setting db_pool_size = 5000 (from IM_LOGIC_DB_POOL_SIZE): use a \
             value from 1 to 1024"
        );
    }

    #[test]
    fn invalid_value_is_escaped() {
        let invalid = InvalidSetting::new("engine", "ws_path", "a\nb", "start it with '/'");

        assert_eq!(invalid.value, "a\\nb");
    }

    #[test]
    fn range_check_accepts_both_ends() {
        assert_eq!(check_range("engine", "shards", 0, 0, 255), Ok(()));
        assert_eq!(check_range("engine", "shards", 255, 0, 255), Ok(()));
        let err = check_range("engine", "shards", 256, 0, 255).expect_err("above");
        assert_eq!(err.fix, "use a value from 0 to 255");
    }
}
