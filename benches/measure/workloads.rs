//! Ordinary programs on ordinary `Vec`s with vkhmm, each beside its *twin*: the same program
//! as a Vulkan expert writes it by hand with ash, with the same kernels and the same CPU work;
//! and the micro-patterns such programs meet, each beside the same work on plain memory.
//!
//! The twin allocates its buffers once and moves only what changed. On
//! [`TransferPath::Direct`] it binds [`Mem::Mapped`] buffers that the CPU fills and reads in
//! place (what an expert does where device memory is host-visible: integrated GPUs,
//! lavapipe); on [`TransferPath::Staged`] it binds device-local buffers and reaches them
//! through staging buffers and `vkCmdCopyBuffer` (a discrete GPU's way), so each twin is
//! compared with vkhmm on the same path.
//!
//! Workloads (each `run` is timed whole: one step, or for [`Resident`] the whole program;
//! every result is checked, against a closed form or, for [`Edits`], against the twin's):
//!
//! - [`Fresh`] / [`FreshTwin`]: each step allocates `x` and `y`, fills `x`, runs saxpy, sums
//!   all of `y` and drops both (the twin fills its mapped or staging `x`, clears `y` with
//!   `vkCmdFillBuffer`, and reads `y` back);
//! - [`Iterate`] / [`IterateTwin`]: `x` and `y` live across steps; each step the CPU rewrites
//!   all of `x`, saxpy runs, the CPU sums all of `y`;
//! - [`Resident`] / [`ResidentTwin`]: one run is a whole program: the CPU writes a state,
//!   [`RESIDENT_STEPS`] relaxation steps ([`RELAX_WGSL`]) update it in place on the device,
//!   the CPU reads the residual each step wrote (one scalar), then sums the whole state;
//! - [`Edits`] / [`EditsTwin`]: a buffer stays on the device; each step the CPU changes
//!   [`EDITS`] scattered elements, `add_k` processes the whole buffer, the CPU reads
//!   [`EDITS`] other scattered elements (the staged twin copies exactly those, as
//!   [`EDITS`] regions of one `vkCmdCopyBuffer` each way).
//!
//! Micro-patterns (the timed part only; set-up untimed):
//!
//! - [`RewriteShared`] against [`Plain::rewrite`]: the CPU rewrites a buffer a kernel has
//!   just read (its pages `Shared`, write-protected);
//! - [`ReadResult`] against [`Plain::read`]: the CPU sums a buffer a kernel has just written
//!   (its pages `Device`);
//! - [`PrefetchFresh`] against [`PrefetchReused`]: `prefetch(Device)` of a newly allocated
//!   and filled `Vec` against the same call on a reused one the CPU has just rewritten;
//! - [`ZeroHome`] against [`PlainZero`]: the bytes copied home when the CPU writes a
//!   `vec![0u32; n]` that a kernel has read (never written by anyone: nothing to copy).

use std::time::{Duration, Instant};

use anyhow::ensure;
use ash::vk;
use vkhmm::{Kernel, Location, Push, Runtime, Stats, TransferPath};

use super::raw_ash::{barrier, copy, copy_regions, fill, saxpy_groups, Buf, Mem, Pipeline, Vk};
use super::{checksum, SaxpyParams, PAGE};

/// Relaxation steps per run of [`Resident`].
pub const RESIDENT_STEPS: usize = 20;

/// Elements [`Edits`] changes, and reads, per step.
pub const EDITS: usize = 1000;

/// Workgroups of the relaxation and checksum kernels: each invocation takes a grid-stride
/// share of n / (256 · groups) elements, so that their atomics (one per workgroup, one per
/// invocation) stay few.
const REDUCE_GROUPS: u32 = 1024;

/// One relaxation step with its residual, the kernel of [`Resident`] and [`ResidentTwin`].
pub const RELAX_WGSL: &str = r#"
// One relaxation step over a state vector: `state[i] = state[i] * 0.5 + 1.0` for `i < n`,
// and the step's residual, the largest change `|next - old|`, into `residual[slot]` as f32
// bits (changes are non-negative, and non-negative floats order as their bits do).
// `residual[slot]` must be zero before the step; invocation 0 clears `residual[1 - slot]`
// for the next one, so steps that alternate `slot` need no CPU write in between.

struct Params {
    n: u32,
    slot: u32,
}

@group(0) @binding(0) var<storage, read_write> state: array<f32>;
@group(0) @binding(1) var<storage, read_write> residual: array<atomic<u32>>;
var<immediate> params: Params;

var<workgroup> scratch: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = params.n;
    let stride = groups.x * 256u;
    var change = 0.0;
    for (var i = gid.x; i < n; i += stride) {
        let old = state[i];
        let next = old * 0.5 + 1.0;
        state[i] = next;
        change = max(change, abs(next - old));
        if n - i <= stride {
            break;
        }
    }
    scratch[lid.x] = change;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if lid.x < half {
            scratch[lid.x] = max(scratch[lid.x], scratch[lid.x + half]);
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        atomicMax(&residual[params.slot], bitcast<u32>(scratch[0]));
    }
    if gid.x == 0u {
        atomicStore(&residual[1u - params.slot], 0u);
    }
}
"#;

/// Push constants of [`RELAX_WGSL`].
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RelaxParams {
    n: u32,
    slot: u32,
}

