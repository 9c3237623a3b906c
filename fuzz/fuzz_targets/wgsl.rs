//! `cargo +nightly fuzz run wgsl`: see `fuzz/harness.rs` and docs/reliability.md, "Fuzzing".
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(
    init: harness::tolerate_caught_naga_panics(),
    |data: &[u8]| harness::wgsl(data)
);
