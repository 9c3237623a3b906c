//! The two ways bytes move between host memory and [`DeviceBlock`]s.
//!
//! A [`Transfer`] belongs to one user — the runtime's launch context owns one, the fault
//! handler owns one per device — and every operation returns only when its bytes have
//! arrived. It uploads host bytes into a block, downloads a block's bytes into a sink the
//! caller provides (the fault handler's sink does `UFFDIO_COPY`), zeroes ranges and copies
//! between blocks, on one of two paths:
//!
//! - **Direct** ([`direct`]; pool memory `HOST_VISIBLE | HOST_COHERENT | HOST_CACHED`:
//!   integrated GPUs, lavapipe) is `memcpy`/`memset`/`memmove` through the blocks' mappings,
//!   with no submission.
//! - **Staged** ([`staged`], through the staging [`ring`]; device memory the CPU cannot map:
//!   discrete GPUs) cuts regions into pieces of at most one slot of a host-visible ring and
//!   packs them into the current slot (up to [`MAX_COPIES`](ring::MAX_COPIES) regions in one
//!   `vkCmdCopyBuffer`); a full slot is submitted while the next one fills: uploads `memcpy`
//!   into slot k+1 while slot k's copy runs, downloads keep up to [`SLOTS`](ring::SLOTS)
//!   copies in flight and hand each slot's bytes to the sink, in order, as soon as its fence
//!   signals. Many small regions therefore cost one submission, not one each — a submit and
//!   wait costs ~70 µs even on lavapipe.
//!
//! Which path: Direct iff the pool memory type is host-visible, coherent and cached
//! ([`choose_path`]); `DeviceConfig::transfer` forces either, and forcing Direct on memory the
//! CPU cannot map coherently is [`Error::InvalidConfig`].
//!
//! # One dispatch
//!
//! Each of [`Transfer`]'s four operations checks its ranges, then hands an [`Op`] (the blocks
//! and the caller's regions, borrowed) to [`Transfer::run`], the one place where the path is
//! chosen. Each path has one entry over the four operations ([`direct::run`],
//! [`staged::run`]). All three are `#[inline(always)]`: each public method builds a constant
//! `Op`, so the match on the operation folds away and the method compiles to its own loops.
//!
//! # Invariants
//!
//! - **Nothing is allocated after [`Transfer::new`].** The fault handler calls
//!   [`Transfer::download`], and a heap allocation there could land on a page that lives on
//!   the device (docs/architecture.md, "Rules that keep the handler deadlock-free"). An `Op`
//!   is a few borrowed words on the stack; the ring, its batches and command buffers are made
//!   in `new`.
//! - **Ranges are checked before anything is touched.** A range past a block's end, or a
//!   block of another device, panics in the public method; the paths rely on it.
//! - **An operation ends with nothing in flight**, whether it succeeds or fails;
//!   [`Transfer::recover`] restores that after a panic unwound out of one.

mod direct;
mod ring;
mod staged;

use std::sync::Arc;

use ash::vk;

use super::{Device, DeviceBlock, TransferPath};
use crate::error::{Error, Result};
use crate::sys::guarded;
use ring::Ring;

/// What a download hands its bytes to: `(region index, offset within the region, bytes)`.
pub(crate) type Sink<'a> = dyn FnMut(usize, usize, &[u8]) -> Result<()> + 'a;

/// The transfer path the pool memory calls for, or the forced one.
pub(crate) fn choose_path(
    flags: vk::MemoryPropertyFlags,
    forced: Option<TransferPath>,
) -> Result<TransferPath> {
    use vk::MemoryPropertyFlags as F;
    match forced {
        None if flags.contains(F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED) => {
            Ok(TransferPath::Direct)
        }
        None | Some(TransferPath::Staged) => Ok(TransferPath::Staged),
        Some(TransferPath::Direct) if flags.contains(F::HOST_VISIBLE | F::HOST_COHERENT) => {
            Ok(TransferPath::Direct)
        }
        Some(TransferPath::Direct) => Err(Error::InvalidConfig(format!(
            "the direct transfer path needs host-visible, coherent device memory; the pool's \
             memory type is {flags:?} (use `staged`)"
        ))),
    }
}

