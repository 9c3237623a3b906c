//! The use analysis: which resources an entry point uses, and how.
//!
//! - [`pointer_operands`] says which operands of an instruction inside a function body are
//!   pointers. It is called once per such instruction while the module is parsed, and
//!   knows, for each opcode that can take a pointer, exactly which operand positions hold
//!   one; literals (memory-access alignments, `OpArrayLength`'s member index) are never
//!   taken for ids.
//! - [`Module::used_globals`] walks the call graph from the entry function, each function
//!   once (recursion and call cycles end), and keeps the pointer operands that are
//!   module-scope variables; from SPIR-V 1.4 it adds the entry point's interface list.
//! - [`Module::buffer_binding`] turns a used storage or uniform buffer variable into a
//!   [`BindingInfo`]: read-only when the variable is `NonWritable`, when every member of its
//!   block is (memoised per block type, which many variables may share), or when it is a
//!   uniform buffer. [`merge_binding`] folds variables that alias one (set, binding).
//! - [`Module::unsupported_resource`] names a used resource vkhmm cannot bind.
//!
//! Nothing here reads types deeper than [`MAX_TYPE_DEPTH`] levels, and every id it follows
//! is looked up, never assumed to exist.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use spirv::{Decoration, Op, StorageClass};

use super::module::{EntryPoint, Module, Type};
use super::{invalid, MAX_TYPE_DEPTH};
use crate::shader::{Access, BindingInfo, BindingKind};
use crate::{Error, Result};

/// Pushes the ids that `op` takes in pointer-operand positions (`operands` excludes the
/// opcode word). Only instructions inside function bodies are passed here.
pub(super) fn pointer_operands(
    op: Op,
    operands: &[u32],
    non_semantic: &HashSet<u32>,
    out: &mut Vec<u32>,
) {
    let at = |i: usize| operands.get(i).copied();
    match op {
        // <result type> <result> <pointer> …
        Op::Load
        | Op::AccessChain
        | Op::InBoundsAccessChain
        | Op::PtrAccessChain
        | Op::InBoundsPtrAccessChain
        | Op::ArrayLength
        | Op::GenericPtrMemSemantics
        | Op::ImageTexelPointer
        | Op::CopyObject
        | Op::ConvertPtrToU
        | Op::PtrCastToGeneric
        | Op::GenericCastToPtr
        | Op::GenericCastToPtrExplicit
        | Op::Bitcast
        | Op::AtomicLoad
        | Op::AtomicExchange
        | Op::AtomicCompareExchange
        | Op::AtomicCompareExchangeWeak
        | Op::AtomicIIncrement
        | Op::AtomicIDecrement
        | Op::AtomicIAdd
        | Op::AtomicISub
        | Op::AtomicSMin
        | Op::AtomicUMin
        | Op::AtomicSMax
        | Op::AtomicUMax
        | Op::AtomicAnd
        | Op::AtomicOr
        | Op::AtomicXor
        | Op::AtomicFlagTestAndSet
        | Op::AtomicFMinEXT
        | Op::AtomicFMaxEXT
        | Op::AtomicFAddEXT
        | Op::CooperativeMatrixLoadKHR
        | Op::RawAccessChainNV => out.extend(at(2)),
        // <pointer> <object or pointer> …
        Op::Store | Op::CopyMemory | Op::CopyMemorySized => {
            out.extend(at(0));
            out.extend(at(1));
        }
        // <pointer> …
        Op::AtomicStore
        | Op::AtomicFlagClear
        | Op::CooperativeMatrixStoreKHR
        | Op::LifetimeStart
        | Op::LifetimeStop
        | Op::ReturnValue => out.extend(at(0)),
        // <result type> <result> <pointer> <pointer>
        Op::PtrEqual | Op::PtrNotEqual | Op::PtrDiff => {
            out.extend(at(2));
            out.extend(at(3));
        }
        // <result type> <result> <condition> <object 1> <object 2>
        Op::Select => {
            out.extend(at(3));
            out.extend(at(4));
        }
        // <result type> <result> (<value> <parent block>)*
        Op::Phi => out.extend(operands.iter().skip(2).step_by(2)),
        // <result type> <result> <function> <argument>*
        Op::FunctionCall => out.extend(operands.iter().skip(3)),
        // <result type> <result> <storage class> [<initializer>]
        Op::Variable => out.extend(at(3)),
        // <result type> <result> <set> <instruction> <operand>*: GLSL.std.450's Modf, Frexp
        // and Interpolate* take pointers; every operand of these sets is an id.
        Op::ExtInst if at(2).is_some_and(|set| !non_semantic.contains(&set)) => {
            out.extend(operands.iter().skip(4));
        }
        _ => {}
    }
}