/// Push constants of `shaders/add_k.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AddParams {
    n: u32,
    k: u32,
}

/// Push constants of `shaders/checksum.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CountParams {
    n: u32,
}

/// Element `i` of `x` at step `k`: small integers, so that every sum below is exact in f32
/// and f64, and a different fill at every step.
pub fn x_value(i: usize, k: usize) -> f32 {
    ((i + k) % 8) as f32
}

/// The saxpy scale of step `k` (changes from step to step, so a stale result shows).
pub fn scale(k: usize) -> f32 {
    (k % 5 + 1) as f32
}

/// What saxpy adds to the sum of `y` at step `k` over `n` elements (a multiple of 8): the
/// scale times the sum of `x`, 3.5 per element whatever the step.
fn saxpy_gain(n: usize, k: usize) -> f64 {
    f64::from(scale(k)) * 3.5 * n as f64
}

/// Element `i` of the state at the start of run `run` of [`Resident`].
fn state_value(i: usize, run: usize) -> f32 {
    ((i + run) % 8) as f32
}

/// The residual of relaxation step `s` (1-based): every element moves halfway to 2, so the
/// largest change is |7 - 2| / 2^s (exact in f32).
fn relax_residual(s: usize) -> f32 {
    5.0 / (1u32 << s) as f32
}

/// The sum of the state after [`RESIDENT_STEPS`] steps, `n` a multiple of 8: element v
/// becomes 2 + (v - 2) / 2^steps, exactly.
fn relax_sum(n: usize) -> f64 {
    let steps = f64::from(1u32 << RESIDENT_STEPS);
    n as f64 / 8.0 * (16.0 + 12.0 / steps)
}

/// Workgroups of `add_k` (64 invocations each) over `n` elements.
fn add_groups(n: usize) -> u32 {
    n.div_ceil(64).clamp(1, 1024) as u32
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes or reads of [`scattered`].
#[derive(Debug, Clone, Copy)]
enum Scatter {
    Write = 1,
    Read = 2,
}

/// The `j`-th of the [`EDITS`] scattered indices of step `k` into `n` elements: one in each
/// of [`EDITS`] equal slices, at a pseudo-random place, so that none repeats within a step.
fn scattered(j: usize, k: usize, what: Scatter, n: usize) -> usize {
    let slice = n / EDITS;
    let h = mix(((k as u64) << 32) ^ ((j as u64) << 2) ^ what as u64);
    j * slice + (h % slice as u64) as usize
}

/// The value step `k` of [`Edits`] writes at index `w`.
fn edit_value(w: usize, k: usize) -> u32 {
    (w as u32).wrapping_mul(0x9e37_79b9) ^ k as u32
}

/// Writes every element of `buf`, the same CPU work on every side of a micro-pattern.
pub fn rewrite(buf: &mut [u32], k: u32) {
    for (i, v) in buf.iter_mut().enumerate() {
        *v = i as u32 ^ k;
    }
}

/// Sum of `buf` in u64 (four lanes, as [`checksum`]).
pub fn sum_u32(buf: &[u32]) -> u64 {
    let mut acc = [0u64; 4];
    let chunks = buf.chunks_exact(4);
    let tail: u64 = chunks.remainder().iter().map(|&x| u64::from(x)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += u64::from(x);
        }
    }
    acc.iter().sum::<u64>() + tail
}

/// What a vkhmm side moved and served per run, from the [`Stats`] over several runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerRun {
    /// Runs the figures below are averaged over.
    pub runs: usize,
    /// CPU faults per run.
    pub faults: f64,
    /// MiB copied to the device per run.
    pub to_device_mib: f64,
    /// MiB copied home per run.
    pub to_host_mib: f64,
    /// MiB zero-filled on the device (never-touched pages) per run.
    pub zero_filled_mib: f64,
    /// Milliseconds in kernels (submit to completion) per run.
    pub kernel_ms: f64,
}

impl PerRun {
    /// `delta` (the stats over `runs` runs) per run.
    pub fn new(delta: Stats, runs: usize) -> PerRun {
        let r = runs.max(1) as f64;
        let mib = |b: u64| b as f64 / (1 << 20) as f64 / r;
        PerRun {
            runs,
            faults: delta.cpu_faults as f64 / r,
            to_device_mib: mib(delta.bytes_to_device),
            to_host_mib: mib(delta.bytes_to_host),
            zero_filled_mib: mib(delta.bytes_zero_filled),
            kernel_ms: delta.kernel_time.as_secs_f64() * 1e3 / r,
        }
    }
}

/// Seconds of one run by phase: CPU writes (allocation and fill included), device work
/// (launches, or submits and waits), CPU reads, freeing.
pub type Parts = [f64; 4];

/// [`Parts`] index of the CPU's writes.
const WRITE: usize = 0;
/// [`Parts`] index of the device work.
const DEVICE: usize = 1;
/// [`Parts`] index of the CPU's reads.
const READ: usize = 2;
/// [`Parts`] index of freeing.
const FREE: usize = 3;

/// A stopwatch that splits a run into [`Parts`].
struct Laps {
    start: Instant,
    last: Instant,
    parts: Parts,
}

impl Laps {
    fn start() -> Laps {
        let now = Instant::now();
        Laps {
            start: now,
            last: now,
            parts: [0.0; 4],
        }
    }

