//! The `messages` table: one copy of each message per recipient user, at the seq it has in that
//! user's sequence. SYNC pages through a user's copies in seq order.

use std::time::SystemTime;

use bytes::Bytes;
use deadpool_postgres::{ClientWrapper, GenericClient};
use im_proto::v1::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::user_seq::Copy;
use super::{epoch_ms, execute, PgStore};
use crate::error::LogicError;
use crate::ids::{DeviceId, MessageId, UserId};

/// Stores every copy in one statement, passing the fields shared by all copies once.
const INSERT_COPIES: &str = "INSERT INTO messages (user_id, seq, message_id, sender_user_id, \
                             sender_device_id, conversation_type, receiver_id, content, \
                             content_type, client_msg_id, sent_at) \
                             SELECT copy.user_id, copy.seq, $3, $4, $5, $6, $7, $8, $9, $10, now() \
                             FROM unnest($1::bigint[], $2::bigint[]) AS copy (user_id, seq)";

/// The primary key (user_id, seq) serves this range scan.
const PAGE: &str = "SELECT seq, message_id, sender_user_id, sender_device_id, conversation_type, \
                    receiver_id, content, content_type, client_msg_id, sent_at \
                    FROM messages WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// Stores the copies of many messages in one statement: each message's fields are passed once,
/// and each copy names its message by position ($3, from 1).
const INSERT_BATCH: &str = "INSERT INTO messages (user_id, seq, message_id, sender_user_id, \
                            sender_device_id, conversation_type, receiver_id, content, \
                            content_type, client_msg_id, sent_at) \
                            SELECT copy.user_id, copy.seq, msg.message_id, msg.sender_user_id, \
                            msg.sender_device_id, msg.conversation_type, msg.receiver_id, \
                            msg.content, msg.content_type, msg.client_msg_id, now() \
                            FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
                            AS copy (user_id, seq, position) \
                            JOIN unnest($4::bigint[], $5::bigint[], $6::bigint[], $7::smallint[], \
                            $8::bigint[], $9::bytea[], $10::text[], $11::text[]) WITH ORDINALITY \
                            AS msg (message_id, sender_user_id, sender_device_id, \
                            conversation_type, receiver_id, content, content_type, client_msg_id, \
                            position) ON msg.position = copy.position";

/// For each (device, user) pair, the user's newest message when its seq is above the seq the
/// device acked. The primary keys of user_seq, messages and device_acks serve the joins. The
/// message columns come first, in the order `message_from_row` reads them.
const NEWEST_UNACKED: &str = "SELECT m.seq, m.message_id, m.sender_user_id, m.sender_device_id, \
                              m.conversation_type, m.receiver_id, m.content, m.content_type, \
                              m.client_msg_id, m.sent_at, a.device_id, a.user_id \
                              FROM unnest($1::bigint[], $2::bigint[]) AS a (device_id, user_id) \
                              JOIN user_seq AS s ON s.user_id = a.user_id \
                              JOIN messages AS m ON m.user_id = s.user_id AND m.seq = s.last_seq \
                              LEFT JOIN device_acks AS k \
                              ON k.device_id = a.device_id AND k.user_id = a.user_id \
                              WHERE m.seq > COALESCE(k.acked_seq, 0)";

/// Deletes up to $2 of the copies stored more than $1 days ago, oldest first. The inner query
/// walks [`SENT_AT_INDEX`]; the outer one deletes the rows it found by their address.
const DELETE_EXPIRED: &str = "DELETE FROM messages \
                              WHERE ctid = ANY (ARRAY( \
                                  SELECT ctid FROM messages \
                                  WHERE sent_at < now() - make_interval(days => $1) \
                                  ORDER BY sent_at LIMIT $2)) \
                              AND sent_at < now() - make_interval(days => $1)";

/// The index on `messages.sent_at` that [`DELETE_EXPIRED`] needs. Only the retention task
/// builds it, so a deployment that keeps every message does not pay for it on each send.
pub const SENT_AT_INDEX: &str = "messages_sent_at_idx";

/// Whether [`SENT_AT_INDEX`] is valid: no row when it does not exist, false while a
/// concurrent build runs or after one failed.
const SENT_AT_INDEX_VALID: &str =
    "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('messages_sent_at_idx')";

