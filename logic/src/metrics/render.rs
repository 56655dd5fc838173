//! Writing [`LogicMetrics`] in the Prometheus text exposition format 0.0.4.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    Histogram, LogicMetrics, Method, CODES, DELIVER_RESULTS, KICK_REASONS, LATENCY_BUCKETS,
    LOGOUT_SOURCES, PUSH_KINDS, PUSH_TARGET_RESULTS, SIGN_IN_RESULTS,
};

/// States of the PostgreSQL pool, as the `state` label of `im_logic_db_pool_connections`.
const POOL_STATES: [&str; 3] = ["size", "available", "max"];

impl LogicMetrics {
    /// Renders every metric in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(48 * 1024);
        self.render_requests(&mut out);
        self.render_messages(&mut out);
        self.render_sessions(&mut out);
        self.render_stores(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let recorder = &*self.recorder;
        header(
            out,
            "im_logic_requests_total",
            "Finished requests, by method and ErrorCode name. A request inside a gathered call also counts under its single method.",
            "counter",
        );
        for method in Method::ALL {
            for (code_index, code) in CODES.iter().enumerate() {
                let count = load(&recorder.requests[method as usize][code_index]);
                let (method, code) = (method.name(), code.as_str_name());
                let _ = writeln!(
                    out,
                    "im_logic_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}"
                );
            }
        }
        header(
            out,
            "im_logic_request_seconds",
            "Time from the start of a gRPC handler to its result, by method.",
            "histogram",
        );
        for method in Method::ALL {
            let labels = format!("method=\"{}\"", method.name());
            histogram_series(
                out,
                "im_logic_request_seconds",
                &labels,
                &recorder.request_seconds[method as usize],
            );
        }
        labelled_counter(
            out,
            "im_logic_sign_ins_total",
            "ConnLogin and ConnSignIn calls, by result.",
            "result",
            &SIGN_IN_RESULTS,
            &recorder.sign_ins,
        );
    }

