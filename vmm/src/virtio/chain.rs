//! A descriptor chain as a device takes it (net, vsock), treating everything
//! in it as hostile: every buffer must point the way the queue needs
//! (device-readable on transmitq, device-writable on receiveq) and lie
//! inside guest memory, the chain must end, and it may hold only so many
//! buffers and bytes. Zero-length descriptors carry nothing and are
//! skipped, whichever way they point. The device assumes no framing (2.6.4): the header may share a
//! buffer with the frame or be split over several.
//!
//! virtio-queue bounds the walk (at most `queue size` descriptors, or an
//! indirect table's length, never nested); a chain it stopped walking ends
//! in a descriptor that still has NEXT, and is refused here.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Most buffers in one chain: what one `writev` takes.
pub(crate) const MAX_BUFFERS: usize = libc::UIO_MAXIOV as usize;

/// One guest buffer, checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Which way a queue's buffers must point, from the device's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// transmitq: the device reads them.
    Readable,
    /// receiveq: the device writes them.
    Writable,
}

/// A chain that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Buffers {
    pub head: u16,
    pub regions: Vec<Region>,
    /// Total bytes of `regions`.
    pub len: u64,
}

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChainError {
    #[error("descriptor chain is empty, loops or is unreadable")]
    Broken,
    #[error("a buffer points the wrong way for this queue")]
    WrongDirection,
    #[error("buffer {0:#x}+{1:#x} is outside guest memory")]
    OutsideMemory(u64, u32),
    #[error("chain holds more than {0} bytes")]
    TooLong(u64),
    #[error("chain holds more than {MAX_BUFFERS} buffers")]
    TooManyBuffers,
}

/// Checks and collects the buffers of `chain`; at most `max_len` bytes
/// (more is an error). On error, the head to return the chain with.
pub(crate) fn collect<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    dir: Dir,
    max_len: u64,
) -> Result<Buffers, (u16, ChainError)>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let head = chain.head_index();
    let fail = |e| Err((head, e));
    let mut regions = Vec::new();
    let mut len = 0u64;
    let mut last_has_next = true;
    for d in chain {
        last_has_next = d.has_next();
        if d.len() == 0 {
            continue;
        }
        if d.is_write_only() != (dir == Dir::Writable) {
            return fail(ChainError::WrongDirection);
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return fail(ChainError::OutsideMemory(d.addr().0, d.len()));
        }
        len += u64::from(d.len());
        if len > max_len {
            return fail(ChainError::TooLong(max_len));
        }
        if regions.len() == MAX_BUFFERS {
            return fail(ChainError::TooManyBuffers);
        }
        regions.push(Region {
            addr: d.addr(),
            len: d.len(),
        });
    }
    // An empty walk also leaves `last_has_next` set.
    if last_has_next {
        return fail(ChainError::Broken);
    }
    Ok(Buffers { head, regions, len })
}

/// Reads `buf.len()` bytes at byte `skip` of the concatenation of
/// `regions`. False when they are too short or memory refused.
pub(crate) fn read_stream(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    skip: u64,
    buf: &mut [u8],
) -> bool {
    let mut skip = skip;
    let mut done = 0usize;
    for r in regions {
        if done == buf.len() {
            break;
        }
        let len = u64::from(r.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // `skip < len <= u32::MAX`: both fit a usize.
        let n = (buf.len() - done).min((len - skip) as usize);
        let Some(dst) = buf.get_mut(done..done + n) else {
            return false;
        };
        if mem.read_slice(dst, r.addr.unchecked_add(skip)).is_err() {
            return false;
        }
        skip = 0;
        done += n;
    }
    done == buf.len()
}

/// Writes as much of `data` as fits at byte `skip` of `regions`; returns
/// how much that was, or None if memory refused.
pub(crate) fn write_stream(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    skip: u64,
    data: &[u8],
) -> Option<usize> {
    let mut skip = skip;
    let mut done = 0usize;
    for r in regions {
        if done == data.len() {
            break;
        }
        let len = u64::from(r.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (data.len() - done).min((len - skip) as usize);
        mem.write_slice(data.get(done..done + n)?, r.addr.unchecked_add(skip))
            .ok()?;
        skip = 0;
        done += n;
    }
    Some(done)
}

/// The host addresses of `regions`, for a `writev`; None if one is not
/// backed by guest memory or there would be more than `MAX_BUFFERS`.
/// The pointers stay valid as long as `mem`'s mappings, i.e. as long as
/// the caller holds `mem` (a plain, non-Xen mmap).
pub(crate) fn iovecs(mem: &GuestMemoryMmap, regions: &[Region]) -> Option<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(regions.len());
    for r in regions {
        for slice in GuestMemoryBackend::get_slices(mem, r.addr, r.len as usize) {
            let slice = slice.ok()?;
            if iov.len() == MAX_BUFFERS {
                return None;
            }
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Some(iov)
}

/// The part of `regions` from byte `skip`, at most `len` bytes long.
pub(crate) fn sub_regions(regions: &[Region], skip: u64, len: u64) -> Vec<Region> {
    let mut out = Vec::new();
    let (mut skip, mut left) = (skip, len);
    for r in regions {
        if left == 0 {
            break;
        }
        let rlen = u64::from(r.len);
        if skip >= rlen {
            skip -= rlen;
            continue;
        }
        // `take <= rlen - skip <= u32::MAX`.
        let take = (rlen - skip).min(left);
        out.push(Region {
            addr: r.addr.unchecked_add(skip),
            len: take as u32,
        });
        left -= take;
        skip = 0;
    }
    out
}

/// The first `len` bytes of `regions`.
pub(crate) fn prefix(regions: &[Region], len: u64) -> Vec<Region> {
    sub_regions(regions, 0, len)
}
