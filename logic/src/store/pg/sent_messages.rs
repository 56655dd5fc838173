//! The `sent_messages` table: the reply to each stored send, keyed by sender user, sender device
//! and the client's message id, so that a repeated send returns the first reply and stores
//! nothing.
//!
//! A row counts for a day ([`IDEMPOTENCY_WINDOW`]); after that the key may be used again and
//! [`delete_expired`] removes the row.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;

use super::{epoch_ms, execute, row_opt, rows, PgStore};
use crate::error::LogicError;
use crate::ids::{DeviceId, MessageId, UserId};

/// How long a sent message's key keeps returning its first reply.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Inserts the key with a new message id, or takes over a row older than a day. Returns no row
/// when a live row has the key: ON CONFLICT first waits for the transaction that wrote it, so
/// that row is committed by then. sender_seq stays 0 until [`set_sender_seq`].
const CLAIM: &str = "INSERT INTO sent_messages AS sent \
                     (sender_user_id, sender_device_id, client_msg_id, message_id, sender_seq, sent_at) \
                     VALUES ($1, $2, $3, nextval('message_ids'), 0, now()) \
                     ON CONFLICT (sender_user_id, sender_device_id, client_msg_id) DO UPDATE \
                     SET message_id = EXCLUDED.message_id, sender_seq = 0, sent_at = EXCLUDED.sent_at \
                     WHERE sent.sent_at < EXCLUDED.sent_at - interval '1 day' \
                     RETURNING message_id, sent_at";

const FIND: &str = "SELECT message_id, sender_seq, sent_at FROM sent_messages \
                    WHERE sender_user_id = $1 AND sender_device_id = $2 AND client_msg_id = $3 \
                    AND sent_at >= now() - interval '1 day'";

const SET_SENDER_SEQ: &str = "UPDATE sent_messages SET sender_seq = $4 \
                              WHERE sender_user_id = $1 AND sender_device_id = $2 \
                              AND client_msg_id = $3";

/// Deletes up to $1 expired rows; the inner query uses the sent_at index.
const DELETE_EXPIRED: &str = "DELETE FROM sent_messages \
                              WHERE (sender_user_id, sender_device_id, client_msg_id) IN ( \
                                  SELECT sender_user_id, sender_device_id, client_msg_id \
                                  FROM sent_messages \
                                  WHERE sent_at < now() - interval '1 day' LIMIT $1) \
                              AND sent_at < now() - interval '1 day'";

/// [`CLAIM`] for many keys at once, in key order, so that concurrent batches lock shared keys
/// in the same order. The keys must be distinct.
const CLAIM_MANY: &str = "INSERT INTO sent_messages AS sent \
                          (sender_user_id, sender_device_id, client_msg_id, message_id, sender_seq, sent_at) \
                          SELECT k.u, k.d, k.c, nextval('message_ids'), 0, now() \
                          FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS k (u, d, c) \
                          ORDER BY k.u, k.d, k.c \
                          ON CONFLICT (sender_user_id, sender_device_id, client_msg_id) DO UPDATE \
                          SET message_id = EXCLUDED.message_id, sender_seq = 0, sent_at = EXCLUDED.sent_at \
                          WHERE sent.sent_at < EXCLUDED.sent_at - interval '1 day' \
                          RETURNING sender_user_id, sender_device_id, client_msg_id, message_id, sent_at";

const FIND_MANY: &str = "SELECT sent.sender_user_id, sent.sender_device_id, sent.client_msg_id, \
                         sent.message_id, sent.sender_seq, sent.sent_at \
                         FROM sent_messages AS sent \
                         JOIN unnest($1::bigint[], $2::bigint[], $3::text[]) AS k (u, d, c) \
                         ON sent.sender_user_id = k.u AND sent.sender_device_id = k.d \
                         AND sent.client_msg_id = k.c \
                         WHERE sent.sent_at >= now() - interval '1 day'";

const SET_SENDER_SEQS: &str = "UPDATE sent_messages AS sent SET sender_seq = k.seq \
                               FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[]) \
                               AS k (u, d, c, seq) \
                               WHERE sent.sender_user_id = k.u AND sent.sender_device_id = k.d \
                               AND sent.client_msg_id = k.c";

