//! The connection engine of the IM system: WebSocket device connections on
//! thread-per-core monoio shards, a bridge to the logic tier, and the gRPC server the
//! logic tier calls back on.
//!
//! [`Engine::start`] runs a whole node inside the current process; `im-engine` is the
//! binary around it.

mod admission;
mod bridge;
pub mod close;
pub mod config;
mod conn;
mod heap;
mod inbox;
mod lease;
mod many;
pub mod metrics;
mod metrics_http;
mod push;
mod registry;

mod shard;
mod tls;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use im_proto::connect_int_service_server::ConnectIntServiceServer;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

pub use bridge::CallError;
pub use config::{Cli, Config, ConfigError};
pub use im_proto::internal_secret::INTERNAL_SECRET_METADATA_KEY;
pub use metrics::EngineMetrics;
pub use registry::ConnId;
pub use tls::TlsError;

/// Error that stops the engine from starting.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The WebSocket or gRPC address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `logic_url` is not a URL tonic accepts. `url` has any password hidden.
    #[error("invalid logic_url {url:?}: {reason}")]
    InvalidLogicUrl { url: String, reason: String },
    /// The certificate or key of the wss:// listener cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A thread or runtime could not start.
    #[error("cannot start engine thread: {0}")]
    Thread(std::io::Error),
    /// A setting is invalid, for example an empty `internal_secret` on a public `grpc_addr`.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A running engine node.
pub struct Engine {
    ws_addr: SocketAddr,
    grpc_addr: SocketAddr,
    node: Arc<str>,
    metrics: EngineMetrics,
    metrics_addr: Option<SocketAddr>,
    inboxes: Vec<inbox::InboxSender>,
    shards: Vec<JoinHandle<()>>,
    bridge: bridge::BridgeHandle,
    bridge_thread: Option<JoinHandle<()>>,
    grpc_stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    in_flight: Arc<AtomicUsize>,
    lease: lease::Lease,
    tls: Option<Arc<tls::TlsCertificate>>,
}

