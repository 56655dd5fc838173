//! An inbox presents a user's messages to one device exactly once and in seq order.
//!
//! It combines the three ways a message reaches a device: MESSAGE pushes, SYNC pages and the
//! device's own SEND replies (the engine pushes a device's own messages only to the user's
//! other devices). A push that skips ahead of the cursor is held back. Pushes of messages
//! stored close together may arrive out of order, and a device's own SEND reply may come
//! before the push of a message stored just ahead of it. So a new hole first waits a short
//! grace for its push, and a SYNC from the cursor fills a hole still open after it. After each batch the inbox acknowledges the highest contiguous seq
//! with MESSAGE_ACK.
//!
//! NOTICE pushes that the inbox reads are kept apart, for [`Inbox::take_notices`].
//!
//! The inbox does not own the connection. Each call takes the [`Client`] to use, so after a
//! reconnect and SIGN_IN the caller passes the new connection to [`Inbox::resync`] and keeps
//! the inbox's cursor.

mod tracker;

use std::future::Future;
use std::time::Duration;

use im_proto::v1::{ConversationType, ErrorCode, Message, Notice, SendReply};
use prost::bytes::Bytes;
use tokio::time::Instant;

pub use tracker::{Arrival, SeqTracker};

use crate::push::Push;
use crate::{Client, ClientError, InboxError, DEFAULT_RETRY_AFTER};

/// SYNC page size of an inbox unless [`Inbox::with_page_limit`] sets another. The server's
/// default maximum is 500.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;

/// SYNC requests in a row that the server may reject (RATE_LIMITED or BUSY) before the inbox
/// gives up with the rejection. At the engine's default of 50 packets a second, a device that
/// waits the named time gets a page every 20 ms, so a second rejection in a row is rare.
const MAX_REJECTED_SYNCS: u32 = 20;

/// How long a new hole waits for the push that fills it before a SYNC, unless
/// [`Inbox::with_hole_grace`] sets another. Pushes that arrive out of order close a hole
/// within milliseconds, and a message that was never pushed waits this much longer.
pub const DEFAULT_HOLE_GRACE: Duration = Duration::from_millis(250);

/// Wait before the first repeated SYNC when a hole is still open after a complete SYNC.
const FIRST_HOLE_RETRY: Duration = Duration::from_millis(50);
/// Maximum wait between repeated SYNCs for a hole that stays open.
const MAX_HOLE_RETRY: Duration = Duration::from_secs(2);

/// Notices an inbox keeps until [`Inbox::take_notices`]. Beyond it the oldest are dropped, so a
/// caller that takes notices less often may miss which list changed. Reloading both lists is
/// then always correct.
pub const MAX_KEPT_NOTICES: usize = 64;

/// One device's view of its user's message sequence. See the module documentation.
#[derive(Debug)]
pub struct Inbox {
    tracker: SeqTracker,
    /// Messages delivered in order but not yet returned to the caller.
    ready: Vec<Message>,
    user_id: u64,
    device_id: u64,
    page_limit: u32,
    hole_grace: Duration,
    /// When the open hole was first seen, while it waits out the grace.
    hole_opened: Option<Instant>,
    /// Set while a hole stays open after a complete SYNC: repeated SYNCs back off.
    hole_retry: Option<HoleRetry>,
    /// When to ack the cursor again after the rate limit rejected a MESSAGE_ACK, if no batch
    /// acks it first.
    ack_retry_at: Option<Instant>,
    /// NOTICE pushes read but not yet taken, oldest first, at most [`MAX_KEPT_NOTICES`].
    notices: Vec<Notice>,
}

#[derive(Debug, Clone, Copy)]
struct HoleRetry {
    at: Instant,
    delay: Duration,
}

impl Inbox {
    /// Creates the inbox of a device that has stored none of its user's messages yet.
    pub fn new(user_id: u64, device_id: u64) -> Inbox {
        Inbox::resume(user_id, device_id, 0)
    }

