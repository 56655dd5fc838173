//! Start-up and shutdown of a logic server: migrations, store connections, the listener and the
//! tonic server task.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_proto::v1::device_int_service_server::DeviceIntServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::{redact_url, Config, ConfigError};
use crate::engine::EngineClients;
use crate::error::{ErrorChain, LogicError, Side, Store};
use crate::metrics::{self, LogicMetrics, Recorder};
use crate::migrate::{self, MigrationError};
use crate::password::PasswordHasher;
use crate::retention;
use crate::service::ack_batch::{AckBatcher, AckWrites, ACK_BATCH_MAX};
use crate::service::bad_request::RejectBadRequests;
use crate::service::caller::ServerSecret;
use crate::service::lease::{self, LapsedNodes};
use crate::service::push::Pusher;
use crate::service::send_batch::{SendBatchCounters, SendBatcher};
use crate::service::token_batch::{TokenLoader, TokenReads, TOKEN_BATCH_MAX};
use crate::service::{DeviceService, ExtService, Limits, Logic, WarnLimiter};
use crate::store::pg::{PgBuildError, PgStore};
use crate::store::redis::{connection_manager, RedisStore};
use crate::store::redis_batch::RedisBatcher;
use crate::web::{self, WebServer};
use im_proto::internal_secret::CheckSecret;

/// First and longest pause between connection attempts at start-up.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Interval of the warning limiters: at most one warning per interval about failed store
/// requests, and one each about failed kicks, failed pushes and failed PostgreSQL connections.
/// The others go to debug.
pub(crate) const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Error from starting a logic server. Store URLs in messages have their passwords hidden.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The PostgreSQL pool could not be built.
    #[error("cannot set up the PostgreSQL pool")]
    PgSetup(#[source] PgBuildError),
    /// PostgreSQL did not accept a connection before `startup_retry_ms` ran out.
    #[error("cannot connect to PostgreSQL at {url}")]
    Postgres {
        /// `database_url` with its password hidden.
        url: String,
        /// The last attempt's error.
        #[source]
        source: LogicError,
    },
    /// A migration failed; the message names its file and the SQL error.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// `redis_url` does not parse.
    #[error("invalid Redis URL {url}")]
    RedisUrl {
        /// `redis_url` with its password hidden.
        url: String,
        /// The parser's complaint.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not reply to PING before `startup_retry_ms` ran out.
    #[error("cannot reach Redis at {url}")]
    Redis {
        /// `redis_url` with its password hidden.
        url: String,
        /// The last attempt's error.
        #[source]
        source: LogicError,
    },
    /// The dummy password hash could not be computed.
    #[error("cannot set up password hashing")]
    Password(#[source] LogicError),
    /// The listen address, the metrics address or the web address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// `listen_addr`, `metrics_addr` or `web_addr`.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Streams reset before the server accepted them that one connection may have pending.
const PENDING_RESET_STREAMS: usize = 4096;

/// Time calls in progress get to finish after a stop, on the gRPC and the web port alike.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running logic server. Dropping it leaves the server running until the runtime stops; call
/// [`LogicServer::shutdown`] to stop it.
pub struct LogicServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    retention: JoinHandle<()>,
    reaper: JoinHandle<()>,
    metrics: LogicMetrics,
    send_batches: Arc<SendBatchCounters>,
    /// The bound metrics address and the task serving it, when metrics are on.
    metrics_endpoint: Option<(SocketAddr, JoinHandle<()>)>,
    /// The web client's server, when `web_addr` is set.
    web: Option<WebServer>,
}

impl LogicServer {
    /// Returns the address the server listens on, with the port chosen when `listen_addr` had
    /// port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the bound address of the metrics endpoint, with the port chosen when
    /// `metrics_addr` had port 0; `None` when `metrics_addr` is empty.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|(addr, _)| *addr)
    }

    /// Returns the bound address of the web client's server, with the port chosen when
    /// `web_addr` had port 0; `None` when `web_addr` is empty.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(WebServer::local_addr)
    }

    /// Returns the server's metrics, as `GET /metrics` renders them.
    pub fn metrics(&self) -> &LogicMetrics {
        &self.metrics
    }

    /// Returns the counters of the send batching task: transactions run and sends stored.
    pub fn send_batches(&self) -> &SendBatchCounters {
        &self.send_batches
    }

    /// Stops accepting connections and lets calls in progress finish for up to 5 s, the web
    /// server's open requests too. The metrics endpoint stops at once.
    ///
    /// NOTE: a gRPC call still running after the grace period, such as one whose client stopped
    /// sending its request body, is no longer waited for but keeps its connection task until
    /// the runtime ends. The binary returns from `main` right after this, which ends it.
    pub async fn shutdown(self) {
        // The task may have ended already, dropping the receiver: nothing left to stop.
        let _ = self.stop.send(());
        self.retention.abort();
        self.reaper.abort();
        if let Some((_, task)) = &self.metrics_endpoint {
            task.abort();
        }
        let web = async {
            if let Some(web) = self.web {
                web.shutdown().await;
            }
        };
        let mut task = self.task;
        let grpc = async {
            match tokio::time::timeout(STOP_GRACE, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!("logic server task panicked"),
                Err(_) => {
                    task.abort();
                    tracing::warn!(
                        grace_ms = u64::try_from(STOP_GRACE.as_millis()).unwrap_or(u64::MAX),
                        "gRPC calls still running after the shutdown grace period were abandoned"
                    );
                }
            }
        };
        tokio::join!(web, grpc);
        tracing::info!(addr = %self.local_addr, "logic stopped");
    }
}

