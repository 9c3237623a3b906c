//! The Staged path: how each operation is cut into copies that staging slots can carry.
//!
//! The ring ([`Ring`]) stands in for host memory: an upload is staged into it and copied to
//! the block, a download is copied into it and handed to the sink, and `zero` and `copy`
//! never stage at all. Each region is cut into pieces of at most the room left in the current
//! slot, so a region of any size streams through a ring of a few MiB, and many small regions
//! share one slot and one submission.
//!
//! - upload: `memcpy` (guarded) into the slot, then `vkCmdCopyBuffer` ring → block;
//! - download: `vkCmdCopyBuffer` block → ring, the bytes go to the sink when the slot retires;
//! - zero: `vkCmdFillBuffer` on the dword-aligned middle of each range, and copies from the
//!   ring's few zero bytes for the unaligned edges (at most 6 bytes in all);
//! - copy: `vkCmdCopyBuffer` block → block.
//!
//! This module touches no memory itself: the ring does every access to its mapping and
//! records every command. It allocates nothing.

use super::ring::{Ring, ZERO_BYTES};
use super::{vanished, Op, Sink};
use crate::device::Device;
use crate::error::Result;

/// Runs `op` through `ring` and returns when its last copy has arrived.
///
/// `#[inline(always)]`: `Transfer::run` is inlined into each of `Transfer`'s methods with a
/// constant `op`, so the match below folds to that operation's arm.
///
/// # Safety
///
/// As for `Transfer::run`: every range of `op` lies inside its block, and nothing else
/// accesses them as the `Transfer` method that built `op` states.
#[inline(always)]
pub(super) unsafe fn run(
    ring: &mut Ring,
    dev: &Device,
    op: Op<'_>,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let staging = ring.buffer();
    match op {
        Op::Upload { dst, regions } => {
            ring.run(dev, staging, dst.raw(), sink, |ring, dev, sink| {
                regions
                    .iter()
                    .try_for_each(|&(at, bytes)| upload(ring, dev, sink, at, bytes))
            })
        }
        Op::Download { src, regions } => {
            ring.run(dev, src.raw(), staging, sink, |ring, dev, sink| {
                regions
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, &(at, len))| download(ring, dev, sink, i, at, len))
            })
        }
        Op::Zero { dst, ranges } => ring.run(dev, staging, dst.raw(), sink, |ring, dev, sink| {
            ranges
                .iter()
                .try_for_each(|&(at, len)| zero(ring, dev, sink, at, len))
        }),
        Op::Copy { src, dst, regions } => {
            ring.run(dev, src.raw(), dst.raw(), sink, |ring, dev, sink| {
                regions
                    .iter()
                    .try_for_each(|&(from, to, len)| copy(ring, dev, sink, from, to, len))
            })
        }
    }
}

/// Stages `bytes` and copies them to offset `at` of the destination, a slot at a time.
fn upload(ring: &mut Ring, dev: &Device, sink: &mut Sink<'_>, at: u64, bytes: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let n = (bytes.len() - done).min(ring.room(dev, sink, true)? as usize);
        ring.push_upload(&bytes[done..done + n], at + done as u64)
            .map_err(|f| vanished(&bytes[done..], f))?;
        done += n;
    }
    Ok(())
}

/// Copies `len` bytes from offset `at` of the source into the ring, a slot at a time; they
/// reach the sink as pieces of region `region`.
fn download(
    ring: &mut Ring,
    dev: &Device,
    sink: &mut Sink<'_>,
    region: usize,
    at: u64,
    len: usize,
) -> Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ring.room(dev, sink, true)? as usize);
        ring.push_download(at + done as u64, n, region, done);
        done += n;
    }
    Ok(())
}

/// Copies `len` bytes from offset `from` of the source to offset `to` of the destination.
fn copy(
    ring: &mut Ring,
    dev: &Device,
    sink: &mut Sink<'_>,
    from: u64,
    to: u64,
    len: u64,
) -> Result<()> {
    if len > 0 {
        ring.room(dev, sink, false)?;
        ring.push_copy(from, to, len);
    }
    Ok(())
}

/// Zeroes `[at, at + len)` of the destination: a fill of the dword-aligned middle, copies
/// from the ring's zero bytes for the unaligned edges.
fn zero(ring: &mut Ring, dev: &Device, sink: &mut Sink<'_>, at: u64, len: u64) -> Result<()> {
    let end = at + len;
    let (middle_start, middle_end) = (at.next_multiple_of(4), end & !3);
    let (head_end, tail_start) = if middle_end > middle_start {
        ring.room(dev, sink, false)?;
        ring.fill_zero(dev, middle_start, middle_end - middle_start);
        (middle_start, middle_end)
    } else {
        (end, end)
    };
    let zero_at = ring.zero_at();
    for (start, n) in [(at, head_end - at), (tail_start, end - tail_start)] {
        debug_assert!(n <= ZERO_BYTES);
        copy(ring, dev, sink, zero_at, start, n)?;
    }
    Ok(())
}
