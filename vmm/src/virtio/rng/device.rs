//! `Rng`, the `VirtioDevice`: one request queue (5.4.2), no feature bits
//! of its own (5.4.3), no configuration space (5.4.4).

use crate::virtio::workers::Workers;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;

use super::worker::{self, Handler};
use super::RngStats;
use crate::memory::GuestMemoryMmap;
use crate::virtio::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Numbers the devices for thread names (`rng{N}`).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A virtio entropy device fed by the host's `getrandom(2)`.
pub struct Rng {
    id: usize,
    stats: Arc<RngStats>,
    workers: Workers,
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

impl Rng {
    /// A device; it takes no host resources until the driver starts it.
    pub fn new() -> Self {
        Rng {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stats: Arc::new(RngStats::default()),
            workers: Workers::new(),
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<RngStats> {
        self.stats.clone()
    }

    fn stop_worker(&mut self) {
        self.workers.stop(&format!("virtio-rng: rng{}", self.id));
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-rng: ignored config write of {} bytes at {offset:#x}",
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
        self.stop_worker();
        let mut queues = queues.into_iter();
        let (Some(mut q), None) = (queues.next(), queues.next()) else {
            return Err(ActivateError::Other(
                "virtio-rng: exactly one queue must be enabled".into(),
            ));
        };
        if q.index != 0 {
            return Err(ActivateError::BadQueue(
                usize::from(q.index),
                "no such queue".into(),
            ));
        }
        if !q.queue.is_valid(&mem) {
            return Err(ActivateError::BadQueue(
                0,
                "ring outside guest memory".into(),
            ));
        }
        q.queue
            .set_event_idx(acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
        let stop = self.workers.stop_event().map_err(ActivateError::Worker)?;
        let handler = Handler::new(0, q.queue, mem, self.stats.clone(), interrupt);
        let notify = q.notify;
        self.workers
            .spawn(format!("rng{}", self.id), move || {
                worker::run(handler, notify, stop)
            })
            .map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