impl Module {
    /// The global variables the entry point statically uses, sorted by id (see "What counts
    /// as used" in the reflector's docs, `reflect/mod.rs`).
    pub(super) fn used_globals(&self, ep: &EntryPoint) -> Vec<u32> {
        let mut used: HashSet<u32> = HashSet::new();
        if self.version >= (1, 4) {
            used.extend(
                ep.interface
                    .iter()
                    .filter(|id| self.globals.contains_key(id)),
            );
        }
        let mut seen: HashSet<u32> = HashSet::from([ep.function]);
        let mut queue = VecDeque::from([ep.function]);
        while let Some(function) = queue.pop_front() {
            let Some(refs) = self.functions.get(&function) else {
                continue;
            };
            used.extend(
                refs.pointers
                    .iter()
                    .filter(|id| self.globals.contains_key(id)),
            );
            for &callee in &refs.calls {
                if seen.insert(callee) {
                    queue.push_back(callee);
                }
            }
        }
        let mut used: Vec<u32> = used.into_iter().collect();
        used.sort_unstable();
        used
    }

    /// The display name of a resource variable: its `OpName`, else its block type's.
    fn resource_name(&self, var: u32, block: Option<u32>) -> Option<String> {
        self.name(var)
            .or_else(|| block.and_then(|b| self.name(b)))
            .map(str::to_owned)
    }

    /// "binding `name` (set 0, binding 2)" for messages.
    fn describe(&self, var: u32, block: Option<u32>) -> String {
        let set = self.decorations.id_value(var, Decoration::DescriptorSet);
        let binding = self.decorations.id_value(var, Decoration::Binding);
        let name = self
            .resource_name(var, block)
            .unwrap_or_else(|| format!("%{var}"));
        match (set, binding) {
            (Some(s), Some(b)) => format!("binding `{name}` (set {s}, binding {b})"),
            _ => format!("variable `{name}`"),
        }
    }

    /// The error for a used variable vkhmm cannot bind (an image, a sampler, an array of
    /// either, …), naming the variable and what it is.
    pub(super) fn unsupported_resource(&self, var: u32, pointer_type: u32) -> Error {
        let mut ty = self.pointee(var, pointer_type).ok();
        let mut arrayed = false;
        for _ in 0..MAX_TYPE_DEPTH {
            match ty.and_then(|t| self.types.get(&t)) {
                Some(Type::Array { element, .. } | Type::RuntimeArray { element }) => {
                    arrayed = true;
                    ty = Some(*element);
                }
                _ => break,
            }
        }
        let what = match ty.and_then(|t| self.types.get(&t)) {
            Some(Type::Opaque(what)) => *what,
            _ => "resource",
        };
        let array = if arrayed { "an array of " } else { "" };
        Error::UnsupportedKernel(format!(
            "{} is {array}{what}{}; vkhmm binds storage and uniform buffers only",
            self.describe(var, None),
            if arrayed { "s" } else { "" },
        ))
    }

