//! Per-connection rate limits on received packets and bytes: two token buckets in a few bytes
//! of the connection, refilled from the shard's coarse clock, so a received message costs a
//! few integer operations and no clock read, lock or allocation.

use std::cell::Cell;
use std::num::NonZeroU32;

use monoio::time::Instant;

use crate::config::Config;

/// Dropped bytes in a row, in multiples of `rate_byte_burst`, after which a connection that
/// keeps sending is closed.
const EXCESS_BURSTS: u64 = 4;

/// Millitokens in one packet token: refilling in thousandths keeps the fraction that a
/// millisecond of a low rate adds.
const MILLI: u64 = 1000;

/// The time of the shard's latest socket read. Connections read it per packet instead of
/// the system clock; it is at most one wake behind, because every read wake advances it.
#[derive(Debug)]
pub(crate) struct ShardClock {
    origin: Instant,
    now: Cell<Instant>,
}

impl ShardClock {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            origin: now,
            now: Cell::new(now),
        }
    }

    /// Reads the system clock into the shard clock; called once per read wake and after a
    /// call to the logic tier, not per packet.
    pub(crate) fn tick(&self) {
        self.now.set(Instant::now());
    }

    /// Returns milliseconds since the shard started, wrapping after 49 days; buckets only
    /// take differences, so the wrap is harmless for intervals under that.
    pub(crate) fn now_ms(&self) -> u32 {
        self.ms_at(self.now.get())
    }

    /// Returns the system clock in the milliseconds of [`ShardClock::now_ms`], without a tick.
    pub(crate) fn read_ms(&self) -> u32 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u32 {
        // Truncation is the intended wrap.
        (at - self.origin).as_millis() as u32
    }
}

/// Maximum timeout of a deadline, 2^31 - 1 ms (24.8 days). Deadlines wrap with the shard
/// clock's milliseconds, so they are compared as signed differences of under 2^31 ms.
const MAX_DEADLINE_MS: u64 = (1 << 31) - 1;

/// A point in time in the wrapping milliseconds of [`ShardClock::now_ms`]. It is 4 bytes in
/// place of a 16-byte `Instant`, for the deadlines that every idle connection keeps, and 4
/// bytes as an `Option` too: the millisecond 0 is taken as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(NonZeroU32);

impl Deadline {
    /// Returns the deadline `timeout_ms` after `now_ms`. A timeout above `MAX_DEADLINE_MS`
    /// (24.8 days) is cut to it.
    pub(crate) fn after(now_ms: u32, timeout_ms: u64) -> Self {
        // At most 2^31 - 1, so the cast is lossless.
        let at = now_ms.wrapping_add(timeout_ms.min(MAX_DEADLINE_MS) as u32);
        Self(NonZeroU32::new(at).unwrap_or(NonZeroU32::MIN))
    }

    /// True when the deadline is at or before `now_ms`.
    pub(crate) fn is_due(self, now_ms: u32) -> bool {
        now_ms.wrapping_sub(self.0.get()) < 1 << 31
    }

    /// Returns the earlier of two deadlines.
    pub(crate) fn min(self, other: Self) -> Self {
        if other.is_due(self.0.get()) {
            other
        } else {
            self
        }
    }
}

/// The rate settings of every connection of a shard; a rate of 0 turns that bucket off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimits {
    packets_per_sec: u64,
    packet_burst_milli: u64,
    bytes_per_sec: u64,
    byte_burst: u64,
    strikes: u32,
}

impl RateLimits {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            packets_per_sec: config.rate_packets_per_sec.into(),
            packet_burst_milli: u64::from(config.rate_packet_burst) * MILLI,
            bytes_per_sec: config.rate_bytes_per_sec.into(),
            byte_burst: config.rate_byte_burst.into(),
            strikes: config.rate_limit_strikes,
        }
    }
}

/// Bucket that was empty, as the `kind` label of the limit metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKind {
    Packets,
    Bytes,
}

impl LimitKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            LimitKind::Packets => "rate_packets",
            LimitKind::Bytes => "rate_bytes",
        }
    }
}

