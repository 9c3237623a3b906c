//! A prepared launch, and settling it after its kernel: written pages released as `Device`
//! (holding the kernel's results), written edge bytes and bindings copied through written back, the
//! fault service poked so that deferred faults go on, what the launch's memory lost meanwhile
//! reported.

use std::ops::Range;
use std::sync::{Arc, PoisonError};

use super::home::to_host;
use super::{Binding, DeviceContext, Placement};
use crate::device::Transfer;
use crate::mirror::advice::Advice;
use crate::mirror::page::Residence;
use crate::mirror::plan::binding_pages;
use crate::mirror::PAGE;
use crate::pages::backoff;
use crate::space::watch::{self, LaunchWatch};
use crate::space::{AddressSpace, Counters, Ext};
use crate::sys::{self, guarded};
use crate::trace;
use crate::trap::uffd::CopyError;
use crate::{Error, Result};

/// A prepared launch: bindings resident, written interior pages claimed, the bindings'
/// pages watched for unmaps until it is settled.
pub(crate) struct Launch {
    pub placements: Vec<Placement>,
    bindings: Vec<Binding>,
    /// Written interior runs, claimed until the kernel is done.
    pub held: Vec<(Arc<Ext>, Range<usize>)>,
    /// Written edge bytes to copy back after the kernel: (binding index, byte range).
    pub edge_out: Vec<(usize, Range<usize>)>,
    watch: Option<LaunchWatch>,
    /// The call site that launched it (`trace`; 0 untraced).
    site: usize,
}

impl Launch {
    /// A launch that moved nothing (every binding is accessed in place).
    pub fn nothing() -> Launch {
        Launch {
            placements: Vec::new(),
            bindings: Vec::new(),
            held: Vec::new(),
            edge_out: Vec::new(),
            watch: None,
            site: 0,
        }
    }

    /// The launch, keeping `watch` until it is settled ([`finish`](Self::finish) reports
    /// what its memory lost meanwhile).
    pub fn watched(mut self, watch: LaunchWatch) -> Launch {
        self.watch = Some(watch);
        self
    }

    /// An empty launch of `bindings`, to which the launch path adds placements, held pages
    /// and edges as it moves them.
    pub fn new(bindings: &[Binding]) -> Launch {
        Launch {
            placements: Vec::new(),
            bindings: bindings.to_vec(),
            held: Vec::new(),
            edge_out: Vec::new(),
            watch: None,
            site: if trace::on() {
                trace::current_site()
            } else {
                0
            },
        }
    }

    /// Releases written interior pages: they end `Device`, holding the kernel's results.
    pub fn release_held(&mut self) {
        for (ext, idx) in self.held.drain(..) {
            for i in idx {
                ext.cell(i).release(Residence::Device);
            }
        }
    }

    /// Settles the launch after the kernel: releases written pages, copies written edge
    /// bytes and bindings copied through back, wakes deferred faults.
    pub fn finish(mut self, ctx: &DeviceContext, transfer: &mut Transfer) -> Result<()> {
        let space = ctx.space;
        self.release_held();
        space.poke();
        let mut copied = 0u64;
        let mut copied_through = 0u64;
        let mut result = Ok(());
        for (bi, r) in &self.edge_out {
            if let Placement::Mirrored { ext, .. } = &self.placements[*bi] {
                let mut bytes = vec![0u8; r.len()];
                let mut keep = |_: usize, at: usize, got: &[u8]| {
                    bytes[at..at + got.len()].copy_from_slice(got);
                    Ok(())
                };
                let region = [(ext.offset_of(r.start), r.len())];
                let t0 = trace::clock();
                // SAFETY: the kernel has finished (the dispatcher waited); edge bytes belong
                // to this launch alone.
                let got = unsafe { transfer.download(&ext.device().block, &region, &mut keep) }
                    .and_then(|()| write_edge(space, self.watch.as_ref(), r.start, &bytes));
                copied += r.len() as u64;
                let edge = trace::Home::Edge as u64;
                let span = (r.start, r.len());
                trace::moved(trace::Kind::ToHost, t0, ext, span, r.len() as u64, edge);
                result = result.and(got);
            }
        }
        for (b, p) in self.bindings.iter().zip(&self.placements) {
            if let (true, Placement::Transient { block }) = (b.write, p) {
                let mut write_back = |_: usize, at: usize, bytes: &[u8]| {
                    let dst = b.addr + at;
                    // SAFETY: the range lies inside a `&mut` binding borrowed for the launch;
                    // a program that unmapped it meanwhile gets an error, not a signal.
                    unsafe { guarded::copy(dst as *mut u8, bytes.as_ptr(), bytes.len()) }
                        .map_err(|f| watch::unmapped(&(dst + f.copied..dst + bytes.len())))
                };
                let t0 = trace::clock();
                // SAFETY: the kernel has finished; the transient block is this launch's.
                let got = unsafe { transfer.download(block, &[(0, b.len)], &mut write_back) };
                copied_through += b.len as u64;
                if trace::on() {
                    let mut e = trace::Event::here(trace::Kind::CopyOut).range(b.addr, b.len);
                    (e.dur, e.ts, e.site) = (e.ts - t0, t0, self.site);
                    (e.bytes, e.a) = (b.len as u64, u64::from(b.number));
                    e.record();
                }
                result = result.and(got);
            }
        }
        Counters::add(&ctx.owner.counters.bytes_to_host, copied);
        Counters::add(&ctx.owner.counters.copied_to_host, copied_through);
        // A launch whose memory was unmapped while it ran fails (its pages there are `GONE`).
        let watched = self.watch.as_ref().map_or(Ok(()), LaunchWatch::check);
        result
            .and(watched)
            .and_then(|()| self.settle_preferred_host(space, ctx, transfer))
    }

