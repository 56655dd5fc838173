//! The parent side of a run with several worker processes: start the workers, each with a
//! slice of the users, merge their progress and figures, start their hold together, and read
//! the engine's memory while they hold. With `--open-first` every worker opens its
//! connections, and the parent lets them all sign in together once the last has opened.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::{RunArgs, SigninArgs};
use crate::phases::{ConnectProgress, HoldFigures, CLOSE_GRACE};
use crate::report::{EngineMemory, Report};
use crate::signin::{self, EngineWatch};
use crate::stats::ErrorCounts;
use crate::worker_protocol::{self, MergedConnect, WorkerEvent, HOLD_COMMAND, SIGN_IN_COMMAND};

/// Time allowed beyond each phase's own limit for a worker to report: process start and
/// token cache load before the first report, and output after each phase.
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
    open_first: bool,
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
    if open_first {
        args.push("--open-first".to_owned());
    }
    args
}

/// Makes the kernel send SIGTERM to the process that `command` starts once the thread that
/// starts it ends, so that a bench killed with SIGKILL leaves no worker sending load. The
/// parent starts its workers from a runtime worker thread, which lives until the run ends.
fn end_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, and only makes one system
    // call, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
    /// In its open phase or its sign-in phase, with its last progress report.
    Connecting {
        done: u64,
        signed_in: u64,
    },
    /// Its open phase has ended, `failed` connections failed to open, and it waits for the
    /// `sign_in` command.
    Opened {
        failed: u64,
    },
    Connected,
    Finished,
    Failed,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    slice: Slice,
    state: WorkerState,
    /// Connections open, from the last progress report or the `opened` report.
    opened: u64,
}

/// The parent's view of all workers during a run.
struct Fleet {
    workers: Vec<Worker>,
    messages: mpsc::UnboundedReceiver<WorkerMessage>,
    /// Whether the workers open every connection before signing in.
    open_first: bool,
    /// Connections opened, summed over the workers' `opened` reports.
    opened: u64,
    /// The earliest start and the latest end of the workers' open phases, in microseconds since
    /// the Unix epoch; `None` once a report lacked them.
    open_window: Option<(u64, u64)>,
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
    let commands = slices.iter().map(|slice| {
        let mut command = Command::new(&exe);
        command
            .args(worker_flags(
                &args.run,
                *slice,
                sources,
                concurrency,
                args.open_first,
            ))
            .env("IM_BENCH_PASSWORD", &args.run.conn.password);
        (command, *slice)
    });
    run_fleet(commands, args, engine).await
}

/// Starts a worker process for each command and runs the phases of `args` with them: with
/// `args.open_first` the open phase and the sign-in phase, otherwise one connect phase, and
/// then the hold.
async fn run_fleet(
    commands: impl IntoIterator<Item = (Command, Slice)>,
    args: &SigninArgs,
    engine: &EngineWatch,
) -> Result<Report, WorkersError> {
    let mut memory = EngineMemory {
        processes: engine.processes(),
        before: engine.sample(),
        during: None,
    };

    let started = Instant::now();
    let mut fleet = Fleet::start(commands, args.open_first)?;
    let phase_limit = Duration::from_secs(args.run.conn.connect_timeout_secs) + REPORT_ALLOWANCE;
    let mut opened = None;
    let mut sign_in_started = started;
    if args.open_first {
        fleet
            .wait_reports("opened", started + phase_limit, args.connections, started)
            .await;
        // The open phase runs from the first worker's first open to the last worker's end, so
        // it leaves out the start of the worker processes and their token cache loads. Without
        // a time from every worker, it counts from the start of the processes.
        let open_elapsed = match fleet.open_window {
            Some((start, end)) if end >= start => Duration::from_micros(end - start),
            _ => started.elapsed(),
        };
        opened = Some((fleet.opened, open_elapsed));
        sign_in_started = Instant::now();
        fleet.start_sign_in().await;
    }
    fleet
        .wait_reports(
            "connected",
            sign_in_started + phase_limit,
            args.connections,
            started,
        )
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
        opened,
        signin_latency: fleet.connect.latency,
        signin_errors: fleet.connect.errors,
        hold: fleet.hold,
        engine: memory,
    })
}

