//! Launch planning: which pages a binding covers, and which extents a launch needs.
//!
//! A binding is bound as one `(buffer, offset, range)` into one device copy, so all of its
//! pages must lie in one extent. [`plan_groups`] takes the page spans a launch (or prefetch)
//! wants and the extents that exist, and returns the extents to use: an existing one when a
//! span lies wholly inside it, otherwise a new extent covering the union of everything that
//! overlaps (transitively), which absorbs the old extents. Spans that merely touch (share no
//! page) are not joined.

use std::ops::Range;

use super::PAGE;

/// Rounds down to a page boundary.
pub const fn page_floor(addr: usize) -> usize {
    addr & !(PAGE - 1)
}

/// Rounds up to a page boundary.
pub const fn page_ceil(addr: usize) -> usize {
    (addr + PAGE - 1) & !(PAGE - 1)
}

/// The pages one binding covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingPages {
    /// Every page the binding touches (page-aligned byte range).
    pub span: Range<usize>,
    /// The pages wholly inside the binding (may be empty). The rest of `span` are edge pages,
    /// at most two, shared with whatever lies next to the binding.
    pub interior: Range<usize>,
}

impl BindingPages {
    /// Edge pages: pages of `span` outside `interior` (0, 1 or 2 page addresses).
    pub fn edges(&self) -> impl Iterator<Item = usize> + '_ {
        let head = (self.span.start < self.interior.start).then_some(self.span.start);
        let tail_page = self.span.end - PAGE;
        let tail = (self.interior.end <= tail_page && Some(tail_page) != head).then_some(tail_page);
        head.into_iter().chain(tail)
    }
}

/// The pages of the byte range `addr..addr + len` (`len > 0`).
pub fn binding_pages(addr: usize, len: usize) -> BindingPages {
    debug_assert!(len > 0);
    let end = addr + len;
    let span = page_floor(addr)..page_ceil(end);
    let (lo, hi) = (page_ceil(addr), page_floor(end));
    let interior = if lo < hi { lo..hi } else { lo..lo };
    BindingPages { span, interior }
}

/// One extent a launch will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its page-aligned byte range.
    pub range: Range<usize>,
    /// `Some(i)`: existing extent `i` is used as it is.
    pub reuse: Option<usize>,
    /// Existing extents (indices) a new extent absorbs; empty when `reuse` is set.
    pub absorb: Vec<usize>,
}

/// Plans the extents for a set of wanted page spans.
///
/// `existing` are the current extents' ranges, sorted and non-overlapping; `wanted` are
/// page-aligned spans in any order. Returns the groups (sorted by address) and, for each
/// wanted span, the index of its group.
pub fn plan_groups(existing: &[Range<usize>], wanted: &[Range<usize>]) -> (Vec<Group>, Vec<usize>) {
    // Intervals to sweep: every wanted span and every existing extent that overlaps one.
    #[derive(Clone, Copy)]
    enum Src {
        Wanted(usize),
        Existing(usize),
    }
    let mut items: Vec<(Range<usize>, Src)> = wanted
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), Src::Wanted(i)))
        .collect();
    for w in wanted {
        let first = existing.partition_point(|e| e.end <= w.start);
        for (j, e) in existing
            .iter()
            .enumerate()
            .skip(first)
            .take_while(|(_, e)| e.start < w.end)
        {
            items.push((e.clone(), Src::Existing(j)));
        }
    }
    items.sort_by_key(|(r, _)| (r.start, r.end));

    let mut groups: Vec<Group> = Vec::new();
    let mut group_of = vec![usize::MAX; wanted.len()];
    for (r, src) in items {
        let joins = groups.last().is_some_and(|g| r.start < g.range.end);
        if !joins {
            groups.push(Group {
                range: r.clone(),
                reuse: None,
                absorb: Vec::new(),
            });
        }
        let g = groups.last_mut().expect("a group was just pushed");
        g.range.end = g.range.end.max(r.end);
        match src {
            Src::Wanted(i) => group_of[i] = groups.len() - 1,
            Src::Existing(j) => {
                if !g.absorb.contains(&j) {
                    g.absorb.push(j);
                }
            }
        }
    }
    for g in &mut groups {
        if let [only] = g.absorb[..] {
            if existing[only] == g.range {
                g.reuse = Some(only);
                g.absorb.clear();
            }
        }
    }
    (groups, group_of)
}

