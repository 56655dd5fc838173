//! Slow readers of the `group` scenario: recipients that sign in like the others and then stop
//! reading their socket, so the kernel's socket buffers and then the engine's outbound queue
//! fill up. After the drain each one reads what is buffered for it and reports the messages
//! it found and how its stream ended.
//!
//! Slow readers send nothing either, heartbeats included: bytes the engine has not read when
//! it drops a connection make its kernel reset the connection, which can cut off what the
//! slow reader has yet to read. A run longer than the engine's heartbeat_timeout_ms (90 s by
//! default) therefore ends them with 4002 instead.

mod engine_metrics;
mod memory;
pub(crate) mod report;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use im_client::{Client, Packet, Push};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub(crate) use engine_metrics::{CloseTimeline, MetricsEndpoint};
pub(crate) use memory::{Gauge, MemorySampler, Readings};

use crate::payload::Payload;
use crate::stats::ErrorCounts;
use crate::traffic;

/// Time the final read waits for the next push before it takes an open stream as drained.
/// Once reading resumes, the engine writes what it queued as fast as loopback takes it.
const READ_IDLE: Duration = Duration::from_secs(1);

/// Time allowed for the final read of all slow readers together.
pub(crate) const READ_LIMIT: Duration = Duration::from_secs(10);

/// Close code of a connection that ended without a close frame (RFC 6455, 7.1.5).
pub(crate) const NO_CLOSE_FRAME: u16 = 1006;

/// End of a slow reader's stream, as its final read found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StreamEnd {
    /// The connection ended with a close frame of this code, or without one
    /// ([`NO_CLOSE_FRAME`]).
    Closed(u16),
    /// The connection was still open when the final read ended. The bench then closed it.
    Open,
}

/// Result of one slow reader's final read.
#[derive(Debug)]
pub(crate) struct SlowReaderTally {
    /// Messages of this run, each counted once.
    pub(crate) received: u64,
    pub(crate) end: StreamEnd,
    pub(crate) errors: ErrorCounts,
}

/// Everything the slow readers of a run measured.
#[derive(Debug)]
pub(crate) struct SlowReaderFigures {
    /// Names of the slow readers, as `first .. last`.
    pub(crate) names: String,
    /// Messages the server stored, each of which was due to every slow reader.
    pub(crate) stored: u64,
    pub(crate) tallies: Vec<SlowReaderTally>,
    /// `None` when the sampler failed.
    pub(crate) readings: Option<Readings>,
}

impl SlowReaderFigures {
    /// Counts the slow readers by how their stream ended.
    pub(crate) fn ends(&self) -> BTreeMap<StreamEnd, u64> {
        let mut ends = BTreeMap::new();
        for tally in &self.tallies {
            *ends.entry(tally.end).or_default() += 1;
        }
        ends
    }
}

/// Stops reading on each connection. Pushes already read stay queued in the client and are
/// counted by [`read_remaining`].
pub(crate) fn pause(clients: &[Client]) {
    for client in clients {
        client.pause_reading();
    }
}

/// Resumes reading on every connection, reads what is buffered until each stream ends or
/// stays idle for [`READ_IDLE`], all within [`READ_LIMIT`], then closes the connections.
/// Returns one tally per connection, in order.
pub(crate) async fn read_remaining(clients: Vec<Client>, run_id: u64) -> Vec<SlowReaderTally> {
    let deadline = Instant::now() + READ_LIMIT;
    let count = clients.len();
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.spawn(async move { (index, read_one(client, run_id, deadline).await) });
    }
    let mut tallies: Vec<Option<SlowReaderTally>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, tally)) => tallies[index] = Some(tally),
            Err(error) => tracing::warn!(%error, "slow reader task failed"),
        }
    }
    tallies
        .into_iter()
        .map(|tally| {
            tally.unwrap_or_else(|| {
                let mut errors = ErrorCounts::default();
                errors.add("slow_reader_task_failed", 1);
                SlowReaderTally {
                    received: 0,
                    end: StreamEnd::Open,
                    errors,
                }
            })
        })
        .collect()
}

async fn read_one(client: Client, run_id: u64, deadline: Instant) -> SlowReaderTally {
    client.resume_reading();
    let mut count = MessageCount::new(run_id);
    let end = loop {
        let wait_until = (Instant::now() + READ_IDLE).min(deadline);
        match tokio::time::timeout_at(wait_until, client.next_push()).await {
            Ok(Some(packet)) => count.take(packet),
            Ok(None) => {
                let code = client
                    .close_frame()
                    .map_or(NO_CLOSE_FRAME, |(code, _)| code);
                break StreamEnd::Closed(code);
            }
            Err(_) => break StreamEnd::Open,
        }
    };
    let mut errors = count.errors;
    // On a connection that has ended already, this only cleans up.
    if let Some(kind) = traffic::close(client).await {
        errors.add(kind, 1);
    }
    SlowReaderTally {
        received: count.seen.len() as u64,
        end,
        errors,
    }
}

