//! Engine settings: defaults, then the `[engine]` table of the TOML file, then
//! `IM_ENGINE_*` environment variables, then command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::providers::Serialized;
use figment::Figment;
use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};

/// Every engine setting. Durations are in milliseconds, sizes in bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the WebSocket listener binds on every shard (SO_REUSEPORT). Port 0 picks a
    /// free port, shared by all shards.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub ws_addr: SocketAddr,
    /// HTTP path of the WebSocket upgrade; any other path is rejected with 404.
    pub ws_path: String,
    /// PEM file with the certificate chain of the WebSocket listener, leaf first. Set with
    /// `tls_key_file` to serve wss://; both empty serve plain ws://. SIGHUP reloads both.
    pub tls_cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: String,
    /// Address of the engine's own gRPC server (ConnectIntService), called by the logic tier.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub grpc_addr: SocketAddr,
    /// Address of the Prometheus endpoint, `GET /metrics`. Empty turns it off.
    pub metrics_addr: String,
    /// Address the logic tier uses to reach this node, "host:port". Empty: the bound
    /// `grpc_addr`. Set it when the engine binds 0.0.0.0 or sits behind NAT.
    pub node_addr: String,
    /// URL of the logic tier's DeviceIntService.
    pub logic_url: String,
    /// Number of shards (threads, each with its own io_uring). 0 means one per CPU.
    pub shards: usize,
    /// Drives each shard's sockets with io_uring; false uses epoll instead. Without io_uring
    /// in the kernel, shards fall back to epoll either way.
    pub io_uring: bool,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// Above 0, each shard's ring gets a kernel thread that polls its submission queue
    /// (IORING_SETUP_SQPOLL) and sleeps after this many idle milliseconds. It saves the
    /// submit system call at the cost of one busy kernel thread per shard. 0 turns it off.
    pub sqpoll_idle_ms: u32,
    /// Sets IORING_SETUP_COOP_TASKRUN and IORING_SETUP_SINGLE_ISSUER on each shard's ring:
    /// the kernel runs completion work when the shard next enters the ring instead of
    /// interrupting it, and skips the locking a ring shared between threads needs. Falls
    /// back to a plain ring on kernels older than 6.0. Not applied with SQPOLL.
    pub ring_coop_taskrun: bool,
    /// Time allowed from TCP accept to a complete HTTP upgrade request; then the socket
    /// is closed.
    pub handshake_timeout_ms: u64,
    /// Time allowed from the upgrade to a successful SIGN_IN or LOGIN; then close 4001.
    pub sign_in_timeout_ms: u64,
    /// Heartbeat period advertised to devices in the SIGN_IN and LOGIN replies.
    pub heartbeat_interval_ms: u64,
    /// A signed-in connection that sends nothing for this long is closed with 4002.
    pub heartbeat_timeout_ms: u64,
    /// Deadline of each call to the logic tier; past it the device gets TIMEOUT.
    pub logic_call_timeout_ms: u64,
    /// Deadline of the TCP connect to the logic tier inside a call.
    pub logic_connect_timeout_ms: u64,
    /// Maximum connections open on this node at once; a new one past it is rejected with HTTP 503
    /// before the upgrade. 0 means no limit besides the open-file limit.
    pub max_connections: usize,
    /// Connections from one IP address at once; a new one past it is rejected with HTTP
    /// 503. 0 means no limit. Behind a proxy every device shares the proxy's address.
    pub max_connections_per_ip: u32,
    /// Largest frame payload accepted; a larger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Largest message (all fragments together) accepted; a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// Largest HTTP upgrade request; a larger one is rejected with 431.
    pub max_header_bytes: usize,
    /// Calls to the logic tier on the wire at once; more wait for a place, within their
    /// deadline.
    pub logic_max_in_flight: usize,
    /// REGISTER and LOGIN calls in flight at once, within `logic_max_in_flight`. They hash
    /// a password in the logic tier; more wait for a place within their deadline.
    pub logic_max_password_calls: usize,
    /// SendMany and ConnSignInMany calls of each kind on the wire at once. A SEND or SIGN_IN
    /// that finds a free place goes out at once. While all are taken, new ones wait and go
    /// together in the next call.
    pub logic_gather_calls: usize,
    /// Time a MESSAGE_ACK or an Offline waits for others to share its AckMany or OfflineMany
    /// call.
    pub logic_gather_window_ms: u64,
    /// Calls waiting for the bridge to the logic tier; a call beyond it is rejected
    /// with UNAVAILABLE at once instead of queueing.
    pub bridge_queue: usize,
    /// Bytes queued for one connection that its socket does not take; past it the
    /// connection is closed with 4008 (slow consumer). At least `max_message_bytes`.
    pub max_outbound_bytes: usize,
    /// Time a write may wait for the socket to drain before the connection is closed.
    pub write_timeout_ms: u64,
    /// Origins allowed to open a WebSocket from a browser. A request without an Origin
    /// header (not a browser) is always allowed; an empty list allows every origin.
    pub allowed_origins: Vec<String>,
    /// Times an Offline call is retried when the logic tier cannot be reached.
    pub offline_retries: u32,
    /// Time a shutdown waits for connections to finish their close handshake.
    pub shutdown_grace_ms: u64,
    /// Interval between two renewals of this node's lease with the logic tier. A failed
    /// renewal is logged and tried again at the next interval.
    pub lease_interval_ms: u64,
    /// Lifetime of each lease renewal. When no renewal arrives for this long, the logic tier
    /// takes the node for dead: it removes the online status of the node's devices and stops
    /// pushing to it. Must exceed `lease_interval_ms`, typically by 3 intervals.
    pub lease_ttl_ms: u64,
    /// Binary messages (HEARTBEAT included), pings and pongs one connection may send per
    /// second on average. A packet over it is dropped and gets RATE_LIMITED. 0 turns the
    /// packet limit off.
    pub rate_packets_per_sec: u32,
    /// Packets one connection may send at once above the average, 1 to 1,000,000.
    pub rate_packet_burst: u32,
    /// Bytes of messages one connection may send per second on average. A message over it is
    /// dropped and gets RATE_LIMITED. 0 turns the byte limit off.
    pub rate_bytes_per_sec: u32,
    /// Bytes one connection may send at once above the average; at least `max_message_bytes`
    /// so that the largest message can pass.
    pub rate_byte_burst: u32,
    /// Dropped packets in a row after which a connection that keeps sending is closed with
    /// 4009. Dropped bytes in a row over 4 × `rate_byte_burst` close it too. 0: never close.
    pub rate_limit_strikes: u32,
    /// Base of the `retry_after_ms` hint sent with BUSY, UNAVAILABLE and TIMEOUT. Each reply
    /// gets a random value from half to one and a half times it, so retries spread out.
    pub busy_retry_after_ms: u32,
    /// Secret sent to the logic tier's DeviceIntService and required from callers of this
    /// node's ConnectIntService, in the "im-internal-secret" metadata. Empty: none is sent or
    /// checked, which is allowed only while `grpc_addr` is a loopback address. Never logged.
    pub internal_secret: Secret,
}

