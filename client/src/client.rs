//! The connection handle: requests with reply matching, typed calls for each request type,
//! pushes, and the close handshake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use im_proto::v1::{
    DeviceInfo, ErrorCode, LoginReply, LoginRequest, Packet, PacketType, RegisterReply,
    RegisterRequest, SignInReply, SignInRequest,
};
use prost::Message as _;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::connect::{self, Socket};
use crate::reader::{CloseInfo, Pending, Reader, CLOSE_ABNORMAL};
use crate::{ClientError, ConnectOptions};

/// Pushes that may wait unread before the reader stops reading, which also holds back replies.
const PUSH_QUEUE_CAPACITY: usize = 64;

/// One WebSocket connection to the engine.
///
/// A reader task owns the receiving half. It hands each reply to the request with the same
/// `request_id` and queues every other packet (MESSAGE, KICKED, ERROR) for
/// [`next_push`](Self::next_push). Requests and push reads may run concurrently from several
/// tasks through `&Client`. Dropping the client stops the reader and closes the socket without a close
/// handshake. Call [`close`](Self::close) for an orderly close.
pub struct Client {
    writer: Mutex<SplitSink<Socket, Message>>,
    pending: Arc<Pending>,
    /// Behind a lock so that pushes can be read through `&Client` while requests wait.
    pushes: Mutex<mpsc::Receiver<Packet>>,
    close: watch::Receiver<Option<CloseInfo>>,
    /// Whether reading is paused by [`pause_reading`](Self::pause_reading).
    paused: watch::Sender<bool>,
    /// `None` once [`close`](Self::close) has waited for the reader to end.
    reader: Option<JoinHandle<()>>,
    next_request_id: AtomicU64,
    timeout: Duration,
}

