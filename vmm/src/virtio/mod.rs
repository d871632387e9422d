//! virtio devices and what they share: the `VirtioDevice` trait a device
//! implements, the queues and interrupts it is handed when the driver sets
//! DRIVER_OK, and the PCI transport (`transport`) that carries all of it.
//! Each device lives in its own folder (`block/`), with its request parsing,
//! its I/O and its event loop side by side.

pub mod block;
pub(crate) mod chain;
pub mod net;
pub(crate) mod ring;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod workers;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// Device IDs from the virtio 1.x specification, section 5.
pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const VIRTIO_ID_RNG: u32 = 4;
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// VIRTIO_F_VERSION_1: the device is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Errors a device can report when the driver starts it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid: {1}")]
    BadQueue(usize, String),
    #[error("cannot start the device's worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// How a device interrupts the driver. The transport decides what that
/// means (an MSI-X vector, honouring its mask; or nothing when the driver
/// polls).
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in the used ring of `queue`.
    fn trigger_queue(&self, queue: u16);
    /// The device changed its configuration space.
    fn trigger_config(&self);
}

/// Copies `data.len()` bytes of a device's configuration space at
/// `offset`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    for (i, byte) in data.iter_mut().enumerate() {
        if let Some(v) = start.checked_add(i).and_then(|o| config.get(o)) {
            *byte = *v;
        }
    }
}

/// One queue as the driver set it up, ready for the device.
pub struct ActiveQueue {
    /// Its index among the device's queues.
    pub index: u16,
    /// The ring, validated by the transport against guest memory.
    pub queue: Queue,
    /// Becomes readable when the driver notifies the queue (an ioeventfd).
    pub notify: Arc<EventFd>,
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads `data.len()` bytes at `offset` of the device configuration.
    /// Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving `queues` with the features
    /// it accepted. Called at most once between resets.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop every worker and forget the
    /// queues, so the device can be activated again.
    fn reset(&mut self);
    /// The VM is going away: stop everything, including what runs
    /// without a driver (a listening socket). Reset by default.
    fn shutdown(&mut self) {
        self.reset();
    }
}
