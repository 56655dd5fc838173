//! Admission of new TCP connections against the node-wide limits `max_connections` and
//! `max_connections_per_ip`. Checked once at accept and released when the connection's
//! task ends, so the hot path never touches it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Limit that refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` reached on this node.
    Total,
    /// `max_connections_per_ip` reached for the peer's address.
    PerIp,
}

impl Refusal {
    /// Returns the metric label of the limit.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// Node-wide connection counts; 0 in a limit turns that limit off.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: u32,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, u32>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_ip: u32) -> Self {
        Self {
            max_total,
            max_per_ip,
            ..Self::default()
        }
    }

    /// Counts a new connection from `ip`, or returns the limit it would pass. An admitted
    /// connection is released with [`Admission::release`] when it ends.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_total > 0 && total > self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        if self.max_per_ip > 0 {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(count);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        Ok(())
    }

    /// Releases the place of a connection from `ip` that [`Admission::admit`] counted.
    pub(crate) fn release(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if self.max_per_ip > 0 {
            // Remove the entry at zero so the map does not keep every address ever seen.
            self.per_ip.remove_if_mut(&ip, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_ip_limit_counts_each_address() {
        let admission = Admission::new(0, 2);
        admission.admit(ip(1)).unwrap();
        admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(1)).unwrap_err(), Refusal::PerIp);
        admission.admit(ip(2)).unwrap();
        admission.release(ip(1));
        assert!(admission.admit(ip(1)).is_ok());
    }

    #[test]
    fn total_limit_is_released() {
        let admission = Admission::new(1, 0);
        admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(2)).unwrap_err(), Refusal::Total);
        admission.release(ip(1));
        assert!(admission.admit(ip(2)).is_ok());
    }

    #[test]
    fn released_address_leaves_the_map() {
        let admission = Admission::new(0, 5);
        admission.admit(ip(9)).unwrap();
        admission.release(ip(9));
        assert!(admission.per_ip.is_empty());
    }
}
