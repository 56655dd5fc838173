//! Send times of the messaging scenarios. Messages go out at a fixed total rate, spread evenly
//! over the streams (one stream per sending connection): message `g` of the run, counted over
//! all streams, is due `g / rate` seconds after the start and belongs to stream
//! `g % streams`. Each stream thus sends every `streams / rate` seconds, and the streams are
//! staggered by `1 / rate`.

use std::time::Duration;

/// The send times of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Messages per second over all streams, at least 1.
    pub(crate) rate: u64,
    /// Sending connections, at least 1.
    pub(crate) streams: u64,
    /// Messages of the run over all streams.
    pub(crate) total: u64,
}

impl Schedule {
    /// Plans `rate` messages per second over `streams` streams for `duration_secs` seconds.
    /// Zero rates and stream counts are raised to 1.
    pub(crate) fn new(rate: u64, streams: u64, duration_secs: u64) -> Schedule {
        let rate = rate.max(1);
        Schedule {
            rate,
            streams: streams.max(1),
            total: rate.saturating_mul(duration_secs),
        }
    }

    /// Number of messages of `stream`.
    pub(crate) fn count(&self, stream: u64) -> u64 {
        if stream >= self.total {
            return 0;
        }
        (self.total - stream).div_ceil(self.streams)
    }

    /// Time after the start at which message `index` of `stream` is due.
    pub(crate) fn offset(&self, stream: u64, index: u64) -> Duration {
        let global = u128::from(index) * u128::from(self.streams) + u128::from(stream);
        let nanos = global * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_to_total() {
        let schedule = Schedule::new(1000, 7, 3);

        let sum: u64 = (0..7).map(|stream| schedule.count(stream)).sum();

        assert_eq!(schedule.total, 3000);
        assert_eq!(sum, 3000);
        assert_eq!(schedule.count(0), 429);
        assert_eq!(schedule.count(6), 428);
    }

    #[test]
    fn more_streams_than_messages_leaves_some_idle() {
        let schedule = Schedule::new(2, 5, 1);

        let counts: Vec<u64> = (0..5).map(|stream| schedule.count(stream)).collect();

        assert_eq!(counts, vec![1, 1, 0, 0, 0]);
    }

    #[test]
    fn streams_are_staggered_by_one_over_rate() {
        let schedule = Schedule::new(100, 4, 10);

        assert_eq!(schedule.offset(0, 0), Duration::ZERO);
        assert_eq!(schedule.offset(1, 0), Duration::from_millis(10));
        assert_eq!(schedule.offset(3, 0), Duration::from_millis(30));
        assert_eq!(schedule.offset(0, 1), Duration::from_millis(40));
        assert_eq!(schedule.offset(2, 5), Duration::from_millis(220));
    }

    #[test]
    fn last_message_is_due_before_duration_ends() {
        let schedule = Schedule::new(333, 3, 2);
        let last_stream = (schedule.total - 1) % 3;
        let last_index = schedule.count(last_stream) - 1;

        let last = schedule.offset(last_stream, last_index);

        assert!(last < Duration::from_secs(2), "{last:?}");
        assert!(last > Duration::from_millis(1990), "{last:?}");
    }

    #[test]
    fn zero_rate_is_raised_to_one() {
        let schedule = Schedule::new(0, 0, 5);

        assert_eq!(schedule.rate, 1);
        assert_eq!(schedule.streams, 1);
        assert_eq!(schedule.total, 5);
    }
}
