//! An extent: a contiguous run of mirrored host pages with one contiguous device copy.
//!
//! The range and the device copy of an extent never change after creation; what changes is
//! the per-page state ([`PageCell`]), the LRU stamp and the fault handler's streaming state.
//! Growing or joining extents means building a new one and retiring the old ones
//! ([`super::map`]), so a reader holding an extent never sees its geometry move.
//!
//! `D` is the device copy (a `DeviceBlock` with its device in the runtime, a plain value in
//! the tests): this module never looks inside it.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::page::{PageCell, Residence};
use super::policy::Access;
use super::rewrite::RewriteGuess;
use super::{Residency, PAGE};

/// A contiguous run of mirrored pages and its device copy.
pub struct Extent<D> {
    start: usize,
    cells: Box<[PageCell]>,
    device: D,
    last_use: AtomicU64,
    copy_streams: Streams,
    unprotect_streams: Streams,
    cpu_faults: AtomicU64,
    rewrites: RewriteGuess,
    read_mostly: AtomicBool,
}

/// Streams of faults tracked per extent and kind: a loop that walks two buffers side by side
/// (`x.iter().zip(&y)`), or threads that each walk their part of one buffer, are several
/// sequential touchers in one extent when the buffers lie next to each other.
pub const STREAMS: usize = 4;

impl<D> Extent<D> {
    /// An extent over `pages` pages from the page-aligned address `start`, each page in the
    /// residence `init` gives it, not owned.
    pub fn new(start: usize, pages: usize, device: D, init: impl Fn(usize) -> Residence) -> Self {
        debug_assert_eq!(start % PAGE, 0, "extent start must be page-aligned");
        Extent {
            start,
            cells: (0..pages).map(|i| PageCell::with(init(i))).collect(),
            device,
            last_use: AtomicU64::new(0),
            copy_streams: Streams::new(),
            unprotect_streams: Streams::new(),
            cpu_faults: AtomicU64::new(0),
            rewrites: RewriteGuess::default(),
            read_mostly: AtomicBool::new(false),
        }
    }

    /// First byte.
    pub fn start(&self) -> usize {
        self.start
    }

    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.start + self.cells.len() * PAGE
    }

    /// The byte range.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end()
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.cells.len()
    }

    /// Size in bytes (also the size of the device copy that matters).
    pub fn bytes(&self) -> usize {
        self.cells.len() * PAGE
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: usize) -> bool {
        addr >= self.start && addr < self.end()
    }

    /// Index of the page holding `addr` (which must lie inside).
    pub fn page_index(&self, addr: usize) -> usize {
        debug_assert!(self.contains(addr));
        (addr - self.start) / PAGE
    }

    /// Address of page `index`.
    pub fn page_addr(&self, index: usize) -> usize {
        self.start + index * PAGE
    }

    /// Byte offset of `addr` from the start (also its offset in the device copy).
    pub fn offset_of(&self, addr: usize) -> u64 {
        (addr - self.start) as u64
    }

    /// Page indices covering the byte range `range` clipped to this extent.
    pub fn page_span(&self, range: &Range<usize>) -> Range<usize> {
        let lo = range.start.max(self.start);
        let hi = range.end.min(self.end());
        if lo >= hi {
            return 0..0;
        }
        (lo - self.start) / PAGE..(hi - self.start).div_ceil(PAGE)
    }

    /// The state cell of page `index`.
    pub fn cell(&self, index: usize) -> &PageCell {
        &self.cells[index]
    }

    /// All state cells.
    #[cfg(test)]
    pub fn cells(&self) -> &[PageCell] {
        &self.cells
    }

    /// The device copy.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Marks the extent used at `stamp` (a monotonically increasing launch counter).
    pub fn touch(&self, stamp: u64) {
        self.last_use.fetch_max(stamp, Ordering::Relaxed);
    }

    /// The latest stamp given to [`touch`](Self::touch).
    pub fn last_use(&self) -> u64 {
        self.last_use.load(Ordering::Relaxed)
    }

    /// Counts one CPU fault served on this extent (the fault handler; for thrash
    /// detection, `mirror::thrash`).
    pub fn note_cpu_fault(&self) {
        self.cpu_faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the CPU rewrites this extent's inputs between launches ([`RewriteGuess`]).
    pub fn rewrites(&self) -> &RewriteGuess {
        &self.rewrites
    }

    /// Records whether the program advised (part of) this extent `ReadMostly`, for the
    /// fault handler, which never locks the advice itself.
    pub fn set_read_mostly(&self, on: bool) {
        self.read_mostly.store(on, Ordering::Relaxed);
    }

    /// Whether (part of) this extent is advised `ReadMostly`: CPU reads leave its pages
    /// `Shared` however they come home.
    pub fn reads_mostly(&self) -> bool {
        self.read_mostly.load(Ordering::Relaxed)
    }

    /// CPU faults served on this extent since it was made.
    pub fn cpu_faults(&self) -> u64 {
        self.cpu_faults.load(Ordering::Relaxed)
    }

    /// Page counts by residence over `pages` (indices).
    pub fn residency(&self, pages: Range<usize>) -> Residency {
        let mut r = Residency::default();
        for cell in &self.cells[pages] {
            match cell.load().residence() {
                Residence::Host => r.host += 1,
                Residence::Shared => r.shared += 1,
                Residence::Device => r.device += 1,
            }
        }
        r
    }

    /// True when every page was unmapped or discarded and nobody owns any: the extent only
    /// holds dead device memory.
    pub fn all_gone(&self) -> bool {
        self.cells.iter().all(|c| {
            let b = c.load();
            b.gone() && !b.busy()
        })
    }

    /// True when no page holds data that exists only on the device, and nobody owns any.
    #[cfg(test)]
    pub fn holds_no_device_only_data(&self) -> bool {
        self.cells.iter().all(|c| {
            let b = c.load();
            b.residence() != Residence::Device && !b.busy()
        })
    }

    /// The fault handler's streaming state for faults of kind `access`, one entry per
    /// stream: (the page a sequential toucher would fault on next, the window size in pages
    /// last used; 0 for none yet). The fault handler reads and writes it; a launch resets it
    /// ([`reset_streams`](Self::reset_streams)). A hint only: a race loses a window size.
    pub fn streams(&self, access: Access) -> [(usize, usize); STREAMS] {
        let s = self.streams_of(access);
        std::array::from_fn(|i| {
            (
                s.slots[i].next.load(Ordering::Relaxed),
                s.slots[i].pages.load(Ordering::Relaxed),
            )
        })
    }

    /// Stores stream `slot`'s state for faults of kind `access`.
    pub fn set_stream(&self, access: Access, slot: usize, next: usize, pages: usize) {
        let s = &self.streams_of(access).slots[slot % STREAMS];
        s.next.store(next, Ordering::Relaxed);
        s.pages.store(pages, Ordering::Relaxed);
    }

    /// A stream slot for a fault that continues none: the one with the smallest window (an
    /// unused one, or an isolated touch's), taking turns among equals, so that scattered
    /// touches replace each other and not a grown stream.
    pub fn spare_stream(&self, access: Access) -> usize {
        let s = self.streams_of(access);
        let turn = s.turn.fetch_add(1, Ordering::Relaxed);
        (0..STREAMS)
            .map(|k| (turn + k) % STREAMS)
            .min_by_key(|&i| s.slots[i].pages.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Forgets every stream: a launch moved pages of the extent, so where the CPU faulted
    /// before says nothing about where it will fault next (a stream's last window may be
    /// `Device` again, and a touch in it is no longer near anything brought back).
    pub fn reset_streams(&self) {
        for access in [Access::Copy, Access::Unprotect] {
            for s in &self.streams_of(access).slots {
                s.next.store(usize::MAX, Ordering::Relaxed);
                s.pages.store(0, Ordering::Relaxed);
            }
        }
    }

    fn streams_of(&self, access: Access) -> &Streams {
        match access {
            Access::Copy => &self.copy_streams,
            Access::Unprotect => &self.unprotect_streams,
        }
    }
}

/// An extent's streams of one kind, and whose turn it is to be replaced.
struct Streams {
    slots: [Stream; STREAMS],
    turn: AtomicUsize,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            slots: std::array::from_fn(|_| Stream::new()),
            turn: AtomicUsize::new(0),
        }
    }
}

