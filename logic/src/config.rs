//! Configuration of the logic tier: the `[logic]` table of the TOML file that the engine shares,
//! environment variables `IM_LOGIC_<FIELD>` and command-line flags `--field-name`.
//!
//! Precedence, highest first: flag, environment variable, file, built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use im_settings::redact_url;

/// Prefix of the environment variables that override single fields.
pub const ENV_PREFIX: &str = "IM_LOGIC_";

/// Names of the `[logic]` fields, each documented in im.toml.
pub use im_settings::LOGIC_FIELDS as FIELDS;

/// Fields whose environment variable is taken as raw text. Figment parses other variables as
/// TOML values, so a secret of digits would become a number and fail to load.
const RAW_TEXT_FIELDS: &[&str] = &["server_secret", "internal_secret"];

/// Largest accepted `max_friends_per_user`: at 48 bytes an entry, 80,000 entries make a
/// ListFriends reply of 3,840,000 bytes, below gRPC's 4 MiB message limit.
const MAX_FRIENDS_PER_USER_LIMIT: u64 = 80_000;

/// Largest accepted `max_group_members`. A group message is stored once per member in one
/// transaction, so this bounds the work of one send.
pub const MAX_GROUP_MEMBERS_LIMIT: u32 = 10_000;

/// Shortest and longest accepted `server_secret`, in bytes, when it is set.
const SERVER_SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=1024;

