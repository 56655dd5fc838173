//! The coordinator of one process's connections: the connect phase, which opens and signs in
//! every connection with bounded concurrency, and the hold, which collects heartbeat round
//! trips and errors until every connection has closed.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::session::{
    self, SessionEvent, SessionLinks, SessionPlan, SignInOutcome, SplitLinks, Stage, Target,
};
use crate::stats::{self, ErrorCounts, Failure};

/// How long connections may take to close after the hold, before they are dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(20);

/// Progress of the connect phase, reported once a second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectProgress {
    /// Connections that have signed in or failed.
    pub(crate) done: u64,
    pub(crate) signed_in: u64,
    /// With [`Order::OpenAllFirst`], connections open and waiting to sign in.
    pub(crate) opened: Option<u64>,
}

/// When connections sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Each connection signs in as soon as its WebSocket handshake is done.
    SignInOnOpen,
    /// Every connection opens first; then all sign in, so that the sign-in rate and latency
    /// are measured apart from the connects.
    OpenAllFirst,
}

/// Figures of the connect phase.
#[derive(Debug)]
pub(crate) struct ConnectFigures {
    pub(crate) attempted: u64,
    pub(crate) signed_in: u64,
    pub(crate) elapsed: Duration,
    /// With [`Order::OpenAllFirst`], connections opened and the time it took; `elapsed` minus
    /// that time is the sign-in phase.
    pub(crate) opened: Option<(u64, Duration)>,
    /// Sign-in latency in microseconds.
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: ErrorCounts,
}

/// Figures collected after sign-in: the hold and the close.
#[derive(Debug)]
pub(crate) struct HoldFigures {
    /// Heartbeat round trip in microseconds, during the hold only.
    pub(crate) heartbeat_rtt: Histogram<u64>,
    /// Heartbeats sent during the hold whose reply came after it ended (also timed).
    pub(crate) heartbeats_after_hold: u64,
    pub(crate) errors: ErrorCounts,
}

impl Default for HoldFigures {
    fn default() -> Self {
        Self {
            heartbeat_rtt: stats::latency_histogram(),
            heartbeats_after_hold: 0,
            errors: ErrorCounts::default(),
        }
    }
}

/// The signed-in connections of one process, between the connect phase and their close.
pub(crate) struct Connections {
    stage: watch::Sender<Stage>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    tasks: JoinSet<()>,
    figures: HoldFigures,
}

/// Opens a connection for each target with at most `concurrency` sign-ins in flight, and
/// waits until each has signed in or failed, or until `limit` has passed. With
/// [`Order::OpenAllFirst`] the opens and the sign-ins share that limit.
pub(crate) async fn connect_all(
    plan: SessionPlan,
    targets: Vec<Target>,
    concurrency: usize,
    limit: Duration,
    order: Order,
    progress: &mut dyn FnMut(ConnectProgress),
) -> (ConnectFigures, Connections) {
    let deadline = Instant::now() + limit;
    let mut launch = launch(plan, targets, concurrency, order);
    launch.wait_opened(deadline, progress).await;
    launch.sign_in(deadline, progress).await
}

/// The connections of one process during the connect phase, from [`launch`] until
/// [`Launch::sign_in`] ends the phase.
pub(crate) struct Launch {
    order: Order,
    started: Instant,
    permits: Arc<Semaphore>,
    outcomes: mpsc::UnboundedReceiver<SignInOutcome>,
    /// One message per connection that opened or failed to open, with
    /// [`Order::OpenAllFirst`]. Closed at the end of the open phase.
    opened: mpsc::UnboundedReceiver<Result<(), Failure>>,
    sign_in: watch::Sender<bool>,
    stage: watch::Sender<Stage>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    tasks: JoinSet<()>,
    figures: ConnectFigures,
    /// Connections whose outcome has been recorded.
    done: u64,
}

