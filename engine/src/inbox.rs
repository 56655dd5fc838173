//! Messages from other threads to a shard: a crossbeam channel plus a waker that the
//! shard's inbox task registers, so a send from a tokio thread wakes the monoio thread.

use std::sync::Arc;
use std::task::Poll;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use futures::channel::oneshot;
use futures::task::AtomicWaker;
use im_proto::{DeliveryTarget, KickReason, Message};

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
    /// A message; the shard sets each target's seq when encoding its MESSAGE packet.
    Message(Message),
    /// An encoded NOTICE packet, the same bytes for every target.
    Notice(Vec<u8>),
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
