//! Stress test after the kernel's `uffd-stress` (tools/testing/selftests/mm/uffd-stress.c).
//!
//! A region of 4 KiB pages (a `Vec<u32>` or a `Managed<u32>`) holds, in each page, a lock word
//! (word 0) and 1023 counters. A shadow copy of every word lives outside the region. CPU
//! threads lock a page (a spinlock on its lock word, through raw pointers), increment random
//! counters in it and the same shadow words; in racing mode every thread hammers the same two
//! pages, which straddle a slice boundary. Mover threads take one slice (a run of pages)
//! exclusively, prefetch it to the device, launch `ADD_K` (every word of the slice += k, k
//! even so the lock word stays "unlocked"), add k to the slice's shadow words, and sometimes
//! prefetch it home, check it against the shadow at once, or let a kernel only read it (its
//! pages turn `Shared`, or stay known-zero on the device) and rewrite all of it in order on
//! the CPU (write-protect windows that grow past the slice, into pages other threads write). After each pass every word must
//! equal its shadow.
//!
//! Locking, so that the expected values are exact: each slice has an `RwLock`. CPU threads
//! hold it shared while they touch a page of the slice; a mover holds it exclusively for the
//! whole prefetch + launch + shadow update. So a kernel never runs on a slice whose pages a CPU
//! thread is touching, while CPU threads keep touching (and faulting back) the *other* slices
//! of the same allocation during the launch — memory touched while a kernel runs. With a `Vec`
//! region, slices do not start on page boundaries, so neighbouring slices share edge pages:
//! the runtime copies a launch's edge bytes back into a page the CPU threads are writing.
//!
//! Modes cycle per pass: random / racing access, chunk sizes (4 KiB, 64 KiB adaptive,
//! 256 KiB, 2 MiB fixed), `Vec` / `Managed` / `mmap` memory, one or two movers, both
//! transfer paths. On an `mmap` region a remapper thread also replaces pages of a slice with
//! fresh memory while a launch on that slice runs (misuse: the fresh memory must keep what
//! was written into it, everything else its shadow), beside the CPU threads and movers.
//!
//! Duration: `VKHMM_STRESS_SECS=N` runs passes for N seconds (a soak test); otherwise 35 s
//! under `CI` and 8 s elsewhere. It stops by itself at the deadline. A watchdog aborts the
//! process with a diagnostic when nothing progresses for 30 s or the run overshoots its
//! deadline by 60 s, so a hang is a failure, never a stuck CI job.
//!
//! Run: `CI=1 cargo test --release --test stress -- --nocapture`.

mod common;

use common::push::{AddK, N};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use vkhmm::{shaders, Kernel, Location, Managed, Push, Runtime, TransferPath};

/// u32 words per 4 KiB page; word 0 of each page is its lock word.
const PAGE_WORDS: usize = 1024;
const PAGE: usize = PAGE_WORDS * 4;
/// Pages in the region (4 MiB).
const PAGES: usize = 1024;
/// Pages per slice (the mover's unit): 128 KiB, 32 slices.
const SLICE_PAGES: usize = 32;
const SLICE_WORDS: usize = SLICE_PAGES * PAGE_WORDS;
const SLICES: usize = PAGES / SLICE_PAGES;
/// CPU threads.
const CPU_THREADS: usize = 4;
/// Whether movers also prefetch slices home (one launch in eight). It was off while the hang
/// that `prefetch_home_after_a_concurrent_merge_returns` reproduces was open.
const PREFETCH_HOME: bool = true;
/// Counters incremented per page lock.
const INCS_PER_LOCK: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Each thread picks pages uniformly at random.
    Random,
    /// Every thread hits the same two pages (last of one slice, first of the next).
    Racing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memory {
    Vec,
    Managed,
    /// An `mmap` of the test's own, page-aligned: the remapper replaces parts of it.
    Map,
}

#[derive(Debug, Clone, Copy)]
struct Mode {
    path: TransferPath,
    /// Fault-back chunk in bytes.
    chunk: usize,
    fixed: bool,
    memory: Memory,
    access: Access,
    movers: usize,
    /// Thrash detection on: slices of a `Managed` region that bounce get settled in place,
    /// so the pass mixes migrated and in-place slices. Off elsewhere, so that the other
    /// passes keep migrating every slice.
    thrash: bool,
    /// A remapper thread (on a `Map` region): it replaces pages of a slice with fresh memory
    /// while a launch on that slice runs, beside the CPU threads and movers.
    remap: bool,
}

