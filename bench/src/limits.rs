//! The open-file limit. Each connection costs one descriptor, so the bench raises its soft
//! RLIMIT_NOFILE to the hard limit and checks that the connections of one process fit.

/// Descriptors kept free for the runtime, stdio, the cache file and worker pipes.
pub(crate) const RESERVED_FILES: u64 = 100;

/// RLIMIT_NOFILE before and after raising.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileLimit {
    pub(crate) soft_before: u64,
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

impl FileLimit {
    /// Connections one process can hold: the soft limit minus [`RESERVED_FILES`].
    pub(crate) fn connection_capacity(&self) -> u64 {
        self.soft.saturating_sub(RESERVED_FILES)
    }
}

/// Raises the soft open-file limit to the hard limit and returns both.
///
/// # Errors
///
/// The OS error of `getrlimit` or `setrlimit`.
pub(crate) fn raise_file_limit() -> std::io::Result<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let soft_before = limit.rlim_cur;
    limit.rlim_cur = if limit.rlim_max == libc::RLIM_INFINITY {
        // Linux rejects an unlimited soft RLIMIT_NOFILE; fs.nr_open is the real ceiling.
        kernel_file_ceiling()
    } else {
        limit.rlim_max
    };
    // SAFETY: `limit` is a valid rlimit whose soft value does not exceed its hard value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FileLimit {
        soft_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Reads fs.nr_open, the most descriptors a process may have, or its default 1,048,576.
fn kernel_file_ceiling() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1_048_576)
}

/// Returns the fewest worker processes that hold `connections` within `capacity` each.
pub(crate) fn workers_needed(connections: u64, capacity: u64) -> u64 {
    connections.div_ceil(capacity.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_sets_soft_to_hard() {
        let limit = raise_file_limit().expect("rlimit");

        assert!(limit.soft == limit.hard || limit.hard == libc::RLIM_INFINITY);
        assert!(limit.soft >= limit.soft_before);
    }

    #[test]
    fn capacity_reserves_files() {
        let limit = FileLimit {
            soft_before: 1024,
            soft: 20_000,
            hard: 20_000,
        };

        assert_eq!(limit.connection_capacity(), 19_900);
    }

    #[test]
    fn workers_needed_rounds_up() {
        assert_eq!(workers_needed(19_900, 19_900), 1);
        assert_eq!(workers_needed(19_901, 19_900), 2);
        assert_eq!(workers_needed(50_000, 19_900), 3);
    }
}
