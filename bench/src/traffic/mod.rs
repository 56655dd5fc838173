//! A messaging run: sending connections send their streams at fixed times while receiving
//! connections take the pushes, then the run drains until every stored message has arrived
//! or the drain time has passed.
//!
//! Latency is measured from each message's intended send time, not from when the SEND was
//! written, so a server that stalls the senders shows up in the figures instead of slowing
//! the load (coordinated omission).

mod receiver;
pub(crate) mod report;
mod sender;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use im_client::{Client, ClientError, Push};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub(crate) use sender::Destination;

use crate::schedule::Schedule;
use crate::stats::{self, ErrorCounts};

/// How often the drain checks whether every message has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Settings of one run.
#[derive(Debug, Clone)]
pub(crate) struct TrafficPlan {
    pub(crate) schedule: Schedule,
    /// Random id that marks this run's messages.
    pub(crate) run_id: u64,
    pub(crate) content_bytes: usize,
    /// Most SENDs one connection has in flight; later sends wait for a reply.
    pub(crate) max_in_flight: usize,
    /// A connection that has sent nothing for this long sends a heartbeat.
    pub(crate) heartbeat: Duration,
    /// Time after the last reply to wait for deliveries.
    pub(crate) drain: Duration,
    /// Time between the start of the receivers and the first intended send.
    pub(crate) lead_in: Duration,
}

/// A sending connection and where its stream goes.
pub(crate) struct SenderSpec {
    pub(crate) client: Client,
    pub(crate) destination: Destination,
    /// Indices into the receivers of the connections that get each of its messages.
    pub(crate) recipients: Vec<usize>,
}

impl SenderSpec {
    /// Builds a sender to group 77 of stream 0, for tests on the fake engine, which routes a
    /// group message to every other signed-in user.
    #[cfg(test)]
    pub(crate) fn to_test_group(client: Client, recipients: Vec<usize>) -> SenderSpec {
        SenderSpec {
            client,
            destination: Destination {
                stream: 0,
                conversation_type: im_client::ConversationType::Group,
                receiver_id: 77,
            },
            recipients,
        }
    }
}

/// Everything a run measured.
#[derive(Debug)]
pub(crate) struct TrafficFigures {
    pub(crate) sent: u64,
    pub(crate) replies: u64,
    /// Deliveries expected: for each sender, its SENDs times its recipients.
    pub(crate) expected: u64,
    pub(crate) received: u64,
    /// Per receiver: messages expected and messages received.
    pub(crate) per_receiver: Vec<(u64, u64)>,
    /// Intended send time to arrival, in microseconds, per delivered copy.
    pub(crate) delivery_latency: Histogram<u64>,
    /// Intended send time to SEND reply, in microseconds.
    pub(crate) reply_latency: Histogram<u64>,
    /// From the first intended send to the last reply.
    pub(crate) sending_elapsed: Duration,
    /// From the end of sending until every message arrived or the drain time passed.
    pub(crate) drain_elapsed: Duration,
    pub(crate) errors: ErrorCounts,
}

impl TrafficFigures {
    /// Expected deliveries that did not arrive.
    pub(crate) fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// Tells whether the run had no error and every expected delivery arrived exactly once.
    pub(crate) fn passed(&self) -> bool {
        self.errors.total() == 0 && self.received == self.expected
    }
}