/// The cycle of modes; a run goes through it in order, as often as the time allows.
fn modes() -> Vec<Mode> {
    use Access::*;
    use Memory::*;
    use TransferPath::*;
    let m = |path, chunk, fixed, memory, access, movers| Mode {
        path,
        chunk,
        fixed,
        memory,
        access,
        movers,
        thrash: false,
        remap: false,
    };
    vec![
        m(Direct, 64 << 10, false, Managed, Random, 1),
        Mode {
            remap: true,
            ..m(Staged, 256 << 10, true, Map, Racing, 1)
        },
        m(Staged, 64 << 10, false, Vec, Random, 1),
        m(Direct, 4 << 10, true, Vec, Racing, 2),
        m(Staged, 4 << 10, true, Managed, Racing, 2),
        m(Direct, 2 << 20, true, Vec, Random, 2),
        Mode {
            remap: true,
            ..m(Direct, 64 << 10, false, Map, Random, 1)
        },
        m(Staged, 256 << 10, true, Managed, Random, 1),
        Mode {
            thrash: true,
            ..m(Direct, 256 << 10, true, Managed, Racing, 1)
        },
        m(Staged, 2 << 20, true, Vec, Racing, 2),
        m(Direct, 64 << 10, false, Vec, Racing, 1),
        m(Staged, 4 << 10, true, Vec, Random, 2),
    ]
}

/// The region under test: its memory and a raw view that threads share.
enum Region {
    Vec(Vec<u32>),
    Managed(Managed<u32>),
    /// The address of a mapping of `PAGES` pages, unmapped on drop.
    Map(usize),
}

impl Region {
    fn new(rt: &Runtime, memory: Memory) -> Region {
        match memory {
            Memory::Vec => Region::Vec(vec![0u32; PAGES * PAGE_WORDS]),
            Memory::Managed => Region::Managed(rt.alloc::<u32>(PAGES * PAGE_WORDS).unwrap()),
            Memory::Map => Region::Map(common::map_anon(PAGES * PAGE) as usize),
        }
    }

    fn view(&mut self) -> View {
        View(self.words().as_ptr().cast_mut())
    }

    fn words(&self) -> &[u32] {
        match self {
            Region::Vec(v) => v,
            Region::Managed(m) => m,
            // SAFETY: the mapping lives as long as `self`; words of it are changed only
            // through `View`, under the locking protocol of this file.
            Region::Map(a) => unsafe {
                std::slice::from_raw_parts(*a as *const u32, PAGES * PAGE_WORDS)
            },
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Map(a) = self {
            // SAFETY: our own mapping, no longer used by any thread of the pass.
            unsafe { libc::munmap(*a as *mut libc::c_void, PAGES * PAGE) };
        }
    }
}

/// Raw base pointer of the region, shared by the threads of one pass.
#[derive(Clone, Copy)]
struct View(*mut u32);

// SAFETY: the pointer is only dereferenced under the locking protocol of this file: words of a
// slice are touched by CPU threads (atomically, holding the slice lock shared and the page's
// spinlock) or by one mover (holding the slice lock exclusively). The region outlives every
// thread of a pass (they are joined before it is dropped).
unsafe impl Send for View {}
// SAFETY: as above; `View` is a plain address.
unsafe impl Sync for View {}

impl View {
    /// Word `i` as an atomic.
    ///
    /// # Safety
    /// `i < PAGES * PAGE_WORDS`, and the caller holds the slice lock of `i` shared (so no
    /// `&mut` slice of a mover covers it).
    unsafe fn word(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < PAGES * PAGE_WORDS);
        // SAFETY: in bounds and 4-aligned (caller); only atomic accesses happen to words under
        // a shared slice lock, so no non-atomic access races with this one.
        unsafe { AtomicU32::from_ptr(self.0.add(i)) }
    }

    /// The words of slice `s`, mutably.
    ///
    /// # Safety
    /// The caller holds slice `s`'s lock exclusively for the lifetime of the result.
    unsafe fn slice_mut<'a>(&self, s: usize) -> &'a mut [u32] {
        // SAFETY: the slice lies inside the region; the exclusive slice lock keeps every other
        // thread off these words while the `&mut` lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(s * SLICE_WORDS), SLICE_WORDS) }
    }
}

