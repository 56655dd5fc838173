//! Errors of the client.

use im_proto::v1::{ErrorCode, PacketType};
use tokio_tungstenite::tungstenite;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server replied with a non-zero `ErrorCode`.
    #[error("server replied {code:?}: {message}")]
    Server {
        /// The code from the reply.
        code: ErrorCode,
        /// The reply's error text.
        message: String,
    },
    /// The server replied with a code that this version of the protocol does not define.
    #[error("server replied with unknown error code {code}: {message}")]
    UnknownCode {
        /// The numeric code from the reply.
        code: i32,
        /// The reply's error text.
        message: String,
    },
    /// The reply's packet type differs from the request's type.
    #[error("reply to {request:?} has packet type {reply}")]
    UnexpectedReply {
        /// Type of the request.
        request: PacketType,
        /// Numeric type of the reply.
        reply: i32,
    },
    /// The connection is closed. `code` is the close code the server sent, 1005 when its close
    /// frame had no code, or 1006 when the connection ended without a close frame.
    #[error("connection closed with code {code}: {reason}")]
    Closed {
        /// WebSocket close code.
        code: u16,
        /// Close reason text.
        reason: String,
    },
    /// The connect, a reply or the close handshake did not finish within the configured time
    /// limit.
    #[error("timed out")]
    Timeout,
    /// The WebSocket handshake or a WebSocket read or write failed.
    #[error("websocket failed")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// A reply's `data` does not decode as the message its type carries.
    #[error("reply data does not decode")]
    Decode(#[from] prost::DecodeError),
    /// The TCP socket could not be created, bound or connected, or the host did not resolve.
    #[error("socket failed")]
    Io(#[from] std::io::Error),
}

impl From<tungstenite::Error> for ClientError {
    fn from(error: tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(error))
    }
}
