//! The final report of a sign-in run, printed on stdout.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::kernel::{self, KernelMemory};
use crate::phases::HoldFigures;
use crate::stats::ErrorCounts;

/// One reading of the engines' resident memory and of the kernel's socket memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemorySample {
    /// Resident bytes of every engine process together.
    pub(crate) engine: Option<u64>,
    pub(crate) kernel: KernelMemory,
}

/// Memory around the run: before the first connection opened and in the middle of the hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineMemory {
    /// Engine processes read; 0 when none was found.
    pub(crate) processes: usize,
    pub(crate) before: MemorySample,
    pub(crate) during: Option<MemorySample>,
}

/// Everything a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) connections: u64,
    pub(crate) signed_in: u64,
    /// Duration of the connect phase.
    pub(crate) connect_elapsed: Duration,
    /// When every connection opened before any signed in: how many opened and how long that
    /// took. The sign-in phase is the rest of `connect_elapsed`.
    pub(crate) opened: Option<(u64, Duration)>,
    /// Sign-in latency in microseconds.
    pub(crate) signin_latency: Histogram<u64>,
    pub(crate) signin_errors: ErrorCounts,
    pub(crate) hold: HoldFigures,
    pub(crate) engine: EngineMemory,
}

impl Report {
    /// Number of errors of every kind, in every phase.
    pub(crate) fn error_total(&self) -> u64 {
        self.signin_errors.total() + self.hold.errors.total()
    }

    /// Prints the report.
    pub(crate) fn print(&self) {
        println!("result");
        println!(
            "  connections           {} attempted, {} signed in",
            self.connections, self.signed_in
        );
        match self.opened {
            None => println!(
                "  sign-ins per second   {:.1} ({} of {} connections opened and signed in within {:.3} s)",
                rate(self.signed_in, self.connect_elapsed),
                self.signed_in,
                self.connections,
                self.connect_elapsed.as_secs_f64()
            ),
            Some((opened, open_elapsed)) => {
                let sign_in_elapsed = self.connect_elapsed.saturating_sub(open_elapsed);
                println!(
                    "  opens per second      {:.1} ({opened} connections opened in {:.3} s)",
                    rate(opened, open_elapsed),
                    open_elapsed.as_secs_f64()
                );
                println!(
                    "  sign-ins per second   {:.1} ({} of {opened} open connections signed in within {:.3} s)",
                    rate(self.signed_in, sign_in_elapsed),
                    self.signed_in,
                    sign_in_elapsed.as_secs_f64()
                );
            }
        }
        println!(
            "  sign-in latency ms    {}",
            quantiles(&self.signin_latency, &SIGNIN_POINTS, true)
        );
        println!(
            "  heartbeat rtt ms      {}",
            quantiles(&self.hold.heartbeat_rtt, &HEARTBEAT_POINTS, false)
        );
        if self.hold.heartbeats_after_hold > 0 {
            println!(
                "  late heartbeats       {} answered after the hold ended, during the closes (timed)",
                self.hold.heartbeats_after_hold
            );
        }
        println!("  errors at sign-in     {}", errors(&self.signin_errors));
        if stale_tokens(&self.signin_errors) {
            println!(
                "  hint                  the cached tokens are no longer valid (was Redis restarted?); \
                 rerun with --refresh-tokens"
            );
        }
        if self.opened.is_some() && self.signin_errors.0.contains_key(SIGN_IN_TIMEOUT_CLOSE) {
            println!(
                "  hint                  the engine closed connections with 4001 because its \
                 sign_in_timeout_ms passed before they sent SIGN_IN; open fewer connections or \
                 raise sign_in_timeout_ms"
            );
        }
        println!("  errors after sign-in  {}", errors(&self.hold.errors));
        println!("  engine RSS            {}", self.memory_line());
        println!("  kernel per connection {}", self.kernel_line());
    }

    fn memory_line(&self) -> String {
        let memory = &self.engine;
        let (Some(before), Some(during)) = (
            memory.before.engine,
            memory.during.and_then(|sample| sample.engine),
        ) else {
            return "unknown (engine process not found or not readable)".into();
        };
        let per_connection = bytes_per_connection(before, during, self.signed_in)
            .map_or_else(|| "n/a".to_owned(), |bytes| format!("{bytes} B"));
        format!(
            "{} process(es): before {}, during hold {}, per signed-in connection {per_connection}",
            memory.processes,
            mebibytes(before),
            mebibytes(during)
        )
    }

    /// Formats the kernel's growth in socket memory per connection, both ends of each loopback
    /// connection together. It is the floor under the engine's own bytes.
    fn kernel_line(&self) -> String {
        let Some(during) = self.engine.during else {
            return "unknown".into();
        };
        let before = self.engine.before.kernel;
        let figure = |before, after| kernel::describe_per_connection(before, after, self.signed_in);
        format!(
            "slab {}, TCP buffers {} (both ends of each loopback connection; system-wide)",
            figure(before.slab, during.kernel.slab),
            figure(before.tcp_buffers, during.kernel.tcp_buffers)
        )
    }
}

