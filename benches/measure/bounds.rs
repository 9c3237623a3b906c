//! The kernel's floor under two micro-patterns of [`super::workloads`], with nothing of
//! vkhmm in it (the userfaultfd plumbing of [`super::raw_uffd`]):
//!
//! - [`WpLift`], under [`super::workloads::RewriteShared`]: a filled 64 MiB anonymous mapping,
//!   registered for write-protect faults and write-protected whole; the timed part lifts the
//!   protection (`UFFDIO_WRITEPROTECT` clear) and rewrites every `u32` with the same loop as
//!   [`super::workloads::Plain::rewrite`]. [`Lift`] says how the protection is lifted: in one
//!   ioctl, in pieces of 1, 2, 4 ... pages just ahead of the writes, or by a handler thread
//!   on each write fault in windows that double the same way (vkhmm's policy without vkhmm);
//! - [`CopyThenSum`], under [`super::workloads::ReadResult`]: a 64 MiB mapping registered
//!   for missing and write-protect faults, emptied (untimed); the timed part installs every
//!   page with `UFFDIO_COPY` (`UFFDIO_COPY_MODE_WP`, as vkhmm installs pages coming home)
//!   from a resident source in 2 MiB pieces, on one thread or two (each its half), then sums
//!   every `u32` with [`super::workloads::sum_u32`];
//! - [`MoveThenSum`], beside it: the same mapping's pages parked in a second range (untimed);
//!   the timed part copies the source into the parked pages and moves them home with
//!   `UFFDIO_MOVE` in 2 MiB pieces, then sums (the primitive vkhmm's kept host pages use, in
//!   a process with no other thread running, so no move waits for a TLB flush elsewhere);
//! - [`MemcpyThenSum`], the floor of any copy: `memcpy` of 64 MiB into resident pages, then
//!   the sum (no fault, no ioctl: only the memory traffic of a copy).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linux_raw_sys::general as uapi;
use rustix::ioctl::{ioctl, Opcode, Updater};

use super::raw_uffd::{map, next_fault, open_uffd, register, CopyBandwidth, MoveCycle};
use super::workloads::{rewrite, sum_u32};
use super::{MIB, PAGE};

const OP_COPY: Opcode = linux_raw_sys::ioctl::UFFDIO_COPY as Opcode;
const OP_WRITEPROTECT: Opcode = linux_raw_sys::ioctl::UFFDIO_WRITEPROTECT as Opcode;
/// `UFFDIO_WRITEPROTECT_MODE_WP` (linux-raw-sys lacks the write-protect modes).
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// The piece [`CopyThenSum`] installs per ioctl: vkhmm's largest fault-back window.
pub const COPY_PIECE: usize = 2 * MIB;

