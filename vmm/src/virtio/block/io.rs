//! From a parsed request to bytes moving: guest buffers as iovecs, bounce
//! buffers for O_DIRECT, and the byte-stream helpers request parsing uses.
//!
//! Data path: the image is read and written directly from and to guest
//! memory (`preadv`/`pwritev2` or io_uring readv/writev on iovecs that point
//! into the guest's mapping, obtained through `GuestMemory::get_slices`, so
//! only ranges inside guest RAM are ever handed to the kernel). No copy is
//! made, except with O_DIRECT when a guest buffer is not aligned as the
//! file system requires (`Disk::mem_align`): then the whole request goes
//! through one bounce buffer aligned to 4096, copied with the checked
//! `Bytes` API. Linux guests hand page-aligned bio pages, so this is rare.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;

use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::{advance_iovecs, Disk, MAX_DIRECT_ALIGN};
use crate::memory::GuestMemoryMmap;

/// Largest request that may go through a bounce buffer: a guest cannot
/// make the host allocate more than this per request.
pub(super) const MAX_BOUNCE: usize = 8 << 20;

/// A buffer the driver gave, as its descriptor names it (already checked
/// to lie inside guest memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Total length of `regions`.
pub(super) fn total_len(regions: &[Region]) -> u64 {
    regions.iter().map(|r| u64::from(r.len)).sum()
}

