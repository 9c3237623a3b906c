#![allow(dead_code)] // each fuzz target uses one entry of this file
//! What each fuzz target does with one input, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`) and the stable replay test (`tests/fuzz_corpus.rs`), which both
//! include this file with `#[path]`. It uses only vkhmm's public API, the entry points
//! `Runtime::kernel_spirv` and `Runtime::kernel_wgsl` call before they touch a device.
//!
//! A panic here is a bug found: either vkhmm panicked, or one of the checks below (the
//! documented contract of `reflect`) failed.

use vkhmm::shader::{self, KernelInfo};
use vkhmm::Error;

/// Raw bytes as a SPIR-V module: through `spirv_words` (as a `.spv` file is loaded) and, so
/// that inputs need not be valid `.spv` files to reach the reader, as little-endian words.
pub fn reflect_spirv(data: &[u8]) {
    if let Ok(words) = shader::spirv_words(data) {
        reflect_every_entry(&words);
    }
    let words: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    reflect_every_entry(&words);
}

/// Opcodes the reflector reads, for [`mutate_spirv`]'s "insert an instruction" edit.
const OPCODES: [u32; 24] = [
    5, 15, 16, 21, 23, 24, 28, 29, 30, 32, 43, 44, 50, 51, 54, 56, 57, 59, 61, 65, 71, 72, 74, 331,
];
/// Decorations the reflector reads (BuiltIn is 11, with WorkgroupSize 25).
const DECORATIONS: [u32; 10] = [2, 3, 4, 6, 7, 11, 24, 33, 34, 35];

/// Structure-aware: a bundled shader's SPIR-V (chosen by the first byte) edited by the rest of
/// the input, 7 bytes per edit, so that mutations start past the header and type section.
/// Besides word edits, three kinds insert a whole instruction the reflector reads
/// (`OpDecorate`, `OpMemberDecorate`, or one of [`OPCODES`] with small-id operands).
pub fn mutate_spirv(data: &[u8]) {
    let Some((&choice, edits)) = data.split_first() else {
        return;
    };
    let all = vkhmm::shaders::ALL;
    let mut words = all[usize::from(choice) % all.len()].spirv.to_vec();
    for edit in edits.chunks_exact(7) {
        let [kind, lo, hi, v0, v1, v2, v3] = *edit else {
            continue;
        };
        let value = u32::from_le_bytes([v0, v1, v2, v3]);
        let len = words.len();
        let at = if len == 0 {
            0
        } else {
            usize::from(u16::from_le_bytes([lo, hi])) % len
        };
        let [b0, b1, b2, b3] = value.to_le_bytes().map(u32::from);
        let instruction: Option<Vec<u32>> = match kind % 13 {
            10 => Some(vec![
                (4 << 16) | 71,
                b0 % 64,
                DECORATIONS[b1 as usize % DECORATIONS.len()],
                if b1 % 3 == 0 { 25 } else { b2 % 64 },
            ]),
            11 => Some(vec![
                (5 << 16) | 72,
                b0 % 64,
                b3 % 8,
                DECORATIONS[b1 as usize % DECORATIONS.len()],
                b2 % 64,
            ]),
            12 => {
                let opcode = OPCODES[b0 as usize % OPCODES.len()];
                let n = 1 + b1 % 5;
                let operands = (0..n).map(|k| (b2 + k * (b3 | 1)) % 64);
                Some(
                    [((n + 1) << 16) | opcode]
                        .into_iter()
                        .chain(operands)
                        .collect(),
                )
            }
            _ => None,
        };
        if let Some(instruction) = instruction {
            let at = at.min(words.len());
            words.splice(at..at, instruction);
            continue;
        }
        match (kind % 13, words.get_mut(at)) {
            (0, Some(w)) => *w = value,
            (1, Some(w)) => *w ^= value,
            // An id or small literal: what the reader compares against most.
            (2, Some(w)) => *w = value % 64,
            // The opcode or the word count of an instruction header.
            (3, Some(w)) => *w = (*w & 0xffff_0000) | (value & 0xffff),
            (4, Some(w)) => *w = (*w & 0xffff) | (value % 16) << 16,
            (5, _) => words.insert(at, value),
            (6, Some(_)) => {
                words.remove(at);
            }
            (7, _) => words.truncate(at),
            (8, Some(_)) => {
                let other = usize::try_from(value).unwrap_or(0) % len;
                words.swap(at, other);
            }
            // Duplicate a run of words (an instruction, a block of decorations) elsewhere.
            (9, Some(_)) => {
                let n = (value as usize % 8).min(len - at);
                let run: Vec<u32> = words[at..at + n].to_vec();
                let to = (value >> 8) as usize % (len + 1);
                words.splice(to..to, run);
            }
            _ => {}
        }
    }
    reflect_every_entry(&words);
}

/// Arbitrary text as WGSL: compile, then reflect what naga produced. naga's output for a
/// module it validated must reflect (or be an unsupported kernel, e.g. one using an image).
pub fn wgsl(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(words) = shader::compile_wgsl(source) else {
        return;
    };
    assert_eq!(
        words.first(),
        Some(&0x0723_0203),
        "naga output lacks the magic"
    );
    for (entry, result) in reflect_every_entry(&words) {
        if let Err(e @ Error::InvalidShader(_)) = result {
            panic!("naga's SPIR-V for `{entry}` does not reflect: {e}\n{source}");
        }
    }
}

/// For the `wgsl` fuzz target: a panic inside naga on the compiler thread is caught by
/// `compile_wgsl` and becomes `Error::InvalidShader`, so it is no crash of vkhmm. Instead of
/// aborting (libFuzzer's hook), print its location once and let it unwind. Set
/// `VKHMM_FUZZ_NAGA_PANICS=abort` to stop at them (to collect and minimise naga bugs).
pub fn tolerate_caught_naga_panics() {
    if std::env::var_os("VKHMM_FUZZ_NAGA_PANICS").is_some_and(|v| v == "abort") {
        return;
    }
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some("vkhmm-naga") {
            return abort(info);
        }
        let at = info.location().map(ToString::to_string).unwrap_or_default();
        if seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(at.clone())
        {
            eprintln!("caught naga panic (first at this place): {at}: {info}");
        }
    }));
}

/// Reflects every compute entry point the module lists (and `main`), checking the documented
/// shape of each result; returns them.
pub fn reflect_every_entry(words: &[u32]) -> Vec<(String, Result<KernelInfo, Error>)> {
    let mut entries = vec!["main".to_owned()];
    if let Err(Error::EntryPointNotFound { entry, available }) = shader::reflect(words, "") {
        assert_eq!(entry, "");
        entries.extend(available);
    }
    let mut results = Vec::new();
    for entry in entries {
        let result = shader::reflect(words, &entry);
        check(words, &entry, &result);
        results.push((entry, result));
    }
    results
}

fn check(words: &[u32], entry: &str, result: &Result<KernelInfo, Error>) {
    // Deterministic: the reader keys hash maps by id; their order must never show.
    let again = shader::reflect(words, entry);
    assert_eq!(format!("{result:?}"), format!("{again:?}"), "`{entry}`");
    match result {
        Ok(info) => {
            assert_eq!(info.entry, entry);
            assert!(!info.workgroup_size.contains(&0), "{info:?}");
            let keys: Vec<(u32, u32)> = info.bindings.iter().map(|b| (b.set, b.binding)).collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "bindings not sorted by (set, binding) or duplicated: {info:?}"
            );
        }
        Err(e) => {
            assert!(
                e.is_misuse(),
                "reflection error is not caller misuse: {e:?}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}