/// Decision for one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Pass,
    /// Drop it and tell the device to wait `retry_after_ms`.
    Limited {
        kind: LimitKind,
        retry_after_ms: u32,
    },
    /// The device kept sending while limited: close with 4009.
    Close,
}

/// Bucket state of one connection: 20 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateState {
    /// Shard clock at the last refill, in milliseconds.
    last_ms: u32,
    /// Packet tokens, in thousandths.
    packet_milli: u32,
    byte_tokens: u32,
    /// Messages dropped since the last one that passed.
    dropped: u32,
    /// Bytes of those messages.
    dropped_bytes: u32,
}

impl RateState {
    /// Starts with full buckets.
    pub(crate) fn new(limits: &RateLimits, now_ms: u32) -> Self {
        Self {
            last_ms: now_ms,
            packet_milli: saturate(limits.packet_burst_milli),
            byte_tokens: saturate(limits.byte_burst),
            dropped: 0,
            dropped_bytes: 0,
        }
    }

    /// Charges one message of `bytes` bytes received at `now_ms`.
    pub(crate) fn check(&mut self, limits: &RateLimits, now_ms: u32, bytes: usize) -> Verdict {
        self.refill(limits, now_ms);
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let packet_short = limits.packets_per_sec > 0 && u64::from(self.packet_milli) < MILLI;
        let byte_short = limits.bytes_per_sec > 0 && u64::from(self.byte_tokens) < bytes;
        if !packet_short && !byte_short {
            if limits.packets_per_sec > 0 {
                self.packet_milli -= MILLI as u32;
            }
            if limits.bytes_per_sec > 0 {
                self.byte_tokens -= bytes as u32;
            }
            self.dropped = 0;
            self.dropped_bytes = 0;
            return Verdict::Pass;
        }
        self.dropped = self.dropped.saturating_add(1);
        self.dropped_bytes = saturate(u64::from(self.dropped_bytes) + bytes);
        let excess = limits.bytes_per_sec > 0
            && u64::from(self.dropped_bytes) > EXCESS_BURSTS * limits.byte_burst;
        if limits.strikes > 0 && (self.dropped > limits.strikes || excess) {
            return Verdict::Close;
        }
        let packet_wait = if packet_short {
            (MILLI - u64::from(self.packet_milli)).div_ceil(limits.packets_per_sec)
        } else {
            0
        };
        let byte_wait = if byte_short {
            ((bytes - u64::from(self.byte_tokens)) * 1000).div_ceil(limits.bytes_per_sec)
        } else {
            0
        };
        Verdict::Limited {
            kind: if packet_short {
                LimitKind::Packets
            } else {
                LimitKind::Bytes
            },
            retry_after_ms: saturate(packet_wait.max(byte_wait).max(1)),
        }
    }

    fn refill(&mut self, limits: &RateLimits, now_ms: u32) {
        let elapsed = u64::from(now_ms.wrapping_sub(self.last_ms));
        if elapsed == 0 {
            return;
        }
        self.last_ms = now_ms;
        let packets = u64::from(self.packet_milli) + elapsed * limits.packets_per_sec;
        self.packet_milli = saturate(packets.min(limits.packet_burst_milli));
        // Dropping the fraction of a byte per refill costs at most one byte a millisecond.
        let bytes = u64::from(self.byte_tokens) + elapsed * limits.bytes_per_sec / 1000;
        self.byte_tokens = saturate(bytes.min(limits.byte_burst));
    }
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_due_across_wrap() {
        let deadline = Deadline::after(u32::MAX - 5, 10);
        assert!(!deadline.is_due(u32::MAX));
        assert!(!deadline.is_due(3));
        assert!(deadline.is_due(4));
        assert!(deadline.is_due(1000));
    }

    #[test]
    fn deadline_min_across_wrap() {
        let early = Deadline::after(u32::MAX - 5, 2);
        let late = Deadline::after(u32::MAX - 5, 20);
        assert_eq!(early.min(late), early);
        assert_eq!(late.min(early), early);
    }

    #[test]
    fn deadline_timeout_is_capped() {
        let deadline = Deadline::after(0, u64::MAX);
        assert!(!deadline.is_due(0));
        assert!(!deadline.is_due((1 << 31) - 2));
        assert!(deadline.is_due((1 << 31) - 1));
    }

