//! One receiving connection of a messaging run: it takes MESSAGE pushes, records the latency
//! from each message's intended send time, counts each message once, and acknowledges the
//! highest seq after each batch of pushes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_client::{Client, ClientError, Message, Packet, Push};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{close, unexpected_push_kind, TrafficPlan};
use crate::payload::Payload;
use crate::stats::{request_error_kind, ErrorCounts, LatencySamples};

/// Counts and latencies of one receiving connection.
#[derive(Debug)]
pub(crate) struct ReceiverTally {
    /// Messages of this run, each counted once.
    pub(crate) received: u64,
    /// Time from each message's intended send time to its arrival, in microseconds.
    pub(crate) latency: LatencySamples,
    pub(crate) errors: ErrorCounts,
}

/// Cause of a wake-up of the receive loop.
enum Wake {
    Push(Option<Packet>),
    Heartbeat,
    Stop,
}

/// The receive loop's state.
struct Receiver<'a> {
    plan: &'a TrafficPlan,
    epoch: Instant,
    /// (stream, index) of every message of this run taken so far.
    seen: HashSet<(u32, u64)>,
    highest_seq: u64,
    acked_seq: u64,
    /// Messages received by every connection of the run, for the coordinator's drain.
    received_total: &'a AtomicU64,
    tally: ReceiverTally,
}

/// Receives until `stop` turns true, then closes.
pub(crate) async fn run(
    client: Client,
    plan: &TrafficPlan,
    epoch: Instant,
    received_total: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) -> ReceiverTally {
    let mut receiver = Receiver {
        plan,
        epoch,
        seen: HashSet::new(),
        highest_seq: 0,
        acked_seq: 0,
        received_total: &received_total,
        tally: ReceiverTally {
            received: 0,
            latency: LatencySamples::default(),
            errors: ErrorCounts::default(),
        },
    };
    receiver.drive(&client, stop).await;
    let mut tally = receiver.tally;
    if let Some(kind) = close(client).await {
        tally.errors.add(kind, 1);
    }
    tally
}

impl Receiver<'_> {
    async fn drive(&mut self, client: &Client, mut stop: watch::Receiver<bool>) {
        let mut heartbeat_at = Instant::now() + self.plan.heartbeat;
        loop {
            let wake = tokio::select! {
                push = client.next_push() => Wake::Push(push),
                () = tokio::time::sleep_until(heartbeat_at) => Wake::Heartbeat,
                // An error means the coordinator is gone, which also ends the run.
                _ = stop.wait_for(|stop| *stop) => Wake::Stop,
            };
            match wake {
                Wake::Push(Some(packet)) => {
                    self.take(packet);
                    while let Some(packet) = client.try_next_push() {
                        self.take(packet);
                    }
                    if self.ack(client).await {
                        heartbeat_at = Instant::now() + self.plan.heartbeat;
                    }
                }
                Wake::Push(None) => {
                    self.note_close(client, &stop);
                    return;
                }
                Wake::Heartbeat => {
                    self.heartbeat(client).await;
                    heartbeat_at = Instant::now() + self.plan.heartbeat;
                }
                Wake::Stop => return,
            }
        }
    }

    /// Sends a heartbeat while still taking pushes, so a full push queue cannot hold back the
    /// reply.
    async fn heartbeat(&mut self, client: &Client) {
        let mut request = std::pin::pin!(client.heartbeat());
        let result: Result<Duration, ClientError> = loop {
            tokio::select! {
                biased;
                result = &mut request => break result,
                Some(packet) = client.next_push() => self.take(packet),
            }
        };
        if let Err(error) = result {
            self.tally
                .errors
                .add(request_error_kind("heartbeat", &error), 1);
        }
    }

    fn take(&mut self, packet: Packet) {
        match Push::decode(packet) {
            Ok(Push::Message(message)) => self.take_message(&message),
            Ok(push) => {
                if let Some(kind) = unexpected_push_kind(&push) {
                    self.tally.errors.add(kind, 1);
                }
            }
            Err(_) => self.tally.errors.add("undecodable_push", 1),
        }
    }

    fn take_message(&mut self, message: &Message) {
        let now = Instant::now();
        self.highest_seq = self.highest_seq.max(message.seq);
        let Some(payload) = Payload::decode(&message.content) else {
            self.tally.errors.add("foreign_message", 1);
            return;
        };
        if payload.run_id != self.plan.run_id {
            self.tally.errors.add("message_of_other_run", 1);
            return;
        }
        if !self.seen.insert((payload.stream, payload.index)) {
            self.tally.errors.add("duplicate_message", 1);
            return;
        }
        self.tally.received += 1;
        self.received_total.fetch_add(1, Ordering::Relaxed);
        let intended = self.epoch + Duration::from_micros(payload.intended_us);
        self.tally
            .latency
            .record(now.saturating_duration_since(intended));
    }

    /// Acknowledges the highest seq received, if it moved. Returns true when a MESSAGE_ACK
    /// was written, which also keeps the connection from idling out.
    async fn ack(&mut self, client: &Client) -> bool {
        if self.highest_seq <= self.acked_seq {
            return false;
        }
        match client.ack(self.highest_seq).await {
            Ok(()) => {
                self.acked_seq = self.highest_seq;
                true
            }
            Err(error) => {
                self.tally.errors.add(request_error_kind("ack", &error), 1);
                false
            }
        }
    }

    fn note_close(&mut self, client: &Client, stop: &watch::Receiver<bool>) {
        // A close after the coordinator's stop is the run's own end, not a failure.
        if *stop.borrow() {
            return;
        }
        let code = client.close_frame().map_or(1006, |(code, _)| code);
        self.tally.errors.add(format!("closed_{code}"), 1);
    }
}