/// Binds `listen_addr`, `metrics_addr` and `web_addr` (unless empty), then applies migrations
/// and connects the stores. Then it serves `DeviceIntService` and `LogicExtService` on
/// `listen_addr`, `GET /metrics` on `metrics_addr`, and the web client (static files and
/// `LogicExtService` as gRPC-Web) on `web_addr`, each in a spawned task.
///
/// Every address is bound before any store is touched, so that a port in use fails the start at
/// once, without connecting to or migrating the database. No listener is served before the
/// stores are ready, because every call and the metrics need them: connections that arrive
/// meanwhile wait in the listen backlog and are served once start-up ends, or reset when it
/// fails.
///
/// An unreachable store is retried with back-off for up to `startup_retry_ms`.
///
/// # Errors
///
/// [`StartError`] names the step that failed. A migration failure names the migration file.
pub async fn start(config: Config) -> Result<LogicServer, StartError> {
    config.validate()?;
    let listen_addr = config.listen_socket_addr()?;
    tracing::info!(
        %listen_addr,
        database_url = %redact_url(&config.database_url),
        redis_url = %redact_url(&config.redis_url),
        "logic starting"
    );
    let listeners = bind_all(&config, listen_addr).await?;

    let pg = connect_postgres(&config).await?;
    let redis = connect_redis(&config).await?;
    let passwords = password_hasher(&config).await?;
    let logic = Arc::new(build_logic(&config, pg, redis, passwords));
    let metrics = LogicMetrics::new(
        logic.metrics.clone(),
        logic.redis.batcher().counters(),
        logic.pg.clone(),
        logic.passwords.clone(),
    );

    let metrics_endpoint = listeners.metrics.map(|(metrics_listener, bound)| {
        let task = tokio::spawn(metrics::http::serve(metrics_listener, metrics.clone()));
        (bound, task)
    });
    let web = match listeners.web {
        Some((web_listener, addr)) => {
            let root = PathBuf::from(&config.web_root);
            let server = web::spawn(web_listener, root, logic.clone())
                .map_err(|source| StartError::Bind { addr, source })?;
            Some(server)
        }
        None => None,
    };
    let retention = retention::spawn(
        logic.pg.clone(),
        config.message_retention_days,
        logic.metrics.clone(),
    );
    let reaper = lease::spawn_reaper(
        logic.redis.clone(),
        logic.lapsed_nodes.clone(),
        logic.metrics.clone(),
        Arc::new(WarnLimiter::new(lease::REAPER_WARNING_INTERVAL)),
    );
    let send_batches = logic.sends.counters();
    let (stop, stopped) = oneshot::channel();
    let check_secret = CheckSecret::new(&config.internal_secret);
    let (listener, local_addr) = listeners.grpc;
    let request_timeout = Duration::from_millis(config.request_timeout_ms);
    let task = tokio::spawn(serve(
        listener,
        logic,
        check_secret,
        request_timeout,
        stopped,
    ));
    Ok(LogicServer {
        local_addr,
        stop,
        task,
        retention,
        reaper,
        metrics,
        send_batches,
        metrics_endpoint,
        web,
    })
}

