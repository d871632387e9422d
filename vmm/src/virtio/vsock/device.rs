//! `Vsock`, the `VirtioDevice`: three queues (rx, tx, event; 5.10.2), no
//! feature bits of its own (stream sockets only), and a configuration
//! space holding the guest's CID (5.10.4). The worker thread and the
//! listening socket exist from construction to drop; activation hands
//! the worker the queues, reset takes them back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::worker::{self, Active, Control, Worker};
use super::{unix, VsockConfig, VsockError, VsockStats};
use crate::memory::GuestMemoryMmap;
use crate::virtio::ring::Ring;
use crate::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK, VIRTIO_RING_F_EVENT_IDX,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;
/// How long a reset waits for the worker to let go of the queues.
const RESET_WAIT: Duration = Duration::from_secs(5);

/// Numbers the devices for thread names (`vsock{N}`).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A virtio socket device bridged to host Unix sockets.
pub struct Vsock {
    cid: u32,
    stats: Arc<VsockStats>,
    control: Sender<Control>,
    wake: Arc<EventFd>,
    ack: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    active: bool,
}

impl Vsock {
    /// Listens on `cfg.socket` and starts the worker.
    pub fn new(cfg: &VsockConfig) -> Result<Vsock, VsockError> {
        let listener = unix::listen(&cfg.socket)?;
        let stats = Arc::new(VsockStats::default());
        let muxer = Muxer::new(
            u64::from(cfg.cid),
            cfg.socket.clone(),
            listener,
            stats.clone(),
        )
        .map_err(VsockError::Worker)?;
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(VsockError::Worker)?);
        let (control, control_rx) = mpsc::channel();
        let (ack_tx, ack) = mpsc::channel();
        let w = Worker {
            muxer,
            control: control_rx,
            wake: wake.clone(),
            ack: ack_tx,
            socket: cfg.socket.clone(),
            stats: stats.clone(),
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name(format!("vsock{id}"))
            .spawn(move || worker::run(w))
            .map_err(VsockError::Worker)?;
        Ok(Vsock {
            cid: cfg.cid,
            stats,
            control,
            wake,
            ack,
            thread: Some(thread),
            active: false,
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<VsockStats> {
        self.stats.clone()
    }

    fn send(&self, msg: Control) -> bool {
        if self.control.send(msg).is_err() {
            return false;
        }
        self.wake.write(1).is_ok()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&u64::from(self.cid).to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-vsock: ignored config write of {} bytes at {offset:#x}",
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
        self.reset();
        let event_idx = acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let (mut rx, mut tx, mut event) = (None, None, None);
        for mut q in queues {
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(
                    usize::from(q.index),
                    "ring outside guest memory".into(),
                ));
            }
            q.queue.set_event_idx(event_idx);
            match q.index {
                RX => rx = Some(q),
                TX => tx = Some(q),
                EVENT => event = Some(q),
                i => {
                    return Err(ActivateError::BadQueue(
                        usize::from(i),
                        "no such queue".into(),
                    ))
                }
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::Other(
                "virtio-vsock: the rx and tx queues must be enabled".into(),
            ));
        };
        let active = Active {
            mem,
            rx: Ring::new(RX, rx.queue),
            tx: Ring::new(TX, tx.queue),
            _event: event.map(|q| q.queue),
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            interrupt,
        };
        if !self.send(Control::Activate(Box::new(active))) {
            return Err(ActivateError::Other(
                "virtio-vsock: the worker is gone".into(),
            ));
        }
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        if !std::mem::take(&mut self.active) {
            return;
        }
        // Stale acks from an earlier reset that timed out.
        while self.ack.try_recv().is_ok() {}
        if self.send(Control::Reset) && self.ack.recv_timeout(RESET_WAIT).is_err() {
            log::error!("virtio-vsock: the worker did not acknowledge the reset");
        }
    }

    fn shutdown(&mut self) {
        self.reset();
        self.stop();
    }
}

impl Vsock {
    /// Stops the worker, which closes every connection and removes the
    /// listening socket's file.
    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.send(Control::Stop);
        if thread.join().is_err() {
            log::error!("virtio-vsock: the worker panicked");
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop();
    }
}