/// Deserializes an "ip:port" address like `SocketAddr`'s own implementation, but with an error
/// that repeats the rejected text and shows the expected form.
fn deserialize_socket_addr<'de, D>(deserializer: D) -> Result<SocketAddr, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        let problem = address_problem(&text);
        D::Error::invalid_value(Unexpected::Str(&text), &problem.as_str())
    })
}

/// Says what is wrong with `text`, which is not an "ip:port" address, for the error of
/// [`deserialize_socket_addr`].
fn address_problem(text: &str) -> String {
    let form = "an IP address and port such as 127.0.0.1:8080 or [::1]:8080";
    let Some((host, port)) = text.rsplit_once(':') else {
        return format!("{form}: the port is missing");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() && port.parse::<u16>().is_err() {
        return format!("{form}: the port must be a whole number from 0 to 65535");
    }
    format!("{form}, not a host name")
}

/// A setting that must not appear in logs: `Debug` prints "***" when it is set.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Returns the secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ws_addr: ([127, 0, 0, 1], 8080).into(),
            ws_path: "/ws".to_owned(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            grpc_addr: ([127, 0, 0, 1], 50052).into(),
            metrics_addr: "127.0.0.1:9101".to_owned(),
            node_addr: String::new(),
            logic_url: "http://127.0.0.1:50051".to_owned(),
            shards: 0,
            io_uring: true,
            ring_entries: 1024,
            sqpoll_idle_ms: 0,
            ring_coop_taskrun: true,
            handshake_timeout_ms: 5_000,
            sign_in_timeout_ms: 10_000,
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_ms: 90_000,
            logic_call_timeout_ms: 3_000,
            logic_connect_timeout_ms: 1_000,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            max_header_bytes: 8 * 1024,
            logic_max_in_flight: 512,
            logic_max_password_calls: 32,
            logic_gather_calls: 4,
            logic_gather_window_ms: 5,
            bridge_queue: 65_536,
            max_outbound_bytes: 1024 * 1024,
            write_timeout_ms: 10_000,
            allowed_origins: vec![
                "http://127.0.0.1:8081".to_owned(),
                "http://localhost:8081".to_owned(),
            ],
            offline_retries: 3,
            shutdown_grace_ms: 5_000,
            lease_interval_ms: 2_000,
            lease_ttl_ms: 6_000,
            rate_packets_per_sec: 50,
            rate_packet_burst: 100,
            rate_bytes_per_sec: 256 * 1024,
            rate_byte_burst: 1024 * 1024,
            rate_limit_strikes: 100,
            busy_retry_after_ms: 500,
            internal_secret: Secret::default(),
        }
    }
}