/// The bound listeners of a starting server, each with its bound address.
struct Listeners {
    grpc: (TcpListener, SocketAddr),
    metrics: Option<(TcpListener, SocketAddr)>,
    web: Option<(TcpListener, SocketAddr)>,
}

/// Binds `listen_addr`, then `metrics_addr` and `web_addr` unless they are empty.
async fn bind_all(config: &Config, listen_addr: SocketAddr) -> Result<Listeners, StartError> {
    let grpc = bind(listen_addr).await?;
    let metrics = match config.metrics_socket_addr()? {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let web = match config.web_socket_addr()? {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tracing::info!(
        addr = %grpc.1,
        metrics_addr = ?metrics.as_ref().map(|(_, addr)| addr),
        web_addr = ?web.as_ref().map(|(_, addr)| addr),
        "ports bound; connecting to the stores before serving them"
    );
    Ok(Listeners { grpc, metrics, web })
}

/// Binds `addr` and returns the listener with its bound address.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local_addr))
}

fn build_logic(
    config: &Config,
    pg: PgStore,
    redis: RedisStore,
    passwords: PasswordHasher,
) -> Logic {
    let engines = EngineClients::new(
        Duration::from_millis(config.engine_call_timeout_ms),
        &config.internal_secret,
    );
    let push_warnings = Arc::new(WarnLimiter::new(WARNING_INTERVAL));
    let metrics = Arc::new(Recorder::default());
    let lapsed_nodes = LapsedNodes::default();
    let pusher = Pusher::new(
        redis.clone(),
        engines.clone(),
        push_warnings,
        metrics.clone(),
        lapsed_nodes.clone(),
    );
    let sends = SendBatcher::spawn(
        pg.clone(),
        pusher.clone(),
        config.send_batch_max as usize,
        Duration::from_millis(config.db_timeout_ms),
    );
    let acks = AckBatcher::spawn(
        AckWrites::new(pg.clone()),
        ACK_BATCH_MAX,
        Duration::from_millis(config.db_timeout_ms),
    );
    let tokens = TokenLoader::spawn(
        TokenReads::new(pg.clone()),
        TOKEN_BATCH_MAX,
        Duration::from_millis(config.db_timeout_ms),
    );
    Logic {
        pusher,
        sends,
        acks,
        tokens,
        metrics,
        pg,
        redis,
        passwords,
        engines,
        token_ttl: Duration::from_secs(config.token_ttl_secs),
        store_warnings: WarnLimiter::new(WARNING_INTERVAL),
        overload_warnings: WarnLimiter::new(WARNING_INTERVAL),
        kick_warnings: Arc::new(WarnLimiter::new(WARNING_INTERVAL)),
        limits: Limits {
            max_content_bytes: config.max_content_bytes,
            max_group_members: config.max_group_members,
            max_groups_per_user: config.max_groups_per_user,
            max_friends_per_user: config.max_friends_per_user,
            sync_max_page: config.sync_max_page,
            sync_max_page_bytes: config.sync_max_page_bytes,
        },
        server_secret: ServerSecret::new(&config.server_secret),
        lapsed_nodes,
    }
}

async fn serve(
    listener: TcpListener,
    logic: Arc<Logic>,
    check_secret: CheckSecret,
    request_timeout: Duration,
    stopped: oneshot::Receiver<()>,
) {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Engine nodes cancel calls that pass their deadline, which resets HTTP/2 streams the
    // server may not have accepted yet. h2's default allows 20 such streams before it
    // drops the whole connection (its defence against rapid-reset floods), and one
    // dropped connection fails every call of the node on it. The callers here are our
    // own engine nodes, so the allowance is sized for a node's bursts.
    let router = Server::builder()
        .timeout(request_timeout)
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESET_STREAMS))
        .add_service(InterceptedService::new(
            RejectBadRequests::new(
                DeviceIntServiceServer::new(DeviceService::new(logic.clone())),
                logic.metrics.clone(),
            ),
            check_secret,
        ))
        .add_service(ExtService::new(logic).into_server());
    let shutdown = async {
        // A dropped sender also stops the server, because no other handle could stop it.
        let _ = stopped.await;
    };
    if let Err(err) = router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
    {
        tracing::error!(error = %ErrorChain(&err), "logic server failed");
    }
}

