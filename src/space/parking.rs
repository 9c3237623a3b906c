//! Dropping the host copy of pages whose bytes are on the device, without ever touching a
//! mapping that replaced them.
//!
//! A launch drops the host pages of a written binding once their bytes are uploaded; the
//! next touch faults them back. `madvise(MADV_DONTNEED)` would drop them, but on a range
//! registered with userfaultfd it lets go of the address space's lock, waits until the
//! handler has read its `REMOVE` event, and then looks the range up again: if another thread
//! unmapped the range and mapped new memory there meanwhile (a bug in that program, but one
//! that must not spill over), the new mapping's pages are the ones discarded.
//!
//! So the pages are moved out instead, with `UFFDIO_MOVE`, into a private mapping registered
//! with the same userfaultfd (the parking), and freed there:
//!
//! 1. with the fault service's gate held, no event is read: an `munmap` or `mremap` of a
//!    registered range that has begun cannot return, so nobody can map new memory in its
//!    place yet;
//! 2. the launch's watch (`fault::watch`) says whether an unmap of the range was read
//!    before: then nothing is moved and the caller learns so;
//! 3. the move refuses with `EAGAIN` while any event is unread, and otherwise takes the pages
//!    of the mapping found there under one hold of the address space's lock.
//!
//! Moved pages are kept for reuse where there is room ([`super::kept`]: a fault bringing a
//! large chunk home fills them and moves them back); the rest lands in one of two transit
//! slots and is discarded there with `madvise(MADV_DONTNEED)` by a thread of its own (the
//! reaper), outside the gate, while the mover goes on with the next slot: freeing 64 MiB of
//! pages costs about as long as uploading them, and the launch need not wait for it. Nothing
//! else uses the parking (its `REMOVE` events find no mirror there).
//!
//! Where the kernel has no `UFFDIO_MOVE` (before Linux 6.8), or refuses a move (a page shared
//! with a forked child, an `mlock`ed or executable mapping), the caller falls back to
//! `MADV_DONTNEED` after the same check of the watch: the window above stays open there, and
//! `docs/semantics.md` says so.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::kept::{Kept, Room, KEPT_CAP};
use super::watch::LaunchWatch;
use crate::mirror::PAGE;
use crate::sys;
use crate::trap::uffd::{CopyError, Uffd};

/// Bytes moved out per round (the parking's usable size).
const WINDOW: usize = 32 << 20;
/// A huge page: the parking is aligned to it, and each move lands at the source's offset
/// within one, so that a transparent huge page moves whole.
const HUGE: usize = 2 << 20;

/// Bytes of one transit slot (each move lands within `HUGE` of its start).
const SLOT: usize = WINDOW + HUGE;
/// Transit slots: one being filled while the reaper frees the other.
const SLOTS: usize = 2;

/// Bytes of the parking mapping from its first aligned byte: the transit slots, then the kept
/// pages.
const SPAN: usize = SLOTS * SLOT + KEPT_CAP;

/// What the reaper looks after: the transit slots' contents, and the kept pages, which it
/// frees once a second has passed without their use ([`IDLE`]).
struct Transit {
    /// Per slot: the parked range not yet freed (`len` 0: empty).
    parked: Mutex<[(usize, usize); SLOTS]>,
    changed: Condvar,
    /// The pages kept for reuse, in the last `KEPT_CAP` bytes of the parking.
    kept: Kept,
}

/// Kept pages nobody took or added for this long are freed.
const IDLE: Duration = Duration::from_secs(1);