    /// Adds the time since the last lap to part `i`.
    fn lap(&mut self, i: usize) {
        let now = Instant::now();
        self.parts[i] += (now - self.last).as_secs_f64();
        self.last = now;
    }

    /// The time from the start to the last lap.
    fn total(&self) -> Duration {
        self.last - self.start
    }
}

/// A twin's buffer as an expert lays it out on `path`: on Direct one [`Mem::Mapped`] buffer
/// that the kernel binds and the CPU fills and reads in place; on Staged a device-local
/// buffer reached through a staging buffer of the same size.
pub struct TwinBuf {
    dev: Buf,
    staging: Option<Buf>,
}

impl TwinBuf {
    /// A buffer of `bytes` bytes for `path`.
    pub fn new(vk: &Vk, bytes: u64, path: TransferPath) -> anyhow::Result<TwinBuf> {
        Ok(if path == TransferPath::Direct {
            TwinBuf {
                dev: vk.buffer_in(bytes, Mem::Mapped)?,
                staging: None,
            }
        } else {
            TwinBuf {
                dev: vk.buffer_in(bytes, Mem::Device)?,
                staging: Some(vk.buffer_in(bytes, Mem::Staging)?),
            }
        })
    }

    /// The memory the CPU writes and reads: the mapped buffer itself, or the staging buffer.
    pub fn host<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        match &mut self.staging {
            Some(s) => s.typed(),
            None => self.dev.typed(),
        }
    }

    /// The buffer kernels bind.
    pub fn raw(&self) -> vk::Buffer {
        self.dev.raw
    }

    /// Bytes one whole upload or download copies (0 on Direct: nothing is copied).
    pub fn copy_bytes(&self) -> u64 {
        self.staging.as_ref().map_or(0, |s| s.size)
    }

    /// Records the copy of the staging buffer into the device buffer (nothing on Direct).
    fn upload(&self, d: &ash::Device, cmd: vk::CommandBuffer) {
        if let Some(s) = &self.staging {
            copy(d, cmd, s.raw, self.dev.raw, s.size);
        }
    }

    /// Records the copy of the device buffer into the staging buffer (nothing on Direct).
    fn download(&self, d: &ash::Device, cmd: vk::CommandBuffer) {
        if let Some(s) = &self.staging {
            copy(d, cmd, self.dev.raw, s.raw, s.size);
        }
    }
}

/// Copies and fills before the kernel.
fn before_kernel(d: &ash::Device, cmd: vk::CommandBuffer) {
    barrier(
        d,
        cmd,
        vk::PipelineStageFlags::TRANSFER,
        vk::AccessFlags::TRANSFER_WRITE,
        vk::PipelineStageFlags::COMPUTE_SHADER,
        vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
    );
}

/// The kernel's writes before copies out and host reads.
fn after_kernel(d: &ash::Device, cmd: vk::CommandBuffer) {
    barrier(
        d,
        cmd,
        vk::PipelineStageFlags::COMPUTE_SHADER,
        vk::AccessFlags::SHADER_WRITE,
        vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::HOST,
        vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::HOST_READ,
    );
}

/// Copies out before host reads.
fn before_host(d: &ash::Device, cmd: vk::CommandBuffer) {
    barrier(
        d,
        cmd,
        vk::PipelineStageFlags::TRANSFER,
        vk::AccessFlags::TRANSFER_WRITE,
        vk::PipelineStageFlags::HOST,
        vk::AccessFlags::HOST_READ,
    );
}

/// The SPIR-V of [`RELAX_WGSL`], compiled as vkhmm compiles it.
fn relax_spirv() -> anyhow::Result<Vec<u32>> {
    Ok(vkhmm::shader::compile_wgsl(RELAX_WGSL)?)
}

/// Fresh buffers every step: allocate `x` and `y`, fill `x`, saxpy, sum all of `y`, drop both.
pub struct Fresh<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    n: usize,
    step: usize,
    /// The phases of the last run.
    pub parts: Parts,
}

impl<'a> Fresh<'a> {
    /// `n` floats per vector (a multiple of 8).
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(Fresh {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::SAXPY_WGSL, "main")?,
            n,
            step: 0,
            parts: [0.0; 4],
        })
    }

    /// One step.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.n, self.step);
        let params = SaxpyParams {
            a: scale(k),
            n: n as u32,
        };
        let mut t = Laps::start();
        let x: Vec<f32> = (0..n).map(|i| x_value(i, k)).collect();
        let mut y = vec![0f32; n];
        t.lap(WRITE);
        self.rt.launch(
            &self.kernel,
            [saxpy_groups(n), 1, 1],
            (&x, &mut y, Push(&params)),
        )?;
        t.lap(DEVICE);
        let sum = checksum(&y);
        t.lap(READ);
        drop(x);
        drop(y);
        t.lap(FREE);
        let d = t.total();
        self.parts = t.parts;
        ensure!(sum == saxpy_gain(n, k), "fresh (vkhmm): wrong sum");
        Ok(d)
    }
}

/// The host side of [`Fresh`] with no device, and the two copies any migration of its
/// `Vec`s makes: each step allocates and fills `x` and copies it into a buffer kept across
/// steps (where an upload puts it), allocates `y` zeroed and copies a result into it (what
/// comes home), reads all of `y`, and drops both, as [`Fresh`] does around its launch. What
/// the fresh `Vec`s cost the program whatever runs the kernel (the twin keeps its buffers
/// and, on the Direct path, copies nothing).
pub struct FreshVecs {
    n: usize,
    step: usize,
    /// Where `x` is copied (an upload's destination).
    up: Vec<f32>,
    /// What is copied into `y` (a result's source), and its checksum.
    result: Vec<f32>,
    expected: f64,
}