impl Engine {
    /// Binds the listeners and starts the shards, the bridge and the gRPC server. Before the
    /// shards accept, it waits up to `logic_call_timeout_ms` for the first lease renewal, so
    /// that the logic tier counts this run's devices under its new incarnation.
    ///
    /// # Errors
    /// An address cannot be bound, the logic URL is invalid, a thread cannot start, or
    /// `internal_secret` is empty while `grpc_addr` is not a loopback address.
    pub fn start(config: Config) -> Result<Self, EngineError> {
        // Checked here too, because embedders may build a Config without `Config::load`.
        config.validate_internal_secret()?;
        let config = Arc::new(config);
        let tls = load_certificate(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("engine-rpc")
            .enable_all()
            .build()
            .map_err(EngineError::Thread)?;

        let grpc_listener = StdListener::bind(config.grpc_addr)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|source| EngineError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| EngineError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let node: Arc<str> = if config.node_addr.is_empty() {
            grpc_addr.to_string().into()
        } else {
            config.node_addr.as_str().into()
        };

        let shard_count = config.shard_count();
        let (listeners, ws_addr) = bind_reuseport(config.ws_addr, shard_count)?;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut metrics = EngineMetrics::default();
        let metrics_addr = (!config.metrics_addr.is_empty())
            .then(|| config.metrics_addr.parse::<SocketAddr>().ok())
            .flatten();
        let metrics_listener =
            metrics_http::bind(metrics_addr).map_err(|source| EngineError::Bind {
                addr: metrics_addr.unwrap_or(config.ws_addr),
                source,
            })?;
        let metrics_addr = metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let (bridge, bridge_thread) = bridge::start(
            bridge::BridgeConfig {
                logic_url: config.logic_url.clone(),
                call_timeout: Duration::from_millis(config.logic_call_timeout_ms),
                connect_timeout: Duration::from_millis(config.logic_connect_timeout_ms),
                queue: config.bridge_queue,
                offline_retries: config.offline_retries,
                max_in_flight: config.logic_max_in_flight,
                gather_calls: config.logic_gather_calls,
                gather_window: Duration::from_millis(config.logic_gather_window_ms),
                max_password_calls: config.logic_max_password_calls,
                internal_secret: config.internal_secret.expose().to_owned(),
            },
            runtime.handle().clone(),
            in_flight.clone(),
            metrics.bridge.clone(),
        )?;

        let devices = Arc::new(registry::DeviceMap::new());
        metrics.devices = devices.clone();
        // Renewed before the shards accept, so devices sign in under this incarnation.
        let lease = lease::Lease::start(
            lease::LeaseConfig {
                logic_url: config.logic_url.clone(),
                node: node.to_string(),
                interval: Duration::from_millis(config.lease_interval_ms),
                ttl: Duration::from_millis(config.lease_ttl_ms),
                call_timeout: Duration::from_millis(config.logic_call_timeout_ms),
                connect_timeout: Duration::from_millis(config.logic_connect_timeout_ms),
                internal_secret: config.internal_secret.expose().to_owned(),
            },
            devices.clone(),
            runtime.handle(),
        )?;

        let admission = Arc::new(admission::Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let mut inboxes = Vec::with_capacity(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        for (index, listener) in listeners.into_iter().enumerate() {
            let (sender, receiver) = inbox::inbox();
            let shard_metrics = Arc::new(metrics::ShardMetrics::default());
            let setup = shard::ShardSetup {
                index,
                config: config.clone(),
                node: node.clone(),
                devices: devices.clone(),
                admission: admission.clone(),
                bridge: bridge.clone(),
                metrics: shard_metrics.clone(),
                listener,
                inbox: receiver,
                shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
                tls: tls.clone(),
            };
            shards.push(shard::spawn(setup).map_err(EngineError::Thread)?);
            inboxes.push(sender);
            metrics.shards.push(shard_metrics);
        }

        heap::spawn_trimmer(runtime.handle(), metrics.clone());
        let (grpc_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = ConnectIntServiceServer::with_interceptor(
            push::PushService::new(inboxes.clone(), metrics.deliver_seconds.clone()),
            im_proto::internal_secret::CheckSecret::new(config.internal_secret.expose()),
        );
        if let Some(listener) = metrics_listener {
            let metrics = metrics.clone();
            runtime.spawn(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => metrics_http::serve(listener, metrics).await,
                    Err(err) => warn!(error = %err, "metrics listener failed"),
                }
            });
        }
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(grpc_listener) {
                Ok(listener) => listener,
                Err(err) => {
                    warn!(error = %err, "engine gRPC listener failed");
                    return;
                }
            };
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(grpc_incoming(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                warn!(error = %err, "engine gRPC server failed");
            }
        });
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let metrics_at = metrics_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        // Under a target of its own, which scripts/run adds to RUST_LOG at info level, because it
        // waits for this line and prints the WebSocket URL with the scheme named here.
        info!(
            target: "im_engine::ready",
            %ws_addr,
            scheme,
            path = %config.ws_path,
            %grpc_addr,
            %node,
            metrics_addr = %metrics_at,
            shards = shard_count,
            "engine started"
        );
        Ok(Self {
            ws_addr,
            grpc_addr,
            node,
            metrics,
            metrics_addr,
            inboxes,
            shards,
            bridge,
            bridge_thread: Some(bridge_thread),
            grpc_stop: Some(grpc_stop),
            runtime: Some(runtime),
            in_flight,
            lease,
            tls,
        })
    }

    /// Reads `tls_cert_file` and `tls_key_file` again. Connections accepted afterwards use
    /// the new certificate; open ones keep theirs. Does nothing on a plain ws:// node.
    ///
    /// # Errors
    /// A file cannot be read or parsed, or the key does not fit the certificate; the
    /// previous certificate then stays in use.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let Some(certificate) = &self.tls else {
            return Ok(());
        };
        certificate.reload()?;
        info!(cert_file = %certificate.cert_file().display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Returns true when the WebSocket listener serves wss://.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Returns the bound WebSocket address (useful with port 0).
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Returns the bound address of the engine's gRPC server.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// This node's address as stored in device status.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// WebSocket connections open on all shards.
    pub fn connections(&self) -> usize {
        self.metrics
            .shards
            .iter()
            .map(|shard| shard.connections.load(Ordering::Relaxed))
            .sum::<i64>()
            .try_into()
            .unwrap_or(0)
    }

    /// Returns this run's lease incarnation, random per start.
    pub fn incarnation(&self) -> u64 {
        self.lease.incarnation()
    }

    /// Stops renewing this node's lease while the node keeps serving. Once the lease lapses
    /// (`lease_ttl_ms` after the last renewal) the logic tier takes the node for dead: it
    /// removes its devices' online status and pushes nothing to it. This is how a node that
    /// lost the logic tier looks, and tests use it to stand for a killed node.
    pub fn stop_lease_renewal(&self) {
        self.lease.stop();
    }

    /// Renews this node's lease again after [`Engine::stop_lease_renewal`], as a node does that
    /// stalled and recovered. When the lease lapsed meanwhile the node reports its signed-in
    /// devices, and the logic tier pushes each one the newest message it missed.
    pub fn resume_lease_renewal(&self) {
        self.lease.resume();
    }

    /// Returns the bound address of the metrics endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Returns the node's metrics, as `/metrics` renders them.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Stops accepting, closes every connection with 1001, reports each signed-in
    /// device offline, and waits up to `shutdown_grace_ms` for calls in flight.
    pub fn shutdown(mut self) {
        info!("engine stopping");
        self.lease.stop();
        for inbox in &self.inboxes {
            inbox.send(inbox::ShardMessage::Shutdown);
        }
        for shard in self.shards.drain(..) {
            let _ = shard.join();
        }
        // Offline calls of the closed connections are queued before this stop.
        self.bridge.stop();
        if let Some(thread) = self.bridge_thread.take() {
            let _ = thread.join();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.in_flight.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(stop) = self.grpc_stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            // Calls in flight are done or past their grace; the background form may
            // also run inside another runtime, as in tests.
            runtime.shutdown_background();
        }
        info!("engine stopped");
    }
}

/// Loads and checks the wss:// certificate and key as [`Engine::start`] does, without binding
/// or connecting anything, so that `im-engine --check-config` rejects the files that would stop
/// the start. Does nothing when `tls_cert_file` is empty.
///
/// # Errors
/// [`TlsError`] for a file that cannot be read or parsed, or a key that does not belong to
/// the certificate.
pub fn check_certificate(config: &Config) -> Result<(), TlsError> {
    load_certificate(config).map(|_| ())
}

/// Loads the wss:// certificate when `tls_cert_file` is set.
fn load_certificate(config: &Config) -> Result<Option<Arc<tls::TlsCertificate>>, TlsError> {
    if config.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let certificate =
        tls::TlsCertificate::load(config.tls_cert_file.as_ref(), config.tls_key_file.as_ref())?;
    Ok(Some(Arc::new(certificate)))
}

/// Binds one listener per shard on the same address with SO_REUSEPORT, so the kernel
/// spreads new connections over the shards. Port 0 is resolved by the first bind.
fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<StdListener>, SocketAddr), EngineError> {
    if is_address_held(addr) {
        info!(
            %addr,
            "ws_addr port is shared with another listener on this host through SO_REUSEPORT, so new connections are split between them; expected only for several engine nodes on one host"
        );
    }
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = bind_one(bound).map_err(|source| EngineError::Bind { addr, source })?;
        if bound.port() == 0 {
            bound = listener
                .local_addr()
                .map_err(|source| EngineError::Bind { addr, source })?;
        }
        listeners.push(listener);
    }
    Ok((listeners, bound))
}

