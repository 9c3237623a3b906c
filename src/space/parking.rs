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
//! Parked pages are discarded with `madvise(MADV_DONTNEED)` on the parking, which nothing
//! else uses (its `REMOVE` event finds no mirror there), outside the gate.
//!
//! Where the kernel has no `UFFDIO_MOVE` (before Linux 6.8), or refuses a move (a page shared
//! with a forked child, an `mlock`ed or executable mapping), the caller falls back to
//! `MADV_DONTNEED` after the same check of the watch: the window above stays open there, and
//! `docs/semantics.md` says so.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::watch::LaunchWatch;
use crate::mirror::PAGE;
use crate::sys;
use crate::trap::uffd::{CopyError, Uffd};

/// Bytes moved out per round (the parking's usable size).
const WINDOW: usize = 32 << 20;
/// A huge page: the parking is aligned to it, and each move lands at the source's offset
/// within one, so that a transparent huge page moves whole.
const HUGE: usize = 2 << 20;

/// The parking mapping.
pub(crate) struct Parking {
    /// First byte, `HUGE`-aligned; `WINDOW + HUGE` bytes are mapped from here.
    base: usize,
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
        let map = sys::mmap_anon(WINDOW + 2 * HUGE)?;
        let base = (map.as_ptr() as usize).next_multiple_of(HUGE);
        uffd.register(base, WINDOW + HUGE, true, true)?;
        Ok(Parking {
            base,
            lock: Mutex::new(()),
        })
    }

    /// Whether `addr` lies in the parking (its events concern no mirrored memory).
    pub(crate) fn contains(&self, addr: usize) -> bool {
        (self.base..self.base + WINDOW + HUGE).contains(&addr)
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
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut at = range.start;
        // One move must lie within one mapping on each side (`EINVAL` otherwise), and the
        // program may have split its mapping since the mirror recorded it: a refused move of
        // more than a page is retried in halves, as `migrate::copy_piece` does for copies.
        let mut limit = WINDOW;
        let mut spins = 0u32;
        while at < range.end {
            let done = at - range.start;
            let len = (range.end - at).min(limit);
            let dst = self.base + at % HUGE;
            let held = gate.write().unwrap_or_else(PoisonError::into_inner);
            if !watch.intact_while(&held) {
                return Ok(Dropped::Lost { done });
            }
            // SAFETY: the caller owns the claimed pages of `at..at + len` and their bytes are
            // valid on the device; the parking's pages are this module's alone, and empty
            // (each round frees what it parked before the next).
            let moved = unsafe { uffd.move_pages(dst, at, len) };
            drop(held);
            let (n, again) = match moved {
                Ok(n) => (n, false),
                Err(CopyError::Again { copied }) => (copied, true),
                // The mapping is gone from under the move (its unmap was read since the check
                // above): the watch says so next round.
                Err(CopyError::Gone(_)) => (0, true),
                Err(CopyError::Failed(e)) if e == Errno::INVAL && len > PAGE => {
                    limit = (len / 2).next_multiple_of(PAGE);
                    (0, false)
                }
                Err(CopyError::Exists { .. } | CopyError::Failed(_)) => {
                    return Ok(Dropped::Refused { done })
                }
            };
            if n > 0 {
                // SAFETY: the parking's own pages, just moved in: nothing refers to them.
                unsafe { sys::madvise_dontneed(dst, n) }?;
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

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}
