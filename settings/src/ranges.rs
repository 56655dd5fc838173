//! The accepted values of whole-number settings whose limits are narrower than their type's,
//! for errors about a value that is no whole number of that type. Without them such an error
//! would give the type's bound, such as 0 to 4294967295 for a `u32`. Errors about a value from
//! the file, a variable or a flag all take the range from here.

/// The values a whole-number setting accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingRange {
    /// The setting, as im.toml spells it.
    pub setting: &'static str,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value, or `None` for the maximum of the setting's type.
    pub max: Option<u64>,
}

const fn range(setting: &'static str, min: u64, max: u64) -> SettingRange {
    SettingRange {
        setting,
        min,
        max: Some(max),
    }
}

const fn at_least(setting: &'static str, min: u64) -> SettingRange {
    SettingRange {
        setting,
        min,
        max: None,
    }
}

/// Ranges of `[engine]` settings, as `Config::validate` of im-engine checks them. A limit that
/// depends on another setting is given as the widest range it allows: `lease_ttl_ms` must also
/// exceed `lease_interval_ms`, and `rate_packet_burst` is not checked while
/// `rate_packets_per_sec` is 0. im-engine's tests check each range against its validation.
pub const ENGINE_RANGES: &[SettingRange] = &[
    range("shards", 0, 255),
    at_least("max_frame_bytes", 126),
    at_least("lease_interval_ms", 1),
    range("lease_ttl_ms", 2, 600_000),
    range("logic_max_password_calls", 1, 65_536),
    range("logic_max_in_flight", 1, 1_048_576),
    range("logic_gather_calls", 1, 64),
    range("logic_gather_window_ms", 0, 1_000),
    range("bridge_queue", 1, 1_048_576),
    range("rate_packet_burst", 1, 1_000_000),
    range("busy_retry_after_ms", 1, 600_000),
];

/// Ranges of `[logic]` settings, as `Config::validate` of im-logic checks them.
/// `argon2_memory_kib` must also be at least 8 × `argon2_parallelism`. im-logic's tests check
/// each range against its validation.
pub const LOGIC_RANGES: &[SettingRange] = &[
    range("db_pool_size", 1, 1024),
    range("db_timeout_ms", 1, 600_000),
    range("redis_timeout_ms", 1, 600_000),
    range("token_ttl_secs", 1, 315_360_000),
    range("argon2_memory_kib", 8, 4_194_304),
    range("argon2_iterations", 1, 100),
    range("argon2_parallelism", 1, 64),
    range("max_password_hashes", 0, 1024),
    range("password_hash_wait_ms", 0, 60_000),
    range("engine_call_timeout_ms", 1, 600_000),
    range("request_timeout_ms", 1_000, 3_600_000),
    range("redis_batch_max", 1, 65_536),
    range("send_batch_max", 1, 65_536),
    range("startup_retry_ms", 0, 3_600_000),
    range("max_content_bytes", 1, 1_048_576),
    range("max_group_members", 1, 10_000),
    range("max_groups_per_user", 1, 100_000),
    range("max_friends_per_user", 1, 80_000),
    range("sync_max_page", 1, 10_000),
    range("sync_max_page_bytes", 1024, 16 * 1024 * 1024),
    range("message_retention_days", 0, 36_500),
];

/// Returns the ranges of the tier whose variables start with `env_prefix`.
pub(crate) fn ranges_for(env_prefix: &str) -> &'static [SettingRange] {
    match env_prefix {
        "IM_ENGINE_" => ENGINE_RANGES,
        "IM_LOGIC_" => LOGIC_RANGES,
        _ => &[],
    }
}

/// Returns the largest value of the unsigned integer type that serde calls `expected`, or
/// `None` for another type. `u64` and `usize` give `Some(None)`: whole numbers whose bound,
/// about 1.8e19, means nothing to someone writing settings.
pub(crate) fn unsigned_type_max(expected: &str) -> Option<Option<u64>> {
    match expected {
        "u8" => Some(Some(u64::from(u8::MAX))),
        "u16" => Some(Some(u64::from(u16::MAX))),
        "u32" => Some(Some(u64::from(u32::MAX))),
        "u64" | "usize" => Some(None),
        _ => None,
    }
}