/// Removes keys claimed in this transaction for sends that were then rejected.
const RELEASE_MANY: &str = "DELETE FROM sent_messages AS sent \
                            USING unnest($1::bigint[], $2::bigint[], $3::text[]) AS k (u, d, c) \
                            WHERE sent.sender_user_id = k.u AND sent.sender_device_id = k.d \
                            AND sent.client_msg_id = k.c";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[
        CLAIM,
        FIND,
        SET_SENDER_SEQ,
        DELETE_EXPIRED,
        CLAIM_MANY,
        FIND_MANY,
        SET_SENDER_SEQS,
        RELEASE_MANY,
    ]
}

/// The idempotency key of a send.
#[derive(Debug, Clone, Copy)]
pub struct SendKey<'a> {
    /// The sending user.
    pub sender_user: UserId,
    /// The sending device, 0 for a back end.
    pub sender_device: DeviceId,
    /// The id the client chose, 1 to 64 bytes.
    pub client_msg_id: &'a str,
}

/// Outcome of [`claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its old row had expired): store the message with this id and time.
    New {
        /// Id for the new message.
        message_id: MessageId,
        /// Time of the send, in milliseconds since the Unix epoch.
        sent_at_ms: i64,
    },
    /// A send with this key was stored within the last day.
    Repeated,
}

/// The reply a stored send returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentReply {
    /// The message's id.
    pub message_id: MessageId,
    /// Seq of the sender's own copy.
    pub sender_seq: u64,
    /// Time of the send, in milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
}

/// Claims `key` for a new message inside the caller's transaction. While the transaction runs,
/// a concurrent claim of the same key waits for it.
///
/// # Errors
///
/// Store errors.
pub async fn claim(db: &impl GenericClient, key: SendKey<'_>) -> Result<Claim, LogicError> {
    let (user, device) = key_to_sql(key)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&user, &device, &key.client_msg_id];
    let Some(row) = row_opt(db, CLAIM, &params).await? else {
        return Ok(Claim::Repeated);
    };
    let sent_at: SystemTime = row.try_get(1)?;
    Ok(Claim::New {
        message_id: MessageId::from_sql(row.try_get(0)?)?,
        sent_at_ms: epoch_ms(sent_at),
    })
}

/// Returns the reply stored for `key` within the last day, or `None`.
///
/// # Errors
///
/// Store errors.
pub async fn find(
    db: &impl GenericClient,
    key: SendKey<'_>,
) -> Result<Option<SentReply>, LogicError> {
    let (user, device) = key_to_sql(key)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&user, &device, &key.client_msg_id];
    let Some(row) = row_opt(db, FIND, &params).await? else {
        return Ok(None);
    };
    let sender_seq: i64 = row.try_get(1)?;
    let sent_at: SystemTime = row.try_get(2)?;
    Ok(Some(SentReply {
        message_id: MessageId::from_sql(row.try_get(0)?)?,
        sender_seq: u64::try_from(sender_seq)
            .map_err(|_| LogicError::Internal("negative sender_seq"))?,
        sent_at_ms: epoch_ms(sent_at),
    }))
}

/// Records the seq of the sender's copy for the key claimed in this transaction.
///
/// # Errors
///
/// [`LogicError::Internal`] when the key was not claimed; store errors.
pub async fn set_sender_seq(
    db: &impl GenericClient,
    key: SendKey<'_>,
    sender_seq: u64,
) -> Result<(), LogicError> {
    let (user, device) = key_to_sql(key)?;
    let seq =
        i64::try_from(sender_seq).map_err(|_| LogicError::Internal("seq above bigint range"))?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&user, &device, &key.client_msg_id, &seq];
    match execute(db, SET_SENDER_SEQ, &params).await? {
        1 => Ok(()),
        _ => Err(LogicError::Internal("claimed send key vanished")),
    }
}

/// Deletes up to `limit` rows older than [`IDEMPOTENCY_WINDOW`] and returns how many it
/// deleted.
///
/// # Errors
///
/// Store errors.
pub async fn delete_expired(pg: &PgStore, limit: i64) -> Result<u64, LogicError> {
    pg.execute(DELETE_EXPIRED, &[&limit]).await
}

/// The id and time of a newly claimed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewClaim {
    /// Id for the new message.
    pub message_id: MessageId,
    /// Time of the send, in milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
}

/// Key columns of many keys, as arrays for UNNEST.
struct KeyArrays<'a> {
    users: Vec<i64>,
    devices: Vec<i64>,
    ids: Vec<&'a str>,
}

