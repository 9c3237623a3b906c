//! Ranges the fault handler watches for the launch path: the userfaultfd counterpart of the
//! kernel's `mmu_interval_notifier`.
//!
//! Only the fault handler hears of a `munmap`, `mremap` or `madvise(DONTNEED)` of registered
//! memory (as `UNMAP`, `REMAP` and `REMOVE` events), and it hears of them *after* the
//! address space changed. Whoever acts on memory after deciding about it must learn of such a
//! change that landed in between. Two kinds of watcher ask:
//!
//! - **In-place ranges** (`Advice::AccessInPlace`, `in_place`): an import is only good while
//!   the program keeps its pages. The handler marks every live in-place watch that any event
//!   overlaps dead; the launcher drops dead imports before its next launch uses them, after
//!   `sync_events`, so the event of a call that returned is never missed.
//! - **Launches and prefetches** ([`LaunchWatch`]): from before a launch looks at its bindings
//!   until it is settled, each binding's page span is watched. The handler records, per span,
//!   which part an `UNMAP` or `REMAP` took away (the hull of what it lost). The launch replays
//!   that onto every page it claims after re-reading it from the binding, and onto every
//!   extent it publishes, so no page of a mapping that died during the launch is left
//!   claiming a device copy that a later mapping at the same address could be served from.
//!   `REMOVE` is not recorded: it does not end the mapping, and the launch path's own
//!   fallback discards raise it on pages the launch holds.
//!
//! Launch watches are added and removed with the fault service's gate held, and the handler
//! processes events with the gate held: a slot never changes owner while the handler reads
//! it, so a recorded loss always belongs to the launch that reads it. Every event processed
//! after a watch is added is recorded in it; events processed before belong to the memory the
//! launch then finds.
//!
//! The handler may neither allocate nor take a lock a launcher holds while touching memory,
//! so the tables are fixed arrays of atomics, taken by compare-and-swap.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::PoisonError;

use super::{Gate, GateGuard};
use std::time::{Duration, Instant};

use crate::sys::slots::{self, FILLING, FREE};
use crate::{Error, MemoryReason, Result};

/// In-place ranges a process can hold at once.
pub(crate) const IN_PLACE_SLOTS: usize = 64;
/// Binding spans of launches in flight the process can watch at once.
pub(crate) const LAUNCH_SLOTS: usize = 512;

/// A watch in effect (after `sys::slots`' `FREE` and `FILLING`).
const LIVE: u32 = 2;
/// A watch that saw its range unmapped or discarded.
const DEAD: u32 = 3;

/// What the program did to a range, as an event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// `munmap`, or the old range of an `mremap`: the mapping there is gone for good.
    Unmapped,
    /// `madvise(MADV_DONTNEED)` and the like: the mapping stays, its pages read as zero.
    Discarded,
}

struct Slot {
    state: AtomicU32,
    start: AtomicUsize,
    end: AtomicUsize,
    /// The hull of what the range lost (launch watches; empty while `lost_start >=
    /// lost_end`).
    lost_start: AtomicUsize,
    lost_end: AtomicUsize,
}

impl Slot {
    const fn free() -> Slot {
        Slot {
            state: AtomicU32::new(FREE),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            lost_start: AtomicUsize::new(usize::MAX),
            lost_end: AtomicUsize::new(0),
        }
    }

    /// Fills in the slot its caller just took (`FILLING`) for `range` and publishes it.
    fn fill(&self, range: &Range<usize>) {
        debug_assert_eq!(self.state.load(Ordering::Relaxed), FILLING);
        self.start.store(range.start, Ordering::Relaxed);
        self.end.store(range.end, Ordering::Relaxed);
        self.lost_start.store(usize::MAX, Ordering::Relaxed);
        self.lost_end.store(0, Ordering::Relaxed);
        self.state.store(LIVE, Ordering::Release);
    }

    fn range(&self) -> Range<usize> {
        self.start.load(Ordering::Relaxed)..self.end.load(Ordering::Relaxed)
    }

    fn lost(&self) -> Option<Range<usize>> {
        if self.state.load(Ordering::Acquire) != DEAD {
            return None;
        }
        let lost = self.lost_start.load(Ordering::Relaxed)..self.lost_end.load(Ordering::Relaxed);
        (!lost.is_empty()).then_some(lost)
    }
}

/// Takes a free slot of `slots` for `range`.
fn take(slots: &[Slot], range: &Range<usize>) -> Option<usize> {
    let i = slots::take(slots.len(), 0, |i| &slots[i].state)?;
    slots[i].fill(range);
    Some(i)
}

/// The process's watches (one set, in the fault service).
pub(crate) struct Watches {
    in_place: [Slot; IN_PLACE_SLOTS],
    launches: [Slot; LAUNCH_SLOTS],
}

/// One in-place watch, as [`Watches::add_in_place`] handed it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchId(usize);

impl Watches {
    pub(crate) const fn new() -> Self {
        Watches {
            in_place: [const { Slot::free() }; IN_PLACE_SLOTS],
            launches: [const { Slot::free() }; LAUNCH_SLOTS],
        }
    }

