//! The parent side of a run with several worker processes: start the workers, each with a
//! slice of the users, merge their progress and figures, start their hold together, and read
//! the engine's memory while they hold.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::{RunArgs, SigninArgs};
use crate::phases::{HoldFigures, CLOSE_GRACE};
use crate::report::{EngineMemory, Report};
use crate::signin::{self, EngineWatch};
use crate::worker_protocol::{self, MergedConnect, WorkerEvent, HOLD_COMMAND};

/// Time allowed beyond each phase's own limit for a worker to report: process start and
/// token cache load before the connect report, and output after the close grace.
pub(crate) const REPORT_ALLOWANCE: Duration = Duration::from_secs(5);

/// The users of one worker: `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) first: u64,
    pub(crate) count: u64,
}

/// Errors that stop a run with workers before it can report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkersError {
    #[error("cannot find the bench executable to start workers")]
    CurrentExe(#[source] std::io::Error),
    #[error("starting worker {index} failed")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Splits `connections` into `workers` contiguous slices whose sizes differ by at most one.
pub(crate) fn split(connections: u64, workers: u64) -> Vec<Slice> {
    let workers = workers.clamp(1, connections.max(1));
    let base = connections / workers;
    let extra = connections % workers;
    let mut first = 0;
    (0..workers)
        .map(|index| {
            let count = base + u64::from(index < extra);
            let slice = Slice { first, count };
            first += count;
            slice
        })
        .collect()
}

/// Builds the command line of one worker. The password goes in the environment, so that it
/// does not show in the process list.
pub(crate) fn worker_flags(
    run: &RunArgs,
    slice: Slice,
    sources: u64,
    concurrency: u64,
) -> Vec<String> {
    let flags = [
        ("--url", run.conn.url.clone()),
        ("--hold-secs", run.hold_secs.to_string()),
        ("--heartbeat-ms", run.heartbeat_ms.to_string()),
        ("--concurrency", concurrency.to_string()),
        ("--user-prefix", run.conn.user_prefix.clone()),
        ("--timeout-ms", run.conn.timeout_ms.to_string()),
        (
            "--connect-timeout-secs",
            run.conn.connect_timeout_secs.to_string(),
        ),
        ("--cache-dir", run.conn.cache_dir.display().to_string()),
        ("--first-index", slice.first.to_string()),
        ("--count", slice.count.to_string()),
        ("--sources", sources.to_string()),
    ];
    let mut args = vec!["signin-worker".to_owned()];
    for (flag, value) in flags {
        args.push(flag.to_owned());
        args.push(value);
    }
    args
}

/// A line, or the end, of one worker's stdout.
enum WorkerMessage {
    Event(usize, WorkerEvent),
    Invalid(usize, String),
    Ended(usize),
}

/// Progress of one worker through the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Connecting { done: u64, signed_in: u64 },
    Connected,
    Finished,
    Failed,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    slice: Slice,
    state: WorkerState,
}

/// The parent's view of all workers during a run.
struct Fleet {
    workers: Vec<Worker>,
    messages: mpsc::UnboundedReceiver<WorkerMessage>,
    connect: MergedConnect,
    hold: HoldFigures,
}

/// Runs the connect phase and the hold in `args.workers` worker processes and merges their
/// figures. Tokens must be prepared and cached already.
pub(crate) async fn measure(
    args: &SigninArgs,
    sources: u64,
    engine: &EngineWatch,
) -> Result<Report, WorkersError> {
    let exe = std::env::current_exe().map_err(WorkersError::CurrentExe)?;
    let slices = split(args.connections, args.workers);
    let concurrency = args.run.conn.concurrency.div_ceil(slices.len() as u64);
    let mut memory = EngineMemory {
        processes: engine.processes(),
        before: engine.sample(),
        during: None,
    };

    let started = Instant::now();
    let mut fleet = Fleet::start(&exe, &args.run, &slices, sources, concurrency)?;
    let connect_limit = Duration::from_secs(args.run.conn.connect_timeout_secs) + REPORT_ALLOWANCE;
    fleet
        .wait_connected(started + connect_limit, args.connections)
        .await;
    let connect_elapsed = started.elapsed();

    let hold = Duration::from_secs(args.run.hold_secs);
    let hold_started = Instant::now();
    fleet.start_hold().await;
    fleet.collect_until(hold_started + hold / 2).await;
    memory.during = Some(engine.sample());
    fleet
        .collect_until(hold_started + hold + CLOSE_GRACE + REPORT_ALLOWANCE)
        .await;
    fleet.stop().await;

    Ok(Report {
        connections: args.connections,
        signed_in: fleet.connect.signed_in,
        connect_elapsed,
        opened: None,
        signin_latency: fleet.connect.latency,
        signin_errors: fleet.connect.errors,
        hold: fleet.hold,
        engine: memory,
    })
}

