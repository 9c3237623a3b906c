//! Criterion: bandwidth against transfer size (4 KiB … 256 MiB), side by side.
//!
//! - `memcpy`: one thread, the physical limit;
//! - `prefetch_to_device/{direct,staged}` and `prefetch_to_host/{direct,staged}`:
//!   `Runtime::prefetch` of a page-aligned buffer the CPU has just written (to device) or
//!   that is device-resident (to host);
//! - `ash_staged/{upload,download}`: a hand-written staging buffer + `vkCmdCopyBuffer`.
//!
//! Sizes: `VKHMM_BENCH_SIZES=4K,1M,64M` (default 4K,64K,1M,16M,64M,256M). The wgpu baseline
//! is measured by `vkhmm bench` (it lives in its own workspace member).

#[path = "measure/mod.rs"]
mod measure;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use measure::{raw_ash, size_name};
use std::time::Duration;
use vkhmm::TransferPath;

/// Sums `iters` timed runs of `f` (criterion's `iter_custom`).
fn total(iters: u64, mut f: impl FnMut() -> anyhow::Result<Duration>) -> Duration {
    (0..iters).map(|_| f().expect("bench run")).sum()
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(criterion::SamplingMode::Flat);
    g
}

fn transfer(c: &mut Criterion) {
    let sizes = measure::bench_sizes();
    let direct = measure::runtime(TransferPath::Direct).expect("Direct runtime");
    let staged = measure::runtime(TransferPath::Staged).expect("Staged runtime");
    let vk = raw_ash::Vk::new(Some(&direct.device_info().name)).expect("raw ash device");

    let mut g = group(c, "memcpy");
    for &size in &sizes {
        let mut m = measure::Memcpy::new(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size_name(size)), |b| {
            b.iter_custom(|n| total(n, || m.run()))
        });
    }
    g.finish();

    for (path, rt) in [("direct", &direct), ("staged", &staged)] {
        let mut g = group(c, &format!("prefetch_to_device/{path}"));
        for &size in &sizes {
            let mut f = measure::PrefetchDevice::new(rt, size).expect("buffer");
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::from_parameter(size_name(size)), |b| {
                b.iter_custom(|n| total(n, || f.run()))
            });
        }
        g.finish();
        let mut g = group(c, &format!("prefetch_to_host/{path}"));
        for &size in &sizes {
            let mut f = measure::PrefetchHost::new(rt, size).expect("buffer");
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::from_parameter(size_name(size)), |b| {
                b.iter_custom(|n| total(n, || f.run()))
            });
            assert!(f.verify(), "prefetch to host lost data");
        }
        g.finish();
    }

    for dir in ["upload", "download"] {
        let mut g = group(c, &format!("ash_staged/{dir}"));
        for &size in &sizes {
            let mut s = raw_ash::StagedCopy::new(&vk, size).expect("ash buffers");
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::from_parameter(size_name(size)), |b| {
                b.iter_custom(|n| {
                    total(n, || {
                        if dir == "upload" {
                            s.upload(&vk)
                        } else {
                            s.download(&vk)
                        }
                    })
                })
            });
        }
        g.finish();
    }
}

/// Every bench of this file, with criterion's command-line options.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    transfer(&mut c);
}

criterion_main!(benches);
