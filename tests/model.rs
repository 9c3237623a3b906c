//! Model-checked semantics: random programs of CPU reads and writes, kernels, prefetches,
//! allocations and frees, run on the real runtime and on a plain `Vec<u32>` model.
//!
//! A program is a list of steps over three buffer slots, each empty, a `Vec<u32>` (malloc
//! memory: edge pages, neighbours in the heap, sometimes fresh `calloc` pages), a
//! `Managed<u32>` or an `mmap` of the test's own. Steps: allocate, free, CPU write of a
//! pattern over a range, CPU read of a range, write kernels (`ADD_K`, `FILL_INDEX`) and read
//! kernels (`CHECKSUM`, `COPY_U32` from one slot into another) over random sub-ranges
//! (binding starts 16-byte aligned), prefetches either way, a launch on an empty range (an
//! error that must change nothing), and a launch during which another thread unmaps part of
//! an `mmap` slot and maps fresh memory there (`Remap`: the launch may fail, the fresh
//! memory must keep its own contents, and later steps use it as any memory). After every step: residency adds up (host + shared + device = pages spanned)
//! for every live buffer, and a few words of each buffer are compared with the model (a
//! full comparison would fault every page home and hide most page states from the next
//! step); steps marked `full` compare everything, and so does the end of every case.
//!
//! The page states the newer mechanisms add come up by themselves: a slot allocated with
//! seed 0 is memory nothing wrote, which a read kernel leaves known-zero on the device; a
//! `Write` walks its span in order, so the write-protect windows of `Shared` pages grow.
//!
//! 500 cases per transfer path (`PROPTEST_CASES` overrides); one runtime per path, made once
//! and reused by every case. A failing case shrinks to a minimal program, which proptest
//! prints.

mod common;

use common::push::{AddK, Fill, N};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use vkhmm::{shaders, Kernel, Location, Managed, Push, Runtime, TransferPath};

const SLOTS: usize = 3;
const PAGE: usize = 4096;

struct Rt {
    rt: Runtime,
    /// Under the signal backend, which serves runtime-owned memory only: every `Vec` slot
    /// of a program becomes a `Managed` one.
    managed_only: bool,
    add: Kernel,
    fill: Kernel,
    copy: Kernel,
    sum: Kernel,
}

fn rt(path: TransferPath) -> Option<&'static Rt> {
    static DIRECT: OnceLock<Option<Rt>> = OnceLock::new();
    static STAGED: OnceLock<Option<Rt>> = OnceLock::new();
    let cell = match path {
        TransferPath::Direct => &DIRECT,
        _ => &STAGED,
    };
    cell.get_or_init(|| {
        let rt = common::runtime(path)?;
        let managed_only = rt.fault_backend() == vkhmm::FaultBackend::Signal;
        if managed_only {
            // That backend copies heap memory through (checked here); the programs run on
            // `Managed` slots only.
            common::assert_foreign_copied_through(&rt, path);
        }
        let k = |src| rt.kernel_wgsl(src, "main").unwrap();
        Some(Rt {
            managed_only,
            add: k(shaders::ADD_K_WGSL),
            fill: k(shaders::FILL_INDEX_WGSL),
            copy: k(shaders::COPY_U32_WGSL),
            sum: k(shaders::CHECKSUM_WGSL),
            rt,
        })
    })
    .as_ref()
}

/// A position as a fraction of a length (`u64::MAX` ~ 1), shrinking toward 0. Its `Debug`
/// output is Rust syntax, so a failing program can be pasted into a replay test.
#[derive(Debug, Clone, Copy)]
struct Frac(u64);

impl Frac {
    /// A position in `0..size` (`size > 0`).
    fn index(&self, size: usize) -> usize {
        ((u128::from(self.0) * size as u128) >> 64) as usize
    }
}

/// A sub-range of a buffer, as fractions of its current length (so that it shrinks well and
/// stays valid whatever the length is).
#[derive(Debug, Clone)]
struct Span {
    at: Frac,
    len: Frac,
}