impl Fleet {
    /// Starts one worker process for each command and its slice, with piped stdin and
    /// stdout.
    fn start(
        commands: impl IntoIterator<Item = (Command, Slice)>,
        open_first: bool,
    ) -> Result<Fleet, WorkersError> {
        let (tx, messages) = mpsc::unbounded_channel();
        let mut workers = Vec::new();
        for (index, (mut command, slice)) in commands.into_iter().enumerate() {
            end_with_parent(&mut command);
            let mut child = command
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
                slice,
                state: WorkerState::Connecting {
                    done: 0,
                    signed_in: 0,
                },
                opened: 0,
            });
        }
        Ok(Fleet {
            workers,
            messages,
            open_first,
            opened: 0,
            open_window: Some((u64::MAX, 0)),
            connect: MergedConnect::default(),
            hold: HoldFigures::default(),
        })
    }

    /// Waits until no worker is still in a connect phase: each has sent its `report`
    /// (`opened` or `connected`) or failed. Prints merged progress every second, timed from
    /// `started`. Workers still connecting at `deadline` count as failed.
    async fn wait_reports(
        &mut self,
        report: &str,
        deadline: Instant,
        total: u64,
        started: Instant,
    ) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        while self.any(|state| matches!(state, WorkerState::Connecting { .. })) {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Some(message) => self.handle(message),
                    None => break,
                },
                _ = ticker.tick() => {
                    let progress = self.connect_progress();
                    eprintln!("{}", signin::progress_line(&progress, total, started.elapsed()));
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        for index in 0..self.workers.len() {
            if matches!(self.workers[index].state, WorkerState::Connecting { .. }) {
                eprintln!("worker {index}: no {report} report by the deadline");
                self.fail(index, "worker_no_report");
            }
        }
        let progress = self.connect_progress();
        eprintln!(
            "{}",
            signin::progress_line(&progress, total, started.elapsed())
        );
    }

    /// Sends the sign-in command to every worker whose open phase has ended, one right after
    /// the other.
    async fn start_sign_in(&mut self) {
        for index in 0..self.workers.len() {
            let WorkerState::Opened { failed } = self.workers[index].state else {
                continue;
            };
            if self.send(index, SIGN_IN_COMMAND).await {
                self.workers[index].state = WorkerState::Connecting {
                    done: failed,
                    signed_in: 0,
                };
            }
        }
    }

    /// Sends the hold command to every connected worker.
    async fn start_hold(&mut self) {
        for index in 0..self.workers.len() {
            if self.workers[index].state == WorkerState::Connected {
                self.send(index, HOLD_COMMAND).await;
            }
        }
    }

    /// Writes `command` as one line to worker `index`. Returns false, and marks the worker
    /// failed, when that fails.
    async fn send(&mut self, index: usize, command: &str) -> bool {
        let line = format!("{command}\n");
        let sent = match self.workers[index].stdin.as_mut() {
            Some(stdin) => stdin.write_all(line.as_bytes()).await.is_ok(),
            None => false,
        };
        if !sent {
            eprintln!("worker {index}: sending the {command} command failed");
            self.fail(index, "worker_failed");
        }
        sent
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
        let worker = &mut self.workers[index];
        if matches!(worker.state, WorkerState::Finished | WorkerState::Failed) {
            // A failed worker's slice counts as errors already, so its late reports are
            // not merged.
            return;
        }
        let absorbed = match event {
            WorkerEvent::Progress {
                done,
                signed_in,
                opened,
            } => {
                worker.state = WorkerState::Connecting { done, signed_in };
                worker.opened = opened.unwrap_or(worker.opened);
                Ok(())
            }
            WorkerEvent::Opened {
                opened,
                failed,
                started_us,
                ended_us,
                ..
            } => {
                worker.state = WorkerState::Opened { failed };
                worker.opened = opened;
                self.opened += opened;
                self.open_window = match self.open_window {
                    Some((start, end)) if started_us > 0 && ended_us >= started_us => {
                        Some((start.min(started_us), end.max(ended_us)))
                    }
                    _ => None,
                };
                Ok(())
            }
            WorkerEvent::Connected {
                attempted,
                signed_in,
                signin_histogram,
                errors,
                first_errors,
            } => {
                worker.state = WorkerState::Connected;
                let errors = ErrorCounts(errors, first_errors);
                self.connect
                    .absorb(attempted, signed_in, &signin_histogram, &errors)
            }
            WorkerEvent::Finished {
                heartbeat_histogram,
                heartbeats_after_hold,
                errors,
                first_errors,
            } => {
                worker.state = WorkerState::Finished;
                worker_protocol::absorb_finished(
                    &mut self.hold,
                    &heartbeat_histogram,
                    heartbeats_after_hold,
                    &ErrorCounts(errors, first_errors),
                )
            }
        };
        if let Err(error) = absorbed {
            eprintln!("worker {index}: unreadable report: {error}");
            self.fail(index, "worker_report_invalid");
        }
    }

    /// Marks worker `index` failed. A worker that fails before its `connected` report counts
    /// each connection of its slice as an error of `kind`; later it counts once.
    fn fail(&mut self, index: usize, kind: &str) {
        let worker = &mut self.workers[index];
        match worker.state {
            WorkerState::Connecting { .. } | WorkerState::Opened { .. } => {
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

    /// Sums progress: reports of connecting workers, the failures to open of workers waiting
    /// to sign in, and the full slices of the others.
    fn connect_progress(&self) -> ConnectProgress {
        let mut progress = ConnectProgress {
            done: 0,
            signed_in: self.connect.signed_in,
            opened: None,
        };
        for worker in &self.workers {
            match worker.state {
                WorkerState::Connecting { done, signed_in } => {
                    progress.done += done;
                    progress.signed_in += signed_in;
                }
                WorkerState::Opened { failed } => progress.done += failed,
                _ => progress.done += worker.slice.count,
            }
        }
        if self.open_first {
            progress.opened = Some(self.workers.iter().map(|worker| worker.opened).sum());
        }
        progress
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
    use std::path::{Path, PathBuf};

    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;
    use crate::phases::ConnectFigures;
    use crate::stats::{self, ErrorCounts};

    /// A stand-in for a worker process with --open-first: it prints the reports given in its
    /// environment and reads the parent's commands. It creates its file MARK before it
    /// reports `opened`, and on `sign_in` exits with status 5 unless every file of ALL_MARKS
    /// exists, so that a sign-in command sent before every worker opened fails the run.
    const FAKE_WORKER: &str = r#"
if [ -n "$OPEN_DELAY" ]; then sleep "$OPEN_DELAY"; fi
touch "$MARK"
printf '%s\n' "$OPENED"
read -r command || exit 3
[ "$command" = sign_in ] || exit 4
for mark in $ALL_MARKS; do
    [ -e "$mark" ] || { echo "sign_in before $mark existed" >&2; exit 5; }
done
printf '%s\n' "$CONNECTED"
read -r command || exit 6
[ "$command" = hold ] || exit 7
printf '%s\n' "$FINISHED"
"#;

    /// Creates a fresh directory for the fake workers' files.
    fn scratch_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("im-bench-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// Builds a fake worker whose whole slice opens and signs in, after `open_delay`, and
    /// reports `open_window` (start and end, Unix microseconds) as its open phase.
    fn fake_worker(
        slice: Slice,
        mark: &Path,
        all_marks: &[PathBuf],
        open_delay: &str,
        open_window: (u64, u64),
    ) -> (Command, Slice) {
        let opened = WorkerEvent::Opened {
            attempted: slice.count,
            opened: slice.count,
            failed: 0,
            started_us: open_window.0,
            ended_us: open_window.1,
        };
        let mut latency = stats::latency_histogram();
        for _ in 0..slice.count {
            stats::record(&mut latency, Duration::from_millis(2));
        }
        let connected = ConnectFigures {
            attempted: slice.count,
            signed_in: slice.count,
            elapsed: Duration::from_secs(1),
            opened: None,
            latency,
            errors: ErrorCounts::default(),
        };
        let mut hold = HoldFigures::default();
        stats::record(&mut hold.heartbeat_rtt, Duration::from_micros(300));
        let all_marks: Vec<String> = all_marks
            .iter()
            .map(|mark| mark.display().to_string())
            .collect();

        let mut command = Command::new("sh");
        command
            .args(["-c", FAKE_WORKER])
            .env("OPEN_DELAY", open_delay)
            .env("MARK", mark)
            .env("ALL_MARKS", all_marks.join(" "))
            .env("OPENED", opened.to_line())
            .env(
                "CONNECTED",
                WorkerEvent::connected(&connected)
                    .expect("encode")
                    .to_line(),
            )
            .env(
                "FINISHED",
                WorkerEvent::finished(&hold).expect("encode").to_line(),
            );
        (command, slice)
    }

    fn signin_args(flags: &[&str]) -> SigninArgs {
        let argv = ["im-bench", "signin"].iter().chain(flags);
        let cli = Cli::try_parse_from(argv).expect("parse");
        let Some(crate::cli::Command::Signin(args)) = cli.command else {
            panic!("signin expected");
        };
        args
    }

    #[tokio::test]
    async fn open_first_signs_in_after_last_open() {
        let dir = scratch_dir("open-first");
        let marks = [dir.join("worker-0"), dir.join("worker-1")];
        let slices = split(5, 2);
        // Worker 1 opens half a second after worker 0, so a sign-in command sent to worker 0
        // at its own report would find worker 1's mark missing. Their open phases overlap
        // and span 300 ms from the first start to the last end.
        let t0 = 1_800_000_000_000_000;
        let commands = vec![
            fake_worker(slices[0], &marks[0], &marks, "", (t0, t0 + 100_000)),
            fake_worker(
                slices[1],
                &marks[1],
                &marks,
                "0.5",
                (t0 + 50_000, t0 + 300_000),
            ),
        ];
        let args = signin_args(&[
            "--open-first",
            "--workers",
            "2",
            "--connections",
            "5",
            "--hold-secs",
            "0",
            "--connect-timeout-secs",
            "5",
            "--url",
            "ws://127.0.0.1:9/ws",
        ]);
        let engine = EngineWatch::find(&[], &args.run.conn.url);

        let report = run_fleet(commands, &args, &engine).await.expect("run");
        std::fs::remove_dir_all(&dir).expect("remove scratch dir");

        assert!(
            report.signin_errors.0.is_empty(),
            "{:?}",
            report.signin_errors
        );
        assert!(report.hold.errors.0.is_empty(), "{:?}", report.hold.errors);
        assert_eq!(report.signed_in, 5);
        assert_eq!(report.signin_latency.len(), 5);
        let (opened, open_elapsed) = report.opened.expect("open phase figures");
        assert_eq!(opened, 5);
        // The workers' own window, not the half second the parent waited for worker 1.
        assert_eq!(open_elapsed, Duration::from_millis(300));
        assert!(report.connect_elapsed >= Duration::from_millis(500));
        assert_eq!(report.hold.heartbeat_rtt.len(), 2);
    }

    #[tokio::test]
    async fn silent_worker_fails_open_phase() {
        let dir = scratch_dir("silent-worker");
        let mark = dir.join("worker-0");
        let slices = split(7, 2);
        let mut silent = Command::new("sh");
        silent.args(["-c", "exec sleep 30"]);
        let commands = vec![
            fake_worker(slices[0], &mark, std::slice::from_ref(&mark), "", (0, 0)),
            (silent, slices[1]),
        ];
        let mut fleet = Fleet::start(commands, true).expect("start");

        let started = Instant::now();
        fleet
            .wait_reports("opened", started + Duration::from_secs(2), 7, started)
            .await;
        let open_elapsed = started.elapsed();
        fleet.start_sign_in().await;
        fleet
            .wait_reports(
                "connected",
                Instant::now() + Duration::from_secs(5),
                7,
                started,
            )
            .await;
        std::fs::remove_dir_all(&dir).expect("remove scratch dir");

        assert!(open_elapsed >= Duration::from_secs(2), "{open_elapsed:?}");
        assert_eq!(fleet.opened, 4);
        assert_eq!(fleet.workers[0].state, WorkerState::Connected);
        assert_eq!(fleet.workers[1].state, WorkerState::Failed);
        assert_eq!(fleet.connect.attempted, 7);
        assert_eq!(fleet.connect.signed_in, 4);
        assert_eq!(fleet.connect.errors.0["worker_no_report"], 3);
        assert_eq!(fleet.connect.errors.total(), 3);
    }

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
        argv.extend(worker_flags(&cli.signin.run, slice, 2, 128, true));
        let worker = Cli::try_parse_from(argv).expect("parse worker flags");

        let Some(crate::cli::Command::SigninWorker(args)) = worker.command else {
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
        assert!(args.open_first);
    }

    /// Reads the state letter of process `pid`, `None` once it is gone.
    fn process_state(pid: u32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_name = stat.rsplit(')').next()?;
        after_name.split_whitespace().next().map(str::to_owned)
    }

    #[test]
    fn worker_ends_with_starting_thread() {
        let pid = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut command = Command::new("sleep");
                command.arg("30");
                end_with_parent(&mut command);
                // Without kill_on_drop, only the kernel's signal ends it.
                let child = command.spawn().expect("spawn sleep");
                child.id().expect("pid")
            })
        })
        .join()
        .expect("starting thread");

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(process_state(pid).as_deref(), None | Some("Z")) {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still runs after the thread that started it ended"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
