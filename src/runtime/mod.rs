//! `Runtime`: one Vulkan device, wired to the process-wide mirror and fault service.
//!
//! A runtime owns a [`DeviceContext`] — the device, its launch tools (a transfer context and a
//! dispatcher behind one lock), the fault handler's transfer context, counters and the
//! chunk policy — and shares it with the extents whose device copies live on its device.
//! Everything a runtime call does is: check the arguments (nothing has changed if that
//! fails), keep `fork()` out, make the memory resident (`migrate`), do the device work,
//! settle. `docs/semantics.md` describes the same contract from the user's side.

mod advice;
mod builder;
mod fork;

pub use builder::RuntimeBuilder;

use fork::hold_off_fork;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytemuck::Pod;

use crate::args::{self, ArgList, KernelArgs};
use crate::device::{self, DeviceInfo, Pipeline};
use crate::in_place::Where;
use crate::managed::Managed;
use crate::migrate::{self, Binding, DeviceContext, Purpose, Worker};
use crate::mirror::plan::binding_pages;
use crate::mirror::{Location, Residency, PAGE};
use crate::shader::{self, Access, KernelInfo};
use crate::space::{AddressSpace, Counters};
use crate::stats::Stats;
use crate::trace;
use crate::trap::FaultBackend;
use crate::{Error, Result};

/// A compute kernel: a pipeline plus its reflected interface. Made by
/// [`Runtime::kernel_wgsl`] or [`Runtime::kernel_spirv`]; cheap to clone.
#[derive(Clone)]
pub struct Kernel {
    pipeline: Arc<Pipeline>,
    info: Arc<KernelInfo>,
    runtime: u64,
}

impl Kernel {
    /// The kernel's bindings, push-constant size and workgroup size.
    pub fn info(&self) -> &KernelInfo {
        &self.info
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The time base of thrash detection.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// One Vulkan device driving unified memory. See the crate docs for an example.
pub struct Runtime {
    ctx: Arc<DeviceContext>,
    space: &'static AddressSpace,
    kernels: Mutex<HashMap<u64, Weak<Pipeline>>>,
    owner: u32,
    id: u64,
    /// The trace this runtime writes into, if any (dropped after the runtime's own drop,
    /// so that what it moves home then is in the file).
    #[allow(dead_code, reason = "held for its drop, which ends the trace")]
    trace: Option<Arc<crate::trace::Session>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("device", &self.ctx.owner.device.info().name)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime on the default device (or the one `VKHMM_DEVICE` names).
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// Options: device, transfer path, budget, chunk size, fault backend.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::from_env()
    }

    /// The device this runtime drives.
    pub fn device_info(&self) -> &DeviceInfo {
        self.ctx.owner.device.info()
    }

    /// The process-wide fault backend serving this runtime: the one the process's first
    /// runtime chose ([`RuntimeBuilder::fault_backend`], else `VKHMM_FAULT`).
    pub fn fault_backend(&self) -> FaultBackend {
        self.space.kind()
    }

    /// Compiles a WGSL kernel and creates its pipeline (cached per source and entry point).
    pub fn kernel_wgsl(&self, source: &str, entry: &str) -> Result<Kernel> {
        self.check_owner()?;
        let words = shader::compile_wgsl(source)?;
        self.kernel_spirv(&words, entry)
    }

    /// Creates a kernel from SPIR-V words of any compiler (glslc, dxc, Slang, naga),
    /// reflecting its bindings, push constants and workgroup size.
    pub fn kernel_spirv(&self, words: &[u32], entry: &str) -> Result<Kernel> {
        self.check_owner()?;
        let info = Arc::new(shader::reflect(words, entry)?);
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            words.hash(&mut h);
            entry.hash(&mut h);
            h.finish()
        };
        let mut cache = self.kernels.lock().unwrap_or_else(PoisonError::into_inner);
        let pipeline = match cache.get(&key).and_then(Weak::upgrade) {
            Some(p) => p,
            None => {
                let p = Arc::new(Pipeline::new(&self.ctx.owner.device, words, &info)?);
                cache.retain(|_, w| w.strong_count() > 0);
                cache.insert(key, Arc::downgrade(&p));
                p
            }
        };
        Ok(Kernel {
            pipeline,
            info,
            runtime: self.id,
        })
    }

