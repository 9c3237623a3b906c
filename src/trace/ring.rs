//! A fixed ring of events: many threads push, one drains; nothing allocates or locks.
//!
//! A bounded queue in the manner of Dmitry Vyukov's: each slot carries a sequence number
//! that says whose turn it is. A producer takes a ticket (`fetch_add` of the head), waits
//! for nothing — if the slot is still unread (the ring is full) the event is dropped and
//! counted — writes the event and publishes it by bumping the slot's sequence. The single
//! consumer reads slots in ticket order and frees each by setting its sequence one lap on.
//!
//! A ticket whose slot is full is lost, not retried: the fault handler must never wait for
//! the writer thread. [`Ring::dropped`] tells the writer how many were lost.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Event;

struct Slot {
    /// `ticket` when free for the producer of that ticket; `ticket + 1` once it holds that
    /// ticket's event; `ticket + CAP` once the consumer has read it.
    seq: AtomicU64,
    event: UnsafeCell<Event>,
}

/// The ring (a power of two of slots).
pub(crate) struct Ring {
    slots: Box<[Slot]>,
    mask: u64,
    head: AtomicU64,
    tail: AtomicU64,
    dropped: AtomicU64,
}

// SAFETY: a slot's event is written only by the producer that owns its ticket (between
// seeing `seq == ticket` and publishing `ticket + 1`) and read only by the one consumer
// (between seeing `ticket + 1` and publishing `ticket + CAP`); the sequence's
// acquire/release orders the two.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `capacity` slots (rounded up to a power of two).
    pub fn new(capacity: usize) -> Ring {
        let cap = capacity.next_power_of_two() as u64;
        Ring {
            slots: (0..cap)
                .map(|i| Slot {
                    seq: AtomicU64::new(i),
                    event: UnsafeCell::new(Event::EMPTY),
                })
                .collect(),
            mask: cap - 1,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds `event`, or drops it when the ring is full.
    pub fn push(&self, event: Event) {
        let mut ticket = self.head.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(ticket & self.mask) as usize];
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == ticket {
                match self.head.compare_exchange_weak(
                    ticket,
                    ticket + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: this thread owns the slot for `ticket` (see `Sync`).
                        unsafe { *slot.event.get() = event };
                        slot.seq.store(ticket + 1, Ordering::Release);
                        return;
                    }
                    Err(now) => ticket = now,
                }
            } else if seq < ticket {
                // The slot still holds an event of the previous lap: full.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            } else {
                ticket = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Hands every published event, in ticket order, to `each`. One consumer at a time
    /// (the caller holds the writer's lock).
    pub fn drain(&self, mut each: impl FnMut(&Event)) {
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(tail & self.mask) as usize];
            if slot.seq.load(Ordering::Acquire) != tail + 1 {
                break;
            }
            // SAFETY: published for `tail` and not yet freed: the consumer's (see `Sync`).
            each(unsafe { &*slot.event.get() });
            slot.seq.store(tail + self.mask + 1, Ordering::Release);
            tail += 1;
        }
        self.tail.store(tail, Ordering::Relaxed);
    }

    /// Events lost to a full ring so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> Event {
        Event {
            bytes: n,
            ..Event::EMPTY
        }
    }

    #[test]
    fn an_event_is_120_bytes() {
        // docs/tracing.md quotes it; the ring holds 65,536 of them (7.5 MiB).
        assert_eq!(std::mem::size_of::<Event>(), 120);
    }

    #[test]
    fn events_come_out_in_order_and_a_full_ring_drops() {
        let r = Ring::new(4);
        for i in 0..6 {
            r.push(ev(i));
        }
        let mut got = Vec::new();
        r.drain(|e| got.push(e.bytes));
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(r.dropped(), 2);
        for i in 10..13 {
            r.push(ev(i));
        }
        got.clear();
        r.drain(|e| got.push(e.bytes));
        assert_eq!(got, [10, 11, 12]);
    }

    #[test]
    fn threads_pushing_at_once_lose_nothing_that_fits() {
        let r = Ring::new(1 << 14);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let r = &r;
                s.spawn(move || (0..1000).for_each(|i| r.push(ev(t * 1000 + i))));
            }
        });
        let mut got = Vec::new();
        r.drain(|e| got.push(e.bytes));
        got.sort_unstable();
        assert_eq!(got, (0..4000).collect::<Vec<_>>());
        assert_eq!(r.dropped(), 0);
    }
}