    /// Written pages advised `PreferredLocation(Host)` come home now, staying valid on the
    /// device (`Shared`): the CPU reads the results without faults.
    fn settle_preferred_host(
        &self,
        space: &AddressSpace,
        ctx: &DeviceContext,
        transfer: &mut Transfer,
    ) -> Result<()> {
        let home = Advice::PreferredLocation(crate::Location::Host);
        let advised: Vec<(Arc<Ext>, Range<usize>)> = {
            let advice = ctx.advice.lock().unwrap_or_else(PoisonError::into_inner);
            let mut out = Vec::new();
            for (b, p) in self.bindings.iter().zip(&self.placements) {
                if let (true, Placement::Mirrored { ext, .. }) = (b.write, p) {
                    for (r, _) in advice
                        .within(binding_pages(b.addr, b.len).span)
                        .filter(|(_, a)| *a == home)
                    {
                        out.push((Arc::clone(ext), ext.page_span(&r)));
                    }
                }
            }
            out
        };
        for (ext, pages) in advised {
            to_host(space, transfer, &ext, pages, true)?; // counts its bytes
        }
        Ok(())
    }
}

/// Writes a kernel's `bytes` into the part at `dst` of a written binding's edge page (the
/// rest of the page belongs to other code), unless the launch's memory lost that page: then
/// it may belong to a mapping made since, and is left alone.
///
/// With no event processed meanwhile (the gate), a page that is present, or swapped out, and
/// not write-protected is written in place: the write cannot fault into the handler (a
/// discard of a registered page waits for its event to be read first), and the copy is
/// guarded against an unmap. An absent page is filled whole by `UFFDIO_COPY` (zeros around
/// the bytes: what an absent page reads as), which refuses a mapping that is not registered
/// or is changing. A write-protected page is written without the gate: its write fault is
/// the handler's to serve. Under the `signal` backend (runtime-owned memory, unmapped only
/// under the mirror's writer lock) the bytes are written at once.
fn write_edge(
    space: &AddressSpace,
    watch: Option<&LaunchWatch>,
    dst: usize,
    bytes: &[u8],
) -> Result<()> {
    let write = || {
        // SAFETY: `dst..dst + bytes.len()` lies inside a `&mut` binding borrowed for the
        // launch; a guarded copy survives a buggy program unmapping it.
        unsafe { guarded::copy(dst as *mut u8, bytes.as_ptr(), bytes.len()) }
            .map_err(|f| watch::unmapped(&(dst + f.copied..dst + bytes.len())))
    };
    let Some(watch) = watch.filter(|_| space.backend.signal().is_none()) else {
        return write();
    };
    let page = dst - dst % PAGE;
    // Allocated before the gate is taken: nothing may be allocated while it is held.
    let mut whole = vec![0u8; PAGE];
    whole[dst - page..dst - page + bytes.len()].copy_from_slice(bytes);
    let mut lost = watch.buffer();
    let mut spins = 0;
    loop {
        let held = space.hold_events();
        watch.lost_into(&held, &mut lost);
        if lost.iter().any(|r| r.start < page + PAGE && page < r.end) {
            return Ok(()); // the launch reports the loss
        }
        let mut entry = [sys::PageEntry::default()];
        space
            .pagemap
            .query(page, &mut entry)
            .map_err(|e| Error::os("read /proc/self/pagemap", e))?;
        let e = entry[0];
        if e.uffd_wp() {
            drop(held);
            return write();
        }
        if e.present() || e.swapped() {
            return write();
        }
        // SAFETY: `whole` is readable; the page is absent, in a registered range (or the
        // copy refuses), and its absent contents read as zeros, which `whole` keeps around
        // the binding's bytes.
        match unsafe { space.backend.copy(page, whole.as_ptr(), PAGE, false, true) } {
            Ok(_) => return Ok(()),
            Err(CopyError::Exists { .. }) => {} // filled meanwhile: present now
            Err(CopyError::Again { .. }) => {
                drop(held);
                backoff(&mut spins);
            }
            Err(CopyError::Gone(_) | CopyError::Failed(_)) => {
                return Err(watch::unmapped(&(page..page + PAGE)))
            }
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        // A launch abandoned after prepare (an error before submit) still releases its pages.
        self.release_held();
    }
}
