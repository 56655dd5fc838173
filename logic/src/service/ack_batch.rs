//! Group commit of MESSAGE_ACKs: concurrent acks stored with one statement.
//!
//! A receiving device acks after each burst of pushes, so under chat load there is about one
//! ack per message. Stored one by one, each ack is a transaction of its own with its own WAL
//! flush. Callers here queue their ack on a [`Batcher`] instead, which takes up to
//! [`ACK_BATCH_MAX`] acks, keeps the highest seq of each (device, user) pair, and stores them
//! all with one statement (one transaction) while the next batch fills.

use std::collections::HashMap;

use super::batch::{BatchWork, Batcher};
use crate::error::LogicError;
use crate::store::pg::device_acks::{self, Ack};
use crate::store::pg::PgStore;

/// Maximum acks per statement. After merging, a statement writes one row per device.
pub const ACK_BATCH_MAX: usize = 512;

/// Handle for queueing acks on their batching task.
pub type AckBatcher = Batcher<AckWrites>;

/// The batch work that stores the highest seq of each (device, user) pair of a batch of acks.
pub struct AckWrites {
    pg: PgStore,
}

impl AckWrites {
    /// Returns the work that writes to `pg`.
    pub fn new(pg: PgStore) -> AckWrites {
        AckWrites { pg }
    }
}

impl BatchWork for AckWrites {
    type Item = Ack;
    /// True when the device exists and belongs to the user.
    type Output = bool;
    const ITEMS: &'static str = "acks";

    async fn run(&self, acks: &[Ack]) -> Result<Vec<bool>, LogicError> {
        let merged = merge(acks.iter().copied());
        let matched = self
            .pg
            .with_deadline(async {
                let client = self.pg.client().await?;
                device_acks::record_many(&client, &merged).await
            })
            .await?;
        let owned: HashMap<(u64, u64), bool> = merged
            .iter()
            .zip(matched)
            .map(|(ack, matched)| ((ack.device.0, ack.user.0), matched))
            .collect();
        Ok(acks
            .iter()
            .map(|ack| {
                owned
                    .get(&(ack.device.0, ack.user.0))
                    .copied()
                    .unwrap_or(false)
            })
            .collect())
    }
}

impl Batcher<AckWrites> {
    /// Queues `ack` for the next batch. Returns false, storing nothing, when the device does
    /// not exist or belongs to another user.
    ///
    /// # Errors
    ///
    /// Store errors of the batch, [`LogicError::Timeout`] past the deadline.
    pub async fn record(&self, ack: Ack) -> Result<bool, LogicError> {
        self.submit(ack).await
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
