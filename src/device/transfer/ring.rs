//! The staging ring of the Staged path: slots of host-visible memory, each with a persistent
//! command buffer and a fence, filled while the others are in flight.
//!
//! One host-visible buffer, preferably `HOST_CACHED` (gpu-allocator's `GpuToCpu`, so that the
//! fault handler reads it fast), split into [`SLOTS`] slots of whole pages, followed by
//! [`ZERO_BYTES`] zero bytes. [`Ring::run`] frames one operation: its body asks for
//! [`room`](Ring::room) and pushes copy regions (up to [`MAX_COPIES`] per slot, carried by one
//! `vkCmdCopyBuffer`) into the current slot; a full slot is recorded and submitted and the
//! next one fills meanwhile, and a slot is retired (fence waited, its download pieces handed
//! to the sink in order) only when it comes round again or the operation ends.
//!
//! The ring knows nothing of operations: `staged` cuts each one into the pieces pushed here.
//!
//! # What it may touch
//!
//! Its own buffer (the only code that reads or writes the ring's mapping), its command slots,
//! and the operation's source and destination buffers through the copies it records. Every
//! range a push names lies inside those buffers: `Transfer` checked the operation's ranges,
//! `staged` pushes parts of them, and ring offsets come from [`room`](Ring::room).
//!
//! # Invariants
//!
//! - Nothing is allocated after [`Ring::new`]: the batches are fixed arrays, one per slot.
//! - A slot's staging bytes are written (uploads) or read (downloads) by the CPU only while
//!   no command that uses them is in flight: between `begin` and submit, or after its fence.
//! - Every operation waits for all its slots before [`Ring::run`] returns, so the blocks it
//!   names need only outlive the call; on error it waits too ([`Ring::abort`]).
//! - The ring is allocated apart from the pool's budget (a few MiB per `Transfer`, in host
//!   memory on a discrete GPU).

use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;
use gpu_allocator::MemoryLocation;

use super::Sink;
use crate::device::commands::CommandSlots;
use crate::device::map::map_host_oom;
use crate::device::pool::{RawBuffer, PAGE};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::sys::guarded;

/// Slots in a staging ring: enough to keep the copy engine busy while the CPU fills or
/// drains the others.
pub(super) const SLOTS: usize = 4;
/// Copy regions one slot can carry before it is submitted.
pub(super) const MAX_COPIES: usize = 256;
/// Zero bytes kept past the slots, the source for unaligned edges of `zero`.
pub(super) const ZERO_BYTES: u64 = 16;
/// Alignment of pieces inside a slot (keeps `memcpy` and copies on aligned addresses).
const PIECE_ALIGN: u64 = 16;

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
pub(super) struct Ring {
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
    /// Submissions made so far (for the tests of batching).
    #[cfg(test)]
    submissions: u64,
}

// SAFETY: `Ring` owns its buffer and command slots outright (no other object refers to them)
// and the mapping `base` points into is process-wide, so moving it to another thread moves
// sole ownership. It is not `Sync`: every method that touches the mapping takes `&mut self`.
unsafe impl Send for Ring {}

impl Ring {
    /// Allocates a ring of about `staging_bytes` (split into [`SLOTS`] slots of whole pages,
    /// at least one page each) and its command buffers.
    pub(super) fn new(device: &Arc<Device>, staging_bytes: u64) -> Result<Self> {
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
        Ok(Ring {
            ring,
            base,
            slot_bytes,
            cmds: CommandSlots::new(&device.raw, device.info().queue_family, SLOTS)?,
            batches: (0..SLOTS).map(|_| Batch::new()).collect(),
            cur: 0,
            src: vk::Buffer::null(),
            dst: vk::Buffer::null(),
            #[cfg(test)]
            submissions: 0,
        })
    }

    /// The ring's buffer, the host side of an operation on the Staged path.
    pub(super) fn buffer(&self) -> vk::Buffer {
        self.ring.raw()
    }

    /// Queue submissions made so far.
    #[cfg(test)]
    pub(super) fn submissions(&self) -> u64 {
        self.submissions
    }

    /// Bytes of one slot: the most one download piece can carry.
    #[cfg(test)]
    pub(super) fn slot_bytes(&self) -> u64 {
        self.slot_bytes
    }

    /// Offset in the ring of its [`ZERO_BYTES`] zero bytes.
    pub(super) fn zero_at(&self) -> u64 {
        self.slot_bytes * SLOTS as u64
    }

