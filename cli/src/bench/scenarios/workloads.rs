//! Ordinary programs against hand-written ash (`--only workloads`): four workloads on plain
//! `Vec`s, each alternating run by run with its twin written by hand with ash on the same
//! transfer path; then the micro-patterns such programs meet, each beside the same work on
//! plain memory (`benches/measure/workloads.rs` has both sides of each), and beside two of
//! them the kernel primitive that bounds them (`benches/measure/bounds.rs`).

use std::time::{Duration, Instant};

use vkhmm::{Runtime, Stats, TransferPath};

use crate::bench::measure::bounds::{self, Lift};
use crate::bench::measure::workloads::{self as w, Parts, PerRun, EDITS, RESIDENT_STEPS};
use crate::bench::measure::{self, gbps, raw_ash, size_name, Budget, Samples, MIB};
use crate::bench::report::{Report, Row, Target, Unit};
use crate::bench::Progress;

/// How far vkhmm may be from the twin of each workload (time over time).
const WORKLOAD_TARGET: f64 = 1.5;

/// The sizes of one run (smaller under `--quick` where the figure keeps its meaning).
struct Sizes {
    /// Bytes of each of `x` and `y` (fresh, iterate).
    saxpy: usize,
    /// Bytes of the resident state.
    resident: usize,
    /// Bytes of the edited buffer.
    edits: usize,
    /// Bytes of each micro-pattern's buffer.
    micro: usize,
}

/// The sampling of one figure.
struct Budgets {
    step: Budget,
    program: Budget,
    micro: Budget,
}

/// Every workload on both paths, then every micro-pattern on both paths.
pub(crate) fn workloads(
    r: &mut Report,
    p: &Progress,
    quick: bool,
    direct: &Runtime,
    staged: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let s = if quick {
        Sizes {
            saxpy: 16 * MIB,
            resident: 16 * MIB,
            edits: 64 * MIB,
            micro: 64 * MIB,
        }
    } else {
        Sizes {
            saxpy: 16 * MIB,
            resident: 64 * MIB,
            edits: 64 * MIB,
            micro: 64 * MIB,
        }
    };
    let budget = |min_iters, max_iters, secs| Budget {
        min_iters,
        max_iters,
        time: Duration::from_secs(secs),
    };
    let b = if quick {
        Budgets {
            step: budget(3, 3, 0),
            program: budget(2, 2, 0),
            micro: budget(3, 3, 0),
        }
    } else {
        Budgets {
            step: budget(9, 25, 3),
            program: budget(3, 5, 4),
            micro: budget(7, 15, 2),
        }
    };
    let paths = [
        (TransferPath::Direct, direct),
        (TransferPath::Staged, staged),
    ];
    for (path, rt) in paths {
        fresh(r, p, b.step, s.saxpy, path, rt, vk)?;
    }
    for (path, rt) in paths {
        iterate(r, p, b.step, s.saxpy, path, rt, vk)?;
    }
    for (path, rt) in paths {
        resident(r, p, b.program, s.resident, path, rt, vk)?;
    }
    for (path, rt) in paths {
        edits(r, p, b.step, s.edits, path, rt, vk)?;
    }
    for (path, rt) in paths {
        rewrite(r, p, b.micro, s.micro, path, rt)?;
    }
    rewrite_bound(r, p, b.micro, s.micro)?;
    for (path, rt) in paths {
        read(r, p, b.micro, s.micro, path, rt)?;
    }
    read_bound(r, p, b.micro, s.micro)?;
    for (path, rt) in paths {
        prefetch(r, p, b.micro, s.micro, path, rt)?;
    }
    for (path, rt) in paths {
        zero(r, p, b.micro, s.micro, path, rt)?;
    }
    Ok(())
}

/// The medians of one workload on one path, the phases of the median runs, and what vkhmm
/// moved per run.
struct Pair {
    ms: f64,
    twin_ms: f64,
    parts: Parts,
    twin_parts: Parts,
    per: PerRun,
}

