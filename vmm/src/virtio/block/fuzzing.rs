//! virtio-blk's request parser and queue handler for the fuzz targets in
//! `fuzz/` (cargo feature `fuzzing`; see `crate::fuzzing`). Thin wrappers:
//! the parsing and serving are the device's own code.

use std::ops::Deref;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};

use super::disk::Disk;
use super::io::{Op, Transfer};
use super::request::{self, Kind};
use super::worker::{HandlerConfig, QueueHandler};
use super::{BlockError, BlockStats, BlockStatsSnapshot, DiskConfig, Engine, VIRTIO_BLK_ID_BYTES};
use crate::memory::GuestMemoryMmap;
use crate::virtio::VirtioInterrupt;

/// An open, locked image, as the device holds it.
pub struct FuzzDisk(Arc<Disk>);

impl FuzzDisk {
    pub fn open(cfg: &DiskConfig) -> Result<FuzzDisk, BlockError> {
        Disk::open(cfg).map(|d| FuzzDisk(Arc::new(d)))
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.0.sectors()
    }

    pub fn block_size(&self) -> u32 {
        self.0.block_size()
    }

    pub fn read_only(&self) -> bool {
        self.0.read_only()
    }
}

/// What a parsed request asks for: (type, byte offset and length of each
/// range in the image: one for IN/OUT, the segments for DISCARD and
/// WRITE_ZEROES, none for FLUSH and GET_ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub head: u16,
    pub req_type: u32,
    pub ranges: Vec<(u64, u64)>,
    /// Guest buffers of the data, (address, length).
    pub data: Vec<(u64, u32)>,
    /// Guest address of the status byte.
    pub status: u64,
    /// For IN/OUT: bytes the I/O transfer covers and the total of its
    /// iovecs (they must be equal), or why it could not be prepared.
    pub transfer: Option<Result<(usize, usize), String>>,
}

/// A refused request: where its status goes (if anywhere) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub head: u16,
    pub status: Option<u64>,
    pub status_byte: u8,
    pub error: String,
}

/// Parses `chain` as the device's workers do.
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    disk: &FuzzDisk,
) -> Result<Parsed, Refused>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let req = request::parse(chain, mem, &disk.0).map_err(|r| Refused {
        head: r.head,
        status: r.status.map(|a| a.0),
        status_byte: r.error.status(),
        error: r.error.to_string(),
    })?;
    let data: Vec<(u64, u32)> = req.data.iter().map(|r| (r.addr.0, r.len)).collect();
    let data_len: u64 = data.iter().map(|&(_, l)| u64::from(l)).sum();
    let segments = |s: &[request::Segment]| s.iter().map(|s| (s.offset, s.len)).collect();
    let (req_type, ranges, op) = match &req.kind {
        Kind::In { offset } => (
            super::VIRTIO_BLK_T_IN,
            vec![(*offset, data_len)],
            Some((Op::Read, *offset)),
        ),
        Kind::Out { offset } => (
            super::VIRTIO_BLK_T_OUT,
            vec![(*offset, data_len)],
            Some((Op::Write, *offset)),
        ),
        Kind::Flush => (super::VIRTIO_BLK_T_FLUSH, Vec::new(), None),
        Kind::GetId => (super::VIRTIO_BLK_T_GET_ID, Vec::new(), None),
        Kind::Discard(s) => (super::VIRTIO_BLK_T_DISCARD, segments(s), None),
        Kind::WriteZeroes(s) => (super::VIRTIO_BLK_T_WRITE_ZEROES, segments(s), None),
    };
    let transfer = op.map(|(op, offset)| {
        Transfer::data(mem, &disk.0, op, offset, req.data.clone())
            .map(|t| (t.len, t.iovecs.iter().map(|v| v.iov_len).sum()))
            .map_err(|e| e.to_string())
    });
    Ok(Parsed {
        head: req.head,
        req_type,
        ranges,
        data,
        status: req.status.0,
        transfer,
    })
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger_queue(&self, _queue: u16) {}
    fn trigger_config(&self) {}
}

/// Serves every available chain of `queue` with the synchronous engine,
/// as a worker does on a doorbell (I/O on the image included).
pub fn serve(
    disk: &FuzzDisk,
    queue: Queue,
    mem: GuestMemoryMmap,
    writethrough: bool,
) -> BlockStatsSnapshot {
    let stats = Arc::new(BlockStats::default());
    let cfg = HandlerConfig {
        index: 0,
        disk: disk.0.clone(),
        serial: *b"fuzz-serial-00000000",
        stats: stats.clone(),
        interrupt: Arc::new(NoInterrupt),
        writethrough,
        engine: Engine::Sync,
    };
    const _: () = assert!(VIRTIO_BLK_ID_BYTES == 20);
    let mut handler = QueueHandler::new(cfg, queue, mem);
    handler.process_available();
    stats.snapshot()
}