/// Runs the senders and receivers and returns the figures. Returns once every sender has its
/// last reply (each bounded by the client's reply time limit) and the drain has ended.
pub(crate) async fn run(
    plan: TrafficPlan,
    senders: Vec<SenderSpec>,
    receivers: Vec<Client>,
) -> TrafficFigures {
    let plan = Arc::new(plan);
    let epoch = Instant::now() + plan.lead_in;
    let received_total = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);

    let mut receiver_tasks = JoinSet::new();
    let receiver_count = receivers.len();
    for (index, client) in receivers.into_iter().enumerate() {
        let plan = Arc::clone(&plan);
        let received_total = Arc::clone(&received_total);
        let stop = stop_rx.clone();
        receiver_tasks.spawn(async move {
            let tally = receiver::run(client, &plan, epoch, received_total, stop).await;
            (index, tally)
        });
    }
    let recipients: Vec<Vec<usize>> = senders.iter().map(|spec| spec.recipients.clone()).collect();
    let mut sender_tasks = JoinSet::new();
    for (index, spec) in senders.into_iter().enumerate() {
        let plan = Arc::clone(&plan);
        sender_tasks.spawn(async move {
            let tally = sender::run(spec.client, &plan, spec.destination, epoch).await;
            (index, tally)
        });
    }

    let mut figures = TrafficFigures {
        sent: 0,
        replies: 0,
        expected: 0,
        received: 0,
        per_receiver: vec![(0, 0); receiver_count],
        delivery_latency: stats::latency_histogram(),
        reply_latency: stats::latency_histogram(),
        sending_elapsed: Duration::ZERO,
        drain_elapsed: Duration::ZERO,
        errors: ErrorCounts::default(),
    };
    collect_senders(&mut sender_tasks, &recipients, epoch, &mut figures).await;

    let drain_started = Instant::now();
    drain(
        &received_total,
        figures.expected,
        drain_started + plan.drain,
    )
    .await;
    figures.drain_elapsed = drain_started.elapsed();
    stop.send_replace(true);
    collect_receivers(&mut receiver_tasks, &mut figures).await;
    figures
}

async fn collect_senders(
    tasks: &mut JoinSet<(usize, sender::SenderTally)>,
    recipients: &[Vec<usize>],
    epoch: Instant,
    figures: &mut TrafficFigures,
) {
    let mut last_reply = None;
    while let Some(joined) = tasks.join_next().await {
        let Ok((index, tally)) = joined else {
            figures.errors.add("sender_task_failed", 1);
            continue;
        };
        figures.sent += tally.sent;
        figures.replies += tally.replies;
        figures.errors.merge(&tally.errors);
        tally.reply_latency.merge_into(&mut figures.reply_latency);
        last_reply = last_reply.max(tally.last_reply);
        for receiver in &recipients[index] {
            figures.per_receiver[*receiver].0 += tally.sent;
            figures.expected += tally.sent;
        }
    }
    figures.sending_elapsed =
        last_reply.map_or(Duration::ZERO, |at| at.saturating_duration_since(epoch));
}