/// Builds [`SENT_AT_INDEX`] without blocking sends. It cannot run inside a transaction.
const BUILD_SENT_AT_INDEX: &str =
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_sent_at_idx ON messages (sent_at)";

/// Drops what a failed build of [`SENT_AT_INDEX`] left behind.
const DROP_SENT_AT_INDEX: &str = "DROP INDEX CONCURRENTLY IF EXISTS messages_sent_at_idx";

/// Session advisory lock that lets one logic process at a time build [`SENT_AT_INDEX`].
const INDEX_BUILD_LOCK: &str = "SELECT pg_try_advisory_lock(7596391274461143601)";
const INDEX_BUILD_UNLOCK: &str = "SELECT pg_advisory_unlock(7596391274461143601)";

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[
        INSERT_COPIES,
        PAGE,
        INSERT_BATCH,
        NEWEST_UNACKED,
        DELETE_EXPIRED,
    ]
}

/// A message as its sender wrote it, before it has per-recipient seqs.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Id shared by every copy.
    pub message_id: MessageId,
    /// The sending user.
    pub sender_user: UserId,
    /// The sending device, 0 for a back end.
    pub sender_device: DeviceId,
    /// `ConversationType` number: 1 a user, 2 a group.
    pub conversation_type: i16,
    /// The user id or group id the sender addressed.
    pub receiver_id: u64,
    /// The body, 1 byte to `max_content_bytes`.
    pub content: &'a [u8],
    /// At most 64 bytes.
    pub content_type: &'a str,
    /// 1 to 64 bytes.
    pub client_msg_id: &'a str,
}

/// Stores one copy of `message` per entry of `copies`, with one statement whatever their number.
/// `sent_at` is the transaction's start time, the same as the key's in `sent_messages`.
///
/// # Errors
///
/// [`LogicError::Internal`] for ids above the bigint range or a row count that differs from
/// `copies`; store errors.
pub async fn insert_copies(
    db: &impl GenericClient,
    message: &NewMessage<'_>,
    copies: &[Copy],
) -> Result<(), LogicError> {
    let users: Option<Vec<i64>> = copies.iter().map(|copy| copy.user.to_sql()).collect();
    let seqs: Result<Vec<i64>, _> = copies.iter().map(|copy| i64::try_from(copy.seq)).collect();
    let (Some(users), Ok(seqs)) = (users, seqs) else {
        return Err(LogicError::Internal(
            "message copy id above the bigint range",
        ));
    };
    let (Some(message_id), Some(sender_user), Some(sender_device), Ok(receiver)) = (
        message.message_id.to_sql(),
        message.sender_user.to_sql(),
        message.sender_device.to_sql(),
        i64::try_from(message.receiver_id),
    ) else {
        return Err(LogicError::Internal("message id above the bigint range"));
    };
    let params: [&(dyn ToSql + Sync); 10] = [
        &users,
        &seqs,
        &message_id,
        &sender_user,
        &sender_device,
        &message.conversation_type,
        &receiver,
        &message.content,
        &message.content_type,
        &message.client_msg_id,
    ];
    let stored = execute(db, INSERT_COPIES, &params).await?;
    if stored != copies.len() as u64 {
        return Err(LogicError::Internal(
            "message copy count differs from recipients",
        ));
    }
    Ok(())
}

