//! The `sent_messages` table: the reply to each stored send, keyed by sender user, sender device
//! and the client's message id, so that a repeated send returns the first reply and stores
//! nothing.
//!
//! A row counts for a day ([`IDEMPOTENCY_WINDOW`]); after that the key may be used again and
//! [`delete_expired`] removes the row.
//!
//! Each row is written once, with its message id and its sender's seq, in the transaction that
//! stores the message. So `sender_seq` is never 0 in a committed row, whatever the comment in the
//! schema says.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;

use super::{epoch_ms, execute, rows, PgStore};
use crate::error::LogicError;
use crate::ids::{DeviceId, MessageId, UserId};

/// How long a sent message's key keeps returning its first reply.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Deletes up to $1 expired rows; the inner query uses the sent_at index.
const DELETE_EXPIRED: &str = "DELETE FROM sent_messages \
                              WHERE (sender_user_id, sender_device_id, client_msg_id) IN ( \
                                  SELECT sender_user_id, sender_device_id, client_msg_id \
                                  FROM sent_messages \
                                  WHERE sent_at < now() - interval '1 day' LIMIT $1) \
                              AND sent_at < now() - interval '1 day'";

/// Stores the rows of new sends, each with its message id and the seq of the sender's copy, in
/// key order so that concurrent batches lock shared keys in the same order. A row older than a
/// day with the same key is taken over. A live row with the key is left as it is and not
/// counted: ON CONFLICT first waits for the transaction that wrote it. The keys must be
/// distinct.
const INSERT_MANY: &str = "INSERT INTO sent_messages AS sent \
                           (sender_user_id, sender_device_id, client_msg_id, message_id, sender_seq, sent_at) \
                           SELECT k.u, k.d, k.c, k.m, k.s, now() \
                           FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) \
                           AS k (u, d, c, m, s) \
                           ORDER BY k.u, k.d, k.c \
                           ON CONFLICT (sender_user_id, sender_device_id, client_msg_id) DO UPDATE \
                           SET message_id = EXCLUDED.message_id, sender_seq = EXCLUDED.sender_seq, \
                           sent_at = EXCLUDED.sent_at \
                           WHERE sent.sent_at < EXCLUDED.sent_at - interval '1 day'";

/// Takes $1 ids from the `message_ids` sequence, each with the transaction's time.
const NEW_IDS: &str = "SELECT nextval('message_ids'), now() FROM generate_series(1, $1::bigint)";

const FIND_MANY: &str = "SELECT sent.sender_user_id, sent.sender_device_id, sent.client_msg_id, \
                         sent.message_id, sent.sender_seq, sent.sent_at \
                         FROM sent_messages AS sent \
                         JOIN unnest($1::bigint[], $2::bigint[], $3::text[]) AS k (u, d, c) \
                         ON sent.sender_user_id = k.u AND sent.sender_device_id = k.d \
                         AND sent.client_msg_id = k.c \
                         WHERE sent.sent_at >= now() - interval '1 day'";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[DELETE_EXPIRED, INSERT_MANY, NEW_IDS, FIND_MANY]
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

/// Deletes up to `limit` rows older than [`IDEMPOTENCY_WINDOW`] and returns how many it
/// deleted.
///
/// # Errors
///
/// Store errors.
pub async fn delete_expired(pg: &PgStore, limit: i64) -> Result<u64, LogicError> {
    pg.execute(DELETE_EXPIRED, &[&limit]).await
}

/// Ids for new messages, taken from the `message_ids` sequence inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIds {
    /// One id per new message.
    pub message_ids: Vec<MessageId>,
    /// The transaction's time, which every row it stores gets, in milliseconds since the Unix
    /// epoch.
    pub sent_at_ms: i64,
}

/// Takes `count` message ids in one statement inside the caller's transaction.
///
/// # Errors
///
/// Store errors.
pub async fn new_ids(db: &impl GenericClient, count: usize) -> Result<NewIds, LogicError> {
    let mut ids = NewIds {
        message_ids: Vec::with_capacity(count),
        sent_at_ms: 0,
    };
    if count == 0 {
        return Ok(ids);
    }
    let count = i64::try_from(count).map_err(|_| LogicError::Internal("too many message ids"))?;
    for row in rows(db, NEW_IDS, &[&count]).await? {
        ids.message_ids.push(MessageId::from_sql(row.try_get(0)?)?);
        let sent_at: SystemTime = row.try_get(1)?;
        ids.sent_at_ms = epoch_ms(sent_at);
    }
    Ok(ids)
}

/// Key columns of many keys, as arrays for UNNEST.
struct KeyArrays<'a> {
    users: Vec<i64>,
    devices: Vec<i64>,
    ids: Vec<&'a str>,
}

/// Stores the row of each new send of `keys`, which must be distinct, with its message id and
/// the seq of its sender's copy, in one statement inside the caller's transaction. Returns how
/// many rows it stored: fewer than `keys` when a live row has one of the keys, which a
/// concurrent transaction with the same key committed after this one read the keys.
///
/// # Errors
///
/// [`LogicError::Internal`] when the slices differ in length or an id or seq is above the bigint
/// range; store errors.
pub async fn insert_many(
    db: &impl GenericClient,
    keys: &[SendKey<'_>],
    message_ids: &[MessageId],
    sender_seqs: &[u64],
) -> Result<u64, LogicError> {
    if keys.len() != message_ids.len() || keys.len() != sender_seqs.len() {
        return Err(LogicError::Internal(
            "send keys, ids and seqs differ in count",
        ));
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let arrays = key_arrays(keys)?;
    let ids: Option<Vec<i64>> = message_ids.iter().map(|id| id.to_sql()).collect();
    let ids = ids.ok_or(LogicError::Internal("message id above bigint range"))?;
    let seqs: Result<Vec<i64>, _> = sender_seqs.iter().map(|seq| i64::try_from(*seq)).collect();
    let seqs = seqs.map_err(|_| LogicError::Internal("seq above bigint range"))?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&arrays.users, &arrays.devices, &arrays.ids, &ids, &seqs];
    execute(db, INSERT_MANY, &params).await
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
