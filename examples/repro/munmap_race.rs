//! Reproduces a data-loss bug: a thread unmaps half of a launch's read binding while the
//! launch runs; a later, correctly used mapping at the same address then loses a kernel's
//! writes (its upper half keeps the CPU's data, without the kernel's +1).
//!
//! `cargo run --release --example munmap_race`; exits with status 1 if a round lost data.
//! Before the fix: 1-3 of 20 rounds wrong in about two runs out of three, on lavapipe, Direct
//! path. `tests/munmap_race.rs` checks the same on both transfer paths.
use std::time::{Duration, Instant};
use vkhmm::Runtime;

const COPY: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read_write> b: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    var i = g.x;
    loop { if (i >= arrayLength(&a)) { break; } b[i] = a[i]; i = i + n.x * 256u; }
}"#;

const INC: &str = r#"
@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    var i = g.x;
    loop { if (i >= arrayLength(&a)) { break; } a[i] = a[i] + 1u; i = i + n.x * 256u; }
}"#;

const LEN: usize = 4 << 20;

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    let rt = Runtime::new().unwrap();
    let copy = rt.kernel_wgsl(COPY, "main").unwrap();
    let inc = rt.kernel_wgsl(INC, "main").unwrap();
    let words = LEN / 4;
    let value = |i: usize, round: u32| i as u32 ^ 0x5a5a_0000 ^ round;
    let mut dst = vec![0u32; words];
    let mut bad_rounds = 0;
    for round in 0..20u32 {
        // SAFETY: our own anonymous mapping, read and written only through `s` and `src`
        // while mapped; the racing munmap below is deliberate misuse (as in the HMM selftest
        // anon_teardown) that the launch must survive. The round after it uses a fresh
        // mapping correctly.
        unsafe {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let p = libc::mmap(std::ptr::null_mut(), LEN, prot, flags, -1, 0) as *mut u32;
            let s = std::slice::from_raw_parts_mut(p, words);
            for (i, w) in s.iter_mut().enumerate() {
                *w = value(i, round);
            }
            // Odd rounds: a kernel increments the fresh, CPU-written mapping. Correct use.
            let added = round % 2;
            if added == 1 {
                rt.launch(&inc, [512, 1, 1], (&mut s[..],)).unwrap();
            }
            let wrong = (0..words)
                .filter(|&i| s[i] != value(i, round) + added)
                .count();
            if wrong > 0 {
                bad_rounds += 1;
                println!("round {round}: mapping at {p:p}: {wrong} words lost the kernel's write");
            }
            // Misuse: another thread unmaps the upper half while a launch reads it.
            let addr = p as usize;
            let _ = std::thread::scope(|sc| {
                sc.spawn(move || {
                    spin(Duration::from_micros(7 * (round as u64 % 5)));
                    libc::munmap((addr + LEN / 2) as *mut _, LEN / 2);
                });
                let src = std::slice::from_raw_parts(addr as *const u32, words);
                rt.launch(&copy, [512, 1, 1], (src, &mut dst[..]))
            });
            libc::munmap(p as *mut _, LEN / 2);
        }
    }
    println!("{bad_rounds} of 20 rounds lost data in a fresh, correctly used mapping");
    if bad_rounds > 0 {
        std::process::exit(1);
    }
}
