//! The module as one pass over its instructions records it.
//!
//! [`Module::parse`] checks the header, then reads each [`Instruction`] once, in order, and
//! keeps only what reflection reads: debug names, `GLCompute` entry points and their
//! workgroup-size execution modes, [`Decorations`], types, constants, module-scope variables,
//! and for every function the functions it calls and the ids it uses as pointers
//! ([`FunctionRefs`], filled by [`uses::pointer_operands`] as the body goes by). Everything is
//! keyed by result id, so a lookup is O(1) and nothing grows faster than the input.
//!
//! The pass checks an instruction's operands only as far as it reads them (too few is
//! [`Error::InvalidShader`](crate::Error::InvalidShader)); it neither resolves forward
//! references nor checks that an id exists. The analyses reading a [`Module`] do that when
//! they follow an id, and treat a missing one as malformed input.

use std::collections::{HashMap, HashSet};

use spirv::{Decoration, Dim, ExecutionMode, ExecutionModel, Op, StorageClass};

use super::decorations::Decorations;
use super::reader::{self, Instruction, Instructions};
use super::{invalid, uses};
use crate::Result;

/// A type declaration, as far as reflection cares.
#[derive(Debug, Clone)]
pub(super) enum Type {
    Bool,
    Int {
        width: u32,
    },
    Float {
        width: u32,
    },
    Vector {
        component: u32,
        count: u32,
    },
    Matrix {
        column: u32,
        columns: u32,
    },
    Array {
        element: u32,
        length: u32,
    },
    RuntimeArray {
        element: u32,
    },
    Struct {
        members: Vec<u32>,
    },
    Pointer {
        /// `None` for a storage class the `spirv` crate does not know.
        class: Option<StorageClass>,
        pointee: u32,
    },
    /// Images, samplers, acceleration structures: never bindable by vkhmm.
    Opaque(&'static str),
}

/// A constant, as far as reflection cares: the low word of a scalar, or the constituents.
#[derive(Debug, Clone)]
pub(super) enum Constant {
    Scalar(u32),
    Composite(Vec<u32>),
}

/// An `OpEntryPoint` of the `GLCompute` execution model.
#[derive(Debug)]
pub(super) struct EntryPoint {
    /// The entry function's id.
    pub(super) function: u32,
    pub(super) name: String,
    /// The interface ids after the name (every global the entry uses, from SPIR-V 1.4).
    pub(super) interface: Vec<u32>,
}

/// The workgroup size as declared by an execution mode.
#[derive(Debug, Clone, Copy)]
pub(super) enum LocalSize {
    Literal([u32; 3]),
    Ids([u32; 3]),
}

/// What one function body references.
#[derive(Debug, Default)]
pub(super) struct FunctionRefs {
    /// Functions it calls.
    pub(super) calls: Vec<u32>,
    /// Ids found in pointer-operand positions (filtered to global variables later).
    pub(super) pointers: Vec<u32>,
}

/// The parts of a module that reflection reads.
#[derive(Debug, Default)]
pub(super) struct Module {
    pub(super) version: (u32, u32),
    pub(super) names: HashMap<u32, String>,
    pub(super) compute_entries: Vec<EntryPoint>,
    /// `LocalSize`/`LocalSizeId` by entry function; `LocalSizeId` wins over `LocalSize`.
    pub(super) local_sizes: HashMap<u32, LocalSize>,
    pub(super) decorations: Decorations,
    pub(super) types: HashMap<u32, Type>,
    pub(super) constants: HashMap<u32, Constant>,
    /// Module-scope `OpVariable`s: id → (pointer type, storage class), the class `None` when
    /// the `spirv` crate does not know it.
    pub(super) globals: HashMap<u32, (u32, Option<StorageClass>)>,
    pub(super) functions: HashMap<u32, FunctionRefs>,
    /// `OpExtInstImport`s of non-semantic instruction sets (debug info, printf): their
    /// operands are ignored when looking for used variables.
    pub(super) non_semantic_sets: HashSet<u32>,
    /// Word offset of the first module-scope untyped variable, if any.
    pub(super) untyped_variable: Option<usize>,
}

impl Module {
    /// Reads the module: header checks, then one pass over the instructions.
    pub(super) fn parse(words: &[u32]) -> Result<Module> {
        let mut module = Module {
            version: reader::version(words)?,
            ..Module::default()
        };
        let mut current_function: Option<u32> = None;
        for inst in Instructions::new(words) {
            module.instruction(inst?, &mut current_function)?;
        }
        if let Some(function) = current_function {
            return Err(invalid(format!(
                "function %{function} has no OpFunctionEnd (is the module truncated?)"
            )));
        }
        module.decorations.apply_groups();
        Ok(module)
    }

