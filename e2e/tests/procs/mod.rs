//! Whole systems of real processes for fault tests. Each test gets a private PostgreSQL and
//! Redis, and runs the built `im-logic` and `im-engine` binaries as child processes on free
//! loopback ports, with every setting passed explicitly. Each process is killed when its
//! guard drops, also when a test panics, so stopping one never disturbs another test.
//!
//! The binaries are taken from the directory above the test executable (`target/debug`).
//! When one is missing or older than the sources of its crate, `cargo build -p im-engine -p
//! im-logic` runs once per test executable. `scripts/test` builds the workspace before its
//! cargo-test stage, so there the binaries are always current and nothing is rebuilt.

#![allow(dead_code, unreachable_pub)]

pub mod device;
pub mod fleet;
pub mod ledger;
pub mod process;
pub mod servers;
pub mod stores;
pub mod system;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Password of every test user.
pub const PASSWORD: &str = "correct horse battery";

/// Serializes the tests of one test executable: each runs a whole system of processes, and
/// the machine has two cores, so running them side by side would only make deadlines flaky.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Returns a loopback address with a port that was free a moment ago. Ports come from below
/// Linux's ephemeral range (32768-60999), so an outgoing connection of another process cannot
/// take one between this check and the bind of the process that gets it.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = u64::from(std::process::id()) * 7919 + rand::random::<u64>() % 10_000;
    for _ in 0..10_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((start + offset * 37) % 10_000) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("bound address");
        }
    }
    panic!("no free loopback port found in 20000-29999");
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking form of [`wait_for`], for set-up code outside a runtime.
pub fn wait_blocking(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a duration in seconds from the environment variable `name`, or returns `default`.
pub fn env_secs(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// Reads the seed of a randomized test from `IM_SOAK_SEED`, or draws one, and prints it.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("IM_SOAK_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{test}: seed = {seed} (set IM_SOAK_SEED={seed} to replay the schedule)");
    seed
}

/// Runs `test` with a time limit, so that a hang fails the test instead of the suite.
pub async fn bounded<T>(name: &str, limit: Duration, test: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let outcome = tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {limit:?}"));
    println!("{name}: finished in {:.1} s", start.elapsed().as_secs_f64());
    outcome
}

/// Runs one test: takes the [`serial`] lock, then runs `test` on a runtime of its own with two
/// worker threads (blocking calls such as process restarts use `block_in_place`) and with
/// the time limit of [`bounded`].
pub fn run(name: &str, limit: Duration, test: impl Future<Output = ()>) {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime builds");
    runtime.block_on(bounded(name, limit, test));
}

/// Directory of the workspace, where `cargo build` runs.
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits inside the workspace")
        .to_path_buf()
}

/// Returns the path of a workspace binary (`im-engine` or `im-logic`), building both once
/// per test executable when one is missing or older than its sources.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let dir = binary_dir();
        if binaries_stale(&dir) {
            build_binaries();
        }
        dir
    });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// `target/debug`: the test executable lives in `target/debug/deps`.
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable sits in target/PROFILE/deps")
        .to_path_buf()
}

fn binaries_stale(dir: &Path) -> bool {
    let root = workspace_dir();
    let sources = [
        "engine/src",
        "engine/ws/src",
        "engine/Cargo.toml",
        "logic/src",
        "logic/Cargo.toml",
        "proto",
        "migrations",
    ];
    let newest_source = sources
        .iter()
        .filter_map(|path| newest_mtime(&root.join(path)))
        .max();
    ["im-engine", "im-logic"].iter().any(|name| {
        let built = std::fs::metadata(dir.join(name)).and_then(|meta| meta.modified());
        match (built, newest_source) {
            (Ok(built), Some(source)) => built < source,
            (Ok(_), None) => false,
            (Err(_), _) => true,
        }
    })
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!(
        "building im-engine and im-logic with {cargo} build (missing or older than their sources)"
    );
    let status = std::process::Command::new(&cargo)
        .args(["build", "-p", "im-engine", "-p", "im-logic", "--bins"])
        .current_dir(workspace_dir())
        .status()
        .unwrap_or_else(|err| panic!("cannot run {cargo}: {err}"));
    assert!(
        status.success(),
        "cargo build -p im-engine -p im-logic failed: {status}"
    );
}
