//! vkhmm — user-space HMM on Vulkan (crate docs are written as the rooms land).
#![warn(missing_docs)]

mod error;
pub mod shader;

/// The WGSL kernels bundled in `shaders/`, compiled to SPIR-V by `build.rs`.
///
/// For each `foo_bar.wgsl` there is `FOO_BAR_WGSL` (the source) and `FOO_BAR_SPIRV` (the
/// words, compiled with the same naga options as [`shader::compile_wgsl`]); [`shaders::ALL`]
/// lists them all. Every bundled kernel has one compute entry point, `main`, binds its buffers
/// at `@group(0) @binding(0..)` and takes `n` (the element count) in its push constants.
pub mod shaders {
    include!(concat!(env!("OUT_DIR"), "/shaders.rs"));
}

pub use error::{Error, MemoryReason, Result};
