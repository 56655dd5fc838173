//! The `device_acks` table: the highest seq each device reported as stored (MESSAGE_ACK).

use super::PgStore;
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};

/// Records the ack only when the device belongs to the user; the stored seq never goes down.
const RECORD: &str = "INSERT INTO device_acks (device_id, user_id, acked_seq, updated_at) \
                      SELECT id, user_id, $3, now() FROM devices WHERE id = $1 AND user_id = $2 \
                      ON CONFLICT (device_id) DO UPDATE \
                      SET acked_seq = GREATEST(device_acks.acked_seq, EXCLUDED.acked_seq), \
                      updated_at = EXCLUDED.updated_at";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[RECORD]
}

/// Raises the device's acked seq to `seq` if it is lower. Returns false, storing nothing, when
/// the device does not exist or belongs to another user.
///
/// # Errors
///
/// Store errors.
pub async fn record(
    pg: &PgStore,
    device: DeviceId,
    user: UserId,
    seq: i64,
) -> Result<bool, LogicError> {
    let (Some(device), Some(user)) = (device.to_sql(), user.to_sql()) else {
        return Ok(false);
    };
    Ok(pg.execute(RECORD, &[&device, &user, &seq]).await? == 1)
}