    /// The binding of a `StorageBuffer` or `Uniform` variable. `read_only_blocks` memoises
    /// "every member is `NonWritable`" per block type, which many variables may share.
    pub(super) fn buffer_binding(
        &self,
        var: u32,
        pointer_type: u32,
        storage: StorageClass,
        read_only_blocks: &mut HashMap<u32, bool>,
    ) -> Result<BindingInfo> {
        let block = self.pointee(var, pointer_type)?;
        let members = match self.types.get(&block) {
            Some(Type::Struct { members }) => members,
            Some(Type::Array { .. } | Type::RuntimeArray { .. }) => {
                return Err(Error::UnsupportedKernel(format!(
                    "{} is an array of buffers (a descriptor array); vkhmm binds one buffer per \
                     binding",
                    self.describe(var, None)
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "{} does not point to a struct (a Block)",
                    self.describe(var, None)
                )))
            }
        };
        let decorations = &self.decorations;
        let kind = if storage == StorageClass::StorageBuffer
            || decorations.id_has(block, Decoration::BufferBlock)
        {
            BindingKind::Storage
        } else if decorations.id_has(block, Decoration::Block) {
            BindingKind::Uniform
        } else {
            return Err(invalid(format!(
                "{} is in the Uniform storage class but its struct is decorated neither Block nor \
                 BufferBlock",
                self.describe(var, Some(block))
            )));
        };
        let (Some(set), Some(binding)) = (
            decorations.id_value(var, Decoration::DescriptorSet),
            decorations.id_value(var, Decoration::Binding),
        ) else {
            return Err(invalid(format!(
                "{} has no DescriptorSet and Binding decorations",
                self.describe(var, Some(block))
            )));
        };
        let mut all_members_read_only = || {
            *read_only_blocks.entry(block).or_insert_with(|| {
                !members.is_empty()
                    && (0..members.len()).all(|m| {
                        u32::try_from(m).is_ok_and(|m| {
                            decorations.member_has(block, m, Decoration::NonWritable)
                        })
                    })
            })
        };
        let read_only = kind == BindingKind::Uniform
            || decorations.id_has(var, Decoration::NonWritable)
            || all_members_read_only();
        Ok(BindingInfo {
            set,
            binding,
            kind,
            access: if read_only {
                Access::Read
            } else {
                Access::ReadWrite
            },
            name: self.resource_name(var, Some(block)),
        })
    }
}

