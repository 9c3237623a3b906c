//! Bandwidth: the sweep by size (memcpy, prefetch both ways on both paths, sequential
//! fault-back, hand-written ash staging), the kernel primitives beside it, and fault-back of
//! 64 MiB by chunk policy.

use std::fmt::Write as _;

use vkhmm::{Runtime, TransferPath};

use super::{median_of, two_cpus};
use crate::bench::measure::{self, gbps, raw_ash, size_name, Budget, Order, KIB, MIB};
use crate::bench::report::{Report, Row, Target, Unit};
use crate::bench::{Progress, TARGET_SIZE};

/// Bandwidth by size: memcpy, prefetch both ways on both paths, sequential fault-back,
/// hand-written ash staging both ways.
pub(crate) fn sweep(
    r: &mut Report,
    p: &Progress,
    budget: Budget,
    sizes: &[usize],
    direct: &Runtime,
    staged: &Runtime,
    vk: &raw_ash::Vk,
) -> anyhow::Result<()> {
    for &size in sizes {
        let name = size_name(size);
        let mut m = measure::Memcpy::new(size);
        let memcpy = gbps(size, median_of(&measure::sample(budget, || m.run())?));
        r.point("memcpy", size, memcpy);
        drop(m);
        for (path, rt) in [("direct", direct), ("staged", staged)] {
            let mut f = measure::PrefetchDevice::new(rt, size)?;
            let d = median_of(&measure::sample(budget, || f.run())?);
            check_moved("prefetch to device", f.moved, size);
            r.point(&format!("prefetch_device_{path}"), size, gbps(size, d));
            drop(f);
            let mut f = measure::PrefetchHost::new(rt, size)?;
            let h = median_of(&measure::sample(budget, || f.run())?);
            check_moved("prefetch to host", f.moved, size);
            anyhow::ensure!(f.verify(), "prefetch to host ({path}, {name}) lost data");
            r.point(&format!("prefetch_host_{path}"), size, gbps(size, h));
            drop(f);
            let mut f = measure::FaultBack::new(rt, size, Order::Sequential)?;
            let fb = median_of(&measure::sample(budget, || f.run())?);
            anyhow::ensure!(f.verify(), "fault-back ({path}, {name}) lost data");
            r.point(&format!("faultback_seq_{path}"), size, gbps(size, fb));
            if size == TARGET_SIZE {
                r.extra.push((
                    format!("faultback_seq_{path}_64mib_faults"),
                    f.faults as f64,
                ));
            }
        }
        if size == TARGET_SIZE {
            limits(r, budget, size, memcpy)?;
            prefetch_host_threads(r, budget, size, direct)?;
        }
        let mut s = raw_ash::StagedCopy::new(vk, size)?;
        let up = median_of(&measure::sample(budget, || s.upload(vk))?);
        let down = median_of(&measure::sample(budget, || s.download(vk))?);
        anyhow::ensure!(s.verify(), "ash staged copy ({name}) returned wrong bytes");
        r.point("ash_staged_upload", size, gbps(size, up));
        r.point("ash_staged_download", size, gbps(size, down));
        p.say(&format!(
            "{name:>8}: memcpy {memcpy:.2} | to device D {:.2} S {:.2} | to host D {:.2} S {:.2} \
             | fault-back D {:.2} S {:.2} | ash up {:.2} down {:.2} GB/s",
            r.get("prefetch_device_direct", size).unwrap_or(0.0),
            r.get("prefetch_device_staged", size).unwrap_or(0.0),
            r.get("prefetch_host_direct", size).unwrap_or(0.0),
            r.get("prefetch_host_staged", size).unwrap_or(0.0),
            r.get("faultback_seq_direct", size).unwrap_or(0.0),
            r.get("faultback_seq_staged", size).unwrap_or(0.0),
            gbps(size, up),
            gbps(size, down),
        ));
    }
    Ok(())
}

/// `prefetch(Host)` with parallel installs (the default) against one thread, run by run.
fn prefetch_host_threads(
    r: &mut Report,
    budget: Budget,
    size: usize,
    direct: &Runtime,
) -> anyhow::Result<()> {
    let one = measure::chunked(TransferPath::Direct, 64 * KIB, false)
        .parallel_fault_back(false)
        .build()?;
    let mut two = measure::PrefetchHost::new(direct, size)?;
    let mut single = measure::PrefetchHost::new(&one, size)?;
    let (t2, t1) = measure::sample_pair(budget, || two.run(), || single.run())?;
    anyhow::ensure!(
        two.verify() && single.verify(),
        "prefetch to host lost data"
    );
    r.rows.push(Row {
        key: format!("prefetch_host_direct_{}mib_vs_one_thread", size / MIB),
        figure: format!("prefetch to host, {}, Direct", size_name(size)),
        unit: Unit::GBps,
        vkhmm: gbps(size, median_of(&t2)),
        baseline: "1 thread".into(),
        base: Some(gbps(size, median_of(&t1))),
        target: None,
        note: "parallel installs on and off".into(),
    });
    Ok(())
}

