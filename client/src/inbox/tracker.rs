//! The ordering rules of an inbox, free of I/O: which messages to deliver, which to hold back
//! until a SYNC fills the hole before them, which to drop as duplicates, and which seq to
//! acknowledge.

use std::collections::BTreeMap;

use im_proto::v1::{Message, SyncReply};

/// Outcome of one message given to [`SeqTracker::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The message was next in line. It was delivered, followed by any held messages that
    /// became contiguous.
    Delivered,
    /// The message skips ahead of a hole. It waits until the messages before it arrive, and
    /// a SYNC from [`SeqTracker::last_seq`] should fill the hole.
    Held,
    /// The message was already delivered or is already held, and was dropped.
    Duplicate,
}

/// The delivery cursor of one device's copy of a user's message sequence.
///
/// Seqs of a user's messages run 1, 2, 3, ... without gaps, except where the logic tier's
/// `message_retention_days` deleted old copies. The tracker delivers each seq exactly once and
/// in order, whatever order and however often messages are given to it.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// Highest seq delivered with every lower seq delivered too.
    last_seq: u64,
    /// Highest seq acknowledged to the server.
    acked_seq: u64,
    /// Messages above `last_seq + 1`, waiting for the hole before them to fill.
    held: BTreeMap<u64, Message>,
}

impl SeqTracker {
    /// Starts after `last_seq`, the highest seq the device has already stored (0 for none).
    /// That seq counts as not yet acknowledged.
    pub fn new(last_seq: u64) -> SeqTracker {
        SeqTracker {
            last_seq,
            ..SeqTracker::default()
        }
    }

    /// Highest seq delivered with every lower seq delivered too.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Number of messages held back behind a hole.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Tells whether messages are held back, so a SYNC from [`last_seq`](Self::last_seq) is
    /// needed.
    pub fn has_hole(&self) -> bool {
        !self.held.is_empty()
    }

    /// Takes one message from a push, a SYNC page or the device's own SEND. Delivered messages
    /// are appended to `out` in seq order.
    pub fn accept(&mut self, message: Message, out: &mut Vec<Message>) -> Arrival {
        let seq = message.seq;
        // Seq 0 is never assigned, so it falls under the first test as well.
        if seq <= self.last_seq || self.held.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        if seq > self.last_seq + 1 {
            self.held.insert(seq, message);
            return Arrival::Held;
        }
        out.push(message);
        self.last_seq = seq;
        self.release_held(out);
        Arrival::Delivered
    }

    /// Takes one SYNC page, requested with `after_seq`, as [`accept`](Self::accept) takes each
    /// of its messages. Returns the `after_seq` of the next page when the reply's `has_more` is
    /// set, and `None` when the SYNC is complete.
    ///
    /// A seq above `after_seq` that the page skips no longer exists, because the logic tier's
    /// `message_retention_days` deleted it. Seqs are committed in order, so a page that
    /// contains a seq contains every lower one still stored. The cursor moves past such a seq,
    /// after delivering held messages below it, instead of waiting for it.
    ///
    /// The next page starts after the page's last seq, or after [`last_seq`](Self::last_seq)
    /// when pushes have already delivered further. A page that claims more but contains no
    /// message ends the SYNC, because paging from the same seq would repeat it forever.
    pub fn accept_page(
        &mut self,
        after_seq: u64,
        page: SyncReply,
        out: &mut Vec<Message>,
    ) -> Option<u64> {
        let page_end = page.messages.last().map(|message| message.seq);
        for message in page.messages {
            if self.last_seq >= after_seq && message.seq > self.last_seq + 1 {
                self.skip_deleted_before(message.seq, out);
            }
            self.accept(message, out);
        }
        match (page.has_more, page_end) {
            (true, Some(end)) => Some(end.max(self.last_seq)),
            _ => None,
        }
    }

    /// Returns the seq to send in MESSAGE_ACK, when deliveries have moved past the last
    /// acknowledged seq.
    pub fn ack_due(&self) -> Option<u64> {
        (self.last_seq > self.acked_seq).then_some(self.last_seq)
    }

    /// Records that MESSAGE_ACK with `seq` was sent.
    pub fn mark_acked(&mut self, seq: u64) {
        self.acked_seq = self.acked_seq.max(seq);
    }

    /// Records that the server rejected a MESSAGE_ACK unhandled, so that [`ack_due`] names the
    /// cursor again. Acks are cumulative: acknowledging the cursor covers every rejected one.
    ///
    /// [`ack_due`]: Self::ack_due
    pub fn ack_rejected(&mut self) {
        self.acked_seq = 0;
    }

