//! Connection identity and lookup: the per-shard slab of live connections and the
//! node-wide map from device id to connection.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;

use bytes::{Buf, BytesMut};
use dashmap::DashMap;
use im_proto::KickReason;

use crate::conn::rate::Deadline;

/// Identifies one connection on this node for the node's lifetime.
///
/// Layout: shard (8 bits) | generation (32 bits) | slot (24 bits). The generation of a
/// slot rises each time the slot is reused, so a stale id never reaches a newer
/// connection in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// Largest slot index a shard can hand out (2^24 - 1 connections per shard).
const MAX_SLOT: usize = (1 << 24) - 1;

impl ConnId {
    pub(crate) fn new(shard: usize, generation: u32, slot: usize) -> Self {
        debug_assert!(shard < 256 && slot <= MAX_SLOT);
        Self(((shard as u64) << 56) | (u64::from(generation) << 24) | slot as u64)
    }

    /// Index of the shard that owns the connection.
    pub fn shard(self) -> usize {
        (self.0 >> 56) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        ((self.0 >> 24) & 0xffff_ffff) as u32
    }

    pub(crate) fn slot(self) -> usize {
        (self.0 & MAX_SLOT as u64) as usize
    }
}

/// A signed-in device's entry in the [`DeviceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceEntry {
    pub(crate) conn: ConnId,
    pub(crate) user_id: u64,
}

/// Map from each device to its signed-in connection on this node. Written by the owning
/// shard at sign-in and close, read when the logic tier requests the node to report its devices
/// (after Redis lost the online status).
pub(crate) type DeviceMap = DashMap<u64, DeviceEntry>;

/// Reason a connection must close, set from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseRequest {
    /// The logic tier saw the device sign in elsewhere: send KICKED, then close 4003.
    Kicked(KickReason),
    /// The node is shutting down: close 1001.
    Shutdown,
    /// Pushes queued past `max_outbound_bytes`: close 4008.
    SlowConsumer,
}

/// State shared between a connection's task and its shard: frames waiting to be
/// written and requests to close. Lives in an `Rc`; never crosses threads.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Encoded frames not yet written. Empty (no allocation) while the connection idles.
    pending: RefCell<BytesMut>,
    /// Bytes at the front of `pending` that finish a frame already partly written; 0 when
    /// `pending` starts with a whole frame.
    front_rest: Cell<u32>,
    /// The signed-in device, 0 before sign-in. Requests naming another device are stale.
    device_id: Cell<u64>,
    close: Cell<Option<CloseRequest>>,
    /// Set by every push and close request, cleared by the connection when it acts.
    notified: Cell<bool>,
    /// The connection's next deadline, checked by the shard's periodic sweep.
    deadline: Cell<Option<Deadline>>,
    /// The task to wake; a `Cell` that is taken and put back, 8 bytes smaller than a `RefCell`.
    waker: Cell<Option<Waker>>,
}

impl Outbox {
    /// Appends encoded frames and wakes the connection's task. Returns the bytes now
    /// queued, so the caller can enforce the outbound limit.
    pub(crate) fn push(&self, encode: impl FnOnce(&mut BytesMut)) -> usize {
        let queued = self.append(encode);
        self.notify();
        queued
    }

    /// Appends encoded frames without waking the connection's task, and returns the bytes
    /// now queued. Meant for the connection's own task only: its loop writes the queue
    /// before it waits again, so a wake would only poll the task once more for nothing.
    pub(crate) fn append(&self, encode: impl FnOnce(&mut BytesMut)) -> usize {
        let mut pending = self.pending.borrow_mut();
        encode(&mut pending);
        pending.len()
    }

