//! Receive (5.1.6.3, 5.1.6.4): frames from the TAP into receiveq buffers.
//!
//! A frame is read from the TAP only when the guest has at least one
//! buffer available, into one host buffer of the largest frame size (the
//! TAP gives no way to learn a frame's length before reading it). It is
//! then placed: without VIRTIO_NET_F_MRG_RXBUF in a single chain, which
//! must hold header and frame; with it across as many chains as needed,
//! `num_buffers` in the first header saying how many, all published at
//! once (see `virtio::ring`).
//!
//! When the buffers run out mid-frame, every chain taken for it goes back
//! to the available ring (the next-available index is rewound), the frame
//! stays pending in the host buffer, and the device asks to be notified
//! when the driver adds more. Nothing more is read from the TAP until
//! then: a guest that never refills costs one frame of memory and no CPU,
//! and the host kernel bounds what queues up in the TAP (txqueuelen).
//!
//! Dropped (and counted): frames shorter than a header plus an Ethernet
//! header, longer than [`MAX_FRAME_LEN`], using an offload the guest did
//! not accept, bigger than the chain in front without mergeable buffers,
//! or bigger than the whole ring. Malformed chains (device-readable
//! buffers, outside guest memory, a first chain shorter than the header)
//! are returned with used length 0; one found in the middle of a frame
//! takes that frame's chains back with it, empty.

use std::io::ErrorKind;

use virtio_queue::QueueT;

use super::tap::Offloads;
use super::worker::Io;
use super::*;
use crate::virtio::chain::{self, Dir, Region};
use crate::virtio::ring::Ring;

/// Most frames (or attempts) per call of [`Rx::process`], so that the
/// worker gets back to its other events.
pub(super) const RX_BUDGET: usize = 64;

/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_OFFSET: u64 = 10;

/// Why [`Rx::process`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RxState {
    /// The TAP had nothing more to read.
    TapEmpty,
    /// The guest has no (or not enough) buffers; it will be notified about.
    NeedBuffers,
    /// The budget ran out with work left.
    More,
}

enum Delivery {
    Done,
    Dropped,
    NoRoom,
}

enum ReadResult {
    Frame(usize),
    Empty,
    /// Nothing usable this time (a frame dropped, or a signal): read again.
    Again,
}

/// The receive side of the device.
pub(super) struct Rx {
    pub ring: Ring,
    mergeable: bool,
    offloads: Offloads,
    /// One frame with its header, plus one byte to notice longer ones.
    frame: Vec<u8>,
    /// Length of the frame in `frame` not yet given to the guest.
    pending: Option<usize>,
    /// Chains holding the frame being placed: (head, bytes).
    placed: Vec<(u16, u32)>,
    read_error_logged: bool,
}