    /// Creates the inbox of a device that has already stored every message up to `last_seq`.
    pub fn resume(user_id: u64, device_id: u64, last_seq: u64) -> Inbox {
        Inbox {
            tracker: SeqTracker::new(last_seq),
            ready: Vec::new(),
            user_id,
            device_id,
            page_limit: DEFAULT_PAGE_LIMIT,
            hole_grace: DEFAULT_HOLE_GRACE,
            hole_opened: None,
            hole_retry: None,
            ack_retry_at: None,
            notices: Vec::new(),
        }
    }

    /// Sets the SYNC page size ([`DEFAULT_PAGE_LIMIT`] by default). The server rejects sizes
    /// above its `sync_max_page` setting (500 by default) with INVALID_ARGUMENT.
    pub fn with_page_limit(mut self, page_limit: u32) -> Inbox {
        self.page_limit = page_limit;
        self
    }

    /// Sets how long a new hole waits for its push before a SYNC ([`DEFAULT_HOLE_GRACE`] by
    /// default). Zero syncs every hole at once.
    pub fn with_hole_grace(mut self, grace: Duration) -> Inbox {
        self.hole_grace = grace;
        self
    }

    /// Highest seq returned by [`recv`](Self::recv) or [`resync`](Self::resync), with every
    /// lower seq returned too. Messages taken in but not yet returned, such as the own copy
    /// from [`send`](Self::send), do not count until a call returns them.
    pub fn last_seq(&self) -> u64 {
        // `ready` is in seq order and ends at the tracker's cursor. Every seq below its first
        // message was returned earlier or deleted past the retention.
        match self.ready.first() {
            Some(first) => first.seq - 1,
            None => self.tracker.last_seq(),
        }
    }

    /// Number of messages held back behind a hole.
    pub fn held(&self) -> usize {
        self.tracker.held()
    }

    /// Takes the NOTICE pushes read since the last call, oldest first. The inbox reads pushes
    /// only inside its own calls, and [`recv`](Self::recv) does not return for a notice, so a
    /// notice waits here until the next message or the next call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Sends a message as [`Client::send`] does, and places the device's own copy in the
    /// inbox at the seq of the reply. Pushes that arrive while the reply is awaited are taken
    /// in as well. The own copy, like every message, is returned by a later
    /// [`recv`](Self::recv) or [`resync`](Self::resync).
    ///
    /// # Errors
    ///
    /// As [`Client::send`], and as [`recv`](Self::recv) for pushes that arrive meanwhile.
    pub async fn send(
        &mut self,
        client: &Client,
        conversation_type: ConversationType,
        receiver_id: u64,
        content: impl Into<Bytes>,
        content_type: &str,
        client_msg_id: &str,
    ) -> Result<SendReply, InboxError> {
        let content = content.into();
        let request = client.send(
            conversation_type,
            receiver_id,
            content.clone(),
            content_type,
            client_msg_id,
        );
        let reply = self.reading_pushes(client, request).await?;
        let own = Message {
            seq: reply.seq,
            message_id: reply.message_id,
            sender_user_id: self.user_id,
            sender_device_id: self.device_id,
            conversation_type: conversation_type as i32,
            receiver_id,
            content,
            content_type: content_type.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            sent_at_ms: reply.sent_at_ms,
        };
        self.tracker.accept(own, &mut self.ready);
        Ok(reply)
    }

