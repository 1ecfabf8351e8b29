//! The relay's chunk ring: a fixed number of fixed-size chunk slots, allocated once at start
//! from `relay.memory` and shared by every transfer through per-transfer lanes.
//! Never grows and never allocates after [`ChunkRing::new`]; when it is full the sender
//! waits for credit (backpressure), it never gets more memory.
//!
//! ```text
//!   storage: [ slot 0 | slot 1 | slot 2 | ... | slot n-1 ]   one Box<[u8]>, n * slot_size
//!   free:    ring of slot numbers, taken at `read`, returned at the end (wraps around)
//!   lane A:  slot 4 -> slot 7 -> slot 1     chunks of one transfer, oldest first
//!   lane B:  slot 2
//! ```
//!
//! A slot moves through three states: *free*, *reserved* (credit granted to a lane's
//! sender, no bytes yet: counted, not assigned) and *filled* (holds a chunk in its lane
//! until the receiver acknowledges it). Reservations never exceed free slots, so a chunk
//! that arrives within its credit always finds a slot.

/// "No slot": the end of a lane's list.
const NIL: u16 = u16::MAX;

/// A lane: the chunks of one transfer. Handed out by [`ChunkRing::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lane(u16);

/// Why [`ChunkRing::push`] refused a chunk. Nothing was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The lane holds no reservation: the sender went past the credit it was granted.
    NoCredit,
    /// The chunk is longer than a slot.
    TooLarge,
    /// The lane is not open.
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    len: u32,
    next: u16,
}

#[derive(Clone, Copy, Debug)]
struct LaneState {
    open: bool,
    head: u16,
    tail: u16,
    /// Filled slots in the lane.
    len: u16,
    /// Slots promised to the lane's sender but not filled yet.
    reserved: u16,
}

const CLOSED: LaneState = LaneState {
    open: false,
    head: NIL,
    tail: NIL,
    len: 0,
    reserved: 0,
};

/// Fixed-memory chunk storage shared fairly between transfers.
///
/// **Full.** A lane gets new slots only through [`ChunkRing::grant`], which hands out at
/// most the lane's fair share and never more than the free, unreserved slots. A sender
/// without credit waits; nothing is allocated.
///
/// **Fairness.** Each open lane may hold (filled plus reserved) at most
/// `max(1, slots / (open lanes + 1))` slots: the lanes' shares always leave one share free
/// for the next transfer to start at once, even while every other receiver has stopped
/// reading. When a new transfer starts, a lane above its new share gets no further credit;
/// as its receiver acknowledges, the freed slots go to lanes under their share. So one fast
/// pair cannot keep a slow or new pair from making progress.
///
/// **A receiver that stops reading or vanishes.** Its lane stops draining, so its sender
/// stops getting credit: only that lane's share is held, and the others keep flowing. The
/// owner then calls [`ChunkRing::reset`] (keep the lane, drop its chunks and credit: the
/// sender resends from the last acknowledged chunk) or [`ChunkRing::close`] (the transfer
/// is over).
pub struct ChunkRing {
    storage: Box<[u8]>,
    slot_size: usize,
    slots: Box<[Slot]>,
    /// Free slot numbers as a ring: taken at `free_read`, returned at `free_read + free_len`.
    free: Box<[u16]>,
    free_read: usize,
    free_len: usize,
    /// Sum of every lane's `reserved`; never above `free_len`.
    reserved: usize,
    lanes: Box<[LaneState]>,
    open_lanes: usize,
}

/// Construction and capacity: the one allocation, and what it holds.
impl ChunkRing {
    /// Allocates `slot_count` slots of `slot_size` bytes and room for `max_lanes` lanes;
    /// the only allocation the ring ever makes. Panics if `slot_count` is 0 or not below
    /// 65535, or `max_lanes` is 0 (the config checks this first).
    pub fn new(slot_count: usize, slot_size: usize, max_lanes: usize) -> ChunkRing {
        assert!(
            slot_count > 0 && slot_count < NIL as usize,
            "bad slot count"
        );
        assert!(max_lanes > 0 && max_lanes < NIL as usize, "bad lane count");
        ChunkRing {
            storage: vec![0u8; slot_count * slot_size].into_boxed_slice(),
            slot_size,
            slots: vec![Slot { len: 0, next: NIL }; slot_count].into_boxed_slice(),
            free: (0..slot_count as u16).collect(),
            free_read: 0,
            free_len: slot_count,
            reserved: 0,
            lanes: vec![CLOSED; max_lanes].into_boxed_slice(),
            open_lanes: 0,
        }
    }