/// What a launch does to each page it touches, merged over all its bindings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRoles {
    /// Runs of interior pages (page-aligned byte ranges, sorted, disjoint): pages wholly
    /// inside some binding, with whether any binding covering them is written. These follow
    /// the state machine and are claimed once each.
    pub interior: Vec<(Range<usize>, bool)>,
    /// Edge pages (page addresses, sorted, unique) not inside any interior run, with whether
    /// any binding touching them is written. These are never dropped or write-protected.
    pub edges: Vec<(usize, bool)>,
}

/// Merges the pages of a launch's bindings (`(addr, len, written)`, `len > 0`).
///
/// Two bindings can share pages: the same slice passed twice for reading, or two small
/// `Vec`s on one page. A page is claimed once, so roles are merged here: overlapping
/// interior runs join (written if either is — with Rust borrows only read runs can overlap),
/// and an edge page that lies inside some binding's interior is handled as interior.
pub fn page_roles(bindings: &[(usize, usize, bool)]) -> PageRoles {
    let mut runs: Vec<(Range<usize>, bool)> = bindings
        .iter()
        .map(|&(a, l, w)| (binding_pages(a, l).interior, w))
        .filter(|(r, _)| !r.is_empty())
        .collect();
    runs.sort_by_key(|(r, _)| r.start);
    let mut interior: Vec<(Range<usize>, bool)> = Vec::with_capacity(runs.len());
    for (r, w) in runs {
        match interior.last_mut() {
            Some((last, lw)) if r.start < last.end => {
                last.end = last.end.max(r.end);
                *lw |= w;
            }
            _ => interior.push((r, w)),
        }
    }
    let inside = |p: usize| {
        let i = interior.partition_point(|(r, _)| r.end <= p);
        i < interior.len() && interior[i].0.contains(&p)
    };
    let mut edges: Vec<(usize, bool)> = bindings
        .iter()
        .flat_map(|&(a, l, w)| {
            binding_pages(a, l)
                .edges()
                .map(move |p| (p, w))
                .collect::<Vec<_>>()
        })
        .filter(|&(p, _)| !inside(p))
        .collect();
    edges.sort_by_key(|&(p, _)| p);
    edges.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 |= b.1;
            true
        } else {
            false
        }
    });
    PageRoles { interior, edges }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: usize = PAGE;

    #[test]
    fn binding_pages_cases() {
        // Page-aligned, whole pages: no edges.
        let b = binding_pages(2 * P, 3 * P);
        assert_eq!(b.span, 2 * P..5 * P);
        assert_eq!(b.interior, 2 * P..5 * P);
        assert_eq!(b.edges().count(), 0);
        // Malloc-style: starts 16 bytes in, ends mid-page.
        let b = binding_pages(2 * P + 16, 3 * P);
        assert_eq!(b.span, 2 * P..6 * P);
        assert_eq!(b.interior, 3 * P..5 * P);
        assert_eq!(b.edges().collect::<Vec<_>>(), vec![2 * P, 5 * P]);
        // Inside one page: one edge, no interior.
        let b = binding_pages(2 * P + 16, 100);
        assert_eq!(b.span, 2 * P..3 * P);
        assert!(b.interior.is_empty());
        assert_eq!(b.edges().collect::<Vec<_>>(), vec![2 * P]);
        // Straddling one boundary, no interior page.
        let b = binding_pages(3 * P - 8, 16);
        assert!(b.interior.is_empty());
        assert_eq!(b.edges().collect::<Vec<_>>(), vec![2 * P, 3 * P]);
        // Aligned start, ragged end.
        let b = binding_pages(4 * P, P + 1);
        assert_eq!(b.interior, 4 * P..5 * P);
        assert_eq!(b.edges().collect::<Vec<_>>(), vec![5 * P]);
    }

    #[test]
    fn reuse_when_inside_one_extent() {
        let existing = [0..4 * P, 8 * P..12 * P];
        let (g, of) = plan_groups(&existing, std::slice::from_ref(&(9 * P..10 * P)));
        assert_eq!(
            g,
            vec![Group {
                range: 8 * P..12 * P,
                reuse: Some(1),
                absorb: vec![]
            }]
        );
        assert_eq!(of, vec![0]);
    }

    #[test]
    fn new_extent_when_nothing_exists() {
        let (g, of) = plan_groups(&[], &[3 * P..5 * P, 0..P]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].range, 0..P);
        assert_eq!(g[1].range, 3 * P..5 * P);
        assert_eq!(of, vec![1, 0]);
    }

    #[test]
    fn merge_across_extents_and_bindings() {
        let existing = [0..2 * P, 3 * P..4 * P, 10 * P..11 * P];
        // Span 1 overlaps extents 0 and 1; span 2 touches extent 1's end only (no merge) but
        // overlaps span 3, which overlaps nothing else.
        let wanted = [P..4 * P, 4 * P..6 * P, 5 * P..7 * P];
        let (g, of) = plan_groups(&existing, &wanted);
        assert_eq!(
            g,
            vec![
                Group {
                    range: 0..4 * P,
                    reuse: None,
                    absorb: vec![0, 1]
                },
                Group {
                    range: 4 * P..7 * P,
                    reuse: None,
                    absorb: vec![]
                },
            ]
        );
        assert_eq!(of, vec![0, 1, 1]);
    }

    #[test]
    fn growing_past_an_extent_absorbs_it() {
        let (g, _) = plan_groups(
            std::slice::from_ref(&(2 * P..4 * P)),
            std::slice::from_ref(&(3 * P..6 * P)),
        );
        assert_eq!(
            g,
            vec![Group {
                range: 2 * P..6 * P,
                reuse: None,
                absorb: vec![0]
            }]
        );
    }

    #[test]
    fn roles_merge_aliases_and_neighbours() {
        // The same slice twice for reading: one interior run, read.
        let r = page_roles(&[(P + 16, 4 * P, false), (P + 16, 4 * P, false)]);
        assert_eq!(r.interior, vec![(2 * P..5 * P, false)]);
        assert_eq!(r.edges, vec![(P, false), (5 * P, false)]);
        // Two small Vecs on one page, one written: one edge page, written.
        let r = page_roles(&[(P + 16, 100, false), (P + 200, 100, true)]);
        assert!(r.interior.is_empty());
        assert_eq!(r.edges, vec![(P, true)]);
        // An edge page of one binding inside another's interior is interior.
        let r = page_roles(&[(0, 8 * P, false), (3 * P + 8, 16, false)]);
        assert_eq!(r.interior, vec![(0..8 * P, false)]);
        assert!(r.edges.is_empty());
        // Adjacent written Vecs sharing a boundary page.
        let r = page_roles(&[(16, 3 * P, true), (3 * P + 32, 2 * P, true)]);
        assert_eq!(r.interior, vec![(P..3 * P, true), (4 * P..5 * P, true)]);
        assert_eq!(r.edges, vec![(0, true), (3 * P, true), (5 * P, true)]);
    }

    proptest! {
        #[test]
        fn plan_invariants(
            ext in proptest::collection::vec((0usize..40, 1usize..6), 0..8),
            want in proptest::collection::vec((0usize..50, 1usize..8), 1..6),
        ) {
            // Build non-overlapping existing extents from random (start, len) pairs.
            let mut existing: Vec<Range<usize>> = Vec::new();
            let mut sorted = ext.clone();
            sorted.sort();
            for (s, l) in sorted {
                let r = s * P..(s + l) * P;
                if existing.last().is_none_or(|e| e.end <= r.start) {
                    existing.push(r);
                }
            }
            let wanted: Vec<Range<usize>> = want.iter().map(|&(s, l)| s * P..(s + l) * P).collect();
            let (groups, of) = plan_groups(&existing, &wanted);
            // Groups are sorted and disjoint.
            prop_assert!(groups.windows(2).all(|w| w[0].range.end <= w[1].range.start));
            // Every wanted span lies inside its group.
            for (i, w) in wanted.iter().enumerate() {
                let g = &groups[of[i]];
                prop_assert!(g.range.start <= w.start && w.end <= g.range.end);
            }
            for g in &groups {
                // A group never overlaps an existing extent it does not use or absorb.
                for (j, e) in existing.iter().enumerate() {
                    let overlaps = e.start < g.range.end && g.range.start < e.end;
                    let used = g.reuse == Some(j) || g.absorb.contains(&j);
                    prop_assert_eq!(overlaps, used, "group {:?} extent {:?}", g, e);
                    if used { prop_assert!(g.range.start <= e.start && e.end <= g.range.end); }
                }
            }
        }
    }
}