impl FreshVecs {
    /// `n` elements per vector.
    pub fn new(n: usize) -> Self {
        let result: Vec<f32> = (0..n).map(|i| x_value(i, 3)).collect();
        let expected = checksum(&result);
        FreshVecs {
            n,
            step: 0,
            up: vec![0.0; n],
            result,
            expected,
        }
    }

    /// One step.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.n, self.step);
        let t = Instant::now();
        let x: Vec<f32> = (0..n).map(|i| x_value(i, k)).collect();
        self.up.copy_from_slice(&x);
        let mut y = vec![0f32; n];
        y.copy_from_slice(&self.result);
        let sum = checksum(std::hint::black_box(&y));
        std::hint::black_box((&x, &self.up));
        drop(x);
        drop(y);
        let d = t.elapsed();
        ensure!(sum == self.expected, "fresh vectors: wrong sum of y");
        Ok(d)
    }
}

/// The twin of [`Fresh`]: buffers allocated once; each step fills `x` in its mapped or
/// staging memory, clears `y` on the device, uploads `x`, runs saxpy, reads `y` back.
pub struct FreshTwin {
    pipeline: Pipeline,
    x: TwinBuf,
    y: TwinBuf,
    n: usize,
    step: usize,
    /// Bytes one step copies (`vkCmdCopyBuffer`; 0 on Direct).
    pub copied: u64,
    /// The phases of the last run.
    pub parts: Parts,
}

impl FreshTwin {
    /// `n` floats per vector (a multiple of 8), on `path`.
    pub fn new(vk: &Vk, n: usize, path: TransferPath) -> anyhow::Result<FreshTwin> {
        let x = TwinBuf::new(vk, n as u64 * 4, path)?;
        let y = TwinBuf::new(vk, n as u64 * 4, path)?;
        let pipeline = Pipeline::new(vk, vkhmm::shaders::SAXPY_SPIRV, 8, &[&x.dev, &y.dev])?;
        let copied = x.copy_bytes() + y.copy_bytes();
        Ok(FreshTwin {
            pipeline,
            x,
            y,
            n,
            step: 0,
            copied,
            parts: [0.0; 4],
        })
    }

    /// One step.
    pub fn run(&mut self, vk: &Vk) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.n, self.step);
        let params = SaxpyParams {
            a: scale(k),
            n: n as u32,
        };
        let mut t = Laps::start();
        for (i, v) in self.x.host::<f32>().iter_mut().enumerate() {
            *v = x_value(i, k);
        }
        t.lap(WRITE);
        let (x, y, pipeline) = (&self.x, &self.y, &self.pipeline);
        vk.submit_wait(|d, cmd| {
            x.upload(d, cmd);
            fill(d, cmd, y.raw(), 0);
            before_kernel(d, cmd);
            pipeline.record(d, cmd, bytemuck::bytes_of(&params), saxpy_groups(n));
            after_kernel(d, cmd);
            y.download(d, cmd);
            before_host(d, cmd);
        })?;
        t.lap(DEVICE);
        let sum = checksum(self.y.host());
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        ensure!(sum == saxpy_gain(n, k), "fresh (ash): wrong sum");
        Ok(d)
    }
}

/// Buffers that live across steps: the CPU rewrites all of `x`, saxpy, the CPU sums all of
/// `y` (which accumulates).
pub struct Iterate<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    x: Vec<f32>,
    y: Vec<f32>,
    step: usize,
    expect: f64,
    /// The phases of the last run.
    pub parts: Parts,
}

impl<'a> Iterate<'a> {
    /// `n` floats per vector (a multiple of 8), `y` zero.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(Iterate {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::SAXPY_WGSL, "main")?,
            x: vec![0.0; n],
            y: vec![0.0; n],
            step: 0,
            expect: 0.0,
            parts: [0.0; 4],
        })
    }

    /// One step.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.x.len(), self.step);
        let params = SaxpyParams {
            a: scale(k),
            n: n as u32,
        };
        let mut t = Laps::start();
        for (i, v) in self.x.iter_mut().enumerate() {
            *v = x_value(i, k);
        }
        t.lap(WRITE);
        self.rt.launch(
            &self.kernel,
            [saxpy_groups(n), 1, 1],
            (&self.x, &mut self.y, Push(&params)),
        )?;
        t.lap(DEVICE);
        let sum = checksum(&self.y);
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        self.expect += saxpy_gain(n, k);
        ensure!(sum == self.expect, "iterate (vkhmm): wrong sum");
        Ok(d)
    }
}

/// The twin of [`Iterate`]: `x` written in its mapped or staging memory and uploaded, `y`
/// kept on the device and read back each step.
pub struct IterateTwin {
    pipeline: Pipeline,
    x: TwinBuf,
    y: TwinBuf,
    n: usize,
    step: usize,
    expect: f64,
    /// Bytes one step copies (`vkCmdCopyBuffer`; 0 on Direct).
    pub copied: u64,
    /// The phases of the last run.
    pub parts: Parts,
}

