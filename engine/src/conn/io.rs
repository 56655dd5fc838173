//! Socket reads and writes without per-connection buffers: wait for readiness through
//! io_uring (POLL_ADD), then move bytes with non-blocking syscalls into the shard's
//! scratch buffer or out of the connection's queued frames.

use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;

/// Result of one non-blocking read pass.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Bytes were appended; the socket may hold more.
    Data,
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

/// Reads what the socket holds, at most `max_bytes`, appending to `out` through
/// `scratch`.
pub(crate) fn read_available(
    fd: RawFd,
    scratch: &mut [u8],
    out: &mut BytesMut,
    max_bytes: usize,
) -> io::Result<ReadOutcome> {
    let mut outcome = ReadOutcome::WouldBlock;
    let mut total = 0;
    while total < max_bytes {
        // SAFETY: `scratch` is a valid, writable buffer of `scratch.len()` bytes for the
        // whole call, and `fd` is an open socket owned by the caller's TcpStream.
        let read = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match read {
            // The end of the stream stays, so the next read reports it, once the bytes read
            // before it in this call are handled.
            0 if total > 0 => break,
            0 => return Ok(ReadOutcome::Eof),
            n if n > 0 => {
                let n = n as usize;
                out.extend_from_slice(&scratch[..n]);
                total += n;
                outcome = ReadOutcome::Data;
                if n < scratch.len() {
                    break;
                }
            }
            _ => {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(err),
                }
            }
        }
    }
    Ok(outcome)
}

/// Writes as much of `data` as the socket takes now. Returns the bytes written, all of
/// `data` unless the socket filled up.
pub(crate) fn write_available(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        let rest = &data[written..];
        // SAFETY: `rest` is a valid buffer of `rest.len()` readable bytes for the whole
        // call, and `fd` is an open socket owned by the caller's TcpStream.
        let sent = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            written += sent as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => break,
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
    Ok(written)
}

/// Frees the allocation behind `buf` once every byte is consumed.
///
/// Checking `capacity()` is not enough. A buffer whose bytes were all split off or advanced
/// past reports a capacity of 0, yet it still owns the allocation it read into, or shares
/// it with the messages split off it. An idle connection would keep that allocation.
pub(crate) fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// Shuts down the sending side, so the peer reads our close frame and then EOF.
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: `fd` is an open socket owned by the caller; shutdown does not touch memory.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_frees_buffer_split_to_zero_capacity() {
        let mut buf = BytesMut::with_capacity(4);
        buf.extend_from_slice(b"ping");
        let message = buf.split_to(4).freeze();
        assert_eq!(buf.capacity(), 0);
        assert!(
            !message.is_unique(),
            "the empty buffer still shares the allocation"
        );
        release_if_empty(&mut buf);
        assert!(message.is_unique());
    }

    /// A peer that sends exactly one scratch buffer of bytes and then closes: the bytes come
    /// first, and the end of the stream with the next read.
    #[test]
    fn bytes_before_end_of_stream_are_kept() {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;

        let (mut peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        let sent: Vec<u8> = (0..64u8).collect();
        peer.write_all(&sent).unwrap();
        drop(peer);
        let mut scratch = [0u8; 64];
        let mut out = BytesMut::new();

        let first = read_available(ours.as_raw_fd(), &mut scratch, &mut out, 1024).unwrap();
        assert_eq!(first, ReadOutcome::Data);
        assert_eq!(&out[..], &sent[..]);
        let second = read_available(ours.as_raw_fd(), &mut scratch, &mut out, 1024).unwrap();
        assert_eq!(second, ReadOutcome::Eof);
    }

    #[test]
    fn release_keeps_unconsumed_bytes() {
        let mut buf = BytesMut::from(&b"partial frame"[..]);
        release_if_empty(&mut buf);
        assert_eq!(&buf[..], b"partial frame");
    }
}