/// Moves bytes between host memory and blocks of one device, on one path.
pub(crate) struct Transfer {
    device: Arc<Device>,
    path: Path,
}

/// The path a [`Transfer`] takes, fixed when it is created.
enum Path {
    /// Through the blocks' mappings: nothing to own.
    Direct,
    /// Through a staging ring.
    Staged(Ring),
}

/// One operation of a [`Transfer`], as its methods hand it to the path: the blocks and the
/// caller's regions, borrowed, so making one allocates nothing.
enum Op<'a> {
    /// Writes each `(offset, bytes)` into `dst`.
    Upload {
        dst: &'a DeviceBlock,
        regions: &'a [(u64, &'a [u8])],
    },
    /// Reads each `(offset, len)` of `src` into the sink.
    Download {
        src: &'a DeviceBlock,
        regions: &'a [(u64, usize)],
    },
    /// Zeroes each `(offset, len)` of `dst`.
    Zero {
        dst: &'a DeviceBlock,
        ranges: &'a [(u64, u64)],
    },
    /// Copies each `(src offset, dst offset, len)` from `src` to `dst`.
    Copy {
        src: &'a DeviceBlock,
        dst: &'a DeviceBlock,
        regions: &'a [(u64, u64, u64)],
    },
}

impl Transfer {
    /// Creates a transfer on `path`. For `Staged`, allocates a staging ring of about
    /// `staging_bytes` (split into [`SLOTS`](ring::SLOTS) slots of whole pages, at least one
    /// page each) and its command buffers; nothing is allocated after this.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for `Direct` when the pool memory is not host-visible and
    /// coherent; allocation and driver failures otherwise.
    pub(crate) fn new(
        device: &Arc<Device>,
        path: TransferPath,
        staging_bytes: u64,
    ) -> Result<Self> {
        choose_path(device.pool().memory_flags(), Some(path))?;
        let path = match path {
            TransferPath::Direct => Path::Direct,
            TransferPath::Staged => Path::Staged(Ring::new(device, staging_bytes)?),
        };
        Ok(Transfer {
            device: Arc::clone(device),
            path,
        })
    }

    /// Makes the transfer usable again after a panic unwound out of one of its operations:
    /// open recordings are abandoned and everything in flight is waited for (an operation
    /// that returns an error does this itself).
    pub(crate) fn recover(&mut self) {
        if let Path::Staged(ring) = &mut self.path {
            ring.abort(&self.device);
        }
    }

    /// The path this transfer takes.
    pub(crate) fn path(&self) -> TransferPath {
        match self.path {
            Path::Direct => TransferPath::Direct,
            Path::Staged(_) => TransferPath::Staged,
        }
    }

    /// Queue submissions this transfer has made (always 0 on the Direct path): how well
    /// regions are batched.
    #[cfg(test)]
    pub(crate) fn submissions(&self) -> u64 {
        match &self.path {
            Path::Direct => 0,
            Path::Staged(ring) => ring.submissions(),
        }
    }

    /// Writes each `(offset, bytes)` region into `dst` at `offset`; returns when done.
    /// Regions should not overlap one another: where they do, which bytes win is unspecified
    /// on the Staged path (one `vkCmdCopyBuffer` carries many regions).
    ///
    /// # Safety
    ///
    /// For the duration of the call nothing else reads or writes the destination ranges of
    /// `dst`: no kernel in flight, no other `Transfer`, no access through
    /// [`DeviceBlock::mapped`].
    ///
    /// # Panics
    ///
    /// If a region reaches past the end of `dst`, or `dst` belongs to another device.
    pub(crate) unsafe fn upload(
        &mut self,
        dst: &DeviceBlock,
        regions: &[(u64, &[u8])],
    ) -> Result<()> {
        self.check(
            dst,
            regions.iter().map(|&(at, bytes)| (at, bytes.len() as u64)),
        );
        // SAFETY: the regions lie inside `dst` (checked); the caller rules out other access.
        unsafe { self.run(Op::Upload { dst, regions }, &mut discard) }
    }

