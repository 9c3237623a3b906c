//! Replays the committed fuzz corpus on the stable toolchain, so CI (which has no cargo-fuzz)
//! keeps every input the fuzzers ever crashed on fixed.
//!
//! Each input goes through `fuzz/harness.rs`, the very function its libFuzzer target calls:
//! - `fuzz/seeds/<target>/`: the starting corpus (the bundled shaders' SPIR-V, their WGSL is
//!   read from `shaders/`);
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
    let n = replay(harness::wgsl, &["shaders", "fuzz/regressions/wgsl"]);
    assert!(n >= vkhmm::shaders::ALL.len(), "{n} inputs");
}

/// The SPIR-V seeds are the bundled shaders as `build.rs` compiles them today. Run with
/// `VKHMM_WRITE_FUZZ_SEEDS=1` to rewrite them after a shader changes.
#[test]
fn spirv_seeds_are_the_bundled_shaders() {
    let dir = Path::new(ROOT).join("fuzz/seeds/reflect_spirv");
    let write = std::env::var_os("VKHMM_WRITE_FUZZ_SEEDS").is_some();
    for shader in vkhmm::shaders::ALL {
        let bytes: Vec<u8> = shader.spirv.iter().flat_map(|w| w.to_le_bytes()).collect();
        let path = dir.join(shader.name.replace(".wgsl", ".spv"));
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
