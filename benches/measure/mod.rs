//! Measurement routines shared by the criterion benches (`benches/*.rs`, through
//! `#[path = "measure/mod.rs"]`) and `vkhmm bench` (`cli/src/bench/mod.rs`, same trick).
//!
//! Every figure is a small struct whose `run` does its untimed set-up (refill a buffer,
//! push it back to the device ...) and returns the [`Duration`] of the timed part only, so
//! criterion's `iter_custom` and the CLI's [`sample`] time exactly the same thing.
//!
//! - [`Memcpy`]: the physical limit, one thread, pre-faulted source and destination;
//! - [`PrefetchDevice`] / [`PrefetchHost`]: `Runtime::prefetch` of a filled, page-aligned
//!   [`Managed`] buffer, steady state (the mirror and the device blocks exist already);
//! - [`FaultBack`]: a device-resident buffer read back by the CPU, one load per page, in
//!   sequential or random page order;
//! - [`TouchLatency`] and [`raw_uffd::RawUffd`]: one isolated 4 KiB touch, vkhmm vs a raw
//!   userfaultfd round trip;
//! - [`bounds`]: the kernel primitives under two micro-patterns of [`workloads`] (lifting
//!   write protection, installing pages with `UFFDIO_COPY`), with nothing of vkhmm in them;
//! - [`Launch`] and [`raw_ash::RawDispatch`]: a saxpy launch with all data resident vs the
//!   same SPIR-V dispatched with ash by hand;
//! - [`Saxpy`], [`raw_ash::RawSaxpy`] (and the wgpu member `baselines/wgpu-saxpy`): upload
//!   two `Vec<f32>`, run saxpy, the CPU reads the whole result.
//! - [`workloads`]: ordinary programs on plain `Vec`s beside their hand-written ash twins
//!   (fresh buffers, buffers reused across steps, a device-resident state, scattered edits),
//!   and the micro-patterns they meet beside the same work on plain memory.

#![allow(dead_code)] // each includer uses a different part

pub mod bounds;
pub mod raw_ash;
pub mod raw_uffd;
pub mod workloads;

use std::time::{Duration, Instant};

use vkhmm::{Location, Managed, Push, Runtime, TransferPath};

/// The page size vkhmm tracks.
pub const PAGE: usize = 4096;
/// One KiB.
pub const KIB: usize = 1 << 10;
/// One MiB.
pub const MIB: usize = 1 << 20;

/// Sum of `v` in f64 (four lanes, so it runs near memory speed).
pub fn checksum(v: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = v.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// A human size: `4 KiB`, `64 MiB`.
pub fn size_name(bytes: usize) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// Parses `4K`, `64M`, `1G`, `4096` into bytes.
pub fn parse_size(v: &str) -> Option<usize> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, suffix) = v.trim().split_at(digits);
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// The criterion benches' sizes: `VKHMM_BENCH_SIZES` (e.g. `4K,1M,64M`), default 4 KiB …
/// 256 MiB in steps of 16×, plus 64 MiB.
pub fn bench_sizes() -> Vec<usize> {
    match std::env::var("VKHMM_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(parse_size).collect(),
        Err(_) => vec![4 * KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB, 256 * MIB],
    }
}

/// GB/s (10^9 bytes per second).
pub fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Timed samples of one figure.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    /// The median.
    pub fn median(&self) -> Duration {
        self.percentile(50.0)
    }
}

/// How long to sample one figure.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// At least this many timed runs.
    pub min_iters: usize,
    /// At most this many.
    pub max_iters: usize,
    /// Stop after this much wall time once `min_iters` are done (set-up included).
    pub time: Duration,
}

impl Budget {
    /// The CLI's default: 3..=25 runs within 0.7 s.
    pub const DEFAULT: Budget = Budget {
        min_iters: 3,
        max_iters: 25,
        time: Duration::from_millis(700),
    };
    /// `--quick`: 2..=5 runs within 0.1 s.
    pub const QUICK: Budget = Budget {
        min_iters: 2,
        max_iters: 5,
        time: Duration::from_millis(100),
    };
}

