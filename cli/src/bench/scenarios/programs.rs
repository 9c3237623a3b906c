//! Whole programs: saxpy end to end against hand-written ash, host memory after a
//! migration, saxpy at twice the budget, and a launch-and-read loop with thrash detection
//! on and off.

use std::time::Duration;

use vkhmm::{Runtime, TransferPath};

use super::us;
use crate::bench::measure::{self, raw_ash, size_name, Budget, MIB};
use crate::bench::report::{Report, Row, Target, Unit};
use crate::bench::Progress;

/// End-to-end saxpy: vkhmm on both paths, each alternating with hand-written ash (wgpu
/// comes later, from its own process).
pub(crate) fn saxpy(
    r: &mut Report,
    p: &Progress,
    quick: bool,
    n: usize,
    direct: &Runtime,
    staged: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let b = Budget {
        min_iters: if quick { 2 } else { 5 },
        max_iters: if quick { 2 } else { 8 },
        time: Duration::from_secs(3),
    };
    let mut raw = raw_ash::RawSaxpy::new(vk, n)?;
    let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
    let mut it = 0;
    for (path, rt) in [("Direct", direct), ("Staged", staged)] {
        let mut s = measure::Saxpy::new(rt, n)?;
        let mut all = Vec::new();
        let mut raw_runs = Vec::new();
        let before = rt.stats();
        let (samples, raw_s) = measure::sample_pair(
            b,
            || {
                let d = s.run()?;
                anyhow::ensure!(
                    s.sum == measure::saxpy_expect(n, 2.0, s.iteration()),
                    "vkhmm saxpy: wrong sum"
                );
                all.push((d, s.parts.to_vec()));
                Ok(d)
            },
            || {
                it += 1;
                measure::saxpy_fill(&mut x, &mut y, it);
                let (d, sum) = raw.run(vk, &x, &y, 2.0)?;
                anyhow::ensure!(
                    sum == measure::saxpy_expect(n, 2.0, it),
                    "ash saxpy: wrong sum"
                );
                raw_runs.push((d, raw.parts.to_vec()));
                Ok(d)
            },
        )?;
        let stats = rt.stats() - before;
        let runs = all.len() as f64;
        let parts = median_parts(all);
        let raw_parts = median_parts(raw_runs);
        let ms = samples.median().as_secs_f64() * 1e3;
        let raw_ms = raw_s.median().as_secs_f64() * 1e3;
        let lower = path.to_lowercase();
        let kernel = stats.kernel_time.as_secs_f64() / runs * 1e3;
        let faults = stats.cpu_faults as f64 / runs;
        for (k, v) in [
            ("launch_ms", parts[0] * 1e3),
            ("read_ms", parts[1] * 1e3),
            ("kernel_ms", kernel),
            ("faults_per_run", faults),
            ("ms", ms),
        ] {
            r.extra.push((format!("vkhmm_saxpy_{lower}_{k}"), v));
        }
        for (k, v) in [
            ("memcpy_to_staging_ms", raw_parts[0] * 1e3),
            ("submit_copy_kernel_copy_ms", raw_parts[1] * 1e3),
            ("cpu_sum_ms", raw_parts[2] * 1e3),
            ("ms", raw_ms),
        ] {
            r.extra.push((format!("ash_saxpy_{k}_beside_{lower}"), v));
        }
        p.say(&format!(
            "saxpy 2x{}: vkhmm {path} {ms:.1} ms (launch {:.1}, CPU read {:.1}; kernel {kernel:.1}; \
             {faults:.0} faults per run incl. refill); hand-written ash {raw_ms:.1} ms (staging \
             {:.1}, submit {:.1}, sum {:.1})",
            size_name(n * 4),
            parts[0] * 1e3,
            parts[1] * 1e3,
            raw_parts[0] * 1e3,
            raw_parts[1] * 1e3,
            raw_parts[2] * 1e3,
        ));
        r.rows.push(Row {
            key: format!("saxpy_{lower}_vs_ash"),
            figure: format!("saxpy 2x{} end to end, {path}", size_name(n * 4)),
            unit: Unit::Millis,
            vkhmm: ms,
            baseline: "hand-written ash".into(),
            base: Some(raw_ms),
            target: (path == "Direct").then_some(Target::AtMost(1.2)),
            note: String::new(),
        });
    }
    Ok(())
}

/// The size the resident-memory target is stated at.
const RSS_SIZE: usize = 256 * MIB;

/// Resident host memory of a written 256 MiB `Vec` before and after `prefetch(Device)`, on
/// both paths (one run each: the figure is a page count, not a time).
pub(crate) fn resident(
    r: &mut Report,
    p: &Progress,
    direct: &Runtime,
    staged: &Runtime,
) -> anyhow::Result<()> {
    for (path, rt) in [("Direct", direct), ("Staged", staged)] {
        let mut m = measure::ResidentAfterMigrate::new(rt, RSS_SIZE);
        let d = m.run()?;
        let (before, after) = (m.before as f64 / MIB as f64, m.after as f64 / MIB as f64);
        anyhow::ensure!(m.verify(), "resident-memory run ({path}) lost data");
        p.say(&format!(
            "resident memory of a written 256 MiB Vec, {path}: {before:.1} MiB before, \
             {after:.2} MiB after prefetch(Device) ({:.0} ms)",
            d.as_secs_f64() * 1e3
        ));
        r.rows.push(Row {
            key: format!("resident_after_migrate_{}_256mib", path.to_lowercase()),
            figure: format!("host memory after migrating 256 MiB written, {path}"),
            unit: Unit::MiB,
            vkhmm: after,
            baseline: "before migration".into(),
            base: Some(before),
            target: (path == "Direct").then_some(Target::AtMost(0.05)),
            note: "pagemap of the buffer".into(),
        });
    }
    Ok(())
}