    fn limits(packets: u32, burst: u32, bytes: u32, byte_burst: u32, strikes: u32) -> RateLimits {
        RateLimits::from_config(&Config {
            rate_packets_per_sec: packets,
            rate_packet_burst: burst,
            rate_bytes_per_sec: bytes,
            rate_byte_burst: byte_burst,
            rate_limit_strikes: strikes,
            ..Config::default()
        })
    }

    #[test]
    fn burst_passes_then_packets_are_limited() {
        let limits = limits(10, 3, 0, 0, 100);
        let mut state = RateState::new(&limits, 0);
        for _ in 0..3 {
            assert_eq!(state.check(&limits, 0, 10), Verdict::Pass);
        }
        let verdict = state.check(&limits, 0, 10);
        assert_eq!(
            verdict,
            Verdict::Limited {
                kind: LimitKind::Packets,
                retry_after_ms: 100
            }
        );
    }

    #[test]
    fn tokens_refill_with_the_clock() {
        let limits = limits(10, 1, 0, 0, 100);
        let mut state = RateState::new(&limits, 0);
        assert_eq!(state.check(&limits, 0, 1), Verdict::Pass);
        assert!(matches!(
            state.check(&limits, 40, 1),
            Verdict::Limited {
                retry_after_ms: 60,
                ..
            }
        ));
        assert_eq!(state.check(&limits, 100, 1), Verdict::Pass);
    }

    #[test]
    fn bytes_are_limited_with_their_own_wait() {
        let limits = limits(0, 1, 1000, 1000, 100);
        let mut state = RateState::new(&limits, 0);
        assert_eq!(state.check(&limits, 0, 800), Verdict::Pass);
        assert_eq!(
            state.check(&limits, 0, 500),
            Verdict::Limited {
                kind: LimitKind::Bytes,
                retry_after_ms: 300
            }
        );
        assert_eq!(state.check(&limits, 300, 500), Verdict::Pass);
    }

    #[test]
    fn strikes_in_a_row_close() {
        let limits = limits(1, 1, 0, 0, 3);
        let mut state = RateState::new(&limits, 0);
        assert_eq!(state.check(&limits, 0, 1), Verdict::Pass);
        for _ in 0..3 {
            assert!(matches!(
                state.check(&limits, 0, 1),
                Verdict::Limited { .. }
            ));
        }
        assert_eq!(state.check(&limits, 0, 1), Verdict::Close);
    }

    #[test]
    fn passing_packet_resets_strikes() {
        let limits = limits(1000, 1, 0, 0, 2);
        let mut state = RateState::new(&limits, 0);
        for now in 0..50 {
            assert_eq!(state.check(&limits, now, 1), Verdict::Pass);
            assert!(matches!(
                state.check(&limits, now, 1),
                Verdict::Limited { .. }
            ));
        }
    }

    #[test]
    fn byte_excess_of_several_bursts_closes() {
        let limits = limits(0, 1, 100, 1000, 1000);
        let mut state = RateState::new(&limits, 0);
        assert_eq!(state.check(&limits, 0, 1000), Verdict::Pass);
        for _ in 0..4 {
            assert!(matches!(
                state.check(&limits, 0, 1000),
                Verdict::Limited { .. }
            ));
        }
        assert_eq!(state.check(&limits, 0, 1000), Verdict::Close);
    }

    #[test]
    fn zero_rates_pass_everything() {
        let limits = limits(0, 1, 0, 0, 1);
        let mut state = RateState::new(&limits, 0);
        for _ in 0..10_000 {
            assert_eq!(state.check(&limits, 0, 65_536), Verdict::Pass);
        }
    }

    #[test]
    fn clock_wrap_still_refills() {
        let limits = limits(10, 1, 0, 0, 100);
        let mut state = RateState::new(&limits, u32::MAX - 10);
        assert_eq!(state.check(&limits, u32::MAX - 10, 1), Verdict::Pass);
        assert_eq!(state.check(&limits, 90, 1), Verdict::Pass);
    }

    #[test]
    fn state_is_twenty_bytes() {
        assert_eq!(std::mem::size_of::<RateState>(), 20);
    }
}