/// Adds `binding`, merging it with a variable that aliases the same (set, binding).
pub(super) fn merge_binding(
    bindings: &mut BTreeMap<(u32, u32), BindingInfo>,
    binding: BindingInfo,
) -> Result<()> {
    let existing = match bindings.entry((binding.set, binding.binding)) {
        Entry::Vacant(slot) => {
            slot.insert(binding);
            return Ok(());
        }
        Entry::Occupied(slot) => slot.into_mut(),
    };
    if existing.kind != binding.kind {
        return Err(Error::UnsupportedKernel(format!(
            "set {} binding {} is declared both as a storage and as a uniform buffer",
            binding.set, binding.binding
        )));
    }
    if binding.access == Access::ReadWrite {
        existing.access = Access::ReadWrite;
    }
    if existing.name.is_none() {
        existing.name = binding.name;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use spirv::{Decoration, Op};

    use super::super::asm::{first_word, glslc_module, naga_spirv_1_4, Asm};
    use super::super::asm::{GL_COMPUTE, LOCAL_SIZE, STORAGE_BUFFER};
    use super::super::reflect;
    use super::pointer_operands;
    use crate::shader::Access;

    #[test]
    fn version_1_4_uses_the_interface_list() {
        // Same module, but 1.4 with the unused buffer listed in the interface: a 1.4 producer
        // says it is used, so it is reported. Under 1.0 the same list means nothing.
        let mut words = glslc_module((1, 0));
        let entry = words
            .iter()
            .position(|w| *w == first_word(Op::EntryPoint, 6))
            .unwrap();
        words[entry] = first_word(Op::EntryPoint, 7);
        words.insert(entry + 6, 32);
        let info = reflect(&words, "main").unwrap();
        assert_eq!(info.bindings.len(), 2, "1.0 ignores non-I/O interface ids");
        words[1] = 0x0001_0400;
        let info = reflect(&words, "main").unwrap();
        let bound: Vec<u32> = info.bindings.iter().map(|b| b.binding).collect();
        assert_eq!(bound, [0, 1, 2]);
        assert_eq!(info.bindings[2].name.as_deref(), Some("unused"));
    }

    #[test]
    fn naga_spirv_1_4_reflects_from_the_interface() {
        let source = "
            @group(0) @binding(0) var<storage, read> a: array<u32>;
            @group(0) @binding(1) var<storage, read_write> b: array<u32>;
            @group(0) @binding(2) var<storage, read_write> c: array<u32>;
            @compute @workgroup_size(16) fn one() { b[0] = a[0]; }
            @compute @workgroup_size(16) fn two() { c[0] = 1u; }
        ";
        let words = naga_spirv_1_4(source);
        assert_eq!(words[1], 0x0001_0400);
        let one = reflect(&words, "one").unwrap();
        let names: Vec<_> = one
            .bindings
            .iter()
            .map(|b| b.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let two = reflect(&words, "two").unwrap();
        let names: Vec<_> = two
            .bindings
            .iter()
            .map(|b| b.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["c"]);
    }

    #[test]
    fn shared_block_types_cost_linear_time() {
        // 20 000 used variables share one block of 50 000 NonWritable members, and one array
        // type carries 50 000 decoration groups: quadratic bookkeeping would take minutes.
        const MEMBERS: u32 = 50_000;
        const VARS: u32 = 20_000;
        let (float, array, block, pointer, first_var) = (3, 4, 5, 6, 100);
        let first_group = first_var + VARS;
        let bound = first_group + MEMBERS;
        let mut a = Asm::new((1, 4), bound);
        let interface: Vec<u32> = (first_var..first_var + VARS).collect();
        a.op(Op::Capability, &[1])
            .op(Op::MemoryModel, &[0, 1])
            .op_str(Op::EntryPoint, &[GL_COMPUTE, 2], "main", &interface)
            .op(Op::ExecutionMode, &[2, LOCAL_SIZE, 1, 1, 1])
            .decorate(block, Decoration::Block, &[]);
        for m in 0..MEMBERS {
            a.member_decorate(block, m, Decoration::Offset, &[4 * m]);
            a.member_decorate(block, m, Decoration::NonWritable, &[]);
        }
        for v in 0..VARS {
            a.decorate(first_var + v, Decoration::DescriptorSet, &[0]);
            a.decorate(first_var + v, Decoration::Binding, &[v]);
        }
        let groups: Vec<u32> = (first_group..bound).collect();
        for &g in &groups {
            a.decorate(g, Decoration::ArrayStride, &[4]);
            a.op(Op::DecorationGroup, &[g]);
        }
        for &g in &groups {
            a.op(Op::GroupDecorate, &[g, array]);
        }
        let members = vec![array; MEMBERS as usize];
        a.op(Op::TypeFloat, &[float, 32])
            .op(Op::TypeRuntimeArray, &[array, float])
            .op(Op::TypeStruct, &[&[block][..], &members[..]].concat())
            .op(Op::TypePointer, &[pointer, STORAGE_BUFFER, block]);
        for v in 0..VARS {
            a.op(Op::Variable, &[pointer, first_var + v, STORAGE_BUFFER]);
        }
        a.op(Op::TypeVoid, &[7])
            .op(Op::TypeFunction, &[8, 7])
            .op(Op::Function, &[7, 2, 0, 8])
            .op(Op::Label, &[9])
            .op(Op::Return, &[])
            .op(Op::FunctionEnd, &[]);
        let start = std::time::Instant::now();
        let info = reflect(&a.done(), "main").unwrap();
        assert_eq!(info.bindings.len(), VARS as usize);
        assert!(info.bindings.iter().all(|b| b.access == Access::Read));
        let elapsed = start.elapsed();
        assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
    }

    #[test]
    fn every_atomic_from_exchange_to_xor_takes_the_pointer_third() {
        for opcode in Op::AtomicExchange as u32..=Op::AtomicXor as u32 {
            let op = Op::from_u32(opcode).unwrap();
            let mut pointers = Vec::new();
            pointer_operands(op, &[1, 2, 3, 4, 5], &HashSet::new(), &mut pointers);
            assert_eq!(pointers, [3], "{op:?}");
        }
    }
}