impl Transit {
    fn parked(&self) -> std::sync::MutexGuard<'_, [(usize, usize); SLOTS]> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty slot (waiting for the reaper while both hold pages).
    fn empty_slot(&self) -> usize {
        let mut parked = self.parked();
        loop {
            if let Some(s) = parked.iter().position(|&(_, len)| len == 0) {
                return s;
            }
            parked = self
                .changed
                .wait(parked)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Hands `len` bytes parked at `addr` in slot `s` to the reaper.
    fn park(&self, s: usize, addr: usize, len: usize) {
        self.parked()[s] = (addr, len);
        self.changed.notify_all();
    }

    /// The reaper: frees whatever is parked, and kept pages left unused for [`IDLE`], for
    /// ever.
    fn reap(&self) {
        let mut seen = self.kept.uses();
        let mut parked = self.parked();
        loop {
            let Some(s) = parked.iter().position(|&(_, len)| len > 0) else {
                let (guard, waited) = self
                    .changed
                    .wait_timeout(parked, IDLE)
                    .unwrap_or_else(PoisonError::into_inner);
                parked = guard;
                if waited.timed_out() {
                    drop(parked);
                    self.kept.free_unused(&mut seen, |addr, len| {
                        // SAFETY: the chunk is held by this call: nothing else uses its pages.
                        unsafe { sys::madvise_dontneed(addr, len) }.is_ok()
                    });
                    parked = self.parked();
                }
                continue;
            };
            let (addr, len) = parked[s];
            drop(parked);
            // SAFETY: pages parked in a transit slot belong to nobody: their owner's bytes
            // are on the device, and the slot is not used again until this marks it empty.
            if let Err(e) = unsafe { sys::madvise_dontneed(addr, len) } {
                tracing::error!(error = %e, "freeing parked pages failed");
            }
            parked = self.parked();
            parked[s] = (0, 0);
            self.changed.notify_all();
        }
    }
}

/// The parking mapping.
pub(crate) struct Parking {
    /// First byte, `HUGE`-aligned; `SPAN` bytes are mapped from here.
    base: usize,
    /// The transit slots, in the first `SLOTS * SLOT` bytes, and the kept pages.
    transit: Arc<Transit>,
    /// One mover at a time.
    lock: Mutex<()>,
}

/// How a [`Parking::drop_pages`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Every page of the range is gone from the host.
    All,
    /// The launch's watch says part of its memory was unmapped: the first `done` bytes were
    /// dropped, the rest is untouched.
    Lost { done: usize },
    /// The kernel refused to move pages here (no `UFFDIO_MOVE`, or `EINVAL`/`EBUSY`): the
    /// first `done` bytes were dropped; the caller drops the rest its own way.
    Refused { done: usize },
}

impl Parking {
    /// Maps and registers the parking with `uffd` (which must have `UFFD_FEATURE_MOVE`).
    pub(crate) fn open(uffd: &Uffd) -> std::io::Result<Parking> {
        let map = sys::mmap_anon(SPAN + HUGE)?;
        let base = (map.as_ptr() as usize).next_multiple_of(HUGE);
        // A forked child gets none of it: the kept pages stay this process's alone, which a
        // move out of them needs (`EBUSY` for a page shared with a child).
        // SAFETY: advice on this module's own fresh mapping.
        let set_up = unsafe { sys::madvise_dontfork(base, SPAN) }
            .and_then(|()| uffd.register(base, SPAN, true, true));
        if let Err(e) = set_up {
            // SAFETY: the mapping is this function's own and nothing refers to it.
            let _ = unsafe { sys::munmap(map, SPAN + HUGE) };
            return Err(e);
        }
        let transit = Arc::new(Transit {
            parked: Mutex::new([(0, 0); SLOTS]),
            changed: Condvar::new(),
            kept: Kept::new(base + SLOTS * SLOT),
        });
        let reaper = transit.clone();
        std::thread::Builder::new()
            .name("vkhmm-reaper".into())
            .spawn(move || reaper.reap())?;
        Ok(Parking {
            base,
            transit,
            lock: Mutex::new(()),
        })
    }

    /// Whether `addr` lies in the parking (its events concern no mirrored memory).
    pub(crate) fn contains(&self, addr: usize) -> bool {
        (self.base..self.base + SPAN).contains(&addr)
    }

    /// The pages kept for reuse.
    pub(crate) fn kept(&self) -> &Kept {
        &self.transit.kept
    }

