//! Replays the committed fuzz corpus on the stable toolchain, so CI (which has no cargo-fuzz)
//! keeps every input the fuzzers ever crashed on fixed.
//!
//! Each input goes through `fuzz/harness.rs`, the very function its libFuzzer target calls:
//! - `fuzz/seeds/<target>/`: the starting corpus (the SPIR-V of the bundled shaders and of
//!   `fuzz/seeds/wgsl/`; the bundled WGSL is read from `shaders/`);
//! - `fuzz/regressions/<target>/`: minimised inputs that crashed a target, one file each,
//!   named after the bug (docs/reliability.md, "Fuzzing", lists them).
//!
//! Needs no device.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The files of `dir` (relative to the repository root), sorted; none if it does not exist.
fn files(dir: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(Path::new(ROOT).join(dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every file of the given dirs; returns how many there were.
fn replay(target: fn(&[u8]), dirs: &[&str]) -> usize {
    let mut count = 0;
    for dir in dirs {
        for path in files(dir) {
            let data = fs::read(&path).expect("readable corpus file");
            // A panic names the input that caused it.
            eprintln!("replaying {}", path.display());
            target(&data);
            count += 1;
        }
    }
    count
}

#[test]
fn reflect_spirv_corpus() {
    let n = replay(
        harness::reflect_spirv,
        &["fuzz/seeds/reflect_spirv", "fuzz/regressions/reflect_spirv"],
    );
    assert!(n >= vkhmm::shaders::ALL.len(), "{n} inputs");
}

#[test]
fn mutate_spirv_corpus() {
    let n = replay(
        harness::mutate_spirv,
        &["fuzz/seeds/mutate_spirv", "fuzz/regressions/mutate_spirv"],
    );
    assert!(n >= 1, "{n} inputs");
}

#[test]
fn wgsl_corpus() {
    let n = replay(
        harness::wgsl,
        &["shaders", "fuzz/seeds/wgsl", "fuzz/regressions/wgsl"],
    );
    assert!(n >= vkhmm::shaders::ALL.len(), "{n} inputs");
}

/// The SPIR-V seeds are the bundled shaders as `build.rs` compiles them today, and the
/// WGSL seeds of `fuzz/seeds/wgsl/` (features the bundled shaders lack: push-constant
/// matrices and arrays, uniforms, several entry points, images, pointers) as `compile_wgsl`
/// compiles them. Run with `VKHMM_WRITE_FUZZ_SEEDS=1` to rewrite them after a change.
#[test]
fn spirv_seeds_are_the_compiled_shaders() {
    let dir = Path::new(ROOT).join("fuzz/seeds/reflect_spirv");
    let write = std::env::var_os("VKHMM_WRITE_FUZZ_SEEDS").is_some();
    let bundled = vkhmm::shaders::ALL
        .iter()
        .map(|s| (s.name.to_owned(), s.spirv.to_vec()));
    let extra = files("fuzz/seeds/wgsl").into_iter().map(|path| {
        let source = fs::read_to_string(&path).unwrap();
        let words = vkhmm::shader::compile_wgsl(&source).unwrap();
        (
            path.file_name().unwrap().to_string_lossy().into_owned(),
            words,
        )
    });
    for (name, words) in bundled.chain(extra) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let path = dir.join(name.replace(".wgsl", ".spv"));
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &bytes).unwrap();
        }
        let committed = fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale: rerun with VKHMM_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
    // Structure-aware seeds: one per bundled shader, no edits (the first byte picks it).
    let dir = Path::new(ROOT).join("fuzz/seeds/mutate_spirv");
    for i in 0..vkhmm::shaders::ALL.len() {
        let path = dir.join(format!("shader-{i:02}"));
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, [u8::try_from(i).unwrap()]).unwrap();
        }
        assert!(path.is_file(), "{} is missing", path.display());
    }
}