impl IterateTwin {
    /// `n` floats per vector (a multiple of 8), `y` zero, on `path`.
    pub fn new(vk: &Vk, n: usize, path: TransferPath) -> anyhow::Result<IterateTwin> {
        let x = TwinBuf::new(vk, n as u64 * 4, path)?;
        let y = TwinBuf::new(vk, n as u64 * 4, path)?;
        let pipeline = Pipeline::new(vk, vkhmm::shaders::SAXPY_SPIRV, 8, &[&x.dev, &y.dev])?;
        vk.submit_wait(|d, cmd| fill(d, cmd, y.raw(), 0))?;
        let copied = x.copy_bytes() + y.copy_bytes();
        Ok(IterateTwin {
            pipeline,
            x,
            y,
            n,
            step: 0,
            expect: 0.0,
            copied,
            parts: [0.0; 4],
        })
    }

    /// One step.
    pub fn run(&mut self, vk: &Vk) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.n, self.step);
        let params = SaxpyParams {
            a: scale(k),
            n: n as u32,
        };
        let mut t = Laps::start();
        for (i, v) in self.x.host::<f32>().iter_mut().enumerate() {
            *v = x_value(i, k);
        }
        t.lap(WRITE);
        let (x, y, pipeline) = (&self.x, &self.y, &self.pipeline);
        vk.submit_wait(|d, cmd| {
            x.upload(d, cmd);
            before_kernel(d, cmd);
            pipeline.record(d, cmd, bytemuck::bytes_of(&params), saxpy_groups(n));
            after_kernel(d, cmd);
            y.download(d, cmd);
            before_host(d, cmd);
        })?;
        t.lap(DEVICE);
        let sum = checksum(self.y.host());
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        self.expect += saxpy_gain(n, k);
        ensure!(sum == self.expect, "iterate (ash): wrong sum");
        Ok(d)
    }
}

/// A state updated in place: the CPU writes it, [`RESIDENT_STEPS`] relaxation steps run on
/// the device, the CPU reads each step's residual (one scalar), then sums the whole state.
pub struct Resident<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    state: Vec<f32>,
    residual: Vec<u32>,
    run: usize,
    /// The phases of the last run (the steps and their residuals are device work).
    pub parts: Parts,
}

impl<'a> Resident<'a> {
    /// A state of `n` floats (a multiple of 8).
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(Resident {
            rt,
            kernel: rt.kernel_wgsl(RELAX_WGSL, "main")?,
            state: vec![0.0; n],
            residual: vec![0; 2],
            run: 0,
            parts: [0.0; 4],
        })
    }

    /// One run of the program.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.run += 1;
        let (n, run) = (self.state.len(), self.run);
        let mut t = Laps::start();
        for (i, v) in self.state.iter_mut().enumerate() {
            *v = state_value(i, run);
        }
        self.residual.fill(0);
        t.lap(WRITE);
        for s in 0..RESIDENT_STEPS {
            let slot = s % 2;
            let params = RelaxParams {
                n: n as u32,
                slot: slot as u32,
            };
            self.rt.launch(
                &self.kernel,
                [REDUCE_GROUPS, 1, 1],
                (&mut self.state, &mut self.residual, Push(&params)),
            )?;
            let residual = f32::from_bits(self.residual[slot]);
            ensure!(
                residual == relax_residual(s + 1),
                "resident (vkhmm): residual {residual} at step {}",
                s + 1
            );
        }
        t.lap(DEVICE);
        let sum = checksum(&self.state);
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        ensure!(sum == relax_sum(n), "resident (vkhmm): wrong sum");
        Ok(d)
    }
}

/// The twin of [`Resident`]: the state written in its mapped or staging memory and uploaded
/// once, each step's residual read back (8 bytes), the state read back with the last step.
pub struct ResidentTwin {
    pipeline: Pipeline,
    state: TwinBuf,
    residual: TwinBuf,
    n: usize,
    run: usize,
    /// Bytes one run copies (`vkCmdCopyBuffer`; 0 on Direct).
    pub copied: u64,
    /// The phases of the last run.
    pub parts: Parts,
}

impl ResidentTwin {
    /// A state of `n` floats (a multiple of 8), on `path`.
    pub fn new(vk: &Vk, n: usize, path: TransferPath) -> anyhow::Result<ResidentTwin> {
        let state = TwinBuf::new(vk, n as u64 * 4, path)?;
        let residual = TwinBuf::new(vk, 8, path)?;
        let pipeline = Pipeline::new(vk, &relax_spirv()?, 8, &[&state.dev, &residual.dev])?;
        let copied = 2 * state.copy_bytes() + (1 + RESIDENT_STEPS as u64) * residual.copy_bytes();
        Ok(ResidentTwin {
            pipeline,
            state,
            residual,
            n,
            run: 0,
            copied,
            parts: [0.0; 4],
        })
    }

