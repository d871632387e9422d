//! Parsing a virtio-blk request (5.2.6) out of a descriptor chain, treating
//! everything in it as hostile.
//!
//! There is no published rust-vmm virtio-blk request crate that works with
//! vm-memory 0.18, so this parser is our own.
//!
//! The device does not assume any framing (2.6.4): the device-readable
//! descriptors form one byte stream (16-byte header, then OUT data or
//! discard/write-zeroes segments), the device-writable ones another (IN or
//! GET_ID data, then the status byte, which is the very last byte of the
//! chain). Rules, in order:
//!
//! 1. The chain must end: virtio-queue stops walking after `queue size`
//!    descriptors (and after an indirect table's length, nesting refused,
//!    at most 4 GiB in total), or at a descriptor it cannot read; we see
//!    that as a last descriptor that still has NEXT. Such a chain, an empty
//!    one, or one whose last descriptor is not device-writable has no
//!    status byte we may write: it is returned with used length 0.
//! 2. Everything else that is wrong is answered VIRTIO_BLK_S_IOERR
//!    (UNSUPP for unknown types and flags, as 5.2.6.2 says): zero-length
//!    descriptors, buffers outside guest memory, readable after writable,
//!    short headers, data in the wrong direction, lengths that are not
//!    whole blocks, sectors past the end (all arithmetic checked), writes
//!    to a read-only disk.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use super::disk::{Disk, SECTOR_SIZE};
use super::io::{read_stream, split_regions, total_len, Region};
use super::*;
use crate::memory::GuestMemoryMmap;