    /// Drops the host pages of `range` (page-aligned, claimed by the caller, whose bytes are
    /// valid on the device) as the module doc says, in rounds of at most [`WINDOW`] bytes.
    pub(crate) fn drop_pages(
        &self,
        uffd: &Uffd,
        gate: &super::Gate,
        watch: &LaunchWatch,
        range: Range<usize>,
    ) -> std::io::Result<Dropped> {
        let _one = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Kept pages a fault left behind are freed first (here, not in the handler: the
        // discard waits for the handler to read its event).
        self.kept().free_spoilt(|addr, len| {
            // SAFETY: a spoilt chunk is held by this call: nothing else uses its pages.
            unsafe { sys::madvise_dontneed(addr, len) }.is_ok()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut at = range.start;
        // One move must lie within one mapping on each side (`EINVAL` otherwise), and the
        // program may have split its mapping since the mirror recorded it: a refused move of
        // more than a page is retried in halves, as `migrate::copy_piece` does for copies.
        let mut limit = WINDOW;
        let mut spins = 0u32;
        // Whether kept pages may take the next round (not after a move there was refused:
        // that round goes through a transit slot, which takes holes and tells why).
        let mut keep = true;
        while at < range.end {
            let done = at - range.start;
            let len = (range.end - at).min(limit);
            // Where the round's pages go, chosen outside the gate: waiting for the reaper to
            // empty a transit slot needs the handler to read the reaper's event.
            let to = match keep.then(|| self.kept().room()).flatten() {
                Some(room) => To::Kept(room),
                None => To::Transit(self.transit.empty_slot()),
            };
            keep = true;
            let held = gate.write().unwrap_or_else(PoisonError::into_inner);
            if !watch.intact_while(&held) {
                return Ok(Dropped::Lost { done });
            }
            let (dst, len) = match &to {
                To::Kept(room) => (room.addr(), len.min(room.len())),
                To::Transit(slot) => (self.base + slot * SLOT + at % HUGE, len),
            };
            let moved = match &to {
                // SAFETY: the caller owns the claimed pages of `at..at + len` and their bytes
                // are valid on the device; the room's pages are absent and held by this
                // thread; a transit slot is empty (the reaper frees it before it is used
                // again), and the parking's pages are this module's alone.
                To::Kept(_) => unsafe { uffd.move_whole(dst, at, len, false) },
                // SAFETY: as above.
                To::Transit(_) => unsafe { uffd.move_pages(dst, at, len) },
            };
            let n = moved.as_ref().map_or_else(CopyError::copied, |&n| n);
            // A page swapped out while write-protected moves as a swap entry that keeps its
            // protection: a copy into it after swap-in would fault into the handler, which
            // may be the thread copying. So kept pages lose protection as they arrive.
            let unprotected = matches!(to, To::Transit(_))
                || n == 0
                || uffd.write_protect(dst, n, false, false).is_ok();
            drop(held);
            let again = match moved {
                Ok(_) => false,
                Err(CopyError::Again { .. }) => true,
                // Refused into kept pages (a hole, a split mapping, a shared page): the round
                // goes again through a transit slot.
                Err(_) if matches!(to, To::Kept(_)) => {
                    keep = false;
                    false
                }
                // The mapping is gone from under the move (its unmap was read since the check
                // above): the watch says so next round.
                Err(CopyError::Gone(_)) => true,
                Err(CopyError::Failed(e)) if e == Errno::INVAL && len > PAGE => {
                    limit = (len / 2).next_multiple_of(PAGE);
                    false
                }
                Err(CopyError::Exists { .. } | CopyError::Failed(_)) => {
                    return Ok(Dropped::Refused { done })
                }
            };
            match to {
                // Still protected, perhaps: never taken; the next launch frees it.
                To::Kept(room) if !unprotected => room.spoil(),
                To::Kept(room) => room.filled(n),
                To::Transit(slot) if n > 0 => self.transit.park(slot, dst, n),
                To::Transit(_) => {}
            }
            if n > 0 {
                at += n;
                limit = (limit * 2).min(WINDOW);
            }
            if again {
                if Instant::now() > deadline {
                    return Ok(Dropped::Refused {
                        done: at - range.start,
                    });
                }
                // An event is unread: let the handler read it.
                backoff(&mut spins);
            }
        }
        Ok(Dropped::All)
    }
}

/// Where a round of [`Parking::drop_pages`] moves its pages.
enum To<'a> {
    /// Into kept pages, for reuse.
    Kept(Room<'a>),
    /// Into this transit slot, for the reaper to free.
    Transit(usize),
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}
