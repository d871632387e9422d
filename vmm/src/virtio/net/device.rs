//! `Net`, the `VirtioDevice`: feature bits, the configuration space
//! (5.1.4), and starting/stopping the worker, which also tells the TAP
//! which offloads the guest accepted.

use crate::virtio::read_config_bytes;
use crate::virtio::workers::Workers;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;

use super::rx::Rx;
use super::tap::Offloads;
use super::tx::{HostOffloads, Tx};
use super::worker::{self, Io, Wakers, Worker};
use super::*;
use crate::memory::GuestMemoryMmap;
use crate::virtio::ring::Ring;
use crate::virtio::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_ID_NET,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// receiveq1 and transmitq1 (5.1.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// Byte offsets in the configuration space (5.1.4, `struct virtio_net_config`).
pub(super) mod cfg {
    pub const MAC: usize = 0;
    pub const STATUS: usize = 6;
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    /// Up to the `mtu` field, which is not offered; reads past see zeros.
    pub const LEN: usize = 10;
}

/// Every feature the device offers.
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN;

/// Numbers the devices for thread names (`net{N}`).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A virtio network device on a TAP interface.
pub struct Net {
    id: usize,
    tap: Arc<Tap>,
    mac: MacAddr,
    config: [u8; cfg::LEN],
    stats: Arc<NetStats>,
    workers: Workers,
}

impl Net {
    /// Opens (or creates) the TAP; the MAC is the configured one or a
    /// random locally administered one.
    pub fn new(cfg: &NetConfig) -> Result<Self, NetError> {
        let mac = match cfg.mac {
            Some(mac) => mac,
            None => MacAddr::random()?,
        };
        Ok(Net::with_tap(Tap::open(&cfg.tap)?, mac))
    }

    /// A device on an already open TAP.
    pub fn with_tap(tap: Tap, mac: MacAddr) -> Self {
        let mut config = [0u8; cfg::LEN];
        put(&mut config, cfg::MAC, &mac.0);
        put(
            &mut config,
            cfg::STATUS,
            &VIRTIO_NET_S_LINK_UP.to_le_bytes(),
        );
        put(&mut config, cfg::MAX_VIRTQUEUE_PAIRS, &1u16.to_le_bytes());
        Net {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tap: Arc::new(tap),
            mac,
            config,
            stats: Arc::new(NetStats::default()),
            workers: Workers::new(),
        }
    }

    /// The N of its worker thread's name, `net{N}`.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The TAP interface.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    fn stop_worker(&mut self) {
        self.workers.stop(&format!("virtio-net: net{}", self.id));
    }

    /// Tells the TAP what the guest takes; on failure, nothing at all.
    fn set_offloads(&self, wanted: Offloads) -> Offloads {
        match self.tap.set_offload(wanted.tun_flags()) {
            Ok(()) => wanted,
            Err(e) => {
                log::warn!(
                    "virtio-net: TAP {}: cannot enable offloads {:#x} ({e}); receiving without",
                    self.tap.name(),
                    wanted.tun_flags()
                );
                if let Err(e) = self.tap.set_offload(0) {
                    log::warn!("virtio-net: TAP {}: {e}", self.tap.name());
                }
                Offloads::default()
            }
        }
    }
}

fn put(config: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = config.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only in legacy devices (5.1.4.2).
        log::debug!(
            "virtio-net: ignored config write of {} bytes at {offset:#x}",
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
        let (mut rx, mut tx) = (None, None);
        for q in queues {
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(
                    usize::from(q.index),
                    "ring outside guest memory".into(),
                ));
            }
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                i => {
                    return Err(ActivateError::BadQueue(
                        usize::from(i),
                        "no such queue".into(),
                    ))
                }
            }
        }
        let (Some(mut rx), Some(mut tx)) = (rx, tx) else {
            return Err(ActivateError::Other(
                "virtio-net: both the receive and the transmit queue must be enabled".into(),
            ));
        };
        let event_idx = acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.queue.set_event_idx(event_idx);
        tx.queue.set_event_idx(event_idx);
        let offloads = self.set_offloads(Offloads::from_features(acked_features));
        let stop = self.workers.stop_event().map_err(ActivateError::Worker)?;
        let worker = Worker {
            io: Io {
                mem,
                tap: self.tap.clone(),
                stats: self.stats.clone(),
                interrupt,
            },
            rx: Rx::new(
                Ring::new(RX_QUEUE, rx.queue),
                acked_features & VIRTIO_NET_F_MRG_RXBUF != 0,
                offloads,
            ),
            tx: Tx::new(
                Ring::new(TX_QUEUE, tx.queue),
                HostOffloads::from_features(acked_features),
            ),
        };
        let wakers = Wakers {
            rx: rx.notify,
            tx: tx.notify,
            stop,
        };
        self.workers
            .spawn(format!("net{}", self.id), move || {
                worker::run(worker, wakers)
            })
            .map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.stop_worker();
        if let Err(e) = self.tap.set_offload(0) {
            log::debug!(
                "virtio-net: TAP {}: resetting offloads: {e}",
                self.tap.name()
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
