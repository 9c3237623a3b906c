//! vkhmm is a user-space HMM on Vulkan: one pointer for CPU and GPU.
//!
//! A `Vec<f32>` from the ordinary allocator goes straight into a compute shader and is read
//! afterwards with no copy, staging buffer or map/unmap in your code. It is the Linux kernel's
//! HMM (Heterogeneous Memory Management) rebuilt in user space: device memory is the pool pages
//! migrate into when a kernel launches, and the CPU's next touch of a migrated page traps (with
//! userfaultfd) and brings the data back.
//!
//! | Linux HMM | vkhmm |
//! |---|---|
//! | `ZONE_DEVICE` device-private pages | the device pool: device-local `VkDeviceMemory` under a budget ([`RuntimeBuilder::budget`]) |
//! | `migrate_vma_setup/pages/finalize` | [`Runtime::launch`] (a kernel's bindings move before submit) and [`Runtime::prefetch`] |
//! | device-private swap entry + `migrate_to_ram` on CPU fault | the host page is dropped (`MADV_DONTNEED`); a userfaultfd MISSING fault copies its chunk back |
//! | read-only duplicate pages | `Shared` pages: the host copy is write-protected (uffd-wp) while the device copy is valid |
//! | `hmm_range_fault` snapshot | [`Runtime::residency`]: per-page state, nothing faulted in |
//! | `mmu_interval_notifier` | userfaultfd `REMOVE`, `UNMAP` and `REMAP` events |
//!
//! # Example
//!
//! SAXPY (`y = a·x + y`) on two `Vec<f32>`, with the bundled kernel
//! [`shaders::SAXPY_WGSL`]. Push constants are a `#[repr(C)]` struct that is
//! [`bytemuck::Pod`].
//!
//! ```
//! use vkhmm::{shaders, Push, Runtime};
//!
//! #[repr(C)]
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
//! struct Params { a: f32, n: u32 }
//!
//! fn main() -> Result<(), vkhmm::Error> {
//!     let rt = Runtime::new()?;
//!     let saxpy = rt.kernel_wgsl(shaders::SAXPY_WGSL, "main")?;
//!     let n = 1 << 20;
//!     let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
//!     let mut y = vec![1.0f32; n];
//!     let params = Params { a: 2.0, n: n as u32 };
//!     rt.launch(&saxpy, [1024, 1, 1], (&x, &mut y, Push(&params)))?;
//!     assert_eq!(y[n / 2], n as f32 + 1.0); // this read faults a chunk of y back
//!     println!("{}", rt.stats()); // launches, CPU faults, bytes each way
//!     Ok(())
//! }
//! ```
//!
//! The i-th buffer argument is `@group(0) @binding(i)`. A binding the shader only reads
//! (`var<storage, read>`) takes `&`; one it writes (`read_write`) takes `&mut`. After the
//! launch `x`'s pages are `Shared` (readable, still valid on the device) and `y`'s are `Device`
//! (host copies dropped); reading `y[n / 2]` faults its page back (`y[3]` would not: the
//! first and last page of a `Vec` are edge pages, whose results come home before `launch`
//! returns). [`Runtime::residency`]
//! counts pages in each state and [`Runtime::stats`] says what moved.
//!
//! # Map of the crate
//!
//! | module | what it holds |
//! |---|---|
//! | `runtime` | [`Runtime`], [`RuntimeBuilder`], [`Kernel`]: wires a device to the process-wide mirror and fault service |
//! | `args` | launch arguments: tuples of `&[T]`, `&mut [T]`, [`Managed<T>`](Managed), [`Push`] |
//! | `managed` | [`Managed<T>`](Managed): runtime-owned, page-aligned, zeroed memory |
//! | `mirror` | pure policy (no `unsafe`): page states, extents, launch plans, fault-back chunks, eviction |
//! | `migrate` | carries out page-state transitions with the device and the fault service |
//! | `fault` | the fault service and its backends (userfaultfd, `signal`), `fork()` hooks |
//! | [`diagnostics`] | what this machine offers: [`DeviceInfo::query`](diagnostics::DeviceInfo::query), [`probe_fault_capabilities`](diagnostics::probe_fault_capabilities) (`vkhmm info`) |
//! | `device` | every Vulkan call: instance and queue, memory pool, transfer paths, pipelines |
//! | [`shader`] | naga: WGSL to SPIR-V, and one SPIR-V reflector for kernels of any compiler |
//! | [`shaders`] | the bundled WGSL kernels, compiled at build time |
//! | `stats`, `error` | [`Stats`], [`Residency`], [`Error`] |
//!
//! # Further reading
//!
//! In the repository (also shipped in the crate package):
//!
//! - `docs/semantics.md`: what moves when, what is visible when, what blocks; edges, stack
//!   memory, `free`/`munmap`, `fork()`, `read(2)`/`write(2)`, memory that cannot migrate (copied through);
//! - `docs/tracing.md`: the trace file (`VKHMM_TRACE`, [`RuntimeBuilder::trace`]) and
//!   `vkhmm report`: every move and fault, attributed to the line that caused it;
//! - `docs/troubleshooting.md`: no Vulkan device, userfaultfd not permitted, containers and
//!   seccomp, lavapipe limits, environment variables;
//! - `docs/comparison.md`: against CUDA Unified Memory, Linux HMM, ROCm/HIP, SYCL USM, OpenCL
//!   SVM, Level Zero and wgpu;
//! - `docs/architecture.md`: the map of the code, the page-state machine, the path of a launch
//!   and of a CPU fault, and where each invariant lives.
#![warn(missing_docs)]

mod args;
pub(crate) mod device;
pub mod diagnostics;
mod error;
mod fault;
mod in_place;
#[cfg(feature = "fault-injection")]
pub mod inject;
#[cfg(not(feature = "fault-injection"))]
mod inject;
mod managed;
mod migrate;
pub(crate) mod mirror;
mod pages;
mod runtime;
mod scope;
pub mod shader;
mod space;
mod stats;
mod sys;
mod trace;
mod trap;

/// The WGSL kernels bundled in `shaders/`, compiled to SPIR-V by `build.rs`.
///
/// For each `foo_bar.wgsl` there is `FOO_BAR_WGSL` (the source) and `FOO_BAR_SPIRV` (the
/// words, compiled with the same naga options as [`shader::compile_wgsl`]); [`shaders::ALL`]
/// lists them all. Bundled kernels bind their buffers at `@group(0) @binding(0..)` in argument
/// order (a test checks it) and loop grid-stride over the x dimension, so any `[groups, 1, 1]`
/// dispatch covers any element count.
pub mod shaders {
    include!(concat!(env!("OUT_DIR"), "/shaders.rs"));
}

pub use args::{Arg, DynArgs, KernelArgs, Push, PushBytes};
pub use device::TransferPath;
pub use error::{Error, MemoryReason, Result, VulkanCode};
pub use managed::Managed;
pub use mirror::{advice::Advice, Location, Residency};
pub use runtime::{Kernel, Runtime, RuntimeBuilder};
pub use scope::{Pending, Scope};
pub use stats::Stats;
pub use trap::FaultBackend;