impl Client {
    /// Connects to `url` (`ws://host:port/path`) and runs the WebSocket handshake.
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`] when the socket cannot be bound or connected or the host does not
    /// resolve, [`ClientError::WebSocket`] when the URL is invalid or not `ws://`, or the
    /// handshake fails, and [`ClientError::Timeout`] when connect and handshake together take
    /// longer than `opts.timeout`.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Client, ClientError> {
        let request = connect::build_request(url, opts)?;
        let local_addr = opts.local_addr;
        let open = async move {
            let addr = connect::resolve(&request, local_addr).await?;
            connect::open(request, addr, local_addr).await
        };
        let socket = tokio::time::timeout(opts.timeout, open)
            .await
            .map_err(|_| ClientError::Timeout)??;
        tracing::debug!(local_addr = ?opts.local_addr, "connected");
        Ok(Self::start(socket, opts.timeout))
    }

    fn start(socket: Socket, timeout: Duration) -> Client {
        let (writer, stream) = socket.split();
        let pending = Arc::new(Pending::default());
        let (push_tx, pushes) = mpsc::channel(PUSH_QUEUE_CAPACITY);
        let (close_tx, close) = watch::channel(None);
        let (paused, paused_rx) = watch::channel(false);
        let reader = Reader {
            stream,
            pending: Arc::clone(&pending),
            pushes: push_tx,
            close: close_tx,
            paused: paused_rx,
        };
        Client {
            writer: Mutex::new(writer),
            pending,
            pushes: Mutex::new(pushes),
            close,
            paused,
            reader: Some(tokio::spawn(reader.run())),
            next_request_id: AtomicU64::new(1),
            timeout,
        }
    }

    /// Sends a request of type `ty` with `data` as its payload and waits for the reply with the
    /// same `request_id`, which this call assigns.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] (or [`ClientError::UnknownCode`]) when the reply's code is not
    /// OK, [`ClientError::UnexpectedReply`] when the reply has another type,
    /// [`ClientError::Timeout`] when no reply comes within the connection's time limit, and
    /// [`ClientError::Closed`] when the connection closes first.
    pub async fn request(&self, ty: PacketType, data: Vec<u8>) -> Result<Packet, ClientError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let _forget = ForgetOnDrop {
            pending: &self.pending,
            request_id,
        };
        let exchange = self.exchange(ty, request_id, data);
        let reply = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)??;
        check_reply(ty, reply)
    }

    /// Sends a packet of type `ty` that gets no reply, such as MESSAGE_ACK. It carries a fresh
    /// `request_id`, so an error reply, should the server send one, arrives as a push that
    /// names this request.
    ///
    /// # Errors
    ///
    /// As [`send_raw`](Self::send_raw).
    pub(crate) async fn notify(&self, ty: PacketType, data: Vec<u8>) -> Result<(), ClientError> {
        let packet = Packet {
            r#type: ty as i32,
            request_id: self.next_request_id.fetch_add(1, Ordering::Relaxed),
            code: ErrorCode::Ok as i32,
            message: String::new(),
            data: data.into(),
            retry_after_ms: 0,
        };
        self.send_raw(Message::Binary(packet.encode_to_vec().into()))
            .await
    }

    async fn exchange(
        &self,
        ty: PacketType,
        request_id: u64,
        data: Vec<u8>,
    ) -> Result<Packet, ClientError> {
        let reply = self
            .pending
            .register(request_id)
            .ok_or_else(|| self.closed_error())?;
        let packet = Packet {
            r#type: ty as i32,
            request_id,
            code: ErrorCode::Ok as i32,
            message: String::new(),
            data: data.into(),
            retry_after_ms: 0,
        };
        self.write(Message::Binary(packet.encode_to_vec().into()))
            .await?;
        reply.await.map_err(|_| self.closed_error())
    }

    /// Creates a user and returns its user id.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request); USERNAME_TAKEN and INVALID_ARGUMENT come as
    /// [`ClientError::Server`].
    pub async fn register(&self, username: &str, password: &str) -> Result<u64, ClientError> {
        let body = RegisterRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            open: false,
        };
        let reply = self
            .request(PacketType::Register, body.encode_to_vec())
            .await?;
        Ok(RegisterReply::decode(reply.data)?.user_id)
    }

    /// Logs in with a password. On success the connection is signed in. `device_id` 0 requests
    /// a new device; an id from an earlier login of the same user keeps that device.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request); a wrong username or password comes as
    /// [`ClientError::Server`] with INVALID_CREDENTIALS.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_id: u64,
        device: DeviceInfo,
    ) -> Result<LoginReply, ClientError> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            device_id,
            device: Some(device),
        };
        let reply = self
            .request(PacketType::Login, body.encode_to_vec())
            .await?;
        Ok(LoginReply::decode(reply.data)?)
    }

    /// Signs the connection in with a device token from an earlier login.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request); a rejected token comes as [`ClientError::Server`] with
    /// TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_REVOKED or DEVICE_UNKNOWN.
    pub async fn sign_in(
        &self,
        user_id: u64,
        device_id: u64,
        token: &str,
    ) -> Result<SignInReply, ClientError> {
        let body = SignInRequest {
            user_id,
            device_id,
            token: token.to_owned(),
        };
        let reply = self
            .request(PacketType::SignIn, body.encode_to_vec())
            .await?;
        Ok(SignInReply::decode(reply.data)?)
    }

    /// Sends HEARTBEAT and returns the time until the reply arrived.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn heartbeat(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.request(PacketType::Heartbeat, Vec::new()).await?;
        Ok(start.elapsed())
    }

    /// Returns the next packet that is not a reply to a request, in arrival order. Returns
    /// `None` once the connection has ended and every queued push has been read.
    ///
    /// Unread pushes are queued up to a small limit. When the queue is full, the reader stops
    /// reading, so replies to requests wait as well until pushes are read. A caller that waits
    /// for a reply while many pushes may arrive should therefore read pushes at the same time,
    /// as [`Inbox`](crate::inbox::Inbox) does. When several tasks read pushes, each push goes to
    /// one of them.
    pub async fn next_push(&self) -> Option<Packet> {
        self.pushes.lock().await.recv().await
    }

    /// Returns a push that has already arrived, without waiting. Returns `None` when no push is
    /// queued or another task is reading pushes at this moment.
    pub fn try_next_push(&self) -> Option<Packet> {
        self.pushes.try_lock().ok()?.try_recv().ok()
    }

    /// Returns the close code and reason the server sent, once a close frame has arrived or
    /// the connection has ended. Codes 1005 and 1006 have the meaning given at
    /// [`ClientError::Closed`].
    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.close.borrow().clone()
    }

    /// Waits until the server closes the connection, and returns its close code and reason.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] when the connection is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<(u16, String), ClientError> {
        let closed = self.close.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, closed).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Ok(close)) => Ok(close.clone().unwrap_or_else(abnormal_close)),
            // The reader records a close before it stops, so this means it was aborted.
            Ok(Err(_)) => Ok(abnormal_close()),
        }
    }

    /// Stops reading the socket until [`resume_reading`](Self::resume_reading), so that the
    /// server's frames wait in the kernel's socket buffers and then in the server's own queue,
    /// as they do for a device that has stopped reading. Frames already read stay queued as
    /// pushes. Replies wait too, so a request made while reading is paused times out unless
    /// reading resumes first. Writing is not affected.
    pub fn pause_reading(&self) {
        self.paused.send_replace(true);
    }

    /// Reads the socket again after [`pause_reading`](Self::pause_reading).
    pub fn resume_reading(&self) {
        self.paused.send_replace(false);
    }

    /// Starts the close handshake with code 1000, waits for the server's close frame, then
    /// waits for the server to end the TCP connection. Sending the close frame is bounded by
    /// the connection's time limit, and so are both waits together. If the server has already
    /// closed, this only cleans up. A paused reader resumes first, because the server's close
    /// frame has to be read.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] when sending the close frame or waiting for the server's close
    /// frame exceeds the time limit, and [`ClientError::WebSocket`] when the write fails.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.resume_reading();
        if self.close_frame().is_none() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            match self.send_raw(Message::Close(Some(frame))).await {
                Ok(()) | Err(ClientError::Closed { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        let deadline = Instant::now() + self.timeout;
        self.wait_closed(self.timeout).await?;
        self.wait_reader_end(deadline).await;
        Ok(())
    }

    /// Sends one WebSocket message as it is, for tests that feed the server malformed or
    /// unexpected input.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the connection has closed, [`ClientError::Timeout`] when
    /// the write does not finish within the connection's time limit, and
    /// [`ClientError::WebSocket`] for other write failures.
    pub async fn send_raw(&self, message: Message) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, self.write(message))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn write(&self, message: Message) -> Result<(), ClientError> {
        let mut writer = self.writer.lock().await;
        writer.send(message).await.map_err(|error| match error {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                self.closed_error()
            }
            // A write that fails after the server's close frame arrived fails because of it.
            other if self.close_frame().is_some() => {
                tracing::debug!(error = %other, "write after close failed");
                self.closed_error()
            }
            other => other.into(),
        })
    }

    async fn wait_reader_end(&mut self, deadline: Instant) {
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        if tokio::time::timeout_at(deadline, &mut reader)
            .await
            .is_err()
        {
            tracing::debug!("server did not end the connection after the close handshake");
            reader.abort();
        }
    }

    /// Returns [`ClientError::Closed`] with the close code and reason the server sent, or 1006
    /// when none arrived.
    pub(crate) fn closed_error(&self) -> ClientError {
        let (code, reason) = self.close_frame().unwrap_or_else(abnormal_close);
        ClientError::Closed { code, reason }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// Removes a request's waiter when the request ends, whether it got a reply, timed out or was
/// dropped while waiting.
struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    request_id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.pending.forget(self.request_id);
    }
}

fn check_reply(request: PacketType, reply: Packet) -> Result<Packet, ClientError> {
    match ErrorCode::try_from(reply.code) {
        Ok(ErrorCode::Ok) => {}
        Ok(code) => {
            return Err(ClientError::Server {
                code,
                message: reply.message,
                retry_after_ms: reply.retry_after_ms,
            })
        }
        Err(_) => {
            return Err(ClientError::UnknownCode {
                code: reply.code,
                message: reply.message,
            })
        }
    }
    if reply.r#type != request as i32 {
        return Err(ClientError::UnexpectedReply {
            request,
            reply: reply.r#type,
        });
    }
    Ok(reply)
}

fn abnormal_close() -> CloseInfo {
    (CLOSE_ABNORMAL, String::new())
}
