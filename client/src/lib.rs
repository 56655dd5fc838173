//! Async client for the IM engine's WebSocket protocol, and for the logic tier's business API.
//!
//! Every WebSocket binary message carries one [`Packet`]. A [`Client`] sends requests with a
//! fresh `request_id` and matches each reply by that id. Packets that are not replies, such as
//! MESSAGE, KICKED or ERROR, are pushes, which the caller reads with [`Client::next_push`] and
//! decodes with [`Push::decode`]. An [`inbox::Inbox`] on top of a connection presents a user's
//! messages exactly once and in seq order, combining pushes and SYNC. The client is built for
//! load generation as much as for tests, so each connection keeps only small buffers: a 4 KiB
//! read buffer and no write batching.
//!
//! [`business::LogicApi`] calls the logic tier's `LogicExtService` over gRPC: users, friends
//! and groups.

pub mod business;
mod client;
mod connect;
mod error;
pub mod inbox;
mod messaging;
mod options;
mod push;
mod reader;

pub use client::Client;
pub use error::{ClientError, InboxError, LogicApiError, DEFAULT_RETRY_AFTER};
pub use im_proto::v1::{
    ConversationType, DeviceInfo, ErrorCode, LoginReply, Message, Packet, PacketType,
    RegisterReply, SendReply, SignInReply, SyncReply,
};
pub use options::ConnectOptions;
pub use push::Push;
pub use tokio_tungstenite::tungstenite;
