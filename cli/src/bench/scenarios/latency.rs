//! Latency: an isolated CPU touch against the raw userfaultfd round trip, and a resident
//! launch against a raw ash dispatch.

use std::time::{Duration, Instant};

use vkhmm::{Runtime, TransferPath};

use super::us;
use crate::bench::measure::{self, raw_ash, Budget, KIB};
use crate::bench::report::{Report, Row, Target, Unit};
use crate::bench::Progress;

/// Isolated single-page touch latency: vkhmm (4 KiB fixed chunks, both paths, as the default
/// policy serves a touch far from the last; and 64 KiB chunks, as it serves one near the
/// last) against the raw userfaultfd round trip.
pub(crate) fn touch(r: &mut Report, p: &Progress, quick: bool) -> anyhow::Result<()> {
    let samples = if quick { 500 } else { 2000 };
    let n = Budget {
        min_iters: samples,
        max_iters: samples,
        time: Duration::ZERO,
    };
    // Each case alternates one raw touch and one vkhmm touch, so both see the same load.
    let mut raw = measure::RawTouch::new(512)?;
    let cases = [
        ("4K chunk, Direct", TransferPath::Direct, 4 * KIB, true),
        ("4K chunk, Staged", TransferPath::Staged, 4 * KIB, true),
        ("64K chunk, Direct", TransferPath::Direct, 64 * KIB, false),
    ];
    for (i, (name, path, chunk, fixed)) in cases.into_iter().enumerate() {
        let rt = measure::runtime_chunked(path, chunk, fixed)?;
        let mut t = measure::TouchLatency::new(&rt, 512, chunk)?;
        let (s, raw_s) = measure::sample_blocks(n, 256, || t.run(), || raw.run())?;
        let (p50, p99) = (s.percentile(50.0), s.percentile(99.0));
        let (raw50, raw99) = (raw_s.percentile(50.0), raw_s.percentile(99.0));
        p.say(&format!(
            "isolated touch, {name}: p50 {:.1} us, p99 {:.1} us; raw userfaultfd p50 {:.1} us, \
             p99 {:.1} us",
            us(p50),
            us(p99),
            us(raw50),
            us(raw99)
        ));
        let key = format!(
            "touch_{}_{}",
            chunk / KIB,
            format!("{path:?}").to_lowercase()
        );
        r.rows.push(Row {
            key: format!("{key}_p50"),
            figure: format!("isolated touch p50, {name}"),
            unit: Unit::Micros,
            vkhmm: us(p50),
            baseline: "raw uffd p50".into(),
            base: Some(us(raw50)),
            target: (i == 0).then_some(Target::AtMost(2.0)),
            note: format!(
                "p5 {:.1} vs {:.1} us",
                us(s.percentile(5.0)),
                us(raw_s.percentile(5.0))
            ),
        });
        r.rows.push(Row {
            key: format!("{key}_p99"),
            figure: format!("isolated touch p99, {name}"),
            unit: Unit::Micros,
            vkhmm: us(p99),
            baseline: "raw uffd p99".into(),
            base: Some(us(raw99)),
            target: None,
            note: String::new(),
        });
        if i == 0 {
            r.extra.push(("raw_uffd_p50_us".into(), us(raw50)));
            r.extra.push(("raw_uffd_p99_us".into(), us(raw99)));
        }
    }
    drop(raw);
    // Where the handler runs decides the round trip on a VM: the same CPU as the toucher
    // (a context switch) or the other one (an IPI to an idle vCPU). Pin both to show it.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let old = measure::raw_uffd::pin_current_thread(Some(0))?;
        for (name, cpu) in [("same_cpu", 0), ("other_cpu", 1)] {
            let mut pinned = measure::RawTouch::with_handler_cpu(512, Some(cpu))?;
            let s = measure::sample(n, || pinned.run())?;
            r.extra
                .push((format!("raw_uffd_handler_{name}_p50_us"), us(s.median())));
            r.extra.push((
                format!("raw_uffd_handler_{name}_p99_us"),
                us(s.percentile(99.0)),
            ));
            p.say(&format!(
                "raw userfaultfd, handler pinned to the {} CPU: p50 {:.1} us, p99 {:.1} us",
                name.replace("_cpu", ""),
                us(s.median()),
                us(s.percentile(99.0))
            ));
        }
        measure::raw_uffd::restore_affinity(&old);
    }
    Ok(())
}

/// Launch overhead with everything resident vs a raw ash dispatch of the same SPIR-V.
pub(crate) fn launch(
    r: &mut Report,
    p: &Progress,
    quick: bool,
    direct: &Runtime,
    staged: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let n = 4096; // 16 KiB per buffer: the kernel itself is a few microseconds
    let iters = if quick { 100 } else { 400 };
    let b = Budget {
        min_iters: iters,
        max_iters: iters,
        time: Duration::ZERO,
    };
    let raw = raw_ash::RawDispatch::new(vk, n)?;
    // What one read of /proc/self/maps costs in this process (the launch path reads it;
    // see docs/performance.md).
    let maps = measure::sample(Budget::QUICK, || {
        let t = Instant::now();
        let text = std::fs::read_to_string("/proc/self/maps")?;
        std::hint::black_box(text);
        Ok(t.elapsed())
    })?;
    r.extra
        .push(("proc_self_maps_read_us".into(), us(maps.median())));
    let lines = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    r.extra.push(("proc_self_maps_lines".into(), lines as f64));
    for (path, rt) in [("Direct", direct), ("Staged", staged)] {
        let mut l = measure::Launch::new(rt, n)?;
        let moved0 = l.moved();
        let (s, raw_s) = measure::sample_pair(b, || l.run(), || raw.run(vk))?;
        let moved = l.moved() - moved0;
        let v = us(s.median());
        let raw50 = us(raw_s.median());
        r.extra.push((
            format!("raw_ash_dispatch_p50_us_vs_{}", path.to_lowercase()),
            raw50,
        ));
        p.say(&format!(
            "resident launch ({path}): p50 {v:.1} us, raw ash dispatch {raw50:.1} us; \
             {moved} bytes moved while sampling"
        ));
        r.rows.push(Row {
            key: format!("launch_resident_{}", path.to_lowercase()),
            figure: format!("resident launch, saxpy 2x16 KiB, {path}"),
            unit: Unit::Micros,
            vkhmm: v,
            baseline: "raw ash dispatch".into(),
            base: Some(raw50),
            target: (path == "Direct").then_some(Target::AtMost(1.2)),
            note: format!("p99 {:.1} us; {moved} B moved", us(s.percentile(99.0))),
        });
    }
    drop(raw);
    Ok(())
}
