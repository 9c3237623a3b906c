//! The Direct path: `memcpy`, `memset` and `memmove` through the blocks' mappings.
//!
//! Taken where the pool memory is `HOST_VISIBLE | HOST_COHERENT | HOST_CACHED` (integrated
//! GPUs, lavapipe). There is no submission and nothing to own: the coherent mapping needs no
//! flush, and every submission (a kernel's, a staged copy's) ends with a barrier that makes
//! device writes visible to the host before its fence signals, so once a kernel has been
//! waited for its results can be read straight from the mapping.
//!
//! # What it may touch
//!
//! The bytes of the operation's ranges in the blocks' mappings, and the caller's host slices.
//! Host bytes are read with [`guarded::copy`], so a buggy program that unmaps a binding while
//! it is being uploaded gets an error, not a crash. A download hands the sink a slice of the
//! mapping itself: no copy, and nothing allocated.

use std::ptr;

use super::{vanished, Op, Sink};
use crate::device::DeviceBlock;
use crate::error::Result;
use crate::sys::guarded;

/// Runs `op` through the blocks' mappings.
///
/// `#[inline(always)]`: `Transfer::run` is inlined into each of `Transfer`'s methods with a
/// constant `op`, so the match below folds to that operation's arm.
///
/// # Safety
///
/// As for `Transfer::run`: every range of `op` lies inside its block, and nothing else
/// accesses them as the `Transfer` method that built `op` states.
///
/// # Panics
///
/// If a block is not mapped (pool memory that is not host-visible).
#[inline(always)]
pub(super) unsafe fn run(op: Op<'_>, sink: &mut Sink<'_>) -> Result<()> {
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

/// The block's mapping, which the Direct path requires.
fn mapping(block: &DeviceBlock) -> *mut u8 {
    block
        .mapped()
        .expect("the Direct path needs host-visible pool memory")
        .as_ptr()
}
