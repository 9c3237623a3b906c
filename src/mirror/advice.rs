//! Advice: what the program tells vkhmm about a range, kept as a map of page ranges.
//!
//! [`Runtime::advise`](crate::Runtime::advise) records advice here; the launch path and the
//! eviction policy read it. The map holds disjoint, sorted page-aligned ranges; setting
//! advice on a range replaces whatever overlapped it (splitting neighbours), and `Unset`
//! removes it. Nothing here acts on memory.

use std::ops::Range;

use super::Location;

/// Advice for a range of memory, given with [`Runtime::advise`](crate::Runtime::advise).
///
/// Advice changes where pages settle and what is evicted first, never what a program reads:
/// every advice is safe to give on any memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Advice {
    /// Mostly read: keep duplicates on both sides. A read binding leaves pages `Shared`
    /// anyway; with this advice a CPU read of `Device` pages brings them back `Shared` too,
    /// also where large chunks otherwise come home as the only copy (`Host`, from host pages
    /// kept for reuse), so that the next launch reading them uploads nothing. It also clears
    /// an earlier [`PreferredLocation`](Self::PreferredLocation). It applies per mirrored
    /// extent: advice on part of a buffer applies to the whole buffer's reads.
    ReadMostly,
    /// Where the range's pages settle when nothing forces them:
    ///
    /// - `Host`: the range comes home now, and after every launch that writes it the written
    ///   pages are copied home at once (they stay valid on the device too, `Shared`), so the
    ///   CPU reads results without faults;
    /// - `Device`: the range moves to the device now, and eviction takes other memory first.
    PreferredLocation(Location),
    /// The device reads and writes the range where it is, in host memory: nothing is
    /// copied or trapped, every page stays `Host` (zero copy, like CUDA's
    /// `cudaMemAdviseSetAccessedBy` on memory the GPU can map). Needs a device with
    /// `VK_EXT_external_memory_host` and a range that starts on its import alignment (a
    /// page on most drivers: `Managed` memory or a page-aligned `mmap`); it ends where the
    /// rest of its last aligned block still belongs to the same mapping. Any device copy of
    /// the range comes home first. A launch binding that lies partly inside such a range is
    /// refused (`MemoryReason::PartlyInPlace`). Ends with other advice on the range, with
    /// `Unset`, or when the program unmaps or discards its pages. The right choice for data
    /// a kernel touches once, on a device that shares memory with the CPU; on a discrete
    /// GPU each access crosses the bus.
    AccessInPlace,
    /// Back to the default policy.
    Unset,
}

/// Page-aligned ranges of the address space and the advice given for each.
#[derive(Debug, Default)]
pub struct AdviceMap {
    /// Disjoint, sorted by start, never empty ranges.
    ranges: Vec<(Range<usize>, Advice)>,
}

impl AdviceMap {
    /// Records `advice` for `range` (`Unset` removes what was there).
    pub fn set(&mut self, range: Range<usize>, advice: Advice) {
        if range.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 2);
        for (r, a) in self.ranges.drain(..) {
            if r.end <= range.start || range.end <= r.start {
                out.push((r, a));
                continue;
            }
            if r.start < range.start {
                out.push((r.start..range.start, a));
            }
            if range.end < r.end {
                out.push((range.end..r.end, a));
            }
        }
        if advice != Advice::Unset {
            out.push((range, advice));
        }
        out.sort_by_key(|(r, _)| r.start);
        self.ranges = out;
    }

    /// The advised parts of `range`, clipped to it, in address order.
    pub fn within(&self, range: Range<usize>) -> impl Iterator<Item = (Range<usize>, Advice)> + '_ {
        self.ranges
            .iter()
            .filter(move |(r, _)| r.start < range.end && range.start < r.end)
            .map(move |(r, a)| (r.start.max(range.start)..r.end.min(range.end), *a))
    }

    /// Whether no advice is recorded.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether any part of `range` has `advice`.
    pub fn any(&self, range: Range<usize>, advice: Advice) -> bool {
        self.within(range).any(|(_, a)| a == advice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Advice = Advice::PreferredLocation(Location::Host);
    const DEVICE: Advice = Advice::PreferredLocation(Location::Device);

    fn all(m: &AdviceMap) -> Vec<(Range<usize>, Advice)> {
        m.within(0..usize::MAX).collect()
    }

    #[test]
    fn setting_splits_and_replaces_overlaps() {
        let mut m = AdviceMap::default();
        m.set(0..100, HOST);
        m.set(40..60, DEVICE);
        assert_eq!(all(&m), [(0..40, HOST), (40..60, DEVICE), (60..100, HOST)]);
        m.set(50..200, Advice::ReadMostly);
        assert_eq!(
            all(&m),
            [
                (0..40, HOST),
                (40..50, DEVICE),
                (50..200, Advice::ReadMostly)
            ]
        );
    }

    #[test]
    fn unset_removes_and_within_clips() {
        let mut m = AdviceMap::default();
        m.set(0..100, HOST);
        m.set(20..30, Advice::Unset);
        assert_eq!(all(&m), [(0..20, HOST), (30..100, HOST)]);
        assert_eq!(
            m.within(10..40).collect::<Vec<_>>(),
            [(10..20, HOST), (30..40, HOST)]
        );
        assert!(m.any(25..35, HOST));
        assert!(!m.any(20..30, HOST));
        m.set(0..1000, Advice::Unset);
        assert!(all(&m).is_empty());
        m.set(5..5, HOST);
        assert!(all(&m).is_empty());
    }
}