    /// Starts watching the in-place range `range`; `None` when every slot is taken.
    pub(crate) fn add_in_place(&self, range: Range<usize>) -> Option<WatchId> {
        take(&self.in_place, &range).map(WatchId)
    }

    /// Whether the program unmapped or discarded any part of the in-place range since it was
    /// added.
    pub(crate) fn dead(&self, id: WatchId) -> bool {
        self.in_place[id.0].state.load(Ordering::Acquire) == DEAD
    }

    /// Stops watching an in-place range; the slot is free again.
    pub(crate) fn remove(&self, id: WatchId) {
        self.in_place[id.0].state.store(FREE, Ordering::Release);
    }

    /// Starts watching the spans of a launch, one slot each, whose indices go to `slots`
    /// (which must have room for them: nothing is allocated); `false` when too few slots are
    /// free (none is kept then). Call with the fault service's gate held.
    pub(crate) fn add_launch(&self, spans: &[Range<usize>], slots: &mut Vec<usize>) -> bool {
        debug_assert!(slots.is_empty() && slots.capacity() >= spans.len());
        for span in spans {
            match take(&self.launches, span) {
                Some(i) => slots.push(i),
                None => {
                    self.remove_launch(slots);
                    slots.clear();
                    return false;
                }
            }
        }
        true
    }

