//! Test support: a minimal SPIR-V assembler and the modules the reflector's tests share.

use spirv::{BuiltIn, Decoration, ExecutionMode, ExecutionModel, Op, StorageClass};

use super::reader::MAGIC;
use crate::shader::KernelInfo;
use crate::{Error, Result};

/// Operand words the hand-assembled modules use.
pub(super) const GL_COMPUTE: u32 = ExecutionModel::GLCompute as u32;
pub(super) const LOCAL_SIZE: u32 = ExecutionMode::LocalSize as u32;
pub(super) const LOCAL_SIZE_ID: u32 = ExecutionMode::LocalSizeId as u32;
pub(super) const UNIFORM: u32 = StorageClass::Uniform as u32;
pub(super) const PUSH_CONSTANT: u32 = StorageClass::PushConstant as u32;
pub(super) const STORAGE_BUFFER: u32 = StorageClass::StorageBuffer as u32;
const INPUT: u32 = StorageClass::Input as u32;
const ALIGNED: u32 = spirv::MemoryAccess::ALIGNED.bits();

/// The first word of an instruction: its word count (operands + 1) and opcode.
pub(super) fn first_word(op: Op, count: u32) -> u32 {
    (count << 16) | op as u32
}

/// A minimal SPIR-V assembler: enough to write modules the way glslc lays them out.
pub(super) struct Asm {
    words: Vec<u32>,
}

fn string(s: &str) -> Vec<u32> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Asm {
    pub(super) fn new(version: (u32, u32), bound: u32) -> Self {
        Asm {
            words: vec![MAGIC, (version.0 << 16) | (version.1 << 8), 0, bound, 0],
        }
    }

    pub(super) fn op(&mut self, op: Op, operands: &[u32]) -> &mut Self {
        let count = u32::try_from(operands.len() + 1).unwrap();
        self.words.push(first_word(op, count));
        self.words.extend_from_slice(operands);
        self
    }

    /// An instruction with a literal string between `before` and `after` operands.
    pub(super) fn op_str(&mut self, op: Op, before: &[u32], s: &str, after: &[u32]) -> &mut Self {
        let mut operands = before.to_vec();
        operands.extend(string(s));
        operands.extend_from_slice(after);
        self.op(op, &operands)
    }

    /// `OpDecorate %target decoration args…`
    pub(super) fn decorate(
        &mut self,
        target: u32,
        decoration: Decoration,
        args: &[u32],
    ) -> &mut Self {
        self.op(Op::Decorate, &[&[target, decoration as u32], args].concat())
    }

    /// `OpMemberDecorate %target member decoration args…`
    pub(super) fn member_decorate(
        &mut self,
        target: u32,
        member: u32,
        decoration: Decoration,
        args: &[u32],
    ) -> &mut Self {
        let operands = [&[target, member, decoration as u32], args].concat();
        self.op(Op::MemberDecorate, &operands)
    }

    pub(super) fn done(&self) -> Vec<u32> {
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
pub(super) fn glslc_module(version: (u32, u32)) -> Vec<u32> {
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
        .decorate(9, Decoration::ArrayStride, &[4])
        .member_decorate(10, 0, Decoration::NonWritable, &[])
        .member_decorate(10, 0, Decoration::Offset, &[0])
        .decorate(10, Decoration::BufferBlock, &[])
        .decorate(12, Decoration::DescriptorSet, &[0])
        .decorate(12, Decoration::Binding, &[0])
        .member_decorate(13, 0, Decoration::Offset, &[0])
        .decorate(13, Decoration::BufferBlock, &[])
        .decorate(15, Decoration::DescriptorSet, &[0])
        .decorate(15, Decoration::Binding, &[1])
        .member_decorate(16, 0, Decoration::Offset, &[0])
        .member_decorate(16, 1, Decoration::Offset, &[16])
        .decorate(16, Decoration::Block, &[])
        .decorate(
            20,
            Decoration::BuiltIn,
            &[BuiltIn::GlobalInvocationId as u32],
        )
        .member_decorate(33, 0, Decoration::Offset, &[0])
        .decorate(33, Decoration::BufferBlock, &[])
        .decorate(32, Decoration::DescriptorSet, &[0])
        .decorate(32, Decoration::Binding, &[2])
        .op(Op::TypeVoid, &[3])
        .op(Op::TypeFunction, &[4, 3])
        .op(Op::TypeFloat, &[5, 32])
        .op(Op::TypeInt, &[6, 32, 0])
        .op(Op::TypeVector, &[7, 6, 3])
        .op(Op::TypeVector, &[8, 5, 4])
        .op(Op::TypeRuntimeArray, &[9, 5])
        .op(Op::TypeStruct, &[10, 9])
        .op(Op::TypePointer, &[11, UNIFORM, 10])
        .op(Op::Variable, &[11, 12, UNIFORM])
        .op(Op::TypeStruct, &[13, 9])
        .op(Op::TypePointer, &[14, UNIFORM, 13])
        .op(Op::Variable, &[14, 15, UNIFORM])
        .op(Op::TypeStruct, &[33, 9])
        .op(Op::TypePointer, &[34, UNIFORM, 33])
        .op(Op::Variable, &[34, 32, UNIFORM])
        .op(Op::TypeStruct, &[16, 6, 8])
        .op(Op::TypePointer, &[17, PUSH_CONSTANT, 16])
        .op(Op::Variable, &[17, 18, PUSH_CONSTANT])
        .op(Op::TypePointer, &[19, INPUT, 7])
        .op(Op::Variable, &[19, 20, INPUT])
        .op(Op::TypeInt, &[21, 32, 1])
        .op(Op::Constant, &[21, 22, 0])
        .op(Op::Constant, &[21, 23, 1])
        .op(Op::TypePointer, &[24, UNIFORM, 5])
        .op(Op::TypePointer, &[25, PUSH_CONSTANT, 8])
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

/// WGSL compiled with vkhmm's options but SPIR-V 1.4, whose interface lists every global.
pub(super) fn naga_spirv_1_4(source: &str) -> Vec<u32> {
    let module = naga::front::wgsl::parse_str(source).unwrap();
    let info = crate::shader::wgsl::validator().validate(&module).unwrap();
    let options = naga::back::spv::Options {
        lang_version: (1, 4),
        ..crate::shader::wgsl::spirv_options()
    };
    naga::back::spv::write_vec(&module, &info, &options, None).unwrap()
}

/// The message of an [`Error::InvalidShader`]; panics on any other result.
pub(super) fn invalid_message(result: Result<KernelInfo>) -> String {
    match result {
        Err(Error::InvalidShader(message)) => message,
        other => panic!("expected InvalidShader, got {other:?}"),
    }
}
