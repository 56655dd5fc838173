//! The byte stream under a connection: the plain socket, or TLS over it. Both read into
//! the connection's read buffer through the shard's scratch buffer and write with
//! non-blocking sends, so a plain connection makes the same syscalls into the same buffers
//! as it would without TLS support.
//!
//! TLS runs rustls' `ServerConnection` over the raw non-blocking descriptor: ciphertext is
//! read with `read_tls`, decrypted by `process_new_packets` and the plaintext drained into
//! the read buffer at once, so rustls never holds plaintext across an await. Writes move
//! plaintext into rustls and send its ciphertext; what the socket does not take stays in
//! rustls until the socket is writable again.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use super::io::{self as sock, ReadOutcome};

/// Maximum ciphertext read in one wake during the TLS handshake. It bounds the plaintext a
/// client can send right behind its last handshake message, before the upgrade request is
/// parsed. rustls itself rejects a handshake message over 64 KiB.
const MAX_HANDSHAKE_READ: usize = 96 * 1024;

/// The plain socket or a TLS session on it.
pub(crate) enum Transport {
    Plain,
    /// Boxed, so that a plain connection's task grows by one pointer only.
    // NOTE: rustls' buffered API keeps a 4 KiB ciphertext buffer per idle session (rustls
    // 0.23.46, msgs/deframer/buffers.rs). Its unbuffered API would let ciphertext go through
    // the shard's scratch buffer instead, at the cost of driving its states here.
    Tls(Box<ServerConnection>),
}

/// Failure of a TLS handshake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeFailure {
    /// The peer sent something rustls rejects (a plain HTTP request, an unknown CA alert).
    #[error("TLS handshake failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The socket failed or closed before the handshake completed.
    #[error("socket failed during the TLS handshake: {0}")]
    Io(#[from] io::Error),
}

impl Transport {
    /// Runs the TLS server handshake on `stream` and returns the session with any
    /// plaintext the peer already sent after it (usually the start of the HTTP request).
    /// The caller bounds it with the handshake deadline.
    pub(crate) async fn accept_tls(
        stream: &TcpStream,
        fd: RawFd,
        config: Arc<ServerConfig>,
        early: &mut BytesMut,
    ) -> Result<Self, HandshakeFailure> {
        let mut tls = Box::new(ServerConnection::new(config)?);
        while tls.is_handshaking() {
            flush_blocking(stream, fd, &mut tls).await?;
            if !tls.is_handshaking() {
                break;
            }
            stream.readable(false).await?;
            match read_records(fd, &mut tls, &mut [], early, MAX_HANDSHAKE_READ) {
                Ok(ReadOutcome::Eof) => {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
                }
                Ok(_) => {}
                Err(ReadError::Tls(err)) => {
                    // Send the alert rustls queued, so the client learns why.
                    let _ = flush_ciphertext(fd, &mut tls);
                    return Err(err.into());
                }
                Err(ReadError::Io(err)) => return Err(err.into()),
            }
        }
        // TLS 1.3 session tickets follow the handshake.
        flush_blocking(stream, fd, &mut tls).await?;
        Ok(Self::Tls(tls))
    }

    /// Reads what the socket holds, at most `max_bytes` of it, and appends the plaintext
    /// to `out` through `scratch`.
    pub(crate) fn read(
        &mut self,
        fd: RawFd,
        scratch: &mut [u8],
        out: &mut BytesMut,
        max_bytes: usize,
    ) -> io::Result<ReadOutcome> {
        match self {
            Self::Plain => sock::read_available(fd, scratch, out, max_bytes),
            Self::Tls(tls) => match read_records(fd, tls, scratch, out, max_bytes) {
                Ok(outcome) => Ok(outcome),
                Err(ReadError::Io(err)) => Err(err),
                Err(ReadError::Tls(err)) => {
                    let _ = flush_ciphertext(fd, tls);
                    Err(io::Error::new(io::ErrorKind::InvalidData, err))
                }
            },
        }
    }

