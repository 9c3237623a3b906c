//! `Runtime`: one Vulkan device, wired to the process-wide mirror and fault service.
//!
//! A runtime owns a [`DeviceContext`] — the device, its launch tools (a transfer context and a
//! dispatcher behind one lock), the fault handler's transfer context, counters and the
//! chunk policy — and shares it with the extents whose device copies live on its device.
//! Everything a runtime call does is: check the arguments (nothing has changed if that
//! fails), keep `fork()` out, make the memory resident (`migrate`), do the device work,
//! settle. `docs/semantics.md` describes the same contract from the user's side.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytemuck::Pod;

use crate::args::{self, ArgList, KernelArgs};
use crate::device::{
    self, Device, DeviceConfig, DeviceInfo, Dispatcher, Pipeline, Transfer, TransferPath,
};
use crate::fault::fork::hold_off_fork;
use crate::fault::service::{Choice, FaultBackend, FaultService};
use crate::in_place::{InPlace, Where};
use crate::managed::Managed;
use crate::migrate::{self, Binding, Counters, DeviceContext, Purpose, Worker};
use crate::mirror::advice::Advice;
use crate::mirror::plan::binding_pages;
use crate::mirror::policy::ChunkPolicy;
use crate::mirror::thrash::ThrashPolicy;
use crate::mirror::{Location, Residency, PAGE};
use crate::shader::{self, Access, KernelInfo};
use crate::stats::Stats;
use crate::{sys, Error, MemoryReason, Result};

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

/// Options for [`Runtime::builder`]. Starts from the environment (`VKHMM_DEVICE`,
/// `VKHMM_TRANSFER`, `VKHMM_BUDGET`, `VKHMM_CHUNK`, `VKHMM_FAULT`); each method overrides it.
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    device: std::result::Result<DeviceConfig, String>,
    chunk: std::result::Result<ChunkPolicy, String>,
    thrash: Option<ThrashPolicy>,
    /// The fault backend asked for; `None`: the builder said nothing (`VKHMM_FAULT`).
    fault: Option<Choice>,
}

impl RuntimeBuilder {
    fn from_env() -> Self {
        let device = DeviceConfig::from_env().map_err(|e| e.to_string());
        let chunk = match std::env::var("VKHMM_CHUNK") {
            Ok(v) => device::parse_bytes(&v)
                .ok()
                .filter(|&b| b >= PAGE as u64 && b % PAGE as u64 == 0)
                .map(|b| ChunkPolicy {
                    base: b as usize / PAGE,
                    ..ChunkPolicy::default()
                })
                .ok_or_else(|| format!("VKHMM_CHUNK={v:?} is not a multiple of {PAGE} bytes")),
            Err(_) => Ok(ChunkPolicy::default()),
        };
        RuntimeBuilder {
            device,
            chunk,
            thrash: Some(ThrashPolicy::default()),
            fault: None,
        }
    }

    /// Chooses the device: a decimal index or a case-insensitive substring of its name.
    pub fn device(mut self, filter: impl Into<String>) -> Self {
        if let Ok(d) = &mut self.device {
            d.filter = Some(filter.into());
        }
        self
    }

    /// Forces a transfer path (`Staged` exercises the discrete-GPU path on any device).
    pub fn transfer(mut self, path: TransferPath) -> Self {
        if let Ok(d) = &mut self.device {
            d.transfer = Some(path);
        }
        self
    }

    /// Sets the device memory budget in bytes (default: 80% of the device-local heap).
    pub fn budget(mut self, bytes: u64) -> Self {
        if let Ok(d) = &mut self.device {
            d.budget = Some(bytes);
        }
        self
    }

    /// Sets the size of the Staged path's staging ring in bytes.
    pub fn staging_bytes(mut self, bytes: u64) -> Self {
        if let Ok(d) = &mut self.device {
            d.staging_bytes = bytes;
        }
        self
    }