/// An invalid setting, named with its value and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag did not parse.
    #[error(
        "invalid engine configuration: {}; im.toml gives each setting's type and default",
        im_settings::describe(.0, "IM_ENGINE_")
    )]
    Parse(#[from] Box<figment::Error>),
    /// The settings file is missing, unreadable, or contains an unknown table.
    #[error(transparent)]
    File(#[from] im_settings::FileError),
    /// An `IM_ENGINE_` variable names no setting, such as `IM_ENGINE_` itself.
    #[error(transparent)]
    Env(#[from] im_settings::EnvError),
    /// A value parsed but is out of range or does not fit the other settings.
    #[error(transparent)]
    Invalid(#[from] im_settings::InvalidSetting),
}

/// Command-line flags of `im-engine`. Each one overrides the setting of the same name.
#[derive(Debug, Default, Parser, Serialize)]
#[command(
    name = "im-engine",
    version,
    about = "Sharded WebSocket gateway of the IM system"
)]
pub struct Cli {
    /// TOML file with an `[engine]` table (env IM_CONFIG). Default: ./im.toml if it exists.
    #[arg(long, env = "IM_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Check the settings (file, environment and flags) and the TLS certificate and key files
    /// they name, then exit: status 0 when they are valid, 2 with the error otherwise. Nothing
    /// is bound or connected.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// WebSocket listen address, for example 127.0.0.1:8080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_addr: Option<SocketAddr>,
    /// HTTP path of the WebSocket upgrade.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_path: Option<String>,
    /// Listen address of the engine's gRPC server.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address the logic tier uses to reach this node.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_addr: Option<String>,
    /// URL of the logic tier, for example http://127.0.0.1:50051.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logic_url: Option<String>,
    /// Number of shards; 0 means one per CPU.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = whole_number::<usize>("shards")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Signed-in idle time before close 4002, in milliseconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("heartbeat_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Time from upgrade to sign-in before close 4001, in milliseconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("sign_in_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_in_timeout_ms: Option<u64>,
    /// Deadline of each logic-tier call, in milliseconds.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = whole_number::<u64>("logic_call_timeout_ms")
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logic_call_timeout_ms: Option<u64>,
}

/// Returns the parser of the flag of the whole-number setting `setting`, which accepts the range
/// that [`im_settings::ENGINE_RANGES`] gives it and names that range in its error.
fn whole_number<T: im_settings::WholeNumber>(
    setting: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    im_settings::whole_number_flag(im_settings::ENGINE_RANGES, setting)
}

/// Returns [`ConfigError::Invalid`] for `value` of `field` with `fix`.
fn invalid(field: &'static str, value: &dyn ToString, fix: &str) -> Result<(), ConfigError> {
    Err(im_settings::InvalidSetting::new("engine", field, value.to_string(), fix).into())
}

/// Returns [`ConfigError::Invalid`] when `value` of `field` is outside `min..=max`.
fn check_range<T: TryInto<u64>>(
    field: &'static str,
    value: T,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    // A value beyond u64 is out of every range, so u64::MAX takes its place.
    let value = value.try_into().unwrap_or(u64::MAX);
    Ok(im_settings::check_range("engine", field, value, min, max)?)
}

impl Config {
    /// Loads the settings from `cli.config` (or ./im.toml), `IM_ENGINE_*` variables and
    /// the flags, in rising precedence, and checks them.
    ///
    /// # Errors
    /// A file that does not parse, an unknown key or variable, or a value out of range.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = im_settings::settings_file_path(cli.config.as_deref()) {
            let file = im_settings::read_file(&path)?;
            figment = figment.merge(Figment::from(file).focus("engine"));
        }
        im_settings::check_env("IM_ENGINE_")?;
        for variable in im_settings::misspelt_prefix_vars("IM_ENGINE_") {
            tracing::warn!(
                %variable,
                "ignored: the name looks like a misspelt IM_ENGINE_ setting; fix it or unset it"
            );
        }
        // Taken as raw text: figment would parse a secret of digits as a number.
        let figment = figment
            .merge(im_settings::prefixed_env(
                "IM_ENGINE_",
                im_settings::ENGINE_SECRETS,
            ))
            .merge(im_settings::raw_env(
                "IM_ENGINE_",
                im_settings::ENGINE_SECRETS,
            ))
            .merge(im_settings::flags(cli));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate().map_err(|err| match err {
            ConfigError::Invalid(invalid) => {
                ConfigError::Invalid(invalid.located(&figment, "IM_ENGINE_"))
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Checks ranges that the types cannot express.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.ws_path.starts_with('/') {
            return invalid("ws_path", &self.ws_path, "start the path with '/'");
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            let (field, value) = if self.tls_cert_file.is_empty() {
                ("tls_key_file", &self.tls_key_file)
            } else {
                ("tls_cert_file", &self.tls_cert_file)
            };
            return invalid(
                field,
                value,
                "set both tls_cert_file and tls_key_file for wss://, or neither for ws://",
            );
        }
        if !self.metrics_addr.is_empty() && self.metrics_addr.parse::<SocketAddr>().is_err() {
            return invalid(
                "metrics_addr",
                &self.metrics_addr,
                "write it as ip:port, for example 127.0.0.1:9101, or empty to turn metrics off",
            );
        }
        check_range("shards", self.shards, 0, 255)?;
        if self.max_frame_bytes < 126 || self.max_message_bytes < self.max_frame_bytes {
            return invalid(
                "max_message_bytes",
                &self.max_message_bytes,
                "keep max_frame_bytes >= 126 and max_message_bytes >= max_frame_bytes",
            );
        }
        if self.max_outbound_bytes < self.max_message_bytes {
            return invalid(
                "max_outbound_bytes",
                &self.max_outbound_bytes,
                "use at least max_message_bytes, and more than the logic tier's \
                 sync_max_page_bytes, or SYNC replies close the connection with 4008",
            );
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return invalid(
                "heartbeat_timeout_ms",
                &self.heartbeat_timeout_ms,
                "set it above heartbeat_interval_ms, typically 3 intervals",
            );
        }
        if self.lease_interval_ms == 0 {
            return invalid(
                "lease_interval_ms",
                &self.lease_interval_ms,
                "use a value of 1 or more",
            );
        }
        if self.lease_ttl_ms <= self.lease_interval_ms || self.lease_ttl_ms > 600_000 {
            return invalid(
                "lease_ttl_ms",
                &self.lease_ttl_ms,
                "set it above lease_interval_ms (typically 3 intervals) and at most 600000",
            );
        }
        check_range(
            "logic_max_password_calls",
            self.logic_max_password_calls,
            1,
            65_536,
        )?;
        check_range(
            "logic_max_in_flight",
            self.logic_max_in_flight,
            1,
            1_048_576,
        )?;
        check_range("logic_gather_calls", self.logic_gather_calls, 1, 64)?;
        check_range(
            "logic_gather_window_ms",
            self.logic_gather_window_ms,
            0,
            1_000,
        )?;
        // The bridge's channel allocates all of its slots at start, about 230 bytes each.
        check_range("bridge_queue", self.bridge_queue, 1, 1_048_576)?;
        if !self.logic_url.starts_with("http://") && !self.logic_url.starts_with("https://") {
            return invalid(
                "logic_url",
                &im_settings::redact_url(&self.logic_url),
                "write it as http://host:port",
            );
        }
        self.validate_rate_limits()?;
        self.validate_internal_secret()
    }

    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        if self.rate_packets_per_sec > 0 && !(1..=1_000_000).contains(&self.rate_packet_burst) {
            return invalid(
                "rate_packet_burst",
                &self.rate_packet_burst,
                "use a value from 1 to 1000000, or set rate_packets_per_sec = 0 to turn the \
                 limit off",
            );
        }
        let largest_message = u32::try_from(self.max_message_bytes).unwrap_or(u32::MAX);
        if self.rate_bytes_per_sec > 0 && self.rate_byte_burst < largest_message {
            return invalid(
                "rate_byte_burst",
                &self.rate_byte_burst,
                "use at least max_message_bytes, or set rate_bytes_per_sec = 0 to turn the limit off",
            );
        }
        check_range("busy_retry_after_ms", self.busy_retry_after_ms, 1, 600_000)
    }

    /// Rejects an empty `internal_secret` while `grpc_addr` is reachable from other hosts,
    /// because ConnectIntService would then take kicks and pushes from anyone.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `internal_secret`, or a secret of the wrong length.
    pub fn validate_internal_secret(&self) -> Result<(), ConfigError> {
        let length = self.internal_secret.expose().len();
        if length == 0 && !self.grpc_addr.ip().is_loopback() {
            return invalid(
                "internal_secret",
                &format!("\"\" with grpc_addr = {}", self.grpc_addr),
                "set IM_ENGINE_INTERNAL_SECRET (and the same IM_LOGIC_INTERNAL_SECRET) to 16 or \
                 more random bytes, or bind grpc_addr to a loopback address",
            );
        }
        if !self
            .internal_secret
            .expose()
            .bytes()
            .all(|byte| byte.is_ascii_graphic())
        {
            return invalid(
                "internal_secret",
                &format!("<{length} bytes>"),
                "use visible ASCII characters only (it travels in gRPC metadata)",
            );
        }
        if length > 0 && !(16..=1024).contains(&length) {
            return invalid(
                "internal_secret",
                &format!("<{length} bytes>"),
                "use 16 to 1024 bytes, the same as the logic tier's internal_secret",
            );
        }
        Ok(())
    }

    /// Number of shards to start: `shards`, or one per CPU when it is 0.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(255)),
            n => n,
        }
    }
}

