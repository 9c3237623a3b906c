//! Host pages kept for reuse: pages a launch moved out of a buffer, filled again with device
//! bytes and moved back when the CPU faults a buffer home.
//!
//! `UFFDIO_COPY` allocates, charges and maps a fresh page for every 4 KiB it fills; on this
//! kind of machine that runs at 3–4 GB/s, a fifth of `memcpy`. A page that is already
//! allocated costs a `memcpy` into it and a `UFFDIO_MOVE` of its page-table entry: with the
//! read that follows, about twice as fast end to end (the `bound:` rows of `vkhmm bench
//! --only workloads`; in a process whose other threads run, each move also flushes their
//! TLBs, which costs part of that). The launch path
//! has such pages: the host copy it drops once a written binding's bytes are on the device
//! ([`super::parking`]). Up to [`KEPT_CAP`] bytes of them stay here instead of being freed;
//! a fault that brings a large chunk home takes them.
//!
//! The kept pages live in [`CHUNKS`] chunks of 2 MiB at the end of the parking mapping,
//! each filled from its start: a chunk's state is one atomic word (pages filled, whether a
//! thread holds it, whether it was spoilt). Whoever holds a chunk alone moves pages into or
//! out of it, so the handler, its assistant, a bulk move home and the launch that keeps
//! pages each work in a chunk of their own, without a lock:
//!
//! - keeping ([`Kept::room`]): the top of a chunk with room receives pages, moved there
//!   without holes, so the filled prefix is always present, and unprotected at once (a page
//!   swapped out while write-protected would keep its protection, and a copy into it would
//!   fault into the handler);
//! - taking ([`Kept::take`]): the top pages of a filled chunk are written and moved out;
//! - a move out that stops part-way leaves pages behind in the middle of the chunk: it is
//!   marked spoilt and no longer used until a launch frees its pages
//!   ([`Kept::free_spoilt`]), outside the fault handler (`MADV_DONTNEED` on a registered range
//!   waits for the handler to read its event).
//!
//! Kept pages nobody used for a second are freed by the parking's reaper thread
//! ([`Kept::free_unused`]), so a program that stops migrating gets its memory back.
//!
//! Pages come home from here writable (`UFFDIO_MOVE` places writable entries), so a chunk
//! taken from here comes home as the only copy (`Host`), as Linux HMM and CUDA bring pages
//! home; see `docs/semantics.md`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::mirror::PAGE;

/// Most bytes kept (the host memory a migration may leave allocated for reuse).
pub(crate) const KEPT_CAP: usize = 64 << 20;
/// Bytes per chunk.
pub(crate) const CHUNK: usize = 2 << 20;
/// Chunks kept.
pub(crate) const CHUNKS: usize = KEPT_CAP / CHUNK;
/// Pages per chunk.
const CHUNK_PAGES: u32 = (CHUNK / PAGE) as u32;
/// A thread holds the chunk.
const HELD: u32 = 1 << 16;
/// Pages were left behind in the chunk's middle: nothing uses it until it is freed.
const SPOILT: u32 = 1 << 17;

/// The kept pages' bookkeeping (the pages themselves live at `base`).
pub(crate) struct Kept {
    /// First byte of chunk 0 (aligned to a chunk).
    base: usize,
    /// Per chunk: pages filled from its start, plus `HELD` and `SPOILT`.
    chunks: [AtomicU32; CHUNKS],
    /// Chunks held to keep or take pages so far (how [`Kept::free_unused`] sees use).
    uses: AtomicU64,
}

/// A chunk held for receiving pages at `addr` (up to `room` bytes); see [`Kept::room`].
pub(crate) struct Room<'a> {
    kept: &'a Kept,
    chunk: usize,
    filled: u32,
}

/// Kept pages held for leaving: `len` bytes at `addr`, present and writable; see
/// [`Kept::take`].
pub(crate) struct Lease<'a> {
    kept: &'a Kept,
    chunk: usize,
    /// First page taken (the chunk keeps the pages below it).
    from: u32,
    pages: u32,
}

impl Kept {
    /// Bookkeeping for chunks at `base` (aligned to [`CHUNK`]; [`KEPT_CAP`] bytes), all
    /// empty.
    pub(crate) fn new(base: usize) -> Kept {
        debug_assert!(base.is_multiple_of(CHUNK));
        Kept {
            base,
            chunks: [const { AtomicU32::new(0) }; CHUNKS],
            uses: AtomicU64::new(0),
        }
    }

    fn chunk_addr(&self, chunk: usize) -> usize {
        self.base + chunk * CHUNK
    }