/// Counts the messages of one run in the pushes of one connection.
struct MessageCount {
    run_id: u64,
    /// (stream, index) of each message of the run.
    seen: HashSet<(u32, u64)>,
    errors: ErrorCounts,
}

impl MessageCount {
    fn new(run_id: u64) -> Self {
        Self {
            run_id,
            seen: HashSet::new(),
            errors: ErrorCounts::default(),
        }
    }

    fn take(&mut self, packet: Packet) {
        let message = match Push::decode(packet) {
            Ok(Push::Message(message)) => message,
            Ok(push) => {
                if let Some(kind) = traffic::unexpected_push_kind(&push) {
                    self.errors.add(kind, 1);
                }
                return;
            }
            Err(_) => return self.errors.add("undecodable_push", 1),
        };
        let Some(payload) = Payload::decode(&message.content) else {
            return self.errors.add("foreign_message", 1);
        };
        if payload.run_id != self.run_id {
            return self.errors.add("message_of_other_run", 1);
        }
        if !self.seen.insert((payload.stream, payload.index)) {
            self.errors.add("duplicate_message", 1);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::fake_engine::FakeEngine;
    use crate::traffic::{SenderSpec, TrafficPlan};

    #[tokio::test]
    async fn paused_reader_counts_buffered_messages_after_the_run() {
        let engine = FakeEngine::start().await;
        let sender = SenderSpec::to_test_group(engine.signed_in(1).await, vec![0]);
        let fast = engine.signed_in(2).await;
        let slow = engine.signed_in(3).await;
        pause(std::slice::from_ref(&slow));
        let plan = TrafficPlan {
            schedule: crate::schedule::Schedule::new(50, 1, 1),
            run_id: 9,
            content_bytes: 48,
            max_in_flight: 16,
            heartbeat: Duration::from_millis(200),
            drain: Duration::from_secs(5),
            lead_in: Duration::from_millis(50),
        };

        let figures = traffic::run(plan, vec![sender], vec![fast]).await;
        let tallies = read_remaining(vec![slow], 9).await;

        assert!(figures.passed(), "{:?}", figures.errors);
        assert_eq!(figures.expected, 50);
        assert_eq!(figures.received, 50);
        assert_eq!(tallies.len(), 1);
        assert_eq!(tallies[0].received, 50);
        // The fake engine keeps the connection open, so the read ends when it goes idle.
        assert_eq!(tallies[0].end, StreamEnd::Open);
        assert!(tallies[0].errors.0.is_empty(), "{:?}", tallies[0].errors);
    }

    #[test]
    fn message_count_skips_foreign_and_duplicate_messages() {
        let mut count = MessageCount::new(5);
        let message = |run_id: u64, index: u64| {
            let payload = Payload {
                run_id,
                stream: 0,
                index,
                intended_us: 0,
            };
            let message = im_client::Message {
                seq: index + 1,
                content: payload.encode(40).into(),
                ..im_client::Message::default()
            };
            Packet {
                r#type: im_client::PacketType::Message as i32,
                data: prost::Message::encode_to_vec(&message).into(),
                ..Packet::default()
            }
        };

        count.take(message(5, 0));
        count.take(message(5, 1));
        count.take(message(5, 1));
        count.take(message(6, 2));

        assert_eq!(count.seen.len(), 2);
        assert_eq!(count.errors.0.get("duplicate_message"), Some(&1));
        assert_eq!(count.errors.0.get("message_of_other_run"), Some(&1));
    }

    #[test]
    fn ends_are_counted_by_kind() {
        let tally = |end| SlowReaderTally {
            received: 0,
            end,
            errors: ErrorCounts::default(),
        };
        let figures = SlowReaderFigures {
            names: "a .. c".into(),
            stored: 0,
            tallies: vec![
                tally(StreamEnd::Closed(4008)),
                tally(StreamEnd::Open),
                tally(StreamEnd::Closed(4008)),
            ],
            readings: None,
        };

        let ends = figures.ends();

        assert_eq!(ends.get(&StreamEnd::Closed(4008)), Some(&2));
        assert_eq!(ends.get(&StreamEnd::Open), Some(&1));
        assert_eq!(ends.len(), 2);
    }
}
