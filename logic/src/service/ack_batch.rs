//! Group commit of MESSAGE_ACKs: concurrent acks stored with one statement.
//!
//! A receiving device acks after each burst of pushes, so under chat load there is about one
//! ack per message. Stored one by one, each ack is a transaction of its own with its own WAL
//! flush. Callers here queue their ack on a channel instead. One task takes every queued ack,
//! up to [`ACK_BATCH_MAX`], keeps the highest seq of each (device, user) pair, and stores them
//! all with one statement (one transaction). While that statement runs, the next batch fills.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{ErrorChain, LogicError, Store};
use crate::store::pg::device_acks::{self, Ack};
use crate::store::pg::PgStore;

/// Maximum acks per statement. After merging, a statement writes one row per device.
pub const ACK_BATCH_MAX: usize = 512;

/// Queue length per batch slot: acks beyond `batch_max × QUEUE_FACTOR` wait for room, within
/// their own deadline.
const QUEUE_FACTOR: usize = 8;

/// Handle for queueing acks on the batching task. Cheap to clone; the task stops once every
/// handle is dropped.
#[derive(Clone)]
pub struct AckBatcher {
    tx: mpsc::Sender<Job>,
    timeout: Duration,
}

struct Job {
    ack: Ack,
    reply: oneshot::Sender<Result<bool, LogicError>>,
}

impl AckBatcher {
    /// Spawns the batching task on the current tokio runtime. `batch_max` caps the acks per
    /// statement (at least 1); `timeout` is the deadline of one ack, queueing included.
    pub fn spawn(pg: PgStore, batch_max: usize, timeout: Duration) -> AckBatcher {
        let batch_max = batch_max.max(1);
        let (tx, rx) = mpsc::channel(batch_max.saturating_mul(QUEUE_FACTOR));
        tokio::spawn(run(pg, batch_max, rx));
        AckBatcher { tx, timeout }
    }

    /// Queues `ack` for the next batch. Returns false, storing nothing, when the device does
    /// not exist or belongs to another user.
    ///
    /// # Errors
    ///
    /// Store errors of the batch, [`LogicError::Timeout`] past the deadline.
    pub async fn record(&self, ack: Ack) -> Result<bool, LogicError> {
        super::queue_for_batch(&self.tx, self.timeout, |reply| Job { ack, reply }).await
    }
}

async fn run(pg: PgStore, batch_max: usize, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut jobs, batch_max).await > 0 {
        // A caller that gave up has dropped its receiver; its ack is not stored.
        jobs.retain(|job| !job.reply.is_closed());
        if !jobs.is_empty() {
            store_batch(&pg, std::mem::take(&mut jobs)).await;
        }
    }
    tracing::debug!("ack batching task stopped: every handle was dropped");
}

/// Stores the highest seq of each (device, user) pair of `jobs` and replies to each job.
async fn store_batch(pg: &PgStore, jobs: Vec<Job>) {
    let merged = merge(jobs.iter().map(|job| job.ack));
    let result = pg
        .with_deadline(async {
            let client = pg.client().await?;
            device_acks::record_many(&client, &merged).await
        })
        .await;
    match result {
        Ok(matched) => {
            let owned: HashMap<(u64, u64), bool> = merged
                .iter()
                .zip(matched)
                .map(|(ack, matched)| ((ack.device.0, ack.user.0), matched))
                .collect();
            for job in jobs {
                let key = (job.ack.device.0, job.ack.user.0);
                let _ = job
                    .reply
                    .send(Ok(owned.get(&key).copied().unwrap_or(false)));
            }
        }
        Err(err) => {
            tracing::warn!(acks = jobs.len(), error = %ErrorChain(&err), "ack batch failed");
            for job in jobs {
                let _ = job.reply.send(Err(batch_error(&err)));
            }
        }
    }
}

/// Returns one ack per (device, user) pair, with the highest seq among `acks`.
fn merge(acks: impl Iterator<Item = Ack>) -> Vec<Ack> {
    let mut highest: HashMap<(u64, u64), Ack> = HashMap::new();
    for ack in acks {
        highest
            .entry((ack.device.0, ack.user.0))
            .and_modify(|kept| kept.seq = kept.seq.max(ack.seq))
            .or_insert(ack);
    }
    highest.into_values().collect()
}

/// Returns the error each job of a failed batch gets: the batch's own error where it can be
/// copied, UNAVAILABLE otherwise.
pub(super) fn batch_error(err: &LogicError) -> LogicError {
    match err {
        LogicError::Timeout { store, timeout_ms } => LogicError::Timeout {
            store: *store,
            timeout_ms: *timeout_ms,
        },
        _ => LogicError::Unavailable(Store::Postgres),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, UserId};

    fn ack(device: u64, user: u64, seq: i64) -> Ack {
        Ack {
            device: DeviceId(device),
            user: UserId(user),
            seq,
        }
    }

    #[test]
    fn merge_keeps_highest_seq_per_pair() {
        let mut merged =
            merge([ack(1, 10, 5), ack(1, 10, 9), ack(1, 10, 7), ack(2, 20, 1)].into_iter());
        merged.sort_by_key(|ack| ack.device.0);

        assert_eq!(merged, vec![ack(1, 10, 9), ack(2, 20, 1)]);
    }

    #[test]
    fn merge_keeps_pairs_with_other_users_apart() {
        let merged = merge([ack(1, 10, 5), ack(1, 11, 9)].into_iter());

        assert_eq!(merged.len(), 2);
    }
}
