//! One bench connection from start to end: connect from its source address, SIGN_IN, send
//! heartbeats until the hold ends, then close.

use std::sync::Arc;
use std::time::Duration;

use im_client::{Client, ClientError, ConnectOptions, PacketType};
use rand::Rng as _;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::sources;
use crate::stats::{
    connect_failure, error_push_kind, request_error_kind, request_failure, Failure,
};

/// Settings shared by every connection of one process.
#[derive(Debug, Clone)]
pub(crate) struct SessionPlan {
    pub(crate) url: String,
    /// Time limit for connect plus handshake, for each reply and for the close handshake.
    pub(crate) timeout: Duration,
    pub(crate) sources: usize,
    pub(crate) heartbeat_interval: Duration,
}

/// A bench user's device and its token.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Index i of user `<prefix>-<i>`; selects the source address.
    pub(crate) index: u64,
    pub(crate) user_id: u64,
    pub(crate) device_id: u64,
    pub(crate) token: String,
}

/// Phase of the run, which the coordinator broadcasts to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Other connections are still signing in: send heartbeats, record nothing.
    Connecting,
    /// Send heartbeats and record their round trips until `until`, then close.
    Holding { until: Instant },
    /// Close now.
    Stopping,
}

/// Result of one connect plus SIGN_IN.
#[derive(Debug)]
pub(crate) enum SignInOutcome {
    /// Time from the start of the TCP connect to the SIGN_IN reply.
    SignedIn(Duration),
    Failed(Failure),
}

/// Something that happened to a signed-in connection.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    HeartbeatRtt(Duration),
    /// A heartbeat sent during the hold whose reply came after the hold ended, when every
    /// connection was closing. Its round trip is timed as well.
    HeartbeatAfterHold,
    /// The error kind.
    Error(String),
}

/// Channels between one connection task and the coordinator.
pub(crate) struct SessionLinks {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) outcomes: mpsc::UnboundedSender<SignInOutcome>,
    pub(crate) stage: watch::Receiver<Stage>,
    pub(crate) events: mpsc::UnboundedSender<SessionEvent>,
    /// Set when every connection opens first and signs in only on the coordinator's signal.
    pub(crate) split: Option<SplitLinks>,
}

/// Links of a run that opens every connection before any signs in.
pub(crate) struct SplitLinks {
    /// Receives `Ok` once this connection is open (WebSocket handshake done), or the failure
    /// when it failed to open. Closed by the coordinator when the open phase ends.
    pub(crate) opened: mpsc::UnboundedSender<Result<(), Failure>>,
    /// Turns true when every connection should sign in.
    pub(crate) sign_in: watch::Receiver<bool>,
}

/// Runs one connection: waits for a sign-in permit, signs in, reports the outcome, then
/// keeps the connection alive until the hold ends and closes it.
pub(crate) async fn run(plan: Arc<SessionPlan>, target: Target, mut links: SessionLinks) {
    let result = match links.split.take() {
        None => connect_and_sign_in(&plan, &target, &links.permits).await,
        Some(split) => open_then_sign_in(&plan, &target, &links.permits, split).await,
    };
    let Some((result, latency)) = result else {
        return;
    };

    let client = match result {
        Ok(client) => client,
        Err(failure) => {
            let _ = links.outcomes.send(SignInOutcome::Failed(failure));
            return;
        }
    };
    if links
        .outcomes
        .send(SignInOutcome::SignedIn(latency))
        .is_err()
    {
        // The connect phase ended before this sign-in finished, so it was counted as not
        // signed in and does not join the hold.
        let _ = client.close().await;
        return;
    }
    keep_alive(client, &plan, links.stage, &links.events).await;
}

/// Outcome of the sign-in steps and the time they took, or None when the connect phase
/// ended before this connection got its turn.
type Steps = Option<(Result<Client, Failure>, Duration)>;

/// Connects and signs in within one permit; the latency spans both.
async fn connect_and_sign_in(
    plan: &SessionPlan,
    target: &Target,
    permits: &Arc<Semaphore>,
) -> Steps {
    // The coordinator closes the semaphore when the connect phase ends.
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    let started = Instant::now();
    let result = sign_in(plan, target).await;
    let latency = started.elapsed();
    drop(permit);
    Some((result, latency))
}

