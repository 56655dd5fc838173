//! Shell functions of scripts/lib and scripts/run that need no running service, apart from an
//! engine that runs alone to show its start-up line.

mod procs;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A directory under the system's temporary directory, named after the test and this process,
/// that is removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("im-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temporary directory");
        Self(path.canonicalize().expect("canonical temporary directory"))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies scripts/run and scripts/lib into `root`. A run of the copy takes its lock and reads its
/// record of started processes in `root`/.data, not in this checkout's .data, where a
/// developer's scripts/run may hold them.
fn copy_scripts(root: &Path) -> PathBuf {
    let lib = root.join("scripts/lib");
    std::fs::create_dir_all(&lib).expect("scripts/lib copy");
    for entry in std::fs::read_dir(repo_file("scripts/lib")).expect("scripts/lib") {
        let entry = entry.expect("scripts/lib entry");
        std::fs::copy(entry.path(), lib.join(entry.file_name())).expect("library copy");
    }
    let run = root.join("scripts/run");
    std::fs::copy(repo_file("scripts/run"), &run).expect("scripts/run copy");
    run
}

/// Makes a cluster directory `im-pg-<name>` under `root` that names `owner` as its data
/// directory, or names none when `owner` is `None`.
fn cluster_dir(root: &Path, name: &str, owner: Option<&str>) -> PathBuf {
    let dir = root.join(format!("im-pg-{name}"));
    std::fs::create_dir_all(dir.join("pg")).expect("cluster directory");
    if let Some(owner) = owner {
        std::fs::write(dir.join("data-dir"), format!("{owner}\n")).expect("data-dir file");
    }
    dir
}

