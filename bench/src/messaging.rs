//! Setup shared by the messaging scenarios `chat` and `group`: users with cached tokens, the
//! logic tier's business API, signed-in connections, the run plan, the parameter lines and
//! the exit code. Every phase has a time limit, so a run always ends by itself.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use im_client::business::LogicApi;
use im_client::{Client, ErrorCode, LogicApiError};
use im_proto::v1::FriendState;
use tokio::time::Instant;

use crate::cache;
use crate::cli::MessagingArgs;
use crate::limits::{self, FileLimit};
use crate::machine;
use crate::prepare::{self, PrepareConfig, PrepareError};
use crate::schedule::Schedule;
use crate::session::{self, SessionPlan, Target};
use crate::sources;
use crate::stats::ErrorCounts;
use crate::traffic::{self, SenderSpec, TrafficFigures, TrafficPlan};

/// Friendships checked or made at once during setup.
const SETUP_CONCURRENCY: usize = 32;

/// Time between the start of the receivers and the first intended send, so every receiving
/// connection reads pushes before the first message is due.
const LEAD_IN: Duration = Duration::from_millis(200);

/// Time the traffic phase may take beyond sending, the last replies and the drain: closing
/// every connection.
const TRAFFIC_SLACK: Duration = Duration::from_secs(30);

/// Errors that end a messaging run before it can report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScenarioError {
    #[error("raising the open-file limit failed")]
    FileLimit(#[source] std::io::Error),
    #[error(
        "{connections} connections exceed the open-file limit {soft} minus {reserved} reserved \
         descriptors; run fewer pairs or members"
    )]
    TooManyConnections {
        connections: u64,
        soft: u64,
        reserved: u64,
    },
    #[error("preparing tokens failed")]
    Prepare(#[from] PrepareError),
    #[error("connecting to the logic tier at {url} failed")]
    LogicConnect {
        url: String,
        #[source]
        source: LogicApiError,
    },
    #[error("{call} for user {user_id} failed")]
    Setup {
        call: &'static str,
        user_id: u64,
        #[source]
        source: LogicApiError,
    },
    #[error("{failed} of {total} connections did not sign in")]
    SignIn {
        failed: u64,
        total: u64,
        errors: ErrorCounts,
    },
    #[error("{phase} took longer than its limit of {secs} s")]
    PhaseTimedOut { phase: &'static str, secs: u64 },
    #[error("reading or writing group cache {path} failed")]
    GroupCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the logic tier returned group {group_id} without the {missing} members just added")]
    GroupIncomplete { group_id: u64, missing: usize },
    #[error(
        "invalid --slow-readers {slow_readers}: it must be less than the {online} online members \
         minus 1 (the sender), so that at least one recipient reads; pass at most {max}"
    )]
    TooManySlowReaders {
        slow_readers: u64,
        online: u64,
        max: u64,
    },
    #[error(
        "invalid --online {online}: the group has only --members {members}; pass at most {members}, \
         or leave --online out to sign in every member"
    )]
    TooManyOnline { online: u64, members: u64 },
    #[error("--engine-metrics-url and --engine-pid serve only the slow readers; pass --slow-readers K as well, or leave them out")]
    NeedsSlowReaders,
    #[error("invalid --engine-metrics-url {0:?}: expected http://HOST:PORT/PATH, such as http://127.0.0.1:9101/metrics")]
    MetricsUrl(String),
}

/// Prints the report and returns success only when the run had no error and lost nothing.
/// `name_receiver` names receiving connection `i` in the lines about single receivers.
pub(crate) fn finish(
    result: Result<TrafficFigures, ScenarioError>,
    name_receiver: &dyn Fn(usize) -> String,
) -> ExitCode {
    match result {
        Ok(figures) => {
            traffic::report::print(&figures, name_receiver);
            if figures.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            print_error(&error);
            ExitCode::FAILURE
        }
    }
}

fn print_error(error: &ScenarioError) {
    eprintln!("im-bench: {error}");
    let mut previous = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        // Some wrappers repeat their source's text; print each text once.
        let text = inner.to_string();
        if text != previous {
            eprintln!("  caused by: {text}");
        }
        previous = text;
        cause = inner.source();
    }
    let errors = match error {
        ScenarioError::SignIn { errors, .. } => errors,
        ScenarioError::Prepare(PrepareError::UsersFailed { errors, .. }) => errors,
        _ => return,
    };
    for line in errors.lines() {
        eprintln!("  {line}");
    }
}

/// Raises the soft open-file limit to the hard limit.
pub(crate) fn raise_file_limit() -> Result<FileLimit, ScenarioError> {
    limits::raise_file_limit().map_err(ScenarioError::FileLimit)
}

/// Checks that `connections` fit in this process's open-file limit.
pub(crate) fn check_capacity(
    connections: u64,
    file_limit: &FileLimit,
) -> Result<(), ScenarioError> {
    if connections > file_limit.connection_capacity() {
        return Err(ScenarioError::TooManyConnections {
            connections,
            soft: file_limit.soft,
            reserved: limits::RESERVED_FILES,
        });
    }
    Ok(())
}