/// Checks whether another socket on this host already listens on `addr`. The probe binds
/// without SO_REUSEPORT, which the kernel rejects with EADDRINUSE while a socket listens on
/// the address. SO_REUSEADDR keeps connections in TIME_WAIT from counting. Port 0 is never held.
fn is_address_held(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let probe = || -> std::io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    match probe() {
        Ok(()) => false,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => true,
        // The real bind reports anything else with its own error.
        Err(_) => false,
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Returns the stream of accepted gRPC connections, each with TCP_NODELAY. Without it a reply
/// that h2 writes in two parts waits for the caller's delayed ACK (40 ms at least on Linux)
/// before its second part leaves.
fn grpc_incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[test]
    fn held_address_is_detected() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = bind_one(loopback).expect("bind loopback");
        let addr = first.local_addr().expect("bound address");

        assert!(is_address_held(addr), "{addr} has a listener");
        // A second node on the same host still binds, sharing the port.
        let second = bind_one(addr).expect("bind with SO_REUSEPORT");
        drop((first, second));
        assert!(!is_address_held(addr), "{addr} has no listener left");
        assert!(!is_address_held(loopback), "port 0 is never held");
    }

    #[tokio::test]
    async fn grpc_connections_send_without_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let mut incoming = grpc_incoming(listener);
        let _caller = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("one connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }
}
