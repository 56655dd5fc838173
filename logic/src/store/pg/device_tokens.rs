//! Device tokens in the `devices` table: the SHA-256 of each device's current token, its expiry
//! and its revocation. This is the record; Redis caches it for SIGN_IN.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{epoch_ms, PgStore};
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};
use crate::store::redis::TokenRecord;

const STORE: &str = "UPDATE devices \
                     SET token_hash = $3, token_expires_at = $4, token_revoked_at = NULL \
                     WHERE id = $1 AND user_id = $2";

const LOAD: &str = "SELECT token_hash, token_expires_at, token_revoked_at IS NOT NULL \
                    FROM devices WHERE id = $1 AND user_id = $2";

const REVOKE_DEVICE: &str = "UPDATE devices SET token_revoked_at = now() \
                             WHERE id = $1 AND user_id = $2 AND token_revoked_at IS NULL \
                             RETURNING id";

const REVOKE_USER: &str = "UPDATE devices SET token_revoked_at = now() \
                           WHERE user_id = $1 AND token_revoked_at IS NULL \
                           RETURNING id";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[STORE, LOAD, REVOKE_DEVICE, REVOKE_USER]
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

/// Returns the token record of `device` of `user`, or `None` when the device is not the
/// user's or has no token in PostgreSQL.
///
/// # Errors
///
/// Store errors, or [`LogicError::Internal`] for a stored hash that is not 32 bytes.
pub async fn load(
    pg: &PgStore,
    user: UserId,
    device: DeviceId,
) -> Result<Option<TokenRecord>, LogicError> {
    let (Some(device), Some(user)) = (device.to_sql(), user.to_sql()) else {
        return Ok(None);
    };
    let Some(row) = pg.query_opt(LOAD, &[&device, &user]).await? else {
        return Ok(None);
    };
    let hash: Option<Vec<u8>> = row.try_get(0)?;
    let expires_at: Option<SystemTime> = row.try_get(1)?;
    let revoked: bool = row.try_get(2)?;
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
