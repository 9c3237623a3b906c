//! `cargo +nightly fuzz run reflect_spirv`: see `fuzz/harness.rs` and docs/reliability.md, "Fuzzing".
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::reflect_spirv(data));
