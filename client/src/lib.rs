//! Async client for the IM engine's WebSocket protocol.
//!
//! Every WebSocket binary message carries one [`Packet`]. A [`Client`] sends requests with a
//! fresh `request_id` and matches each reply by that id. Packets that are not replies, such as
//! KICKED or ERROR, are pushes, which the caller reads with [`Client::next_push`]. The client
//! is built for load generation as much as for tests, so each connection keeps only small
//! buffers: a 4 KiB read buffer and no write batching.

mod client;
mod connect;
mod error;
mod options;
mod reader;

pub use client::Client;
pub use error::ClientError;
pub use im_proto::v1::{
    DeviceInfo, ErrorCode, LoginReply, Packet, PacketType, RegisterReply, SignInReply,
};
pub use options::ConnectOptions;
pub use tokio_tungstenite::tungstenite;