/// Samples the vkhmm side `f` and the twin `g` alternately (each returns its time and
/// phases); `rt`'s stats over `f`'s timed runs (the warm-up left out) give the figures per
/// run.
fn pair(
    rt: &Runtime,
    b: Budget,
    mut f: impl FnMut() -> anyhow::Result<(Duration, Parts)>,
    mut g: impl FnMut() -> anyhow::Result<(Duration, Parts)>,
) -> anyhow::Result<Pair> {
    let mut warm: Option<Stats> = None;
    let (mut runs, mut twin_runs) = (Vec::new(), Vec::new());
    let (s, t) = measure::sample_pair(
        b,
        || {
            let (d, parts) = f()?;
            match warm {
                None => warm = Some(rt.stats()),
                Some(_) => runs.push((d, parts)),
            }
            Ok(d)
        },
        || {
            let (d, parts) = g()?;
            twin_runs.push((d, parts));
            Ok(d)
        },
    )?;
    let per = PerRun::new(rt.stats() - warm.unwrap_or_default(), runs.len());
    twin_runs.remove(0);
    Ok(Pair {
        ms: ms(s.median()),
        twin_ms: ms(t.median()),
        parts: median_parts(runs),
        twin_parts: median_parts(twin_runs),
        per,
    })
}

/// The phases of the median run (the median as [`measure::Samples::median`] picks it).
fn median_parts(mut runs: Vec<(Duration, Parts)>) -> Parts {
    runs.sort_by_key(|(d, _)| *d);
    runs.get(runs.len().div_ceil(2).max(1) - 1)
        .map_or([0.0; 4], |(_, p)| *p)
}

/// `d` in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// MiB of `bytes`.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// `bytes` for a person: `7.8 KiB`, `32.0 MiB`.
fn human(bytes: f64) -> String {
    if bytes > 0.0 && bytes < MIB as f64 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / MIB as f64)
    }
}

/// Milliseconds of `parts`, by phase: `write 1.0, device 2.0, read 3.0, free 0.0 ms`.
fn phases(parts: &Parts) -> String {
    format!(
        "write {:.1}, device {:.1}, read {:.1}, free {:.1} ms",
        parts[0] * 1e3,
        parts[1] * 1e3,
        parts[2] * 1e3,
        parts[3] * 1e3
    )
}

/// The row, the sub-measurements and the progress line of one workload on one path.
fn push_workload(
    r: &mut Report,
    p: &Progress,
    (key, figure): (&str, String),
    path: TransferPath,
    pair: &Pair,
    twin_copied: u64,
) {
    let lower = format!("{path:?}").to_lowercase();
    let per = &pair.per;
    let twin = human(twin_copied as f64);
    p.say(&format!(
        "workload {figure}, {path:?}: vkhmm {:.1} ms ({}), hand-written ash {:.1} ms ({}), \
         {:.2}x; per run {:.1} CPU faults, {:.1} MiB to device, {:.1} MiB home, {:.1} MiB \
         zero-filled, kernels {:.1} ms; ash copies {twin}",
        pair.ms,
        phases(&pair.parts),
        pair.twin_ms,
        phases(&pair.twin_parts),
        pair.ms / pair.twin_ms,
        per.faults,
        per.to_device_mib,
        per.to_host_mib,
        per.zero_filled_mib,
        per.kernel_ms,
    ));
    let [write, device, read, free] = pair.parts.map(|s| s * 1e3);
    let [twin_write, twin_device, twin_read, _] = pair.twin_parts.map(|s| s * 1e3);
    for (k, v) in [
        ("faults_per_run", per.faults),
        ("to_device_mib_per_run", per.to_device_mib),
        ("to_host_mib_per_run", per.to_host_mib),
        ("zero_filled_mib_per_run", per.zero_filled_mib),
        ("kernel_ms_per_run", per.kernel_ms),
        ("write_ms", write),
        ("device_ms", device),
        ("read_ms", read),
        ("free_ms", free),
        ("ash_write_ms", twin_write),
        ("ash_device_ms", twin_device),
        ("ash_read_ms", twin_read),
        ("ash_copied_mib_per_run", mib(twin_copied)),
    ] {
        r.extra.push((format!("workload_{key}_{lower}_{k}"), v));
    }
    r.rows.push(Row {
        key: format!("workload_{key}_{lower}_vs_ash"),
        figure: format!("workload {figure}, {path:?}"),
        unit: Unit::Millis,
        vkhmm: pair.ms,
        baseline: "hand-written ash".into(),
        base: Some(pair.twin_ms),
        target: Some(Target::AtMost(WORKLOAD_TARGET)),
        note: format!(
            "per run {:.0} faults, {:.1}+{:.1} MiB to dev+home; ash copies {twin}",
            per.faults, per.to_device_mib, per.to_host_mib
        ),
    });
}

