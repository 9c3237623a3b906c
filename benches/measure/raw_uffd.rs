//! The limit of a fault-back: a raw userfaultfd round trip with a trivial handler thread.
//!
//! One anonymous mapping is registered for MISSING faults; a handler thread waits in
//! `poll(2)`, reads the fault message and answers it with one 4 KiB `UFFDIO_COPY` from a
//! source page. The measuring thread touches one page at a time and times each touch, so a
//! sample is: trap, wake the handler, read the message, copy, wake the toucher. Nothing of
//! vkhmm is used (its fault layer is private); the plumbing is rustix + linux-raw-sys as in
//! the crate's `src/fault/uffd.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linux_raw_sys::general as uapi;
use rustix::ioctl::{ioctl, Opcode, Updater};

use super::PAGE;

const OP_API: Opcode = linux_raw_sys::ioctl::UFFDIO_API as Opcode;
const OP_REGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_REGISTER as Opcode;
const OP_COPY: Opcode = linux_raw_sys::ioctl::UFFDIO_COPY as Opcode;
const OP_MOVE: Opcode = rustix::ioctl::opcode::read_write::<uapi::uffdio_move>(
    uapi::UFFDIO as u8,
    uapi::_UFFDIO_MOVE as u8,
);
/// `UFFDIO_MOVE_MODE_DONTWAKE` (linux-raw-sys lacks the move modes).
const MOVE_MODE_DONTWAKE: u64 = 1;

