//! Where pages settle: advice (`Runtime::advise`), ranges the device accesses in place, and
//! thrash detection, which settles bouncing bindings in place by itself.

use super::{epoch, Runtime};
use crate::device::{self};
use crate::in_place::{InPlace, Where};
use crate::migrate::{self, Binding, Worker};
use crate::mirror::advice::Advice;
use crate::mirror::plan::binding_pages;
use crate::mirror::PAGE;
use crate::space::Counters;
use crate::{sys, Error, MemoryReason, Result};

use bytemuck::Pod;

impl Runtime {
    /// Gives `advice` for the pages under `data` (see [`Advice`]); later advice on the same
    /// pages replaces it, and [`Advice::Unset`] removes it. `PreferredLocation` also moves
    /// the range there now, as [`prefetch`](Self::prefetch) does.
    ///
    /// Advice belongs to the address range, not to the allocation: it outlives a `free` and
    /// applies to whatever is mapped there later (it never changes what a program reads,
    /// only where pages settle).
    #[track_caller]
    pub fn advise<T: Pod>(&self, data: &[T], advice: Advice) -> Result<()> {
        let _site = crate::trace::Site::enter(std::panic::Location::caller());
        if crate::trace::on() {
            let mut e = crate::trace::Event::here(crate::trace::Kind::Advise)
                .range(data.as_ptr() as usize, std::mem::size_of_val(data));
            e.a = match advice {
                Advice::Unset => 0,
                Advice::ReadMostly => 1,
                Advice::PreferredLocation(crate::Location::Device) => 2,
                Advice::PreferredLocation(crate::Location::Host) => 3,
                Advice::AccessInPlace => 4,
            };
            e.record();
        }
        self.advise_untraced(data, advice)
    }

    /// [`Runtime::advise`], less its trace event.
    fn advise_untraced<T: Pod>(&self, data: &[T], advice: Advice) -> Result<()> {
        self.check_owner()?;
        let len = std::mem::size_of_val(data);
        if len == 0 {
            return Ok(());
        }
        let addr = data.as_ptr() as usize;
        let span = binding_pages(addr, len).span;
        if advice == Advice::AccessInPlace {
            self.access_in_place(addr, len)?;
        } else {
            // Any other advice ends access in place on these pages.
            self.ctx.lock_worker().in_place.remove_overlapping(&span);
        }
        {
            let mut map = self
                .ctx
                .advice
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.set(span.clone(), advice);
            // Extents mirrored already learn it now (from the whole map: other advice on
            // part of an extent leaves the rest's `ReadMostly`); later ones when a launch or
            // a prefetch makes them.
            self.space.mirror.for_each_overlapping(span, |e| {
                e.set_read_mostly(map.any(e.start()..e.end(), Advice::ReadMostly));
            });
        }
        match advice {
            Advice::PreferredLocation(to) => self.prefetch(data, to),
            Advice::ReadMostly | Advice::Unset | Advice::AccessInPlace => Ok(()),
        }
    }

    /// Which bindings the device accesses in place (`Advice::AccessInPlace`) and which the
    /// mirror moves; a binding partly in place is refused. Imports whose pages the program
    /// unmapped or discarded are dropped first.
    pub(super) fn place(&self, worker: &mut Worker, bindings: &[Binding]) -> Result<Vec<Where>> {
        if worker.in_place.is_empty() {
            return Ok(vec![Where::Mirrored; bindings.len()]);
        }
        self.space.sync_events();
        worker.in_place.reap();
        bindings
            .iter()
            .map(|b| match worker.in_place.place(b.addr, b.len) {
                Where::Partly => Err(Error::UnsupportedMemory {
                    addr: b.addr,
                    len: b.len,
                    reason: MemoryReason::PartlyInPlace,
                }),
                w @ Where::InPlace { .. } => b.check_aligned().map(|()| w),
                w => Ok(w),
            })
            .collect()
    }

    /// Tells the extents under `bindings` whether they are advised `ReadMostly` (the fault
    /// handler never locks the advice; extents made or joined since the advice learn it
    /// here).
    pub(super) fn mark_read_mostly(&self, bindings: &[Binding]) {
        let advice = self
            .ctx
            .advice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if advice.is_empty() {
            return;
        }
        for b in bindings {
            let span = binding_pages(b.addr, b.len).span;
            self.space.mirror.for_each_overlapping(span, |e| {
                e.set_read_mostly(advice.any(e.start()..e.end(), Advice::ReadMostly));
            });
        }
    }

