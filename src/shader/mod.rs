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