    /// Waits for the next messages in seq order and returns them, after acknowledging the
    /// highest contiguous seq. Holes are filled by SYNC before the messages behind them are
    /// returned. Returns at once when earlier calls left messages undelivered.
    ///
    /// Cancelling the call loses nothing: messages taken in stay in the inbox for the next call.
    ///
    /// # Errors
    ///
    /// [`InboxError::Client`] when the connection closes or a SYNC or MESSAGE_ACK fails,
    /// [`InboxError::Kicked`] on KICKED, [`InboxError::ErrorPush`] on ERROR, and
    /// [`InboxError::Decode`] for a MESSAGE push that does not decode. The inbox stays
    /// consistent after every error.
    pub async fn recv(&mut self, client: &Client) -> Result<Vec<Message>, InboxError> {
        loop {
            if self.sync_due() {
                self.sync_all(client).await?;
            }
            if !self.ready.is_empty() {
                return self.finish_batch(client).await;
            }
            if self.ack_retry_at.is_some_and(|at| Instant::now() >= at) {
                self.ack_cursor(client).await?;
            }
            self.wait_for_pushes(client).await?;
        }
    }

    /// Pages SYNC from the cursor until the server has no more, then returns every message
    /// delivered meanwhile, after acknowledging the highest contiguous seq. Call it after each
    /// connect and SIGN_IN.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn resync(&mut self, client: &Client) -> Result<Vec<Message>, InboxError> {
        self.hole_retry = None;
        self.sync_all(client).await?;
        self.finish_batch(client).await
    }

    /// Tells whether a hole should be synced now: once a new hole has waited out the grace,
    /// and after the back-off delay when a complete SYNC left it open.
    fn sync_due(&mut self) -> bool {
        self.hole_sync_at().is_some_and(|at| Instant::now() >= at)
    }

    /// Returns when the open hole is due for a SYNC, or None without a hole.
    fn hole_sync_at(&mut self) -> Option<Instant> {
        if !self.tracker.has_hole() {
            self.hole_opened = None;
            self.hole_retry = None;
            return None;
        }
        Some(match self.hole_retry {
            Some(retry) => retry.at,
            None => *self.hole_opened.get_or_insert_with(Instant::now) + self.hole_grace,
        })
    }

    /// Pages SYNC from the cursor. The server may reject a page unhandled, because of the
    /// connection's rate limit or a full engine. The page is then asked for again after the
    /// wait the reply names, while pushes are still read, so a device catching up on a long
    /// backlog gets all of it.
    async fn sync_all(&mut self, client: &Client) -> Result<(), InboxError> {
        let mut after_seq = self.tracker.last_seq();
        let mut rejected = 0;
        loop {
            let request = client.sync(after_seq, self.page_limit);
            let result = self.reading_pushes(client, request).await;
            let wait = match &result {
                Err(InboxError::Client(err)) if rejected < MAX_REJECTED_SYNCS => err.retry_after(),
                _ => None,
            };
            if let Some(wait) = wait {
                rejected += 1;
                tracing::debug!(
                    user_id = self.user_id,
                    after_seq,
                    wait_ms = wait.as_millis(),
                    "SYNC rejected; retrying after the wait"
                );
                let pause = async {
                    tokio::time::sleep(wait).await;
                    Ok::<_, ClientError>(())
                };
                self.reading_pushes(client, pause).await?;
                continue;
            }
            let page = result?;
            rejected = 0;
            match self.tracker.accept_page(after_seq, page, &mut self.ready) {
                Some(next) => after_seq = next,
                None => break,
            }
        }
        self.schedule_hole_retry();
        Ok(())
    }

    /// Backs off repeated SYNCs while a hole stays open. The server stores a message before it
    /// pushes it, so a hole should close with the next SYNC; one that does not points at a
    /// message stored after the SYNC began or at a server fault.
    fn schedule_hole_retry(&mut self) {
        self.hole_opened = None;
        if !self.tracker.has_hole() {
            self.hole_retry = None;
            return;
        }
        let delay = match self.hole_retry {
            None => FIRST_HOLE_RETRY,
            Some(retry) => (retry.delay * 2).min(MAX_HOLE_RETRY),
        };
        tracing::debug!(
            user_id = self.user_id,
            last_seq = self.tracker.last_seq(),
            held = self.tracker.held(),
            "hole still open after SYNC"
        );
        self.hole_retry = Some(HoleRetry {
            at: Instant::now() + delay,
            delay,
        });
    }

    async fn finish_batch(&mut self, client: &Client) -> Result<Vec<Message>, InboxError> {
        self.ack_cursor(client).await?;
        Ok(std::mem::take(&mut self.ready))
    }

    /// Acks the cursor when deliveries have moved past the last ack, or a rejected ack left it
    /// unacknowledged.
    async fn ack_cursor(&mut self, client: &Client) -> Result<(), InboxError> {
        self.ack_retry_at = None;
        if let Some(seq) = self.tracker.ack_due() {
            client.ack(seq).await?;
            self.tracker.mark_acked(seq);
        }
        Ok(())
    }

    /// Waits for at least one push and takes in every push already queued. Returns early
    /// without a push when a hole is due for a SYNC or a rejected ack is due again.
    async fn wait_for_pushes(&mut self, client: &Client) -> Result<(), InboxError> {
        let hole_sync_at = self.hole_sync_at();
        let retry_at = match (hole_sync_at, self.ack_retry_at) {
            (Some(hole), Some(ack)) => Some(hole.min(ack)),
            (hole, ack) => hole.or(ack),
        };
        let push = match retry_at {
            Some(at) => tokio::select! {
                push = client.next_push() => push,
                () = tokio::time::sleep_until(at) => return Ok(()),
            },
            None => client.next_push().await,
        };
        self.take_push(client, push)?;
        while let Some(packet) = client.try_next_push() {
            self.take_push(client, Some(packet))?;
        }
        Ok(())
    }

    /// Awaits `request` while taking in pushes, so that a full push queue cannot hold back
    /// the reply.
    async fn reading_pushes<T>(
        &mut self,
        client: &Client,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, InboxError> {
        let mut request = std::pin::pin!(request);
        loop {
            tokio::select! {
                biased;
                result = &mut request => return Ok(result?),
                push = client.next_push() => self.take_push(client, push)?,
            }
        }
    }

    fn take_push(
        &mut self,
        client: &Client,
        packet: Option<im_proto::v1::Packet>,
    ) -> Result<(), InboxError> {
        let Some(packet) = packet else {
            return Err(client.closed_error().into());
        };
        let retry_after = match packet.retry_after_ms {
            0 => DEFAULT_RETRY_AFTER,
            ms => Duration::from_millis(u64::from(ms)),
        };
        match Push::decode(packet).map_err(InboxError::Decode)? {
            Push::Message(message) => {
                self.tracker.accept(message, &mut self.ready);
                Ok(())
            }
            Push::Notice(notice) => {
                if self.notices.len() == MAX_KEPT_NOTICES {
                    self.notices.remove(0);
                }
                self.notices.push(notice);
                Ok(())
            }
            Push::Kicked(kicked) => Err(InboxError::Kicked {
                reason: kicked.reason,
                message: kicked.message,
            }),
            Push::Error { code, .. } if code == ErrorCode::RateLimited as i32 => {
                // MESSAGE_ACK is the only request of the inbox that gets no reply, so the
                // connection's rate limit dropped an ack. The next batch acks the cursor again,
                // or, without one, the inbox after the wait the reply names.
                tracing::debug!(
                    user_id = self.user_id,
                    retry_after_ms = retry_after.as_millis(),
                    "MESSAGE_ACK rejected by the rate limit; acking again"
                );
                self.tracker.ack_rejected();
                self.ack_retry_at
                    .get_or_insert_with(|| Instant::now() + retry_after);
                Ok(())
            }
            Push::Error { code, message } => Err(InboxError::ErrorPush { code, message }),
            Push::Other(packet) => {
                tracing::debug!(
                    packet_type = packet.r#type,
                    request_id = packet.request_id,
                    code = packet.code,
                    "push ignored"
                );
                Ok(())
            }
        }
    }
}