/// Runs `f` once to warm up, then samples it within `budget`.
pub fn sample(
    budget: Budget,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Samples> {
    f()?;
    let start = Instant::now();
    let mut v = Vec::new();
    while v.len() < budget.min_iters
        || (v.len() < budget.max_iters && start.elapsed() < budget.time)
    {
        v.push(f()?);
    }
    Ok(Samples(v))
}

/// Samples `f` and `g` alternately (one warm-up each first), so that both see the same
/// machine: on a shared 2-core box the load changes from second to second, and a ratio of
/// two figures taken minutes apart says little. Stops as [`sample`] does, counting pairs.
pub fn sample_pair(
    budget: Budget,
    f: impl FnMut() -> anyhow::Result<Duration>,
    g: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<(Samples, Samples)> {
    sample_blocks(budget, 1, f, g)
}

/// [`sample_pair`] in blocks: `block` runs of `f`, then `block` runs of `g`, and so on
/// (for latencies, where switching contender on every sample would disturb both: each
/// side's handler thread must go idle and be woken the same way).
pub fn sample_blocks(
    budget: Budget,
    block: usize,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
    mut g: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<(Samples, Samples)> {
    let block = block.max(1);
    f()?;
    g()?;
    let start = Instant::now();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() < budget.min_iters
        || (a.len() < budget.max_iters && start.elapsed() < budget.time)
    {
        for _ in 0..block {
            a.push(f()?);
        }
        for _ in 0..block {
            b.push(g()?);
        }
    }
    Ok((Samples(a), Samples(b)))
}

/// A runtime on `path` with the default chunk policy.
pub fn runtime(path: TransferPath) -> anyhow::Result<Runtime> {
    Ok(Runtime::builder().transfer(path).build()?)
}

/// A runtime on `path` whose CPU faults bring back `chunk` bytes, fixed or adaptive.
pub fn runtime_chunked(path: TransferPath, chunk: usize, fixed: bool) -> anyhow::Result<Runtime> {
    Ok(chunked(path, chunk, fixed).build()?)
}

/// The builder of [`runtime_chunked`], for one more setting.
pub fn chunked(path: TransferPath, chunk: usize, fixed: bool) -> vkhmm::RuntimeBuilder {
    Runtime::builder()
        .transfer(path)
        .chunk_size(chunk)
        .fixed_chunks(fixed)
}

/// Writes one byte into every page of `buf` (makes each page `Host` again, cheaply).
fn stamp_pages(buf: &mut [u8], stamp: u8) {
    for i in (0..buf.len()).step_by(PAGE) {
        buf[i] = stamp;
    }
}

/// Reads one byte of every page listed in `order`; returns their sum.
fn read_pages(buf: &[u8], order: &[usize]) -> u64 {
    let p = buf.as_ptr();
    let mut s = 0u64;
    for &i in order {
        // SAFETY: every index in `order` is a page of `buf` (checked when `order` was made).
        s += u64::from(unsafe { std::ptr::read_volatile(p.add(i * PAGE)) });
    }
    s
}

/// `0..pages` in a fixed pseudo-random order (xorshift Fisher–Yates, same every run).
pub fn shuffled(pages: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..pages).collect();
    let mut s = seed | 1;
    for i in (1..pages).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// Single-thread memcpy between two pre-faulted buffers.
pub struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Memcpy {
    /// Buffers of `size` bytes, both touched.
    pub fn new(size: usize) -> Memcpy {
        Memcpy {
            src: (0..size).map(|i| i as u8).collect(),
            dst: vec![1; size],
        }
    }

    /// One copy.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.dst.copy_from_slice(std::hint::black_box(&self.src));
        let d = t.elapsed();
        std::hint::black_box(&mut self.dst);
        Ok(d)
    }
}

/// `madvise(MADV_DONTNEED)` of a populated buffer: what dropping the host copy costs (a
/// prefetch to the device and a written binding do it for every page).
pub struct DropPages {
    buf: Vec<u8>,
}

impl DropPages {
    /// A buffer of `size` bytes (page-aligned inside a larger allocation).
    pub fn new(size: usize) -> DropPages {
        DropPages {
            buf: vec![1; size + PAGE],
        }
    }

    fn span(&mut self) -> (*mut u8, usize) {
        let p = self.buf.as_mut_ptr();
        let off = p.align_offset(PAGE);
        // SAFETY: `off < PAGE` and the buffer holds `size + PAGE` bytes.
        (unsafe { p.add(off) }, self.buf.len() - PAGE)
    }

    /// Untimed: populate every page; timed: drop them.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let (p, len) = self.span();
        for i in (0..len).step_by(PAGE) {
            // SAFETY: inside the span.
            unsafe { p.add(i).write_volatile(1) };
        }
        let t = Instant::now();
        // SAFETY: the span is our own heap memory holding plain bytes; dropped pages read
        // back as zeros, which are valid `u8`s.
        unsafe { rustix::mm::madvise(p.cast(), len, rustix::mm::Advice::LinuxDontNeed) }?;
        Ok(t.elapsed())
    }
}

/// memcpy into pages that do not exist yet (dropped just before): the kernel allocates and
/// zeroes each page on first touch, then the copy runs. The floor of any scheme that brings
/// data into freshly emptied host pages through ordinary page faults.
pub struct ColdMemcpy {
    src: Vec<u8>,
    dst: DropPages,
}

impl ColdMemcpy {
    /// Buffers of `size` bytes.
    pub fn new(size: usize) -> ColdMemcpy {
        ColdMemcpy {
            src: (0..size).map(|i| i as u8).collect(),
            dst: DropPages::new(size),
        }
    }

    /// Untimed: drop the destination's pages; timed: the copy.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let (p, len) = self.dst.span();
        // SAFETY: as in `DropPages::run`.
        unsafe { rustix::mm::madvise(p.cast(), len, rustix::mm::Advice::LinuxDontNeed) }?;
        let t = Instant::now();
        // SAFETY: `p..p + len` is inside the destination buffer, disjoint from `src`.
        unsafe { std::ptr::copy_nonoverlapping(self.src.as_ptr(), p, len) };
        Ok(t.elapsed())
    }
}

