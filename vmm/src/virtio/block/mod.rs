//! virtio-blk (virtio 1.x spec, section 5.2): a raw disk image behind a
//! `VirtioDevice`.
//!
//! ```text
//! Block (device.rs)  features, config space, activate/reset
//!   └─ one worker thread per queue (worker.rs): epoll on notify + stop
//!        ├─ request.rs  descriptor chain → Request (all checks on guest input)
//!        ├─ io.rs       Request → iovecs into guest memory (or a bounce buffer)
//!        ├─ uring.rs    io_uring engine: readv/writev/fsync, batched per queue
//!        └─ disk.rs     the image: open, lock, sync I/O, flush, discard, zeroes
//! ```
//!
//! The image is opened (and locked, see `disk.rs`) by [`Block::new`] and
//! stays open across resets. Requests run on the workers, never on vCPU
//! threads: with io_uring when the kernel allows it, with
//! `preadv`/`pwritev2`/`fdatasync` otherwise (or when
//! `UTSUWA_BLOCK_ENGINE=sync` asks for it). With io_uring on a buffered
//! image, page-cache hits are still served in place (RWF_NOWAIT) and only
//! misses go to the ring: `tests/bench.rs` measured both ways.

mod device;
mod disk;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod io;
mod request;
mod uring;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::Block;
pub use disk::SECTOR_SIZE;

/// Feature bits of the block device (5.2.3), as masks.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_TOPOLOGY: u64 = 1 << 10;
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// VIRTIO_F_RING_INDIRECT_DESC: virtio-queue follows indirect tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Request types (5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Request status values (5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The `unmap` flag of a discard / write-zeroes segment.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// How a disk is given to the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image (a regular file or a block device).
    pub path: PathBuf,
    /// Open it read-only and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// What GET_ID answers; at most 20 bytes.
    pub serial: Option<String>,
    /// cache=none: open with O_DIRECT, bypassing the host page cache.
    pub direct: bool,
}

/// Which I/O engine the workers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// io_uring if a ring can be created, otherwise synchronous.
    Auto,
    /// io_uring, falling back to synchronous (with a warning) when the
    /// kernel refuses rings.
    IoUring,
    /// `preadv`/`pwritev2`/`fdatasync` on the worker thread.
    Sync,
}

impl Engine {
    /// The engine `UTSUWA_BLOCK_ENGINE` asks for (`sync`, `io_uring`;
    /// anything else or unset: `Auto`).
    pub fn from_env() -> Engine {
        match std::env::var("UTSUWA_BLOCK_ENGINE").as_deref() {
            Ok("sync") => Engine::Sync,
            Ok("io_uring") | Ok("uring") => Engine::IoUring,
            _ => Engine::Auto,
        }
    }
}

/// Errors from setting up a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {0} is on a file system that does not support O_DIRECT (cache=none); use the host page cache instead")]
    DirectUnsupported(PathBuf),
    #[error("image {0} is in use by another VM")]
    InUse(PathBuf),
    #[error("cannot lock disk image {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a multiple of 512-byte sectors")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("disk image {path} needs O_DIRECT alignment of {align} bytes, more than 4096")]
    DirectAlignment { path: PathBuf, align: u32 },
    #[error("disk serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    #[error("a block device needs between 1 and {max} queues, not {0}", max = device::MAX_QUEUES)]
    QueueCount(u16),
}

/// Counters of one block device, updated by its workers, read by metrics.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed (whatever their status).
    pub requests: AtomicU64,
    /// Bytes read from the image into the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written from the guest to the image.
    pub write_bytes: AtomicU64,
    /// Flush requests completed successfully.
    pub flushes: AtomicU64,
    /// Discard and write-zeroes requests completed successfully.
    pub discards: AtomicU64,
    /// Requests answered IOERR or UNSUPP, or dropped for having no status.
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`BlockStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    pub requests: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub errors: u64,
}

impl BlockStats {
    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> BlockStatsSnapshot {
        BlockStatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            discards: self.discards.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
