//! Moving a launch's pages: each interior run through the state machine, edge pages copied
//! through, and what the launch's watch lost replayed as `GONE`.
//!
//! Interior runs are claimed (re-read from the binding: an older `GONE` is cleared, then
//! whatever the watch lost since the launch began is marked again, [`replay`]), and moved
//! by [`migrate_run`]: write-protect read runs, upload present pages, zero-fill absent ones,
//! drop written runs' host copies. Written runs stay claimed until the kernel is done. Edge
//! pages are uploaded (written ones brought `Host` first) and their written bytes come back
//! after the kernel (`launch`).

use std::ops::Range;
use std::sync::Arc;

use super::home::to_host_claimed;
use super::{Binding, DeviceContext, Launch, Purpose, Worker};
use crate::device::Transfer;
use crate::mirror::extent::Extent;
use crate::mirror::page::Residence;
use crate::mirror::plan::PageRoles;
use crate::mirror::PAGE;
use crate::pages::install::InstallStop;
use crate::pages::{backoff, claim_all, release_all, runs_where, spans_across, write_protect};
use crate::space::parking::Dropped;
use crate::space::watch::{self, LaunchWatch};
use crate::space::{AddressSpace, Counters, Ext};
use crate::sys;
use crate::trace;
use crate::{Error, MemoryReason, Result};

/// Moves the interior runs and edge pages of a launch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn move_pages<'e>(
    space: &AddressSpace,
    ctx: &DeviceContext,
    worker: &mut Worker,
    roles: &PageRoles,
    ext_of: &impl Fn(usize) -> &'e Arc<Ext>,
    purpose: Purpose,
    launch: &mut Launch,
    bindings: &[Binding],
    mirrored: &[usize],
    watch: &LaunchWatch,
) -> Result<()> {
    // Which extents' inputs this launch leaves writable (`mirror::rewrite`): decided once per
    // extent, against all the pages the launch reads there, before anything is claimed.
    let mut read_pages: Vec<(&Arc<Ext>, usize)> = Vec::new();
    if purpose == Purpose::Kernel {
        for (run, _) in roles.interior.iter().filter(|(_, write)| !write) {
            let ext = ext_of(run.start);
            let pages = ext.page_span(run).len();
            match read_pages.iter_mut().find(|(e, _)| Arc::ptr_eq(e, ext)) {
                Some((_, n)) => *n += pages,
                None => read_pages.push((ext, pages)),
            }
        }
    }
    let writable: Vec<&Arc<Ext>> = read_pages
        .into_iter()
        .filter(|(ext, n)| !ext.reads_mostly() && ext.rewrites().leave_writable(*n))
        .map(|(ext, _)| ext)
        .collect();
    for (run, write) in &roles.interior {
        let ext = ext_of(run.start);
        let idx = ext.page_span(run);
        let mut states = claim_all(ext, idx.clone(), true);
        ext.reset_streams();
        let drop_host = *write || purpose == Purpose::Prefetch;
        let protect = !drop_host && !writable.iter().any(|e| Arc::ptr_eq(e, ext));
        let held = *write && purpose == Purpose::Kernel;
        let moved = replay(space, watch, ext, idx.clone()).and_then(|()| {
            migrate_run(
                space,
                ctx,
                &mut worker.transfer,
                ext,
                idx.start,
                &mut states,
                drop_host,
                protect,
                watch,
            )
        });
        let zero_runs = match moved {
            Ok(z) => z,
            Err(e) => {
                release_all(ext, idx.start, &states);
                return Err(e);
            }
        };
        if held {
            launch.held.push((Arc::clone(ext), idx));
        } else {
            release_all(ext, idx.start, &states);
            // Nothing wrote the zero-filled pages and nothing will: no kernel writes them.
            // (Launches are serialized by the worker lock; a fault that claimed one since
            // the release leaves it alone.)
            for r in zero_runs {
                for k in r {
                    ext.cell(idx.start + k).mark_zero();
                }
            }
        }
    }
    if purpose == Purpose::Prefetch {
        return Ok(());
    }
    for &(page, write) in &roles.edges {
        let ext = ext_of(page);
        let i = ext.page_index(page);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spins = 0;
        let t0 = trace::clock();
        let st = loop {
            let mut st = claim_all(ext, i..i + 1, true);
            let moved = replay(space, watch, ext, i..i + 1).and_then(|()| {
                if write {
                    to_host_claimed(space, &mut worker.transfer, ext, i, &mut st, false)
                } else {
                    Ok((0, None))
                }
            });
            release_all(ext, i, &st);
            match moved {
                Ok((b, None)) => {
                    Counters::add(&ctx.owner.counters.bytes_to_host, b);
                    let edge = trace::Home::Edge as u64;
                    trace::moved(trace::Kind::ToHost, t0, ext, (page, PAGE), b, edge);
                    break st;
                }
                // Another thread's munmap/madvise event is unread: wait for the handler.
                Ok((_, Some(InstallStop::Again))) if std::time::Instant::now() < deadline => {
                    backoff(&mut spins)
                }
                Ok((_, Some(_))) => {
                    return Err(Error::UnsupportedMemory {
                        addr: page,
                        len: PAGE,
                        reason: MemoryReason::NotMapped,
                    })
                }
                Err(e) => return Err(e),
            }
        };
        if st[0] != Residence::Host {
            continue; // the device copy is valid for the whole page
        }
        let mut regions: Vec<(u64, &[u8])> = Vec::new();
        for &bi in mirrored {
            let b = &bindings[bi];
            let (lo, hi) = (b.addr.max(page), (b.addr + b.len).min(page + PAGE));
            if lo >= hi {
                continue;
            }
            // SAFETY: lo..hi lies inside binding `bi`, a live borrow for the whole launch.
            regions.push((ext.offset_of(lo), unsafe {
                std::slice::from_raw_parts(lo as *const u8, hi - lo)
            }));
            if b.write {
                launch.edge_out.push((bi, lo..hi));
            }
        }
        let t0 = trace::clock();
        // SAFETY: the edge page was claimed and released above while the worker lock is held;
        // only a launch (under that lock) writes a page's device copy while it is `Host`.
        unsafe { worker.transfer.upload(&ext.device().block, &regions) }?;
        let bytes = regions.iter().map(|r| r.1.len() as u64).sum();
        Counters::add(&ctx.owner.counters.bytes_to_device, bytes);
        let path = trace::path_of(&worker.transfer);
        trace::moved(trace::Kind::ToDevice, t0, ext, (page, PAGE), bytes, path);
    }
    Ok(())
}

