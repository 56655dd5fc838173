//! Command-line flags. Every value is a named flag; there are no positional arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::payload::HEADER_BYTES;
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
    /// Send direct messages between pairs of friends at a fixed total rate and report delivery
    /// latency, stored messages per second and lost messages.
    Chat(ChatArgs),
    /// Send messages from one member to a group at a fixed rate and report latency per
    /// delivered copy and messages received per member.
    Group(GroupArgs),
    /// Run the same raw WebSocket scenario against the engine and against peer servers
    /// (tokio-tungstenite, Node.js ws), one after the other on loopback, and print one table
    /// of per-connection memory, connect rate, round trip, throughput and CPU, with ratios.
    Compare(CompareArgs),
}

/// Flags of every scenario that opens signed-in connections.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// WebSocket URL of the engine, ws:// only: the bench's client has no TLS.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", value_parser = parse_ws_url)]
    pub(crate) url: String,
    /// Prefix of the bench users' names: `<prefix>-<i>` for `signin`, `<prefix>-chat-<i>` and
    /// `<prefix>-group-<i>` for the messaging scenarios.
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
    /// Time limit in milliseconds for one connect plus handshake, for each reply and for each
    /// logic tier call.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout_ms: u64,
    /// Sign-ins in flight at once, from TCP connect to SIGN_IN reply; `signin --workers`
    /// splits them among its workers.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: u64,
    /// Seconds allowed for opening and signing in all connections. Connections not signed in
    /// by then count as errors. With `signin --open-first --workers K` (K > 1), the open phase
    /// and the sign-in phase get this limit each.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connect_timeout_secs: u64,
    /// Directory of the token caches (`<prefix>-tokens.tsv`, `<prefix>-chat-tokens.tsv`,
    /// `<prefix>-group-tokens.tsv`) and the group cache (`<prefix>-groups.tsv`).
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    pub(crate) cache_dir: PathBuf,
}

/// Accepts a `ws://` URL for `--url`. The client (im-client) opens plain TCP only, so any other
/// scheme would fail every connection later with the same error.
fn parse_ws_url(text: &str) -> Result<String, String> {
    // clap's error repeats the value, so these texts leave it out.
    match text.split_once("://") {
        Some(("ws", _)) => Ok(text.to_owned()),
        Some(("wss", _)) => Err(
            "im-bench speaks plain ws:// only, because its client has no \
                                 TLS: pass the ws:// URL of an engine without tls_cert_file, \
                                 such as ws://127.0.0.1:8080/ws"
                .to_owned(),
        ),
        _ => Err("expected the engine's ws:// URL, such as ws://127.0.0.1:8080/ws".to_owned()),
    }
}

/// Flags that the parent passes on to its worker processes unchanged.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) conn: ConnectArgs,
    /// Seconds to hold all connections with heartbeats after the last sign-in.
    #[arg(long, default_value_t = 10)]
    pub(crate) hold_secs: u64,
    /// Milliseconds between heartbeats of one connection. The first heartbeat comes at a
    /// random point of the first interval, so heartbeats spread evenly over time.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) heartbeat_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SigninArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Number of connections (and bench users) N.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connections: u64,
    /// Loopback source addresses 127.0.0.2 ..= 127.0.0.(1 + sources); connection i uses
    /// 127.0.0.(2 + i % sources). Default: enough that no source serves more than 2,000
    /// connections (fewer when the ephemeral port range is smaller), so that each connect finds
    /// a free port quickly.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SOURCES as u64))]
    pub(crate) sources: Option<u64>,
    /// Engine process to read resident memory from (/proc/PID/status); repeat the flag for
    /// several engine nodes on this host. Default: the processes named im-engine that listen on
    /// the port of --url, summed; none when no such process listens there.
    #[arg(long)]
    pub(crate) engine_pid: Vec<u32>,
    /// Client processes. With more than one, the bench starts itself as workers that each
    /// hold a slice of the connections, because the open-file limit applies per process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) workers: u64,
    /// Open every connection first (TCP connect and WebSocket handshake), then sign them all
    /// in with at most --concurrency SIGN_INs in flight, so that the report gives the sign-in
    /// rate and latency apart from the connects. With --workers, every worker opens its slice
    /// and all start signing in once the last worker has opened. The engine closes a
    /// connection that has not signed in within its sign_in_timeout_ms (10 s by default), so
    /// both phases together must fit in that time.
    #[arg(long)]
    pub(crate) open_first: bool,
    #[command(flatten)]
    pub(crate) prepare: PrepareArgs,
}

