//! Transmit (5.1.6.2): transmitq chains to the TAP, one `writev` each,
//! straight from guest memory. The header goes through as the driver
//! wrote it: the host kernel performs the checksum and segmentation it
//! asks for, and refuses (EINVAL) what does not add up.
//!
//! Refused here, returned with used length 0 and counted as bad chains:
//! chains with device-writable buffers, outside guest memory, broken,
//! shorter than a header plus an Ethernet header, longer than
//! [`MAX_FRAME_LEN`] plus the header, or asking for an offload the driver
//! did not negotiate. Frames the kernel refuses are counted as dropped.
//! Every chain's used length is 0: the device writes nothing into it.

use super::worker::Io;
use super::*;
use crate::virtio::chain::{self, Dir};
use crate::virtio::ring::Ring;

/// Most chains per call of [`Tx::process`]: a guest that keeps the queue
/// full cannot keep the worker from its other events.
pub(super) const TX_BUDGET: usize = 256;

/// Offloads the driver may ask of the device on transmit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct HostOffloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub ecn: bool,
}

impl HostOffloads {
    /// From the driver's accepted features.
    pub(super) fn from_features(acked: u64) -> HostOffloads {
        HostOffloads {
            csum: acked & VIRTIO_NET_F_CSUM != 0,
            tso4: acked & VIRTIO_NET_F_HOST_TSO4 != 0,
            tso6: acked & VIRTIO_NET_F_HOST_TSO6 != 0,
            ecn: acked & VIRTIO_NET_F_HOST_ECN != 0,
        }
    }

    /// True if a header with these `flags` and `gso_type` asks only for
    /// what was negotiated.
    pub(super) fn allow(&self, flags: u8, gso_type: u8) -> bool {
        let ecn = gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
        let gso_ok = match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => !ecn,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.tso4 && (!ecn || self.ecn),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.tso6 && (!ecn || self.ecn),
            _ => false,
        };
        gso_ok && (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || self.csum)
    }
}

/// The transmit side of the device.
pub(super) struct Tx {
    pub ring: Ring,
    offloads: HostOffloads,
}

impl Tx {
    pub(super) fn new(ring: Ring, offloads: HostOffloads) -> Tx {
        Tx { ring, offloads }
    }

    /// Sends what the driver queued, up to the budget, then interrupts if
    /// needed. True when the budget ran out with chains left.
    pub(super) fn process(&mut self, io: &Io) -> bool {
        let mut handled = 0usize;
        let mut idle_rounds = 0;
        let more = loop {
            self.ring.disable_notification(&io.mem);
            let before = handled;
            while handled < TX_BUDGET {
                let Some(chain) = self.ring.pop(&io.mem) else {
                    break;
                };
                handled += 1;
                let head = chain.head_index();
                let max = (VNET_HDR_LEN + MAX_FRAME_LEN) as u64;
                match chain::collect(chain, &io.mem, Dir::Readable, max) {
                    Ok(bufs) => self.send(io, &bufs),
                    Err((_, e)) => {
                        log::debug!("virtio-net: transmit chain {head} refused: {e}");
                        NetStats::add(&io.stats.bad_chains, 1);
                    }
                }
                self.ring.add_used(head, 0);
            }
            if handled >= TX_BUDGET {
                break true;
            }
            // An available index more than a queue ahead pops nothing yet
            // always looks like more: do not spin on it.
            idle_rounds = if handled == before {
                idle_rounds + 1
            } else {
                0
            };
            if idle_rounds > 1 {
                log::debug!("virtio-net: transmit queue: available ring index is invalid");
                break false;
            }
            if !self.ring.enable_notification(&io.mem) {
                break false;
            }
        };
        self.ring.complete(&io.mem, io.interrupt.as_ref());
        more
    }

    fn send(&self, io: &Io, bufs: &chain::Buffers) {
        let refuse = |why: &str| {
            log::debug!("virtio-net: transmit chain {} refused: {why}", bufs.head);
            NetStats::add(&io.stats.bad_chains, 1);
        };
        if bufs.len < (VNET_HDR_LEN + MIN_FRAME_LEN) as u64 {
            return refuse("shorter than a header and an Ethernet header");
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        if !chain::read_stream(&io.mem, &bufs.regions, 0, &mut hdr) {
            return refuse("header unreadable");
        }
        let [flags, gso_type, ..] = hdr;
        if !self.offloads.allow(flags, gso_type) {
            return refuse("asks for an offload that was not negotiated");
        }
        let Some(iov) = chain::iovecs(&io.mem, &bufs.regions) else {
            return refuse("buffers not backed by guest memory");
        };
        // The guest may change the bytes meanwhile: that only garbles its
        // own frame.
        // SAFETY: the iovecs point into guest memory (checked by
        // `get_slices`), mapped while `io.mem` lives, beyond the call.
        match unsafe { io.tap.writev(&iov) } {
            Ok(_) => {
                NetStats::add(&io.stats.tx_frames, 1);
                NetStats::add(&io.stats.tx_bytes, bufs.len - VNET_HDR_LEN as u64);
            }
            Err(e) => {
                log::debug!("virtio-net: TAP {} refused a frame: {e}", io.tap.name());
                NetStats::add(&io.stats.tx_dropped, 1);
            }
        }
    }
}
