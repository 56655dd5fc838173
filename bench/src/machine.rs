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

/// Returns the engine processes to measure: `given` when not empty, otherwise the processes
/// named `im-engine` that listen on `port`, in pid order. A host may run several engine nodes
/// (one per process) on one port, and the bench then reads their memory together. Without a
/// port, every process named `im-engine`.
pub(crate) fn engine_pids(given: &[u32], port: Option<u16>) -> Vec<u32> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut pids = processes_named(Path::new("/proc"), ENGINE_COMM);
    pids.sort_unstable();
    if let Some(port) = port {
        let sockets = listening_sockets(port);
        let listening: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| holds_any_socket(*pid, &sockets))
            .collect();
        // Another engine on this host is not the one under test, so none is better than a
        // wrong one.
        return listening;
    }
    pids
}

/// Returns the port of a `ws://` or `wss://` URL, explicit or by its scheme.
pub(crate) fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    // An IPv6 host is in brackets, and its port follows the closing one.
    let port = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?.1.strip_prefix(':'),
        None => authority.rsplit_once(':').map(|(_, port)| port),
    };
    match port {
        Some(port) => port.parse().ok(),
        None => match scheme {
            "ws" | "http" => Some(80),
            "wss" | "https" => Some(443),
            _ => None,
        },
    }
}

/// Returns the inodes of the TCP sockets listening on `port`, IPv4 and IPv6.
fn listening_sockets(port: u16) -> std::collections::HashSet<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| listening_in(&table, port))
        .collect()
}

/// Parses one `/proc/net/tcp` table: the inodes of the sockets in state LISTEN (0A) on `port`.
fn listening_in(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = *fields.get(3)? == "0A";
            let matches = u16::from_str_radix(local_port, 16).ok()? == port;
            (listening && matches).then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

/// Tells whether process `pid` has one of `sockets` open.
fn holds_any_socket(pid: u32, sockets: &std::collections::HashSet<u64>) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|text| text.strip_prefix("socket:["))
                .and_then(|text| text.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
                .is_some_and(|inode| sockets.contains(&inode))
        })
    })
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
        assert_eq!(engine_pids(&[42, 7], Some(8080)), vec![42, 7]);
    }

    #[test]
    fn no_engine_on_port_gives_none() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();

        assert_eq!(engine_pids(&[], Some(port)), Vec::<u32>::new());
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

    #[test]
    fn url_ports() {
        assert_eq!(url_port("ws://127.0.0.1:8080/ws"), Some(8080));
        assert_eq!(url_port("wss://example.test/ws"), Some(443));
        assert_eq!(url_port("ws://[::1]:9000/ws"), Some(9000));
        assert_eq!(url_port("ws://[::1]/ws"), Some(80));
        assert_eq!(url_port("not a url"), None);
    }

    #[test]
    fn listening_sockets_on_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n   1: 0100007F:1F90 0200007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0\n";
        assert_eq!(listening_in(table, 8080), vec![4242]);
    }

    #[test]
    fn own_listener_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sockets = listening_sockets(port);
        assert_eq!(sockets.len(), 1);
        assert!(holds_any_socket(std::process::id(), &sockets));
    }
}
