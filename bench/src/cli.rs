//! Command-line flags. Every value is a named flag; there are no positional arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::sources::MAX_SOURCES;

/// Load generator for the IM engine.
#[derive(Debug, Parser)]
#[command(name = "im-bench", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Flags of `signin`, which runs when no subcommand is given.
    #[command(flatten)]
    pub(crate) signin: SigninArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Sign in many connections with cached device tokens, hold them with heartbeats, and
    /// report sign-in rate and latency, heartbeat round trip and engine memory per connection.
    Signin(SigninArgs),
    /// One worker process of `signin --workers K`; started by the bench itself.
    #[command(hide = true)]
    SigninWorker(WorkerArgs),
}

/// Flags that the parent passes on to its worker processes unchanged.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// WebSocket URL of the engine.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: String,
    /// Seconds to hold all connections with heartbeats after the last sign-in.
    #[arg(long, default_value_t = 10)]
    pub(crate) hold_secs: u64,
    /// Milliseconds between heartbeats of one connection. The first heartbeat comes at a
    /// random point of the first interval, so heartbeats spread evenly over time.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) heartbeat_ms: u64,
    /// Sign-ins in flight at once, from TCP connect to SIGN_IN reply (split among workers).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: u64,
    /// Bench users are named `<prefix>-<i>` for i in 0..connections.
    #[arg(long, default_value = "bench")]
    pub(crate) user_prefix: String,
    /// Password of every bench user (8 to 128 bytes).
    #[arg(
        long,
        env = "IM_BENCH_PASSWORD",
        default_value = "bench-password",
        hide_env_values = true
    )]
    pub(crate) password: String,
    /// Time limit in milliseconds for one connect plus handshake, and for each reply.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout_ms: u64,
    /// Seconds allowed for opening and signing in all connections. Connections not signed in
    /// by then count as errors, and the hold starts with those that are.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connect_timeout_secs: u64,
    /// Directory of the token cache (`<prefix>-tokens.tsv`).
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    pub(crate) cache_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SigninArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Number of connections (and bench users) N.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connections: u64,
    /// Loopback source addresses 127.0.0.2 ..= 127.0.0.(1 + sources); connection i uses
    /// 127.0.0.(2 + i % sources). Default: enough that no source serves more than 25,000
    /// connections (fewer when the ephemeral port range is smaller).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SOURCES as u64))]
    pub(crate) sources: Option<u64>,
    /// Engine process to read resident memory from (/proc/PID/status). Default: the only
    /// process named im-engine.
    #[arg(long)]
    pub(crate) engine_pid: Option<u32>,
    /// Client processes. With more than one, the bench starts itself as workers that each
    /// hold a slice of the connections, because the open-file limit applies per process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) workers: u64,
    /// LOGIN and REGISTER calls in flight while preparing tokens. Each costs the server a
    /// password hash, which is slow on purpose.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) prepare_concurrency: u64,
    /// Seconds allowed for preparing tokens.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) prepare_timeout_secs: u64,
    /// Log in again for every user even when the cache contains a valid token, for example after
    /// the database was reset.
    #[arg(long)]
    pub(crate) refresh_tokens: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Index of the first user of this worker's slice.
    #[arg(long)]
    pub(crate) first_index: u64,
    /// Number of users in this worker's slice.
    #[arg(long)]
    pub(crate) count: u64,
    /// Source addresses of the whole run.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SOURCES as u64))]
    pub(crate) sources: u64,
}

/// The bench crate's `.cache` directory, fixed at build time so runs from any directory
/// share one cache.
const DEFAULT_CACHE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_runs_signin_defaults() {
        let cli = Cli::try_parse_from(["im-bench"]).expect("parse");

        assert!(cli.command.is_none());
        assert_eq!(cli.signin.connections, 1000);
        assert_eq!(cli.signin.run.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(cli.signin.run.hold_secs, 10);
        assert_eq!(cli.signin.run.heartbeat_ms, 5000);
        assert_eq!(cli.signin.run.concurrency, 256);
        assert_eq!(cli.signin.workers, 1);
        assert_eq!(cli.signin.sources, None);
    }

    #[test]
    fn signin_subcommand_takes_flags() {
        let cli = Cli::try_parse_from([
            "im-bench",
            "signin",
            "--connections",
            "15000",
            "--workers",
            "2",
            "--sources",
            "3",
        ])
        .expect("parse");

        let Some(Command::Signin(args)) = cli.command else {
            panic!("signin expected");
        };
        assert_eq!(args.connections, 15_000);
        assert_eq!(args.workers, 2);
        assert_eq!(args.sources, Some(3));
    }

    #[test]
    fn zero_connections_rejected() {
        let result = Cli::try_parse_from(["im-bench", "--connections", "0"]);

        assert!(result.is_err());
    }

    #[test]
    fn too_many_sources_rejected() {
        let result = Cli::try_parse_from(["im-bench", "--sources", "255"]);

        assert!(result.is_err());
    }

    #[test]
    fn positional_argument_rejected() {
        let result = Cli::try_parse_from(["im-bench", "1000"]);

        assert!(result.is_err());
    }
}
