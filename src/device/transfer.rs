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
//! Which path: Direct iff the pool memory type is host-visible, coherent and cached;
//! `DeviceConfig::transfer` forces either, and forcing Direct on memory the CPU cannot map
//! coherently is [`Error::InvalidConfig`].

use std::ptr::{self, NonNull};
use std::sync::Arc;

use ash::vk;
use gpu_allocator::MemoryLocation;

use super::commands::CommandSlots;
use super::pool::{RawBuffer, PAGE};
use super::{Device, DeviceBlock, TransferPath};
use crate::error::{Error, Result};

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
    /// The ring; `None` on the Direct path.
    staging: Option<Staging>,
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
        let staging = match path {
            TransferPath::Direct => None,
            TransferPath::Staged => Some(Staging::new(device, staging_bytes)?),
        };
        Ok(Transfer {
            device: Arc::clone(device),
            staging,
        })
    }

    /// The path this transfer takes.
    pub(crate) fn path(&self) -> TransferPath {
        if self.staging.is_some() {
            TransferPath::Staged
        } else {
            TransferPath::Direct
        }
    }

    /// Writes each `(offset, bytes)` region into `dst` at `offset`; returns when done.
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
        match &mut self.staging {
            None => {
                let base = mapping(dst);
                for &(at, bytes) in regions {
                    // SAFETY: in bounds (checked); the caller rules out other access; `bytes` is
                    // host memory outside the mapping.
                    unsafe {
                        ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(at as usize), bytes.len())
                    };
                }
                Ok(())
            }
            Some(s) => s.run(
                &self.device,
                s.ring.raw(),
                dst.raw(),
                &mut |_, _, _| Ok(()),
                |s, dev, sink| {
                    regions
                        .iter()
                        .try_for_each(|&(at, bytes)| s.upload(dev, sink, at, bytes))
                },
            ),
        }
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
        match &mut self.staging {
            None => {
                let base = mapping(src);
                regions.iter().enumerate().try_for_each(|(i, &(at, len))| {
                    // SAFETY: in bounds (checked); nobody writes the range meanwhile (caller).
                    sink(i, 0, unsafe {
                        std::slice::from_raw_parts(base.add(at as usize), len)
                    })
                })
            }
            Some(s) => s.run(
                &self.device,
                src.raw(),
                s.ring.raw(),
                sink,
                |s, dev, sink| {
                    regions
                        .iter()
                        .enumerate()
                        .try_for_each(|(i, &(at, len))| s.download(dev, sink, i, at, len))
                },
            ),
        }
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
        match &mut self.staging {
            None => {
                let base = mapping(dst);
                for &(at, len) in ranges {
                    // SAFETY: in bounds (checked); the caller rules out other access.
                    unsafe { base.add(at as usize).write_bytes(0, len as usize) };
                }
                Ok(())
            }
            Some(s) => s.run(
                &self.device,
                s.ring.raw(),
                dst.raw(),
                &mut |_, _, _| Ok(()),
                |s, dev, sink| {
                    ranges
                        .iter()
                        .try_for_each(|&(at, len)| s.zero(dev, sink, dst.raw(), at, len))
                },
            ),
        }
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
        match &mut self.staging {
            None => {
                let (from, to) = (mapping(src), mapping(dst));
                for &(s, d, len) in regions {
                    // SAFETY: both in bounds (checked); `ptr::copy` allows overlap; the caller
                    // rules out other access.
                    unsafe { ptr::copy(from.add(s as usize), to.add(d as usize), len as usize) };
                }
                Ok(())
            }
            Some(s) => s.run(
                &self.device,
                src.raw(),
                dst.raw(),
                &mut |_, _, _| Ok(()),
                |s, dev, sink| {
                    regions
                        .iter()
                        .try_for_each(|&(from, to, len)| s.copy(dev, sink, from, to, len))
                },
            ),
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
        })
    }

    /// Offset in the ring of the zero bytes.
    fn zero_at(&self) -> u64 {
        self.slot_bytes * SLOTS as u64
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
        debug_assert!((0..SLOTS).all(|i| !self.cmds.in_flight(i) && !self.cmds.recording(i)));
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
            // mapping, and no command in flight uses the slot; `bytes` is outside the ring.
            unsafe {
                ptr::copy_nonoverlapping(
                    bytes[done..].as_ptr(),
                    self.base.as_ptr().add(stage as usize),
                    n,
                )
            };
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
    fn zero(
        &mut self,
        dev: &Device,
        sink: &mut Sink<'_>,
        dst: vk::Buffer,
        at: u64,
        len: u64,
    ) -> Result<()> {
        let end = at + len;
        let (middle_start, middle_end) = (at.next_multiple_of(4), end & !3);
        let (head_end, tail_start) = if middle_end > middle_start {
            self.room(dev, sink, false)?;
            // SAFETY: the slot is recording; the range is inside `dst` (checked by `Transfer`),
            // its offset and size are multiples of 4.
            unsafe {
                dev.raw.cmd_fill_buffer(
                    self.cmds.cmd(self.cur),
                    dst,
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
