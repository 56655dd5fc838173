//! Device tokens in the `devices` table: the SHA-256 of each device's current token, its expiry
//! and its revocation. This is the record; Redis caches it for SIGN_IN.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Row;

use super::{epoch_ms, PgStore};
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};
use crate::store::redis::TokenRecord;

const STORE: &str = "UPDATE devices \
                     SET token_hash = $3, token_expires_at = $4, token_revoked_at = NULL \
                     WHERE id = $1 AND user_id = $2";

const LOAD_MANY: &str = "SELECT d.id, d.user_id, d.token_hash, d.token_expires_at, \
                         d.token_revoked_at IS NOT NULL \
                         FROM devices d \
                         JOIN unnest($1::bigint[], $2::bigint[]) AS k(id, user_id) \
                         ON d.id = k.id AND d.user_id = k.user_id";

const REVOKE_DEVICE: &str = "UPDATE devices SET token_revoked_at = now() \
                             WHERE id = $1 AND user_id = $2 AND token_revoked_at IS NULL \
                             RETURNING id";

const REVOKE_USER: &str = "UPDATE devices SET token_revoked_at = now() \
                           WHERE user_id = $1 AND token_revoked_at IS NULL \
                           RETURNING id";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[STORE, LOAD_MANY, REVOKE_DEVICE, REVOKE_USER]
}

/// Stores `record` as the current token of `device`, clearing an earlier revocation. Returns
/// false when the device is not the user's.
///
/// # Errors
///
/// Store errors.
pub async fn store(
    pg: &PgStore,
    user: UserId,
    device: DeviceId,
    record: &TokenRecord,
) -> Result<bool, LogicError> {
    let (Some(device), Some(user)) = (device.to_sql(), user.to_sql()) else {
        return Ok(false);
    };
    let hash: &[u8] = &record.hash;
    let expires_at = system_time(record.expires_at_ms);
    let changed = pg
        .execute(STORE, &[&device, &user, &hash, &expires_at])
        .await?;
    Ok(changed == 1)
}

/// Returns the token records of the (user, device) pairs of `keys` that PostgreSQL holds, keyed
/// by (user id, device id), read with one query. A pair whose device is not the user's, or
/// has no token, is missing from the map.
///
/// # Errors
///
/// Store errors, or [`LogicError::Internal`] for a stored hash that is not 32 bytes.
pub async fn load_many(
    pg: &PgStore,
    keys: &[(UserId, DeviceId)],
) -> Result<HashMap<(u64, u64), TokenRecord>, LogicError> {
    let (users, devices): (Vec<i64>, Vec<i64>) = keys
        .iter()
        .filter_map(|(user, device)| Some((user.to_sql()?, device.to_sql()?)))
        .unzip();
    let rows = pg.query(LOAD_MANY, &[&devices, &users]).await?;
    let mut records = HashMap::with_capacity(rows.len());
    for row in rows {
        let device = DeviceId::from_sql(row.try_get(0)?)?;
        let user = UserId::from_sql(row.try_get(1)?)?;
        if let Some(record) = token_record(&row)? {
            records.insert((user.0, device.0), record);
        }
    }
    Ok(records)
}

/// Reads the token hash, expiry and revocation of a `LOAD_MANY` row, or `None` when the
/// device has no token.
fn token_record(row: &Row) -> Result<Option<TokenRecord>, LogicError> {
    let hash: Option<Vec<u8>> = row.try_get(2)?;
    let expires_at: Option<SystemTime> = row.try_get(3)?;
    let revoked: bool = row.try_get(4)?;
    let (Some(hash), Some(expires_at)) = (hash, expires_at) else {
        return Ok(None);
    };
    let hash = <[u8; 32]>::try_from(hash.as_slice())
        .map_err(|_| LogicError::Internal("stored token hash is not 32 bytes"))?;
    Ok(Some(TokenRecord {
        hash,
        expires_at_ms: epoch_ms(expires_at),
        revoked,
    }))
}

/// Revokes the token of `device`, or of every device of `user` when `device` is `None`.
/// Returns the devices whose token this call revoked; a token revoked before is not listed.
///
/// # Errors
///
/// Store errors.
pub async fn revoke(
    pg: &PgStore,
    user: UserId,
    device: Option<DeviceId>,
) -> Result<Vec<DeviceId>, LogicError> {
    let Some(user) = user.to_sql() else {
        return Ok(Vec::new());
    };
    let rows = match device {
        Some(device) => {
            let Some(device) = device.to_sql() else {
                return Ok(Vec::new());
            };
            pg.query(REVOKE_DEVICE, &[&device, &user]).await?
        }
        None => pg.query(REVOKE_USER, &[&user]).await?,
    };
    rows.iter()
        .map(|row| DeviceId::from_sql(row.try_get(0)?))
        .collect()
}

/// Converts milliseconds since the Unix epoch to a `timestamptz` parameter.
fn system_time(epoch_ms: i64) -> SystemTime {
    let offset = Duration::from_millis(epoch_ms.unsigned_abs());
    if epoch_ms >= 0 {
        UNIX_EPOCH + offset
    } else {
        UNIX_EPOCH - offset
    }
}
