//! SEND, SYNC and MESSAGE_ACK: storing a message once per recipient in one transaction, paging
//! through a user's messages, and recording what a device has stored.
//!
//! A checked send goes to the batching task of `send_batch`, which stores many concurrent sends
//! in one PostgreSQL transaction whose number of round trips depends neither on the number of
//! sends nor on the number of recipients. The push to online devices runs afterwards in a task
//! of its own.

use im_proto::v1::{
    AckReply, ConnAckManyReply, ConnAckManyRequest, ConnAckRequest, ConnSendManyReply,
    ConnSendManyRequest, ConnSendRequest, ConnSyncRequest, ConversationType, DeviceRef, Message,
    SendOutcome, SendReply, SendRequest, ServerSendRequest, SyncReply,
};

use super::caller::{self, Credentials};
use super::text::check_no_control;
use super::{CallIds, Limits, Logic};
use crate::error::LogicError;
use crate::ids::{require_ids, DeviceId, UserId};
use crate::metrics::Method;
use crate::store::pg::device_acks::Ack;
use crate::store::pg::messages;
use crate::store::pg::user_seq::Copy;
use crate::store::pg::{devices, users};

/// Maximum length of `content_type` and `client_msg_id`, in bytes.
const CONTENT_TYPE_MAX_BYTES: usize = 64;
const CLIENT_MSG_ID_MAX_BYTES: usize = 64;

/// SYNC page size when the request's limit is 0, unless `sync_max_page` is smaller.
const DEFAULT_SYNC_PAGE: u32 = 100;

/// The author of a message: a signed-in device, or a back end posting as a user with device 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The sending user.
    pub user: UserId,
    /// The sending device; 0 for ServerSend.
    pub device: DeviceId,
}

/// A send request that passed validation.
pub(super) struct Draft {
    pub(super) conversation: ConversationType,
    pub(super) receiver_id: u64,
    pub(super) request: SendRequest,
}

/// Result of the storing transaction.
pub(super) enum Stored {
    /// The message was stored with these copies.
    New { reply: SendReply, copies: Vec<Copy> },
    /// A send with the same key was stored earlier; nothing was stored now.
    Repeated(SendReply),
}

/// Handles SEND from a signed-in device.
///
/// # Errors
///
/// As [`send`], and [`LogicError::InvalidArgument`] for a missing device or zero ids.
pub async fn send_from_device(
    logic: &Logic,
    request: ConnSendRequest,
) -> Result<SendReply, LogicError> {
    let (user, device) = device_ids(request.device.as_ref())?;
    let send = request.send.ok_or(LogicError::InvalidArgument {
        field: "send",
        reason: "missing",
    })?;
    send_message(logic, Sender { user, device }, send).await
}

/// Checks and stores a message for every recipient, replies, and pushes it to the recipients'
/// online devices in a spawned task. A send whose key (sender user, sender device,
/// `client_msg_id`) was stored within the last day returns that send's reply and stores and
/// pushes nothing.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`], [`LogicError::ContentEmpty`] or
/// [`LogicError::ContentTooLarge`] for a bad request, [`LogicError::ReceiverNotFound`],
/// [`LogicError::NotFriend`], [`LogicError::NotGroupMember`], store errors.
pub async fn send_message(
    logic: &Logic,
    sender: Sender,
    request: SendRequest,
) -> Result<SendReply, LogicError> {
    let draft = validate(&logic.limits, request)?;
    store_and_push(logic, sender, draft).await
}

async fn store_and_push(
    logic: &Logic,
    sender: Sender,
    draft: Draft,
) -> Result<SendReply, LogicError> {
    // The batching task pushes a new message once its transaction has committed.
    match logic.sends.store(sender, draft).await? {
        Stored::New { reply, copies } => {
            tracing::debug!(
                user_id = sender.user.0,
                device_id = sender.device.0,
                msg_id = reply.message_id,
                recipients = copies.len(),
                "message stored"
            );
            logic.metrics.record_message_stored(copies.len());
            Ok(reply)
        }
        Stored::Repeated(reply) => {
            tracing::debug!(
                user_id = sender.user.0,
                device_id = sender.device.0,
                msg_id = reply.message_id,
                "repeated send returned its first reply"
            );
            Ok(reply)
        }
    }
}