/// Pages `pages` of `ext` were just claimed (and re-read from the binding, so they lost
/// any earlier `GONE`): marks `GONE` again those that the launch's memory lost since it began
/// (`fault::watch`), and fails if it lost anything — the launch is not to act on memory that
/// may now be somebody else's.
fn replay(space: &AddressSpace, watch: &LaunchWatch, ext: &Ext, pages: Range<usize>) -> Result<()> {
    let mut lost = watch.buffer();
    let held = space.hold_events();
    watch.lost_into(&held, &mut lost);
    mark_lost(ext, pages, &lost);
    drop(held);
    match lost.first() {
        Some(r) => Err(watch::unmapped(r)),
        None => Ok(()),
    }
}

/// Moves one claimed interior run (pages `first..first + states.len()` of `ext`) to the
/// device: `Shared` (read, `protect`), `Host` (read, left writable) or `Device`
/// (`drop_host`). Updates `states` as it goes, so that on error they describe reality. Returns the runs (indices into `states`) of pages that were
/// never touched, zero-filled on the device and now `Device`.
#[allow(clippy::too_many_arguments)]
fn migrate_run(
    space: &AddressSpace,
    ctx: &DeviceContext,
    transfer: &mut Transfer,
    ext: &Ext,
    first: usize,
    states: &mut [Residence],
    drop_host: bool,
    protect: bool,
    watch: &LaunchWatch,
) -> Result<Vec<Range<usize>>> {
    let n = states.len();
    let mut present = vec![sys::PageEntry::default(); n];
    space
        .pagemap
        .query(ext.page_addr(first), &mut present)
        .map_err(|e| Error::os("read /proc/self/pagemap", e))?;
    let filled = |k: usize| present[k].present() || present[k].swapped();
    let host =
        |k: usize, want_filled: bool| states[k] == Residence::Host && filled(k) == want_filled;

    let copy_runs = runs_where(n, |k| host(k, true));
    let zero_runs = runs_where(n, |k| host(k, false));
    let region = |r: &Range<usize>| {
        (
            ext.offset_of(ext.page_addr(first + r.start)),
            r.len() * PAGE,
        )
    };
    // An input the CPU rewrites after every launch is uploaded without protection and left
    // `Host` (`mirror::rewrite`, `protect` false): its next rewrite takes no fault.
    if protect {
        // Protocol rule 1: write-protect before copying, so a concurrent writer waits.
        for r in &copy_runs {
            write_protect(
                &space.backend,
                ext.page_addr(first + r.start),
                r.len() * PAGE,
                true,
            )?;
        }
    }
    let uploads: Vec<(u64, &[u8])> = copy_runs
        .iter()
        .map(|r| {
            let (off, len) = region(r);
            // SAFETY: interior pages lie wholly inside a binding, a live borrow for the whole
            // operation; they are present or swapped (pagemap), so reading does not fault
            // into the handler while we hold them claimed.
            (off, unsafe {
                std::slice::from_raw_parts(ext.page_addr(first + r.start) as *const u8, len)
            })
        })
        .collect();
    let zeros: Vec<(u64, u64)> = zero_runs
        .iter()
        .map(|r| {
            let (o, l) = region(r);
            (o, l as u64)
        })
        .collect();
    let t0 = trace::clock();
    // SAFETY: the run is claimed by the caller: nothing else reads or writes its device copy.
    unsafe { transfer.upload(&ext.device().block, &uploads) }?;
    let t1 = trace::clock();
    // SAFETY: as above.
    unsafe { transfer.zero(&ext.device().block, &zeros) }?;
    let (copied, zeroed) = (
        uploads.iter().map(|u| u.1.len() as u64).sum(),
        zeros.iter().map(|z| z.1).sum(),
    );
    Counters::add(&ctx.owner.counters.bytes_to_device, copied);
    Counters::add(&ctx.owner.counters.bytes_zero_filled, zeroed);
    let run = (ext.page_addr(first), n * PAGE);
    let path = trace::path_of(transfer);
    trace::moved(trace::Kind::ToDevice, t0, ext, run, copied, path);
    trace::moved(trace::Kind::ZeroFill, t1, ext, run, zeroed, path);

    // Both copies are valid now: read runs are `Shared` (write-protected above); written
    // runs stay `Host` until their host copy is dropped, so that a failure before leaves
    // them as they are (not write-protected, so not `Shared`).
    let mut droppable: Vec<bool> = states.iter().map(|&s| s == Residence::Shared).collect();
    for r in &copy_runs {
        if drop_host {
            droppable[r.clone()].fill(true);
        } else if protect {
            states[r.clone()].fill(Residence::Shared);
        }
    }
    for r in &zero_runs {
        // Absent on the host, valid (zero) on the device: a touch must fault (userfaultfd
        // does so already; the signal backend needs PROT_NONE).
        space
            .backend
            .trap_absent(ext.page_addr(first + r.start), r.len() * PAGE)
            .map_err(|e| Error::os("mprotect(PROT_NONE)", e))?;
        states[r.clone()].fill(Residence::Device);
    }
    if drop_host {
        // A page absent on the host loses nothing to a drop, and both ways of dropping pass
        // over holes: runs apart only by absent pages go in one call, so that a buffer
        // scattered with host pages (a thousand CPU edits) costs a few calls, not one per
        // run, each flushing the TLBs of every CPU the process runs on.
        for r in spans_across(n, |k| droppable[k], |k| !filled(k)) {
            let addr = ext.page_addr(first + r.start);
            // SAFETY: interior pages of a live borrow, claimed, valid on the device:
            // dropping the host copy loses nothing; the next touch faults and copies it back.
            let dropped = unsafe { space.drop_host(watch, addr, r.len() * PAGE) }
                .map_err(|e| Error::os("drop host pages (UFFDIO_MOVE, MADV_DONTNEED)", e))?;
            match dropped {
                Dropped::All => states[r].fill(Residence::Device),
                Dropped::Lost { done } | Dropped::Refused { done } => {
                    states[r.start..r.start + done / PAGE].fill(Residence::Device);
                    watch.check()?;
                    return Err(Error::os(
                        "drop host pages",
                        std::io::Error::from(std::io::ErrorKind::Interrupted),
                    ));
                }
            }
        }
        // Our own discards raised REMOVE events; make sure the handler has seen them while
        // the pages are still claimed (it ignores REMOVE on claimed pages). The signal
        // backend has no events.
        if space.backend.signal().is_none() {
            space.sync_events();
        }
    }
    Ok(zero_runs)
}

