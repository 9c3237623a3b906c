//! Messages read from a userfaultfd, and what they mean.

use std::fmt;
use std::os::fd::RawFd;

use linux_raw_sys::general as uapi;

/// One raw message read from a userfaultfd (32 bytes). Decode it with [`Uffd::decode`] or
/// [`UffdMsg::decode`]; a buffer of them is filled by [`Uffd::read_events`].
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct UffdMsg(uapi::uffd_msg);

impl UffdMsg {
    /// An all-zero message (event 0, which no real message carries), for filling buffers.
    pub const ZEROED: UffdMsg = UffdMsg(uapi::uffd_msg {
        event: 0,
        reserved1: 0,
        reserved2: 0,
        reserved3: 0,
        arg: uapi::uffd_msg__bindgen_ty_1 {
            reserved: uapi::uffd_msg__bindgen_ty_1__bindgen_ty_5 {
                reserved1: 0,
                reserved2: 0,
                reserved3: 0,
            },
        },
    });

    #[cfg(test)]
    /// Wraps a raw message.
    pub fn from_raw(raw: uapi::uffd_msg) -> Self {
        UffdMsg(raw)
    }

    #[cfg(test)]
    /// The raw message.
    pub fn raw(&self) -> &uapi::uffd_msg {
        &self.0
    }

    /// Decodes the message. `thread_id` says whether `UFFD_FEATURE_THREAD_ID` was
    /// negotiated (the tid field is zero otherwise). Does not allocate.
    pub fn decode(&self, thread_id: bool) -> Event {
        let event = self.0.event;
        // Copy the union out of the packed struct before looking at a variant.
        let arg = self.0.arg;
        match u32::from(event) {
            uapi::UFFD_EVENT_PAGEFAULT => {
                // SAFETY: every variant of the union is plain integers, valid for any bits;
                // the event byte says this one is meant.
                let pf = unsafe { arg.pagefault };
                // SAFETY: as above; `ptid` is a plain u32.
                let ptid = unsafe { pf.feat.ptid };
                let flags = pf.flags;
                Event::PageFault {
                    addr: pf.address as usize,
                    write: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
                    wp: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WP) != 0,
                    minor: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_MINOR) != 0,
                    tid: thread_id.then_some(ptid),
                }
            }
            uapi::UFFD_EVENT_REMOVE | uapi::UFFD_EVENT_UNMAP => {
                // SAFETY: plain integers, valid for any bits (see above).
                let r = unsafe { arg.remove };
                let (start, end) = (r.start as usize, r.end as usize);
                if u32::from(event) == uapi::UFFD_EVENT_REMOVE {
                    Event::Remove { start, end }
                } else {
                    Event::Unmap { start, end }
                }
            }
            uapi::UFFD_EVENT_REMAP => {
                // SAFETY: plain integers, valid for any bits (see above).
                let r = unsafe { arg.remap };
                Event::Remap {
                    from: r.from as usize,
                    to: r.to as usize,
                    len: r.len as usize,
                }
            }
            uapi::UFFD_EVENT_FORK => {
                // SAFETY: plain integers, valid for any bits (see above).
                let f = unsafe { arg.fork };
                Event::Fork { fd: f.ufd as RawFd }
            }
            _ => Event::Unknown(event),
        }
    }
}

impl Default for UffdMsg {
    fn default() -> Self {
        UffdMsg::ZEROED
    }
}

impl fmt::Debug for UffdMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = self.0.arg;
        // SAFETY: the `reserved` view is three plain u64s covering the whole union.
        let words = unsafe { arg.reserved };
        let (a, b, c) = (words.reserved1, words.reserved2, words.reserved3);
        f.debug_struct("UffdMsg")
            .field("event", &self.0.event)
            .field("arg", &[a, b, c])
            .finish()
    }
}

/// A decoded userfaultfd message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted on a registered page and sleeps until it is resolved or woken.
    PageFault {
        /// The faulting address, rounded down to its page.
        addr: usize,
        /// The access was a write.
        write: bool,
        /// A write-protect fault (the page is present and write-protected); otherwise a
        /// MISSING fault.
        wp: bool,
        /// A minor fault (shmem/hugetlbfs MINOR registrations only).
        minor: bool,
        /// The faulting thread's id, when `UFFD_FEATURE_THREAD_ID` was negotiated.
        tid: Option<u32>,
    },
    /// `madvise(MADV_DONTNEED / MADV_REMOVE)` on `[start, end)`: the pages are being dropped.
    Remove {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// `munmap` (or an overlapping `mmap(MAP_FIXED)`, or `mremap` shrinking) of `[start, end)`.
    Unmap {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// `mremap` moved `len` bytes from `from` to `to`; the registration moved with them.
    Remap {
        /// Old start.
        from: usize,
        /// New start.
        to: usize,
        /// Length (the old length).
        len: usize,
    },
    /// `fork()` with `UFFD_FEATURE_EVENT_FORK`: `fd` is a new userfaultfd for the child,
    /// now open in this process. The reader owns it and must close it.
    Fork {
        /// The child's userfaultfd.
        fd: RawFd,
    },
    /// An event this code does not know (a newer kernel).
    Unknown(u8),
}
