//! Client packets on a connection: decode, check the connection's state, call the
//! logic tier through the bridge, and queue the reply.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use im_proto::{
    ConnAckRequest, ConnLoginRequest, ConnLogoutRequest, ConnSendRequest, ConnSignInRequest,
    ConnSyncRequest, DeviceRef, ErrorCode, KickReason, Kicked, LoginRequest, MessageAck, Packet,
    PacketType, RegisterRequest, SendRequest, SignInReply, SignInRequest, SyncRequest,
};
use im_ws::{Message, OpCode};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;
use tracing::debug;

use super::rate::LimitKind;
use super::{Connection, Ending, Session, SessionState};
use crate::bridge::{Call, CallError, CallResult, Permits, SignInKind};
use crate::close;
use crate::metrics::{self, ShardMetrics};
use crate::registry::DeviceEntry;

/// Time a shard waits for the bridge beyond the call's own deadline before it gives
/// up on a reply that should already have come.
const BRIDGE_GRACE: Duration = Duration::from_millis(500);

const RATE_LIMITED_TEXT: &str =
    "rate limit exceeded: the packet was dropped; wait retry_after_ms before sending again";

/// A packet whose handling waits for the logic tier, checked against the connection's state
/// and ready for [`Connection::handle_call`].
pub(super) struct LogicCall {
    kind: CallKind,
    packet: Packet,
}

/// The packet types that call the logic tier.
#[derive(Debug, Clone, Copy)]
enum CallKind {
    Register,
    Login,
    SignIn,
    Send,
    Logout,
    Sync,
}

