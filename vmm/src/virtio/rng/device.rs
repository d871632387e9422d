//! `Rng`, the `VirtioDevice`: one request queue (5.4.2), no feature bits
//! of its own (5.4.3), no configuration space (5.4.4).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
    stop: Option<Arc<EventFd>>,
    worker: Option<JoinHandle<()>>,
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
            stop: None,
            worker: None,
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<RngStats> {
        self.stats.clone()
    }

    fn stop_worker(&mut self) {
        if let Some(stop) = self.stop.take() {
            if let Err(e) = stop.write(1) {
                log::error!("virtio-rng: cannot stop the worker of rng{}: {e}", self.id);
            }
        }
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                log::error!("virtio-rng: the worker of rng{} panicked", self.id);
            }
        }
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
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?);
        let handler = Handler::new(0, q.queue, mem, self.stats.clone(), interrupt);
        let (notify, stop_rx) = (q.notify, stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("rng{}", self.id))
            .spawn(move || worker::run(handler, notify, stop_rx))
            .map_err(ActivateError::Worker)?;
        self.stop = Some(stop);
        self.worker = Some(handle);
        Ok(())
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
