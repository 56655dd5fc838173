//! One sending connection of a messaging run: it sends each message of its stream at the
//! message's intended time without waiting for earlier replies, and records every reply.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use im_client::{Client, ClientError, ConversationType, Push, SendReply};
use tokio::time::Instant;

use super::{close, unexpected_push_kind, TrafficPlan};
use crate::payload::Payload;
use crate::stats::{request_error_kind, ErrorCounts, LatencySamples};

/// Content type of bench messages.
const CONTENT_TYPE: &str = "application/x-im-bench";

/// Destination of one sending connection's stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Destination {
    pub(crate) stream: u32,
    pub(crate) conversation_type: ConversationType,
    /// The receiving user id or group id.
    pub(crate) receiver_id: u64,
}

/// Counts and latencies of one sending connection.
#[derive(Debug, Default)]
pub(crate) struct SenderTally {
    /// SEND requests written.
    pub(crate) sent: u64,
    /// Successful SEND replies: messages the server stored.
    pub(crate) replies: u64,
    /// Time from each message's intended send time to its reply, in microseconds.
    pub(crate) reply_latency: LatencySamples,
    pub(crate) last_reply: Option<Instant>,
    pub(crate) errors: ErrorCounts,
}

/// A finished request of the send loop.
enum Done {
    Send {
        intended: Instant,
        result: Result<SendReply, ClientError>,
    },
    Heartbeat(Result<Duration, ClientError>),
}

/// Sends the stream of `destination` from `epoch` on, waits for the last reply, then closes.
pub(crate) async fn run(
    client: Client,
    plan: &TrafficPlan,
    destination: Destination,
    epoch: Instant,
) -> SenderTally {
    let mut tally = SenderTally::default();
    drive(&client, plan, destination, epoch, &mut tally).await;
    if let Some(kind) = close(client).await {
        tally.errors.add(kind, 1);
    }
    tally
}

async fn drive(
    client: &Client,
    plan: &TrafficPlan,
    destination: Destination,
    epoch: Instant,
    tally: &mut SenderTally,
) {
    let stream = u64::from(destination.stream);
    let count = plan.schedule.count(stream);
    let mut next = 0;
    let mut in_flight: FuturesUnordered<BoxFuture<'_, Done>> = FuturesUnordered::new();
    let mut heartbeat_at = Instant::now() + plan.heartbeat;
    let mut open = true;
    loop {
        let due = (next < count).then(|| epoch + plan.schedule.offset(stream, next));
        if due.is_none() && in_flight.is_empty() {
            return;
        }
        let room = in_flight.len() < plan.max_in_flight;
        // A day stands for "never": the branch is disabled then.
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            () = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() && room => {
                // Timers fire late by up to a millisecond, so send everything already due.
                while next < count && in_flight.len() < plan.max_in_flight {
                    let intended = epoch + plan.schedule.offset(stream, next);
                    if intended > Instant::now() {
                        break;
                    }
                    in_flight.push(Box::pin(send_one(client, plan, destination, next, intended, epoch)));
                    tally.sent += 1;
                    next += 1;
                }
                heartbeat_at = Instant::now() + plan.heartbeat;
            }
            Some(done) = in_flight.next() => record(tally, done),
            push = client.next_push(), if open => match push {
                Some(packet) => {
                    let kind = match Push::decode(packet) {
                        Ok(push) => unexpected_push_kind(&push),
                        Err(_) => Some("undecodable_push".into()),
                    };
                    if let Some(kind) = kind {
                        tally.errors.add(kind, 1);
                    }
                }
                None => {
                    open = false;
                    let code = client.close_frame().map_or(1006, |(code, _)| code);
                    tally.errors.add(format!("closed_{code}"), 1);
                    tally.errors.add("not_sent_closed", count - next);
                    next = count;
                }
            },
            () = tokio::time::sleep_until(heartbeat_at) => {
                in_flight.push(Box::pin(async { Done::Heartbeat(client.heartbeat().await) }));
                heartbeat_at = Instant::now() + plan.heartbeat;
            }
        }
    }
}

async fn send_one(
    client: &Client,
    plan: &TrafficPlan,
    destination: Destination,
    index: u64,
    intended: Instant,
    epoch: Instant,
) -> Done {
    let intended_us = u64::try_from((intended - epoch).as_micros()).unwrap_or(u64::MAX);
    let payload = Payload {
        run_id: plan.run_id,
        stream: destination.stream,
        index,
        intended_us,
    };
    let client_msg_id = format!("{:016x}-{}-{index}", plan.run_id, destination.stream);
    let result = client
        .send(
            destination.conversation_type,
            destination.receiver_id,
            payload.encode(plan.content_bytes),
            CONTENT_TYPE,
            &client_msg_id,
        )
        .await;
    Done::Send { intended, result }
}

fn record(tally: &mut SenderTally, done: Done) {
    match done {
        Done::Send {
            intended,
            result: Ok(_),
        } => {
            let now = Instant::now();
            tally.replies += 1;
            tally.last_reply = Some(now);
            tally.reply_latency.record(now - intended);
        }
        Done::Send {
            result: Err(error), ..
        } => tally.errors.add(request_error_kind("send", &error), 1),
        Done::Heartbeat(Ok(_)) => {}
        Done::Heartbeat(Err(error)) => {
            tally.errors.add(request_error_kind("heartbeat", &error), 1);
        }
    }
}
