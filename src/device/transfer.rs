//! The two ways bytes move between host memory and [`DeviceBlock`]s.
//!
//! A [`Transfer`] belongs to one user — the runtime's launch context owns one, the fault
//! handler owns one per device — and every operation returns only when its bytes have
//! arrived. Nothing is allocated after [`Transfer::new`]: the fault handler calls
//! [`Transfer::download`], and a heap allocation there could land on a page that lives on the
//! device (architecture.md, "Rules that keep the handler deadlock-free").
//!
//! **Direct** (pool memory `HOST_VISIBLE | HOST_COHERENT | HOST_CACHED`: integrated GPUs,
//! lavapipe) is `memcpy`/`memset`/`memmove` through the blocks' mappings. No submission; the
//! coherent mapping needs no flush, and every submission ends with a barrier that makes device
//! writes visible to the host before its fence signals.
//!
//! **Staged** (device memory the CPU cannot map: discrete GPUs) goes through a staging ring:
//! one host-visible buffer, preferably `HOST_CACHED` (gpu-allocator's `GpuToCpu`, so that the
//! fault handler reads it fast), split into [`SLOTS`] slots, each with a persistent command
//! buffer and a fence. Regions are cut into pieces of at most one slot, packed into the
//! current slot (up to [`MAX_COPIES`] `VkBufferCopy` regions in one `vkCmdCopyBuffer`), and a
//! full slot is submitted while the next one fills: uploads `memcpy` into slot k+1 while slot
//! k's copy runs, downloads keep up to [`SLOTS`] copies in flight and hand each slot's bytes
//! to the sink, in order, as soon as its fence signals. Many small regions therefore cost one
//! submission, not one each — a submit and wait costs ~70 µs even on lavapipe.
//! `zero` uses `vkCmdFillBuffer` on the dword-aligned middle of each range and copies from a
//! few zero bytes kept at the end of the ring for the unaligned edges; `copy` is a
//! device-to-device `vkCmdCopyBuffer`.
//!
//! The ring is allocated apart from the pool's budget (it is a few MiB per `Transfer`, and
//! in host memory on a discrete GPU).
//!
//! Each of [`Transfer`]'s four operations checks its ranges, then hands an `Op` (the blocks
//! and the caller's regions, borrowed) to `Transfer::run`, the one place where the path is
//! chosen; the path then loops over the regions with no further dispatch.
//!
//! Which path: Direct iff the pool memory type is host-visible, coherent and cached;
//! `DeviceConfig::transfer` forces either, and forcing Direct on memory the CPU cannot map
//! coherently is [`Error::InvalidConfig`].

use std::ptr::{self, NonNull};
use std::sync::Arc;

use ash::vk;
use gpu_allocator::MemoryLocation;

use super::commands::CommandSlots;
use super::map::map_host_oom;
use super::pool::{RawBuffer, PAGE};
use super::{Device, DeviceBlock, TransferPath};
use crate::error::{Error, Result};
use crate::sys::guarded;

