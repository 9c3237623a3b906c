//! The word stream: the header, then the instructions one at a time.
//!
//! This is the only code that looks at raw word positions. The header is taken by a slice
//! pattern; an [`Instruction`] is handed out only after its word count has been checked (at
//! least 1, not past the end of the module), so every operand slice a caller sees lies inside
//! the module. The first malformed instruction ends the stream with [`Error::InvalidShader`]
//! naming its word offset. The reader knows opcodes only as numbers to decode: what an
//! instruction means is [`Module`](super::module::Module)'s business.

use spirv::Op;

use super::invalid;
use crate::{Error, Result};

/// The SPIR-V magic number, in host order.
pub(super) const MAGIC: u32 = spirv::MAGIC_NUMBER;
/// Header words: magic, version, generator, id bound, schema.
pub(super) const HEADER_WORDS: usize = 5;

/// Checks the header of `words` and returns the SPIR-V version as (major, minor).
///
/// Only SPIR-V 1.x in host byte order is accepted; the generator, id bound and schema words
/// are not read.
pub(super) fn version(words: &[u32]) -> Result<(u32, u32)> {
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
    Ok((major, minor))
}

/// One instruction whose word count has been checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Instruction<'a> {
    /// Where the instruction starts, in words from the start of the module.
    pub(super) offset: usize,
    /// The opcode number as written (the low half of the first word).
    pub(super) opcode: u32,
    /// `opcode` decoded; `None` for a number the `spirv` crate does not know.
    pub(super) op: Option<Op>,
    /// The words after the first, exactly as many as the word count says.
    pub(super) operands: &'a [u32],
}

impl Instruction<'_> {
    /// The error for an instruction with fewer operands than reflection reads.
    pub(super) fn too_short(&self) -> Error {
        invalid(format!(
            "SPIR-V word {}: instruction (opcode {}) is too short ({} operand words)",
            self.offset,
            self.opcode,
            self.operands.len()
        ))
    }

    /// Decodes the literal string at the start of `words` (a tail of the operands); returns it
    /// and the number of words it occupies.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShader`] if the string has no terminating nul.
    pub(super) fn literal_string(&self, words: &[u32]) -> Result<(String, usize)> {
        literal_string(words).ok_or_else(|| {
            invalid(format!(
                "SPIR-V word {}: literal string is not nul-terminated",
                self.offset
            ))
        })
    }
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

/// The instructions after the header, in order.
///
/// Yields `Err` for the first instruction whose word count is 0 or runs past the end of the
/// module, and nothing after it.
#[derive(Debug, Clone)]
pub(super) struct Instructions<'a> {
    words: &'a [u32],
    /// Where the next instruction starts; `words.len()` once the stream is over.
    offset: usize,
}

impl<'a> Instructions<'a> {
    /// The instructions of `words`, a module whose header [`version`] accepted.
    pub(super) fn new(words: &'a [u32]) -> Self {
        Instructions {
            words,
            offset: HEADER_WORDS,
        }
    }
}

impl<'a> Iterator for Instructions<'a> {
    type Item = Result<Instruction<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.offset;
        let &first = self.words.get(offset)?;
        let count = (first >> 16) as usize;
        let opcode = first & 0xffff;
        if count == 0 {
            self.offset = self.words.len();
            return Some(Err(invalid(format!(
                "SPIR-V word {offset}: instruction (opcode {opcode}) has word count 0"
            ))));
        }
        let end = offset.saturating_add(count);
        let Some(operands) = self.words.get(offset + 1..end) else {
            self.offset = self.words.len();
            return Some(Err(invalid(format!(
                "SPIR-V word {offset}: instruction (opcode {opcode}) has word count {count}, \
                 past the end of the module ({} words)",
                self.words.len()
            ))));
        };
        self.offset = end;
        Some(Ok(Instruction {
            offset,
            opcode,
            op: Op::from_u32(opcode),
            operands,
        }))
    }
}

#[cfg(test)]
mod tests {
    use spirv::Op;

    use super::super::asm::{first_word, glslc_module, invalid_message};
    use super::super::reflect;
    use super::MAGIC;
    use crate::Error;

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
                    first_word(Op::Name, 3),
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
                    first_word(Op::TypePointer, 2),
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
}
