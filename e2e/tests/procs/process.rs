//! Child processes that die with their guard, and the scratch directory of one test.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A directory under the system temp dir for one test's data and logs. Removed on drop,
/// except when the test panics: then its path is printed so the logs can be read.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "im-faults-{test}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create the scratch directory");
        // The PostgreSQL owner must reach its data directory inside.
        set_mode(&path, 0o755);
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` inside the scratch directory for appending, so that a restarted process
    /// adds to the log of its earlier run.
    pub fn log(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "logs and data of the failed test kept in {}",
                self.path.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {}: {err}", path.display()));
}

/// A running child process, killed with SIGKILL when the guard drops.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> ChildGuard {
        let out = append(log);
        let err = out.try_clone().expect("duplicate the log handle");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let shown = format!("{command:?}");
        let child = spawn_tied(command)
            .unwrap_or_else(|error| panic!("cannot start {name} ({shown}): {error}"));
        ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Tells whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` (a `libc::SIG*` number) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        if pid != 0 {
            // SAFETY: kill(2) on the id of our own child, which has not been reaped yet
            // (its guard still holds the Child), so the id cannot name another process.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status and the time
    /// waited; `None` when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some((status, start.elapsed()));
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits for the exit; panics with the log's tail after `timeout`.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> (ExitStatus, Duration) {
        self.signal(signal);
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?} after signal {signal}\n{}",
                self.name,
                self.log_tail(20)
            )
        })
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of the process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last lines of {}:\n{}",
        path.display(),
        all[start..].join("\n")
    )
}

/// A request to the spawner thread: the command to start, and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` so that the kernel kills it (SIGKILL) when the test executable dies,
/// even when it is killed itself and no guard runs. The parent-death signal fires when the
/// thread that forked the child ends, so every child is forked by one thread that lives as
/// long as the process.
fn spawn_tied(command: &mut Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the child-spawner thread");
        Mutex::new(requests)
    });
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe. It runs after the uid change of a PostgreSQL child, which
    // would otherwise clear the setting.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let owned = std::mem::replace(command, Command::new("true"));
    let (reply, child) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((owned, reply))
        .expect("the child-spawner thread runs");
    child.recv().expect("the child-spawner thread replies")
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()))
}

/// Removes every `IM_*` variable inherited from the test's environment (for example the
/// suite's own store URLs), so that only the settings a test passes reach the process.
pub fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("IM_") {
            command.env_remove(&key);
        }
    }
}

/// Threads and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pub threads: u64,
    pub rss_kib: u64,
}

pub fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    ProcStats {
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
    }
}