/// Connects within one permit, reports the open connection to the coordinator, waits for its
/// signal, then signs in within another permit. The latency spans the sign-in alone.
async fn open_then_sign_in(
    plan: &SessionPlan,
    target: &Target,
    permits: &Arc<Semaphore>,
    mut split: SplitLinks,
) -> Steps {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    if split.opened.is_closed() {
        // The open phase has ended, and the coordinator counted this connection as not opened.
        return None;
    }
    let opened = open(plan, target).await;
    drop(permit);
    let status = opened.as_ref().map(|_| ()).map_err(Clone::clone);
    if split.opened.send(status).is_err() {
        // The open phase ended while this connection was opening, so it was counted as not
        // opened and does not sign in.
        if let Ok(client) = opened {
            let _ = client.close().await;
        }
        return None;
    }
    // The coordinator has recorded a failure to open.
    let client = opened.ok()?;
    if split.sign_in.wait_for(|go| *go).await.is_err() {
        // The coordinator gave up before the sign-in phase.
        let _ = client.close().await;
        return None;
    }
    let Ok(permit) = Arc::clone(permits).acquire_owned().await else {
        let _ = client.close().await;
        return None;
    };
    let started = Instant::now();
    let result = client
        .sign_in(target.user_id, target.device_id, &target.token)
        .await
        .map_err(|error| request_failure("sign_in", &error));
    let latency = started.elapsed();
    drop(permit);
    Some((result.map(|_| client), latency))
}

/// Connects from the target's source address and completes the WebSocket handshake.
async fn open(plan: &SessionPlan, target: &Target) -> Result<Client, Failure> {
    let index = usize::try_from(target.index).unwrap_or(usize::MAX);
    let options = ConnectOptions {
        local_addr: Some(sources::source_addr(index, plan.sources)),
        origin: None,
        timeout: plan.timeout,
    };
    Client::connect(&plan.url, &options)
        .await
        .map_err(|error| connect_failure(&plan.url, &error))
}

/// Connects from the target's source address and signs in.
pub(crate) async fn sign_in(plan: &SessionPlan, target: &Target) -> Result<Client, Failure> {
    let client = open(plan, target).await?;
    client
        .sign_in(target.user_id, target.device_id, &target.token)
        .await
        .map_err(|error| request_failure("sign_in", &error))?;
    Ok(client)
}

/// Cause of a wake-up of the keep-alive loop.
enum Wake {
    Heartbeat,
    Push(Option<im_client::Packet>),
    StageChanged,
    HoldOver,
}

/// Time at the end of the hold in which no heartbeat is sent, or one heartbeat interval if
/// that is shorter. Once the hold ends every connection closes at once, and replies queued
/// behind those closes would be timed as idle round trips. With this quiet time, a timed
/// reply that comes after the end took at least this long anyway.
const HOLD_END_QUIET: Duration = Duration::from_secs(2);

/// Sends heartbeats until the hold ends, then closes. Reads pushes meanwhile, so that the
/// client's push queue never fills and a KICKED or a server close is counted when it comes.
async fn keep_alive(
    client: Client,
    plan: &SessionPlan,
    mut stage: watch::Receiver<Stage>,
    events: &mpsc::UnboundedSender<SessionEvent>,
) {
    let mut kicked = false;
    let mut next_heartbeat = Instant::now() + jitter(plan.heartbeat_interval);
    loop {
        let current = *stage.borrow_and_update();
        let until = match current {
            Stage::Stopping => break,
            Stage::Holding { until } if Instant::now() >= until => break,
            Stage::Holding { until } => Some(until),
            Stage::Connecting => None,
        };
        // A day stands for "no end yet": the stage changes long before.
        let hold_end = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));

        let wake = tokio::select! {
            () = tokio::time::sleep_until(next_heartbeat) => Wake::Heartbeat,
            push = client.next_push() => Wake::Push(push),
            changed = stage.changed() => match changed {
                Ok(()) => Wake::StageChanged,
                // The coordinator is gone: stop like at the end of the hold.
                Err(_) => Wake::HoldOver,
            },
            () = tokio::time::sleep_until(hold_end) => Wake::HoldOver,
        };

        match wake {
            Wake::Heartbeat => {
                next_heartbeat = next_after(next_heartbeat, plan.heartbeat_interval);
                let quiet_time = HOLD_END_QUIET.min(plan.heartbeat_interval);
                let quiet = until.is_some_and(|end| Instant::now() + quiet_time >= end);
                if quiet {
                    continue;
                }
                if !heartbeat(&client, until, kicked, events).await {
                    return;
                }
            }
            Wake::Push(Some(packet)) => kicked |= note_push(&packet, events),
            Wake::Push(None) => {
                if !kicked {
                    let code = client.close_frame().map_or(1006, |(code, _)| code);
                    send(events, format!("closed_{code}"));
                }
                return;
            }
            Wake::StageChanged => {}
            Wake::HoldOver => break,
        }
    }
    close(client, events).await;
}

