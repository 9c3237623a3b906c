//! `cargo +nightly fuzz run mutate_spirv`: see `fuzz/harness.rs` and docs/reliability.md, "Fuzzing".
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::mutate_spirv(data));