/// Stores the copies of several messages in one statement. Each entry of `copies` is the index
/// in `messages` of the copy's message, and the copy.
///
/// # Errors
///
/// [`LogicError::Internal`] for ids above the bigint range, an index outside `messages` or a
/// row count that differs from `copies`; store errors.
pub async fn insert_batch(
    db: &impl GenericClient,
    messages: &[NewMessage<'_>],
    copies: &[(usize, Copy)],
) -> Result<(), LogicError> {
    if copies.is_empty() {
        return Ok(());
    }
    let mut users = Vec::with_capacity(copies.len());
    let mut seqs = Vec::with_capacity(copies.len());
    let mut positions = Vec::with_capacity(copies.len());
    for (index, copy) in copies {
        let (Some(user), Ok(seq), Ok(position), true) = (
            copy.user.to_sql(),
            i64::try_from(copy.seq),
            i64::try_from(index + 1),
            *index < messages.len(),
        ) else {
            return Err(LogicError::Internal("message copy out of range"));
        };
        users.push(user);
        seqs.push(seq);
        positions.push(position);
    }
    let columns = MessageColumns::new(messages)?;
    let params: [&(dyn ToSql + Sync); 11] = [
        &users,
        &seqs,
        &positions,
        &columns.message_ids,
        &columns.sender_users,
        &columns.sender_devices,
        &columns.conversation_types,
        &columns.receivers,
        &columns.contents,
        &columns.content_types,
        &columns.client_msg_ids,
    ];
    let stored = execute(db, INSERT_BATCH, &params).await?;
    if stored != copies.len() as u64 {
        return Err(LogicError::Internal(
            "message copy count differs from recipients",
        ));
    }
    Ok(())
}

/// The fields of several messages, one array per column.
struct MessageColumns<'a> {
    message_ids: Vec<i64>,
    sender_users: Vec<i64>,
    sender_devices: Vec<i64>,
    conversation_types: Vec<i16>,
    receivers: Vec<i64>,
    contents: Vec<&'a [u8]>,
    content_types: Vec<&'a str>,
    client_msg_ids: Vec<&'a str>,
}