/// Builds the pool, waits for PostgreSQL and applies the embedded migrations.
async fn connect_postgres(config: &Config) -> Result<PgStore, StartError> {
    let url = redact_url(&config.database_url);
    let pg = PgStore::new(config).map_err(StartError::PgSetup)?;
    let budget = Duration::from_millis(config.startup_retry_ms);
    // Unpooled: a migration or the wait for another process's migration lock may take longer
    // than db_timeout_ms.
    let mut client = retry(Store::Postgres, &url, budget, || pg.unpooled_client())
        .await
        .map_err(|source| StartError::Postgres {
            url: url.clone(),
            source,
        })?;
    let applied = migrate::apply(&mut client, &migrate::embedded_runner()).await?;
    tracing::info!(applied, "migrations applied");
    Ok(pg)
}

/// Starts the pipelining task and waits until Redis replies to PING.
async fn connect_redis(config: &Config) -> Result<RedisStore, StartError> {
    let url = redact_url(&config.redis_url);
    let manager = connection_manager(config).map_err(|source| StartError::RedisUrl {
        url: url.clone(),
        source,
    })?;
    let batcher = RedisBatcher::spawn(
        manager,
        config.redis_batch_max as usize,
        Duration::from_millis(config.redis_timeout_ms),
    );
    let store = RedisStore::new(batcher);
    let budget = Duration::from_millis(config.startup_retry_ms);
    retry(Store::Redis, &url, budget, || store.ping())
        .await
        .map_err(|source| StartError::Redis { url, source })?;
    tracing::info!("Redis connected");
    Ok(store)
}

/// Builds the password hasher, whose dummy hash takes one full hash to compute.
async fn password_hasher(config: &Config) -> Result<PasswordHasher, StartError> {
    let params = config.argon2_params()?;
    let max_parallel = config.max_password_hashes as usize;
    let max_wait = Duration::from_millis(config.password_hash_wait_ms);
    tokio::task::spawn_blocking(move || PasswordHasher::with_limits(params, max_parallel, max_wait))
        .await
        .map_err(|_| StartError::Password(LogicError::Internal("password set-up panicked")))?
        .map_err(StartError::Password)
}

/// Runs `attempt` until it succeeds, fails with an error that is not an outage, or `budget`
/// runs out. The pause between attempts doubles from 100 ms up to 2 s.
async fn retry<T, F, Fut>(
    store: Store,
    url: &str,
    budget: Duration,
    mut attempt: F,
) -> Result<T, LogicError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LogicError>>,
{
    let started = Instant::now();
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt_number = 1u32;
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if err.side() != Side::Dependency || started.elapsed() + delay > budget {
            return Err(err);
        }
        tracing::warn!(
            store = %store,
            url,
            attempt = attempt_number,
            retry_in_ms = delay.as_millis() as u64,
            error = %ErrorChain(&err),
            "store not reachable; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
        attempt_number = attempt_number.saturating_add(1);
    }
}
