//! One device connection, run as a task on its shard in named steps: handshake,
//! serve (frames, packets, queued pushes, deadlines), finish (close handshake) and
//! teardown (a `Drop` guard, so it runs on every exit path exactly once).

mod handshake;
pub(crate) mod io;
mod packets;
pub(crate) mod rate;
mod step;
mod transport;

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use im_proto::{ConnRef, OfflineRequest};
use im_ws::{Decoder, Message};
use monoio::net::TcpStream;
use tracing::{debug, field, trace, Instrument};

use crate::bridge::Call;
use crate::close;
use crate::registry::{CloseRequest, ConnId, Outbox};
use crate::shard::ShardContext;
use io::ReadOutcome;
use packets::LogicCall;
use rate::{Deadline, RateState, Verdict};
use step::Step;
use transport::Transport;

/// Most bytes read from one socket before its frames are handled, so one busy
/// connection cannot starve the others on its shard.
const MAX_READ_PER_WAKE: usize = 256 * 1024;

/// Time allowed for the close handshake after the engine sent or echoed a close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// `Connection::reply_at` while no SEND waits for the logic tier.
const NO_CALL: u32 = u32::MAX;

/// The signed-in identity of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    pub(crate) user_id: u64,
    pub(crate) device_id: u64,
}

/// Whether, and as which device, a connection is signed in.
#[derive(Debug, Clone, Copy)]
enum SessionState {
    None,
    /// A SIGN_IN whose reply was TIMEOUT or UNAVAILABLE. The logic tier may still have carried
    /// it out, so teardown sends an Offline for it. That Offline removes only a status that
    /// names this connection.
    Unconfirmed(Session),
    SignedIn(Session),
}