/// Returns `count / elapsed`, or 0 for an empty duration.
pub(crate) fn rate(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Returns (during - before) / connections in bytes, which can be negative when the engine
/// released memory, or `None` without connections.
pub(crate) fn bytes_per_connection(before: u64, during: u64, connections: u64) -> Option<i64> {
    if connections == 0 {
        return None;
    }
    let delta = i128::from(during) - i128::from(before);
    i64::try_from(delta / i128::from(connections)).ok()
}

const SIGNIN_POINTS: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
const HEARTBEAT_POINTS: [(&str, f64); 3] = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)];

pub(crate) fn quantiles(
    histogram: &Histogram<u64>,
    points: &[(&str, f64)],
    with_max: bool,
) -> String {
    if histogram.is_empty() {
        return "no samples".into();
    }
    let mut parts: Vec<String> = points
        .iter()
        .map(|(label, quantile)| {
            format!("{label} {}", millis(histogram.value_at_quantile(*quantile)))
        })
        .collect();
    if with_max {
        parts.push(format!("max {}", millis(histogram.max())));
    }
    parts.push(format!("({} samples)", histogram.len()));
    parts.join("  ")
}

fn millis(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

pub(crate) fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Error kind of a connection that the engine closed with 4001, because no SIGN_IN arrived
/// within its sign_in_timeout_ms.
const SIGN_IN_TIMEOUT_CLOSE: &str = "closed_4001";

/// Reports whether sign-ins failed because cached tokens no longer match the server.
fn stale_tokens(counts: &ErrorCounts) -> bool {
    [
        "DEVICE_UNKNOWN",
        "TOKEN_INVALID",
        "TOKEN_EXPIRED",
        "TOKEN_REVOKED",
    ]
    .iter()
    .any(|kind| counts.0.contains_key(*kind))
}

pub(crate) fn errors(counts: &ErrorCounts) -> String {
    if counts.0.is_empty() {
        return "none".into();
    }
    counts.lines().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    #[test]
    fn bytes_per_connection_divides_delta() {
        assert_eq!(bytes_per_connection(1_000, 61_000, 10), Some(6_000));
        assert_eq!(bytes_per_connection(5_000, 4_000, 10), Some(-100));
        assert_eq!(bytes_per_connection(1_000, 2_000, 0), None);
    }

    #[test]
    fn rate_of_zero_duration_is_zero() {
        assert_eq!(rate(100, Duration::ZERO), 0.0);
        assert_eq!(rate(100, Duration::from_millis(500)), 200.0);
    }

    #[test]
    fn quantiles_print_milliseconds() {
        let mut histogram = stats::latency_histogram();
        stats::record(&mut histogram, Duration::from_micros(1500));

        let line = quantiles(&histogram, &[("p50", 0.5), ("p99.9", 0.999)], true);

        assert_eq!(line, "p50 1.500  p99.9 1.500  max 1.500  (1 samples)");
    }

    #[test]
    fn stale_token_codes_give_hint() {
        let mut counts = ErrorCounts::default();
        assert!(!stale_tokens(&counts));
        counts.add("DEVICE_UNKNOWN", 3);
        assert!(stale_tokens(&counts));
    }

    #[test]
    fn errors_show_first_text_of_each_kind() {
        let mut counts = ErrorCounts::default();
        counts.add_failure(stats::Failure {
            kind: "connect_failed".into(),
            text: "connect to ws://127.0.0.1:1/ws: refused".into(),
        });
        counts.add_failure(stats::Failure {
            kind: "connect_failed".into(),
            text: "later text".into(),
        });
        counts.add("worker_no_report", 1);

        assert_eq!(
            errors(&counts),
            "connect_failed: 2 (first: connect to ws://127.0.0.1:1/ws: refused), worker_no_report: 1"
        );
    }

    /// Returns a report of `signed_in` connections whose kernel readings go from `before` to
    /// `during`.
    fn report_with_kernel(signed_in: u64, before: KernelMemory, during: KernelMemory) -> Report {
        let sample = |kernel| MemorySample {
            engine: Some(1 << 20),
            kernel,
        };
        Report {
            connections: signed_in,
            signed_in,
            connect_elapsed: Duration::from_secs(1),
            opened: None,
            signin_latency: stats::latency_histogram(),
            signin_errors: ErrorCounts::default(),
            hold: HoldFigures::default(),
            engine: EngineMemory {
                processes: 1,
                before: sample(before),
                during: Some(sample(during)),
            },
        }
    }

    #[test]
    fn kernel_line_has_no_negative_figure() {
        let report = report_with_kernel(
            1000,
            KernelMemory {
                slab: Some(10_000_000),
                tcp_buffers: Some(1_000_000),
            },
            KernelMemory {
                slab: Some(15_120_000),
                tcp_buffers: Some(625_000),
            },
        );

        let line = report.kernel_line();

        assert!(
            line.starts_with("slab 5120 B, TCP buffers not measurable ("),
            "{line}"
        );
        assert!(!line.contains(" -"), "no negative figure: {line}");
    }

    #[test]
    fn errors_none_when_empty() {
        assert_eq!(errors(&ErrorCounts::default()), "none");
    }
}
