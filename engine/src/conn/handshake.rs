//! The handshake step of a connection: the TLS handshake on a wss:// listener, then the
//! HTTP/1.1 upgrade, both within the handshake deadline. The upgrade checks path, headers
//! and Origin, and replies 101 or an error status.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use im_ws::{HandshakeError, UpgradeRequest};
use monoio::net::TcpStream;
use monoio::time::Instant;
use tracing::debug;

use super::io::{self, ReadOutcome};
use super::transport::Transport;
use crate::admission::Refusal;
use crate::metrics::ShardMetrics;
use crate::shard::ShardContext;

/// Runs the TLS handshake when the listener has a certificate, then reads the upgrade
/// request and replies to it, all within the handshake deadline. Returns the transport and
/// the bytes that followed the request (the start of the first frame, if the device sent it
/// early), or `None` when the connection was rejected or lost.
pub(super) async fn accept(
    ctx: &ShardContext,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Option<(Transport, BytesMut)> {
    let deadline = Instant::now() + Duration::from_millis(ctx.config.handshake_timeout_ms);
    let mut buf = BytesMut::new();
    let mut transport = match &ctx.tls {
        None => Transport::Plain,
        Some(certificate) => {
            let config = certificate.current();
            let tls = Transport::accept_tls(stream, stream.as_raw_fd(), config, &mut buf);
            match monoio::time::timeout_at(deadline, tls).await {
                Ok(Ok(transport)) => transport,
                Ok(Err(err)) => {
                    debug!(%peer, error = %err, "TLS handshake failed");
                    ShardMetrics::add(&ctx.metrics.tls_handshake_failures, 1);
                    return None;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    ShardMetrics::add(&ctx.metrics.tls_handshake_failures, 1);
                    return None;
                }
            }
        }
    };
    let read = read_request(ctx, stream, &mut transport, buf);
    match monoio::time::timeout_at(deadline, read).await {
        Ok(Ok((request, leftover))) => {
            if let Err(err) = check_origin(ctx, &request) {
                reject(stream, &mut transport, &err).await;
                return None;
            }
            let mut response = BytesMut::from(&im_ws::accept_response(&request)[..]);
            if write_response(stream, &mut transport, &mut response).await {
                Some((transport, leftover))
            } else {
                None
            }
        }
        Ok(Err(Some(err))) => {
            debug!(%peer, error = %err, status = err.status(), "upgrade rejected");
            reject(stream, &mut transport, &err).await;
            None
        }
        Ok(Err(None)) => None,
        Err(_) => {
            debug!(%peer, "upgrade timed out");
            ctx.metrics.count_limit("handshake_timeout");
            reject_timed_out(stream, &mut transport).await;
            None
        }
    }
}

/// Time allowed to write the 408 reply to a device whose upgrade request timed out.
const TIMEOUT_REPLY_LINGER: Duration = Duration::from_secs(1);

/// Sends 408 to a device that did not send a whole upgrade request in time, so a slow
/// or stuck client learns why its socket closes.
async fn reject_timed_out(stream: &TcpStream, transport: &mut Transport) {
    let body = "the upgrade request did not arrive within handshake_timeout_ms; \
                send the whole request right after connecting\n";
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut response = BytesMut::from(response.as_bytes());
    let write = async {
        if write_response(stream, transport, &mut response).await {
            transport.send_close_notify();
            write_response(stream, transport, &mut BytesMut::new()).await;
        }
    };
    let _ = monoio::time::timeout(TIMEOUT_REPLY_LINGER, write).await;
    io::shutdown_write(stream.as_raw_fd());
}

/// Reads until a whole request has arrived, starting with the bytes already in `buf`.
/// `Err(None)` means the socket closed.
async fn read_request(
    ctx: &ShardContext,
    stream: &TcpStream,
    transport: &mut Transport,
    mut buf: BytesMut,
) -> Result<(UpgradeRequest, BytesMut), Option<HandshakeError>> {
    let fd = stream.as_raw_fd();
    loop {
        if let Some((request, consumed)) = im_ws::parse_upgrade(&buf, &ctx.handshake_limits)? {
            // `split_off` would share the request's buffer, which the connection would then
            // keep for as long as its read buffer stays untouched: its whole life if it idles.
            let leftover = if consumed == buf.len() {
                BytesMut::new()
            } else {
                BytesMut::from(&buf[consumed..])
            };
            return Ok((request, leftover));
        }
        stream.readable(false).await.map_err(|_| None)?;
        let outcome = {
            let mut scratch = ctx.scratch.borrow_mut();
            // Read at most one header block past the limit, so a huge request is cut off.
            let max = ctx.handshake_limits.max_header_bytes + 1;
            transport.read(fd, &mut scratch, &mut buf, max)
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
            Err(HandshakeError::OriginRejected {
                origin: origin.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// Rejects a connection over a limit with HTTP 503 and a Retry-After hint. On a TLS
/// listener the socket is closed without a reply, because the reply would need a TLS
/// handshake, the work a limit exists to avoid.
pub(super) async fn reject_busy(ctx: &ShardContext, stream: &TcpStream, refusal: Refusal) {
    if ctx.tls.is_some() {
        return;
    }
    let body = match refusal {
        Refusal::Total => "this node has reached max_connections; retry later or elsewhere\n",
        Refusal::PerIp => "too many connections from this address (max_connections_per_ip)\n",
    };
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECS}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut response = BytesMut::from(response.as_bytes());
    write_response(stream, &mut Transport::Plain, &mut response).await;
    io::shutdown_write(stream.as_raw_fd());
}

/// Seconds a refused client is asked to wait before it retries.
const RETRY_AFTER_SECS: u32 = 5;

async fn reject(stream: &TcpStream, transport: &mut Transport, err: &HandshakeError) {
    let mut response = BytesMut::from(&im_ws::reject_response(err)[..]);
    if write_response(stream, transport, &mut response).await {
        transport.send_close_notify();
        write_response(stream, transport, &mut BytesMut::new()).await;
    }
    io::shutdown_write(stream.as_raw_fd());
}

/// Writes `response`, waiting for room in the socket as needed. Returns false when the
/// socket failed.
async fn write_response(
    stream: &TcpStream,
    transport: &mut Transport,
    response: &mut BytesMut,
) -> bool {
    let fd = stream.as_raw_fd();
    loop {
        match transport.write(fd, response) {
            Ok((_, true)) => return true,
            Ok((written, false)) => {
                response.advance(written);
                if stream.writable(false).await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}
