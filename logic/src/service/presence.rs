//! Online status: marking a device online at a connection, kicking the connection it replaces,
//! and the conditional Offline.

use std::sync::Arc;

use im_proto::v1::{
    KickReason, OfflineManyReply, OfflineManyRequest, OfflineOutcome, OfflineReply, OfflineRequest,
};

use super::{CallIds, Logic, WarnLimiter};
use crate::engine::EngineClients;
use crate::error::{ErrorChain, LogicError};
use crate::ids::{require_ids, ConnRef, DeviceId, UserId};
use crate::metrics::Method;

/// Sets the device's online status to `conn`. If the status named another connection, that
/// connection's node is asked to kick it, in a task of its own so the caller does not wait.
///
/// # Errors
///
/// Store errors.
pub async fn mark_online(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
    conn: &ConnRef,
) -> Result<(), LogicError> {
    let previous = logic.redis.set_online(user, device, conn).await?;
    kick_replaced(logic, user, device, conn, previous);
    Ok(())
}

/// Asks the node of the `previous` online status of a device, now replaced by `conn`, to kick
/// that connection, in a task of its own so the caller does not wait.
pub fn kick_replaced(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
    conn: &ConnRef,
    previous: Option<String>,
) {
    let Some(previous) = previous else {
        return;
    };
    match ConnRef::parse_status(&previous) {
        Some(old) if old != *conn => spawn_kick(logic, user, device, old),
        Some(_) => {}
        None => tracing::error!(
            user_id = user.0,
            device_id = device.0,
            conn_id = conn.conn_id.0,
            "replaced online status was malformed; no connection kicked"
        ),
    }
}

/// Marks each device of `request` offline as [`offline`] does, all at once so that their
/// Redis commands share pipelines, and returns each one's outcome in request order. Each
/// request is counted and logged as an Offline call of its own.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for more than [`super::MANY_MAX`] requests.
pub async fn offline_many(
    logic: &Logic,
    request: OfflineManyRequest,
) -> Result<OfflineManyReply, LogicError> {
    super::check_many("offlines", request.offlines.len())?;
    let results = super::run_each(
        logic,
        Method::Offline,
        request.offlines,
        |request| {
            CallIds::new(
                request.user_id,
                request.device_id,
                request.conn.as_ref().map_or(0, |conn| conn.conn_id),
            )
        },
        |request| offline(logic, request),
    )
    .await;
    let outcomes = results
        .into_iter()
        .map(|result| {
            let (code, reply, message) = super::outcome_fields(result);
            OfflineOutcome {
                code,
                removed: reply.is_some_and(|reply| reply.removed),
                message,
            }
        })
        .collect();
    Ok(OfflineManyReply { outcomes })
}

/// Deletes the device's online status if it still names the request's connection.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for zero ids or a missing connection, store errors.
pub async fn offline(logic: &Logic, request: OfflineRequest) -> Result<OfflineReply, LogicError> {
    let (user, device) = require_ids(request.user_id, request.device_id)?;
    let conn = ConnRef::from_proto(request.conn.as_ref())?;
    let removed = logic.redis.set_offline(user, device, &conn).await?;
    tracing::debug!(
        user_id = user.0,
        device_id = device.0,
        conn_id = conn.conn_id.0,
        removed,
        "offline"
    );
    Ok(OfflineReply { removed })
}

fn spawn_kick(logic: &Logic, user: UserId, device: DeviceId, old: ConnRef) {
    let engines = logic.engines.clone();
    let warnings = logic.kick_warnings.clone();
    tokio::spawn(kick(engines, warnings, user, device, old));
}

async fn kick(
    engines: EngineClients,
    warnings: Arc<WarnLimiter>,
    user: UserId,
    device: DeviceId,
    old: ConnRef,
) {
    let reason = KickReason::SignedInElsewhere;
    let err = match engines.kick(&old.node, device, old.conn_id, reason).await {
        Ok(found) => {
            tracing::debug!(
                user_id = user.0,
                device_id = device.0,
                node = %old.node,
                conn_id = old.conn_id.0,
                found,
                "kicked the replaced connection"
            );
            return;
        }
        Err(err) => err,
    };
    let error = ErrorChain(&err);
    match warnings.admit() {
        Some(suppressed) => tracing::warn!(
            user_id = user.0,
            device_id = device.0,
            node = %old.node,
            conn_id = old.conn_id.0,
            %error,
            suppressed,
            "kick of the replaced connection failed"
        ),
        None => tracing::debug!(
            user_id = user.0,
            device_id = device.0,
            node = %old.node,
            conn_id = old.conn_id.0,
            %error,
            "kick of the replaced connection failed"
        ),
    }
}
