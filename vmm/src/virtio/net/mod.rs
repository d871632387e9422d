//! virtio-net (virtio 1.x spec, section 5.1) over a Linux TAP interface.
//!
//! ```text
//! Net (device.rs)   features, config space (MAC, link status), activate/reset
//!   └─ one worker thread (worker.rs): epoll on the TAP, both doorbells, stop
//!        ├─ tx.rs     TX chains → one writev of header + frame into the TAP
//!        ├─ rx.rs     TAP frames → RX chains (mergeable buffers or not)
//!        └─ tap.rs    /dev/net/tun: TUNSETIFF, vnet header size, offloads
//! ```
//!
//! Chains are checked by `virtio::chain` and returned in batches by
//! `virtio::ring`, both shared with vsock.
//!
//! Queues: receiveq1 is queue 0, transmitq1 queue 1; no control queue and
//! no multiqueue (VIRTIO_NET_F_MQ would need an IFF_MULTI_QUEUE TAP with
//! one fd and one worker per pair; not done yet). Every frame carries the
//! 12-byte `virtio_net_hdr_v1`, which the TAP (IFF_VNET_HDR, header size
//! 12) understands as is: checksum and segmentation offload are the host
//! kernel's; the device passes headers through, after checking them
//! against the offloads the driver negotiated.
//!
//! The TAP is opened by [`Net::new`] and stays open across resets. If the
//! named interface did not exist, TUNSETIFF creates it non-persistent: the
//! kernel removes it when utsuwa closes the fd. utsuwa never deletes an
//! interface itself, so a TAP the user made (persistent) survives.

mod device;
mod rx;
mod tap;
mod tx;
mod worker;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::{Net, FEATURES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use tap::Tap;

/// Feature bits of the network device (5.1.3), as masks.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// VIRTIO_F_RING_INDIRECT_DESC: virtio-queue follows indirect tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// `status` in the configuration space: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), the header in
/// front of every frame in both directions and on the TAP.
pub const VNET_HDR_LEN: usize = 12;
/// Header flags (5.1.6).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// Header GSO types (5.1.6).
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Largest frame (without the vnet header) in either direction: a 64 KiB
/// GSO frame plus room for Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = (64 << 10) + 64;
/// Shortest frame from the TAP worth giving the guest: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random, locally administered, unicast address.
    pub fn random() -> Result<MacAddr, NetError> {
        let mut b = [0u8; 6];
        crate::virtio::rng::fill_random(&mut b).map_err(NetError::Random)?;
        if let Some(first) = b.first_mut() {
            *first = (*first & !0x01) | 0x02;
        }
        Ok(MacAddr(b))
    }

    /// True for a group (multicast or broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = String;

    /// Six hex octets separated by ':' (or '-'); a unicast address.
    fn from_str(text: &str) -> Result<MacAddr, String> {
        let bad = || format!("invalid MAC address '{text}' (expected e.g. 52:54:00:12:34:56)");
        let mut out = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddr(out);
        if mac.is_multicast() {
            return Err(format!("MAC address '{text}' is a multicast address"));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// How a network interface is given to the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The host TAP interface; created (and removed with the VM) if it
    /// does not exist.
    pub tap: String,
    /// The guest's MAC; a random locally administered one if None.
    pub mac: Option<MacAddr>,
}

/// Errors from setting up a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "invalid TAP interface name '{0}': 1 to 15 characters, no '/', '%', ':' or whitespace"
    )]
    TapName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("TAP interface {0} is in use by another process")]
    TapBusy(String),
    #[error("interface {0} exists and is not a TAP")]
    NotATap(String),
    #[error("not allowed to create or attach TAP interface {0} (creating needs CAP_NET_ADMIN; a persistent TAP must be owned by this user)")]
    TapPermission(String),
    #[error("cannot attach TAP interface {name}: {source}")]
    TapAttach {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TAP interface {name} ({op}): {source}")]
    TapSetup {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot get random bytes for a MAC address: {0}")]
    Random(#[source] std::io::Error),
}

/// Counters of one network device, updated by its worker.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames given to the guest, and their bytes (without the header).
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP that did not reach the guest: too short, too
    /// long, with offloads the guest did not accept, or bigger than any
    /// single buffer without mergeable buffers.
    pub rx_dropped: AtomicU64,
    /// Frames the TAP accepted from the guest, and their bytes.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Well-formed frames the host kernel refused (link down, bad offload
    /// header, no memory).
    pub tx_dropped: AtomicU64,
    /// Malformed chains (either queue): returned with used length 0.
    pub bad_chains: AtomicU64,
}

/// A point-in-time copy of [`NetStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub bad_chains: u64,
}

impl NetStats {
    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            bad_chains: get(&self.bad_chains),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
