//! Shaders: WGSL → SPIR-V with naga, and reflection of any SPIR-V.
//!
//! Two doors lead in — [`compile_wgsl`] for WGSL sources and raw SPIR-V words from any
//! compiler (glslc, dxc, Slang, naga) — and both end in the same reflector, so a kernel's
//! interface is read the same way whatever produced it. Reflection yields a [`KernelInfo`]:
//! the buffer bindings with their access (read vs read_write, from `NonWritable`), the
//! push-constant block size and the workgroup size. The runtime trusts this, not guesswork,
//! to decide which host pages become `Shared` and which become `Device` at launch.
//!
//! This room touches no device and holds no `unsafe`.
//!
//! # Pieces
//!
//! - `wgsl.rs` — naga front end, validator and SPIR-V writer with vkhmm's options (SPIR-V 1.3,
//!   no loop bounding, no workgroup zero-init polyfill, no integer-division wrappers, debug
//!   names kept). It uses nothing from the crate because `build.rs` compiles the very same file
//!   to turn the bundled `shaders/*.wgsl` into [`crate::shaders`]: a bundled shader and the same
//!   source compiled at run time give identical words.
//! - `reflect.rs` — `reflect`, a reader written from the SPIR-V specification rather than
//!   naga's SPIR-V front end (which rejects valid modules from other compilers). It accepts
//!   untrusted input: malformed words give [`Error::InvalidShader`], never a panic.
//!
//! # How access is decided
//!
//! A binding is [`Access::Read`] when the variable is decorated `NonWritable` (naga writes this
//! for `var<storage, read>`) or every member of its block is (glslang writes member decorations
//! for `readonly buffer`). Uniform buffers are always read. Everything else is
//! [`Access::ReadWrite`] — even a `read_write` binding the kernel never stores to, since the
//! declaration, not a guess from the code, is the contract.
//!
//! Only bindings the entry point statically uses are reported: a module with several entry
//! points gives each its own interface.
//!
//! # WGSL notes
//!
//! naga 30 spells push constants `var<immediate>`; that is what the bundled shaders use.
//! Kernels run on `robustBufferAccess`, so buffer indexing is not clamped by the compiler;
//! workgroup memory is *not* zero-initialised (kernels must clear what they read).

#![forbid(unsafe_code)]

mod wgsl;

use crate::{Error, Result};

/// Compiles WGSL source to SPIR-V words with vkhmm's naga options.
///
/// The words can be given to `reflect` and to the runtime's SPIR-V entry.
///
/// # Errors
///
/// [`Error::InvalidShader`] with naga's report: the message names the line and column and
/// quotes the source under the offending span.
pub fn compile_wgsl(source: &str) -> Result<Vec<u32>> {
    wgsl::wgsl_to_spirv(source).map_err(Error::InvalidShader)
}

/// A WGSL shader bundled with the crate (see [`crate::shaders`]), compiled at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundledShader {
    /// File name in `shaders/`, e.g. `saxpy.wgsl`.
    pub name: &'static str,
    /// The WGSL source.
    pub wgsl: &'static str,
    /// The SPIR-V words, as [`compile_wgsl`] would produce them.
    pub spirv: &'static [u32],
}

/// What a kernel declares about one buffer binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingInfo {
    /// Descriptor set (`@group`). vkhmm binds set 0 only.
    pub set: u32,
    /// Binding number (`@binding`).
    pub binding: u32,
    /// Storage or uniform buffer.
    pub kind: BindingKind,
    /// Whether the kernel may write through this binding.
    pub access: Access,
    /// The variable's name, when the module carries debug names.
    pub name: Option<String>,
}

/// The descriptor type of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// A storage buffer (`var<storage>`, GLSL `buffer`).
    Storage,
    /// A uniform buffer (`var<uniform>`, GLSL `uniform` block). Always read-only.
    Uniform,
}

/// How a kernel accesses a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The kernel only reads (`var<storage, read>`, SPIR-V `NonWritable`).
    Read,
    /// The kernel may write (`var<storage, read_write>`).
    ReadWrite,
}

/// A compute entry point's interface, as reflected from SPIR-V.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// Entry point name.
    pub entry: String,
    /// `@workgroup_size` / `LocalSize`.
    pub workgroup_size: [u32; 3],
    /// Buffer bindings the entry point uses, sorted by (set, binding).
    pub bindings: Vec<BindingInfo>,
    /// Size in bytes of the push-constant block (0 when there is none).
    pub push_constant_size: u32,
}