/// An open userfaultfd, handshaken with `features`.
pub fn open_uffd(features: u64) -> anyhow::Result<OwnedFd> {
    use rustix::mm::{userfaultfd, UserfaultfdFlags};
    let flags = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
    // SAFETY: creating a userfaultfd changes nothing until a range is registered; the only
    // ranges registered with these are the bench's own mappings.
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

/// A fresh private anonymous read-write mapping of `len` bytes (its address as a number, so
/// that threads can share it).
pub fn map(len: usize) -> anyhow::Result<usize> {
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
pub fn register(fd: &OwnedFd, addr: usize, len: usize, mode: u32) -> anyhow::Result<()> {
    let mut reg = uapi::uffdio_register {
        range: uapi::uffdio_range {
            start: addr as u64,
            len: len as u64,
        },
        mode: u64::from(mode),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`; the range is one of the
    // bench's own mappings.
    unsafe { ioctl(fd, Updater::<OP_REGISTER, _>::new(&mut reg)) }
        .map_err(|e| anyhow::anyhow!("UFFDIO_REGISTER: {e}"))
}

/// How a handler thread waits for the next fault message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Sleeps in `poll` (the thread is woken by the fault).
    Poll,
    /// Spins on non-blocking reads: no wake-up of the handler on the fault's path, the least
    /// round trip a handler can give (the faulting thread still sleeps until woken).
    Spin,
}

/// Waits for the next page-fault message on `fd` and returns the page it is for; `None` once
/// `stop` is set. Other messages are skipped.
pub fn next_fault(fd: &OwnedFd, stop: &AtomicBool) -> Option<usize> {
    next_fault_by(fd, stop, Wait::Poll)
}

/// [`next_fault`], waiting as `wait` says (`fd` must be non-blocking for [`Wait::Spin`]).
pub fn next_fault_by(fd: &OwnedFd, stop: &AtomicBool, wait: Wait) -> Option<usize> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let mut msg = [0u8; std::mem::size_of::<uapi::uffd_msg>()];
    while !stop.load(Ordering::Relaxed) {
        if wait == Wait::Poll {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            if !matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
                continue;
            }
        }
        let Ok(n) = rustix::io::read(fd.as_fd(), &mut msg) else {
            std::hint::spin_loop();
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
        return Some(unsafe { m.arg.pagefault }.address as usize & !(PAGE - 1));
    }
    None
}

/// An anonymous mapping whose pages a trivial handler thread fills on first touch.
pub struct RawUffd {
    base: *mut u8,
    pages: usize,
    stop: Arc<AtomicBool>,
    handler: Option<std::thread::JoinHandle<()>>,
    _fd: Arc<OwnedFd>,
}

/// The address of the source page, sendable to the handler thread.
struct SendPtr(usize);

impl RawUffd {
    /// Maps `pages` pages and starts the handler.
    pub fn new(pages: usize) -> anyhow::Result<RawUffd> {
        Self::with_handler_cpu(pages, None)
    }

    /// As [`RawUffd::new`], the handler thread pinned to `cpu` when given.
    pub fn with_handler_cpu(pages: usize, cpu: Option<usize>) -> anyhow::Result<RawUffd> {
        Self::with_handler(pages, cpu, Wait::Poll)
    }

    /// As [`RawUffd::new`], the handler thread waiting as `wait` says.
    pub fn waiting(pages: usize, wait: Wait) -> anyhow::Result<RawUffd> {
        Self::with_handler(pages, None, wait)
    }

    fn with_handler(pages: usize, cpu: Option<usize>, wait: Wait) -> anyhow::Result<RawUffd> {
        let fd = open_uffd(0)?;
        let len = pages * PAGE;
        let base = map(len)? as *mut u8;
        register(&fd, base as usize, len, uapi::UFFDIO_REGISTER_MODE_MISSING)?;
        let fd = Arc::new(fd);
        let stop = Arc::new(AtomicBool::new(false));
        let source: &'static mut [u8] = Box::leak(vec![0x5au8; 2 * PAGE].into_boxed_slice());
        // A page-aligned source inside the leaked buffer (leaked: lives as long as the thread).
        let src = SendPtr((source.as_ptr() as usize + PAGE - 1) & !(PAGE - 1));
        let handler = {
            let (fd, stop) = (fd.clone(), stop.clone());
            std::thread::Builder::new()
                .name("raw-uffd".into())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        let _ = pin_current_thread(Some(cpu));
                    }
                    handle(&fd, &stop, src, wait)
                })?
        };
        Ok(RawUffd {
            base,
            pages,
            stop,
            handler: Some(handler),
            _fd: fd,
        })
    }

    /// Drops every page so that the next touch of each faults again.
    pub fn reset(&self) -> anyhow::Result<()> {
        // SAFETY: the mapping is ours and holds no Rust objects; dropped pages read as
        // missing, which the handler fills.
        unsafe {
            rustix::mm::madvise(
                self.base.cast(),
                self.pages * PAGE,
                rustix::mm::Advice::LinuxDontNeed,
            )
        }
        .map_err(|e| anyhow::anyhow!("madvise: {e}"))
    }

    /// Touches page `i` (one read) and returns how long the touch took.
    pub fn touch(&self, i: usize) -> Duration {
        let t = Instant::now();
        // SAFETY: `i < pages` is checked by the caller's index; the page is readable (the
        // handler fills it if missing).
        let v = unsafe { std::ptr::read_volatile(self.base.add((i % self.pages) * PAGE)) };
        let d = t.elapsed();
        std::hint::black_box(v);
        d
    }

    /// Number of pages mapped.
    pub fn pages(&self) -> usize {
        self.pages
    }
}

impl Drop for RawUffd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
        // SAFETY: the mapping is ours and nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.pages * PAGE) };
    }
}

/// Pins the calling thread to `cpu` (`None`: every CPU it may use at start-up, i.e. the
/// process's mask); returns the previous mask so that the caller can restore it.
pub fn pin_current_thread(cpu: Option<usize>) -> anyhow::Result<rustix::thread::CpuSet> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let old = sched_getaffinity(None)?;
    let mut set = CpuSet::new();
    match cpu {
        Some(c) => set.set(c),
        None => {
            for c in 0..CpuSet::MAX_CPU {
                set.set(c);
            }
        }
    }
    sched_setaffinity(None, &set)?;
    Ok(old)
}

/// Restores a mask [`pin_current_thread`] returned.
pub fn restore_affinity(old: &rustix::thread::CpuSet) {
    let _ = rustix::thread::sched_setaffinity(None, old);
}

/// `UFFDIO_COPY` throughput: fill a registered, empty mapping of `size` bytes from a
/// populated source in `piece`-byte ioctls (the primitive a fault-back or a prefetch to the
/// host is built on). No fault is involved: the ioctls run on the measuring thread, or on
/// `threads` threads each filling its own contiguous part (as the fault handler and its
/// assistant fill the two halves of a window).
pub struct CopyBandwidth {
    /// Address of the registered mapping (a number, so that the copier threads can share
    /// `&self`).
    dst: usize,
    size: usize,
    piece: usize,
    threads: usize,
    /// The source, word i holding i (whole words: every size measured is whole pages).
    src: Vec<u32>,
    fd: OwnedFd,
    wp: bool,
}

impl CopyBandwidth {
    /// A registered mapping and a source of `size` bytes, filled by `threads` threads. With
    /// `wp` the pages are installed write-protected (`UFFDIO_COPY_MODE_WP`), as vkhmm installs
    /// `Shared` pages.
    pub fn new(
        size: usize,
        piece: usize,
        threads: usize,
        wp: bool,
    ) -> anyhow::Result<CopyBandwidth> {
        let wp_bits = |bits: u32| if wp { bits } else { 0 };
        let fd = open_uffd(u64::from(wp_bits(uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP)))?;
        let dst = map(size)?;
        let mode = uapi::UFFDIO_REGISTER_MODE_MISSING | wp_bits(uapi::UFFDIO_REGISTER_MODE_WP);
        register(&fd, dst, size, mode)?;
        Ok(CopyBandwidth {
            dst,
            size,
            piece: piece.min(size),
            threads: threads.max(1),
            src: (0..size / 4).map(|i| i as u32).collect(),
            fd,
            wp,
        })
    }

    /// Untimed: drop every destination page; timed: fill them all with `UFFDIO_COPY`.
    pub fn run(&mut self) -> anyhow::Result<Duration> {
        // SAFETY: the mapping is ours and holds plain bytes; nothing touches it meanwhile.
        unsafe {
            rustix::mm::madvise(
                self.dst as *mut std::ffi::c_void,
                self.size,
                rustix::mm::Advice::LinuxDontNeed,
            )
        }
        .map_err(|e| anyhow::anyhow!("madvise: {e}"))?;
        let part = (self.size / self.threads).next_multiple_of(PAGE);
        let this = &*self;
        let t = Instant::now();
        if self.threads == 1 {
            this.fill(0..self.size)?;
        } else {
            std::thread::scope(|s| {
                let parts: Vec<_> = (0..self.size)
                    .step_by(part)
                    .map(|a| s.spawn(move || this.fill(a..(a + part).min(this.size))))
                    .collect();
                parts
                    .into_iter()
                    .try_for_each(|h| h.join().expect("a copier thread panicked"))
            })?;
        }
        Ok(t.elapsed())
    }

    /// The source's words.
    pub fn source_words(&self) -> &[u32] {
        &self.src
    }

    /// The mapping's words, every page installed by the last [`run`](Self::run).
    pub fn installed_words(&self) -> &[u32] {
        // SAFETY: `run` installed every page of the mapping (each ioctl copied its whole
        // piece or `run` failed), which is ours, page-aligned and holds `size / 4` plain
        // words; nothing writes it while the returned borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(self.dst as *const u32, self.size / 4) }
    }

    /// Fills bytes `range` of the mapping in `piece`-byte ioctls.
    fn fill(&self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        for off in range.clone().step_by(self.piece) {
            let len = self.piece.min(range.end - off);
            let mut copy = uapi::uffdio_copy {
                dst: self.dst as u64 + off as u64,
                src: self.src.as_ptr() as u64 + off as u64,
                len: len as u64,
                mode: u64::from(uapi::UFFDIO_COPY_MODE_DONTWAKE)
                    | if self.wp {
                        u64::from(uapi::UFFDIO_COPY_MODE_WP)
                    } else {
                        0
                    },
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`; the source is our
            // populated Vec, the destination missing pages of our own registered mapping
            // (each thread its own part of them).
            unsafe { ioctl(&self.fd, Updater::<OP_COPY, _>::new(&mut copy)) }
                .map_err(|e| anyhow::anyhow!("UFFDIO_COPY: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for CopyBandwidth {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.dst as *mut std::ffi::c_void, self.size) };
    }
}

/// Page recycling with `UFFDIO_MOVE` (Linux 6.8+), the primitive a faster migration could
/// use instead of `MADV_DONTNEED` + `UFFDIO_COPY`: going to the device, the host pages are
/// *moved* (PTEs only) into a parking range instead of being freed; coming home, the data
/// is memcpy'd into the parked pages (allocated, warm) and they are moved back into place.
/// Neither direction allocates, zeroes or frees a page.
pub struct MoveCycle {
    home: *mut u8,
    park: *mut u8,
    size: usize,
    piece: usize,
    device: Vec<u8>,
    fd: OwnedFd,
}

impl MoveCycle {
    /// `size` bytes at home (populated) and an empty parking range, both registered.
    pub fn new(size: usize, piece: usize) -> anyhow::Result<MoveCycle> {
        use rustix::mm::{userfaultfd, UserfaultfdFlags};
        let flags = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
        // SAFETY: as in `RawUffd::new`: only our own mappings are registered.
        let fd =
            unsafe { userfaultfd(flags) }.map_err(|e| anyhow::anyhow!("userfaultfd(2): {e}"))?;
        let mut api = uapi::uffdio_api {
            api: u64::from(uapi::UFFD_API),
            features: u64::from(uapi::UFFD_FEATURE_MOVE),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is.
        unsafe { ioctl(&fd, Updater::<OP_API, _>::new(&mut api)) }
            .map_err(|e| anyhow::anyhow!("UFFDIO_API with UFFD_FEATURE_MOVE: {e}"))?;
        let map = || -> anyhow::Result<*mut u8> {
            // SAFETY: a fresh private anonymous mapping aliases nothing.
            let p = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    size,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::PRIVATE,
                )
            }
            .map_err(|e| anyhow::anyhow!("mmap: {e}"))?;
            // No transparent huge pages: vkhmm tracks 4 KiB pages.
            // SAFETY: advice on our own fresh mapping.
            let _ = unsafe { rustix::mm::madvise(p, size, rustix::mm::Advice::LinuxNoHugepage) };
            Ok(p.cast())
        };
        let (home, park) = (map()?, map()?);
        for base in [home, park] {
            let mut reg = uapi::uffdio_register {
                range: uapi::uffdio_range {
                    start: base as u64,
                    len: size as u64,
                },
                mode: u64::from(uapi::UFFDIO_REGISTER_MODE_MISSING),
                ioctls: 0,
            };
            // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`; ours.
            unsafe { ioctl(&fd, Updater::<OP_REGISTER, _>::new(&mut reg)) }
                .map_err(|e| anyhow::anyhow!("UFFDIO_REGISTER: {e}"))?;
        }
        // Populate home with UFFDIO_COPY (a touch would fault with no handler to serve it).
        let device: Vec<u8> = (0..size).map(|i| (i * 3) as u8).collect();
        let mut copy = uapi::uffdio_copy {
            dst: home as u64,
            src: device.as_ptr() as u64,
            len: size as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: as in `CopyBandwidth::run`.
        unsafe { ioctl(&fd, Updater::<OP_COPY, _>::new(&mut copy)) }
            .map_err(|e| anyhow::anyhow!("UFFDIO_COPY: {e}"))?;
        Ok(MoveCycle {
            home,
            park,
            size,
            piece: piece.min(size),
            device,
            fd,
        })
    }

    fn move_all(&self, from: *mut u8, to: *mut u8) -> anyhow::Result<()> {
        for off in (0..self.size).step_by(self.piece) {
            let len = self.piece.min(self.size - off);
            let mut mv = uapi::uffdio_move {
                dst: to as u64 + off as u64,
                src: from as u64 + off as u64,
                len: len as u64,
                mode: MOVE_MODE_DONTWAKE,
                move_: 0,
            };
            // SAFETY: UFFDIO_MOVE reads and writes one `uffdio_move`; both ranges are our
            // own registered anonymous mappings, the destination empty, the source present.
            unsafe { ioctl(&self.fd, Updater::<OP_MOVE, _>::new(&mut mv)) }
                .map_err(|e| anyhow::anyhow!("UFFDIO_MOVE: {e}"))?;
        }
        Ok(())
    }

    /// Timed: the host pages leave (moved to the parking range; the home range is empty).
    pub fn park_out(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.move_all(self.home, self.park)?;
        Ok(t.elapsed())
    }

    /// Timed: the "device copy" is memcpy'd into the parked pages, which move home. Call
    /// only after [`MoveCycle::park_out`] (the parked range is empty before: a memcpy
    /// into it would fault with no handler to serve it).
    pub fn bring_home(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        // SAFETY: the parked pages are present (moved there by `park_out`) and ours.
        unsafe { std::ptr::copy_nonoverlapping(self.device.as_ptr(), self.park, self.size) };
        self.move_all(self.park, self.home)?;
        Ok(t.elapsed())
    }

    /// The home range's words (call after a `bring_home`, which leaves every page present).
    pub fn home_words(&self) -> &[u32] {
        // SAFETY: after `bring_home` every home page is present; the mapping is ours,
        // page-aligned and holds `size / 4` plain words; nothing writes it while the borrow of
        // `self` lives.
        unsafe { std::slice::from_raw_parts(self.home as *const u32, self.size / 4) }
    }

    /// Whether home holds the device data (call after a `bring_home`).
    pub fn verify(&self) -> bool {
        // SAFETY: after `bring_home` every home page is present.
        let home = unsafe { std::slice::from_raw_parts(self.home, self.size) };
        home == &self.device[..]
    }
}

impl Drop for MoveCycle {
    fn drop(&mut self) {
        // SAFETY: the mappings are ours and nothing refers to them any more.
        unsafe {
            let _ = rustix::mm::munmap(self.home.cast(), self.size);
            let _ = rustix::mm::munmap(self.park.cast(), self.size);
        }
    }
}

/// The trivial handler: wait, read one message, copy one page from `src`, repeat.
fn handle(fd: &OwnedFd, stop: &AtomicBool, src: SendPtr, wait: Wait) {
    while let Some(addr) = next_fault_by(fd, stop, wait) {
        let mut copy = uapi::uffdio_copy {
            dst: addr as u64,
            src: src.0 as u64,
            len: PAGE as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`; the source page is a
        // readable leaked buffer outside the registered range, the destination a missing
        // page of our own mapping, which holds plain bytes.
        let _ = unsafe { ioctl(fd, Updater::<OP_COPY, _>::new(&mut copy)) };
    }
}