/// Saxpy over a working set of twice the device budget against the same program with a
/// budget that holds it: same data, same slices, runs alternating.
pub(crate) fn oversub(r: &mut Report, p: &Progress, quick: bool) -> anyhow::Result<()> {
    let b = Budget {
        min_iters: if quick { 2 } else { 5 },
        max_iters: if quick { 2 } else { 10 },
        time: Duration::from_secs(3),
    };
    let working_set = if quick { 32 * MIB } else { 64 * MIB };
    let n = working_set / 2 / 4; // x and y, f32
    for path in [TransferPath::Direct, TransferPath::Staged] {
        let fits = Runtime::builder()
            .transfer(path)
            .budget(2 * working_set as u64)
            .build()?;
        let over = Runtime::builder()
            .transfer(path)
            .budget(working_set as u64 / 2)
            .build()?;
        let mut f = measure::OversubSaxpy::new(&fits, n)?;
        let mut o = measure::OversubSaxpy::new(&over, n)?;
        let before = over.stats();
        let (fs, os) = measure::sample_pair(
            b,
            || {
                let d = f.run()?;
                anyhow::ensure!(f.sum == f.expect(), "fitting saxpy: wrong sum");
                Ok(d)
            },
            || {
                let d = o.run()?;
                anyhow::ensure!(o.sum == o.expect(), "oversubscribed saxpy: wrong sum");
                Ok(d)
            },
        )?;
        let evictions = (over.stats() - before).evictions;
        anyhow::ensure!(evictions > 0, "oversubscribed saxpy evicted nothing");
        let (fms, oms) = (
            fs.median().as_secs_f64() * 1e3,
            os.median().as_secs_f64() * 1e3,
        );
        p.say(&format!(
            "saxpy over {} at 2x the budget, {path:?}: {oms:.1} ms ({evictions} evictions) vs \
             {fms:.1} ms with a budget that holds it",
            size_name(working_set)
        ));
        r.rows.push(Row {
            key: format!("saxpy_oversubscribed_{path:?}_vs_fitting").to_lowercase(),
            figure: format!(
                "saxpy {} at 2x budget, 2 passes, {path:?}",
                size_name(working_set)
            ),
            unit: Unit::Millis,
            vkhmm: oms,
            baseline: "budget holds it".into(),
            base: Some(fms),
            target: (path == TransferPath::Direct).then_some(Target::AtMost(3.0)),
            note: format!("{evictions} evictions"),
        });
    }
    Ok(())
}

/// A launch-and-read loop on one 4 MiB buffer with thrash detection on (settled in place
/// after three rounds) against the same loop with it off (migrated every round).
pub(crate) fn thrash(r: &mut Report, p: &Progress, quick: bool) -> anyhow::Result<()> {
    let b = Budget {
        min_iters: if quick { 10 } else { 50 },
        max_iters: if quick { 10 } else { 200 },
        time: Duration::from_secs(2),
    };
    let n = 4 * MIB / 4;
    for path in [TransferPath::Direct, TransferPath::Staged] {
        let on = Runtime::builder().transfer(path).build()?;
        let off = Runtime::builder()
            .transfer(path)
            .thrash_detection(false)
            .build()?;
        let mut a = measure::PingPong::new(&on, n)?;
        let mut z = measure::PingPong::new(&off, n)?;
        // Past the first rounds, where detection is still watching.
        for _ in 0..4 {
            a.run()?;
        }
        let (sa, sz) = measure::sample_pair(
            b,
            || {
                let d = a.run()?;
                anyhow::ensure!(a.sum == a.expect(), "ping-pong (detection on): wrong sum");
                Ok(d)
            },
            || {
                let d = z.run()?;
                anyhow::ensure!(z.sum == z.expect(), "ping-pong (detection off): wrong sum");
                Ok(d)
            },
        )?;
        let settled = on.stats().thrash_settled;
        anyhow::ensure!(
            settled == 1,
            "ping-pong: {settled} bindings settled, expected 1"
        );
        let (us_on, us_off) = (us(sa.median()), us(sz.median()));
        p.say(&format!(
            "launch + CPU read of 4 MiB, {path:?}: {us_on:.0} us settled in place vs {us_off:.0} \
             us migrated each round"
        ));
        r.rows.push(Row {
            key: format!("pingpong_{path:?}_thrash_on_vs_off").to_lowercase(),
            figure: format!("launch + CPU read, 4 MiB, {path:?}, thrash detection"),
            unit: Unit::Micros,
            vkhmm: us_on,
            baseline: "detection off".into(),
            base: Some(us_off),
            target: None,
            note: "settled in place after 3 rounds".into(),
        });
    }
    Ok(())
}

/// The parts of the run whose total is the median (the warm-up run, first, is left out).
fn median_parts(mut runs: Vec<(Duration, Vec<f64>)>) -> Vec<f64> {
    if runs.len() > 1 {
        runs.remove(0);
    }
    runs.sort_by_key(|(d, _)| *d);
    runs.get(runs.len().div_ceil(2).max(1) - 1)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| vec![0.0; 3])
}