/// The kernel primitives under the figures, at one size: dropping pages, memcpy into
/// dropped pages, `UFFDIO_COPY` in 64 KiB and 2 MiB pieces. Rows without target.
fn limits(r: &mut Report, budget: Budget, size: usize, memcpy: f64) -> anyhow::Result<()> {
    let mut d = measure::DropPages::new(size);
    let drop_s = median_of(&measure::sample(budget, || d.run())?);
    drop(d);
    let mut c = measure::ColdMemcpy::new(size);
    let cold = median_of(&measure::sample(budget, || c.run())?);
    drop(c);
    let mut rows = vec![
        (
            "madvise_dontneed",
            "madvise(DONTNEED) (limit)".to_string(),
            drop_s,
        ),
        (
            "memcpy_unpopulated",
            "memcpy into dropped pages (limit)".to_string(),
            cold,
        ),
    ];
    // The last row is the ceiling of vkhmm's sequential read fault-back as built: `Shared`
    // pages installed write-protected by two threads, half each (`pages::halves`).
    // (Not on one CPU, where vkhmm splits no window either.)
    let mut primitives = vec![
        (64 * KIB, 1, false),
        (2 * MIB, 1, false),
        (2 * MIB, 1, true),
        (2 * MIB, 2, true),
    ];
    if !two_cpus() {
        primitives.pop();
    }
    for (piece, threads, wp) in primitives {
        let mut u = measure::raw_uffd::CopyBandwidth::new(size, piece, threads, wp)?;
        let t = median_of(&measure::sample(budget, || u.run())?);
        let key = match (piece == 64 * KIB, wp, threads > 1) {
            (true, _, _) => "uffdio_copy_64k",
            (false, false, _) => "uffdio_copy_2m",
            (false, true, false) => "uffdio_copy_wp_2m",
            (false, true, true) => "uffdio_copy_wp_2m_2_threads",
        };
        let how = if wp { " write-protected" } else { "" };
        let on = if threads > 1 {
            format!(", {threads} threads")
        } else {
            String::new()
        };
        rows.push((
            key,
            format!("UFFDIO_COPY{how}, {} pieces{on} (limit)", size_name(piece)),
            t,
        ));
    }
    // Page recycling with UFFDIO_MOVE (where the kernel has it): both directions timed.
    match measure::raw_uffd::MoveCycle::new(size, 2 * MIB) {
        Ok(m) => {
            let m = std::cell::RefCell::new(m);
            // Out first: `bring_home` needs the parked pages that `park_out` leaves.
            let (dev, host) = measure::sample_pair(
                budget,
                || m.borrow_mut().park_out(),
                || m.borrow_mut().bring_home(),
            )?;
            anyhow::ensure!(m.into_inner().verify(), "UFFDIO_MOVE cycle lost data");
            rows.push((
                "uffdio_move_out",
                "UFFDIO_MOVE host pages out, 2 MiB pieces (limit)".to_string(),
                median_of(&dev),
            ));
            rows.push((
                "memcpy_uffdio_move_in",
                "memcpy into parked pages + UFFDIO_MOVE home (limit)".to_string(),
                median_of(&host),
            ));
        }
        Err(e) => eprintln!("UFFDIO_MOVE not measured: {e}"),
    }
    for (key, figure, t) in rows {
        r.rows.push(Row {
            key: format!("{key}_{}mib", size / MIB),
            figure: format!("{figure}, {}", size_name(size)),
            unit: Unit::GBps,
            vkhmm: gbps(size, t),
            baseline: "memcpy".into(),
            base: Some(memcpy),
            target: None,
            note: "kernel primitive, not vkhmm".into(),
        });
    }
    Ok(())
}

/// A prefetch that moved fewer bytes than asked measured something else: say so.
fn check_moved(what: &str, moved: u64, size: usize) {
    if moved < size as u64 {
        eprintln!(
            "warning: {what} of {} moved only {moved} bytes (stats); the figure is not a copy",
            size_name(size)
        );
    }
}

