//! The result lines about the slow readers of a `group` run, printed on stdout after the
//! lines of the run itself.

use super::{CloseTimeline, Gauge, SlowReaderFigures, StreamEnd, NO_CLOSE_FRAME};
use crate::report::{errors, mebibytes};
use crate::stats::ErrorCounts;

/// Prints the figures.
pub(crate) fn print(figures: &SlowReaderFigures) {
    let count = figures.tallies.len() as u64;
    println!("slow readers (not counted in the received and lost figures above)");
    println!("  members                {count}: {}", figures.names);
    println!("  messages received      {}", received_line(figures));
    println!("  not received           {}", not_received_line(figures));

    println!("  stream ends            {}", ends_line(figures));
    if figures
        .ends()
        .contains_key(&StreamEnd::Closed(NO_CLOSE_FRAME))
    {
        println!(
            "                         (no close frame arrived: a 4008 close frame waits behind the \
             full socket until the engine drops the connection 2 s later, and a write timeout \
             sends none)"
        );
    }

    match &figures.readings {
        Some(readings) => {
            let memory = &readings.memory;
            println!(
                "  engine RSS             {}",
                gauge_line(&memory.engine_rss, count, "engine bytes")
            );
            println!(
                "  kernel TCP buffers     {} (system-wide)",
                gauge_line(&memory.kernel_tcp, count, "kernel TCP bytes")
            );
            println!(
                "  engine closes          {}",
                closes_line(readings.closes.as_ref())
            );
        }
        None => println!("  memory                 not read (the sampler failed)"),
    }

    let mut all_errors = ErrorCounts::default();
    for tally in &figures.tallies {
        all_errors.merge(&tally.errors);
    }
    println!("  errors                 {}", errors(&all_errors));
}

fn received_line(figures: &SlowReaderFigures) -> String {
    let counts = figures.tallies.iter().map(|tally| tally.received);
    let (Some(min), Some(max)) = (counts.clone().min(), counts.clone().max()) else {
        return "no slow readers".into();
    };
    let total: u64 = counts.sum();
    format!(
        "min {min}, max {max}, total {total} of {} stored for them, read from the socket after \
         the drain",
        figures.stored * figures.tallies.len() as u64
    )
}

fn not_received_line(figures: &SlowReaderFigures) -> String {
    let due = figures.stored * figures.tallies.len() as u64;
    let received: u64 = figures.tallies.iter().map(|tally| tally.received).sum();
    format!(
        "{}, not lost: the engine stores every message, and a device that was closed gets them \
         with SYNC after it reconnects",
        due.saturating_sub(received)
    )
}

