//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

mod args;
pub(crate) mod device;
mod error;
mod fault;
mod managed;
mod migrate;
#[allow(dead_code)] // wired up by migrate/runtime
pub(crate) mod mirror;
mod runtime;
pub mod shader;
mod stats;
mod sys;

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

pub use args::{Arg, KernelArgs, Push};
pub use device::{
    DeviceConfig, DeviceFeatures, DeviceInfo, DeviceLimits, DeviceType, MemoryHeapInfo,
    MemoryTypeInfo, TransferPath,
};
pub use error::{Error, MemoryReason, Result};
pub use fault::probe::{
    probe as probe_fault_capabilities, DevNodeAccess, FaultCapabilities, OpenMode as UffdMode,
    ProbeAttempt, ProbeFailure, SeccompMode,
};
pub use managed::Managed;
pub use mirror::{Location, Residency};
pub use runtime::{Kernel, Runtime, RuntimeBuilder};
pub use stats::Stats;