    /// Settles the bindings that thrash (`mirror::thrash`) on the host, accessed in place;
    /// those whose range cannot be imported are given up on.
    pub(super) fn settle_thrashing(&self, bindings: &[Binding]) {
        let Some(policy) = self.ctx.thrash_policy else {
            return;
        };
        let now = epoch().elapsed().as_nanos() as u64;
        let thrashing: Vec<Binding> = {
            let mut t = self
                .ctx
                .thrash
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bindings
                .iter()
                .filter(|b| {
                    // Every launch passes here: sum the extents' fault counters in place
                    // (no list of extents is built).
                    let span = binding_pages(b.addr, b.len).span;
                    let (mut mirrored, mut faults) = (false, 0);
                    self.space.mirror.for_each_overlapping(span.clone(), |e| {
                        mirrored = true;
                        faults += e.cpu_faults();
                    });
                    // Not mirrored: in place already, or never migrated.
                    mirrored && t.observe(&policy, span, faults, now)
                })
                .copied()
                .collect()
        };
        for b in thrashing {
            let span = binding_pages(b.addr, b.len).span;
            // On a CPU device (lavapipe) an import is the program's memory itself, not its
            // pinned pages: a kernel running while a buggy program unmaps the range would
            // read or write whatever is mapped there then. There only runtime-owned memory,
            // which no launch's borrow lets anybody unmap, is settled in place.
            if self.ctx.owner.device.info().device_type == device::DeviceType::Cpu
                && !crate::trap::signal::is_managed(&span)
            {
                self.ctx
                    .thrash
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .give_up(&span);
                continue;
            }
            let settled = self.access_in_place(b.addr, b.len);
            let mut t = self
                .ctx
                .thrash
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match settled {
                Ok(()) => {
                    t.forget(&span);
                    Counters::add(&self.ctx.owner.counters.thrash_settled, 1);
                    if crate::trace::on() {
                        crate::trace::Event::here(crate::trace::Kind::Thrash)
                            .range(b.addr, b.len)
                            .record();
                    }
                    tracing::debug!(
                        addr = b.addr,
                        len = b.len,
                        "thrashing: accessed in place from now on"
                    );
                }
                Err(e) => {
                    t.give_up(&span);
                    tracing::debug!(addr = b.addr, len = b.len, error = %e, "thrashing, but cannot be accessed in place");
                }
            }
        }
    }

    /// `advise(.., AccessInPlace)`: see [`Advice::AccessInPlace`] and `in_place`.
    fn access_in_place(&self, addr: usize, len: usize) -> Result<()> {
        let unsupported = |reason| Error::UnsupportedMemory { addr, len, reason };
        let align = self
            .ctx
            .owner
            .device
            .host_import_alignment()
            .ok_or_else(|| unsupported(MemoryReason::NoHostImport))?
            .max(PAGE as u64);
        let end = (addr + len).next_multiple_of(align as usize);
        if self.space.backend.signal().is_some() {
            // The signal backend hears of no `munmap` of memory it did not allocate, so it
            // could not tell when an import of such memory goes stale. Its own `Managed`
            // memory is private and anonymous; its pages may be protected by now, which
            // `classify` would refuse.
            if !crate::trap::signal::is_managed(&(addr..end)) {
                return Err(unsupported(MemoryReason::Backend(migrate::SIGNAL_FOREIGN)));
            }
            if !addr.is_multiple_of(align as usize) {
                return Err(unsupported(MemoryReason::ImportAlignment { align }));
            }
        } else {
            let maps = sys::Maps::read().map_err(unsupported)?;
            maps.classify(addr, len).map_err(unsupported)?;
            if !addr.is_multiple_of(align as usize) || maps.classify(addr, end - addr).is_err() {
                return Err(unsupported(MemoryReason::ImportAlignment { align }));
            }
        }
        let range = addr..end;
        // Every device copy of the range comes home, and the range leaves the mirror.
        let forget_all = || -> Result<()> {
            self.space.sync_events();
            for owner in migrate::owners(self.space, range.clone()) {
                migrate::forget(self.space, &owner, range.clone())?;
            }
            Ok(())
        };
        forget_all()?;
        let mut worker = self.ctx.lock_worker();
        worker.in_place.remove_overlapping(&range);
        // Added once no event is unread: the address space frees an unmapped range before
        // the handler reads its UNMAP, so the unmap of a mapping that lived here before this
        // one could otherwise be processed after the watch began, and taken for an unmap of
        // this one (as a launch's watch does, `AddressSpace::watch_launch`).
        let watch = {
            let _quiet = self.space.quiesce();
            self.space.watches.add_in_place(range.clone())
        }
        .ok_or_else(|| unsupported(MemoryReason::TooManyInPlace))?;
        // SAFETY: `range` is mapped private read-write memory of this process (classified
        // above), aligned as the device requires; the import is dropped under the worker lock
        // (no launch in flight) when the advice ends or the watch reports the pages gone.
        let import = match unsafe { self.ctx.owner.device.import_host(addr, (end - addr) as u64) } {
            Ok(import) => import,
            Err(e) => {
                self.space.watches.remove(watch);
                return Err(e);
            }
        };
        worker
            .in_place
            .insert(InPlace::new(import, watch, &self.space.watches));
        drop(worker);
        // A launch of this runtime on the range from now on binds the import; one of another
        // thread that came between the first pass and the insertion left extents: take them
        // out too. Then watch the range (the passes stop trapping what they take out).
        forget_all()?;
        self.space
            .register(range.clone())
            .map_err(|_| unsupported(MemoryReason::Refused))
    }
}