    /// Records one instruction. `current_function` is the function whose body the pass is
    /// in, if any: there only calls and pointer operands are kept. An opcode the `spirv`
    /// crate does not know is ignored, like every instruction reflection does not read.
    fn instruction(
        &mut self,
        inst: Instruction<'_>,
        current_function: &mut Option<u32>,
    ) -> Result<()> {
        let Instruction { op, operands, .. } = inst;
        if let Some(function) = *current_function {
            match (op, operands) {
                (Some(Op::FunctionEnd), _) => *current_function = None,
                // A missing OpFunctionEnd (invalid): start the next function anyway.
                (Some(Op::Function), [_, result, ..]) => {
                    *current_function = Some(*result);
                    self.functions.entry(*result).or_default();
                }
                _ => {
                    let refs = self.functions.entry(function).or_default();
                    if let (Some(Op::FunctionCall), [_, _, callee, ..]) = (op, operands) {
                        refs.calls.push(*callee);
                    }
                    if let Some(op) = op {
                        uses::pointer_operands(
                            op,
                            operands,
                            &self.non_semantic_sets,
                            &mut refs.pointers,
                        );
                    }
                }
            }
            return Ok(());
        }

        let Some(op) = op else {
            return Ok(());
        };
        match op {
            Op::Name => {
                let [target, string @ ..] = operands else {
                    return Err(inst.too_short());
                };
                let (name, _) = inst.literal_string(string)?;
                self.names.insert(*target, name);
            }
            Op::ExtInstImport => {
                let [result, string @ ..] = operands else {
                    return Err(inst.too_short());
                };
                let (name, _) = inst.literal_string(string)?;
                if name.starts_with("NonSemantic.") {
                    self.non_semantic_sets.insert(*result);
                }
            }
            Op::EntryPoint => {
                let [model, function, rest @ ..] = operands else {
                    return Err(inst.too_short());
                };
                let (name, used) = inst.literal_string(rest)?;
                if ExecutionModel::from_u32(*model) == Some(ExecutionModel::GLCompute) {
                    let interface = rest.get(used..).unwrap_or_default().to_vec();
                    self.compute_entries.push(EntryPoint {
                        function: *function,
                        name,
                        interface,
                    });
                }
            }
            Op::ExecutionMode | Op::ExecutionModeId => {
                let [entry, mode, args @ ..] = operands else {
                    return Err(inst.too_short());
                };
                let size = match (op, ExecutionMode::from_u32(*mode), args) {
                    (Op::ExecutionMode, Some(ExecutionMode::LocalSize), [x, y, z, ..]) => {
                        LocalSize::Literal([*x, *y, *z])
                    }
                    (Op::ExecutionModeId, Some(ExecutionMode::LocalSizeId), [x, y, z, ..]) => {
                        LocalSize::Ids([*x, *y, *z])
                    }
                    (_, Some(ExecutionMode::LocalSize | ExecutionMode::LocalSizeId), _) => {
                        return Err(inst.too_short())
                    }
                    _ => return Ok(()),
                };
                let slot = self.local_sizes.entry(*entry).or_insert(size);
                if let LocalSize::Ids(_) = size {
                    *slot = size;
                }
            }
            Op::Decorate => {
                let [target, decoration, args @ ..] = operands else {
                    return Err(inst.too_short());
                };
                if let Some(decoration) = Decoration::from_u32(*decoration) {
                    self.decorations
                        .add(*target, decoration, args.first().copied());
                }
            }
            Op::MemberDecorate => {
                let [target, member, decoration, args @ ..] = operands else {
                    return Err(inst.too_short());
                };
                if let Some(decoration) = Decoration::from_u32(*decoration) {
                    let value = args.first().copied();
                    self.decorations
                        .add_member(*target, *member, decoration, value);
                }
            }
            Op::GroupDecorate => {
                let [group, targets @ ..] = operands else {
                    return Err(inst.too_short());
                };
                for &target in targets {
                    self.decorations.add_group_use(*group, target, None);
                }
            }
            Op::GroupMemberDecorate => {
                let [group, pairs @ ..] = operands else {
                    return Err(inst.too_short());
                };
                for pair in pairs.chunks_exact(2) {
                    if let [target, member] = *pair {
                        self.decorations.add_group_use(*group, target, Some(member));
                    }
                }
            }
            Op::TypeBool
            | Op::TypeInt
            | Op::TypeFloat
            | Op::TypeVector
            | Op::TypeMatrix
            | Op::TypeImage
            | Op::TypeSampler
            | Op::TypeSampledImage
            | Op::TypeArray
            | Op::TypeRuntimeArray
            | Op::TypeStruct
            | Op::TypePointer
            | Op::TypeAccelerationStructureKHR => {
                let [result, args @ ..] = operands else {
                    return Err(inst.too_short());
                };
                let ty = match (op, args) {
                    (Op::TypeBool, _) => Type::Bool,
                    (Op::TypeInt, [width, ..]) => Type::Int { width: *width },
                    (Op::TypeFloat, [width, ..]) => Type::Float { width: *width },
                    (Op::TypeVector, [component, count, ..]) => Type::Vector {
                        component: *component,
                        count: *count,
                    },
                    (Op::TypeMatrix, [column, columns, ..]) => Type::Matrix {
                        column: *column,
                        columns: *columns,
                    },
                    (Op::TypeImage, [_, dim, ..]) if *dim == Dim::DimBuffer as u32 => {
                        Type::Opaque("texel buffer")
                    }
                    (Op::TypeImage, _) => Type::Opaque("image"),
                    (Op::TypeSampler, _) => Type::Opaque("sampler"),
                    (Op::TypeSampledImage, _) => Type::Opaque("sampled image"),
                    (Op::TypeAccelerationStructureKHR, _) => Type::Opaque("acceleration structure"),
                    (Op::TypeArray, [element, length, ..]) => Type::Array {
                        element: *element,
                        length: *length,
                    },
                    (Op::TypeRuntimeArray, [element, ..]) => {
                        Type::RuntimeArray { element: *element }
                    }
                    (Op::TypeStruct, members) => Type::Struct {
                        members: members.to_vec(),
                    },
                    (Op::TypePointer, [class, pointee, ..]) => Type::Pointer {
                        class: StorageClass::from_u32(*class),
                        pointee: *pointee,
                    },
                    _ => return Err(inst.too_short()),
                };
                self.types.insert(*result, ty);
            }
            Op::Constant | Op::SpecConstant => {
                let [_, result, value, ..] = operands else {
                    return Err(inst.too_short());
                };
                self.constants.insert(*result, Constant::Scalar(*value));
            }
            Op::ConstantTrue | Op::SpecConstantTrue => {
                let [_, result, ..] = operands else {
                    return Err(inst.too_short());
                };
                self.constants.insert(*result, Constant::Scalar(1));
            }
            Op::ConstantFalse | Op::SpecConstantFalse | Op::ConstantNull => {
                let [_, result, ..] = operands else {
                    return Err(inst.too_short());
                };
                self.constants.insert(*result, Constant::Scalar(0));
            }
            Op::ConstantComposite | Op::SpecConstantComposite => {
                let [_, result, parts @ ..] = operands else {
                    return Err(inst.too_short());
                };
                self.constants
                    .insert(*result, Constant::Composite(parts.to_vec()));
            }
            Op::Variable => {
                let [pointer_type, result, class, ..] = operands else {
                    return Err(inst.too_short());
                };
                let class = StorageClass::from_u32(*class);
                self.globals.insert(*result, (*pointer_type, class));
            }
            Op::UntypedVariableKHR => {
                self.untyped_variable.get_or_insert(inst.offset);
            }
            Op::Function => {
                let [_, result, ..] = operands else {
                    return Err(inst.too_short());
                };
                *current_function = Some(*result);
                self.functions.entry(*result).or_default();
            }
            _ => {}
        }
        Ok(())
    }