/// Starts a task for each target, with at most `concurrency` connects or sign-ins in flight.
/// With [`Order::OpenAllFirst`] the connections open and then wait for
/// [`Launch::sign_in`]. Must be called within a Tokio runtime.
pub(crate) fn launch(
    plan: SessionPlan,
    targets: Vec<Target>,
    concurrency: usize,
    order: Order,
) -> Launch {
    let started = Instant::now();
    let attempted = targets.len() as u64;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (outcome_tx, outcomes) = mpsc::unbounded_channel();
    let (stage, stage_rx) = watch::channel(Stage::Connecting);
    let (event_tx, events) = mpsc::unbounded_channel();
    let (opened_tx, opened) = mpsc::unbounded_channel();
    let (sign_in, sign_in_rx) = watch::channel(false);

    let plan = Arc::new(plan);
    let mut tasks = JoinSet::new();
    for target in targets {
        let links = SessionLinks {
            permits: Arc::clone(&permits),
            outcomes: outcome_tx.clone(),
            stage: stage_rx.clone(),
            events: event_tx.clone(),
            split: (order == Order::OpenAllFirst).then(|| SplitLinks {
                opened: opened_tx.clone(),
                sign_in: sign_in_rx.clone(),
            }),
        };
        tasks.spawn(session::run(Arc::clone(&plan), target, links));
    }
    // Only the tasks own senders now, so the channels close when the last task ends.
    drop((outcome_tx, event_tx, stage_rx, opened_tx, sign_in_rx));

    Launch {
        order,
        started,
        permits,
        outcomes,
        opened,
        sign_in,
        stage,
        events,
        tasks,
        figures: ConnectFigures {
            attempted,
            signed_in: 0,
            elapsed: Duration::ZERO,
            opened: None,
            latency: stats::latency_histogram(),
            errors: ErrorCounts::default(),
        },
        done: 0,
    }
}

impl Launch {
    /// Waits until every connection has opened or failed to open, or until `deadline`, and
    /// records how many opened and when. Returns the progress at that point: `done` counts
    /// the failures, and no connection has signed in yet. Connections still opening at the
    /// deadline count as `not_opened_by_deadline` and never sign in, so that the sign-in
    /// phase measures sign-ins alone.
    ///
    /// With [`Order::SignInOnOpen`] it returns at once, because connections sign in as soon
    /// as they open.
    pub(crate) async fn wait_opened(
        &mut self,
        deadline: Instant,
        progress: &mut dyn FnMut(ConnectProgress),
    ) -> ConnectProgress {
        if self.order == Order::OpenAllFirst && self.figures.opened.is_none() {
            let (count, failed) =
                collect_opened(&mut self.opened, &mut self.figures, deadline, progress).await;
            self.done = failed;
            self.figures.opened = Some((count, self.started.elapsed()));
        }
        ConnectProgress {
            done: self.done,
            signed_in: self.figures.signed_in,
            opened: self.figures.opened.map(|(count, _)| count),
        }
    }

    /// Lets every open connection sign in, then records outcomes until every connection has
    /// reported or `deadline` has passed, and ends the connect phase. Connections that have
    /// not reported by then count as `not_signed_in_by_deadline`.
    pub(crate) async fn sign_in(
        mut self,
        deadline: Instant,
        progress: &mut dyn FnMut(ConnectProgress),
    ) -> (ConnectFigures, Connections) {
        self.sign_in.send_replace(true);
        let done = collect_outcomes(
            &mut self.outcomes,
            &mut self.figures,
            self.done,
            deadline,
            progress,
        )
        .await;

        // Connections still waiting for a permit give up, and those in flight find the
        // outcome channel closed and close themselves.
        self.permits.close();
        drop(self.outcomes);
        let mut figures = self.figures;
        if done < figures.attempted {
            figures
                .errors
                .add("not_signed_in_by_deadline", figures.attempted - done);
        }
        figures.elapsed = self.started.elapsed();
        progress(ConnectProgress {
            done: figures.attempted,
            signed_in: figures.signed_in,
            opened: figures.opened.map(|(count, _)| count),
        });

        let connections = Connections {
            stage: self.stage,
            events: self.events,
            tasks: self.tasks,
            figures: HoldFigures::default(),
        };
        (figures, connections)
    }
}