/// `prefetch(Device)` of a buffer whose every page the CPU has just written.
pub struct PrefetchDevice<'a> {
    rt: &'a Runtime,
    buf: Managed<u8>,
    stamp: u8,
    /// Bytes the last run moved to the device (from the runtime's stats).
    pub moved: u64,
}

impl<'a> PrefetchDevice<'a> {
    /// A filled buffer of `size` bytes.
    pub fn new(rt: &'a Runtime, size: usize) -> anyhow::Result<Self> {
        let mut buf = rt.alloc::<u8>(size)?;
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        Ok(PrefetchDevice {
            rt,
            buf,
            stamp: 0,
            moved: 0,
        })
    }

    /// Untimed: write every page (back to `Host`); timed: `prefetch(Device)`.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.stamp = self.stamp.wrapping_add(1);
        stamp_pages(&mut self.buf, self.stamp);
        let before = self.rt.stats();
        let t = Instant::now();
        self.rt.prefetch(&self.buf[..], Location::Device)?;
        let d = t.elapsed();
        self.moved = (self.rt.stats() - before).bytes_to_device;
        Ok(d)
    }
}

/// `prefetch(Host)` of a device-resident buffer.
pub struct PrefetchHost<'a> {
    rt: &'a Runtime,
    buf: Managed<u8>,
    /// Bytes the last run moved to the host (pages that left the `Device` state).
    pub moved: u64,
}

impl<'a> PrefetchHost<'a> {
    /// A filled buffer of `size` bytes.
    pub fn new(rt: &'a Runtime, size: usize) -> anyhow::Result<Self> {
        let mut buf = rt.alloc::<u8>(size)?;
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        Ok(PrefetchHost { rt, buf, moved: 0 })
    }

    /// Untimed: `prefetch(Device)` (drops the host pages); timed: `prefetch(Host)`.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.rt.prefetch(&self.buf[..], Location::Device)?;
        let before = self.rt.residency(&self.buf[..]);
        let t = Instant::now();
        self.rt.prefetch(&self.buf[..], Location::Host)?;
        let d = t.elapsed();
        // Counted from residency: `Stats::bytes_to_host` does not count `prefetch(Host)`.
        let after = self.rt.residency(&self.buf[..]);
        self.moved = (before.device.saturating_sub(after.device) * PAGE) as u64;
        Ok(d)
    }

    /// Whether the buffer still holds its pattern (reads every byte; call after sampling).
    pub fn verify(&self) -> bool {
        self.buf.iter().enumerate().all(|(i, &b)| b == i as u8)
    }
}

/// Page order of a fault-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Page 0, 1, 2 ...
    Sequential,
    /// A fixed random permutation of the pages.
    Random,
}

/// CPU fault-back of a device-resident buffer: one load per page, in `Order`.
pub struct FaultBack<'a> {
    rt: &'a Runtime,
    buf: Managed<u8>,
    order: Vec<usize>,
    /// CPU faults the last run took (from the runtime's stats).
    pub faults: u64,
    /// Bytes the last run moved to the host.
    pub moved: u64,
}

