//! Criterion: launch overhead with all data resident, and end-to-end saxpy.
//!
//! - `launch/vkhmm_{direct,staged}` vs `launch/raw_ash`: saxpy on 2×16 KiB already on the
//!   device; the raw side dispatches the same SPIR-V (`vkhmm::shaders::SAXPY_SPIRV`) with
//!   ash by hand (record, submit, wait), on the same device with robustBufferAccess on;
//! - `saxpy_e2e/vkhmm_{direct,staged}` vs `saxpy_e2e/raw_ash`: two 64 MiB `Vec<f32>`,
//!   refilled each step (untimed), uploaded, saxpy, the CPU sums the whole result. The wgpu
//!   baseline of the same figure runs in `vkhmm bench` (its own workspace member).

#[path = "measure/mod.rs"]
mod measure;

use criterion::{criterion_main, Criterion, Throughput};
use measure::{raw_ash, MIB};
use std::time::Duration;
use vkhmm::TransferPath;

fn total(iters: u64, mut f: impl FnMut() -> anyhow::Result<Duration>) -> Duration {
    (0..iters).map(|_| f().expect("bench run")).sum()
}

fn launch(c: &mut Criterion) {
    let direct = measure::runtime(TransferPath::Direct).expect("Direct runtime");
    let staged = measure::runtime(TransferPath::Staged).expect("Staged runtime");
    let vk = raw_ash::Vk::new(Some(&direct.device_info().name)).expect("raw ash device");
    let n = 4096;

    let mut g = c.benchmark_group("launch");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    let raw = raw_ash::RawDispatch::new(&vk, n).expect("raw dispatch");
    g.bench_function("raw_ash", |b| b.iter_custom(|i| total(i, || raw.run(&vk))));
    drop(raw);
    for (name, rt) in [("vkhmm_direct", &direct), ("vkhmm_staged", &staged)] {
        let mut l = measure::Launch::new(rt, n).expect("launch fixture");
        g.bench_function(name, |b| b.iter_custom(|i| total(i, || l.run())));
    }
    g.finish();

    let n = 64 * MIB / 4;
    let mut g = c.benchmark_group("saxpy_e2e");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .sampling_mode(criterion::SamplingMode::Flat)
        .throughput(Throughput::Bytes(3 * 64 * MIB as u64));
    let mut raw = raw_ash::RawSaxpy::new(&vk, n).expect("raw saxpy");
    let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
    let mut it = 0;
    g.bench_function("raw_ash", |b| {
        b.iter_custom(|i| {
            total(i, || {
                it += 1;
                measure::saxpy_fill(&mut x, &mut y, it);
                Ok(raw.run(&vk, &x, &y, 2.0)?.0)
            })
        })
    });
    drop(raw);
    for (name, rt) in [("vkhmm_direct", &direct), ("vkhmm_staged", &staged)] {
        let mut s = measure::Saxpy::new(rt, n).expect("saxpy fixture");
        g.bench_function(name, |b| b.iter_custom(|i| total(i, || s.run())));
        assert_eq!(
            s.sum,
            measure::saxpy_expect(n, 2.0, s.iteration()),
            "vkhmm saxpy result"
        );
    }
    g.finish();
}

/// Every bench of this file, with criterion's command-line options.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    launch(&mut c);
}

criterion_main!(benches);
