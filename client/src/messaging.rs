//! The messaging requests of a connection: SEND, SYNC and MESSAGE_ACK.

use im_proto::v1::{
    ConversationType, MessageAck, PacketType, SendReply, SendRequest, SyncReply, SyncRequest,
};
use prost::bytes::Bytes;
use prost::Message as _;

use crate::{Client, ClientError};

impl Client {
    /// Sends a message to a user or a group and returns its id and the seq of the sender's own
    /// copy once the server has stored it.
    ///
    /// A SEND that repeats the `client_msg_id` of an earlier SEND from the same device returns
    /// the first reply and stores nothing, so a send whose reply was lost can be retried with
    /// the same id on a new connection.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request); RECEIVER_NOT_FOUND, NOT_FRIEND, NOT_GROUP_MEMBER,
    /// CONTENT_EMPTY, CONTENT_TOO_LARGE and INVALID_ARGUMENT come as [`ClientError::Server`].
    pub async fn send(
        &self,
        conversation_type: ConversationType,
        receiver_id: u64,
        content: impl Into<Bytes>,
        content_type: &str,
        client_msg_id: &str,
    ) -> Result<SendReply, ClientError> {
        let body = SendRequest {
            conversation_type: conversation_type as i32,
            receiver_id,
            content: content.into(),
            content_type: content_type.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
        };
        let reply = self.request(PacketType::Send, body.encode_to_vec()).await?;
        Ok(SendReply::decode(reply.data)?)
    }

    /// Returns up to `limit` of the user's messages with a seq above `after_seq`, in seq order
    /// (`limit` 0 requests the server's default page of 100). When the reply's `has_more` is
    /// set, more messages follow the last one returned.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn sync(&self, after_seq: u64, limit: u32) -> Result<SyncReply, ClientError> {
        let body = SyncRequest { after_seq, limit };
        let reply = self.request(PacketType::Sync, body.encode_to_vec()).await?;
        Ok(SyncReply::decode(reply.data)?)
    }

    /// Tells the server that this device has stored every message up to `seq`. The server
    /// sends no reply, so this returns once the packet is written.
    ///
    /// # Errors
    ///
    /// As [`send_raw`](Self::send_raw).
    pub async fn ack(&self, seq: u64) -> Result<(), ClientError> {
        let body = MessageAck { seq };
        self.notify(PacketType::MessageAck, body.encode_to_vec())
            .await
    }
}
