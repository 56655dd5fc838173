//! Deletion of expired idempotency keys: `sent_messages` rows older than a day, which no send
//! looks at any more. Every logic process runs it; concurrent runs delete disjoint or no rows.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::{ErrorChain, LogicError};
use crate::store::pg::{sent_messages, PgStore};

/// Pause between runs.
const RUN_INTERVAL: Duration = Duration::from_secs(600);

/// Rows deleted per statement, so that no statement holds many row locks or runs long.
const BATCH_ROWS: i64 = 10_000;

/// Statements per run; rows left over wait for the next run.
const MAX_BATCHES_PER_RUN: usize = 100;

/// Starts the task that deletes expired keys now and every ten minutes. It runs until the
/// handle is aborted or the runtime stops.
pub fn spawn(pg: PgStore) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RUN_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match delete_expired_keys(&pg).await {
                Ok(deleted) => tracing::debug!(deleted, "expired send keys deleted"),
                Err(err) => tracing::warn!(
                    error = %ErrorChain(&err),
                    "cannot delete expired send keys; retrying in ten minutes"
                ),
            }
        }
    })
}

/// Deletes expired `sent_messages` rows in batches and returns how many it deleted.
///
/// # Errors
///
/// Store errors; rows deleted before the error stay deleted.
pub async fn delete_expired_keys(pg: &PgStore) -> Result<u64, LogicError> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_RUN {
        let deleted = sent_messages::delete_expired(pg, BATCH_ROWS).await?;
        total += deleted;
        if deleted < BATCH_ROWS as u64 {
            break;
        }
    }
    Ok(total)
}
