//! The process-wide list of extents: lock-free for the fault handler, one writer at a time.
//!
//! Readers load an immutable snapshot (`ArcSwap<Vec<Arc<Extent>>>`, sorted by address and
//! non-overlapping) and search it; they take no lock and allocate nothing, which is what the
//! fault handler needs (it must never wait for a thread that may itself be blocked in a
//! fault). Writers — launches, prefetches, reaping — serialize on a mutex that the handler
//! never takes, build a new snapshot and publish it.
//!
//! A retired extent may still be in use by the handler, which read an older snapshot. It is
//! kept in a graveyard until the handler has passed an idle point after the retirement:
//! quiescent-state-based reclamation with one reader. The handler bumps an epoch counter when
//! it starts working (odd) and when it goes idle (even); an extent retired at epoch `e` may be
//! dropped once the counter has reached `e` rounded up to even. The handler therefore never
//! drops the last reference to an extent (which would free device memory from the handler).
//! Replaced snapshots wait there too: publishing may turn the handler's borrow of the old
//! list into a reference of its own (arc-swap pays its readers' debts on store), and the
//! handler must not be the one to free that list — a `free` takes malloc's lock, which a
//! thread blocked in a fault inside `malloc` may hold.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use super::extent::Extent;

type Snapshot<D> = Vec<Arc<Extent<D>>>;

/// The mirror's extent list.
pub struct MirrorMap<D> {
    snapshot: ArcSwap<Snapshot<D>>,
    writer: Mutex<Graveyard<D>>,
    handler_epoch: AtomicU64,
}

struct Graveyard<D> {
    retired: Vec<(u64, Arc<Extent<D>>)>,
    /// Replaced snapshots, with the epoch they were replaced at.
    snapshots: Vec<(u64, Arc<Snapshot<D>>)>,
}

impl<D> Default for MirrorMap<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> MirrorMap<D> {
    /// An empty mirror.
    pub fn new() -> Self {
        MirrorMap {
            snapshot: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(Graveyard {
                retired: Vec::new(),
                snapshots: Vec::new(),
            }),
            handler_epoch: AtomicU64::new(0),
        }
    }

    /// Calls `f` with the extent holding `addr` and the page index, without allocating or
    /// locking. For the fault handler, between [`handler_busy`](Self::handler_busy) and
    /// [`handler_idle`](Self::handler_idle).
    pub fn lookup<R>(&self, addr: usize, f: impl FnOnce(&Arc<Extent<D>>, usize) -> R) -> Option<R> {
        let snap = self.snapshot.load();
        let i = find(&snap, addr)?;
        let e = &snap[i];
        Some(f(e, e.page_index(addr)))
    }

    /// Calls `f` for every extent overlapping `range`, in address order, without allocating
    /// or locking.
    pub fn for_each_overlapping(&self, range: Range<usize>, mut f: impl FnMut(&Arc<Extent<D>>)) {
        let snap = self.snapshot.load();
        for e in overlapping(&snap, &range) {
            f(e);
        }
    }

    /// The current extents (a shared, immutable list).
    pub fn snapshot(&self) -> Arc<Snapshot<D>> {
        self.snapshot.load_full()
    }

    /// Extents overlapping `range`, in address order.
    pub fn overlapping(&self, range: Range<usize>) -> Vec<Arc<Extent<D>>> {
        let snap = self.snapshot.load();
        overlapping(&snap, &range).cloned().collect()
    }

    /// Takes the writer side. The fault handler never calls this.
    pub fn write(&self) -> Writer<'_, D> {
        Writer {
            map: self,
            graveyard: self.writer.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// The fault handler starts working: it may load snapshots from now on.
    pub fn handler_busy(&self) {
        let prev = self.handler_epoch.fetch_add(1, Ordering::SeqCst);
        debug_assert_eq!(prev % 2, 0, "handler_busy twice");
    }

    /// The fault handler holds no reference into any snapshot any more.
    pub fn handler_idle(&self) {
        let prev = self.handler_epoch.fetch_add(1, Ordering::SeqCst);
        debug_assert_eq!(prev % 2, 1, "handler_idle without handler_busy");
    }
}

/// Exclusive access to change the extent list.
pub struct Writer<'a, D> {
    map: &'a MirrorMap<D>,
    graveyard: MutexGuard<'a, Graveyard<D>>,
}

