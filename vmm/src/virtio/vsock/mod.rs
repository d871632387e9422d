//! virtio-vsock (virtio 1.x spec, section 5.10), done in userspace: guest
//! stream sockets become host Unix-socket connections, the way
//! Firecracker's users drive it.
//!
//! ```text
//! Vsock (device.rs)   features, config space (guest_cid), activate/reset
//!   └─ one worker thread (worker.rs), started with the device so that it
//!      never inherits a vCPU's seccomp filter; epoll on the doorbells,
//!      the listening socket and every connection's stream
//!        ├─ muxer.rs   the connection table; packets in, packets out;
//!        │             host connections (`CONNECT <port>\n` → `OK <port>\n`)
//!        ├─ conn.rs    one connection: state, credit both ways, buffering
//!        ├─ unix.rs    non-blocking Unix connect, CONNECT line parsing
//!        └─ packet.rs  the 44-byte header
//! ```
//!
//! Host to guest: a program connects to the Unix socket `PATH` and writes
//! `CONNECT <port>\n`; the device sends the guest a REQUEST for that port
//! and, on RESPONSE, answers `OK <hostport>\n` (the host-side port it
//! chose), then splices the stream. Guest to host: a guest connection to
//! CID 2 port P becomes a connection to the Unix socket `PATH_P`.
//!
//! Flow control is the spec's credit scheme: the device tells the guest
//! it can hold [`BUF_ALLOC`] bytes per connection and counts what it has
//! passed on (`fwd_cnt`); a guest that sends beyond that credit is reset.
//! Towards the guest it sends no more than the guest's own credit allows.
//! Memory per connection is thus bounded by `BUF_ALLOC`, and the number of
//! connections by [`MAX_CONNS`].

mod conn;
mod device;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod muxer;
mod packet;
mod unix;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use device::{Vsock, QUEUE_SIZE};
pub use packet::{Header, HEADER_LEN};

/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// Bytes the device buffers per connection for data on its way from the
/// guest to the host stream: the credit the guest gets.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload of one packet in either direction.
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// Most connections open at once; more are refused with RST.
pub const MAX_CONNS: usize = 1024;
/// Most accepted host connections still writing their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a host connection may take to send `CONNECT`, and the guest
/// to answer a REQUEST or to acknowledge a SHUTDOWN with RST.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the device is given to the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 ..= u32::MAX - 1).
    pub cid: u32,
    /// The host Unix socket; guest-initiated connections go to `PATH_P`.
    pub socket: PathBuf,
}

impl VsockConfig {
    /// Checks a context ID: 0, 1 and 2 are reserved (hypervisor, local,
    /// host), u32::MAX is VMADDR_CID_ANY.
    pub fn check_cid(cid: u64) -> Result<u32, String> {
        match u32::try_from(cid) {
            Ok(c) if (3..u32::MAX).contains(&c) => Ok(c),
            _ => Err(format!(
                "vsock guest CID {cid} is invalid: it must be between 3 and {}",
                u32::MAX - 1
            )),
        }
    }
}

/// Errors from setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket path {0} is too long for a Unix socket (at most 100 bytes)")]
    PathTooLong(PathBuf),
    #[error("vsock socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the vsock worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// Counters of the device, updated by its worker.
#[derive(Debug, Default)]
pub struct VsockStats {
    /// Packets and payload bytes given to the guest.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets and payload bytes taken from the guest.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Connections established, either way.
    pub connections: AtomicU64,
    /// Connections reset by the device (peer gone, protocol violation,
    /// refused).
    pub resets: AtomicU64,
    /// Malformed chains or packets.
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`VsockStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStatsSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub connections: u64,
    pub resets: u64,
    pub errors: u64,
}

impl VsockStats {
    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> VsockStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockStatsSnapshot {
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            connections: get(&self.connections),
            resets: get(&self.resets),
            errors: get(&self.errors),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
