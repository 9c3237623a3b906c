//! Chunk and eviction policy: pure functions of page numbers, sizes and stamps.
//!
//! **Fault-back chunks.** A CPU fault on a device-resident page may bring back more than the
//! page. A fault near the previous window (within a quarter of `base` pages of it) brings
//! back the aligned window of `base` pages holding it: touches that close together come in
//! bunches, and a 64 KiB window costs about three single pages (22 against 7 µs here), so it
//! pays once a quarter of it would be touched; touches farther apart (a thousand edits of
//! a 64 MiB buffer, one every 16 pages) would each bring back 64 KiB for one word. A fault exactly where the
//! previous window ended is a sequential reader: the window doubles (from at least `base`, up
//! to `max` pages) and starts at the faulting page, so a stream through a large buffer ends
//! up moving 2 MiB per fault — what NVIDIA UVM does with its 64 KiB fault batches grown
//! within 2 MiB blocks. "Previous" is per stream: an extent follows a few streams of each
//! kind at once ([`pick_stream`]: the one a fault continues, else the one it is near), so two
//! buffers read in step, or threads each reading their part, each grow their own windows.
//! A fault far from every stream's last window brings back `isolated` pages
//! (one): a program that touches a thousand scattered words of a large buffer then copies
//! 4 MiB, not a 64 KiB window each (64 MiB), and an isolated touch costs a third as much
//! (7 µs against 22 µs for 64 KiB here, `vkhmm bench`'s touch group).
//!
//! **Write-protect windows.** A write to a `Shared` page (both copies valid, the host copy
//! write-protected) copies nothing: it only lifts the protection, and every page it lifts
//! turns `Host` and is uploaded again by the next launch. So a write at an unpredictable
//! place lifts one page (`write_base`: a thousand scattered edits re-upload 4 MiB, not the
//! 64 MiB a 64 KiB window would), and a sequential writer's window doubles with no cap short
//! of the extent (`write_max`): lifting protection costs the kernel less per page the larger
//! the piece (64 MiB rewritten after lifting it in 64 KiB pieces: 9.1 ms; in one piece: 5.0 ms
//! against 3.3 ms for unprotected memory, Linux 6.18). The fault handler also lifts a
//! sequential writer's next window ahead of it (`fault::resolve`), so a rewrite of a whole
//! buffer takes about log4(pages) faults.
//! A window of at least `split` pages is installed by two threads, half each
//! (`pages::halves`): the kernel's per-page work, not memory bandwidth, bounds one thread.
//!
//! **Eviction.** When a launch needs more device memory than the budget leaves, the least
//! recently used extents that the launch itself does not use are evicted first.

use std::ops::Range;

/// How many pages a CPU fault brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPolicy {
    /// Pages a fault far from the previous window brings back (1 = 4 KiB).
    pub isolated: usize,
    /// Pages a fault near the previous window brings back (16 = 64 KiB), and the least a
    /// sequential one does.
    pub base: usize,
    /// The most pages one fault may bring back (512 = 2 MiB).
    pub max: usize,
    /// Grow the window on sequential access.
    pub adaptive: bool,
    /// Windows of at least this many pages are installed by two threads at once, half each
    /// (0: never; 128 = 512 KiB).
    pub split: usize,
    /// Pages a write to a `Shared` page unprotects for random access (1 = 4 KiB).
    pub write_base: usize,
    /// The most pages one write-protect window may unprotect (`usize::MAX`: up to the whole
    /// extent); a fault that continues a writer lifts its window and the next one.
    pub write_max: usize,
}

/// What a fault asks for: the page's bytes (a touch of a `Device` page) or only the right to
/// write it (a write to a `Shared` page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Bring back the device copy.
    Copy,
    /// Lift write protection.
    Unprotect,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy {
            isolated: 1,
            base: 16,
            max: 512,
            adaptive: true,
            split: 128,
            write_base: 1,
            write_max: usize::MAX,
        }
    }
}

