//! Latency histograms, error counts by kind, and their text form for worker reports.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use im_client::{ClientError, ErrorCode};

/// Largest latency a histogram resolves, in microseconds; larger values are recorded as this.
const MAX_LATENCY_US: u64 = 120_000_000;

/// Creates a latency histogram in microseconds with three significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts: low >= 1, high >= 2 * low, sigfig <= 5.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Records `latency` in microseconds, saturating at the histogram's maximum.
pub(crate) fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Latencies of one connection, in microseconds, kept as a plain list until they are
/// merged into a phase's histogram.
///
/// A [`latency_histogram`] contains about 147 KB of counters. One per connection would make
/// the bench allocate and zero hundreds of megabytes just as a phase starts (5,000
/// connections: 737 MB), stalling its own runtime and inflating the first server's round
/// trips. A list costs 4 bytes per value, so it stays smaller than a histogram unless one
/// connection records tens of thousands of values.
#[derive(Debug, Default, Clone)]
pub(crate) struct LatencySamples(Vec<u32>);

impl LatencySamples {
    /// Records `latency` in microseconds, saturating at the histograms' maximum.
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().clamp(1, u128::from(MAX_LATENCY_US));
        self.0.push(u32::try_from(micros).unwrap_or(u32::MAX));
    }

    /// Adds every sample to `histogram`.
    pub(crate) fn merge_into(&self, histogram: &mut Histogram<u64>) {
        for &micros in &self.0 {
            histogram.saturating_record(u64::from(micros));
        }
    }
}

/// Failed attempts counted by kind. Kinds are short stable strings (`connect_failed`,
/// `TOKEN_INVALID`, `closed_4001`), so counts from worker processes merge by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ErrorCounts(
    /// Count by kind.
    pub(crate) BTreeMap<String, u64>,
    /// Error text of the first failure of each kind that had one.
    pub(crate) BTreeMap<String, String>,
);

impl ErrorCounts {
    pub(crate) fn add(&mut self, kind: impl Into<String>, count: u64) {
        *self.0.entry(kind.into()).or_default() += count;
    }

    /// Counts `failure` and keeps its text if it is the first of its kind.
    pub(crate) fn add_failure(&mut self, failure: Failure) {
        self.1.entry(failure.kind.clone()).or_insert(failure.text);
        self.add(failure.kind, 1);
    }

    /// Adds the counts of `other`, and its first texts of the kinds that have none here.
    pub(crate) fn merge(&mut self, other: &ErrorCounts) {
        for (kind, count) in &other.0 {
            self.add(kind.clone(), *count);
        }
        for (kind, text) in &other.1 {
            self.1.entry(kind.clone()).or_insert_with(|| text.clone());
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Formats each kind as `kind: count`, followed by the text of its first failure when it had
    /// one.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(kind, count)| match self.1.get(kind) {
                Some(text) => format!("{kind}: {count} (first: {text})"),
                None => format!("{kind}: {count}"),
            })
            .collect()
    }
}

/// One failed attempt: its kind, which is counted, and its error text, which is reported for
/// the first failure of each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: String,
    pub(crate) text: String,
}

/// Names the kind of a failed [`im_client::Client::connect`]. Socket errors are
/// `connect_failed`, and everything from the WebSocket layer is `handshake_failed`.
pub(crate) fn connect_error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Io(_) => "connect_failed".into(),
        ClientError::Timeout => "connect_timeout".into(),
        _ => "handshake_failed".into(),
    }
}

/// Describes a failed connect to `url`: its kind as [`connect_error_kind`] names it, and a text
/// with the URL and the error, the OS error included. A refused connection means that nothing
/// listens at the URL, so its text names the fix: start the system, or point the bench elsewhere.
pub(crate) fn connect_failure(url: &str, error: &ClientError) -> Failure {
    let refused = matches!(
        error,
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused
    );
    let text = if refused {
        format!(
            "connect to {url} failed: {}. No engine listens there: start the system with \
             scripts/run, or pass --url with the WebSocket URL of a running engine",
            error_chain(error)
        )
    } else {
        format!("connect to {url}: {}", error_chain(error))
    };
    Failure {
        kind: connect_error_kind(error),
        text,
    }
}

/// Describes a failed request: its kind as [`request_error_kind`] names it, and the error text.
pub(crate) fn request_failure(request: &str, error: &ClientError) -> Failure {
    Failure {
        kind: request_error_kind(request, error),
        text: error_chain(error),
    }
}

/// Formats `error` with its sources, such as the OS error under a socket error, joined by ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Names the kind of a failed request: the server's ErrorCode name, or `<request>_timeout`,
/// `closed_<code>` and similar for failures on the client side.
pub(crate) fn request_error_kind(request: &str, error: &ClientError) -> String {
    match error {
        ClientError::Server { code, .. } => code.as_str_name().into(),
        ClientError::UnknownCode { code, .. } => format!("unknown_code_{code}"),
        ClientError::UnexpectedReply { .. } => format!("{request}_unexpected_reply"),
        ClientError::Closed { code, .. } => format!("closed_{code}"),
        ClientError::Timeout => format!("{request}_timeout"),
        ClientError::Decode(_) => format!("{request}_reply_undecodable"),
        ClientError::WebSocket(_) | ClientError::Io(_) => format!("{request}_failed"),
    }
}

