//! Opening a connection: resolve the URL, bind the optional local address, connect TCP and run
//! the WebSocket handshake with small buffers.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, ORIGIN};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::{ClientError, ConnectOptions};

/// Read buffer of each connection. tungstenite allocates it eagerly, and its 128 KiB default
/// would dominate the memory of a process with thousands of idle connections.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The WebSocket stream type of a connected client.
pub(crate) type Socket = WebSocketStream<TcpStream>;

/// Builds the upgrade request for `url`, adding the `Origin` header when one is set.
pub(crate) fn build_request(url: &str, opts: &ConnectOptions) -> Result<Request, ClientError> {
    let mut request = url.into_client_request()?;
    if request.uri().scheme_str() != Some("ws") {
        // TLS is not built in: the engine is reached over loopback or through a proxy.
        return Err(tungstenite::Error::Url(UrlError::UnsupportedUrlScheme).into());
    }
    if let Some(origin) = &opts.origin {
        let value = HeaderValue::from_str(origin)
            .map_err(|error| tungstenite::Error::HttpFormat(error.into()))?;
        request.headers_mut().insert(ORIGIN, value);
    }
    Ok(request)
}

/// Resolves the request's host, preferring an address of the same family as `local_addr`.
pub(crate) async fn resolve(
    request: &Request,
    local_addr: Option<IpAddr>,
) -> Result<SocketAddr, ClientError> {
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or(UrlError::NoHostName)
        .map_err(tungstenite::Error::Url)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);

    let candidates: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let same_family = candidates
        .iter()
        .find(|addr| local_addr.is_none_or(|local| local.is_ipv4() == addr.is_ipv4()));
    same_family
        .or(candidates.first())
        .copied()
        .ok_or_else(|| tungstenite::Error::Url(UrlError::UnableToConnect(host.to_owned())).into())
}

/// Connects TCP to `addr`, from `local_addr` when it is set, and runs the client handshake.
pub(crate) async fn open(
    request: Request,
    addr: SocketAddr,
    local_addr: Option<IpAddr>,
) -> Result<Socket, ClientError> {
    let tcp = connect_tcp(addr, local_addr).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
    Ok(socket)
}

async fn connect_tcp(addr: SocketAddr, local_addr: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = local_addr {
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Sets IP_BIND_ADDRESS_NO_PORT, so that binding an address with port 0 leaves the port choice
/// to `connect`. The kernel then picks the port per destination, so one source address can
/// reach ports in use towards other destinations, and a port in TIME_WAIT can be reused.
/// Failure only costs port range, so it is logged and ignored.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;

    let enable: libc::c_int = 1;
    // SAFETY: the descriptor is a live socket owned by `socket`, and the option value points to
    // a c_int whose size is passed as the length.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "IP_BIND_ADDRESS_NO_PORT not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &TcpSocket) {}