/// Settings of one logic process. `Debug` hides the passwords in the store URLs and the server
/// secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC server (`DeviceIntService` and `LogicExtService`), "host:port".
    /// Default "127.0.0.1:50051". Port 0 picks a free port; `LogicServer::local_addr` returns it.
    pub listen_addr: String,
    /// Address of the Prometheus endpoint, `GET /metrics`, "ip:port". Default "127.0.0.1:9102".
    /// Empty turns the endpoint off. Port 0 picks a free port; `LogicServer::metrics_addr`
    /// returns it.
    pub metrics_addr: String,
    /// Address of the HTTP server for the web client, "ip:port": the built static files of
    /// `web_root` and `LogicExtService` as gRPC-Web, on one origin. Default "127.0.0.1:8081".
    /// Empty turns it off. Port 0 picks a free port; `LogicServer::web_addr` returns it.
    pub web_addr: String,
    /// Directory of the built web client (`npm run build` in web/ writes web/dist), relative to
    /// the working directory or absolute. Default "web/dist". When it has no index.html, the
    /// server logs a warning and returns 404 for page requests.
    pub web_root: String,
    /// PostgreSQL URL, for example "postgres://user:password@host:5432/im".
    /// Default "postgres://postgres@127.0.0.1:55432/im".
    pub database_url: String,
    /// Redis URL, for example "redis://:password@host:6379/0". Default "redis://127.0.0.1:56379/".
    pub redis_url: String,
    /// Maximum number of pooled PostgreSQL connections. Default 16, range 1 to 1024. When all are
    /// busy, a request waits up to `db_timeout_ms` for one and then fails with TIMEOUT.
    pub db_pool_size: u32,
    /// Deadline of one PostgreSQL statement, waiting for a pooled connection and connecting
    /// included, in milliseconds. Default 3000, range 1 to 600000. A statement past it fails
    /// with TIMEOUT, and the server cancels it (`statement_timeout` of each pooled session).
    pub db_timeout_ms: u64,
    /// Deadline of one Redis command, queueing in the pipeline included, in milliseconds.
    /// Default 1000, range 1 to 600000. A command past it fails with TIMEOUT.
    pub redis_timeout_ms: u64,
    /// Lifetime of a token issued at LOGIN, in seconds. Default 2592000 (30 days), range 1 to
    /// 315360000 (10 years). SIGN_IN with an older token fails with TOKEN_EXPIRED.
    pub token_ttl_secs: u64,
    /// Argon2id memory cost of new password hashes, in KiB. Default 19456 (19 MiB), range
    /// 8 × `argon2_parallelism` to 4194304. Each hash in progress uses this much memory, and at
    /// most `max_password_hashes` run at a time.
    pub argon2_memory_kib: u32,
    /// Argon2id passes over memory for new password hashes. Default 2, range 1 to 100.
    pub argon2_iterations: u32,
    /// Argon2id lanes for new password hashes. Default 1, range 1 to 64. The hash is computed
    /// on one thread whatever this value is.
    pub argon2_parallelism: u32,
    /// Password hashes (REGISTER) and checks (LOGIN) that run at once, each on a thread of its
    /// own. Default 0, which means one per CPU; range 0 to 1024. Further calls wait for a place
    /// up to `password_hash_wait_ms`.
    pub max_password_hashes: u32,
    /// Maximum time a REGISTER or LOGIN waits for one of the `max_password_hashes` places, in
    /// milliseconds. Default 1000, range 0 to 60000, where 0 does not wait. A call that waited
    /// this long is rejected with BUSY and hashes nothing, so that a burst of calls cannot
    /// build a queue without end.
    pub password_hash_wait_ms: u64,
    /// Deadline of a call to an engine node (connecting included), in milliseconds.
    /// Default 2000, range 1 to 600000. A kick past it is logged and dropped.
    pub engine_call_timeout_ms: u64,
    /// Deadline of each call to `listen_addr`, request body included, in milliseconds.
    /// Default 60000, range 1000 to 3600000. A caller's shorter `grpc-timeout` applies instead.
    /// A call past it ends with CANCELLED, so a client that stops sending its request cannot
    /// hold a call open.
    pub request_timeout_ms: u64,
    /// Maximum number of queued Redis commands sent in one pipeline. Default 512, range 1 to
    /// 65536. Commands beyond it go in the next pipeline; 1 turns pipelining off.
    pub redis_batch_max: u32,
    /// Maximum number of queued sends stored in one PostgreSQL transaction. Default 256, range 1
    /// to 65536. Sends beyond it go in the next transaction; 1 stores every send on its own.
    pub send_batch_max: u32,
    /// How long start-up keeps retrying an unreachable PostgreSQL or Redis, in milliseconds.
    /// Default 30000, range 0 to 3600000. 0 tries once; start-up fails after the last try.
    pub startup_retry_ms: u64,
    /// Largest message content accepted by SEND and ServerSend, in bytes. Default 16384, range 1
    /// to 1048576. Larger content fails with CONTENT_TOO_LARGE.
    pub max_content_bytes: u32,
    /// Maximum members of a group, its owner included. Default 500, range 1 to 10000. A message
    /// to a group is stored once per member in one transaction, so this bounds the work of one
    /// send. Creating or growing a group past it fails with GROUP_FULL.
    pub max_group_members: u32,
    /// Maximum groups one user is a member of. Default 1000, range 1 to 100000. ListGroups
    /// returns every group of the caller with its member ids in one reply, so this bounds that
    /// reply. Creating a group, or adding a user to one, that would pass it for any user
    /// involved fails with TOO_MANY_GROUPS.
    pub max_groups_per_user: u32,
    /// Maximum entries of one user's friend list: friends and pending friend requests in both
    /// directions together. Default 10000, range 1 to 80000. ListFriends returns the whole list
    /// in one reply, which a gRPC client takes only up to 4 MiB (4,194,304 bytes). An entry is
    /// at most 48 bytes on the wire: a user id of up to 9 varint bytes, a username of up to 32
    /// bytes and the state, each with its tag, plus the entry's own tag and length. So the
    /// default bounds the reply at 480,000 bytes and the maximum at 3,840,000. A friend request
    /// that would give either user more entries fails with TOO_MANY_FRIENDS; accepting a
    /// pending request adds no entry.
    pub max_friends_per_user: u32,
    /// Secret that back ends present in the "im-server-secret" metadata of ServerSend. Default
    /// empty, which rejects every ServerSend with PERMISSION_DENIED; otherwise 16 to 1024 bytes.
    /// Never logged.
    pub server_secret: String,
    /// Largest page a SYNC may ask for, in messages. Default 500, range 1 to 10000. A larger
    /// `limit` fails with INVALID_ARGUMENT; `limit` 0 means 100, or this value if it is smaller.
    pub sync_max_page: u32,
    /// Most content bytes in one SYNC page. A page ends before the message that would pass it
    /// (but always contains at least one message) and says `has_more`, so that a reply stays below
    /// the engine's `max_outbound_bytes` queue limit. Default 262,144, range 1,024 to 16,777,216.
    pub sync_max_page_bytes: u32,
    /// Days a stored message copy is kept. Default 0, which keeps every copy; otherwise 1 to
    /// 36500. At start and every ten minutes each logic process deletes the copies that are
    /// older, after building the index on `messages.sent_at` that the deletion needs. Seqs are
    /// not reused, so a device that syncs from an older seq gets the copies that are left.
    pub message_retention_days: u32,
    /// Secret that engine nodes present in the "im-internal-secret" metadata of
    /// `DeviceIntService` calls, and that this process sends to their `ConnectIntService`.
    /// Default empty, which sends and checks none and is allowed only while `listen_addr` is a
    /// loopback address; otherwise 16 to 1024 visible ASCII bytes, the same as the engine's
    /// `internal_secret`. `LogicExtService` does not check it. Never logged.
    pub internal_secret: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_addr: "127.0.0.1:50051".to_owned(),
            metrics_addr: "127.0.0.1:9102".to_owned(),
            web_addr: "127.0.0.1:8081".to_owned(),
            web_root: "web/dist".to_owned(),
            database_url: "postgres://postgres@127.0.0.1:55432/im".to_owned(),
            redis_url: "redis://127.0.0.1:56379/".to_owned(),
            db_pool_size: 16,
            db_timeout_ms: 3_000,
            redis_timeout_ms: 1_000,
            token_ttl_secs: 30 * 24 * 3600,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_password_hashes: 0,
            password_hash_wait_ms: 1_000,
            engine_call_timeout_ms: 2_000,
            request_timeout_ms: 60_000,
            redis_batch_max: 512,
            send_batch_max: 256,
            startup_retry_ms: 30_000,
            max_content_bytes: 16_384,
            max_group_members: 500,
            max_groups_per_user: 1000,
            max_friends_per_user: 10_000,
            server_secret: String::new(),
            sync_max_page: 500,
            sync_max_page_bytes: 256 * 1024,
            message_retention_days: 0,
            internal_secret: String::new(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("web_addr", &self.web_addr)
            .field("web_root", &self.web_root)
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("db_pool_size", &self.db_pool_size)
            .field("db_timeout_ms", &self.db_timeout_ms)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("argon2_memory_kib", &self.argon2_memory_kib)
            .field("argon2_iterations", &self.argon2_iterations)
            .field("argon2_parallelism", &self.argon2_parallelism)
            .field("max_password_hashes", &self.max_password_hashes)
            .field("password_hash_wait_ms", &self.password_hash_wait_ms)
            .field("engine_call_timeout_ms", &self.engine_call_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("redis_batch_max", &self.redis_batch_max)
            .field("send_batch_max", &self.send_batch_max)
            .field("startup_retry_ms", &self.startup_retry_ms)
            .field("max_content_bytes", &self.max_content_bytes)
            .field("max_group_members", &self.max_group_members)
            .field("max_groups_per_user", &self.max_groups_per_user)
            .field("max_friends_per_user", &self.max_friends_per_user)
            .field("server_secret", &redact_secret(&self.server_secret))
            .field("sync_max_page", &self.sync_max_page)
            .field("sync_max_page_bytes", &self.sync_max_page_bytes)
            .field("message_retention_days", &self.message_retention_days)
            .field("internal_secret", &redact_secret(&self.internal_secret))
            .finish()
    }
}