    /// One run of the program.
    pub fn run(&mut self, vk: &Vk) -> anyhow::Result<Duration> {
        self.run += 1;
        let (n, run) = (self.n, self.run);
        let mut t = Laps::start();
        for (i, v) in self.state.host::<f32>().iter_mut().enumerate() {
            *v = state_value(i, run);
        }
        self.residual.host::<u32>().fill(0);
        t.lap(WRITE);
        for s in 0..RESIDENT_STEPS {
            let slot = s % 2;
            let params = RelaxParams {
                n: n as u32,
                slot: slot as u32,
            };
            let (state, residual, pipeline) = (&self.state, &self.residual, &self.pipeline);
            vk.submit_wait(|d, cmd| {
                if s == 0 {
                    state.upload(d, cmd);
                    residual.upload(d, cmd);
                    before_kernel(d, cmd);
                }
                pipeline.record(d, cmd, bytemuck::bytes_of(&params), REDUCE_GROUPS);
                after_kernel(d, cmd);
                residual.download(d, cmd);
                if s + 1 == RESIDENT_STEPS {
                    state.download(d, cmd);
                }
                before_host(d, cmd);
            })?;
            let residual = f32::from_bits(self.residual.host::<u32>()[slot]);
            ensure!(
                residual == relax_residual(s + 1),
                "resident (ash): residual {residual} at step {}",
                s + 1
            );
        }
        t.lap(DEVICE);
        let sum = checksum(self.state.host());
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        ensure!(sum == relax_sum(n), "resident (ash): wrong sum");
        Ok(d)
    }
}

/// A buffer that stays on the device: each step the CPU changes [`EDITS`] scattered
/// elements, `add_k` adds 1 to every element, the CPU reads [`EDITS`] scattered results.
pub struct Edits<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    data: Vec<u32>,
    step: usize,
    /// The sum of the elements each step read, step by step (the twin's must be the same).
    pub sums: Vec<u64>,
    /// The phases of the last run.
    pub parts: Parts,
}

impl<'a> Edits<'a> {
    /// `n` words (at least [`EDITS`]), word i holding i.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(Edits {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::ADD_K_WGSL, "main")?,
            data: (0..n).map(|i| i as u32).collect(),
            step: 0,
            sums: Vec::new(),
            parts: [0.0; 4],
        })
    }

    /// One step.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.data.len(), self.step);
        let params = AddParams { n: n as u32, k: 1 };
        let mut t = Laps::start();
        for j in 0..EDITS {
            let w = scattered(j, k, Scatter::Write, n);
            self.data[w] = edit_value(w, k);
        }
        t.lap(WRITE);
        self.rt.launch(
            &self.kernel,
            [add_groups(n), 1, 1],
            (&mut self.data, Push(&params)),
        )?;
        t.lap(DEVICE);
        let sum: u64 = (0..EDITS)
            .map(|j| u64::from(self.data[scattered(j, k, Scatter::Read, n)]))
            .sum();
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        self.sums.push(sum);
        Ok(d)
    }
}

/// The twin of [`Edits`]: on Direct the CPU edits and reads the mapped buffer in place; on
/// Staged the edits go into a small staging buffer and [`EDITS`] copy regions carry them to
/// the device, and [`EDITS`] regions carry the read elements back.
pub struct EditsTwin {
    pipeline: Pipeline,
    data: Buf,
    /// Staged: the edits' staging buffer and the reads' readback buffer ([`EDITS`] words).
    staging: Option<(Buf, Buf)>,
    regions: (Vec<vk::BufferCopy>, Vec<vk::BufferCopy>),
    n: usize,
    step: usize,
    /// The sum of the elements each step read, step by step.
    pub sums: Vec<u64>,
    /// Bytes one step copies (`vkCmdCopyBuffer`; 0 on Direct).
    pub copied: u64,
    /// The phases of the last run.
    pub parts: Parts,
}

