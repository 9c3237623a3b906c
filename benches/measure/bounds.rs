//! The kernel's floor under two micro-patterns of [`super::workloads`], with nothing of
//! vkhmm in it (plumbing: rustix + linux-raw-sys, as in [`super::raw_uffd`]):
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
//!   every `u32` with [`super::workloads::sum_u32`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linux_raw_sys::general as uapi;
use rustix::ioctl::{ioctl, Opcode, Updater};

use super::workloads::{rewrite, sum_u32};
use super::{MIB, PAGE};

const OP_API: Opcode = linux_raw_sys::ioctl::UFFDIO_API as Opcode;
const OP_REGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_REGISTER as Opcode;
const OP_COPY: Opcode = linux_raw_sys::ioctl::UFFDIO_COPY as Opcode;
const OP_WRITEPROTECT: Opcode = linux_raw_sys::ioctl::UFFDIO_WRITEPROTECT as Opcode;
/// `UFFDIO_WRITEPROTECT_MODE_WP` (linux-raw-sys lacks the write-protect modes).
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// The piece [`CopyThenSum`] installs per ioctl: vkhmm's largest fault-back window.
pub const COPY_PIECE: usize = 2 * MIB;

/// An open userfaultfd, handshaken with `features`.
fn open_uffd(features: u64) -> anyhow::Result<OwnedFd> {
    use rustix::mm::{userfaultfd, UserfaultfdFlags};
    let flags = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
    // SAFETY: creating a userfaultfd changes nothing until a range is registered; the only
    // ranges registered with it are this module's own mappings.
    let fd = match unsafe { userfaultfd(flags) } {
        Ok(fd) => fd,
        Err(_) => {
            let user_only = flags | UserfaultfdFlags::from_bits_retain(uapi::UFFD_USER_MODE_ONLY);
            // SAFETY: as above.
            unsafe { userfaultfd(user_only) }.map_err(|e| anyhow::anyhow!("userfaultfd(2): {e}"))?
        }
    };
    let mut api = uapi::uffdio_api {
        api: u64::from(uapi::UFFD_API),
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is.
    unsafe { ioctl(&fd, Updater::<OP_API, _>::new(&mut api)) }
        .map_err(|e| anyhow::anyhow!("UFFDIO_API: {e}"))?;
    Ok(fd)
}

/// A fresh private anonymous mapping of `len` bytes (its address as a number, so that
/// threads can share it).
fn map(len: usize) -> anyhow::Result<usize> {
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    }
    .map_err(|e| anyhow::anyhow!("mmap: {e}"))?;
    Ok(p as usize)
}