/// Handles ServerSend: a back end holding the server secret posts a message as
/// `request.sender_user_id` with device 0, under the same checks as SEND. Every device of the
/// sender gets the message too.
///
/// # Errors
///
/// [`LogicError::PermissionDenied`] for a missing or wrong secret,
/// [`LogicError::ServerSecretUnset`] when none is configured,
/// [`LogicError::InvalidArgument`] for sender 0 or a missing `send`, [`LogicError::NotFound`]
/// for an unknown sender, and the errors of [`send_message`].
pub async fn server_send(
    logic: &Logic,
    credentials: &Credentials,
    request: ServerSendRequest,
) -> Result<SendReply, LogicError> {
    caller::check_server_secret(logic, Method::ServerSend, credentials)?;
    if request.sender_user_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "sender_user_id",
            reason: "must not be 0",
        });
    }
    let send = request.send.ok_or(LogicError::InvalidArgument {
        field: "send",
        reason: "missing",
    })?;
    let draft = validate(&logic.limits, send)?;
    let sender = Sender {
        user: UserId(request.sender_user_id),
        device: DeviceId(0),
    };
    // A device's user exists because it signed in; a back end may name anyone.
    if users::profile(&logic.pg, sender.user).await?.is_none() {
        return Err(LogicError::NotFound(format!(
            "sender user {} not found",
            sender.user
        )));
    }
    store_and_push(logic, sender, draft).await
}

/// Handles SYNC: returns the user's messages after `after_seq`, in seq order.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for zero ids, a limit above `sync_max_page` or an
/// `after_seq` above the bigint range; store errors.
pub async fn sync(logic: &Logic, request: ConnSyncRequest) -> Result<SyncReply, LogicError> {
    let (user, _) = device_ids(request.device.as_ref())?;
    let sync = request.sync.unwrap_or_default();
    let limit = page_size(sync.limit, logic.limits.sync_max_page)?;
    let after_seq = i64::try_from(sync.after_seq).map_err(|_| LogicError::InvalidArgument {
        field: "after_seq",
        reason: "above 2^63 - 1",
    })?;

    // One row past the page shows whether more follow.
    let mut messages = messages::page(&logic.pg, user, after_seq, i64::from(limit) + 1).await?;
    let kept = page_len(
        &messages,
        limit as usize,
        logic.limits.sync_max_page_bytes as usize,
    );
    let has_more = messages.len() > kept;
    messages.truncate(kept);
    Ok(SyncReply { messages, has_more })
}

/// Returns how many of `messages` fit in a page of at most `limit` messages and `max_bytes`
/// content bytes. The first message always fits, so a page is never empty while messages
/// remain.
fn page_len(messages: &[Message], limit: usize, max_bytes: usize) -> usize {
    let mut bytes = 0usize;
    let mut kept = 0;
    for message in messages.iter().take(limit) {
        bytes = bytes.saturating_add(message.content.len());
        if kept > 0 && bytes > max_bytes {
            break;
        }
        kept += 1;
    }
    kept
}

/// Handles MESSAGE_ACK: raises the device's acked seq, never lowering it.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for zero ids or a seq above the bigint range,
/// [`LogicError::DeviceUnknown`] or [`LogicError::DeviceNotOwned`] for a device that is not the
/// user's; store errors.
pub async fn ack(logic: &Logic, request: ConnAckRequest) -> Result<AckReply, LogicError> {
    let (user, device) = device_ids(request.device.as_ref())?;
    let seq = i64::try_from(request.seq).map_err(|_| LogicError::InvalidArgument {
        field: "seq",
        reason: "above 2^63 - 1",
    })?;
    if logic.acks.record(Ack { device, user, seq }).await? {
        return Ok(AckReply {});
    }
    match devices::find_owner(&logic.pg, device).await? {
        None => Err(LogicError::DeviceUnknown),
        Some(owner) if owner != user => Err(LogicError::DeviceNotOwned),
        Some(_) => Err(LogicError::Internal(
            "device row matched its owner but the ack stored nothing",
        )),
    }
}

