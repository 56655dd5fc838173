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
/// KICKED came first: the same device signed in on another connection, or a back end
/// logged it out or kicked it. Do not reconnect automatically; after LOGGED_OUT or
/// KICKED_BY_SERVER the token is revoked, so LOGIN with the password.
pub const KICKED: u16 = 4003;
/// The device did not read fast enough and its outbound queue passed
/// `max_outbound_bytes`. Reconnect and SYNC.
pub const SLOW_CONSUMER: u16 = 4008;
/// The device kept sending while its rate limit dropped its packets (`rate_limit_strikes`
/// in a row). Reconnect after a pause and send more slowly.
pub const RATE_LIMIT_EXCEEDED: u16 = 4009;
