//! Criterion: CPU fault-back of a device-resident buffer, and isolated touch latency.
//!
//! - `faultback/{seq,random}/<chunk>`: one load per page of a buffer that was just
//!   prefetched to the device, sequential or random page order, by chunk policy (4K, 64K,
//!   2M fixed, and the default adaptive 64K → 2M), throughput in bytes;
//! - `touch/...`: one isolated 4 KiB touch (vkhmm with 4 KiB fixed chunks and with the
//!   default 64 KiB chunk) against a raw userfaultfd round trip with a trivial handler.
//!   Criterion reports the mean; p50 and p99 of 2000 single touches are printed after.
//!
//! Sizes: `VKHMM_BENCH_SIZES` (default 4K,64K,1M,16M,64M,256M; fault-back uses ≥ 64K).

#[path = "measure/mod.rs"]
mod measure;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use measure::{size_name, Budget, Order, KIB, MIB};
use std::time::Duration;
use vkhmm::TransferPath;

fn total(iters: u64, mut f: impl FnMut() -> anyhow::Result<Duration>) -> Duration {
    (0..iters).map(|_| f().expect("bench run")).sum()
}

fn faultback(c: &mut Criterion) {
    let sizes: Vec<usize> = measure::bench_sizes()
        .into_iter()
        .filter(|&s| s >= 64 * KIB)
        .collect();
    let policies = [
        ("4K", 4 * KIB, true),
        ("64K", 64 * KIB, true),
        ("2M", 2 * MIB, true),
        ("default", 64 * KIB, false),
    ];
    for (name, chunk, fixed) in policies {
        let rt = measure::runtime_chunked(TransferPath::Direct, chunk, fixed).expect("runtime");
        for order in [Order::Sequential, Order::Random] {
            let o = if order == Order::Sequential {
                "seq"
            } else {
                "random"
            };
            let mut g = c.benchmark_group(format!("faultback/{o}/{name}"));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(2))
                .sampling_mode(criterion::SamplingMode::Flat);
            for &size in &sizes {
                let mut f = measure::FaultBack::new(&rt, size, order).expect("buffer");
                g.throughput(Throughput::Bytes(size as u64));
                g.bench_function(BenchmarkId::from_parameter(size_name(size)), |b| {
                    b.iter_custom(|n| total(n, || f.run()))
                });
                assert!(f.verify(), "fault-back lost data");
            }
            g.finish();
        }
    }
}

fn touch(c: &mut Criterion) {
    let mut g = c.benchmark_group("touch");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    let pct = Budget {
        min_iters: 2000,
        max_iters: 2000,
        time: Duration::ZERO,
    };
    let mut raw = measure::RawTouch::new(512).expect("raw userfaultfd");
    g.bench_function("raw_uffd_4K", |b| b.iter_custom(|n| total(n, || raw.run())));
    let s = measure::sample(pct, || raw.run()).expect("raw touches");
    eprintln!(
        "touch/raw_uffd_4K: p50 {:?}, p99 {:?}",
        s.percentile(50.0),
        s.percentile(99.0)
    );
    drop(raw);
    for (name, path, chunk, fixed) in [
        ("vkhmm_4K_chunk_direct", TransferPath::Direct, 4 * KIB, true),
        ("vkhmm_4K_chunk_staged", TransferPath::Staged, 4 * KIB, true),
        (
            "vkhmm_default_chunk_direct",
            TransferPath::Direct,
            64 * KIB,
            false,
        ),
    ] {
        let rt = measure::runtime_chunked(path, chunk, fixed).expect("runtime");
        let mut t = measure::TouchLatency::new(&rt, 512, chunk).expect("buffer");
        g.bench_function(name, |b| b.iter_custom(|n| total(n, || t.run())));
        let s = measure::sample(pct, || t.run()).expect("touches");
        eprintln!(
            "touch/{name}: p50 {:?}, p99 {:?}",
            s.percentile(50.0),
            s.percentile(99.0)
        );
    }
    g.finish();
}

/// Every bench of this file, with criterion's command-line options.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    faultback(&mut c);
    touch(&mut c);
}

criterion_main!(benches);
