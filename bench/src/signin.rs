//! The `signin` scenario: prepare tokens, then open N connections, sign each in, hold them
//! with heartbeats, and report rate, latency and engine memory.

use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use crate::cache;
use crate::cli::SigninArgs;
use crate::kernel;
use crate::limits::{self, FileLimit};
use crate::machine;
use crate::phases;
use crate::prepare::{self, PrepareConfig, PrepareError};
use crate::report::{EngineMemory, MemorySample, Report};
use crate::session::{SessionPlan, Target};
use crate::sources;
use crate::workers::{self, WorkersError};

/// Time the overall deadline allows beyond the connect limit and the hold. It covers the
/// close of all connections, which [`phases::CLOSE_GRACE`] bounds.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// Errors that end a run before it can report.
#[derive(Debug, thiserror::Error)]
enum SigninError {
    #[error("raising the open-file limit failed")]
    FileLimit(#[source] std::io::Error),
    #[error(
        "{per_process} connections per process exceed the open-file limit {soft} minus {reserved} \
         reserved descriptors; pass --workers {suggested} or more"
    )]
    TooManyConnections {
        per_process: u64,
        soft: u64,
        reserved: u64,
        suggested: u64,
    },
    #[error("preparing tokens failed: {0}")]
    Prepare(#[from] PrepareError),
    #[error("preparing tokens took longer than --prepare-timeout-secs {0}")]
    PrepareTimedOut(u64),
    #[error("the run did not finish within its overall deadline of {0} s")]
    DeadlinePassed(u64),
    #[error(transparent)]
    Workers(#[from] WorkersError),
}

/// Runs the scenario and returns the exit code: success only when no error of any kind was
/// counted.
pub(crate) async fn run(args: SigninArgs) -> ExitCode {
    match execute(&args).await {
        Ok(report) => {
            report.print();
            if report.error_total() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("im-bench: {error}");
            print_error_details(&error);
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: &SigninArgs) -> Result<Report, SigninError> {
    let file_limit = limits::raise_file_limit().map_err(SigninError::FileLimit)?;
    let sources = args.sources.unwrap_or_else(|| {
        sources::default_sources(
            usize::try_from(args.connections).unwrap_or(usize::MAX),
            sources::ports_per_source(),
        ) as u64
    });
    print_parameters(args, sources, &file_limit);
    check_capacity(args, &file_limit)?;

    let targets = prepare_tokens(args).await?;

    let engine = EngineWatch::find(&args.engine_pid, &args.run.conn.url);
    // Workers with --open-first get the connect limit for the open phase and again for the
    // sign-in phase, while one process shares it between both. Workers may report up to one
    // allowance late after each phase, the hold included.
    let (connect_phases, worker_allowance) = match (args.workers, args.open_first) {
        (1, _) => (1, Duration::ZERO),
        (_, false) => (1, 2 * workers::REPORT_ALLOWANCE),
        (_, true) => (2, 3 * workers::REPORT_ALLOWANCE),
    };
    let deadline_secs = connect_phases * args.run.conn.connect_timeout_secs
        + args.run.hold_secs
        + (DEADLINE_SLACK + worker_allowance).as_secs();
    let measure = async {
        if args.workers > 1 {
            Ok(workers::measure(args, sources, &engine).await?)
        } else {
            Ok(measure_local(args, targets, sources, &engine).await)
        }
    };
    tokio::time::timeout(Duration::from_secs(deadline_secs), measure)
        .await
        .map_err(|_| SigninError::DeadlinePassed(deadline_secs))?
}

fn check_capacity(args: &SigninArgs, file_limit: &FileLimit) -> Result<(), SigninError> {
    let per_process = args.connections.div_ceil(args.workers);
    let capacity = file_limit.connection_capacity();
    if per_process <= capacity {
        return Ok(());
    }
    Err(SigninError::TooManyConnections {
        per_process,
        soft: file_limit.soft,
        reserved: limits::RESERVED_FILES,
        suggested: limits::workers_needed(args.connections, capacity),
    })
}

async fn prepare_tokens(args: &SigninArgs) -> Result<Vec<Target>, SigninError> {
    let config = PrepareConfig {
        url: args.run.conn.url.clone(),
        password: args.run.conn.password.clone(),
        user_prefix: args.run.conn.user_prefix.clone(),
        timeout: Duration::from_millis(args.run.conn.timeout_ms),
        concurrency: usize::try_from(args.prepare.prepare_concurrency).unwrap_or(usize::MAX),
        cache_path: cache::cache_path(&args.run.conn.cache_dir, &args.run.conn.user_prefix),
        refresh: args.prepare.refresh_tokens,
    };
    let limit = Duration::from_secs(args.prepare.prepare_timeout_secs);
    let targets = tokio::time::timeout(limit, prepare::prepare(&config, args.connections))
        .await
        .map_err(|_| SigninError::PrepareTimedOut(args.prepare.prepare_timeout_secs))??;
    Ok(targets)
}

async fn measure_local(
    args: &SigninArgs,
    targets: Vec<Target>,
    sources: u64,
    engine: &EngineWatch,
) -> Report {
    let mut memory = EngineMemory {
        processes: engine.processes(),
        before: engine.sample(),
        during: None,
    };
    let total = args.connections;
    let started = Instant::now();
    let mut print_progress = |progress: phases::ConnectProgress| {
        eprintln!("{}", progress_line(&progress, total, started.elapsed()));
    };
    let order = if args.open_first {
        phases::Order::OpenAllFirst
    } else {
        phases::Order::SignInOnOpen
    };
    let (connect, mut connections) = phases::connect_all(
        session_plan(&args.run, sources),
        targets,
        usize::try_from(args.run.conn.concurrency).unwrap_or(usize::MAX),
        Duration::from_secs(args.run.conn.connect_timeout_secs),
        order,
        &mut print_progress,
    )
    .await;

    let hold = Duration::from_secs(args.run.hold_secs);
    let until = connections.start_hold(hold);
    connections.collect_until(Instant::now() + hold / 2).await;
    memory.during = Some(engine.sample());
    connections.collect_until(until).await;
    let hold = connections.finish().await;

    Report {
        connections: total,
        signed_in: connect.signed_in,
        connect_elapsed: connect.elapsed,
        opened: connect.opened,
        signin_latency: connect.latency,
        signin_errors: connect.errors,
        hold,
        engine: memory,
    }
}

/// Builds the per-connection settings from the flags.
pub(crate) fn session_plan(run: &crate::cli::RunArgs, sources: u64) -> SessionPlan {
    SessionPlan {
        url: run.conn.url.clone(),
        timeout: Duration::from_millis(run.conn.timeout_ms),
        sources: usize::try_from(sources).unwrap_or(1),
        heartbeat_interval: Duration::from_millis(run.heartbeat_ms),
    }
}

/// Formats one progress line of the connect phase.
pub(crate) fn progress_line(
    progress: &phases::ConnectProgress,
    total: u64,
    elapsed: Duration,
) -> String {
    let phases::ConnectProgress {
        done,
        signed_in,
        opened,
    } = *progress;
    let failed = done.saturating_sub(signed_in);
    let per_second = crate::report::rate(done, elapsed);
    let line = format!(
        "signin: {done}/{total} done, {signed_in} signed in, {failed} failed, {per_second:.0}/s"
    );
    match opened {
        Some(opened) => format!("{line}, {opened} open"),
        None => line,
    }
}

fn print_parameters(args: &SigninArgs, sources: u64, file_limit: &FileLimit) {
    let run = &args.run;
    println!("im-bench signin");
    println!("  machine              {}", machine::describe());
    println!("  url                  {}", run.conn.url);
    println!("  connections          {}", args.connections);
    println!(
        "  sources              {sources} (127.0.0.2 ..= {})",
        sources::source_addr(usize::try_from(sources).unwrap_or(1) - 1, sources as usize)
    );
    println!("  workers              {}", args.workers);
    if args.open_first {
        println!("  order                open every connection, then sign all in");
    }
    println!("  concurrency          {}", run.conn.concurrency);
    println!("  hold                 {} s", run.hold_secs);
    println!("  heartbeat interval   {} ms", run.heartbeat_ms);
    println!(
        "  timeout              {} ms per connect and per reply",
        run.conn.timeout_ms
    );
    println!("  connect phase limit  {} s", run.conn.connect_timeout_secs);
    println!(
        "  users                {}-0 .. {}-{}",
        run.conn.user_prefix,
        run.conn.user_prefix,
        args.connections - 1
    );
    println!(
        "  open files           soft {} (was {}), hard {}",
        file_limit.soft, file_limit.soft_before, file_limit.hard
    );
}

fn print_error_details(error: &SigninError) {
    let SigninError::Prepare(PrepareError::UsersFailed { errors, .. }) = error else {
        return;
    };
    for line in errors.lines() {
        eprintln!("  {line}");
    }
    if errors.0.contains_key("USERNAME_TAKEN") || errors.0.contains_key("INVALID_CREDENTIALS") {
        eprintln!("  USERNAME_TAKEN or INVALID_CREDENTIALS: the users exist with another password; pass the right --password or another --user-prefix");
    }
}

/// The engine processes whose memory the run reads, with the kernel's socket memory beside.
pub(crate) struct EngineWatch {
    pids: Vec<u32>,
}

impl EngineWatch {
    /// Finds the engine processes and prints them, or why memory will not be reported.
    pub(crate) fn find(given: &[u32], url: &str) -> EngineWatch {
        let port = machine::url_port(url);
        let pids = machine::engine_pids(given, port);
        match (pids.as_slice(), port) {
            ([], Some(port)) => println!(
                "  engine pid           no process named im-engine listens on port {port}; \
                 memory not reported (pass --engine-pid PID)"
            ),
            ([], None) => {
                println!("  engine pid           none found named im-engine; memory not reported")
            }
            ([pid], _) => println!("  engine pid           {pid}"),
            _ => println!("  engine pids          {pids:?} (memory summed)"),
        }
        EngineWatch { pids }
    }

    /// Reads the engines' resident memory and the kernel's socket memory now.
    pub(crate) fn sample(&self) -> MemorySample {
        MemorySample {
            engine: machine::total_resident_bytes(&self.pids),
            kernel: kernel::read(),
        }
    }

    pub(crate) fn processes(&self) -> usize {
        self.pids.len()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    const FILE_LIMIT: FileLimit = FileLimit {
        soft_before: 1024,
        soft: 20_000,
        hard: 20_000,
    };

    fn signin_args(flags: &[&str]) -> SigninArgs {
        let argv = ["im-bench", "signin"].iter().chain(flags);
        let cli = Cli::try_parse_from(argv).expect("parse");
        let Some(Command::Signin(args)) = cli.command else {
            panic!("signin expected");
        };
        args
    }

    #[test]
    fn capacity_error_suggests_workers() {
        for flags in [
            &["--connections", "30000"][..],
            &["--open-first", "--connections", "30000"][..],
        ] {
            let args = signin_args(flags);

            let message = check_capacity(&args, &FILE_LIMIT)
                .expect_err("over the limit")
                .to_string();

            assert!(
                message.contains("pass --workers 2 or more"),
                "{flags:?}: {message}"
            );
        }
    }

    #[test]
    fn open_first_with_workers_passes() {
        let args = signin_args(&["--open-first", "--connections", "30000", "--workers", "2"]);

        assert!(check_capacity(&args, &FILE_LIMIT).is_ok());
    }

    #[test]
    fn open_first_within_capacity_passes() {
        let args = signin_args(&["--open-first", "--connections", "19900"]);

        assert!(check_capacity(&args, &FILE_LIMIT).is_ok());
    }
}