    /// Bytes of chunk storage (what `relay.memory` bought).
    pub fn capacity_bytes(&self) -> usize {
        self.storage.len()
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Slots neither filled nor reserved.
    pub fn available(&self) -> usize {
        self.free_len - self.reserved
    }

    /// The most slots one lane may hold now: `max(1, slots / (open lanes + 1))`.
    pub fn fair_share(&self) -> usize {
        (self.slots.len() / (self.open_lanes + 1)).max(1)
    }
}

/// Lanes, one per transfer. Opening when every lane is taken gives `None`; closing or
/// resetting a closed lane does nothing; a closed lane reads as empty with no credit.
impl ChunkRing {
    /// Opens a lane with no chunks and no credit. None when `max_lanes` are open.
    pub fn open(&mut self) -> Option<Lane> {
        let i = self.lanes.iter().position(|l| !l.open)?;
        self.lanes[i] = LaneState {
            open: true,
            ..CLOSED
        };
        self.open_lanes += 1;
        Some(Lane(i as u16))
    }

    /// Frees every slot of the lane, cancels its credit and closes it. Closed lane: no-op.
    pub fn close(&mut self, lane: Lane) {
        if self.lane(lane).is_none() {
            return;
        }
        self.reset(lane);
        self.lanes[lane.0 as usize] = CLOSED;
        self.open_lanes -= 1;
    }

    /// Frees every slot of the lane and cancels its credit; the lane stays open and empty.
    /// Returns the chunks dropped. Closed lane: 0.
    pub fn reset(&mut self, lane: Lane) -> usize {
        let Some(l) = self.lane(lane) else { return 0 };
        let dropped = l.len as usize;
        self.reserved -= l.reserved as usize;
        self.lanes[lane.0 as usize].reserved = 0;
        self.release(lane, dropped);
        dropped
    }

    /// Filled slots in the lane (0 if closed).
    pub fn len(&self, lane: Lane) -> usize {
        self.lane(lane).map_or(0, |l| l.len as usize)
    }

    /// True if the lane holds no chunk (or is closed).
    pub fn is_empty(&self, lane: Lane) -> bool {
        self.len(lane) == 0
    }

    /// Reservations the lane's sender has not used yet (0 if closed).
    pub fn credit(&self, lane: Lane) -> usize {
        self.lane(lane).map_or(0, |l| l.reserved as usize)
    }

    fn lane(&self, lane: Lane) -> Option<&LaneState> {
        self.lanes.get(lane.0 as usize).filter(|l| l.open)
    }
}

/// Credit, how the sender of a lane is paced. A full ring, or a lane at its fair share,
/// grants 0: the sender waits for a release; nothing is allocated.
impl ChunkRing {
    /// Reserves up to `want` more slots for the lane, within its fair share and the slots
    /// still available; returns how many it got (0 when the ring is full or the lane is at
    /// its share: the sender must wait). Closed lane: 0.
    pub fn grant(&mut self, lane: Lane, want: usize) -> usize {
        let share = self.fair_share();
        let available = self.available();
        let Some(l) = self.lanes.get_mut(lane.0 as usize).filter(|l| l.open) else {
            return 0;
        };
        let held = l.len as usize + l.reserved as usize;
        let n = want.min(share.saturating_sub(held)).min(available);
        l.reserved += n as u16;
        self.reserved += n;
        n
    }
}

/// Data: chunks in, chunks read, chunks released, oldest first within a lane. A push
/// without credit, too long, or to a closed lane is an error that stores nothing; reading
/// past the end gives `None`; releasing more than the lane holds releases what it holds.
impl ChunkRing {
    /// Copies `bytes` into a reserved slot at the back of the lane, using one reservation.
    /// Refused (nothing stored) without a reservation or when longer than a slot.
    pub fn push(&mut self, lane: Lane, bytes: &[u8]) -> Result<(), PushError> {
        let l = *self.lane(lane).ok_or(PushError::Closed)?;
        if bytes.len() > self.slot_size {
            return Err(PushError::TooLarge);
        }
        if l.reserved == 0 {
            return Err(PushError::NoCredit);
        }
        // A reservation guarantees a free slot: reserved <= free_len.
        let slot = self.free[self.free_read];
        self.free_read = (self.free_read + 1) % self.free.len();
        self.free_len -= 1;
        self.reserved -= 1;
        let start = slot as usize * self.slot_size;
        self.storage[start..start + bytes.len()].copy_from_slice(bytes);
        self.slots[slot as usize] = Slot {
            len: bytes.len() as u32,
            next: NIL,
        };
        let l = &mut self.lanes[lane.0 as usize];
        if l.tail == NIL {
            l.head = slot;
        } else {
            self.slots[l.tail as usize].next = slot;
        }
        l.tail = slot;
        l.len += 1;
        l.reserved -= 1;
        Ok(())
    }

