//! Explicit layout: the size in bytes of the push-constant block.
//!
//! Vulkan wants the push-constant range a kernel uses, and a push-constant block must carry
//! explicit layout decorations, so sizes are read from them, never guessed from a packing
//! rule: a struct is as large as its largest `Offset` plus that member's size, an array is
//! `ArrayStride` × length, a matrix `MatrixStride` × columns (× rows when `RowMajor`), a
//! `PhysicalStorageBuffer` pointer 8 bytes. A missing decoration is malformed input.
//!
//! Sizes are computed in `u64` with checked arithmetic and the result must fit a `u32`.
//! [`Module::size_of`] recurses at most [`MAX_TYPE_DEPTH`] levels and memoises struct sizes
//! per call; past that depth [`Module::has_cycle_from`], an iterative search linear in the
//! types reached, tells a self-referencing type (invalid SPIR-V) from a valid chain that is
//! only deeper than vkhmm sizes (an unsupported kernel).

use std::collections::HashMap;

use spirv::{Decoration, StorageClass};

use super::module::{Module, Type};
use super::{invalid, MAX_TYPE_DEPTH};
use crate::{Error, Result};

impl Module {
    /// The size of the push-constant block variable `var` points to.
    pub(super) fn push_constant_size(&self, var: u32, pointer_type: u32) -> Result<u32> {
        let block = self.pointee(var, pointer_type)?;
        let mut memo = HashMap::new();
        let size = match self.size_of(block, None, 0, &mut memo) {
            // A cycle is invalid SPIR-V; a long chain of types is valid (naga writes one for
            // 70 nested WGSL structs) and only over vkhmm's limit.
            Err(Error::UnsupportedKernel(_)) if self.has_cycle_from(block) => {
                return Err(invalid(format!(
                    "push-constant type %{block} refers to itself: it nests deeper than \
                     {MAX_TYPE_DEPTH} levels"
                )))
            }
            Err(Error::UnsupportedKernel(_)) => {
                return Err(Error::UnsupportedKernel(format!(
                    "push-constant type %{block} nests deeper than {MAX_TYPE_DEPTH} levels; \
                     vkhmm sizes push-constant blocks at most that deep"
                )))
            }
            other => other?,
        };
        u32::try_from(size).map_err(|_| {
            invalid(format!(
                "push-constant block %{block} is {size} bytes, over 4 GiB"
            ))
        })
    }

    /// The types [`Module::size_of`] descends into from `ty`.
    fn sized_parts(&self, ty: u32) -> &[u32] {
        match self.types.get(&ty) {
            Some(Type::Vector { component, .. }) => std::slice::from_ref(component),
            Some(Type::Array { element, .. }) => std::slice::from_ref(element),
            Some(Type::Struct { members }) => members,
            _ => &[],
        }
    }

    /// Whether a cycle is reachable from `ty` through [`Module::sized_parts`]: an iterative
    /// depth-first search, linear in the types reached.
    fn has_cycle_from(&self, ty: u32) -> bool {
        // false: on the current path; true: finished.
        let mut state: HashMap<u32, bool> = HashMap::from([(ty, false)]);
        let mut stack: Vec<(u32, usize)> = vec![(ty, 0)];
        while let Some((t, next)) = stack.last_mut() {
            let Some(&part) = self.sized_parts(*t).get(*next) else {
                state.insert(*t, true);
                stack.pop();
                continue;
            };
            *next += 1;
            match state.get(&part) {
                Some(false) => return true,
                Some(true) => {}
                None => {
                    state.insert(part, false);
                    stack.push((part, 0));
                }
            }
        }
        false
    }