/// Fresh `x` and `y` every step.
fn fresh(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut v = w::Fresh::new(rt, n)?;
    let mut t = w::FreshTwin::new(vk, n, path)?;
    // The floor: the twin's step plus what the fresh `Vec`s cost on the host, with the two
    // copies any migration of them makes (x out, the result into y's fresh pages). Sampled
    // beside the twin, run by run, so that it meets the allocator in the state the vkhmm
    // runs meet it (whether a freed 16 MiB comes back as recycled pages or as fresh ones).
    let mut vecs = w::FreshVecs::new(n);
    let mut host = Vec::new();
    let pair = pair(
        rt,
        b,
        || Ok((v.run()?, v.parts)),
        || {
            let twin = t.run(vk)?;
            host.push(ms(vecs.run()?));
            Ok((twin, t.parts))
        },
    )?;
    let figure = format!("fresh, 2x{}", size_name(bytes));
    push_workload(r, p, ("fresh", figure), path, &pair, t.copied);
    let host = median_after_warmup(&host);
    // The fresh `Vec`s' own fill of x and read of y replace the twin's, in its mapped or
    // staging memory.
    let [twin_write, _, twin_read, _] = pair.twin_parts.map(|s| s * 1e3);
    let lower = format!("{path:?}").to_lowercase();
    push_bound(
        r,
        p,
        &format!("fresh_{lower}_host_vecs"),
        format!(
            "bound: fresh twin + the fresh Vecs and their copies, 2x{}, {path:?}",
            size_name(bytes)
        ),
        ("hand-written ash", pair.twin_ms),
        pair.twin_ms - twin_write - twin_read + host,
        format!(
            "the twin's step less its fill of x and read of y ({:.1} ms), plus: allocate, \
             fill and copy out x, copy a result into y, read y, free: {host:.1} ms",
            twin_write + twin_read
        ),
    );
    Ok(())
}

/// `x` and `y` reused across steps.
fn iterate(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut v = w::Iterate::new(rt, n)?;
    let mut t = w::IterateTwin::new(vk, n, path)?;
    let pair = pair(
        rt,
        b,
        || Ok((v.run()?, v.parts)),
        || Ok((t.run(vk)?, t.parts)),
    )?;
    let figure = format!("iterate, 2x{}", size_name(bytes));
    push_workload(r, p, ("iterate", figure), path, &pair, t.copied);
    Ok(())
}

/// A state updated in place for [`RESIDENT_STEPS`] steps (one run is the whole program).
fn resident(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut v = w::Resident::new(rt, n)?;
    let mut t = w::ResidentTwin::new(vk, n, path)?;
    let pair = pair(
        rt,
        b,
        || Ok((v.run()?, v.parts)),
        || Ok((t.run(vk)?, t.parts)),
    )?;
    let figure = format!("resident, {} x {RESIDENT_STEPS} steps", size_name(bytes));
    push_workload(r, p, ("resident", figure), path, &pair, t.copied);
    Ok(())
}

/// [`EDITS`] scattered writes and reads around a whole-buffer kernel.
fn edits(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut v = w::Edits::new(rt, n)?;
    let mut t = w::EditsTwin::new(vk, n, path)?;
    let pair = pair(
        rt,
        b,
        || Ok((v.run()?, v.parts)),
        || Ok((t.run(vk)?, t.parts)),
    )?;
    anyhow::ensure!(
        !v.sums.is_empty() && v.sums == t.sums,
        "edits: vkhmm and hand-written ash read different values"
    );
    let figure = format!("edits, {}, {EDITS} edits", size_name(bytes));
    push_workload(r, p, ("edits", figure), path, &pair, t.copied);
    edits_bound(r, p, bytes, path, pair.twin_ms)
}

