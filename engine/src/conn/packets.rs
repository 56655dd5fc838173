//! Client packets on a connection: decode, check the connection's state, call the
//! logic tier through the bridge, and queue the reply.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use im_proto::{
    ConnAckRequest, ConnLoginRequest, ConnSendRequest, ConnSignInRequest, ConnSyncRequest,
    DeviceRef, ErrorCode, KickReason, Kicked, LoginRequest, MessageAck, Packet, PacketType,
    RegisterRequest, SendRequest, SignInReply, SignInRequest, SyncRequest,
};
use prost::Message as _;
use tracing::debug;

use super::{Connection, Ending, Session};
use crate::bridge::{Call, CallError, CallResult};
use crate::metrics::ShardMetrics;

/// Time a shard waits for the bridge beyond the call's own deadline before it gives
/// up on a reply that should already have come.
const BRIDGE_GRACE: Duration = Duration::from_millis(500);

impl Connection {
    pub(super) async fn handle_packet(&mut self, data: Bytes) -> Option<Ending> {
        let packet = match Packet::decode(data) {
            Ok(packet) => packet,
            Err(err) => {
                debug!(error = %err, "undecodable packet");
                let message = format!("invalid packet: {err}");
                return self.reply_error(PacketType::Error, 0, ErrorCode::InvalidPacket, message);
            }
        };
        let request_id = packet.request_id;
        ShardMetrics::add(&self.ctx.metrics.packets_in, 1);
        match PacketType::try_from(packet.r#type) {
            Ok(PacketType::Heartbeat) if self.session.is_some() => {
                self.reply(PacketType::Heartbeat, request_id, Vec::new())
            }
            Ok(PacketType::Register) => self.register(packet).await,
            Ok(PacketType::Login | PacketType::SignIn) if self.session.is_some() => self
                .reply_error(
                    packet_type(&packet),
                    request_id,
                    ErrorCode::AlreadySignedIn,
                    "this connection is already signed in",
                ),
            Ok(PacketType::Login) => self.login(packet).await,
            Ok(PacketType::SignIn) => self.sign_in(packet).await,
            Ok(kind @ (PacketType::Send | PacketType::Sync | PacketType::MessageAck))
                if self.session.is_none() =>
            {
                self.reply_error(
                    kind,
                    request_id,
                    ErrorCode::NotSignedIn,
                    "sign in first: send SIGN_IN or LOGIN",
                )
            }
            Ok(PacketType::Send) => self.send(packet).await,
            Ok(PacketType::Sync) => self.sync(packet).await,
            Ok(PacketType::MessageAck) => self.ack(packet),
            Ok(PacketType::Heartbeat) => self.reply_error(
                PacketType::Heartbeat,
                request_id,
                ErrorCode::NotSignedIn,
                "sign in first: send SIGN_IN or LOGIN",
            ),
            _ => {
                // Typed ERROR, never the request's own type: a KICKED or MESSAGE sent up must
                // not come back looking like a push.
                let message = format!("packet type {} is not accepted from devices", packet.r#type);
                self.reply_error(
                    PacketType::Error,
                    request_id,
                    ErrorCode::UnknownType,
                    message,
                )
            }
        }
    }

    async fn register(&mut self, packet: Packet) -> Option<Ending> {
        let Some(request) = self.decode_data::<RegisterRequest>(&packet) else {
            return self.invalid_data(&packet);
        };
        let result = self.call(|reply| Call::Register { request, reply }).await;
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
        let result = self.call(|reply| Call::Login { request, reply }).await;
        self.record_sign_in(started, &result);
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
        let result = self.call(|reply| Call::SignIn { request, reply }).await;
        self.record_sign_in(started, &result);
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
        let result = self.call(|reply| Call::Send { request, reply }).await;
        self.ctx.metrics.send_seconds.observe(started.elapsed());
        self.reply_result(&packet, result)
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

    fn record_sign_in<T>(&self, started: Instant, result: &CallResult<T>) {
        let code = result
            .as_ref()
            .map_or_else(|err| err.code, |_| ErrorCode::Ok);
        self.ctx.metrics.count_sign_in(code);
        self.ctx.metrics.sign_in_seconds.observe(started.elapsed());
    }

    fn device_ref(&self) -> Option<DeviceRef> {
        self.session.map(|session| DeviceRef {
            user_id: session.user_id,
            device_id: session.device_id,
        })
    }

    /// Marks the connection signed in and routable by device id.
    fn signed_in(&mut self, user_id: u64, device_id: u64) {
        self.session = Some(Session { user_id, device_id });
        self.ctx.devices.insert(device_id, self.id);
        self.outbox.set_device(device_id);
        let span = tracing::Span::current();
        span.record("user_id", user_id);
        span.record("device_id", device_id);
        self.touch();
        debug!("signed in");
    }

    /// Sends `call` over the bridge and waits for its reply.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<CallResult<T>>) -> Call,
    ) -> CallResult<T> {
        let (reply, answer) = oneshot::channel();
        self.ctx.bridge.submit(make(reply))?;
        let wait = Duration::from_millis(self.ctx.config.logic_call_timeout_ms) + BRIDGE_GRACE;
        match monoio::time::timeout(wait, answer).await {
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
            message: "this device signed in on another connection".to_owned(),
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
        let message = format!(
            "invalid packet: data does not decode as the request of type {}",
            packet.r#type
        );
        self.reply_error(
            packet_type(packet),
            packet.request_id,
            ErrorCode::InvalidPacket,
            message,
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
                self.reply_error(kind, request.request_id, err.code, err.message)
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
        message: impl Into<String>,
    ) -> Option<Ending> {
        let packet = Packet {
            r#type: kind as i32,
            request_id,
            code: code as i32,
            message: message.into(),
            data: Bytes::new(),
        };
        self.queue_packet(&packet)
    }

    fn queue_packet(&self, packet: &Packet) -> Option<Ending> {
        let encoded = packet.encode_to_vec();
        self.queue(|buf| im_ws::encode_binary(&encoded, buf))
    }
}

/// Returns the packet's type, or ERROR when the number is not a known type.
fn packet_type(packet: &Packet) -> PacketType {
    PacketType::try_from(packet.r#type).unwrap_or(PacketType::Error)
}
