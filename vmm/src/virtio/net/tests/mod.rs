//! Tests of the virtio-net device: a driver played by hand over guest
//! memory (`driver.rs`), and on the host side either a stand-in for the
//! TAP (a seqpacket socket pair, which keeps frame boundaries as a TAP
//! does) or, in `tap.rs`, a real TAP inside a network namespace private to
//! the test thread.
//!
//! `tx`, `rx` and `hostile` drive the worker's two sides by hand in the
//! test's thread; `device` covers features, config space, the offload
//! mapping and the threaded path through `activate`.

pub(crate) mod driver;

mod device;
mod hostile;
mod rx;
mod tap;
mod tx;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use self::driver::{guest_memory, Driver};
use super::rx::{Rx, RxState};
use super::tap::Offloads;
use super::tx::{HostOffloads, Tx};
use super::worker::{Io, Worker};
use super::*;
use crate::virtio::ring::Ring;
use crate::virtio::{VirtioInterrupt, VIRTIO_RING_F_EVENT_IDX};

/// Guest memory of every rig: rings at 0 (RX) and 16 KiB (TX), RX
/// buffers from 1 MiB, TX buffers from 9 MiB.
const MEM_SIZE: usize = 24 << 20;
const RX_DATA: (u64, u64) = (1 << 20, 9 << 20);
const TX_DATA: (u64, u64) = (9 << 20, 24 << 20);

/// The EtherType of test frames (IEEE "local experimental").
pub(super) const ETHERTYPE: u16 = 0x88b5;

/// Counts interrupts per queue.
#[derive(Default)]
pub(crate) struct CountingInterrupt {
    pub queues: [AtomicUsize; 2],
    pub config: AtomicUsize,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger_queue(&self, queue: u16) {
        if let Some(c) = self.queues.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn trigger_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingInterrupt {
    pub fn count(&self, queue: u16) -> usize {
        self.queues[usize::from(queue)].load(Ordering::SeqCst)
    }
}

/// A seqpacket socket pair: (device side, test side), non-blocking.
pub(super) fn socket_pair() -> (OwnedFd, OwnedFd) {
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
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by no one else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Sends one message on `fd`; false if it would block.
pub(super) fn send_on(fd: &OwnedFd, data: &[u8]) -> bool {
    // SAFETY: `data` is valid for reads of its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "send: {e}");
        return false;
    }
    assert_eq!(n as usize, data.len());
    true
}

/// Receives one message from `fd`, if there is one.
pub(super) fn recv_on(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 17];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "recv: {e}");
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// An Ethernet frame of `len` bytes (broadcast, test EtherType), its
/// payload a pattern seeded by `seed`.
pub(super) fn ether_frame(len: usize, seed: u8) -> Vec<u8> {
    assert!(len >= 14);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, seed]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// A vnet header (num_buffers 0, as a driver sends it).
pub(super) fn vnet_hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    h.extend_from_slice(&hdr_len.to_le_bytes());
    h.extend_from_slice(&gso_size.to_le_bytes());
    h.extend_from_slice(&[0; 6]);
    h
}

/// Every feature a full-featured driver takes (all offered).
pub(super) const ALL: u64 = FEATURES;

/// Both queues of a device, served in the test's thread.
pub(super) struct Rig {
    pub rx: Driver,
    pub tx: Driver,
    pub worker: Worker,
    /// The host end of the stand-in TAP (None over a real TAP).
    pub peer: Option<OwnedFd>,
    pub irq: Arc<CountingInterrupt>,
    pub stats: Arc<NetStats>,
}

impl Rig {
    /// A device over a stand-in TAP, as if the driver accepted `acked`.
    pub fn new(acked: u64) -> Rig {
        let (dev, peer) = socket_pair();
        Rig::build(Tap::stand_in(dev), Some(peer), acked, 256)
    }

    pub fn with_queue_size(acked: u64, size: u16) -> Rig {
        let (dev, peer) = socket_pair();
        Rig::build(Tap::stand_in(dev), Some(peer), acked, size)
    }

    pub fn build(tap: Tap, peer: Option<OwnedFd>, acked: u64, size: u16) -> Rig {
        let mem = guest_memory(MEM_SIZE);
        let (rx, mut rxq) = Driver::new(&mem, GuestAddress(0), size, RX_DATA.0, RX_DATA.1);
        let (tx, mut txq) = Driver::new(&mem, GuestAddress(0x4000), size, TX_DATA.0, TX_DATA.1);
        let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
        rxq.set_event_idx(event_idx);
        txq.set_event_idx(event_idx);
        let irq = Arc::new(CountingInterrupt::default());
        let stats = Arc::new(NetStats::default());
        let worker = Worker {
            io: Io {
                mem,
                tap: Arc::new(tap),
                stats: stats.clone(),
                interrupt: irq.clone(),
            },
            rx: Rx::new(
                Ring::new(RX_QUEUE, rxq),
                acked & VIRTIO_NET_F_MRG_RXBUF != 0,
                Offloads::from_features(acked),
            ),
            tx: Tx::new(Ring::new(TX_QUEUE, txq), HostOffloads::from_features(acked)),
        };
        Rig {
            rx,
            tx,
            worker,
            peer,
            irq,
            stats,
        }
    }

    pub fn run_tx(&mut self) -> bool {
        self.worker.tx.process(&self.worker.io)
    }

    pub fn run_rx(&mut self) -> RxState {
        self.worker.rx.process(&self.worker.io)
    }

    pub fn peer(&self) -> &OwnedFd {
        self.peer.as_ref().expect("a stand-in TAP")
    }

    /// The host sends `frame` (vnet header included) towards the guest.
    pub fn host_send(&self, frame: &[u8]) -> bool {
        send_on(self.peer(), frame)
    }

    /// What the guest sent, as the host sees it.
    pub fn host_recv(&self) -> Option<Vec<u8>> {
        recv_on(self.peer())
    }

    /// Offers one receive chain of `len` bytes in one buffer.
    pub fn rx_buffer(&mut self, len: u32) -> (u16, GuestAddress) {
        let addr = self.rx.alloc(u64::from(len));
        (self.rx.submit(&[(addr, len, true)]), addr)
    }

    /// Queues `data` for transmission, cut into buffers of the given sizes
    /// (the last takes the rest).
    pub fn transmit(&mut self, data: &[u8], cuts: &[usize]) -> u16 {
        let mut bufs = Vec::new();
        let mut rest = data;
        for &cut in cuts {
            let (a, b) = rest.split_at(cut.min(rest.len()));
            bufs.push(a);
            rest = b;
        }
        bufs.push(rest);
        let mut descs = Vec::new();
        for b in bufs.into_iter().filter(|b| !b.is_empty()) {
            let addr = self.tx.alloc(b.len() as u64);
            self.tx.write_bytes(addr, b);
            descs.push((addr, b.len() as u32, false));
        }
        self.tx.submit(&descs)
    }

    pub fn stats(&self) -> NetStatsSnapshot {
        self.stats.snapshot()
    }

    pub fn queue(&self, index: u16) -> &virtio_queue::Queue {
        if index == RX_QUEUE {
            &self.worker.rx.ring.queue
        } else {
            &self.worker.tx.ring.queue
        }
    }

    pub fn next_avail(&self, index: u16) -> u16 {
        self.queue(index).next_avail()
    }
}