/// Describes the whole numbers from `min` to `max`, or from `min` up when `max` is `None`.
pub(crate) fn whole_numbers(min: u64, max: Option<u64>) -> String {
    match max {
        Some(max) => format!("a whole number from {min} to {max}"),
        None => format!("a whole number, {min} or more"),
    }
}

/// Describes the values that `range` accepts, for a setting whose type serde calls `expected`,
/// or `None` when that type is no unsigned integer.
pub(crate) fn describe_range(range: &SettingRange, expected: &str) -> Option<String> {
    let type_max = unsigned_type_max(expected)?;
    Some(whole_numbers(range.min, range.max.or(type_max)))
}

/// Returns the ranges of the settings of `table`, "engine" or "logic".
pub(crate) fn ranges_for_table(table: &str) -> &'static [SettingRange] {
    match table {
        "engine" => ENGINE_RANGES,
        "logic" => LOGIC_RANGES,
        _ => &[],
    }
}

/// Describes the values that `range` accepts from the settings file. A range with no maximum
/// ends at the largest TOML integer, 9223372036854775807, since each such setting has a 64-bit
/// type.
pub(crate) fn describe_file_range(range: &SettingRange) -> String {
    let largest_toml_integer = i64::MAX.unsigned_abs();
    whole_numbers(range.min, Some(range.max.unwrap_or(largest_toml_integer)))
}

/// An unsigned integer type that a whole-number setting has, for [`whole_number_flag`].
pub trait WholeNumber: TryFrom<u64> + Clone + Send + Sync + 'static {
    /// The type's largest value.
    const MAX: u64;
}

impl WholeNumber for u8 {
    const MAX: u64 = u8::MAX as u64;
}

impl WholeNumber for u16 {
    const MAX: u64 = u16::MAX as u64;
}

impl WholeNumber for u32 {
    const MAX: u64 = u32::MAX as u64;
}

impl WholeNumber for u64 {
    const MAX: u64 = u64::MAX;
}

impl WholeNumber for usize {
    const MAX: u64 = usize::MAX as u64;
}

/// Returns a parser of a command-line flag's value for `setting`, a setting of type `T` whose
/// range, if it has one, is in `ranges`: [`ENGINE_RANGES`] or [`LOGIC_RANGES`]. It is meant for
/// clap's `value_parser`, so that a flag's error names the same range as the file's and the
/// environment's instead of the bound of `T`. A value outside the range is rejected, as the
/// tier's validation would reject it. A flag takes decimal digits only: the environment also
/// takes surrounding blanks, and the file TOML's other integer forms such as `0x10`.
pub fn whole_number_flag<T: WholeNumber>(
    ranges: &'static [SettingRange],
    setting: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text| parse_whole_number(ranges, setting, text)
}