/// Names an ERROR push by its code.
pub(crate) fn error_push_kind(code: i32) -> String {
    match ErrorCode::try_from(code) {
        Ok(code) => format!("error_push_{}", code.as_str_name()),
        Err(_) => format!("error_push_{code}"),
    }
}

/// Errors of histogram transport between worker and parent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistogramCodecError {
    /// The histogram could not be serialized.
    #[error("histogram serialization failed: {0}")]
    Serialize(String),
    /// The text is not base64.
    #[error("histogram text is not base64")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not a V2 histogram.
    #[error("histogram bytes do not deserialize: {0}")]
    Deserialize(String),
}

/// Encodes `histogram` in the HdrHistogram V2 format, as base64.
pub(crate) fn encode_histogram(histogram: &Histogram<u64>) -> Result<String, HistogramCodecError> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|error| HistogramCodecError::Serialize(format!("{error:?}")))?;
    Ok(BASE64.encode(bytes))
}

/// Decodes a histogram written by [`encode_histogram`].
pub(crate) fn decode_histogram(text: &str) -> Result<Histogram<u64>, HistogramCodecError> {
    let bytes = BASE64.decode(text)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|error| HistogramCodecError::Deserialize(format!("{error:?}")))
}

/// Adds `source` into `target`. Both come from [`latency_histogram`], so their ranges match;
/// a histogram from elsewhere with a wider range has its values clamped.
pub(crate) fn merge_histogram(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    if target.add(source).is_ok() {
        return;
    }
    for value in source.iter_recorded() {
        target.saturating_record_n(value.value_iterated_to(), value.count_at_value());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_connect_names_url_and_fix() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let failure = connect_failure("ws://127.0.0.1:9/ws", &ClientError::Io(refused));

        assert_eq!(failure.kind, "connect_failed");
        assert!(
            failure
                .text
                .starts_with("connect to ws://127.0.0.1:9/ws failed: "),
            "{}",
            failure.text
        );
        assert!(
            failure.text.ends_with(
                "No engine listens there: start the system with scripts/run, or pass --url \
                 with the WebSocket URL of a running engine"
            ),
            "{}",
            failure.text
        );
    }

    #[test]
    fn other_connect_failure_has_no_start_hint() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let failure = connect_failure("ws://127.0.0.1:9/ws", &ClientError::Io(reset));

        assert!(!failure.text.contains("scripts/run"), "{}", failure.text);
    }

    #[test]
    fn samples_merge_into_histogram_saturating() {
        let mut samples = LatencySamples::default();
        samples.record(Duration::from_micros(250));
        samples.record(Duration::ZERO);
        samples.record(Duration::from_secs(100_000));
        let mut histogram = latency_histogram();
        samples.merge_into(&mut histogram);
        assert_eq!(histogram.len(), 3);
        assert_eq!(histogram.min(), 1);
        assert!(histogram.equivalent(histogram.max(), MAX_LATENCY_US));
        assert_eq!(histogram.count_between(240, 260), 1);
    }

    use super::*;

    #[test]
    fn histogram_round_trips_through_text() {
        let mut histogram = latency_histogram();
        for micros in [150, 900, 12_000, 450_000] {
            record(&mut histogram, Duration::from_micros(micros));
        }

        let text = encode_histogram(&histogram).expect("encode");
        let decoded = decode_histogram(&text).expect("decode");

        assert_eq!(decoded.len(), 4);
        assert_eq!(decoded.min(), histogram.min());
        assert_eq!(decoded.max(), histogram.max());
    }

    #[test]
    fn record_saturates_above_range() {
        let mut histogram = latency_histogram();

        record(&mut histogram, Duration::from_secs(3600));

        assert_eq!(histogram.len(), 1);
        assert!(histogram.max() >= MAX_LATENCY_US);
        assert!(histogram.max() < MAX_LATENCY_US + MAX_LATENCY_US / 100);
    }

    #[test]
    fn decode_rejects_non_base64() {
        let result = decode_histogram("not base64!");

        assert!(matches!(result, Err(HistogramCodecError::Base64(_))));
    }

    #[test]
    fn error_counts_merge_by_kind() {
        let mut first = ErrorCounts::default();
        first.add("TOKEN_INVALID", 2);
        first.add("connect_failed", 1);
        let mut second = ErrorCounts::default();
        second.add("TOKEN_INVALID", 3);

        first.merge(&second);

        assert_eq!(first.0["TOKEN_INVALID"], 5);
        assert_eq!(first.0["connect_failed"], 1);
        assert_eq!(first.total(), 6);
    }

    #[test]
    fn request_error_kind_names_server_code() {
        let error = ClientError::Server {
            code: ErrorCode::TokenExpired,
            message: String::new(),
            retry_after_ms: 0,
        };

        assert_eq!(request_error_kind("sign_in", &error), "TOKEN_EXPIRED");
        assert_eq!(
            request_error_kind("sign_in", &ClientError::Timeout),
            "sign_in_timeout"
        );
    }
}
