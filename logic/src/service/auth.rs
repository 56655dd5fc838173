//! LOGIN and SIGN_IN: checking credentials, keeping or creating the device, issuing and checking
//! tokens, then marking the device online.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use im_proto::v1::{
    ConnLoginRequest, ConnSignInManyReply, ConnSignInManyRequest, ConnSignInReply,
    ConnSignInRequest, DeviceInfo, LoginReply,
};

use super::register::{validate_password, validate_username};
use super::text::check_no_control;
use super::{presence, CallIds, Logic};
use crate::error::LogicError;
use crate::ids::{require_ids, ConnRef, DeviceId, UserId};
use crate::metrics::Method;
use crate::store::pg::{device_tokens, devices, users};
use crate::store::redis::{SignInOutcome, TokenRecord};
use crate::token;

/// Tokens longer than this are rejected without hashing them, in bytes. Issued tokens have
/// [`token::TOKEN_LEN`] bytes.
const TOKEN_MAX_BYTES: usize = 256;

/// Maximum lengths of the device info fields, in bytes, as the `devices` table checks them.
const PLATFORM_MAX_BYTES: usize = 32;
const MODEL_MAX_BYTES: usize = 64;
const APP_VERSION_MAX_BYTES: usize = 32;

/// Checks the password, keeps or creates the device, issues a token and marks the device online
/// at the request's connection.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`], [`LogicError::InvalidCredentials`] for an unknown user or a
/// wrong password, [`LogicError::LoginDeviceUnknown`] or [`LogicError::LoginDeviceNotOwned`]
/// for a device id that is not the user's, store errors.
pub async fn login(
    logic: &Logic,
    request: ConnLoginRequest,
    ids: &CallIds,
) -> Result<LoginReply, LogicError> {
    let conn = ConnRef::from_proto(request.conn.as_ref())?;
    let login = request.login.ok_or(LogicError::InvalidArgument {
        field: "login",
        reason: "missing",
    })?;
    validate_username(&login.username)?;
    validate_password(&login.password)?;
    let info = login.device.unwrap_or_default();
    validate_device_info(&info)?;

    let user = authenticate(logic, &login.username, login.password).await?;
    ids.set_user_id(user.0);
    let device = claim_device(logic, user, DeviceId(login.device_id), &info).await?;

    let token = token::generate();
    let expires_at_ms = issue_token(logic, user, device, &token).await?;
    presence::mark_online(logic, user, device, &conn).await?;
    tracing::debug!(
        user_id = user.0,
        device_id = device.0,
        conn_id = conn.conn_id.0,
        "logged in"
    );
    Ok(LoginReply {
        user_id: user.0,
        device_id: device.0,
        token,
        token_expires_at_ms: expires_at_ms,
        // The engine fills in its own heartbeat interval.
        heartbeat_interval_ms: 0,
    })
}

/// Signs in each device of `request` as [`sign_in`] does, all at once so that their Redis
/// commands share pipelines, and returns each one's outcome in request order. Each sign-in is
/// counted and logged as a ConnSignIn call of its own.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for more than [`super::MANY_MAX`] sign-ins.
pub async fn sign_in_many(
    logic: &Logic,
    request: ConnSignInManyRequest,
) -> Result<ConnSignInManyReply, LogicError> {
    super::check_many("sign_ins", request.sign_ins.len())?;
    let results = super::run_each(
        logic,
        Method::ConnSignIn,
        request.sign_ins,
        CallIds::sign_in,
        |request| sign_in(logic, request),
    )
    .await;
    let outcomes = results
        .into_iter()
        .map(|result| {
            let (code, _, message) = super::outcome_fields(result);
            im_proto::v1::SignInOutcome { code, message }
        })
        .collect();
    Ok(ConnSignInManyReply { outcomes })
}

/// Checks the device's token and marks the device online at the request's connection.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for zero ids, [`LogicError::DeviceUnknown`] when no token is
/// stored, [`LogicError::TokenInvalid`], [`LogicError::TokenRevoked`],
/// [`LogicError::TokenExpired`], store errors.
pub async fn sign_in(
    logic: &Logic,
    request: ConnSignInRequest,
) -> Result<ConnSignInReply, LogicError> {
    let conn = ConnRef::from_proto(request.conn.as_ref())?;
    let sign_in = request.sign_in.ok_or(LogicError::InvalidArgument {
        field: "sign_in",
        reason: "missing",
    })?;
    let (user, device) = require_ids(sign_in.user_id, sign_in.device_id)?;

    // An oversized token is not hashed. The empty digest matches no record, so the script
    // only reads the record, and the check below rejects the token.
    let presented = sign_in.token.as_str();
    let digest = (presented.len() <= TOKEN_MAX_BYTES).then(|| token::digest(presented));
    let digest_hex = digest.map(hex::encode).unwrap_or_default();
    let now = now_ms();
    match logic
        .redis
        .sign_in(user, device, &digest_hex, now, &conn)
        .await?
    {
        SignInOutcome::NotCached => {
            // The script has just found no record in Redis, so read PostgreSQL at once.
            let record = load_uncached_token(logic, user, device).await?;
            verify_token(digest.as_ref(), &record, now_ms())?;
            presence::mark_online(logic, user, device, &conn).await?;
        }
        SignInOutcome::Checked {
            record,
            accepted,
            previous,
        } => {
            let verdict = verify_token(digest.as_ref(), &record, now);
            if accepted != verdict.is_ok() {
                // The script and `verify_token` apply the same rules to the same record, so
                // this is a bug. Undo a status set for a rejected token.
                if accepted {
                    logic.redis.set_offline(user, device, &conn).await?;
                }
                return Err(LogicError::Internal(
                    "the sign-in script and the token check disagreed",
                ));
            }
            verdict?;
            presence::kick_replaced(logic, user, device, &conn, previous);
        }
    }
    tracing::debug!(
        user_id = user.0,
        device_id = device.0,
        conn_id = conn.conn_id.0,
        "signed in"
    );
    Ok(ConnSignInReply {})
}

