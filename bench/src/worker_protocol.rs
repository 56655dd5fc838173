//! The lines a worker process prints on stdout, one JSON object each, and how the parent
//! merges them. The parent writes commands to the worker's stdin, one per line: `sign_in`
//! once every worker has reported `opened` (only in a run that opens every connection
//! first), and `hold` once every worker has reported `connected`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::phases::{ConnectFigures, HoldFigures};
use crate::stats::{self, ErrorCounts, HistogramCodecError};

/// The line the parent sends to start the hold.
pub(crate) const HOLD_COMMAND: &str = "hold";

/// The line the parent sends to let the open connections of a worker sign in.
pub(crate) const SIGN_IN_COMMAND: &str = "sign_in";

/// One line of worker output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum WorkerEvent {
    /// Connect-phase progress, once a second.
    Progress {
        done: u64,
        signed_in: u64,
        /// In a run that opens every connection first, the connections open so far.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opened: Option<u64>,
    },
    /// The worker's open phase has ended, and it waits for `sign_in` on stdin. Sent only in a run
    /// that opens every connection first. The failures are counted again, by kind, in
    /// `connected`.
    Opened {
        attempted: u64,
        opened: u64,
        failed: u64,
        /// When the worker started opening and when its open phase ended, in microseconds
        /// since the Unix epoch, so that the parent times the phase without the workers'
        /// start-up; 0 when unknown.
        #[serde(default, skip_serializing_if = "is_zero")]
        started_us: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        ended_us: u64,
    },
    /// The worker's connect phase has ended; it waits for `hold` on stdin.
    Connected {
        attempted: u64,
        signed_in: u64,
        /// Sign-in latency, HdrHistogram V2 in base64.
        signin_histogram: String,
        errors: BTreeMap<String, u64>,
        /// Error text of the first failure of each kind that had one.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        first_errors: BTreeMap<String, String>,
    },
    /// The hold and the close have ended; the worker exits.
    Finished {
        /// Heartbeat round trip, HdrHistogram V2 in base64.
        heartbeat_histogram: String,
        /// Heartbeats whose reply came after the hold ended. The histogram includes them too.
        #[serde(default)]
        heartbeats_after_hold: u64,
        errors: BTreeMap<String, u64>,
        /// Error text of the first failure of each kind that had one.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        first_errors: BTreeMap<String, String>,
    },
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Returns the time since the Unix epoch in microseconds, the clock that worker processes share
/// with the parent; 0 if the clock is before 1970.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// Errors in worker output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerLineError {
    #[error("worker line is not a worker event")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Histogram(#[from] HistogramCodecError),
}

impl WorkerEvent {
    /// Describes a finished connect phase.
    pub(crate) fn connected(figures: &ConnectFigures) -> Result<WorkerEvent, HistogramCodecError> {
        Ok(WorkerEvent::Connected {
            attempted: figures.attempted,
            signed_in: figures.signed_in,
            signin_histogram: stats::encode_histogram(&figures.latency)?,
            errors: figures.errors.0.clone(),
            first_errors: figures.errors.1.clone(),
        })
    }

    /// Describes a finished hold.
    pub(crate) fn finished(figures: &HoldFigures) -> Result<WorkerEvent, HistogramCodecError> {
        Ok(WorkerEvent::Finished {
            heartbeat_histogram: stats::encode_histogram(&figures.heartbeat_rtt)?,
            heartbeats_after_hold: figures.heartbeats_after_hold,
            errors: figures.errors.0.clone(),
            first_errors: figures.errors.1.clone(),
        })
    }

    /// Formats the event as one line of JSON, without the line end.
    pub(crate) fn to_line(&self) -> String {
        // serde_json fails only on maps with non-string keys, and every map here has String keys.
        serde_json::to_string(self).expect("worker events serialize")
    }

    /// Parses one line of worker output.
    pub(crate) fn parse(line: &str) -> Result<WorkerEvent, WorkerLineError> {
        Ok(serde_json::from_str(line.trim_end())?)
    }
}

/// Connect-phase figures merged over workers.
#[derive(Debug)]
pub(crate) struct MergedConnect {
    pub(crate) attempted: u64,
    pub(crate) signed_in: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: ErrorCounts,
}

impl Default for MergedConnect {
    fn default() -> Self {
        Self {
            attempted: 0,
            signed_in: 0,
            latency: stats::latency_histogram(),
            errors: ErrorCounts::default(),
        }
    }
}

impl MergedConnect {
    /// Adds one worker's `connected` figures.
    pub(crate) fn absorb(
        &mut self,
        attempted: u64,
        signed_in: u64,
        histogram: &str,
        errors: &ErrorCounts,
    ) -> Result<(), HistogramCodecError> {
        let histogram = stats::decode_histogram(histogram)?;
        stats::merge_histogram(&mut self.latency, &histogram);
        self.attempted += attempted;
        self.signed_in += signed_in;
        self.errors.merge(errors);
        Ok(())
    }
}

