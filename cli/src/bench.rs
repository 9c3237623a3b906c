//! `vkhmm bench`: bandwidthTest-style figures, each beside its baseline, in one run.
//!
//! The measurement routines are the criterion benches' own (`benches/measure/`, included
//! below by path), so the CLI and `cargo bench` time the same code. The wgpu baseline is a
//! separate binary of the workspace member `baselines/wgpu-saxpy` (vkhmm never depends on
//! wgpu); it is run as a child process when built, and reported as "not built" otherwise.
//!
//! Progress goes to stderr; the table (or with `--json` one JSON object) to stdout.

#[path = "../../benches/measure/mod.rs"]
mod measure;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use measure::{gbps, raw_ash, size_name, Budget, Order, Samples, KIB, MIB};
use vkhmm::{Runtime, TransferPath};

/// Options of `vkhmm bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Fewer sizes and runs (about 4× faster; the 64 MiB target figures are kept).
    #[arg(long)]
    pub quick: bool,
    /// Transfer sizes for the bandwidth sweep, e.g. `4K,64K,1M,16M,64M,256M`
    /// (default 4K,64K,1M,16M,64M; 64M is always added for the targets).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// MiB per vector of the end-to-end saxpy (the target is stated for 64).
    #[arg(long, default_value_t = 64)]
    pub saxpy_mib: usize,
    /// Also write the JSON object to this file (the table still goes to stdout), so that
    /// one run gives both; `benches/perf_chart.py` draws the charts from it.
    #[arg(long, value_name = "PATH")]
    pub save_json: Option<PathBuf>,
    /// Skip the wgpu baseline even when it is built.
    #[arg(long)]
    pub no_wgpu: bool,
    /// Path of the `wgpu-saxpy` baseline binary (default: next to this executable, or
    /// `$VKHMM_WGPU_BASELINE`).
    #[arg(long)]
    pub wgpu: Option<PathBuf>,
    /// Run only these groups (for profiling): sweep, chunks, touch, launch, saxpy, rss,
    /// oversub, thrash, wgpu.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl Args {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

fn parse_size(v: &str) -> Result<usize, String> {
    let bytes =
        measure::parse_size(v).ok_or_else(|| format!("{v:?}: expected a size like 4K or 64M"))?;
    if bytes < measure::PAGE || bytes % measure::PAGE != 0 {
        return Err(format!("{v:?}: sizes are whole pages (multiples of 4K)"));
    }
    Ok(bytes)
}

/// The size every target of issue 5 is stated at.
const TARGET_SIZE: usize = 64 * MIB;

/// How a ratio is judged.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// vkhmm's rate over the baseline's, at least this.
    AtLeast(f64),
    /// vkhmm's time over the baseline's, at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t:.2}x"),
            Target::AtMost(t) => format!("<= {t:.2}x"),
        }
    }
}

/// A figure's unit: rates are better high, times better low.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    GBps,
    Micros,
    Millis,
    MiB,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::GBps => "GB/s",
            Unit::Micros => "us",
            Unit::Millis => "ms",
            Unit::MiB => "MiB",
        }
    }
}

/// One line of the table.
struct Row {
    key: String,
    figure: String,
    unit: Unit,
    vkhmm: f64,
    baseline: String,
    /// `None`: the baseline could not be measured (e.g. wgpu not built).
    base: Option<f64>,
    target: Option<Target>,
    note: String,
}

impl Row {
    /// vkhmm over baseline for rates, vkhmm time over baseline time for times.
    fn ratio(&self) -> Option<f64> {
        self.base.filter(|b| *b > 0.0).map(|b| self.vkhmm / b)
    }
}

/// Everything one run measured.
#[derive(Default)]
struct Report {
    device: String,
    rows: Vec<Row>,
    /// Series name -> (bytes, GB/s) points, for the chart.
    series: Vec<(String, Vec<(usize, f64)>)>,
    /// Extra named numbers (sub-measurements that explain the figures).
    extra: Vec<(String, f64)>,
    wgpu: Option<String>,
}

