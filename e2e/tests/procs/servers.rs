//! `im-logic` and `im-engine` as child processes with explicit settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::{clean_env, proc_stats, ChildGuard, ProcStats, Scratch};
use super::{binary, free_addr, wait_blocking};

/// Debug builds; the logic tier applies the migrations before it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of the logic tier that tests vary.
#[derive(Debug, Clone)]
pub struct LogicSettings {
    pub db_pool_size: u32,
    pub db_timeout_ms: u64,
    pub redis_timeout_ms: u64,
    pub engine_call_timeout_ms: u64,
}

impl Default for LogicSettings {
    fn default() -> Self {
        Self {
            db_pool_size: 8,
            db_timeout_ms: 2_000,
            redis_timeout_ms: 500,
            engine_call_timeout_ms: 1_000,
        }
    }
}

/// A running (or stopped) `im-logic` on a fixed address, restartable on it.
pub struct Logic {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Logic {
    pub fn start(
        scratch: &Scratch,
        database_url: &str,
        redis_url: &str,
        settings: &LogicSettings,
    ) -> Logic {
        let addr = free_addr();
        let metrics_addr = free_addr();
        let env = vec![
            ("IM_LOGIC_LISTEN_ADDR", addr.to_string()),
            ("IM_LOGIC_METRICS_ADDR", metrics_addr.to_string()),
            // Web client off: its default port 8081 may be taken by a system that
            // `scripts/run` started.
            ("IM_LOGIC_WEB_ADDR", String::new()),
            ("IM_LOGIC_DATABASE_URL", database_url.to_owned()),
            ("IM_LOGIC_REDIS_URL", redis_url.to_owned()),
            ("IM_LOGIC_DB_POOL_SIZE", settings.db_pool_size.to_string()),
            ("IM_LOGIC_DB_TIMEOUT_MS", settings.db_timeout_ms.to_string()),
            (
                "IM_LOGIC_REDIS_TIMEOUT_MS",
                settings.redis_timeout_ms.to_string(),
            ),
            (
                "IM_LOGIC_ENGINE_CALL_TIMEOUT_MS",
                settings.engine_call_timeout_ms.to_string(),
            ),
            // Cheap password hashing: devices log in again after Redis loses their tokens.
            ("IM_LOGIC_ARGON2_MEMORY_KIB", "1024".to_owned()),
            ("IM_LOGIC_ARGON2_ITERATIONS", "1".to_owned()),
            // A restart while a store is down waits for it instead of exiting.
            ("IM_LOGIC_STARTUP_RETRY_MS", "30000".to_owned()),
        ];
        let mut logic = Logic {
            addr,
            metrics_addr,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            cwd: scratch.path().to_path_buf(),
            log: scratch.log("logic.log"),
            child: None,
        };
        logic.resume();
        logic
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process (again) on its address and waits until it accepts gRPC connections.
    pub fn resume(&mut self) {
        let mut command = Command::new(binary("im-logic"));
        clean_env(&mut command);
        command
            .current_dir(&self.cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", log_filter());
        let mut child = ChildGuard::spawn("im-logic", &mut command, &self.log);
        let addr = self.addr;
        wait_blocking("im-logic accepts gRPC connections", START_TIMEOUT, || {
            assert!(
                child.is_running(),
                "im-logic exited at start\n{}",
                child.log_tail(20)
            );
            std::net::TcpStream::connect(addr).is_ok()
        });
        self.child = Some(child);
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop_with(libc::SIGTERM, Duration::from_secs(15));
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the process: a stopped logic tier keeps its
    /// connections open but replies to nothing, as a hung one would.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            child.signal(if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }
}

/// Settings of an engine node that tests vary.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub shards: usize,
    pub logic_call_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub lease_interval_ms: u64,
    pub lease_ttl_ms: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            shards: 2,
            logic_call_timeout_ms: 1_000,
            shutdown_grace_ms: 2_000,
            // Test devices send no heartbeats; no test runs this long.
            heartbeat_timeout_ms: 600_000,
            // The engine's defaults.
            lease_interval_ms: 2_000,
            lease_ttl_ms: 6_000,
        }
    }
}

/// A running `im-engine` node.
pub struct Engine {
    pub ws_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub settings: EngineSettings,
    child: ChildGuard,
}

impl Engine {
    pub fn start(
        scratch: &Scratch,
        name: &str,
        logic_url: &str,
        settings: &EngineSettings,
    ) -> Engine {
        let ws_addr = free_addr();
        let grpc_addr = free_addr();
        let metrics_addr = free_addr();
        let mut command = Command::new(binary("im-engine"));
        clean_env(&mut command);
        command
            .current_dir(scratch.path())
            .env("RUST_LOG", log_filter())
            .env("IM_ENGINE_WS_ADDR", ws_addr.to_string())
            .env("IM_ENGINE_WS_PATH", "/ws")
            .env("IM_ENGINE_GRPC_ADDR", grpc_addr.to_string())
            .env("IM_ENGINE_NODE_ADDR", grpc_addr.to_string())
            .env("IM_ENGINE_METRICS_ADDR", metrics_addr.to_string())
            .env("IM_ENGINE_LOGIC_URL", logic_url)
            .env("IM_ENGINE_SHARDS", settings.shards.to_string())
            .env(
                "IM_ENGINE_LOGIC_CALL_TIMEOUT_MS",
                settings.logic_call_timeout_ms.to_string(),
            )
            .env("IM_ENGINE_LOGIC_CONNECT_TIMEOUT_MS", "500")
            .env(
                "IM_ENGINE_SHUTDOWN_GRACE_MS",
                settings.shutdown_grace_ms.to_string(),
            )
            .env(
                "IM_ENGINE_HEARTBEAT_TIMEOUT_MS",
                settings.heartbeat_timeout_ms.to_string(),
            )
            .env(
                "IM_ENGINE_LEASE_INTERVAL_MS",
                settings.lease_interval_ms.to_string(),
            )
            .env("IM_ENGINE_LEASE_TTL_MS", settings.lease_ttl_ms.to_string())
            .env("IM_ENGINE_SIGN_IN_TIMEOUT_MS", "30000")
            .env("IM_ENGINE_MAX_CONNECTIONS", "0")
            .env("IM_ENGINE_MAX_CONNECTIONS_PER_IP", "0");
        let log = scratch.log(&format!("{name}.log"));
        let mut child = ChildGuard::spawn(name, &mut command, &log);
        wait_blocking(
            "im-engine accepts WebSocket connections",
            START_TIMEOUT,
            || {
                assert!(
                    child.is_running(),
                    "{name} exited at start\n{}",
                    child.log_tail(20)
                );
                std::net::TcpStream::connect(ws_addr).is_ok()
                    && std::net::TcpStream::connect(metrics_addr).is_ok()
            },
        );
        Engine {
            ws_addr,
            grpc_addr,
            metrics_addr,
            settings: settings.clone(),
            child,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn stats(&self) -> ProcStats {
        proc_stats(self.child.pid())
    }

    /// Kills the node with SIGKILL: no close frames, no Offline calls.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Sends SIGTERM and returns the time until the process exited and whether it exited
    /// successfully; panics when it runs longer than `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> (bool, Duration) {
        let (status, waited) = self.child.stop_with(libc::SIGTERM, timeout);
        (status.success(), waited)
    }

    /// Sum of the `im_engine_connections` gauge over the shards, from `/metrics`.
    pub async fn connections(&self) -> i64 {
        let text = scrape(self.metrics_addr).await;
        text.lines()
            .filter(|line| line.starts_with("im_engine_connections"))
            .filter_map(|line| line.rsplit(' ').next())
            .filter_map(|value| value.parse::<f64>().ok())
            .map(|value| value as i64)
            .sum()
    }

    /// Returns the `im_engine_signed_in_devices` gauge from `/metrics`: entries of the node's map
    /// from device id to connection.
    pub async fn signed_in_devices(&self) -> i64 {
        let text = scrape(self.metrics_addr).await;
        text.lines()
            .find_map(|line| line.strip_prefix("im_engine_signed_in_devices "))
            .and_then(|value| value.parse().ok())
            .expect("im_engine_signed_in_devices in the engine metrics")
    }

    pub fn log_tail(&self) -> String {
        self.child.log_tail(30)
    }
}

/// GET /metrics over a plain HTTP/1.0 request.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .unwrap_or_else(|_| panic!("GET http://{addr}/metrics timed out"))
        .unwrap_or_else(|err| panic!("GET http://{addr}/metrics failed: {err}"))
}

/// Log filter of the child processes: `RUST_LOG` when set, else info.
fn log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}