/// Outcome of the serve step.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Send a close frame with this code and reason, then close.
    Close(u16, Cow<'static, str>),
    /// The device sent a close frame with this code: echo it, then close.
    PeerClosed(u16),
    /// The socket is gone (EOF, reset, write timeout): just close it.
    Gone(&'static str),
}

enum Event {
    Readable(std::io::Result<()>),
    Writable,
    Outbox,
}

/// Accepts one TCP connection as a WebSocket and serves it in a task of the current shard
/// until it closes.
pub(crate) fn spawn(ctx: Rc<ShardContext>, stream: TcpStream, peer: SocketAddr) {
    let span = tracing::debug_span!(
        "conn",
        shard = ctx.index,
        %peer,
        conn_id = field::Empty,
        user_id = field::Empty,
        device_id = field::Empty
    );
    let conn = Connection::new(ctx, stream, peer);
    // The span is disabled unless debug logging is on, and then the task does not carry it.
    if span.is_disabled() {
        let task = conn.serve();
        trace!(
            future_bytes = std::mem::size_of_val(&task),
            "connection task"
        );
        monoio::spawn(task);
    } else {
        let task = conn.serve().instrument(span);
        trace!(
            future_bytes = std::mem::size_of_val(&task),
            "connection task"
        );
        monoio::spawn(task);
    }
}

/// A WebSocket connection. Its task contains it and nothing else while it waits, so every
/// field counts toward the memory of an idle connection. Dropping it removes it from its
/// shard and device map, reports the device offline and releases its admission.
pub(crate) struct Connection {
    ctx: Rc<ShardContext>,
    stream: TcpStream,
    transport: Transport,
    fd: RawFd,
    /// Counted by the node's connection limits; released on drop.
    admitted: bool,
    /// In the shard's registry under `id`; removed on drop.
    registered: bool,
    peer: SocketAddr,
    id: ConnId,
    outbox: Rc<Outbox>,
    /// Bytes of a frame not yet complete. Empty, without an allocation, between frames.
    read_buf: BytesMut,
    decoder: Decoder,
    session: SessionState,
    /// Sign-in deadline before sign-in, idle deadline after it.
    deadline: Deadline,
    /// Deadline for queued frames that stopped fitting into the socket; `None` while writes
    /// keep up. The connection goes on reading meanwhile.
    write_deadline: Option<Deadline>,
    /// Token buckets of the packet and byte rate limits.
    rate: RateState,
    /// While a SEND waits for the logic tier, the byte of the outbound queue where its reply
    /// goes, so that pushes queued meanwhile stay behind the reply. `NO_CALL` otherwise.
    reply_at: Cell<u32>,
}

impl Connection {
    fn new(ctx: Rc<ShardContext>, stream: TcpStream, peer: SocketAddr) -> Self {
        let outbox = ctx.placeholder_outbox.clone();
        Self {
            rate: RateState::new(&ctx.rate_limits, ctx.clock.now_ms()),
            fd: stream.as_raw_fd(),
            deadline: Deadline::after(ctx.clock.read_ms(), 0),
            decoder: Decoder::new(ctx.decoder_limits),
            ctx,
            stream,
            transport: Transport::Plain,
            admitted: false,
            registered: false,
            peer,
            id: ConnId(0),
            outbox,
            read_buf: BytesMut::new(),
            session: SessionState::None,
            write_deadline: None,
            reply_at: Cell::new(NO_CALL),
        }
    }

    /// The connection's task: open, serve, close. Every step but serving runs in a recycled
    /// heap block (see `step`), so that its state does not enlarge every idle task. Not an
    /// `async fn`: one would store its argument twice, as the argument and as a local of its
    /// body, while an `async move` block uses its captured connection in place.
    #[allow(clippy::manual_async_fn)] // the `async fn` form would double the task's size
    fn serve(mut self) -> impl Future<Output = ()> {
        async move {
            if !Step::new(self.open()).await {
                return;
            }
            let ending = self.run().await;
            debug!(?ending, "closing");
            Step::new(self.finish(ending)).await;
        }
    }

    /// Admits the connection against the node's limits, runs the handshake and enters the
    /// connection into its shard's registry. Returns false when the connection is to be
    /// dropped.
    async fn open(&mut self) -> bool {
        let ctx = self.ctx.clone();
        if let Err(refusal) = ctx.admission.admit(self.peer.ip()) {
            debug!(limit = refusal.kind(), "connection refused by a limit");
            ctx.metrics.count_limit(refusal.kind());
            handshake::reject_busy(&ctx, &self.stream, refusal).await;
            return false;
        }
        self.admitted = true;
        let _ = self.stream.set_nodelay(true);
        let Some((transport, leftover)) = handshake::accept(&ctx, &self.stream, self.peer).await
        else {
            return false;
        };
        self.transport = transport;
        self.read_buf = leftover;
        self.outbox = Rc::default();
        let Some(id) = ctx.registry.insert(self.outbox.clone()) else {
            debug!("shard is full; closing");
            ctx.metrics.count_limit("shard_full");
            return false;
        };
        self.id = id;
        self.registered = true;
        self.ctx.registry.set_direct_fd(self.id, self.direct_fd());
        ctx.metrics.connections.fetch_add(1, Ordering::Relaxed);
        tracing::Span::current().record("conn_id", id.0);
        debug!("websocket open");
        ctx.clock.tick();
        self.rate = RateState::new(&ctx.rate_limits, ctx.clock.now_ms());
        self.deadline = Deadline::after(ctx.clock.read_ms(), ctx.config.sign_in_timeout_ms);
        true
    }

    async fn run(&mut self) -> Ending {
        if !self.read_buf.is_empty() {
            if let Some(ending) = self.handle_buffered().await {
                return ending;
            }
        }
        loop {
            if let Some(ending) = self.flush() {
                return ending;
            }
            if self.next_deadline().is_due(self.ctx.clock.read_ms()) {
                if let Some(ending) = self.deadline_passed() {
                    return ending;
                }
            }
            match self.next_event().await {
                Event::Outbox | Event::Writable => continue,
                Event::Readable(Err(err)) => {
                    debug!(error = %err, "wait for readability failed");
                    return Ending::Gone("socket error");
                }
                Event::Readable(Ok(())) => match self.read_input() {
                    Ok(true) => {
                        if let Some(ending) = self.handle_buffered().await {
                            return ending;
                        }
                    }
                    Ok(false) => {}
                    Err(ending) => return ending,
                },
            }
        }
    }

    /// Waits for the first of: bytes to read, room to write while frames are stalled,
    /// or frames, a close request or a passed deadline signalled through the outbox. The
    /// shard's deadline sweep signals deadlines, so no connection has a timer of its own.
    async fn next_event(&self) -> Event {
        self.outbox.set_deadline(self.next_deadline());
        if self.write_deadline.is_some() {
            // Boxed: the second readiness wait would enlarge every idle task.
            return Box::pin(self.next_event_stalled()).await;
        }
        let mut readable = pin!(self.stream.readable(false));
        std::future::poll_fn(|cx| {
            if self.outbox.take_notified() && !self.flush_while_waiting() {
                return Poll::Ready(Event::Outbox);
            }
            self.outbox.register(cx.waker());
            readable.as_mut().poll(cx).map(Event::Readable)
        })
        .await
    }

    /// Writes the queued frames while the wait for bytes to read goes on, so that a push
    /// costs no cancelled and renewed readiness wait. Returns false when the connection's
    /// loop must act instead: TLS, a close request, a passed deadline, or a write that
    /// stalled or failed.
    fn flush_while_waiting(&self) -> bool {
        if !matches!(self.transport, Transport::Plain)
            || self.outbox.close_request().is_some()
            || self.next_deadline().is_due(self.ctx.clock.read_ms())
        {
            return false;
        }
        matches!(self.outbox.write_to(self.fd), Ok(true))
    }

    /// [`Connection::next_event`] while queued frames wait for room in the socket.
    async fn next_event_stalled(&self) -> Event {
        let mut readable = pin!(self.stream.readable(false));
        let mut writable = pin!(self.stream.writable(false));
        std::future::poll_fn(|cx| {
            if self.outbox.take_notified() {
                return Poll::Ready(Event::Outbox);
            }
            self.outbox.register(cx.waker());
            if let Poll::Ready(result) = readable.as_mut().poll(cx) {
                return Poll::Ready(Event::Readable(result));
            }
            if writable.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Writable);
            }
            Poll::Pending
        })
        .await
    }

    /// Returns the earlier of the sign-in or idle deadline and the stalled-write deadline.
    fn next_deadline(&self) -> Deadline {
        match self.write_deadline {
            Some(write_deadline) => self.deadline.min(write_deadline),
            None => self.deadline,
        }
    }

    /// Returns the ending for a passed deadline, or `None` when none has passed.
    fn deadline_passed(&self) -> Option<Ending> {
        let now_ms = self.ctx.clock.read_ms();
        if let Some(write_deadline) = self.write_deadline {
            if write_deadline.is_due(now_ms) {
                debug!("write timed out: the device stopped reading");
                self.ctx.metrics.count_limit("write_timeout");
                return Some(Ending::Gone("write timed out"));
            }
        }
        if !self.deadline.is_due(now_ms) {
            return None;
        }
        Some(match self.session() {
            None => Ending::Close(
                close::SIGN_IN_TIMEOUT,
                "sign-in timed out: send SIGN_IN or LOGIN right after connecting".into(),
            ),
            Some(_) => Ending::Close(
                close::HEARTBEAT_TIMEOUT,
                "heartbeat timed out: send HEARTBEAT at the advertised interval".into(),
            ),
        })
    }

    /// Reads the bytes waiting in the socket into the read buffer. Returns true when bytes arrived,
    /// or the ending when the socket is closed or failed.
    fn read_input(&mut self) -> Result<bool, Ending> {
        let outcome = {
            let mut scratch = self.ctx.scratch.borrow_mut();
            self.transport
                .read(self.fd, &mut scratch, &mut self.read_buf, MAX_READ_PER_WAKE)
        };
        self.ctx.clock.tick();
        match outcome {
            Ok(ReadOutcome::Data) => Ok(true),
            Ok(ReadOutcome::WouldBlock) => Ok(false),
            Ok(ReadOutcome::Eof) => Err(Ending::Gone("peer closed the socket")),
            Err(err) => {
                debug!(error = %err, "read failed");
                Err(Ending::Gone("read error"))
            }
        }
    }

    /// Handles every whole message in the read buffer. Most packets are handled without
    /// waiting. A packet that calls the logic tier runs in a recycled step (see `step`), so
    /// its state does not enlarge the connection's task.
    async fn handle_buffered(&mut self) -> Option<Ending> {
        loop {
            // A `let`, not a `match` around the await: a match scrutinee would live across
            // the await and enlarge every idle task by a packet.
            let call = match self.handle_input() {
                Ok(ending) => return ending,
                Err(call) => call,
            };
            // Write the replies queued so far before the wait, so that the replies of packets
            // sent in one write do not add up in the queue past `max_outbound_bytes`.
            if let Some(ending) = self.flush() {
                return Some(ending);
            }
            if let Some(ending) = Step::new(self.handle_call(call)).await {
                return Some(ending);
            }
        }
    }

    /// Decodes and handles the whole messages in the read buffer until it has no more, a
    /// message ends the connection, or a packet must call the logic tier. That packet is
    /// returned, and the messages after it stay in the buffer.
    fn handle_input(&mut self) -> Result<Option<Ending>, LogicCall> {
        loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(message)) => {
                    self.touch();
                    let ending = match self.check_rate(&message) {
                        Verdict::Pass => self.handle_message(message)?,
                        Verdict::Limited {
                            kind,
                            retry_after_ms,
                        } => self.reject_limited(&message, kind, retry_after_ms),
                        Verdict::Close => Some(self.close_rate_exceeded()),
                    };
                    if let Some(ending) = ending {
                        return Ok(Some(ending));
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    debug!(error = %err, "websocket protocol error");
                    return Ok(Some(Ending::Close(
                        err.close_code(),
                        err.to_string().into(),
                    )));
                }
            }
        }
        io::release_if_empty(&mut self.read_buf);
        Ok(None)
    }

    /// Handles one message, or returns the packet that must call the logic tier.
    fn handle_message(&mut self, message: Message) -> Result<Option<Ending>, LogicCall> {
        let ending = match message {
            Message::Binary(data) => return self.handle_packet(data),
            Message::Text(_) => Some(Ending::Close(
                close::UNSUPPORTED_DATA,
                "text frames are not supported: send each Packet as a binary message".into(),
            )),
            Message::Ping(payload) => self.queue(|buf| im_ws::encode_pong(&payload, buf)),
            Message::Pong(_) => None,
            Message::Close(frame) => Some(Ending::PeerClosed(
                frame.map_or(close::NORMAL, |frame| frame.code),
            )),
        };
        Ok(ending)
    }

    /// Pushes the idle deadline forward after any frame from a signed-in device.
    fn touch(&mut self) {
        if self.session().is_some() {
            self.deadline = Deadline::after(
                self.ctx.clock.now_ms(),
                self.ctx.config.heartbeat_timeout_ms,
            );
        }
    }

    /// Charges a received message to the rate limits. Close and text frames always pass,
    /// because both end the connection.
    fn check_rate(&mut self, message: &Message) -> Verdict {
        let bytes = match message {
            Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
            Message::Text(_) | Message::Close(_) => return Verdict::Pass,
        };
        let now_ms = self.ctx.clock.now_ms();
        self.rate.check(&self.ctx.rate_limits, now_ms, bytes)
    }

    fn close_rate_exceeded(&self) -> Ending {
        debug!("rate limit exceeded; closing");
        self.ctx.metrics.count_limit("rate_close");
        Ending::Close(
            close::RATE_LIMIT_EXCEEDED,
            "rate limit exceeded: reconnect later and send more slowly".into(),
        )
    }

    /// Queues encoded frames; past the outbound limit the connection must close. The
    /// connection's loop writes them before it waits again, so the queue does not wake the
    /// task.
    fn queue(&self, encode: impl FnOnce(&mut BytesMut)) -> Option<Ending> {
        let queued = match self.reply_at.get() {
            NO_CALL => self.outbox.append(encode),
            at => {
                let (queued, end) = self.outbox.insert(at as usize, encode);
                self.reply_at.set(u32::try_from(end).unwrap_or(NO_CALL));
                queued
            }
        };
        let limit = self.ctx.config.max_outbound_bytes;
        // As for a push, only bytes the socket rejects count. Pushes queued while a call
        // waited can pass the limit together with its reply, so the queue is first written as
        // far as the socket takes it, when the connection allows the shard to write it too.
        let rejected =
            queued > limit && self.ctx.registry.write_direct(self.id, &self.outbox) > limit;
        rejected.then(|| {
            self.ctx.metrics.count_limit("outbound_queue");
            // As for a push past the limit: the close need not wait behind the queue.
            self.outbox.drop_unsent();
            Ending::Close(
                close::SLOW_CONSUMER,
                "outbound queue full: read faster, then reconnect and sync".into(),
            )
        })
    }

    /// Writes what the socket takes of the queued frames without waiting, and notes when
    /// the rest stalls. Returns an ending when a close was requested or the socket failed.
    fn flush(&mut self) -> Option<Ending> {
        self.outbox.take_notified();
        if let Some(request) = self.outbox.close_request() {
            return Some(self.requested_close(request));
        }
        let written = match &mut self.transport {
            Transport::Plain => self.outbox.write_to(self.fd),
            tls => self
                .outbox
                .write_with(|pending| tls.write(self.fd, pending)),
        };
        match written {
            Ok(true) => {
                self.write_deadline = None;
                None
            }
            Ok(false) => {
                if self.write_deadline.is_none() {
                    let timeout_ms = self.ctx.config.write_timeout_ms;
                    self.write_deadline =
                        Some(Deadline::after(self.ctx.clock.read_ms(), timeout_ms));
                }
                None
            }
            Err(err) => {
                debug!(error = %err, "write failed");
                Some(Ending::Gone("write error"))
            }
        }
    }

    async fn write_all(&mut self, data: &mut BytesMut) -> Result<(), Ending> {
        let timeout = Duration::from_millis(self.ctx.config.write_timeout_ms);
        loop {
            match self.transport.write(self.fd, data) {
                Ok((written, all_written)) => {
                    data.advance(written);
                    if all_written {
                        return Ok(());
                    }
                }
                Err(err) => {
                    debug!(error = %err, "write failed");
                    return Err(Ending::Gone("write error"));
                }
            }
            match monoio::time::timeout(timeout, self.stream.writable(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    debug!(error = %err, "wait for writability failed");
                    return Err(Ending::Gone("write error"));
                }
                Err(_) => {
                    debug!(
                        queued = data.len(),
                        "write timed out: the device stopped reading"
                    );
                    return Err(Ending::Gone("write timed out"));
                }
            }
        }
    }

    fn requested_close(&self, request: CloseRequest) -> Ending {
        match request {
            CloseRequest::Kicked(reason) => {
                self.send_kicked(reason);
                Ending::Close(close::KICKED, packets::kick_text(reason).into())
            }
            CloseRequest::Shutdown => Ending::Close(
                close::GOING_AWAY,
                "server shutting down: reconnect to another node".into(),
            ),
            CloseRequest::SlowConsumer => {
                // What is queued would only delay the close; the device syncs it later.
                self.outbox.drop_unsent();
                Ending::Close(
                    close::SLOW_CONSUMER,
                    "outbound queue full: read faster, then reconnect and sync".into(),
                )
            }
        }
    }

    /// Returns the socket the shard may write queued pushes to: the plain socket, or none
    /// over TLS, whose records only the connection's task may write.
    fn direct_fd(&self) -> Option<RawFd> {
        matches!(self.transport, Transport::Plain).then_some(self.fd)
    }

    /// Runs the closing handshake for `ending`; the socket closes when the connection drops.
    async fn finish(&mut self, ending: Ending) {
        // From here only this task writes, and the close frame comes last.
        self.ctx.registry.set_direct_fd(self.id, None);
        let (code, await_answer) = match ending {
            Ending::Gone(why) => {
                debug!(why, "socket gone");
                self.ctx.metrics.count_close(None);
                return;
            }
            Ending::Close(code, reason) => {
                self.outbox
                    .push(|buf| im_ws::encode_close(code, &reason, buf));
                (code, true)
            }
            Ending::PeerClosed(code) => {
                let echoed = if im_ws::close_code::is_valid_received(code) {
                    code
                } else {
                    close::NORMAL
                };
                self.outbox.push(|buf| im_ws::encode_close(echoed, "", buf));
                (echoed, false)
            }
        };
        self.ctx.metrics.count_close(Some(code));
        let mut data = self.outbox.take();
        let linger = async {
            if self.write_all(&mut data).await.is_err() {
                return;
            }
            // The device's close frame has arrived already when it started the close.
            if await_answer {
                self.drain_until_closed().await;
            }
            // TLS only: close_notify marks the end of the stream as intended, not a cut.
            if self.transport.has_tls() {
                self.transport.send_close_notify();
                let _ = self.write_all(&mut BytesMut::new()).await;
            }
            io::shutdown_write(self.fd);
        };
        if monoio::time::timeout(CLOSE_LINGER, linger).await.is_err() {
            debug!(code, "close handshake timed out");
        }
    }

    /// Reads until the device echoes our close frame or closes its side. Other
    /// messages are dropped. Reading on also keeps the kernel from replying to unread
    /// bytes with a reset that could destroy our close frame.
    async fn drain_until_closed(&mut self) {
        loop {
            loop {
                match self.decoder.decode(&mut self.read_buf) {
                    Ok(Some(Message::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            if self.stream.readable(false).await.is_err() {
                return;
            }
            let outcome = {
                let mut scratch = self.ctx.scratch.borrow_mut();
                self.transport
                    .read(self.fd, &mut scratch, &mut self.read_buf, MAX_READ_PER_WAKE)
            };
            if !matches!(outcome, Ok(ReadOutcome::Data | ReadOutcome::WouldBlock)) {
                return;
            }
        }
    }

    /// Returns the signed-in device, if any.
    fn session(&self) -> Option<Session> {
        match self.session {
            SessionState::SignedIn(session) => Some(session),
            SessionState::None | SessionState::Unconfirmed(_) => None,
        }
    }

    fn conn_ref(&self) -> ConnRef {
        ConnRef {
            node: self.ctx.node.to_string(),
            conn_id: self.id.0,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.admitted {
            self.ctx.admission.release(self.peer.ip());
        }
        if !self.registered {
            return;
        }
        self.ctx.registry.remove(self.id);
        self.ctx.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        let (SessionState::SignedIn(session) | SessionState::Unconfirmed(session)) = self.session
        else {
            return;
        };
        self.ctx
            .devices
            .remove_if(&session.device_id, |_, entry| entry.conn == self.id);
        let offline = Call::Offline {
            request: OfflineRequest {
                user_id: session.user_id,
                device_id: session.device_id,
                conn: Some(self.conn_ref()),
            },
        };
        if let Err(err) = self.ctx.bridge.submit(offline) {
            tracing::warn!(
                user_id = session.user_id,
                device_id = session.device_id,
                conn_id = self.id.0,
                error = %err.message,
                "offline not sent"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::Layout;

    use super::*;

    fn task_layout<F, R>(_: F) -> Layout
    where
        F: FnOnce(Connection) -> R,
    {
        Layout::new::<R>()
    }

    fn step_layout<'a, F, R>(_: F) -> Layout
    where
        F: FnOnce(&'a mut Connection) -> R,
    {
        Layout::new::<R>()
    }

    fn call_step_layout<'a, F, R>(_: F) -> Layout
    where
        F: FnOnce(&'a mut Connection, LogicCall) -> R,
    {
        Layout::new::<R>()
    }

    /// Every idle connection keeps its task allocated, so a new field or a local kept across
    /// the idle wait shows up here first.
    #[test]
    fn idle_task_stays_small() {
        let task = task_layout(Connection::serve);
        assert!(
            task.size() <= 500,
            "connection task is {} bytes",
            task.size()
        );
    }

    /// A step that outgrows its block gets an allocation of its own and fragments the heap
    /// again (see `step`).
    #[test]
    fn steps_fit_their_recycled_blocks() {
        for (name, layout) in [
            ("open", step_layout(Connection::open)),
            ("handle_call", call_step_layout(Connection::handle_call)),
        ] {
            assert!(
                layout.size() <= step::BLOCK_BYTES && layout.align() <= step::BLOCK_ALIGN,
                "step {name} is {} bytes aligned to {}",
                layout.size(),
                layout.align()
            );
        }
    }
}
