//! `Managed<T>`: memory the runtime allocates for the user.
//!
//! A `Managed<T>` is a private anonymous mapping of whole pages, so it shares no page with
//! other data (no edge pages: every page follows the state machine) and starts as
//! never-touched zero pages, which migrate to the device without a copy. It derefs to `[T]`
//! and can be used like any slice; launches take `&Managed<T>` or `&mut Managed<T>`.
//!
//! Dropping it unmaps the memory; the fault service sees the `UNMAP` event and the runtime
//! releases the device copy at its next call. Every live `Managed<T>` is recorded in the
//! `signal` backend's table of runtime-owned ranges (the only memory that backend serves);
//! under that backend, which sees no `UNMAP` event, the drop marks the mirror's pages gone
//! before it unmaps.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use bytemuck::Pod;

use crate::mirror::plan::page_ceil;
use crate::{Error, Result};

/// A runtime-owned, page-aligned, zero-initialised array of `T`.
pub struct Managed<T: Pod> {
    ptr: NonNull<T>,
    len: usize,
    _own: PhantomData<T>,
}

// SAFETY: `Managed<T>` owns its mapping exclusively, like `Box<[T]>`; `T: Pod` values have no
// thread affinity, so moving or sharing the owner across threads is as sound as for a Box.
unsafe impl<T: Pod + Send> Send for Managed<T> {}
// SAFETY: shared access only hands out `&[T]`, which is `Sync` for `T: Sync`.
unsafe impl<T: Pod + Sync> Sync for Managed<T> {}

impl<T: Pod> Managed<T> {
    /// Maps `len` zeroed elements. `len == 0` maps nothing.
    pub(crate) fn zeroed(len: usize) -> Result<Self> {
        let bytes = Self::map_len(len)?;
        if bytes == 0 {
            return Ok(Managed {
                ptr: NonNull::dangling(),
                len: 0,
                _own: PhantomData,
            });
        }
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks aliases
        // nothing; it is page-aligned, hence aligned for any `T: Pod` (alignment ≤ 4096 is
        // checked in `map_len`).
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                bytes,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .map_err(|e| Error::os("mmap for Managed", e))?;
        let ptr = NonNull::new(p.cast::<T>())
            .ok_or_else(|| Error::InvalidConfig("mmap returned null".into()))?;
        if !crate::trap::signal::add_managed(p as usize, bytes) {
            tracing::warn!(
                bytes,
                "too many live Managed allocations: the signal fault backend will refuse this one"
            );
        }
        Ok(Managed {
            ptr,
            len,
            _own: PhantomData,
        })
    }

    fn map_len(len: usize) -> Result<usize> {
        if std::mem::align_of::<T>() > crate::mirror::PAGE {
            return Err(Error::InvalidConfig(format!(
                "Managed<T> needs align_of::<T>() <= {}, got {}",
                crate::mirror::PAGE,
                std::mem::align_of::<T>()
            )));
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize - crate::mirror::PAGE)
            .ok_or_else(|| {
                Error::InvalidConfig(format!("Managed<T> of {len} elements overflows"))
            })?;
        Ok(page_ceil(bytes))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised (zeroed or written) `T: Pod` values in a
        // mapping this value owns, or is dangling with `len == 0`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> Deref for Managed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> DerefMut for Managed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Pod> Drop for Managed<T> {
    fn drop(&mut self) {
        let Ok(bytes) = Self::map_len(self.len) else {
            return;
        };
        if bytes == 0 {
            return;
        }
        let start = self.ptr.as_ptr() as usize;
        crate::fault::forget_managed(start..start + bytes);
        // SAFETY: the mapping was created by `zeroed` with this length and is owned by this
        // value; no reference into it outlives `self`.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), bytes) } {
            tracing::error!(error = %e, "munmap of Managed memory failed; the mapping leaks");
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Managed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Managed")
            .field("len", &self.len)
            .field("addr", &self.ptr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_page_aligned_and_writable() {
        let mut m = Managed::<u32>::zeroed(5000).unwrap();
        assert_eq!(m.as_ptr() as usize % crate::mirror::PAGE, 0);
        assert!(m.iter().all(|&v| v == 0));
        m[4999] = 7;
        assert_eq!(m[4999], 7);
        let e = Managed::<u8>::zeroed(0).unwrap();
        assert!(e.is_empty());
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(matches!(
            Managed::<u64>::zeroed(usize::MAX / 4),
            Err(Error::InvalidConfig(_))
        ));
    }
}