impl Connection {
    /// Handles a packet that needs no call to the logic tier, or returns it as the
    /// [`LogicCall`] that [`Connection::handle_call`] carries out.
    pub(super) fn handle_packet(&mut self, data: Bytes) -> Result<Option<Ending>, LogicCall> {
        let packet = match Packet::decode(data) {
            Ok(packet) => packet,
            Err(err) => {
                debug!(error = %err, "undecodable packet");
                let message = format!("invalid packet: {err}");
                return Ok(self.reply_error(
                    PacketType::Error,
                    0,
                    ErrorCode::InvalidPacket,
                    message,
                ));
            }
        };
        let request_id = packet.request_id;
        ShardMetrics::add(&self.ctx.metrics.packets_in, 1);
        let ending = match PacketType::try_from(packet.r#type) {
            Ok(PacketType::Heartbeat) if self.session().is_some() => {
                self.reply(PacketType::Heartbeat, request_id, Vec::new())
            }
            Ok(PacketType::Register) => {
                return Err(LogicCall {
                    kind: CallKind::Register,
                    packet,
                })
            }
            Ok(PacketType::Login | PacketType::SignIn) if self.session().is_some() => self
                .reply_error(
                    packet_type(&packet),
                    request_id,
                    ErrorCode::AlreadySignedIn,
                    "this connection is already signed in",
                ),
            Ok(PacketType::Login) => {
                return Err(LogicCall {
                    kind: CallKind::Login,
                    packet,
                })
            }
            Ok(PacketType::SignIn) => {
                return Err(LogicCall {
                    kind: CallKind::SignIn,
                    packet,
                })
            }
            Ok(
                kind @ (PacketType::Send
                | PacketType::Sync
                | PacketType::MessageAck
                | PacketType::Logout),
            ) if self.session().is_none() => self.reply_error(
                kind,
                request_id,
                ErrorCode::NotSignedIn,
                "sign in first: send SIGN_IN or LOGIN",
            ),
            Ok(PacketType::Send) => {
                return Err(LogicCall {
                    kind: CallKind::Send,
                    packet,
                })
            }
            Ok(PacketType::Logout) => {
                return Err(LogicCall {
                    kind: CallKind::Logout,
                    packet,
                })
            }
            Ok(PacketType::Sync) => {
                return Err(LogicCall {
                    kind: CallKind::Sync,
                    packet,
                })
            }
            Ok(PacketType::MessageAck) => self.ack(packet),
            Ok(PacketType::Heartbeat) => self.reply_error(
                PacketType::Heartbeat,
                request_id,
                ErrorCode::NotSignedIn,
                "sign in first: send SIGN_IN or LOGIN",
            ),
            _ => {
                // Typed ERROR, never the request's own type: a KICKED, MESSAGE or NOTICE sent
                // up must not come back looking like a push.
                let message = unknown_type_text(packet.r#type);
                self.reply_error(
                    PacketType::Error,
                    request_id,
                    ErrorCode::UnknownType,
                    message,
                )
            }
        };
        Ok(ending)
    }

    /// Carries out a packet that calls the logic tier and queues its reply.
    pub(super) async fn handle_call(&mut self, call: LogicCall) -> Option<Ending> {
        let LogicCall { kind, packet } = call;
        match kind {
            CallKind::Register => self.register(packet).await,
            CallKind::Login => self.login(packet).await,
            CallKind::SignIn => self.sign_in(packet).await,
            CallKind::Send => self.send(packet).await,
            CallKind::Logout => self.logout(packet).await,
            CallKind::Sync => self.sync(packet).await,
        }
    }

    /// Drops a message over the rate limit. A packet gets a RATE_LIMITED reply with its own
    /// type and request id, or type ERROR when its type has no reply. Pings and pongs are
    /// dropped without a reply. The reply is encoded straight into the outbound queue.
    pub(super) fn reject_limited(
        &self,
        message: &Message,
        kind: LimitKind,
        retry_after_ms: u32,
    ) -> Option<Ending> {
        self.ctx.metrics.count_limit(kind.label());
        let Message::Binary(data) = message else {
            return None;
        };
        let (reply_type, request_id) = match Packet::decode(data.clone()) {
            Ok(packet) => (limited_reply_type(&packet), packet.request_id),
            Err(_) => (PacketType::Error, 0),
        };
        self.queue(|buf| {
            encode_bodyless_reply(
                buf,
                reply_type,
                request_id,
                ErrorCode::RateLimited,
                RATE_LIMITED_TEXT,
                retry_after_ms,
            )
        })
    }

    async fn register(&mut self, packet: Packet) -> Option<Ending> {
        let Some(request) = self.decode_data::<RegisterRequest>(&packet) else {
            return self.invalid_data(&packet);
        };
        let result = self
            .call_admitted(SignInKind::Password, |reply, permits| Call::Register {
                request,
                reply,
                permits,
            })
            .await;
        self.reply_result(&packet, result)
    }

    async fn login(&mut self, packet: Packet) -> Option<Ending> {
        let Some(login) = self.decode_data::<LoginRequest>(&packet) else {
            return self.invalid_data(&packet);
        };
        let request = ConnLoginRequest {
            login: Some(login),
            conn: Some(self.conn_ref()),
            client_addr: self.peer.to_string(),
        };
        let started = Instant::now();
        let result = self
            .call_admitted(SignInKind::Password, |reply, permits| Call::Login {
                request,
                reply,
                permits,
            })
            .await;
        self.record_sign_in(metrics::SignInKind::Login, started, &result);
        let result = result.map(|mut reply| {
            self.signed_in(reply.user_id, reply.device_id);
            reply.heartbeat_interval_ms = self.heartbeat_interval_ms();
            reply
        });
        self.reply_result(&packet, result)
    }

    async fn sign_in(&mut self, packet: Packet) -> Option<Ending> {
        let Some(sign_in) = self.decode_data::<SignInRequest>(&packet) else {
            return self.invalid_data(&packet);
        };
        if sign_in.user_id == 0 || sign_in.device_id == 0 || sign_in.token.is_empty() {
            return self.reply_error(
                PacketType::SignIn,
                packet.request_id,
                ErrorCode::InvalidArgument,
                "user_id, device_id and token are required; LOGIN returns them",
            );
        }
        let (user_id, device_id) = (sign_in.user_id, sign_in.device_id);
        let request = ConnSignInRequest {
            sign_in: Some(sign_in),
            conn: Some(self.conn_ref()),
            client_addr: self.peer.to_string(),
        };
        let started = Instant::now();
        let result = self
            .call_admitted(SignInKind::Token, |reply, permits| Call::SignIn {
                request,
                reply,
                permits,
            })
            .await;
        self.record_sign_in(metrics::SignInKind::SignIn, started, &result);
        if let Err(err) = &result {
            // The logic tier may still carry the sign-in out, so the close sends an Offline.
            if matches!(err.code, ErrorCode::Timeout | ErrorCode::Unavailable) {
                self.session = SessionState::Unconfirmed(Session { user_id, device_id });
            }
        }
        let result = result.map(|_| {
            self.signed_in(user_id, device_id);
            SignInReply {
                heartbeat_interval_ms: self.heartbeat_interval_ms(),
            }
        });
        self.reply_result(&packet, result)
    }

    async fn send(&mut self, packet: Packet) -> Option<Ending> {
        let Some(send) = self.decode_data::<SendRequest>(&packet) else {
            return self.invalid_data(&packet);
        };
        let request = ConnSendRequest {
            device: self.device_ref(),
            send: Some(send),
        };
        let started = Instant::now();
        // Pushes queued while the SEND waits go behind its reply, so that no push overtakes the
        // reply of the device's own SEND with a higher seq. Pushes queued during a SYNC go
        // ahead of its page, as they come: the client keeps its cursor below the hole.
        // The reply's place is a byte offset into the queue, so only this task writes
        // meanwhile.
        self.ctx.registry.set_direct_fd(self.id, None);
        self.reply_at
            .set(u32::try_from(self.outbox.queued()).unwrap_or(super::NO_CALL));
        let result = self.call(|reply| Call::Send { request, reply }).await;
        self.ctx.metrics.send_seconds.observe(started.elapsed());
        let ending = self.reply_result(&packet, result);
        self.reply_at.set(super::NO_CALL);
        self.ctx.registry.set_direct_fd(self.id, self.direct_fd());
        ending
    }

    async fn sync(&mut self, packet: Packet) -> Option<Ending> {
        let Some(sync) = self.decode_data::<SyncRequest>(&packet) else {
            return self.invalid_data(&packet);
        };
        let request = ConnSyncRequest {
            device: self.device_ref(),
            sync: Some(sync),
        };
        let result = self.call(|reply| Call::Sync { request, reply }).await;
        self.reply_result(&packet, result)
    }

    /// Revokes the device's token through the logic tier, replies with an empty LOGOUT and
    /// closes with 1000. A failed call is replied to with its code, and the connection stays open.
    async fn logout(&mut self, packet: Packet) -> Option<Ending> {
        let request = ConnLogoutRequest {
            device: self.device_ref(),
            conn: Some(self.conn_ref()),
        };
        let result = self.call(|reply| Call::Logout { request, reply }).await;
        if result.is_err() {
            return self.reply_result(&packet, result);
        }
        // The logic tier removed the online status already: no Offline when the task ends.
        self.signed_out();
        if let Some(ending) = self.reply(PacketType::Logout, packet.request_id, Vec::new()) {
            return Some(ending);
        }
        Some(Ending::Close(close::NORMAL, "logged out".into()))
    }

    /// Forwards the ack without a reply; a full bridge drops it, and the next ack covers it.
    fn ack(&mut self, packet: Packet) -> Option<Ending> {
        let Some(ack) = self.decode_data::<MessageAck>(&packet) else {
            return self.invalid_data(&packet);
        };
        let request = ConnAckRequest {
            device: self.device_ref(),
            seq: ack.seq,
        };
        if let Err(err) = self.ctx.bridge.submit(Call::Ack { request }) {
            debug!(error = %err.message, "ack dropped");
        }
        None
    }

    fn record_sign_in<T>(
        &self,
        kind: metrics::SignInKind,
        started: Instant,
        result: &CallResult<T>,
    ) {
        let code = result
            .as_ref()
            .map_or_else(|err| err.code, |_| ErrorCode::Ok);
        self.ctx.metrics.count_sign_in(kind, code);
        self.ctx.metrics.sign_in_seconds[kind as usize].observe(started.elapsed());
    }

    fn device_ref(&self) -> Option<DeviceRef> {
        self.session().map(|session| DeviceRef {
            user_id: session.user_id,
            device_id: session.device_id,
        })
    }

    /// Marks the connection signed in and routable by device id.
    fn signed_in(&mut self, user_id: u64, device_id: u64) {
        self.session = SessionState::SignedIn(Session { user_id, device_id });
        let entry = DeviceEntry {
            conn: self.id,
            user_id,
        };
        self.ctx.devices.insert(device_id, entry);
        self.outbox.set_device(device_id);
        let span = tracing::Span::current();
        span.record("user_id", user_id);
        span.record("device_id", device_id);
        self.touch();
        debug!("signed in");
    }

    /// Forgets the connection's device, so teardown sends no Offline for it.
    fn signed_out(&mut self) {
        if let SessionState::SignedIn(session) =
            std::mem::replace(&mut self.session, SessionState::None)
        {
            self.ctx
                .devices
                .remove_if(&session.device_id, |_, entry| entry.conn == self.id);
        }
        debug!("logged out");
    }

    /// Takes the places a sign-in call needs without waiting, then sends it like `call`.
    /// Without a free place the device gets BUSY at once.
    async fn call_admitted<T>(
        &self,
        kind: SignInKind,
        make: impl FnOnce(oneshot::Sender<CallResult<T>>, Permits) -> Call,
    ) -> CallResult<T> {
        let permits = self.ctx.bridge.admit_sign_in(kind).inspect_err(|_| {
            self.ctx.metrics.count_limit("sign_in_busy");
        })?;
        self.call(|reply| make(reply, permits)).await
    }

    /// Sends `call` over the bridge and waits for its reply.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<CallResult<T>>) -> Call,
    ) -> CallResult<T> {
        let (reply, answer) = oneshot::channel();
        self.ctx.bridge.submit(make(reply))?;
        let wait = Duration::from_millis(self.ctx.config.logic_call_timeout_ms) + BRIDGE_GRACE;
        let answer = monoio::time::timeout(wait, answer).await;
        // The wait may have been long: packets read after it must not use a stale clock.
        self.ctx.clock.tick();
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(oneshot::Canceled)) => Err(CallError::new(
                ErrorCode::Unavailable,
                "the engine's bridge to the logic tier stopped; reconnect",
            )),
            Err(_) => Err(CallError::new(
                ErrorCode::Timeout,
                "the logic tier did not reply in time; retry with back-off",
            )),
        }
    }

    fn heartbeat_interval_ms(&self) -> u32 {
        u32::try_from(self.ctx.config.heartbeat_interval_ms).unwrap_or(u32::MAX)
    }

    /// Sends KICKED before the close that follows it.
    pub(super) fn send_kicked(&self, reason: KickReason) {
        let kicked = Kicked {
            reason: reason as i32,
            message: kick_text(reason).to_owned(),
        };
        let packet = Packet {
            r#type: PacketType::Kicked as i32,
            data: kicked.encode_to_vec().into(),
            ..Packet::default()
        };
        self.queue_packet(&packet);
    }

    fn decode_data<M: prost::Message + Default>(&self, packet: &Packet) -> Option<M> {
        M::decode(packet.data.clone()).ok()
    }

    fn invalid_data(&self, packet: &Packet) -> Option<Ending> {
        let kind = packet_type(packet);
        self.reply_error(
            kind,
            packet.request_id,
            ErrorCode::InvalidPacket,
            invalid_data_message(kind),
        )
    }

    fn reply_result<M: prost::Message>(
        &self,
        request: &Packet,
        result: CallResult<M>,
    ) -> Option<Ending> {
        let kind = packet_type(request);
        match result {
            Ok(message) => self.reply(kind, request.request_id, message.encode_to_vec()),
            Err(err) => {
                debug!(code = ?err.code, request_id = request.request_id, "request failed");
                self.reply_error(kind, request.request_id, err.code, &err.message)
            }
        }
    }

    fn reply(&self, kind: PacketType, request_id: u64, data: Vec<u8>) -> Option<Ending> {
        let packet = Packet {
            r#type: kind as i32,
            request_id,
            data: data.into(),
            ..Packet::default()
        };
        self.queue_packet(&packet)
    }

    fn reply_error(
        &self,
        kind: PacketType,
        request_id: u64,
        code: ErrorCode,
        message: impl AsRef<str>,
    ) -> Option<Ending> {
        let retry_after_ms = self.retry_hint(code);
        self.queue(|buf| {
            encode_bodyless_reply(
                buf,
                kind,
                request_id,
                code,
                message.as_ref(),
                retry_after_ms,
            )
        })
    }

    /// Returns the `retry_after_ms` of a reply with `code`: for BUSY, UNAVAILABLE and
    /// TIMEOUT a random value from half to one and a half times `busy_retry_after_ms`, so
    /// devices turned away together do not come back together; 0 otherwise.
    fn retry_hint(&self, code: ErrorCode) -> u32 {
        if !matches!(
            code,
            ErrorCode::Busy | ErrorCode::Unavailable | ErrorCode::Timeout
        ) {
            return 0;
        }
        let base = self.ctx.config.busy_retry_after_ms.max(1);
        rand::random_range(base.div_ceil(2)..=base.saturating_add(base / 2))
    }

    /// Queues `packet` as one binary frame, encoded straight into the outbound queue.
    fn queue_packet(&self, packet: &Packet) -> Option<Ending> {
        let length = packet.encoded_len();
        self.queue(|buf| {
            buf.reserve(im_ws::frame_header_len(length) + length);
            im_ws::encode_header(OpCode::Binary, length, buf);
            // A BytesMut grows to any length, so `encode` finds room and cannot fail.
            packet
                .encode(buf)
                .expect("a BytesMut has room for any packet");
        })
    }
}