impl<'a> FaultBack<'a> {
    /// A filled buffer of `size` bytes.
    pub fn new(rt: &'a Runtime, size: usize, order: Order) -> anyhow::Result<Self> {
        let mut buf = rt.alloc::<u8>(size)?;
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let pages = size.div_ceil(PAGE);
        let order = match order {
            Order::Sequential => (0..pages).collect(),
            Order::Random => shuffled(pages, 0x9e37_79b9_7f4a_7c15),
        };
        Ok(FaultBack {
            rt,
            buf,
            order,
            faults: 0,
            moved: 0,
        })
    }

    /// Untimed: `prefetch(Device)`; timed: touch every page once.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.rt.prefetch(&self.buf[..], Location::Device)?;
        let before = self.rt.stats();
        let t = Instant::now();
        let s = read_pages(&self.buf, &self.order);
        let d = t.elapsed();
        std::hint::black_box(s);
        let delta = self.rt.stats() - before;
        self.faults = delta.cpu_faults;
        self.moved = delta.bytes_to_host;
        Ok(d)
    }

    /// Whether the buffer still holds its pattern (reads every byte).
    pub fn verify(&self) -> bool {
        self.buf.iter().enumerate().all(|(i, &b)| b == i as u8)
    }
}

/// Isolated single-page touches of a device-resident buffer, in random page order, one
/// page per `stride` bytes (so that with chunk = stride every touch is one fresh fault).
pub struct TouchLatency<'a> {
    rt: &'a Runtime,
    buf: Managed<u8>,
    order: Vec<usize>,
    stride_pages: usize,
    next: usize,
}

impl<'a> TouchLatency<'a> {
    /// `touches` candidate pages, `stride` bytes apart.
    pub fn new(rt: &'a Runtime, touches: usize, stride: usize) -> anyhow::Result<Self> {
        let mut buf = rt.alloc::<u8>(touches * stride)?;
        buf.iter_mut().step_by(PAGE).for_each(|b| *b = 1);
        Ok(TouchLatency {
            rt,
            buf,
            order: shuffled(touches, 0x2545_f491_4f6c_dd1d),
            stride_pages: stride / PAGE,
            next: usize::MAX,
        })
    }

    /// Times one touch; pushes the buffer back to the device (untimed) when every
    /// candidate has been touched.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        if self.next >= self.order.len() {
            self.rt.prefetch(&self.buf[..], Location::Device)?;
            self.next = 0;
        }
        let page = self.order[self.next] * self.stride_pages;
        self.next += 1;
        let p = self.buf.as_ptr();
        let t = Instant::now();
        // SAFETY: `page` is a page of `buf` (order < touches, stride_pages * touches pages).
        let v = unsafe { std::ptr::read_volatile(p.add(page * PAGE)) };
        let d = t.elapsed();
        std::hint::black_box(v);
        Ok(d)
    }
}

/// The raw userfaultfd round trip, one touch at a time, random page order.
pub struct RawTouch {
    uffd: raw_uffd::RawUffd,
    order: Vec<usize>,
    next: usize,
}

impl RawTouch {
    /// `pages` candidate pages.
    pub fn new(pages: usize) -> anyhow::Result<RawTouch> {
        Self::with_handler_cpu(pages, None)
    }

    /// As [`RawTouch::new`], the handler thread pinned to `cpu`.
    pub fn with_handler_cpu(pages: usize, cpu: Option<usize>) -> anyhow::Result<RawTouch> {
        Ok(RawTouch {
            uffd: raw_uffd::RawUffd::with_handler_cpu(pages, cpu)?,
            order: shuffled(pages, 0x2545_f491_4f6c_dd1d),
            next: usize::MAX,
        })
    }

    /// Times one touch (drops every page, untimed, when all have been touched).
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        if self.next >= self.order.len() {
            self.uffd.reset()?;
            self.next = 0;
        }
        let i = self.order[self.next];
        self.next += 1;
        Ok(self.uffd.touch(i))
    }
}

/// SAXPY push constants (`shaders/saxpy.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SaxpyParams {
    /// The scale.
    pub a: f32,
    /// Element count.
    pub n: u32,
}

/// A saxpy launch with `x` and `y` already resident (x `Shared`, y `Device`).
pub struct Launch<'a> {
    rt: &'a Runtime,
    kernel: vkhmm::Kernel,
    x: Managed<f32>,
    y: Managed<f32>,
    params: SaxpyParams,
    groups: u32,
}