/// Where a run of sequential faults of one kind stands.
struct Stream {
    next: AtomicUsize,
    pages: AtomicUsize,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            next: AtomicUsize::new(usize::MAX),
            pages: AtomicUsize::new(0),
        }
    }
}

impl<D> std::fmt::Debug for Extent<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extent")
            .field("start", &format_args!("{:#x}", self.start))
            .field("pages", &self.cells.len())
            .field("residency", &self.residency(0..self.cells.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_stream_is_never_a_grown_one_while_a_smaller_exists() {
        let e = Extent::new(0, 4, (), |_| Residence::Device);
        e.set_stream(Access::Copy, 0, 100, 512);
        e.set_stream(Access::Copy, 1, 200, 256);
        for _ in 0..8 {
            let s = e.spare_stream(Access::Copy);
            assert!(s >= 2, "took grown stream {s}");
            e.set_stream(Access::Copy, s, 7, 1);
        }
        e.set_stream(Access::Copy, 2, 300, 64);
        e.set_stream(Access::Copy, 3, 400, 32);
        assert_eq!(e.spare_stream(Access::Copy), 3, "the smallest goes");
        e.reset_streams();
        assert!(e.streams(Access::Copy).iter().all(|&(_, n)| n == 0));
    }

    #[test]
    fn geometry() {
        let e = Extent::new(0x10000, 4, (), |_| Residence::Host);
        assert_eq!(e.range(), 0x10000..0x14000);
        assert!(e.contains(0x13fff));
        assert!(!e.contains(0x14000));
        assert_eq!(e.page_index(0x12345), 2);
        assert_eq!(e.page_span(&(0x10010..0x12001)), 0..3);
        assert_eq!(e.page_span(&(0x0..0x10000)), 0..0);
        assert_eq!(e.page_span(&(0x0..0x20000)), 0..4);
        assert_eq!(e.offset_of(0x11008), 0x1008);
    }

    #[test]
    fn residency_counts_and_gone() {
        let e = Extent::new(0, 3, (), |i| {
            [Residence::Host, Residence::Shared, Residence::Device][i]
        });
        assert_eq!(
            e.residency(0..3),
            Residency {
                host: 1,
                shared: 1,
                device: 1
            }
        );
        assert!(!e.holds_no_device_only_data());
        for c in e.cells() {
            c.mark_gone();
        }
        assert!(e.all_gone());
        assert!(e.holds_no_device_only_data());
        assert_eq!(
            e.residency(0..3),
            Residency {
                host: 3,
                shared: 0,
                device: 0
            }
        );
    }

    #[test]
    fn touch_keeps_the_latest_stamp() {
        let e = Extent::new(0, 1, (), |_| Residence::Host);
        e.touch(5);
        e.touch(3);
        assert_eq!(e.last_use(), 5);
    }
}
