//! Logic tier of the IM system: the tonic services that engine nodes call for REGISTER, LOGIN,
//! SIGN_IN and Offline, over PostgreSQL (users, devices) and Redis (tokens, online status).
//!
//! [`start`] runs the migrations, connects the stores and serves on `listen_addr`; the
//! `im-logic` binary wraps it with configuration and signal handling.

pub mod config;
pub mod engine;
pub mod error;
pub mod ids;
pub mod migrate;
pub mod password;
pub mod server;
pub mod service;
pub mod store;
pub mod token;

pub use config::{Cli, Config, ConfigError};
pub use error::LogicError;
pub use server::{start, LogicServer, StartError};