impl Span {
    /// `(start, len)` in words, `len >= 1`; `aligned` rounds the start down to 4 words (16
    /// bytes), as a binding needs.
    fn resolve(&self, total: usize, aligned: bool) -> (usize, usize) {
        let mut start = self.at.index(total);
        if aligned {
            start -= start % 4;
        }
        let len = 1 + self.len.index(total - start);
        (start, len)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `vec![0; n]` (fresh pages when large), then written by `seed` unless `seed == 0`.
    Vec,
    /// `rt.alloc(n)`, then written by `seed` unless `seed == 0`.
    Managed,
    /// A private anonymous `mmap` of the program's own (so that a `Remap` step can unmap
    /// part of it), then written by `seed` unless `seed == 0`.
    Map,
}

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        slot: usize,
        kind: Kind,
        len: usize,
        seed: u32,
    },
    Free {
        slot: usize,
    },
    Write {
        slot: usize,
        span: Span,
        seed: u32,
    },
    Read {
        slot: usize,
        span: Span,
    },
    Add {
        slot: usize,
        span: Span,
        k: u32,
    },
    Fill {
        slot: usize,
        span: Span,
        mul: u32,
        add: u32,
    },
    Sum {
        slot: usize,
        span: Span,
    },
    Copy {
        src: usize,
        dst: usize,
        from: Span,
        to: Frac,
    },
    Prefetch {
        slot: usize,
        span: Span,
        device: bool,
    },
    /// A launch with an empty binding: an error, nothing changes.
    Empty {
        slot: usize,
    },
    /// Misuse, on a `Map` slot: once a launch that copies a fresh source into the slot has
    /// begun moving its buffers, another thread unmaps pages `pages` of the slot after
    /// `delay` µs, maps fresh memory there at once and fills it with `seed`'s pattern. The
    /// launch may fail or not; the fresh memory must hold exactly its fill, the rest of the
    /// slot its old words or the source, and later steps use it all as ordinary memory.
    Remap {
        slot: usize,
        pages: Span,
        seed: u32,
        delay: u8,
    },
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    /// Compare every word of every buffer after this step.
    full: bool,
}

fn span() -> impl Strategy<Value = Span> {
    (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Span {
        at: Frac(at),
        len: Frac(len),
    })
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let len = prop_oneof![1usize..64, 64usize..4096, 4096usize..80_000];
    prop_oneof![
        3 => (slot.clone(), prop_oneof![Just(Kind::Vec), Just(Kind::Managed), Just(Kind::Map)], len, 0u32..4)
            .prop_map(|(slot, kind, len, seed)| Op::Alloc { slot, kind, len, seed }),
        1 => slot.clone().prop_map(|slot| Op::Free { slot }),
        3 => (slot.clone(), span(), 1u32..1000)
            .prop_map(|(slot, span, seed)| Op::Write { slot, span, seed }),
        2 => (slot.clone(), span()).prop_map(|(slot, span)| Op::Read { slot, span }),
        4 => (slot.clone(), span(), 1u32..100).prop_map(|(slot, span, k)| Op::Add { slot, span, k }),
        2 => (slot.clone(), span(), 0u32..5, 0u32..1000)
            .prop_map(|(slot, span, mul, add)| Op::Fill { slot, span, mul, add }),
        2 => (slot.clone(), span()).prop_map(|(slot, span)| Op::Sum { slot, span }),
        2 => (slot.clone(), slot.clone(), span(), any::<u64>())
            .prop_map(|(src, dst, from, to)| Op::Copy { src, dst, from, to: Frac(to) }),
        3 => (slot.clone(), span(), any::<bool>())
            .prop_map(|(slot, span, device)| Op::Prefetch { slot, span, device }),
        1 => slot.clone().prop_map(|slot| Op::Empty { slot }),
        2 => (slot, span(), 1u32..1000, 0u8..30)
            .prop_map(|(slot, pages, seed, delay)| Op::Remap { slot, pages, seed, delay }),
    ]
}

fn program() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (op(), prop::bool::weighted(0.2)).prop_map(|(op, full)| Step { op, full }),
        1..24,
    )
}

enum Mem {
    Vec(Vec<u32>),
    Managed(Managed<u32>),
    Map(Map),
}

/// A private anonymous mapping of `words` u32s (rounded up to pages), unmapped on drop.
struct Map {
    addr: usize,
    words: usize,
}

impl Map {
    fn new(words: usize) -> Map {
        let addr = common::map_anon(Self::bytes_for(words)) as usize;
        Map { addr, words }
    }

    fn bytes_for(words: usize) -> usize {
        (words * 4).next_multiple_of(PAGE)
    }

