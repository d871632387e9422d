//! virtio-vsock's worker, driven in the caller's thread, for the fuzz
//! target in `fuzz/` (cargo feature `fuzzing`; see `crate::fuzzing`): the
//! device's own transmit and receive handlers and connection table, with
//! real Unix sockets on the host side (the device's listening socket, and
//! a host listener at `PATH_5000` that the caller may serve).

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::worker::{self, Active};
use super::{VsockStats, VsockStatsSnapshot};
use crate::memory::GuestMemoryMmap;
use crate::virtio::ring::Ring;
use crate::virtio::VirtioInterrupt;

/// The guest CID the rig's device has.
pub const GUEST_CID: u64 = 3;
/// The host port whose listener the rig binds (`PATH_5000`).
pub const HOST_PORT: u32 = 5000;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger_queue(&self, _queue: u16) {}
    fn trigger_config(&self) {}
}

/// A device whose driver set up `rxq` and `txq`, with its host side in
/// `dir`.
pub struct VsockRig {
    active: Active,
    muxer: Muxer,
    stats: Arc<VsockStats>,
    socket: PathBuf,
    /// The host service at `PATH_5000`, non-blocking.
    pub host: UnixListener,
}

impl VsockRig {
    /// `dir` must exist; the sockets `dir/v.sock` and `dir/v.sock_5000`
    /// are (re)made in it.
    pub fn new(mem: GuestMemoryMmap, rxq: Queue, txq: Queue, dir: &Path) -> io::Result<VsockRig> {
        let socket = dir.join("v.sock");
        let service = super::unix::port_path(&socket, HOST_PORT);
        for path in [&socket, &service] {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let host = UnixListener::bind(&service)?;
        host.set_nonblocking(true)?;
        let stats = Arc::new(VsockStats::default());
        let muxer = Muxer::new(GUEST_CID, socket.clone(), listener, stats.clone())?;
        let active = Active {
            mem,
            rx: Ring::new(0, rxq),
            tx: Ring::new(1, txq),
            _event: None,
            rx_notify: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            tx_notify: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            interrupt: Arc::new(NoInterrupt),
        };
        Ok(VsockRig {
            active,
            muxer,
            stats,
            socket,
            host,
        })
    }

    /// Where a host program connects to reach the guest.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The transmit queue's handler; true if it left work.
    pub fn run_tx(&mut self) -> bool {
        worker::process_tx(&mut self.active, &mut self.muxer, &self.stats)
    }

    /// The receive queue's handler; true if it left work.
    pub fn run_rx(&mut self) -> bool {
        worker::process_rx(&mut self.active, &mut self.muxer, &self.stats)
    }

    /// Handles what the host side's sockets have ready, without waiting.
    pub fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = self.muxer.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in events.get(..n).unwrap_or(&[]) {
            worker::host_event(&mut self.muxer, ev);
        }
    }

    /// Accepts what waits at `PATH_5000`.
    pub fn accept_host(&self) -> Vec<UnixStream> {
        std::iter::from_fn(|| self.host.accept().ok().map(|(s, _)| s)).collect()
    }

    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    pub fn pending_resets(&self) -> usize {
        self.muxer.pending_resets()
    }

    pub fn stats(&self) -> VsockStatsSnapshot {
        self.stats.snapshot()
    }
}
