//! `Block`, the `VirtioDevice`: feature bits, the configuration space
//! (5.2.4), and starting/stopping the per-queue workers.

use crate::virtio::read_config_bytes;
use crate::virtio::workers::Workers;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;

use super::disk::{Disk, SECTOR_SIZE};
use super::request::MAX_DISCARD_SEGMENTS;
use super::worker::{self, HandlerConfig, QueueHandler};
use super::*;
use crate::memory::GuestMemoryMmap;
use crate::virtio::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queues a block device may have (one worker thread each).
pub const MAX_QUEUES: u16 = 64;
/// seg_max: the queue size less the header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard / write-zeroes segment: what a guest bio can carry
/// (its size is a 32-bit byte count).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX >> 9;
/// Discards are aligned to 4 KiB, the host page and file system block,
/// so that they free whole blocks.
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// The physical block size advertised in the topology.
const PHYSICAL_BLOCK: u32 = 4096;

/// Byte offsets in the configuration space (5.2.4, `struct virtio_blk_config`).
pub(super) mod cfg {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const GEOMETRY: usize = 16;
    pub const BLK_SIZE: usize = 20;
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    pub const ALIGNMENT_OFFSET: usize = 25;
    pub const MIN_IO_SIZE: usize = 26;
    pub const OPT_IO_SIZE: usize = 28;
    pub const WRITEBACK: usize = 32;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Everything up to (not including) the secure-erase fields, which we
    /// do not offer; reads past it see zeros.
    pub const LEN: usize = 60;
}

/// Numbers the devices for thread names (`blk{N}-q{i}`).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A virtio block device over a raw image.
pub struct Block {
    id: usize,
    disk: Arc<Disk>,
    num_queues: u16,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    config: [u8; cfg::LEN],
    stats: Arc<BlockStats>,
    engine: Engine,
    workers: Workers,
}

fn put(config: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = config.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl Block {
    /// Opens and locks the image, with `num_queues` request queues. The
    /// I/O engine comes from `UTSUWA_BLOCK_ENGINE` (see [`Engine`]).
    pub fn new(cfg: &DiskConfig, num_queues: u16) -> Result<Self, BlockError> {
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(BlockError::QueueCount(num_queues));
        }
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
        if let Some(s) = &cfg.serial {
            let Some(dst) = serial.get_mut(..s.len()) else {
                return Err(BlockError::SerialTooLong(s.clone()));
            };
            dst.copy_from_slice(s.as_bytes());
        }
        let disk = Disk::open(cfg)?;
        let config = build_config(&disk, num_queues);
        Ok(Block {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            disk: Arc::new(disk),
            num_queues,
            serial,
            config,
            stats: Arc::new(BlockStats::default()),
            engine: Engine::from_env(),
            workers: Workers::new(),
        })
    }

    /// Chooses the I/O engine for the next activation.
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// The N of its worker threads' names, `blk{N}-q{i}`.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// The logical block size the guest is told (512, or more when
    /// O_DIRECT on this file system demands it).
    pub fn block_size(&self) -> u32 {
        self.disk.block_size()
    }

    fn stop_workers(&mut self) {
        self.workers.stop(&format!("virtio-blk: blk{}", self.id));
    }
}

/// Fills the configuration space for `disk`.
fn build_config(disk: &Disk, num_queues: u16) -> [u8; cfg::LEN] {
    let mut c = [0u8; cfg::LEN];
    let block = disk.block_size();
    put(&mut c, cfg::CAPACITY, &disk.sectors().to_le_bytes());
    // No SIZE_MAX (any segment size goes) and no GEOMETRY (no BIOS asks).
    put(&mut c, cfg::SIZE_MAX, &0u32.to_le_bytes());
    put(&mut c, cfg::SEG_MAX, &SEG_MAX.to_le_bytes());
    put(&mut c, cfg::GEOMETRY, &[0; 4]);
    put(&mut c, cfg::BLK_SIZE, &block.to_le_bytes());
    let per_physical = (PHYSICAL_BLOCK / block).max(1);
    put(
        &mut c,
        cfg::PHYSICAL_BLOCK_EXP,
        &[per_physical.trailing_zeros() as u8],
    );
    put(&mut c, cfg::ALIGNMENT_OFFSET, &[0]);
    put(
        &mut c,
        cfg::MIN_IO_SIZE,
        &(per_physical as u16).to_le_bytes(),
    );
    put(&mut c, cfg::OPT_IO_SIZE, &0u32.to_le_bytes());
    // Informational only (CONFIG_WCE is not offered): a writeback cache
    // that VIRTIO_BLK_T_FLUSH empties.
    put(&mut c, cfg::WRITEBACK, &[1]);
    put(&mut c, cfg::NUM_QUEUES, &num_queues.to_le_bytes());
    if !disk.read_only() {
        put(
            &mut c,
            cfg::MAX_DISCARD_SECTORS,
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            &mut c,
            cfg::MAX_DISCARD_SEG,
            &MAX_DISCARD_SEGMENTS.to_le_bytes(),
        );
        put(
            &mut c,
            cfg::DISCARD_SECTOR_ALIGNMENT,
            &DISCARD_ALIGNMENT_SECTORS.to_le_bytes(),
        );
        put(
            &mut c,
            cfg::MAX_WRITE_ZEROES_SECTORS,
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            &mut c,
            cfg::MAX_WRITE_ZEROES_SEG,
            &MAX_DISCARD_SEGMENTS.to_le_bytes(),
        );
        put(&mut c, cfg::WRITE_ZEROES_MAY_UNMAP, &[1]);
    }
    debug_assert_eq!(u64::from(block) % SECTOR_SIZE, 0);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.num_queues)]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_TOPOLOGY
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_MQ;
        if self.disk.read_only() {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable: `writeback` would be, with CONFIG_WCE.
        log::debug!(
            "virtio-blk: ignored config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop_workers();
        if queues.is_empty() || queues.len() > usize::from(self.num_queues) {
            return Err(ActivateError::Other(format!(
                "virtio-blk: {} queues given, device has {}",
                queues.len(),
                self.num_queues
            )));
        }
        for q in &queues {
            if q.index >= self.num_queues {
                return Err(ActivateError::BadQueue(
                    usize::from(q.index),
                    "no such queue".into(),
                ));
            }
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(
                    usize::from(q.index),
                    "ring outside guest memory".into(),
                ));
            }
        }
        let stop = self.workers.stop_event().map_err(ActivateError::Worker)?;
        let writethrough = acked_features & VIRTIO_BLK_F_FLUSH == 0;
        let event_idx = acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for mut q in queues {
            q.queue.set_event_idx(event_idx);
            let cfg = HandlerConfig {
                index: q.index,
                disk: self.disk.clone(),
                serial: self.serial,
                stats: self.stats.clone(),
                interrupt: interrupt.clone(),
                writethrough,
                engine: self.engine,
            };
            let (mem, stop, notify) = (mem.clone(), stop.clone(), q.notify);
            let queue = q.queue;
            let spawned = self
                .workers
                .spawn(format!("blk{}-q{}", self.id, q.index), move || {
                    worker::run(QueueHandler::new(cfg, queue, mem), notify, stop)
                });
            if let Err(e) = spawned {
                self.stop_workers();
                return Err(ActivateError::Worker(e));
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
