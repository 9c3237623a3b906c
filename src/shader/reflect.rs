//! A SPIR-V reflector written from the SPIR-V specification.
//!
//! It reads only what vkhmm needs — compute entry points, workgroup size, buffer bindings with
//! their access, the push-constant block size — and accepts any producer (naga, glslang/glslc,
//! DXC, Slang). naga's own SPIR-V frontend is not used: it lowers the module to naga IR and
//! rejects valid modules it cannot express.
//!
//! # Robustness
//!
//! The input is untrusted. The reader never indexes out of bounds and never panics: every
//! instruction's word count is checked (at least 1, within the module) before its operands are
//! looked at, operands are taken by slice patterns, type sizes use checked arithmetic, nested
//! types are followed at most [`MAX_TYPE_DEPTH`] levels deep (a self-referencing type is an
//! error, not a stack overflow; a valid chain deeper than that is an unsupported kernel). Nothing is quadratic in the input: decorations are kept per
//! (target, kind) — the first of a kind wins — and decoration groups are copied onto their
//! targets once, after the pass; struct sizes and "all members `NonWritable`" are memoised per
//! type, so thousands of variables sharing one huge block cost linear time. Malformed input
//! gives [`Error::InvalidShader`] with the word offset where there is one.
//!
//! Checks stop at what reflection needs: this is not `spirv-val`. A module that passes here
//! may still be rejected by the driver.
//!
//! Opcode and enum numbers come from the `spirv` crate (the tables naga is built on). A number
//! it does not know — an opcode, decoration, storage class or execution mode from a newer
//! specification — is ignored, as is every known one that reflection does not read.
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

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use spirv::{BuiltIn, Decoration, Dim, ExecutionMode, ExecutionModel, Op, StorageClass};

use super::{Access, BindingInfo, BindingKind, KernelInfo};
use crate::{Error, Result};

/// The SPIR-V magic number, in host order.
const MAGIC: u32 = spirv::MAGIC_NUMBER;
/// Header words: magic, version, generator, id bound, schema.
const HEADER_WORDS: usize = 5;
/// How deep types may nest (arrays of structs of arrays …) before the module is rejected.
pub const MAX_TYPE_DEPTH: u32 = 64;