    /// The `OpName` of `id`, unless it has none or an empty one.
    pub(super) fn name(&self, id: u32) -> Option<&str> {
        self.names
            .get(&id)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

    /// The value of a scalar integer constant.
    pub(super) fn scalar(&self, id: u32, what: &str) -> Result<u32> {
        match self.constants.get(&id) {
            Some(Constant::Scalar(value)) => Ok(*value),
            _ => Err(invalid(format!("{what}: %{id} is not a scalar constant"))),
        }
    }

    /// The type variable `var` points to, given its pointer type.
    pub(super) fn pointee(&self, var: u32, pointer_type: u32) -> Result<u32> {
        match self.types.get(&pointer_type) {
            Some(Type::Pointer { pointee, .. }) => Ok(*pointee),
            _ => Err(invalid(format!(
                "variable %{var} has type %{pointer_type}, which is not a pointer type"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use spirv::{Decoration, StorageClass};

    use super::Module;
    use crate::shader::compile_wgsl;

    #[test]
    fn naga_marks_read_only_storage_on_the_variable() {
        let words = compile_wgsl(
            "@group(0) @binding(0) var<storage, read> src: array<u32>;
             @group(0) @binding(1) var<storage, read_write> dst: array<u32>;
             @compute @workgroup_size(1) fn main() { dst[0] = src[0]; }",
        )
        .unwrap();
        let module = Module::parse(&words).unwrap();
        let var = |name: &str| *module.names.iter().find(|(_, n)| *n == name).unwrap().0;
        let (src, dst) = (var("src"), var("dst"));
        assert!(module.decorations.id_has(src, Decoration::NonWritable));
        assert!(!module.decorations.id_has(dst, Decoration::NonWritable));
        assert_eq!(
            module.globals[&src].1,
            Some(StorageClass::StorageBuffer),
            "1.3 uses StorageBuffer"
        );
    }
}