/// Stores each send of `request` as [`send_from_device`] does, all at once so that they share
/// the send batches, and returns each one's outcome in request order. Each send is counted
/// and logged as a Send call of its own.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for more than [`super::MANY_MAX`] sends.
pub async fn send_many(
    logic: &Logic,
    request: ConnSendManyRequest,
) -> Result<ConnSendManyReply, LogicError> {
    super::check_many("sends", request.sends.len())?;
    let results = super::run_each(
        logic,
        Method::Send,
        request.sends,
        |request| CallIds::device(request.device.as_ref()),
        |request| send_from_device(logic, request),
    )
    .await;
    let outcomes = results
        .into_iter()
        .map(|result| {
            let (code, reply, message) = super::outcome_fields(result);
            SendOutcome {
                code,
                reply,
                message,
            }
        })
        .collect();
    Ok(ConnSendManyReply { outcomes })
}

/// Records each ack of `request` as [`ack`] does, all at once so that they share the ack
/// batches, and returns how many failed. Each ack is counted and logged as an Ack call of its
/// own.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for more than [`super::MANY_MAX`] acks.
pub async fn ack_many(
    logic: &Logic,
    request: ConnAckManyRequest,
) -> Result<ConnAckManyReply, LogicError> {
    super::check_many("acks", request.acks.len())?;
    let results = super::run_each(
        logic,
        Method::Ack,
        request.acks,
        |request| CallIds::device(request.device.as_ref()),
        |request| ack(logic, request),
    )
    .await;
    let failed = results.iter().filter(|result| result.is_err()).count();
    let failed = u32::try_from(failed).unwrap_or(u32::MAX);
    Ok(ConnAckManyReply { failed })
}

fn device_ids(device: Option<&DeviceRef>) -> Result<(UserId, DeviceId), LogicError> {
    let device = device.ok_or(LogicError::InvalidArgument {
        field: "device",
        reason: "missing",
    })?;
    require_ids(device.user_id, device.device_id)
}

/// Returns the page size for a SYNC limit: 0 means [`DEFAULT_SYNC_PAGE`] capped at `max`.
fn page_size(limit: u32, max: u32) -> Result<u32, LogicError> {
    match limit {
        0 => Ok(DEFAULT_SYNC_PAGE.min(max)),
        limit if limit <= max => Ok(limit),
        _ => Err(LogicError::AboveMaximum {
            field: "limit",
            value: limit.into(),
            max: max.into(),
        }),
    }
}

fn validate(limits: &Limits, request: SendRequest) -> Result<Draft, LogicError> {
    let conversation = match ConversationType::try_from(request.conversation_type) {
        Ok(ConversationType::User) => ConversationType::User,
        Ok(ConversationType::Group) => ConversationType::Group,
        _ => {
            return Err(LogicError::InvalidArgument {
                field: "conversation_type",
                reason: "must be USER or GROUP",
            })
        }
    };
    if request.receiver_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "receiver_id",
            reason: "must not be 0",
        });
    }
    validate_content(limits, &request)?;
    Ok(Draft {
        conversation,
        receiver_id: request.receiver_id,
        request,
    })
}

fn validate_content(limits: &Limits, request: &SendRequest) -> Result<(), LogicError> {
    if request.content.is_empty() {
        return Err(LogicError::ContentEmpty);
    }
    if request.content.len() > limits.max_content_bytes as usize {
        return Err(LogicError::ContentTooLarge {
            size: request.content.len(),
            max: limits.max_content_bytes,
        });
    }
    if request.content_type.len() > CONTENT_TYPE_MAX_BYTES {
        return Err(LogicError::InvalidArgument {
            field: "content_type",
            reason: "longer than 64 bytes",
        });
    }
    check_no_control("content_type", &request.content_type)?;
    let id_len = request.client_msg_id.len();
    if id_len == 0 || id_len > CLIENT_MSG_ID_MAX_BYTES {
        return Err(LogicError::InvalidArgument {
            field: "client_msg_id",
            reason: "must have 1 to 64 bytes",
        });
    }
    check_no_control("client_msg_id", &request.client_msg_id)
}

