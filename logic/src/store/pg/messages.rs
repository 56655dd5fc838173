//! The `messages` table: one copy of each message per recipient user, at the seq it has in that
//! user's sequence. SYNC pages through a user's copies in seq order.

use std::time::SystemTime;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
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

/// Returns every statement of this module.
pub fn all_statements() -> &'static [&'static str] {
    &[INSERT_COPIES, PAGE]
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
/// `sent_at` is the transaction's start time, the same as the claim's in `sent_messages`.
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