impl ChunkPolicy {
    /// A fixed chunk of `pages` pages (no growth, for copies and write protection alike).
    #[cfg(test)]
    pub fn fixed(pages: usize) -> Self {
        ChunkPolicy {
            isolated: pages.max(1),
            base: pages.max(1),
            max: pages.max(1),
            adaptive: false,
            write_base: pages.max(1),
            write_max: pages.max(1),
            ..ChunkPolicy::default()
        }
    }

    /// The window, in pages, for `access` far from the previous one, near it, and at most.
    fn limits(&self, access: Access) -> (usize, usize, usize) {
        let (isolated, base, max) = match access {
            Access::Copy => (self.isolated, self.base, self.max),
            Access::Unprotect => (self.write_base, self.write_base, self.write_max),
        };
        let base = base.max(1);
        (isolated.clamp(1, base), base, max.max(base))
    }
}

/// The window a fault brings back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Page numbers (absolute, `addr / PAGE`) to bring back, clipped to the extent.
    pub pages: Range<usize>,
    /// Streaming state to remember: the page a sequential reader faults on next, and the
    /// window size used.
    pub next: usize,
    /// Window size in pages before clipping.
    pub size: usize,
    /// Whether the fault continues a stream (it lies where that stream's last window ended):
    /// the window grew from the last, and the fault handler serves the next one ahead.
    pub sequential: bool,
}

/// Chooses the window for a fault of kind `access` at absolute page `page` inside the extent
/// whose pages are `extent`, given the streaming state `(next, size)` the previous fault of
/// that kind left (the stream [`pick_stream`] chose; `(usize::MAX, 0)` for none).
pub fn fault_window(
    policy: &ChunkPolicy,
    access: Access,
    page: usize,
    extent: Range<usize>,
    prev: (usize, usize),
) -> Window {
    let (_, prev_size) = prev;
    let (isolated, base, max) = policy.limits(access);
    let sequential = policy.adaptive && continues(page, prev);
    let near = is_near(policy, access, page, prev);
    let (start, size) = if sequential {
        (page, prev_size.saturating_mul(2).clamp(base, max))
    } else if near || !policy.adaptive {
        (page - page % base, base)
    } else {
        (page - page % isolated, isolated)
    };
    let lo = start.max(extent.start);
    let hi = start.saturating_add(size).min(extent.end);
    Window {
        pages: lo..hi,
        next: hi,
        size,
        sequential,
    }
}

/// Whether a fault at `page` is where the stream `(next, size)` faults next.
fn continues(page: usize, (next, size): (usize, usize)) -> bool {
    size > 0 && page == next
}

/// Whether a fault at `page` lies near the last window of the stream `(next, size)`: within a
/// quarter of the base window of it, where touches are dense enough to fill a base window
/// well enough to pay for it (see the module docs).
fn is_near(
    policy: &ChunkPolicy,
    access: Access,
    page: usize,
    (next, size): (usize, usize),
) -> bool {
    let (_, base, _) = policy.limits(access);
    let reach = (base / 4).max(1);
    size > 0
        && page.saturating_add(reach) > next.saturating_sub(size)
        && page < next.saturating_add(reach)
}

/// Which of an extent's `streams` (as [`fault_window`] takes one) a fault at `page`
/// continues: one it is the next page of, else one it is near; `None` when it is far from
/// all, an isolated touch (or a new stream).
pub fn pick_stream(
    policy: &ChunkPolicy,
    access: Access,
    page: usize,
    streams: &[(usize, usize)],
) -> Option<usize> {
    streams
        .iter()
        .position(|&s| continues(page, s))
        .or_else(|| {
            streams
                .iter()
                .position(|&s| is_near(policy, access, page, s))
        })
}

