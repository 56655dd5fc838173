//! A raw WebSocket connection of the comparison: it sends one small binary message and
//! waits for any binary message back. Our engine replies NOT_SIGNED_IN to a HEARTBEAT
//! before sign-in, and the echo peers return the message itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use im_proto::{Packet, PacketType};
use prost::Message as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Errors of one connection, named by kind for the error counts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RawError {
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("sending failed: {0}")]
    Send(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("reading failed: {0}")]
    Read(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("timed out")]
    Timeout,
}

impl RawError {
    /// Short name of the error kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RawError::Connect(_) => "failed",
            RawError::Handshake(_) => "handshake",
            RawError::Send(_) => "send",
            RawError::Read(_) => "read",
            RawError::Closed => "closed",
            RawError::Timeout => "timeout",
        }
    }
}

/// One open WebSocket connection.
pub(crate) struct RawConnection {
    socket: WebSocketStream<TcpStream>,
}

/// Encodes the message every round trip sends: a HEARTBEAT packet with request id 1.
pub(crate) fn heartbeat_message() -> Message {
    let packet = Packet {
        r#type: PacketType::Heartbeat as i32,
        request_id: 1,
        ..Packet::default()
    };
    Message::binary(packet.encode_to_vec())
}

/// Sets IP_BIND_ADDRESS_NO_PORT, so that `connect` rather than `bind` picks the source port,
/// per destination. Without it the ports that earlier servers' connections left in TIME_WAIT
/// stay taken for the next server, and connects slow down as the port range runs out.
/// Failure only costs port range, so it is logged and ignored.
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd as _;

    let enable: libc::c_int = 1;
    // SAFETY: the descriptor is a live socket owned by `socket`, and the option value points
    // to a c_int whose size is passed as the length.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "IP_BIND_ADDRESS_NO_PORT not set");
    }
}

impl RawConnection {
    /// Connects from `local` to `addr` and performs the WebSocket handshake for `url`, all
    /// within `timeout`.
    pub(crate) async fn open(
        url: &str,
        addr: SocketAddr,
        local: IpAddr,
        timeout: Duration,
    ) -> Result<RawConnection, RawError> {
        let open = async {
            let socket = TcpSocket::new_v4().map_err(RawError::Connect)?;
            defer_port_choice(&socket);
            socket
                .bind(SocketAddr::new(local, 0))
                .map_err(RawError::Connect)?;
            let stream = socket.connect(addr).await.map_err(RawError::Connect)?;
            stream.set_nodelay(true).map_err(RawError::Connect)?;
            let (socket, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(RawError::Handshake)?;
            Ok(RawConnection { socket })
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| RawError::Timeout)?
    }

    /// Sends `message` and waits for the next binary message, within `timeout`. Other
    /// messages (pings, pongs, text) are skipped.
    pub(crate) async fn round_trip(
        &mut self,
        message: Message,
        timeout: Duration,
    ) -> Result<(), RawError> {
        let exchange = async {
            self.socket.send(message).await.map_err(RawError::Send)?;
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Binary(_))) => return Ok(()),
                    Some(Ok(Message::Close(_))) | None => return Err(RawError::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(RawError::Read(error)),
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| RawError::Timeout)?
    }
}