/// `UFFDIO_WRITEPROTECT` on `[addr, addr + len)`: sets protection, or clears it and wakes
/// the writers waiting there.
fn write_protect(fd: &OwnedFd, addr: usize, len: usize, protect: bool) -> rustix::io::Result<()> {
    let mut arg = uapi::uffdio_writeprotect {
        range: uapi::uffdio_range {
            start: addr as u64,
            len: len as u64,
        },
        mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads one `uffdio_writeprotect`, which `arg` is (the number
    // is _IOWR, so it is passed as mutable); the range lies in a mapping of this module's
    // registered for write-protect faults, which holds plain words.
    unsafe { ioctl(fd, Updater::<OP_WRITEPROTECT, _>::new(&mut arg)) }
}

/// [`rewrite`]'s loop on words `range` of `buf` (word i gets `i ^ k`, i counted from the
/// start of `buf`), so that a rewrite split in pieces writes what one rewrite writes.
fn rewrite_range(buf: &mut [u32], range: std::ops::Range<usize>, k: u32) {
    for (i, v) in buf[range.clone()].iter_mut().enumerate() {
        *v = (range.start + i) as u32 ^ k;
    }
}

/// How [`WpLift`] lifts the write protection of its mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lift {
    /// One `UFFDIO_WRITEPROTECT` clear on the whole mapping, then the rewrite.
    OnePiece,
    /// Pieces of 1, 2, 4 ... pages in order, each cleared by one ioctl just before its
    /// words are written (no fault is taken).
    DoublingAhead,
    /// The rewrite alone: its first write to a protected page faults; a handler thread
    /// clears a window from that page (1, 2, 4 ... pages, doubling with each fault of the
    /// run) and wakes the writer.
    DoublingOnFault,
}

/// The protection-fault handler's state, shared with [`WpLift`].
struct Handler {
    /// Pages of the next window.
    window: AtomicUsize,
    /// Faults served since the last [`WpLift::run`] began.
    faults: AtomicU64,
    stop: AtomicBool,
}

/// Lifting write protection from a filled 64 MiB mapping, then rewriting it (see the module
/// docs). A handler thread serves every write-protect fault (with [`Lift::OnePiece`] and
/// [`Lift::DoublingAhead`] none is expected; the count says so).
pub struct WpLift {
    base: usize,
    n: usize,
    lift: Lift,
    k: u32,
    fd: Arc<OwnedFd>,
    state: Arc<Handler>,
    handler: Option<std::thread::JoinHandle<()>>,
    /// Time of the `UFFDIO_WRITEPROTECT` clears of the last run ([`Lift::OnePiece`],
    /// [`Lift::DoublingAhead`]; zero for [`Lift::DoublingOnFault`], whose clears run on the
    /// handler thread).
    pub lift_time: Duration,
    /// Clears of the last run: ioctls issued ahead, or faults served.
    pub lifts: u64,
    /// Write-protect faults of the last run.
    pub faults: u64,
}

impl WpLift {
    /// `n` words (a multiple of a page's words), written once, registered and protected.
    pub fn new(n: usize, lift: Lift) -> anyhow::Result<WpLift> {
        let len = n * 4;
        anyhow::ensure!(
            len.is_multiple_of(PAGE),
            "WpLift: {len} bytes, not whole pages"
        );
        let fd = Arc::new(open_uffd(u64::from(uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP))?);
        let base = map(len)?;
        let state = Arc::new(Handler {
            window: AtomicUsize::new(1),
            faults: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let handler = {
            let (fd, state) = (fd.clone(), state.clone());
            let end = base + len;
            std::thread::Builder::new()
                .name("bound-wp".into())
                .spawn(move || serve_wp(&fd, &state, end))?
        };
        let w = WpLift {
            base,
            n,
            lift,
            k: 0,
            fd,
            state,
            handler: Some(handler),
            lift_time: Duration::ZERO,
            lifts: 0,
            faults: 0,
        };
        // Filled before registration: every page present (protection applies to present
        // pages only).
        rewrite(w.words(), 0);
        register(&w.fd, base, len, uapi::UFFDIO_REGISTER_MODE_WP)?;
        Ok(w)
    }

    /// The mapping as words.
    #[allow(clippy::mut_from_ref)]
    fn words(&self) -> &mut [u32] {
        // SAFETY: the mapping is ours, `n` words long, page-aligned and holds plain words;
        // only the measuring thread reaches it through a slice, one slice at a time (the
        // handler thread issues ioctls on its range only).
        unsafe { std::slice::from_raw_parts_mut(self.base as *mut u32, self.n) }
    }

    /// Untimed: protect every page; timed: lift the protection per [`Lift`] and rewrite
    /// every word.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let len = self.n * 4;
        write_protect(&self.fd, self.base, len, true)
            .map_err(|e| anyhow::anyhow!("UFFDIO_WRITEPROTECT (set): {e}"))?;
        self.state.window.store(1, Ordering::Relaxed);
        self.state.faults.store(0, Ordering::Relaxed);
        self.k += 1;
        let (k, words_per_page) = (self.k, PAGE / 4);
        let buf = self.words();
        let mut lift_time = Duration::ZERO;
        let mut lifts = 0;
        let t = Instant::now();
        match self.lift {
            Lift::OnePiece => {
                write_protect(&self.fd, self.base, len, false)
                    .map_err(|e| anyhow::anyhow!("UFFDIO_WRITEPROTECT (clear): {e}"))?;
                lift_time = t.elapsed();
                lifts = 1;
                rewrite(buf, k);
            }
            Lift::DoublingAhead => {
                let (mut at, mut pages) = (0, 1);
                while at < self.n {
                    let end = (at + pages * words_per_page).min(self.n);
                    let l = Instant::now();
                    write_protect(&self.fd, self.base + at * 4, (end - at) * 4, false)
                        .map_err(|e| anyhow::anyhow!("UFFDIO_WRITEPROTECT (clear): {e}"))?;
                    lift_time += l.elapsed();
                    lifts += 1;
                    rewrite_range(buf, at..end, k);
                    at = end;
                    pages *= 2;
                }
            }
            Lift::DoublingOnFault => rewrite(buf, k),
        }
        let d = t.elapsed();
        std::hint::black_box(&mut *buf);
        self.faults = self.state.faults.load(Ordering::Relaxed);
        self.lift_time = lift_time;
        self.lifts = if self.lift == Lift::DoublingOnFault {
            self.faults
        } else {
            lifts
        };
        Ok(d)
    }

    /// Whether every word holds what the last run wrote.
    pub fn verify(&self) -> bool {
        let k = self.k;
        self.words()
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u32 ^ k)
    }
}

impl Drop for WpLift {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
        // SAFETY: the mapping is ours and nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.base as *mut std::ffi::c_void, self.n * 4) };
    }
}

