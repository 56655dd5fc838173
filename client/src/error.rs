//! Errors of the client.

use std::time::Duration;

use im_proto::v1::{ErrorCode, PacketType};
use tokio_tungstenite::tungstenite;

/// Wait before sending a rejected request again when the server gave no `retry_after_ms`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Error of a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server replied with a non-zero `ErrorCode`.
    #[error("server replied {code:?}: {message}")]
    Server {
        /// The code from the reply.
        code: ErrorCode,
        /// The reply's error text.
        message: String,
        /// The reply's `retry_after_ms`: with RATE_LIMITED, BUSY, UNAVAILABLE or TIMEOUT, the
        /// milliseconds to wait before sending the request again; 0 without a hint.
        retry_after_ms: u32,
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

impl ClientError {
    /// Returns the wait before sending the request again when the server rejected it unhandled
    /// (RATE_LIMITED or BUSY): the reply's `retry_after_ms`, or [`DEFAULT_RETRY_AFTER`] without
    /// one. `None` for every other error, after which the request may or may not have been
    /// handled.
    pub fn retry_after(&self) -> Option<Duration> {
        let Self::Server {
            code: ErrorCode::RateLimited | ErrorCode::Busy,
            retry_after_ms,
            ..
        } = self
        else {
            return None;
        };
        match retry_after_ms {
            0 => Some(DEFAULT_RETRY_AFTER),
            ms => Some(Duration::from_millis(u64::from(*ms))),
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(error: tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(error))
    }
}

/// Error of an [`Inbox`](crate::inbox::Inbox) call. The inbox keeps its cursor and every
/// message it has taken in, so the caller may reconnect and carry on.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// A request failed or the connection closed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server sent KICKED: the device signed in on another connection.
    #[error("kicked (reason {reason}): {message}")]
    Kicked {
        /// The `KickReason` number.
        reason: i32,
        /// The server's explanation.
        message: String,
    },
    /// The server sent ERROR, which names no request.
    #[error("server sent ERROR with code {code}: {message}")]
    ErrorPush {
        /// The `ErrorCode` number.
        code: i32,
        /// The server's explanation.
        message: String,
    },
    /// A MESSAGE push's `data` does not decode as a `Message`.
    #[error("MESSAGE push does not decode")]
    Decode(#[source] prost::DecodeError),
}

/// Error of a [`LogicApi`](crate::business::LogicApi) call.
#[derive(Debug, thiserror::Error)]
pub enum LogicApiError {
    /// The logic tier rejected the call with an `ErrorCode`.
    #[error("logic tier replied {code:?}: {message}")]
    Server {
        /// The code from the status metadata.
        code: ErrorCode,
        /// The status message.
        message: String,
    },
    /// The call failed without an `ErrorCode`: a transport failure, a timeout or a status the
    /// logic tier did not produce.
    #[error("logic call failed with gRPC status {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The URL is invalid or the connection to the logic tier failed.
    #[error("connecting to the logic tier failed")]
    Transport(#[from] tonic::transport::Error),
    /// A credential cannot be sent as a gRPC metadata value.
    #[error("{key} is not a valid metadata value")]
    InvalidMetadata {
        /// The metadata key.
        key: &'static str,
    },
}

impl LogicApiError {
    /// Returns the logic tier's `ErrorCode`, when it sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<tonic::Status> for LogicApiError {
    fn from(status: tonic::Status) -> Self {
        let code = status
            .metadata()
            .get(im_proto::ERROR_CODE_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<i32>().ok())
            .and_then(|number| ErrorCode::try_from(number).ok());
        match code {
            Some(code) => Self::Server {
                code,
                message: status.message().to_owned(),
            },
            None => Self::Status {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: ErrorCode, retry_after_ms: u32) -> ClientError {
        ClientError::Server {
            code,
            message: String::new(),
            retry_after_ms,
        }
    }

    #[test]
    fn rejections_give_retry_wait() {
        let limited = server_error(ErrorCode::RateLimited, 250);
        let busy = server_error(ErrorCode::Busy, 0);

        assert_eq!(limited.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(busy.retry_after(), Some(DEFAULT_RETRY_AFTER));
    }

    #[test]
    fn other_errors_have_no_retry_wait() {
        assert_eq!(
            server_error(ErrorCode::Unavailable, 500).retry_after(),
            None
        );
        assert_eq!(server_error(ErrorCode::Timeout, 500).retry_after(), None);
        assert_eq!(server_error(ErrorCode::ContentEmpty, 0).retry_after(), None);
        assert_eq!(ClientError::Timeout.retry_after(), None);
    }
}