    fn pages(&self) -> usize {
        Self::bytes_for(self.words) / PAGE
    }

    fn data(&self) -> &[u32] {
        // SAFETY: our mapping of at least `words` u32s, alive while `self` is.
        unsafe { std::slice::from_raw_parts(self.addr as *const u32, self.words) }
    }

    fn data_mut(&mut self) -> &mut [u32] {
        // SAFETY: as above; `&mut self` makes it the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u32, self.words) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.words > 0 {
            // SAFETY: our own mapping; nothing refers to it any more.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, Self::bytes_for(self.words)) };
        }
    }
}

struct Buf {
    mem: Mem,
    model: Vec<u32>,
}

impl Buf {
    fn data(&self) -> &[u32] {
        match &self.mem {
            Mem::Vec(v) => v,
            Mem::Managed(m) => m,
            Mem::Map(m) => m.data(),
        }
    }
    fn data_mut(&mut self) -> &mut [u32] {
        match &mut self.mem {
            Mem::Vec(v) => v,
            Mem::Managed(m) => m,
            Mem::Map(m) => m.data_mut(),
        }
    }
}

fn pattern(i: usize, seed: u32) -> u32 {
    common::pattern(i, seed)
}

fn pages_spanned(s: &[u32]) -> usize {
    let a = s.as_ptr() as usize;
    (a + s.len() * 4).div_ceil(PAGE) - a / PAGE
}

/// Compares `buf` with its model: all words, or a few that depend on `salt`.
fn compare(buf: &Buf, slot: usize, full: bool, salt: usize, what: &str) -> Result<(), String> {
    let data = buf.data();
    let n = data.len();
    let bad = if full {
        (0..n).find(|&i| data[i] != buf.model[i])
    } else {
        let h = salt.wrapping_mul(0x9E37_79B9) ^ slot.wrapping_mul(0x85EB_CA6B);
        [0, n - 1, h % n, (h >> 7) % n]
            .into_iter()
            .find(|&i| data[i] != buf.model[i])
    };
    match bad {
        Some(i) => Err(format!(
            "after {what}: slot {slot} word {i} of {n} is {} but the model says {}",
            data[i], buf.model[i]
        )),
        None => Ok(()),
    }
}

