//! [`RuntimeBuilder`]: a runtime's options, from the environment and the builder's methods,
//! and making the runtime (its device, pool and transfer contexts; once per process, the
//! fault service).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{fork, Runtime};
use crate::device::{self, Device, DeviceConfig, Dispatcher, Transfer, TransferPath};
use crate::migrate::{DeviceContext, Worker};
use crate::mirror::policy::ChunkPolicy;
use crate::mirror::thrash::ThrashPolicy;
use crate::mirror::PAGE;
use crate::pages::halves;
use crate::space::{Counters, Owner};
use crate::trap::{Choice, FaultBackend};
use crate::{Error, Result};

/// Options for [`Runtime::builder`]. Starts from the environment (`VKHMM_DEVICE`,
/// `VKHMM_TRANSFER`, `VKHMM_BUDGET`, `VKHMM_CHUNK`, `VKHMM_FAULT`, `VKHMM_TRACE`); each method
/// overrides it.
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    device: std::result::Result<DeviceConfig, String>,
    chunk: std::result::Result<ChunkPolicy, String>,
    thrash: Option<ThrashPolicy>,
    /// The fault backend asked for; `None`: the builder said nothing (`VKHMM_FAULT`).
    fault: Option<Choice>,
    /// Where to write a trace (`VKHMM_TRACE`), if anywhere.
    trace: Option<std::path::PathBuf>,
}

impl RuntimeBuilder {
    pub(super) fn from_env() -> Self {
        let device = DeviceConfig::from_env().map_err(|e| e.to_string());
        let chunk = match std::env::var("VKHMM_CHUNK") {
            Ok(v) => device::parse_bytes(&v)
                .ok()
                .filter(|&b| b >= PAGE as u64 && b % PAGE as u64 == 0)
                .map(|b| ChunkPolicy {
                    isolated: b as usize / PAGE,
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
            trace: std::env::var_os("VKHMM_TRACE")
                .filter(|v| !v.is_empty())
                .map(Into::into),
        }
    }

    /// Writes a trace of every launch, move and fault to `path` while the runtime lives: a
    /// Chrome trace (JSON) that Perfetto (<https://ui.perfetto.dev>) and `chrome://tracing`
    /// open, and that `vkhmm report` summarizes (docs/tracing.md). Runtimes that name the
    /// same path share the file; one trace file per process. Also `VKHMM_TRACE=path`.
    pub fn trace(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.trace = Some(path.into());
        self
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

    /// Sets how much a CPU fault brings back at least (bytes, a multiple of 4096). By
    /// default a fault far from the last one brings back its page and one near it the
    /// aligned 64 KiB around it; with a chunk size set, every fault brings back at least
    /// that aligned chunk. Sequential access grows it toward 2 MiB unless [`fixed_chunks`]
    /// is set.
    ///
    /// [`fixed_chunks`]: Self::fixed_chunks
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk = if bytes >= PAGE && bytes.is_multiple_of(PAGE) {
            self.chunk.map(|c| ChunkPolicy {
                isolated: bytes / PAGE,
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
    /// [`Stats::thrash_settled`](crate::Stats::thrash_settled).
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
        let space = crate::fault::service(self.fault)?;
        fork::install_atfork_handlers();
        let requested = match self.fault {
            Some(Choice::Uffd) => Some(FaultBackend::Userfaultfd),
            Some(Choice::Signal) => Some(FaultBackend::Signal),
            Some(Choice::Auto) | None => None,
        };
        if let Some(requested) = requested.filter(|&r| r != space.kind()) {
            return Err(Error::FaultBackendMismatch {
                requested,
                running: space.kind(),
            });
        }
        let trace = self.trace.as_deref().map(crate::trace::start).transpose()?;
        let device = Device::new(&config)?;
        let path = device.info().transfer_path;
        let owner = Arc::new(Owner {
            fault_transfer: Mutex::new(fault_transfer(&device, config.staging_bytes)?),
            assist_transfer: if halves::assisted() && policy.split > 0 {
                Some(Mutex::new(fault_transfer(&device, config.staging_bytes)?))
            } else {
                None // no second staging ring where no window is ever split
            },
            counters: Counters::default(),
            policy,
            device: Arc::clone(&device),
        });
        let worker = Worker::new(
            Transfer::new(&device, path, config.staging_bytes)?,
            Dispatcher::new(&device)?,
        );
        let ctx = DeviceContext::new(owner, space, worker, self.thrash);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if trace.is_some() {
            crate::trace::name_lane(
                crate::trace::device_lane(id),
                format!("device queue: {} (runtime {id})", device.info().name),
            );
        }
        Ok(Runtime {
            ctx,
            space,
            kernels: Mutex::new(HashMap::new()),
            owner: rustix::process::getpid().as_raw_nonzero().get() as u32,
            id,
            trace,
        })
    }
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