/// Size of the request header (type, reserved, sector).
pub(super) const HEADER_LEN: u64 = 16;
/// Size of one discard / write-zeroes segment.
pub(super) const SEGMENT_LEN: u64 = 16;
/// Most segments in one discard or write-zeroes request (config space).
pub(super) const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Most data buffers in one request: what one `preadv` takes.
pub(super) const MAX_DATA_BUFFERS: usize = libc::UIO_MAXIOV as usize;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum RequestError {
    #[error("descriptor chain is empty, loops or is unreadable")]
    BrokenChain,
    #[error("last descriptor is not device-writable: nowhere to put the status")]
    NoStatus,
    #[error("zero-length descriptor")]
    ZeroLength,
    #[error("buffer {0:#x}+{1:#x} is outside guest memory")]
    OutsideMemory(u64, u32),
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("request header shorter than 16 bytes")]
    ShortHeader,
    #[error("data buffers in the wrong direction for this request type")]
    WrongDirection,
    #[error("too many data buffers ({0})")]
    TooManyBuffers(usize),
    #[error("length {0} is not a multiple of the block size")]
    Unaligned(u64),
    #[error("sectors {0}+{1} bytes are past the end of the disk")]
    OutOfRange(u64, u64),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("malformed discard/write-zeroes segments ({0} bytes)")]
    BadSegments(u64),
    #[error("unknown flags {0:#x} in a discard/write-zeroes segment")]
    UnknownFlags(u32),
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte this error is answered with.
    pub(super) fn status(&self) -> u8 {
        match self {
            RequestError::UnknownFlags(_) | RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// One discard / write-zeroes range, checked against the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    /// Byte offset in the image.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Read `data.len` bytes at `offset` into the data buffers.
    In {
        offset: u64,
    },
    /// Write the data buffers at `offset`.
    Out {
        offset: u64,
    },
    Flush,
    GetId,
    Discard(Vec<Segment>),
    WriteZeroes(Vec<Segment>),
}

/// A request that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub head: u16,
    pub kind: Kind,
    /// Data buffers: device-writable for IN and GET_ID, readable for OUT.
    pub data: Vec<Region>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A request that failed a check; `status` is where to answer, if anywhere.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rejected {
    pub head: u16,
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// Checks `len` bytes at `sector` against the disk; returns the byte offset.
fn data_range(disk: &Disk, sector: u64, len: u64, block: u64) -> Result<u64, RequestError> {
    if len % block != 0 {
        return Err(RequestError::Unaligned(len));
    }
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(RequestError::OutOfRange(sector, len))?;
    if offset % block != 0 {
        return Err(RequestError::Unaligned(offset));
    }
    let end = offset
        .checked_add(len)
        .ok_or(RequestError::OutOfRange(sector, len))?;
    // `sectors * 512` is the file size, so it fits.
    if end > disk.sectors() * SECTOR_SIZE {
        return Err(RequestError::OutOfRange(sector, len));
    }
    Ok(offset)
}

/// Parses the chain. The caller answers a `Rejected` itself.
/// `mem` is the memory the chain lives in.
pub(super) fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    disk: &Disk,
) -> Result<Request, Rejected>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let head = chain.head_index();
    let reject = |status, error| Rejected {
        head,
        status,
        error,
    };

    // Walk the chain (bounded by virtio-queue, see the module doc).
    let descs: Vec<_> = chain.collect();
    let Some(last) = descs.last() else {
        return Err(reject(None, RequestError::BrokenChain));
    };
    if last.has_next() {
        return Err(reject(None, RequestError::BrokenChain));
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err(reject(None, RequestError::NoStatus));
    }
    let status = match last.addr().checked_add(u64::from(last.len()) - 1) {
        Some(addr) if in_memory(mem, addr, 1) => addr,
        _ => {
            return Err(reject(
                None,
                RequestError::OutsideMemory(last.addr().0, last.len()),
            ))
        }
    };
    let fail = |error| Err(reject(Some(status), error));

    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in &descs {
        if d.len() == 0 {
            return fail(RequestError::ZeroLength);
        }
        if !in_memory(mem, d.addr(), d.len()) {
            return fail(RequestError::OutsideMemory(d.addr().0, d.len()));
        }
        let region = Region {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(region);
        } else if writable.is_empty() {
            readable.push(region);
        } else {
            return fail(RequestError::ReadableAfterWritable);
        }
    }
    // The status byte is the last writable byte: take it off the data.
    if let Some(r) = writable.last_mut() {
        r.len = r.len.saturating_sub(1);
        if r.len == 0 {
            writable.pop();
        }
    }

    let mut header = [0u8; HEADER_LEN as usize];
    if total_len(&readable) < HEADER_LEN || !read_stream(mem, &readable, 0, &mut header) {
        return fail(RequestError::ShortHeader);
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let (_, payload) = split_regions(&readable, HEADER_LEN);
    let block = u64::from(disk.block_size());

    let (kind, data) = match req_type {
        VIRTIO_BLK_T_IN => {
            if !payload.is_empty() {
                return fail(RequestError::WrongDirection);
            }
            let offset = match data_range(disk, sector, total_len(&writable), block) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            (Kind::In { offset }, writable)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return fail(RequestError::ReadOnly);
            }
            if !writable.is_empty() {
                return fail(RequestError::WrongDirection);
            }
            let offset = match data_range(disk, sector, total_len(&payload), block) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            (Kind::Out { offset }, payload)
        }
        VIRTIO_BLK_T_FLUSH => (Kind::Flush, Vec::new()),
        VIRTIO_BLK_T_GET_ID => (Kind::GetId, writable),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if disk.read_only() {
                return fail(RequestError::ReadOnly);
            }
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            let segments = match parse_segments(mem, disk, &payload, discard) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let kind = if discard {
                Kind::Discard(segments)
            } else {
                Kind::WriteZeroes(segments)
            };
            (kind, Vec::new())
        }
        other => return fail(RequestError::Unsupported(other)),
    };
    if data.len() > MAX_DATA_BUFFERS {
        return fail(RequestError::TooManyBuffers(data.len()));
    }
    Ok(Request {
        head,
        kind,
        data,
        status,
    })
}

/// Reads and checks the segments of a discard / write-zeroes request.
fn parse_segments(
    mem: &GuestMemoryMmap,
    disk: &Disk,
    payload: &[Region],
    discard: bool,
) -> Result<Vec<Segment>, RequestError> {
    let len = total_len(payload);
    let count = len / SEGMENT_LEN;
    if len == 0 || len % SEGMENT_LEN != 0 || count > u64::from(MAX_DISCARD_SEGMENTS) {
        return Err(RequestError::BadSegments(len));
    }
    let mut segments = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut raw = [0u8; SEGMENT_LEN as usize];
        if !read_stream(mem, payload, i * SEGMENT_LEN, &mut raw) {
            return Err(RequestError::BadSegments(len));
        }
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = raw;
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let num_sectors = u32::from_le_bytes([n0, n1, n2, n3]);
        let flags = u32::from_le_bytes([f0, f1, f2, f3]);
        // 5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
        let known = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !known != 0 {
            return Err(RequestError::UnknownFlags(flags));
        }
        let bytes = u64::from(num_sectors) * SECTOR_SIZE;
        // Deallocation has no O_DIRECT alignment needs: sectors suffice.
        let offset = data_range(disk, sector, bytes, SECTOR_SIZE)?;
        segments.push(Segment {
            offset,
            len: bytes,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(segments)
}
