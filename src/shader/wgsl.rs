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
//!
//! # Untrusted source
//!
//! `Runtime::kernel_wgsl` takes any string, so compiling must fail with an error, never take
//! the process down. naga's WGSL parser bounds its own recursion, but the tree it builds can
//! be as deep as an operator chain is long, and the lowering after it recurses once per
//! level: a 16 KiB line of `1+1+…` overflowed a 2 MiB thread stack, which aborts the process
//! (found with the `wgsl` fuzz target's inputs; see docs/reliability.md, "Fuzzing"). Hence:
//!
//! - [`check_nesting`] first bounds the depth lexically ([`MAX_EXPRESSION_OPERATORS`] per
//!   statement, [`MAX_ELSE_PER_BLOCK`] per block), rejecting with the line and column;
//! - naga then runs on a scoped thread of its own with a [`COMPILER_STACK`]-byte stack, so the
//!   bound holds whatever stack the caller has (a 256 KiB thread, an unoptimised build);
//! - a panic inside naga ends that thread, and `join` turns it into an error (naga 30.0.2's
//!   SPIR-V writer hits `unreachable!` on some valid WGSL, upstream gfx-rs/wgpu#10266). The
//!   panic hook still runs first (the default one prints the message to stderr), and built
//!   with `panic = "abort"` the process still aborts: catching is the best vkhmm can do
//!   short of patching naga. vkhmm's own code does not panic.

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
///
/// naga runs on a thread of its own with a [`COMPILER_STACK`]-byte stack, after
/// [`check_nesting`] has bounded how deep its recursion can go (see the module docs,
/// "Untrusted source"). A panic inside naga becomes an error.
pub fn wgsl_to_spirv_with_path(source: &str, path: &str) -> Result<Vec<u32>, String> {
    check_nesting(source, path)?;
    std::thread::scope(|scope| {
        let compiler = std::thread::Builder::new()
            .name("vkhmm-naga".into())
            .stack_size(COMPILER_STACK)
            .spawn_scoped(scope, || compile(source, path))
            .map_err(|e| format!("{path}: cannot start the WGSL compiler thread: {e}"))?;
        // Nothing naga touched outlives its thread, so a panic leaves no broken state behind.
        compiler.join().unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            Err(format!("{path}: naga panicked on this source: {message}"))
        })
    })
}

/// The stack of the thread naga runs on: room for [`MAX_EXPRESSION_OPERATORS`] and
/// [`MAX_ELSE_PER_BLOCK`] levels of naga's recursion in an unoptimised build, with a wide
/// margin. Only the pages it touches are ever backed by memory.
pub const COMPILER_STACK: usize = 64 << 20;

/// The most operator, selector and call tokens one statement or declaration may hold (an
/// upper bound on how deeply its expression nests).
pub const MAX_EXPRESSION_OPERATORS: usize = 4096;

/// The most `else` keywords one block may hold (an upper bound on how deeply an
/// `else if` chain nests).
pub const MAX_ELSE_PER_BLOCK: usize = 1024;

/// Rejects sources whose syntax tree could nest deeper than naga's lowering can recurse.
///
/// naga's parser bounds its own recursion (200 levels, 127 nested braces) but builds operator
/// chains (`1+1+…`), prefix operators (`!!…x`), postfix selectors (`a[0][0]…`, `v.x.x…`) and
/// `else if` chains iteratively into a tree as deep as the chain is long, which its lowering
/// then walks recursively, one stack frame per level: 4,000 `+` overflowed a 2 MiB stack and
/// aborted the process. This lexical pass (comments skipped) counts, per statement, the tokens
/// that can each add a level, and per block the `else` keywords, and refuses sources over
/// [`MAX_EXPRESSION_OPERATORS`] or [`MAX_ELSE_PER_BLOCK`]. The count over-approximates the
/// depth (siblings add up); the only tokens left out are those that cannot chain: the `.` and
/// exponent sign inside a number, and a `-` that starts a number in an argument list (as in a
/// table of constants), whose operand is a leaf.
pub fn check_nesting(source: &str, path: &str) -> Result<(), String> {
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    // Whether the identifier characters right before `end` start with a digit: the `1` of
    // `1.5`, the `5e` of `.5e-3`. Each run is scanned once (a `.` or sign ends it), so the
    // pass stays linear.
    let number_before = |end: usize| {
        let start = bytes[..end]
            .iter()
            .rposition(|&b| !is_ident(b))
            .map_or(0, |i| i + 1);
        bytes.get(start).is_some_and(u8::is_ascii_digit) && start < end
    };
    let (mut line, mut line_start) = (1usize, 0usize);
    let mut operators = 0usize;
    let mut elses: Vec<usize> = vec![0];
    // The last byte that is not blank or inside a comment.
    let mut previous = b';';
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let at = |what: String| {
            let column = source[line_start..i].chars().count() + 1;
            Err(format!("{path}:{line}:{column}: {what}"))
        };
        match b {
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| i + n);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in WGSL.
                let mut depth = 0usize;
                while i < bytes.len() {
                    match (bytes[i], bytes.get(i + 1)) {
                        (b'/', Some(b'*')) => (depth, i) = (depth + 1, i + 2),
                        (b'*', Some(b'/')) => (depth, i) = (depth - 1, i + 2),
                        (b'\n', _) => (line, line_start, i) = (line + 1, i + 1, i + 1),
                        _ => i += 1,
                    }
                    if depth == 0 {
                        break;
                    }
                }
                continue;
            }
            b';' | b'{' | b'}' => {
                operators = 0;
                match b {
                    b'{' => elses.push(0),
                    b'}' if elses.len() > 1 => {
                        elses.pop();
                    }
                    _ => {}
                }
            }
            b'e' if bytes[i..].starts_with(b"else")
                && !bytes.get(i + 4).copied().is_some_and(is_ident)
                && !(i > 0 && is_ident(bytes[i - 1])) =>
            {
                let count = elses.last_mut().map_or(0, |n| {
                    *n += 1;
                    *n
                });
                if count > MAX_ELSE_PER_BLOCK {
                    return at(format!(
                        "more than {MAX_ELSE_PER_BLOCK} `else` in one block: the `else if` \
                         chain may nest deeper than the WGSL compiler can recurse"
                    ));
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^' | b'!' | b'~' | b'<' | b'>'
            | b'=' | b'[' | b'(' | b'.' => {
                let in_number = match b {
                    b'.' => number_before(i) || bytes.get(i + 1).is_some_and(u8::is_ascii_digit),
                    b'+' | b'-' if matches!(previous, b'e' | b'E' | b'p' | b'P') => {
                        number_before(i)
                    }
                    _ => false,
                };
                let leading_minus = b == b'-'
                    && matches!(previous, b'(' | b',')
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
                if !in_number && !leading_minus {
                    operators += 1;
                    if operators > MAX_EXPRESSION_OPERATORS {
                        return at(format!(
                            "more than {MAX_EXPRESSION_OPERATORS} operators, selectors and calls \
                             in one statement: the expression may nest deeper than the WGSL \
                             compiler can recurse"
                        ));
                    }
                }
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            previous = b;
        }
        i += 1;
    }
    Ok(())
}

fn compile(source: &str, path: &str) -> Result<Vec<u32>, String> {
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
