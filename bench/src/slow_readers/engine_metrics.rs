//! The engine's own count of the connections it closed for slow reading, read from its
//! Prometheus endpoint (`metrics_addr`, `GET /metrics`).
//!
//! A slow reader cannot see the engine's 4008 close frame in time: the frame waits behind the
//! bytes that already fill the socket, and the engine gives up on the close handshake after a
//! short linger and drops the connection. The reader finds the end of its stream only when it
//! reads again, without the frame. The engine's counters show the closes as they happen.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Time allowed for one request to one endpoint, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest response read; the engine's metrics take a few KiB.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Series of the connections closed with 4008, after the outbound queue passed
/// `max_outbound_bytes`.
const SLOW_CONSUMER_CLOSES: &str = "im_engine_closes_total{code=\"4008\"}";

/// Series of the connections dropped after a write waited `write_timeout_ms` for room in the
/// socket.
const WRITE_TIMEOUTS: &str = "im_engine_limits_hit_total{kind=\"write_timeout\"}";

/// A metrics endpoint given as `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsEndpoint {
    /// `HOST:PORT`, for the connect and the Host header.
    authority: String,
    path: String,
}

impl MetricsEndpoint {
    /// Parses `url`; the path defaults to `/metrics`.
    pub(crate) fn parse(url: &str) -> Option<MetricsEndpoint> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/metrics"),
        };
        let (_, port) = authority.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        Some(MetricsEndpoint {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Fetches the metrics text.
    async fn fetch(&self) -> Result<String, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.authority)
                .await
                .map_err(|error| format!("connect failed: {error}"))?;
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.path, self.authority
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|error| format!("write failed: {error}"))?;
            let mut response = Vec::new();
            stream
                .take(MAX_RESPONSE_BYTES)
                .read_to_end(&mut response)
                .await
                .map_err(|error| format!("read failed: {error}"))?;
            Ok::<_, String>(response)
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("timed out after {} ms", REQUEST_TIMEOUT.as_millis()))??;
        response_body(&response)
    }
}

/// Returns the body of an HTTP 200 response.
fn response_body(response: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("unexpected status line {status:?}"));
    }
    Ok(body.to_owned())
}

/// Returns the value of the sample line of `series` in Prometheus text format. The engine
/// exports every close code and limit kind at 0 from its start, so a missing line means that
/// the endpoint is not an engine's. That is an error, like a value that is not a count.
fn counter(text: &str, series: &str) -> Result<u64, String> {
    let value = text
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.starts_with(' ').then(|| rest.trim())
        })
        .ok_or_else(|| {
            format!(
                "the response has no {series} line; pass the engine's metrics_addr, not the \
                 logic tier's"
            )
        })?;
    value
        .parse::<u64>()
        .ok()
        .or_else(|| {
            // Counters may be written as floats, "2e+00" or "2.0".
            let float = value.parse::<f64>().ok()?;
            (float >= 0.0 && float.fract() == 0.0).then_some(float as u64)
        })
        .ok_or_else(|| format!("the value of {series} is not a count: {value:?}"))
}

/// Counters of every endpoint together at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EngineCloses {
    /// Connections closed with 4008.
    pub(crate) slow_consumer: u64,
    /// Connections dropped after a stalled write timed out.
    pub(crate) write_timeouts: u64,
}

impl EngineCloses {
    fn parse(text: &str) -> Result<EngineCloses, String> {
        Ok(EngineCloses {
            slow_consumer: counter(text, SLOW_CONSUMER_CLOSES)?,
            write_timeouts: counter(text, WRITE_TIMEOUTS)?,
        })
    }
}

/// Reads and sums the counters of `endpoints`. Returns the first error when any read fails,
/// because a partial sum would look like closes that were undone.
pub(crate) async fn read_closes(endpoints: &[MetricsEndpoint]) -> Result<EngineCloses, String> {
    let mut total = EngineCloses::default();
    for endpoint in endpoints {
        let text = endpoint.fetch().await?;
        let closes = EngineCloses::parse(&text)?;
        total.slow_consumer += closes.slow_consumer;
        total.write_timeouts += closes.write_timeouts;
    }
    Ok(total)
}

/// The engine's closes over a run: counts before it, the last counts, and when the count of
/// 4008 closes grew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CloseTimeline {
    /// `None` when the first reading failed, which leaves the run without a baseline.
    pub(crate) before: Option<EngineCloses>,
    pub(crate) last: Option<EngineCloses>,
    /// Time from the first reading to each reading at which the 4008 count had grown, with
    /// the growth. The time is known to one reading interval.
    pub(crate) slow_consumer_growth: Vec<(Duration, u64)>,
    /// Readings that failed, and the error of the last one.
    pub(crate) failed: u64,
    pub(crate) last_error: Option<String>,
}

impl CloseTimeline {
    pub(crate) fn start(first: Result<EngineCloses, String>) -> CloseTimeline {
        let mut timeline = CloseTimeline::default();
        match first {
            Ok(closes) => {
                timeline.before = Some(closes);
                timeline.last = Some(closes);
            }
            Err(error) => timeline.fail(error),
        }
        timeline
    }

