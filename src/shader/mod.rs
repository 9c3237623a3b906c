//! Shaders: WGSL → SPIR-V with naga, and reflection of any SPIR-V.
//!
//! Two doors lead in — [`compile_wgsl`] for WGSL sources and raw SPIR-V words from any
//! compiler (glslc, dxc, Slang, naga) — and both end in the same reflector, so a kernel's
//! interface is read the same way whatever produced it. Reflection yields a [`KernelInfo`]:
//! the buffer bindings with their access (read vs read_write, from `NonWritable`), the
//! push-constant block size and the workgroup size. The runtime trusts this, not guesswork,
//! to decide which host pages become `Shared` and which become `Device` at launch.
//!
//! This module touches no device and holds no `unsafe`.
//!
//! # Pieces
//!
//! - `wgsl.rs` — naga front end, validator and SPIR-V writer with vkhmm's options (SPIR-V 1.3,
//!   no loop bounding, no workgroup zero-init polyfill, no integer-division wrappers, debug
//!   names kept). naga runs on a thread of its own with a large stack, after a lexical check
//!   that bounds how deep its recursion can go: untrusted WGSL gives an error, never a stack
//!   overflow. It uses nothing from the crate because `build.rs` compiles the very same file
//!   to turn the bundled `shaders/*.wgsl` into [`crate::shaders`]: a bundled shader and the same
//!   source compiled at run time give identical words.
//! - `reflect/` — [`reflect()`], a reader written from the SPIR-V specification rather than
//!   naga's SPIR-V front end (which rejects valid modules from other compilers), with the
//!   `spirv` crate's opcode and enum tables. It accepts untrusted input: malformed words give
//!   [`Error::InvalidShader`], never a panic.
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
//! - naga 30 spells push constants `var<immediate>` (not `var<push_constant>`); the bundled
//!   shaders use it. The push-constant size reported is the end of the last member
//!   (`Offset` + size), not the WGSL struct size rounded to its alignment: for
//!   `{ a: f32, b: vec3<f32> }` it is 28, not 32.
//! - Storage and uniform buffer indexing is not clamped by the compiler: vkhmm enables
//!   `robustBufferAccess` instead. Indexing into function-local and workgroup arrays is
//!   clamped (naga's `Restrict` policy), so it cannot reach memory outside them.
//! - Workgroup memory is *not* zero-initialised, contrary to the WGSL specification: kernels
//!   must write what they read. Integer division by zero gives an unspecified value instead
//!   of WGSL's defined one.

#![forbid(unsafe_code)]

mod reflect;
mod wgsl;

pub use reflect::{reflect, spirv_words};

use crate::{Error, Result};

