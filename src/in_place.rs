//! `Advice::AccessInPlace`: ranges the device reads and writes where they are.
//!
//! A range advised `AccessInPlace` leaves the mirror: its extents are brought home and
//! dropped, and it is imported into the device as one buffer (`device::HostImport`,
//! `VK_EXT_external_memory_host`). A launch binding that lies inside such a range binds the
//! import at the binding's offset: no page moves, none is trapped, every page stays `Host`
//! (the CPU and the kernel see the same bytes; the launch's fence orders them). A binding
//! that only partly overlaps one is refused: its other pages would migrate while these
//! stay, and one buffer cannot be both.
//!
//! The set of ranges belongs to the launch path (it lives in the runtime's `Worker`, under
//! the worker lock): an import is only dropped under that lock, which settles the launch in
//! flight first, so no submitted kernel ever uses a freed import. The fault handler never
//! touches it; it only marks the range's watch dead when the program unmaps or discards
//! the pages (`space::watch`), and [`InPlaceSet::reap`] drops such imports before the next
//! launch could use them. A later launch on memory mapped there again is an ordinary one.

use std::ops::Range;

use crate::device::HostImport;
use crate::space::watch::{WatchId, Watches};

/// One range accessed in place.
pub(crate) struct InPlace {
    import: HostImport,
    watch: WatchId,
    watches: &'static Watches,
}

impl std::fmt::Debug for InPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlace")
            .field("import", &self.import)
            .finish_non_exhaustive()
    }
}

impl InPlace {
    /// Keeps `import` under `watch` (freed when this is dropped).
    pub fn new(import: HostImport, watch: WatchId, watches: &'static Watches) -> Self {
        InPlace {
            import,
            watch,
            watches,
        }
    }

    /// The addresses it covers.
    pub fn range(&self) -> Range<usize> {
        self.import.addr()..self.import.addr() + self.import.len() as usize
    }

    /// The imported buffer.
    pub fn import(&self) -> &HostImport {
        &self.import
    }
}

impl Drop for InPlace {
    fn drop(&mut self) {
        self.watches.remove(self.watch);
    }
}

/// Where one binding goes, as [`InPlaceSet::place`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Where {
    /// Not in any in-place range: the mirror moves it.
    Mirrored,
    /// Inside in-place range `index`, at this byte offset of its import.
    InPlace { index: usize, offset: u64 },
    /// Partly inside an in-place range: refused.
    Partly,
}

/// Pure: where the binding `[addr, addr + len)` goes, given the in-place `ranges`.
pub(crate) fn place(ranges: &[Range<usize>], addr: usize, len: usize) -> Where {
    let end = addr + len;
    for (index, r) in ranges.iter().enumerate() {
        if r.start <= addr && end <= r.end {
            return Where::InPlace {
                index,
                offset: (addr - r.start) as u64,
            };
        }
        if r.start < end && addr < r.end {
            return Where::Partly;
        }
    }
    Where::Mirrored
}

/// The runtime's in-place ranges (disjoint).
#[derive(Debug, Default)]
pub(crate) struct InPlaceSet {
    ranges: Vec<InPlace>,
}

impl InPlaceSet {
    /// Whether no range is accessed in place.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Where a binding goes (see [`place`]).
    pub fn place(&self, addr: usize, len: usize) -> Where {
        if self.ranges.is_empty() {
            return Where::Mirrored;
        }
        let ranges: Vec<Range<usize>> = self.ranges.iter().map(InPlace::range).collect();
        place(&ranges, addr, len)
    }

    /// In-place range `index` (as [`Where::InPlace`] named it).
    pub fn get(&self, index: usize) -> &InPlace {
        &self.ranges[index]
    }

    /// Whether any range overlaps `span`.
    pub fn overlaps(&self, span: &Range<usize>) -> bool {
        self.ranges
            .iter()
            .any(|p| p.range().start < span.end && span.start < p.range().end)
    }

    /// Adds a range (disjoint from the others: the caller removed overlapping ones).
    pub fn insert(&mut self, p: InPlace) {
        debug_assert!(!self.overlaps(&p.range()));
        self.ranges.push(p);
    }

    /// Drops every range overlapping `span`: its pages are mirrored again from now on. The
    /// caller holds the worker lock (no launch in flight).
    pub fn remove_overlapping(&mut self, span: &Range<usize>) {
        self.ranges
            .retain(|p| !(p.range().start < span.end && span.start < p.range().end));
    }

    /// Drops the ranges whose pages the program unmapped or discarded. The caller holds the
    /// worker lock and has synced the fault service's events.
    pub fn reap(&mut self) {
        self.ranges.retain(|p| !p.watches.dead(p.watch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_inside_outside_and_across() {
        let r = [0x1000..0x3000, 0x8000..0x9000];
        assert_eq!(
            place(&r, 0x1000, 0x2000),
            Where::InPlace {
                index: 0,
                offset: 0
            }
        );
        assert_eq!(
            place(&r, 0x8010, 16),
            Where::InPlace {
                index: 1,
                offset: 0x10
            }
        );
        assert_eq!(place(&r, 0x3000, 0x1000), Where::Mirrored);
        assert_eq!(place(&r, 0x0, 0x1000), Where::Mirrored);
        assert_eq!(place(&r, 0x2ff0, 0x20), Where::Partly);
        assert_eq!(place(&r, 0x7000, 0x3000), Where::Partly);
        assert_eq!(place(&[], 0x1000, 4), Where::Mirrored);
    }
}
