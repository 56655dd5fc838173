//! Deletion of what the logic tier no longer needs: `sent_messages` rows older than a day,
//! which no send looks at any more, and, when `message_retention_days` is set, message copies
//! older than that. Every logic process runs it; concurrent runs delete disjoint or no rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::{ErrorChain, LogicError};
use crate::metrics::Recorder;
use crate::store::pg::messages::{self, IndexState};
use crate::store::pg::{sent_messages, PgStore};

/// Pause between runs.
const RUN_INTERVAL: Duration = Duration::from_secs(600);

/// Rows deleted per statement, so that no statement holds many row locks or runs long.
const BATCH_ROWS: i64 = 10_000;

/// Statements per run for expired keys; rows left over wait for the next run.
const MAX_KEY_BATCHES_PER_RUN: usize = 100;

/// Starts the task that deletes expired keys, and message copies older than
/// `message_retention_days` unless it is 0, now and every ten minutes. It runs until the handle
/// is aborted or the runtime stops.
pub fn spawn(pg: PgStore, message_retention_days: u32, metrics: Arc<Recorder>) -> JoinHandle<()> {
    if message_retention_days > 0 {
        tracing::info!(
            days = message_retention_days,
            "message retention on: older copies are deleted now and every ten minutes"
        );
    }
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
            if message_retention_days == 0 {
                continue;
            }
            let result = delete_expired_messages(&pg, message_retention_days, |deleted| {
                metrics.record_message_copies_expired(deleted);
            })
            .await;
            match result {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    deleted,
                    days = message_retention_days,
                    "message copies past the retention deleted"
                ),
                Err(err) => tracing::warn!(
                    error = %ErrorChain(&err),
                    days = message_retention_days,
                    "cannot delete message copies past the retention; retrying in ten minutes"
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
    for _ in 0..MAX_KEY_BATCHES_PER_RUN {
        let deleted = sent_messages::delete_expired(pg, BATCH_ROWS).await?;
        total += deleted;
        if deleted < BATCH_ROWS as u64 {
            break;
        }
    }
    Ok(total)
}

/// Deletes message copies stored more than `days` days ago, in batches, until none is left,
/// and returns how many it deleted. `on_batch` gets each batch's count as soon as it is
/// deleted. Unlike the keys, the copies have no cap per run: a busy system stores more than
/// any fixed number in ten minutes, and each batch is a short statement of its own.
///
/// The first run builds the index on `messages.sent_at` that the batches walk (without
/// blocking sends, but taking as long as two reads of the table). While another logic process
/// builds it, the run deletes nothing.
///
/// # Errors
///
/// [`LogicError::Internal`] for `days` above `i32::MAX`; store errors, with the copies deleted
/// before the error staying deleted.
pub async fn delete_expired_messages(
    pg: &PgStore,
    days: u32,
    mut on_batch: impl FnMut(u64),
) -> Result<u64, LogicError> {
    let days = i32::try_from(days).map_err(|_| LogicError::Internal("retention too long"))?;
    match messages::ensure_sent_at_index(pg).await? {
        IndexState::Ready => {}
        IndexState::Built => tracing::info!(
            index = messages::SENT_AT_INDEX,
            "index for message retention built"
        ),
        IndexState::Busy => {
            tracing::info!(
                index = messages::SENT_AT_INDEX,
                "another logic process is building the index for message retention; \
                 deleting in ten minutes"
            );
            return Ok(0);
        }
    }
    let mut total = 0;
    loop {
        let deleted = messages::delete_expired(pg, days, BATCH_ROWS).await?;
        on_batch(deleted);
        total += deleted;
        if deleted < BATCH_ROWS as u64 {
            return Ok(total);
        }
    }
}
