//! An entropy request (5.4.6) out of a descriptor chain, treating all of
//! it as hostile: only device-writable buffers, all inside guest memory,
//! and a chain that ends (virtio-queue bounds the walk; a chain it stopped
//! walking ends in a descriptor that still has NEXT). Zero-length buffers
//! are skipped. Only the first [`MAX_REQUEST`] bytes are kept.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::MAX_REQUEST;
use crate::memory::GuestMemoryMmap;

/// One guest buffer, checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A request that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub head: u16,
    /// The buffers to fill, cut at `MAX_REQUEST` bytes.
    pub regions: Vec<Region>,
    /// Total bytes of `regions`.
    pub len: usize,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum RequestError {
    #[error("descriptor chain is empty, loops or is unreadable")]
    Broken,
    #[error("device-readable buffer in an entropy request")]
    DeviceReadable,
    #[error("buffer {0:#x}+{1:#x} is outside guest memory")]
    OutsideMemory(u64, u32),
}

/// Parses the chain; on error, the head to return it with.
pub(super) fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<Request, (u16, RequestError)>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let head = chain.head_index();
    let mut regions = Vec::new();
    let mut len = 0usize;
    let mut last_has_next = true;
    for d in chain {
        last_has_next = d.has_next();
        if !d.is_write_only() {
            return Err((head, RequestError::DeviceReadable));
        }
        if d.len() == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err((head, RequestError::OutsideMemory(d.addr().0, d.len())));
        }
        let room = MAX_REQUEST - len;
        if room > 0 {
            // `take <= d.len()`, so it fits a u32.
            let take = (d.len() as usize).min(room);
            regions.push(Region {
                addr: d.addr(),
                len: take as u32,
            });
            len += take;
        }
    }
    if last_has_next {
        return Err((head, RequestError::Broken));
    }
    Ok(Request { head, regions, len })
}

/// Writes `data` into `regions`, front to back; how much fit, or None if
/// memory refused.
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