    /// Reads each `(offset, len)` region of `src` and hands the bytes to `sink` in order, in
    /// pieces: `sink(region index, offset within the region, bytes)`. Direct: one piece per
    /// region, straight from the mapping; Staged: pieces of at most one staging slot. A sink
    /// error stops the download (after in-flight copies finish) and is returned.
    ///
    /// # Safety
    ///
    /// For the duration of the call nothing writes the source ranges of `src` (no kernel in
    /// flight that writes them, no other `Transfer`, no write through the mapping).
    ///
    /// # Panics
    ///
    /// If a region reaches past the end of `src`, or `src` belongs to another device.
    pub(crate) unsafe fn download(
        &mut self,
        src: &DeviceBlock,
        regions: &[(u64, usize)],
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        self.check(src, regions.iter().map(|&(at, len)| (at, len as u64)));
        // SAFETY: the regions lie inside `src` (checked); the caller rules out writers.
        unsafe { self.run(Op::Download { src, regions }, sink) }
    }

    /// Sets each `(offset, len)` range of `dst` to zero; returns when done.
    ///
    /// # Safety
    ///
    /// As for [`upload`](Self::upload): nothing else accesses the ranges during the call.
    ///
    /// # Panics
    ///
    /// If a range reaches past the end of `dst`, or `dst` belongs to another device.
    pub(crate) unsafe fn zero(&mut self, dst: &DeviceBlock, ranges: &[(u64, u64)]) -> Result<()> {
        self.check(dst, ranges.iter().copied());
        // SAFETY: the ranges lie inside `dst` (checked); the caller rules out other access.
        unsafe { self.run(Op::Zero { dst, ranges }, &mut discard) }
    }

    /// Copies each `(src offset, dst offset, len)` region from `src` to `dst` on the device;
    /// returns when done. `src` and `dst` may be the same block; regions must then not
    /// overlap on the Staged path (`vkCmdCopyBuffer` forbids it).
    ///
    /// # Safety
    ///
    /// For the duration of the call nothing writes the source ranges and nothing else
    /// accesses the destination ranges; with `src == dst`, no source range overlaps a
    /// destination range.
    ///
    /// # Panics
    ///
    /// If a region reaches past the end of either block, or a block belongs to another device.
    pub(crate) unsafe fn copy(
        &mut self,
        src: &DeviceBlock,
        dst: &DeviceBlock,
        regions: &[(u64, u64, u64)],
    ) -> Result<()> {
        self.check(src, regions.iter().map(|&(s, _, len)| (s, len)));
        self.check(dst, regions.iter().map(|&(_, d, len)| (d, len)));
        // SAFETY: the regions lie inside both blocks (checked); the caller rules out other
        // access and overlap within one block.
        unsafe { self.run(Op::Copy { src, dst, regions }, &mut discard) }
    }

    /// Runs `op` on this transfer's path: the one place where the path is chosen, once per
    /// operation. Each path then loops over the regions with no further dispatch.
    ///
    /// This and each path's entry are `#[inline(always)]`: every public method builds its
    /// `Op` as a constant, so once inlined the match on the operation folds away and each
    /// method compiles to its own loops, as when each spelled out both paths. The fault
    /// handler's `download` pays no extra dispatch.
    ///
    /// # Safety
    ///
    /// Every range of `op` lies inside its block, and the caller rules out other access to
    /// them as the public method that built `op` states.
    #[inline(always)]
    unsafe fn run(&mut self, op: Op<'_>, sink: &mut Sink<'_>) -> Result<()> {
        match &mut self.path {
            // SAFETY: forwarded from the caller.
            Path::Direct => unsafe { direct::run(op, sink) },
            // SAFETY: forwarded from the caller.
            Path::Staged(ring) => unsafe { staged::run(ring, &self.device, op, sink) },
        }
    }

    /// Asserts that `block` is this device's and every `(offset, len)` lies inside it.
    fn check(&self, block: &DeviceBlock, ranges: impl Iterator<Item = (u64, u64)>) {
        assert!(
            Arc::ptr_eq(block.device(), &self.device),
            "block of another device"
        );
        for (at, len) in ranges {
            let end = at.checked_add(len);
            assert!(
                end.is_some_and(|end| end <= block.size()),
                "range {at}+{len} outside a {}-byte block",
                block.size()
            );
        }
    }
}

