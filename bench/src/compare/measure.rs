//! The phases run against one server: open N connections, hold them idle, time round
//! trips, then saturate every connection with back-to-back round trips.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rand::Rng as _;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::process;
use super::raw::{heartbeat_message, RawConnection, RawError};
use super::server::RunningServer;
use crate::kernel::{self, KernelMemory};
use crate::sources;
use crate::stats::{self, LatencySamples};

/// Time allowed beyond a phase's own length before the phase is cut off.
const PHASE_SLACK: Duration = Duration::from_secs(10);

/// Settings of the phases, the same for every server.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) connections: u64,
    pub(crate) sources: usize,
    /// Connects plus handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// Time limit of the whole connect phase.
    pub(crate) connect_limit: Duration,
    /// Time limit of one connect plus handshake, and of one reply.
    pub(crate) timeout: Duration,
    /// Time all connections stay idle before the server's memory is read.
    pub(crate) hold: Duration,
    pub(crate) rounds: u32,
    /// Time between two round trips of one connection in the latency phase.
    pub(crate) round_interval: Duration,
    pub(crate) saturation: Duration,
}

/// What one server did, before any division into per-connection figures.
#[derive(Debug)]
pub(crate) struct Measurement {
    pub(crate) opened: u64,
    pub(crate) connect_elapsed: Duration,
    pub(crate) rss_start: Option<u64>,
    pub(crate) rss_idle: Option<u64>,
    pub(crate) kernel_before: KernelMemory,
    pub(crate) kernel_idle: KernelMemory,
    /// Round trips of the latency phase, in microseconds.
    pub(crate) round_trips: Histogram<u64>,
    pub(crate) saturation_messages: u64,
    pub(crate) saturation_elapsed: Duration,
    /// Server CPU time spent during the saturation phase.
    pub(crate) saturation_cpu: Option<Duration>,
    /// The bench's own CPU time spent during the saturation phase.
    pub(crate) saturation_bench_cpu: Option<Duration>,
    /// Errors by kind over all phases.
    pub(crate) errors: BTreeMap<String, u64>,
}

/// Runs every phase against `server` and returns what it measured. Each phase has a time
/// limit, so this returns within about `connect_limit + hold + rounds * round_interval +
/// saturation` plus slack.
pub(crate) async fn measure(server: &RunningServer, plan: &Plan) -> Measurement {
    let rss_start = server.pid.and_then(process::resident_bytes);
    let kernel_before = kernel::read();
    let mut errors = BTreeMap::new();

    let started = Instant::now();
    let connections = connect_all(server, plan, &mut errors).await;
    let connect_elapsed = started.elapsed();
    let opened = connections.len() as u64;
    eprintln!(
        "compare: {}: {opened}/{} connections open in {:.1} s",
        server.name,
        plan.connections,
        connect_elapsed.as_secs_f64()
    );

    tokio::time::sleep(plan.hold).await;
    let rss_idle = server.pid.and_then(process::resident_bytes);
    let kernel_idle = kernel::read();

    let (connections, round_trips) = latency_phase(connections, plan, &mut errors).await;
    eprintln!(
        "compare: {}: {} round trips timed",
        server.name,
        round_trips.len()
    );

    let cpu_before = server.pid.and_then(process::cpu_time);
    let bench_cpu_before = process::cpu_time(std::process::id());
    let started = Instant::now();
    let saturation_messages = saturation_phase(connections, plan, &mut errors).await;
    let saturation_elapsed = started.elapsed();
    let cpu_after = server.pid.and_then(process::cpu_time);
    let bench_cpu_after = process::cpu_time(std::process::id());
    let saturation_cpu = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before));
    let saturation_bench_cpu = bench_cpu_before
        .zip(bench_cpu_after)
        .map(|(before, after)| after.saturating_sub(before));
    eprintln!(
        "compare: {}: {saturation_messages} messages in the saturation phase",
        server.name
    );

    Measurement {
        opened,
        connect_elapsed,
        rss_start,
        rss_idle,
        kernel_before,
        kernel_idle,
        round_trips,
        saturation_messages,
        saturation_elapsed,
        saturation_cpu,
        saturation_bench_cpu,
        errors,
    }
}