impl EditsTwin {
    /// `n` words (at least [`EDITS`]), word i holding i, on `path`.
    pub fn new(vk: &Vk, n: usize, path: TransferPath) -> anyhow::Result<EditsTwin> {
        let bytes = n as u64 * 4;
        let (mut data, staging) = if path == TransferPath::Direct {
            (vk.buffer_in(bytes, Mem::Mapped)?, None)
        } else {
            let small = EDITS as u64 * 4;
            let pair = (
                vk.buffer_in(small, Mem::Staging)?,
                vk.buffer_in(small, Mem::Staging)?,
            );
            (vk.buffer_in(bytes, Mem::Device)?, Some(pair))
        };
        if staging.is_some() {
            let mut init = vk.buffer_in(bytes, Mem::Staging)?;
            init.typed::<u32>()
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = i as u32);
            vk.submit_wait(|d, cmd| copy(d, cmd, init.raw, data.raw, bytes))?;
        } else {
            data.typed::<u32>()
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = i as u32);
        }
        let pipeline = Pipeline::new(vk, vkhmm::shaders::ADD_K_SPIRV, 8, &[&data])?;
        let copied = if staging.is_some() {
            2 * EDITS as u64 * 4
        } else {
            0
        };
        Ok(EditsTwin {
            pipeline,
            data,
            staging,
            regions: (Vec::with_capacity(EDITS), Vec::with_capacity(EDITS)),
            n,
            step: 0,
            sums: Vec::new(),
            copied,
            parts: [0.0; 4],
        })
    }

    /// One step.
    pub fn run(&mut self, vk: &Vk) -> anyhow::Result<Duration> {
        self.step += 1;
        let (n, k) = (self.n, self.step);
        let params = AddParams { n: n as u32, k: 1 };
        let push = bytemuck::bytes_of(&params);
        let mut t = Laps::start();
        let sum: u64 = match &mut self.staging {
            None => {
                let words = self.data.typed::<u32>();
                for j in 0..EDITS {
                    let w = scattered(j, k, Scatter::Write, n);
                    words[w] = edit_value(w, k);
                }
                t.lap(WRITE);
                let pipeline = &self.pipeline;
                vk.submit_wait(|d, cmd| {
                    pipeline.record(d, cmd, push, add_groups(n));
                    after_kernel(d, cmd);
                })?;
                t.lap(DEVICE);
                let words = self.data.typed::<u32>();
                (0..EDITS)
                    .map(|j| u64::from(words[scattered(j, k, Scatter::Read, n)]))
                    .sum()
            }
            Some((edits, reads)) => {
                let (into, out) = &mut self.regions;
                into.clear();
                out.clear();
                let values = edits.typed::<u32>();
                for (j, v) in values.iter_mut().enumerate() {
                    let w = scattered(j, k, Scatter::Write, n);
                    *v = edit_value(w, k);
                    into.push(vk::BufferCopy {
                        src_offset: j as u64 * 4,
                        dst_offset: w as u64 * 4,
                        size: 4,
                    });
                    out.push(vk::BufferCopy {
                        src_offset: scattered(j, k, Scatter::Read, n) as u64 * 4,
                        dst_offset: j as u64 * 4,
                        size: 4,
                    });
                }
                t.lap(WRITE);
                let (data, pipeline) = (self.data.raw, &self.pipeline);
                let (e, r) = (edits.raw, reads.raw);
                vk.submit_wait(|d, cmd| {
                    copy_regions(d, cmd, e, data, into);
                    before_kernel(d, cmd);
                    pipeline.record(d, cmd, push, add_groups(n));
                    after_kernel(d, cmd);
                    copy_regions(d, cmd, data, r, out);
                    before_host(d, cmd);
                })?;
                t.lap(DEVICE);
                reads.typed::<u32>().iter().map(|&v| u64::from(v)).sum()
            }
        };
        t.lap(READ);
        let d = t.total();
        self.parts = t.parts;
        self.sums.push(sum);
        Ok(d)
    }
}

/// The plain-memory side of the micro-patterns: the same CPU work on an ordinary `Vec<u32>`
/// that no runtime has seen, every page resident.
pub struct Plain {
    buf: Vec<u32>,
    k: u32,
    /// The sum the last [`Plain::read`] found.
    pub sum: u64,
}

impl Plain {
    /// `n` words, written once.
    pub fn new(n: usize) -> Plain {
        let mut buf = vec![0; n];
        rewrite(&mut buf, 0);
        Plain { buf, k: 0, sum: 0 }
    }

    /// Timed: [`rewrite`] of every element.
    pub fn rewrite(&mut self) -> anyhow::Result<Duration> {
        self.k += 1;
        let t = Instant::now();
        rewrite(&mut self.buf, self.k);
        let d = t.elapsed();
        std::hint::black_box(&mut self.buf);
        Ok(d)
    }

    /// Timed: [`sum_u32`] of every element.
    pub fn read(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.sum = sum_u32(std::hint::black_box(&self.buf));
        Ok(t.elapsed())
    }
}

/// Untimed: a kernel (`checksum`) reads the buffer; timed: the CPU rewrites every element.
///
/// With `every_step` the same buffer serves every run, as in a loop that updates its input
/// and launches: from the second run on the runtime guesses the rewrite and leaves the
/// pages writable (`Host`). Without it each run reads a new buffer, whose pages the launch
/// leaves `Shared` (write-protected): the first rewrite after a launch.
pub struct RewriteShared<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    buf: Vec<u32>,
    out: Vec<u32>,
    k: u32,
    every_step: bool,
    /// Pages `Shared` when the last timed rewrite began.
    pub shared: usize,
    /// Stats over the timed part of the last run.
    pub delta: Stats,
}

impl<'a> RewriteShared<'a> {
    /// `n` words.
    pub fn new(rt: &'a Runtime, n: usize, every_step: bool) -> anyhow::Result<Self> {
        Ok(RewriteShared {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::CHECKSUM_WGSL, "main")?,
            buf: Self::filled(n),
            out: vec![0; 1],
            k: 0,
            every_step,
            shared: 0,
            delta: Stats::default(),
        })
    }

    fn filled(n: usize) -> Vec<u32> {
        let mut buf = vec![0; n];
        rewrite(&mut buf, 0);
        buf
    }

    /// One run.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let n = self.buf.len();
        if !self.every_step {
            self.buf = Self::filled(n);
        }
        self.out[0] = 0;
        self.rt.launch(
            &self.kernel,
            [REDUCE_GROUPS, 1, 1],
            (&self.buf, &mut self.out, Push(&CountParams { n: n as u32 })),
        )?;
        self.shared = self.rt.residency(&self.buf).shared;
        ensure!(
            self.every_step || self.shared + 2 >= n * 4 / PAGE,
            "rewrite: only {} pages Shared after the kernel read them",
            self.shared
        );
        self.k += 1;
        let before = self.rt.stats();
        let t = Instant::now();
        rewrite(&mut self.buf, self.k);
        let d = t.elapsed();
        self.delta = self.rt.stats() - before;
        Ok(d)
    }
}

/// Untimed: a kernel (`add_k`) adds 1 to every element, its pages become `Device`; timed: the
/// CPU sums every element.
pub struct ReadResult<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    buf: Vec<u32>,
    rounds: u64,
    /// Stats over the timed part of the last run.
    pub delta: Stats,
}

