//! WGSL → SPIR-V with naga: the one place where vkhmm's naga options are written down.
//!
//! This file is compiled twice: as `crate::shader::wgsl` and, through
//! `#[path = "src/shader/wgsl.rs"] mod wgsl;`, inside `build.rs`, which turns the bundled
//! `shaders/*.wgsl` into SPIR-V at build time. It therefore uses nothing from the crate (no
//! `crate::` paths) and reports errors as plain strings; the crate wraps them into
//! `Error::InvalidShader`. A shader compiled at build time and the same source compiled at run
//! time give the same words.
//!
//! # Options, and why
//!
//! naga's defaults aim at untrusted web content on every backend; vkhmm runs trusted compute
//! kernels on Vulkan with `robustBufferAccess` enabled, and Mesa's lavapipe pays dearly for
//! some of the defaults (pipeline creation was 40× slower with them):
//!
//! | option | value | reason |
//! |---|---|---|
//! | `lang_version` | 1.3 | the highest version every Vulkan 1.1 driver (lavapipe included) takes |
//! | `force_loop_bounding` | `false` | the injected loop counters defeat LLVM's loop optimisations |
//! | `zero_initialize_workgroup_memory` | `None` | WGSL zero-initialises `var<workgroup>`; kernels that rely on it must clear it themselves |
//! | `emit_int_div_checks` | `false` | no wrapper function around every `/` and `%`; division by zero gives an unspecified value |
//! | `bounds_check_policies.index` | `Restrict` | local and workgroup arrays are clamped: an out-of-range index cannot touch memory outside them |
//! | `bounds_check_policies.buffer` | `Unchecked` | storage/uniform buffers are guarded by `robustBufferAccess` instead |
//! | `flags` | `DEBUG` only | keeps `OpName`s, so reflection reports binding names |
//! | `fake_missing_bindings` | `true` | with no binding map, `@group(g) @binding(b)` is set g, binding b |
//!
//! Validation allows what compute kernels commonly need beyond naga's defaults: push
//! constants (WGSL `var<immediate>`), subgroup operations and barriers, 64-bit integers and
//! floats, 64-bit and float atomics. Workgroup memory and 32-bit atomics need no capability.
//! The device still has to support whatever SPIR-V capability a kernel ends up using.
//! Pipeline-overridable constants (`override`) take their default values.

use naga::back::spv;
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};

/// The SPIR-V version vkhmm emits.
pub const SPIRV_VERSION: (u8, u8) = (1, 3);

/// naga's SPIR-V writer options used for every WGSL kernel (see the module docs).
pub fn spirv_options() -> spv::Options<'static> {
    spv::Options {
        lang_version: SPIRV_VERSION,
        flags: spv::WriterFlags::DEBUG,
        // With an empty binding map, `@group(g) @binding(b)` becomes set g, binding b.
        fake_missing_bindings: true,
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        emit_int_div_checks: false,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Unchecked,
            image_load: naga::proc::BoundsCheckPolicy::Unchecked,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        ..spv::Options::default()
    }
}

/// The validator used for every WGSL kernel (see the module docs for the capabilities).
pub fn validator() -> Validator {
    let capabilities = Capabilities::default()
        | Capabilities::IMMEDIATES
        | Capabilities::SUBGROUP
        | Capabilities::SUBGROUP_BARRIER
        | Capabilities::SHADER_INT64
        | Capabilities::FLOAT64
        | Capabilities::SHADER_INT64_ATOMIC_MIN_MAX
        | Capabilities::SHADER_INT64_ATOMIC_ALL_OPS
        | Capabilities::SHADER_FLOAT32_ATOMIC;
    let mut validator = Validator::new(ValidationFlags::all(), capabilities);
    validator
        .subgroup_stages(ShaderStages::COMPUTE)
        .subgroup_operations(SubgroupOperationSet::all());
    validator
}

/// Compiles WGSL source to SPIR-V words.
///
/// On failure the message is naga's report with the source line and a caret under the
/// offending span, attributed to the file name `wgsl`.
pub fn wgsl_to_spirv(source: &str) -> Result<Vec<u32>, String> {
    wgsl_to_spirv_with_path(source, "wgsl")
}

/// Like [`wgsl_to_spirv`], attributing errors to `path` (the build script passes the file).
pub fn wgsl_to_spirv_with_path(source: &str, path: &str) -> Result<Vec<u32>, String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| e.emit_to_string_with_path(source, path))?;
    let info = validator()
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(source, path))?;
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        None,
        &Default::default(),
    )
    .map_err(|e| format!("{path}: cannot resolve pipeline-overridable constants: {e}"))?;
    spv::write_vec(&module, &info, &spirv_options(), None)
        .map_err(|e| format!("{path}: naga's SPIR-V writer failed: {e}"))
}