impl Rx {
    pub(super) fn new(ring: Ring, mergeable: bool, offloads: Offloads) -> Rx {
        Rx {
            ring,
            mergeable,
            offloads,
            frame: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN + 1],
            pending: None,
            placed: Vec::new(),
            read_error_logged: false,
        }
    }

    /// True while a frame waits for guest buffers.
    #[cfg(test)]
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Moves frames from the TAP to the guest until the TAP is empty, the
    /// buffers run out, or the budget does; then interrupts if needed.
    pub(super) fn process(&mut self, io: &Io) -> RxState {
        self.ring.disable_notification(&io.mem);
        let mut state = RxState::More;
        for _ in 0..RX_BUDGET {
            let len = match self.pending {
                Some(len) => len,
                None => {
                    if !self.ring.has_available(&io.mem) {
                        if self.ring.notify_after_current(&io.mem) {
                            continue;
                        }
                        state = RxState::NeedBuffers;
                        break;
                    }
                    match self.read(io) {
                        ReadResult::Frame(len) => len,
                        ReadResult::Again => continue,
                        ReadResult::Empty => {
                            state = RxState::TapEmpty;
                            break;
                        }
                    }
                }
            };
            self.pending = Some(len);
            match self.deliver(io, len) {
                Delivery::Done | Delivery::Dropped => self.pending = None,
                Delivery::NoRoom => {
                    if self.ring.notify_after_current(&io.mem) {
                        continue;
                    }
                    state = RxState::NeedBuffers;
                    break;
                }
            }
        }
        self.ring.complete(&io.mem, io.interrupt.as_ref());
        state
    }

    fn read(&mut self, io: &Io) -> ReadResult {
        match io.tap.read(&mut self.frame) {
            Ok(n) if n >= self.frame.len() || n < VNET_HDR_LEN + MIN_FRAME_LEN => {
                log::debug!("virtio-net: dropped a {n}-byte frame from the TAP");
                NetStats::add(&io.stats.rx_dropped, 1);
                ReadResult::Again
            }
            Ok(n) => ReadResult::Frame(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => ReadResult::Empty,
            Err(e) if e.kind() == ErrorKind::Interrupted => ReadResult::Again,
            Err(e) => {
                if !self.read_error_logged {
                    log::warn!("virtio-net: reading TAP {}: {e}", io.tap.name());
                    self.read_error_logged = true;
                }
                ReadResult::Empty
            }
        }
    }

    /// Places the `len`-byte frame (header included) in `frame`.
    fn deliver(&mut self, io: &Io, len: usize) -> Delivery {
        let mem = &io.mem;
        let Some(frame) = self.frame.get_mut(..len) else {
            return Delivery::Dropped;
        };
        if !fix_header(frame, self.offloads) {
            log::debug!("virtio-net: dropped a frame with offloads the guest did not accept");
            NetStats::add(&io.stats.rx_dropped, 1);
            return Delivery::Dropped;
        }
        let frame = &*frame;
        let ring = &mut self.ring;
        let placed = &mut self.placed;
        placed.clear();
        // Where to rewind to: past any chain already returned.
        let mut start = ring.queue.next_avail();
        let mut first: Vec<Region> = Vec::new();
        let mut written = 0usize;
        let mut popped = 0usize;
        while written < len {
            let size = usize::from(ring.queue.size());
            if placed.len() >= size {
                // Even the whole ring cannot hold it.
                ring.queue.set_next_avail(start);
                NetStats::add(&io.stats.rx_dropped, 1);
                return Delivery::Dropped;
            }
            // A driver adding bad chains as fast as they are returned
            // does not keep the device here: try again next round.
            popped += 1;
            if popped > 2 * size {
                ring.queue.set_next_avail(start);
                return Delivery::NoRoom;
            }
            let Some(chain) = ring.pop(mem) else {
                ring.queue.set_next_avail(start);
                return Delivery::NoRoom;
            };
            let head = chain.head_index();
            let bufs = match chain::collect(chain, mem, Dir::Writable, u64::MAX) {
                Ok(b) if placed.is_empty() && b.len < VNET_HDR_LEN as u64 => {
                    Err("shorter than the header".to_string())
                }
                Ok(b) => Ok(b),
                Err((_, e)) => Err(e.to_string()),
            };
            let bufs = match bufs {
                Ok(b) => b,
                Err(why) => {
                    log::debug!("virtio-net: receive chain {head} refused: {why}");
                    NetStats::add(&io.stats.bad_chains, 1);
                    ring.add_used(head, 0);
                    if !placed.is_empty() {
                        // The frame cannot be told apart from the bad chain: give up.
                        for (h, _) in placed.drain(..) {
                            ring.add_used(h, 0);
                        }
                        NetStats::add(&io.stats.rx_dropped, 1);
                        return Delivery::Dropped;
                    }
                    start = ring.queue.next_avail();
                    continue;
                }
            };
            if !self.mergeable && bufs.len < len as u64 {
                // Left for the next, smaller frame.
                ring.queue.set_next_avail(start);
                log::debug!(
                    "virtio-net: {len}-byte frame does not fit a {}-byte buffer",
                    bufs.len
                );
                NetStats::add(&io.stats.rx_dropped, 1);
                return Delivery::Dropped;
            }
            // What is left of the frame, or all the chain holds.
            let take = (len - written).min(usize::try_from(bufs.len).unwrap_or(usize::MAX));
            let data = frame.get(written..written + take).unwrap_or(&[]);
            if chain::write_stream(mem, &bufs.regions, 0, data) != Some(take) {
                // Checked memory refused a write: return everything empty.
                NetStats::add(&io.stats.bad_chains, 1);
                ring.add_used(bufs.head, 0);
                for (h, _) in placed.drain(..) {
                    ring.add_used(h, 0);
                }
                NetStats::add(&io.stats.rx_dropped, 1);
                return Delivery::Dropped;
            }
            // `take <= MAX_FRAME_LEN + VNET_HDR_LEN`, far below u32::MAX.
            placed.push((bufs.head, take as u32));
            written += take;
            if first.is_empty() {
                first = bufs.regions;
            }
        }
        // At most a queue's worth of chains: fits a u16.
        let count = placed.len() as u16;
        if chain::write_stream(mem, &first, NUM_BUFFERS_OFFSET, &count.to_le_bytes()) != Some(2) {
            for (h, _) in placed.drain(..) {
                ring.add_used(h, 0);
            }
            NetStats::add(&io.stats.rx_dropped, 1);
            return Delivery::Dropped;
        }
        for (h, n) in placed.drain(..) {
            ring.add_used(h, n);
        }
        NetStats::add(&io.stats.rx_frames, 1);
        NetStats::add(&io.stats.rx_bytes, (len - VNET_HDR_LEN) as u64);
        Delivery::Done
    }
}

/// Checks the header the TAP put in front of a frame against what the
/// guest accepted, and clears flags it was not offered. False: drop it.
pub(super) fn fix_header(frame: &mut [u8], offloads: Offloads) -> bool {
    let Some([flags, gso, ..]) = frame.get_mut(..VNET_HDR_LEN) else {
        return false;
    };
    let ecn = *gso & VIRTIO_NET_HDR_GSO_ECN != 0;
    let gso_ok = match *gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => !ecn,
        VIRTIO_NET_HDR_GSO_TCPV4 => offloads.tso4 && (!ecn || offloads.ecn),
        VIRTIO_NET_HDR_GSO_TCPV6 => offloads.tso6 && (!ecn || offloads.ecn),
        _ => false,
    };
    let csum_ok = *flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || offloads.csum;
    // DATA_VALID may be set whatever the guest accepted (spec errata to
    // 5.1.6.4.1); anything else (RSC_INFO) was not offered.
    *flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID;
    gso_ok && csum_ok
}