impl Report {
    fn point(&mut self, series: &str, bytes: usize, value: f64) {
        match self.series.iter_mut().find(|(n, _)| n == series) {
            Some((_, v)) => v.push((bytes, value)),
            None => self.series.push((series.into(), vec![(bytes, value)])),
        }
    }

    fn get(&self, series: &str, bytes: usize) -> Option<f64> {
        self.series
            .iter()
            .find(|(n, _)| n == series)
            .and_then(|(_, v)| v.iter().find(|(b, _)| *b == bytes))
            .map(|&(_, g)| g)
    }
}

/// Progress on stderr: step counter and time since start.
struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    fn say(&self, what: &str) {
        if !self.quiet {
            eprintln!("[{:6.1}s] {what}", self.start.elapsed().as_secs_f64());
        }
    }
}

/// Runs the benchmarks and prints the table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let budget = if args.quick {
        Budget::QUICK
    } else {
        Budget::DEFAULT
    };
    let mut sizes = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if args.quick {
        vec![64 * KIB, 4 * MIB, 64 * MIB]
    } else {
        vec![4 * KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB]
    };
    if !sizes.contains(&TARGET_SIZE) {
        sizes.push(TARGET_SIZE);
    }
    sizes.sort_unstable();
    sizes.dedup();
    let p = Progress {
        start: Instant::now(),
        quiet: false,
    };
    let mut r = Report::default();
    let direct = measure::runtime(TransferPath::Direct).context("runtime on the Direct path")?;
    let staged = measure::runtime(TransferPath::Staged).context("runtime on the Staged path")?;
    r.device = direct.device_info().name.clone();
    p.say(&format!("device {}; sizes {}", r.device, names(&sizes)));
    let vk = raw_ash::Vk::new(Some(&r.device)).context("raw ash baseline device")?;

    if args.wants("sweep") {
        sweep(&mut r, &p, budget, &sizes, &direct, &staged, &vk)?;
    }
    if args.wants("chunks") {
        chunks(&mut r, &p, budget, args.quick)?;
    }
    if args.wants("touch") {
        touch(&mut r, &p, args.quick)?;
    }
    if args.wants("launch") {
        launch(&mut r, &p, args.quick, &direct, &staged, &vk)?;
    }
    if args.wants("saxpy") {
        let saxpy_n = args.saxpy_mib * MIB / 4;
        saxpy(&mut r, &p, args.quick, saxpy_n, &direct, &staged, &vk)?;
    }
    if args.wants("rss") {
        resident(&mut r, &p, &direct, &staged)?;
    }
    if args.wants("oversub") {
        oversub(&mut r, &p, args.quick)?;
    }
    if args.wants("thrash") {
        thrash(&mut r, &p, args.quick)?;
    }
    drop(vk);
    drop((direct, staged));
    if !args.no_wgpu && args.wants("wgpu") {
        wgpu(&mut r, &p, args, &sizes)?;
    }
    targets_table(&mut r, args.saxpy_mib);
    let elapsed = p.start.elapsed().as_secs_f64();
    p.say("done");
    if let Some(path) = &args.save_json {
        std::fs::write(path, json(&r, args, elapsed) + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", json(&r, args, elapsed));
    } else {
        print!("{}", table(&r, elapsed));
    }
    Ok(())
}