fn ends_line(figures: &SlowReaderFigures) -> String {
    figures
        .ends()
        .iter()
        .map(|(end, count)| format!("{} {count}", end_label(*end)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names a stream end, with the meaning of the close codes a slow reader can expect.
fn end_label(end: StreamEnd) -> String {
    match end {
        StreamEnd::Closed(NO_CLOSE_FRAME) => {
            format!("{NO_CLOSE_FRAME} (ended without close frame)")
        }
        StreamEnd::Closed(4008) => "4008 (outbound queue past max_outbound_bytes)".into(),
        StreamEnd::Closed(4002) => "4002 (heartbeat timeout)".into(),
        StreamEnd::Closed(code) => format!("{code} (close frame)"),
        StreamEnd::Open => "still open".into(),
    }
}

/// Formats the engines' closes over the run, with the time of each 4008 close to one reading
/// interval.
fn closes_line(closes: Option<&CloseTimeline>) -> String {
    let Some(closes) = closes else {
        return "not read (pass --engine-metrics-url to count them)".into();
    };
    let Some(growth) = closes.growth() else {
        return format!(
            "not read: {}",
            closes.last_error.as_deref().unwrap_or("no reading")
        );
    };
    let mut line = format!("4008 {}", growth.slow_consumer);
    if !closes.slow_consumer_growth.is_empty() {
        let times: Vec<String> = closes
            .slow_consumer_growth
            .iter()
            .map(|(elapsed, count)| format!("{count} at {:.0} s", elapsed.as_secs_f64()))
            .collect();
        line.push_str(&format!(
            " ({} after the traffic started)",
            times.join(", ")
        ));
    }
    line.push_str(&format!(", write timeouts {}", growth.write_timeouts));
    if closes.failed > 0 {
        line.push_str(&format!(
            "; {} readings failed, the last: {}",
            closes.failed,
            closes.last_error.as_deref().unwrap_or_default()
        ));
    }
    line
}

/// Formats before, peak and end of `gauge`, and the peak's growth per slow reader.
fn gauge_line(gauge: &Gauge, count: u64, per_reader: &str) -> String {
    let format_bytes = |value: Option<u64>| value.map_or_else(|| "not readable".into(), mebibytes);
    let growth = gauge
        .peak_growth_per(count)
        .map_or_else(|| "unknown".to_owned(), |bytes| format!("{bytes} B"));
    format!(
        "before {}, peak {}, end {}; {per_reader} per slow reader (peak - before) / {count}: \
         {growth}",
        format_bytes(gauge.before),
        format_bytes(gauge.peak),
        format_bytes(gauge.end)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::slow_readers::engine_metrics::EngineCloses;
    use crate::slow_readers::SlowReaderTally;

    fn figures(tallies: Vec<(u64, StreamEnd)>) -> SlowReaderFigures {
        SlowReaderFigures {
            names: "u-8 .. u-9".into(),
            stored: 100,
            tallies: tallies
                .into_iter()
                .map(|(received, end)| SlowReaderTally {
                    received,
                    end,
                    errors: ErrorCounts::default(),
                })
                .collect(),
            readings: None,
        }
    }

    #[test]
    fn received_line_sums_readers() {
        let figures = figures(vec![
            (40, StreamEnd::Closed(4008)),
            (60, StreamEnd::Closed(4008)),
        ]);

        assert_eq!(
            received_line(&figures),
            "min 40, max 60, total 100 of 200 stored for them, read from the socket after the drain"
        );
        assert!(not_received_line(&figures).starts_with("100, not lost"));
    }

    #[test]
    fn ends_line_counts_codes() {
        let figures = figures(vec![
            (1, StreamEnd::Closed(4008)),
            (1, StreamEnd::Closed(NO_CLOSE_FRAME)),
            (1, StreamEnd::Closed(4008)),
            (1, StreamEnd::Open),
        ]);

        assert_eq!(
            ends_line(&figures),
            "1006 (ended without close frame) 1, 4008 (outbound queue past max_outbound_bytes) 2, \
             still open 1"
        );
    }

    #[test]
    fn closes_line_lists_times() {
        let mut timeline = CloseTimeline::start(Ok(EngineCloses::default()));
        let closes = |slow_consumer, write_timeouts| {
            Ok(EngineCloses {
                slow_consumer,
                write_timeouts,
            })
        };
        timeline.record(closes(2, 0), Duration::from_secs(9));
        timeline.record(closes(3, 1), Duration::from_secs(10));

        assert_eq!(
            closes_line(Some(&timeline)),
            "4008 3 (2 at 9 s, 1 at 10 s after the traffic started), write timeouts 1"
        );
    }

    #[test]
    fn closes_line_without_endpoint_or_baseline() {
        let failed = CloseTimeline::start(Err("connect failed: refused".into()));

        assert_eq!(
            closes_line(None),
            "not read (pass --engine-metrics-url to count them)"
        );
        assert_eq!(
            closes_line(Some(&failed)),
            "not read: connect failed: refused"
        );
    }

    #[test]
    fn gauge_line_shows_growth_per_reader() {
        let gauge = Gauge {
            before: Some(1024 * 1024),
            peak: Some(3 * 1024 * 1024),
            end: None,
        };

        assert_eq!(
            gauge_line(&gauge, 2, "engine bytes"),
            "before 1.0 MiB, peak 3.0 MiB, end not readable; engine bytes per slow reader \
             (peak - before) / 2: 1048576 B"
        );
    }
}
