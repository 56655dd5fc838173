//! Logic tier of the IM system. Engine nodes call its tonic services for REGISTER, LOGIN,
//! SIGN_IN, Offline, SEND, SYNC and MESSAGE_ACK; back ends call its business API for users,
//! friends, groups, ServerSend, Logout and KickDevice. PostgreSQL stores users, devices and
//! their tokens, messages, friends and groups; Redis caches tokens and stores online status and
//! engine node leases. Stored messages are pushed to the engine nodes of the recipients'
//! connections.
//!
//! [`start`] runs the migrations, connects the stores and serves on `listen_addr`, with
//! Prometheus metrics on `metrics_addr` and the web client on `web_addr`; the `im-logic` binary
//! wraps it with configuration and signal handling.

pub mod config;
pub mod engine;
pub mod error;
pub mod ids;
pub use im_proto::internal_secret;
pub mod metrics;
pub mod migrate;
pub mod password;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod token;
pub mod web;

pub use config::{Cli, Config, ConfigError};
pub use error::LogicError;
pub use server::{start, LogicServer, StartError};