/// Runs `program` on `r` and on the model; `at` tracks the step being run (for a hang
/// report).
fn run(r: &Rt, program: &[Step], at: &AtomicUsize) -> Result<(), String> {
    let rt = &r.rt;
    let mut slots: Vec<Option<Buf>> = (0..SLOTS).map(|_| None).collect();
    for (step_no, step) in program.iter().enumerate() {
        at.store(step_no, Ordering::Relaxed);
        let what = format!("step {step_no} {:?}", step.op);
        let launch_err = |e: vkhmm::Error| format!("{what}: {e}");
        match &step.op {
            Op::Alloc {
                slot,
                kind,
                len,
                seed,
            } => {
                slots[*slot] = None; // free first, so the new buffer may reuse its memory
                let mem = match kind {
                    Kind::Vec if !r.managed_only => Mem::Vec(vec![0u32; *len]),
                    Kind::Map if !r.managed_only => Mem::Map(Map::new(*len)),
                    _ => Mem::Managed(rt.alloc::<u32>(*len).map_err(launch_err)?),
                };
                let mut buf = Buf {
                    mem,
                    model: vec![0u32; *len],
                };
                if *seed != 0 {
                    let d = buf.data_mut();
                    for (i, x) in d.iter_mut().enumerate() {
                        *x = pattern(i, *seed);
                    }
                    for (i, m) in buf.model.iter_mut().enumerate() {
                        *m = pattern(i, *seed);
                    }
                }
                // A fresh buffer must read as its initial contents everywhere.
                compare(&buf, *slot, true, step_no, &what)?;
                slots[*slot] = Some(buf);
            }
            Op::Free { slot } => slots[*slot] = None,
            Op::Write { slot, span, seed } => {
                if let Some(b) = &mut slots[*slot] {
                    let (s, n) = span.resolve(b.model.len(), false);
                    for i in s..s + n {
                        let v = pattern(i, *seed);
                        b.data_mut()[i] = v;
                        b.model[i] = v;
                    }
                }
            }
            Op::Read { slot, span } => {
                if let Some(b) = &slots[*slot] {
                    let (s, n) = span.resolve(b.model.len(), false);
                    if let Some(i) = (s..s + n).find(|&i| b.data()[i] != b.model[i]) {
                        return Err(format!(
                            "{what}: slot {slot} word {i} is {} but the model says {}",
                            b.data()[i],
                            b.model[i]
                        ));
                    }
                }
            }
            Op::Add { slot, span, k } => {
                if let Some(b) = &mut slots[*slot] {
                    let (s, n) = span.resolve(b.model.len(), true);
                    let push = AddK { n: n as u32, k: *k };
                    let data = &mut b.data_mut()[s..s + n];
                    rt.launch(&r.add, common::groups(n, 64), (data, Push(&push)))
                        .map_err(launch_err)?;
                    for m in &mut b.model[s..s + n] {
                        *m = m.wrapping_add(*k);
                    }
                }
            }
            Op::Fill {
                slot,
                span,
                mul,
                add,
            } => {
                if let Some(b) = &mut slots[*slot] {
                    let (s, n) = span.resolve(b.model.len(), true);
                    let push = Fill {
                        n: n as u32,
                        mul: *mul,
                        add: *add,
                    };
                    let data = &mut b.data_mut()[s..s + n];
                    rt.launch(&r.fill, common::groups(n, 64), (data, Push(&push)))
                        .map_err(launch_err)?;
                    for (i, m) in b.model[s..s + n].iter_mut().enumerate() {
                        *m = (i as u32).wrapping_mul(*mul).wrapping_add(*add);
                    }
                }
            }
            Op::Sum { slot, span } => {
                if let Some(b) = &slots[*slot] {
                    let (s, n) = span.resolve(b.model.len(), true);
                    let (mut out_v, mut out_m);
                    let out: &mut [u32] = if r.managed_only {
                        out_m = rt.alloc::<u32>(4).map_err(launch_err)?;
                        &mut out_m
                    } else {
                        out_v = vec![0u32; 4];
                        &mut out_v
                    };
                    let push = N { n: n as u32 };
                    rt.launch(
                        &r.sum,
                        common::groups(n, 256),
                        (&b.data()[s..s + n], &mut *out, Push(&push)),
                    )
                    .map_err(launch_err)?;
                    let want = b.model[s..s + n]
                        .iter()
                        .fold(0u32, |a, x| a.wrapping_add(*x));
                    if out[0] != want || out[1..] != [0, 0, 0] {
                        return Err(format!(
                            "{what}: checksum of slot {slot} [{s}..{}] is {out:?}, model {want}",
                            s + n
                        ));
                    }
                }
            }
            Op::Copy { src, dst, from, to } => {
                if src == dst {
                    continue;
                }
                let (a, b) = if src < dst {
                    let (l, r) = slots.split_at_mut(*dst);
                    (&l[*src], &mut r[0])
                } else {
                    let (l, r) = slots.split_at_mut(*src);
                    (&r[0], &mut l[*dst])
                };
                if let (Some(a), Some(b)) = (a, b) {
                    let (s, n) = from.resolve(a.model.len(), true);
                    let mut d = to.index(b.model.len());
                    d -= d % 4;
                    let n = n.min(b.model.len() - d);
                    let push = N { n: n as u32 };
                    rt.launch(
                        &r.copy,
                        common::groups(n, 256),
                        (
                            &a.data()[s..s + n],
                            &mut b.data_mut()[d..d + n],
                            Push(&push),
                        ),
                    )
                    .map_err(launch_err)?;
                    b.model[d..d + n].copy_from_slice(&a.model[s..s + n]);
                }
            }
            Op::Prefetch { slot, span, device } => {
                if let Some(b) = &slots[*slot] {
                    let (s, n) = span.resolve(b.model.len(), false);
                    let to = if *device {
                        Location::Device
                    } else {
                        Location::Host
                    };
                    rt.prefetch(&b.data()[s..s + n], to).map_err(launch_err)?;
                }
            }
            Op::Remap {
                slot,
                pages,
                seed,
                delay,
            } => {
                if let Some(b) = &mut slots[*slot] {
                    if !remap(r, b, pages, *seed, *delay, &what)? {
                        slots[*slot] = None; // somebody else took the address: a hole
                    }
                }
            }
            Op::Empty { slot } => {
                if let Some(b) = &mut slots[*slot] {
                    let push = AddK { n: 0, k: 1 };
                    let r = rt.launch(&r.add, [1, 1, 1], (&mut b.data_mut()[..0], Push(&push)));
                    if !matches!(r, Err(vkhmm::Error::EmptyBinding { .. })) {
                        return Err(format!("{what}: an empty binding gave {r:?}"));
                    }
                }
            }
        }
        for (i, b) in slots.iter().enumerate() {
            let Some(b) = b else { continue };
            let res = rt.residency(b.data());
            let spanned = pages_spanned(b.data());
            if res.pages() != spanned {
                return Err(format!(
                    "after {what}: slot {i} residency {res:?} does not add up to {spanned} pages"
                ));
            }
            compare(b, i, step.full, step_no, &what)?;
        }
    }
    at.store(usize::MAX, Ordering::Relaxed);
    for (i, b) in slots.iter().enumerate() {
        if let Some(b) = b {
            compare(b, i, true, 0, "the last step")?;
        }
    }
    Ok(())
}