fn count_error(errors: &mut BTreeMap<String, u64>, phase: &str, error: &RawError) {
    *errors
        .entry(format!("{phase} {}", error.kind()))
        .or_default() += 1;
}

/// Opens up to `plan.connections` connections within `plan.connect_limit`. The ones open
/// when the limit passes are kept.
async fn connect_all(
    server: &RunningServer,
    plan: &Plan,
    errors: &mut BTreeMap<String, u64>,
) -> Vec<RawConnection> {
    let url = server.url();
    let addr: SocketAddr = server.addr;
    let opens = futures::stream::iter(0..plan.connections)
        .map(|index| {
            let local = sources::source_addr(usize::try_from(index).unwrap_or(0), plan.sources);
            let url = url.clone();
            async move { RawConnection::open(&url, addr, local, plan.timeout).await }
        })
        .buffer_unordered(plan.concurrency.max(1));
    let mut opens = std::pin::pin!(opens);
    let deadline = Instant::now() + plan.connect_limit;
    let mut connections = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, opens.next()).await {
            Ok(Some(Ok(connection))) => connections.push(connection),
            Ok(Some(Err(error))) => count_error(errors, "connect", &error),
            Ok(None) => break,
            Err(_) => {
                *errors
                    .entry("connect phase timeout".to_owned())
                    .or_default() += 1;
                break;
            }
        }
    }
    connections
}

/// Sends `plan.rounds` round trips on every connection, `plan.round_interval` apart and
/// starting at a random point of the first interval, and records each round trip.
async fn latency_phase(
    connections: Vec<RawConnection>,
    plan: &Plan,
    errors: &mut BTreeMap<String, u64>,
) -> (Vec<RawConnection>, Histogram<u64>) {
    let mut tasks = JoinSet::new();
    for connection in connections {
        let plan = plan.clone();
        tasks.spawn(time_round_trips(connection, plan));
    }
    let limit = plan.round_interval * plan.rounds + plan.timeout + PHASE_SLACK;
    let mut histogram = stats::latency_histogram();
    let mut kept = Vec::new();
    let deadline = Instant::now() + limit;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        let Ok((connection, one, result)) = joined else {
            continue;
        };
        one.merge_into(&mut histogram);
        match result {
            Ok(()) => kept.push(connection),
            Err(error) => count_error(errors, "round trip", &error),
        }
    }
    tasks.abort_all();
    (kept, histogram)
}

async fn time_round_trips(
    mut connection: RawConnection,
    plan: Plan,
) -> (RawConnection, LatencySamples, Result<(), RawError>) {
    let mut samples = LatencySamples::default();
    let offset = random_offset(plan.round_interval);
    let mut next = Instant::now() + offset;
    for _ in 0..plan.rounds {
        tokio::time::sleep_until(next).await;
        next += plan.round_interval;
        let started = Instant::now();
        if let Err(error) = connection
            .round_trip(heartbeat_message(), plan.timeout)
            .await
        {
            return (connection, samples, Err(error));
        }
        samples.record(started.elapsed());
    }
    (connection, samples, Ok(()))
}

fn random_offset(interval: Duration) -> Duration {
    let micros = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
    if micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::rng().random_range(0..micros))
}

/// Has every connection send round trips back to back for `plan.saturation` and returns
/// the number of replies received before the end.
async fn saturation_phase(
    connections: Vec<RawConnection>,
    plan: &Plan,
    errors: &mut BTreeMap<String, u64>,
) -> u64 {
    let until = Instant::now() + plan.saturation;
    let mut tasks = JoinSet::new();
    for connection in connections {
        tasks.spawn(saturate(connection, until, plan.timeout));
    }
    let deadline = until + plan.timeout + PHASE_SLACK;
    let mut messages = 0;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        let Ok((count, result)) = joined else {
            continue;
        };
        messages += count;
        if let Err(error) = result {
            count_error(errors, "saturation", &error);
        }
    }
    tasks.abort_all();
    messages
}

async fn saturate(
    mut connection: RawConnection,
    until: Instant,
    timeout: Duration,
) -> (u64, Result<(), RawError>) {
    let mut count = 0;
    while Instant::now() < until {
        if let Err(error) = connection.round_trip(heartbeat_message(), timeout).await {
            return (count, Err(error));
        }
        if Instant::now() <= until {
            count += 1;
        }
    }
    (count, Ok(()))
}