/// Returns the message as pushed; each delivery target carries its own seq.
pub(super) fn pushed_message(sender: Sender, draft: &Draft, reply: &SendReply) -> Message {
    Message {
        seq: 0,
        message_id: reply.message_id,
        sender_user_id: sender.user.0,
        sender_device_id: sender.device.0,
        conversation_type: draft.conversation as i32,
        receiver_id: draft.receiver_id,
        content: draft.request.content.clone(),
        content_type: draft.request.content_type.clone(),
        client_msg_id: draft.request.client_msg_id.clone(),
        sent_at_ms: reply.sent_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits() -> Limits {
        Limits {
            max_content_bytes: 8,
            max_group_members: 5,
            max_groups_per_user: 10,
            max_friends_per_user: 10,
            sync_max_page: 500,
            sync_max_page_bytes: 1024,
        }
    }

    fn with_content(bytes: usize) -> Message {
        Message {
            content: Bytes::from(vec![b'x'; bytes]),
            ..Message::default()
        }
    }

    #[test]
    fn page_ends_before_the_byte_budget() {
        let messages: Vec<Message> = (0..5).map(|_| with_content(400)).collect();

        assert_eq!(page_len(&messages, 500, 1024), 2);
        assert_eq!(page_len(&messages, 1, 1024), 1);
        assert_eq!(page_len(&messages, 500, 2000), 5);
    }

    #[test]
    fn page_holds_one_message_larger_than_the_budget() {
        let messages = vec![with_content(4096), with_content(1)];

        assert_eq!(page_len(&messages, 500, 1024), 1);
        assert_eq!(page_len(&[], 500, 1024), 0);
    }

    fn request() -> SendRequest {
        SendRequest {
            conversation_type: ConversationType::User as i32,
            receiver_id: 7,
            content: Bytes::from_static(b"hi"),
            content_type: "text/plain".to_owned(),
            client_msg_id: "c1".to_owned(),
        }
    }

    fn rejection(request: SendRequest) -> LogicError {
        match validate(&limits(), request) {
            Ok(_) => panic!("request passed validation"),
            Err(err) => err,
        }
    }

    #[test]
    fn valid_request_passes() {
        assert!(validate(&limits(), request()).is_ok());
    }

    #[test]
    fn content_checks_name_their_code() {
        let empty = SendRequest {
            content: Bytes::new(),
            ..request()
        };
        assert!(matches!(rejection(empty), LogicError::ContentEmpty));

        let large = SendRequest {
            content: Bytes::from_static(b"123456789"),
            ..request()
        };
        assert!(matches!(
            rejection(large),
            LogicError::ContentTooLarge { size: 9, max: 8 }
        ));
    }

    #[test]
    fn field_checks_are_invalid_argument() {
        let cases = [
            (
                SendRequest {
                    conversation_type: 0,
                    ..request()
                },
                "conversation_type",
            ),
            (
                SendRequest {
                    conversation_type: 9,
                    ..request()
                },
                "conversation_type",
            ),
            (
                SendRequest {
                    receiver_id: 0,
                    ..request()
                },
                "receiver_id",
            ),
            (
                SendRequest {
                    content_type: "t".repeat(65),
                    ..request()
                },
                "content_type",
            ),
            (
                SendRequest {
                    client_msg_id: String::new(),
                    ..request()
                },
                "client_msg_id",
            ),
            (
                SendRequest {
                    client_msg_id: "c".repeat(65),
                    ..request()
                },
                "client_msg_id",
            ),
        ];
        for (request, expected) in cases {
            match rejection(request) {
                LogicError::InvalidArgument { field, .. } => assert_eq!(field, expected),
                other => panic!("{expected}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0, 500).expect("default"), 100);
        assert_eq!(page_size(0, 20).expect("default capped"), 20);
        assert_eq!(page_size(500, 500).expect("maximum"), 500);
        assert!(page_size(501, 500).is_err());
    }
}