/// The `Remap` step on `b` (a no-op unless it is a `Map`). Returns false when the fresh
/// memory could not be mapped at the unmapped address (`b` has a hole then).
fn remap(
    r: &Rt,
    b: &mut Buf,
    pages: &Span,
    seed: u32,
    delay: u8,
    what: &str,
) -> Result<bool, String> {
    let Mem::Map(m) = &mut b.mem else {
        return Ok(true);
    };
    let (p0, np) = pages.resolve(m.pages(), false);
    let (lo, hi) = (p0 * PAGE, (p0 + np) * PAGE);
    let total = m.words;
    let words = |bytes: usize| (bytes / 4).min(total);
    let addr = m.addr;
    let src: Vec<u32> = (0..4096).map(|i| pattern(i, seed ^ 0x5555)).collect();
    let n = src.len().min(m.words);
    let done = AtomicBool::new(false);
    let fresh = std::thread::scope(|sc| {
        let racer = sc.spawn(|| {
            // The launch has begun moving its buffers once the source's pages are Shared.
            while r.rt.residency(&src[..]).shared == 0 && !done.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_micros(u64::from(delay)) {
                std::hint::spin_loop();
            }
            // SAFETY: pages of the test's own mapping; the launch using them is the misuse
            // under test.
            unsafe { libc::munmap((addr + lo) as *mut libc::c_void, hi - lo) };
            // SAFETY: a new private anonymous mapping where the old pages were;
            // MAP_FIXED_NOREPLACE never replaces anything.
            let p = unsafe {
                libc::mmap(
                    (addr + lo) as *mut libc::c_void,
                    hi - lo,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as usize != addr + lo {
                return false;
            }
            for i in words(lo)..words(hi) {
                // SAFETY: word `i` of the slot lies in the fresh mapping.
                unsafe { *(addr as *mut u32).add(i) = pattern(i, seed) };
            }
            true
        });
        let push = N { n: n as u32 };
        // Fails or copies: either is fine.
        let _ = r.rt.launch(
            &r.copy,
            common::groups(n, 256),
            (&src[..], &mut m.data_mut()[..n], Push(&push)),
        );
        done.store(true, Ordering::Release);
        racer.join().unwrap()
    });
    if !fresh {
        // The hole is somebody else's now: unmap only what is still ours.
        let end = Map::bytes_for(m.words);
        // SAFETY: the parts of our mapping around the hole; nothing refers to them.
        unsafe {
            libc::munmap(addr as *mut libc::c_void, lo);
            libc::munmap((addr + hi) as *mut libc::c_void, end - hi);
        }
        m.words = 0; // nothing left to unmap on drop
        return Ok(false);
    }
    let data = m.data();
    if let Some(i) = (words(lo)..words(hi)).find(|&i| data[i] != pattern(i, seed)) {
        return Err(format!(
            "{what}: word {i} of the fresh memory is {:#x}, not its fill {:#x}",
            data[i],
            pattern(i, seed)
        ));
    }
    let outside = |i: usize| i < words(lo) || i >= words(hi);
    let copied = (0..n)
        .filter(|&i| outside(i))
        .any(|i| data[i] == src[i] && src[i] != b.model[i]);
    for i in (0..m.words).filter(|&i| outside(i)) {
        let want = if copied && i < n { src[i] } else { b.model[i] };
        if data[i] != want {
            return Err(format!(
                "{what}: word {i} is {:#x}, neither the old word nor the source ({:#x})",
                data[i], want
            ));
        }
    }
    b.model.copy_from_slice(data);
    Ok(true)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES overrides (ProptestConfig::default reads it).
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(500),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// Aborts the process with the program being run when a case takes more than 60 s: a hang
/// in the runtime must fail the test with the program that caused it, never stall CI.
struct Watch {
    step: Arc<AtomicUsize>,
    _dog: common::Watchdog,
}

impl Watch {
    fn start(path: TransferPath, program: &[Step]) -> Watch {
        let step = Arc::new(AtomicUsize::new(0));
        let at = Arc::clone(&step);
        let program = format!("{program:?}");
        let dog = common::Watchdog::arm(Duration::from_secs(60), move || {
            format!(
                "a {path:?} model case, in step {} (MAX: final compare). Program:\n{program}",
                at.load(Ordering::Relaxed)
            )
        });
        Watch { step, _dog: dog }
    }
}

fn check(path: TransferPath, program: &[Step]) -> Result<(), TestCaseError> {
    let Some(r) = rt(path) else {
        return Ok(());
    };
    // One case at a time in the whole binary: a case must not depend on what another
    // thread does to the address space, or failures would not shrink.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let watch = Watch::start(path, program);
    run(r, program, &watch.step).map_err(|e| TestCaseError::fail(format!("{path:?}: {e}")))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_direct(program in program()) {
        check(TransferPath::Direct, &program)?;
    }

    #[test]
    fn model_staged(program in program()) {
        check(TransferPath::Staged, &program)?;
    }
}

/// Core bug (found by `model_direct` while `model_staged` ran beside it): a written
/// binding's *edge* page that is `Device` is brought home in `migrate::move_pages`
/// (src/migrate.rs, the `roles.edges` loop) by `to_host_claimed`; when `UFFDIO_COPY` answers
/// `EAGAIN` — which it does while another thread's `munmap` of registered memory has an
/// `UNMAP` event pending — the launch fails with `UnsupportedMemory { reason: NotMapped,
/// len: 4096 }` instead of retrying as `migrate::to_host` does.
///
/// One thread allocates, launches on and drops `Managed` buffers in a loop; this one moves a
/// `Managed` buffer to the device and launches on a sub-range that starts and ends mid-page
/// (two `Device` edge pages). Every launch must succeed. (Fails a few times in 500 rounds.)
#[test]
fn launch_on_edge_pages_while_another_thread_unmaps() {
    common::each_path(|rt, path| {
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        let stop = AtomicBool::new(false);
        let failures = std::thread::scope(|s| {
            s.spawn(|| {
                let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let mut m = rt.alloc::<u32>(8 * 1024).unwrap();
                    let push = AddK { n: 8 * 1024, k: 1 };
                    rt.launch(&add, [4, 1, 1], (&mut m[..], Push(&push)))
                        .unwrap();
                    drop(m); // munmap of registered memory: an UNMAP event
                }
            });
            let mut m = rt.alloc::<u32>(4 * 1024).unwrap();
            let mut failures = Vec::new();
            for round in 0..500 {
                let push = AddK { n: 4 * 1024, k: 1 };
                rt.launch(&add, [4, 1, 1], (&mut m[..], Push(&push)))
                    .unwrap();
                let push = AddK { n: 1024, k: 1 };
                if let Err(e) = rt.launch(&add, [4, 1, 1], (&mut m[512..1536], Push(&push))) {
                    failures.push(format!("round {round}: {e}"));
                }
            }
            stop.store(true, Ordering::Relaxed);
            failures
        });
        assert!(
            failures.is_empty(),
            "{path:?}: {} of 500 launches failed; first: {}",
            failures.len(),
            failures[0]
        );
    });
}

/// One runtime fills memory on its device, the memory is freed (`munmap`), new memory is
/// mapped at the same address, and a launch through `b` adds to its first half: the new
/// memory must read exactly as fresh memory plus the launch.
fn reuse_after_free(a: &Runtime, b: &Runtime) {
    let fill_a = a.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
    let add_b = b.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
    for round in 0..20u32 {
        let n = 36 * 1024;
        let mut m = a.alloc::<u32>(n).unwrap();
        let push = Fill {
            n: n as u32,
            mul: 1,
            add: round,
        };
        a.launch(&fill_a, common::groups(n, 64), (&mut m[..], Push(&push)))
            .unwrap();
        let addr = m.as_ptr() as usize;
        drop(m);
        let mut m2 = b.alloc::<u32>(n).unwrap();
        let same = m2.as_ptr() as usize == addr;
        let push = AddK {
            n: (n / 2) as u32,
            k: 3,
        };
        b.launch(
            &add_b,
            common::groups(n, 64),
            (&mut m2[..n / 2], Push(&push)),
        )
        .unwrap_or_else(|e| panic!("round {round} (same address: {same}): {e}"));
        let bad: Vec<usize> = (0..n)
            .filter(|&i| m2[i] != if i < n / 2 { 3 } else { 0 })
            .collect();
        assert!(
            bad.is_empty(),
            "round {round} (same address: {same}): {} wrong words, first: word {} = {}",
            bad.len(),
            bad[0],
            m2[bad[0]]
        );
    }
}

/// Core bug (found by `model_direct` after `model_staged` cases on the same addresses):
/// memory runtime A (Staged) held on its device is freed, new memory is mapped at the same
/// address, and a launch through runtime B (Direct) on the new memory loses its result: the
/// written words read 0 afterwards.
#[test]
fn launch_on_memory_another_runtime_held_before_it_was_freed() {
    let (Some(a), Some(b)) = (
        common::runtime(TransferPath::Staged),
        common::runtime(TransferPath::Direct),
    ) else {
        return;
    };
    reuse_after_free(&a, &b);
}

/// The same with one runtime.
#[test]
fn launch_on_memory_the_same_runtime_held_before_it_was_freed() {
    common::each_path(|rt, _| reuse_after_free(rt, rt));
}

/// Found by `model_direct` (one runtime, Direct path): this program hung (60 s watchdog) in
/// its 16th step — the `Add` right after a `Sum` over the same Managed buffer (steps on
/// never-allocated slots removed; they did nothing). The cause: a fault window that crossed
/// a VMA split made `UFFDIO_COPY` fail with `ENOENT`, which the handler took for "unmapped"
/// while the page stayed absent (see `a_mapping_split_after_migration_comes_back_whole`).
#[test]
fn replay_hang_1() {
    use Kind::*;
    use Op::*;
    let program = [
        Step {
            op: Alloc {
                slot: 1,
                kind: Managed,
                len: 71165,
                seed: 0,
            },
            full: false,
        },
        Step {
            op: Read {
                slot: 1,
                span: Span {
                    at: Frac(11184692310336923560),
                    len: Frac(147693643348908467),
                },
            },
            full: true,
        },
        Step {
            op: Sum {
                slot: 1,
                span: Span {
                    at: Frac(17642666260711476158),
                    len: Frac(12352152525263912414),
                },
            },
            full: false,
        },
        Step {
            op: Fill {
                slot: 1,
                span: Span {
                    at: Frac(10066974097720442691),
                    len: Frac(7733035694244200363),
                },
                mul: 3,
                add: 969,
            },
            full: false,
        },
        Step {
            op: Write {
                slot: 1,
                span: Span {
                    at: Frac(4356677771941802952),
                    len: Frac(5561076516578214406),
                },
                seed: 39,
            },
            full: false,
        },
        Step {
            op: Add {
                slot: 1,
                span: Span {
                    at: Frac(16962528932794615295),
                    len: Frac(13616637036337975000),
                },
                k: 69,
            },
            full: true,
        },
        Step {
            op: Add {
                slot: 1,
                span: Span {
                    at: Frac(2672813918488181864),
                    len: Frac(9309575306938887127),
                },
                k: 96,
            },
            full: false,
        },
        Step {
            op: Sum {
                slot: 1,
                span: Span {
                    at: Frac(13976309613139985305),
                    len: Frac(15623401646871690845),
                },
            },
            full: false,
        },
        Step {
            op: Add {
                slot: 1,
                span: Span {
                    at: Frac(9018060168070550322),
                    len: Frac(3165827502272421522),
                },
                k: 72,
            },
            full: true,
        },
    ];
    for path in common::PATHS {
        if let Some(r) = rt(path) {
            let watch = Watch::start(path, &program);
            run(r, &program, &watch.step).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        }
    }
}
