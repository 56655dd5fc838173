//! Engine metrics in the Prometheus text format. Each shard writes its own counters and
//! histograms with relaxed atomics that no other shard writes, so an event costs no lock
//! and no allocation. A scrape sums the shards.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_proto::ErrorCode;

use crate::registry::DeviceMap;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// False when the engine is built without its default feature `metrics`: every count and
/// observation below then returns at once, and the compiler removes it. The endpoint still
/// replies, with zeros. Only for measuring what the metrics cost (tuning.md).
const COUNTING: bool = cfg!(feature = "metrics");

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket of `LATENCY_BUCKETS`, plus one for larger values.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        if !COUNTING {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn add_to(&self, counts: &mut [u64], sum_nanos: &mut u64) {
        for (total, bucket) in counts.iter_mut().zip(&self.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
        *sum_nanos += self.sum_nanos.load(Ordering::Relaxed);
    }
}

/// The `kind` label of the sign-in metrics: SIGN_IN checks a token, LOGIN waits for a password
/// hash, so their latencies differ by orders of magnitude and are kept apart.
pub const SIGN_IN_KINDS: [&str; 2] = ["sign_in", "login"];

/// Request kind of a sign-in metric, as an index into [`SIGN_IN_KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignInKind {
    SignIn = 0,
    Login = 1,
}

/// Results of SIGN_IN and LOGIN, as the `result` label.
pub const SIGN_IN_RESULTS: [&str; 6] = [
    "ok",
    "rejected",
    "unavailable",
    "timeout",
    "internal",
    "busy",
];

/// Close codes counted by code; any other code counts as "other", and a socket lost without
/// a close handshake as "none".
pub const CLOSE_CODES: [&str; 15] = [
    "1000", "1001", "1002", "1003", "1007", "1008", "1009", "1011", "4001", "4002", "4003", "4008",
    "4009", "other", "none",
];

/// Limits that reject or close, as the `kind` label.
/// `rate_packets` and `rate_bytes` count dropped packets, `rate_close` connections closed
/// with 4009, `sign_in_busy` SIGN_IN, LOGIN and REGISTER rejected with BUSY because no
/// place among the calls in flight was free, and `handshake_timeout` connections whose
/// upgrade request did not arrive within `handshake_timeout_ms`.
pub const LIMITS: [&str; 11] = [
    "outbound_queue",
    "write_timeout",
    "bridge_queue",
    "shard_full",
    "max_connections",
    "max_connections_per_ip",
    "rate_packets",
    "rate_bytes",
    "rate_close",
    "sign_in_busy",
    "handshake_timeout",
];

/// Counters and histograms of one shard; only that shard writes them.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub(crate) connections: AtomicI64,
    pub(crate) accepted: AtomicU64,
    /// By [`SignInKind`], then result.
    pub(crate) sign_ins: [[AtomicU64; SIGN_IN_RESULTS.len()]; SIGN_IN_KINDS.len()],
    pub(crate) closes: [AtomicU64; CLOSE_CODES.len()],
    pub(crate) limits: [AtomicU64; LIMITS.len()],
    pub(crate) packets_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) messages_missed: AtomicU64,
    pub(crate) notices_out: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    /// By [`SignInKind`].
    pub(crate) sign_in_seconds: [Histogram; SIGN_IN_KINDS.len()],
    pub(crate) send_seconds: Histogram,
    /// Connections accepted, signed in or closed, counted with or without the `metrics`
    /// feature: the heap trimmer reads it to know when to run. Not exported.
    pub(crate) churn: AtomicU64,
}

impl ShardMetrics {
    /// Notes that a connection was accepted, signed in or closed.
    pub(crate) fn note_churn(&self) {
        let current = self.churn.load(Ordering::Relaxed);
        self.churn.store(current.wrapping_add(1), Ordering::Relaxed);
    }