    /// Bytes a value of type `ty` occupies in an explicitly laid-out block: for a struct the
    /// largest `Offset` + member size, for an array `ArrayStride` × length, for a matrix
    /// `MatrixStride` × columns (× rows if `RowMajor`). `matrix` carries the `MatrixStride` /
    /// `RowMajor` decorations of the struct member being sized, down through arrays.
    fn size_of(
        &self,
        ty: u32,
        matrix: Option<(u32, bool)>,
        depth: u32,
        memo: &mut HashMap<u32, u64>,
    ) -> Result<u64> {
        if depth >= MAX_TYPE_DEPTH {
            // The only UnsupportedKernel this returns; `push_constant_size` tells a cycle
            // (invalid) from a valid chain this deep.
            return Err(Error::UnsupportedKernel(format!(
                "type %{ty} nests deeper than {MAX_TYPE_DEPTH} levels"
            )));
        }
        let overflow = || invalid(format!("the size of type %{ty} overflows"));
        let Some(t) = self.types.get(&ty) else {
            return Err(invalid(format!("%{ty} is not a type")));
        };
        match t {
            Type::Int { width } | Type::Float { width } => {
                if *width == 0 || width % 8 != 0 {
                    return Err(invalid(format!("type %{ty} has a width of {width} bits")));
                }
                Ok(u64::from(width / 8))
            }
            Type::Vector { component, count } => self
                .size_of(*component, None, depth + 1, memo)?
                .checked_mul(u64::from(*count))
                .ok_or_else(overflow),
            Type::Matrix { column, columns } => {
                let Some((stride, row_major)) = matrix else {
                    return Err(invalid(format!(
                        "matrix type %{ty} is used in a block without a MatrixStride decoration"
                    )));
                };
                let count = if row_major {
                    match self.types.get(column) {
                        Some(Type::Vector { count, .. }) => *count,
                        _ => return Err(invalid(format!("matrix %{ty}'s column is not a vector"))),
                    }
                } else {
                    *columns
                };
                u64::from(stride)
                    .checked_mul(u64::from(count))
                    .ok_or_else(overflow)
            }
            Type::Array { element, length } => {
                let Some(stride) = self.decorations.id_value(ty, Decoration::ArrayStride) else {
                    return Err(invalid(format!(
                        "array type %{ty} is used in a block without an ArrayStride decoration"
                    )));
                };
                let length = self.scalar(*length, "array length")?;
                // The element must be well formed even though the stride decides the size.
                self.size_of(*element, matrix, depth + 1, memo)?;
                u64::from(stride)
                    .checked_mul(u64::from(length))
                    .ok_or_else(overflow)
            }
            Type::Struct { members } => {
                if let Some(size) = memo.get(&ty) {
                    return Ok(*size);
                }
                let mut size = 0u64;
                for (index, member_ty) in members.iter().enumerate() {
                    let index = u32::try_from(index).map_err(|_| overflow())?;
                    let decorations = &self.decorations;
                    let Some(offset) = decorations.member_value(ty, index, Decoration::Offset)
                    else {
                        return Err(invalid(format!(
                            "member {index} of struct %{ty} has no Offset decoration"
                        )));
                    };
                    let layout = decorations
                        .member_value(ty, index, Decoration::MatrixStride)
                        .map(|stride| {
                            (
                                stride,
                                decorations.member_has(ty, index, Decoration::RowMajor),
                            )
                        });
                    let member = self.size_of(*member_ty, layout, depth + 1, memo)?;
                    let end = u64::from(offset).checked_add(member).ok_or_else(overflow)?;
                    size = size.max(end);
                }
                memo.insert(ty, size);
                Ok(size)
            }
            Type::Pointer {
                class: Some(StorageClass::PhysicalStorageBuffer),
                ..
            } => Ok(8),
            Type::RuntimeArray { .. } => Err(invalid(format!(
                "runtime-sized array %{ty} cannot be in a push-constant block"
            ))),
            Type::Bool | Type::Pointer { .. } | Type::Opaque(_) => Err(invalid(format!(
                "type %{ty} has no defined size in a push-constant block"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use spirv::{Decoration, Op};

    use super::super::asm::{first_word, glslc_module, invalid_message};
    use super::super::reflect;
    use super::Module;
    use crate::shader::compile_wgsl;
    use crate::Error;

    #[test]
    fn self_referencing_push_constant_type_is_rejected() {
        // struct %16 { uint, %16 } — invalid, must not recurse forever.
        let mut words = glslc_module((1, 0));
        let target = [first_word(Op::TypeStruct, 4), 16, 6, 8];
        let at = words.windows(4).position(|w| w == target).unwrap();
        words[at + 3] = 16;
        assert!(invalid_message(reflect(&words, "main")).contains("nests deeper"));
    }

    #[test]
    fn deep_but_valid_push_constant_type_is_unsupported_not_invalid() {
        // 70 nested structs: valid WGSL and valid SPIR-V, past MAX_TYPE_DEPTH. The `wgsl`
        // fuzz harness's check (naga's output must not be InvalidShader) caught this.
        let n = 70;
        let mut source: String = (1..=n)
            .map(|i| format!("struct S{i} {{ a: S{} }}\n", i - 1))
            .collect::<String>()
            .replacen("a: S0", "a: u32", 1);
        source += &format!(
            "var<immediate> p: S{n};
             @group(0) @binding(0) var<storage, read_write> out: array<u32>;
             @compute @workgroup_size(1) fn main() {{ out[0] = p{}; }}",
            ".a".repeat(n)
        );
        match reflect(&compile_wgsl(&source).unwrap(), "main") {
            Err(Error::UnsupportedKernel(message)) => {
                assert!(message.contains("nests deeper than 64"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn push_constant_size_follows_naga_offsets() {
        let words = compile_wgsl(
            "struct P { a: f32, b: vec3<f32>, c: u32 }
             var<immediate> p: P;
             @group(0) @binding(0) var<storage, read_write> out: array<f32>;
             @compute @workgroup_size(1) fn main() { out[0] = p.a + p.b.x + f32(p.c); }",
        )
        .unwrap();
        let module = Module::parse(&words).unwrap();
        let p = *module.names.iter().find(|(_, n)| *n == "P").unwrap().0;
        let offsets: Vec<_> = (0..3)
            .map(|m| {
                module
                    .decorations
                    .member_value(p, m, Decoration::Offset)
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, [0, 16, 28]);
        assert_eq!(reflect(&words, "main").unwrap().push_constant_size, 28 + 4);
    }

    #[test]
    fn push_constant_matrices_and_arrays() {
        let words = compile_wgsl(
            "struct P { m: mat3x3<f32>, v: array<vec2<f32>, 3>, s: u32 }
             var<immediate> p: P;
             @group(0) @binding(0) var<storage, read_write> out: array<f32>;
             @compute @workgroup_size(1) fn main() { out[0] = p.m[0].x + p.v[2].y + f32(p.s); }",
        )
        .unwrap();
        // mat3x3<f32>: 3 columns × stride 16 = 48; array<vec2<f32>, 3> at 48: stride 8 × 3 = 24;
        // s at 72.
        assert_eq!(reflect(&words, "main").unwrap().push_constant_size, 76);
    }
}