    /// Moves the cursor to `seq - 1` because the seqs between it and `seq` were deleted.
    /// Held messages below `seq` were stored before the deletion and are delivered first.
    /// Held messages from `seq` on that are now contiguous are delivered too, because
    /// [`accept`](Self::accept) drops the page's copy of a held seq as a duplicate.
    fn skip_deleted_before(&mut self, seq: u64, out: &mut Vec<Message>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() >= seq {
                break;
            }
            let message = entry.remove();
            self.last_seq = message.seq;
            out.push(message);
        }
        self.last_seq = self.last_seq.max(seq - 1);
        self.release_held(out);
    }

    /// Delivers held messages that became contiguous, and drops any held at or below the
    /// cursor.
    fn release_held(&mut self, out: &mut Vec<Message>) {
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq > self.last_seq + 1 {
                return;
            }
            let message = entry.remove();
            if seq == self.last_seq + 1 {
                out.push(message);
                self.last_seq = seq;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Message {
        Message {
            seq,
            message_id: 1000 + seq,
            ..Message::default()
        }
    }

    fn page(seqs: std::ops::RangeInclusive<u64>, has_more: bool) -> SyncReply {
        SyncReply {
            messages: seqs.map(message).collect(),
            has_more,
        }
    }

    fn seqs(messages: &[Message]) -> Vec<u64> {
        messages.iter().map(|message| message.seq).collect()
    }

    #[test]
    fn in_order_pushes_deliver() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();

        let first = tracker.accept(message(1), &mut out);
        let second = tracker.accept(message(2), &mut out);

        assert_eq!(first, Arrival::Delivered);
        assert_eq!(second, Arrival::Delivered);
        assert_eq!(seqs(&out), vec![1, 2]);
        assert_eq!(tracker.last_seq(), 2);
        assert!(!tracker.has_hole());
    }

    #[test]
    fn push_ahead_of_sync_keeps_cursor_at_hole() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();

        let arrival = tracker.accept(message(21), &mut out);

        assert_eq!(arrival, Arrival::Held);
        assert!(out.is_empty());
        assert_eq!(tracker.last_seq(), 0);
        assert!(tracker.has_hole());
        assert_eq!(tracker.ack_due(), None);
    }

    #[test]
    fn sync_fills_hole_then_releases_held() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        tracker.accept(message(21), &mut out);

        let next = tracker.accept_page(0, page(1..=20, false), &mut out);

        assert_eq!(next, None);
        assert_eq!(seqs(&out), (1..=21).collect::<Vec<_>>());
        assert_eq!(tracker.last_seq(), 21);
        assert!(!tracker.has_hole());
    }

    #[test]
    fn sync_page_covering_held_delivers_once() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        tracker.accept(message(3), &mut out);

        tracker.accept_page(0, page(1..=5, false), &mut out);

        assert_eq!(seqs(&out), vec![1, 2, 3, 4, 5]);
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn duplicate_pushes_dropped() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        tracker.accept(message(1), &mut out);
        tracker.accept(message(4), &mut out);

        let delivered_again = tracker.accept(message(1), &mut out);
        let held_again = tracker.accept(message(4), &mut out);
        let zero = tracker.accept(message(0), &mut out);

        assert_eq!(delivered_again, Arrival::Duplicate);
        assert_eq!(held_again, Arrival::Duplicate);
        assert_eq!(zero, Arrival::Duplicate);
        assert_eq!(seqs(&out), vec![1]);
        assert_eq!(tracker.held(), 1);
    }

    #[test]
    fn sync_overlapping_pushes_drops_duplicates() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        // Pushes deliver 1..=3 while the SYNC from 0 is in flight.
        for seq in 1..=3 {
            tracker.accept(message(seq), &mut out);
        }

        let next = tracker.accept_page(0, page(1..=4, false), &mut out);

        assert_eq!(next, None);
        assert_eq!(seqs(&out), vec![1, 2, 3, 4]);
    }

    #[test]
    fn has_more_pages_from_last_seq_of_page() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();

        let second = tracker.accept_page(0, page(1..=3, true), &mut out);
        let third = tracker.accept_page(3, page(4..=6, true), &mut out);
        let end = tracker.accept_page(6, page(7..=7, false), &mut out);

        assert_eq!(second, Some(3));
        assert_eq!(third, Some(6));
        assert_eq!(end, None);
        assert_eq!(seqs(&out), (1..=7).collect::<Vec<_>>());
    }

    #[test]
    fn has_more_skips_to_cursor_moved_by_pushes() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        tracker.accept_page(0, page(1..=3, true), &mut out);
        // Pushes of 4..=9 arrive before the next page is requested.
        for seq in 4..=9 {
            tracker.accept(message(seq), &mut out);
        }

        let next = tracker.accept_page(3, page(4..=6, true), &mut out);

        assert_eq!(next, Some(9));
        assert_eq!(seqs(&out), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn empty_page_with_has_more_ends_sync() {
        let mut tracker = SeqTracker::new(5);
        let mut out = Vec::new();

        let next = tracker.accept_page(5, SyncReply::default(), &mut out);
        let claimed = tracker.accept_page(
            5,
            SyncReply {
                messages: Vec::new(),
                has_more: true,
            },
            &mut out,
        );

        assert_eq!(next, None);
        assert_eq!(claimed, None);
        assert!(out.is_empty());
    }

    #[test]
    fn gap_inside_page_is_skipped() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        // Seq 3 was deleted past the retention after seq 4 was stored.
        let reply = SyncReply {
            messages: vec![message(1), message(2), message(4)],
            has_more: false,
        };

        tracker.accept_page(0, reply, &mut out);

        assert_eq!(seqs(&out), vec![1, 2, 4]);
        assert_eq!(tracker.last_seq(), 4);
        assert!(!tracker.has_hole());
    }

    #[test]
    fn deleted_seqs_before_page_are_skipped() {
        let mut tracker = SeqTracker::new(2);
        let mut out = Vec::new();

        // Seqs 3..=40 were deleted past the retention, so the first page starts at 41.
        let next = tracker.accept_page(2, page(41..=50, true), &mut out);
        let end = tracker.accept_page(50, page(51..=52, false), &mut out);

        assert_eq!(next, Some(50));
        assert_eq!(end, None);
        assert_eq!(seqs(&out), (41..=52).collect::<Vec<_>>());
        assert!(!tracker.has_hole());
        assert_eq!(tracker.ack_due(), Some(52));
    }

    #[test]
    fn held_push_before_deleted_seqs_is_delivered() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        // Seq 5 was pushed, then seqs 1..=7 were deleted before the SYNC read them.
        tracker.accept(message(5), &mut out);

        tracker.accept_page(0, page(8..=9, false), &mut out);

        assert_eq!(seqs(&out), vec![5, 8, 9]);
        assert_eq!(tracker.last_seq(), 9);
        assert!(!tracker.has_hole());
    }

    #[test]
    fn page_delivers_held_push_after_skip() {
        let mut tracker = SeqTracker::new(2);
        let mut out = Vec::new();
        // Seqs 3..=40 were deleted past the retention. Seqs 41 and 42 are pushed before the
        // SYNC reply, which contains 41 only.
        tracker.accept(message(41), &mut out);
        tracker.accept(message(42), &mut out);

        let next = tracker.accept_page(2, page(41..=41, false), &mut out);

        assert_eq!(next, None);
        assert_eq!(seqs(&out), vec![41, 42]);
        assert_eq!(tracker.last_seq(), 42);
        assert!(!tracker.has_hole());
    }

    #[test]
    fn page_above_cursor_skips_nothing_below_it() {
        let mut tracker = SeqTracker::new(2);
        let mut out = Vec::new();

        // Requested after seq 5, so the page cannot show whether seqs 3..=5 exist.
        tracker.accept_page(5, page(6..=7, false), &mut out);

        assert!(out.is_empty());
        assert_eq!(tracker.last_seq(), 2);
        assert!(tracker.has_hole());
    }

    #[test]
    fn own_send_ahead_waits_for_push_before_it() {
        let mut tracker = SeqTracker::new(5);
        let mut out = Vec::new();

        // The SEND reply returns seq 7 while the push of seq 6 is still on its way.
        let own = tracker.accept(message(7), &mut out);
        let push = tracker.accept(message(6), &mut out);

        assert_eq!(own, Arrival::Held);
        assert_eq!(push, Arrival::Delivered);
        assert_eq!(seqs(&out), vec![6, 7]);
        assert!(!tracker.has_hole());
    }

    #[test]
    fn resumed_tracker_drops_old_seqs() {
        let mut tracker = SeqTracker::new(10);
        let mut out = Vec::new();

        tracker.accept_page(7, page(8..=12, false), &mut out);

        assert_eq!(seqs(&out), vec![11, 12]);
    }

    #[test]
    fn ack_due_once_per_advance() {
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();
        assert_eq!(tracker.ack_due(), None);

        tracker.accept(message(1), &mut out);
        tracker.accept(message(2), &mut out);
        let first = tracker.ack_due();
        tracker.mark_acked(2);
        let after_mark = tracker.ack_due();
        tracker.accept(message(4), &mut out);
        let behind_hole = tracker.ack_due();

        assert_eq!(first, Some(2));
        assert_eq!(after_mark, None);
        assert_eq!(behind_hole, None);
    }

    #[test]
    fn resumed_cursor_is_acked_once() {
        let mut tracker = SeqTracker::new(7);

        let due = tracker.ack_due();
        tracker.mark_acked(7);

        assert_eq!(due, Some(7));
        assert_eq!(tracker.ack_due(), None);
    }

    #[test]
    fn any_arrival_order_delivers_each_once_in_order() {
        // A fixed shuffle of 1..=30 with repeats, fed partly as pushes and partly as pages.
        let pushes = [9, 3, 3, 1, 14, 2, 30, 9, 4, 5, 22, 6, 6];
        let mut tracker = SeqTracker::new(0);
        let mut out = Vec::new();

        for seq in pushes {
            tracker.accept(message(seq), &mut out);
        }
        let mut after = tracker.last_seq();
        let mut pages = 0;
        while let Some(next) = tracker.accept_page(
            after,
            page(after + 1..=(after + 4).min(30), after + 4 < 30),
            &mut out,
        ) {
            after = next;
            pages += 1;
        }

        assert_eq!(seqs(&out), (1..=30).collect::<Vec<_>>());
        assert!(!tracker.has_hole());
        assert!(pages > 1, "paging took {pages} extra pages");
    }
}
