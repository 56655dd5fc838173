//! The servers under test: how to start each on a free loopback port, and a guard that
//! kills a started server when it goes out of scope, on error paths too.

use std::net::{SocketAddr, TcpListener};
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Time a started server has to accept its first TCP connection.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const START_POLL: Duration = Duration::from_millis(50);

/// Errors while starting a server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error("finding a free loopback port failed")]
    FreePort(#[source] std::io::Error),
    #[error(
        "starting {program} failed; build or install it first, or give its path with \
         --engine-bin, --rust-peer-bin or --node-bin (a build under CARGO_TARGET_DIR is not in \
         target/)"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited before accepting connections ({status})")]
    Exited { name: String, status: String },
    #[error("{name} did not accept a connection on {addr} within {secs} s")]
    NotAccepting {
        name: String,
        addr: SocketAddr,
        secs: u64,
    },
}

/// How to reach, and possibly start, one server under test.
#[derive(Debug, Clone)]
pub(crate) enum TargetSpec {
    /// A program that the bench starts. `{addr}` in an argument becomes `HOST:PORT`.
    Spawn {
        name: String,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        /// HTTP path of the WebSocket upgrade.
        path: String,
    },
    /// A server that is already running, for example one inside a test. `pid` selects the
    /// process whose memory and CPU time are read.
    External {
        name: String,
        addr: SocketAddr,
        pid: Option<u32>,
        path: String,
    },
}

impl TargetSpec {
    pub(crate) fn name(&self) -> &str {
        match self {
            TargetSpec::Spawn { name, .. } | TargetSpec::External { name, .. } => name,
        }
    }

    /// Starts the server, or only checks an external one, and waits until it accepts.
    pub(crate) async fn start(&self) -> Result<RunningServer, ServerError> {
        let mut server = match self {
            TargetSpec::Spawn {
                name,
                program,
                args,
                env,
                path,
            } => spawn(name, program, args, env, path)?,
            TargetSpec::External {
                name,
                addr,
                pid,
                path,
            } => RunningServer {
                name: name.clone(),
                addr: *addr,
                path: path.clone(),
                pid: *pid,
                child: None,
            },
        };
        server.wait_accepting().await?;
        Ok(server)
    }
}

/// The engine, with idle unsigned connections kept open, no metrics endpoint and its gRPC
/// server on a free port, on `threads` shards when given. It needs no logic tier until a
/// device signs in, so its logic_url names another port that was free a moment ago. Its lease
/// renewals then fail at once, instead of reaching a logic tier that runs on the default
/// address.
pub(crate) fn engine_spec(
    program: PathBuf,
    threads: Option<u32>,
) -> Result<TargetSpec, ServerError> {
    let grpc_port = free_port()?;
    let logic_port = free_port()?;
    let env = [
        ("IM_ENGINE_WS_ADDR", "{addr}".to_owned()),
        ("IM_ENGINE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
        (
            "IM_ENGINE_LOGIC_URL",
            format!("http://127.0.0.1:{logic_port}"),
        ),
        ("IM_ENGINE_METRICS_ADDR", String::new()),
        ("IM_ENGINE_SIGN_IN_TIMEOUT_MS", "600000".to_owned()),
        ("IM_ENGINE_WS_PATH", "/ws".to_owned()),
    ];
    let shards = threads.map(|threads| ("IM_ENGINE_SHARDS", threads.to_string()));
    Ok(TargetSpec::Spawn {
        name: "engine".to_owned(),
        program,
        args: Vec::new(),
        env: env
            .into_iter()
            .chain(shards)
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
        path: "/ws".to_owned(),
    })
}

/// Returns the spec of the tokio-tungstenite echo server of `bench/peers/rust-tungstenite`,
/// with `threads` tokio workers when given (`#[tokio::main]` reads TOKIO_WORKER_THREADS).
pub(crate) fn rust_peer_spec(program: PathBuf, threads: Option<u32>) -> TargetSpec {
    TargetSpec::Spawn {
        name: "rust-tungstenite".to_owned(),
        program,
        args: vec!["--addr".to_owned(), "{addr}".to_owned()],
        env: threads
            .map(|threads| ("TOKIO_WORKER_THREADS".to_owned(), threads.to_string()))
            .into_iter()
            .collect(),
        path: "/".to_owned(),
    }
}

/// The Node.js ws echo server of `bench/peers/node-ws`.
pub(crate) fn node_peer_spec(node: PathBuf, script: PathBuf) -> TargetSpec {
    TargetSpec::Spawn {
        name: "node-ws".to_owned(),
        program: node,
        args: vec![
            script.to_string_lossy().into_owned(),
            "--addr".to_owned(),
            "{addr}".to_owned(),
        ],
        env: Vec::new(),
        path: "/".to_owned(),
    }
}

/// A server under test. Dropping it kills and reaps the process when the bench started it.
#[derive(Debug)]
pub(crate) struct RunningServer {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) path: String,
    pub(crate) pid: Option<u32>,
    child: Option<Child>,
}

