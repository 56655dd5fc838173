//! Messages from other threads to a shard: a crossbeam channel plus a waker that the
//! shard's inbox task registers, so a send from a tokio thread wakes the monoio thread.

use std::sync::Arc;
use std::task::Poll;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use futures::channel::oneshot;
use futures::task::AtomicWaker;
use im_proto::{DeliveryTarget, KickReason, PacketType};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

use crate::registry::ConnId;

/// Request from another thread to a shard.
#[derive(Debug)]
pub(crate) enum ShardMessage {
    /// Send KICKED to the connection and close it.
    Kick {
        conn_id: ConnId,
        /// The device the connection must be signed in as; guards against stale ids.
        device_id: u64,
        reason: KickReason,
        /// Receives whether the connection was still open.
        reply: Option<oneshot::Sender<bool>>,
    },
    /// Write MESSAGE or NOTICE packets to connections of this shard.
    Deliver {
        items: Vec<TargetedPush>,
        /// Receives (delivered, missed) counts.
        reply: oneshot::Sender<(u32, u32)>,
    },
    /// Stop accepting, close every connection with 1001 and stop the shard.
    Shutdown,
}

/// The content of one delivery, written to each of its targets.
#[derive(Debug)]
pub(crate) enum PushPayload {
    /// A message encoded with seq 0, so without its seq field. The shard adds each target's
    /// seq when it writes the MESSAGE packet, with [`message_packet`].
    Message(Vec<u8>),
    /// An encoded NOTICE packet, the same bytes for every target.
    Notice(Vec<u8>),
}

/// Encodes the MESSAGE packet of a message with `seq`, given the message encoded with seq 0.
/// The bytes equal prost's encoding of `Packet { type: MESSAGE, data }`, where `data` is the
/// message with `seq` encoded by prost. prost-derive 0.14 sorts fields by tag when it encodes,
/// and seq is field 1 of `Message`, so it comes first.
pub(crate) fn message_packet(without_seq: &[u8], seq: u64) -> Vec<u8> {
    // Field numbers of `Packet` (type 1, data 5) and `Message` (seq 1) in packet.proto.
    let seq_len = if seq == 0 {
        0
    } else {
        1 + encoded_len_varint(seq)
    };
    let data_len = seq_len + without_seq.len();
    let mut packet = Vec::with_capacity(2 + 1 + encoded_len_varint(data_len as u64) + data_len);
    encode_key(1, WireType::Varint, &mut packet);
    encode_varint(PacketType::Message as u64, &mut packet);
    // proto3 leaves empty bytes out, as prost does.
    if data_len > 0 {
        encode_key(5, WireType::LengthDelimited, &mut packet);
        encode_varint(data_len as u64, &mut packet);
    }
    if seq != 0 {
        encode_key(1, WireType::Varint, &mut packet);
        encode_varint(seq, &mut packet);
    }
    packet.extend_from_slice(without_seq);
    packet
}

/// One message or notice for one device; for a message, with the seq of its user's copy.
#[derive(Debug)]
pub(crate) struct TargetedPush {
    /// Shared by every target of the delivery.
    pub(crate) payload: Arc<PushPayload>,
    pub(crate) target: DeliveryTarget,
}

/// The sending side; cheap to clone and usable from any thread.
#[derive(Clone)]
pub(crate) struct InboxSender {
    sender: Sender<ShardMessage>,
    waker: Arc<AtomicWaker>,
}

impl InboxSender {
    /// Queues the message and wakes the shard. A stopped shard drops it.
    pub(crate) fn send(&self, message: ShardMessage) {
        if self.sender.send(message).is_ok() {
            self.waker.wake();
        }
    }
}

/// The shard's receiving side.
pub(crate) struct InboxReceiver {
    receiver: Receiver<ShardMessage>,
    waker: Arc<AtomicWaker>,
}

impl InboxReceiver {
    /// Waits for the next message; `None` once every sender is gone.
    pub(crate) async fn recv(&self) -> Option<ShardMessage> {
        std::future::poll_fn(|cx| {
            if let Some(ready) = self.try_recv() {
                return Poll::Ready(ready);
            }
            self.waker.register(cx.waker());
            // A message sent between the first check and the registration would
            // otherwise wait for the next wake-up.
            match self.try_recv() {
                Some(ready) => Poll::Ready(ready),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn try_recv(&self) -> Option<Option<ShardMessage>> {
        match self.receiver.try_recv() {
            Ok(message) => Some(Some(message)),
            Err(TryRecvError::Disconnected) => Some(None),
            Err(TryRecvError::Empty) => None,
        }
    }
}

/// Creates a shard's inbox. Unbounded: messages are small and come from the engine's
/// own gRPC server, which the logic tier calls with deadlines.
pub(crate) fn inbox() -> (InboxSender, InboxReceiver) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (
        InboxSender {
            sender,
            waker: waker.clone(),
        },
        InboxReceiver { receiver, waker },
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use im_proto::{Message, Packet};
    use prost::Message as _;

    use super::*;

    /// Encodes the packet with prost, from a copy of the message with `seq`.
    fn prost_packet(message: &Message, seq: u64) -> Vec<u8> {
        let mut message = message.clone();
        message.seq = seq;
        let packet = Packet {
            r#type: PacketType::Message as i32,
            data: message.encode_to_vec().into(),
            ..Packet::default()
        };
        packet.encode_to_vec()
    }

    #[test]
    fn message_packet_matches_prost() {
        let full = Message {
            seq: 0,
            message_id: u64::MAX,
            sender_user_id: 7,
            sender_device_id: 300,
            conversation_type: 1,
            receiver_id: 1 << 40,
            content: Bytes::from(vec![0xab; 200]),
            content_type: "text/plain".to_owned(),
            client_msg_id: "c-1".to_owned(),
            sent_at_ms: -1,
        };
        for message in [Message::default(), full] {
            let without_seq = message.encode_to_vec();
            for seq in [0, 1, 127, 128, u64::MAX] {
                assert_eq!(
                    message_packet(&without_seq, seq),
                    prost_packet(&message, seq),
                    "seq {seq}"
                );
            }
        }
    }
}