/// Returns the text sent to a device kicked for `reason`, in KICKED and the close frame.
pub(super) fn kick_text(reason: KickReason) -> &'static str {
    match reason {
        KickReason::SignedInElsewhere => "kicked: this device signed in on another connection",
        KickReason::LoggedOut => "kicked: this device logged out; log in again",
        KickReason::KickedByServer => "kicked by the server; log in again",
        KickReason::Unspecified => "kicked by the server",
    }
}

/// Describes a request of type `kind` whose `data` does not decode, naming the type and its
/// request message as docs/protocol.md and proto/im/v1/packet.proto name them.
fn invalid_data_message(kind: PacketType) -> String {
    let request = match kind {
        PacketType::Register => "RegisterRequest",
        PacketType::Login => "LoginRequest",
        PacketType::SignIn => "SignInRequest",
        PacketType::Send => "SendRequest",
        PacketType::MessageAck => "MessageAck",
        PacketType::Sync => "SyncRequest",
        // Only the types above carry data that the engine decodes.
        _ => "the message of its type",
    };
    format!(
        "invalid packet: the data of a {} packet does not decode as a {request}; encode a \
         {request} as proto/im/v1/packet.proto defines it",
        kind.as_str_name()
    )
}

/// Returns the UNKNOWN_TYPE text for a packet of type number `number`: its name when the type
/// exists but only the server sends it, and the types a device may send.
fn unknown_type_text(number: i32) -> String {
    let named = match PacketType::try_from(number) {
        Ok(kind) => format!("packet type {number} ({})", kind.as_str_name()),
        Err(_) => format!("packet type {number}"),
    };
    format!(
        "{named} is not accepted from devices: send REGISTER, LOGIN, SIGN_IN, HEARTBEAT, SEND, \
         MESSAGE_ACK, SYNC or LOGOUT"
    )
}

