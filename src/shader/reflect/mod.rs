//! A SPIR-V reflector written from the SPIR-V specification.
//!
//! It reads only what vkhmm needs — compute entry points, workgroup size, buffer bindings with
//! their access, the push-constant block size — and accepts any producer (naga, glslang/glslc,
//! DXC, Slang). naga's own SPIR-V frontend is not used: it lowers the module to naga IR and
//! rejects valid modules it cannot express. Opcode and enum numbers come from the `spirv`
//! crate (the tables naga is built on); a number it does not know — an opcode, decoration,
//! storage class or execution mode from a newer specification — is ignored, as is every known
//! one that reflection does not read.
//!
//! Reflection is a pure function of the words: it touches no device, no file and no global
//! state, holds no `unsafe`, and reflecting the same words twice gives the same answer.
//!
//! # Pieces
//!
//! One pass reads the module, then the analyses answer for one entry point:
//!
//! - `reader.rs` — the word stream: header checks, then instructions whose word count has been
//!   checked. The only code that looks at raw word positions.
//! - `module.rs` — `Module`, what the pass records: names, entry points, workgroup-size
//!   execution modes, types, constants, module-scope variables, and per function its calls
//!   and pointer operands.
//! - `decorations.rs` — the decorations reflection reads, per id and per struct member,
//!   with decoration groups applied.
//! - `uses.rs` — the use analysis: which operands are pointers, which global variables an
//!   entry point reaches, and each used buffer's binding and access (`NonWritable`).
//! - `layout.rs` — the push-constant block's size, from its explicit layout decorations.
//! - this file — the public entry points, [`reflect()`] and [`spirv_words`], and the
//!   assembly of a [`KernelInfo`] from the analyses, with the workgroup size.
//!
//! # Robustness
//!
//! The input is untrusted. The reader never indexes out of bounds and never panics: every
//! instruction's word count is checked (at least 1, within the module) before its operands are
//! looked at, operands are taken by slice patterns, type sizes use checked arithmetic, nested
//! types are followed at most [`MAX_TYPE_DEPTH`] levels deep (a self-referencing type is an
//! error, not a stack overflow; a valid chain deeper than that is an unsupported kernel).
//! Nothing is quadratic in the input: decorations are kept per (target, kind) — the first of
//! a kind wins — and decoration groups are copied onto their targets once, after the pass;
//! struct sizes and "all members `NonWritable`" are memoised per type, so thousands of
//! variables sharing one huge block cost linear time. Malformed input gives
//! [`Error::InvalidShader`] with the word offset where there is one.
//!
//! Checks stop at what reflection needs: this is not `spirv-val`. A module that passes here
//! may still be rejected by the driver.
//!
//! # What counts as "used"
//!
//! A binding is reported only if the entry point statically uses it. From SPIR-V 1.4 the
//! `OpEntryPoint` interface lists every global variable the entry point uses; before 1.4 it
//! lists only inputs and outputs, so the reflector walks the functions reachable from the entry
//! point through `OpFunctionCall` and collects the global variables that appear as *pointer
//! operands* of the instructions that can take one (loads, stores, access chains, atomics,
//! `OpArrayLength`, `OpCopyMemory`, call arguments, `OpCopyObject`, `OpPhi`, `OpSelect`,
//! `OpImageTexelPointer`, …). Literal operands (memory-access alignments, `OpArrayLength`'s
//! member index) are never mistaken for ids. For 1.4 and later the walk is done as well and
//! its result added to the interface list, so a producer that forgot a variable there cannot
//! make vkhmm leave a used binding unbound.
//!
//! # Endianness
//!
//! Words must be in host order (as `vkCreateShaderModule` wants them). A module whose magic
//! number reads byte-swapped is rejected with a hint; [`spirv_words`] turns the bytes of a
//! `.spv` file of either endianness into host-order words.
//!
//! # Specialisation constants
//!
//! vkhmm passes no specialisation constants, so `OpSpecConstant` values (workgroup size from
//! `LocalSizeId` or the `WorkgroupSize` built-in, array lengths) are read as their defaults.

#![forbid(unsafe_code)]

#[cfg(test)]
mod asm;
mod decorations;
mod layout;
mod module;
mod reader;
mod uses;

use std::collections::{BTreeMap, HashMap};

use spirv::{BuiltIn, Decoration, StorageClass};

use self::module::{Constant, EntryPoint, LocalSize, Module};
use self::reader::MAGIC;
use self::uses::merge_binding;
use super::{BindingInfo, KernelInfo};
use crate::{Error, Result};