/// Returns the number of source addresses: the flag, or enough for `connections`.
pub(crate) fn source_count(args: &MessagingArgs, connections: u64) -> u64 {
    args.sources.unwrap_or_else(|| {
        let connections = usize::try_from(connections).unwrap_or(usize::MAX);
        sources::default_sources(connections, sources::ports_per_source()) as u64
    })
}

/// Returns the user prefix of a scenario: users are `<prefix>-<scenario>-<i>`.
pub(crate) fn scenario_prefix(args: &MessagingArgs, scenario: &str) -> String {
    format!("{}-{scenario}", args.conn.user_prefix)
}

/// Prints the parameter lines that both scenarios share, after the scenario's own first lines.
pub(crate) fn print_common_parameters(
    args: &MessagingArgs,
    schedule: &Schedule,
    sources: u64,
    file_limit: &FileLimit,
) {
    println!(
        "  duration             {} s ({} messages)",
        args.duration_secs, schedule.total
    );
    println!("  content              {} bytes", args.content_bytes);
    println!(
        "  max in flight        {} SENDs per connection",
        args.max_in_flight
    );
    println!("  drain                {} s", args.drain_secs);
    println!("  heartbeat after      {} ms idle", args.heartbeat_ms);
    println!(
        "  timeout              {} ms per connect, per reply and per logic call",
        args.conn.timeout_ms
    );
    println!(
        "  sources              {sources} (127.0.0.2 ..= {})",
        sources::source_addr(usize::try_from(sources).unwrap_or(1) - 1, sources as usize)
    );
    println!(
        "  open files           soft {} (was {}), hard {}",
        file_limit.soft, file_limit.soft_before, file_limit.hard
    );
}

/// Prints the lines every run starts with.
pub(crate) fn print_header(scenario: &str, args: &MessagingArgs) {
    println!("im-bench {scenario}");
    println!("  machine              {}", machine::describe());
    println!("  url                  {}", args.conn.url);
    println!("  logic url            {}", args.logic_url);
}

/// Ensures users `<prefix>-<scenario>-<i>` for i in 0..count exist and have tokens.
pub(crate) async fn prepare_users(
    args: &MessagingArgs,
    scenario: &str,
    count: u64,
) -> Result<Vec<Target>, ScenarioError> {
    let user_prefix = scenario_prefix(args, scenario);
    let config = PrepareConfig {
        url: args.conn.url.clone(),
        password: args.conn.password.clone(),
        cache_path: cache::cache_path(&args.conn.cache_dir, &user_prefix),
        user_prefix,
        timeout: Duration::from_millis(args.conn.timeout_ms),
        concurrency: usize::try_from(args.prepare.prepare_concurrency).unwrap_or(usize::MAX),
        refresh: args.prepare.refresh_tokens,
    };
    within(
        "preparing tokens",
        args.prepare.prepare_timeout_secs,
        prepare::prepare(&config, count),
    )
    .await?
    .map_err(ScenarioError::from)
}

/// Connects to the logic tier's business API.
pub(crate) async fn connect_logic(args: &MessagingArgs) -> Result<LogicApi, ScenarioError> {
    let timeout = Duration::from_millis(args.conn.timeout_ms);
    LogicApi::connect(&args.logic_url, timeout)
        .await
        .map_err(|source| ScenarioError::LogicConnect {
            url: args.logic_url.clone(),
            source,
        })
}

/// Returns a handle on `api` that acts as the target's user and device.
pub(crate) fn api_as(api: &LogicApi, target: &Target) -> Result<LogicApi, ScenarioError> {
    api.as_user(target.user_id, target.device_id, &target.token)
        .map_err(|source| ScenarioError::Setup {
            call: "credentials",
            user_id: target.user_id,
            source,
        })
}

/// Makes each pair of `pairs` friends unless they are already: the first user requests and
/// the second accepts, with up to [`SETUP_CONCURRENCY`] pairs at once. Returns how many pairs
/// this run made friends.
pub(crate) async fn befriend_all<'a>(
    api: &LogicApi,
    pairs: impl Iterator<Item = (&'a Target, &'a Target)>,
) -> Result<u64, ScenarioError> {
    futures::stream::iter(pairs)
        .map(|(sender, receiver)| befriend(api, sender, receiver))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_fold(0, |made, pair_made| async move {
            Ok(made + u64::from(pair_made))
        })
        .await
}