    /// The parts of the launch spans in `slots` that were unmapped or moved away since they
    /// were added (each as the hull of what its span lost). Read with the gate held for an
    /// answer that no event is changing.
    pub(crate) fn lost<'a>(
        &'a self,
        slots: &'a [usize],
    ) -> impl Iterator<Item = Range<usize>> + 'a {
        slots.iter().filter_map(|&i| self.launches[i].lost())
    }

    /// Stops watching the launch spans in `slots`. Call with the gate held.
    pub(crate) fn remove_launch(&self, slots: &[usize]) {
        for &i in slots {
            self.launches[i].state.store(FREE, Ordering::Release);
        }
    }

    /// The handler's side: the program did `change` to `range`. Every live in-place watch it
    /// overlaps dies; every launch span that an unmap overlaps records the part it lost.
    /// Allocates nothing, takes no lock.
    pub(crate) fn changed(&self, range: Range<usize>, change: Change) {
        let overlaps = |s: &Slot| {
            let r = s.range();
            r.start < range.end && range.start < r.end
        };
        for s in &self.in_place {
            if s.state.load(Ordering::Acquire) == LIVE && overlaps(s) {
                let _ = s
                    .state
                    .compare_exchange(LIVE, DEAD, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        if change != Change::Unmapped {
            return;
        }
        for s in &self.launches {
            let state = s.state.load(Ordering::Acquire);
            if (state == LIVE || state == DEAD) && overlaps(s) {
                let r = s.range();
                s.lost_start
                    .fetch_min(r.start.max(range.start), Ordering::Relaxed);
                s.lost_end
                    .fetch_max(r.end.min(range.end), Ordering::Relaxed);
                s.state.store(DEAD, Ordering::Release);
            }
        }
    }
}

/// The watch of one launch (or prefetch) over its bindings' page spans, from before it looks
/// at them until it is settled. Made by `AddressSpace::watch_launch`; dropping it stops the
/// watch.
pub(crate) struct LaunchWatch {
    watches: &'static Watches,
    gate: &'static Gate,
    slots: Vec<usize>,
}

impl LaunchWatch {
    /// Watches `spans` (page spans, overlapping ones merged) for the process's `watches`.
    /// `hold` takes the fault service's gate once no event is unread (so that no unmap that
    /// happened before is processed after the watch began); it is called again while every
    /// slot is taken.
    pub(crate) fn new<'g>(
        watches: &'static Watches,
        gate: &'static Gate,
        hold: impl Fn() -> GateGuard<'g>,
        spans: &[Range<usize>],
    ) -> Result<LaunchWatch> {
        let mut spans = spans.to_vec();
        spans.sort_by_key(|s| s.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
        for s in spans {
            match merged.last_mut() {
                Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
                _ => merged.push(s),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // Written before the gate is taken (see `buffer`).
        let mut slots = vec![0; merged.len()];
        slots.clear();
        loop {
            let held = hold();
            let added = watches.add_launch(&merged, &mut slots);
            drop(held);
            match added {
                true => {
                    return Ok(LaunchWatch {
                        watches,
                        gate,
                        slots,
                    })
                }
                false if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                false => {
                    return Err(Error::Os {
                        op: "watch the memory of a launch (every watch slot is taken)",
                        source: std::io::ErrorKind::WouldBlock.into(),
                    })
                }
            }
        }
    }

    /// A buffer for [`lost_into`](Self::lost_into): room for what every span may lose, and
    /// written once, so that filling it while the gate is held neither allocates nor faults
    /// (freed heap memory may be pages only the fault handler can bring back).
    pub(crate) fn buffer(&self) -> Vec<Range<usize>> {
        let mut out = vec![0..0; self.slots.len()];
        out.clear();
        out
    }

    /// Fills `out` (a [`buffer`](Self::buffer), so that nothing is allocated while the gate
    /// is held: a `malloc` may carve a freed chunk whose pages only the fault handler can
    /// bring back) with what the watched spans lost so far, read under `_gate` (the fault
    /// service's gate, held by the caller: no event is being processed).
    pub(crate) fn lost_into(&self, _gate: &GateGuard<'_>, out: &mut Vec<Range<usize>>) {
        out.clear();
        debug_assert!(out.capacity() >= self.slots.len());
        out.extend(self.watches.lost(&self.slots));
    }

    /// Whether the watched spans lost nothing so far, read under `_gate`.
    pub(crate) fn intact_while(&self, _gate: &GateGuard<'_>) -> bool {
        self.watches.lost(&self.slots).next().is_none()
    }

    /// What the watched spans lost so far.
    pub(crate) fn lost(&self) -> Vec<Range<usize>> {
        let mut out = self.buffer();
        let gate = lock(self.gate);
        self.lost_into(&gate, &mut out);
        drop(gate);
        out
    }

    /// `Ok` while nothing the launch uses was unmapped or moved away; else the error that
    /// names the first part that was.
    pub(crate) fn check(&self) -> Result<()> {
        match self.lost().first() {
            None => Ok(()),
            Some(r) => Err(unmapped(r)),
        }
    }
}

/// The error of a launch whose memory at `r` was unmapped or moved away while it ran.
pub(crate) fn unmapped(r: &Range<usize>) -> Error {
    Error::UnsupportedMemory {
        addr: r.start,
        len: r.len(),
        reason: MemoryReason::UnmappedWhileInUse,
    }
}

impl Drop for LaunchWatch {
    fn drop(&mut self) {
        let gate = lock(self.gate);
        self.watches.remove_launch(&self.slots);
        drop(gate);
    }
}

fn lock(gate: &Gate) -> GateGuard<'_> {
    gate.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(w: &Watches, spans: &[Range<usize>]) -> Option<Vec<usize>> {
        let mut slots = Vec::with_capacity(spans.len());
        w.add_launch(spans, &mut slots).then_some(slots)
    }

    #[test]
    fn overlapping_events_kill_only_their_in_place_watches() {
        let w = Watches::new();
        let a = w.add_in_place(0x1000..0x3000).unwrap();
        let b = w.add_in_place(0x5000..0x6000).unwrap();
        w.changed(0x3000..0x5000, Change::Unmapped); // touches neither
        assert!(!w.dead(a) && !w.dead(b));
        w.changed(0x2000..0x2001, Change::Discarded);
        assert!(w.dead(a) && !w.dead(b));
        w.remove(a);
        let c = w.add_in_place(0x8000..0x9000).unwrap();
        assert_eq!(c, a, "a freed slot is reused");
        assert!(!w.dead(c));
    }

    #[test]
    fn a_full_table_says_so() {
        let w = Watches::new();
        let ids: Vec<_> = (0..IN_PLACE_SLOTS)
            .map(|i| w.add_in_place(i..i + 1).unwrap())
            .collect();
        assert!(w.add_in_place(0..1).is_none());
        w.remove(ids[7]);
        assert!(w.add_in_place(0..1).is_some());

        let all: Vec<Range<usize>> = (0..LAUNCH_SLOTS).map(|i| i..i + 1).collect();
        let slots = launch(&w, &all).unwrap();
        let two = &all[..2];
        assert!(launch(&w, two).is_none());
        w.remove_launch(&slots[..1]);
        assert!(launch(&w, two).is_none(), "nothing was kept by the refusal");
        w.remove_launch(&slots[1..2]);
        assert!(launch(&w, two).is_some());
    }

    #[test]
    fn a_launch_span_records_the_hull_of_what_unmaps_took() {
        let w = Watches::new();
        let slots = launch(&w, &[0x10000..0x20000, 0x40000..0x50000]).unwrap();
        w.changed(0x20000..0x40000, Change::Unmapped); // between the spans
        w.changed(0x12000..0x13000, Change::Discarded); // a discard is not a loss
        assert_eq!(w.lost(&slots).count(), 0);
        w.changed(0x14000..0x15000, Change::Unmapped);
        w.changed(0x1e000..0x30000, Change::Unmapped); // sticks out of the span
        let lost: Vec<Range<usize>> = w.lost(&slots).collect();
        assert_eq!(lost, vec![0x14000..0x20000]);
        w.remove_launch(&slots);
        let again = launch(&w, &[0x10000..0x20000, 0x30000..0x31000]).unwrap();
        assert_eq!(w.lost(&again).count(), 0, "a reused slot starts intact");
    }

    #[test]
    fn in_place_and_launch_watches_are_apart() {
        let w = Watches::new();
        let p = w.add_in_place(0x1000..0x2000).unwrap();
        let l = launch(&w, &[0x1000..0x2000, 0x3000..0x4000]).unwrap();
        w.changed(0x1000..0x2000, Change::Discarded);
        assert!(w.dead(p));
        assert_eq!(w.lost(&l).count(), 0);
    }
}
