//! The kernel's memory for sockets, read system-wide before and after opening connections:
//! `Slab` in `/proc/meminfo` and the TCP `mem` pages in `/proc/net/sockstat`.

/// One reading of the kernel's socket memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelMemory {
    /// `Slab` of `/proc/meminfo`: socket structures, among all other kernel objects.
    pub(crate) slab: Option<u64>,
    /// TCP `mem` of `/proc/net/sockstat` times the page size: socket buffers in use.
    pub(crate) tcp_buffers: Option<u64>,
}

/// Reads both sources now. A source that cannot be read is `None`.
pub(crate) fn read() -> KernelMemory {
    let slab = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_kb(&text, "Slab"))
        .map(|kb| kb * 1024);
    let tcp_buffers = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|text| sockstat_tcp_mem_bytes(&text, page_size()));
    KernelMemory { slab, tcp_buffers }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|size| *size > 0)
        .unwrap_or(4096)
}

/// Parses the value in kB of the line `NAME:   VALUE kB` of `/proc/meminfo`.
pub(crate) fn parse_meminfo_kb(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key != name {
            return None;
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next()?.parse().ok()?;
        (fields.next() == Some("kB")).then_some(value)
    })
}

/// Returns the `mem` field of the `TCP:` line of `/proc/net/sockstat` in bytes, given the
/// size of a page in bytes.
fn sockstat_tcp_mem_bytes(text: &str, page_size: u64) -> Option<u64> {
    parse_sockstat_tcp_mem_pages(text)?.checked_mul(page_size)
}

/// Parses the `mem` field, in pages, of the `TCP:` line of `/proc/net/sockstat`, for example
/// `TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1`.
pub(crate) fn parse_sockstat_tcp_mem_pages(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    fields
        .chunks_exact(2)
        .find(|pair| pair[0] == "mem")
        .and_then(|pair| pair[1].parse().ok())
}

/// Returns the growth from `before` to `after` divided by `connections`, or `None` when a
/// reading is missing or no connection was open.
pub(crate) fn per_connection(
    before: Option<u64>,
    after: Option<u64>,
    connections: u64,
) -> Option<f64> {
    let (before, after) = (before?, after?);
    if connections == 0 {
        return None;
    }
    Some((after as f64 - before as f64) / connections as f64)
}

/// Describes the growth from `before` to `after` per connection for a report, as bytes or as
/// the reason why there is no figure. The readings are system-wide, so other sockets and
/// processes of the host move them too. A total that fell while the connections opened
/// would give a negative figure per connection, which no connection can cost, so it is
/// reported as not measurable with the size of the fall.
pub(crate) fn describe_per_connection(
    before: Option<u64>,
    after: Option<u64>,
    connections: u64,
) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "unknown (not readable)".to_owned();
    };
    if connections == 0 {
        return "unknown (no connection)".to_owned();
    }
    if after < before {
        return format!(
            "not measurable (the system-wide total fell by {:.1} KiB, because other sockets \
             or processes on this host freed more than these connections took)",
            (before - after) as f64 / 1024.0
        );
    }
    format!("{:.0} B", (after - before) as f64 / connections as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKSTAT: &str = "sockets: used 187\n\
        TCP: inuse 10006 orphan 0 tw 3 alloc 10010 mem 25\n\
        UDP: inuse 2 mem 4\n\
        UDPLITE: inuse 0\n";

    #[test]
    fn sockstat_tcp_mem_parsed() {
        assert_eq!(parse_sockstat_tcp_mem_pages(SOCKSTAT), Some(25));
    }

    #[test]
    fn sockstat_tcp_mem_converted_to_bytes() {
        assert_eq!(sockstat_tcp_mem_bytes(SOCKSTAT, 4096), Some(25 * 4096));
        assert_eq!(sockstat_tcp_mem_bytes(SOCKSTAT, 65_536), Some(25 * 65_536));
        assert_eq!(sockstat_tcp_mem_bytes("UDP: inuse 2 mem 4\n", 4096), None);
    }

    #[test]
    fn sockstat_udp_mem_not_taken() {
        let text = "sockets: used 1\nUDP: inuse 2 mem 4\n";

        assert_eq!(parse_sockstat_tcp_mem_pages(text), None);
    }

    #[test]
    fn sockstat_garbage_is_none() {
        assert_eq!(parse_sockstat_tcp_mem_pages("TCP: inuse x mem"), None);
        assert_eq!(parse_sockstat_tcp_mem_pages("TCP: mem many"), None);
        assert_eq!(parse_sockstat_tcp_mem_pages(""), None);
    }

    #[test]
    fn meminfo_slab_parsed() {
        let text =
            "MemTotal:       24000000 kB\nSlab:             123456 kB\nSReclaimable:  1 kB\n";

        assert_eq!(parse_meminfo_kb(text, "Slab"), Some(123_456));
        assert_eq!(parse_meminfo_kb(text, "SUnreclaim"), None);
    }

    #[test]
    fn per_connection_divides_growth() {
        assert_eq!(per_connection(Some(1000), Some(5000), 2), Some(2000.0));
        assert_eq!(per_connection(Some(5000), Some(1000), 4), Some(-1000.0));
        assert_eq!(per_connection(None, Some(1), 1), None);
        assert_eq!(per_connection(Some(1), Some(2), 0), None);
    }

    #[test]
    fn described_growth_is_bytes_per_connection() {
        assert_eq!(describe_per_connection(Some(1000), Some(5000), 2), "2000 B");
        assert_eq!(describe_per_connection(Some(1000), Some(1000), 2), "0 B");
    }

    #[test]
    fn described_fall_is_not_measurable() {
        let text = describe_per_connection(Some(5_000_000), Some(4_616_000), 1024);

        assert!(
            text.starts_with("not measurable (the system-wide total fell by 375.0 KiB"),
            "{text}"
        );
        assert!(!text.contains(" -"), "no negative figure: {text}");
    }

    #[test]
    fn described_growth_without_readings_is_unknown() {
        assert_eq!(
            describe_per_connection(None, Some(1), 1),
            "unknown (not readable)"
        );
        assert_eq!(
            describe_per_connection(Some(1), Some(2), 0),
            "unknown (no connection)"
        );
    }

    #[test]
    fn live_reading_has_slab() {
        let reading = read();

        assert!(reading.slab.is_some_and(|bytes| bytes > 0), "{reading:?}");
        assert!(reading.tcp_buffers.is_some(), "{reading:?}");
    }
}