/// Returns the user whose name and password match. An unknown user costs one hash
/// verification too, so response times do not tell which usernames exist.
async fn authenticate(
    logic: &Logic,
    username: &str,
    password: String,
) -> Result<UserId, LogicError> {
    let found = users::find_by_username(&logic.pg, username).await?;
    let (user, stored_hash) = match found {
        Some(credentials) => (Some(credentials.id), Some(credentials.password_hash)),
        None => (None, None),
    };
    let verified = logic.passwords.verify(password, stored_hash).await?;
    match user {
        Some(user) if verified => Ok(user),
        _ => Err(LogicError::InvalidCredentials),
    }
}

/// Returns the device to log in: a new one for id 0, else the given one if it is the user's.
async fn claim_device(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
    info: &DeviceInfo,
) -> Result<DeviceId, LogicError> {
    if device.0 == 0 {
        return devices::insert(&logic.pg, user, info).await;
    }
    if devices::touch_login(&logic.pg, device, user, info).await? {
        return Ok(device);
    }
    match devices::find_owner(&logic.pg, device).await? {
        None => Err(LogicError::LoginDeviceUnknown(device.0)),
        Some(owner) if owner != user => Err(LogicError::LoginDeviceNotOwned(device.0)),
        Some(_) => Err(LogicError::Internal(
            "device row matched its owner but the login update changed nothing",
        )),
    }
}

/// Stores `token` as the device's current token, in PostgreSQL first and then in the Redis
/// cache, and returns its expiry in milliseconds since the Unix epoch.
async fn issue_token(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
    token: &str,
) -> Result<i64, LogicError> {
    let ttl_ms = i64::try_from(logic.token_ttl.as_millis()).unwrap_or(i64::MAX);
    let record = TokenRecord {
        hash: token::digest(token),
        expires_at_ms: now_ms().saturating_add(ttl_ms),
        revoked: false,
    };
    if !device_tokens::store(&logic.pg, user, device, &record).await? {
        return Err(LogicError::Internal(
            "device row vanished between its login update and the token update",
        ));
    }
    cache_token(logic, user, device, &record).await?;
    Ok(record.expires_at_ms)
}

/// Writes `record` to the Redis cache, keeping the key at least until the token expires.
async fn cache_token(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
    record: &TokenRecord,
) -> Result<(), LogicError> {
    let remaining_ms = record.expires_at_ms.saturating_sub(now_ms()).max(1);
    let key_ttl = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(1));
    logic.redis.store_token(user, device, record, key_ttl).await
}

/// Compares the presented token with the stored record: first the hash, so a revocation or an
/// expiry is only reported to the holder of the right token.
///
/// The record comes from Redis. On a miss it is read from PostgreSQL, in a batch with other
/// misses, and written back to Redis, so after a Redis restart each device is read once.
pub(crate) async fn check_token(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
    presented: &str,
) -> Result<(), LogicError> {
    let record = match logic.redis.load_token(user, device).await? {
        Some(record) => record,
        None => load_uncached_token(logic, user, device).await?,
    };
    let digest = (presented.len() <= TOKEN_MAX_BYTES).then(|| token::digest(presented));
    verify_token(digest.as_ref(), &record, now_ms())
}

/// Compares the digest of a presented token (`None` for an oversized token) with `record`
/// at `now_ms`: first the hash, so a revocation or an expiry is only reported to the holder
/// of the right token.
fn verify_token(
    digest: Option<&[u8; 32]>,
    record: &TokenRecord,
    now_ms: i64,
) -> Result<(), LogicError> {
    if !digest.is_some_and(|digest| token::digest_matches(digest, &record.hash)) {
        return Err(LogicError::TokenInvalid);
    }
    if record.revoked {
        return Err(LogicError::TokenRevoked);
    }
    if now_ms >= record.expires_at_ms {
        return Err(LogicError::TokenExpired);
    }
    Ok(())
}

/// Reads a token record missing from Redis from PostgreSQL, in a batch with the other sign-ins
/// that missed, and caches it.
async fn load_uncached_token(
    logic: &Logic,
    user: UserId,
    device: DeviceId,
) -> Result<TokenRecord, LogicError> {
    let record = logic
        .tokens
        .load(user, device)
        .await?
        .ok_or(LogicError::DeviceUnknown)?;
    cache_token(logic, user, device, &record).await?;
    tracing::debug!(
        user_id = user.0,
        device_id = device.0,
        "token record refilled from PostgreSQL"
    );
    Ok(record)
}

fn validate_device_info(info: &DeviceInfo) -> Result<(), LogicError> {
    let fields = [
        (
            "device.platform",
            &info.platform,
            PLATFORM_MAX_BYTES,
            "at most 32 bytes",
        ),
        (
            "device.model",
            &info.model,
            MODEL_MAX_BYTES,
            "at most 64 bytes",
        ),
        (
            "device.app_version",
            &info.app_version,
            APP_VERSION_MAX_BYTES,
            "at most 32 bytes",
        ),
    ];
    for (field, value, max, reason) in fields {
        if value.len() > max {
            return Err(LogicError::InvalidArgument { field, reason });
        }
        check_no_control(field, value)?;
    }
    Ok(())
}

/// Returns the wall-clock time in milliseconds since the Unix epoch; 0 if the clock is set
/// before 1970.
pub(crate) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