    /// Runs `kernel` over `groups` workgroups with `args` bound in order to
    /// `@group(0) @binding(0..)`, and returns when the kernel is done and its results are
    /// visible to the CPU through the same pointers.
    ///
    /// Pages the kernel reads become `Shared` (host copies write-protected, still readable);
    /// pages it writes become `Device` (host copies dropped). A later CPU touch faults them
    /// back. Bad arguments give a typed error and change nothing.
    #[track_caller]
    pub fn launch<A: KernelArgs>(&self, kernel: &Kernel, groups: [u32; 3], args: A) -> Result<()> {
        let ticket = self.submit(kernel, groups, &args)?;
        self.wait_for(ticket)
    }

    /// Validates, migrates and submits one launch without waiting for it; returns its
    /// ticket. The caller keeps `args` borrowed until the launch is settled.
    #[track_caller]
    pub(crate) fn submit<A: KernelArgs>(
        &self,
        kernel: &Kernel,
        groups: [u32; 3],
        args: &A,
    ) -> Result<u64> {
        let _site = trace::Site::enter(std::panic::Location::caller());
        let traced = trace::on().then(|| {
            let mut e = trace::Event::here(trace::Kind::Launch);
            e.name = trace::name(&kernel.info.entry);
            e.a = u64::from(groups[0]);
            e.b = u64::from(groups[1]) * u64::from(groups[2]);
            (e, trace::device_lane(self.id))
        });
        self.check_owner()?;
        if kernel.runtime != self.id {
            return Err(Error::ForeignKernel);
        }
        let list = args::collect(args);
        let bindings = validate(&kernel.info, &list, self.ctx.owner.device.info())?;
        device::check_groups(groups, &self.ctx.owner.device.info().limits)?;
        let _fork = hold_off_fork();
        let spans: Vec<_> = bindings
            .iter()
            .map(|b| binding_pages(b.addr, b.len).span)
            .collect();
        // From here on, every unmap of the bindings' memory is one the launch hears of.
        let watch = self.space.watch_launch(&spans)?;
        self.settle_thrashing(&bindings);
        let (mut worker, launch, places) =
            self.prepare(watch, &spans, &bindings, Purpose::Kernel)?;
        // The bindings' extents exist now (a first launch makes them).
        self.mark_read_mostly(&bindings);
        let w = &mut *worker;
        let mut mirrored = launch.placements.iter();
        let buffers: Vec<device::BufferArg<'_>> = bindings
            .iter()
            .zip(&places)
            .map(|(b, place)| {
                let (block, offset): (&dyn device::Bindable, u64) = match *place {
                    Where::InPlace { index, offset } => (w.in_place.get(index).import(), offset),
                    _ => {
                        let (block, offset) = mirrored
                            .next()
                            .expect("one placement per mirrored binding")
                            .target();
                        (block, offset)
                    }
                };
                device::BufferArg {
                    block,
                    offset,
                    range: b.len as u64,
                }
            })
            .collect();
        let submitted = std::time::Instant::now();
        // SAFETY: every block is held by `launch` (mirror extents or transient blocks), which
        // is kept in the worker until the dispatcher's wait in `Worker::settle`; the pages of
        // written bindings stay claimed and those of read bindings are `Shared`, so no
        // transfer writes the bound ranges meanwhile (this runtime's own transfers settle the
        // launch first; the fault handler only reads `Device` pages it claims, and claimed
        // pages cannot be claimed twice).
        let sent = unsafe {
            w.dispatcher
                .submit(&kernel.pipeline, &buffers, &list.push, groups)
        };
        drop(buffers);
        if let Err(e) = sent {
            drop(launch); // releases the held pages
            return Err(e);
        }
        let ticket = worker.next_ticket;
        worker.next_ticket += 1;
        worker.in_flight = Some(migrate::InFlight {
            ticket,
            launch,
            submitted,
            traced,
        });
        Ok(ticket)
    }

    /// Settles the launch in flight from a helper thread as soon as its kernel ends.
    pub(crate) fn settle_in_background(&self) {
        let ctx = Arc::clone(&self.ctx);
        let spawned = std::thread::Builder::new()
            .name("vkhmm-settle".into())
            .spawn(move || drop(ctx.lock_worker()));
        if let Err(e) = spawned {
            // Not fatal: the next call into the runtime (at the latest, the scope's end)
            // settles it.
            tracing::warn!(error = %e, "cannot start a thread to settle a launch");
        }
    }