/// Command line of `im-logic`. Each field flag overrides the file and the environment.
#[derive(Debug, Default, Parser, Serialize)]
#[command(name = "im-logic", version, about = "Logic tier of the IM system")]
pub struct Cli {
    /// TOML file with a [logic] table; without it, im.toml in the working directory if present.
    #[arg(long, env = "IM_CONFIG", value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Check the settings (file, environment and flags) and exit: status 0 when they are
    /// valid, 2 with the error otherwise. Nothing is bound or connected.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// gRPC listen address, host:port.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<String>,
    /// Prometheus endpoint address, ip:port; empty turns it off.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Web client address (static files and gRPC-Web), ip:port; empty turns it off.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_addr: Option<String>,
    /// Directory of the built web client.
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_root: Option<String>,
    /// PostgreSQL URL.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Redis URL.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Maximum pooled PostgreSQL connections.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("db_pool_size")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_pool_size: Option<u32>,
    /// PostgreSQL statement deadline, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("db_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_timeout_ms: Option<u64>,
    /// Redis command deadline, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("redis_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_timeout_ms: Option<u64>,
    /// Token lifetime, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("token_ttl_secs")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl_secs: Option<u64>,
    /// Argon2id memory cost, in KiB.
    #[arg(
        long,
        value_name = "KIB",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("argon2_memory_kib")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2_memory_kib: Option<u32>,
    /// Argon2id passes.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("argon2_iterations")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2_iterations: Option<u32>,
    /// Argon2id lanes.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("argon2_parallelism")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2_parallelism: Option<u32>,
    /// Engine call deadline, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("engine_call_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_call_timeout_ms: Option<u64>,
    /// Deadline of each call to listen_addr, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("request_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Maximum Redis commands per pipeline.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("redis_batch_max")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_batch_max: Option<u32>,
    /// Maximum sends per PostgreSQL transaction.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("send_batch_max")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_batch_max: Option<u32>,
    /// How long start-up retries unreachable stores, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("startup_retry_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_retry_ms: Option<u64>,
    /// Largest message content, in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("max_content_bytes")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_content_bytes: Option<u32>,
    /// Maximum members of a group.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("max_group_members")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_group_members: Option<u32>,
    /// Maximum groups one user is a member of.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("max_groups_per_user")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_groups_per_user: Option<u32>,
    /// Maximum friends and pending friend requests of one user.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("max_friends_per_user")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_friends_per_user: Option<u32>,
    /// Largest SYNC page, in messages.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("sync_max_page")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_max_page: Option<u32>,
    /// Days a stored message is kept; 0 keeps every message.
    #[arg(
        long,
        value_name = "DAYS",
        allow_negative_numbers = true,
        value_parser = whole_number::<u32>("message_retention_days")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_retention_days: Option<u32>,
    // server_secret and internal_secret have no flag, because a command line is visible to every local user: set it
    // in the file or in IM_LOGIC_SERVER_SECRET.
}

/// Returns the parser of the flag of the whole-number setting `setting`, which accepts the range
/// that [`im_settings::LOGIC_RANGES`] gives it and names that range in its error.
fn whole_number<T: im_settings::WholeNumber>(
    setting: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    im_settings::whole_number_flag(im_settings::LOGIC_RANGES, setting)
}