fn names(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(|&s| size_name(s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median_of(s: &Samples) -> Duration {
    s.median()
}

/// Bandwidth by size: memcpy, prefetch both ways on both paths, sequential fault-back,
/// hand-written ash staging both ways.
fn sweep(
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
    // pages installed write-protected by two threads, half each (`fault::assist`).
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
fn chunks(r: &mut Report, p: &Progress, budget: Budget, quick: bool) -> anyhow::Result<()> {
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
/// each filling its own half (the handler and its assistant), no fault involved. What issue
/// 6's figure can reach on a host is this ceiling's ratio to memcpy.
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

/// Whether this process may run on two CPUs at once (vkhmm splits fault-back windows only
/// then).
fn two_cpus() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
}

/// Isolated single-page touch latency: vkhmm (4 KiB fixed chunks, both paths, and the
/// default 64 KiB chunk) against the raw userfaultfd round trip.
fn touch(r: &mut Report, p: &Progress, quick: bool) -> anyhow::Result<()> {
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
        (
            "64K chunk (default), Direct",
            TransferPath::Direct,
            64 * KIB,
            false,
        ),
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

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Launch overhead with everything resident vs a raw ash dispatch of the same SPIR-V.
fn launch(
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

/// End-to-end saxpy: vkhmm on both paths, each alternating with hand-written ash (wgpu
/// comes later, from its own process).
fn saxpy(
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

/// The size the resident-memory target is stated at (issue 3).
const RSS_SIZE: usize = 256 * MIB;

/// Resident host memory of a written 256 MiB `Vec` before and after `prefetch(Device)`, on
/// both paths (one run each: the figure is a page count, not a time).
fn resident(
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
/// budget that holds it (issue 6): same data, same slices, runs alternating.
fn oversub(r: &mut Report, p: &Progress, quick: bool) -> anyhow::Result<()> {
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
fn thrash(r: &mut Report, p: &Progress, quick: bool) -> anyhow::Result<()> {
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

/// Finds the wgpu baseline binary.
fn wgpu_binary(args: &Args) -> Option<PathBuf> {
    if let Some(p) = &args.wgpu {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("VKHMM_WGPU_BASELINE") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("wgpu-saxpy"),
        dir.join("../release/wgpu-saxpy"),
        dir.join("../../release/wgpu-saxpy"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Runs the wgpu baseline and adds its figures (its own process, same device).
fn wgpu(r: &mut Report, p: &Progress, args: &Args, sizes: &[usize]) -> anyhow::Result<()> {
    const NOT_BUILT: &str = "not built: run `cargo build --release -p wgpu-saxpy`";
    let Some(bin) = wgpu_binary(args) else {
        p.say(&format!("wgpu baseline {NOT_BUILT}"));
        r.wgpu = Some(NOT_BUILT.into());
        return Ok(());
    };
    p.say(&format!("wgpu baseline: running {}", bin.display()));
    let sizes_arg = sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(&bin)
        .args(["--sizes", &sizes_arg])
        .args(["--iters", if args.quick { "3" } else { "7" }])
        .args(["--saxpy-mib", &args.saxpy_mib.to_string()])
        .args(["--saxpy-iters", if args.quick { "2" } else { "4" }])
        .stderr(std::process::Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            r.wgpu = Some(format!("failed ({})", o.status));
            return Ok(());
        }
        Err(e) => {
            r.wgpu = Some(format!("could not run {}: {e}", bin.display()));
            return Ok(());
        }
    };
    for (key, series) in [("upload", "wgpu_upload"), ("download", "wgpu_download")] {
        for (bytes, secs) in pairs(&text, key) {
            r.point(series, bytes as usize, bytes / secs / 1e9);
        }
    }
    let saxpy_s = number(&text, "saxpy_s").unwrap_or(0.0);
    r.extra.push(("wgpu_saxpy_ms".into(), saxpy_s * 1e3));
    p.say(&format!(
        "wgpu: saxpy {:.1} ms, upload 64 MiB {:.2} GB/s, download {:.2} GB/s",
        saxpy_s * 1e3,
        r.get("wgpu_upload", TARGET_SIZE).unwrap_or(0.0),
        r.get("wgpu_download", TARGET_SIZE).unwrap_or(0.0)
    ));
    r.wgpu = Some(format!("ran {}", bin.display()));
    Ok(())
}

/// `"key":[[a,b],[c,d]]` out of the baseline's one-line JSON.
fn pairs(text: &str, key: &str) -> Vec<(f64, f64)> {
    let Some(start) = text.find(&format!("\"{key}\":[")) else {
        return Vec::new();
    };
    let rest = &text[start + key.len() + 4..];
    let end = rest.find("]]").map_or(0, |e| e + 1);
    rest[..end]
        .split(']')
        .filter_map(|pair| {
            let pair = pair.trim_start_matches([',', '[']);
            let (a, b) = pair.split_once(',')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// `"key":number` out of the baseline's JSON.
fn number(text: &str, key: &str) -> Option<f64> {
    let start = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &text[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

fn extra(r: &Report, key: &str) -> Option<f64> {
    r.extra.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
}

/// Series, figure, baseline name, baseline value, target.
type RateRow<'a> = (&'a str, &'a str, &'a str, Option<f64>, Option<Target>);

/// The rows of the sweep at 64 MiB (with their targets), the wgpu saxpy row, then all rows
/// in table order.
fn targets_table(r: &mut Report, saxpy_mib: usize) {
    let mut head = Vec::new();
    let memcpy = r.get("memcpy", TARGET_SIZE);
    let ash_up = r.get("ash_staged_upload", TARGET_SIZE);
    let ash_down = r.get("ash_staged_download", TARGET_SIZE);
    let rate_rows: [RateRow<'_>; 8] = [
        (
            "prefetch_device_direct",
            "prefetch to device, 64 MiB, Direct",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.85)),
        ),
        (
            "prefetch_device_staged",
            "prefetch to device, 64 MiB, Staged",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.40)),
        ),
        (
            "prefetch_device_staged",
            "prefetch to device, 64 MiB, Staged",
            "ash staging+copy",
            ash_up,
            None,
        ),
        (
            "prefetch_host_direct",
            "prefetch to host, 64 MiB, Direct",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.60)),
        ),
        (
            "prefetch_host_staged",
            "prefetch to host, 64 MiB, Staged",
            "memcpy",
            memcpy,
            Some(Target::AtLeast(0.60)),
        ),
        (
            "prefetch_host_staged",
            "prefetch to host, 64 MiB, Staged",
            "ash copy+staging",
            ash_down,
            None,
        ),
        (
            "faultback_seq_direct",
            "fault-back seq, 64 MiB, Direct (sweep)",
            "memcpy",
            memcpy,
            None,
        ),
        (
            "faultback_seq_staged",
            "fault-back seq, 64 MiB, Staged (sweep)",
            "memcpy",
            memcpy,
            None,
        ),
    ];
    for (series, figure, baseline, base, target) in rate_rows {
        let Some(v) = r.get(series, TARGET_SIZE) else {
            continue;
        };
        head.push(Row {
            key: format!(
                "{series}_64mib_vs_{}",
                baseline.split(' ').next().unwrap_or("")
            ),
            figure: figure.into(),
            unit: Unit::GBps,
            vkhmm: v,
            baseline: baseline.into(),
            base,
            target,
            note: String::new(),
        });
    }
    if let Some(ms) = extra(r, "vkhmm_saxpy_direct_ms") {
        let wgpu = extra(r, "wgpu_saxpy_ms").filter(|&w| w > 0.0);
        head.push(Row {
            key: "saxpy_direct_vs_wgpu".into(),
            figure: format!("saxpy 2x{saxpy_mib} MiB end to end, Direct"),
            unit: Unit::Millis,
            vkhmm: ms,
            baseline: "wgpu".into(),
            base: wgpu,
            target: Some(Target::AtMost(0.8)),
            note: match (&r.wgpu, wgpu) {
                (Some(w), None) => w.clone(),
                _ => String::new(),
            },
        });
    }
    head.append(&mut r.rows);
    r.rows = head;
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::GBps | Unit::MiB => format!("{v:.2} {}", unit.name()),
        _ => format!("{v:.1} {}", unit.name()),
    }
}

/// The bandwidthTest-style table.
fn table(r: &Report, elapsed: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "vkhmm bench on {} ({elapsed:.0} s)\n", r.device);
    let _ = writeln!(
        out,
        "{:<48} {:>12} {:>18} {:>12} {:>8} {:>10} {:>8}",
        "figure", "vkhmm", "baseline", "", "ratio", "target", "met"
    );
    for row in &r.rows {
        let base = row
            .base
            .map_or_else(|| "-".to_string(), |b| fmt_value(b, row.unit));
        let ratio = row.ratio().map_or("-".into(), |x| format!("{x:.2}x"));
        let (target, met) = match (row.target, row.ratio()) {
            (Some(t), Some(x)) => (t.text(), if t.met(x) { "yes" } else { "NO" }),
            (Some(t), None) => (t.text(), "n/a"),
            (None, _) => (String::new(), ""),
        };
        let _ = writeln!(
            out,
            "{:<48} {:>12} {:>18} {:>12} {:>8} {:>10} {:>8}{}",
            row.figure,
            fmt_value(row.vkhmm, row.unit),
            row.baseline,
            base,
            ratio,
            target,
            met,
            if row.note.is_empty() {
                String::new()
            } else {
                format!("  {}", row.note)
            }
        );
    }
    let _ = writeln!(out, "\nbandwidth by size (GB/s)");
    let sizes: Vec<usize> = r
        .series
        .first()
        .map(|(_, v)| v.iter().map(|&(b, _)| b).collect())
        .unwrap_or_default();
    let _ = write!(out, "{:<24}", "series");
    for &s in &sizes {
        let _ = write!(out, " {:>9}", size_name(s));
    }
    let _ = writeln!(out);
    for (name, points) in &r.series {
        let _ = write!(out, "{name:<24}");
        for &s in &sizes {
            match points.iter().find(|(b, _)| *b == s) {
                Some((_, g)) => {
                    let _ = write!(out, " {g:>9.2}");
                }
                None => {
                    let _ = write!(out, " {:>9}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nsub-measurements");
    for (k, v) in &r.extra {
        let _ = writeln!(out, "  {k:<48} {v:.3}");
    }
    if let Some(w) = &r.wgpu {
        let _ = writeln!(out, "  wgpu baseline: {w}");
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// One JSON object: device, figures by key, series, sub-measurements.
fn json(r: &Report, args: &Args, elapsed: f64) -> String {
    let mut o = String::from("{");
    let _ = write!(
        o,
        "\"device\":{},\"quick\":{},\"elapsed_s\":{},\"wgpu\":{},",
        json_str(&r.device),
        args.quick,
        json_num(elapsed),
        r.wgpu.as_deref().map_or("null".into(), json_str)
    );
    o.push_str("\"figures\":{");
    let figs: Vec<String> = r
        .rows
        .iter()
        .map(|row| {
            let ratio = row.ratio();
            format!(
                "{}:{{\"figure\":{},\"unit\":{},\"vkhmm\":{},\"baseline\":{},\
                 \"baseline_value\":{},\"ratio\":{},\"target\":{},\"met\":{},\"note\":{}}}",
                json_str(&row.key),
                json_str(&row.figure),
                json_str(row.unit.name()),
                json_num(row.vkhmm),
                json_str(&row.baseline),
                row.base.map_or("null".into(), json_num),
                ratio.map_or("null".into(), json_num),
                row.target.map_or("null".into(), |t| json_str(&t.text())),
                match (row.target, ratio) {
                    (Some(t), Some(x)) => t.met(x).to_string(),
                    _ => "null".into(),
                },
                json_str(&row.note),
            )
        })
        .collect();
    o.push_str(&figs.join(","));
    o.push_str("},\"series_gbps\":{");
    let series: Vec<String> = r
        .series
        .iter()
        .map(|(name, pts)| {
            let p: Vec<String> = pts
                .iter()
                .map(|&(b, g)| format!("[{b},{}]", json_num(g)))
                .collect();
            format!("{}:[{}]", json_str(name), p.join(","))
        })
        .collect();
    o.push_str(&series.join(","));
    o.push_str("},\"sub\":{");
    let extra: Vec<String> = r
        .extra
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_num(*v)))
        .collect();
    o.push_str(&extra.join(","));
    o.push_str("}}");
    o
}