    /// Returns the bytes queued now.
    pub(crate) fn queued(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Inserts encoded frames at byte `at` of the queue, ahead of the frames queued after
    /// that point, without waking the connection's task. `at` must be a frame boundary, such
    /// as the queue's length at an earlier moment with no write since. Past the end it
    /// appends. Returns the bytes now queued and the end of the inserted frames.
    pub(crate) fn insert(&self, at: usize, encode: impl FnOnce(&mut BytesMut)) -> (usize, usize) {
        let mut pending = self.pending.borrow_mut();
        // Never inside the rest of a frame already partly written.
        let at = at.max(self.front_rest.get() as usize);
        if at >= pending.len() {
            encode(&mut pending);
            return (pending.len(), pending.len());
        }
        let later = pending.split_off(at);
        encode(&mut pending);
        let end = pending.len();
        // Copies `later` back behind the new frames, which took its place.
        pending.unsplit(later);
        (pending.len(), end)
    }

    /// Writes what the socket takes now from the front of the queue. Returns true when
    /// the queue is empty, which then has no allocation.
    pub(crate) fn write_to(&self, fd: RawFd) -> std::io::Result<bool> {
        if self.pending.borrow().is_empty() {
            return Ok(true);
        }
        self.write_with(|data| {
            let written = crate::conn::io::write_available(fd, data)?;
            Ok((written, written == data.len()))
        })
    }

    /// Writes the queue through `write`, which returns the bytes it took from the front and
    /// true when everything it was given and anything it buffers itself is written. Unlike
    /// [`Outbox::write_to`] it calls `write` with an empty queue too, so a TLS session can
    /// send its own records.
    pub(crate) fn write_with(
        &self,
        write: impl FnOnce(&[u8]) -> std::io::Result<(usize, bool)>,
    ) -> std::io::Result<bool> {
        let mut pending = self.pending.borrow_mut();
        let (written, all_written) = write(&pending)?;
        // A queue written to its end leaves no partly written frame, so only a partial write
        // needs the frame headers read.
        let rest = if written == pending.len() {
            0
        } else {
            rest_after(&pending, self.front_rest.get() as usize, written)
        };
        // Past u32::MAX, drop_unsent keeps the whole queue, which still ends at a frame boundary.
        self.front_rest.set(u32::try_from(rest).unwrap_or(u32::MAX));
        pending.advance(written);
        crate::conn::io::release_if_empty(&mut pending);
        Ok(all_written)
    }

    /// Drops the frames not yet begun, keeping the rest of a frame already partly written,
    /// so that a close frame queued next still reaches the device as a whole frame.
    pub(crate) fn drop_unsent(&self) {
        let mut pending = self.pending.borrow_mut();
        let rest = (self.front_rest.get() as usize).min(pending.len());
        pending.truncate(rest);
        crate::conn::io::release_if_empty(&mut pending);
    }

    /// Records the connection's next deadline for the shard's sweep.
    pub(crate) fn set_deadline(&self, deadline: Deadline) {
        self.deadline.set(Some(deadline));
    }

    /// Wakes the connection when its deadline is at or before `now_ms`.
    pub(crate) fn wake_if_due(&self, now_ms: u32) {
        if self
            .deadline
            .get()
            .is_some_and(|deadline| deadline.is_due(now_ms))
        {
            self.notify();
        }
    }

    /// Clears the notification and returns whether one was pending.
    pub(crate) fn take_notified(&self) -> bool {
        self.notified.replace(false)
    }

    /// Records the device the connection signed in as.
    pub(crate) fn set_device(&self, device_id: u64) {
        self.device_id.set(device_id);
    }

    /// Returns the signed-in device, 0 before sign-in.
    pub(crate) fn device(&self) -> u64 {
        self.device_id.get()
    }

    /// Takes every queued byte, leaving the outbox without an allocation.
    pub(crate) fn take(&self) -> BytesMut {
        self.front_rest.set(0);
        std::mem::take(&mut *self.pending.borrow_mut())
    }

    /// Asks the connection to close; the first request wins.
    pub(crate) fn request_close(&self, request: CloseRequest) {
        if self.close.get().is_none() {
            self.close.set(Some(request));
        }
        self.notify();
    }

    /// Returns the pending close request, if any.
    pub(crate) fn close_request(&self) -> Option<CloseRequest> {
        self.close.get()
    }

    /// Registers the task to wake on the next push or close request.
    pub(crate) fn register(&self, waker: &Waker) {
        let current = self.waker.take();
        match current {
            Some(current) if current.will_wake(waker) => self.waker.set(Some(current)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

struct Entry {
    generation: u32,
    /// The plain socket the shard may write the queue to when a push passes the outbound
    /// limit. It is -1 while only the connection's task may write: over TLS, while a SEND
    /// waits for its reply's place in the queue, and once the connection ends. It fills the
    /// padding beside `generation`, so it costs no memory.
    direct_fd: RawFd,
    outbox: Option<Rc<Outbox>>,
}

/// One shard's live connections: a slab indexed by slot with a free list. Owned by the
/// shard's thread; no lock.
pub(crate) struct ShardRegistry {
    shard: usize,
    /// Random first generation of every slot, so ids from an earlier run of a node at the
    /// same address (still named in the online status) do not match new connections.
    first_generation: u32,
    entries: RefCell<Vec<Entry>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
}

impl ShardRegistry {
    pub(crate) fn new(shard: usize) -> Self {
        Self {
            shard,
            first_generation: rand::random(),
            entries: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
        }
    }

    /// Stores a new connection's outbox and returns its id, or `None` when the shard
    /// has no free slot left.
    pub(crate) fn insert(&self, outbox: Rc<Outbox>) -> Option<ConnId> {
        let mut entries = self.entries.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None if entries.len() <= MAX_SLOT => {
                entries.push(Entry {
                    generation: self.first_generation,
                    direct_fd: -1,
                    outbox: None,
                });
                entries.len() - 1
            }
            None => return None,
        };
        let entry = &mut entries[slot];
        entry.generation = entry.generation.wrapping_add(1);
        entry.direct_fd = -1;
        entry.outbox = Some(outbox);
        self.live.set(self.live.get() + 1);
        Some(ConnId::new(self.shard, entry.generation, slot))
    }

    /// Removes the connection; a stale id (slot already reused) is ignored.
    pub(crate) fn remove(&self, id: ConnId) {
        let mut entries = self.entries.borrow_mut();
        if let Some(entry) = entries.get_mut(id.slot()) {
            if entry.generation == id.generation() && entry.outbox.take().is_some() {
                entry.direct_fd = -1;
                self.free.borrow_mut().push(id.slot());
                self.live.set(self.live.get() - 1);
            }
        }
    }

    /// Returns the outbox of a live connection, or `None` when the id is stale.
    pub(crate) fn get(&self, id: ConnId) -> Option<Rc<Outbox>> {
        let entries = self.entries.borrow();
        let entry = entries.get(id.slot())?;
        if entry.generation != id.generation() {
            return None;
        }
        entry.outbox.clone()
    }

    /// Lets the shard write the queue of connection `id` to `fd` (see
    /// [`ShardRegistry::write_direct`]), or, with None, stops it.
    pub(crate) fn set_direct_fd(&self, id: ConnId, fd: Option<RawFd>) {
        let mut entries = self.entries.borrow_mut();
        if let Some(entry) = entries.get_mut(id.slot()) {
            if entry.generation == id.generation() && entry.outbox.is_some() {
                entry.direct_fd = fd.unwrap_or(-1);
            }
        }
    }

    /// Writes what the socket of connection `id` takes now from its queue, when the
    /// connection allows it, and returns the queued bytes that count against the outbound
    /// limit. The shard calls it when a push passes the limit, and the connection when one of
    /// its replies does. So the limit counts only bytes the socket rejected, and one large
    /// delivery does not close a device that reads promptly. After a write error it returns 0
    /// and leaves the queue as it is: a failed socket is no slow reader, and the connection's
    /// task meets the error and ends without a 4008.
    pub(crate) fn write_direct(&self, id: ConnId, outbox: &Outbox) -> usize {
        let fd = self
            .entries
            .borrow()
            .get(id.slot())
            .filter(|entry| entry.generation == id.generation())
            .map_or(-1, |entry| entry.direct_fd);
        if fd >= 0 {
            if let Err(err) = outbox.write_to(fd) {
                tracing::debug!(conn_id = id.0, error = %err, "direct write of queued pushes failed");
                return 0;
            }
        }
        outbox.queued()
    }

    /// Wakes every connection whose deadline is at or before `now_ms`.
    pub(crate) fn wake_due(&self, now_ms: u32) {
        for entry in self.entries.borrow().iter() {
            if let Some(outbox) = &entry.outbox {
                outbox.wake_if_due(now_ms);
            }
        }
    }

    /// Asks every live connection to close with `request`.
    pub(crate) fn close_all(&self, request: CloseRequest) {
        for entry in self.entries.borrow().iter() {
            if let Some(outbox) = &entry.outbox {
                outbox.request_close(request);
            }
        }
    }

    /// Number of live connections.
    pub(crate) fn len(&self) -> usize {
        self.live.get()
    }

    /// True when no connection is live.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Returns the bytes of a partly written frame left at the front of `queue` once `written`
/// bytes are gone from it, when its first `front_rest` bytes finish an earlier frame and
/// whole encoded frames follow.
fn rest_after(queue: &[u8], front_rest: usize, written: usize) -> usize {
    let mut boundary = front_rest;
    while boundary < written {
        match queue.get(boundary..).and_then(im_ws::encoded_frame_len) {
            Some(len) => boundary += len,
            // Not a frame of ours: nothing is kept on a close.
            None => return 0,
        }
    }
    boundary - written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_round_trips_fields() {
        let id = ConnId::new(7, 0xdead_beef, MAX_SLOT);
        assert_eq!(id.shard(), 7);
        assert_eq!(id.generation(), 0xdead_beef);
        assert_eq!(id.slot(), MAX_SLOT);
    }

    #[test]
    fn stale_id_does_not_reach_reused_slot() {
        let registry = ShardRegistry::new(1);
        let first = registry.insert(Rc::default()).unwrap();
        registry.remove(first);
        let second = registry.insert(Rc::default()).unwrap();
        assert_eq!(first.slot(), second.slot());
        assert!(registry.get(first).is_none());
        assert!(registry.get(second).is_some());
        registry.remove(first);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn insert_goes_ahead_of_later_frames() {
        let outbox = Outbox::default();
        outbox.append(|buf| buf.extend_from_slice(b"first"));
        let at = outbox.queued();
        outbox.append(|buf| buf.extend_from_slice(b"push"));

        let (queued, end) = outbox.insert(at, |buf| buf.extend_from_slice(b"reply"));
        assert_eq!(queued, 14);
        assert_eq!(end, 10);
        let (queued, end) = outbox.insert(end, |buf| buf.extend_from_slice(b"+"));
        assert_eq!(queued, 15);
        assert_eq!(end, 11);
        assert_eq!(&outbox.take()[..], b"firstreply+push");
    }

    #[test]
    fn insert_past_end_appends() {
        let outbox = Outbox::default();
        outbox.append(|buf| buf.extend_from_slice(b"ab"));
        let (queued, end) = outbox.insert(10, |buf| buf.extend_from_slice(b"c"));
        assert_eq!(queued, 3);
        assert_eq!(end, 3);
        assert_eq!(&outbox.take()[..], b"abc");
    }

    #[test]
    fn insert_keeps_partly_written_frame_whole() {
        let outbox = Outbox::default();
        outbox.push(|buf| im_ws::encode_binary(&[7; 10], buf));
        outbox.push(|buf| im_ws::encode_binary(&[8; 10], buf));
        // 3 bytes of the first 12-byte frame are written; its rest is 9 bytes.
        outbox.write_with(|_| Ok((3, false))).unwrap();
        outbox.insert(0, |buf| im_ws::encode_binary(&[9; 4], buf));
        let rest = outbox.take();
        assert_eq!(&rest[..9], &[7; 9]);
        assert_eq!(opcodes(&rest[9..]), Some(vec![0x2, 0x2]));
        assert_eq!(&rest[11..15], &[9; 4]);
    }

    /// Every idle connection keeps its outbox in an `Rc` of its own.
    #[test]
    fn outbox_stays_small() {
        let size = std::mem::size_of::<Outbox>();
        assert!(size <= 80, "outbox is {size} bytes");
        assert_eq!(std::mem::size_of::<Entry>(), 16, "a slab entry grew");
    }

    /// Splits `bytes` into whole frames and returns each frame's opcode, or None when the
    /// bytes do not end at a frame boundary.
    fn opcodes(mut bytes: &[u8]) -> Option<Vec<u8>> {
        let mut found = Vec::new();
        while !bytes.is_empty() {
            let len = im_ws::encoded_frame_len(bytes).filter(|len| *len <= bytes.len())?;
            found.push(bytes[0] & 0x0f);
            bytes = &bytes[len..];
        }
        Some(found)
    }

    #[test]
    fn close_after_partial_write_keeps_frames_whole() {
        let payloads = [10, 300, 70_000, 5];
        let total: usize = payloads
            .iter()
            .map(|len| im_ws::frame_header_len(*len) + len)
            .sum();
        for first_write in 0..=total {
            for second_write in [0, 1, 7, 300] {
                let outbox = Outbox::default();
                for len in payloads {
                    outbox.push(|buf| im_ws::encode_binary(&vec![1; len], buf));
                }
                let mut sent = Vec::new();
                for limit in [first_write, second_write] {
                    outbox
                        .write_with(|data| {
                            let written = limit.min(data.len());
                            sent.extend_from_slice(&data[..written]);
                            Ok((written, written == data.len()))
                        })
                        .unwrap();
                }

                outbox.drop_unsent();
                outbox.push(|buf| im_ws::encode_close(4008, "slow", buf));
                sent.extend_from_slice(&outbox.take());

                let found = opcodes(&sent).unwrap_or_else(|| {
                    panic!("cut frame after writes of {first_write}, {second_write}")
                });
                assert_eq!(found.last(), Some(&0x8));
                assert!(found[..found.len() - 1].iter().all(|opcode| *opcode == 0x2));
            }
        }
    }

    #[test]
    fn drop_unsent_at_frame_boundary_drops_all() {
        let outbox = Outbox::default();
        outbox.push(|buf| im_ws::encode_binary(b"first", buf));
        outbox.push(|buf| im_ws::encode_binary(b"second", buf));
        outbox.write_with(|data| Ok((7, data.len() == 7))).unwrap();

        outbox.drop_unsent();

        assert!(outbox.pending.borrow().is_empty());
        assert_eq!(outbox.pending.borrow().capacity(), 0);
    }

    #[test]
    fn outbox_take_leaves_no_allocation() {
        let outbox = Outbox::default();
        let queued = outbox.push(|buf| buf.extend_from_slice(b"abc"));
        assert_eq!(queued, 3);
        assert_eq!(&outbox.take()[..], b"abc");
        assert_eq!(outbox.pending.borrow().capacity(), 0);
    }

    #[test]
    fn direct_write_needs_allowed_socket() {
        use std::io::Read as _;
        use std::os::fd::AsRawFd as _;

        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let registry = ShardRegistry::new(0);
        let outbox = Rc::new(Outbox::default());
        let id = registry.insert(Rc::clone(&outbox)).unwrap();
        outbox.push(|buf| im_ws::encode_binary(&[1; 100], buf));
        assert_eq!(
            registry.write_direct(id, &outbox),
            102,
            "no socket allowed yet"
        );

        registry.set_direct_fd(id, Some(ours.as_raw_fd()));
        assert_eq!(registry.write_direct(id, &outbox), 0);
        let mut written = [0; 102];
        theirs.read_exact(&mut written).unwrap();
        assert_eq!(opcodes(&written), Some(vec![0x2]));

        outbox.push(|buf| im_ws::encode_binary(&[2; 10], buf));
        registry.set_direct_fd(id, None);
        assert_eq!(
            registry.write_direct(id, &outbox),
            12,
            "the socket is no longer allowed"
        );
        registry.set_direct_fd(id, Some(ours.as_raw_fd()));
        registry.remove(id);
        let reused = registry.insert(Rc::clone(&outbox)).unwrap();
        assert_eq!(reused.slot(), id.slot());
        assert_eq!(
            registry.write_direct(reused, &outbox),
            12,
            "a new connection starts without"
        );
    }

    #[test]
    fn failed_direct_write_counts_nothing() {
        use std::os::fd::AsRawFd as _;

        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        drop(theirs);
        let registry = ShardRegistry::new(0);
        let outbox = Rc::new(Outbox::default());
        let id = registry.insert(Rc::clone(&outbox)).unwrap();
        registry.set_direct_fd(id, Some(ours.as_raw_fd()));
        outbox.push(|buf| im_ws::encode_binary(&[1; 100], buf));

        assert_eq!(
            registry.write_direct(id, &outbox),
            0,
            "a failed socket is no slow reader"
        );
        assert_eq!(
            outbox.queued(),
            102,
            "the queue stays for the connection's task"
        );
    }
}
