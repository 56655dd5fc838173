//! Generated protocol types: the client `Packet` and its messages, and the gRPC
//! services between the engine and the logic tier, and the interceptors that carry and check
//! the secret of those internal services.

pub mod internal_secret;

/// Version 1 of the protocol, package `im.v1`.
#[allow(unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("im.v1");
}

pub use v1::*;

/// gRPC metadata key that carries an [`ErrorCode`] number on a failed status.
pub const ERROR_CODE_METADATA_KEY: &str = "im-error-code";