/// Counts connections as they open, and records the failures to open, until every connection
/// did one or the other or `deadline` passed. Then closes `opened`, so that connections still
/// opening give up, and counts them as `not_opened_by_deadline`. Returns how many opened and
/// how many did not, those counted as `not_opened_by_deadline` included.
async fn collect_opened(
    opened: &mut mpsc::UnboundedReceiver<Result<(), Failure>>,
    figures: &mut ConnectFigures,
    deadline: Instant,
    progress: &mut dyn FnMut(ConnectProgress),
) -> (u64, u64) {
    let (mut count, mut failed) = (0, 0);
    let mut record = |status: Result<(), Failure>, count: &mut u64, failed: &mut u64| match status {
        Ok(()) => *count += 1,
        Err(failure) => {
            *failed += 1;
            figures.errors.add_failure(failure);
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            status = opened.recv() => match status {
                Some(status) => record(status, &mut count, &mut failed),
                None => break,
            },
            _ = ticker.tick() => progress(ConnectProgress {
                done: failed,
                signed_in: 0,
                opened: Some(count),
            }),
            () = tokio::time::sleep_until(deadline) => break,
        }
        if count + failed == figures.attempted {
            break;
        }
    }

    // A connection whose report was sent before the close is still counted, and one that
    // reports later finds the channel closed and gives up.
    opened.close();
    while let Some(status) = opened.recv().await {
        record(status, &mut count, &mut failed);
    }
    let late = figures.attempted - count - failed;
    if late > 0 {
        figures.errors.add("not_opened_by_deadline", late);
    }
    (count, failed + late)
}

