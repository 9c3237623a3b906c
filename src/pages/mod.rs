//! Moving claimed pages: the layer below both the fault service and migration.
//!
//! Whoever moves a page claims it first (`BUSY`, `mirror::page`) and releases it after; the
//! functions here do the moving in between — claiming and releasing runs of pages, copying
//! device bytes into absent host pages ([`install`]), write-protecting the launch path's
//! runs, and installing a large range in two halves at once ([`halves`]). The fault handler
//! uses them for one window, migration for whole runs; neither calls into the other.

pub(crate) mod halves;
pub(crate) mod install;

use std::ops::Range;

use crate::mirror::extent::Extent;
use crate::mirror::page::Residence;
use crate::trap::Backend;
use crate::{Error, Result};

/// Claims pages `pages` of `ext` whatever their state, waiting for current owners (the fault
/// handler holds a page for one chunk copy; a launcher for one kernel).
///
/// A thread holding claims on pages outside live borrows (moving a dead or foreign extent
/// home, evicting, merging) must not allocate until it releases them: `malloc` may hand out
/// exactly those pages, and touching one would fault on a page the thread itself holds.
///
/// With `revalidate`, a page whose host memory vanished earlier (`GONE`) is treated as live
/// `Host` memory again — for launches, which read it afresh from the binding. Moves home
/// leave it `GONE`: there is nothing to bring back, and a dead extent must stay dead so that
/// it is reaped instead of being taken for live memory mapped at the same address.
pub(crate) fn claim_all<D>(
    ext: &Extent<D>,
    pages: Range<usize>,
    revalidate: bool,
) -> Vec<Residence> {
    // Every byte of the result is written before the first claim: the allocation may lie in
    // the very pages about to be claimed (a freed heap chunk whose pages are still mirrored),
    // and once they are claimed a fault on them would wait for this thread for ever. Written
    // now, such pages come home first; a page already at home stays writable when claimed.
    let mut states = vec![Residence::Host; pages.len()];
    for (s, i) in states.iter_mut().zip(pages) {
        let cell = ext.cell(i);
        let mut spins = 0u32;
        *s = loop {
            if let Some(bits) = cell.try_claim(|_| true) {
                if bits.gone() && revalidate {
                    cell.revalidate();
                }
                break bits.residence();
            }
            backoff(&mut spins);
        };
    }
    states
}

pub(crate) fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 256 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// Releases claimed pages to the residences in `states`.
pub(crate) fn release_all<D>(ext: &Extent<D>, first: usize, states: &[Residence]) {
    for (k, &r) in states.iter().enumerate() {
        ext.cell(first + k).release(r);
    }
}

/// Releases pages claimed by a move that only read their device copies (a move home): those
/// it left `Device` keep the state they were claimed in, `ZERO` included; the others go to
/// the residences in `states`.
pub(crate) fn release_after_reading<D>(ext: &Extent<D>, first: usize, states: &[Residence]) {
    for (k, &r) in states.iter().enumerate() {
        let cell = ext.cell(first + k);
        if r == Residence::Device {
            cell.unclaim();
        } else {
            cell.release(r);
        }
    }
}

/// `UFFDIO_WRITEPROTECT` on the launch path. The kernel refuses it with `EAGAIN` while a
/// non-cooperative event (another thread's `munmap`, `madvise`, `mremap`) waits to be read;
/// the handler reads events promptly, so a short wait and a retry succeed.
///
/// Clearing protection on a range that another thread unmapped meanwhile (`ENOENT`: no
/// registered mapping left there; its `UNMAP` marks the pages gone) is done: nothing is
/// left to clear. Bringing home or merging a neighbour's extent races its `free` that way.
/// Should a registered mapping lie behind an unregistered one, the kernel stops there; a
/// page it left protected is unprotected by the handler on its first write fault.
pub(crate) fn write_protect(trap: &Backend, addr: usize, len: usize, protect: bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut spins = 0;
    loop {
        match trap.write_protect(addr, len, protect, !protect) {
            Err(e)
                if e.raw_os_error() == Some(linux_raw_sys::errno::EAGAIN as i32)
                    && std::time::Instant::now() < deadline =>
            {
                backoff(&mut spins)
            }
            Err(e) if !protect && e.raw_os_error() == Some(linux_raw_sys::errno::ENOENT as i32) => {
                return Ok(())
            }
            Err(e) if protect => return Err(Error::os("UFFDIO_WRITEPROTECT (set)", e)),
            Err(e) => return Err(Error::os("UFFDIO_WRITEPROTECT (clear)", e)),
            Ok(()) => return Ok(()),
        }
    }
}

