//! Bulk moves home: `prefetch(Host)`, eviction, a runtime's drop, `fork()`, and memory
//! another runtime holds that a launch is about to use.
//!
//! A bulk move claims whole runs (waiting for owners), installs their `Device` pages with
//! `pages::install` — in two halves at once when the assistant is free — and releases each
//! page by its own outcome. A page whose mapping went away since it was claimed is skipped,
//! piece by piece under the gate (`pages::install::install_in_place`). Refused copies
//! (`EAGAIN`: an event is unread) are retried after a short sleep.

use std::ops::Range;
use std::sync::Arc;

use super::{reap, DeviceContext};
use crate::device::Transfer;
use crate::mirror::map::Writer;
use crate::mirror::page::Residence;
use crate::mirror::PAGE;
use crate::pages::halves::install_halves;
use crate::pages::install::{install_in_place, InstallStop, Kind};
use crate::pages::{claim_all, next_run, release_after_reading, write_protect};
use crate::space::{AddressSpace, Counters, DeviceCopy, Ext};
use crate::Result;

/// Brings pages `pages` of `ext` home: `Device` pages are installed (write-protected and
/// `Shared` if `keep_device`, else `Host`), `Shared` pages become `Host` unless
/// `keep_device`. Returns bytes copied.
pub(crate) fn to_host(
    space: &AddressSpace,
    transfer: &mut Transfer,
    ext: &Ext,
    pages: Range<usize>,
    keep_device: bool,
) -> Result<u64> {
    let mut bytes = 0;
    let mut attempts = 0;
    let t0 = crate::trace::clock();
    let result = loop {
        let first = pages.start;
        let mut states = claim_all(ext, pages.clone(), false);
        let r = to_host_claimed(space, transfer, ext, first, &mut states, keep_device);
        release_after_reading(ext, first, &states);
        match r {
            Ok((b, None)) => break Ok(bytes + b),
            Ok((b, Some(InstallStop::Again))) if attempts < 100 => {
                bytes += b;
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok((b, Some(_))) => break Ok(bytes + b),
            Err(e) => break Err(e),
        }
    };
    if let Ok(b) = result {
        Counters::add(&ext.device().owner.counters.bytes_to_host, b);
        let range = (ext.page_addr(pages.start), pages.len() * PAGE);
        let bulk = crate::trace::Home::Bulk as u64;
        crate::trace::moved(crate::trace::Kind::ToHost, t0, ext, range, b, bulk);
    }
    result
}

/// [`to_host`] on pages the caller claimed; updates `states` to what is true afterwards.
pub(crate) fn to_host_claimed(
    space: &AddressSpace,
    transfer: &mut Transfer,
    ext: &Ext,
    first: usize,
    states: &mut [Residence],
    keep_device: bool,
) -> Result<(u64, Option<InstallStop>)> {
    let trap = &space.backend;
    let mut bytes = 0;
    let settled = if keep_device {
        Residence::Shared
    } else {
        Residence::Host
    };
    // The pages go home where the mirror says they live; pages whose mapping went away
    // since they were claimed are skipped, here and again piece by piece under the gate as
    // they are copied (`install_in_place`): nothing lands in memory mapped there since.
    for (k, s) in states.iter_mut().enumerate() {
        if ext.cell(first + k).load().gone() {
            *s = Residence::Host;
        }
    }
    // Nothing allocates while the pages are claimed (`pages::claim_all`): runs are walked.
    let mut at = 0;
    while let Some(run) = next_run(states, &mut at, |r| r == Residence::Device) {
        let (a, b) = (first + run.start, first + run.end);
        // A large run is installed in two halves at once, the upper one by the fault
        // handler's assistant when it is free (`fault::assist`).
        let kind = Kind::Bulk {
            protect: keep_device,
        };
        let halves = install_halves(ext, a..b, kind, |part| {
            install_in_place(space, transfer, ext, part, kind)
        });
        // Each half by its own outcome; an error is returned only once both are recorded,
        // so no installed page is released as `Device`.
        let mut stop = None;
        let mut error = None;
        for (half, got) in halves.parts() {
            // A part that failed records what it placed before the failure.
            let (got, complete) = match got {
                Ok(g) => (g, g.stop.is_none()),
                Err(f) => {
                    error.get_or_insert(f.error);
                    (f.done, false)
                }
            };
            bytes += got.bytes;
            let done = if complete {
                half.len()
            } else {
                got.pages_done().min(half.len())
            };
            let start = half.start - first;
            for s in &mut states[start..start + done] {
                *s = settled;
            }
            stop = stop.or(got.stop);
        }
        if let Some(e) = error {
            return Err(e);
        }
        if let Some(stop) = stop {
            return Ok((bytes, Some(stop)));
        }
    }
    if !keep_device {
        let mut at = 0;
        while let Some(run) = next_run(states, &mut at, |r| r == Residence::Shared) {
            let (a, b) = (first + run.start, first + run.end);
            write_protect(trap, ext.page_addr(a), (b - a) * PAGE, false)?;
            for s in &mut states[run] {
                *s = Residence::Host;
            }
        }
    }
    Ok((bytes, None))
}

/// Brings home every page of extents that overlap `spans` but belong to another runtime,
/// using that runtime's tools. Call without holding the own worker lock.
pub(crate) fn evacuate_foreign(
    space: &AddressSpace,
    ctx: &Arc<DeviceContext>,
    spans: &[Range<usize>],
) -> Result<()> {
    // Unmaps already read by the handler must be processed, and dead extents gone, before
    // anything of another runtime is taken for live memory here.
    reap(space);
    for span in spans {
        for owner in owners(space, span.clone()) {
            if !Arc::ptr_eq(&owner, ctx) {
                // Whole extents: the launch will take over every page of them.
                bring_home(space, &owner, span.clone(), false, true)?;
            }
        }
    }
    Ok(())
}

/// The runtimes whose extents overlap `span` (each once).
pub(crate) fn owners(space: &AddressSpace, span: Range<usize>) -> Vec<Arc<DeviceContext>> {
    let mut out: Vec<Arc<DeviceContext>> = Vec::new();
    for e in space.mirror.overlapping(span) {
        if out.iter().any(|o| o.owns(&e)) {
            continue;
        }
        // A runtime dropped meanwhile has brought its memory home and left the mirror.
        if let Some(ctx) = DeviceContext::of(&e.device().owner) {
            out.push(ctx);
        }
    }
    out
}

/// Brings home the pages in `span` (all their pages, with `whole`) of every extent `owner`
/// holds there: `Device` pages are installed (`Shared` if `keep_device`, else `Host`), and
/// without `keep_device` `Shared` pages become `Host`. Returns bytes copied.
///
/// Takes the owner's worker, then the mirror's writer side, then looks the extents up: in
/// that order no launch can merge an extent away (retiring it with its pages claimed for
/// good) between the lookup and the claims — the race that a snapshot taken earlier loses.
pub(crate) fn bring_home(
    space: &AddressSpace,
    owner: &Arc<DeviceContext>,
    span: Range<usize>,
    keep_device: bool,
    whole: bool,
) -> Result<u64> {
    let mut worker = owner.lock_worker();
    let w = space.mirror.write();
    let exts = owned_overlapping(&w, owner, &span);
    let mut bytes = 0;
    for e in &exts {
        let pages = if whole {
            0..e.pages()
        } else {
            e.page_span(&span)
        };
        bytes += to_host(space, &mut worker.transfer, e, pages, keep_device)?;
    }
    drop(w);
    Ok(bytes)
}

/// The extents of `owner` that overlap `span`, looked up on the writer side (so that no
/// launch merges one away before the caller claims its pages).
pub(crate) fn owned_overlapping(
    w: &Writer<'_, DeviceCopy>,
    owner: &Arc<DeviceContext>,
    span: &Range<usize>,
) -> Vec<Arc<Ext>> {
    w.snapshot()
        .iter()
        .filter(|e| owner.owns(e))
        .filter(|e| e.start() < span.end && span.start < e.end())
        .cloned()
        .collect()
}