/// Returns the packet's type, or ERROR when the number is not a known type.
fn packet_type(packet: &Packet) -> PacketType {
    PacketType::try_from(packet.r#type).unwrap_or(PacketType::Error)
}

/// Returns the type of the RATE_LIMITED reply to `packet`: its own type when it is a request
/// that has a reply, ERROR otherwise (MESSAGE_ACK, pushes sent up, unknown types).
fn limited_reply_type(packet: &Packet) -> PacketType {
    match PacketType::try_from(packet.r#type) {
        Ok(
            kind @ (PacketType::Register
            | PacketType::Login
            | PacketType::SignIn
            | PacketType::Heartbeat
            | PacketType::Send
            | PacketType::Sync),
        ) => kind,
        _ => PacketType::Error,
    }
}

/// Appends a binary frame with a `Packet` that has no data to `out`, encoded as prost
/// would encode it: fields in number order, and fields at their proto3 default (zero or
/// empty) left out.
fn encode_bodyless_reply(
    out: &mut BytesMut,
    kind: PacketType,
    request_id: u64,
    code: ErrorCode,
    message: &str,
    retry_after_ms: u32,
) {
    // Field numbers of `Packet` in packet.proto.
    let varints = [
        (1, kind as i32 as u64),
        (2, request_id),
        (3, code as i32 as u64),
    ];
    let retry_after_ms = u64::from(retry_after_ms);
    let mut length = 0;
    for (field, value) in varints {
        if value != 0 {
            length += key_len(field) + encoded_len_varint(value);
        }
    }
    if !message.is_empty() {
        length += key_len(4) + encoded_len_varint(message.len() as u64) + message.len();
    }
    if retry_after_ms != 0 {
        length += key_len(6) + encoded_len_varint(retry_after_ms);
    }
    out.reserve(im_ws::frame_header_len(length) + length);
    im_ws::encode_header(OpCode::Binary, length, out);
    for (field, value) in varints {
        if value != 0 {
            encode_key(field, WireType::Varint, out);
            encode_varint(value, out);
        }
    }
    if !message.is_empty() {
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint(message.len() as u64, out);
        out.put_slice(message.as_bytes());
    }
    if retry_after_ms != 0 {
        encode_key(6, WireType::Varint, out);
        encode_varint(retry_after_ms, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_data_names_type() {
        assert_eq!(
            invalid_data_message(PacketType::Login),
            "invalid packet: the data of a LOGIN packet does not decode as a LoginRequest; \
             encode a LoginRequest as proto/im/v1/packet.proto defines it"
        );
        let ack = invalid_data_message(PacketType::MessageAck);
        assert!(
            ack.contains("a MESSAGE_ACK packet does not decode as a MessageAck;"),
            "{ack}"
        );
    }

    /// Returns the payload of the one unmasked binary frame in `frame`.
    fn frame_payload(frame: &[u8]) -> &[u8] {
        let header_len = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        assert_eq!(frame[0], 0x82, "a final binary frame");
        assert_eq!(im_ws::encoded_frame_len(frame), Some(frame.len()));
        &frame[header_len..]
    }

    #[test]
    fn bodyless_reply_matches_prost() {
        let long_text = "x".repeat(300);
        let cases = [
            (
                PacketType::Send,
                u64::MAX,
                ErrorCode::RateLimited,
                RATE_LIMITED_TEXT,
                u32::MAX,
            ),
            (
                PacketType::Heartbeat,
                1,
                ErrorCode::NotSignedIn,
                "sign in first",
                0,
            ),
            (PacketType::Heartbeat, 7, ErrorCode::Ok, "", 0),
            (
                PacketType::Error,
                0,
                ErrorCode::UnknownType,
                long_text.as_str(),
                0,
            ),
            (PacketType::Login, 0, ErrorCode::Busy, "", 1500),
        ];
        for (kind, request_id, code, message, retry_after_ms) in cases {
            let mut out = BytesMut::new();
            encode_bodyless_reply(&mut out, kind, request_id, code, message, retry_after_ms);
            let expected = Packet {
                r#type: kind as i32,
                request_id,
                code: code as i32,
                message: message.to_owned(),
                data: Bytes::new(),
                retry_after_ms,
            };
            let payload = frame_payload(&out);
            assert_eq!(
                payload,
                expected.encode_to_vec().as_slice(),
                "{kind:?} {code:?}"
            );
            assert_eq!(Packet::decode(payload).unwrap(), expected);
        }
    }
}