    /// The `nth` chunk of the lane, counted from the oldest (0). None past the end.
    /// Walks the lane: lanes hold at most their fair share, a few dozen slots.
    pub fn get(&self, lane: Lane, nth: usize) -> Option<&[u8]> {
        let l = self.lane(lane)?;
        if nth >= l.len as usize {
            return None;
        }
        let mut slot = l.head;
        for _ in 0..nth {
            slot = self.slots[slot as usize].next;
        }
        let start = slot as usize * self.slot_size;
        Some(&self.storage[start..start + self.slots[slot as usize].len as usize])
    }

    /// Frees the `n` oldest chunks of the lane (fewer if it holds fewer); returns how many.
    pub fn release(&mut self, lane: Lane, n: usize) -> usize {
        let Some(l) = self.lane(lane).copied() else {
            return 0;
        };
        let n = n.min(l.len as usize);
        let mut head = l.head;
        for _ in 0..n {
            let next = self.slots[head as usize].next;
            let at = (self.free_read + self.free_len) % self.free.len();
            self.free[at] = head;
            self.free_len += 1;
            head = next;
        }
        let l = &mut self.lanes[lane.0 as usize];
        l.head = head;
        l.len -= n as u16;
        if l.len == 0 {
            l.tail = NIL;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_ring_has_nothing_to_read() {
        let mut r = ChunkRing::new(4, 8, 2);
        let a = r.open().unwrap();
        assert!(r.is_empty(a));
        assert_eq!(r.get(a, 0), None);
        assert_eq!(r.release(a, 3), 0);
        assert_eq!(r.push(a, b"x"), Err(PushError::NoCredit));
        assert_eq!(r.available(), 4);
        assert_eq!(r.capacity_bytes(), 32);
    }

    #[test]
    fn full_ring_gives_no_credit_until_a_release() {
        // Six slots, two lanes: each may hold 6 / 3 = 2, and a third lane gets the rest.
        let mut r = ChunkRing::new(6, 4, 3);
        let a = r.open().unwrap();
        let b = r.open().unwrap();
        assert_eq!(r.grant(a, 10), 2, "no more than the share");
        assert_eq!(r.grant(b, 10), 2);
        for c in [b"aaaa", b"bbbb"] {
            r.push(a, c).unwrap();
        }
        r.push(b, b"xx").unwrap();
        r.push(b, b"yy").unwrap();
        let c = r.open().unwrap();
        assert_eq!(r.fair_share(), 1);
        assert_eq!(r.grant(c, 10), 1, "the share kept free serves a newcomer");
        r.push(c, b"zz").unwrap();
        assert_eq!(r.available(), 1);
        assert_eq!(r.push(a, b"cccc"), Err(PushError::NoCredit));
        assert_eq!(r.grant(a, 1), 0, "above its share: the sender waits");
        assert_eq!(r.grant(c, 1), 0);
        assert_eq!(r.release(c, 2), 1);
        r.close(c);
        r.close(b);
        // a is alone now: share 6 / 2 = 3, it holds 2.
        assert_eq!(r.grant(a, 5), 1);
        r.push(a, b"cccc").unwrap();
        assert_eq!(r.release(a, 1), 1);
        assert_eq!(r.grant(a, 5), 1);
        r.push(a, b"dddd").unwrap();
        let got: Vec<&[u8]> = (0..3).map(|i| r.get(a, i).unwrap()).collect();
        assert_eq!(got, [b"bbbb", b"cccc", b"dddd"]);
        assert_eq!(r.available(), 3);
    }

    #[test]
    fn slots_wrap_around_and_keep_their_bytes() {
        let mut r = ChunkRing::new(5, 2, 1);
        let a = r.open().unwrap();
        // 10 rounds of two chunks through five slots: the free ring wraps several times.
        for round in 0u8..10 {
            assert_eq!(r.grant(a, 2), 2);
            r.push(a, &[round, 0]).unwrap();
            r.push(a, &[round, 1]).unwrap();
            assert_eq!(r.get(a, 0), Some(&[round, 0][..]));
            assert_eq!(r.get(a, 1), Some(&[round, 1][..]));
            assert_eq!(r.release(a, 2), 2);
        }
        assert_eq!(r.available(), 5);
    }

    #[test]
    fn short_and_oversized_chunks() {
        let mut r = ChunkRing::new(4, 4, 1);
        let a = r.open().unwrap();
        r.grant(a, 2);
        assert_eq!(r.push(a, b"12345"), Err(PushError::TooLarge));
        assert_eq!(r.credit(a), 2, "a refused chunk uses no credit");
        r.push(a, b"").unwrap();
        r.push(a, b"1").unwrap();
        assert_eq!(r.get(a, 0), Some(&b""[..]));
        assert_eq!(r.get(a, 1), Some(&b"1"[..]));
    }

    #[test]
    fn one_lane_cannot_take_more_than_its_share() {
        let mut r = ChunkRing::new(12, 1, 4);
        let fast = r.open().unwrap();
        assert_eq!(r.grant(fast, 100), 6, "alone, a lane may use half the ring");
        for _ in 0..6 {
            r.push(fast, b"f").unwrap();
        }
        let slow = r.open().unwrap();
        assert_eq!(r.fair_share(), 4);
        assert_eq!(
            r.grant(slow, 10),
            4,
            "the free half serves a newcomer at once"
        );
        let third = r.open().unwrap();
        assert_eq!(r.fair_share(), 3);
        assert_eq!(r.grant(third, 10), 2, "what is left");
        // The fast receiver acknowledges: the freed slot goes to the lane under its share,
        // and the fast lane, above its share, gets none back.
        r.release(fast, 1);
        assert_eq!(r.grant(fast, 1), 0);
        assert_eq!(r.grant(third, 1), 1);
        r.release(fast, 3);
        assert_eq!(r.grant(fast, 10), 1, "fast holds 2, its share is 3");
    }

    #[test]
    fn cancelling_one_lane_leaves_the_others_flowing() {
        let mut r = ChunkRing::new(8, 1, 3);
        let lanes: Vec<Lane> = (0..3).map(|_| r.open().unwrap()).collect();
        for (i, &l) in lanes.iter().enumerate() {
            assert_eq!(r.grant(l, 2), 2);
            r.push(l, &[i as u8]).unwrap();
        }
        r.close(lanes[1]);
        assert_eq!(r.len(lanes[1]), 0);
        assert_eq!(r.push(lanes[1], b"x"), Err(PushError::Closed));
        assert_eq!(
            r.available(),
            8 - 2 - 2,
            "its slot and its credit came back"
        );
        // The others keep their chunks and their credit.
        assert_eq!(r.get(lanes[0], 0), Some(&[0u8][..]));
        assert_eq!(r.get(lanes[2], 0), Some(&[2u8][..]));
        r.push(lanes[0], b"a").unwrap();
        r.push(lanes[2], b"c").unwrap();
        assert_eq!(
            r.fair_share(),
            2,
            "two lanes and a newcomer share eight slots"
        );
        assert_eq!(r.grant(lanes[0], 5), 0, "lane 0 holds its two");
        r.release(lanes[0], 1);
        assert_eq!(r.grant(lanes[0], 5), 1);
        // A closed lane's number is reused by the next open.
        assert_eq!(r.open(), Some(lanes[1]));
    }

    #[test]
    fn reset_drops_chunks_and_credit_but_keeps_the_lane() {
        let mut r = ChunkRing::new(4, 1, 1);
        let a = r.open().unwrap();
        r.grant(a, 2);
        r.push(a, b"1").unwrap();
        r.push(a, b"2").unwrap();
        assert_eq!(r.reset(a), 2);
        assert_eq!((r.len(a), r.credit(a), r.available()), (0, 0, 4));
        assert_eq!(r.grant(a, 1), 1);
        r.push(a, b"3").unwrap();
        assert_eq!(r.get(a, 0), Some(&b"3"[..]));
    }

    #[test]
    fn more_lanes_than_slots_fill_the_ring() {
        let mut r = ChunkRing::new(2, 1, 3);
        let lanes: Vec<Lane> = (0..3).map(|_| r.open().unwrap()).collect();
        assert_eq!(r.fair_share(), 1, "never below one slot");
        assert_eq!(r.grant(lanes[0], 5), 1);
        assert_eq!(r.grant(lanes[1], 5), 1);
        assert_eq!(r.available(), 0);
        assert_eq!(r.grant(lanes[2], 5), 0, "full: the third waits");
        r.push(lanes[0], b"a").unwrap();
        r.release(lanes[0], 1);
        assert_eq!(
            r.grant(lanes[2], 5),
            1,
            "the first release goes to the one waiting"
        );
    }

    #[test]
    fn lanes_run_out() {
        let mut r = ChunkRing::new(2, 1, 2);
        let a = r.open().unwrap();
        let _b = r.open().unwrap();
        assert_eq!(r.open(), None);
        r.close(a);
        r.close(a);
        assert!(r.open().is_some());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open,
        /// Lane number, credit wanted.
        Grant(usize, usize),
        /// Lane number, chunk length.
        Push(usize, usize),
        /// Lane number, chunks to consume.
        Consume(usize, usize),
        Close(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Open),
            3 => (0..4usize, 0..6usize).prop_map(|(l, n)| Op::Grant(l, n)),
            4 => (0..4usize, 0..=8usize).prop_map(|(l, n)| Op::Push(l, n)),
            3 => (0..4usize, 0..4usize).prop_map(|(l, n)| Op::Consume(l, n)),
            1 => (0..4usize).prop_map(Op::Close),
        ]
    }

    proptest! {
        /// Random producers and consumers on up to four lanes: each lane's bytes come out
        /// in the order they went in, exactly once, and the ring never holds more than it has.
        #[test]
        fn bytes_come_out_in_order_exactly_once(ops in proptest::collection::vec(op(), 1..300)) {
            let mut r = ChunkRing::new(5, 8, 4);
            // Per lane slot: the ring's lane, the next byte value to produce, the next to consume.
            let mut lanes: Vec<Option<(Lane, u8, u8)>> = vec![None; 4];
            for op in ops {
                match op {
                    Op::Open => {
                        if let Some(i) = lanes.iter().position(Option::is_none) {
                            lanes[i] = Some((r.open().unwrap(), 0, 0));
                        }
                    }
                    Op::Grant(i, n) => if let Some((l, _, _)) = lanes[i] {
                        let before = r.available();
                        let got = r.grant(l, n);
                        prop_assert!(got <= n && got <= before);
                        if got > 0 {
                            prop_assert!(r.len(l) + r.credit(l) <= r.fair_share());
                        }
                    },
                    Op::Push(i, len) => if let Some((l, ref mut next, _)) = lanes[i] {
                        let bytes: Vec<u8> = (0..len).map(|k| next.wrapping_add(k as u8)).collect();
                        let had = r.credit(l);
                        match r.push(l, &bytes) {
                            Ok(()) => *next = next.wrapping_add(len as u8),
                            Err(PushError::NoCredit) => prop_assert_eq!(had, 0),
                            Err(e) => prop_assert!(false, "unexpected {:?}", e),
                        }
                    },
                    Op::Consume(i, n) => if let Some((l, _, ref mut seen)) = lanes[i] {
                        let n = n.min(r.len(l));
                        for k in 0..n {
                            for &b in r.get(l, k).unwrap() {
                                prop_assert_eq!(b, *seen);
                                *seen = seen.wrapping_add(1);
                            }
                        }
                        prop_assert_eq!(r.release(l, n), n);
                    },
                    Op::Close(i) => if let Some((l, _, _)) = lanes[i].take() {
                        r.close(l);
                    },
                }
                let filled: usize = lanes.iter().flatten().map(|(l, _, _)| r.len(*l)).sum();
                let credit: usize = lanes.iter().flatten().map(|(l, _, _)| r.credit(*l)).sum();
                prop_assert_eq!(filled + credit + r.available(), r.slot_count());
            }
            // Drain: whatever is left still comes out in order.
            for (l, next, seen) in lanes.into_iter().flatten() {
                let mut seen = seen;
                for k in 0..r.len(l) {
                    for &b in r.get(l, k).unwrap() {
                        prop_assert_eq!(b, seen);
                        seen = seen.wrapping_add(1);
                    }
                }
                prop_assert_eq!(seen, next);
            }
        }
    }
}