/// Error from loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not parse, or a value has the wrong type or an unknown field name.
    #[error(
        "invalid logic configuration: {}; im.toml gives each setting's type and default",
        im_settings::describe(.0, ENV_PREFIX)
    )]
    Parse(Box<figment::Error>),
    /// The settings file is missing, unreadable, not TOML or contains an unknown table.
    #[error(transparent)]
    File(#[from] im_settings::FileError),
    /// An `IM_LOGIC_` variable names no setting, such as `IM_LOGIC_` itself.
    #[error(transparent)]
    Env(#[from] im_settings::EnvError),
    /// A value has the right type but is out of range or does not fit the other settings.
    #[error(transparent)]
    Invalid(#[from] im_settings::InvalidSetting),
}

impl Config {
    /// Loads the configuration from the file the command line names, the environment and the
    /// command line, then validates it.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] names the file, or the field, the value and an accepted range.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = im_settings::settings_file_path(cli.config.as_deref());
        Config::load_from(file.as_deref(), cli)
    }

    /// Loads defaults, then `file`'s `[logic]` table if given, then `IM_LOGIC_*` variables, then
    /// the flags in `cli` (its `config` field is ignored), and validates the result.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load_from(file: Option<&Path>, cli: &Cli) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            let file = im_settings::read_file(path)?;
            figment = figment.merge(Figment::from(file).focus("logic"));
        }
        // Every IM_LOGIC_* variable is read, so a misspelt one fails as an unknown field. figment
        // skips one that names no setting, such as IM_LOGIC_, which the check rejects instead.
        im_settings::check_env(ENV_PREFIX)?;
        for variable in im_settings::misspelt_prefix_vars(ENV_PREFIX) {
            tracing::warn!(
                %variable,
                "ignored: the name looks like a misspelt IM_LOGIC_ setting; fix it or unset it"
            );
        }
        let figment = figment
            .merge(im_settings::prefixed_env(ENV_PREFIX, RAW_TEXT_FIELDS))
            .merge(im_settings::raw_env(ENV_PREFIX, RAW_TEXT_FIELDS))
            .merge(im_settings::flags(cli));
        let config: Config = figment
            .extract()
            .map_err(|err| ConfigError::Parse(Box::new(err)))?;
        config.validate().map_err(|err| match err {
            ConfigError::Invalid(invalid) => {
                ConfigError::Invalid(invalid.located(&figment, ENV_PREFIX))
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Checks every field against its documented range.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_internal_secret()?;
        self.metrics_socket_addr()?;
        self.web_socket_addr()?;
        validate_database_url(&self.database_url)?;
        validate_redis_url(&self.redis_url)?;
        check_range("db_pool_size", self.db_pool_size.into(), 1, 1024)?;
        check_range("db_timeout_ms", self.db_timeout_ms, 1, 600_000)?;
        check_range("redis_timeout_ms", self.redis_timeout_ms, 1, 600_000)?;
        check_range("token_ttl_secs", self.token_ttl_secs, 1, 315_360_000)?;
        self.validate_argon2()?;
        check_range(
            "engine_call_timeout_ms",
            self.engine_call_timeout_ms,
            1,
            600_000,
        )?;
        check_range(
            "request_timeout_ms",
            self.request_timeout_ms,
            1_000,
            3_600_000,
        )?;
        check_range("redis_batch_max", self.redis_batch_max.into(), 1, 65_536)?;
        check_range("send_batch_max", self.send_batch_max.into(), 1, 65_536)?;
        check_range("startup_retry_ms", self.startup_retry_ms, 0, 3_600_000)?;
        self.validate_messaging()
    }

    /// Rejects an empty `internal_secret` while `listen_addr` is reachable from other hosts,
    /// because `DeviceIntService` would then sign in and send for anyone who calls it, and a
    /// secret of the wrong length or characters.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `internal_secret` (or `listen_addr` when it does not
    /// parse). The message never contains the secret.
    pub fn validate_internal_secret(&self) -> Result<(), ConfigError> {
        let listen_addr = self.listen_socket_addr()?;
        let length = self.internal_secret.len();
        let reject = |value: String, fix: &str| Err(invalid("internal_secret", value, fix));
        if length == 0 && !listen_addr.ip().is_loopback() {
            return reject(
                format!("\"\" with listen_addr = {listen_addr}"),
                "set IM_LOGIC_INTERNAL_SECRET (and the same IM_ENGINE_INTERNAL_SECRET on every \
                 engine node) to 16 or more random bytes, or bind listen_addr to a loopback address",
            );
        }
        if !self
            .internal_secret
            .bytes()
            .all(|byte| byte.is_ascii_graphic())
        {
            return reject(
                format!("<{length} bytes>"),
                "use visible ASCII characters only (it travels in gRPC metadata)",
            );
        }
        if length > 0 && !SERVER_SECRET_LEN.contains(&length) {
            return reject(
                format!("<{length} bytes>"),
                "use 16 to 1024 bytes, the same as the engine's internal_secret",
            );
        }
        Ok(())
    }

    /// Returns `listen_addr` as a socket address.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when it is not "ip:port".
    pub fn listen_socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen_addr.parse().map_err(|_| {
            invalid(
                "listen_addr",
                self.listen_addr.clone(),
                "use IP:PORT, for example 127.0.0.1:50051 (port 0 picks a free port)",
            )
        })
    }

    /// Returns `metrics_addr` as a socket address, or `None` when it is empty (metrics off).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when it is neither empty nor "ip:port".
    pub fn metrics_socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_addr.is_empty() {
            return Ok(None);
        }
        self.metrics_addr.parse().map(Some).map_err(|_| {
            invalid(
                "metrics_addr",
                self.metrics_addr.clone(),
                "use IP:PORT, for example 127.0.0.1:9102 (port 0 picks a free port), or \
                 empty to turn metrics off",
            )
        })
    }

    /// Returns `web_addr` as a socket address, or `None` when it is empty (web client off).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when it is neither empty nor "ip:port".
    pub fn web_socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.web_addr.is_empty() {
            return Ok(None);
        }
        self.web_addr.parse().map(Some).map_err(|_| {
            invalid(
                "web_addr",
                self.web_addr.clone(),
                "use IP:PORT, for example 127.0.0.1:8081 (port 0 picks a free port), or \
                 empty to turn the web client off",
            )
        })
    }

    /// Returns the Argon2id parameters for new password hashes.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when the argon2 crate rejects the combination.
    pub fn argon2_params(&self) -> Result<argon2::Params, ConfigError> {
        argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
        .map_err(|err| {
            invalid(
                "argon2_memory_kib",
                format!(
                    "{} (iterations {}, parallelism {})",
                    self.argon2_memory_kib, self.argon2_iterations, self.argon2_parallelism
                ),
                format!("the argon2 crate rejects these parameters: {err}"),
            )
        })
    }

    fn validate_messaging(&self) -> Result<(), ConfigError> {
        check_range(
            "max_content_bytes",
            self.max_content_bytes.into(),
            1,
            1_048_576,
        )?;
        check_range(
            "max_group_members",
            self.max_group_members.into(),
            1,
            MAX_GROUP_MEMBERS_LIMIT.into(),
        )?;
        check_range(
            "max_groups_per_user",
            self.max_groups_per_user.into(),
            1,
            100_000,
        )?;
        check_range(
            "max_friends_per_user",
            self.max_friends_per_user.into(),
            1,
            MAX_FRIENDS_PER_USER_LIMIT,
        )?;
        check_range("sync_max_page", self.sync_max_page.into(), 1, 10_000)?;
        check_range(
            "sync_max_page_bytes",
            self.sync_max_page_bytes.into(),
            1024,
            16 * 1024 * 1024,
        )?;
        if self.message_retention_days > 36_500 {
            return Err(invalid(
                "message_retention_days",
                self.message_retention_days.to_string(),
                "use 0 to keep every message, or a number of days from 1 to 36500",
            ));
        }
        let secret_len = self.server_secret.len();
        if secret_len == 0 || SERVER_SECRET_LEN.contains(&secret_len) {
            return Ok(());
        }
        Err(invalid(
            "server_secret",
            format!("<{secret_len} bytes>"),
            "use 16 to 1024 bytes, or leave it empty to disable ServerSend",
        ))
    }

    fn validate_argon2(&self) -> Result<(), ConfigError> {
        check_range("argon2_parallelism", self.argon2_parallelism.into(), 1, 64)?;
        check_range("argon2_iterations", self.argon2_iterations.into(), 1, 100)?;
        check_range(
            "max_password_hashes",
            self.max_password_hashes.into(),
            0,
            1024,
        )?;
        check_range(
            "password_hash_wait_ms",
            self.password_hash_wait_ms,
            0,
            60_000,
        )?;
        let min_memory = 8 * u64::from(self.argon2_parallelism);
        check_range(
            "argon2_memory_kib",
            self.argon2_memory_kib.into(),
            min_memory,
            4_194_304,
        )?;
        self.argon2_params().map(|_| ())
    }
}