    pub(crate) fn record(&mut self, reading: Result<EngineCloses, String>, elapsed: Duration) {
        let closes = match reading {
            Ok(closes) => closes,
            Err(error) => return self.fail(error),
        };
        if self.before.is_none() {
            return;
        }
        let previous = self.last.map_or(0, |last| last.slow_consumer);
        if closes.slow_consumer > previous {
            self.slow_consumer_growth
                .push((elapsed, closes.slow_consumer - previous));
        }
        self.last = Some(closes);
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.last_error = Some(error);
    }

    /// Returns the growth of both counters over the run, when a baseline exists.
    pub(crate) fn growth(&self) -> Option<EngineCloses> {
        let (before, last) = (self.before?, self.last?);
        Some(EngineCloses {
            slow_consumer: last.slow_consumer.saturating_sub(before.slow_consumer),
            write_timeouts: last.write_timeouts.saturating_sub(before.write_timeouts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP im_engine_closes_total Connections closed.\n\
        # TYPE im_engine_closes_total counter\n\
        im_engine_closes_total{code=\"1000\"} 36\n\
        im_engine_closes_total{code=\"4008\"} 2\n\
        im_engine_closes_total{code=\"40080\"} 9\n\
        im_engine_limits_hit_total{kind=\"outbound_queue\"} 2\n\
        im_engine_limits_hit_total{kind=\"write_timeout\"} 1.0\n";

    #[test]
    fn endpoint_parses_authority_and_path() {
        let with_path = MetricsEndpoint::parse("http://127.0.0.1:9101/metrics").expect("valid");
        let bare = MetricsEndpoint::parse("http://127.0.0.1:31791").expect("valid");

        assert_eq!(with_path.authority, "127.0.0.1:9101");
        assert_eq!(with_path.path, "/metrics");
        assert_eq!(bare.authority, "127.0.0.1:31791");
        assert_eq!(bare.path, "/metrics");
    }

    #[test]
    fn endpoint_without_http_or_port_rejected() {
        assert_eq!(
            MetricsEndpoint::parse("https://127.0.0.1:9101/metrics"),
            None
        );
        assert_eq!(MetricsEndpoint::parse("127.0.0.1:9101"), None);
        assert_eq!(MetricsEndpoint::parse("http://localhost/metrics"), None);
        assert_eq!(
            MetricsEndpoint::parse("http://localhost:port/metrics"),
            None
        );
    }

    #[test]
    fn counters_parsed_by_exact_series() {
        let closes = EngineCloses::parse(METRICS).expect("counts");

        assert_eq!(closes.slow_consumer, 2);
        assert_eq!(closes.write_timeouts, 1);
    }

    #[test]
    fn missing_series_is_error() {
        // The logic tier's endpoint: metrics, but none of the engine's.
        let logic = "# TYPE im_logic_sign_ins_total counter\nim_logic_sign_ins_total 12\n";

        let error = EngineCloses::parse(logic).expect_err("not an engine's metrics");

        assert!(error.contains(SLOW_CONSUMER_CLOSES), "{error}");
        assert!(counter("", WRITE_TIMEOUTS).is_err());
    }

    #[test]
    fn garbage_value_is_error() {
        let text = "im_engine_closes_total{code=\"4008\"} many\n";

        assert!(EngineCloses::parse(text).is_err());
    }

    #[test]
    fn response_body_needs_status_200() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let not_found = b"HTTP/1.1 404 Not Found\r\n\r\nnot found";

        assert_eq!(response_body(ok), Ok("abc".to_owned()));
        assert!(response_body(not_found).is_err());
        assert!(response_body(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn timeline_records_when_closes_grow() {
        let closes = |slow_consumer, write_timeouts| {
            Ok(EngineCloses {
                slow_consumer,
                write_timeouts,
            })
        };
        let mut timeline = CloseTimeline::start(closes(5, 1));

        timeline.record(closes(5, 1), Duration::from_secs(1));
        timeline.record(closes(7, 1), Duration::from_secs(2));
        timeline.record(Err("connect failed".into()), Duration::from_secs(3));
        timeline.record(closes(8, 3), Duration::from_secs(4));

        assert_eq!(
            timeline.slow_consumer_growth,
            vec![(Duration::from_secs(2), 2), (Duration::from_secs(4), 1)]
        );
        assert_eq!(
            timeline.growth(),
            Some(EngineCloses {
                slow_consumer: 3,
                write_timeouts: 2
            })
        );
        assert_eq!(timeline.failed, 1);
        assert_eq!(timeline.last_error.as_deref(), Some("connect failed"));
    }

    #[test]
    fn timeline_without_baseline_has_no_growth() {
        let mut timeline = CloseTimeline::start(Err("timed out".into()));
        timeline.record(
            Ok(EngineCloses {
                slow_consumer: 4,
                write_timeouts: 0,
            }),
            Duration::from_secs(1),
        );

        assert_eq!(timeline.growth(), None);
        assert!(timeline.slow_consumer_growth.is_empty());
    }

    #[tokio::test]
    async fn closes_read_from_a_live_endpoint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{METRICS}",
                METRICS.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
        let endpoint = MetricsEndpoint::parse(&format!("http://{addr}/metrics")).expect("valid");

        let closes = read_closes(&[endpoint]).await;

        assert_eq!(
            closes,
            Ok(EngineCloses {
                slow_consumer: 2,
                write_timeouts: 1
            })
        );
    }
}