/// Waits until `expected` messages have arrived or `deadline` has passed.
async fn drain(received_total: &AtomicU64, expected: u64, deadline: Instant) {
    while received_total.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

async fn collect_receivers(
    tasks: &mut JoinSet<(usize, receiver::ReceiverTally)>,
    figures: &mut TrafficFigures,
) {
    while let Some(joined) = tasks.join_next().await {
        let Ok((index, tally)) = joined else {
            figures.errors.add("receiver_task_failed", 1);
            continue;
        };
        figures.received += tally.received;
        figures.per_receiver[index].1 = tally.received;
        figures.errors.merge(&tally.errors);
        tally.latency.merge_into(&mut figures.delivery_latency);
    }
}

/// Closes `client` and returns the error kind when the close failed.
pub(crate) async fn close(client: Client) -> Option<String> {
    match client.close().await {
        Ok(()) => None,
        Err(ClientError::Timeout) => Some("close_timeout".into()),
        Err(_) => Some("close_failed".into()),
    }
}

/// Names a push that the connection did not expect, or returns `None` for a NOTICE: the
/// scenarios befriend users and create groups while devices are signed in, so notices are
/// neither messages nor errors.
pub(crate) fn unexpected_push_kind(push: &Push) -> Option<String> {
    let kind = match push {
        Push::Notice(_) => return None,
        Push::Message(_) => "unexpected_message".into(),
        Push::Kicked(_) => "kicked".into(),
        Push::Error { code, .. } => stats::error_push_kind(*code),
        Push::Other(packet) if packet.request_id != 0 => format!("late_reply_{}", packet.r#type),
        Push::Other(packet) => format!("unexpected_push_{}", packet.r#type),
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use im_client::ConversationType;

    use super::*;
    use crate::fake_engine::FakeEngine;

    fn plan(rate: u64, streams: u64, drain: Duration) -> TrafficPlan {
        TrafficPlan {
            schedule: Schedule::new(rate, streams, 1),
            run_id: 7,
            content_bytes: 48,
            max_in_flight: 16,
            heartbeat: Duration::from_millis(200),
            drain,
            lead_in: Duration::from_millis(50),
        }
    }

    fn to_user(client: Client, stream: u32, receiver_id: u64, receiver: usize) -> SenderSpec {
        SenderSpec {
            client,
            destination: Destination {
                stream,
                conversation_type: ConversationType::User,
                receiver_id,
            },
            recipients: vec![receiver],
        }
    }

    #[tokio::test]
    async fn chat_pairs_deliver_every_message_once() {
        let engine = FakeEngine::start().await;
        let senders = vec![
            to_user(engine.signed_in(1).await, 0, 2, 0),
            to_user(engine.signed_in(3).await, 1, 4, 1),
        ];
        let receivers = vec![engine.signed_in(2).await, engine.signed_in(4).await];

        let figures = run(plan(200, 2, Duration::from_secs(5)), senders, receivers).await;

        assert_eq!(figures.sent, 200);
        assert_eq!(figures.replies, 200);
        assert_eq!(figures.expected, 200);
        assert_eq!(figures.received, 200);
        assert_eq!(figures.per_receiver, vec![(100, 100), (100, 100)]);
        assert_eq!(figures.delivery_latency.len(), 200);
        assert_eq!(figures.reply_latency.len(), 200);
        assert!(figures.errors.0.is_empty(), "{:?}", figures.errors);
        assert!(figures.passed());
        assert!(engine.acks.load(Ordering::SeqCst) > 0);
        // Sending is spread over the one-second schedule, not sent in a burst.
        assert!(
            figures.sending_elapsed >= Duration::from_millis(900),
            "{:?}",
            figures.sending_elapsed
        );
    }

    #[tokio::test]
    async fn group_counts_each_copy() {
        let engine = FakeEngine::start().await;
        let sender = SenderSpec::to_test_group(engine.signed_in(1).await, vec![0, 1, 2]);
        let mut receivers = Vec::new();
        for user_id in 2..=4 {
            receivers.push(engine.signed_in(user_id).await);
        }

        let figures = run(plan(50, 1, Duration::from_secs(5)), vec![sender], receivers).await;

        assert_eq!(figures.sent, 50);
        assert_eq!(figures.expected, 150);
        assert_eq!(figures.received, 150);
        assert_eq!(figures.per_receiver, vec![(50, 50); 3]);
        assert_eq!(figures.delivery_latency.len(), 150);
        assert!(figures.passed(), "{:?}", figures.errors);
    }

    #[tokio::test]
    async fn lost_pushes_fail_the_run() {
        let engine = FakeEngine::start_dropping(10).await;
        let senders = vec![to_user(engine.signed_in(1).await, 0, 2, 0)];
        let receivers = vec![engine.signed_in(2).await];

        let figures = run(plan(100, 1, Duration::from_millis(300)), senders, receivers).await;

        assert_eq!(figures.sent, 100);
        assert_eq!(figures.received, 90);
        assert_eq!(figures.lost(), 10);
        assert_eq!(figures.per_receiver, vec![(100, 90)]);
        assert!(!figures.passed());
        // The drain waited its full time for the missing messages, and no longer.
        assert!(figures.drain_elapsed >= Duration::from_millis(300));
        assert!(figures.drain_elapsed < Duration::from_secs(2));
    }
}