/// Claims every key of `keys`, which must be distinct, in one statement inside the caller's
/// transaction. Returns, per key, the new claim or `None` when a live row has the key (as
/// [`Claim::Repeated`]).
///
/// # Errors
///
/// Store errors.
pub async fn claim_many(
    db: &impl GenericClient,
    keys: &[SendKey<'_>],
) -> Result<Vec<Option<NewClaim>>, LogicError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let arrays = key_arrays(keys)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&arrays.users, &arrays.devices, &arrays.ids];
    let mut claimed = HashMap::with_capacity(keys.len());
    for row in rows(db, CLAIM_MANY, &params).await? {
        let sent_at: SystemTime = row.try_get(4)?;
        let claim = NewClaim {
            message_id: MessageId::from_sql(row.try_get(3)?)?,
            sent_at_ms: epoch_ms(sent_at),
        };
        claimed.insert(row_key(&row)?, claim);
    }
    keys.iter()
        .map(|key| {
            key_to_sql(*key)
                .map(|(u, d)| claimed.get(&(u, d, key.client_msg_id.to_owned())).copied())
        })
        .collect()
}

/// Returns, per key of `keys`, the reply stored within the last day, or `None`; one statement.
///
/// # Errors
///
/// Store errors.
pub async fn find_many(
    db: &impl GenericClient,
    keys: &[SendKey<'_>],
) -> Result<Vec<Option<SentReply>>, LogicError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let arrays = key_arrays(keys)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&arrays.users, &arrays.devices, &arrays.ids];
    let mut found = HashMap::with_capacity(keys.len());
    for row in rows(db, FIND_MANY, &params).await? {
        let sender_seq: i64 = row.try_get(4)?;
        let sent_at: SystemTime = row.try_get(5)?;
        let reply = SentReply {
            message_id: MessageId::from_sql(row.try_get(3)?)?,
            sender_seq: u64::try_from(sender_seq)
                .map_err(|_| LogicError::Internal("negative sender_seq"))?,
            sent_at_ms: epoch_ms(sent_at),
        };
        found.insert(row_key(&row)?, reply);
    }
    keys.iter()
        .map(|key| {
            key_to_sql(*key).map(|(u, d)| found.get(&(u, d, key.client_msg_id.to_owned())).copied())
        })
        .collect()
}

/// Records, per key claimed in this transaction, the seq of the sender's copy; one statement.
///
/// # Errors
///
/// [`LogicError::Internal`] when a key was not claimed or a seq is above the bigint range;
/// store errors.
pub async fn set_sender_seqs(
    db: &impl GenericClient,
    keys: &[SendKey<'_>],
    sender_seqs: &[u64],
) -> Result<(), LogicError> {
    if keys.is_empty() {
        return Ok(());
    }
    let arrays = key_arrays(keys)?;
    let seqs: Result<Vec<i64>, _> = sender_seqs.iter().map(|seq| i64::try_from(*seq)).collect();
    let seqs = seqs.map_err(|_| LogicError::Internal("seq above bigint range"))?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&arrays.users, &arrays.devices, &arrays.ids, &seqs];
    if execute(db, SET_SENDER_SEQS, &params).await? != keys.len() as u64 {
        return Err(LogicError::Internal("claimed send key vanished"));
    }
    Ok(())
}

/// Deletes the rows of keys claimed in this transaction whose sends were rejected, so that a
/// later send with the key is new; one statement.
///
/// # Errors
///
/// Store errors.
pub async fn release_many(db: &impl GenericClient, keys: &[SendKey<'_>]) -> Result<(), LogicError> {
    if keys.is_empty() {
        return Ok(());
    }
    let arrays = key_arrays(keys)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&arrays.users, &arrays.devices, &arrays.ids];
    execute(db, RELEASE_MANY, &params).await?;
    Ok(())
}

fn key_arrays<'a>(keys: &[SendKey<'a>]) -> Result<KeyArrays<'a>, LogicError> {
    let mut arrays = KeyArrays {
        users: Vec::with_capacity(keys.len()),
        devices: Vec::with_capacity(keys.len()),
        ids: Vec::with_capacity(keys.len()),
    };
    for key in keys {
        let (user, device) = key_to_sql(*key)?;
        arrays.users.push(user);
        arrays.devices.push(device);
        arrays.ids.push(key.client_msg_id);
    }
    Ok(arrays)
}

fn row_key(row: &tokio_postgres::Row) -> Result<(i64, i64, String), LogicError> {
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

fn key_to_sql(key: SendKey<'_>) -> Result<(i64, i64), LogicError> {
    match (key.sender_user.to_sql(), key.sender_device.to_sql()) {
        (Some(user), Some(device)) => Ok((user, device)),
        _ => Err(LogicError::Internal("sender id above the bigint range")),
    }
}