    /// Makes `bindings` resident (memory another runtime holds is brought home first) and
    /// returns the worker still locked. A race with another runtime that keeps moving the
    /// same memory is retried a few times.
    fn prepare(
        &self,
        watch: crate::space::watch::LaunchWatch,
        spans: &[std::ops::Range<usize>],
        bindings: &[Binding],
        purpose: Purpose,
    ) -> Result<(
        std::sync::MutexGuard<'_, Worker>,
        migrate::Launch,
        Vec<Where>,
    )> {
        let mut attempts = 0;
        loop {
            migrate::evacuate_foreign(self.space, &self.ctx, spans)?;
            let mut worker = self.ctx.lock_worker();
            let places = self.place(&mut worker, bindings)?;
            let mirrored: Vec<Binding> = bindings
                .iter()
                .zip(&places)
                .filter(|(_, p)| **p == Where::Mirrored)
                .map(|(b, _)| *b)
                .collect();
            if mirrored.is_empty() {
                return Ok((worker, migrate::Launch::nothing().watched(watch), places));
            }
            match migrate::prepare(
                self.space,
                &self.ctx,
                &mut worker,
                &mirrored,
                purpose,
                &watch,
            ) {
                Err(Error::ContendedMemory) if attempts < 10 => attempts += 1,
                Ok(launch) => return Ok((worker, launch.watched(watch), places)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until launch `ticket` is settled; its error, if it failed.
    pub(crate) fn wait_for(&self, ticket: u64) -> Result<()> {
        self.ctx.lock_worker().take_error(ticket)
    }

    /// Waits for every launch of this runtime and settles it; the first error of a launch
    /// nobody has waited for yet, if any.
    pub fn synchronize(&self) -> Result<()> {
        let mut worker = self.ctx.lock_worker();
        match worker.failed.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Moves `data` explicitly: to the device (host pages dropped, like a written binding)
    /// or home (device copies kept, pages `Shared`). Pages only partly covered by `data`
    /// are left where they are on the way to the device.
    #[track_caller]
    pub fn prefetch<T: Pod>(&self, data: &[T], to: Location) -> Result<()> {
        let _site = trace::Site::enter(std::panic::Location::caller());
        let start = trace::on().then(trace::now);
        let result = self.prefetch_untraced(data, to);
        if let Some(ts) = start {
            let mut e = trace::Event::here(trace::Kind::Prefetch)
                .range(data.as_ptr() as usize, std::mem::size_of_val(data));
            e.ts = ts;
            e.dur = trace::now() - ts;
            e.a = u64::from(to == Location::Host);
            e.record();
        }
        result
    }

    /// [`Runtime::prefetch`], less its trace event.
    fn prefetch_untraced<T: Pod>(&self, data: &[T], to: Location) -> Result<()> {
        self.check_owner()?;
        let len = std::mem::size_of_val(data);
        if len == 0 {
            return Ok(());
        }
        let addr = data.as_ptr() as usize;
        let _fork = hold_off_fork();
        Counters::add(&self.ctx.owner.counters.prefetches, 1);
        match to {
            Location::Device => {
                let b = Binding {
                    addr,
                    len,
                    write: true,
                    number: 0,
                    align: 1,
                };
                let spans = [binding_pages(addr, len).span];
                let watch = self.space.watch_launch(&spans)?;
                let prepared = self.prepare(watch, &spans, &[b], Purpose::Prefetch)?;
                // The range's extents exist now (a first prefetch makes them).
                self.mark_read_mostly(&[b]);
                drop(prepared);
                Ok(())
            }
            Location::Host => {
                // Memory that is not mirrored (copied through at launches) is home already.
                let span = binding_pages(addr, len).span;
                self.space.sync_events();
                for owner in migrate::owners(self.space, span.clone()) {
                    migrate::bring_home(self.space, &owner, span.clone(), true, false)?;
                }
                self.space.poke();
                Ok(())
            }
        }
    }

    /// Where the pages under `data` are, counted without touching (or faulting in) any of
    /// them. Pages vkhmm does not mirror count as `host`.
    pub fn residency<T>(&self, data: &[T]) -> Residency {
        let len = std::mem::size_of_val(data);
        if len == 0 {
            return Residency::default();
        }
        if self.check_owner().is_ok() {
            // (A forked child must not wait on the parent's handler, which it does not have.)
            self.space.sync_events();
        }
        let span = binding_pages(data.as_ptr() as usize, len).span;
        let mut r = Residency::default();
        for ext in self.space.mirror.overlapping(span.clone()) {
            r += ext.residency(ext.page_span(&span));
        }
        r.host += span.len() / PAGE - r.pages();
        r
    }

    /// What this runtime has moved and served so far.
    pub fn stats(&self) -> Stats {
        let c = &self.ctx.owner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if self.check_owner().is_ok() {
            migrate::reap(self.space);
        }
        Stats {
            launches: get(&c.launches),
            kernel_time: std::time::Duration::from_nanos(get(&c.kernel_ns)),
            cpu_faults: get(&c.cpu_faults),
            deferred_faults: get(&c.deferred_faults),
            bytes_to_device: get(&c.bytes_to_device),
            bytes_to_host: get(&c.bytes_to_host),
            bytes_zero_filled: get(&c.bytes_zero_filled),
            copied_to_device: get(&c.copied_to_device),
            copied_to_host: get(&c.copied_to_host),
            evictions: get(&c.evictions),
            prefetches: get(&c.prefetches),
            handler_panics: get(&c.handler_panics),
            parallel_installs: get(&c.parallel_installs),
            thrash_settled: get(&c.thrash_settled),
            device_bytes_in_use: self.ctx.owner.device.pool().in_use(),
            device_budget: self.ctx.owner.device.pool().budget(),
        }
    }

    /// Allocates `len` zeroed elements in runtime-owned, page-aligned memory.
    pub fn alloc<T: Pod>(&self, len: usize) -> Result<Managed<T>> {
        self.check_owner()?;
        Managed::zeroed(len)
    }

    /// Allocates runtime-owned memory holding a copy of `data`.
    pub fn alloc_from<T: Pod>(&self, data: &[T]) -> Result<Managed<T>> {
        let mut m = self.alloc(data.len())?;
        m.copy_from_slice(data);
        Ok(m)
    }

    fn check_owner(&self) -> Result<()> {
        if rustix::process::getpid().as_raw_nonzero().get() as u32 != self.owner {
            return Err(Error::ForkedChild { owner: self.owner });
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.check_owner().is_err() {
            return; // a forked child: the parent's device objects are not ours to touch
        }
        let _fork = hold_off_fork();
        self.space.sync_events();
        // Worker, then writer, then the lookup: no launch of another runtime can merge one
        // of ours away meanwhile (see `migrate::bring_home`).
        let mut worker = self.ctx.lock_worker();
        let mut w = self.space.mirror.write();
        let mine: Vec<_> = w
            .snapshot()
            .iter()
            .filter(|e| self.ctx.owns(e))
            .cloned()
            .collect();
        for ext in &mine {
            if let Err(e) =
                migrate::to_host(self.space, &mut worker.transfer, ext, 0..ext.pages(), false)
            {
                tracing::error!(error = %e, "copying device-resident data home at Runtime drop failed");
            }
        }
        drop(worker);
        w.replace(&mine, []);
        for ext in &mine {
            let _ = self.space.backend.unregister(ext.start(), ext.bytes());
        }
        drop(mine);
        self.space.poke();
        migrate::drain_graveyard(&mut w);
    }
}

/// Checks a launch's arguments against the kernel and the device; returns the bindings.
fn validate(info: &KernelInfo, list: &ArgList, dev: &DeviceInfo) -> Result<Vec<Binding>> {
    let push_given = list.push.len();
    if list.push_count > 1 || push_given != info.push_constant_size as usize {
        return Err(Error::PushConstantSize {
            expected: info.push_constant_size,
            given: push_given,
        });
    }
    if list.buffers.len() != info.bindings.len() {
        return Err(Error::ArgumentCount {
            expected: info.bindings.len(),
            given: list.buffers.len(),
        });
    }
    info.bindings
        .iter()
        .zip(&list.buffers)
        .map(|(bi, arg)| {
            let binding = bi.binding;
            let write = bi.access == Access::ReadWrite;
            if write && !arg.mutable {
                return Err(Error::NeedsMutable { binding });
            }
            // The offset alignment is checked once it is known whether the binding is
            // copied through (`Binding::check_aligned`): such a binding starts its own block.
            device::check_binding(binding, bi.kind, arg.len as u64, u64::MAX, 0, &dev.limits)?;
            Ok(Binding {
                addr: arg.addr,
                len: arg.len,
                write,
                number: binding,
                align: device::offset_alignment(bi.kind, &dev.limits),
            })
        })
        .collect()
}
