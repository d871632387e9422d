//! Host side of the network tests: a network namespace per test (deleted
//! when the guard drops, even when the test fails), TAP devices inside it,
//! AF_PACKET sockets opened inside it, the probe's own frame format
//! (guests/probe/README.md, "net frames") with its pattern and FNV, and the
//! peer that talks to the probe's `net` check over one TAP.
//!
//! Nothing here touches the host's own interfaces: every device, address,
//! socket and process lives in the namespace.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Outcome;

// The namespace, the sockets, the frames and the peer: in a file of its
// own so that the benchmarks (bench/src/net.rs) compile the same code.
#[path = "net_peer/mod.rs"]
mod peer;
pub use peer::*;

// ---- a run in a namespace of its own ----

/// One NIC: the TAP in the namespace, its address there, the guest's.
#[derive(Clone, Copy, Debug)]
pub struct Nic {
    pub tap: &'static str,
    pub host: &'static str,
    pub host_ip: &'static str,
    pub guest_ip: &'static str,
    pub mac: &'static str,
}

pub const NIC0: Nic = Nic {
    tap: "tap0",
    host: "10.0.2.2/24",
    host_ip: "10.0.2.2",
    guest_ip: "10.0.2.15",
    mac: "52:54:00:12:34:56",
};
pub const NIC1: Nic = Nic {
    tap: "tap1",
    host: "10.0.3.2/24",
    host_ip: "10.0.3.2",
    guest_ip: "10.0.3.15",
    mac: "52:54:00:12:34:57",
};

pub struct Run {
    pub out: Outcome,
    pub peers: Vec<PeerReport>,
}

/// Creates a namespace with a TAP per NIC, starts a peer on each (`peer`
/// configures it), runs the VMM command `vmm` builds (it must run inside
/// the namespace: `NetNs::command`) with a time limit, stops the peers and
/// deletes the namespace.
pub fn run_in_namespace(
    nics: &[Nic],
    vmm: impl FnOnce(&NetNs) -> Command,
    limit: Duration,
    peer: impl Fn(&Nic, &NetNs) -> PeerConfig,
) -> Run {
    let ns = NetNs::new().expect("create a network namespace");
    for n in nics {
        ns.add_tap(n.tap, n.host).expect("create the TAP");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let peers: Vec<_> = nics
        .iter()
        .map(|n| {
            let sock = ns
                .packet_socket(n.tap)
                .expect("AF_PACKET socket in the namespace");
            spawn_peer(sock, peer(n, &ns), stop.clone())
        })
        .collect();
    let out = super::run_with_limit(vmm(&ns), limit);
    stop.store(true, Ordering::Relaxed);
    let peers = peers
        .into_iter()
        .map(|p| p.join().expect("peer thread"))
        .collect();
    Run { out, peers }
}

/// `PROBE <topic> k=v ...` lines as maps (in output order).
pub use super::blk::lines as facts;