    /// Holds chunk `c` if `ok` accepts its state; returns the state it had.
    fn hold(&self, c: usize, ok: impl Fn(u32) -> bool) -> Option<u32> {
        let word = &self.chunks[c];
        let state = word.load(Ordering::Relaxed);
        if state & (HELD | SPOILT) != 0 || !ok(state) {
            return None;
        }
        let held = word
            .compare_exchange(state, state | HELD, Ordering::Acquire, Ordering::Relaxed)
            .ok();
        if held.is_some() {
            self.uses.fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// How many times a chunk was held so far.
    pub(crate) fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Frees every kept page with `free` (given a chunk's filled part) if no chunk was held
    /// since `seen` (a [`Kept::uses`] count, updated here): kept pages a program stopped
    /// using go back to the system. A chunk whose `free` fails keeps its pages.
    pub(crate) fn free_unused(&self, seen: &mut u64, mut free: impl FnMut(usize, usize) -> bool) {
        let now = self.uses();
        if now != *seen {
            *seen = now;
            return;
        }
        for c in 0..CHUNKS {
            if let Some(filled) = self.hold(c, |s| s > 0) {
                let ok = free(self.chunk_addr(c), filled as usize * PAGE);
                self.put(c, if ok { 0 } else { filled });
            }
        }
        *seen = self.uses();
    }

    /// Gives chunk `c` back with `filled` pages (or spoilt).
    fn put(&self, c: usize, state: u32) {
        self.chunks[c].store(state, Ordering::Release);
    }

    /// A chunk with room for more pages, held: partly filled ones first, so that chunks
    /// fill up and those taking pages find long runs. `None` when every chunk is full or
    /// held.
    pub(crate) fn room(&self) -> Option<Room<'_>> {
        let partly = |s: u32| s > 0 && s < CHUNK_PAGES;
        let empty = |s: u32| s == 0;
        [partly as fn(u32) -> bool, empty]
            .into_iter()
            .find_map(|want| {
                (0..CHUNKS).find_map(|c| {
                    self.hold(c, want).map(|filled| Room {
                        kept: self,
                        chunk: c,
                        filled,
                    })
                })
            })
    }

    /// Up to `pages` kept pages from the top of one chunk, held; `None` when none is kept
    /// (or every chunk that has some is held).
    pub(crate) fn take(&self, pages: usize) -> Option<Lease<'_>> {
        if pages == 0 {
            return None;
        }
        (0..CHUNKS).find_map(|c| {
            let filled = self.hold(c, |s| s > 0)?;
            let n = filled.min(u32::try_from(pages).unwrap_or(u32::MAX));
            Some(Lease {
                kept: self,
                chunk: c,
                from: filled - n,
                pages: n,
            })
        })
    }

    /// Bytes kept now (a snapshot).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|w| (w.load(Ordering::Relaxed) & (HELD - 1)) as usize * PAGE)
            .sum()
    }

    /// Frees the pages of every spoilt chunk with `free` (given the chunk's address and
    /// length), then makes it empty; a chunk whose `free` fails stays spoilt.
    pub(crate) fn free_spoilt(&self, mut free: impl FnMut(usize, usize) -> bool) {
        for c in 0..CHUNKS {
            let word = &self.chunks[c];
            if word
                .compare_exchange(SPOILT, SPOILT | HELD, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let ok = free(self.chunk_addr(c), CHUNK);
                self.put(c, if ok { 0 } else { SPOILT });
            }
        }
    }
}

impl Room<'_> {
    /// Where the next kept page goes.
    pub(crate) fn addr(&self) -> usize {
        self.kept.chunk_addr(self.chunk) + self.filled as usize * PAGE
    }

    /// Bytes that fit.
    pub(crate) fn len(&self) -> usize {
        (CHUNK_PAGES - self.filled) as usize * PAGE
    }

    /// Gives the chunk back with `moved` more bytes (a multiple of a page, moved to
    /// [`Room::addr`] without holes).
    pub(crate) fn filled(self, moved: usize) {
        debug_assert!(moved.is_multiple_of(PAGE) && moved <= self.len());
        let filled = self.filled + (moved / PAGE) as u32;
        self.kept.put(self.chunk, filled);
        std::mem::forget(self);
    }
}

impl Room<'_> {
    /// Gives the chunk back spoilt: pages moved in that must not be taken (the next launch
    /// frees them).
    pub(crate) fn spoil(self) {
        self.kept.put(self.chunk, SPOILT);
        std::mem::forget(self);
    }
}

impl Drop for Room<'_> {
    /// Nothing moved in.
    fn drop(&mut self) {
        self.kept.put(self.chunk, self.filled);
    }
}

