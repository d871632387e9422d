//! virtio-net's chain checks and both sides of its worker for the fuzz
//! targets in `fuzz/` (cargo feature `fuzzing`; see `crate::fuzzing`).
//! The TAP is the tests' stand-in, a seqpacket socket pair, so the
//! device's own transmit and receive code runs as it does on a TAP.

use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};

use super::rx::{fix_header, Rx, RxState};
use super::tap::{Offloads, Tap};
use super::tx::{HostOffloads, Tx};
use super::worker::Io;
use super::{NetStats, NetStatsSnapshot, RX_QUEUE, TX_QUEUE};
use crate::memory::GuestMemoryMmap;
use crate::virtio::chain::{self, Dir};
use crate::virtio::ring::Ring;
use crate::virtio::VirtioInterrupt;

/// Checks and collects `chain` as a queue of the device does: the
/// buffers' (address, length) and total, or why it was refused.
#[allow(clippy::type_complexity)]
pub fn collect<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    writable: bool,
    max_len: u64,
) -> Result<(u16, Vec<(u64, u32)>, u64), (u16, String)>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let dir = if writable {
        Dir::Writable
    } else {
        Dir::Readable
    };
    chain::collect(chain, mem, dir, max_len)
        .map(|b| {
            let regions = b.regions.iter().map(|r| (r.addr.0, r.len)).collect();
            (b.head, regions, b.len)
        })
        .map_err(|(head, e)| (head, e.to_string()))
}

/// Whether the transmit side lets a header with `flags` and `gso_type`
/// through, given the driver's accepted features.
pub fn tx_allows(acked: u64, flags: u8, gso_type: u8) -> bool {
    HostOffloads::from_features(acked).allow(flags, gso_type)
}

/// The receive side's check of a header from the TAP (it may clear flags).
pub fn rx_fix_header(frame: &mut [u8], acked: u64) -> bool {
    fix_header(frame, Offloads::from_features(acked))
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger_queue(&self, _queue: u16) {}
    fn trigger_config(&self) {}
}

/// Both queues of a device over a stand-in TAP, driven in the caller's
/// thread.
pub struct NetRig {
    io: Io,
    rx: Rx,
    tx: Tx,
    stats: Arc<NetStats>,
    peer: OwnedFd,
}

impl NetRig {
    /// A device as if the driver accepted `acked` and set up `rxq` and
    /// `txq` in `mem`.
    pub fn new(mem: GuestMemoryMmap, rxq: Queue, txq: Queue, acked: u64) -> io::Result<NetRig> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by no one else.
        let (dev, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let stats = Arc::new(NetStats::default());
        Ok(NetRig {
            io: Io {
                mem,
                tap: Arc::new(Tap::stand_in(dev)),
                stats: stats.clone(),
                interrupt: Arc::new(NoInterrupt),
            },
            rx: Rx::new(
                Ring::new(RX_QUEUE, rxq),
                acked & super::VIRTIO_NET_F_MRG_RXBUF != 0,
                Offloads::from_features(acked),
            ),
            tx: Tx::new(Ring::new(TX_QUEUE, txq), HostOffloads::from_features(acked)),
            stats,
            peer,
        })
    }

    /// The host sends one frame (vnet header included) towards the guest;
    /// false if the socket is full.
    pub fn host_send(&self, frame: &[u8]) -> bool {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        n >= 0
    }

    /// One frame the guest sent, as the host sees it.
    pub fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 1 << 17];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// The transmit side's doorbell handler; true if it left work.
    pub fn run_tx(&mut self) -> bool {
        self.tx.process(&self.io)
    }

    /// The receive side's handler; true unless the TAP was found empty.
    pub fn run_rx(&mut self) -> bool {
        self.rx.process(&self.io) != RxState::TapEmpty
    }

    pub fn stats(&self) -> NetStatsSnapshot {
        self.stats.snapshot()
    }
}