/// Fault-back of 64 MiB by chunk policy and page order (Direct path, plus Staged default).
pub(crate) fn chunks(
    r: &mut Report,
    p: &Progress,
    budget: Budget,
    quick: bool,
) -> anyhow::Result<()> {
    let size = TARGET_SIZE;
    // (name, path, chunk, fixed, parallel fault-back)
    let mut policies: Vec<(&str, TransferPath, usize, bool, bool)> = vec![
        ("4K fixed", TransferPath::Direct, 4 * KIB, true, true),
        ("64K fixed", TransferPath::Direct, 64 * KIB, true, true),
        ("2M fixed", TransferPath::Direct, 2 * MIB, true, true),
        ("default", TransferPath::Direct, 64 * KIB, false, true),
        (
            "default 1 thread",
            TransferPath::Direct,
            64 * KIB,
            false,
            false,
        ),
        ("default", TransferPath::Staged, 64 * KIB, false, true),
    ];
    if quick {
        policies.retain(|(n, ..)| *n != "4K fixed");
    }
    // Each figure alternates with its own memcpy baseline, run by run (`sample_pair`): the
    // load of this shared machine changes from second to second.
    let mut m = measure::Memcpy::new(size);
    let mut memcpys = Vec::new();
    for (name, path, chunk, fixed, parallel) in policies {
        let rt = measure::chunked(path, chunk, fixed)
            .parallel_fault_back(parallel)
            .build()?;
        let mut line = format!("fault-back 64 MiB, {path:?}, chunk {name}:");
        for order in [Order::Sequential, Order::Random] {
            let mut f = measure::FaultBack::new(&rt, size, order)?;
            let (fs, ms) = measure::sample_pair(budget, || f.run(), || m.run())?;
            anyhow::ensure!(f.verify(), "fault-back ({name}, {order:?}) lost data");
            let g = gbps(size, median_of(&fs));
            let memcpy = gbps(size, median_of(&ms));
            memcpys.push(memcpy);
            let o = if order == Order::Sequential {
                "seq"
            } else {
                "random"
            };
            let key = format!(
                "faultback_{o}_{}_{}",
                format!("{path:?}").to_lowercase(),
                name.replace(' ', "_").to_lowercase()
            );
            r.rows.push(Row {
                key: format!("{key}_64mib"),
                figure: format!("fault-back {o}, 64 MiB, {path:?}, chunk {name}"),
                unit: Unit::GBps,
                vkhmm: g,
                baseline: "memcpy".into(),
                base: Some(memcpy),
                target: (order == Order::Sequential
                    && name == "default"
                    && path == TransferPath::Direct)
                    .then_some(Target::AtLeast(0.50)),
                note: format!("{} faults", f.faults),
            });
            r.extra
                .push((format!("{key}_64mib_faults"), f.faults as f64));
            let _ = write!(
                line,
                " {o} {g:.2} GB/s ({} faults; memcpy {memcpy:.2})",
                f.faults
            );
        }
        p.say(&line);
    }
    fault_back_ceiling(r, budget, size)?;
    if let Some(&lo) = memcpys.iter().min_by(|a, b| a.total_cmp(b)) {
        let hi = memcpys.iter().copied().fold(lo, f64::max);
        r.extra
            .push(("memcpy_64mib_chunk_phase_min_gbps".into(), lo));
        r.extra
            .push(("memcpy_64mib_chunk_phase_max_gbps".into(), hi));
    }
    Ok(())
}

/// The default policy's sequential fault-back against the ceiling of the design as built,
/// run by run: `UFFDIO_COPY` write-protected (`Shared` pages), 2 MiB pieces, on two threads
/// each filling its own half (the handler and its assistant), no fault involved. What the
/// fault-back figure can reach on a host is this ceiling's ratio to memcpy.
fn fault_back_ceiling(r: &mut Report, budget: Budget, size: usize) -> anyhow::Result<()> {
    if !two_cpus() {
        return Ok(()); // one CPU: vkhmm splits no window, the one-thread rows say it all
    }
    let rt = measure::runtime(TransferPath::Direct)?;
    let mut f = measure::FaultBack::new(&rt, size, Order::Sequential)?;
    let mut u = measure::raw_uffd::CopyBandwidth::new(size, 2 * MIB, 2, true)?;
    let (fs, us) = measure::sample_pair(budget, || f.run(), || u.run())?;
    anyhow::ensure!(f.verify(), "fault-back (ceiling pair) lost data");
    r.rows.push(Row {
        key: format!("faultback_seq_direct_default_{}mib_vs_ceiling", size / MIB),
        figure: format!("fault-back seq, {}, Direct, chunk default", size_name(size)),
        unit: Unit::GBps,
        vkhmm: gbps(size, median_of(&fs)),
        baseline: "2-thread WP UFFDIO_COPY".into(),
        base: Some(gbps(size, median_of(&us))),
        target: None,
        note: "the design's ceiling (limit)".into(),
    });
    Ok(())
}
