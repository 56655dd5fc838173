//! Logout and KickDevice: revoking device tokens and kicking the connections that used them.
//!
//! A revocation is written to PostgreSQL first, the record, then to the Redis cache, so a later
//! SIGN_IN with the old token gets TOKEN_REVOKED even after Redis loses its data. A fresh LOGIN
//! issues a new token and clears the revocation.

use im_proto::v1::{
    ConnLogoutReply, ConnLogoutRequest, KickDeviceReply, KickDeviceRequest, KickReason,
    LogoutReply, LogoutRequest,
};

use super::caller::{self, Caller, Credentials};
use super::Logic;
use crate::error::{ErrorChain, LogicError};
use crate::ids::{require_ids, ConnRef, DeviceId, UserId};
use crate::metrics::{LogoutSource, Method};
use crate::store::pg::{device_tokens, devices, users};

/// Revokes the token of a device that sent LOGOUT and removes its online status, if the
/// status still names the request's connection. The engine closes the connection itself.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a missing device or connection, store errors.
pub async fn logout_device(
    logic: &Logic,
    request: ConnLogoutRequest,
) -> Result<ConnLogoutReply, LogicError> {
    let device_ref = request.device.ok_or(LogicError::InvalidArgument {
        field: "device",
        reason: "missing",
    })?;
    let (user, device) = require_ids(device_ref.user_id, device_ref.device_id)?;
    let conn = ConnRef::from_proto(request.conn.as_ref())?;

    revoke(logic, user, Some(device)).await?;
    logic.redis.set_offline(user, device, &conn).await?;
    logic.metrics.record_logout(LogoutSource::Device);
    tracing::debug!(
        user_id = user.0,
        device_id = device.0,
        conn_id = conn.conn_id.0,
        "logged out"
    );
    Ok(ConnLogoutReply {})
}

/// Revokes the calling device's token and kicks its connection with reason LOGGED_OUT.
///
/// # Errors
///
/// Store errors.
pub async fn logout(
    logic: &Logic,
    caller: Caller,
    _request: LogoutRequest,
) -> Result<LogoutReply, LogicError> {
    revoke(logic, caller.user, Some(caller.device)).await?;
    let kicked = kick_online(
        logic,
        caller.user,
        Some(caller.device),
        KickReason::LoggedOut,
    )
    .await?;
    logic.metrics.record_logout(LogoutSource::Api);
    logic.metrics.record_kicks(false, kicked);
    tracing::debug!(
        user_id = caller.user.0,
        device_id = caller.device.0,
        kicked,
        "logged out through the business API"
    );
    Ok(LogoutReply {})
}

/// Revokes the token of one device of a user, or of all of them for device id 0, and kicks
/// their connections with reason KICKED_BY_SERVER. Requires the server secret.
///
/// # Errors
///
/// [`LogicError::PermissionDenied`] for a missing or wrong secret,
/// [`LogicError::ServerSecretUnset`] when none is configured,
/// [`LogicError::InvalidArgument`] for user id 0, [`LogicError::NotFound`] for a user who does
/// not exist or a device that is not the user's, store errors.
pub async fn kick_device(
    logic: &Logic,
    credentials: &Credentials,
    request: KickDeviceRequest,
) -> Result<KickDeviceReply, LogicError> {
    caller::check_server_secret(logic, Method::KickDevice, credentials)?;
    if request.user_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "user_id",
            reason: "must not be 0",
        });
    }
    let user = UserId(request.user_id);
    let device = (request.device_id != 0).then_some(DeviceId(request.device_id));
    match device {
        Some(device) => {
            if devices::find_owner(&logic.pg, device).await? != Some(user) {
                return Err(LogicError::NotFound(format!(
                    "user {user} has no device {device}"
                )));
            }
        }
        // A back end that names a user who does not exist has a wrong id, which a reply of
        // 0 revoked would hide.
        None => {
            if users::profile(&logic.pg, user).await?.is_none() {
                return Err(LogicError::NotFound(format!("user {user} not found")));
            }
        }
    }

    let revoked = revoke(logic, user, device).await?;
    let kicked = kick_online(logic, user, device, KickReason::KickedByServer).await?;
    logic.metrics.record_kicks(true, kicked);
    tracing::info!(
        user_id = user.0,
        device_id = request.device_id,
        revoked,
        kicked,
        "devices kicked by a back end"
    );
    Ok(KickDeviceReply {
        revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        kicked: u32::try_from(kicked).unwrap_or(u32::MAX),
    })
}

/// Revokes in PostgreSQL, then marks the cached records in Redis. Returns how many tokens this
/// call revoked.
///
/// NOTE: a LOGIN of the same device that runs between the two writes may leave its new token
/// cached as valid while PostgreSQL has it revoked; the Redis entry wins until it is evicted.
async fn revoke(logic: &Logic, user: UserId, device: Option<DeviceId>) -> Result<u64, LogicError> {
    let revoked = device_tokens::revoke(&logic.pg, user, device).await?;
    // Also mark a device whose row was revoked before, in case that earlier Redis write failed.
    let mut cached: Vec<DeviceId> = revoked.clone();
    if let Some(device) = device {
        if !cached.contains(&device) {
            cached.push(device);
        }
    }
    logic.redis.revoke_tokens(user, &cached).await?;
    Ok(revoked.len() as u64)
}

/// Kicks the connections of `user`'s online devices (only `device` when given) and removes
/// their online status. Returns how many connections the engine nodes still had.
async fn kick_online(
    logic: &Logic,
    user: UserId,
    device: Option<DeviceId>,
    reason: KickReason,
) -> Result<u64, LogicError> {
    let online = logic
        .redis
        .online_devices(&[user])
        .await
        .pop()
        .unwrap_or(Ok(Vec::new()))?;
    let targets = online
        .into_iter()
        .filter(|entry| device.is_none_or(|device| entry.device == device));
    let mut kicked = 0;
    for target in targets {
        let conn = &target.conn;
        match logic
            .engines
            .kick(&conn.node, target.device, conn.conn_id, reason)
            .await
        {
            Ok(found) => kicked += u64::from(found),
            Err(err) => tracing::warn!(
                user_id = user.0,
                device_id = target.device.0,
                node = %conn.node,
                conn_id = conn.conn_id.0,
                error = %ErrorChain(&err),
                "kick of a revoked device failed; its status is removed anyway"
            ),
        }
        logic.redis.set_offline(user, target.device, conn).await?;
    }
    Ok(kicked)
}