/// Slots in a staging ring: enough to keep the copy engine busy while the CPU fills or
/// drains the others.
pub(crate) const SLOTS: usize = 4;
/// Copy regions one slot can carry before it is submitted.
pub(crate) const MAX_COPIES: usize = 256;
/// Zero bytes kept past the slots, the source for unaligned edges of `zero`.
const ZERO_BYTES: u64 = 16;
/// Alignment of pieces inside a slot (keeps `memcpy` and copies on aligned addresses).
const PIECE_ALIGN: u64 = 16;

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
    Staged(Staging),
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
    /// `staging_bytes` (split into [`SLOTS`] slots of whole pages, at least one page each) and
    /// its command buffers; nothing is allocated after this.
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
            TransferPath::Staged => Path::Staged(Staging::new(device, staging_bytes)?),
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
        if let Path::Staged(s) = &mut self.path {
            s.abort(&self.device);
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
    pub(crate) fn submissions(&self) -> u64 {
        match &self.path {
            Path::Direct => 0,
            Path::Staged(s) => s.submissions,
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
            Path::Direct => unsafe { direct(op, sink) },
            Path::Staged(s) => s.execute(&self.device, op, sink),
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

/// The Direct path: `memcpy`, `memset` and `memmove` through the blocks' mappings.
///
/// # Safety
///
/// As for [`Transfer::run`].
#[inline(always)]
unsafe fn direct(op: Op<'_>, sink: &mut Sink<'_>) -> Result<()> {
    match op {
        Op::Upload { dst, regions } => {
            let base = mapping(dst);
            for &(at, bytes) in regions {
                // SAFETY: in bounds and no other access (caller); `bytes` is host memory
                // outside the mapping (a guarded copy: should a buggy program unmap it
                // meanwhile, the copy fails instead of the process).
                unsafe { guarded::copy(base.add(at as usize), bytes.as_ptr(), bytes.len()) }
                    .map_err(|f| vanished(bytes, f))?;
            }
        }
        Op::Download { src, regions } => {
            let base = mapping(src);
            for (i, &(at, len)) in regions.iter().enumerate() {
                // SAFETY: in bounds and nobody writes the range meanwhile (caller).
                sink(i, 0, unsafe {
                    std::slice::from_raw_parts(base.add(at as usize), len)
                })?;
            }
        }
        Op::Zero { dst, ranges } => {
            let base = mapping(dst);
            for &(at, len) in ranges {
                // SAFETY: in bounds and no other access (caller).
                unsafe { base.add(at as usize).write_bytes(0, len as usize) };
            }
        }
        Op::Copy { src, dst, regions } => {
            let (from, to) = (mapping(src), mapping(dst));
            for &(s, d, len) in regions {
                // SAFETY: both in bounds and no other access (caller); `ptr::copy` allows
                // overlap.
                unsafe { ptr::copy(from.add(s as usize), to.add(d as usize), len as usize) };
            }
        }
    }
    Ok(())
}

/// The sink of operations that download nothing.
fn discard(_: usize, _: usize, _: &[u8]) -> Result<()> {
    Ok(())
}

/// The block's mapping, which the Direct path requires.
fn mapping(block: &DeviceBlock) -> *mut u8 {
    block
        .mapped()
        .expect("the Direct path needs host-visible pool memory")
        .as_ptr()
}

/// One pending piece of a download: where its bytes wait in the ring.
#[derive(Debug, Clone, Copy, Default)]
struct Piece {
    region: usize,
    offset: usize,
    at: u64,
    len: usize,
}

/// The copies and download pieces packed into one slot.
struct Batch {
    /// Staging bytes used (from the slot's start).
    used: u64,
    copies: [vk::BufferCopy; MAX_COPIES],
    ncopies: usize,
    pieces: [Piece; MAX_COPIES],
    npieces: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            used: 0,
            copies: [vk::BufferCopy::default(); MAX_COPIES],
            ncopies: 0,
            pieces: [Piece::default(); MAX_COPIES],
            npieces: 0,
        }
    }

    fn clear(&mut self) {
        self.used = 0;
        self.ncopies = 0;
        self.npieces = 0;
    }
}

/// The staging ring of the Staged path.
struct Staging {
    /// The ring: `SLOTS * slot_bytes` bytes of slots, then `ZERO_BYTES` zero bytes.
    ring: RawBuffer,
    /// The ring's mapping.
    base: NonNull<u8>,
    slot_bytes: u64,
    cmds: CommandSlots,
    batches: Box<[Batch]>,
    /// The slot being filled.
    cur: usize,
    /// Source and destination buffers of the operation running.
    src: vk::Buffer,
    dst: vk::Buffer,
    /// Submissions made so far.
    submissions: u64,
}

// SAFETY: `Staging` owns its ring and command slots outright (no other object refers to them)
// and the mapping `base` points into is process-wide, so moving it to another thread moves
// sole ownership. It is not `Sync`: every method takes `&mut self`.
unsafe impl Send for Staging {}

impl Staging {
    fn new(device: &Arc<Device>, staging_bytes: u64) -> Result<Self> {
        let slot_bytes = (staging_bytes / SLOTS as u64 / PAGE).max(1) * PAGE;
        let size = slot_bytes * SLOTS as u64 + ZERO_BYTES;
        let usage = vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST;
        let ring = RawBuffer::new(
            device,
            size,
            usage,
            MemoryLocation::GpuToCpu,
            "vkhmm staging ring",
        )?;
        let base = ring.mapped().ok_or_else(|| {
            Error::Allocator("the staging ring's memory is not host-visible".into())
        })?;
        // SAFETY: the ring is fresh and `size` bytes are mapped at `base`.
        unsafe {
            base.as_ptr()
                .add((size - ZERO_BYTES) as usize)
                .write_bytes(0, ZERO_BYTES as usize)
        };
        Ok(Staging {
            ring,
            base,
            slot_bytes,
            cmds: CommandSlots::new(&device.raw, device.info().queue_family, SLOTS)?,
            batches: (0..SLOTS).map(|_| Batch::new()).collect(),
            cur: 0,
            src: vk::Buffer::null(),
            dst: vk::Buffer::null(),
            submissions: 0,
        })
    }

    /// Offset in the ring of the zero bytes.
    fn zero_at(&self) -> u64 {
        self.slot_bytes * SLOTS as u64
    }

    /// The Staged path of `op`: the ring stands in for host memory, and each region is cut
    /// into copies of at most one slot.
    #[inline(always)]
    fn execute(&mut self, dev: &Device, op: Op<'_>, sink: &mut Sink<'_>) -> Result<()> {
        let ring = self.ring.raw();
        match op {
            Op::Upload { dst, regions } => self.run(dev, ring, dst.raw(), sink, |s, dev, sink| {
                regions
                    .iter()
                    .try_for_each(|&(at, bytes)| s.upload(dev, sink, at, bytes))
            }),
            Op::Download { src, regions } => {
                self.run(dev, src.raw(), ring, sink, |s, dev, sink| {
                    regions
                        .iter()
                        .enumerate()
                        .try_for_each(|(i, &(at, len))| s.download(dev, sink, i, at, len))
                })
            }
            Op::Zero { dst, ranges } => self.run(dev, ring, dst.raw(), sink, |s, dev, sink| {
                ranges
                    .iter()
                    .try_for_each(|&(at, len)| s.zero(dev, sink, at, len))
            }),
            Op::Copy { src, dst, regions } => {
                self.run(dev, src.raw(), dst.raw(), sink, |s, dev, sink| {
                    regions
                        .iter()
                        .try_for_each(|&(from, to, len)| s.copy(dev, sink, from, to, len))
                })
            }
        }
    }

    /// Runs one operation: `body` packs its copies into slots (submitting full ones), then
    /// the last slot is submitted and every slot waited for (draining downloads into `sink`).
    /// On error, whatever is in flight is waited for before returning.
    fn run(
        &mut self,
        dev: &Device,
        src: vk::Buffer,
        dst: vk::Buffer,
        sink: &mut Sink<'_>,
        body: impl FnOnce(&mut Self, &Device, &mut Sink<'_>) -> Result<()>,
    ) -> Result<()> {
        // Slots may still be in flight only after a failed wait; `room` waits for them again.
        debug_assert!((0..SLOTS).all(|i| !self.cmds.recording(i)));
        (self.src, self.dst, self.cur) = (src, dst, 0);
        let result = body(self, dev, sink).and_then(|()| self.finish(dev, sink));
        if result.is_err() {
            self.abort(dev);
        }
        result
    }

    /// Makes the current slot ready for one more copy region (and, when `staging`, at least one
    /// staging byte), submitting it and moving on when it is full. Returns the staging bytes
    /// free in the slot.
    fn room(&mut self, dev: &Device, sink: &mut Sink<'_>, staging: bool) -> Result<u64> {
        loop {
            let i = self.cur;
            if !self.cmds.recording(i) {
                self.retire(dev, i, sink)?;
                if crate::inject::hit(crate::inject::Site::StagingSlot) {
                    return Err(map_host_oom("vkBeginCommandBuffer")(
                        vk::Result::ERROR_OUT_OF_DEVICE_MEMORY,
                    ));
                }
                self.cmds.begin(&dev.raw, i)?;
                self.batches[i].clear();
            }
            let b = &self.batches[i];
            let free = self.slot_bytes - b.used;
            if b.ncopies < MAX_COPIES && (!staging || free > 0) {
                return Ok(free);
            }
            self.flush(dev)?;
        }
    }

    /// Ring offset of the next free staging byte of the current slot.
    fn stage_at(&self) -> u64 {
        self.cur as u64 * self.slot_bytes + self.batches[self.cur].used
    }

    /// Adds a copy region (and a download piece) to the current slot, which has room.
    fn push(&mut self, copy: vk::BufferCopy, piece: Option<Piece>, staged: u64) {
        let b = &mut self.batches[self.cur];
        b.copies[b.ncopies] = copy;
        b.ncopies += 1;
        if let Some(piece) = piece {
            b.pieces[b.npieces] = piece;
            b.npieces += 1;
        }
        if staged > 0 {
            b.used = (b.used + staged)
                .next_multiple_of(PIECE_ALIGN)
                .min(self.slot_bytes);
        }
    }

    /// Records the current slot's copies, submits it and moves to the next slot.
    fn flush(&mut self, dev: &Device) -> Result<()> {
        let i = self.cur;
        if !self.cmds.recording(i) {
            return Ok(());
        }
        let b = &self.batches[i];
        if b.ncopies > 0 {
            // SAFETY: the slot is recording; every region lies inside `src` and `dst` (ranges
            // checked by `Transfer`, ring offsets by construction) and has a non-zero size.
            unsafe {
                dev.raw.cmd_copy_buffer(
                    self.cmds.cmd(i),
                    self.src,
                    self.dst,
                    &b.copies[..b.ncopies],
                )
            };
        }
        // SAFETY: the recorded commands use the ring and the operation's blocks, which live
        // until `run` returns, and `run` waits for every slot before returning.
        unsafe { self.cmds.submit(dev, i) }?;
        self.submissions += 1;
        self.cur = (i + 1) % SLOTS;
        Ok(())
    }

    /// Waits for slot `i` if it is in flight and hands its download pieces to `sink`.
    fn retire(&mut self, dev: &Device, i: usize, sink: &mut Sink<'_>) -> Result<()> {
        if !self.cmds.in_flight(i) {
            return Ok(());
        }
        self.cmds.wait(&dev.raw, i)?;
        let b = &mut self.batches[i];
        let pieces = b.npieces;
        b.npieces = 0;
        for p in &b.pieces[..pieces] {
            // SAFETY: the piece lies inside the ring's mapping; the copy that wrote it has
            // finished (fence waited, writes made host-visible by the trailing barrier) and no
            // command touches the slot until it is begun again.
            let bytes =
                unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(p.at as usize), p.len) };
            sink(p.region, p.offset, bytes)?;
        }
        Ok(())
    }

    /// Submits the last slot, then waits for every slot in submission order, draining each.
    fn finish(&mut self, dev: &Device, sink: &mut Sink<'_>) -> Result<()> {
        self.flush(dev)?;
        (0..SLOTS).try_for_each(|k| self.retire(dev, (self.cur + k) % SLOTS, sink))
    }

    /// After an error: ends open recordings and waits for everything in flight (their errors
    /// are dropped; the first error is the one returned).
    fn abort(&mut self, dev: &Device) {
        for i in 0..SLOTS {
            self.cmds.abandon(&dev.raw, i);
            self.batches[i].clear();
        }
        let _ = self.cmds.wait_all(&dev.raw);
    }

    fn upload(&mut self, dev: &Device, sink: &mut Sink<'_>, at: u64, bytes: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            let n = (bytes.len() - done).min(self.room(dev, sink, true)? as usize);
            let stage = self.stage_at();
            // SAFETY: `[stage, stage + n)` is free space of the current slot, inside the
            // mapping, and no command in flight uses the slot; `bytes` is outside the ring
            // (a guarded copy, as for the Direct path).
            unsafe {
                guarded::copy(
                    self.base.as_ptr().add(stage as usize),
                    bytes[done..].as_ptr(),
                    n,
                )
            }
            .map_err(|f| vanished(&bytes[done..], f))?;
            let copy = vk::BufferCopy {
                src_offset: stage,
                dst_offset: at + done as u64,
                size: n as u64,
            };
            self.push(copy, None, n as u64);
            done += n;
        }
        Ok(())
    }

    fn download(
        &mut self,
        dev: &Device,
        sink: &mut Sink<'_>,
        region: usize,
        at: u64,
        len: usize,
    ) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.room(dev, sink, true)? as usize);
            let stage = self.stage_at();
            let copy = vk::BufferCopy {
                src_offset: at + done as u64,
                dst_offset: stage,
                size: n as u64,
            };
            self.push(
                copy,
                Some(Piece {
                    region,
                    offset: done,
                    at: stage,
                    len: n,
                }),
                n as u64,
            );
            done += n;
        }
        Ok(())
    }

    fn copy(
        &mut self,
        dev: &Device,
        sink: &mut Sink<'_>,
        from: u64,
        to: u64,
        len: u64,
    ) -> Result<()> {
        if len > 0 {
            self.room(dev, sink, false)?;
            self.push(
                vk::BufferCopy {
                    src_offset: from,
                    dst_offset: to,
                    size: len,
                },
                None,
                0,
            );
        }
        Ok(())
    }

    /// Zeroes `[at, at + len)` of `dst`: `vkCmdFillBuffer` on the dword-aligned middle, copies
    /// from the ring's zero bytes for the unaligned edges (at most 6 bytes in all).
    fn zero(&mut self, dev: &Device, sink: &mut Sink<'_>, at: u64, len: u64) -> Result<()> {
        let end = at + len;
        let (middle_start, middle_end) = (at.next_multiple_of(4), end & !3);
        let (head_end, tail_start) = if middle_end > middle_start {
            self.room(dev, sink, false)?;
            // SAFETY: the slot is recording; the range is inside `dst` (checked by `Transfer`),
            // its offset and size are multiples of 4.
            unsafe {
                dev.raw.cmd_fill_buffer(
                    self.cmds.cmd(self.cur),
                    self.dst,
                    middle_start,
                    middle_end - middle_start,
                    0,
                )
            };
            (middle_start, middle_end)
        } else {
            (end, end)
        };
        let zero_at = self.zero_at();
        for (start, n) in [(at, head_end - at), (tail_start, end - tail_start)] {
            debug_assert!(n <= ZERO_BYTES);
            self.copy(dev, sink, zero_at, start, n)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let device = Arc::clone(self.ring.device());
        // SAFETY: the slots were created on this device and are not used again; every
        // operation waits before returning, so nothing is in flight (destroy waits anyway).
        unsafe { self.cmds.destroy(&device.raw) };
    }
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
            Path::Staged(s) => s.slot_bytes as usize,
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