/// Adds one worker's `finished` figures into `target`.
pub(crate) fn absorb_finished(
    target: &mut HoldFigures,
    histogram: &str,
    heartbeats_after_hold: u64,
    errors: &ErrorCounts,
) -> Result<(), HistogramCodecError> {
    let histogram = stats::decode_histogram(histogram)?;
    stats::merge_histogram(&mut target.heartbeat_rtt, &histogram);
    target.heartbeats_after_hold += heartbeats_after_hold;
    target.errors.merge(errors);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn connect_figures(latencies_ms: &[u64], errors: &[(&str, u64)]) -> ConnectFigures {
        let mut latency = stats::latency_histogram();
        for millis in latencies_ms {
            stats::record(&mut latency, Duration::from_millis(*millis));
        }
        let mut counts = ErrorCounts::default();
        for (kind, count) in errors {
            counts.add(*kind, *count);
        }
        ConnectFigures {
            attempted: latencies_ms.len() as u64 + counts.total(),
            signed_in: latencies_ms.len() as u64,
            elapsed: Duration::from_secs(1),
            opened: None,
            latency,
            errors: counts,
        }
    }

    fn absorb_line(merged: &mut MergedConnect, line: &str) {
        let WorkerEvent::Connected {
            attempted,
            signed_in,
            signin_histogram,
            errors,
            first_errors,
        } = WorkerEvent::parse(line).expect("parse")
        else {
            panic!("connected expected");
        };
        merged
            .absorb(
                attempted,
                signed_in,
                &signin_histogram,
                &ErrorCounts(errors, first_errors),
            )
            .expect("absorb");
    }

    #[test]
    fn connected_lines_merge_counts_and_latency() {
        let first = connect_figures(&[1, 2, 3], &[("TOKEN_INVALID", 1)]);
        let second = connect_figures(&[4, 500], &[("TOKEN_INVALID", 2), ("connect_failed", 1)]);
        let lines = [
            WorkerEvent::connected(&first).expect("encode").to_line(),
            WorkerEvent::connected(&second).expect("encode").to_line(),
        ];

        let mut merged = MergedConnect::default();
        for line in &lines {
            absorb_line(&mut merged, line);
        }

        assert_eq!(merged.attempted, 9);
        assert_eq!(merged.signed_in, 5);
        assert_eq!(merged.latency.len(), 5);
        assert!(merged.latency.equivalent(merged.latency.min(), 1000));
        assert!(merged.latency.equivalent(merged.latency.max(), 500_000));
        assert!(merged
            .latency
            .equivalent(merged.latency.value_at_quantile(0.5), 3000));
        assert_eq!(merged.errors.0["TOKEN_INVALID"], 3);
        assert_eq!(merged.errors.0["connect_failed"], 1);
    }

    #[test]
    fn finished_lines_merge_heartbeats() {
        let mut worker = HoldFigures::default();
        stats::record(&mut worker.heartbeat_rtt, Duration::from_micros(250));
        worker.heartbeats_after_hold = 3;
        worker.errors.add("heartbeat_timeout", 1);
        let line = WorkerEvent::finished(&worker).expect("encode").to_line();

        let mut merged = HoldFigures::default();
        for _ in 0..2 {
            let WorkerEvent::Finished {
                heartbeat_histogram,
                heartbeats_after_hold,
                errors,
                first_errors,
            } = WorkerEvent::parse(&line).expect("parse")
            else {
                panic!("finished expected");
            };
            absorb_finished(
                &mut merged,
                &heartbeat_histogram,
                heartbeats_after_hold,
                &ErrorCounts(errors, first_errors),
            )
            .expect("absorb");
        }

        assert_eq!(merged.heartbeat_rtt.len(), 2);
        assert_eq!(merged.heartbeats_after_hold, 6);
        assert_eq!(merged.errors.0["heartbeat_timeout"], 2);
    }

    #[test]
    fn progress_line_round_trips() {
        let event = WorkerEvent::Progress {
            done: 10,
            signed_in: 9,
            opened: None,
        };

        let line = event.to_line();

        assert_eq!(line, r#"{"event":"progress","done":10,"signed_in":9}"#);
        assert_eq!(WorkerEvent::parse(&line).expect("parse"), event);
    }

    #[test]
    fn open_phase_lines_round_trip() {
        let cases = [
            (
                WorkerEvent::Progress {
                    done: 2,
                    signed_in: 0,
                    opened: Some(40),
                },
                r#"{"event":"progress","done":2,"signed_in":0,"opened":40}"#,
            ),
            (
                WorkerEvent::Opened {
                    attempted: 50,
                    opened: 48,
                    failed: 2,
                    started_us: 0,
                    ended_us: 0,
                },
                r#"{"event":"opened","attempted":50,"opened":48,"failed":2}"#,
            ),
        ];
        for (event, expected) in cases {
            let line = event.to_line();

            assert_eq!(line, expected);
            assert_eq!(WorkerEvent::parse(&line).expect("parse"), event);
        }
    }

    #[test]
    fn garbage_line_is_error() {
        assert!(matches!(
            WorkerEvent::parse("thread 'main' panicked"),
            Err(WorkerLineError::Json(_))
        ));
    }

    #[test]
    fn corrupt_histogram_is_error() {
        let line = r#"{"event":"connected","attempted":1,"signed_in":1,"signin_histogram":"AAAA","errors":{}}"#;
        let WorkerEvent::Connected {
            attempted,
            signed_in,
            signin_histogram,
            errors,
            first_errors,
        } = WorkerEvent::parse(line).expect("parse")
        else {
            panic!("connected expected");
        };

        let errors = ErrorCounts(errors, first_errors);
        let result =
            MergedConnect::default().absorb(attempted, signed_in, &signin_histogram, &errors);

        assert!(result.is_err());
    }
}