/// Marks `GONE` in the new extents `added` every page whose host memory vanished while an
/// absorbed extent of `retired` held it (set by the handler after the merge claimed it), and
/// every page in `lost`. Call with the gate held, as the new extents are published.
pub(crate) fn carry_losses<D>(
    retired: &[Arc<Extent<D>>],
    added: &[Arc<Extent<D>>],
    lost: &[Range<usize>],
) {
    for new in added {
        for old in retired.iter().filter(|o| new.contains(o.start())) {
            let base = new.page_index(old.start());
            for i in 0..old.pages() {
                if old.cell(i).load().gone() {
                    new.cell(base + i).mark_gone();
                }
            }
        }
        mark_lost(new, new.page_span(&new.range()), lost);
    }
}

/// Marks `GONE` the pages of `ext` in `pages` that lie in a range of `lost`.
pub(crate) fn mark_lost<D>(ext: &Extent<D>, pages: Range<usize>, lost: &[Range<usize>]) {
    for r in lost {
        let span = ext.page_span(r);
        for i in span.start.max(pages.start)..span.end.min(pages.end) {
            ext.cell(i).mark_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(first_page: usize, pages: usize) -> Arc<Extent<()>> {
        Arc::new(Extent::new(first_page * PAGE, pages, (), |_| {
            Residence::Device
        }))
    }

    #[test]
    fn losses_are_marked_only_where_they_lie() {
        let e = ext(10, 4);
        mark_lost(&e, 0..4, &[11 * PAGE + 1..12 * PAGE, 40 * PAGE..41 * PAGE]);
        let gone: Vec<bool> = (0..4).map(|i| e.cell(i).load().gone()).collect();
        assert_eq!(gone, [false, true, false, false]);
        let all = 10 * PAGE..14 * PAGE;
        mark_lost(&e, 2..4, std::slice::from_ref(&all));
        let gone: Vec<bool> = (0..4).map(|i| e.cell(i).load().gone()).collect();
        assert_eq!(
            gone,
            [false, true, true, true],
            "only within the pages asked for"
        );
    }

    #[test]
    fn a_merged_extent_takes_over_what_its_parts_lost() {
        // Two absorbed extents; a page of the first went gone after the merge claimed it,
        // and the watch says a page of the new range was lost before any extent covered it.
        let (a, b) = (ext(10, 2), ext(14, 2));
        a.cell(1).mark_gone();
        let merged = ext(10, 6);
        let lost = 12 * PAGE..13 * PAGE;
        carry_losses(
            &[a, b],
            std::slice::from_ref(&merged),
            std::slice::from_ref(&lost),
        );
        let gone: Vec<bool> = (0..6).map(|i| merged.cell(i).load().gone()).collect();
        assert_eq!(gone, [false, true, true, false, false, false]);
        assert_eq!(merged.cell(0).load().residence(), Residence::Device);
        assert_eq!(
            merged.cell(1).load().residence(),
            Residence::Host,
            "gone is Host"
        );
    }
}