    fn render_messages(&self, out: &mut String) {
        let recorder = &*self.recorder;
        counter(
            out,
            "im_logic_messages_stored_total",
            "Messages stored by SEND and ServerSend; repeated sends are not counted.",
            load(&recorder.messages_stored),
        );
        counter(
            out,
            "im_logic_message_copies_stored_total",
            "Message rows stored, one per user who gets the message, the sender included.",
            load(&recorder.message_copies_stored),
        );
        counter(
            out,
            "im_logic_message_copies_expired_total",
            "Message rows deleted because they passed message_retention_days.",
            load(&recorder.message_copies_expired),
        );
        header(
            out,
            "im_logic_push_seconds",
            "Time from a send's reply until the engine node replied to its Deliver call.",
            "histogram",
        );
        histogram_series(out, "im_logic_push_seconds", "", &recorder.push_seconds);
        labelled_counter(
            out,
            "im_logic_deliver_calls_total",
            "Deliver calls to engine nodes, by result.",
            "result",
            &DELIVER_RESULTS,
            &recorder.deliver_calls,
        );
        header(
            out,
            "im_logic_push_targets_total",
            "Devices targeted by Deliver calls, by what the push carried and by result: missed \
             when the device's connection had closed or changed, failed when the call failed.",
            "counter",
        );
        for (kind, counts) in PUSH_KINDS.iter().zip(&recorder.push_targets) {
            for (result, counter) in PUSH_TARGET_RESULTS.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "im_logic_push_targets_total{{kind=\"{kind}\",result=\"{result}\"}} {}",
                    load(counter)
                );
            }
        }
        labelled_counter(
            out,
            "im_logic_pushes_dropped_total",
            "Pushes of messages and notices dropped because a push queue was full; their devices \
             get the messages by SYNC and the changes when they list friends and groups.",
            "kind",
            &PUSH_KINDS,
            &recorder.pushes_dropped,
        );
        labelled_counter(
            out,
            "im_logic_push_status_failures_total",
            "Recipients of messages and notices whose online status could not be read from \
             Redis, so none of their devices got the push; they get the messages by SYNC.",
            "kind",
            &PUSH_KINDS,
            &recorder.status_reads_failed,
        );
    }

    fn render_sessions(&self, out: &mut String) {
        let recorder = &*self.recorder;
        labelled_counter(
            out,
            "im_logic_logouts_total",
            "Logouts that revoked a device token, by where they came from.",
            "source",
            &LOGOUT_SOURCES,
            &recorder.logouts,
        );
        labelled_counter(
            out,
            "im_logic_kicks_total",
            "Connections sent KICKED because their token was revoked, by reason.",
            "reason",
            &KICK_REASONS,
            &recorder.kicks,
        );
        counter(
            out,
            "im_logic_leases_reaped_total",
            "Engine node leases found lapsed; each lapse is counted once.",
            load(&recorder.leases_reaped),
        );
        counter(
            out,
            "im_logic_lease_statuses_removed_total",
            "Online statuses removed because their node's lease lapsed or it restarted.",
            load(&recorder.lease_statuses_removed),
        );
    }

    fn render_stores(&self, out: &mut String) {
        counter(
            out,
            "im_logic_redis_pipelines_total",
            "Redis pipelines sent.",
            self.redis.pipelines_sent(),
        );
        counter(
            out,
            "im_logic_redis_commands_total",
            "Redis commands sent, over all pipelines.",
            self.redis.commands_sent(),
        );
        let status = self.pg.pool_status();
        header(
            out,
            "im_logic_db_pool_connections",
            "PostgreSQL pool connections: open (size), idle (available) and the configured maximum.",
            "gauge",
        );
        let values = [status.size, status.available, status.max_size];
        for (state, value) in POOL_STATES.iter().zip(values) {
            let _ = writeln!(
                out,
                "im_logic_db_pool_connections{{state=\"{state}\"}} {value}"
            );
        }
        header(
            out,
            "im_logic_password_hashes_in_flight",
            "Password hashes and verifications waiting for a CPU or running.",
            "gauge",
        );
        let in_flight = self.passwords.in_flight();
        let _ = writeln!(out, "im_logic_password_hashes_in_flight {in_flight}");
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn labelled_counter(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counters: &[AtomicU64],
) {
    header(out, name, help, "counter");
    for (label_value, counter) in values.iter().zip(counters) {
        let _ = writeln!(out, "{name}{{{label}=\"{label_value}\"}} {}", load(counter));
    }
}

/// Writes the cumulative buckets, sum and count of one histogram series. `labels` is empty or
/// a list such as `method="Send"`.
fn histogram_series(out: &mut String, name: &str, labels: &str, histogram: &Histogram) {
    let separator = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&histogram.buckets) {
        cumulative += load(bucket);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += load(&histogram.buckets[LATENCY_BUCKETS.len()]);
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
    );
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let sum_seconds = load(&histogram.sum_nanos) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{braces} {sum_seconds}");
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use argon2::Params;
    use im_proto::v1::ErrorCode;

    use super::*;
    use crate::config::Config;
    use crate::metrics::{DeliverResult, PushKind, Recorder};
    use crate::password::PasswordHasher;
    use crate::store::pg::PgStore;
    use crate::store::redis_batch::PipelineCounters;

    /// Metrics over a pool that never connects and a cheap hasher.
    fn metrics() -> LogicMetrics {
        let config = Config {
            db_pool_size: 7,
            ..Config::default()
        };
        let pg = PgStore::new(&config).expect("pool builds without connecting");
        let params = Params::new(1024, 1, 1, None).expect("valid params");
        let passwords = PasswordHasher::new(params).expect("hasher");
        LogicMetrics::new(
            Arc::default(),
            Arc::new(PipelineCounters::default()),
            pg,
            passwords,
        )
    }

    fn recorder(metrics: &LogicMetrics) -> &Recorder {
        metrics.recorder()
    }

    fn assert_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|candidate| candidate == line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn requests_are_counted_by_method_and_code() {
        let metrics = metrics();
        let recorder = recorder(&metrics);
        recorder.record_request(Method::Send, ErrorCode::Ok, Duration::from_micros(50));
        recorder.record_request(Method::Send, ErrorCode::Ok, Duration::from_millis(3));
        recorder.record_request(Method::Send, ErrorCode::NotFriend, Duration::from_secs(60));

        let text = metrics.render();

        assert_line(
            &text,
            r#"im_logic_requests_total{method="Send",code="OK"} 2"#,
        );
        assert_line(
            &text,
            r#"im_logic_requests_total{method="Send",code="NOT_FRIEND"} 1"#,
        );
        assert_line(
            &text,
            r#"im_logic_requests_total{method="Sync",code="OK"} 0"#,
        );
        let request_series = text
            .lines()
            .filter(|line| line.starts_with("im_logic_requests_total{"))
            .count();
        assert_eq!(request_series, Method::ALL.len() * CODES.len());
    }

    #[test]
    fn request_histogram_is_cumulative() {
        let metrics = metrics();
        let recorder = recorder(&metrics);
        recorder.record_request(Method::Sync, ErrorCode::Ok, Duration::from_micros(50));
        recorder.record_request(Method::Sync, ErrorCode::Ok, Duration::from_millis(3));
        recorder.record_request(Method::Sync, ErrorCode::Timeout, Duration::from_secs(60));

        let text = metrics.render();

        let name = "im_logic_request_seconds";
        assert_line(
            &text,
            &format!(r#"{name}_bucket{{method="Sync",le="0.0001"}} 1"#),
        );
        assert_line(
            &text,
            &format!(r#"{name}_bucket{{method="Sync",le="0.005"}} 2"#),
        );
        assert_line(
            &text,
            &format!(r#"{name}_bucket{{method="Sync",le="10"}} 2"#),
        );
        assert_line(
            &text,
            &format!(r#"{name}_bucket{{method="Sync",le="+Inf"}} 3"#),
        );
        assert_line(&text, &format!(r#"{name}_count{{method="Sync"}} 3"#));
        assert_line(&text, &format!(r#"{name}_sum{{method="Sync"}} 60.00305"#));
        assert_line(&text, &format!(r#"{name}_count{{method="Ack"}} 0"#));
    }

    #[test]
    fn sign_ins_count_login_and_sign_in_only() {
        let metrics = metrics();
        let recorder = recorder(&metrics);
        let elapsed = Duration::from_millis(1);
        recorder.record_request(Method::ConnLogin, ErrorCode::Ok, elapsed);
        recorder.record_request(Method::ConnSignIn, ErrorCode::TokenExpired, elapsed);
        recorder.record_request(Method::ConnSignIn, ErrorCode::Unavailable, elapsed);
        recorder.record_request(Method::Register, ErrorCode::Ok, elapsed);

        let text = metrics.render();

        assert_line(&text, r#"im_logic_sign_ins_total{result="ok"} 1"#);
        assert_line(&text, r#"im_logic_sign_ins_total{result="rejected"} 1"#);
        assert_line(&text, r#"im_logic_sign_ins_total{result="unavailable"} 1"#);
        assert_line(&text, r#"im_logic_sign_ins_total{result="timeout"} 0"#);
    }

    #[test]
    fn messages_and_pushes_are_counted() {
        let metrics = metrics();
        let recorder = recorder(&metrics);
        recorder.record_message_stored(2);
        recorder.record_message_stored(5);
        recorder.observe_push(Duration::from_millis(2));
        recorder.record_deliver(DeliverResult::Ok);
        recorder.record_deliver(DeliverResult::Timeout);
        recorder.record_push_targets(PushKind::Message, 3, 1, 0);
        recorder.record_push_targets(PushKind::Message, 0, 0, 4);
        recorder.record_push_targets(PushKind::Notice, 2, 0, 0);
        recorder.record_pushes_dropped(PushKind::Notice, 1);
        recorder.record_status_reads_failed(PushKind::Message, 5);

        let text = metrics.render();

        assert_line(&text, "im_logic_messages_stored_total 2");
        assert_line(&text, "im_logic_message_copies_stored_total 7");
        assert_line(&text, r#"im_logic_push_seconds_bucket{le="0.001"} 0"#);
        assert_line(&text, r#"im_logic_push_seconds_bucket{le="0.0025"} 1"#);
        assert_line(&text, "im_logic_push_seconds_count 1");
        assert_line(&text, r#"im_logic_deliver_calls_total{result="ok"} 1"#);
        assert_line(&text, r#"im_logic_deliver_calls_total{result="timeout"} 1"#);
        assert_line(&text, r#"im_logic_deliver_calls_total{result="failed"} 0"#);
        for (kind, result, count) in [
            ("message", "delivered", 3),
            ("message", "missed", 1),
            ("message", "failed", 4),
            ("notice", "delivered", 2),
            ("notice", "failed", 0),
        ] {
            let line = format!(
                r#"im_logic_push_targets_total{{kind="{kind}",result="{result}"}} {count}"#
            );
            assert_line(&text, &line);
        }
        assert_line(&text, r#"im_logic_pushes_dropped_total{kind="message"} 0"#);
        assert_line(&text, r#"im_logic_pushes_dropped_total{kind="notice"} 1"#);
        assert_line(
            &text,
            r#"im_logic_push_status_failures_total{kind="message"} 5"#,
        );
        assert_line(
            &text,
            r#"im_logic_push_status_failures_total{kind="notice"} 0"#,
        );
    }

    #[test]
    fn store_gauges_are_read_at_render() {
        let metrics = metrics();

        let text = metrics.render();

        assert_line(&text, r#"im_logic_db_pool_connections{state="size"} 0"#);
        assert_line(
            &text,
            r#"im_logic_db_pool_connections{state="available"} 0"#,
        );
        assert_line(&text, r#"im_logic_db_pool_connections{state="max"} 7"#);
        assert_line(&text, "im_logic_redis_pipelines_total 0");
        assert_line(&text, "im_logic_redis_commands_total 0");
        assert_line(&text, "im_logic_password_hashes_in_flight 0");
    }

    #[test]
    fn every_sample_follows_its_help_and_type() {
        let text = metrics().render();
        let mut declared: Vec<(String, String)> = Vec::new();

        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().expect("a name");
                declared.push((name.to_owned(), String::new()));
                continue;
            }
            if let Some(kind) = line.strip_prefix("# TYPE ") {
                let (name, kind) = kind.split_once(' ').expect("name and kind");
                let last = declared.last_mut().expect("TYPE after HELP");
                assert_eq!(last.0, name, "TYPE names the metric of its HELP");
                last.1 = kind.to_owned();
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            assert!(value.parse::<f64>().is_ok(), "value of {line:?}");
            let name = series.split('{').next().expect("a name");
            let (family, kind) = declared.last().expect("sample after HELP");
            let base = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name),
                _ => name,
            };
            assert_eq!(base, family, "sample {line:?} under the wrong family");
        }
        assert_eq!(declared.len(), 19, "{declared:?}");
    }
}