impl Lease<'_> {
    /// First byte of the pages taken.
    pub(crate) fn addr(&self) -> usize {
        self.kept.chunk_addr(self.chunk) + self.from as usize * PAGE
    }

    /// Bytes taken.
    pub(crate) fn len(&self) -> usize {
        self.pages as usize * PAGE
    }

    /// Gives the chunk back after `moved` bytes of the lease went out (from its start): all
    /// of them leaves the pages below, none leaves the chunk as it was; any other number
    /// leaves pages behind, and the chunk spoilt.
    pub(crate) fn moved(self, moved: usize) {
        let state = match moved {
            0 => self.from + self.pages,
            m if m == self.len() => self.from,
            _ => SPOILT,
        };
        self.kept.put(self.chunk, state);
        std::mem::forget(self);
    }
}

impl Drop for Lease<'_> {
    /// Not known what went out: spoilt.
    fn drop(&mut self) {
        self.kept.put(self.chunk, SPOILT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: usize = 64 * CHUNK;

    #[test]
    fn pages_fill_partly_filled_chunks_first_and_leave_from_the_top() {
        let k = Kept::new(BASE);
        let r = k.room().unwrap();
        assert_eq!((r.addr(), r.len()), (BASE, CHUNK));
        r.filled(3 * PAGE);
        let r = k.room().unwrap();
        assert_eq!(r.addr(), BASE + 3 * PAGE, "the partly filled chunk first");
        r.filled(CHUNK - 3 * PAGE);
        let r = k.room().unwrap();
        assert_eq!(r.addr(), BASE + CHUNK, "a full chunk takes no more");
        drop(r);
        assert_eq!(k.bytes(), CHUNK);
        let l = k.take(16).unwrap();
        assert_eq!((l.addr(), l.len()), (BASE + CHUNK - 16 * PAGE, 16 * PAGE));
        assert!(k.take(1).is_none(), "the only filled chunk is held");
        l.moved(16 * PAGE);
        assert_eq!(k.bytes(), CHUNK - 16 * PAGE);
        let l = k.take(10_000).unwrap();
        assert_eq!((l.addr(), l.len()), (BASE, CHUNK - 16 * PAGE));
        let n = l.len();
        l.moved(n);
        assert!(k.take(1).is_none());
        assert_eq!(k.bytes(), 0);
    }

    #[test]
    fn a_move_that_stops_part_way_spoils_the_chunk_until_freed() {
        let k = Kept::new(BASE);
        k.room().unwrap().filled(8 * PAGE);
        let l = k.take(8).unwrap();
        l.moved(3 * PAGE);
        assert!(k.take(1).is_none(), "spoilt: nothing taken from it");
        assert_eq!(k.room().unwrap().addr(), BASE + CHUNK, "nor kept in it");
        let mut freed = vec![];
        k.free_spoilt(|a, n| {
            freed.push((a, n));
            true
        });
        assert_eq!(freed, [(BASE, CHUNK)]);
        assert_eq!(k.room().unwrap().addr(), BASE, "empty again");
    }

    #[test]
    fn a_move_of_nothing_keeps_the_chunk_and_a_spoilt_room_is_never_taken() {
        let k = Kept::new(BASE);
        k.room().unwrap().filled(8 * PAGE);
        k.take(8).unwrap().moved(0);
        assert_eq!(k.bytes(), 8 * PAGE, "every leased page still there");
        let r = k.room().unwrap();
        assert_eq!(r.addr(), BASE + 8 * PAGE);
        r.spoil();
        assert!(k.take(1).is_none(), "spoilt");
    }

    #[test]
    fn kept_pages_are_freed_only_after_a_period_without_use() {
        let k = Kept::new(BASE);
        let mut seen = k.uses();
        k.room().unwrap().filled(8 * PAGE);
        let mut freed = vec![];
        k.free_unused(&mut seen, |a, n| {
            freed.push((a, n));
            true
        });
        assert!(freed.is_empty(), "used since the last look");
        k.free_unused(&mut seen, |a, n| {
            freed.push((a, n));
            true
        });
        assert_eq!(freed, [(BASE, 8 * PAGE)]);
        assert_eq!(k.bytes(), 0);
        assert_eq!(k.room().unwrap().addr(), BASE, "empty again");
    }

    #[test]
    fn a_dropped_lease_spoils_and_a_dropped_room_keeps_the_chunk() {
        let k = Kept::new(BASE);
        k.room().unwrap().filled(4 * PAGE);
        drop(k.room().unwrap());
        assert_eq!(k.bytes(), 4 * PAGE);
        drop(k.take(2).unwrap());
        assert!(k.take(1).is_none());
        let mut n = 0;
        k.free_spoilt(|_, _| {
            n += 1;
            false
        });
        assert_eq!(n, 1);
        assert!(k.take(1).is_none(), "a failed free leaves it spoilt");
    }
}