/// Records outcomes until every connection reported or `deadline` passed, counting from `done`
/// already reported. Returns how many reported in all.
async fn collect_outcomes(
    outcomes: &mut mpsc::UnboundedReceiver<SignInOutcome>,
    figures: &mut ConnectFigures,
    mut done: u64,
    deadline: Instant,
    progress: &mut dyn FnMut(ConnectProgress),
) -> u64 {
    let opened = figures.opened.map(|(count, _)| count);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while done < figures.attempted {
        tokio::select! {
            outcome = outcomes.recv() => {
                let Some(outcome) = outcome else { break };
                done += 1;
                figures.record(outcome);
            }
            _ = ticker.tick() => progress(ConnectProgress {
                done,
                signed_in: figures.signed_in,
                opened,
            }),
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    done
}

impl ConnectFigures {
    fn record(&mut self, outcome: SignInOutcome) {
        match outcome {
            SignInOutcome::SignedIn(latency) => {
                self.signed_in += 1;
                stats::record(&mut self.latency, latency);
            }
            SignInOutcome::Failed(failure) => self.errors.add_failure(failure),
        }
    }
}

impl Connections {
    /// Starts the hold: every connection records heartbeat round trips until `hold` has
    /// passed, then closes. Returns the end of the hold.
    pub(crate) fn start_hold(&self, hold: Duration) -> Instant {
        let until = Instant::now() + hold;
        self.stage.send_replace(Stage::Holding { until });
        until
    }

    /// Records heartbeat round trips and errors until `deadline`.
    pub(crate) async fn collect_until(&mut self, deadline: Instant) {
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.record(event),
                    // Every connection has ended.
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Signals every connection to close, waits for them at most [`CLOSE_GRACE`], drops the
    /// rest, and returns the figures of the hold. Connections also close by themselves at the
    /// end of the hold, so the signal matters only when no hold was started.
    pub(crate) async fn finish(mut self) -> HoldFigures {
        self.stage.send_replace(Stage::Stopping);
        let deadline = Instant::now() + CLOSE_GRACE;
        self.collect_until(deadline).await;

        // A task drops its event sender while it ends, a moment before the JoinSet reports it
        // finished. The closed events channel is therefore not enough, so join the tasks too.
        let tasks = &mut self.tasks;
        let joined = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout_at(deadline, joined).await;
        let unfinished = self.tasks.len() as u64;
        if unfinished > 0 {
            self.figures.errors.add("close_unfinished", unfinished);
        }
        self.tasks.shutdown().await;

        while let Ok(event) = self.events.try_recv() {
            self.record(event);
        }
        self.figures
    }

    fn record(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::HeartbeatRtt(rtt) => stats::record(&mut self.figures.heartbeat_rtt, rtt),
            SessionEvent::HeartbeatAfterHold => self.figures.heartbeats_after_hold += 1,
            SessionEvent::Error(kind) => self.figures.errors.add(kind, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fake_engine::FakeEngine;

    fn plan(url: &str, timeout: Duration) -> SessionPlan {
        SessionPlan {
            url: url.to_owned(),
            timeout,
            sources: 2,
            heartbeat_interval: Duration::from_millis(50),
        }
    }

    fn targets(tokens: &[&str]) -> Vec<Target> {
        tokens
            .iter()
            .enumerate()
            .map(|(index, token)| Target {
                index: index as u64,
                user_id: index as u64 + 1,
                device_id: index as u64 + 100,
                token: (*token).to_owned(),
            })
            .collect()
    }

    #[tokio::test]
    async fn connect_hold_and_close_all() {
        let engine = FakeEngine::start().await;
        let mut progress_reports = Vec::new();

        let (connect, mut connections) = connect_all(
            plan(&engine.url, Duration::from_secs(5)),
            targets(&["good"; 20]),
            4,
            Duration::from_secs(30),
            Order::SignInOnOpen,
            &mut |progress| progress_reports.push(progress),
        )
        .await;
        let until = connections.start_hold(Duration::from_millis(400));
        connections.collect_until(until).await;
        let hold = connections.finish().await;

        assert_eq!(connect.attempted, 20);
        assert_eq!(connect.signed_in, 20);
        assert_eq!(connect.latency.len(), 20);
        assert!(connect.errors.0.is_empty(), "{:?}", connect.errors);
        assert!(
            hold.heartbeat_rtt.len() >= 20,
            "{}",
            hold.heartbeat_rtt.len()
        );
        assert!(hold.errors.0.is_empty(), "{:?}", hold.errors);
        assert_eq!(engine.closes.load(Ordering::SeqCst), 20);
        let last = progress_reports.last().expect("final progress report");
        assert_eq!(last.done, 20);
        assert_eq!(last.signed_in, 20);
        let opened = engine.opened_before_sign_in.load(Ordering::SeqCst);
        assert!(opened < 20, "{opened} handshakes before the first SIGN_IN");
    }

    #[tokio::test]
    async fn open_all_first_signs_in_after_every_handshake() {
        let engine = FakeEngine::start().await;
        let mut progress_reports = Vec::new();

        let (connect, connections) = connect_all(
            plan(&engine.url, Duration::from_secs(5)),
            targets(&["good", "good", "bad", "good", "good", "good"]),
            2,
            Duration::from_secs(30),
            Order::OpenAllFirst,
            &mut |progress| progress_reports.push(progress),
        )
        .await;
        let hold = connections.finish().await;

        assert_eq!(engine.opened_before_sign_in.load(Ordering::SeqCst), 6);
        let (opened, open_elapsed) = connect.opened.expect("open phase figures");
        assert_eq!(opened, 6);
        assert!(open_elapsed <= connect.elapsed);
        assert_eq!(connect.signed_in, 5);
        assert_eq!(connect.latency.len(), 5);
        assert_eq!(connect.errors.0["TOKEN_INVALID"], 1);
        assert!(hold.errors.0.is_empty(), "{:?}", hold.errors);
        let last = progress_reports.last().expect("final progress report");
        assert_eq!((last.done, last.signed_in, last.opened), (6, 5, Some(6)));
    }

    #[tokio::test]
    async fn launch_waits_for_sign_in_call() {
        let engine = FakeEngine::start().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut launch = launch(
            plan(&engine.url, Duration::from_secs(5)),
            targets(&["good", "good", "bad", "good"]),
            2,
            Order::OpenAllFirst,
        );

        let opened = launch.wait_opened(deadline, &mut |_| {}).await;
        // Give any SIGN_IN sent too early the time to reach the engine.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sign_ins_before_call = engine.opened_before_sign_in.load(Ordering::SeqCst);
        let (connect, connections) = launch.sign_in(deadline, &mut |_| {}).await;
        connections.finish().await;

        assert_eq!(opened.opened, Some(4));
        assert_eq!(opened.done, 0);
        assert_eq!(opened.signed_in, 0);
        assert_eq!(sign_ins_before_call, usize::MAX, "SIGN_IN before sign_in()");
        assert_eq!(engine.opened_before_sign_in.load(Ordering::SeqCst), 4);
        assert_eq!(connect.opened.map(|(count, _)| count), Some(4));
        assert_eq!(connect.signed_in, 3);
        assert_eq!(connect.errors.0["TOKEN_INVALID"], 1);
        assert_eq!(connect.errors.total(), 1);
    }

    #[tokio::test]
    async fn rejected_and_unanswered_sign_ins_counted() {
        let engine = FakeEngine::start().await;

        let (connect, connections) = connect_all(
            plan(&engine.url, Duration::from_millis(300)),
            targets(&["good", "bad", "silent", "bad"]),
            4,
            Duration::from_secs(30),
            Order::SignInOnOpen,
            &mut |_| {},
        )
        .await;
        let hold = connections.finish().await;

        assert_eq!(connect.signed_in, 1);
        assert_eq!(connect.errors.0["TOKEN_INVALID"], 2);
        assert_eq!(connect.errors.0["sign_in_timeout"], 1);
        assert_eq!(connect.errors.total(), 3);
        assert!(hold.errors.0.is_empty(), "{:?}", hold.errors);
    }

    #[tokio::test]
    async fn unreachable_engine_is_connect_failed() {
        // Bind, then drop the listener, so the port is very likely closed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        drop(listener);

        for (order, opened) in [(Order::SignInOnOpen, None), (Order::OpenAllFirst, Some(0))] {
            let (connect, connections) = connect_all(
                plan(&url, Duration::from_secs(5)),
                targets(&["good"; 3]),
                2,
                Duration::from_secs(30),
                order,
                &mut |_| {},
            )
            .await;
            connections.finish().await;

            assert_eq!(connect.opened.map(|(count, _)| count), opened, "{order:?}");
            assert_eq!(connect.signed_in, 0, "{order:?}");
            assert_eq!(connect.errors.0["connect_failed"], 3, "{order:?}");
            assert_eq!(connect.errors.total(), 3, "{order:?}");
            let first = &connect.errors.1["connect_failed"];
            assert!(first.contains(&url), "{order:?}: {first}");
            assert!(first.contains("os error"), "{order:?}: {first}");
        }
    }

    /// Starts a listener that forwards each connection to `upstream` after `delay`, so that
    /// every WebSocket handshake through it takes at least that long.
    async fn delaying_proxy(upstream: &str, delay: Duration) -> String {
        let upstream = upstream
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut outbound = tokio::net::TcpStream::connect(upstream)
                        .await
                        .expect("connect upstream");
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn late_opens_do_not_sign_in() {
        let engine = FakeEngine::start().await;
        let url = delaying_proxy(&engine.url, Duration::from_millis(500)).await;
        let mut launch = launch(
            plan(&url, Duration::from_secs(5)),
            targets(&["good"; 3]),
            4,
            Order::OpenAllFirst,
        );

        // Every handshake is still in progress at the end of the open phase.
        let opened = launch
            .wait_opened(Instant::now() + Duration::from_millis(100), &mut |_| {})
            .await;
        let (connect, connections) = launch
            .sign_in(Instant::now() + Duration::from_secs(3), &mut |_| {})
            .await;
        connections.finish().await;

        assert_eq!(opened.opened, Some(0));
        assert_eq!(opened.done, 3);
        assert_eq!(connect.opened.map(|(count, _)| count), Some(0));
        assert_eq!(connect.signed_in, 0);
        assert_eq!(connect.errors.0["not_opened_by_deadline"], 3);
        assert_eq!(connect.errors.total(), 3);
    }

    #[tokio::test]
    async fn connect_deadline_counts_unfinished() {
        let engine = FakeEngine::start().await;

        // One permit and a silent engine: the first sign-in waits 2 s, the limit is 200 ms.
        let (connect, connections) = connect_all(
            plan(&engine.url, Duration::from_secs(2)),
            targets(&["silent"; 3]),
            1,
            Duration::from_millis(200),
            Order::SignInOnOpen,
            &mut |_| {},
        )
        .await;
        connections.finish().await;

        assert_eq!(connect.signed_in, 0);
        assert_eq!(connect.errors.0["not_signed_in_by_deadline"], 3);
        assert!(
            connect.elapsed < Duration::from_secs(1),
            "{:?}",
            connect.elapsed
        );
    }
}