/// Returns [`ConfigError::Invalid`] for `value` of `field` with `fix`.
fn invalid(field: &'static str, value: impl ToString, fix: impl Into<String>) -> ConfigError {
    im_settings::InvalidSetting::new("logic", field, value, fix).into()
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    Ok(im_settings::check_range("logic", field, value, min, max)?)
}

fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|err| {
            invalid(
                "database_url",
                redact_url(url),
                format!("use postgres://USER[:PASSWORD]@HOST:PORT/DATABASE ({err})"),
            )
        })
}

fn validate_redis_url(url: &str) -> Result<(), ConfigError> {
    redis::Client::open(url).map(|_| ()).map_err(|err| {
        invalid(
            "redis_url",
            redact_url(url),
            format!("use redis://[:PASSWORD@]HOST:PORT/[DB] ({err})"),
        )
    })
}

/// Returns "***" for a set secret and "" for an empty one, so logs show whether it is set.
fn redact_secret(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "***"
    }
}

#[cfg(test)]
// figment's `Jail` closures must return `figment::Error`, which is large.
#[allow(clippy::result_large_err)]
mod tests {

    use super::*;
    use figment::providers::{Format, Toml};
    use figment::Jail;

    fn load_in_jail(file: Option<&str>, cli: &Cli) -> Result<Config, ConfigError> {
        Config::load_from(file.map(Path::new), cli)
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    fn config_with(setting: &str, value: u64) -> Config {
        Figment::from(Serialized::defaults(Config::default()))
            .merge((setting, value))
            .extract()
            .expect("the value fits the type")
    }

    #[test]
    fn setting_ranges_match_validation() {
        for range in im_settings::LOGIC_RANGES {
            let setting = range.setting;
            let result = config_with(setting, range.min).validate();
            assert!(result.is_ok(), "{setting} = {}: {result:?}", range.min);
            if let Some(below) = range.min.checked_sub(1) {
                let message = config_with(setting, below)
                    .validate()
                    .unwrap_err()
                    .to_string();
                assert!(message.contains(setting), "{setting} = {below}: {message}");
            }
            let max = range.max.expect("every logic range has a maximum");
            let result = config_with(setting, max).validate();
            assert!(result.is_ok(), "{setting} = {max}: {result:?}");
            let message = config_with(setting, max + 1)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(setting),
                "{setting} = {}: {message}",
                max + 1
            );
        }
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "im.toml",
                "[engine]\nlisten_addr = \"0.0.0.0:9\"\n\n[logic]\ndb_pool_size = 3\n\
                 db_timeout_ms = 40\nredis_timeout_ms = 50\n",
            )?;
            jail.set_env("IM_LOGIC_DB_TIMEOUT_MS", "41");
            jail.set_env("IM_LOGIC_REDIS_TIMEOUT_MS", "51");
            let cli = Cli {
                redis_timeout_ms: Some(52),
                ..Cli::default()
            };
            let config = load_in_jail(Some("im.toml"), &cli).expect("loads");
            assert_eq!(config.db_pool_size, 3, "file beats default");
            assert_eq!(config.db_timeout_ms, 41, "env beats file");
            assert_eq!(config.redis_timeout_ms, 52, "flag beats env");
            assert_eq!(config.listen_addr, "127.0.0.1:50051", "[engine] is ignored");
            assert_eq!(config.token_ttl_secs, 2_592_000, "default stays");
            Ok(())
        });
    }

    #[test]
    fn unknown_field_in_file_is_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[logic]\ndb_pool_sise = 3\n")?;
            let err = load_in_jail(Some("im.toml"), &Cli::default()).expect_err("typo rejected");
            let text = err.to_string();
            assert!(
                text.contains(
                    "unknown setting `db_pool_sise` (in im.toml): did you mean `db_pool_size`?"
                ),
                "{text}"
            );
            assert!(
                !text.contains("listen_addr"),
                "lists no other field: {text}"
            );
            Ok(())
        });
    }

    #[test]
    fn misspelt_variable_or_table_is_rejected() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_DB_POOL", "3");
            let err = load_in_jail(None, &Cli::default()).expect_err("unknown variable");
            let text = err.to_string();
            assert!(
                text.contains(
                    "unknown environment variable IM_LOGIC_DB_POOL: did you mean IM_LOGIC_DB_POOL_SIZE?"
                ),
                "{text}"
            );
            jail.clear_env();
            jail.create_file("im.toml", "[logik]\ndb_pool_size = 3\n")?;
            let err = load_in_jail(Some("im.toml"), &Cli::default()).expect_err("unknown table");
            let text = err.to_string();
            assert!(text.contains("holds `logik`"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn engine_setting_in_logic_names_its_table() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[logic]\nshards = 2\n")?;
            let text = load_in_jail(Some("im.toml"), &Cli::default())
                .expect_err("an engine setting")
                .to_string();
            assert!(
                text.contains("`shards` (in im.toml) is a setting of the [engine] table"),
                "{text}"
            );
            jail.set_env("IM_LOGIC_SHARDS", "2");
            let text = load_in_jail(None, &Cli::default())
                .expect_err("an engine variable")
                .to_string();
            assert!(
                text.contains("set IM_ENGINE_SHARDS for it instead"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn empty_setting_name_in_variable_is_rejected() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_", "3");
            let err = load_in_jail(None, &Cli::default()).expect_err("no setting named");
            let text = err.to_string();
            assert!(text.contains("IM_LOGIC_"), "{text}");
            assert!(text.contains("no setting"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn out_of_range_value_is_explained() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_DB_POOL_SIZE", "0");
            let err = load_in_jail(None, &Cli::default()).expect_err("0 rejected");
            assert_eq!(
                err.to_string(),
                "invalid logic setting db_pool_size = 0 (from IM_LOGIC_DB_POOL_SIZE): use a \
                 value from 1 to 1024"
            );
            Ok(())
        });
    }

    #[test]
    fn message_retention_is_off_by_default_and_bounded() {
        assert_eq!(Config::default().message_retention_days, 0);
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_MESSAGE_RETENTION_DAYS", "30");
            let config = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(config.message_retention_days, 30);
            jail.set_env("IM_LOGIC_MESSAGE_RETENTION_DAYS", "36501");
            let err = load_in_jail(None, &Cli::default()).expect_err("too long");
            assert_eq!(
                err.to_string(),
                "invalid logic setting message_retention_days = 36501 (from \
                 IM_LOGIC_MESSAGE_RETENTION_DAYS): use 0 to keep every message, or a number of \
                 days from 1 to 36500"
            );
            Ok(())
        });
    }

    #[test]
    fn max_groups_per_user_is_read_and_bounded() {
        assert_eq!(Config::default().max_groups_per_user, 1000);
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_MAX_GROUPS_PER_USER", "100000");
            let config = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(config.max_groups_per_user, 100_000);
            for rejected in ["0", "100001"] {
                jail.set_env("IM_LOGIC_MAX_GROUPS_PER_USER", rejected);
                let err = load_in_jail(None, &Cli::default()).expect_err("out of range");
                assert_eq!(
                    err.to_string(),
                    format!(
                        "invalid logic setting max_groups_per_user = {rejected} (from \
                         IM_LOGIC_MAX_GROUPS_PER_USER): use a value from 1 to 100000"
                    )
                );
            }
            Ok(())
        });
    }

    #[test]
    fn max_friends_per_user_is_read_and_bounded() {
        assert_eq!(Config::default().max_friends_per_user, 10_000);
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_MAX_FRIENDS_PER_USER", "80000");
            let config = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(config.max_friends_per_user, 80_000);
            for rejected in ["0", "80001"] {
                jail.set_env("IM_LOGIC_MAX_FRIENDS_PER_USER", rejected);
                let err = load_in_jail(None, &Cli::default()).expect_err("out of range");
                assert_eq!(
                    err.to_string(),
                    format!(
                        "invalid logic setting max_friends_per_user = {rejected} (from \
                         IM_LOGIC_MAX_FRIENDS_PER_USER): use a value from 1 to 80000"
                    )
                );
            }
            Ok(())
        });
    }

    #[test]
    fn password_hash_limits_are_read_and_bounded() {
        let defaults = Config::default();
        assert_eq!(defaults.max_password_hashes, 0, "one per CPU");
        assert_eq!(defaults.password_hash_wait_ms, 1000);
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_MAX_PASSWORD_HASHES", "1024");
            jail.set_env("IM_LOGIC_PASSWORD_HASH_WAIT_MS", "0");
            let config = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(config.max_password_hashes, 1024);
            assert_eq!(config.password_hash_wait_ms, 0);
            jail.set_env("IM_LOGIC_MAX_PASSWORD_HASHES", "1025");
            let err = load_in_jail(None, &Cli::default()).expect_err("too many");
            assert!(
                err.to_string().starts_with(
                    "invalid logic setting max_password_hashes = 1025 (from \
                     IM_LOGIC_MAX_PASSWORD_HASHES): use a value from 0 to 1024"
                ),
                "{err}"
            );
            jail.set_env("IM_LOGIC_MAX_PASSWORD_HASHES", "2");
            jail.set_env("IM_LOGIC_PASSWORD_HASH_WAIT_MS", "60001");
            let err = load_in_jail(None, &Cli::default()).expect_err("too long");
            assert!(
                err.to_string().starts_with(
                    "invalid logic setting password_hash_wait_ms = 60001 (from \
                     IM_LOGIC_PASSWORD_HASH_WAIT_MS): use a value from 0 to 60000"
                ),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn wrong_type_names_the_field() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_REDIS_BATCH_MAX", "many");
            let err = load_in_jail(None, &Cli::default()).expect_err("text rejected");
            let text = err.to_string();
            assert!(
                text.contains(
                    "redis_batch_max: found string \"many\", expected a whole number from 1 to \
                     65536 (from IM_LOGIC_REDIS_BATCH_MAX)"
                ),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn invalid_listen_addr_is_rejected() {
        let config = Config {
            listen_addr: "localhost".to_owned(),
            ..Config::default()
        };
        let err = config.validate().expect_err("no port");
        assert!(err
            .to_string()
            .starts_with("invalid logic setting listen_addr = localhost: use IP:PORT"));
    }

    #[test]
    fn metrics_addr_may_be_empty_but_not_malformed() {
        let off = Config {
            metrics_addr: String::new(),
            ..Config::default()
        };
        assert_eq!(off.metrics_socket_addr().expect("empty is valid"), None);

        let default_addr = Config::default().metrics_socket_addr().expect("default");
        assert_eq!(default_addr, Some("127.0.0.1:9102".parse().expect("addr")));

        let malformed = Config {
            metrics_addr: "localhost:9102".to_owned(),
            ..Config::default()
        };
        let err = malformed.validate().expect_err("host name rejected");
        assert!(err
            .to_string()
            .starts_with("invalid logic setting metrics_addr = localhost:9102: use IP:PORT"));
    }

    #[test]
    fn metrics_addr_flag_beats_env() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_METRICS_ADDR", "");
            let from_env = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(from_env.metrics_addr, "", "env turns metrics off");

            let cli = Cli {
                metrics_addr: Some("127.0.0.1:0".to_owned()),
                ..Cli::default()
            };
            let from_flag = load_in_jail(None, &cli).expect("loads");
            assert_eq!(from_flag.metrics_addr, "127.0.0.1:0");
            Ok(())
        });
    }

    #[test]
    fn web_addr_may_be_empty_but_not_malformed() {
        let off = Config {
            web_addr: String::new(),
            ..Config::default()
        };
        assert_eq!(off.web_socket_addr().expect("empty is valid"), None);

        let default_addr = Config::default().web_socket_addr().expect("default");
        assert_eq!(default_addr, Some("127.0.0.1:8081".parse().expect("addr")));

        let malformed = Config {
            web_addr: "localhost:8081".to_owned(),
            ..Config::default()
        };
        let err = malformed.validate().expect_err("host name rejected");
        assert!(err
            .to_string()
            .starts_with("invalid logic setting web_addr = localhost:8081: use IP:PORT"));
    }

    #[test]
    fn web_settings_come_from_env_and_flags() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_WEB_ADDR", "");
            jail.set_env("IM_LOGIC_WEB_ROOT", "/srv/im-web");
            let from_env = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(from_env.web_addr, "", "env turns the web client off");
            assert_eq!(from_env.web_root, "/srv/im-web");

            let cli = Cli {
                web_addr: Some("127.0.0.1:0".to_owned()),
                ..Cli::default()
            };
            let from_flag = load_in_jail(None, &cli).expect("loads");
            assert_eq!(from_flag.web_addr, "127.0.0.1:0", "flag beats env");
            Ok(())
        });
    }

    #[test]
    fn argon2_memory_below_lanes_minimum_is_rejected() {
        let config = Config {
            argon2_memory_kib: 8,
            argon2_parallelism: 2,
            ..Config::default()
        };
        let err = config.validate().expect_err("8 KiB for 2 lanes");
        assert_eq!(
            err.to_string(),
            "invalid logic setting argon2_memory_kib = 8: use a value from 16 to 4194304"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        Jail::expect_with(|_| {
            let cli = Cli {
                config: Some(PathBuf::from("/nonexistent/im.toml")),
                ..Cli::default()
            };
            let err = Config::load(&cli).expect_err("missing");
            assert!(
                err.to_string()
                    .starts_with("settings file /nonexistent/im.toml not found: pass an existing"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn missing_relative_file_named_absolute() {
        Jail::expect_with(|_jail| {
            let cli = Cli {
                config: Some(PathBuf::from("typo.toml")),
                ..Cli::default()
            };
            let err = Config::load(&cli).expect_err("missing");
            let looked_at = std::env::current_dir()
                .expect("working directory")
                .join("typo.toml");
            assert!(
                err.to_string()
                    .starts_with(&format!("settings file {} not found", looked_at.display())),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn dev_null_and_directory_as_config() {
        Jail::expect_with(|jail| {
            jail.create_dir("settings")?;
            let cli = Cli::default();
            let config = Config::load_from(Some(Path::new("/dev/null")), &cli);
            assert!(config.is_ok(), "{config:?}");
            let err =
                Config::load_from(Some(Path::new("settings")), &cli).expect_err("a directory");
            assert!(
                err.to_string()
                    .contains("cannot read the settings file settings: "),
                "{err}"
            );
            assert!(
                err.to_string().contains("it is a directory, not a file"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn range_error_names_source_of_value() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[logic]\ndb_pool_size = 0\n")?;
            let err = load_in_jail(Some("im.toml"), &Cli::default()).expect_err("from the file");
            assert_eq!(
                err.to_string(),
                "invalid logic setting db_pool_size = 0 (in im.toml): use a value from 1 to 1024"
            );

            let cli = Cli {
                db_timeout_ms: Some(600_001),
                ..Cli::default()
            };
            let err = load_in_jail(None, &cli).expect_err("from a flag");
            assert_eq!(
                err.to_string(),
                "invalid logic setting db_timeout_ms = 600001 (from --db-timeout-ms): use a value \
                 from 1 to 600000"
            );

            // The empty default secret does not fit a public listen_addr.
            jail.set_env("IM_LOGIC_LISTEN_ADDR", "0.0.0.0:50051");
            let err = load_in_jail(None, &Cli::default()).expect_err("a default");
            assert!(
                err.to_string().starts_with(
                    "invalid logic setting internal_secret = \"\" with listen_addr = \
                                  0.0.0.0:50051 (the default): "
                ),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn duplicate_key_in_file_is_parse_error() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[logic]\ndb_pool_size = 3\ndb_pool_size = 4\n")?;
            let err = load_in_jail(Some("im.toml"), &Cli::default()).expect_err("a key twice");
            assert!(
                err.to_string()
                    .starts_with("parse error in the settings file im.toml at line 3, column 1: "),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn env_var_for_every_field_is_read() {
        let defaults = figment::value::Value::serialize(Config::default()).expect("serializes");
        let dict = defaults.into_dict().expect("a table");
        let mut keys: Vec<&str> = dict.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut fields = FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn example_file_lists_every_field_with_its_default() {
        let example = include_str!("../../im.toml");
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if FIELDS.iter().any(|f| rest.starts_with(&format!("{f} = "))) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let listed = FIELDS
            .iter()
            .filter(|f| {
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{f} = ")))
            })
            .count();
        assert_eq!(listed, FIELDS.len(), "every field appears in im.toml");
        let config: Config = Figment::from(Toml::string(&uncommented))
            .focus("logic")
            .extract()
            .expect("im.toml parses");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn server_secret_length_is_checked() {
        for (secret, valid) in [
            ("", true),
            ("s".repeat(15).as_str(), false),
            ("s".repeat(16).as_str(), true),
        ] {
            let config = Config {
                server_secret: secret.to_owned(),
                ..Config::default()
            };
            assert_eq!(config.validate().is_ok(), valid, "{} bytes", secret.len());
        }
        let config = Config {
            server_secret: "short".to_owned(),
            ..Config::default()
        };
        let message = config.validate().expect_err("5 bytes").to_string();
        assert!(!message.contains("short"), "{message}");
    }

    #[test]
    fn debug_hides_server_secret() {
        let config = Config {
            server_secret: "a back end's shared secret".to_owned(),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("shared secret"), "{debug}");
        assert!(debug.contains(r#"server_secret: "***""#), "{debug}");
    }

    #[test]
    fn public_listen_addr_needs_internal_secret() {
        let public = Config {
            listen_addr: "0.0.0.0:50051".to_owned(),
            ..Config::default()
        };
        let message = public.validate().expect_err("no secret").to_string();
        assert!(message.contains("internal_secret"), "{message}");
        assert!(message.contains("IM_LOGIC_INTERNAL_SECRET"), "{message}");

        let with_secret = Config {
            internal_secret: "s".repeat(16),
            ..public
        };
        with_secret
            .validate()
            .expect("a secret allows a public address");
        let loopback = Config {
            listen_addr: "[::1]:50051".to_owned(),
            ..Config::default()
        };
        loopback.validate().expect("loopback needs no secret");
    }

    #[test]
    fn internal_secret_length_and_characters_are_checked() {
        for (secret, valid) in [
            ("s".repeat(15), false),
            ("s".repeat(16), true),
            (format!("{} x", "s".repeat(16)), false),
        ] {
            let config = Config {
                internal_secret: secret.clone(),
                ..Config::default()
            };
            let result = config.validate();
            assert_eq!(result.is_ok(), valid, "{secret:?}");
            if let Err(err) = result {
                assert!(!err.to_string().contains(&secret), "{err}");
            }
        }
    }

    #[test]
    fn internal_secret_of_digits_loads_from_env() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_LOGIC_INTERNAL_SECRET", "1234567890123456");
            let config = load_in_jail(None, &Cli::default()).expect("loads");
            assert_eq!(config.internal_secret, "1234567890123456");
            Ok(())
        });
    }

    #[test]
    fn debug_hides_internal_secret() {
        let config = Config {
            internal_secret: "engine and logic share this".to_owned(),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("share this"), "{debug}");
    }

    #[test]
    fn debug_hides_passwords() {
        let config = Config {
            database_url: "postgres://app:s3cret@db/im".to_owned(),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn secret_variables_in_any_case_are_read() {
        for (name, field) in [
            ("im_logic_internal_secret", "internal_secret"),
            ("Im_Logic_Internal_Secret", "internal_secret"),
            ("IM_LOGIC_INTERNAL_SECRET ", "internal_secret"),
            ("im_logic_server_secret", "server_secret"),
            ("Im_Logic_Server_Secret", "server_secret"),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(name, "short");
                let err = load_in_jail(None, &Cli::default()).expect_err("5 bytes");
                let text = err.to_string();
                assert!(
                    text.starts_with(&format!(
                        "invalid logic setting {field} = <5 bytes> (from {}",
                        name.trim()
                    )),
                    "{name:?}: {text}"
                );
                assert!(!text.contains("short"), "{name:?}: {text}");
                jail.set_env(name, "1234567890123456");
                let config = load_in_jail(None, &Cli::default()).expect("16 digits load");
                let value = match field {
                    "internal_secret" => &config.internal_secret,
                    _ => &config.server_secret,
                };
                assert_eq!(value, "1234567890123456", "{name:?}");
                Ok(())
            });
        }
    }

    #[test]
    fn numeric_secrets_in_file_are_not_shown() {
        Jail::expect_with(|jail| {
            for file in [
                "[logic]\nserver_secret = 1234567890123456789\n",
                "[logic]\ninternal_secret = 1.2345678901234567e17\n",
                "[logic]\nserver_secret = 12345678901234567890123\n",
                "[engine]\ninternal_secret = 12345678901234567890123\n",
            ] {
                jail.create_file("im.toml", file)?;
                let err = load_in_jail(Some("im.toml"), &Cli::default()).expect_err(file);
                let text = err.to_string();
                assert!(text.contains("_secret"), "{text}");
                assert!(!text.contains("12345678"), "{text}");
            }
            Ok(())
        });
    }

    #[test]
    fn invalid_store_urls_hide_passwords() {
        for (database_url, redis_url, password) in [
            (
                "postgresql:/app:hunter2@127.0.0.1:1/im",
                "redis://127.0.0.1:1/",
                "hunter2",
            ),
            (
                "host=127.0.0.1 port=x password='hun ter2' user=x",
                "redis://127.0.0.1:1/",
                "ter2",
            ),
            (
                "postgres://postgres@127.0.0.1:1/im",
                "redis://:pa/ss@127.0.0.1:1/",
                "pa/ss",
            ),
        ] {
            let config = Config {
                database_url: database_url.to_owned(),
                redis_url: redis_url.to_owned(),
                ..Config::default()
            };
            let err = config.validate().expect_err(database_url);
            let text = err.to_string();
            assert!(!text.contains(password), "{text}");
        }
    }

    /// Parses `args` after the program name.
    fn parse_flags(args: &[String]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("im-logic".to_owned()).chain(args.iter().cloned()))
    }

    #[test]
    fn whole_number_flags_take_setting_ranges() {
        let checked = im_settings::testing::check_whole_number_flags::<Cli>(
            "im-logic",
            &Config::default(),
            im_settings::LOGIC_RANGES,
        );
        assert_eq!(checked.len(), 18, "{checked:?}");
    }

    #[test]
    fn max_friends_flag_names_setting_range() {
        let err = parse_flags(&["--max-friends-per-user=-1".to_owned()]).expect_err("-1");

        assert_eq!(
            err.to_string().lines().next(),
            Some(
                "error: invalid value '-1' for '--max-friends-per-user <N>': -1 is out of range, \
                 expected a whole number from 1 to 80000"
            )
        );
    }

    #[test]
    fn raw_text_fields_are_the_secrets() {
        assert_eq!(RAW_TEXT_FIELDS, im_settings::LOGIC_SECRETS);
    }

    /// The settings that `Debug` hides are those that the settings crate lists as secrets or
    /// connection strings, so that errors and logs treat each setting alike.
    #[test]
    fn debug_hides_listed_settings_only() {
        let defaults = figment::value::Value::serialize(Config::default())
            .expect("serializes")
            .into_dict()
            .expect("a table");
        let marker = "app:hunter2@host";
        for (setting, value) in defaults {
            if value.as_str().is_none() {
                continue;
            }
            let config: Config = Figment::from(Serialized::defaults(Config::default()))
                .merge((setting.as_str(), marker))
                .extract()
                .expect("a string setting takes any text");

            let debug = format!("{config:?}");

            let listed = im_settings::LOGIC_SECRETS.contains(&setting.as_str())
                || im_settings::LOGIC_URLS.contains(&setting.as_str());
            assert_eq!(!debug.contains("hunter2"), listed, "{setting}: {debug}");
        }
    }
}