/// How deep types may nest (arrays of structs of arrays …) before the module is rejected.
pub const MAX_TYPE_DEPTH: u32 = 64;

/// Turns the bytes of a `.spv` file into host-order SPIR-V words.
///
/// The file's endianness is detected from the magic number, so modules written on a machine
/// of the other byte order load too. The bytes need no particular alignment (as from
/// `include_bytes!` or `std::fs::read`).
pub fn spirv_words(bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(invalid(format!(
            "a SPIR-V module is a whole number of 4-byte words; got {} bytes",
            bytes.len()
        )));
    }
    let word_bytes = |c: &[u8]| <[u8; 4]>::try_from(c).unwrap_or_default();
    let chunks = bytes.chunks_exact(4).map(word_bytes);
    let first = bytes.get(..4).map(word_bytes);
    let words: Vec<u32> = match first {
        Some(b) if u32::from_le_bytes(b) == MAGIC => chunks.map(u32::from_le_bytes).collect(),
        Some(b) if u32::from_be_bytes(b) == MAGIC => chunks.map(u32::from_be_bytes).collect(),
        Some(b) => {
            let first = u32::from_le_bytes(b);
            return Err(invalid(format!(
                "not a SPIR-V module: it starts with {first:#010x}, not {MAGIC:#010x}"
            )));
        }
        None => return Err(invalid("empty SPIR-V module".into())),
    };
    Ok(words)
}

/// Reflects the compute entry point `entry` of a SPIR-V module.
///
/// Returns the workgroup size, the buffer bindings the entry point statically uses (sorted by
/// set, then binding) with their access, and the push-constant block size.
///
/// # Errors
///
/// - [`Error::InvalidShader`]: the words are not a well-formed SPIR-V module, or the entry
///   point lacks something Vulkan requires (workgroup size, a buffer's descriptor set or
///   binding, offsets and strides in the push-constant block);
/// - [`Error::EntryPointNotFound`]: no `GLCompute` entry point has that name; the error lists
///   those that exist;
/// - [`Error::UnsupportedKernel`]: the entry point uses an image, sampler, texel buffer,
///   acceleration structure, descriptor array or other resource vkhmm cannot bind; the message
///   names the binding.
pub fn reflect(words: &[u32], entry: &str) -> Result<KernelInfo> {
    let module = Module::parse(words)?;
    module.reflect(entry)
}

/// The error for malformed input.
fn invalid(message: String) -> Error {
    Error::InvalidShader(message)
}

impl Module {
    /// Reflects entry point `entry` (see [`reflect()`]).
    fn reflect(&self, entry: &str) -> Result<KernelInfo> {
        let Some(ep) = self.compute_entries.iter().find(|e| e.name == entry) else {
            return Err(Error::EntryPointNotFound {
                entry: entry.to_owned(),
                available: self
                    .compute_entries
                    .iter()
                    .map(|e| e.name.clone())
                    .collect(),
            });
        };
        if let Some(offset) = self.untyped_variable {
            return Err(Error::UnsupportedKernel(format!(
                "SPIR-V word {offset}: untyped pointer variables (SPV_KHR_untyped_pointers) are \
                 not supported"
            )));
        }
        let workgroup_size = self.workgroup_size(ep)?;

        let mut bindings: BTreeMap<(u32, u32), BindingInfo> = BTreeMap::new();
        let mut read_only_blocks = HashMap::new();
        let mut push_blocks = Vec::new();
        for var in self.used_globals(ep) {
            let Some(&(pointer_type, storage)) = self.globals.get(&var) else {
                continue;
            };
            match storage {
                Some(class @ (StorageClass::StorageBuffer | StorageClass::Uniform)) => {
                    let binding =
                        self.buffer_binding(var, pointer_type, class, &mut read_only_blocks)?;
                    merge_binding(&mut bindings, binding)?;
                }
                Some(StorageClass::PushConstant) => push_blocks.push((var, pointer_type)),
                Some(
                    StorageClass::UniformConstant
                    | StorageClass::AtomicCounter
                    | StorageClass::Image,
                ) => {
                    return Err(self.unsupported_resource(var, pointer_type));
                }
                _ if self.decorations.id_has(var, Decoration::Binding)
                    || self.decorations.id_has(var, Decoration::DescriptorSet) =>
                {
                    return Err(self.unsupported_resource(var, pointer_type));
                }
                _ => {}
            }
        }
        let bindings: Vec<BindingInfo> = bindings.into_values().collect();

        let push_constant_size = match push_blocks.as_slice() {
            [] => 0,
            [(var, pointer_type)] => self.push_constant_size(*var, *pointer_type)?,
            _ => {
                return Err(invalid(format!(
                    "entry point `{entry}` uses {} push-constant blocks; Vulkan allows one",
                    push_blocks.len()
                )))
            }
        };

        Ok(KernelInfo {
            entry: entry.to_owned(),
            workgroup_size,
            bindings,
            push_constant_size,
        })
    }