impl<D> Writer<'_, D> {
    /// The current extents.
    pub fn snapshot(&self) -> Arc<Snapshot<D>> {
        self.map.snapshot.load_full()
    }

    /// Publishes a new list: the current one without `retire`, plus `add`. `add` must not
    /// overlap what remains. Retired extents go to the graveyard.
    pub fn replace(
        &mut self,
        retire: &[Arc<Extent<D>>],
        add: impl IntoIterator<Item = Arc<Extent<D>>>,
    ) {
        let cur = self.map.snapshot.load_full();
        let mut next: Snapshot<D> = cur
            .iter()
            .filter(|e| !retire.iter().any(|r| Arc::ptr_eq(r, e)))
            .cloned()
            .collect();
        next.extend(add);
        next.sort_by_key(|e| e.start());
        debug_assert!(
            next.windows(2).all(|w| w[0].end() <= w[1].start()),
            "extents overlap"
        );
        self.map.snapshot.store(Arc::new(next));
        // Read the epoch only after the store: if it is even now, the handler is idle and will
        // see the new list when it next wakes (SeqCst orders its epoch bump before its load).
        let epoch = self.map.handler_epoch.load(Ordering::SeqCst);
        self.graveyard
            .retired
            .extend(retire.iter().map(|e| (epoch, Arc::clone(e))));
        self.graveyard.snapshots.push((epoch, cur));
    }

    /// Removes from the graveyard the extents the handler can no longer be using and returns
    /// them; dropping them frees their device copies.
    pub fn collect_garbage(&mut self) -> Vec<Arc<Extent<D>>> {
        let now = self.map.handler_epoch.load(Ordering::SeqCst);
        let passed = |e: &u64| now >= e + (e & 1);
        self.graveyard.snapshots.retain(|(e, _)| !passed(e));
        let (dead, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.graveyard.retired)
            .into_iter()
            .partition(|(e, _)| passed(e));
        self.graveyard.retired = keep;
        dead.into_iter().map(|(_, ext)| ext).collect()
    }

    /// Number of extents (and replaced snapshots) waiting in the graveyard.
    pub fn graveyard_len(&self) -> usize {
        self.graveyard.retired.len() + self.graveyard.snapshots.len()
    }
}

/// Index of the extent holding `addr` in a sorted, non-overlapping list.
fn find<D>(list: &[Arc<Extent<D>>], addr: usize) -> Option<usize> {
    let i = list.partition_point(|e| e.end() <= addr);
    (i < list.len() && list[i].contains(addr)).then_some(i)
}

fn overlapping<'a, D>(
    list: &'a [Arc<Extent<D>>],
    range: &Range<usize>,
) -> impl Iterator<Item = &'a Arc<Extent<D>>> + 'a {
    let first = list.partition_point(|e| e.end() <= range.start);
    let end = range.end;
    list[first..].iter().take_while(move |e| e.start() < end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::page::Residence;
    use crate::mirror::PAGE;

    fn ext(start_page: usize, pages: usize) -> Arc<Extent<u32>> {
        Arc::new(Extent::new(
            start_page * PAGE,
            pages,
            start_page as u32,
            |_| Residence::Host,
        ))
    }

    #[test]
    fn lookup_and_overlap() {
        let m = MirrorMap::new();
        m.write().replace(&[], [ext(10, 2), ext(1, 3)]);
        assert_eq!(m.lookup(PAGE + 5, |e, i| (*e.device(), i)), Some((1, 0)));
        assert_eq!(
            m.lookup(3 * PAGE + 1, |e, i| (*e.device(), i)),
            Some((1, 2))
        );
        assert_eq!(m.lookup(4 * PAGE, |_, _| ()), None);
        assert_eq!(m.lookup(11 * PAGE, |e, i| (*e.device(), i)), Some((10, 1)));
        let o = m.overlapping(2 * PAGE..10 * PAGE + 1);
        assert_eq!(
            o.iter().map(|e| *e.device()).collect::<Vec<_>>(),
            vec![1, 10]
        );
        assert!(m.overlapping(4 * PAGE..10 * PAGE).is_empty());
        let mut seen = vec![];
        m.for_each_overlapping(0..usize::MAX, |e| seen.push(*e.device()));
        assert_eq!(seen, vec![1, 10]);
    }

    #[test]
    fn graveyard_waits_for_a_busy_handler() {
        let m = MirrorMap::new();
        let a = ext(0, 1);
        m.write().replace(&[], [a.clone()]);

        // Handler idle at retirement: free at once.
        m.write().replace(std::slice::from_ref(&a), [ext(5, 1)]);
        assert_eq!(m.write().collect_garbage().len(), 1);

        // Handler busy at retirement: kept until it goes idle.
        let b = m.snapshot()[0].clone();
        m.handler_busy();
        m.write().replace(&[b], [ext(7, 1)]);
        assert!(m.write().collect_garbage().is_empty());
        m.handler_idle();
        assert_eq!(m.write().collect_garbage().len(), 1);
        assert_eq!(m.write().graveyard_len(), 0);
    }

    #[test]
    fn the_handler_never_drops_the_last_reference_to_a_replaced_list() {
        let m = MirrorMap::new();
        m.write().replace(&[], [ext(0, 1)]);
        m.handler_busy();
        let seen = m.snapshot.load(); // what a lookup holds while it works
        let list = Arc::downgrade(&*seen);
        m.write().replace(&[], [ext(5, 1)]);
        drop(seen);
        assert!(list.upgrade().is_some(), "the graveyard keeps it");
        m.handler_idle();
        drop(m.write().collect_garbage());
        assert!(list.upgrade().is_none(), "the writer freed it");
    }
}