/// The floor under [`edits`]: its twin's step plus the CPU faults vkhmm must take per step
/// (one per scattered write, one per scattered read, [`EDITS`] each), each served by a
/// trivial userfaultfd handler that spins on the fd (`raw_uffd`: read the message, copy one
/// page, wake) on a mapping of the same size.
fn edits_bound(
    r: &mut Report,
    p: &Progress,
    bytes: usize,
    path: TransferPath,
    twin_ms: f64,
) -> anyhow::Result<()> {
    use measure::raw_uffd::{RawUffd, Wait};
    let raw = RawUffd::waiting(bytes / measure::PAGE, Wait::Spin)?;
    let faults = 2 * EDITS;
    let mut runs = Vec::new();
    for _ in 0..7 {
        raw.reset()?;
        // Scattered like the workload's edits: a stride no smaller than the read-ahead.
        let total: Duration = (0..faults).map(|k| raw.touch(k * 7919 % raw.pages())).sum();
        runs.push(ms(total));
    }
    let raw_ms = median_after_warmup(&runs);
    let lower = format!("{path:?}").to_lowercase();
    push_bound(
        r,
        p,
        &format!("edits_{lower}_raw_faults"),
        format!(
            "bound: edits twin + {faults} faults on a spinning raw handler, {}, {path:?}",
            size_name(bytes)
        ),
        ("hand-written ash", twin_ms),
        twin_ms + raw_ms,
        format!(
            "{faults} faults {raw_ms:.1} ms, {:.1} us each",
            raw_ms * 1000.0 / faults as f64
        ),
    );
    Ok(())
}

/// A micro-pattern's row beside plain memory.
struct Micro<'a> {
    key: &'a str,
    figure: String,
    baseline: &'a str,
    unit: Unit,
    vkhmm: f64,
    base: f64,
    target: Target,
    note: String,
}

fn push_micro(r: &mut Report, p: &Progress, path: TransferPath, m: Micro<'_>) {
    let lower = format!("{path:?}").to_lowercase();
    let unit = match m.unit {
        Unit::GBps => "GB/s",
        Unit::MiB => "MiB",
        _ => "ms",
    };
    p.say(&format!(
        "{}, {path:?}: {:.2} {unit} vs {} {:.2} {unit}; {}",
        m.figure, m.vkhmm, m.baseline, m.base, m.note
    ));
    r.rows.push(Row {
        key: format!("micro_{}_{lower}", m.key),
        figure: format!("{}, {path:?}", m.figure),
        unit: m.unit,
        vkhmm: m.vkhmm,
        baseline: m.baseline.into(),
        base: Some(m.base),
        target: Some(m.target),
        note: m.note,
    });
}

/// The sub-measurement `micro_{key}_{path}_{what}`.
fn sub(r: &mut Report, key: &str, path: TransferPath, what: &str, v: f64) {
    let lower = format!("{path:?}").to_lowercase();
    r.extra.push((format!("micro_{key}_{lower}_{what}"), v));
}

/// The CPU rewrites a buffer a kernel has just read, against the same rewrite of a plain
/// `Vec`.
fn rewrite(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    for every_step in [false, true] {
        let mut v = w::RewriteShared::new(rt, n, every_step)?;
        let mut plain = w::Plain::new(n);
        let (mut faults, mut shared) = (Vec::new(), Vec::new());
        let (s, t) = measure::sample_pair(
            b,
            || {
                let d = v.run()?;
                faults.push(v.delta.cpu_faults);
                shared.push(v.shared as u64);
                Ok(d)
            },
            || plain.rewrite(),
        )?;
        let (faults, shared) = (median_u64(&faults), median_u64(&shared));
        let (key, figure) = if every_step {
            ("rewrite_every_step", "every step, the same buffer")
        } else {
            ("rewrite_shared", "first rewrite (Shared)")
        };
        sub(r, key, path, "faults", faults as f64);
        push_micro(
            r,
            p,
            path,
            Micro {
                key,
                figure: format!("CPU rewrite of kernel-read {}, {figure}", size_name(bytes)),
                baseline: "plain Vec",
                unit: Unit::Millis,
                vkhmm: ms(s.median()),
                base: ms(t.median()),
                target: Target::AtMost(1.5),
                note: format!("{faults} faults, {shared} pages Shared before"),
            },
        );
    }
    Ok(())
}

