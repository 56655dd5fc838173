//! The reader task of a connection: it decodes each incoming packet, hands replies to the
//! requests waiting for them, queues every other packet as a push, and records the close.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use futures::stream::SplitStream;
use futures::StreamExt;
use im_proto::v1::Packet;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::connect::Socket;

/// Close code reported when the server's close frame carries no code (RFC 6455, 7.1.5).
pub(crate) const CLOSE_NO_STATUS: u16 = 1005;
/// Close code reported when the connection ended without a close frame (RFC 6455, 7.1.5).
pub(crate) const CLOSE_ABNORMAL: u16 = 1006;

/// Close code and reason of a finished or closing connection.
pub(crate) type CloseInfo = (u16, String);

/// Requests waiting for their reply, keyed by `request_id`.
#[derive(Default)]
pub(crate) struct Pending {
    waiters: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    replies: HashMap<u64, oneshot::Sender<Packet>>,
    /// Set when the reader has stopped: no reply can arrive any more.
    reader_stopped: bool,
}

impl Pending {
    /// Registers a waiter for `request_id`. Returns `None` when the reader has stopped.
    pub(crate) fn register(&self, request_id: u64) -> Option<oneshot::Receiver<Packet>> {
        let mut state = self.lock();
        if state.reader_stopped {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        state.replies.insert(request_id, tx);
        Some(rx)
    }

    /// Drops the waiter for `request_id`, after a timeout or a cancelled request.
    pub(crate) fn forget(&self, request_id: u64) {
        self.lock().replies.remove(&request_id);
    }

    /// Takes the waiter for `request_id`, if a request with that id is waiting.
    fn take(&self, request_id: u64) -> Option<oneshot::Sender<Packet>> {
        self.lock().replies.remove(&request_id)
    }

    /// Wakes every waiter with a closed channel and rejects later registrations.
    fn stop(&self) {
        let mut state = self.lock();
        state.reader_stopped = true;
        state.replies.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // The lock is held for map operations only, which cannot leave the map inconsistent.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the reader task needs, moved into it at spawn.
pub(crate) struct Reader {
    pub(crate) stream: SplitStream<Socket>,
    pub(crate) pending: std::sync::Arc<Pending>,
    pub(crate) pushes: mpsc::Sender<Packet>,
    pub(crate) close: watch::Sender<Option<CloseInfo>>,
    /// Whether the client has paused reading.
    pub(crate) paused: watch::Receiver<bool>,
}

impl Reader {
    /// Reads until the connection ends, then records the close and releases every waiter.
    /// While `paused` is true it does not touch the socket.
    pub(crate) async fn run(mut self) {
        while let Some(item) = self.next_item().await {
            match item {
                Ok(message) => self.handle(message).await,
                Err(error) => {
                    tracing::debug!(%error, "websocket read failed");
                    break;
                }
            }
        }

        // A close frame, if one came, has already been recorded; keep it.
        self.close.send_if_modified(|close| {
            if close.is_some() {
                return false;
            }
            *close = Some((CLOSE_ABNORMAL, String::new()));
            true
        });
        self.pending.stop();
    }

    /// Returns the next WebSocket message, or `None` once the stream has ended or the client
    /// was dropped. Dropping a pending `next()` loses nothing, because tungstenite keeps a
    /// partly read frame in the stream's own buffer.
    async fn next_item(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        loop {
            // An error means the Client was dropped, so no push will be read any more.
            self.paused.wait_for(|paused| !paused).await.ok()?;
            tokio::select! {
                item = self.stream.next() => return item,
                _ = self.paused.wait_for(|paused| *paused) => {}
            }
        }
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Binary(bytes) => match Packet::decode(bytes) {
                Ok(packet) => self.dispatch(packet).await,
                Err(error) => tracing::debug!(%error, "binary message is not a Packet"),
            },
            Message::Close(frame) => self.record_close(frame),
            Message::Text(_) => tracing::debug!("text message ignored"),
            // tungstenite answers pings by itself; pongs and raw frames carry nothing for us.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    async fn dispatch(&mut self, packet: Packet) {
        let waiter = match packet.request_id {
            0 => None,
            request_id => self.pending.take(request_id),
        };
        if let Some(waiter) = waiter {
            // The send fails only when the request gave up (timed out or was cancelled) just
            // now, and then nobody needs the reply.
            let _ = waiter.send(packet);
            return;
        }

        // A full queue holds the reader back, so unread pushes cannot grow memory without
        // bound. The send fails only when the Client is gone, and then nobody reads pushes.
        let _ = self.pushes.send(packet).await;
    }

    fn record_close(&self, frame: Option<CloseFrame>) {
        let info = match frame {
            Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
            None => (CLOSE_NO_STATUS, String::new()),
        };
        tracing::debug!(code = info.0, "close frame received");
        self.close.send_replace(Some(info));
    }
}
