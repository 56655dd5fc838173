//! PostgreSQL connection pool and the deadline every statement runs under. Each table's SQL
//! lives in a submodule named after the table.
//!
//! Functions that take a `&PgStore` run one statement on a pooled connection. Functions that
//! take a `db: &impl GenericClient` run on a connection or transaction the caller holds, so that
//! several of them share one transaction.

pub mod device_acks;
pub mod device_tokens;
pub mod devices;
pub mod friendships;
pub mod group_members;
pub mod groups;
pub mod messages;
pub mod sent_messages;
pub mod transaction;
pub mod user_seq;
pub mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{
    ClientWrapper, Connect, GenericClient, Manager, ManagerConfig, Object, Pool, PoolError,
    RecyclingMethod, Runtime,
};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::config::{redact_url, Config};
use crate::error::{ErrorChain, LogicError, Store};
use crate::server::WARNING_INTERVAL;
use crate::service::WarnLimiter;

/// Returns every statement of every table module, for a test that prepares each against the
/// schema.
pub fn all_statements() -> Vec<&'static str> {
    [
        users::all_statements(),
        devices::all_statements(),
        device_tokens::all_statements(),
        user_seq::all_statements(),
        messages::all_statements(),
        sent_messages::all_statements(),
        friendships::all_statements(),
        groups::all_statements(),
        group_members::all_statements(),
        device_acks::all_statements(),
    ]
    .concat()
}

/// A pool of PostgreSQL connections. Each statement is prepared once per pooled connection.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    timeout: Duration,
}

/// Error from building the PostgreSQL pool.
#[derive(Debug, thiserror::Error)]
pub enum PgBuildError {
    /// `database_url` does not parse.
    #[error("invalid database URL {url}")]
    Url {
        /// The URL with its password hidden.
        url: String,
        /// The parser's complaint.
        #[source]
        source: tokio_postgres::Error,
    },
    /// deadpool rejected the pool settings.
    #[error("cannot build the PostgreSQL pool")]
    Pool(#[source] deadpool_postgres::BuildError),
}

impl PgStore {
    /// Builds the pool; connections are opened on first use.
    ///
    /// # Errors
    ///
    /// [`PgBuildError`] when the URL does not parse or the settings are rejected.
    pub fn new(config: &Config) -> Result<PgStore, PgBuildError> {
        let timeout = Duration::from_millis(config.db_timeout_ms);
        let mut pg_config: tokio_postgres::Config =
            config
                .database_url
                .parse()
                .map_err(|source| PgBuildError::Url {
                    url: redact_url(&config.database_url),
                    source,
                })?;
        pg_config.connect_timeout(timeout);
        // The server cancels a statement at the same deadline as the client gives up on it, so
        // that one cut off neither runs on nor holds its pooled connection and row locks.
        let server_deadline = format!("-c statement_timeout={}", config.db_timeout_ms);
        let options = match pg_config.get_options() {
            Some(options) => format!("{options} {server_deadline}"),
            None => server_deadline,
        };
        pg_config.options(options);
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("im-logic");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let connect = LoggedConnect {
            warnings: Arc::new(WarnLimiter::new(WARNING_INTERVAL)),
        };
        let manager = Manager::from_connect(pg_config, connect, manager_config);
        let pool = Pool::builder(manager)
            .max_size(config.db_pool_size as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(PgBuildError::Pool)?;
        Ok(PgStore { pool, timeout })
    }

    /// Returns the pool's size, idle connections, maximum size and waiting requests.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// Takes a connection from the pool, opening one if none is idle.
    ///
    /// # Errors
    ///
    /// [`LogicError::Timeout`] when none frees up or connects within `db_timeout_ms`,
    /// [`LogicError::Database`] when connecting fails.
    pub async fn client(&self) -> Result<Object, LogicError> {
        self.pool.get().await.map_err(|err| self.pool_error(err))
    }

    /// Takes a connection out of the pool for work that may run past `db_timeout_ms`, such as
    /// migrations and index builds. Its statements have no deadline. It closes when dropped, so
    /// neither that setting nor a session lock it took returns to the pool.
    ///
    /// # Errors
    ///
    /// As [`PgStore::client`], or [`LogicError::Database`] when lifting the deadline fails.
    pub async fn unpooled_client(&self) -> Result<ClientWrapper, LogicError> {
        let client = Object::take(self.client().await?);
        client.batch_execute("SET statement_timeout = 0").await?;
        Ok(client)
    }

    /// Runs `sql` and returns its only row, or `None`.
    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, LogicError> {
        self.with_deadline(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query_opt(&statement, params).await?)
        })
        .await
    }