/// xorshift64*: a small, seedable generator per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What every thread of a pass shares.
struct Pass {
    view: View,
    mode: Mode,
    shadow: Vec<AtomicU32>,
    slice_locks: Vec<RwLock<()>>,
    stop: AtomicBool,
    /// First error seen by any thread (a failed launch, a mid-pass mismatch).
    errors: Mutex<Vec<String>>,
    increments: AtomicU64,
    launches: AtomicU64,
    kernel_adds: AtomicU64,
    midpass_checks: AtomicU64,
}

impl Pass {
    fn fail(&self, msg: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(msg);
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Progress beats and the state the watchdog prints when it fires.
struct Watch {
    started: Instant,
    last_beat_ms: AtomicU64,
    deadline_ms: u64,
    state: Mutex<String>,
    done: AtomicBool,
}

impl Watch {
    fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }
}

fn watchdog(w: Arc<Watch>) {
    const STALL_MS: u64 = 30_000;
    const OVERSHOOT_MS: u64 = 60_000;
    while !w.done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let now = w.started.elapsed().as_millis() as u64;
        let stalled = now.saturating_sub(w.last_beat_ms.load(Ordering::Relaxed));
        if stalled > STALL_MS || now > w.deadline_ms + OVERSHOOT_MS {
            // Straight to stderr: the test harness captures `eprintln!` of this thread too.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "stress watchdog: no progress for {stalled} ms (run at {now} ms, deadline {} ms); \
                 state: {}. Aborting: a CPU touch, fault or launch hangs.",
                w.deadline_ms,
                w.state.lock().map(|s| s.clone()).unwrap_or_default()
            );
            dump_stacks();
            std::process::abort();
        }
    }
}

/// Prints each thread's name, state, wait channel and kernel stack from /proc (a hang's
/// diagnostic). Not gdb: gdb stops every thread, the fault handler included, and then hangs
/// itself reading memory that only the handler can fault in.
fn dump_stacks() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "thread {:?} {:?} state {:?} wchan {:?} syscall {:?}\n{}",
            t.file_name(),
            read("comm").trim(),
            state.unwrap_or("?"),
            read("wchan"),
            read("syscall").trim(),
            read("stack")
        );
    }
}