/// Makes `sender` and `receiver` friends: the sender requests and the receiver accepts.
/// Returns false when they already were. ALREADY_EXISTS from either call means an earlier,
/// interrupted run got that far.
async fn befriend(
    api: &LogicApi,
    sender: &Target,
    receiver: &Target,
) -> Result<bool, ScenarioError> {
    let sender_api = api_as(api, sender)?;
    let friends = sender_api
        .list_friends()
        .await
        .map_err(setup_error("ListFriends", sender.user_id))?;
    let state = friends
        .iter()
        .find(|friend| friend.user_id == receiver.user_id)
        .map(|friend| friend.state());
    match state {
        Some(FriendState::Accepted) => Ok(false),
        Some(FriendState::RequestReceived) => {
            let accepted = sender_api.accept_friend(receiver.user_id).await;
            made_unless_exists(accepted, "AcceptFriend", sender.user_id)
        }
        _ => {
            let requested = sender_api.request_friend(receiver.user_id).await;
            made_unless_exists(requested, "RequestFriend", sender.user_id)?;
            let receiver_api = api_as(api, receiver)?;
            let accepted = receiver_api.accept_friend(sender.user_id).await;
            made_unless_exists(accepted, "AcceptFriend", receiver.user_id)?;
            Ok(true)
        }
    }
}

/// Turns the result of a setup call into whether it changed something: ALREADY_EXISTS means
/// an earlier run did the work.
pub(crate) fn made_unless_exists<T>(
    result: Result<T, LogicApiError>,
    call: &'static str,
    user_id: u64,
) -> Result<bool, ScenarioError> {
    match result {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some(ErrorCode::AlreadyExists) => Ok(false),
        Err(source) => Err(ScenarioError::Setup {
            call,
            user_id,
            source,
        }),
    }
}

/// Maps a failed setup call to [`ScenarioError::Setup`].
pub(crate) fn setup_error(
    call: &'static str,
    user_id: u64,
) -> impl FnOnce(LogicApiError) -> ScenarioError {
    move |source| ScenarioError::Setup {
        call,
        user_id,
        source,
    }
}

/// Bounds a setup phase by `--setup-timeout-secs`.
pub(crate) async fn within_setup<T>(
    args: &MessagingArgs,
    setup: impl Future<Output = Result<T, ScenarioError>>,
) -> Result<T, ScenarioError> {
    within(
        "setup through the logic tier",
        args.setup_timeout_secs,
        setup,
    )
    .await?
}

/// Opens and signs in a connection for each target, in target order, with at most
/// `--concurrency` in flight.
///
/// # Errors
///
/// [`ScenarioError::SignIn`] when any connection fails, because a messaging run needs every
/// sender and receiver.
pub(crate) async fn sign_in_all(
    args: &MessagingArgs,
    targets: &[Target],
    sources: u64,
) -> Result<Vec<Client>, ScenarioError> {
    let plan = SessionPlan {
        url: args.conn.url.clone(),
        timeout: Duration::from_millis(args.conn.timeout_ms),
        sources: usize::try_from(sources).unwrap_or(1),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
    };
    let started = Instant::now();
    let concurrency = usize::try_from(args.conn.concurrency).unwrap_or(usize::MAX);
    let sign_ins = futures::stream::iter(targets)
        .map(|target| session::sign_in(&plan, target))
        .buffered(concurrency)
        .collect::<Vec<_>>();
    let results = within("signing in", args.conn.connect_timeout_secs, sign_ins).await?;

    let mut clients = Vec::with_capacity(results.len());
    let mut errors = ErrorCounts::default();
    for result in results {
        match result {
            Ok(client) => clients.push(client),
            Err(failure) => errors.add_failure(failure),
        }
    }
    if errors.total() > 0 {
        return Err(ScenarioError::SignIn {
            failed: errors.total(),
            total: targets.len() as u64,
            errors,
        });
    }
    eprintln!(
        "signin: {} connections signed in in {:.3} s",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(clients)
}

/// Builds the plan of the traffic phase.
pub(crate) fn traffic_plan(args: &MessagingArgs, schedule: Schedule) -> TrafficPlan {
    TrafficPlan {
        schedule,
        run_id: rand::random(),
        content_bytes: usize::try_from(args.content_bytes).unwrap_or(usize::MAX),
        max_in_flight: usize::try_from(args.max_in_flight).unwrap_or(usize::MAX),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        drain: Duration::from_secs(args.drain_secs),
        lead_in: LEAD_IN,
    }
}

/// Runs the traffic phase, bounded by the duration, the drain, one reply time limit and a
/// slack for closing.
pub(crate) async fn run_traffic(
    args: &MessagingArgs,
    plan: TrafficPlan,
    senders: Vec<SenderSpec>,
    receivers: Vec<Client>,
) -> Result<TrafficFigures, ScenarioError> {
    let limit = LEAD_IN
        + Duration::from_secs(args.duration_secs + args.drain_secs)
        + Duration::from_millis(args.conn.timeout_ms)
        + TRAFFIC_SLACK;
    eprintln!("traffic: sending for {} s", args.duration_secs);
    within(
        "the traffic phase",
        limit.as_secs(),
        traffic::run(plan, senders, receivers),
    )
    .await
}

/// Runs `phase` for at most `secs` seconds.
async fn within<T>(
    phase: &'static str,
    secs: u64,
    future: impl Future<Output = T>,
) -> Result<T, ScenarioError> {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .map_err(|_| ScenarioError::PhaseTimedOut { phase, secs })
}
