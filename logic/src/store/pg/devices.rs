//! The `devices` table: each user's devices and what they report about themselves at LOGIN.

use im_proto::v1::DeviceInfo;

use super::PgStore;
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};

const INSERT: &str = "INSERT INTO devices (user_id, platform, model, app_version) \
                      VALUES ($1, $2, $3, $4) RETURNING id";

const TOUCH_LOGIN: &str = "UPDATE devices \
                           SET last_login_at = now(), platform = $3, model = $4, app_version = $5 \
                           WHERE id = $1 AND user_id = $2";

const FIND_OWNER: &str = "SELECT user_id FROM devices WHERE id = $1";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[INSERT, TOUCH_LOGIN, FIND_OWNER]
}

/// Inserts a device of `user` and returns its new id.
///
/// # Errors
///
/// Store errors.
pub async fn insert(pg: &PgStore, user: UserId, info: &DeviceInfo) -> Result<DeviceId, LogicError> {
    let user = user_sql(user)?;
    let row = pg
        .query_one(
            INSERT,
            &[&user, &info.platform, &info.model, &info.app_version],
        )
        .await?;
    DeviceId::from_sql(row.try_get(0)?)
}

/// Records a LOGIN of `device` by `user`: sets `last_login_at` and the reported device info.
/// Returns false, changing nothing, when the device does not exist or belongs to another user.
///
/// # Errors
///
/// Store errors.
pub async fn touch_login(
    pg: &PgStore,
    device: DeviceId,
    user: UserId,
    info: &DeviceInfo,
) -> Result<bool, LogicError> {
    let (Some(device), Some(user)) = (device.to_sql(), user.to_sql()) else {
        return Ok(false);
    };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &device,
        &user,
        &info.platform,
        &info.model,
        &info.app_version,
    ];
    Ok(pg.execute(TOUCH_LOGIN, &params).await? == 1)
}

/// Returns the user that owns `device`, or `None` when the device does not exist.
///
/// # Errors
///
/// Store errors.
pub async fn find_owner(pg: &PgStore, device: DeviceId) -> Result<Option<UserId>, LogicError> {
    let Some(device) = device.to_sql() else {
        return Ok(None);
    };
    match pg.query_opt(FIND_OWNER, &[&device]).await? {
        Some(row) => Ok(Some(UserId::from_sql(row.try_get(0)?)?)),
        None => Ok(None),
    }
}

fn user_sql(user: UserId) -> Result<i64, LogicError> {
    user.to_sql()
        .ok_or(LogicError::Internal("user id above the bigint range"))
}
