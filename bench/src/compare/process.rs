//! Resident memory and CPU time of a server process, from `/proc/PID/status` and
//! `/proc/PID/stat`.

use std::time::Duration;

pub(crate) use crate::machine::resident_bytes;

/// Reads the user plus system CPU time of process `pid` and all its threads.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions and only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|ticks| *ticks > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Parses utime + stime (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The
/// command name in field 2 may contain spaces and parentheses, so fields count from the last
/// `)`.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // Field 3 (state) is the first after the name, so utime is the 12th of these.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_sum_utime_stime() {
        let stat = "4242 (im engine) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 3 0 \
                    100 123456 789 18446744073709551615\n";

        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
    }

    #[test]
    fn stat_name_with_parenthesis() {
        let stat = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1\n";

        assert_eq!(parse_stat_cpu_ticks(stat), Some(7));
    }

    #[test]
    fn stat_truncated_is_none() {
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_cpu_time_readable() {
        assert!(cpu_time(std::process::id()).is_some());
    }
}