impl Fleet {
    fn start(
        exe: &PathBuf,
        run: &RunArgs,
        slices: &[Slice],
        sources: u64,
        concurrency: u64,
    ) -> Result<Fleet, WorkersError> {
        let (tx, messages) = mpsc::unbounded_channel();
        let mut workers = Vec::with_capacity(slices.len());
        for (index, slice) in slices.iter().enumerate() {
            let mut child = Command::new(exe)
                .args(worker_flags(run, *slice, sources, concurrency))
                .env("IM_BENCH_PASSWORD", &run.conn.password)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| WorkersError::Spawn { index, source })?;
            if let Some(stdout) = child.stdout.take() {
                tokio::spawn(forward_lines(index, stdout, tx.clone()));
            }
            workers.push(Worker {
                stdin: child.stdin.take(),
                child,
                slice: *slice,
                state: WorkerState::Connecting {
                    done: 0,
                    signed_in: 0,
                },
            });
        }
        Ok(Fleet {
            workers,
            messages,
            connect: MergedConnect::default(),
            hold: HoldFigures::default(),
        })
    }

    /// Waits until every worker has reported `connected` or failed, printing merged progress
    /// every second. Workers still connecting at `deadline` count as failed.
    async fn wait_connected(&mut self, deadline: Instant, total: u64) {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        while self.any(|state| matches!(state, WorkerState::Connecting { .. })) {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Some(message) => self.handle(message),
                    None => break,
                },
                _ = ticker.tick() => {
                    let (done, signed_in) = self.connect_progress();
                    eprintln!("{}", signin::progress_line(done, signed_in, total, started.elapsed()));
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        for index in 0..self.workers.len() {
            if matches!(self.workers[index].state, WorkerState::Connecting { .. }) {
                eprintln!("worker {index}: no connect report by the deadline");
                self.fail(index, "worker_no_report");
            }
        }
        let (done, signed_in) = self.connect_progress();
        eprintln!(
            "{}",
            signin::progress_line(done, signed_in, total, started.elapsed())
        );
    }

    /// Sends the hold command to every connected worker.
    async fn start_hold(&mut self) {
        for index in 0..self.workers.len() {
            if self.workers[index].state != WorkerState::Connected {
                continue;
            }
            let line = format!("{HOLD_COMMAND}\n");
            let sent = match self.workers[index].stdin.as_mut() {
                Some(stdin) => stdin.write_all(line.as_bytes()).await.is_ok(),
                None => false,
            };
            if !sent {
                eprintln!("worker {index}: sending the hold command failed");
                self.fail(index, "worker_failed");
            }
        }
    }

    /// Handles worker output until `deadline` or until no worker is still holding.
    async fn collect_until(&mut self, deadline: Instant) {
        while self.any(|state| state == WorkerState::Connected) {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Some(message) => self.handle(message),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Counts workers that never finished, and ends every worker process.
    async fn stop(&mut self) {
        for index in 0..self.workers.len() {
            if self.workers[index].state == WorkerState::Connected {
                eprintln!("worker {index}: no hold report by the deadline");
                self.workers[index].state = WorkerState::Failed;
                self.hold.errors.add("worker_no_report", 1);
            }
        }
        for worker in &mut self.workers {
            worker.stdin = None;
            let exited = tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await;
            if exited.is_err() {
                let _ = worker.child.kill().await;
            }
        }
    }

    fn handle(&mut self, message: WorkerMessage) {
        match message {
            WorkerMessage::Event(index, event) => self.handle_event(index, event),
            WorkerMessage::Invalid(index, line) => eprintln!("worker {index}: {line}"),
            WorkerMessage::Ended(index) => match self.workers[index].state {
                WorkerState::Finished | WorkerState::Failed => {}
                _ => {
                    eprintln!("worker {index}: exited before its report");
                    self.fail(index, "worker_failed");
                }
            },
        }
    }

    fn handle_event(&mut self, index: usize, event: WorkerEvent) {
        let absorbed = match event {
            WorkerEvent::Progress { done, signed_in } => {
                self.workers[index].state = WorkerState::Connecting { done, signed_in };
                Ok(())
            }
            WorkerEvent::Connected {
                attempted,
                signed_in,
                signin_histogram,
                errors,
            } => {
                self.workers[index].state = WorkerState::Connected;
                self.connect
                    .absorb(attempted, signed_in, &signin_histogram, &errors)
            }
            WorkerEvent::Finished {
                heartbeat_histogram,
                heartbeats_after_hold,
                errors,
            } => {
                self.workers[index].state = WorkerState::Finished;
                worker_protocol::absorb_finished(
                    &mut self.hold,
                    &heartbeat_histogram,
                    heartbeats_after_hold,
                    &errors,
                )
            }
        };
        if let Err(error) = absorbed {
            eprintln!("worker {index}: unreadable report: {error}");
            self.fail(index, "worker_report_invalid");
        }
    }

    /// Marks worker `index` failed. A worker that fails before its connect report counts
    /// each connection of its slice as an error of `kind`; later it counts once.
    fn fail(&mut self, index: usize, kind: &str) {
        let worker = &mut self.workers[index];
        match worker.state {
            WorkerState::Connecting { .. } => {
                self.connect.attempted += worker.slice.count;
                self.connect.errors.add(kind, worker.slice.count);
            }
            WorkerState::Connected => self.hold.errors.add(kind, 1),
            WorkerState::Finished | WorkerState::Failed => return,
        }
        worker.state = WorkerState::Failed;
        worker.stdin = None;
    }

    fn any(&self, test: impl Fn(WorkerState) -> bool) -> bool {
        self.workers.iter().any(|worker| test(worker.state))
    }

    /// Sums progress: reports of connecting workers plus the full slices of the others.
    fn connect_progress(&self) -> (u64, u64) {
        let mut done = 0;
        let mut signed_in = self.connect.signed_in;
        for worker in &self.workers {
            match worker.state {
                WorkerState::Connecting {
                    done: worker_done,
                    signed_in: worker_signed_in,
                } => {
                    done += worker_done;
                    signed_in += worker_signed_in;
                }
                _ => done += worker.slice.count,
            }
        }
        (done, signed_in)
    }
}

async fn forward_lines(
    index: usize,
    stdout: ChildStdout,
    tx: mpsc::UnboundedSender<WorkerMessage>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let message = match WorkerEvent::parse(&line) {
            Ok(event) => WorkerMessage::Event(index, event),
            Err(_) => WorkerMessage::Invalid(index, line),
        };
        if tx.send(message).is_err() {
            return;
        }
    }
    let _ = tx.send(WorkerMessage::Ended(index));
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn split_covers_all_connections() {
        let slices = split(10, 3);

        assert_eq!(
            slices,
            vec![
                Slice { first: 0, count: 4 },
                Slice { first: 4, count: 3 },
                Slice { first: 7, count: 3 },
            ]
        );
    }

    #[test]
    fn split_never_makes_empty_slices() {
        let slices = split(2, 5);

        assert_eq!(slices.len(), 2);
        assert!(slices.iter().all(|slice| slice.count == 1));
    }

    #[test]
    fn worker_flags_parse_back() {
        let cli = Cli::try_parse_from(["im-bench", "--user-prefix", "load", "--hold-secs", "7"])
            .expect("parse parent flags");
        let slice = Slice {
            first: 5000,
            count: 2500,
        };

        let mut argv = vec!["im-bench".to_owned()];
        argv.extend(worker_flags(&cli.signin.run, slice, 2, 128));
        let worker = Cli::try_parse_from(argv).expect("parse worker flags");

        let Some(Command::SigninWorker(args)) = worker.command else {
            panic!("signin-worker expected");
        };
        assert_eq!(args.first_index, 5000);
        assert_eq!(args.count, 2500);
        assert_eq!(args.sources, 2);
        assert_eq!(args.run.conn.concurrency, 128);
        assert_eq!(args.run.conn.user_prefix, "load");
        assert_eq!(args.run.hold_secs, 7);
        assert_eq!(args.run.conn.url, cli.signin.run.conn.url);
        assert_eq!(args.run.conn.cache_dir, cli.signin.run.conn.cache_dir);
    }
}
