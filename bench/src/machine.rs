//! Facts about the machine and the engine process: CPU count, kernel, date, the engine's
//! pid and its resident memory.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Process name the engine runs under, as `/proc/PID/comm` shows it.
const ENGINE_COMM: &str = "im-engine";

/// Describes the machine: CPU count, kernel release and the current UTC time.
pub(crate) fn describe() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |text| text.trim().to_owned());
    format!("nproc {cpus}, kernel {kernel}, date {}", utc_now())
}

/// Returns the current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    format_utc(seconds)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn format_utc(seconds: u64) -> String {
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day). Counts in
/// 400-year eras of 146,097 days, with years starting in March so the leap day ends a year.
fn civil_date(days_since_epoch: i64) -> (i64, u32, u32) {
    // Day 0 of the computation is 0000-03-01, which is 719,468 days before 1970-01-01.
    let days = days_since_epoch + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// Returns the engine processes to measure: `given` when not empty, otherwise every process
/// named `im-engine`, in pid order. A host may run several engine nodes (one per process), and the
/// bench then reads their memory together.
pub(crate) fn engine_pids(given: &[u32]) -> Vec<u32> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut pids = processes_named(Path::new("/proc"), ENGINE_COMM);
    pids.sort_unstable();
    pids
}

/// Sums the resident memory of `pids`; `None` when there are none or one cannot be read.
pub(crate) fn total_resident_bytes(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| resident_bytes(*pid))
        .sum::<Option<u64>>()
}

fn processes_named(proc_dir: &Path, name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(proc_dir.join(pid.to_string()).join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Reads the resident memory of process `pid` in bytes (VmRSS in `/proc/PID/status`).
/// Returns `None` when the process is gone or the field is missing.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_utc_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_798_416_000 + 3_723), "2026-12-28T01:02:03Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(format_utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn vm_rss_parses_kilobytes() {
        let status = "Name:\tim-engine\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";

        assert_eq!(parse_vm_rss(status), Some(12_345 * 1024));
    }

    #[test]
    fn vm_rss_missing_is_none() {
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn own_process_has_resident_memory() {
        let rss = resident_bytes(std::process::id());

        assert!(rss.is_some_and(|bytes| bytes > 0), "got {rss:?}");
    }

    #[test]
    fn explicit_pids_are_used() {
        assert_eq!(engine_pids(&[42, 7]), vec![42, 7]);
    }

    #[test]
    fn total_of_own_process_is_its_memory() {
        let own = std::process::id();
        let total = total_resident_bytes(&[own, own]);

        assert!(total.is_some_and(|bytes| bytes > 0), "got {total:?}");
    }

    #[test]
    fn total_without_processes_is_unknown() {
        assert_eq!(total_resident_bytes(&[]), None);
        assert_eq!(total_resident_bytes(&[std::process::id(), u32::MAX]), None);
    }
}