/// Parses `text` as a value of `setting`, as [`whole_number_flag`] describes.
fn parse_whole_number<T: WholeNumber>(
    ranges: &[SettingRange],
    setting: &str,
    text: &str,
) -> Result<T, String> {
    let range = ranges.iter().find(|range| range.setting == setting);
    let min = range.map_or(0, |range| range.min);
    let max = range
        .and_then(|range| range.max)
        .map_or(T::MAX, |max| max.min(T::MAX));
    // As for a variable, the bound of a 64-bit type is left out unless the value passes it.
    let expected = whole_numbers(min, (max < u64::MAX).then_some(max));
    let value = text.parse::<i128>();
    match value {
        Ok(value) => {
            let in_range = u64::try_from(value)
                .ok()
                .filter(|value| (min..=max).contains(value))
                .and_then(|value| T::try_from(value).ok());
            if let Some(value) = in_range {
                return Ok(value);
            }
        }
        Err(_) if !crate::is_integer(text) => return Err(format!("expected {expected}")),
        // Digits beyond i128.
        Err(_) => {}
    }
    let above = value.map_or(!text.starts_with('-'), |value| value > i128::from(max));
    let expected = if above {
        whole_numbers(min, Some(max))
    } else {
        expected
    };
    Err(format!("{text} is out of range, expected {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_logic<T: WholeNumber>(setting: &'static str, text: &str) -> Result<T, String> {
        whole_number_flag::<T>(LOGIC_RANGES, setting)(text)
    }

    /// Settings that size what the engine allocates or counts at start: a tokio semaphore
    /// panics past `usize::MAX >> 3` permits, and the bridge's queue allocates all its slots.
    #[test]
    fn engine_sizes_have_maxima() {
        for setting in [
            "logic_max_in_flight",
            "logic_max_password_calls",
            "bridge_queue",
        ] {
            let range = ENGINE_RANGES
                .iter()
                .find(|range| range.setting == setting)
                .unwrap_or_else(|| panic!("{setting} has no range"));
            let max = range
                .max
                .unwrap_or_else(|| panic!("{setting} has no maximum"));
            assert!(max <= 1 << 24, "{setting} accepts up to {max}");
        }
    }

    #[test]
    fn flag_in_range_is_parsed() {
        assert_eq!(parse_logic::<u32>("max_friends_per_user", "1"), Ok(1));
        assert_eq!(
            parse_logic::<u32>("max_friends_per_user", "80000"),
            Ok(80_000)
        );
        assert_eq!(parse_logic::<u32>("max_friends_per_user", "+7"), Ok(7));
        assert_eq!(parse_logic::<u32>("message_retention_days", "-0"), Ok(0));
    }

    #[test]
    fn flag_out_of_range_names_setting_range() {
        for text in [
            "-1",
            "0",
            "80001",
            "4294967296",
            "99999999999999999999999999999999999999999",
        ] {
            let err = parse_logic::<u32>("max_friends_per_user", text).expect_err(text);

            assert_eq!(
                err,
                format!("{text} is out of range, expected a whole number from 1 to 80000")
            );
        }
    }

    #[test]
    fn flag_that_is_no_number_names_setting_range() {
        for text in ["many", "", " 5", "2.5", "1e3", "0x10"] {
            let err = parse_logic::<u32>("max_friends_per_user", text).expect_err(text);

            assert_eq!(err, "expected a whole number from 1 to 80000", "{text:?}");
        }
    }

    #[test]
    fn flag_without_range_names_type_bound() {
        let parse_u32 = whole_number_flag::<u32>(ENGINE_RANGES, "ring_entries");
        let parse_u64 = whole_number_flag::<u64>(ENGINE_RANGES, "heartbeat_timeout_ms");

        assert_eq!(parse_u32("4294967295"), Ok(u32::MAX));
        assert_eq!(
            parse_u32("4294967296"),
            Err("4294967296 is out of range, expected a whole number from 0 to 4294967295".into())
        );
        assert_eq!(parse_u64("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_u64("-1"),
            Err("-1 is out of range, expected a whole number, 0 or more".into())
        );
        assert_eq!(
            parse_u64("18446744073709551616"),
            Err(
                "18446744073709551616 is out of range, expected a whole number from 0 to \
                 18446744073709551615"
                    .into()
            )
        );
    }

    #[test]
    fn flag_range_without_maximum_ends_at_type_bound() {
        let parse = whole_number_flag::<u64>(ENGINE_RANGES, "lease_interval_ms");

        assert_eq!(parse("1"), Ok(1));
        assert_eq!(
            parse("0"),
            Err("0 is out of range, expected a whole number, 1 or more".into())
        );
    }

    #[test]
    fn file_range_of_known_settings() {
        let find = |table, setting| {
            ranges_for_table(table)
                .iter()
                .find(|range| range.setting == setting)
        };

        assert_eq!(
            find("logic", "max_friends_per_user").map(describe_file_range),
            Some("a whole number from 1 to 80000".to_owned())
        );
        assert_eq!(
            find("engine", "lease_interval_ms").map(describe_file_range),
            Some("a whole number from 1 to 9223372036854775807".to_owned())
        );
        assert_eq!(find("engine", "max_friends_per_user"), None);
        assert_eq!(find("logik", "max_friends_per_user"), None);
    }
}