/// The CPU sums a kernel's result, against the same sum of a resident `Vec`.
fn read(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut v = w::ReadResult::new(rt, n)?;
    let mut plain = w::Plain::new(n);
    let mut deltas = Vec::new();
    let (s, t) = measure::sample_pair(
        b,
        || {
            let d = v.run()?;
            deltas.push(v.delta);
            Ok(d)
        },
        || plain.read(),
    )?;
    let faults = median_u64(&deltas.iter().map(|d| d.cpu_faults).collect::<Vec<_>>());
    let home = mib(median_u64(
        &deltas.iter().map(|d| d.bytes_to_host).collect::<Vec<_>>(),
    ));
    sub(r, "read", path, "faults", faults as f64);
    sub(r, "read", path, "home_mib", home);
    push_micro(
        r,
        p,
        path,
        Micro {
            key: "read_result",
            figure: format!("CPU sum of a kernel's {} result", size_name(bytes)),
            baseline: "resident Vec",
            unit: Unit::Millis,
            vkhmm: ms(s.median()),
            base: ms(t.median()),
            target: Target::AtMost(3.0),
            note: format!("{faults} faults, {home:.1} MiB home"),
        },
    );
    Ok(())
}

/// Samples each of `fs` in turn, run by run, after one untimed warm-up run of each (as
/// [`measure::sample_pair`] does for two).
fn sample_each(
    b: Budget,
    fs: &mut [&mut dyn FnMut() -> anyhow::Result<Duration>],
) -> anyhow::Result<Vec<Samples>> {
    for f in fs.iter_mut() {
        f()?;
    }
    let start = Instant::now();
    let mut out = vec![Vec::new(); fs.len()];
    while out[0].len() < b.min_iters || (out[0].len() < b.max_iters && start.elapsed() < b.time) {
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            o.push(f()?);
        }
    }
    Ok(out.into_iter().map(Samples).collect())
}

/// A kernel bound's row: no vkhmm in it, no target, a ratio against the baseline of the
/// vkhmm row it bounds.
fn push_bound(
    r: &mut Report,
    p: &Progress,
    key: &str,
    figure: String,
    base: (&str, f64),
    v: f64,
    note: String,
) {
    p.say(&format!(
        "{figure}: {v:.2} ms vs {} {:.2} ms, {:.2}x; {note}",
        base.0,
        base.1,
        v / base.1
    ));
    r.rows.push(Row {
        key: format!("micro_bound_{key}"),
        figure,
        unit: Unit::Millis,
        vkhmm: v,
        baseline: base.0.into(),
        base: Some(base.1),
        target: None,
        note,
    });
}

/// The median of the timed runs' `values` (the warm-up run's, first, left out).
fn median_after_warmup(values: &[f64]) -> f64 {
    let mut v = values.get(1..).unwrap_or_default().to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().div_ceil(2).max(1) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// The kernel's floor under [`rewrite`]: lifting write protection from a filled mapping
/// (in one piece, in doubling pieces ahead of the writes, in doubling windows on write
/// faults), then the same rewrite, against the rewrite of a plain `Vec`.
fn rewrite_bound(r: &mut Report, p: &Progress, b: Budget, bytes: usize) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut plain = w::Plain::new(n);
    let lifts = [Lift::OnePiece, Lift::DoublingAhead, Lift::DoublingOnFault];
    let mut wp = lifts
        .iter()
        .map(|&l| bounds::WpLift::new(n, l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Per contender and run: (ioctl ms, clears, faults).
    let mut parts: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); wp.len()];
    let samples = {
        let mut fs: Vec<Box<dyn FnMut() -> anyhow::Result<Duration> + '_>> = wp
            .iter_mut()
            .zip(parts.iter_mut())
            .map(|(x, ps)| {
                Box::new(move || {
                    let d = x.run()?;
                    ps.push((ms(x.lift_time), x.lifts as f64, x.faults as f64));
                    Ok(d)
                }) as Box<dyn FnMut() -> anyhow::Result<Duration>>
            })
            .collect();
        fs.push(Box::new(|| plain.rewrite()));
        let mut refs: Vec<&mut dyn FnMut() -> anyhow::Result<Duration>> =
            fs.iter_mut().map(|f| &mut **f as _).collect();
        sample_each(b, &mut refs)?
    };
    anyhow::ensure!(
        wp.iter().all(bounds::WpLift::verify),
        "rewrite bound: a word lost its value"
    );
    let base = ms(samples[lifts.len()].median());
    let size = size_name(bytes);
    for (i, lift) in lifts.into_iter().enumerate() {
        let pick = |f: fn(&(f64, f64, f64)) -> f64| {
            median_after_warmup(&parts[i].iter().map(f).collect::<Vec<_>>())
        };
        let (lift_ms, clears, faults) = (pick(|x| x.0), pick(|x| x.1), pick(|x| x.2));
        let (key, figure, note) = match lift {
            Lift::OnePiece => (
                "rewrite_wp_one_piece",
                format!("bound: lift WP on {size} in one piece, then rewrite"),
                format!("lift {lift_ms:.2} ms in 1 ioctl, {faults:.0} faults"),
            ),
            Lift::DoublingAhead => (
                "rewrite_wp_doubling_ahead",
                format!("bound: lift WP on {size}, doubling ahead, rewrite"),
                format!("lift {lift_ms:.2} ms in {clears:.0} ioctls, {faults:.0} faults"),
            ),
            Lift::DoublingOnFault => (
                "rewrite_wp_doubling_on_fault",
                format!("bound: lift WP on {size}, doubling on fault, rewrite"),
                format!("{faults:.0} faults, each lifted by a handler thread"),
            ),
        };
        r.extra
            .push((format!("micro_bound_{key}_lift_ms"), lift_ms));
        r.extra.push((format!("micro_bound_{key}_ioctls"), clears));
        r.extra.push((format!("micro_bound_{key}_faults"), faults));
        push_bound(
            r,
            p,
            key,
            figure,
            ("plain Vec", base),
            ms(samples[i].median()),
            note,
        );
    }
    Ok(())
}

