//! Loopback source addresses. A bound source address and the engine's address and port
//! leave only the ephemeral port range free per 4-tuple, so many connections need several
//! source addresses. Connection `i` uses 127.0.0.(2 + i % sources).

use std::net::{IpAddr, Ipv4Addr};

/// Connections per source address that the default count aims for. `connect` picks each port
/// by probing the ephemeral range for a free 4-tuple, which grows slow as the range fills. With
/// 15,000 connections on one address the bench spent 217 to 240 us of CPU per connection,
/// against 156 to 161 us with 8 addresses.
const TARGET_PORTS_PER_SOURCE: usize = 2_000;

/// Most source addresses: 127.0.0.2 through 127.0.0.255.
pub(crate) const MAX_SOURCES: usize = 254;

/// Returns the source address of connection `index` among `sources` addresses.
///
/// `sources` must be in 1..=[`MAX_SOURCES`], which the command line enforces.
pub(crate) fn source_addr(index: usize, sources: usize) -> IpAddr {
    let offset = index % sources.clamp(1, MAX_SOURCES);
    // offset <= 253, so the last octet stays within 2..=255.
    let last_octet = 2 + offset as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet))
}

/// Returns how many source addresses `connections` need so that none serves more than
/// `ports_per_source` of them.
pub(crate) fn default_sources(connections: usize, ports_per_source: usize) -> usize {
    connections
        .div_ceil(ports_per_source.max(1))
        .clamp(1, MAX_SOURCES)
}

/// Returns the ports one source address may use: [`TARGET_PORTS_PER_SOURCE`], or nine tenths
/// of the kernel's ephemeral range (`ip_local_port_range`) when that is smaller.
pub(crate) fn ports_per_source() -> usize {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text));
    match range {
        Some(size) => TARGET_PORTS_PER_SOURCE.min(size * 9 / 10),
        None => TARGET_PORTS_PER_SOURCE,
    }
}

/// Parses "low high" from `ip_local_port_range` into the number of ports in the range.
fn parse_port_range(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let low: usize = fields.next()?.parse().ok()?;
    let high: usize = fields.next()?.parse().ok()?;
    (high >= low).then(|| high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addr_cycles_through_sources() {
        let addrs: Vec<IpAddr> = (0..5).map(|index| source_addr(index, 3)).collect();

        assert_eq!(addrs[0], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(addrs[1], IpAddr::from([127, 0, 0, 3]));
        assert_eq!(addrs[2], IpAddr::from([127, 0, 0, 4]));
        assert_eq!(addrs[3], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(addrs[4], IpAddr::from([127, 0, 0, 3]));
    }

    #[test]
    fn single_source_always_first_address() {
        for index in [0, 1, 19_999] {
            assert_eq!(source_addr(index, 1), IpAddr::from([127, 0, 0, 2]));
        }
    }

    #[test]
    fn source_addr_max_sources_ends_at_255() {
        assert_eq!(
            source_addr(MAX_SOURCES - 1, MAX_SOURCES),
            IpAddr::from([127, 0, 0, 255])
        );
        assert_eq!(
            source_addr(MAX_SOURCES, MAX_SOURCES),
            IpAddr::from([127, 0, 0, 2])
        );
    }

    #[test]
    fn source_addr_spreads_evenly() {
        let sources = 4;
        let mut per_source = [0usize; 4];
        for index in 0..40_000 {
            let IpAddr::V4(addr) = source_addr(index, sources) else {
                panic!("IPv4 expected");
            };
            per_source[usize::from(addr.octets()[3]) - 2] += 1;
        }

        assert_eq!(per_source, [10_000; 4]);
    }

    #[test]
    fn default_sources_keeps_each_under_limit() {
        assert_eq!(default_sources(1, 25_000), 1);
        assert_eq!(default_sources(25_000, 25_000), 1);
        assert_eq!(default_sources(25_001, 25_000), 2);
        assert_eq!(default_sources(60_000, 25_000), 3);
        assert_eq!(default_sources(10_000_000, 25_000), MAX_SOURCES);
    }

    #[test]
    fn port_range_parses_kernel_format() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("1024 1024"), Some(1));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("garbage"), None);
    }
}
