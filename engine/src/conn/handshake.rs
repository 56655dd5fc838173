//! The HTTP/1.1 upgrade step of a connection: read the request within the handshake
//! deadline, check path, headers and Origin, and reply 101 or an error status.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;
use im_ws::{HandshakeError, UpgradeRequest};
use monoio::net::TcpStream;
use tracing::debug;

use super::io::{self, ReadOutcome};
use crate::admission::Refusal;
use crate::shard::ShardContext;

/// Reads the upgrade request and replies to it. Returns the bytes that followed the request
/// (the start of the first frame, if the device sent it early), or `None` when the
/// connection was rejected or lost.
pub(super) async fn accept(
    ctx: &ShardContext,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Option<BytesMut> {
    let timeout = Duration::from_millis(ctx.config.handshake_timeout_ms);
    match monoio::time::timeout(timeout, read_request(ctx, stream)).await {
        Ok(Ok((request, leftover))) => {
            if let Err(err) = check_origin(ctx, &request) {
                reject(stream, &err).await;
                return None;
            }
            let mut response = BytesMut::from(&im_ws::accept_response(&request)[..]);
            if write_response(stream, &mut response).await {
                Some(leftover)
            } else {
                None
            }
        }
        Ok(Err(Some(err))) => {
            debug!(%peer, error = %err, status = err.status(), "upgrade rejected");
            reject(stream, &err).await;
            None
        }
        Ok(Err(None)) => None,
        Err(_) => {
            debug!(%peer, "upgrade timed out");
            None
        }
    }
}

/// Reads until a whole request has arrived. `Err(None)` means the socket closed.
async fn read_request(
    ctx: &ShardContext,
    stream: &TcpStream,
) -> Result<(UpgradeRequest, BytesMut), Option<HandshakeError>> {
    let mut buf = BytesMut::new();
    let fd = stream.as_raw_fd();
    loop {
        if let Some((request, consumed)) = im_ws::parse_upgrade(&buf, &ctx.handshake_limits)? {
            let leftover = buf.split_off(consumed);
            return Ok((request, leftover));
        }
        stream.readable(false).await.map_err(|_| None)?;
        let outcome = {
            let mut scratch = ctx.scratch.borrow_mut();
            // Read at most one header block past the limit, so a huge request is cut off.
            let max = ctx.handshake_limits.max_header_bytes + 1;
            io::read_available(fd, &mut scratch, &mut buf, max)
        };
        match outcome {
            Ok(ReadOutcome::Data | ReadOutcome::WouldBlock) => {}
            Ok(ReadOutcome::Eof) | Err(_) => return Err(None),
        }
    }
}

fn check_origin(ctx: &ShardContext, request: &UpgradeRequest) -> Result<(), HandshakeError> {
    let allowed = &ctx.config.allowed_origins;
    match &request.origin {
        Some(origin) if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) => {
            debug!(%origin, "origin not allowed");
            Err(HandshakeError::OriginRejected)
        }
        _ => Ok(()),
    }
}

/// Rejects a connection over a limit with HTTP 503 and a Retry-After hint.
pub(super) async fn reject_busy(stream: &TcpStream, refusal: Refusal) {
    let body = match refusal {
        Refusal::Total => "this node has reached max_connections; retry later or elsewhere\n",
        Refusal::PerIp => "too many connections from this address (max_connections_per_ip)\n",
    };
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECS}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut response = BytesMut::from(response.as_bytes());
    write_response(stream, &mut response).await;
    io::shutdown_write(stream.as_raw_fd());
}

/// Seconds a refused client is asked to wait before it retries.
const RETRY_AFTER_SECS: u32 = 5;

async fn reject(stream: &TcpStream, err: &HandshakeError) {
    let mut response = BytesMut::from(&im_ws::reject_response(err)[..]);
    write_response(stream, &mut response).await;
    io::shutdown_write(stream.as_raw_fd());
}

async fn write_response(stream: &TcpStream, response: &mut BytesMut) -> bool {
    let fd = stream.as_raw_fd();
    loop {
        match io::write_available(fd, response) {
            Ok(true) => return true,
            Ok(false) => {
                if stream.writable(false).await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}
