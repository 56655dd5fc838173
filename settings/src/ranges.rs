//! The accepted values of whole-number settings whose limits are narrower than their type's,
//! for errors about a value that is no whole number of that type. Without them such an error
//! would give the type's bound, such as 0 to 4294967295 for a `u32`.

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
    at_least("logic_max_password_calls", 1),
    at_least("logic_max_in_flight", 1),
    range("logic_gather_calls", 1, 64),
    range("logic_gather_window_ms", 0, 1_000),
    at_least("bridge_queue", 1),
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