/// The sink of operations that download nothing.
fn discard(_: usize, _: usize, _: &[u8]) -> Result<()> {
    Ok(())
}

/// The error of an upload whose source `bytes` vanished from under a guarded copy after
/// `f.copied` bytes: a buggy program unmapped memory a launch was using.
fn vanished(bytes: &[u8], f: guarded::Faulted) -> Error {
    Error::UnsupportedMemory {
        addr: bytes.as_ptr() as usize + f.copied,
        len: bytes.len() - f.copied,
        reason: crate::MemoryReason::UnmappedWhileInUse,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::ring::MAX_COPIES;
    use super::*;
    use crate::device::config::DEFAULT_STAGING_BYTES;
    use crate::device::{test_device, BlockInit, DeviceConfig};

    /// A transfer on the device's own path (Direct on lavapipe) and one on a device forced to
    /// Staged; empty when there is no device (outside CI).
    fn transfers(staging_bytes: u64) -> Vec<Transfer> {
        let mut out = Vec::new();
        for transfer in [None, Some(TransferPath::Staged)] {
            let Some(dev) = test_device(DeviceConfig {
                transfer,
                ..DeviceConfig::default()
            }) else {
                return Vec::new();
            };
            out.push(Transfer::new(&dev, dev.info().transfer_path, staging_bytes).unwrap());
        }
        out
    }

    /// Bytes that differ at every position and between seeds.
    pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B1) >> 24) as u8)
            .collect()
    }

    /// Downloads `regions`, checking that pieces come in order, contiguous, and no larger than
    /// a staging slot.
    fn read(t: &mut Transfer, block: &DeviceBlock, regions: &[(u64, usize)]) -> Vec<Vec<u8>> {
        let slot = match &t.path {
            Path::Direct => usize::MAX,
            Path::Staged(ring) => ring.slot_bytes() as usize,
        };
        let mut out: Vec<Vec<u8>> = regions
            .iter()
            .map(|&(_, len)| Vec::with_capacity(len))
            .collect();
        let mut last = 0;
        // SAFETY: the test owns the block; nothing else touches it.
        unsafe {
            t.download(block, regions, &mut |region, offset, bytes| {
                assert!(region >= last, "region {region} after {last}");
                assert_eq!(
                    offset,
                    out[region].len(),
                    "pieces of region {region} out of order"
                );
                assert!(
                    bytes.len() <= slot,
                    "piece of {} bytes > slot of {slot}",
                    bytes.len()
                );
                last = region;
                out[region].extend_from_slice(bytes);
                Ok(())
            })
        }
        .unwrap();
        out
    }

    fn upload(t: &mut Transfer, block: &DeviceBlock, regions: &[(u64, &[u8])]) {
        // SAFETY: the test owns the block; nothing else touches it.
        unsafe { t.upload(block, regions) }.unwrap();
    }

    #[test]
    fn path_follows_the_memory_type_unless_forced() {
        use vk::MemoryPropertyFlags as F;
        let cached = F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED;
        let rebar = F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT;
        assert_eq!(choose_path(cached, None).unwrap(), TransferPath::Direct);
        assert_eq!(choose_path(rebar, None).unwrap(), TransferPath::Staged);
        assert_eq!(
            choose_path(F::DEVICE_LOCAL, None).unwrap(),
            TransferPath::Staged
        );
        assert_eq!(
            choose_path(cached, Some(TransferPath::Staged)).unwrap(),
            TransferPath::Staged
        );
        assert_eq!(
            choose_path(rebar, Some(TransferPath::Direct)).unwrap(),
            TransferPath::Direct
        );
        let e = choose_path(F::DEVICE_LOCAL, Some(TransferPath::Direct)).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
    }

    #[test]
    fn round_trips_at_unaligned_offsets_and_sizes() {
        // A small ring (4 KiB slots) makes the Staged path wrap around many times.
        for staging in [DEFAULT_STAGING_BYTES, 16 << 10] {
            for mut t in transfers(staging) {
                let dev = Arc::clone(&t.device);
                for size in [1usize, 3, 4095, 4096, 4097, 65537, (1 << 20) + 7] {
                    for offset in [0u64, 1, 4093, 65539] {
                        let block = dev
                            .alloc_block(offset + size as u64, BlockInit::Uninit, "rt")
                            .unwrap();
                        let data = pattern(size, size as u32 ^ offset as u32);
                        upload(&mut t, &block, &[(offset, &data)]);
                        let back = read(&mut t, &block, &[(offset, size)]);
                        assert!(
                            back[0] == data,
                            "{:?}: {size} bytes at {offset} differ",
                            t.path()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn round_trip_of_64_mib() {
        const SIZE: usize = 64 << 20;
        for mut t in transfers(DEFAULT_STAGING_BYTES) {
            let dev = Arc::clone(&t.device);
            let offset = 4093;
            let block = dev
                .alloc_block(offset + SIZE as u64, BlockInit::Uninit, "64m")
                .unwrap();
            let data = pattern(SIZE, 64);
            let mut back = vec![0u8; SIZE];
            // The first pass touches fresh pages (page faults); the later ones are warm.
            for pass in 0..3 {
                back.fill(0);
                let start = Instant::now();
                upload(&mut t, &block, &[(offset, &data)]);
                let up = start.elapsed();
                let start = Instant::now();
                // SAFETY: the test owns the block.
                unsafe {
                    t.download(&block, &[(offset, SIZE)], &mut |_, at, bytes| {
                        back[at..at + bytes.len()].copy_from_slice(bytes);
                        Ok(())
                    })
                }
                .unwrap();
                let down = start.elapsed();
                assert!(back == data, "{:?}: 64 MiB round trip differs", t.path());
                let gbps = |d: std::time::Duration| SIZE as f64 / d.as_secs_f64() / 1e9;
                eprintln!(
                    "{:?} pass {pass}: 64 MiB up {:.2} GB/s, down {:.2} GB/s, {} submissions so far",
                    t.path(),
                    gbps(up),
                    gbps(down),
                    t.submissions()
                );
            }
        }
    }

    #[test]
    fn many_small_regions_share_submissions() {
        for mut t in transfers(DEFAULT_STAGING_BYTES) {
            let dev = Arc::clone(&t.device);
            let block = dev
                .alloc_block(1 << 20, BlockInit::Zeroed, "small")
                .unwrap();
            let datas: Vec<Vec<u8>> = (0..1000).map(|i| pattern(1 + i % 17, i as u32)).collect();
            let at = |i: usize| (i * 997 + i % 13) as u64;
            let regions: Vec<(u64, &[u8])> = datas
                .iter()
                .enumerate()
                .map(|(i, d)| (at(i), &d[..]))
                .collect();
            let before = t.submissions();
            upload(&mut t, &block, &regions);
            let spans: Vec<(u64, usize)> = datas
                .iter()
                .enumerate()
                .map(|(i, d)| (at(i), d.len()))
                .collect();
            let back = read(&mut t, &block, &spans);
            assert_eq!(back, datas, "{:?}", t.path());
            if t.path() == TransferPath::Staged {
                let per_op = 1000u64.div_ceil(MAX_COPIES as u64);
                assert_eq!(
                    t.submissions() - before,
                    2 * per_op,
                    "batched into full slots"
                );
            }
        }
    }

    #[test]
    fn zero_clears_exactly_the_ranges() {
        for mut t in transfers(16 << 10) {
            let dev = Arc::clone(&t.device);
            let size = 256 << 10;
            let block = dev
                .alloc_block(size as u64, BlockInit::Uninit, "zero")
                .unwrap();
            let mut expect = pattern(size, 7);
            upload(&mut t, &block, &[(0, &expect)]);
            let ranges = [
                (0, 0),
                (1, 1),
                (2, 3),
                (6, 6),
                (13, 9),
                (40, 4),
                (100, 4096),
                (12289, 70001),
                (size as u64 - 3, 3),
            ];
            // SAFETY: the test owns the block.
            unsafe { t.zero(&block, &ranges) }.unwrap();
            for &(at, len) in &ranges {
                expect[at as usize..(at + len) as usize].fill(0);
            }
            let back = read(&mut t, &block, &[(0, size)]);
            assert!(back[0] == expect, "{:?}: zero went wrong", t.path());
        }
    }

    #[test]
    fn copy_moves_bytes_between_and_within_blocks() {
        for mut t in transfers(DEFAULT_STAGING_BYTES) {
            let dev = Arc::clone(&t.device);
            let size = 512 << 10;
            let src = dev
                .alloc_block(size as u64, BlockInit::Uninit, "src")
                .unwrap();
            let dst = dev
                .alloc_block(size as u64, BlockInit::Zeroed, "dst")
                .unwrap();
            let data = pattern(size, 3);
            upload(&mut t, &src, &[(0, &data)]);
            let regions = [
                (0u64, 0u64, 1u64),
                (1, 5, 100),
                (1001, 4097, 65537),
                (200_000, 3, 0),
                (300_001, 400_003, 7),
            ];
            // SAFETY: the test owns both blocks; the regions do not overlap within a block.
            unsafe { t.copy(&src, &dst, &regions) }.unwrap();
            let mut expect = vec![0u8; size];
            for &(s, d, len) in &regions {
                let (s, d, len) = (s as usize, d as usize, len as usize);
                expect[d..d + len].copy_from_slice(&data[s..s + len]);
            }
            assert!(
                read(&mut t, &dst, &[(0, size)])[0] == expect,
                "{:?}: copy between blocks",
                t.path()
            );

            // SAFETY: as above; source [0, 4096) and destination [300000, 304096) are disjoint.
            unsafe { t.copy(&src, &src, &[(0, 300_000, 4096)]) }.unwrap();
            let mut expect = data.clone();
            expect.copy_within(0..4096, 300_000);
            assert!(
                read(&mut t, &src, &[(0, size)])[0] == expect,
                "{:?}: copy within a block",
                t.path()
            );
        }
    }

    #[test]
    fn a_failing_sink_stops_the_download_and_leaves_the_transfer_usable() {
        for mut t in transfers(16 << 10) {
            let dev = Arc::clone(&t.device);
            let size = 1 << 20;
            let block = dev
                .alloc_block(size as u64, BlockInit::Uninit, "sink")
                .unwrap();
            let data = pattern(size, 9);
            upload(&mut t, &block, &[(0, &data)]);
            let mut calls = 0;
            let regions: Vec<(u64, usize)> =
                (0..8).map(|i| (i * (size as u64 / 8), size / 8)).collect();
            // SAFETY: the test owns the block.
            let result = unsafe {
                t.download(&block, &regions, &mut |_, _, _| {
                    calls += 1;
                    if calls == 3 {
                        Err(Error::InvalidConfig("stop".into()))
                    } else {
                        Ok(())
                    }
                })
            };
            assert!(matches!(result, Err(Error::InvalidConfig(s)) if s == "stop"));
            assert_eq!(calls, 3, "no piece after the error");
            assert!(
                read(&mut t, &block, &[(0, size)])[0] == data,
                "{:?}",
                t.path()
            );
        }
    }

    #[test]
    fn ranges_past_the_end_panic_before_touching_anything() {
        for mut t in transfers(DEFAULT_STAGING_BYTES) {
            let block = Arc::clone(&t.device)
                .alloc_block(4096, BlockInit::Zeroed, "oob")
                .unwrap();
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: the test owns the block (and the call panics before touching it).
                let _ = unsafe { t.zero(&block, &[(4000, 97)]) };
            }));
            let message = caught.unwrap_err();
            let message = message.downcast_ref::<String>().unwrap();
            assert!(
                message.contains("range 4000+97 outside a 4096-byte block"),
                "{message}"
            );
            assert!(read(&mut t, &block, &[(0, 4096)])[0]
                .iter()
                .all(|&b| b == 0));
        }
    }

    #[test]
    fn transfer_is_send() {
        fn send<T: Send>() {}
        send::<Transfer>();
    }
}