impl<'a> Launch<'a> {
    /// `n` floats per buffer; the first launch (untimed) makes them resident.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        let kernel = rt.kernel_wgsl(vkhmm::shaders::SAXPY_WGSL, "main")?;
        let mut l = Launch {
            rt,
            kernel,
            x: rt.alloc(n)?,
            y: rt.alloc(n)?,
            params: SaxpyParams {
                a: 2.0,
                n: n as u32,
            },
            groups: raw_ash::saxpy_groups(n),
        };
        l.run()?;
        Ok(l)
    }

    /// One launch.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.rt.launch(
            &self.kernel,
            [self.groups, 1, 1],
            (&self.x, &mut self.y, Push(&self.params)),
        )?;
        Ok(t.elapsed())
    }

    /// Bytes moved either way since the runtime started (0 after the first launch when
    /// everything stays resident).
    pub fn moved(&self) -> u64 {
        let s = self.rt.stats();
        s.bytes_to_device + s.bytes_to_host
    }
}

/// End-to-end saxpy on two `Vec<f32>`: the program refills them (untimed), then the timed
/// part launches (upload + kernel) and sums the whole result on the CPU (fault-back).
pub struct Saxpy<'a> {
    rt: &'a Runtime,
    kernel: vkhmm::Kernel,
    x: Vec<f32>,
    y: Vec<f32>,
    it: usize,
    /// Seconds of the last run in the launch / in the CPU read.
    pub parts: [f64; 2],
    /// Sum of the last result.
    pub sum: f64,
}

/// The inputs of iteration `it` of every saxpy contender.
pub fn saxpy_fill(x: &mut [f32], y: &mut [f32], it: usize) {
    for (i, (xi, yi)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
        *xi = (i % 1024) as f32;
        *yi = (it % 7) as f32;
    }
}

/// The sum every contender must find for iteration `it` over `n` elements with `a`.
pub fn saxpy_expect(n: usize, a: f32, it: usize) -> f64 {
    (0..n)
        .map(|i| f64::from(a * (i % 1024) as f32 + (it % 7) as f32))
        .sum()
}

impl<'a> Saxpy<'a> {
    /// `n` floats per vector.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(Saxpy {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::SAXPY_WGSL, "main")?,
            x: vec![0.0; n],
            y: vec![0.0; n],
            it: 0,
            parts: [0.0; 2],
            sum: 0.0,
        })
    }

    /// One step: refill (untimed), launch and read everything back (timed).
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.it += 1;
        saxpy_fill(&mut self.x, &mut self.y, self.it);
        let n = self.x.len();
        let params = SaxpyParams {
            a: 2.0,
            n: n as u32,
        };
        let t = Instant::now();
        self.rt.launch(
            &self.kernel,
            [raw_ash::saxpy_groups(n), 1, 1],
            (&self.x, &mut self.y, Push(&params)),
        )?;
        let t1 = t.elapsed();
        self.sum = checksum(&self.y);
        let d = t.elapsed();
        self.parts = [t1.as_secs_f64(), (d - t1).as_secs_f64()];
        Ok(d)
    }

    /// The iteration number of the last run.
    pub fn iteration(&self) -> usize {
        self.it
    }
}

/// Bytes of `[addr, addr + len)` whose pages are resident (present or swapped) according to
/// `/proc/self/pagemap`; faults nothing in.
pub fn resident_bytes(addr: usize, len: usize) -> anyhow::Result<usize> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    let first = addr / PAGE;
    let pages = (addr + len).div_ceil(PAGE) - first;
    let mut entries = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut entries, (first * 8) as u64)?;
    let resident = entries
        .chunks_exact(8)
        .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) & (3 << 62) != 0)
        .count();
    Ok(resident * PAGE)
}

/// The host memory an ordinary `Vec<u8>` keeps while its data lives on the device.
///
/// The CPU writes every byte (pattern: byte i holds i mod 251), `prefetch(Device)` moves it:
/// the host pages are dropped (`Device`), so the buffer's resident bytes fall. On an
/// integrated GPU or lavapipe the device copy is host memory too, so this counts the
/// buffer's own pages (pagemap), not the process's RSS.
pub struct ResidentAfterMigrate<'a> {
    rt: &'a Runtime,
    buf: Vec<u8>,
    /// Resident bytes of the buffer before / after the last migration.
    pub before: usize,
    pub after: usize,
}

impl<'a> ResidentAfterMigrate<'a> {
    /// A buffer of `size` bytes from the global allocator.
    pub fn new(rt: &'a Runtime, size: usize) -> Self {
        ResidentAfterMigrate {
            rt,
            buf: vec![0u8; size],
            before: 0,
            after: 0,
        }
    }