    /// Sets how much a CPU fault brings back at least (bytes, a multiple of 4096; default
    /// 64 KiB). Sequential access grows it toward 2 MiB unless [`fixed_chunks`] is set.
    ///
    /// [`fixed_chunks`]: Self::fixed_chunks
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk = if bytes >= PAGE && bytes.is_multiple_of(PAGE) {
            self.chunk.map(|c| ChunkPolicy {
                base: bytes / PAGE,
                max: c.max.max(bytes / PAGE),
                ..c
            })
        } else {
            Err(format!(
                "chunk size {bytes} is not a positive multiple of {PAGE}"
            ))
        };
        self
    }

    /// Turns growth of the fault-back chunk on sequential access off (or on).
    pub fn fixed_chunks(mut self, fixed: bool) -> Self {
        if let Ok(c) = &mut self.chunk {
            c.adaptive = !fixed;
        }
        self
    }

    /// Turns parallel fault-back off (or on, the default): a fault-back window of 512 KiB or
    /// more is installed by two threads at once, the fault handler and its assistant, half
    /// each. The assistant runs only on machines with more than one CPU.
    pub fn parallel_fault_back(mut self, on: bool) -> Self {
        if let Ok(c) = &mut self.chunk {
            c.split = if on { ChunkPolicy::default().split } else { 0 };
        }
        self
    }

    /// Turns thrash detection off (or on, the default): a binding the CPU faulted back
    /// between three launches within 100 ms is settled on the host and accessed in place
    /// by the device (`Advice::AccessInPlace`), where its range allows; see
    /// [`Stats::thrash_settled`].
    pub fn thrash_detection(mut self, on: bool) -> Self {
        self.thrash = on.then(ThrashPolicy::default);
        self
    }

    /// Chooses the fault backend, which serves the CPU's touches of device-resident pages:
    /// [`FaultBackend::Userfaultfd`], [`FaultBackend::Signal`], or `None` for the automatic
    /// choice (userfaultfd where it can be opened with the features vkhmm needs, `signal`
    /// elsewhere). Without this call `VKHMM_FAULT` decides (`uffd`, `signal` or `auto`;
    /// automatic when unset).
    ///
    /// The backend is one per process. The first runtime of the process starts it with its
    /// builder's choice, and every later runtime shares it: a later builder that names
    /// another backend fails with [`Error::FaultBackendMismatch`], while one that asks for
    /// the automatic choice (or says nothing) gets the running backend, whatever
    /// `VKHMM_FAULT` says by then. If the first start fails (say userfaultfd was named and
    /// this process may not use it), every later runtime fails with that error too.
    ///
    /// ```no_run
    /// use vkhmm::{FaultBackend, Runtime};
    ///
    /// // Serve faults with mprotect + SIGSEGV even where userfaultfd works: only memory
    /// // from `rt.alloc` can then go to the device.
    /// let rt = Runtime::builder().fault_backend(FaultBackend::Signal).build()?;
    /// assert_eq!(rt.fault_backend(), FaultBackend::Signal);
    /// # Ok::<(), vkhmm::Error>(())
    /// ```
    pub fn fault_backend(mut self, backend: impl Into<Option<FaultBackend>>) -> Self {
        self.fault = Some(match backend.into() {
            None => Choice::Auto,
            Some(FaultBackend::Userfaultfd) => Choice::Uffd,
            Some(FaultBackend::Signal) => Choice::Signal,
        });
        self
    }

    /// Creates the runtime: the device, its pool and transfer contexts, and (once per
    /// process) the fault service.
    pub fn build(self) -> Result<Runtime> {
        let config = self.device.map_err(Error::InvalidConfig)?;
        let policy = self.chunk.map_err(Error::InvalidConfig)?;
        let svc = FaultService::get_with(self.fault)?;
        let requested = match self.fault {
            Some(Choice::Uffd) => Some(FaultBackend::Userfaultfd),
            Some(Choice::Signal) => Some(FaultBackend::Signal),
            Some(Choice::Auto) | None => None,
        };
        if let Some(requested) = requested.filter(|&r| r != svc.kind()) {
            return Err(Error::FaultBackendMismatch {
                requested,
                running: svc.kind(),
            });
        }
        let device = Device::new(&config)?;
        let path = device.info().transfer_path;
        let ctx = Arc::new(DeviceContext {
            worker: Mutex::new(Worker::new(
                Transfer::new(&device, path, config.staging_bytes)?,
                Dispatcher::new(&device)?,
            )),
            fault_transfer: Mutex::new(fault_transfer(&device, config.staging_bytes)?),
            assist_transfer: if svc.assisted() && policy.split > 0 {
                Some(Mutex::new(fault_transfer(&device, config.staging_bytes)?))
            } else {
                None // no second staging ring where no window is ever split
            },
            counters: Counters::default(),
            advice: Mutex::default(),
            thrash_policy: self.thrash,
            thrash: Mutex::default(),
            policy,
            device,
        });
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Runtime {
            ctx,
            svc,
            kernels: Mutex::new(HashMap::new()),
            owner: rustix::process::getpid().as_raw_nonzero().get() as u32,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// The time base of thrash detection.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// The transfer context of the fault handler (and of its assistant): through the pool's mapping whenever the pool
/// memory is host-visible, whatever path launches take.
///
/// A handler that waits on the queue can deadlock: when the driver executes commands on CPU
/// threads (lavapipe), and one of them touches a page the handler must resolve — heap memory
/// a program freed while it was device-resident and the driver's `malloc` reused — the queue
/// waits for the handler while the handler waits for the queue. Reading the mapping needs
/// no queue. On memory the CPU cannot map the handler must use the staging ring; that risk
/// remains there (docs/semantics.md).
fn fault_transfer(device: &Arc<Device>, staging_bytes: u64) -> Result<Transfer> {
    Transfer::new(device, TransferPath::Direct, staging_bytes)
        .or_else(|_| Transfer::new(device, TransferPath::Staged, staging_bytes))
}

/// One Vulkan device driving unified memory. See the crate docs for an example.
pub struct Runtime {
    ctx: Arc<DeviceContext>,
    svc: &'static FaultService,
    kernels: Mutex<HashMap<u64, Weak<Pipeline>>>,
    owner: u32,
    id: u64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("device", &self.ctx.device.info().name)
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
        self.ctx.device.info()
    }

    /// The process-wide fault backend serving this runtime: the one the process's first
    /// runtime chose ([`RuntimeBuilder::fault_backend`], else `VKHMM_FAULT`).
    pub fn fault_backend(&self) -> FaultBackend {
        self.svc.kind()
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
                let p = Arc::new(Pipeline::new(&self.ctx.device, words, &info)?);
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
    pub fn launch<A: KernelArgs>(&self, kernel: &Kernel, groups: [u32; 3], args: A) -> Result<()> {
        let ticket = self.submit(kernel, groups, &args)?;
        self.wait_for(ticket)
    }

    /// Validates, migrates and submits one launch without waiting for it; returns its
    /// ticket. The caller keeps `args` borrowed until the launch is settled.
    pub(crate) fn submit<A: KernelArgs>(
        &self,
        kernel: &Kernel,
        groups: [u32; 3],
        args: &A,
    ) -> Result<u64> {
        self.check_owner()?;
        if kernel.runtime != self.id {
            return Err(Error::ForeignKernel);
        }
        let list = args::collect(args);
        let bindings = validate(&kernel.info, &list, self.ctx.device.info())?;
        device::check_groups(groups, &self.ctx.device.info().limits)?;
        let _fork = hold_off_fork();
        let spans: Vec<_> = bindings
            .iter()
            .map(|b| binding_pages(b.addr, b.len).span)
            .collect();
        // From here on, every unmap of the bindings' memory is one the launch hears of.
        let watch = self.svc.watch_launch(&spans)?;
        self.settle_thrashing(&bindings);
        let (mut worker, launch, places) =
            self.prepare(watch, &spans, &bindings, Purpose::Kernel)?;
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
        watch: crate::fault::watch::LaunchWatch,
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
            migrate::evacuate_foreign(self.svc, &self.ctx, spans)?;
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
            match migrate::prepare(self.svc, &self.ctx, &mut worker, &mirrored, purpose, &watch) {
                Err(Error::ContendedMemory) if attempts < 10 => attempts += 1,
                Ok(launch) => return Ok((worker, launch.watched(watch), places)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Which bindings the device accesses in place (`Advice::AccessInPlace`) and which the
    /// mirror moves; a binding partly in place is refused. Imports whose pages the program
    /// unmapped or discarded are dropped first.
    fn place(&self, worker: &mut Worker, bindings: &[Binding]) -> Result<Vec<Where>> {
        if worker.in_place.is_empty() {
            return Ok(vec![Where::Mirrored; bindings.len()]);
        }
        self.svc.sync_events();
        worker.in_place.reap();
        bindings
            .iter()
            .map(|b| match worker.in_place.place(b.addr, b.len) {
                Where::Partly => Err(Error::UnsupportedMemory {
                    addr: b.addr,
                    len: b.len,
                    reason: MemoryReason::PartlyInPlace,
                }),
                w => Ok(w),
            })
            .collect()
    }

    /// Settles the bindings that thrash (`mirror::thrash`) on the host, accessed in place;
    /// those whose range cannot be imported are given up on.
    fn settle_thrashing(&self, bindings: &[Binding]) {
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
                    self.svc.mirror.for_each_overlapping(span.clone(), |e| {
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
            if self.ctx.device.info().device_type == device::DeviceType::Cpu
                && !crate::fault::signal::is_managed(&span)
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
                    Counters::add(&self.ctx.counters.thrash_settled, 1);
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
            .device
            .host_import_alignment()
            .ok_or_else(|| unsupported(MemoryReason::NoHostImport))?
            .max(PAGE as u64);
        let end = (addr + len).next_multiple_of(align as usize);
        if self.svc.backend.signal().is_some() {
            // The signal backend hears of no `munmap` of memory it did not allocate, so it
            // could not tell when an import of such memory goes stale. Its own `Managed`
            // memory is private and anonymous; its pages may be protected by now, which
            // `classify` would refuse.
            if !crate::fault::signal::is_managed(&(addr..end)) {
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
            self.svc.sync_events();
            for owner in migrate::owners(self.svc, range.clone()) {
                migrate::forget(self.svc, &owner, range.clone())?;
            }
            Ok(())
        };
        forget_all()?;
        let mut worker = self.ctx.lock_worker();
        worker.in_place.remove_overlapping(&range);
        let watch = self
            .svc
            .watches
            .add_in_place(range.clone())
            .ok_or_else(|| unsupported(MemoryReason::TooManyInPlace))?;
        // SAFETY: `range` is mapped private read-write memory of this process (classified
        // above), aligned as the device requires; the import is dropped under the worker lock
        // (no launch in flight) when the advice ends or the watch reports the pages gone.
        let import = match unsafe { self.ctx.device.import_host(addr, (end - addr) as u64) } {
            Ok(import) => import,
            Err(e) => {
                self.svc.watches.remove(watch);
                return Err(e);
            }
        };
        worker
            .in_place
            .insert(InPlace::new(import, watch, &self.svc.watches));
        drop(worker);
        // A launch of this runtime on the range from now on binds the import; one of another
        // thread that came between the first pass and the insertion left extents: take them
        // out too. Then watch the range (the passes stop trapping what they take out).
        forget_all()?;
        self.svc
            .register(range.clone())
            .map_err(|_| unsupported(MemoryReason::Refused))
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
    pub fn prefetch<T: Pod>(&self, data: &[T], to: Location) -> Result<()> {
        self.check_owner()?;
        let len = std::mem::size_of_val(data);
        if len == 0 {
            return Ok(());
        }
        let addr = data.as_ptr() as usize;
        let _fork = hold_off_fork();
        Counters::add(&self.ctx.counters.prefetches, 1);
        match to {
            Location::Device => {
                let b = Binding {
                    addr,
                    len,
                    write: true,
                };
                let spans = [binding_pages(addr, len).span];
                let watch = self.svc.watch_launch(&spans)?;
                self.prepare(watch, &spans, &[b], Purpose::Prefetch)
                    .map(drop)
            }
            Location::Host => {
                let span = binding_pages(addr, len).span;
                if self.svc.backend.signal().is_some() && !crate::fault::signal::is_managed(&span) {
                    return Err(Error::UnsupportedMemory {
                        addr,
                        len,
                        reason: crate::MemoryReason::Backend(migrate::SIGNAL_FOREIGN),
                    });
                }
                self.svc.sync_events();
                for owner in migrate::owners(self.svc, span.clone()) {
                    migrate::bring_home(self.svc, &owner, span.clone(), true, false)?;
                }
                self.svc.poke();
                Ok(())
            }
        }
    }

    /// Gives `advice` for the pages under `data` (see [`Advice`]); later advice on the same
    /// pages replaces it, and [`Advice::Unset`] removes it. `PreferredLocation` also moves
    /// the range there now, as [`prefetch`](Self::prefetch) does.
    ///
    /// Advice belongs to the address range, not to the allocation: it outlives a `free` and
    /// applies to whatever is mapped there later (it never changes what a program reads,
    /// only where pages settle).
    pub fn advise<T: Pod>(&self, data: &[T], advice: Advice) -> Result<()> {
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
        self.ctx
            .advice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set(span, advice);
        match advice {
            Advice::PreferredLocation(to) => self.prefetch(data, to),
            Advice::ReadMostly | Advice::Unset | Advice::AccessInPlace => Ok(()),
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
            self.svc.sync_events();
        }
        let span = binding_pages(data.as_ptr() as usize, len).span;
        let mut r = Residency::default();
        for ext in self.svc.mirror.overlapping(span.clone()) {
            r += ext.residency(ext.page_span(&span));
        }
        r.host += span.len() / PAGE - r.pages();
        r
    }

    /// What this runtime has moved and served so far.
    pub fn stats(&self) -> Stats {
        let c = &self.ctx.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if self.check_owner().is_ok() {
            migrate::reap(self.svc);
        }
        Stats {
            launches: get(&c.launches),
            kernel_time: std::time::Duration::from_nanos(get(&c.kernel_ns)),
            cpu_faults: get(&c.cpu_faults),
            deferred_faults: get(&c.deferred_faults),
            bytes_to_device: get(&c.bytes_to_device),
            bytes_to_host: get(&c.bytes_to_host),
            bytes_zero_filled: get(&c.bytes_zero_filled),
            evictions: get(&c.evictions),
            prefetches: get(&c.prefetches),
            handler_panics: get(&c.handler_panics),
            parallel_installs: get(&c.parallel_installs),
            thrash_settled: get(&c.thrash_settled),
            device_bytes_in_use: self.ctx.device.pool().in_use(),
            device_budget: self.ctx.device.pool().budget(),
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
        self.svc.sync_events();
        // Worker, then writer, then the lookup: no launch of another runtime can merge one
        // of ours away meanwhile (see `migrate::bring_home`).
        let mut worker = self.ctx.lock_worker();
        let mut w = self.svc.mirror.write();
        let mine: Vec<_> = w
            .snapshot()
            .iter()
            .filter(|e| Arc::ptr_eq(&e.device().ctx, &self.ctx))
            .cloned()
            .collect();
        for ext in &mine {
            if let Err(e) =
                migrate::to_host(self.svc, &mut worker.transfer, ext, 0..ext.pages(), false)
            {
                tracing::error!(error = %e, "copying device-resident data home at Runtime drop failed");
            }
        }
        drop(worker);
        w.replace(&mine, []);
        for ext in &mine {
            let _ = self.svc.backend.unregister(ext.start(), ext.bytes());
        }
        drop(mine);
        self.svc.poke();
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
            device::check_binding(
                binding,
                bi.kind,
                arg.len as u64,
                u64::MAX,
                arg.addr as u64,
                &dev.limits,
            )?;
            Ok(Binding {
                addr: arg.addr,
                len: arg.len,
                write,
            })
        })
        .collect()
}
