//! A worker process of `signin --workers K`: it signs in its slice of the users with tokens
//! from the cache, reports on stdout, waits for the parent's hold command on stdin, holds, and
//! reports again.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

use crate::cache::{self, TokenCache};
use crate::cli::WorkerArgs;
use crate::phases::{self, ConnectProgress, CLOSE_GRACE};
use crate::prepare::{self, PrepareError};
use crate::signin;
use crate::stats::HistogramCodecError;
use crate::worker_protocol::{WorkerEvent, HOLD_COMMAND};

/// Errors that end a worker.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("raising the open-file limit failed")]
    FileLimit(#[source] std::io::Error),
    #[error("reading the token cache failed")]
    ReadCache(#[source] std::io::Error),
    #[error(transparent)]
    Tokens(#[from] PrepareError),
    #[error("writing to the parent failed")]
    Output(#[source] std::io::Error),
    #[error(transparent)]
    Histogram(#[from] HistogramCodecError),
    #[error("no hold command from the parent")]
    NoHoldCommand,
    #[error("the worker did not finish within its deadline")]
    DeadlinePassed,
}

/// Runs the worker and returns its exit code. The parent judges the run from the reports;
/// the exit code only shows whether the worker got to report.
pub(crate) async fn run(args: WorkerArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("im-bench worker: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: WorkerArgs) -> Result<(), WorkerError> {
    crate::limits::raise_file_limit().map_err(WorkerError::FileLimit)?;
    let path = cache::cache_path(&args.run.conn.cache_dir, &args.run.conn.user_prefix);
    let cache = TokenCache::load(&path).map_err(WorkerError::ReadCache)?;
    let range = args.first_index..args.first_index + args.count;
    let targets = prepare::targets_from_cache(&cache, &args.run.conn.user_prefix, &path, range)?;

    // The parent waits as long for the connect report plus a start allowance, then holds.
    let deadline = Duration::from_secs(
        2 * args.run.conn.connect_timeout_secs + args.run.hold_secs + CLOSE_GRACE.as_secs() + 60,
    );
    tokio::time::timeout(deadline, work(&args, targets))
        .await
        .map_err(|_| WorkerError::DeadlinePassed)?
}

async fn work(args: &WorkerArgs, targets: Vec<crate::session::Target>) -> Result<(), WorkerError> {
    let mut report_progress = |progress: ConnectProgress| {
        // A failed write shows again at the connect report, which must succeed.
        let _ = emit(&WorkerEvent::Progress {
            done: progress.done,
            signed_in: progress.signed_in,
        });
    };
    let connect_limit = Duration::from_secs(args.run.conn.connect_timeout_secs);
    let (figures, mut connections) = phases::connect_all(
        signin::session_plan(&args.run, args.sources),
        targets,
        usize::try_from(args.run.conn.concurrency).unwrap_or(usize::MAX),
        connect_limit,
        phases::Order::SignInOnOpen,
        &mut report_progress,
    )
    .await;
    emit(&WorkerEvent::connected(&figures)?)?;

    wait_for_hold_command(connect_limit + Duration::from_secs(60)).await?;
    let until = connections.start_hold(Duration::from_secs(args.run.hold_secs));
    connections.collect_until(until).await;
    let hold = connections.finish().await;
    emit(&WorkerEvent::finished(&hold)?)
}

/// Reads stdin until the hold command. End of input means the parent is gone.
async fn wait_for_hold_command(limit: Duration) -> Result<(), WorkerError> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == HOLD_COMMAND {
                return Ok(());
            }
        }
        Err(WorkerError::NoHoldCommand)
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| WorkerError::NoHoldCommand)?
}

fn emit(event: &WorkerEvent) -> Result<(), WorkerError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", event.to_line())
        .and_then(|()| stdout.flush())
        .map_err(WorkerError::Output)
}
