//! Settings for opening a connection.

use std::net::IpAddr;
use std::time::Duration;

/// Settings for [`Client::connect`](crate::Client::connect).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Local address to bind before connecting, so that a load generator can spread its
    /// connections over several loopback sources (127.0.0.2, 127.0.0.3, ...) and use more than
    /// one ephemeral port range. `None` lets the kernel choose.
    pub local_addr: Option<IpAddr>,
    /// Value of the `Origin` header of the upgrade request. `None` sends no `Origin` header.
    pub origin: Option<String>,
    /// Time limit for the TCP connect plus the WebSocket handshake, for each request's reply,
    /// and for the close handshake. Default 10 s.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            local_addr: None,
            origin: None,
            timeout: Duration::from_secs(10),
        }
    }
}