impl<'a> MessageColumns<'a> {
    fn new(messages: &[NewMessage<'a>]) -> Result<MessageColumns<'a>, LogicError> {
        let mut columns = MessageColumns {
            message_ids: Vec::with_capacity(messages.len()),
            sender_users: Vec::with_capacity(messages.len()),
            sender_devices: Vec::with_capacity(messages.len()),
            conversation_types: Vec::with_capacity(messages.len()),
            receivers: Vec::with_capacity(messages.len()),
            contents: Vec::with_capacity(messages.len()),
            content_types: Vec::with_capacity(messages.len()),
            client_msg_ids: Vec::with_capacity(messages.len()),
        };
        for message in messages {
            let (Some(message_id), Some(sender_user), Some(sender_device), Ok(receiver)) = (
                message.message_id.to_sql(),
                message.sender_user.to_sql(),
                message.sender_device.to_sql(),
                i64::try_from(message.receiver_id),
            ) else {
                return Err(LogicError::Internal("message id above the bigint range"));
            };
            columns.message_ids.push(message_id);
            columns.sender_users.push(sender_user);
            columns.sender_devices.push(sender_device);
            columns.conversation_types.push(message.conversation_type);
            columns.receivers.push(receiver);
            columns.contents.push(message.content);
            columns.content_types.push(message.content_type);
            columns.client_msg_ids.push(message.client_msg_id);
        }
        Ok(columns)
    }
}

/// Returns up to `limit` copies of `user`'s messages with a seq above `after_seq`, in seq order.
///
/// # Errors
///
/// Store errors; [`LogicError::Internal`] for a stored value out of range.
pub async fn page(
    pg: &PgStore,
    user: UserId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Message>, LogicError> {
    let Some(user) = user.to_sql() else {
        return Ok(Vec::new());
    };
    let rows = pg.query(PAGE, &[&user, &after_seq, &limit]).await?;
    rows.iter().map(message_from_row).collect()
}

/// A user's newest message that one of the user's devices has not acked.
#[derive(Debug, Clone, PartialEq)]
pub struct Unacked {
    /// The device.
    pub device: DeviceId,
    /// The device's user, the owner of the copy.
    pub user: UserId,
    /// The copy, with the user's seq.
    pub message: Message,
}

/// Returns, for each (user, device) pair of `devices`, the user's newest message when the device
/// has not acked it. A device that acked nothing counts as having acked seq 0.
///
/// # Errors
///
/// Store errors; [`LogicError::Internal`] for a stored value out of range.
pub async fn newest_unacked(
    pg: &PgStore,
    devices: &[(UserId, DeviceId)],
) -> Result<Vec<Unacked>, LogicError> {
    let mut device_ids = Vec::with_capacity(devices.len());
    let mut user_ids = Vec::with_capacity(devices.len());
    for (user, device) in devices {
        // An id above the bigint range names no row.
        if let (Some(user), Some(device)) = (user.to_sql(), device.to_sql()) {
            user_ids.push(user);
            device_ids.push(device);
        }
    }
    if device_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = pg.query(NEWEST_UNACKED, &[&device_ids, &user_ids]).await?;
    rows.iter()
        .map(|row| {
            Ok(Unacked {
                device: DeviceId::from_sql(row.try_get(10)?)?,
                user: UserId::from_sql(row.try_get(11)?)?,
                message: message_from_row(row)?,
            })
        })
        .collect()
}

/// Deletes up to `limit` of the copies stored more than `days` days ago, oldest first, and
/// returns how many it deleted. Call it only once [`ensure_sent_at_index`] has returned
/// [`IndexState::Ready`] or [`IndexState::Built`]: without the index each call reads the whole
/// table. The user_seq rows stay, so later messages keep counting on from the deleted ones.
///
/// # Errors
///
/// Store errors.
pub async fn delete_expired(pg: &PgStore, days: i32, limit: i64) -> Result<u64, LogicError> {
    pg.execute(DELETE_EXPIRED, &[&days, &limit]).await
}

/// Outcome of [`ensure_sent_at_index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// The index was there and valid.
    Ready,
    /// This call built it.
    Built,
    /// Another logic process is building it.
    Busy,
}

/// Builds [`SENT_AT_INDEX`] with `CREATE INDEX CONCURRENTLY` unless it exists and is valid, so
/// sends go on during the build. An invalid index that a failed build left is dropped first.
///
/// One logic process at a time builds, under an advisory lock, and the others get
/// [`IndexState::Busy`]. The build has no deadline: on a large table it reads the table twice.
///
/// # Errors
///
/// Store errors. A build that fails leaves an invalid index, which the next call replaces.
pub async fn ensure_sent_at_index(pg: &PgStore) -> Result<IndexState, LogicError> {
    let client = pg.unpooled_client().await?;
    if index_valid(&client).await? == Some(true) {
        return Ok(IndexState::Ready);
    }
    let locked: bool = client.query_one(INDEX_BUILD_LOCK, &[]).await?.try_get(0)?;
    if !locked {
        return Ok(IndexState::Busy);
    }
    let built = build_sent_at_index(&client).await;
    // Closing the session releases the lock too, but only once the server notices the closed
    // connection. Unlocking here lets the next caller in at once.
    let unlocked = client.query_one(INDEX_BUILD_UNLOCK, &[]).await;
    let state = built?;
    unlocked?;
    Ok(state)
}

async fn build_sent_at_index(client: &ClientWrapper) -> Result<IndexState, LogicError> {
    // Checked again under the lock, because another process may have finished meanwhile.
    match index_valid(client).await? {
        Some(true) => return Ok(IndexState::Ready),
        Some(false) => client.batch_execute(DROP_SENT_AT_INDEX).await?,
        None => {}
    }
    client.batch_execute(BUILD_SENT_AT_INDEX).await?;
    Ok(IndexState::Built)
}

async fn index_valid(client: &ClientWrapper) -> Result<Option<bool>, LogicError> {
    client
        .query_opt(SENT_AT_INDEX_VALID, &[])
        .await?
        .map(|valid| valid.try_get(0))
        .transpose()
        .map_err(LogicError::from)
}

fn message_from_row(row: &Row) -> Result<Message, LogicError> {
    let conversation_type: i16 = row.try_get(4)?;
    let content: Vec<u8> = row.try_get(6)?;
    let sent_at: SystemTime = row.try_get(9)?;
    Ok(Message {
        seq: to_u64(row.try_get(0)?)?,
        message_id: to_u64(row.try_get(1)?)?,
        sender_user_id: to_u64(row.try_get(2)?)?,
        sender_device_id: to_u64(row.try_get(3)?)?,
        conversation_type: i32::from(conversation_type),
        receiver_id: to_u64(row.try_get(5)?)?,
        content: Bytes::from(content),
        content_type: row.try_get(7)?,
        client_msg_id: row.try_get(8)?,
        sent_at_ms: epoch_ms(sent_at),
    })
}

fn to_u64(value: i64) -> Result<u64, LogicError> {
    u64::try_from(value).map_err(|_| LogicError::Internal("negative id or seq in messages"))
}
