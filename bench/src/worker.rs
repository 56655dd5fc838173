//! A worker process of `signin --workers K`: it signs in its slice of the users with tokens
//! from the cache, reports on stdout, waits for the parent's hold command on stdin, holds, and
//! reports again. With `--open-first` it opens every connection of its slice first, reports
//! `opened`, and signs them in only on the parent's `sign_in` command.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader, Lines};
use tokio::time::Instant;

use crate::cache::{self, TokenCache};
use crate::cli::WorkerArgs;
use crate::phases::{self, ConnectProgress, Order, CLOSE_GRACE};
use crate::prepare::{self, PrepareError};
use crate::signin;
use crate::stats::HistogramCodecError;
use crate::worker_protocol::{unix_micros, WorkerEvent, HOLD_COMMAND, SIGN_IN_COMMAND};

/// Time a worker waits for a command beyond the connect limit. The parent sends each command
/// once the slowest worker has reported, which takes at most the connect limit plus its
/// report allowance.
const COMMAND_ALLOWANCE: Duration = Duration::from_secs(60);

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
    #[error("no {command} command from the parent within {secs} s")]
    CommandTimedOut { command: &'static str, secs: u64 },
    #[error("stdin closed before the {command} command: the parent has stopped")]
    ParentGone { command: &'static str },
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

    // With --open-first the worker has two connect phases (open, then sign in), otherwise one.
    // Each takes at most the connect limit and is followed by a wait of at most the command
    // limit for the parent's next command. The hold and the close come last.
    let connect_limit = Duration::from_secs(args.run.conn.connect_timeout_secs);
    let command_limit = connect_limit + COMMAND_ALLOWANCE;
    let phases = if args.open_first { 2 } else { 1 };
    let deadline = phases * (connect_limit + command_limit)
        + Duration::from_secs(args.run.hold_secs)
        + CLOSE_GRACE;
    tokio::time::timeout(deadline, work(&args, targets))
        .await
        .map_err(|_| WorkerError::DeadlinePassed)?
}

async fn work(args: &WorkerArgs, targets: Vec<crate::session::Target>) -> Result<(), WorkerError> {
    let mut commands = Commands::new(BufReader::new(tokio::io::stdin()));
    let mut report_progress = |progress: ConnectProgress| {
        // A failed write shows again at the next report, which must succeed.
        let _ = emit(&WorkerEvent::Progress {
            done: progress.done,
            signed_in: progress.signed_in,
            opened: progress.opened,
        });
    };
    let connect_limit = Duration::from_secs(args.run.conn.connect_timeout_secs);
    let command_limit = connect_limit + COMMAND_ALLOWANCE;
    let attempted = targets.len() as u64;
    let order = if args.open_first {
        Order::OpenAllFirst
    } else {
        Order::SignInOnOpen
    };
    let started_us = unix_micros();
    let mut launch = phases::launch(
        signin::session_plan(&args.run, args.sources),
        targets,
        usize::try_from(args.run.conn.concurrency).unwrap_or(usize::MAX),
        order,
    );
    let mut deadline = Instant::now() + connect_limit;
    if args.open_first {
        let opened = launch.wait_opened(deadline, &mut report_progress).await;
        emit(&WorkerEvent::Opened {
            attempted,
            opened: opened.opened.unwrap_or(0),
            failed: opened.done,
            started_us,
            ended_us: unix_micros(),
        })?;
        commands.wait_for(SIGN_IN_COMMAND, command_limit).await?;
        // The sign-in phase gets its own limit, counted from the command, so that the wait
        // for the other workers to open does not shorten it.
        deadline = Instant::now() + connect_limit;
    }
    let (figures, mut connections) = launch.sign_in(deadline, &mut report_progress).await;
    emit(&WorkerEvent::connected(&figures)?)?;

    commands.wait_for(HOLD_COMMAND, command_limit).await?;
    let until = connections.start_hold(Duration::from_secs(args.run.hold_secs));
    connections.collect_until(until).await;
    let hold = connections.finish().await;
    emit(&WorkerEvent::finished(&hold)?)
}

/// The parent's commands, one per line on the worker's stdin.
struct Commands<R> {
    lines: Lines<R>,
}

impl<R: AsyncBufRead + Unpin> Commands<R> {
    fn new(reader: R) -> Self {
        Self {
            lines: reader.lines(),
        }
    }

    /// Reads lines until `command`, skipping any other line, for at most `limit`. End of input
    /// means the parent is gone.
    async fn wait_for(
        &mut self,
        command: &'static str,
        limit: Duration,
    ) -> Result<(), WorkerError> {
        let lines = &mut self.lines;
        let read = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == command {
                    return Ok(());
                }
            }
            Err(WorkerError::ParentGone { command })
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| WorkerError::CommandTimedOut {
                command,
                secs: limit.as_secs(),
            })?
    }
}

fn emit(event: &WorkerEvent) -> Result<(), WorkerError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", event.to_line())
        .and_then(|()| stdout.flush())
        .map_err(WorkerError::Output)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn commands_skip_other_lines() {
        let input: &[u8] = b"hold\n  sign_in \nhold\n";
        let mut commands = Commands::new(BufReader::new(input));

        let sign_in = commands
            .wait_for(SIGN_IN_COMMAND, Duration::from_secs(5))
            .await;
        let hold = commands
            .wait_for(HOLD_COMMAND, Duration::from_secs(5))
            .await;
        let missing = commands
            .wait_for(HOLD_COMMAND, Duration::from_secs(5))
            .await;

        assert!(sign_in.is_ok(), "{sign_in:?}");
        assert!(hold.is_ok(), "{hold:?}");
        assert!(
            matches!(missing, Err(WorkerError::ParentGone { command: "hold" })),
            "{missing:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn command_wait_times_out() {
        // The writer stays open, so the reader waits until the limit.
        let (reader, mut writer) = tokio::io::duplex(64);
        writer.write_all(b"hold\n").await.expect("write");
        let mut commands = Commands::new(BufReader::new(reader));

        let result = commands
            .wait_for(SIGN_IN_COMMAND, Duration::from_secs(30))
            .await;

        assert!(
            matches!(
                result,
                Err(WorkerError::CommandTimedOut {
                    command: "sign_in",
                    secs: 30
                })
            ),
            "{result:?}"
        );
        let message = result.expect_err("timed out").to_string();
        assert_eq!(message, "no sign_in command from the parent within 30 s");
    }
}
