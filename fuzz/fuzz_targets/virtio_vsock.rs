//! virtio-vsock: both queues of a hostile driver (packets with any header:
//! unknown operations, CIDs and types, lengths that lie, data beyond the
//! credit, for connections that do or do not exist) through the device's
//! own transmit and receive handlers and connection table, with real Unix
//! sockets on the host side: a service at `PATH_5000` that accepts, writes
//! and may vanish, and a host program that may `CONNECT` to the guest.
//!
//! Bytes: host actions (bit 0: a host program connects with `CONNECT
//! <port>`; bit 1: the service writes to what it accepted; bit 2: it then
//! closes them; bit 3: run the transmit queue again afterwards), the port
//! (u16), the service's byte count (u16), the receive queue, the transmit
//! queue, then the payload at `DATA`.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use utsuwa_fuzz::{guest_memory, write_payload, FuzzQueue, Input};
use vmm::fuzzing::vsock::VsockRig;
use vmm::virtio::vsock::{HEADER_LEN, MAX_CONNS, MAX_PAYLOAD};

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// libFuzzer ends the process with exit(): the scratch folder goes then.
extern "C" fn remove_dir() {
    if let Some(d) = DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

fn dir() -> &'static PathBuf {
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("utsuwa-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        // SAFETY: atexit(3) with a function that stays valid for the whole
        // process and only removes a folder.
        unsafe { atexit(remove_dir) };
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let actions = input.u8();
    let port = input.u16();
    let host_len = usize::from(input.u16() % 8192);
    let mem = guest_memory();
    let Some(rxq) = FuzzQueue::build(&mem, &mut input, 0, false) else {
        return;
    };
    let Some(txq) = FuzzQueue::build(&mem, &mut input, 1, false) else {
        return;
    };
    write_payload(&mem, input.rest());

    let Ok(mut rig) = VsockRig::new(mem.clone(), rxq.queue(), txq.queue(), dir()) else {
        return;
    };
    let mut host_program = None;
    if actions & 1 != 0 {
        if let Ok(mut s) = UnixStream::connect(rig.socket()) {
            let _ = write!(s, "CONNECT {port}\n");
            host_program = Some(s);
        }
    }
    rig.host_events();
    rig.run_tx();
    rig.host_events();
    let mut served = rig.accept_host();
    if actions & 2 != 0 {
        let bytes = vec![0x5a; host_len];
        for s in &mut served {
            let _ = s.set_nonblocking(true);
            let _ = s.write(&bytes);
        }
    }
    if actions & 4 != 0 {
        served.clear();
    }
    rig.host_events();
    rig.run_rx();
    if actions & 8 != 0 {
        rig.run_tx();
        rig.host_events();
    }
    rig.run_rx();

    rxq.check_used(&mem);
    txq.check_used(&mem);
    for n in 0..rxq.used_idx(&mem).min(rxq.size) {
        let (_, len) = rxq.used_elem(&mem, n);
        assert!(
            len == 0 || (HEADER_LEN as u32..=HEADER_LEN as u32 + MAX_PAYLOAD).contains(&len),
            "receive buffer used for {len} bytes"
        );
    }
    let stats = rig.stats();
    assert!(stats.tx_packets <= u64::from(txq.poppable()));
    assert!(rig.connections() <= MAX_CONNS);
    // One RST at most per transmitted packet.
    assert!(rig.pending_resets() <= usize::from(txq.poppable()));
    drop(host_program);
});