    /// The workgroup size of `ep`: the `WorkgroupSize` built-in if the module has one, else
    /// its `LocalSizeId` or `LocalSize` execution mode.
    fn workgroup_size(&self, ep: &EntryPoint) -> Result<[u32; 3]> {
        let entry = &ep.name;
        // The constant composite decorated `BuiltIn WorkgroupSize` (the lowest id if a broken
        // module has several), which overrides the execution modes.
        let builtin = self
            .decorations
            .ids_with(Decoration::BuiltIn, BuiltIn::WorkgroupSize as u32)
            .filter_map(|id| match self.constants.get(&id) {
                Some(Constant::Composite(parts)) => Some((id, parts)),
                _ => None,
            })
            .min_by_key(|&(id, _)| id);
        let size = if let Some((id, parts)) = builtin {
            let [x, y, z] = parts.as_slice() else {
                return Err(invalid(format!(
                    "the WorkgroupSize built-in (%{id}) has {} components, not 3",
                    parts.len()
                )));
            };
            [
                self.scalar(*x, "WorkgroupSize")?,
                self.scalar(*y, "WorkgroupSize")?,
                self.scalar(*z, "WorkgroupSize")?,
            ]
        } else {
            match self.local_sizes.get(&ep.function) {
                Some(LocalSize::Literal(size)) => *size,
                Some(LocalSize::Ids([x, y, z])) => [
                    self.scalar(*x, "LocalSizeId")?,
                    self.scalar(*y, "LocalSizeId")?,
                    self.scalar(*z, "LocalSizeId")?,
                ],
                None => {
                    return Err(invalid(format!(
                        "entry point `{entry}` declares no workgroup size (LocalSize)"
                    )))
                }
            }
        };
        if size.contains(&0) {
            return Err(invalid(format!(
                "entry point `{entry}` has workgroup size {size:?}"
            )));
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use spirv::{BuiltIn, Decoration, Op};

    use super::asm::{glslc_module, invalid_message, naga_spirv_1_4, Asm};
    use super::asm::{GL_COMPUTE, LOCAL_SIZE, LOCAL_SIZE_ID};
    use super::reader::MAGIC;
    use super::*;
    use crate::shader::{Access, BindingKind};

    fn binding(binding: u32, kind: BindingKind, access: Access, name: &str) -> BindingInfo {
        BindingInfo {
            set: 0,
            binding,
            kind,
            access,
            name: Some(name.to_owned()),
        }
    }

    #[test]
    fn glslc_style_module_reflects() {
        let info = reflect(&glslc_module((1, 0)), "main").unwrap();
        assert_eq!(info.entry, "main");
        assert_eq!(info.workgroup_size, [128, 1, 1]);
        assert_eq!(info.push_constant_size, 32, "vec4 at offset 16 ends at 32");
        assert_eq!(
            info.bindings,
            vec![
                // An anonymous instance (`OpName %var ""`) is named after its block.
                binding(0, BindingKind::Storage, Access::Read, "In"),
                binding(1, BindingKind::Storage, Access::ReadWrite, "outb"),
            ]
        );
    }

    #[test]
    fn local_size_id_and_workgroup_size_builtin() {
        let base = |a: &mut Asm| {
            a.op(Op::Capability, &[1])
                .op(Op::MemoryModel, &[0, 1])
                .op_str(Op::EntryPoint, &[GL_COMPUTE, 2], "k", &[]);
        };
        let body = |a: &mut Asm| {
            a.op(Op::TypeVoid, &[3])
                .op(Op::TypeFunction, &[4, 3])
                .op(Op::TypeInt, &[6, 32, 0])
                .op(Op::Constant, &[6, 7, 8])
                .op(Op::Constant, &[6, 8, 4])
                .op(Op::SpecConstant, &[6, 9, 2])
                .op(Op::TypeVector, &[10, 6, 3])
                .op(Op::SpecConstantComposite, &[10, 11, 9, 8, 8])
                .op(Op::Function, &[3, 2, 0, 4])
                .op(Op::Label, &[12])
                .op(Op::Return, &[])
                .op(Op::FunctionEnd, &[]);
        };

        let mut a = Asm::new((1, 2), 13);
        base(&mut a);
        a.op(Op::ExecutionMode, &[2, LOCAL_SIZE, 1, 1, 1])
            .op(Op::ExecutionModeId, &[2, LOCAL_SIZE_ID, 7, 8, 9]);
        body(&mut a);
        assert_eq!(reflect(&a.done(), "k").unwrap().workgroup_size, [8, 4, 2]);

        // The WorkgroupSize built-in overrides both execution modes.
        let mut a = Asm::new((1, 2), 13);
        base(&mut a);
        a.op(Op::ExecutionMode, &[2, LOCAL_SIZE, 1, 1, 1]).decorate(
            11,
            Decoration::BuiltIn,
            &[BuiltIn::WorkgroupSize as u32],
        );
        body(&mut a);
        assert_eq!(reflect(&a.done(), "k").unwrap().workgroup_size, [2, 4, 4]);

        // No size at all is an error.
        let mut a = Asm::new((1, 2), 13);
        base(&mut a);
        body(&mut a);
        assert!(invalid_message(reflect(&a.done(), "k")).contains("workgroup size"));
    }

    #[test]
    fn wrong_entry_lists_the_compute_entry_points() {
        match reflect(&glslc_module((1, 0)), "mian") {
            Err(Error::EntryPointNotFound { entry, available }) => {
                assert_eq!(entry, "mian");
                assert_eq!(available, ["main"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spirv_words_detects_endianness() {
        let words = glslc_module((1, 0));
        let le: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let be: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(spirv_words(&le).unwrap(), words);
        assert_eq!(spirv_words(&be).unwrap(), words);
        // Unaligned input is fine.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&le);
        assert_eq!(spirv_words(&shifted[1..]).unwrap(), words);
        assert!(spirv_words(&le[..7]).is_err());
        assert!(spirv_words(&[]).is_err());
        assert!(spirv_words(&[1, 2, 3, 4]).is_err());
    }

    /// Every bundled shader and the hand-assembled module, as seeds for mutation.
    fn seeds() -> Vec<Vec<u32>> {
        let mut seeds: Vec<Vec<u32>> = crate::shaders::ALL
            .iter()
            .map(|s| s.spirv.to_vec())
            .collect();
        seeds.push(glslc_module((1, 0)));
        seeds.push(naga_spirv_1_4(crate::shaders::SAXPY_WGSL));
        seeds
    }

    #[test]
    fn every_single_word_mutation_is_handled() {
        let values = [
            0,
            1,
            0xffff_ffff,
            0x0001_0000,
            0xffff_0000,
            0x0000_ffff,
            16,
            40,
            0x7fff_ffff,
        ];
        for seed in seeds() {
            for at in 0..seed.len() {
                for value in values {
                    let mut words = seed.clone();
                    words[at] = value;
                    let _ = reflect(&words, "main");
                }
                let _ = reflect(&seed[..at], "main");
            }
        }
    }

    proptest! {
        #[test]
        fn random_words_never_panic(
            body in proptest::collection::vec(any::<u32>(), 0..256),
            with_header in any::<bool>(),
        ) {
            let mut words = if with_header { vec![MAGIC, 0x0001_0300, 0, 100, 0] } else { vec![] };
            words.extend(body);
            let _ = reflect(&words, "main");
        }

        #[test]
        fn random_small_opcodes_never_panic(
            body in proptest::collection::vec((1u32..8, 0u32..80, proptest::collection::vec(0u32..48, 0..8)), 0..64),
        ) {
            // Plausible instructions with small ids: these reach far deeper than random words.
            let mut words = vec![MAGIC, 0x0001_0000, 0, 48, 0];
            for (count, opcode, operands) in body {
                words.push((count << 16) | opcode);
                words.extend(operands);
            }
            let _ = reflect(&words, "main");
        }

        #[test]
        fn mutated_modules_never_panic(
            seed in 0usize..8,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let seeds = seeds();
            let mut words = seeds[seed % seeds.len()].clone();
            for (at, value) in edits {
                let i = at.index(words.len());
                words[i] = value;
            }
            if truncate {
                words.truncate(cut.index(words.len() + 1));
            }
            let _ = reflect(&words, "main");
        }
    }
}
