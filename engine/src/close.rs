//! WebSocket close codes the engine sends, with the rule a device should follow for
//! each. docs/protocol.md carries the same table.

pub use im_ws::close_code::{
    GOING_AWAY, INTERNAL_ERROR, MESSAGE_TOO_BIG, NORMAL, PROTOCOL_ERROR, UNSUPPORTED_DATA,
};

/// No SIGN_IN or LOGIN succeeded within `sign_in_timeout_ms`. Reconnect and sign in
/// at once.
pub const SIGN_IN_TIMEOUT: u16 = 4001;
/// Nothing arrived within `heartbeat_timeout_ms`. Reconnect; send HEARTBEAT at the
/// advertised interval.
pub const HEARTBEAT_TIMEOUT: u16 = 4002;
/// The same device signed in on another connection (KICKED came first). Do not
/// reconnect automatically.
pub const KICKED: u16 = 4003;
/// The device did not read fast enough and its outbound queue passed
/// `max_outbound_bytes`. Reconnect and SYNC.
pub const SLOW_CONSUMER: u16 = 4008;