#[cfg(test)]
// figment's `Jail` closures must return `figment::Error`, which is large.
#[allow(clippy::result_large_err)]
mod tests {

    use figment::Jail;

    use super::*;
    use figment::providers::{Format, Toml};

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn outbound_queue_below_one_message_is_rejected() {
        let config = Config {
            max_outbound_bytes: 10,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("max_outbound_bytes = 10"), "{err}");
    }

    #[test]
    fn heartbeat_timeout_below_interval_is_rejected() {
        let config = Config {
            heartbeat_timeout_ms: 1_000,
            heartbeat_interval_ms: 2_000,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("heartbeat_timeout_ms"), "{err}");
    }

    #[test]
    fn lease_ttl_not_above_interval_is_rejected() {
        let config = Config {
            lease_interval_ms: 2_000,
            lease_ttl_ms: 2_000,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("lease_ttl_ms"), "{err}");
    }

    #[test]
    fn tls_key_without_certificate_is_rejected() {
        let config = Config {
            tls_key_file: "key.pem".to_owned(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("tls_cert_file"), "{err}");
        assert!(err.contains("tls_key_file"), "{err}");
    }

    #[test]
    fn tls_certificate_without_key_is_rejected() {
        let config = Config {
            tls_cert_file: "cert.pem".to_owned(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("tls_key_file"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_setting_without_profile() {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Figment::from(Toml::string("[engine]\nio_uring = \"FALSE\"")).focus("engine"));
        let err = figment.extract::<Config>().map_err(Box::new).unwrap_err();
        let message = ConfigError::from(err).to_string();
        assert!(
            message.contains("io_uring: found string \"FALSE\", expected a boolean"),
            "{message}"
        );
        assert!(!message.contains("default."), "{message}");
        assert!(
            message.contains("im.toml gives each setting's type"),
            "{message}"
        );
    }

    #[test]
    fn gathering_limits_out_of_range_are_rejected() {
        for (config, field) in [
            (
                Config {
                    logic_gather_calls: 0,
                    ..Config::default()
                },
                "logic_gather_calls",
            ),
            (
                Config {
                    logic_gather_calls: 65,
                    ..Config::default()
                },
                "logic_gather_calls",
            ),
            (
                Config {
                    logic_gather_window_ms: 1_001,
                    ..Config::default()
                },
                "logic_gather_window_ms",
            ),
        ] {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(field), "{message}");
        }
    }

    #[test]
    fn im_toml_lists_every_field_with_its_default() {
        let file = include_str!("../../im.toml");
        let uncommented: String = file
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = "))
                    .unwrap_or(line)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file = Figment::from(Toml::string(&uncommented));
        let config: Config = file.focus("engine").extract().expect("[engine] parses");
        assert_eq!(config, Config::default());
        let defaults = figment::value::Value::serialize(Config::default()).unwrap();
        let fields = defaults.into_dict().unwrap();
        let listed = file.find_value("engine").unwrap().into_dict().unwrap();
        assert_eq!(listed.len(), fields.len(), "every field appears in im.toml");
    }

    #[test]
    fn public_grpc_addr_needs_internal_secret() {
        let public = Config {
            grpc_addr: ([0, 0, 0, 0], 50052).into(),
            ..Config::default()
        };
        let message = public.validate().unwrap_err().to_string();
        assert!(message.contains("internal_secret"), "{message}");
        assert!(message.contains("IM_ENGINE_INTERNAL_SECRET"), "{message}");
        let with_secret = Config {
            internal_secret: "0123456789abcdef".into(),
            ..public
        };
        assert!(with_secret.validate().is_ok());
        let loopback = Config {
            grpc_addr: "[::1]:50052".parse().unwrap(),
            ..Config::default()
        };
        assert!(loopback.validate().is_ok());
    }

    #[test]
    fn short_internal_secret_is_rejected_without_showing_it() {
        let config = Config {
            internal_secret: "shortsecret".into(),
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("16 to 1024 bytes"), "{message}");
        assert!(!message.contains("shortsecret"), "{message}");
        assert!(!format!("{config:?}").contains("shortsecret"));
    }

    #[test]
    fn byte_burst_below_largest_message_is_rejected() {
        let config = Config {
            rate_byte_burst: 1024,
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("rate_byte_burst"), "{message}");
        let off = Config {
            rate_bytes_per_sec: 0,
            ..config
        };
        assert!(off.validate().is_ok());
    }

    #[test]
    fn range_error_names_source_of_value() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_ENGINE_LOGIC_MAX_IN_FLIGHT", "0");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert_eq!(
                message,
                "invalid engine setting logic_max_in_flight = 0 (from \
                 IM_ENGINE_LOGIC_MAX_IN_FLIGHT): use a value from 1 to 1048576"
            );

            jail.clear_env();
            jail.create_file("im.toml", "[engine]\nbridge_queue = 0\n")?;
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert_eq!(
                message,
                "invalid engine setting bridge_queue = 0 (in im.toml): use a value from 1 to \
                 1048576"
            );

            jail.create_file("im.toml", "")?;
            let cli = Cli::parse_from(["im-engine", "--ws-path", "chat"]);
            let message = Config::load(&cli).unwrap_err().to_string();
            assert_eq!(
                message,
                "invalid engine setting ws_path = chat (from --ws-path): start the path with '/'"
            );

            // The default lease_ttl_ms does not exceed a longer lease_interval_ms.
            jail.set_env("IM_ENGINE_LEASE_INTERVAL_MS", "10000");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.starts_with("invalid engine setting lease_ttl_ms = 6000 (the default): "),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn missing_settings_file_is_not_found() {
        Jail::expect_with(|_| {
            let cli = Cli::parse_from(["im-engine", "--config", "/nonexistent/im.toml"]);
            let message = Config::load(&cli).unwrap_err().to_string();
            assert!(
                message.starts_with(
                    "settings file /nonexistent/im.toml not found: pass an existing file with \
                     --config or IM_CONFIG"
                ),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn flags_override_defaults() {
        // In a jail, so that the variables set by other tests are not read.
        Jail::expect_with(|_| {
            let cli = Cli::parse_from(["im-engine", "--shards", "3", "--ws-path", "/chat"]);
            let config = Config::load(&cli).unwrap();
            assert_eq!(config.shards, 3);
            assert_eq!(config.ws_path, "/chat");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_in_file_gets_closest_field() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nshard = 2\n")?;
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.contains("unknown setting `shard` (in im.toml): did you mean `shards`?"),
                "{message}"
            );
            assert!(
                !message.contains("ws_path"),
                "lists no other field: {message}"
            );
            assert!(
                message.len() < 300,
                "{} characters: {message}",
                message.len()
            );
            Ok(())
        });
    }

    #[test]
    fn address_errors_say_what_is_wrong() {
        assert!(address_problem("127.0.0.1").ends_with("the port is missing"));
        assert!(address_problem("127.0.0.1:99999").ends_with("from 0 to 65535"));
        assert!(address_problem("[::1]:x").ends_with("from 0 to 65535"));
        assert!(address_problem("localhost:8080").ends_with("not a host name"));
    }

    #[test]
    fn logic_setting_in_engine_names_its_table() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\ndb_pool_size = 4\n")?;
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.contains(
                    "`db_pool_size` (in im.toml) is a setting of the [logic] table: move it \
                     under [logic]"
                ),
                "{message}"
            );
            jail.clear_env();
            jail.create_file("im.toml", "")?;
            jail.set_env("IM_ENGINE_DATABASE_URL", "postgres://127.0.0.1/im");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.contains("set IM_LOGIC_DATABASE_URL for it instead"),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn engine_fields_list_every_setting() {
        let defaults = figment::value::Value::serialize(Config::default()).unwrap();
        let mut keys: Vec<String> = defaults.into_dict().unwrap().into_keys().collect();
        keys.sort_unstable();
        let mut listed: Vec<&str> = im_settings::ENGINE_FIELDS.to_vec();
        listed.sort_unstable();

        assert_eq!(keys, listed);
    }

    #[test]
    fn capitalised_key_in_file_names_lower_case_key() {
        Jail::expect_with(|jail| {
            jail.create_file("im.toml", "[engine]\nSHARDS = 2\n")?;
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(message.contains("keys are lower case"), "{message}");
            assert!(message.contains("write `shards`"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn empty_setting_name_in_variable_is_rejected() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_ENGINE_", "3");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(message.contains("IM_ENGINE_"), "{message}");
            assert!(message.contains("no setting"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn invalid_ws_addr_names_value_and_form() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_ENGINE_WS_ADDR", "localhost:8080");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.contains("ws_addr: found string \"localhost:8080\""),
                "{message}"
            );
            assert!(message.contains("127.0.0.1:8080"), "{message}");
            assert!(message.contains("(from IM_ENGINE_WS_ADDR)"), "{message}");
            jail.set_env("IM_ENGINE_WS_ADDR", "[::1]:8080");
            let config = Config::load(&Cli::default()).expect("an IPv6 address loads");
            assert_eq!(config.ws_addr, "[::1]:8080".parse().unwrap());
            let cli = Cli::parse_from(["im-engine", "--ws-addr", "127.0.0.1:0"]);
            let config = Config::load(&cli).expect("the flag's address loads");
            assert_eq!(config.ws_addr, "127.0.0.1:0".parse().unwrap());
            Ok(())
        });
    }

    #[test]
    fn secret_variable_in_any_case_is_read() {
        for name in [
            "im_engine_internal_secret",
            "Im_Engine_Internal_Secret",
            "IM_ENGINE_INTERNAL_SECRET ",
            " IM_ENGINE_ internal_secret",
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(name, "short");
                let message = Config::load(&Cli::default()).unwrap_err().to_string();
                assert!(
                    message.contains("internal_secret = <5 bytes>"),
                    "{name:?}: {message}"
                );
                assert!(!message.contains("short"), "{name:?}: {message}");
                jail.set_env(name, "1234567890123456");
                let config = Config::load(&Cli::default()).expect("16 digits load");
                assert_eq!(config.internal_secret.expose(), "1234567890123456");
                Ok(())
            });
        }
    }

    #[test]
    fn numeric_secret_in_file_is_not_shown() {
        Jail::expect_with(|jail| {
            for value in [
                "1234567890123456789",
                "12345678901234567890123",
                "1.2345678901234567e17",
            ] {
                jail.create_file("im.toml", &format!("[engine]\ninternal_secret = {value}\n"))?;
                let message = Config::load(&Cli::default()).unwrap_err().to_string();
                assert!(message.contains("internal_secret"), "{message}");
                assert!(!message.contains("12345678"), "{message}");
            }
            Ok(())
        });
    }

    #[test]
    fn logic_url_password_is_not_shown() {
        let config = Config {
            logic_url: "ftp://app:hunter2@127.0.0.1:50051".to_owned(),
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("logic_url = ftp://app:***@127.0.0.1:50051"),
            "{message}"
        );
    }

    #[test]
    fn control_characters_in_value_are_escaped() {
        let config = Config {
            ws_path: "chat\n2026-01-01T00:00:00Z ERROR forged line".to_owned(),
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(!message.contains('\n'), "one line: {message}");
        assert!(
            message.contains("ws_path = chat\\n2026-01-01T00:00:00Z ERROR forged line"),
            "{message}"
        );
    }

    #[test]
    fn whole_number_errors_give_setting_range() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_ENGINE_SHARDS", "all");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.contains(
                    "shards: found string \"all\", expected a whole number from 0 to 255 \
                     (from IM_ENGINE_SHARDS)"
                ),
                "{message}"
            );
            jail.clear_env();
            jail.create_file("im.toml", "[engine]\nlogic_gather_calls = -4\n")?;
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.contains(
                    "logic_gather_calls: found signed int `-4`, expected a whole number from 1 \
                     to 64 (in im.toml)"
                ),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn dotted_variable_is_named_as_written() {
        Jail::expect_with(|jail| {
            jail.set_env("IM_ENGINE_SHARDS.X", "1");
            let message = Config::load(&Cli::default()).unwrap_err().to_string();
            assert!(
                message.starts_with("invalid environment variable `IM_ENGINE_SHARDS.X`: "),
                "{message}"
            );
            assert!(
                message.ends_with("rename it to IM_ENGINE_SHARDS or unset it"),
                "{message}"
            );
            Ok(())
        });
    }

    /// Returns the defaults with `settings` set, as a file or variables would set them.
    fn config_with(settings: &[(&str, u64)]) -> Config {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        for (setting, value) in settings {
            figment = figment.merge((*setting, *value));
        }
        figment.extract().expect("the values fit the types")
    }

    #[test]
    fn setting_ranges_match_validation() {
        for range in im_settings::ENGINE_RANGES {
            let setting = range.setting;
            // lease_ttl_ms must also exceed lease_interval_ms.
            let mut lowest = vec![("lease_interval_ms", 1), (setting, range.min)];
            if setting == "lease_interval_ms" {
                lowest.truncate(1);
            }
            let result = config_with(&lowest).validate();
            assert!(result.is_ok(), "{setting} = {}: {result:?}", range.min);
            if let Some(below) = range.min.checked_sub(1) {
                lowest.pop();
                lowest.push((setting, below));
                let message = config_with(&lowest).validate().unwrap_err().to_string();
                assert!(message.contains(setting), "{setting} = {below}: {message}");
            }
            if let Some(max) = range.max {
                let result = config_with(&[(setting, max)]).validate();
                assert!(result.is_ok(), "{setting} = {max}: {result:?}");
                let above = max + 1;
                let message = config_with(&[(setting, above)])
                    .validate()
                    .unwrap_err()
                    .to_string();
                assert!(message.contains(setting), "{setting} = {above}: {message}");
            }
        }
    }

    #[test]
    fn device_as_config_file_is_rejected() {
        Jail::expect_with(|_| {
            let cli = Cli::parse_from(["im-engine", "--config", "/dev/zero"]);
            let message = Config::load(&cli).unwrap_err().to_string();
            assert!(message.contains("/dev/zero"), "{message}");
            assert!(message.contains("it is a device"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn whole_number_flags_take_setting_ranges() {
        let checked = im_settings::testing::check_whole_number_flags::<Cli>(
            "im-engine",
            &Config::default(),
            im_settings::ENGINE_RANGES,
        );
        assert_eq!(
            checked,
            [
                "shards",
                "heartbeat_timeout_ms",
                "sign_in_timeout_ms",
                "logic_call_timeout_ms"
            ]
        );
    }
}