    pub(crate) fn count_sign_in(&self, kind: SignInKind, code: im_proto::ErrorCode) {
        self.note_churn();
        if !COUNTING {
            return;
        }
        let index = match code {
            ErrorCode::Ok => 0,
            ErrorCode::Unavailable => 2,
            ErrorCode::Timeout => 3,
            ErrorCode::Internal => 4,
            ErrorCode::Busy => 5,
            _ => 1,
        };
        self.sign_ins[kind as usize][index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_close(&self, code: Option<u16>) {
        self.note_churn();
        if !COUNTING {
            return;
        }
        let index = match code {
            None => CLOSE_CODES.len() - 1,
            Some(code) => CLOSE_CODES
                .iter()
                .position(|known| known.parse() == Ok(code))
                .unwrap_or(CLOSE_CODES.len() - 2),
        };
        self.closes[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_limit(&self, kind: &str) {
        if !COUNTING {
            return;
        }
        if let Some(index) = LIMITS.iter().position(|known| *known == kind) {
            self.limits[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `value` to a counter of this shard. Only the shard's own thread calls it, so a
    /// plain load and store suffice, without the locked read-modify-write of `fetch_add`. A
    /// scrape on another thread still reads whole values.
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        if !COUNTING {
            return;
        }
        let current = counter.load(Ordering::Relaxed);
        counter.store(current.wrapping_add(value), Ordering::Relaxed);
    }
}

/// Counters of the bridge to the logic tier, written from its tokio tasks.
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    pub(crate) in_flight: AtomicI64,
    /// Calls submitted by the shards and not yet taken by the dispatcher.
    pub(crate) queued: AtomicI64,
    pub(crate) queue_rejected: AtomicU64,
    pub(crate) call_seconds: [Histogram; BRIDGE_METHODS.len()],
    /// Calls that failed on the server's side or in transport, by method. [`is_server_failure`]
    /// lists the codes of such failures.
    pub(crate) call_errors: [AtomicU64; BRIDGE_METHODS.len()],
    /// Results of requests by method, then by index in [`OUTCOME_CODES`]. The last index counts
    /// codes outside that list.
    pub(crate) outcomes: [[AtomicU64; OUTCOME_CODES.len() + 1]; BRIDGE_METHODS.len()],
    /// Requests of gathered methods sent as single calls, because the logic tier lacks the
    /// gathered call.
    pub(crate) single_calls: [AtomicU64; BRIDGE_METHODS.len()],
}

impl BridgeMetrics {
    /// Counts one request of method number `method` that ended with `code`.
    pub(crate) fn count_outcome(&self, method: usize, code: ErrorCode) {
        if !COUNTING {
            return;
        }
        let index = OUTCOME_CODES
            .iter()
            .position(|known| *known == code)
            .unwrap_or(OUTCOME_CODES.len());
        self.outcomes[method][index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed call of method number `method` when `code` is a failure on the server's
    /// side or in transport, and not a user error.
    pub(crate) fn count_failure(&self, method: usize, code: ErrorCode) {
        if COUNTING && is_server_failure(code) {
            self.call_errors[method].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// True for the codes of a call that failed on the server's side or in transport: the logic
/// tier or a store behind it was unreachable, too slow, overloaded or faulty. Other codes are
/// the reply to a request that the user can fix, such as a wrong password.
pub(crate) fn is_server_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Internal | ErrorCode::Busy
    )
}

/// Codes of the `code` label of `im_engine_logic_outcomes_total`, named as in the protocol.
/// A code outside this list counts as `OTHER`.
pub const OUTCOME_CODES: [ErrorCode; 29] = [
    ErrorCode::Ok,
    ErrorCode::InvalidPacket,
    ErrorCode::UnknownType,
    ErrorCode::NotSignedIn,
    ErrorCode::AlreadySignedIn,
    ErrorCode::InvalidArgument,
    ErrorCode::InvalidCredentials,
    ErrorCode::TokenInvalid,
    ErrorCode::TokenExpired,
    ErrorCode::TokenRevoked,
    ErrorCode::DeviceUnknown,
    ErrorCode::DeviceNotOwned,
    ErrorCode::UsernameTaken,
    ErrorCode::Unavailable,
    ErrorCode::Timeout,
    ErrorCode::Internal,
    ErrorCode::RateLimited,
    ErrorCode::Busy,
    ErrorCode::ReceiverNotFound,
    ErrorCode::NotFriend,
    ErrorCode::NotGroupMember,
    ErrorCode::ContentEmpty,
    ErrorCode::ContentTooLarge,
    ErrorCode::GroupFull,
    ErrorCode::PermissionDenied,
    ErrorCode::AlreadyExists,
    ErrorCode::NotFound,
    ErrorCode::TooManyGroups,
    ErrorCode::TooManyFriends,
];

/// Logic-tier methods the bridge calls, as the `method` label.
pub const BRIDGE_METHODS: [&str; 8] = [
    "Register",
    "ConnLogin",
    "ConnSignInMany",
    "OfflineMany",
    "SendMany",
    "Sync",
    "AckMany",
    "Logout",
];

/// Indexes in `BRIDGE_METHODS` of the calls that carry many requests.
const GATHERED_METHODS: [usize; 4] = [2, 3, 4, 6];

/// Every metric source of a node, for rendering.
#[derive(Debug, Default, Clone)]
pub struct EngineMetrics {
    pub(crate) shards: Vec<Arc<ShardMetrics>>,
    pub(crate) bridge: Arc<BridgeMetrics>,
    pub(crate) deliver_seconds: Arc<Histogram>,
    /// The node's map from device id to connection, read for its size.
    pub(crate) devices: Arc<DeviceMap>,
}

impl EngineMetrics {
    /// Renders every metric in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let shards = &self.shards;
        gauge_per_shard(
            &mut out,
            "im_engine_connections",
            "Open WebSocket connections.",
            shards,
            |m| m.connections.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP im_engine_signed_in_devices Devices signed in on this node: entries of its map from device id to connection.\n# TYPE im_engine_signed_in_devices gauge\nim_engine_signed_in_devices {}", self.devices.len());
        counter_per_shard(
            &mut out,
            "im_engine_accepted_total",
            "TCP connections accepted.",
            shards,
            |m| m.accepted.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP im_engine_sign_ins_total SIGN_IN and LOGIN requests by kind and result.\n# TYPE im_engine_sign_ins_total counter");
        for (kind_index, kind) in SIGN_IN_KINDS.iter().enumerate() {
            for (index, result) in SIGN_IN_RESULTS.iter().enumerate() {
                let count: u64 = shards
                    .iter()
                    .map(|m| m.sign_ins[kind_index][index].load(Ordering::Relaxed))
                    .sum();
                let _ = writeln!(
                    out,
                    "im_engine_sign_ins_total{{kind=\"{kind}\",result=\"{result}\"}} {count}"
                );
            }
        }
        labelled_sum(
            &mut out,
            "im_engine_closes_total",
            "Connections closed, by the close code sent or echoed.",
            "code",
            &CLOSE_CODES,
            |i| {
                shards
                    .iter()
                    .map(|m| m.closes[i].load(Ordering::Relaxed))
                    .sum()
            },
        );
        labelled_sum(
            &mut out,
            "im_engine_limits_hit_total",
            "Requests rejected or connections closed by a limit.",
            "kind",
            &LIMITS,
            |i| {
                let shard_hits: u64 = shards
                    .iter()
                    .map(|m| m.limits[i].load(Ordering::Relaxed))
                    .sum();
                if LIMITS[i] == "bridge_queue" {
                    shard_hits + self.bridge.queue_rejected.load(Ordering::Relaxed)
                } else {
                    shard_hits
                }
            },
        );
        total(
            &mut out,
            "im_engine_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out on the wss:// listener.",
            shards
                .iter()
                .map(|m| m.tls_handshake_failures.load(Ordering::Relaxed))
                .sum(),
        );
        total(
            &mut out,
            "im_engine_packets_in_total",
            "Packets received from devices.",
            shards
                .iter()
                .map(|m| m.packets_in.load(Ordering::Relaxed))
                .sum(),
        );
        total(
            &mut out,
            "im_engine_messages_out_total",
            "MESSAGE packets queued to devices.",
            shards
                .iter()
                .map(|m| m.messages_out.load(Ordering::Relaxed))
                .sum(),
        );
        total(
            &mut out,
            "im_engine_messages_missed_total",
            "Pushed messages whose connection had closed; the device syncs them.",
            shards
                .iter()
                .map(|m| m.messages_missed.load(Ordering::Relaxed))
                .sum(),
        );
        total(
            &mut out,
            "im_engine_notices_out_total",
            "NOTICE packets queued to devices.",
            shards
                .iter()
                .map(|m| m.notices_out.load(Ordering::Relaxed))
                .sum(),
        );
        let _ = writeln!(out, "# HELP im_engine_bridge_in_flight Requests to the logic tier taken from the queue and not yet answered, on the wire or waiting to join a gathered call.\n# TYPE im_engine_bridge_in_flight gauge\nim_engine_bridge_in_flight {}", self.bridge.in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP im_engine_bridge_queue_depth Calls waiting in the queue from the shards to the bridge.\n# TYPE im_engine_bridge_queue_depth gauge\nim_engine_bridge_queue_depth {}", self.bridge.queued.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP im_engine_sign_in_seconds Time from a SIGN_IN or LOGIN packet to its reply, by kind.\n# TYPE im_engine_sign_in_seconds histogram");
        for (kind_index, kind) in SIGN_IN_KINDS.iter().enumerate() {
            histogram_series(
                &mut out,
                "im_engine_sign_in_seconds",
                &format!("kind=\"{kind}\""),
                shards.iter().map(|m| &m.sign_in_seconds[kind_index]),
            );
        }
        histogram(
            &mut out,
            "im_engine_send_seconds",
            "Time from a SEND packet to its reply (stored for every recipient).",
            "",
            shards.iter().map(|m| &m.send_seconds),
        );
        histogram(
            &mut out,
            "im_engine_deliver_seconds",
            "Time to route one Deliver call from the logic tier to the shards.",
            "",
            std::iter::once(&*self.deliver_seconds),
        );
        let _ = writeln!(out, "# HELP im_engine_logic_call_seconds Calls from the bridge to the logic tier, by method.\n# TYPE im_engine_logic_call_seconds histogram");
        for (index, method) in BRIDGE_METHODS.iter().enumerate() {
            histogram_series(
                &mut out,
                "im_engine_logic_call_seconds",
                &format!("method=\"{method}\""),
                std::iter::once(&self.bridge.call_seconds[index]),
            );
        }
        labelled_sum(
            &mut out,
            "im_engine_logic_call_errors_total",
            "Calls to the logic tier that failed on the server's side or in transport (UNAVAILABLE, TIMEOUT, INTERNAL or BUSY), by method. A request of a gathered call whose own outcome is such a failure counts as one failed call too. User errors such as INVALID_CREDENTIALS are counted in im_engine_logic_outcomes_total only.",
            "method",
            &BRIDGE_METHODS,
            |i| self.bridge.call_errors[i].load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP im_engine_logic_outcomes_total Results of requests to the logic tier, by method and error code (OK for success, OTHER for a code the engine does not know). Gathered methods count each request they carry; AckMany counts calls, because its reply only gives the number of acks not stored.\n# TYPE im_engine_logic_outcomes_total counter");
        for (method_index, method) in BRIDGE_METHODS.iter().enumerate() {
            let counts = &self.bridge.outcomes[method_index];
            let names = OUTCOME_CODES
                .iter()
                .map(ErrorCode::as_str_name)
                .chain(std::iter::once("OTHER"));
            for (name, count) in names.zip(counts) {
                let _ = writeln!(
                    out,
                    "im_engine_logic_outcomes_total{{method=\"{method}\",code=\"{name}\"}} {}",
                    count.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP im_engine_logic_single_calls_total Requests sent as single calls because the logic tier lacks the gathered call (it is older than the engine), by gathered method.\n# TYPE im_engine_logic_single_calls_total counter");
        for index in GATHERED_METHODS {
            let _ = writeln!(
                out,
                "im_engine_logic_single_calls_total{{method=\"{}\"}} {}",
                BRIDGE_METHODS[index],
                self.bridge.single_calls[index].load(Ordering::Relaxed)
            );
        }
        out
    }
}

fn gauge_per_shard(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[Arc<ShardMetrics>],
    value: impl Fn(&ShardMetrics) -> i64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (index, shard) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{index}\"}} {}", value(shard));
    }
}

fn counter_per_shard(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[Arc<ShardMetrics>],
    value: impl Fn(&ShardMetrics) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (index, shard) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{index}\"}} {}", value(shard));
    }
}

fn labelled_sum(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    value: impl Fn(usize) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (index, label_value) in values.iter().enumerate() {
        let _ = writeln!(out, "{name}{{{label}=\"{label_value}\"}} {}", value(index));
    }
}

fn total(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    parts: impl Iterator<Item = &'a Histogram>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    histogram_series(out, name, labels, parts);
}

fn histogram_series<'a>(
    out: &mut String,
    name: &str,
    labels: &str,
    parts: impl Iterator<Item = &'a Histogram>,
) {
    let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
    let mut sum_nanos = 0u64;
    for part in parts {
        part.add_to(&mut counts, &mut sum_nanos);
    }
    let separator = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, count) in LATENCY_BUCKETS.iter().zip(&counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += counts[LATENCY_BUCKETS.len()];
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
    );
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", sum_nanos as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = EngineMetrics {
            shards: vec![Arc::default(), Arc::default()],
            ..EngineMetrics::default()
        };
        let sign_in = SignInKind::SignIn as usize;
        metrics.shards[0].sign_in_seconds[sign_in].observe(Duration::from_micros(50));
        metrics.shards[1].sign_in_seconds[sign_in].observe(Duration::from_millis(3));
        metrics.shards[1].sign_in_seconds[sign_in].observe(Duration::from_secs(60));
        metrics.shards[1].sign_in_seconds[SignInKind::Login as usize]
            .observe(Duration::from_millis(800));
        let text = metrics.render();
        let series = "im_engine_sign_in_seconds_bucket{kind=\"sign_in\",";
        assert!(
            text.contains(&format!("{series}le=\"0.0001\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains(&format!("{series}le=\"0.005\"}} 2\n")));
        assert!(text.contains(&format!("{series}le=\"10\"}} 2\n")));
        assert!(text.contains(&format!("{series}le=\"+Inf\"}} 3\n")));
        assert!(text.contains("im_engine_sign_in_seconds_count{kind=\"sign_in\"} 3\n"));
        // A LOGIN lands in its own series only.
        assert!(text.contains("im_engine_sign_in_seconds_bucket{kind=\"login\",le=\"0.5\"} 0\n"));
        assert!(text.contains("im_engine_sign_in_seconds_bucket{kind=\"login\",le=\"1\"} 1\n"));
    }

    #[test]
    fn shard_counters_are_summed() {
        let metrics = EngineMetrics {
            shards: vec![Arc::default(), Arc::default()],
            ..EngineMetrics::default()
        };
        metrics.shards[0].count_close(Some(4003));
        metrics.shards[1].count_close(Some(4003));
        metrics.shards[1].count_close(Some(3999));
        metrics.shards[1].count_close(None);
        ShardMetrics::add(&metrics.shards[0].packets_in, 2);
        ShardMetrics::add(&metrics.shards[0].packets_in, 3);
        metrics.shards[0].count_sign_in(SignInKind::SignIn, im_proto::ErrorCode::TokenInvalid);
        metrics.shards[1].count_sign_in(SignInKind::Login, im_proto::ErrorCode::Ok);
        let text = metrics.render();
        assert!(
            text.contains("im_engine_closes_total{code=\"4003\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("im_engine_closes_total{code=\"other\"} 1\n"));
        assert!(text.contains("im_engine_closes_total{code=\"none\"} 1\n"));
        assert_eq!(metrics.shards[0].packets_in.load(Ordering::Relaxed), 5);
        assert!(text.contains("im_engine_sign_ins_total{kind=\"sign_in\",result=\"rejected\"} 1\n"));
        assert!(text.contains("im_engine_sign_ins_total{kind=\"login\",result=\"ok\"} 1\n"));
        assert!(text.contains("im_engine_sign_ins_total{kind=\"login\",result=\"rejected\"} 0\n"));
    }

    #[test]
    fn outcome_codes_cover_the_protocol() {
        for number in 0..=255 {
            if let Ok(code) = ErrorCode::try_from(number) {
                assert!(OUTCOME_CODES.contains(&code), "{code:?} has no label");
            }
        }
    }

    #[test]
    fn outcomes_are_rendered_by_method_and_code() {
        let metrics = EngineMetrics::default();
        let login = 1;
        metrics
            .bridge
            .count_outcome(login, ErrorCode::InvalidCredentials);
        metrics
            .bridge
            .count_failure(login, ErrorCode::InvalidCredentials);
        metrics.bridge.count_outcome(login, ErrorCode::Unavailable);
        metrics.bridge.count_failure(login, ErrorCode::Unavailable);
        let text = metrics.render();
        let outcome = "im_engine_logic_outcomes_total{method=\"ConnLogin\",code=";
        assert!(
            text.contains(&format!("{outcome}\"INVALID_CREDENTIALS\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains(&format!("{outcome}\"UNAVAILABLE\"}} 1\n")));
        assert!(text.contains(&format!("{outcome}\"OK\"}} 0\n")));
        assert!(text.contains(&format!("{outcome}\"OTHER\"}} 0\n")));
        assert!(text.contains("im_engine_logic_call_errors_total{method=\"ConnLogin\"} 1\n"));
    }

    #[test]
    fn signed_in_devices_is_device_map_size() {
        let metrics = EngineMetrics::default();
        let entry = crate::registry::DeviceEntry {
            conn: crate::registry::ConnId(1),
            user_id: 3,
        };
        metrics.devices.insert(7, entry);
        metrics.devices.insert(8, entry);
        let two = metrics.render();
        metrics.devices.remove(&7);
        metrics.devices.remove(&8);
        let none = metrics.render();

        assert!(two.contains("\nim_engine_signed_in_devices 2\n"), "{two}");
        assert!(none.contains("\nim_engine_signed_in_devices 0\n"), "{none}");
    }
}