/// Flags of the token preparation that every scenario runs before it connects.
#[derive(Debug, Clone, Args)]
pub(crate) struct PrepareArgs {
    /// LOGIN and REGISTER calls in flight while preparing tokens. Each costs the server a
    /// password hash, which is slow on purpose.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) prepare_concurrency: u64,
    /// Seconds allowed for preparing tokens.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) prepare_timeout_secs: u64,
    /// Log in again for every user even when the cache contains a valid token, for example after
    /// Redis restarted without its data or the database was reset.
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
    /// Open every connection of the slice, report `opened`, and sign in only after the
    /// parent's `sign_in` command.
    #[arg(long)]
    pub(crate) open_first: bool,
}

/// Flags shared by the messaging scenarios `chat` and `group`.
#[derive(Debug, Clone, Args)]
pub(crate) struct MessagingArgs {
    #[command(flatten)]
    pub(crate) conn: ConnectArgs,
    /// URL of the logic tier's gRPC server, whose LogicExtService sets up friends and groups.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) logic_url: String,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) duration_secs: u64,
    /// Bytes of content per message, at least 32 for the bench's own header.
    #[arg(
        long,
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(HEADER_BYTES as u64..)
    )]
    pub(crate) content_bytes: u64,
    /// Seconds to wait after the last SEND reply for deliveries still on their way.
    #[arg(long, default_value_t = 10)]
    pub(crate) drain_secs: u64,
    /// Most SENDs in flight on one connection. Further sends wait for a reply; their latency
    /// still counts from their intended send time.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_in_flight: u64,
    /// Milliseconds without any packet sent after which a connection sends a heartbeat.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) heartbeat_ms: u64,
    /// Seconds allowed for setting up friends or the group through the logic tier.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) setup_timeout_secs: u64,
    /// Loopback source addresses 127.0.0.2 ..= 127.0.0.(1 + sources), as for `signin`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SOURCES as u64))]
    pub(crate) sources: Option<u64>,
    #[command(flatten)]
    pub(crate) prepare: PrepareArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    pub(crate) messaging: MessagingArgs,
    /// Pairs of users P. User 2k sends to user 2k + 1, so the run opens 2P connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) pairs: u64,
    /// Messages per second R over all pairs, spread evenly over the pairs.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct GroupArgs {
    #[command(flatten)]
    pub(crate) messaging: MessagingArgs,
    /// Members G of the group, the sender included, so each message has G - 1 recipients.
    /// The logic tier caps groups at its max_group_members (default 500).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(2..))]
    pub(crate) members: u64,
    /// Messages per second R from the sender.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: u64,
    /// Members that sign in, the sender included: the first ones. The others stay offline,
    /// so the logic tier stores their copies and looks up their status but pushes nothing.
    /// Default: every member.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    pub(crate) online: Option<u64>,
    /// Recipients K that sign in and then read nothing from their socket until the drain
    /// ends. Their messages fill the kernel's socket buffers and then the engine's outbound
    /// queue, and the engine closes the connection with 4008 once that queue passes its
    /// max_outbound_bytes. They are the last K members, and their messages count neither as
    /// received nor as lost. The run reads engine and kernel memory once per second and
    /// reports the growth per slow reader. Must be less than the online members minus 1, so
    /// that at least one recipient reads.
    #[arg(long, default_value_t = 0)]
    pub(crate) slow_readers: u64,
    /// Engine process to read resident memory from with --slow-readers, as for `signin`;
    /// repeatable. Default: the processes named im-engine that listen on the port of --url.
    #[arg(long)]
    pub(crate) engine_pid: Vec<u32>,
    /// Prometheus endpoint of the engine (its metrics_addr), as http://HOST:PORT/metrics;
    /// repeat it for several nodes. With --slow-readers the run reads the engine's count of
    /// 4008 closes once per second from it, because a slow reader cannot see that close frame
    /// behind its full socket. Default: none, and those closes are not counted.
    #[arg(long)]
    pub(crate) engine_metrics_url: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CompareArgs {
    /// Connections N held at once. The bench and each server hold N sockets, so N must stay
    /// under the open-file limit of one process.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connections: u64,
    /// Seconds all connections stay idle before the servers' memory is read.
    #[arg(long, default_value_t = 5)]
    pub(crate) hold_secs: u64,
    /// Round trips per connection in the latency phase.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rounds: u32,
    /// Milliseconds between two round trips of one connection in the latency phase.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) round_interval_ms: u64,
    /// Seconds of the saturation phase, in which every connection sends its next message as
    /// soon as the reply to the last one arrives.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) saturation_secs: u64,
    /// Servers to measure, in order: engine, rust-tungstenite, node-ws. The first one is the
    /// baseline of the ratio columns.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "engine,rust-tungstenite,node-ws"
    )]
    pub(crate) targets: Vec<String>,
    /// The engine binary.
    #[arg(long, default_value = "target/release/im-engine")]
    pub(crate) engine_bin: PathBuf,
    /// The tokio-tungstenite peer binary (`cargo build --release` in bench/peers/rust-tungstenite).
    #[arg(
        long,
        default_value = "bench/peers/rust-tungstenite/target/release/peer-rust-tungstenite"
    )]
    pub(crate) rust_peer_bin: PathBuf,
    /// The Node.js ws peer script (`npm install` in bench/peers/node-ws first).
    #[arg(long, default_value = "bench/peers/node-ws/server.js")]
    pub(crate) node_peer_script: PathBuf,
    /// The Node.js executable.
    #[arg(long, default_value = "node")]
    pub(crate) node_bin: PathBuf,
    /// Threads each server handles its connections on, 1 to 255 (the engine's maximum of
    /// shards): the engine's shards (IM_ENGINE_SHARDS) and the tokio workers of
    /// rust-tungstenite (TOKIO_WORKER_THREADS).
    /// node-ws runs its JavaScript on one thread whatever the value. On a host where the
    /// bench shares the cores, equal thread counts keep the comparison fair. Default: each
    /// server's own, one per CPU for the engine and for tokio, since the servers do not
    /// inherit IM_ENGINE_SHARDS or TOKIO_WORKER_THREADS from the bench's environment.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub(crate) server_threads: Option<u32>,
    /// Loopback source addresses, as for `signin`. Default: enough for N.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SOURCES as u64))]
    pub(crate) sources: Option<u64>,
    /// Connects plus handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: u64,
    /// Time limit in milliseconds for one connect plus handshake, and for each reply.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout_ms: u64,
    /// Seconds allowed for opening all connections to one server.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connect_timeout_secs: u64,
    /// A server that is already running, as NAME=HOST:PORT (WebSocket path `/`). It is
    /// measured after the targets, without memory or CPU figures. Repeatable.
    #[arg(long)]
    pub(crate) external: Vec<String>,
    /// Directory of the JSON and Markdown results.
    #[arg(long, default_value = DEFAULT_RESULTS_DIR)]
    pub(crate) results_dir: PathBuf,
    /// Print the table only, without writing result files (for trial runs).
    #[arg(long)]
    pub(crate) no_results: bool,
    /// Passes over all targets, 1 to 15. With more than one, every other pass measures the
    /// targets in reverse order, and the table gives each figure's median over the passes,
    /// with ratio columns that are the medians of each pass's ratios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=15))]
    pub(crate) passes: u32,
}

