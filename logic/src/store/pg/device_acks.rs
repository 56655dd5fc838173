//! The `device_acks` table: the highest seq each device reported as stored (MESSAGE_ACK).

use std::collections::HashSet;

use deadpool_postgres::GenericClient;

use super::rows;
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};

/// Records each ack whose device belongs to its user; a stored seq never goes down. The
/// (device, user) pairs must be distinct. Rows are locked in device id order, so concurrent
/// batches cannot deadlock. Returns the pairs that matched a device of that user.
const RECORD_MANY: &str = "INSERT INTO device_acks (device_id, user_id, acked_seq, updated_at) \
                           SELECT d.id, d.user_id, a.seq, now() \
                           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
                           AS a (device_id, user_id, seq) \
                           JOIN devices AS d ON d.id = a.device_id AND d.user_id = a.user_id \
                           ORDER BY d.id \
                           ON CONFLICT (device_id) DO UPDATE \
                           SET acked_seq = GREATEST(device_acks.acked_seq, EXCLUDED.acked_seq), \
                           updated_at = EXCLUDED.updated_at \
                           RETURNING device_id, user_id";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[RECORD_MANY]
}

/// One MESSAGE_ACK: the device, the user it must belong to, and the seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledging device.
    pub device: DeviceId,
    /// The user the device must belong to.
    pub user: UserId,
    /// The highest seq the device has stored.
    pub seq: i64,
}

/// Raises the acked seq of each device in `acks` in one statement, never lowering it, and
/// returns, per ack, whether its device belongs to its user. Each (device, user) pair may
/// appear once.
///
/// # Errors
///
/// Store errors, among them a cardinality violation when a pair appears twice.
pub async fn record_many(db: &impl GenericClient, acks: &[Ack]) -> Result<Vec<bool>, LogicError> {
    let mut devices = Vec::with_capacity(acks.len());
    let mut users = Vec::with_capacity(acks.len());
    let mut seqs = Vec::with_capacity(acks.len());
    for ack in acks {
        // An id above the bigint range names no row.
        let (Some(device), Some(user)) = (ack.device.to_sql(), ack.user.to_sql()) else {
            continue;
        };
        devices.push(device);
        users.push(user);
        seqs.push(ack.seq);
    }
    if devices.is_empty() {
        return Ok(vec![false; acks.len()]);
    }
    let mut stored = HashSet::with_capacity(devices.len());
    for row in rows(db, RECORD_MANY, &[&devices, &users, &seqs]).await? {
        let pair: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        stored.insert(pair);
    }
    Ok(acks
        .iter()
        .map(|ack| match (ack.device.to_sql(), ack.user.to_sql()) {
            (Some(device), Some(user)) => stored.contains(&(device, user)),
            _ => false,
        })
        .collect())
}
