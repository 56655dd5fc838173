//! Token records read from PostgreSQL in batches, for sign-ins that miss the Redis cache.
//!
//! After Redis restarts, its token cache is empty, and every device that reconnects misses it.
//! Read one by one, each miss is a query of its own on the pool. Callers here queue their
//! (user, device) pair on a channel instead. One task takes every queued pair, up to
//! [`TOKEN_BATCH_MAX`], and reads their records with one query, while the next batch fills.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{ErrorChain, LogicError};
use crate::ids::{DeviceId, UserId};
use crate::store::pg::device_tokens;
use crate::store::pg::PgStore;
use crate::store::redis::TokenRecord;

/// Maximum pairs per query.
pub const TOKEN_BATCH_MAX: usize = 512;

/// Queue length per batch slot: pairs beyond `batch_max × QUEUE_FACTOR` wait for room, within
/// their own deadline.
const QUEUE_FACTOR: usize = 8;

/// Handle for queueing token reads on the batching task. Cheap to clone; the task stops once
/// every handle is dropped.
#[derive(Clone)]
pub struct TokenLoader {
    tx: mpsc::Sender<Job>,
    timeout: Duration,
}

struct Job {
    key: (UserId, DeviceId),
    reply: oneshot::Sender<Result<Option<TokenRecord>, LogicError>>,
}

impl TokenLoader {
    /// Spawns the batching task on the current tokio runtime. `batch_max` caps the pairs per
    /// query (at least 1); `timeout` is the deadline of one read, queueing included.
    pub fn spawn(pg: PgStore, batch_max: usize, timeout: Duration) -> TokenLoader {
        let batch_max = batch_max.max(1);
        let (tx, rx) = mpsc::channel(batch_max.saturating_mul(QUEUE_FACTOR));
        tokio::spawn(run(pg, batch_max, rx));
        TokenLoader { tx, timeout }
    }

    /// Returns the token record of `device` of `user` from PostgreSQL, or `None` when the
    /// device is not the user's or has no token.
    ///
    /// # Errors
    ///
    /// Store errors of the batch, [`LogicError::Timeout`] past the deadline.
    pub async fn load(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<TokenRecord>, LogicError> {
        super::queue_for_batch(&self.tx, self.timeout, |reply| Job {
            key: (user, device),
            reply,
        })
        .await
    }
}

async fn run(pg: PgStore, batch_max: usize, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut jobs, batch_max).await > 0 {
        // A caller that gave up has dropped its receiver and needs no record.
        jobs.retain(|job| !job.reply.is_closed());
        if !jobs.is_empty() {
            load_batch(&pg, std::mem::take(&mut jobs)).await;
        }
    }
    tracing::debug!("token batching task stopped: every handle was dropped");
}

/// Reads the records of every pair of `jobs` with one query and replies to each job.
async fn load_batch(pg: &PgStore, jobs: Vec<Job>) {
    let keys: Vec<(UserId, DeviceId)> = jobs.iter().map(|job| job.key).collect();
    match device_tokens::load_many(pg, &keys).await {
        Ok(mut records) => {
            for job in jobs {
                let (user, device) = job.key;
                let _ = job.reply.send(Ok(records.remove(&(user.0, device.0))));
            }
        }
        Err(err) => {
            tracing::warn!(tokens = jobs.len(), error = %ErrorChain(&err), "token batch failed");
            for job in jobs {
                let _ = job.reply.send(Err(super::ack_batch::batch_error(&err)));
            }
        }
    }
}