#[test]
fn sweep_removes_only_clusters_of_deleted_checkouts() {
    let root = std::env::temp_dir().join(format!("im-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let living = root.join("living-checkout");
    std::fs::create_dir_all(&living).expect("living data directory");
    let deleted = root.join("deleted-checkout");
    let deleted = deleted.to_str().expect("UTF-8 path");

    let orphan = cluster_dir(&root, "orphan", Some(deleted));
    let starting = cluster_dir(&root, "starting", Some(deleted));
    let served = cluster_dir(&root, "served", Some(living.to_str().expect("UTF-8 path")));
    let unnamed = cluster_dir(&root, "unnamed", None);
    let relative = cluster_dir(&root, "relative", Some("deleted-checkout"));
    let running = cluster_dir(&root, "running", Some(deleted));
    std::fs::write(running.join("pg/postmaster.pid"), "4242\n").expect("pid file");

    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && _im_sweep_orphan_pg_dirs "$2""#)
        .arg("sweep")
        .arg(repo_file("scripts/lib/services.sh"))
        .arg(&starting)
        .env("IM_PG_SHARED_ROOT", &root)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(
        !orphan.exists(),
        "the cluster of a deleted checkout is removed"
    );
    assert!(stderr.contains("im-pg-orphan"), "{stderr}");
    assert!(starting.exists(), "the cluster being started stays");
    assert!(served.exists(), "a cluster whose checkout exists stays");
    assert!(unnamed.exists(), "a cluster that names no checkout stays");
    assert!(
        relative.exists(),
        "a relative name proves nothing and stays"
    );
    assert!(running.exists(), "a cluster with a server pid file stays");
    std::fs::remove_dir_all(&root).expect("clean up");
}

/// Waits up to 5 s until a script has written the pid of its child to `pid_file`, and returns
/// that child, which runs `cmdline`.
fn child_from_pid_file(pid_file: &Path, cmdline: &'static str) -> Orphan {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(pid_file).unwrap_or_default();
        if let Ok(pid) = text.trim().parse() {
            return Orphan { pid, cmdline };
        }
        assert!(
            Instant::now() < deadline,
            "no child pid in {}",
            pid_file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A SIGTERM while a script waits for a long command, such as the release build, stops the
/// command and its children, as cargo's rustc processes, and runs the script's trap at once
/// instead of after the command ends.
#[test]
fn sigterm_stops_a_long_command_at_once() {
    let dir = TempDir::new("long-command");
    let child_pid_file = dir.path().join("child.pid");
    let script = r#"
source "$1"
on_term() {
    im_stop_foreground build 5
    exit 0
}
trap on_term TERM
im_run bash -c 'sleep 61 & echo $! >"$1"; wait' command "$2"
echo "not interrupted"
"#;
    let child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("run")
        .arg(repo_file("scripts/lib/processes.sh"))
        .arg(&child_pid_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let grandchild = child_from_pid_file(&child_pid_file, "sleep\x0061\x00");
    assert!(grandchild.wait_running(), "the command's child runs sleep");
    let started = Instant::now();
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().expect("bash exits");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the trap waited {:?} for the command",
        started.elapsed()
    );
    assert!(stderr.contains("[build] stopped"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("not interrupted"));
    assert!(
        !grandchild.is_running(),
        "the command's child outlived the stop"
    );
}

/// `scripts/run` rejects an argument it does not know, before it builds or locks anything.
#[test]
fn run_rejects_unknown_argument() {
    let dir = TempDir::new("run-argument");
    let run = copy_scripts(dir.path());

    let output = Command::new("bash")
        .arg(&run)
        .arg("--bogus")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown argument '--bogus'"), "{stderr}");
    assert!(
        !dir.path().join(".data").exists(),
        "the run went on: {stderr}"
    );
}

/// Runs `im_stop_run LOCK 10` in a new bash.
fn stop_run(lock: &Path) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && im_stop_run "$2" 10"#)
        .arg("stop")
        .arg(repo_file("scripts/lib/checkout.sh"))
        .arg(lock)
        .output()
        .expect("bash runs")
}

/// `scripts/run --stop` stops the run that holds the lock and returns once the lock is free.
#[test]
fn stop_run_stops_lock_holder() {
    let dir = TempDir::new("stop-run");
    let lock = dir.path().join("run.pid");
    let mut holder = LockHolder::start(&lock, "trap 'exit 0' TERM");

    let output = stop_run(&lock);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("scripts/run (pid {}) stopped", holder.pid())),
        "{stderr}"
    );
    let status = holder.child.try_wait().expect("holder's status");
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    assert!(lock_once(&lock).status.success(), "the lock is free");
}

/// The pid that a killed run left in the lock file belongs to no run, and may belong to another
/// program by now, so `scripts/run --stop` signals nothing.
#[test]
fn stop_run_ignores_stale_pid() {
    let dir = TempDir::new("stop-stale");
    let lock = dir.path().join("run.pid");
    let other = Reaped::spawn(Command::new("/bin/sleep").arg("20"));
    std::fs::write(&lock, format!("{}\n", other.pid)).expect("lock file");

    let output = stop_run(&lock);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("no scripts/run is running"), "{stderr}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(other.exit_status().is_none(), "the stale pid was signalled");
}

/// A symbolic link in place of the lock file is rejected, and its target keeps its contents.
#[test]
fn lock_rejects_symbolic_link() {
    let dir = TempDir::new("lock-symlink");
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").expect("target file");
    let lock = dir.path().join("run.pid");
    std::os::unix::fs::symlink(&target, &lock).expect("symlink");

    let output = lock_once(&lock);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("target file"),
        "keep me\n"
    );
}

/// `scripts/run` stops before it starts anything when a port it needs is taken, naming the
/// variable that moves it; the metrics ports count too. A copy of the scripts runs, so that the
/// test neither fails on nor stops anything of a scripts/run in this checkout.
#[test]
fn run_refuses_a_taken_metrics_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let free = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let root = TempDir::new("run-ports");
    let run = copy_scripts(root.path());
    let output = Command::new("timeout")
        .arg("60")
        .arg("bash")
        .arg(run)
        .env("IM_DATA_DIR", root.path().join("data"))
        .env("IM_LOGIC_LISTEN_ADDR", free())
        .env("IM_ENGINE_WS_ADDR", free())
        .env("IM_ENGINE_GRPC_ADDR", free())
        .env("IM_LOGIC_WEB_ADDR", "")
        .env("IM_ENGINE_METRICS_ADDR", free())
        .env("IM_LOGIC_METRICS_ADDR", &taken_addr)
        .output()
        .expect("scripts/run runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(!output.status.success(), "{text}");
    assert_eq!(output.status.code(), Some(1), "exits at the check: {text}");
    assert!(
        text.contains(&format!("{taken_addr} is already in use")),
        "{text}"
    );
    assert!(text.contains("IM_LOGIC_METRICS_ADDR"), "{text}");
    assert!(
        !text.contains("starting PostgreSQL"),
        "starts nothing: {text}"
    );
}

/// The web build is skipped while dist/ is newer than every source, and runs again once a
/// source or a .proto file changes.
#[test]
fn web_build_skipped_while_up_to_date() {
    let root = std::env::temp_dir().join(format!("im-web-built-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let script = r#"
set -e
root=$2
mkdir -p "$root/web/src/gen" "$root/web/dist" "$root/proto"
for f in web/src/main.ts web/src/gen/x.ts web/index.html web/package.json \
    web/package-lock.json web/vite.config.ts web/tsconfig.json web/buf.gen.yaml \
    proto/packet.proto; do
    touch -d '2026-01-01 00:00' "$root/$f"
done
touch -d '2026-01-02 00:00' "$root/web/dist/index.html"
IM_WEB_DIR=$root/web
source "$1"
_im_web_built && echo "fresh: built"
touch -d '2026-01-03 00:00' "$root/web/src/gen/x.ts"
_im_web_built && echo "generated code ignored: built"
touch -d '2026-01-03 00:00' "$root/proto/packet.proto"
_im_web_built || echo "proto changed: stale"
touch -d '2026-01-04 00:00' "$root/web/dist/index.html"
touch -d '2026-01-05 00:00' "$root/web/src/main.ts"
_im_web_built || echo "source changed: stale"
"#;
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("web")
        .arg(repo_file("scripts/lib/web.sh"))
        .arg(&root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::remove_dir_all(&root);

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout,
        "fresh: built\ngenerated code ignored: built\nproto changed: stale\nsource changed: stale\n"
    );
}

/// Runs `im_lock_checkout LOCK` in a new bash, which prints its pid once it holds the lock and
/// then exits, releasing it.
fn lock_once(lock: &Path) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && im_lock_checkout "$2" && echo "$$""#)
        .arg("lock")
        .arg(repo_file("scripts/lib/checkout.sh"))
        .arg(lock)
        .output()
        .expect("bash runs")
}

/// A bash that took the lock of `im_lock_checkout` on a file and waits until its stdin closes,
/// as scripts/run waits for its processes. It is killed with SIGKILL when dropped.
struct LockHolder {
    child: Child,
    /// Pid of the process that the holder started with `im_start_process`, if any.
    started_pid: Option<i32>,
}

impl LockHolder {
    /// Takes the lock on `lock`, then runs the bash command `then`, which may start a process
    /// with `im_start_process` of scripts/lib/processes.sh.
    fn start(lock: &Path, then: &str) -> Self {
        let script = r#"
source "$1"
source "$2"
im_lock_checkout "$3" || exit 3
eval "$4"
echo "locked ${IM_STARTED_PID:-}"
read -r _
"#;
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("holder")
            .arg(repo_file("scripts/lib/checkout.sh"))
            .arg(repo_file("scripts/lib/processes.sh"))
            .arg(lock)
            .arg(then)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash runs");
        let mut holder = Self {
            child,
            started_pid: None,
        };

        let stdout = holder.child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("holder's stdout");
        let Some(started) = line.trim_end().strip_prefix("locked") else {
            holder.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = holder.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("the holder did not take the lock: {stderr}");
        };
        holder.started_pid = started.trim().parse().ok();
        holder
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// Kills the holder with SIGKILL and waits until it has exited.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process that this test cannot wait for because another process started it, such as one
/// that a killed lock holder left running. It is killed with SIGKILL when dropped, unless its
/// pid shows another command line by then.
struct Orphan {
    pid: i32,
    cmdline: &'static str,
}

impl Orphan {
    /// Returns whether the process runs `cmdline` (arguments joined by NUL bytes). A zombie has
    /// an empty command line, so it does not count.
    fn is_running(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|cmdline| cmdline == self.cmdline.as_bytes())
    }

    /// Waits up to 5 s until the process runs `cmdline`, after its parent forked it.
    fn wait_running(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Kills the process with SIGKILL and waits up to 5 s until it has exited.
    fn kill(&self) {
        if !self.is_running() {
            return;
        }
        // SAFETY: kill(2) with a valid signal number; the pid runs the expected command line.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bash command that makes a lock holder start a long-lived child as scripts/run starts
/// im-logic and im-engine, and the child's command line.
const START_SLEEPER: &str = "im_start_process sleeper /dev/null /bin/sleep 20";
const SLEEPER_CMDLINE: &str = "/bin/sleep\x0020\x00";

/// Starts a lock holder that runs `start`, which starts a sleeping child, then kills the holder
/// with SIGKILL and returns the child, still running.
fn kill_holder_of_sleeper(lock: &Path, start: &str) -> Orphan {
    let mut holder = LockHolder::start(lock, start);
    let sleeper = Orphan {
        pid: holder
            .started_pid
            .expect("the holder printed its child's pid"),
        cmdline: SLEEPER_CMDLINE,
    };
    // Until the child has run exec, a forked copy of the holder's descriptors is still open.
    assert!(sleeper.wait_running(), "the holder's child runs sleep");
    holder.kill();
    assert!(sleeper.is_running(), "the child outlives the holder");
    sleeper
}

/// While a run holds the lock, a second `im_lock_checkout` fails at once, names the pid of
/// the run that holds it, and leaves that pid in the lock file.
#[test]
fn lock_held_rejects_second_locker() {
    let dir = TempDir::new("lock-held");
    let lock = dir.path().join("run.pid");
    let holder = LockHolder::start(&lock, "");
    let lock_contents = std::fs::read_to_string(&lock).expect("lock file");
    assert_eq!(
        lock_contents,
        format!("{}\n", holder.pid()),
        "the holder writes its pid"
    );

    let output = lock_once(&lock);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "already running in this checkout (pid {})",
            holder.pid()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("kill {}", holder.pid())),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/run --stop"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "the second locker went on after im_lock_checkout"
    );
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        lock_contents,
        "the lock file keeps the holder's pid"
    );
}

/// The kernel releases the lock of a run killed with SIGKILL, so the next run takes it at once.
#[test]
fn lock_released_when_holder_killed() {
    let dir = TempDir::new("lock-killed");
    let lock = dir.path().join("run.pid");
    let mut holder = LockHolder::start(&lock, "");
    holder.kill();

    let output = lock_once(&lock);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    let locker = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file").trim(),
        locker,
        "the new locker writes its pid"
    );
}

/// A process that a run started with `9>&-`, as scripts/run starts im-logic and im-engine,
/// does not keep the lock once the run is killed.
#[test]
fn lock_free_after_child_closed_fd() {
    let dir = TempDir::new("lock-closed");
    let lock = dir.path().join("run.pid");
    let sleeper = kill_holder_of_sleeper(&lock, &format!("{START_SLEEPER} 9>&-"));

    let output = lock_once(&lock);

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(sleeper.is_running(), "the child still runs");
}

/// A process started without `9>&-` inherits the lock's descriptor and keeps the lock after the
/// run is killed, until it exits itself. This is what `9>&-` prevents.
#[test]
fn lock_kept_by_child_inheriting_fd() {
    let dir = TempDir::new("lock-inherited");
    let lock = dir.path().join("run.pid");
    let sleeper = kill_holder_of_sleeper(&lock, START_SLEEPER);

    let output = lock_once(&lock);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the child keeps the lock: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    sleeper.kill();
    let output = lock_once(&lock);
    assert!(
        output.status.success(),
        "the lock is free once the child exits: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `im_note_started` appends one "NAME PID KEY" line per process, and records nothing without a
/// pid or without a record file.
#[test]
fn note_started_appends_records() {
    let dir = TempDir::new("note-started");
    let file = dir.path().join("run.pids");
    let script = r#"
source "$1"
im_note_started engine 11 /nowhere/im-engine
IM_STARTED_PIDS_FILE=$2
im_note_started logic 12 "/a path/im-logic"
im_note_started redis "" /nowhere/redis
im_note_started postgres 14 /nowhere/pg
"#;
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("note")
        .arg(repo_file("scripts/lib/checkout.sh"))
        .arg(&file)
        .output()
        .expect("bash runs");

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("record file"),
        "logic 12 /a path/im-logic\npostgres 14 /nowhere/pg\n"
    );
}

/// A child process that a thread reaps as soon as it exits, as init reaps the processes of a
/// killed run, so that `kill -0` stops finding it. It is killed with SIGKILL when dropped.
struct Reaped {
    child: Arc<Mutex<Child>>,
    pid: i32,
}

impl Reaped {
    fn spawn(command: &mut Command) -> Self {
        let child = spawn_copied_executable(command);
        let pid = i32::try_from(child.id()).expect("pid fits");
        let child = Arc::new(Mutex::new(child));
        let reaper = Arc::clone(&child);
        std::thread::spawn(move || loop {
            let status = reaper
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_wait();
            if !matches!(status, Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        });
        Self { child, pid }
    }

    /// Returns the exit status once the process has exited, or `None` while it runs.
    fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.try_wait().ok().flatten()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `command`, whose executable is a copy that this test has just written. The spawn is
/// retried while the copy is busy (ETXTBSY), because a child that another test thread forked
/// during the copy keeps the written file open until that child runs exec.
fn spawn_copied_executable(command: &mut Command) -> Child {
    let command = command.stdout(Stdio::null()).stderr(Stdio::null());
    for _ in 0..100 {
        match command.spawn() {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result.expect("process starts"),
        }
    }
    panic!("the executable stayed busy for 2 s");
}

/// Copies the executable `from` to `to`, keeping its permissions.
fn copy_executable(from: &str, to: &Path) -> PathBuf {
    std::fs::copy(from, to).expect("executable copy");
    to.to_owned()
}

/// Builds the command of a stand-in for the PostgreSQL server: a copy of bash named `postgres`,
/// whose command line contains `-D DATA` as the server's does. It waits for its stdin for up to
/// 20 s.
fn postgres_command(exe: &Path, data: &Path) -> Command {
    let mut command = Command::new(exe);
    command
        .args(["-c", "read -r -t 20 _", "postgres", "-D"])
        .arg(data)
        .stdin(Stdio::piped());
    command
}

/// Records each (NAME, PID, KEY) with `im_note_started` in `file`, then runs
/// `im_stop_leftovers`, in a bash that is stopped after 10 s.
fn stop_leftovers(file: &Path, records: &[(&str, i32, &Path)]) -> Output {
    let script = r#"
source "$1"
IM_STARTED_PIDS_FILE=$2
shift 2
while (($# >= 3)); do
    im_note_started "$1" "$2" "$3"
    shift 3
done
im_stop_leftovers
"#;
    let mut command = Command::new("timeout");
    command
        .arg("10")
        .arg("bash")
        .arg("-c")
        .arg(script)
        .arg("leftovers")
        .arg(repo_file("scripts/lib/checkout.sh"))
        .arg(file);
    for (name, pid, key) in records {
        command.arg(name).arg(pid.to_string()).arg(key);
    }
    command.output().expect("bash runs")
}

/// `im_stop_leftovers` stops each recorded process that still runs the recorded program, in
/// the order engine, Redis, PostgreSQL, and empties the record. It leaves alone a process whose
/// pid the record names under a key that does not match it, as after the kernel gave the pid
/// of a stopped process to another program.
#[test]
fn stop_leftovers_stops_only_recorded_programs() {
    let dir = TempDir::new("leftovers");
    let root = dir.path();
    let engine_exe = copy_executable("/bin/sleep", &root.join("im-engine"));
    let redis_exe = copy_executable("/bin/sleep", &root.join("redis-server"));
    let postgres_exe = copy_executable("/bin/bash", &root.join("postgres"));
    let redis_dir = root.join("redis");
    std::fs::create_dir(&redis_dir).expect("Redis directory");
    let pg_data = root.join("pg");
    let file = root.join("run.pids");

    let engine = Reaped::spawn(Command::new(&engine_exe).arg("20"));
    let redis = Reaped::spawn(Command::new(&redis_exe).arg("20").current_dir(&redis_dir));
    let postgres = Reaped::spawn(&mut postgres_command(&postgres_exe, &pg_data));
    // The same programs under other keys: another sleep, a Redis in another directory and a
    // PostgreSQL of another data directory.
    let other = Reaped::spawn(Command::new("/bin/sleep").arg("20"));
    let other_redis = Reaped::spawn(Command::new(&redis_exe).arg("20").current_dir(root));
    let other_postgres =
        Reaped::spawn(&mut postgres_command(&postgres_exe, &root.join("other-pg")));

    // The mismatched records come last, so that a key check that wrongly passed would put
    // their pids in place of the matching ones.
    let output = stop_leftovers(
        &file,
        &[
            ("engine", engine.pid, &engine_exe),
            ("redis", redis.pid, &redis_dir),
            ("postgres", postgres.pid, &pg_data),
            ("engine", other.pid, &engine_exe),
            ("logic", other.pid, &root.join("im-logic")),
            ("redis", other_redis.pid, &redis_dir),
            ("postgres", other_postgres.pid, &pg_data),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    let signal = |process: &Reaped| process.exit_status().and_then(|status| status.signal());
    assert_eq!(signal(&engine), Some(libc::SIGTERM), "{stderr}");
    assert_eq!(signal(&redis), Some(libc::SIGTERM), "{stderr}");
    assert_eq!(signal(&postgres), Some(libc::SIGINT), "{stderr}");
    assert!(other.exit_status().is_none(), "{stderr}");
    assert!(other_redis.exit_status().is_none(), "{stderr}");
    assert!(other_postgres.exit_status().is_none(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("record file"),
        "",
        "the record is emptied"
    );

    let position = |text: &str| {
        stderr
            .find(text)
            .unwrap_or_else(|| panic!("{text:?} missing: {stderr}"))
    };
    let engine_stop = position(&format!("stopping im-engine (pid {})", engine.pid));
    let redis_stop = position(&format!("stopping Redis (pid {})", redis.pid));
    let postgres_stop = position(&format!(
        "stopping PostgreSQL in {} (pid {})",
        pg_data.display(),
        postgres.pid
    ));
    assert!(engine_stop < redis_stop, "{stderr}");
    assert!(redis_stop < postgres_stop, "{stderr}");
}

/// A leftover that exited but that its parent has not reaped yet, as under an init that never
/// reaps orphans, counts as stopped, because it has closed its ports and files.
#[test]
fn stop_leftovers_counts_zombie_as_stopped() {
    let dir = TempDir::new("leftover-zombie");
    let engine_exe = copy_executable("/bin/sleep", &dir.path().join("im-engine"));
    let file = dir.path().join("run.pids");
    // Not reaped until the wait below, so it is a zombie once it exits.
    let mut engine = spawn_copied_executable(Command::new(&engine_exe).arg("20"));
    let pid = i32::try_from(engine.id()).expect("pid fits");

    let started = Instant::now();
    let output = stop_leftovers(&file, &[("engine", pid, &engine_exe)]);
    let elapsed = started.elapsed();
    let _ = engine.kill();
    let status = engine.wait().expect("engine exits");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?}: {stderr}"
    );
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("record file"),
        "",
        "the record is emptied"
    );
}

/// A build that a killed run left running is stopped with its whole process group, in which
/// cargo's rustc processes run, and only when it is cargo in the recorded checkout.
#[test]
fn stop_leftovers_stops_build_group() {
    use std::os::unix::process::CommandExt;

    let dir = TempDir::new("leftover-build");
    let root = dir.path();
    let cargo_exe = copy_executable("/bin/bash", &root.join("cargo"));
    let child_pid_file = root.join("child.pid");
    let file = root.join("run.pids");
    let build = Reaped::spawn(
        Command::new(&cargo_exe)
            .args(["-c", r#"sleep 62 & echo $! >"$1"; wait"#, "cargo"])
            .arg(&child_pid_file)
            .current_dir(root)
            .process_group(0),
    );
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("other checkout");
    let other = Reaped::spawn(
        Command::new(&cargo_exe)
            .args(["-c", "read -r -t 20 _"])
            .stdin(Stdio::piped())
            .current_dir(&elsewhere),
    );
    let rustc = child_from_pid_file(&child_pid_file, "sleep\x0062\x00");
    assert!(rustc.wait_running(), "the build's child runs sleep");

    let output = stop_leftovers(
        &file,
        &[("build", build.pid, root), ("build", other.pid, root)],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        build.exit_status().and_then(|status| status.signal()),
        Some(libc::SIGTERM),
        "{stderr}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while rustc.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!rustc.is_running(), "the build's child outlived the stop");
    assert!(
        other.exit_status().is_none(),
        "cargo of another checkout was stopped: {stderr}"
    );
}

/// Runs `_im_web_locked` of scripts/lib/web.sh over a command that appends `start-NAME` to
/// `log`, sleeps `secs` and appends `end-NAME`.
fn web_locked(web: &Path, log: &Path, name: &str, secs: &str) -> Command {
    let script = r#"
IM_WEB_DIR=$2
source "$1"
_im_web_locked bash -c 'echo "start-$1" >>"$2"; sleep "$3"; echo "end-$1" >>"$2"' step "$3" "$4" "$5"
"#;
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(script)
        .arg("web")
        .arg(repo_file("scripts/lib/web.sh"))
        .arg(web)
        .args([name, &log.to_string_lossy(), secs]);
    command
}

/// Two scripts of one checkout never install or build the web client at once: the second
/// waits, saying so, until the first is done.
#[test]
fn web_lock_serializes_scripts() {
    let dir = TempDir::new("web-lock");
    let web = dir.path().join("web");
    std::fs::create_dir(&web).expect("web directory");
    let log = dir.path().join("steps");
    let mut first = web_locked(&web, &log, "first", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log).is_ok_and(|steps| steps.contains("start-first")) {
        assert!(Instant::now() < deadline, "the first script never started");
        std::thread::sleep(Duration::from_millis(10));
    }

    let second = web_locked(&web, &log, "second", "0")
        .output()
        .expect("bash runs");
    let first_status = first.wait().expect("first script exits");
    let stderr = String::from_utf8_lossy(&second.stderr);

    assert!(first_status.success());
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("waiting for another script"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&log).expect("steps"),
        "start-first\nend-first\nstart-second\nend-second\n"
    );
}

/// A run started through a symbolic link to its checkout records the paths as it was given
/// them, while /proc shows them resolved. The build and im-engine that such a run left running
/// are stopped all the same.
#[test]
fn stop_leftovers_follows_symbolic_links() {
    use std::os::unix::process::CommandExt;

    let dir = TempDir::new("leftover-link");
    let checkout = dir.path().join("checkout");
    std::fs::create_dir(&checkout).expect("checkout directory");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&checkout, &link).expect("symlink");
    let cargo_exe = copy_executable("/bin/bash", &checkout.join("cargo"));
    let engine_exe = copy_executable("/bin/sleep", &checkout.join("im-engine"));
    let build = Reaped::spawn(
        Command::new(&cargo_exe)
            .args(["-c", "read -r -t 20 _"])
            .stdin(Stdio::piped())
            .current_dir(&checkout)
            .process_group(0),
    );
    let engine = Reaped::spawn(Command::new(&engine_exe).arg("20"));

    let output = stop_leftovers(
        &dir.path().join("run.pids"),
        &[
            ("build", build.pid, &link),
            ("engine", engine.pid, &link.join("im-engine")),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        build.exit_status().and_then(|status| status.signal()),
        Some(libc::SIGTERM),
        "the build was not stopped: {stderr}"
    );
    assert_eq!(
        engine.exit_status().and_then(|status| status.signal()),
        Some(libc::SIGTERM),
        "im-engine was not stopped: {stderr}"
    );
}

/// Waits up to 20 s until `path` exists.
fn wait_for_file(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A second SIGTERM while scripts/run stops, as from a second `scripts/run --stop` or from
/// timeout(1), which also signals its own process group, does not end the stop halfway: the run
/// still waits for its build and empties its lock file.
#[test]
fn run_stop_survives_second_sigterm() {
    use std::os::unix::fs::PermissionsExt;

    let root = TempDir::new("run-second-signal");
    let run = copy_scripts(root.path());
    // A cargo that takes 2 s to exit after SIGTERM, so that the second signal arrives while the
    // run waits for it. It runs in the copy's root, as the build does.
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).expect("bin directory");
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        "#!/bin/bash\ntrap 'touch terminated; sleep 2; exit 143' TERM\ntouch started\nsleep 60 &\nwait\n",
    )
    .expect("cargo script");
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let free = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("timeout")
        .arg("60")
        .arg("bash")
        .arg(run)
        .env("PATH", path)
        .env("IM_DATA_DIR", root.path().join("data"))
        .env("IM_LOGIC_LISTEN_ADDR", free())
        .env("IM_ENGINE_WS_ADDR", free())
        .env("IM_ENGINE_GRPC_ADDR", free())
        .env("IM_LOGIC_WEB_ADDR", "")
        .env("IM_ENGINE_METRICS_ADDR", free())
        .env("IM_LOGIC_METRICS_ADDR", free())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/run runs");
    let lock = root.path().join(".data/run.pid");

    assert!(
        wait_for_file(&root.path().join("started")),
        "the build never started"
    );
    let run_pid: i32 = std::fs::read_to_string(&lock)
        .expect("lock file")
        .trim()
        .parse()
        .expect("the run's pid");
    // SAFETY: kill(2) with the pid of the run, which holds the lock, and a valid signal number.
    assert_eq!(unsafe { libc::kill(run_pid, libc::SIGTERM) }, 0);
    assert!(
        wait_for_file(&root.path().join("terminated")),
        "the stop never signalled the build"
    );
    // SAFETY: as above; the run is still waiting for the build to exit.
    assert_eq!(unsafe { libc::kill(run_pid, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().expect("scripts/run exits");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.contains("[build] stopped"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        "",
        "the lock file keeps the pid of a run that has stopped"
    );
}

/// `scripts/run --stop` with no run in the checkout stops the processes that a killed run left
/// running, as the next run would, with a line for each: those that still run the recorded
/// program. It signals neither the stale pid in the lock file nor a process whose pid the record
/// names under another program, and empties both files.
#[test]
fn stop_without_run_stops_leftovers() {
    let root = TempDir::new("stop-leftovers");
    let run = copy_scripts(root.path());
    let data = root.path().join(".data");
    std::fs::create_dir(&data).expect(".data directory");
    let engine_exe = copy_executable("/bin/sleep", &root.path().join("im-engine"));
    let postgres_exe = copy_executable("/bin/bash", &root.path().join("postgres"));
    let pg_data = root.path().join("pg");
    let engine = Reaped::spawn(Command::new(&engine_exe).arg("20"));
    let postgres = Reaped::spawn(&mut postgres_command(&postgres_exe, &pg_data));
    // The pid that the killed run left in the lock file, and a process that the record names
    // as im-logic although it runs another program.
    let stale = Reaped::spawn(Command::new("/bin/sleep").arg("20"));
    let other = Reaped::spawn(Command::new("/bin/sleep").arg("20"));
    let lock = data.join("run.pid");
    let records = data.join("run.pids");
    std::fs::write(&lock, format!("{}\n", stale.pid)).expect("lock file");
    let record_lines = [
        format!("engine {} {}", engine.pid, engine_exe.display()),
        format!(
            "logic {} {}",
            other.pid,
            root.path().join("im-logic").display()
        ),
        format!("postgres {} {}", postgres.pid, pg_data.display()),
    ];
    std::fs::write(&records, record_lines.join("\n") + "\n").expect("record file");

    let output = Command::new("timeout")
        .arg("30")
        .arg("bash")
        .arg(&run)
        .arg("--stop")
        .output()
        .expect("scripts/run runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    let signal = |process: &Reaped| process.exit_status().and_then(|status| status.signal());
    assert_eq!(signal(&engine), Some(libc::SIGTERM), "{stderr}");
    assert_eq!(signal(&postgres), Some(libc::SIGINT), "{stderr}");
    assert!(other.exit_status().is_none(), "{stderr}");
    assert!(stale.exit_status().is_none(), "{stderr}");
    assert!(
        stderr.contains(&format!("stopping im-engine (pid {})", engine.pid)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "stopping PostgreSQL in {} (pid {})",
            pg_data.display(),
            postgres.pid
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopped the 2 processes that a killed scripts/run"),
        "{stderr}"
    );
    assert!(!stderr.contains("no scripts/run is running"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&records).expect("record file"),
        "",
        "the record is emptied"
    );
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        "",
        "the stale pid is dropped"
    );
}

/// `scripts/run --stop` in a checkout that never ran reports that nothing runs and creates
/// nothing.
#[test]
fn stop_in_fresh_checkout_creates_nothing() {
    let root = TempDir::new("stop-fresh");
    let run = copy_scripts(root.path());

    let output = Command::new("bash")
        .arg(&run)
        .arg("--stop")
        .output()
        .expect("scripts/run runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("no scripts/run is running"), "{stderr}");
    assert!(!root.path().join(".data").exists(), "{stderr}");
}

/// Writes a `cargo` into `root`/bin that appends the IM_CONFIG of its environment to
/// `root`/cargo-env and fails, which ends a run of the copied scripts/run at its build. Returns a PATH that finds it
/// first.
fn install_recording_cargo(root: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;

    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("bin directory");
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$IM_CONFIG\" >>'{}'\nexit 1\n",
            root.join("cargo-env").display()
        ),
    )
    .expect("cargo script");
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs the copied scripts/run `run` from the directory `cwd` with IM_CONFIG set to `config`,
/// free ports and the PATH `path`, and stops it after 60 s.
fn run_with_config(run: &Path, cwd: &Path, config: &str, path: &str) -> Output {
    let free = || procs::free_addr().to_string();
    Command::new("timeout")
        .arg("60")
        .arg("bash")
        .arg(run)
        .current_dir(cwd)
        .env("PATH", path)
        .env("IM_CONFIG", config)
        .env("IM_DATA_DIR", cwd.join("data"))
        .env("IM_LOGIC_LISTEN_ADDR", free())
        .env("IM_ENGINE_WS_ADDR", free())
        .env("IM_ENGINE_GRPC_ADDR", free())
        .env("IM_LOGIC_WEB_ADDR", "")
        .env("IM_ENGINE_METRICS_ADDR", free())
        .env("IM_LOGIC_METRICS_ADDR", free())
        .output()
        .expect("scripts/run runs")
}

/// A relative IM_CONFIG names a file in the directory that scripts/run was started from, not
/// in the repository root where the binaries run, so the build and both binaries get its
/// absolute path.
#[test]
fn run_takes_relative_config_from_caller() {
    let root = TempDir::new("run-config");
    let run = copy_scripts(root.path());
    let path = install_recording_cargo(root.path());
    let caller = root.path().join("caller");
    std::fs::create_dir(&caller).expect("caller directory");
    std::fs::write(caller.join("typo.toml"), "[engine]\n").expect("settings file");

    let output = run_with_config(&run, &caller, "typo.toml", &path);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!stderr.contains("not found"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("cargo-env")).expect("the build ran"),
        format!("{}\n", caller.join("typo.toml").display()),
        "{stderr}"
    );
}

/// An IM_CONFIG that names nothing or a directory stops scripts/run before it builds or
/// creates anything, with an error that names the absolute path it looked at.
#[test]
fn run_rejects_missing_or_directory_config() {
    let root = TempDir::new("run-bad-config");
    let run = copy_scripts(root.path());
    let path = install_recording_cargo(root.path());
    let caller = root.path().join("caller");
    std::fs::create_dir_all(caller.join("settings")).expect("caller directories");

    for (config, expected) in [
        (
            "missing.toml",
            format!(
                "error: settings file {} (IM_CONFIG) not found",
                caller.join("missing.toml").display()
            ),
        ),
        (
            "settings",
            format!(
                "error: IM_CONFIG names a directory, {}:",
                caller.join("settings").display()
            ),
        ),
    ] {
        let output = run_with_config(&run, &caller, config, &path);
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert_eq!(output.status.code(), Some(1), "{config}: {stderr}");
        assert!(stderr.contains(&expected), "{config}: {stderr}");
        assert!(
            !root.path().join("cargo-env").exists(),
            "{config}: the build ran: {stderr}"
        );
        assert!(
            !root.path().join(".data").exists(),
            "{config}: the run went on: {stderr}"
        );
    }
}

/// Runs `im_engine_ws_scheme` of scripts/lib/processes.sh on a log file that contains `log`.
fn engine_ws_scheme(dir: &Path, log: &str) -> Output {
    let file = dir.join("engine.log");
    std::fs::write(&file, log).expect("log file");
    engine_ws_scheme_of(&file)
}

/// Runs `im_engine_ws_scheme` of scripts/lib/processes.sh on the log file `file`.
fn engine_ws_scheme_of(file: &Path) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && im_engine_ws_scheme "$2""#)
        .arg("scheme")
        .arg(repo_file("scripts/lib/processes.sh"))
        .arg(file)
        .output()
        .expect("bash runs")
}

/// The scheme comes from the engine's start-up line only, not from another line that
/// contains the same words.
#[test]
fn engine_scheme_read_from_start_line() {
    let dir = TempDir::new("engine-scheme-lines");
    let started = |scheme: &str| {
        format!(
            "2026-01-01T00:00:00.000000Z  INFO im_engine::ready: engine started \
             ws_addr=127.0.0.1:8080 scheme=\"{scheme}\" path=/ws grpc_addr=127.0.0.1:50052\n"
        )
    };
    let forged = "2026-01-01T00:00:00.000000Z  WARN im_engine::config: ignored: \
                  engine started scheme=\"wss\" variable=IM_ENGINE_X\n";

    for (log, expected) in [
        (started("wss"), "wss\n"),
        (started("ws"), "ws\n"),
        (format!("{forged}{}", started("ws")), "ws\n"),
    ] {
        let output = engine_ws_scheme(dir.path(), &log);

        assert!(output.status.success(), "{log}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "{log}");
    }
    let output = engine_ws_scheme(dir.path(), forged);
    assert!(!output.status.success(), "a log without the start-up line");
    assert!(output.stdout.is_empty());
}

/// The WebSocket path comes from the start-up line, so that a moved `ws_path` shows in the
/// printed addresses.
#[test]
fn engine_path_read_from_start_line() {
    let dir = TempDir::new("engine-path-lines");
    let file = dir.path().join("engine.log");
    let path_of = |log: &str| {
        std::fs::write(&file, log).expect("log file");
        Command::new("bash")
            .arg("-c")
            .arg(r#"source "$1" && im_engine_ws_path "$2""#)
            .arg("path")
            .arg(repo_file("scripts/lib/processes.sh"))
            .arg(&file)
            .output()
            .expect("bash runs")
    };
    let started = |path: &str| {
        format!(
            "2026-01-01T00:00:00.000000Z  INFO im_engine::ready: engine started \
             ws_addr=127.0.0.1:8080 scheme=\"ws\" path={path} grpc_addr=127.0.0.1:50052\n"
        )
    };

    for path in ["/ws", "/chat/v1"] {
        let output = path_of(&started(path));

        assert!(output.status.success(), "{path}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{path}\n"));
    }
    let output = path_of("2026-01-01T00:00:00.000000Z  INFO im_engine: other line path=/x\n");
    assert!(!output.status.success(), "a log without the start-up line");
}

/// The start-up line of the built im-engine, which scripts/run reads, names wss when its TLS
/// files are set and ws otherwise, also under a RUST_LOG of warn with the directive that
/// scripts/run adds.
#[test]
fn engine_start_line_names_scheme() {
    let dir = TempDir::new("engine-scheme");
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("certificate");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.pem()).expect("certificate file");
    std::fs::write(&key_file, key.serialize_pem()).expect("key file");

    for (tls, expected) in [(true, "wss\n"), (false, "ws\n")] {
        let log = dir.path().join(format!("engine-tls-{tls}.log"));
        let mut command = Command::new(procs::binary("im-engine"));
        command.args(["--config", "/dev/null"]);
        // Settings of the environment the test runs in would apply too.
        procs::process::clean_env(&mut command);
        command
            .env("RUST_LOG", "warn,im_engine::ready=info")
            .env("NO_COLOR", "1")
            .env("IM_ENGINE_WS_ADDR", procs::free_addr().to_string())
            .env("IM_ENGINE_GRPC_ADDR", procs::free_addr().to_string())
            .env("IM_ENGINE_METRICS_ADDR", "")
            .env(
                "IM_ENGINE_LOGIC_URL",
                format!("http://{}", procs::free_addr()),
            );
        if tls {
            command
                .env("IM_ENGINE_TLS_CERT_FILE", &cert_file)
                .env("IM_ENGINE_TLS_KEY_FILE", &key_file);
        }
        // Killed when dropped, also when an assert below fails.
        let mut engine = procs::process::ChildGuard::spawn("im-engine", &mut command, &log);

        let deadline = Instant::now() + Duration::from_secs(20);
        let output = loop {
            let output = engine_ws_scheme_of(&log);
            if output.status.success() {
                break output;
            }
            assert!(
                engine.is_running(),
                "im-engine exited: {}",
                engine.log_tail(20)
            );
            assert!(
                Instant::now() < deadline,
                "no start-up line: {}",
                engine.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        engine.kill();

        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}