/// Registers `[addr, addr + len)` with `fd` in `mode`.
fn register(fd: &OwnedFd, addr: usize, len: usize, mode: u32) -> anyhow::Result<()> {
    let mut reg = uapi::uffdio_register {
        range: uapi::uffdio_range {
            start: addr as u64,
            len: len as u64,
        },
        mode: u64::from(mode),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`; the range is one of this
    // module's own mappings.
    unsafe { ioctl(fd, Updater::<OP_REGISTER, _>::new(&mut reg)) }
        .map_err(|e| anyhow::anyhow!("UFFDIO_REGISTER: {e}"))
}

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
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let mut msg = [0u8; std::mem::size_of::<uapi::uffd_msg>()];
    while !state.stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        if !matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
            continue;
        }
        let Ok(n) = rustix::io::read(fd.as_fd(), &mut msg) else {
            continue;
        };
        if n != msg.len() {
            continue;
        }
        // SAFETY: `uffd_msg` is plain integers, valid for any bytes; `msg` has its size.
        let m: uapi::uffd_msg = unsafe { std::ptr::read_unaligned(msg.as_ptr().cast()) };
        if u32::from(m.event) != uapi::UFFD_EVENT_PAGEFAULT {
            continue;
        }
        // SAFETY: the event byte says the union holds a page-fault record (plain integers).
        let addr = unsafe { m.arg.pagefault }.address as usize & !(PAGE - 1);
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
/// the module docs).
pub struct CopyThenSum {
    dst: usize,
    n: usize,
    threads: usize,
    src: Vec<u32>,
    fd: OwnedFd,
    /// Time of the copies of the last run (the rest is the sum).
    pub copy_time: Duration,
    /// The sum the last run found.
    pub sum: u64,
}

impl CopyThenSum {
    /// `n` words (a multiple of a page's words) on `threads` installing threads; the source
    /// (word i holding i) is written once, so that it stays resident.
    pub fn new(n: usize, threads: usize) -> anyhow::Result<CopyThenSum> {
        let len = n * 4;
        anyhow::ensure!(
            len.is_multiple_of(PAGE),
            "CopyThenSum: {len} bytes, not whole pages"
        );
        let fd = open_uffd(u64::from(uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP))?;
        let dst = map(len)?;
        register(
            &fd,
            dst,
            len,
            uapi::UFFDIO_REGISTER_MODE_MISSING | uapi::UFFDIO_REGISTER_MODE_WP,
        )?;
        Ok(CopyThenSum {
            dst,
            n,
            threads: threads.max(1),
            src: (0..n).map(|i| i as u32).collect(),
            fd,
            copy_time: Duration::ZERO,
            sum: 0,
        })
    }

    /// Untimed: drop every destination page; timed: install them all, then sum every word.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        let len = self.n * 4;
        // SAFETY: the mapping is ours and holds plain words; nothing reads it meanwhile.
        unsafe {
            rustix::mm::madvise(
                self.dst as *mut std::ffi::c_void,
                len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        }
        .map_err(|e| anyhow::anyhow!("madvise: {e}"))?;
        let part = (len / self.threads).next_multiple_of(PAGE);
        let this = &*self;
        let t = Instant::now();
        if this.threads == 1 {
            this.fill(0..len)?;
        } else {
            std::thread::scope(|s| {
                let parts: Vec<_> = (0..len)
                    .step_by(part)
                    .map(|a| s.spawn(move || this.fill(a..(a + part).min(len))))
                    .collect();
                parts
                    .into_iter()
                    .try_for_each(|h| h.join().expect("a copier thread panicked"))
            })?;
        }
        let copied = t.elapsed();
        // SAFETY: every page of the mapping was installed just above (each ioctl copied its
        // whole piece or failed); it holds `n` plain words and nothing writes it meanwhile.
        let words = unsafe { std::slice::from_raw_parts(self.dst as *const u32, self.n) };
        let sum = sum_u32(std::hint::black_box(words));
        let d = t.elapsed();
        let n = self.n as u64;
        anyhow::ensure!(sum == n * (n - 1) / 2, "CopyThenSum: wrong sum");
        self.copy_time = copied;
        self.sum = sum;
        Ok(d)
    }

    /// Installs bytes `range` of the mapping in [`COPY_PIECE`] ioctls.
    fn fill(&self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        for off in range.clone().step_by(COPY_PIECE) {
            let len = COPY_PIECE.min(range.end - off);
            let mut copy = uapi::uffdio_copy {
                dst: (self.dst + off) as u64,
                src: self.src.as_ptr() as u64 + off as u64,
                len: len as u64,
                mode: u64::from(uapi::UFFDIO_COPY_MODE_DONTWAKE | uapi::UFFDIO_COPY_MODE_WP),
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`; the source is our
            // resident Vec, the destination missing pages of our own registered mapping
            // (each thread its own part of them).
            unsafe { ioctl(&self.fd, Updater::<OP_COPY, _>::new(&mut copy)) }
                .map_err(|e| anyhow::anyhow!("UFFDIO_COPY: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for CopyThenSum {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.dst as *mut std::ffi::c_void, self.n * 4) };
    }
}