    /// Writes the buffer, measures, migrates it to the device, measures again. Returns the
    /// time of the migration.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.buf
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        let (addr, len) = (self.buf.as_ptr() as usize, self.buf.len());
        self.before = resident_bytes(addr, len)?;
        let t = Instant::now();
        self.rt.prefetch(&self.buf[..], Location::Device)?;
        let d = t.elapsed();
        self.after = resident_bytes(addr, len)?;
        Ok(d)
    }

    /// Whether the buffer still holds its pattern (faults every page back).
    pub fn verify(&self) -> bool {
        self.buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8)
    }
}

/// Saxpy over a working set larger than the device budget, the way the `oversubscribe`
/// example runs it: `x` and `y` (page-aligned [`Managed`]) in 16 slices, each slice one
/// launch, two passes, then the CPU sums `y`. With a budget under the working set, the
/// second pass finds the first pass's slices evicted (least recently used first) and moves
/// them again; with a budget that holds it, the second pass moves nothing.
pub struct OversubSaxpy<'a> {
    rt: &'a Runtime,
    kernel: vkhmm::Kernel,
    x: Managed<f32>,
    y: Managed<f32>,
    it: usize,
    /// Sum of `y` after the last run.
    pub sum: f64,
}

/// Slices per pass of [`OversubSaxpy`].
pub const OVERSUB_SLICES: usize = 16;

impl<'a> OversubSaxpy<'a> {
    /// `n` floats per vector (a multiple of [`OVERSUB_SLICES`] pages of floats).
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(OversubSaxpy {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::SAXPY_WGSL, "main")?,
            x: rt.alloc(n)?,
            y: rt.alloc(n)?,
            it: 0,
            sum: 0.0,
        })
    }

    /// Untimed: the CPU refills `x` and `y`; timed: two passes of slice launches and the
    /// CPU's sum of `y`.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.it += 1;
        saxpy_fill(&mut self.x, &mut self.y, self.it);
        let slice = self.x.len() / OVERSUB_SLICES;
        let t = Instant::now();
        for _ in 0..2 {
            for (xs, ys) in self.x.chunks(slice).zip(self.y.chunks_mut(slice)) {
                let params = SaxpyParams {
                    a: 2.0,
                    n: xs.len() as u32,
                };
                self.rt.launch(
                    &self.kernel,
                    [raw_ash::saxpy_groups(xs.len()), 1, 1],
                    (xs, ys, Push(&params)),
                )?;
            }
        }
        self.sum = checksum(&self.y);
        Ok(t.elapsed())
    }

    /// The sum `y` must have after a run: two passes of `y += 2x`.
    pub fn expect(&self) -> f64 {
        let n = self.x.len();
        (0..n)
            .map(|i| f64::from(4.0 * (i % 1024) as f32 + (self.it % 7) as f32))
            .sum()
    }
}

/// A launch-then-read loop on one buffer: `y += 1` on the device, then the CPU sums `y`,
/// round after round — the pattern thrash detection exists for. With detection on, the
/// buffer is settled in place after a few rounds and nothing moves any more; with it off,
/// every round migrates `y` and faults it back.
pub struct PingPong<'a> {
    rt: &'a Runtime,
    kernel: vkhmm::Kernel,
    y: Managed<u32>,
    round: u32,
    /// Sum of `y` after the last round.
    pub sum: u64,
}

/// Push constants of `shaders/add_k.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AddK {
    n: u32,
    k: u32,
}

impl<'a> PingPong<'a> {
    /// `n` words of zeros.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(PingPong {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::ADD_K_WGSL, "main")?,
            y: rt.alloc(n)?,
            round: 0,
            sum: 0,
        })
    }

    /// Timed: one launch and the CPU's sum of the result.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let n = self.y.len();
        let p = AddK { n: n as u32, k: 1 };
        let t = Instant::now();
        self.rt.launch(
            &self.kernel,
            [n.div_ceil(64).clamp(1, 1024) as u32, 1, 1],
            (&mut self.y, Push(&p)),
        )?;
        self.sum = self.y.iter().map(|&v| u64::from(v)).sum();
        let d = t.elapsed();
        self.round += 1;
        Ok(d)
    }

    /// The sum every round must find.
    pub fn expect(&self) -> u64 {
        self.y.len() as u64 * u64::from(self.round)
    }
}