    /// Runs one operation from `src` to `dst` (either may be [`buffer`](Self::buffer)):
    /// `body` pushes its copies into slots (full ones are submitted as it goes), then the last
    /// slot is submitted and every slot waited for (draining downloads into `sink`). On error,
    /// whatever is in flight is waited for before returning.
    pub(super) fn run(
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
    /// free in the slot: a push that stages may use up to that many.
    pub(super) fn room(&mut self, dev: &Device, sink: &mut Sink<'_>, staging: bool) -> Result<u64> {
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

    /// Copies `bytes` (non-empty, at most what [`room`](Self::room) returned) into the current
    /// slot and adds their copy to offset `to` of the destination. A fault on `bytes` (a buggy
    /// program unmapped them) ends the copy with [`guarded::Faulted`], pushing nothing.
    pub(super) fn push_upload(&mut self, bytes: &[u8], to: u64) -> Result<(), guarded::Faulted> {
        let stage = self.stage_at();
        debug_assert!(bytes.len() as u64 <= self.slot_bytes - self.batches[self.cur].used);
        // SAFETY: `[stage, stage + len)` is free space of the current slot (`room`), inside the
        // mapping, and no command in flight uses the slot; `bytes` is outside the ring (a
        // guarded copy: should it be unmapped meanwhile, the copy fails instead of the process).
        unsafe {
            guarded::copy(
                self.base.as_ptr().add(stage as usize),
                bytes.as_ptr(),
                bytes.len(),
            )
        }?;
        let copy = vk::BufferCopy {
            src_offset: stage,
            dst_offset: to,
            size: bytes.len() as u64,
        };
        self.push(copy, None, bytes.len() as u64);
        Ok(())
    }

    /// Adds a copy of `len` bytes (non-zero, at most what [`room`](Self::room) returned) from
    /// offset `from` of the source into the current slot; once the slot's fence signals they go
    /// to the sink as `(region, offset, bytes)`.
    pub(super) fn push_download(&mut self, from: u64, len: usize, region: usize, offset: usize) {
        let stage = self.stage_at();
        let copy = vk::BufferCopy {
            src_offset: from,
            dst_offset: stage,
            size: len as u64,
        };
        let piece = Piece {
            region,
            offset,
            at: stage,
            len,
        };
        self.push(copy, Some(piece), len as u64);
    }

    /// Adds a device-to-device copy of `len` bytes (non-zero) from offset `from` of the source
    /// to offset `to` of the destination; [`room`](Self::room) was called.
    pub(super) fn push_copy(&mut self, from: u64, to: u64, len: u64) {
        let copy = vk::BufferCopy {
            src_offset: from,
            dst_offset: to,
            size: len,
        };
        self.push(copy, None, 0);
    }

    /// Records a `vkCmdFillBuffer` of zeros over `[at, at + len)` of the destination, in the
    /// current slot; [`room`](Self::room) was called, and `at` and `len` (non-zero) are
    /// multiples of 4.
    pub(super) fn fill_zero(&mut self, dev: &Device, at: u64, len: u64) {
        debug_assert!(self.cmds.recording(self.cur));
        debug_assert!(at.is_multiple_of(4) && len.is_multiple_of(4) && len > 0);
        // SAFETY: the slot is recording (`room`); the range lies inside `dst` (a part of a range
        // `Transfer` checked), its offset and size are multiples of 4.
        unsafe {
            dev.raw
                .cmd_fill_buffer(self.cmds.cmd(self.cur), self.dst, at, len, 0)
        };
    }

    /// After an error or a panic: ends open recordings and waits for everything in flight
    /// (their errors are dropped; the first error is the one returned).
    pub(super) fn abort(&mut self, dev: &Device) {
        for i in 0..SLOTS {
            self.cmds.abandon(&dev.raw, i);
            self.batches[i].clear();
        }
        let _ = self.cmds.wait_all(&dev.raw);
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
        #[cfg(test)]
        {
            self.submissions += 1;
        }
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
}

impl Drop for Ring {
    fn drop(&mut self) {
        let device = Arc::clone(self.ring.device());
        // SAFETY: the slots were created on this device and are not used again; every
        // operation waits before returning, so nothing is in flight (destroy waits anyway).
        unsafe { self.cmds.destroy(&device.raw) };
    }
}