/// The next maximal run of indices from `*at` whose element satisfies `pred`, moving `*at`
/// past it; allocates nothing.
pub(crate) fn next_run<T: Copy>(
    items: &[T],
    at: &mut usize,
    pred: impl Fn(T) -> bool,
) -> Option<Range<usize>> {
    while *at < items.len() && !pred(items[*at]) {
        *at += 1;
    }
    let start = *at;
    while *at < items.len() && pred(items[*at]) {
        *at += 1;
    }
    (start < *at).then_some(start..*at)
}

/// Maximal runs of indices whose element satisfies `pred`.
pub(crate) fn runs<T: Copy>(items: &[T], pred: impl Fn(T) -> bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(r) = next_run(items, &mut at, &pred) {
        out.push(r);
    }
    out
}

/// Maximal spans of `0..n` that begin and end where `want` holds and hold only indices where
/// `want` or `gap` does: the runs of `want`, joined across gaps that `gap` lets them span.
pub(crate) fn spans_across(
    n: usize,
    want: impl Fn(usize) -> bool,
    gap: impl Fn(usize) -> bool,
) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut open = false;
    for k in 0..n {
        if want(k) {
            match out.last_mut() {
                Some(last) if open => last.end = k + 1,
                _ => out.push(k..k + 1),
            }
            open = true;
        } else if !gap(k) {
            open = false;
        }
    }
    out
}

/// Maximal runs of `0..n` where `pred` holds.
pub(crate) fn runs_where(n: usize, pred: impl Fn(usize) -> bool) -> Vec<Range<usize>> {
    let idx: Vec<usize> = (0..n).collect();
    runs(&idx, pred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_maximal_and_walked_without_allocating() {
        let v = [true, true, false, true, false, false, true];
        assert_eq!(runs(&v, |b| b), vec![0..2, 3..4, 6..7]);
        assert_eq!(runs_where(5, |i| i % 4 != 0), vec![1..4]);
        let mut at = 0;
        assert_eq!(next_run(&v, &mut at, |b| !b), Some(2..3));
        assert_eq!(next_run(&v, &mut at, |b| !b), Some(4..6));
        assert_eq!(next_run(&v, &mut at, |b| !b), None);
    }

    #[test]
    fn spans_join_runs_across_gaps_only() {
        // w: wanted, g: gap, x: neither.
        let s = b"gwgwwxwgg xgw";
        let want = |k: usize| s[k] == b'w';
        let gap = |k: usize| s[k] == b'g';
        assert_eq!(spans_across(s.len(), want, gap), vec![1..5, 6..7, 12..13]);
        assert!(spans_across(3, |_| false, |_| true).is_empty());
    }

    #[test]
    fn claims_wait_for_nobody_and_revalidate_only_when_asked() {
        let e = Extent::new(0, 3, (), |i| {
            [Residence::Host, Residence::Device, Residence::Shared][i]
        });
        e.cell(1).mark_gone();
        let states = claim_all(&e, 0..3, false);
        assert_eq!(
            states,
            [Residence::Host, Residence::Host, Residence::Shared]
        );
        assert!(
            e.cell(1).load().gone(),
            "a move home leaves a gone page gone"
        );
        release_all(&e, 0, &states);
        let again = claim_all(&e, 1..2, true);
        assert!(
            !e.cell(1).load().gone(),
            "a launch re-reads it from its binding"
        );
        release_all(&e, 1, &[Residence::Device]);
        assert_eq!(e.cell(1).load().residence(), Residence::Device);
        drop(again);
    }
}