/// Splits `regions` into the first `at` bytes and the rest.
pub(super) fn split_regions(regions: &[Region], at: u64) -> (Vec<Region>, Vec<Region>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = at;
    for r in regions {
        let len = u64::from(r.len);
        if left >= len {
            head.push(*r);
            left -= len;
        } else if left == 0 {
            tail.push(*r);
        } else {
            // `left < len <= u32::MAX`, so both conversions are lossless.
            let cut = left as u32;
            head.push(Region {
                addr: r.addr,
                len: cut,
            });
            tail.push(Region {
                addr: r.addr.unchecked_add(left),
                len: r.len - cut,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// Reads `buf.len()` bytes at byte `skip` of the concatenation of
/// `regions`. False when they are too short or memory is not readable.
pub(super) fn read_stream(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    skip: u64,
    buf: &mut [u8],
) -> bool {
    let (_, rest) = split_regions(regions, skip);
    let mut done = 0usize;
    for r in rest {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(r.len as usize);
        let Some(dst) = buf.get_mut(done..done + n) else {
            return false;
        };
        if mem.read_slice(dst, r.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Writes as much of `data` as fits into `regions`, front to back;
/// returns how much was written, or None if memory refused it.
pub(super) fn write_stream(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    data: &[u8],
) -> Option<usize> {
    let mut done = 0usize;
    for r in regions {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(r.len as usize);
        mem.write_slice(data.get(done..done + n)?, r.addr).ok()?;
        done += n;
    }
    Some(done)
}

/// Marks `regions` dirty in guest memory's bitmap, after the device wrote
/// them (a no-op while guest memory keeps no bitmap).
pub(super) fn mark_dirty(mem: &GuestMemoryMmap, regions: &[Region]) {
    for r in regions {
        for slice in GuestMemoryBackend::get_slices(mem, r.addr, r.len as usize).flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

/// A heap buffer aligned to 4096 (for O_DIRECT), zero-filled at first.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (at least one page is allocated).
    pub(crate) fn zeroed(len: usize) -> io::Result<AlignedBuf> {
        let align = MAX_DIRECT_ALIGN as usize;
        let size = len
            .checked_next_multiple_of(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?
            .max(align);
        let layout = Layout::from_size_align(size, align)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(AlignedBuf { ptr, len, layout })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation holds at least `len` initialised bytes and
        // lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// What a transfer does to the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
    Flush,
}

/// One request's I/O, ready for an engine: iovecs into guest memory (or
/// into `bounce`), valid while the guest memory object and `self` live.
pub(super) struct Transfer {
    pub op: Op,
    /// Byte offset in the image.
    pub offset: u64,
    /// Bytes to move.
    pub len: usize,
    /// Bytes moved so far (`iovecs` covers the rest).
    pub done: usize,
    pub iovecs: Vec<libc::iovec>,
    /// The guest regions of the data, for bounce copies and dirty marking.
    pub regions: Vec<Region>,
    pub bounce: Option<AlignedBuf>,
}

impl Transfer {
    /// A flush: no data.
    pub(super) fn flush() -> Transfer {
        Transfer {
            op: Op::Flush,
            offset: 0,
            len: 0,
            done: 0,
            iovecs: Vec::new(),
            regions: Vec::new(),
            bounce: None,
        }
    }

    /// Prepares reading (`Op::Read`) or writing (`Op::Write`) `regions` at
    /// byte `offset` of the image. For a write through a bounce buffer,
    /// the guest data is copied in now.
    pub(super) fn data(
        mem: &GuestMemoryMmap,
        disk: &Disk,
        op: Op,
        offset: u64,
        regions: Vec<Region>,
    ) -> io::Result<Transfer> {
        let fault = || io::Error::from_raw_os_error(libc::EFAULT);
        let len = usize::try_from(total_len(&regions)).map_err(|_| fault())?;
        let mut iovecs = Vec::with_capacity(regions.len());
        for r in &regions {
            for slice in GuestMemoryBackend::get_slices(mem, r.addr, r.len as usize) {
                let slice = slice.map_err(|_| fault())?;
                iovecs.push(libc::iovec {
                    // A plain (non-Xen) mmap: the pointer stays valid as long
                    // as the mapping, i.e. as long as `mem`, not just the guard.
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        let mut bounce = None;
        if disk.direct() {
            let align = disk.mem_align() as usize;
            let aligned = iovecs
                .iter()
                .all(|v| (v.iov_base as usize) % align == 0 && v.iov_len % align == 0);
            if !aligned {
                if len > MAX_BOUNCE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "unaligned O_DIRECT request too large to bounce",
                    ));
                }
                let mut buf = AlignedBuf::zeroed(len)?;
                if op == Op::Write && !read_stream(mem, &regions, 0, buf.as_mut_slice()) {
                    return Err(fault());
                }
                iovecs = vec![libc::iovec {
                    iov_base: buf.as_ptr().cast(),
                    iov_len: len,
                }];
                bounce = Some(buf);
            }
        }
        Ok(Transfer {
            op,
            offset,
            len,
            done: 0,
            iovecs,
            regions,
            bounce,
        })
    }

    /// Image offset of the next byte to move.
    pub(super) fn pos(&self) -> u64 {
        self.offset + self.done as u64
    }

    /// Bytes still to move.
    pub(super) fn remaining(&self) -> usize {
        self.len.saturating_sub(self.done)
    }

    /// Records that `n` more bytes moved.
    pub(super) fn advance(&mut self, n: usize) {
        let n = n.min(self.remaining());
        advance_iovecs(&mut self.iovecs, n);
        self.done += n;
    }

    /// Moves what the page cache can take or give without blocking
    /// (RWF_NOWAIT); false when the file system cannot do that at all.
    pub(super) fn try_nowait(&mut self, disk: &Disk) -> bool {
        if self.op == Op::Flush || self.remaining() == 0 {
            return true;
        }
        // SAFETY: as in `run_sync` below: the iovecs point into guest
        // memory or the bounce buffer, both alive for the call.
        match unsafe { disk.nowait(self.op == Op::Write, &self.iovecs, self.pos()) } {
            Ok(n) => {
                self.advance(n);
                true
            }
            Err(e) => e.raw_os_error() != Some(libc::EOPNOTSUPP),
        }
    }

    /// Runs the rest of the transfer synchronously.
    pub(super) fn run_sync(&mut self, disk: &Disk, dsync: bool) -> io::Result<()> {
        if self.op == Op::Flush {
            return disk.flush();
        }
        let iov = std::mem::take(&mut self.iovecs);
        let offset = self.pos();
        // The iovecs point into guest memory (checked by `get_slices`,
        // mapped while the caller holds `mem`) or into `self.bounce`; both
        // outlive the call. The guest may scribble on its buffers meanwhile,
        // which only garbles its own data.
        let result = match self.op {
            // SAFETY: see above; the buffers are valid for writes.
            Op::Read => unsafe { disk.read_vectored(iov, offset) },
            // SAFETY: see above; the buffers are valid for reads.
            Op::Write => unsafe { disk.write_vectored(iov, offset, dsync) },
            Op::Flush => Ok(()),
        };
        if result.is_ok() {
            self.done = self.len;
        }
        result
    }

    /// After a successful read: copies the bounce buffer to the guest and
    /// marks the guest pages dirty. False if guest memory refused the copy.
    pub(super) fn finish(&self, mem: &GuestMemoryMmap) -> bool {
        if self.op != Op::Read {
            return true;
        }
        if let Some(buf) = &self.bounce {
            if write_stream(mem, &self.regions, buf.as_slice()) != Some(self.len) {
                return false;
            }
        }
        mark_dirty(mem, &self.regions);
        true
    }
}
