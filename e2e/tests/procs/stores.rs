//! A private PostgreSQL cluster and a private Redis, each a child process on its own loopback
//! port, that a test may stop and start again.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{clean_env, log_tail, ChildGuard, Scratch};
use super::{free_addr, wait_blocking};

/// PostgreSQL start-up, crash recovery included, on a busy 2-core machine.
const PG_START_TIMEOUT: Duration = Duration::from_secs(60);
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL cluster in the scratch directory, run by `postgres` when the test runs as
/// root (the server refuses to run as root), else by the current user.
pub struct Postgres {
    pub addr: SocketAddr,
    bin_dir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<ChildGuard>,
}

impl Postgres {
    /// Creates a cluster (initdb, trust authentication) and starts it.
    pub fn start(scratch: &Scratch) -> Postgres {
        let bin_dir = pg_bin_dir();
        let owner = pg_owner();
        let data = scratch.path().join("pg");
        let socket_dir = scratch.path().join("pg-run");
        for dir in [&data, &socket_dir] {
            std::fs::create_dir_all(dir).expect("create PostgreSQL directories");
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        super::process::set_mode(&data, 0o700);
        let log = scratch.log("postgres.log");
        let mut pg = Postgres {
            addr: free_addr(),
            bin_dir,
            data,
            socket_dir,
            log,
            owner,
            child: None,
        };
        pg.init_cluster();
        pg.resume();
        pg
    }

    /// URL of the default database, which the logic tier migrates at start.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        clean_env(&mut command);
        command.env_remove("PGDATA").env_remove("PGPORT");
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn init_cluster(&self) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server (again) on its port and waits until it accepts queries.
    pub fn resume(&mut self) {
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.addr.port().to_string()])
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=100"])
            // Durability across a crash of the machine is not under test; a server crash
            // still loses nothing that was committed.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=on"])
            .args(["-c", "shared_buffers=32MB"]);
        self.child = Some(ChildGuard::spawn("postgres", &mut command, &self.log));
        let port = self.addr.port().to_string();
        let bin = self.bin_dir.join("pg_isready");
        wait_blocking("PostgreSQL accepts connections", PG_START_TIMEOUT, || {
            Command::new(&bin)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-t", "1"])
                .status()
                .is_ok_and(|status| status.success())
        });
    }

    /// Stops the server with an immediate shutdown (SIGQUIT): sessions end at once and the
    /// next start runs crash recovery, as after a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop_with(libc::SIGQUIT, PG_START_TIMEOUT);
        }
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown ends the backends too; SIGKILL only the postmaster would
            // leave them behind for a moment.
            child.signal(libc::SIGQUIT);
            if child.wait_exit(Duration::from_secs(10)).is_none() {
                child.kill();
            }
        }
    }
}

/// Newest `/usr/lib/postgresql/*/bin`, unless `IM_PG_BIN_DIR` names one.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IM_PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|bin| bin.join("postgres").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|dir| version_of(dir));
    dirs.pop().unwrap_or_else(|| {
        panic!("no /usr/lib/postgresql/*/bin/postgres: run scripts/test or set IM_PG_BIN_DIR")
    })
}

fn version_of(bin: &Path) -> u32 {
    bin.parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse().ok())
        .unwrap_or(0)
}

/// The uid and gid of `postgres` when we are root; `None` otherwise.
fn pg_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("a postgres account exists (the PostgreSQL package creates it)");
    let fields: Vec<&str> = line.split(':').collect();
    let id = |index: usize| fields.get(index).and_then(|text| text.parse().ok());
    Some((id(2).expect("postgres uid"), id(3).expect("postgres gid")))
}

/// A redis-server without persistence: each start is empty, as after a failover to a fresh
/// replica.
pub struct Redis {
    pub addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Redis {
    pub fn start(scratch: &Scratch) -> Redis {
        let dir = scratch.path().join("redis");
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        let mut redis = Redis {
            addr: free_addr(),
            dir,
            log: scratch.log("redis.log"),
            child: None,
        };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Starts the server (again, empty) on its port and waits until it accepts commands.
    pub fn resume(&mut self) {
        let binary =
            std::env::var("IM_REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned());
        let mut command = Command::new(&binary);
        clean_env(&mut command);
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir);
        self.child = Some(ChildGuard::spawn("redis-server", &mut command, &self.log));
        let addr = self.addr;
        wait_blocking(
            "redis-server accepts connections",
            REDIS_START_TIMEOUT,
            || std::net::TcpStream::connect(addr).is_ok(),
        );
    }

    /// Kills the server with SIGKILL; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Keys matching `pattern` (SCAN-free KEYS: the instance is private and small).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("valid Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis");
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }
}