/// The bench crate's `results` directory, fixed at build time like the cache.
const DEFAULT_RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

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
        assert_eq!(cli.signin.run.conn.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(cli.signin.run.hold_secs, 10);
        assert_eq!(cli.signin.run.heartbeat_ms, 5000);
        assert_eq!(cli.signin.run.conn.concurrency, 256);
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
    fn wss_url_rejected_at_parse() {
        for args in [
            vec!["im-bench", "--url", "wss://127.0.0.1:8080/ws"],
            vec!["im-bench", "chat", "--url", "wss://127.0.0.1:8080/ws"],
        ] {
            let error = Cli::try_parse_from(&args).expect_err("wss:// is rejected");
            let text = error.to_string();

            assert!(text.contains("--url"), "{text}");
            assert!(text.contains("speaks plain ws:// only"), "{text}");
        }
    }

    #[test]
    fn url_without_ws_scheme_rejected() {
        for url in ["http://127.0.0.1:8080/ws", "127.0.0.1:8080"] {
            let error = Cli::try_parse_from(["im-bench", "--url", url]).expect_err(url);

            assert!(
                error
                    .to_string()
                    .contains("expected the engine's ws:// URL"),
                "{error}"
            );
        }
        let cli = Cli::try_parse_from(["im-bench", "--url", "ws://[::1]:9/ws"]).expect("ws://");
        assert_eq!(cli.signin.run.conn.url, "ws://[::1]:9/ws");
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
    fn chat_defaults() {
        let cli = Cli::try_parse_from(["im-bench", "chat"]).expect("parse");

        let Some(Command::Chat(args)) = cli.command else {
            panic!("chat expected");
        };
        assert_eq!(args.pairs, 100);
        assert_eq!(args.rate, 1000);
        assert_eq!(args.messaging.logic_url, "http://127.0.0.1:50051");
        assert_eq!(args.messaging.duration_secs, 10);
        assert_eq!(args.messaging.content_bytes, 64);
    }

    #[test]
    fn group_takes_flags() {
        let cli = Cli::try_parse_from([
            "im-bench",
            "group",
            "--members",
            "50",
            "--rate",
            "20",
            "--duration-secs",
            "3",
            "--logic-url",
            "http://127.0.0.1:7000",
        ])
        .expect("parse");

        let Some(Command::Group(args)) = cli.command else {
            panic!("group expected");
        };
        assert_eq!(args.members, 50);
        assert_eq!(args.rate, 20);
        assert_eq!(args.messaging.duration_secs, 3);
        assert_eq!(args.messaging.logic_url, "http://127.0.0.1:7000");
    }

    #[test]
    fn group_slow_readers_default_and_flag() {
        let default = Cli::try_parse_from(["im-bench", "group"]).expect("parse");
        let flagged = Cli::try_parse_from([
            "im-bench",
            "group",
            "--slow-readers",
            "20",
            "--engine-pid",
            "41",
            "--engine-pid",
            "42",
            "--engine-metrics-url",
            "http://127.0.0.1:9101/metrics",
        ])
        .expect("parse");

        let Some(Command::Group(default)) = default.command else {
            panic!("group expected");
        };
        let Some(Command::Group(flagged)) = flagged.command else {
            panic!("group expected");
        };
        assert_eq!(default.slow_readers, 0);
        assert!(default.engine_pid.is_empty());
        assert!(default.engine_metrics_url.is_empty());
        assert_eq!(flagged.slow_readers, 20);
        assert_eq!(flagged.engine_pid, [41, 42]);
        assert_eq!(
            flagged.engine_metrics_url,
            ["http://127.0.0.1:9101/metrics"]
        );
    }

    #[test]
    fn content_smaller_than_header_rejected() {
        let result = Cli::try_parse_from(["im-bench", "chat", "--content-bytes", "31"]);

        assert!(result.is_err());
    }

    #[test]
    fn group_of_one_rejected() {
        let result = Cli::try_parse_from(["im-bench", "group", "--members", "1"]);

        assert!(result.is_err());
    }

    #[test]
    fn compare_defaults() {
        let cli = Cli::try_parse_from(["im-bench", "compare"]).expect("parse");

        let Some(Command::Compare(args)) = cli.command else {
            panic!("compare expected");
        };
        assert_eq!(args.connections, 5000);
        assert_eq!(args.targets, ["engine", "rust-tungstenite", "node-ws"]);
        assert_eq!(args.engine_bin, PathBuf::from("target/release/im-engine"));
        assert_eq!(args.server_threads, None);
    }

    #[test]
    fn compare_server_threads_bounded() {
        let parse = |threads: &str| {
            Cli::try_parse_from(["im-bench", "compare", "--server-threads", threads])
        };

        assert!(parse("0").is_err());
        // The engine rejects more than 255 shards at start.
        assert!(parse("256").is_err());
        assert!(parse("255").is_ok());
        let Ok(Cli {
            command: Some(Command::Compare(args)),
            ..
        }) = parse("1")
        else {
            panic!("compare with one thread expected");
        };
        assert_eq!(args.server_threads, Some(1));
    }

    #[test]
    fn compare_targets_split_on_commas() {
        let cli = Cli::try_parse_from(["im-bench", "compare", "--targets", "node-ws,engine"])
            .expect("parse");

        let Some(Command::Compare(args)) = cli.command else {
            panic!("compare expected");
        };
        assert_eq!(args.targets, ["node-ws", "engine"]);
    }

    #[test]
    fn positional_argument_rejected() {
        let result = Cli::try_parse_from(["im-bench", "1000"]);

        assert!(result.is_err());
    }
}