fn cpu_thread(p: &Pass, w: &Watch, seed: u64) {
    let mut rng = Rng(seed | 1);
    // Racing: the last page of slice 7 and the first of slice 8 (one physical page apart, and
    // sharing an edge page with a Vec region).
    let hot = [8 * SLICE_PAGES - 1, 8 * SLICE_PAGES];
    let mut local = 0u64;
    let mut ops = 0u64;
    while !p.stop.load(Ordering::Relaxed) {
        let page = match p.mode.access {
            Access::Random => rng.below(PAGES),
            // One op in eight goes elsewhere so that faults keep coming in racing mode too.
            Access::Racing if rng.below(8) != 0 => hot[rng.below(2)],
            Access::Racing => rng.below(PAGES),
        };
        let slice = page / SLICE_PAGES;
        let _shared = p.slice_locks[slice].read().unwrap();
        let base = page * PAGE_WORDS;
        // SAFETY: `base` is in the region and the slice lock is held shared.
        let lock = unsafe { p.view.word(base) };
        // Spinlock: even = free, odd = held. A mover adds even k only while it holds the slice
        // lock exclusively, i.e. while no page of the slice is held.
        let held = loop {
            let v = lock.load(Ordering::Relaxed);
            if v & 1 == 0
                && lock
                    .compare_exchange_weak(v, v | 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break v;
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        };
        for _ in 0..INCS_PER_LOCK {
            let i = base + 1 + rng.below(PAGE_WORDS - 1);
            // SAFETY: in the region, slice lock held shared, page lock held.
            let word = unsafe { p.view.word(i) };
            word.store(
                word.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
            p.shadow[i].fetch_add(1, Ordering::Relaxed);
        }
        lock.store(held, Ordering::Release);
        local += INCS_PER_LOCK;
        ops += 1;
        if ops.is_multiple_of(256) {
            w.beat();
        }
    }
    p.increments.fetch_add(local, Ordering::Relaxed);
}

fn mover_thread(
    p: &Pass,
    w: &Watch,
    rt: &Runtime,
    (add, copy): (&Kernel, &Kernel),
    seed: u64,
    id: usize,
) {
    let mut rng = Rng(seed | 1);
    // Runtime-owned, so that the signal backend serves it too.
    let mut scratch: Managed<u32> = rt.alloc(SLICE_WORDS).unwrap();
    while !p.stop.load(Ordering::Relaxed) {
        // Movers own disjoint halves of the slices so that two movers launch concurrently.
        let movers = p.mode.movers;
        let slice = match p.mode.access {
            Access::Racing if rng.below(2) == 0 => 7 + id % 2,
            _ => (rng.below(SLICES / movers) * movers + id) % SLICES,
        };
        let k = (rng.below(1 << 15) as u32 + 1) * 2;
        let _excl = p.slice_locks[slice].write().unwrap();
        // SAFETY: slice lock held exclusively until `_excl` drops, after `data`'s last use.
        let data = unsafe { p.view.slice_mut(slice) };
        let what = format!("mover {id} slice {slice} k {k}");
        if rng.below(2) == 0 {
            if let Err(e) = rt.prefetch(data, Location::Device) {
                p.fail(format!("{what}: prefetch to device: {e}"));
                return;
            }
        }
        let push = AddK {
            n: SLICE_WORDS as u32,
            k,
        };
        if let Err(e) = rt.launch(add, [64, 1, 1], (&mut *data, Push(&push))) {
            p.fail(format!("{what}: launch: {e}"));
            return;
        }
        let first = slice * SLICE_WORDS;
        for s in &p.shadow[first..first + SLICE_WORDS] {
            s.fetch_add(k, Ordering::Relaxed);
        }
        p.launches.fetch_add(1, Ordering::Relaxed);
        p.kernel_adds
            .fetch_add(SLICE_WORDS as u64, Ordering::Relaxed);
        match rng.below(8) {
            0 if PREFETCH_HOME => {
                if let Err(e) = rt.prefetch(data, Location::Host) {
                    p.fail(format!("{what}: prefetch home: {e}"));
                    return;
                }
            }
            1 => {
                // Check the slice at once (this faults it back while others run).
                p.midpass_checks.fetch_add(1, Ordering::Relaxed);
                let bad = data
                    .iter()
                    .zip(&p.shadow[first..])
                    .position(|(d, s)| *d != s.load(Ordering::Relaxed));
                if let Some(j) = bad {
                    let i = first + j;
                    p.fail(format!(
                        "{what}: right after the launch word {i} (page {}, +{}) is {} but the \
                         shadow says {}",
                        i / PAGE_WORDS,
                        i % PAGE_WORDS,
                        data[j],
                        p.shadow[i].load(Ordering::Relaxed)
                    ));
                    return;
                }
            }
            2 => {
                // A kernel only reads the slice (its pages turn Shared; pages nothing wrote
                // yet stay on the device, known zero), then the CPU rewrites all of it in
                // order: write-protect windows grow, and may reach into neighbouring slices
                // whose pages other threads are writing.
                let n = SLICE_WORDS as u32;
                if let Err(e) = rt.launch(copy, [64, 1, 1], (&*data, &mut *scratch, Push(&N { n })))
                {
                    p.fail(format!("{what}: read-only launch: {e}"));
                    return;
                }
                let bad = scratch
                    .iter()
                    .zip(&p.shadow[first..])
                    .position(|(d, s)| *d != s.load(Ordering::Relaxed));
                if let Some(j) = bad {
                    p.fail(format!(
                        "{what}: a read-only kernel saw word {} as {} but the shadow says {}",
                        first + j,
                        scratch[j],
                        p.shadow[first + j].load(Ordering::Relaxed)
                    ));
                    return;
                }
                for (d, s) in data.iter_mut().zip(&p.shadow[first..first + SLICE_WORDS]) {
                    *d += 2;
                    s.fetch_add(2, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        w.beat();
    }
}

/// The remapper (on a `Map` region): takes a slice exclusively, as a mover does, and
/// launches `COPY_U32` of a fresh source (the slice's words plus an even `k`) onto its first
/// pages. Once the launch has begun moving its buffers (the source's pages turn `Shared`), a
/// second thread replaces a few pages of the slice with fresh memory (`mmap(MAP_FIXED)` over
/// them: an unmap of registered memory) and writes the shadow's words into it — misuse, while
/// CPU threads fault and movers launch on the other slices. The launch may fail; afterwards the
/// fresh pages must hold exactly what was written into them, and the rest of the slice its old
/// words or the source, all alike.
fn remapper_thread(p: &Pass, w: &Watch, rt: &Runtime, copy: &Kernel, seed: u64) {
    const SRC_WORDS: usize = 4 * PAGE_WORDS;
    let mut rng = Rng(seed | 1);
    while !p.stop.load(Ordering::Relaxed) {
        let slice = rng.below(SLICES);
        let k = (rng.below(1 << 15) as u32 + 1) * 2;
        let p0 = rng.below(SLICE_PAGES);
        let np = 1 + rng.below((SLICE_PAGES - p0).min(4));
        let delay = Duration::from_micros(rng.below(30) as u64);
        let _excl = p.slice_locks[slice].write().unwrap();
        let first = slice * SLICE_WORDS;
        let shadow = |j: usize| p.shadow[first + j].load(Ordering::Relaxed);
        let src: Vec<u32> = (0..SRC_WORDS).map(|j| shadow(j).wrapping_add(k)).collect();
        // SAFETY: slice lock held exclusively until `_excl` drops, after `data`'s last use.
        let data = unsafe { p.view.slice_mut(slice) };
        let fresh_at = data.as_ptr() as usize + p0 * PAGE;
        let fresh = p0 * PAGE_WORDS..(p0 + np) * PAGE_WORDS;
        let done = AtomicBool::new(false);
        let replaced = std::thread::scope(|sc| {
            let racer = sc.spawn(|| {
                while rt.residency(&src).shared == 0 && !done.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let t = Instant::now();
                while t.elapsed() < delay {
                    std::hint::spin_loop();
                }
                // SAFETY: pages of the pass's own mapping, in the slice this thread's owner
                // holds; replacing them under the launch is the misuse under test.
                let q = unsafe {
                    libc::mmap(
                        fresh_at as *mut libc::c_void,
                        np * PAGE,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if q as usize != fresh_at {
                    return false;
                }
                for j in fresh.clone() {
                    // SAFETY: word `j` of the slice lies in the fresh pages.
                    unsafe { *((fresh_at as *mut u32).add(j - fresh.start)) = shadow(j) };
                }
                true
            });
            let push = N {
                n: SRC_WORDS as u32,
            };
            // Fails or copies: either is fine.
            let _ = rt.launch(
                copy,
                [16, 1, 1],
                (&src[..], &mut data[..SRC_WORDS], Push(&push)),
            );
            done.store(true, Ordering::Release);
            racer.join().unwrap()
        });
        let what = format!("remapper slice {slice} pages {p0}+{np}");
        if !replaced {
            p.fail(format!("{what}: mmap(MAP_FIXED) failed"));
            return;
        }
        if let Some(j) = fresh.clone().find(|&j| data[j] != shadow(j)) {
            p.fail(format!(
                "{what}: word {j} of the fresh pages is {}, not what was written there ({})",
                data[j],
                shadow(j)
            ));
            return;
        }
        let outside = |j: usize| !fresh.contains(&j);
        let copied = (0..SRC_WORDS).any(|j| outside(j) && data[j] == src[j]);
        for j in (0..SLICE_WORDS).filter(|&j| outside(j)) {
            let want = if copied && j < SRC_WORDS {
                src[j]
            } else {
                shadow(j)
            };
            if data[j] != want {
                p.fail(format!(
                    "{what}: word {j} is {}, neither its old value nor the source ({want})",
                    data[j]
                ));
                return;
            }
        }
        if copied {
            for j in (0..SRC_WORDS).filter(|&j| outside(j)) {
                p.shadow[first + j].store(src[j], Ordering::Relaxed);
            }
        }
        p.launches.fetch_add(1, Ordering::Relaxed);
        w.beat();
    }
}

/// Totals over a run.
#[derive(Default)]
struct Totals {
    passes: u64,
    increments: u64,
    launches: u64,
    kernel_adds: u64,
    words_checked: u64,
}

#[allow(clippy::too_many_arguments)]
fn run_pass(
    rt: &Runtime,
    add: &Kernel,
    copy: &Kernel,
    mode: Mode,
    pass_no: u64,
    until: Instant,
    watch: &Watch,
    totals: &mut Totals,
) -> Result<(), String> {
    let mut region = Region::new(rt, mode.memory);
    let words = PAGES * PAGE_WORDS;
    let pass = Pass {
        view: region.view(),
        mode,
        shadow: (0..words).map(|_| AtomicU32::new(0)).collect(),
        slice_locks: (0..SLICES).map(|_| RwLock::new(())).collect(),
        stop: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
        increments: AtomicU64::new(0),
        launches: AtomicU64::new(0),
        kernel_adds: AtomicU64::new(0),
        midpass_checks: AtomicU64::new(0),
    };
    *watch.state.lock().unwrap() = format!("pass {pass_no} running, mode {mode:?}");
    let before = rt.stats();
    std::thread::scope(|s| {
        for t in 0..CPU_THREADS {
            let (p, w) = (&pass, watch);
            s.spawn(move || cpu_thread(p, w, pass_no * 1000 + t as u64 + 1));
        }
        for m in 0..mode.movers {
            let (p, w) = (&pass, watch);
            let kernels = (add, copy);
            let seed = pass_no * 1000 + 100 + m as u64;
            s.spawn(move || mover_thread(p, w, rt, kernels, seed, m));
        }
        if mode.remap {
            let (p, w) = (&pass, watch);
            s.spawn(move || remapper_thread(p, w, rt, copy, pass_no * 1000 + 200));
        }
        while Instant::now() < until && !pass.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        pass.stop.store(true, Ordering::Relaxed);
        *watch.state.lock().unwrap() =
            format!("pass {pass_no} stopping (joining threads), mode {mode:?}");
    });
    watch.beat();
    *watch.state.lock().unwrap() = format!("pass {pass_no} verifying, mode {mode:?}");
    let errors = pass.errors.into_inner().unwrap();
    if !errors.is_empty() {
        return Err(format!("pass {pass_no} {mode:?}: {}", errors.join("\n  ")));
    }
    // Every thread is joined: the region is ours again.
    let r = rt.residency(region.words());
    let spanned = {
        let a = region.words().as_ptr() as usize;
        (a + words * 4).div_ceil(4096) - a / 4096
    };
    if r.pages() != spanned {
        return Err(format!(
            "pass {pass_no} {mode:?}: residency {r:?} does not add up to the {spanned} pages spanned"
        ));
    }
    let got = region.words();
    let mut mismatches = Vec::new();
    for (i, (g, s)) in got.iter().zip(&pass.shadow).enumerate() {
        let s = s.load(Ordering::Relaxed);
        if *g != s {
            mismatches.push((i, *g, s));
        }
    }
    if !mismatches.is_empty() {
        let pages: std::collections::BTreeSet<usize> =
            mismatches.iter().map(|m| m.0 / PAGE_WORDS).collect();
        let shown: Vec<String> = mismatches
            .iter()
            .take(8)
            .map(|(i, g, s)| {
                format!(
                    "word {i} (page {}, +{}, slice {}) = {g}, shadow {s}",
                    i / PAGE_WORDS,
                    i % PAGE_WORDS,
                    i / SLICE_WORDS
                )
            })
            .collect();
        return Err(format!(
            "pass {pass_no} {mode:?}: {} mismatching words on {} pages {:?}: {}",
            mismatches.len(),
            pages.len(),
            pages.iter().take(16).collect::<Vec<_>>(),
            shown.join("; ")
        ));
    }
    let d = rt.stats() - before;
    let inc = pass.increments.load(Ordering::Relaxed);
    let launches = pass.launches.load(Ordering::Relaxed);
    println!(
        "pass {pass_no:3} {:?} chunk {:>4} KiB{} {:?} {:?} movers {}{}{}: {inc} increments, \
         {launches} launches ({} checked mid-pass), {} cpu faults, {} deferred: ok",
        mode.path,
        mode.chunk >> 10,
        if mode.fixed { " fixed" } else { "" },
        mode.memory,
        mode.access,
        mode.movers,
        if mode.remap { " + remapper" } else { "" },
        if mode.thrash {
            format!(
                ", thrash detection ({} slices settled in place)",
                d.thrash_settled
            )
        } else {
            String::new()
        },
        pass.midpass_checks.load(Ordering::Relaxed),
        d.cpu_faults,
        d.deferred_faults,
    );
    totals.passes += 1;
    totals.increments += inc;
    totals.launches += launches;
    totals.kernel_adds += pass.kernel_adds.load(Ordering::Relaxed);
    totals.words_checked += words as u64;
    Ok(())
}

fn run_secs() -> u64 {
    match std::env::var("VKHMM_STRESS_SECS") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("VKHMM_STRESS_SECS={s:?} is not a number of seconds")),
        Err(_) if std::env::var_os("CI").is_some() => 35,
        Err(_) => 8,
    }
}

#[test]
fn uffd_stress() {
    let secs = run_secs();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let watch = Arc::new(Watch {
        started,
        last_beat_ms: AtomicU64::new(0),
        deadline_ms: secs * 1000,
        state: Mutex::new("creating runtimes".into()),
        done: AtomicBool::new(false),
    });
    let dog = {
        let w = watch.clone();
        std::thread::spawn(move || watchdog(w))
    };
    let mut modes = modes();
    if common::signal_backend() {
        // The signal fault backend serves only runtime-owned memory.
        modes.retain(|m| m.memory == Memory::Managed);
    }
    // One runtime (and its ADD_K and COPY_U32 kernels) per (path, chunk, fixed), made on
    // first use and kept.
    type Key = (TransferPath, usize, bool);
    let mut runtimes: Vec<(Key, Runtime, Kernel, Kernel)> = Vec::new();
    // A pass lasts 1/10 of the run, at least 1.5 s and at most 10 s.
    let pass_len = Duration::from_secs(secs)
        .div_f64(10.0)
        .clamp(Duration::from_millis(1500), Duration::from_secs(10));
    let mut totals = Totals::default();
    let mut pass_no = 0u64;
    while Instant::now() < deadline {
        let mode = modes[pass_no as usize % modes.len()];
        let key = (mode.path, mode.chunk, mode.fixed);
        let idx = match runtimes.iter().position(|(k, ..)| *k == key) {
            Some(i) => i,
            None => {
                let b = Runtime::builder()
                    .transfer(mode.path)
                    .chunk_size(mode.chunk)
                    .fixed_chunks(mode.fixed)
                    .thrash_detection(mode.thrash);
                let Some(rt) = common::runtime_with(b) else {
                    watch.done.store(true, Ordering::Relaxed);
                    return;
                };
                let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
                let copy = rt.kernel_wgsl(shaders::COPY_U32_WGSL, "main").unwrap();
                runtimes.push((key, rt, add, copy));
                runtimes.len() - 1
            }
        };
        let (_, rt, add, copy) = &runtimes[idx];
        watch.beat();
        let until = (Instant::now() + pass_len).min(deadline);
        if let Err(e) = run_pass(rt, add, copy, mode, pass_no, until, &watch, &mut totals) {
            watch.done.store(true, Ordering::Relaxed);
            panic!("{e}");
        }
        pass_no += 1;
    }
    *watch.state.lock().unwrap() = "dropping runtimes".into();
    drop(runtimes);
    watch.done.store(true, Ordering::Relaxed);
    dog.join().unwrap();
    println!(
        "stress: {} passes in {:.1} s, {} CPU increments verified across {CPU_THREADS} threads, \
         {} launches adding to {} words, {} words checked, 0 mismatches",
        totals.passes,
        started.elapsed().as_secs_f64(),
        totals.increments,
        totals.launches,
        totals.kernel_adds,
        totals.words_checked,
    );
    assert!(totals.passes > 0, "no pass ran");
    assert!(totals.increments > 0 && totals.launches > 0, "nothing ran");
}

/// A kernel that only burns time (atomic adds; lavapipe stops any loop after 65535
/// iterations, so the time comes from the number of workgroups), so that a launch holds the
/// runtime's worker for a while.
const SPIN_WGSL: &str = r"
struct Params { iters: u32 }
@group(0) @binding(0) var<storage, read_write> out: array<atomic<u32>>;
var<immediate> params: Params;
@compute @workgroup_size(1)
fn main() {
    for (var i = 0u; i < params.iters; i++) {
        atomicAdd(&out[i & 3u], 1u);
    }
}
";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Iters {
    iters: u32,
}

/// Runs `f` on a thread; `None` if it does not return within `secs` (the stuck thread is
/// left behind; the process exits at the end of the test run).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

/// The set-up of the two merge-race tests below. Thread Y holds `rt`'s worker with a long
/// kernel; thread Z queues a launch on `rt` over pages 8..40, which grows (merges) the extent
/// of pages 0..16; then `x` runs on pages 0..8, on `rt_x`, while Z waits or after it merged
/// (the futex queue wakes Z first). `x` must return and every word must be right.
fn merge_race(
    name: &str,
    x: impl Fn(&Runtime, &'static [u32]) -> vkhmm::Result<()> + Send + Sync + 'static,
    other_runtime: bool,
) {
    let x = Arc::new(x);
    for path in common::PATHS {
        let (Some(rt), Some(rt_x)) = (common::runtime(path), common::runtime(path)) else {
            return;
        };
        if rt.fault_backend() == vkhmm::FaultBackend::Signal {
            common::assert_foreign_copied_through(&rt, path); // the race needs heap memory to migrate
            continue;
        }
        let rt = Arc::new(rt);
        let rt_x = if other_runtime {
            Arc::new(rt_x)
        } else {
            drop(rt_x);
            rt.clone()
        };
        let spin = rt.kernel_wgsl(SPIN_WGSL, "main").unwrap();
        let add = rt.kernel_wgsl(shaders::ADD_K_WGSL, "main").unwrap();
        for round in 0..3 {
            // Leaked so that the threads below may borrow it for 'static (a hung thread
            // keeps its borrow).
            let v: &'static mut Managed<u32> =
                Box::leak(Box::new(rt.alloc::<u32>(64 * PAGE_WORDS).unwrap()));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
            // The extent of the first 16 pages, on `rt`.
            rt.prefetch(&v[..16 * PAGE_WORDS], Location::Device)
                .unwrap();
            let (left, right) = v.split_at_mut(8 * PAGE_WORDS);
            let left: &'static [u32] = left;
            // Y: a long kernel (~0.2 s on lavapipe) on other memory holds the worker.
            let y = {
                let (rt, spin) = (rt.clone(), spin.clone());
                std::thread::spawn(move || {
                    let mut w = vec![0u32; 4];
                    let push = Iters { iters: 65_000 };
                    rt.launch(&spin, [300, 1, 1], (&mut w, Push(&push)))
                        .unwrap();
                })
            };
            std::thread::sleep(Duration::from_millis(50));
            // Z: a launch over pages 8..40, which merges the extent of pages 0..16.
            let z = {
                let (rt, add) = (rt.clone(), add.clone());
                std::thread::spawn(move || {
                    let data = &mut right[..32 * PAGE_WORDS];
                    let push = AddK {
                        n: data.len() as u32,
                        k: 2,
                    };
                    rt.launch(&add, [64, 1, 1], (data, Push(&push))).unwrap();
                    &*right
                })
            };
            std::thread::sleep(Duration::from_millis(50));
            let what = format!("{path:?} round {round}: {name}");
            let (rt2, x2) = (rt_x.clone(), x.clone());
            match within(20, move || x2(&rt2, left)) {
                Some(r) => r.unwrap(),
                None => {
                    // The stuck thread holds a worker lock: dropping a runtime would wait
                    // for it forever.
                    std::mem::forget((rt, rt_x));
                    panic!("{what} did not return within 20 s: it hangs");
                }
            }
            y.join().unwrap();
            let right = z.join().unwrap();
            for (i, w) in left.iter().chain(right).enumerate() {
                let added = (8 * PAGE_WORDS..40 * PAGE_WORDS).contains(&i);
                assert_eq!(*w, i as u32 + if added { 2 } else { 0 }, "{what}: word {i}");
            }
        }
    }
}

/// Regression (a core bug found by `uffd_stress`, racing mode; fixed in 729c16f): `Runtime::prefetch(.., Location::Host)`
/// (src/runtime.rs, the `Location::Host` arm) takes the extents overlapping its range from a
/// snapshot, *then* waits for the worker lock. If a launch holding the lock meanwhile merges
/// one of those extents into a bigger one, the old extent's pages stay claimed for good (it
/// is retired) and the prefetch spins in `migrate::claim_all` forever.
#[test]
fn prefetch_home_after_a_concurrent_merge_returns() {
    merge_race(
        "prefetch(Host)",
        |rt, left| rt.prefetch(left, Location::Host),
        false,
    );
}

/// Regression (fixed in 729c16f): the same race through `migrate::evacuate_foreign`: a launch on a second runtime over memory
/// the first one holds snapshots the extents, then waits for the first runtime's worker while
/// that runtime merges the extent away.
#[test]
fn launch_on_a_second_runtime_after_a_concurrent_merge_returns() {
    merge_race(
        "CHECKSUM launch on a second runtime",
        |rt, left| {
            let sum = rt.kernel_wgsl(shaders::CHECKSUM_WGSL, "main")?;
            let mut out = vec![0u32; 4];
            let n = left.len() as u32;
            rt.launch(&sum, [16, 1, 1], (left, &mut out, Push(&n)))?;
            let want = (0..n).fold(0u32, |a, i| a.wrapping_add(i));
            assert_eq!(out[0], want, "checksum of pages 0..8");
            Ok(())
        },
        true,
    );
}
