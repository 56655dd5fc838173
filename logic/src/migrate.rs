//! Schema migrations: the SQL files in `migrations/`, embedded at build time and applied at
//! start-up with refinery. Applying them again is a no-op.

use refinery::error::Kind;
use refinery::Runner;
use tokio_postgres::Client;

use crate::error::ErrorChain;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory-lock key that serialises migrations of logic processes starting at the same time.
const MIGRATION_LOCK_KEY: i64 = 0x696d_5f6d_6967_7261; // "im_migra"

/// Returns a runner for the migrations embedded from `migrations/`.
pub fn embedded_runner() -> Runner {
    embedded::migrations::runner()
}

/// Error from bringing the schema up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A migration's SQL failed; the database keeps the migrations before it.
    #[error("migration {file} failed: {message}")]
    Failed {
        /// The migration's file name, for example "V1__users_devices.sql".
        file: String,
        /// The SQL error.
        message: String,
    },
    /// Refinery failed outside a migration's SQL, for example on its history table.
    #[error("cannot apply migrations: {0}")]
    Refinery(String),
    /// Taking or releasing the migration lock failed.
    #[error("cannot lock the schema for migration")]
    Lock(#[source] tokio_postgres::Error),
}

/// Applies the migrations of `runner` that the database does not have yet and returns how many
/// were applied. Holds a PostgreSQL advisory lock meanwhile, so concurrent callers apply each
/// migration once.
///
/// # Errors
///
/// [`MigrationError::Failed`] names the migration file and the SQL error.
pub async fn apply(client: &mut Client, runner: &Runner) -> Result<usize, MigrationError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(MigrationError::Lock)?;
    let outcome = runner.run_async(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = outcome.map_err(describe)?;
    unlocked.map_err(MigrationError::Lock)?;
    Ok(report.applied_migrations().len())
}

fn describe(err: refinery::Error) -> MigrationError {
    match err.kind() {
        Kind::Connection(context, source) => {
            match context.strip_prefix("error applying migration ") {
                Some(migration) => MigrationError::Failed {
                    file: format!("{migration}.sql"),
                    message: sql_message(source.as_ref()),
                },
                None => {
                    MigrationError::Refinery(format!("{context}: {}", sql_message(source.as_ref())))
                }
            }
        }
        other => MigrationError::Refinery(other.to_string()),
    }
}

/// Returns PostgreSQL's own message with its SQLSTATE, which `tokio_postgres::Error`'s
/// `Display` ("db error") leaves out.
fn sql_message(err: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    match err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
    {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => ErrorChain(err).to_string(),
    }
}