/// Compiles WGSL source to SPIR-V words with vkhmm's naga options.
///
/// The words can be given to [`reflect()`] and to the runtime's SPIR-V entry.
///
/// # Errors
///
/// [`Error::InvalidShader`] with naga's report: the message names the line and column and
/// quotes the source under the offending span. A source that could nest deeper than the
/// compiler can recurse (thousands of chained operators in one statement, of `else` in one
/// block) is refused the same way, as is one that made naga panic.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaders;

    fn storage(binding: u32, access: Access, name: &str) -> BindingInfo {
        BindingInfo {
            set: 0,
            binding,
            kind: BindingKind::Storage,
            access,
            name: Some(name.into()),
        }
    }

    /// Asserts that bundled shader `name` (also listed in `ALL`) reflects as `want`.
    fn check_bundled(name: &str, words: &[u32], want: KernelInfo) {
        let bundled = shaders::ALL.iter().find(|s| s.name == name).expect(name);
        assert_eq!(bundled.spirv, words, "{name}: ALL and the constant agree");
        let info = reflect(words, "main").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info, want, "{name}");
    }

    fn kernel(workgroup_x: u32, bindings: Vec<BindingInfo>, push: u32) -> KernelInfo {
        KernelInfo {
            entry: "main".into(),
            workgroup_size: [workgroup_x, 1, 1],
            bindings,
            push_constant_size: push,
        }
    }

    #[test]
    fn bundled_shaders_reflect_as_documented() {
        use Access::{Read, ReadWrite};
        let (x, y) = (storage(0, Read, "x"), storage(1, ReadWrite, "y"));
        check_bundled(
            "saxpy.wgsl",
            shaders::SAXPY_SPIRV,
            kernel(256, vec![x, y], 8),
        );
        let out = storage(0, ReadWrite, "out");
        check_bundled(
            "fill_index.wgsl",
            shaders::FILL_INDEX_SPIRV,
            kernel(64, vec![out], 12),
        );
        let data = storage(0, ReadWrite, "data");
        check_bundled(
            "add_k.wgsl",
            shaders::ADD_K_SPIRV,
            kernel(64, vec![data], 8),
        );
        let (src, dst) = (storage(0, Read, "src"), storage(1, ReadWrite, "dst"));
        check_bundled(
            "copy_u32.wgsl",
            shaders::COPY_U32_SPIRV,
            kernel(256, vec![src, dst], 4),
        );
        let (src, out) = (storage(0, Read, "src"), storage(1, ReadWrite, "out"));
        check_bundled(
            "checksum.wgsl",
            shaders::CHECKSUM_SPIRV,
            kernel(256, vec![src, out], 4),
        );
    }

    #[test]
    fn every_bundled_shader_compiles_the_same_at_run_time() {
        assert!(shaders::ALL.len() >= 5);
        for shader in shaders::ALL {
            let name = shader.name;
            let words = compile_wgsl(shader.wgsl).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                words, shader.spirv,
                "{name}: build.rs and compile_wgsl disagree"
            );
            assert_eq!(words[1], 0x0001_0300, "{name}: SPIR-V 1.3");
            // Asking for no entry point lists them all.
            let entries = match reflect(shader.spirv, "") {
                Err(Error::EntryPointNotFound { available, .. }) => available,
                other => panic!("{name}: {other:?}"),
            };
            assert!(!entries.is_empty(), "{name}: no compute entry point");
            // The launch contract: the i-th buffer argument is @group(0) @binding(i).
            for entry in entries {
                let info = reflect(shader.spirv, &entry).unwrap_or_else(|e| panic!("{name}: {e}"));
                for (i, b) in info.bindings.iter().enumerate() {
                    assert_eq!((b.set, b.binding as usize), (0, i), "{name} `{entry}`");
                    assert!(b.name.is_some(), "{name}: naga keeps names");
                }
            }
        }
        assert_eq!(
            shaders::SAXPY_WGSL,
            include_str!("../../shaders/saxpy.wgsl")
        );
    }

    #[test]
    fn read_and_read_write_storage() {
        let words = compile_wgsl(
            "@group(0) @binding(0) var<storage, read> a: array<f32>;
             @group(0) @binding(1) var<storage, read_write> b: array<f32>;
             @group(0) @binding(2) var<storage> c: array<f32>; // read is the default
             @compute @workgroup_size(8, 4, 2)
             fn main(@builtin(global_invocation_id) g: vec3<u32>) { b[g.x] = a[g.x] + c[g.x]; }",
        )
        .unwrap();
        let info = reflect(&words, "main").unwrap();
        assert_eq!(info.workgroup_size, [8, 4, 2]);
        assert_eq!(
            info.bindings,
            [
                storage(0, Access::Read, "a"),
                storage(1, Access::ReadWrite, "b"),
                storage(2, Access::Read, "c")
            ]
        );
        assert_eq!(info.push_constant_size, 0);
    }

    #[test]
    fn uniform_buffers_are_read() {
        let words = compile_wgsl(
            "struct U { scale: f32, n: u32 }
             @group(0) @binding(1) var<storage, read_write> data: array<f32>;
             @group(0) @binding(0) var<uniform> u: U;
             @compute @workgroup_size(64)
             fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                 if g.x < u.n { data[g.x] *= u.scale; }
             }",
        )
        .unwrap();
        let info = reflect(&words, "main").unwrap();
        let uniform = BindingInfo {
            set: 0,
            binding: 0,
            kind: BindingKind::Uniform,
            access: Access::Read,
            name: Some("u".into()),
        };
        assert_eq!(
            info.bindings,
            [uniform, storage(1, Access::ReadWrite, "data")]
        );
    }

    #[test]
    fn each_entry_point_sees_only_its_own_bindings() {
        let words = compile_wgsl(
            "@group(0) @binding(0) var<storage, read> a: array<u32>;
             @group(0) @binding(1) var<storage, read_write> b: array<u32>;
             @group(0) @binding(2) var<uniform> u: vec4<u32>;
             @group(0) @binding(3) var<storage, read_write> never: array<u32>;
             fn helper(i: u32) -> u32 { return a[i]; }
             @compute @workgroup_size(8, 4, 2)
             fn first(@builtin(global_invocation_id) g: vec3<u32>) { b[g.x] = helper(g.x); }
             @compute @workgroup_size(32)
             fn second() { b[0] = u.x; }",
        )
        .unwrap();
        let first = reflect(&words, "first").unwrap();
        assert_eq!(first.workgroup_size, [8, 4, 2]);
        let names = |info: &KernelInfo| -> Vec<String> {
            info.bindings
                .iter()
                .map(|b| b.name.clone().unwrap())
                .collect()
        };
        // `a` is reached only through the call to `helper`.
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(first.bindings[0].access, Access::Read);
        let second = reflect(&words, "second").unwrap();
        assert_eq!(second.workgroup_size, [32, 1, 1]);
        assert_eq!(names(&second), ["b", "u"]);
        assert_eq!(second.bindings[1].kind, BindingKind::Uniform);
        match reflect(&words, "third") {
            Err(Error::EntryPointNotFound { entry, available }) => {
                assert_eq!(entry, "third");
                assert_eq!(available, ["first", "second"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_wgsl_reports_the_location() {
        let err =
            compile_wgsl("@compute @workgroup_size(1)\nfn main() {\n    let x: u32 = 1.5;\n}\n")
                .unwrap_err();
        let Error::InvalidShader(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains("wgsl:3:"), "{message}");
        assert!(message.contains("let x: u32 = 1.5;"), "{message}");
        assert!(err.is_misuse());

        // Validation errors (not parse errors) carry a location too.
        let err = compile_wgsl(
            "@group(0) @binding(0) var<storage, read> a: array<u32>;
             @compute @workgroup_size(1)
             fn main() { a[0] = 1u; }",
        )
        .unwrap_err();
        let Error::InvalidShader(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains("wgsl:3:"), "{message}");
    }

    #[test]
    fn images_and_samplers_are_unsupported() {
        let words = compile_wgsl(
            "@group(0) @binding(0) var<storage, read_write> out: array<f32>;
             @group(0) @binding(1) var tex: texture_2d<f32>;
             @compute @workgroup_size(1)
             fn main() { out[0] = textureLoad(tex, vec2<i32>(0, 0), 0).x; }
             @compute @workgroup_size(1)
             fn plain() { out[0] = 1.0; }",
        )
        .unwrap();
        match reflect(&words, "main") {
            Err(Error::UnsupportedKernel(message)) => {
                assert!(message.contains("`tex` (set 0, binding 1)"), "{message}");
                assert!(message.contains("image"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // An entry point that does not touch the image is fine.
        assert_eq!(reflect(&words, "plain").unwrap().bindings.len(), 1);
    }

    #[test]
    fn compute_features_validate() {
        // Workgroup memory, workgroup and storage atomics, barriers, subgroups, push
        // constants and an override with a default all pass vkhmm's validator.
        let words = compile_wgsl(
            "override block: u32 = 128;
             struct P { n: u32 }
             var<immediate> p: P;
             @group(0) @binding(0) var<storage, read> src: array<u32>;
             @group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;
             var<workgroup> tile: array<u32, 128>;
             var<workgroup> count: atomic<u32>;
             @compute @workgroup_size(block)
             fn main(@builtin(local_invocation_index) l: u32,
                     @builtin(global_invocation_id) g: vec3<u32>) {
                 tile[l] = select(0u, src[g.x], g.x < p.n);
                 atomicAdd(&count, 1u);
                 workgroupBarrier();
                 let s = subgroupAdd(tile[l]);
                 if l == 0u { atomicAdd(&out[0], s + atomicLoad(&count) + tile[l / 2u]); }
             }",
        )
        .unwrap();
        let info = reflect(&words, "main").unwrap();
        assert_eq!(info.workgroup_size, [128, 1, 1]);
        assert_eq!(info.push_constant_size, 4);
        assert_eq!(info.bindings.len(), 2);
    }

    /// Runs `compile_wgsl` on a thread with a 256 KiB stack: the result must not depend on
    /// the caller's stack.
    fn compile_on_small_stack(source: String) -> Result<Vec<u32>> {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || compile_wgsl(&source))
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn deep_wgsl_is_an_error_not_a_stack_overflow() {
        // Before the nesting check, 4,000 `+` (or `!`, `[0]`, 2,000 `else if`) overflowed a
        // 2 MiB stack inside naga's lowering and aborted the test binary.
        let n = 100_000;
        let sources = [
            format!("fn f() -> i32 {{ return {}; }}", vec!["1"; n].join("+")),
            format!("const c = {};", vec!["1"; n].join("+")),
            format!("fn f() -> bool {{ return {}true; }}", "!".repeat(n)),
            format!("fn f() -> i32 {{ return {}1; }}", "- ".repeat(n)),
            format!(
                "fn f(a: array<i32, 2>) -> i32 {{ return a{}; }}",
                "[0]".repeat(n)
            ),
            format!(
                "fn f(v: vec2<f32>) -> f32 {{ return v{}; }}",
                ".x".repeat(n)
            ),
            format!("fn f(a: i32) {{ {}{{}} }}", "if a == 0 {} else ".repeat(n)),
        ];
        for source in sources {
            let err = compile_on_small_stack(source).unwrap_err();
            let Error::InvalidShader(message) = &err else {
                panic!("{err:?}")
            };
            assert!(message.starts_with("wgsl:1:"), "{message}");
            assert!(message.contains("nest deeper"), "{message}");
        }
    }

    #[test]
    fn a_panic_inside_naga_is_an_error() {
        // naga 30.0.2's SPIR-V writer hits `unreachable!` on this valid WGSL (upstream
        // gfx-rs/wgpu#10266; also fuzz/regressions/wgsl). If a naga update fixes it, this
        // compiles: replace it with another known naga panic, or drop the test.
        let err = compile_wgsl(
            "fn takes_ptr(p: ptr<function, i32>) {}
             fn f(v: ptr<function, array<array<array<i32, 4>, 4>, 4>>, i: u32, j: u32) {
                 takes_ptr((&(*v)[i][0][j]));
             }",
        )
        .unwrap_err();
        let Error::InvalidShader(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.starts_with("wgsl: naga panicked"), "{message}");
        assert!(message.contains("is not cached"), "{message}");
    }

    #[test]
    fn long_flat_wgsl_still_compiles() {
        // Right under the limit, a chain as deep as it allows compiles on a small stack.
        // `out[0] = ` counts 2 (`[`, `=`).
        let sum = vec!["1u"; wgsl::MAX_EXPRESSION_OPERATORS - 1].join("+");
        let chain = "if out[0] == 0u {} else ".repeat(wgsl::MAX_ELSE_PER_BLOCK - 1);
        // A big table of negative floats with exponents: its `-`, `.` and exponent signs
        // cannot chain and are not counted. Comments are skipped, nested ones too.
        let table: Vec<String> = (0..8000).map(|i| format!("-{i}.5e-3")).collect();
        let source = format!(
            "// {dashes}
             /* {dashes} /* {dashes} */ {dashes} */
             const T = array<f32, 8000>({table});
             @group(0) @binding(0) var<storage, read_write> out: array<u32>;
             @compute @workgroup_size(1)
             fn main() {{
                 out[0] = {sum};
                 {chain} {{ out[1] = u32(T[7999]); }}
             }}",
            dashes = "-".repeat(10_000),
            table = table.join(", "),
        );
        let words = compile_on_small_stack(source).unwrap();
        assert_eq!(reflect(&words, "main").unwrap().bindings.len(), 1);
    }
}