/// Sends one heartbeat and, when it was sent during the hold that ends at `hold_end`,
/// reports its round trip, and whether its reply came after that end. Returns false when
/// the connection has closed.
async fn heartbeat(
    client: &Client,
    hold_end: Option<Instant>,
    kicked: bool,
    events: &mpsc::UnboundedSender<SessionEvent>,
) -> bool {
    match client.heartbeat().await {
        Ok(rtt) => {
            if let Some(end) = hold_end {
                let _ = events.send(SessionEvent::HeartbeatRtt(rtt));
                if Instant::now() > end {
                    let _ = events.send(SessionEvent::HeartbeatAfterHold);
                }
            }
            true
        }
        // After a KICKED the close is expected and already counted.
        Err(ClientError::Closed { .. }) if kicked => false,
        Err(error) => {
            send(events, request_error_kind("heartbeat", &error));
            !matches!(error, ClientError::Closed { .. })
        }
    }
}

/// Counts a push that a bench connection should not get. Returns true for KICKED.
fn note_push(packet: &im_client::Packet, events: &mpsc::UnboundedSender<SessionEvent>) -> bool {
    match PacketType::try_from(packet.r#type) {
        Ok(PacketType::Kicked) => {
            send(events, "kicked".to_owned());
            true
        }
        Ok(PacketType::Error) => {
            send(events, error_push_kind(packet.code));
            false
        }
        // A change to the user's friends or groups; nothing this scenario counts.
        Ok(PacketType::Notice) => false,
        _ => {
            send(events, format!("unexpected_push_{}", packet.r#type));
            false
        }
    }
}

async fn close(client: Client, events: &mpsc::UnboundedSender<SessionEvent>) {
    match client.close().await {
        Ok(()) => {}
        Err(ClientError::Timeout) => send(events, "close_timeout".to_owned()),
        Err(_) => send(events, "close_failed".to_owned()),
    }
}

fn send(events: &mpsc::UnboundedSender<SessionEvent>, kind: String) {
    // The coordinator stops reading only after the last connection ended or at the deadline.
    let _ = events.send(SessionEvent::Error(kind));
}

/// Returns a random delay in [0, interval), so heartbeats of many connections spread out.
fn jitter(interval: Duration) -> Duration {
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::rng().random_range(0..millis))
}

/// Returns the next heartbeat time: one interval after `previous`, or one interval from now
/// when the connection fell behind (a slow reply), so missed beats are not sent in a burst.
fn next_after(previous: Instant, interval: Duration) -> Instant {
    let next = previous + interval;
    let now = Instant::now();
    if next < now {
        now + interval
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_interval() {
        let interval = Duration::from_millis(50);

        for _ in 0..1000 {
            assert!(jitter(interval) < interval);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn next_after_skips_missed_beats() {
        let interval = Duration::from_secs(5);
        let start = Instant::now();

        let on_time = next_after(start, interval);
        tokio::time::advance(Duration::from_secs(12)).await;
        let late = next_after(start, interval);

        assert_eq!(on_time, start + interval);
        assert_eq!(late, start + Duration::from_secs(17));
    }
}