    /// Runs `sql` and returns its only row.
    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, LogicError> {
        self.with_deadline(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query_one(&statement, params).await?)
        })
        .await
    }

    /// Runs `sql` and returns its rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LogicError> {
        self.with_deadline(async {
            let client = self.client().await?;
            rows(&client, sql, params).await
        })
        .await
    }

    /// Runs `sql` and returns the number of rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, LogicError> {
        self.with_deadline(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await?;
            Ok(client.execute(&statement, params).await?)
        })
        .await
    }

    /// Fails `work` with [`LogicError::Timeout`] when it runs past `db_timeout_ms`. The server
    /// cancels each statement past the same deadline (`statement_timeout`), and a transaction cut
    /// off this way is rolled back when its handle is dropped.
    pub(crate) async fn with_deadline<T>(
        &self,
        work: impl Future<Output = Result<T, LogicError>>,
    ) -> Result<T, LogicError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(self.timeout_error()))
    }

    fn timeout_error(&self) -> LogicError {
        LogicError::Timeout {
            store: Store::Postgres,
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn pool_error(&self, err: PoolError) -> LogicError {
        match err {
            PoolError::Timeout(_) => self.timeout_error(),
            PoolError::Backend(err) => LogicError::Database(err),
            PoolError::Closed => LogicError::Unavailable(Store::Postgres),
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                LogicError::Internal("PostgreSQL pool misconfigured")
            }
        }
    }
}

/// Opens pooled connections as deadpool's own `ConfigConnectImpl` does, but logs a connection
/// that ends with an error with the whole error chain, rate-limited. deadpool logs only the
/// top error's text, such as "db error", whose source contains the server's reason.
struct LoggedConnect {
    warnings: Arc<WarnLimiter>,
}

impl Connect for LoggedConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<
                        (tokio_postgres::Client, JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let pg_config = pg_config.clone();
        let warnings = self.warnings.clone();
        Box::pin(async move {
            let (client, connection) = pg_config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                if let Err(err) = connection.await {
                    log_connection_error(&warnings, &err);
                }
            });
            Ok((client, task))
        })
    }
}

/// Logs the error that ended a pooled connection: one warning per [`WARNING_INTERVAL`], the
/// others at debug.
fn log_connection_error(warnings: &WarnLimiter, err: &tokio_postgres::Error) {
    let error = ErrorChain(err);
    match warnings.admit() {
        Some(suppressed) => {
            tracing::warn!(%error, suppressed, "PostgreSQL connection failed; the pool opens a new one on demand");
        }
        None => tracing::debug!(%error, "PostgreSQL connection failed"),
    }
}

/// Runs `sql`, prepared once per connection, on `db` and returns its rows.
pub(crate) async fn rows(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, LogicError> {
    let statement = db.prepare_cached(sql).await?;
    Ok(db.query(&statement, params).await?)
}

/// Runs `sql` on `db` and returns its only row, or `None`.
pub(crate) async fn row_opt(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, LogicError> {
    let statement = db.prepare_cached(sql).await?;
    Ok(db.query_opt(&statement, params).await?)
}

/// Runs `sql` on `db` and returns its only row.
pub(crate) async fn row(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, LogicError> {
    let statement = db.prepare_cached(sql).await?;
    Ok(db.query_one(&statement, params).await?)
}

/// Runs `sql` on `db` and returns the number of rows it changed.
pub(crate) async fn execute(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, LogicError> {
    let statement = db.prepare_cached(sql).await?;
    Ok(db.execute(&statement, params).await?)
}

/// Returns a `timestamptz` read from PostgreSQL in milliseconds since the Unix epoch; times
/// before 1970 come out negative.
pub fn epoch_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}
