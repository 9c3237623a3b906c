//! Ranges the fault handler watches on behalf of memory the device accesses in place.
//!
//! Memory advised `AccessInPlace` is imported into the device (`device::HostImport`) and is
//! not mirrored: no extent, no page states. Yet the import is only good while the program
//! keeps those pages mapped, and only the fault handler hears of a `munmap`, `mremap` or
//! `madvise(DONTNEED)` (as `UNMAP`, `REMAP` and `REMOVE` events of the registered range).
//! This table is how it tells the launcher: the handler marks every live watch that such an
//! event overlaps `dead`; the launcher drops dead imports before its next launch uses them
//! (`in_place`), after `sync_events`, so the event of a call that returned is never missed.
//!
//! The handler may neither allocate nor take a lock a launcher holds, so the table is a
//! fixed array of atomics: [`SLOTS`] watches per process, taken by compare-and-swap.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Watches a process can hold at once (so many in-place ranges).
pub(crate) const SLOTS: usize = 64;

const FREE: u8 = 0;
/// Being filled in by [`Watches::add`]; the handler skips it.
const FILLING: u8 = 1;
const LIVE: u8 = 2;
const DEAD: u8 = 3;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    end: AtomicUsize,
}

/// The process's watches (one table, in the fault service).
pub(crate) struct Watches {
    slots: [Slot; SLOTS],
}

/// One watch, as [`Watches::add`] handed it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchId(usize);

impl Watches {
    pub(crate) const fn new() -> Self {
        Watches {
            slots: [const {
                Slot {
                    state: AtomicU8::new(FREE),
                    start: AtomicUsize::new(0),
                    end: AtomicUsize::new(0),
                }
            }; SLOTS],
        }
    }

    /// Starts watching `range`; `None` when every slot is taken.
    pub(crate) fn add(&self, range: Range<usize>) -> Option<WatchId> {
        let i = self.slots.iter().position(|s| {
            s.state
                .compare_exchange(FREE, FILLING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        let s = &self.slots[i];
        s.start.store(range.start, Ordering::Relaxed);
        s.end.store(range.end, Ordering::Relaxed);
        s.state.store(LIVE, Ordering::Release);
        Some(WatchId(i))
    }

    /// Whether the program unmapped or discarded any part of the watched range since it
    /// was added.
    pub(crate) fn dead(&self, id: WatchId) -> bool {
        self.slots[id.0].state.load(Ordering::Acquire) == DEAD
    }

    /// Stops watching; the slot is free again.
    pub(crate) fn remove(&self, id: WatchId) {
        self.slots[id.0].state.store(FREE, Ordering::Release);
    }

    /// The handler's side: every live watch overlapping `range` is dead. Allocates nothing,
    /// takes no lock.
    pub(crate) fn mark_dead(&self, range: Range<usize>) {
        for s in &self.slots {
            if s.state.load(Ordering::Acquire) != LIVE {
                continue;
            }
            let (start, end) = (
                s.start.load(Ordering::Relaxed),
                s.end.load(Ordering::Relaxed),
            );
            if start < range.end && range.start < end {
                let _ = s
                    .state
                    .compare_exchange(LIVE, DEAD, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_events_kill_only_their_watches() {
        let w = Watches::new();
        let a = w.add(0x1000..0x3000).unwrap();
        let b = w.add(0x5000..0x6000).unwrap();
        w.mark_dead(0x3000..0x5000); // touches neither
        assert!(!w.dead(a) && !w.dead(b));
        w.mark_dead(0x2000..0x2001);
        assert!(w.dead(a) && !w.dead(b));
        w.remove(a);
        let c = w.add(0x8000..0x9000).unwrap();
        assert_eq!(c, a, "a freed slot is reused");
        assert!(!w.dead(c));
    }

    #[test]
    fn a_full_table_says_so() {
        let w = Watches::new();
        let ids: Vec<_> = (0..SLOTS).map(|i| w.add(i..i + 1).unwrap()).collect();
        assert!(w.add(0..1).is_none());
        w.remove(ids[7]);
        assert!(w.add(0..1).is_some());
    }
}