impl RunningServer {
    pub(crate) fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    async fn wait_accepting(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                return Err(ServerError::Exited {
                    name: self.name.clone(),
                    status,
                });
            }
            if Instant::now() >= deadline {
                return Err(ServerError::NotAccepting {
                    name: self.name.clone(),
                    addr: self.addr,
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    fn exit_status(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(status.to_string())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Err(error) = child.kill() {
            tracing::warn!(server = %self.name, pid = child.id(), %error, "killing the server failed");
        }
        let _ = child.wait();
    }
}

fn spawn(
    name: &str,
    program: &PathBuf,
    args: &[String],
    env: &[(String, String)],
    path: &str,
) -> Result<RunningServer, ServerError> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = server_command(program, args, env, addr);
    let child = command.spawn().map_err(|source| ServerError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    tracing::info!(server = name, pid = child.id(), %addr, "server started");
    Ok(RunningServer {
        name: name.to_owned(),
        addr,
        path: path.to_owned(),
        pid: Some(child.id()),
        child: Some(child),
    })
}

/// Variables that set a server's thread count. Only `--server-threads` sets them, so that the
/// command line recorded with the results shows the thread counts.
const THREAD_VARIABLES: [&str; 2] = ["IM_ENGINE_SHARDS", "TOKIO_WORKER_THREADS"];

/// Builds the command that starts a server on `addr`, with `{addr}` in `args` and `env` values
/// filled in. The server inherits the bench's environment except [`THREAD_VARIABLES`].
fn server_command(
    program: &PathBuf,
    args: &[String],
    env: &[(String, String)],
    addr: SocketAddr,
) -> Command {
    let fill = |text: &str| text.replace("{addr}", &addr.to_string());
    let mut command = Command::new(program);
    for variable in THREAD_VARIABLES {
        command.env_remove(variable);
    }
    command
        .args(args.iter().map(|arg| fill(arg)))
        .envs(env.iter().map(|(key, value)| (key, fill(value))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Returns a loopback port that was free a moment ago.
fn free_port() -> Result<u16, ServerError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(ServerError::FreePort)?;
    let port = listener.local_addr().map_err(ServerError::FreePort)?.port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> RunningServer {
        spawn(
            "sleeper",
            &PathBuf::from("sleep"),
            &["30".to_owned()],
            &[],
            "/",
        )
        .expect("spawn sleep")
    }

    #[test]
    fn dropping_server_kills_process() {
        let server = sleeper();
        let pid = server.pid.expect("pid");
        assert!(Path::new(&format!("/proc/{pid}")).exists());

        drop(server);

        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn server_exiting_early_reported() {
        let spec = TargetSpec::Spawn {
            name: "true".to_owned(),
            program: PathBuf::from("true"),
            args: Vec::new(),
            env: Vec::new(),
            path: "/".to_owned(),
        };

        let result = spec.start().await;

        assert!(
            matches!(result, Err(ServerError::Exited { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn engine_spec_avoids_default_logic_url() {
        let TargetSpec::Spawn { env, .. } =
            engine_spec(PathBuf::from("im-engine"), None).expect("free ports")
        else {
            panic!("the engine is started by the bench");
        };
        let logic_url = env
            .iter()
            .find(|(key, _)| key == "IM_ENGINE_LOGIC_URL")
            .map(|(_, value)| value.as_str());

        let port = logic_url
            .and_then(|url| url.strip_prefix("http://127.0.0.1:"))
            .and_then(|port| port.parse::<u16>().ok());
        assert!(port.is_some(), "logic_url {logic_url:?}");
        assert_ne!(port, Some(50051));
    }

    fn env_of(spec: &TargetSpec, key: &str) -> Option<String> {
        let TargetSpec::Spawn { env, .. } = spec else {
            panic!("the server is started by the bench");
        };
        env.iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
    }

    #[test]
    fn server_threads_reach_engine_and_tokio_peer() {
        let engine = |threads| engine_spec(PathBuf::from("im-engine"), threads).expect("ports");
        let peer = |threads| rust_peer_spec(PathBuf::from("peer"), threads);

        assert_eq!(
            env_of(&engine(Some(3)), "IM_ENGINE_SHARDS").as_deref(),
            Some("3")
        );
        assert_eq!(env_of(&engine(None), "IM_ENGINE_SHARDS"), None);
        assert_eq!(
            env_of(&peer(Some(1)), "TOKIO_WORKER_THREADS").as_deref(),
            Some("1")
        );
        assert_eq!(env_of(&peer(None), "TOKIO_WORKER_THREADS"), None);
    }

    /// Returns the value `command` sets for `key`: `Some(None)` when it removes the variable,
    /// `None` when the child inherits it.
    fn command_env(command: &Command, key: &str) -> Option<Option<String>> {
        command
            .get_envs()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.map(|value| value.to_string_lossy().into_owned()))
    }

    #[test]
    fn thread_variables_come_from_flag_only() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let inherited = server_command(&PathBuf::from("im-engine"), &[], &[], addr);
        let set = server_command(
            &PathBuf::from("im-engine"),
            &[],
            &[("IM_ENGINE_SHARDS".to_owned(), "3".to_owned())],
            addr,
        );

        assert_eq!(command_env(&inherited, "IM_ENGINE_SHARDS"), Some(None));
        assert_eq!(command_env(&inherited, "TOKIO_WORKER_THREADS"), Some(None));
        assert_eq!(
            command_env(&set, "IM_ENGINE_SHARDS"),
            Some(Some("3".to_owned()))
        );
    }

    #[test]
    fn addr_placeholder_filled() {
        let server = spawn(
            "echo",
            &PathBuf::from("sleep"),
            &["{addr}".to_owned()],
            &[],
            "/ws",
        )
        .expect("spawn");

        assert_eq!(server.url(), format!("ws://{}/ws", server.addr));
        assert_eq!(server.addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    }
}