/// The write-protect fault handler of [`WpLift`]: on each fault, clears the protection of a
/// window from the faulting page (capped at `end`), doubles the window and wakes the writer.
fn serve_wp(fd: &OwnedFd, state: &Handler, end: usize) {
    while let Some(addr) = next_fault(fd, &state.stop) {
        let pages = state.window.load(Ordering::Relaxed);
        let len = (pages * PAGE).min(end.saturating_sub(addr)).max(PAGE);
        state.faults.fetch_add(1, Ordering::Relaxed);
        state.window.store(pages * 2, Ordering::Relaxed);
        // Clearing wakes the writer; should it fail, the writer would wait forever, so the
        // retry after `EAGAIN` (the address space changing) is unconditional.
        while let Err(e) = write_protect(fd, addr, len, false) {
            if e != rustix::io::Errno::AGAIN {
                break;
            }
        }
    }
}

/// Installing 64 MiB of pages with `UFFDIO_COPY` ahead of the reads, then summing them (see
/// the module docs): [`CopyBandwidth`] write-protected in [`COPY_PIECE`] pieces, then the sum.
pub struct CopyThenSum {
    copies: CopyBandwidth,
    /// The sum of the source, which the installed words must give.
    expected: u64,
    /// Time of the copies of the last run (the rest is the sum).
    pub copy_time: Duration,
    /// The sum the last run found.
    pub sum: u64,
}

impl CopyThenSum {
    /// `n` words (a multiple of a page's words) on `threads` installing threads.
    pub fn new(n: usize, threads: usize) -> anyhow::Result<CopyThenSum> {
        let copies = CopyBandwidth::new(n * 4, COPY_PIECE, threads, true)?;
        let expected = sum_u32(copies.source_words());
        Ok(CopyThenSum {
            copies,
            expected,
            copy_time: Duration::ZERO,
            sum: 0,
        })
    }

    /// Untimed: drop every destination page; timed: install them all, then sum every word.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let copied = self.copies.run()?;
        let t = Instant::now();
        let sum = sum_u32(std::hint::black_box(self.copies.installed_words()));
        let d = copied + t.elapsed();
        anyhow::ensure!(sum == self.expected, "CopyThenSum: wrong sum");
        self.copy_time = copied;
        self.sum = sum;
        Ok(d)
    }
}

/// Kept pages brought home: parked (untimed), then copied into and moved home, then summed
/// (see the module docs).
pub struct MoveThenSum {
    cycle: MoveCycle,
    expected: u64,
}

impl MoveThenSum {
    /// `n` words (a multiple of a page's words).
    pub fn new(n: usize) -> anyhow::Result<MoveThenSum> {
        let cycle = MoveCycle::new(n * 4, COPY_PIECE)?;
        // Home holds the "device" bytes once populated: their sum is what comes back.
        let expected = sum_u32(cycle.home_words());
        Ok(MoveThenSum { cycle, expected })
    }

    /// Untimed: park every page; timed: copy, move home, sum.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        self.cycle.park_out()?;
        let d = self.cycle.bring_home()?;
        let t = Instant::now();
        let sum = sum_u32(std::hint::black_box(self.cycle.home_words()));
        let d = d + t.elapsed();
        anyhow::ensure!(sum == self.expected, "MoveThenSum: wrong sum");
        Ok(d)
    }
}

/// `memcpy` into resident pages, then the sum (see the module docs).
pub struct MemcpyThenSum {
    src: Vec<u32>,
    dst: Vec<u32>,
    expected: u64,
}

impl MemcpyThenSum {
    /// `n` words.
    pub fn new(n: usize) -> MemcpyThenSum {
        let src: Vec<u32> = (0..n as u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let expected = sum_u32(&src);
        MemcpyThenSum {
            src,
            dst: vec![1; n],
            expected,
        }
    }

    /// Timed: copy, then sum.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.dst.copy_from_slice(&self.src);
        let sum = sum_u32(std::hint::black_box(&self.dst));
        let d = t.elapsed();
        anyhow::ensure!(sum == self.expected, "MemcpyThenSum: wrong sum");
        Ok(d)
    }
}