/// Where a fault-back window over `pages` is split between the fault handler and its
/// assistant: the middle page, when the window has at least `policy.split` pages.
pub fn split_point(policy: &ChunkPolicy, pages: Range<usize>) -> Option<usize> {
    let n = pages.len();
    (policy.split > 0 && n >= policy.split.max(2)).then_some(pages.start + n / 2)
}

/// An extent eviction may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Advised to stay on the device: taken only after every other candidate.
    pub keep: bool,
    /// Launch stamp of its last use.
    pub last_use: u64,
    /// Device bytes it frees.
    pub bytes: u64,
}

/// Picks eviction victims: indices into `candidates`, those not advised to stay first, least
/// recently used first, until at least `need` bytes are freed. Returns `None` if all of them
/// together free less than `need`.
pub fn lru_victims(candidates: &[Candidate], need: u64) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (candidates[i].keep, candidates[i].last_use));
    let mut freed = 0u64;
    let mut out = Vec::new();
    for i in order {
        if freed >= need {
            break;
        }
        freed += candidates[i].bytes;
        out.push(i);
    }
    (freed >= need).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_faults_get_a_page_and_near_ones_the_aligned_base_window() {
        let p = ChunkPolicy::default();
        let w = fault_window(&p, Access::Copy, 37, 0..1000, (usize::MAX, 0));
        assert_eq!(w.pages, 37..38);
        // Near the last window (within 4 pages): the aligned 64 KiB window.
        let w = fault_window(&p, Access::Copy, 40, 0..1000, (w.next, w.size));
        assert_eq!(w.pages, 32..48);
        let w = fault_window(&p, Access::Copy, 50, 0..1000, (w.next, w.size));
        assert_eq!(w.pages, 48..64);
        // Sixteen pages on: far, one page.
        let w = fault_window(&p, Access::Copy, 80, 0..1000, (w.next, w.size));
        assert_eq!(w.pages, 80..81);
        // Far away: one page again; no growth.
        let w = fault_window(&p, Access::Copy, 500, 0..1000, (w.next, w.size));
        assert_eq!((w.pages, w.size), (500..501, 1));
        // Fixed chunks: the aligned chunk wherever the fault is.
        let f = ChunkPolicy::fixed(16);
        let w = fault_window(&f, Access::Copy, 37, 0..1000, (usize::MAX, 0));
        assert_eq!(w.pages, 32..48);
    }

    #[test]
    fn sequential_faults_double_up_to_max() {
        let p = ChunkPolicy::default();
        let mut state = (usize::MAX, 0);
        let mut page = 0;
        let mut sizes = vec![];
        for i in 0..8 {
            let w = fault_window(&p, Access::Copy, page, 0..100_000, state);
            assert_eq!(w.pages.start, page);
            assert_eq!(w.sequential, i > 0, "fault {i}");
            sizes.push(w.pages.len());
            state = (w.next, w.size);
            page = w.next;
        }
        // The first fault is isolated; the stream then starts at the base window.
        assert_eq!(sizes, vec![1, 16, 32, 64, 128, 256, 512, 512]);
    }

    #[test]
    fn write_windows_start_at_one_page_and_grow_to_the_extent() {
        let p = ChunkPolicy::default();
        let w = fault_window(&p, Access::Unprotect, 37, 0..1000, (usize::MAX, 0));
        assert_eq!(w.pages, 37..38);
        let mut state = (usize::MAX, 0);
        let mut page = 0;
        let mut faults = 0;
        while page < 16_384 {
            let w = fault_window(&p, Access::Unprotect, page, 0..16_384, state);
            assert_eq!(w.pages.start, page);
            state = (w.next, w.size);
            page = w.next;
            faults += 1;
        }
        // 64 MiB rewritten front to back: 1 + 2 + ... + 8192 pages, then the last page.
        assert_eq!(faults, 15);
        // No cap: a huge extent's window keeps doubling without overflowing.
        let w = fault_window(
            &p,
            Access::Unprotect,
            10,
            0..usize::MAX,
            (10, usize::MAX / 2 + 1),
        );
        assert_eq!(w.pages, 10..usize::MAX);
        // Fixed chunks unprotect their chunk.
        let f = ChunkPolicy::fixed(4);
        let w = fault_window(&f, Access::Unprotect, 10, 0..100, (10, 4));
        assert_eq!(w.pages, 8..12);
    }

    #[test]
    fn two_interleaved_streams_each_keep_growing() {
        let p = ChunkPolicy::default();
        let mut streams = [(usize::MAX, 0); 4];
        let (mut a, mut b) = (0, 5000);
        let mut sizes = (Vec::new(), Vec::new());
        for _ in 0..6 {
            for (page, sizes) in [(&mut a, &mut sizes.0), (&mut b, &mut sizes.1)] {
                let slot = pick_stream(&p, Access::Copy, *page, &streams);
                let (slot, prev) = match slot {
                    Some(s) => (s, streams[s]),
                    None => (
                        streams.iter().position(|s| s.1 == 0).unwrap(),
                        (usize::MAX, 0),
                    ),
                };
                let w = fault_window(&p, Access::Copy, *page, 0..10_000, prev);
                streams[slot] = (w.next, w.size);
                sizes.push(w.size);
                *page = w.next;
            }
        }
        assert_eq!(sizes.0, vec![1, 16, 32, 64, 128, 256]);
        assert_eq!(sizes.0, sizes.1);
        // Far from both: no stream; near one: that one.
        assert_eq!(pick_stream(&p, Access::Copy, 3000, &streams), None);
        assert_eq!(pick_stream(&p, Access::Copy, a + 2, &streams), Some(0));
        assert_eq!(pick_stream(&p, Access::Copy, b, &streams), Some(1));
    }

    #[test]
    fn windows_are_clipped_to_the_extent() {
        let p = ChunkPolicy::default();
        let w = fault_window(&p, Access::Copy, 5, 3..9, (4, 1)); // near
        assert_eq!(w.pages, 3..9);
        let w = fault_window(&p, Access::Copy, 8, 3..9, (8, 16));
        assert_eq!(w.pages, 8..9);
    }

    #[test]
    fn fixed_policy_never_grows() {
        let p = ChunkPolicy::fixed(1);
        let w = fault_window(&p, Access::Copy, 10, 0..100, (10, 1));
        assert_eq!(w.pages, 10..11);
    }

    #[test]
    fn large_windows_split_in_the_middle() {
        let p = ChunkPolicy::default();
        assert_eq!(split_point(&p, 1000..1512), Some(1256));
        assert_eq!(split_point(&p, 10..138), Some(74));
        assert_eq!(split_point(&p, 10..137), None); // under 128 pages
        let off = ChunkPolicy { split: 0, ..p };
        assert_eq!(split_point(&off, 0..512), None);
        // A split of one page would leave an empty half.
        let tiny = ChunkPolicy { split: 1, ..p };
        assert_eq!(split_point(&tiny, 5..6), None);
        assert_eq!(split_point(&tiny, 5..7), Some(6));
    }

    #[test]
    fn lru_picks_oldest_until_enough() {
        let c = |keep, last_use, bytes| Candidate {
            keep,
            last_use,
            bytes,
        };
        let cands = [
            c(false, 5, 100),
            c(false, 1, 50),
            c(false, 3, 70),
            c(false, 9, 10),
        ];
        assert_eq!(lru_victims(&cands, 100), Some(vec![1, 2]));
        assert_eq!(lru_victims(&cands, 0), Some(vec![]));
        assert_eq!(lru_victims(&cands, 1000), None);
        // Advised to stay: taken last, even when oldest.
        let cands = [c(true, 1, 100), c(false, 5, 100), c(false, 9, 100)];
        assert_eq!(lru_victims(&cands, 150), Some(vec![1, 2]));
        assert_eq!(lru_victims(&cands, 250), Some(vec![1, 2, 0]));
    }
}