/// Turns the bytes of a `.spv` file into host-order SPIR-V words.
///
/// The file's endianness is detected from the magic number, so modules written on a machine
/// of the other byte order load too. The bytes need no particular alignment (as from
/// `include_bytes!` or `std::fs::read`).
pub fn spirv_words(bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.len() % 4 != 0 {
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

fn invalid(message: String) -> Error {
    Error::InvalidShader(message)
}

/// A type declaration, as far as reflection cares.
#[derive(Debug, Clone)]
enum Type {
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
        /// `None` for a storage class this version of the `spirv` crate does not know.
        class: Option<StorageClass>,
        pointee: u32,
    },
    /// Images, samplers, acceleration structures: never bindable by vkhmm.
    Opaque(&'static str),
}

/// A constant, as far as reflection cares: the low word of a scalar, or the constituents.
#[derive(Debug, Clone)]
enum Constant {
    Scalar(u32),
    Composite(Vec<u32>),
}

/// Decorations of ids and of struct members, keyed by (target, decoration) with the first
/// literal operand as value.
///
/// Only the decorations reflection reads are kept ([`Decorations::TRACKED`]) and only the
/// first of each kind per target, so every lookup is O(1) and a decoration group (deprecated
/// but valid SPIR-V) can be copied onto its targets at a cost of at most
/// `TRACKED.len()` entries per target, whatever the input.
#[derive(Debug, Default)]
struct Decorations {
    on_id: HashMap<(u32, Decoration), Option<u32>>,
    on_member: HashMap<(u32, u32, Decoration), Option<u32>>,
    /// `OpGroupDecorate` / `OpGroupMemberDecorate` applications: (group, target, member).
    /// Applied after the pass, when the groups' own decorations are all known.
    group_uses: Vec<(u32, u32, Option<u32>)>,
}

impl Decorations {
    const TRACKED: [Decoration; 10] = [
        Decoration::Block,
        Decoration::BufferBlock,
        Decoration::RowMajor,
        Decoration::ArrayStride,
        Decoration::MatrixStride,
        Decoration::BuiltIn,
        Decoration::NonWritable,
        Decoration::Binding,
        Decoration::DescriptorSet,
        Decoration::Offset,
    ];

    fn add(&mut self, target: u32, decoration: Decoration, value: Option<u32>) {
        if Self::TRACKED.contains(&decoration) {
            self.on_id.entry((target, decoration)).or_insert(value);
        }
    }

    fn add_member(&mut self, target: u32, member: u32, decoration: Decoration, value: Option<u32>) {
        if Self::TRACKED.contains(&decoration) {
            self.on_member
                .entry((target, member, decoration))
                .or_insert(value);
        }
    }

    /// Copies each group's decorations onto its targets (own decorations take precedence).
    fn apply_groups(&mut self) {
        for (group, target, member) in std::mem::take(&mut self.group_uses) {
            for decoration in Self::TRACKED {
                let Some(&value) = self.on_id.get(&(group, decoration)) else {
                    continue;
                };
                match member {
                    None => self.add(target, decoration, value),
                    Some(member) => self.add_member(target, member, decoration, value),
                }
            }
        }
    }

    fn id_has(&self, id: u32, decoration: Decoration) -> bool {
        self.on_id.contains_key(&(id, decoration))
    }

    fn id_value(&self, id: u32, decoration: Decoration) -> Option<u32> {
        self.on_id.get(&(id, decoration)).copied().flatten()
    }

    fn member_has(&self, id: u32, member: u32, decoration: Decoration) -> bool {
        self.on_member.contains_key(&(id, member, decoration))
    }

    fn member_value(&self, id: u32, member: u32, decoration: Decoration) -> Option<u32> {
        self.on_member
            .get(&(id, member, decoration))
            .copied()
            .flatten()
    }
}

#[derive(Debug)]
struct EntryPoint {
    function: u32,
    name: String,
    interface: Vec<u32>,
}

/// The workgroup size as declared by an execution mode.
#[derive(Debug, Clone, Copy)]
enum LocalSize {
    Literal([u32; 3]),
    Ids([u32; 3]),
}

/// What one function body references.
#[derive(Debug, Default)]
struct FunctionRefs {
    /// Functions it calls.
    calls: Vec<u32>,
    /// Ids found in pointer-operand positions (filtered to global variables later).
    pointers: Vec<u32>,
}

/// The parts of a module that reflection reads.
#[derive(Debug, Default)]
struct Module {
    version: (u32, u32),
    names: HashMap<u32, String>,
    compute_entries: Vec<EntryPoint>,
    /// `LocalSize`/`LocalSizeId` by entry function; `LocalSizeId` wins over `LocalSize`.
    local_sizes: HashMap<u32, LocalSize>,
    decorations: Decorations,
    types: HashMap<u32, Type>,
    constants: HashMap<u32, Constant>,
    /// Module-scope `OpVariable`s: id → (pointer type, storage class), the class `None` when
    /// this version of the `spirv` crate does not know it.
    globals: HashMap<u32, (u32, Option<StorageClass>)>,
    functions: HashMap<u32, FunctionRefs>,
    /// `OpExtInstImport`s of non-semantic instruction sets (debug info, printf): their
    /// operands are ignored when looking for used variables.
    non_semantic_sets: HashSet<u32>,
    /// Word offset of the first module-scope untyped variable, if any.
    untyped_variable: Option<usize>,
}

/// Decodes a nul-terminated UTF-8 literal string from the start of `operands`; returns it
/// and the number of words it occupies, or `None` if it is not terminated.
fn literal_string(operands: &[u32]) -> Option<(String, usize)> {
    let mut bytes = Vec::new();
    for (i, word) in operands.iter().enumerate() {
        for byte in word.to_le_bytes() {
            if byte == 0 {
                return Some((String::from_utf8_lossy(&bytes).into_owned(), i + 1));
            }
            bytes.push(byte);
        }
    }
    None
}

/// Pushes the ids that `op` takes in pointer-operand positions (`operands` excludes the
/// opcode word). Only instructions inside function bodies are passed here.
fn pointer_operands(op: Op, operands: &[u32], non_semantic: &HashSet<u32>, out: &mut Vec<u32>) {
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
    /// Reads the module: header checks, then one pass over the instructions.
    fn parse(words: &[u32]) -> Result<Module> {
        let [magic, version, _generator, _bound, _schema, ..] = *words else {
            return Err(invalid(if words.is_empty() {
                "empty SPIR-V module".to_owned()
            } else {
                format!(
                    "SPIR-V module of {} words is shorter than the {HEADER_WORDS}-word header",
                    words.len()
                )
            }));
        };
        if magic == MAGIC.swap_bytes() {
            return Err(invalid(format!(
                "the SPIR-V words are byte-swapped (magic number reads {magic:#010x}); load \
                 .spv files with `vkhmm::shader::spirv_words`, which fixes the byte order"
            )));
        }
        if magic != MAGIC {
            return Err(invalid(format!(
                "not a SPIR-V module: the first word is {magic:#010x}, not the magic number \
                 {MAGIC:#010x}"
            )));
        }
        let major = (version >> 16) & 0xff;
        let minor = (version >> 8) & 0xff;
        if major != 1 {
            return Err(invalid(format!(
                "unsupported SPIR-V version {major}.{minor} (version word {version:#010x})"
            )));
        }
        let mut module = Module {
            version: (major, minor),
            ..Module::default()
        };

        let mut offset = HEADER_WORDS;
        let mut current_function: Option<u32> = None;
        while let Some(&first) = words.get(offset) {
            let count = (first >> 16) as usize;
            let opcode = first & 0xffff;
            if count == 0 {
                return Err(invalid(format!(
                    "SPIR-V word {offset}: instruction (opcode {opcode}) has word count 0"
                )));
            }
            let end = offset.saturating_add(count);
            let Some(operands) = words.get(offset + 1..end) else {
                return Err(invalid(format!(
                    "SPIR-V word {offset}: instruction (opcode {opcode}) has word count {count}, \
                     past the end of the module ({} words)",
                    words.len()
                )));
            };
            let op = Op::from_u32(opcode);
            module.instruction(opcode, op, operands, offset, &mut current_function)?;
            offset = end;
        }
        if let Some(function) = current_function {
            return Err(invalid(format!(
                "function %{function} has no OpFunctionEnd (is the module truncated?)"
            )));
        }
        module.decorations.apply_groups();
        Ok(module)
    }

    /// Records one instruction. `op` is `opcode` decoded (`None` for an opcode this version of
    /// the `spirv` crate does not know, which reflection ignores); `operands` excludes the
    /// opcode word.
    fn instruction(
        &mut self,
        opcode: u32,
        op: Option<Op>,
        operands: &[u32],
        offset: usize,
        current_function: &mut Option<u32>,
    ) -> Result<()> {
        let short = || {
            invalid(format!(
                "SPIR-V word {offset}: instruction (opcode {opcode}) is too short ({} operand \
                 words)",
                operands.len()
            ))
        };
        let unterminated = || {
            invalid(format!(
                "SPIR-V word {offset}: literal string is not nul-terminated"
            ))
        };

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
                        pointer_operands(op, operands, &self.non_semantic_sets, &mut refs.pointers);
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
                    return Err(short());
                };
                let (name, _) = literal_string(string).ok_or_else(unterminated)?;
                self.names.insert(*target, name);
            }
            Op::ExtInstImport => {
                let [result, string @ ..] = operands else {
                    return Err(short());
                };
                let (name, _) = literal_string(string).ok_or_else(unterminated)?;
                if name.starts_with("NonSemantic.") {
                    self.non_semantic_sets.insert(*result);
                }
            }
            Op::EntryPoint => {
                let [model, function, rest @ ..] = operands else {
                    return Err(short());
                };
                let (name, used) = literal_string(rest).ok_or_else(unterminated)?;
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
                    return Err(short());
                };
                let size = match (op, ExecutionMode::from_u32(*mode), args) {
                    (Op::ExecutionMode, Some(ExecutionMode::LocalSize), [x, y, z, ..]) => {
                        LocalSize::Literal([*x, *y, *z])
                    }
                    (Op::ExecutionModeId, Some(ExecutionMode::LocalSizeId), [x, y, z, ..]) => {
                        LocalSize::Ids([*x, *y, *z])
                    }
                    (_, Some(ExecutionMode::LocalSize | ExecutionMode::LocalSizeId), _) => {
                        return Err(short())
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
                    return Err(short());
                };
                if let Some(decoration) = Decoration::from_u32(*decoration) {
                    self.decorations
                        .add(*target, decoration, args.first().copied());
                }
            }
            Op::MemberDecorate => {
                let [target, member, decoration, args @ ..] = operands else {
                    return Err(short());
                };
                if let Some(decoration) = Decoration::from_u32(*decoration) {
                    let value = args.first().copied();
                    self.decorations
                        .add_member(*target, *member, decoration, value);
                }
            }
            Op::GroupDecorate => {
                let [group, targets @ ..] = operands else {
                    return Err(short());
                };
                let uses = targets.iter().map(|&target| (*group, target, None));
                self.decorations.group_uses.extend(uses);
            }
            Op::GroupMemberDecorate => {
                let [group, pairs @ ..] = operands else {
                    return Err(short());
                };
                let uses = pairs.chunks_exact(2).filter_map(|pair| match *pair {
                    [target, member] => Some((*group, target, Some(member))),
                    _ => None,
                });
                self.decorations.group_uses.extend(uses);
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
                    return Err(short());
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
                    _ => return Err(short()),
                };
                self.types.insert(*result, ty);
            }
            Op::Constant | Op::SpecConstant => {
                let [_, result, value, ..] = operands else {
                    return Err(short());
                };
                self.constants.insert(*result, Constant::Scalar(*value));
            }
            Op::ConstantTrue | Op::SpecConstantTrue => {
                let [_, result, ..] = operands else {
                    return Err(short());
                };
                self.constants.insert(*result, Constant::Scalar(1));
            }
            Op::ConstantFalse | Op::SpecConstantFalse | Op::ConstantNull => {
                let [_, result, ..] = operands else {
                    return Err(short());
                };
                self.constants.insert(*result, Constant::Scalar(0));
            }
            Op::ConstantComposite | Op::SpecConstantComposite => {
                let [_, result, parts @ ..] = operands else {
                    return Err(short());
                };
                self.constants
                    .insert(*result, Constant::Composite(parts.to_vec()));
            }
            Op::Variable => {
                let [pointer_type, result, class, ..] = operands else {
                    return Err(short());
                };
                let class = StorageClass::from_u32(*class);
                self.globals.insert(*result, (*pointer_type, class));
            }
            Op::UntypedVariableKHR => {
                self.untyped_variable.get_or_insert(offset);
            }
            Op::Function => {
                let [_, result, ..] = operands else {
                    return Err(short());
                };
                *current_function = Some(*result);
                self.functions.entry(*result).or_default();
            }
            _ => {}
        }
        Ok(())
    }

    fn name(&self, id: u32) -> Option<&str> {
        self.names
            .get(&id)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

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

    fn workgroup_size(&self, ep: &EntryPoint) -> Result<[u32; 3]> {
        let entry = &ep.name;
        // The constant composite decorated `BuiltIn WorkgroupSize` (the lowest id if a broken
        // module has several), which overrides the execution modes.
        let builtin = self
            .decorations
            .on_id
            .iter()
            .filter(|(&(_, d), &v)| {
                d == Decoration::BuiltIn && v == Some(BuiltIn::WorkgroupSize as u32)
            })
            .filter_map(|(&(id, _), _)| match self.constants.get(&id) {
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

    /// The value of a scalar integer constant.
    fn scalar(&self, id: u32, what: &str) -> Result<u32> {
        match self.constants.get(&id) {
            Some(Constant::Scalar(value)) => Ok(*value),
            _ => Err(invalid(format!("{what}: %{id} is not a scalar constant"))),
        }
    }

    /// The global variables the entry point statically uses (see the module docs).
    fn used_globals(&self, ep: &EntryPoint) -> Vec<u32> {
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

    fn pointee(&self, var: u32, pointer_type: u32) -> Result<u32> {
        match self.types.get(&pointer_type) {
            Some(Type::Pointer { pointee, .. }) => Ok(*pointee),
            _ => Err(invalid(format!(
                "variable %{var} has type %{pointer_type}, which is not a pointer type"
            ))),
        }
    }

    fn unsupported_resource(&self, var: u32, pointer_type: u32) -> Error {
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
    fn buffer_binding(
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

    fn push_constant_size(&self, var: u32, pointer_type: u32) -> Result<u32> {
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

/// Adds `binding`, merging it with a variable that aliases the same (set, binding).
fn merge_binding(
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
    use super::*;
    use crate::shader::compile_wgsl;
    use proptest::prelude::*;

    const INPUT: u32 = StorageClass::Input as u32;
    const GLOBAL_INVOCATION_ID: u32 = BuiltIn::GlobalInvocationId as u32;
    const ALIGNED: u32 = spirv::MemoryAccess::ALIGNED.bits();
    const GL_COMPUTE: u32 = ExecutionModel::GLCompute as u32;
    const LOCAL_SIZE: u32 = ExecutionMode::LocalSize as u32;
    const LOCAL_SIZE_ID: u32 = ExecutionMode::LocalSizeId as u32;

    /// A minimal SPIR-V assembler: enough to write modules the way glslc lays them out.
    struct Asm {
        words: Vec<u32>,
    }

    fn string(s: &str) -> Vec<u32> {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    impl Asm {
        fn new(version: (u32, u32), bound: u32) -> Self {
            Asm {
                words: vec![MAGIC, (version.0 << 16) | (version.1 << 8), 0, bound, 0],
            }
        }

        fn op(&mut self, op: Op, operands: &[u32]) -> &mut Self {
            let count = u32::try_from(operands.len() + 1).unwrap();
            self.words.push((count << 16) | op as u32);
            self.words.extend_from_slice(operands);
            self
        }

        /// An instruction with a literal string between `before` and `after` operands.
        fn op_str(&mut self, op: Op, before: &[u32], s: &str, after: &[u32]) -> &mut Self {
            let mut operands = before.to_vec();
            operands.extend(string(s));
            operands.extend_from_slice(after);
            self.op(op, &operands)
        }

        fn done(&self) -> Vec<u32> {
            self.words.clone()
        }
    }

    /// A compute shader as glslc writes it (SPIR-V 1.0) for
    ///
    /// ```glsl
    /// layout(local_size_x = 128) in;
    /// layout(set = 0, binding = 0) readonly buffer In { float data[]; };   // anonymous
    /// layout(set = 0, binding = 1) buffer Out { float data[]; } outb;
    /// layout(set = 0, binding = 2) buffer Unused { float data[]; } unused; // never touched
    /// layout(push_constant) uniform PC { uint n; vec4 bias; } pc;        // offsets 0, 16
    /// void main() { uint i = gl_GlobalInvocationID.x; outb.data[i] = In.data[i] + pc.bias.x; }
    /// ```
    ///
    /// The loads and the store carry an `Aligned 32` memory operand, and 32 is the id of the
    /// unused variable: a reflector that took literals for ids would report binding 2.
    fn glslc_module(version: (u32, u32)) -> Vec<u32> {
        let mut a = Asm::new(version, 40);
        a.op(Op::Capability, &[1])
            .op_str(Op::ExtInstImport, &[1], "GLSL.std.450", &[])
            .op(Op::MemoryModel, &[0, 1])
            .op_str(Op::EntryPoint, &[GL_COMPUTE, 2], "main", &[20])
            .op(Op::ExecutionMode, &[2, LOCAL_SIZE, 128, 1, 1])
            .op_str(Op::Name, &[2], "main", &[])
            .op_str(Op::Name, &[10], "In", &[])
            .op_str(Op::MemberName, &[10, 0], "data", &[])
            .op_str(Op::Name, &[12], "", &[])
            .op_str(Op::Name, &[13], "Out", &[])
            .op_str(Op::Name, &[15], "outb", &[])
            .op_str(Op::Name, &[16], "PC", &[])
            .op_str(Op::Name, &[18], "pc", &[])
            .op_str(Op::Name, &[32], "unused", &[])
            .op(Op::Decorate, &[9, Decoration::ArrayStride as u32, 4])
            .op(Op::MemberDecorate, &[10, 0, Decoration::NonWritable as u32])
            .op(Op::MemberDecorate, &[10, 0, Decoration::Offset as u32, 0])
            .op(Op::Decorate, &[10, Decoration::BufferBlock as u32])
            .op(Op::Decorate, &[12, Decoration::DescriptorSet as u32, 0])
            .op(Op::Decorate, &[12, Decoration::Binding as u32, 0])
            .op(Op::MemberDecorate, &[13, 0, Decoration::Offset as u32, 0])
            .op(Op::Decorate, &[13, Decoration::BufferBlock as u32])
            .op(Op::Decorate, &[15, Decoration::DescriptorSet as u32, 0])
            .op(Op::Decorate, &[15, Decoration::Binding as u32, 1])
            .op(Op::MemberDecorate, &[16, 0, Decoration::Offset as u32, 0])
            .op(Op::MemberDecorate, &[16, 1, Decoration::Offset as u32, 16])
            .op(Op::Decorate, &[16, Decoration::Block as u32])
            .op(
                Op::Decorate,
                &[20, Decoration::BuiltIn as u32, GLOBAL_INVOCATION_ID],
            )
            .op(Op::MemberDecorate, &[33, 0, Decoration::Offset as u32, 0])
            .op(Op::Decorate, &[33, Decoration::BufferBlock as u32])
            .op(Op::Decorate, &[32, Decoration::DescriptorSet as u32, 0])
            .op(Op::Decorate, &[32, Decoration::Binding as u32, 2])
            .op(Op::TypeVoid, &[3])
            .op(Op::TypeFunction, &[4, 3])
            .op(Op::TypeFloat, &[5, 32])
            .op(Op::TypeInt, &[6, 32, 0])
            .op(Op::TypeVector, &[7, 6, 3])
            .op(Op::TypeVector, &[8, 5, 4])
            .op(Op::TypeRuntimeArray, &[9, 5])
            .op(Op::TypeStruct, &[10, 9])
            .op(Op::TypePointer, &[11, StorageClass::Uniform as u32, 10])
            .op(Op::Variable, &[11, 12, StorageClass::Uniform as u32])
            .op(Op::TypeStruct, &[13, 9])
            .op(Op::TypePointer, &[14, StorageClass::Uniform as u32, 13])
            .op(Op::Variable, &[14, 15, StorageClass::Uniform as u32])
            .op(Op::TypeStruct, &[33, 9])
            .op(Op::TypePointer, &[34, StorageClass::Uniform as u32, 33])
            .op(Op::Variable, &[34, 32, StorageClass::Uniform as u32])
            .op(Op::TypeStruct, &[16, 6, 8])
            .op(
                Op::TypePointer,
                &[17, StorageClass::PushConstant as u32, 16],
            )
            .op(Op::Variable, &[17, 18, StorageClass::PushConstant as u32])
            .op(Op::TypePointer, &[19, INPUT, 7])
            .op(Op::Variable, &[19, 20, INPUT])
            .op(Op::TypeInt, &[21, 32, 1])
            .op(Op::Constant, &[21, 22, 0])
            .op(Op::Constant, &[21, 23, 1])
            .op(Op::TypePointer, &[24, StorageClass::Uniform as u32, 5])
            .op(Op::TypePointer, &[25, StorageClass::PushConstant as u32, 8])
            .op(Op::Function, &[3, 2, 0, 4])
            .op(Op::Label, &[26])
            .op(Op::Load, &[7, 27, 20])
            .op(Op::CompositeExtract, &[6, 28, 27, 0])
            .op(Op::AccessChain, &[24, 29, 12, 22, 28])
            .op(Op::Load, &[5, 30, 29, ALIGNED, 32])
            .op(Op::AccessChain, &[25, 36, 18, 23])
            .op(Op::Load, &[8, 37, 36, ALIGNED, 32])
            .op(Op::CompositeExtract, &[5, 38, 37, 0])
            .op(Op::FAdd, &[5, 39, 30, 38])
            .op(Op::AccessChain, &[24, 31, 15, 22, 28])
            .op(Op::Store, &[31, 39, ALIGNED, 32])
            .op(Op::Return, &[])
            .op(Op::FunctionEnd, &[]);
        a.done()
    }

    fn binding(binding: u32, kind: BindingKind, access: Access, name: &str) -> BindingInfo {
        BindingInfo {
            set: 0,
            binding,
            kind,
            access,
            name: Some(name.to_owned()),
        }
    }

    fn invalid_message(result: Result<KernelInfo>) -> String {
        match result {
            Err(Error::InvalidShader(message)) => message,
            other => panic!("expected InvalidShader, got {other:?}"),
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
    fn version_1_4_uses_the_interface_list() {
        // Same module, but 1.4 with the unused buffer listed in the interface: a 1.4 producer
        // says it is used, so it is reported. Under 1.0 the same list means nothing.
        let mut words = glslc_module((1, 0));
        let entry = words
            .iter()
            .position(|w| *w == ((6 << 16) | Op::EntryPoint as u32))
            .unwrap();
        words[entry] = (7 << 16) | Op::EntryPoint as u32;
        words.insert(entry + 6, 32);
        let info = reflect(&words, "main").unwrap();
        assert_eq!(info.bindings.len(), 2, "1.0 ignores non-I/O interface ids");
        words[1] = 0x0001_0400;
        let info = reflect(&words, "main").unwrap();
        let bound: Vec<u32> = info.bindings.iter().map(|b| b.binding).collect();
        assert_eq!(bound, [0, 1, 2]);
        assert_eq!(info.bindings[2].name.as_deref(), Some("unused"));
    }

    /// WGSL compiled with vkhmm's options but SPIR-V 1.4, whose interface lists every global.
    fn naga_spirv_1_4(source: &str) -> Vec<u32> {
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let info = super::super::wgsl::validator().validate(&module).unwrap();
        let options = naga::back::spv::Options {
            lang_version: (1, 4),
            ..super::super::wgsl::spirv_options()
        };
        naga::back::spv::write_vec(&module, &info, &options, None).unwrap()
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
        a.op(Op::ExecutionMode, &[2, LOCAL_SIZE, 1, 1, 1]).op(
            Op::Decorate,
            &[
                11,
                Decoration::BuiltIn as u32,
                BuiltIn::WorkgroupSize as u32,
            ],
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
    fn decoration_groups_apply() {
        // Replace the member NonWritable of `In` by a decoration group applied to it.
        let mut words = glslc_module((1, 0));
        let target = [
            (4 << 16) | Op::MemberDecorate as u32,
            10,
            0,
            Decoration::NonWritable as u32,
        ];
        let at = words.windows(4).position(|w| w == target).unwrap();
        words.splice(
            at..at + 4,
            [
                (3 << 16) | Op::Decorate as u32,
                35,
                Decoration::NonWritable as u32,
                (2 << 16) | Op::DecorationGroup as u32,
                35,
                (4 << 16) | Op::GroupMemberDecorate as u32,
                35,
                10,
                0,
            ],
        );
        let info = reflect(&words, "main").unwrap();
        assert_eq!(info.bindings[0].access, Access::Read);
        assert_eq!(info.bindings[1].access, Access::ReadWrite);
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
            .op(Op::Decorate, &[block, Decoration::Block as u32]);
        for m in 0..MEMBERS {
            a.op(
                Op::MemberDecorate,
                &[block, m, Decoration::Offset as u32, 4 * m],
            );
            a.op(
                Op::MemberDecorate,
                &[block, m, Decoration::NonWritable as u32],
            );
        }
        for v in 0..VARS {
            a.op(
                Op::Decorate,
                &[first_var + v, Decoration::DescriptorSet as u32, 0],
            );
            a.op(
                Op::Decorate,
                &[first_var + v, Decoration::Binding as u32, v],
            );
        }
        let groups: Vec<u32> = (first_group..bound).collect();
        for &g in &groups {
            a.op(Op::Decorate, &[g, Decoration::ArrayStride as u32, 4]);
            a.op(Op::DecorationGroup, &[g]);
        }
        for &g in &groups {
            a.op(Op::GroupDecorate, &[g, array]);
        }
        let members = vec![array; MEMBERS as usize];
        a.op(Op::TypeFloat, &[float, 32])
            .op(Op::TypeRuntimeArray, &[array, float])
            .op(Op::TypeStruct, &[&[block][..], &members[..]].concat())
            .op(
                Op::TypePointer,
                &[pointer, StorageClass::StorageBuffer as u32, block],
            );
        for v in 0..VARS {
            a.op(
                Op::Variable,
                &[pointer, first_var + v, StorageClass::StorageBuffer as u32],
            );
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
    fn malformed_modules_are_invalid_shaders() {
        let valid = glslc_module((1, 0));
        let cases: Vec<(Vec<u32>, &str)> = vec![
            (vec![], "empty"),
            (vec![MAGIC, 0x0001_0000], "header"),
            (vec![0xdead_beef, 0x0001_0000, 0, 1, 0], "magic"),
            (
                vec![MAGIC.swap_bytes(), 0x0000_0100, 0, 1, 0],
                "byte-swapped",
            ),
            (vec![MAGIC, 0x0002_0000, 0, 1, 0], "version"),
            (
                vec![MAGIC, 0x0001_0000, 0, 1, 0, 0x0000_0011],
                "word count 0",
            ),
            (
                vec![MAGIC, 0x0001_0000, 0, 1, 0, 0x0005_0011, 1],
                "past the end",
            ),
            (
                vec![
                    MAGIC,
                    0x0001_0000,
                    0,
                    1,
                    0,
                    (3 << 16) | Op::Name as u32,
                    1,
                    0x6161_6161,
                ],
                "nul",
            ),
            (
                vec![
                    MAGIC,
                    0x0001_0000,
                    0,
                    1,
                    0,
                    (2 << 16) | Op::TypePointer as u32,
                    1,
                ],
                "too short",
            ),
            (valid[..valid.len() - 1].to_vec(), "OpFunctionEnd"),
            (valid[..valid.len() - 4].to_vec(), "past the end"),
        ];
        for (words, expected) in cases {
            let message = invalid_message(reflect(&words, "main"));
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        // A well-formed module with no entry point at all.
        assert!(matches!(
            reflect(&[MAGIC, 0x0001_0000, 0, 1, 0], "main"),
            Err(Error::EntryPointNotFound { available, .. }) if available.is_empty()
        ));
    }

    #[test]
    fn self_referencing_push_constant_type_is_rejected() {
        // struct %16 { uint, %16 } — invalid, must not recurse forever.
        let mut words = glslc_module((1, 0));
        let target = [(4 << 16) | Op::TypeStruct as u32, 16, 6, 8];
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