/// The kernel's floor under [`read`]: installing every page with `UFFDIO_COPY` (write-
/// protected) in 2 MiB pieces on one thread or two, then the same sum; copying into parked
/// pages and moving them home, then the sum; and a plain `memcpy` then the sum (the floor of
/// any copy); each against the sum of a resident `Vec`.
fn read_bound(r: &mut Report, p: &Progress, b: Budget, bytes: usize) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut plain = w::Plain::new(n);
    let mut memcpy = bounds::MemcpyThenSum::new(n);
    let mut moved = bounds::MoveThenSum::new(n)
        .map_err(|e| eprintln!("bound: UFFDIO_MOVE not measured: {e}"))
        .ok();
    let threads = [1, 2];
    let mut copies = threads
        .iter()
        .map(|&t| bounds::CopyThenSum::new(n, t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut copy_ms: Vec<Vec<f64>> = vec![Vec::new(); copies.len()];
    let samples = {
        let mut fs: Vec<Box<dyn FnMut() -> anyhow::Result<Duration> + '_>> = copies
            .iter_mut()
            .zip(copy_ms.iter_mut())
            .map(|(x, cs)| {
                Box::new(move || {
                    let d = x.run()?;
                    cs.push(ms(x.copy_time));
                    Ok(d)
                }) as Box<dyn FnMut() -> anyhow::Result<Duration>>
            })
            .collect();
        fs.push(Box::new(|| plain.read()));
        fs.push(Box::new(|| memcpy.run()));
        if let Some(m) = moved.as_mut() {
            fs.push(Box::new(|| m.run()));
        }
        let mut refs: Vec<&mut dyn FnMut() -> anyhow::Result<Duration>> =
            fs.iter_mut().map(|f| &mut **f as _).collect();
        sample_each(b, &mut refs)?
    };
    let base = ms(samples[threads.len()].median());
    let (size, piece) = (size_name(bytes), size_name(bounds::COPY_PIECE));
    for (i, t) in threads.into_iter().enumerate() {
        let copy = median_after_warmup(&copy_ms[i]);
        let all = ms(samples[i].median());
        let (key, them) = if t == 1 {
            ("read_copy_1_thread".to_string(), "1 thread".to_string())
        } else {
            (format!("read_copy_{t}_threads"), format!("{t} threads"))
        };
        r.extra.push((format!("micro_bound_{key}_copy_ms"), copy));
        push_bound(
            r,
            p,
            &key,
            format!("bound: UFFDIO_COPY {size} by {piece}, {them}, sum"),
            ("resident Vec", base),
            all,
            format!("copies alone {copy:.2} ms (median)"),
        );
    }
    let rest = [
        (
            "read_memcpy",
            format!("bound: memcpy {size} into resident pages, sum"),
            "no fault, no ioctl: the floor of any copy",
        ),
        (
            "read_move_1_thread",
            format!("bound: memcpy into parked pages + UFFDIO_MOVE {size} by {piece}, sum"),
            "the kept pages' primitive, with no other thread running",
        ),
    ];
    for (i, (key, figure, note)) in rest.into_iter().enumerate() {
        if let Some(s) = samples.get(threads.len() + 1 + i) {
            let all = ms(s.median());
            push_bound(r, p, key, figure, ("resident Vec", base), all, note.into());
        }
    }
    Ok(())
}

/// `prefetch(Device)` of a fresh `Vec` against the same call on a reused one.
fn prefetch(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut fresh = w::PrefetchFresh::new(rt, n);
    let mut reused = w::PrefetchReused::new(rt, n);
    let (mut fresh_moved, mut reused_moved) = (Vec::new(), Vec::new());
    let (s, t) = measure::sample_pair(
        b,
        || {
            let d = fresh.run()?;
            fresh_moved.push(fresh.delta.bytes_to_device);
            Ok(d)
        },
        || {
            let d = reused.run()?;
            reused_moved.push(reused.delta.bytes_to_device);
            Ok(d)
        },
    )?;
    anyhow::ensure!(reused.verify(), "prefetch (reused): lost data");
    let (fm, rm) = (
        mib(median_u64(&fresh_moved)),
        mib(median_u64(&reused_moved)),
    );
    sub(r, "prefetch", path, "fresh_moved_mib", fm);
    sub(r, "prefetch", path, "reused_moved_mib", rm);
    sub(r, "prefetch", path, "fresh_ms", ms(s.median()));
    sub(r, "prefetch", path, "reused_ms", ms(t.median()));
    push_micro(
        r,
        p,
        path,
        Micro {
            key: "prefetch_fresh",
            figure: format!("prefetch(Device) of a fresh {} Vec", size_name(bytes)),
            baseline: "reused Vec",
            unit: Unit::GBps,
            vkhmm: gbps(bytes, s.median()),
            base: gbps(bytes, t.median()),
            target: Target::AtLeast(0.8),
            note: format!(
                "{:.1} vs {:.1} ms, moved {fm:.1} vs {rm:.1} MiB",
                ms(s.median()),
                ms(t.median())
            ),
        },
    );
    Ok(())
}

/// The bytes copied home when the CPU writes a `vec![0u32; n]` a kernel has read, beside the
/// same write to a plain one (which copies nothing).
fn zero(
    r: &mut Report,
    p: &Progress,
    b: Budget,
    bytes: usize,
    path: TransferPath,
    rt: &Runtime,
) -> anyhow::Result<()> {
    let n = bytes / 4;
    let mut v = w::ZeroHome::new(rt, n)?;
    let mut plain = w::PlainZero::new(n);
    let mut deltas: Vec<(Stats, Stats)> = Vec::new();
    let (s, t) = measure::sample_pair(
        b,
        || {
            let d = v.run()?;
            deltas.push((v.launch, v.delta));
            Ok(d)
        },
        || plain.run(),
    )?;
    let pick =
        |f: &dyn Fn(&(Stats, Stats)) -> u64| median_u64(&deltas.iter().map(f).collect::<Vec<_>>());
    let home = mib(pick(&|(_, d)| d.bytes_to_host));
    let faults = pick(&|(_, d)| d.cpu_faults);
    let zero_filled = mib(pick(&|(l, _)| l.bytes_zero_filled));
    let (write_ms, plain_ms) = (ms(s.median()), ms(t.median()));
    sub(r, "zero", path, "home_mib", home);
    sub(r, "zero", path, "faults", faults as f64);
    sub(r, "zero", path, "launch_zero_filled_mib", zero_filled);
    sub(r, "zero", path, "write_ms", write_ms);
    sub(r, "zero", path, "plain_write_ms", plain_ms);
    push_micro(
        r,
        p,
        path,
        Micro {
            key: "zero_home",
            figure: format!(
                "copied home: CPU write of kernel-read vec![0u32] {}",
                size_name(bytes)
            ),
            baseline: "plain Vec",
            unit: Unit::MiB,
            vkhmm: home,
            base: 0.0,
            target: Target::ValueAtMost(0.0),
            note: format!(
                "write {write_ms:.1} vs {plain_ms:.1} ms plain, {faults} faults; launch \
                 zero-filled {zero_filled:.1} MiB"
            ),
        },
    );
    Ok(())
}

/// The median of `v` (0 when empty).
fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len().div_ceil(2).max(1) - 1).copied().unwrap_or(0)
}