impl<'a> ReadResult<'a> {
    /// `n` words, word i holding i.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(ReadResult {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::ADD_K_WGSL, "main")?,
            buf: (0..n).map(|i| i as u32).collect(),
            rounds: 0,
            delta: Stats::default(),
        })
    }

    /// One run.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let n = self.buf.len();
        let params = AddParams { n: n as u32, k: 1 };
        self.rt.launch(
            &self.kernel,
            [add_groups(n), 1, 1],
            (&mut self.buf, Push(&params)),
        )?;
        self.rounds += 1;
        let before = self.rt.stats();
        let t = Instant::now();
        let sum = sum_u32(&self.buf);
        let d = t.elapsed();
        self.delta = self.rt.stats() - before;
        let n = n as u64;
        ensure!(
            sum == n * (n - 1) / 2 + n * self.rounds,
            "read (vkhmm): wrong sum"
        );
        Ok(d)
    }
}

/// Untimed: allocate and fill a new `Vec`; timed: `prefetch(Device)` of it; untimed: drop it.
pub struct PrefetchFresh<'a> {
    rt: &'a Runtime,
    n: usize,
    k: u32,
    /// Stats over the timed part of the last run.
    pub delta: Stats,
}

impl<'a> PrefetchFresh<'a> {
    /// `n` words per allocation.
    pub fn new(rt: &'a Runtime, n: usize) -> Self {
        PrefetchFresh {
            rt,
            n,
            k: 0,
            delta: Stats::default(),
        }
    }

    /// One run.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.k += 1;
        let k = self.k;
        let v: Vec<u32> = (0..self.n).map(|i| i as u32 ^ k).collect();
        let before = self.rt.stats();
        let t = Instant::now();
        self.rt.prefetch(&v, Location::Device)?;
        let d = t.elapsed();
        self.delta = self.rt.stats() - before;
        drop(v);
        Ok(d)
    }
}

/// Untimed: the CPU rewrites a `Vec` that lives across runs (device-resident since the last
/// run: the writes fault it home); timed: `prefetch(Device)` of it.
pub struct PrefetchReused<'a> {
    rt: &'a Runtime,
    buf: Vec<u32>,
    k: u32,
    /// Stats over the timed part of the last run.
    pub delta: Stats,
}

impl<'a> PrefetchReused<'a> {
    /// `n` words.
    pub fn new(rt: &'a Runtime, n: usize) -> Self {
        let mut buf = vec![0; n];
        rewrite(&mut buf, 0);
        PrefetchReused {
            rt,
            buf,
            k: 0,
            delta: Stats::default(),
        }
    }

    /// One run.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.k += 1;
        rewrite(&mut self.buf, self.k);
        let before = self.rt.stats();
        let t = Instant::now();
        self.rt.prefetch(&self.buf, Location::Device)?;
        let d = t.elapsed();
        self.delta = self.rt.stats() - before;
        Ok(d)
    }

    /// Whether the buffer holds the last run's pattern (faults it home).
    pub fn verify(&self) -> bool {
        self.buf
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u32 ^ self.k)
    }
}

/// Untimed: allocate `vec![0u32; n]` (pages never touched) and let a kernel (`checksum`)
/// read it; timed: the CPU writes every element; [`ZeroHome::delta`] says what that copied
/// home (nothing needs to: no one ever wrote the memory).
pub struct ZeroHome<'a> {
    rt: &'a Runtime,
    kernel: Kernel,
    n: usize,
    /// Stats over the launch of the last run.
    pub launch: Stats,
    /// Stats over the timed part of the last run.
    pub delta: Stats,
}

impl<'a> ZeroHome<'a> {
    /// `n` words per allocation.
    pub fn new(rt: &'a Runtime, n: usize) -> anyhow::Result<Self> {
        Ok(ZeroHome {
            rt,
            kernel: rt.kernel_wgsl(vkhmm::shaders::CHECKSUM_WGSL, "main")?,
            n,
            launch: Stats::default(),
            delta: Stats::default(),
        })
    }

    /// One run.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let n = self.n;
        let mut v = vec![0u32; n];
        let mut out = vec![0u32; 1];
        let before = self.rt.stats();
        self.rt.launch(
            &self.kernel,
            [REDUCE_GROUPS, 1, 1],
            (&v, &mut out, Push(&CountParams { n: n as u32 })),
        )?;
        let mid = self.rt.stats();
        ensure!(out[0] == 0, "zero home: the kernel read non-zero memory");
        let t = Instant::now();
        rewrite(&mut v, 1);
        let d = t.elapsed();
        self.delta = self.rt.stats() - mid;
        self.launch = mid - before;
        drop(v);
        Ok(d)
    }
}

/// The plain side of [`ZeroHome`]: allocate `vec![0u32; n]` (untimed), write every element
/// (timed; the kernel's first-touch page faults included).
pub struct PlainZero {
    n: usize,
}

impl PlainZero {
    /// `n` words per allocation.
    pub fn new(n: usize) -> PlainZero {
        PlainZero { n }
    }

    /// One run.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let mut v = vec![0u32; self.n];
        let t = Instant::now();
        rewrite(&mut v, 1);
        let d = t.elapsed();
        std::hint::black_box(&mut v);
        Ok(d)
    }
}