    /// Writes as much of `data` as the socket takes now. Returns the bytes written (with
    /// TLS, taken into the session) and true when everything, TLS records included, was sent.
    pub(crate) fn write(&mut self, fd: RawFd, data: &[u8]) -> io::Result<(usize, bool)> {
        match self {
            Self::Plain => {
                let written = sock::write_available(fd, data)?;
                Ok((written, written == data.len()))
            }
            Self::Tls(tls) => write_plaintext(fd, tls, data),
        }
    }

    /// Returns true for a TLS session.
    pub(crate) fn has_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Queues the TLS close_notify alert, which leaves with the next write. A plain socket
    /// has no such alert.
    pub(crate) fn send_close_notify(&mut self) {
        if let Self::Tls(tls) = self {
            tls.send_close_notify();
        }
    }
}

/// A TLS error or a socket error while reading records.
enum ReadError {
    Tls(rustls::Error),
    Io(io::Error),
}

/// Reads TLS records until the socket has no more or `max_bytes` of ciphertext were read,
/// decrypting each batch and moving its plaintext to `out`. An empty `scratch` moves the
/// plaintext without the shard's buffer, for the handshake.
fn read_records(
    fd: RawFd,
    tls: &mut ServerConnection,
    scratch: &mut [u8],
    out: &mut BytesMut,
    max_bytes: usize,
) -> Result<ReadOutcome, ReadError> {
    let mut outcome = ReadOutcome::WouldBlock;
    let mut total = 0;
    while total < max_bytes {
        match tls.read_tls(&mut FdReader(fd)) {
            Ok(0) => {
                tls.process_new_packets().map_err(ReadError::Tls)?;
                drain_plaintext(tls, scratch, out);
                return Ok(ReadOutcome::Eof);
            }
            Ok(n) => total += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ReadError::Io(err)),
        }
        tls.process_new_packets().map_err(ReadError::Tls)?;
        if drain_plaintext(tls, scratch, out) {
            outcome = ReadOutcome::Data;
        }
    }
    Ok(outcome)
}

/// Moves every decrypted byte out of rustls into `out`. Returns true when any moved.
/// The peer's close_notify or a missing one shows up later as EOF on the socket.
fn drain_plaintext(tls: &mut ServerConnection, scratch: &mut [u8], out: &mut BytesMut) -> bool {
    let mut moved = false;
    let mut small = [0u8; 1024];
    let buf = if scratch.is_empty() {
        &mut small[..]
    } else {
        scratch
    };
    loop {
        match tls.reader().read(buf) {
            Ok(0) | Err(_) => return moved,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                moved = true;
            }
        }
    }
}

/// Moves plaintext into rustls and sends the records, until everything is sent or the
/// socket is full.
fn write_plaintext(
    fd: RawFd,
    tls: &mut ServerConnection,
    data: &[u8],
) -> io::Result<(usize, bool)> {
    let mut taken = 0;
    loop {
        if !flush_ciphertext(fd, tls)? {
            return Ok((taken, false));
        }
        if taken == data.len() {
            return Ok((taken, true));
        }
        // rustls takes up to its buffer limit (64 KiB by default) and encrypts it.
        let more = tls.writer().write(&data[taken..])?;
        if more == 0 && !tls.wants_write() {
            return Err(io::Error::other("TLS session accepts no more plaintext"));
        }
        taken += more;
    }
}

/// Sends queued TLS records. Returns true when none are left.
fn flush_ciphertext(fd: RawFd, tls: &mut ServerConnection) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut FdWriter(fd)) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// Sends queued TLS records, waiting for room in the socket as needed.
async fn flush_blocking(
    stream: &TcpStream,
    fd: RawFd,
    tls: &mut ServerConnection,
) -> io::Result<()> {
    while !flush_ciphertext(fd, tls)? {
        stream.writable(false).await?;
    }
    Ok(())
}

/// `io::Read` over a non-blocking socket descriptor, for `read_tls`.
struct FdReader(RawFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the whole call,
        // and the descriptor is an open socket owned by the connection's TcpStream.
        let read = unsafe {
            libc::recv(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(read as usize)
    }
}

/// `io::Write` over a non-blocking socket descriptor, for `write_tls`.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid buffer of `buf.len()` readable bytes for the whole call,
        // and the descriptor is an open socket owned by the connection's TcpStream.
        let written = unsafe {
            libc::send(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if written < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(written as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
