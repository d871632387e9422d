//! The device as the transport sees it: features, configuration space,
//! MAC addresses, the offload mapping, activation, and frames through the
//! worker thread (over a stand-in TAP).

use std::mem::offset_of;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net as raw;
use vm_memory::Address;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::driver::Driver;
use super::*;
use crate::virtio::net::device::cfg;
use crate::virtio::{ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_NET};

fn config(n: &Net) -> Vec<u8> {
    let mut v = vec![0xaa; 32];
    n.read_config(0, &mut v);
    v
}

fn stand_in_net(mac: MacAddr) -> (Net, OwnedFd) {
    let (dev, peer) = socket_pair();
    (Net::with_tap(Tap::stand_in(dev), mac), peer)
}

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

#[test]
fn features_offered() {
    let (n, _peer) = stand_in_net(MAC);
    assert_eq!(n.device_type(), VIRTIO_ID_NET);
    assert_eq!(n.queue_max_sizes(), vec![QUEUE_SIZE, QUEUE_SIZE]);
    let bit = |b: u32| 1u64 << b;
    let want = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_RING_F_INDIRECT_DESC
        | bit(raw::VIRTIO_NET_F_MAC)
        | bit(raw::VIRTIO_NET_F_STATUS)
        | bit(raw::VIRTIO_NET_F_MRG_RXBUF)
        | bit(raw::VIRTIO_NET_F_CSUM)
        | bit(raw::VIRTIO_NET_F_GUEST_CSUM)
        | bit(raw::VIRTIO_NET_F_GUEST_TSO4)
        | bit(raw::VIRTIO_NET_F_GUEST_TSO6)
        | bit(raw::VIRTIO_NET_F_GUEST_ECN)
        | bit(raw::VIRTIO_NET_F_HOST_TSO4)
        | bit(raw::VIRTIO_NET_F_HOST_TSO6)
        | bit(raw::VIRTIO_NET_F_HOST_ECN);
    assert_eq!(n.features(), want);
    assert_eq!(VIRTIO_NET_F_GUEST_UFO, bit(raw::VIRTIO_NET_F_GUEST_UFO));
    assert_eq!(VIRTIO_NET_F_HOST_UFO, bit(raw::VIRTIO_NET_F_HOST_UFO));
    assert_eq!(
        (
            VIRTIO_NET_HDR_GSO_TCPV4,
            VIRTIO_NET_HDR_GSO_TCPV6,
            VIRTIO_NET_HDR_GSO_ECN
        ),
        (
            raw::VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            raw::VIRTIO_NET_HDR_GSO_TCPV6 as u8,
            raw::VIRTIO_NET_HDR_GSO_ECN as u8
        )
    );
    assert_eq!(VNET_HDR_LEN, std::mem::size_of::<raw::virtio_net_hdr_v1>());
}

#[test]
fn config_layout_and_values() {
    assert_eq!(offset_of!(raw::virtio_net_config, mac), cfg::MAC);
    assert_eq!(offset_of!(raw::virtio_net_config, status), cfg::STATUS);
    assert_eq!(
        offset_of!(raw::virtio_net_config, max_virtqueue_pairs),
        cfg::MAX_VIRTQUEUE_PAIRS
    );
    assert_eq!(offset_of!(raw::virtio_net_config, mtu), cfg::LEN);
    let (mut n, _peer) = stand_in_net(MAC);
    let c = config(&n);
    assert_eq!(&c[..6], &MAC.0);
    assert_eq!(&c[6..8], &[1, 0], "link up");
    assert_eq!(&c[8..10], &[1, 0], "one queue pair");
    assert!(c[10..].iter().all(|b| *b == 0));
    let mut two = [0xaa; 2];
    n.read_config(5, &mut two);
    assert_eq!(two, [0x56, 1]);
    for offset in [10, 4095, u64::MAX - 1, u64::MAX] {
        let mut buf = [0xaa; 4];
        n.read_config(offset, &mut buf);
        assert_eq!(buf, [0; 4], "offset {offset:#x}");
    }
    n.write_config(0, &[0xff; 8]);
    n.write_config(u64::MAX, &[0xff; 8]);
    assert_eq!(config(&n), c);
    assert_eq!(n.mac(), MAC);
}

#[test]
fn mac_addresses() {
    let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
    assert_eq!(m, MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
    assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
    assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>(), Ok(m));
    for bad in [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:0f:00",
        "5:54:00:ab:cd:0f",
        "ff:ff:ff:ff:ff:ff",
        "52:54:00:ab:cd:0g",
        "52:54:00:ab:cd:+f",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
    let a = MacAddr::random().unwrap();
    let b = MacAddr::random().unwrap();
    assert_ne!(a, b);
    for m in [a, b] {
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast: {m}");
    }
}

#[test]
fn offloads_follow_what_the_guest_took() {
    use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
    let (csum, t4, t6, ecn) = (
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
    );
    let cases = [
        (0, 0),
        (csum, TUN_F_CSUM),
        (csum | t4, TUN_F_CSUM | TUN_F_TSO4),
        (
            csum | t4 | t6 | ecn,
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
        ),
        // Prerequisites missing (5.1.3.1): what depends on them is off.
        (t4 | t6 | ecn, 0),
        (csum | ecn, TUN_F_CSUM),
        // Host-side (transmit) offloads say nothing about receive.
        (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4, 0),
    ];
    for (acked, want) in cases {
        assert_eq!(
            Offloads::from_features(acked).tun_flags(),
            want,
            "{acked:#x}"
        );
    }
}

/// A device running its worker thread, and the driver's side of it.
struct Live {
    net: Net,
    rx: Driver,
    tx: Driver,
    rx_kick: Arc<EventFd>,
    tx_kick: Arc<EventFd>,
    peer: OwnedFd,
    irq: Arc<CountingInterrupt>,
}

fn live(acked: u64) -> Live {
    let (mut net, peer) = stand_in_net(MAC);
    let rx_kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let tx_kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let irq = Arc::new(CountingInterrupt::default());
    let (rx, tx) = start(&mut net, (&rx_kick, &tx_kick), &irq, acked).unwrap();
    Live {
        net,
        rx,
        tx,
        rx_kick,
        tx_kick,
        peer,
        irq,
    }
}

/// (Re)starts the device on fresh rings; returns the drivers' sides.
fn start(
    net: &mut Net,
    kicks: (&Arc<EventFd>, &Arc<EventFd>),
    irq: &Arc<CountingInterrupt>,
    acked: u64,
) -> Result<(Driver, Driver), crate::virtio::ActivateError> {
    let mem = guest_memory(MEM_SIZE);
    let (rx, rxq) = Driver::new(&mem, GuestAddress(0), 256, RX_DATA.0, RX_DATA.1);
    let (tx, txq) = Driver::new(&mem, GuestAddress(0x4000), 256, TX_DATA.0, TX_DATA.1);
    let queues = vec![
        ActiveQueue {
            index: RX_QUEUE,
            queue: rxq,
            notify: kicks.0.clone(),
        },
        ActiveQueue {
            index: TX_QUEUE,
            queue: txq,
            notify: kicks.1.clone(),
        },
    ];
    net.activate(mem, acked, queues, irq.clone())?;
    Ok((rx, tx))
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn activation_needs_both_queues() {
    let (mut n, _peer) = stand_in_net(MAC);
    let mem = guest_memory(MEM_SIZE);
    let irq = Arc::new(CountingInterrupt::default());
    let kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let q = |index, base| ActiveQueue {
        index,
        queue: Driver::new(&mem, GuestAddress(base), 256, RX_DATA.0, RX_DATA.1).1,
        notify: kick.clone(),
    };
    assert!(n
        .activate(mem.clone(), ALL, vec![q(RX_QUEUE, 0)], irq.clone())
        .is_err());
    assert!(n
        .activate(mem.clone(), ALL, vec![q(TX_QUEUE, 0x4000)], irq.clone())
        .is_err());
    let three = vec![q(RX_QUEUE, 0), q(TX_QUEUE, 0x4000), q(2, 0x8000)];
    assert!(n.activate(mem.clone(), ALL, three, irq.clone()).is_err());
    let both = vec![q(RX_QUEUE, 0), q(TX_QUEUE, 0x4000)];
    assert!(n.activate(mem.clone(), ALL, both, irq).is_ok());
    n.reset();
}

#[test]
fn frames_flow_through_the_worker_thread() {
    let mut l = live(ALL);
    assert_eq!(
        l.net.tap().offload(),
        Offloads::from_features(ALL).tun_flags()
    );
    // Guest to host.
    let mut out = vnet_hdr(0, 0, 0, 0);
    out.extend(ether_frame(500, 1));
    let a = l.tx.alloc(out.len() as u64);
    l.tx.write_bytes(a, &out);
    l.tx.submit(&[(a, out.len() as u32, false)]);
    l.tx_kick.write(1).unwrap();
    wait_until("the transmit chain", || l.tx.used_idx() == 1);
    assert_eq!(recv_on(&l.peer), Some(out));
    assert!(l.irq.count(TX_QUEUE) >= 1);
    // Host to guest: the frame waits in the TAP until a buffer comes.
    let mut inbound = vnet_hdr(0, 0, 0, 0);
    inbound.extend(ether_frame(300, 2));
    assert!(send_on(&l.peer, &inbound));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(l.rx.used_idx(), 0);
    let b = l.rx.alloc(4096);
    l.rx.submit(&[(b, 4096, true)]);
    l.rx_kick.write(1).unwrap();
    wait_until("the received frame", || l.rx.used_idx() == 1);
    assert_eq!(l.rx.used_elem(0).1 as usize, inbound.len());
    assert_eq!(
        l.rx.read_bytes(b.unchecked_add(12), 300),
        inbound[12..].to_vec()
    );
    assert!(l.irq.count(RX_QUEUE) >= 1);
    // A frame arriving while a buffer waits is taken at once.
    let c = l.rx.alloc(4096);
    l.rx.submit(&[(c, 4096, true)]);
    l.rx_kick.write(1).unwrap();
    assert!(send_on(&l.peer, &inbound));
    wait_until("the second frame", || l.rx.used_idx() == 2);
    // Reset stops the worker and clears the offloads; the device restarts.
    l.net.reset();
    assert_eq!(l.net.tap().offload(), 0);
    let fewer = ALL & !VIRTIO_NET_F_GUEST_TSO6;
    (l.rx, l.tx) = start(&mut l.net, (&l.rx_kick, &l.tx_kick), &l.irq, fewer).unwrap();
    assert_eq!(
        l.net.tap().offload(),
        Offloads::from_features(fewer).tun_flags()
    );
    let d = l.rx.alloc(4096);
    l.rx.submit(&[(d, 4096, true)]);
    assert!(send_on(&l.peer, &inbound));
    l.rx_kick.write(1).unwrap();
    wait_until("a frame after the restart", || l.rx.used_idx() == 1);
    let s = l.net.stats().snapshot();
    assert_eq!((s.tx_frames, s.rx_frames), (1, 3));
}

/// CPU time (user + system, in clock ticks) of this process's thread `name`.
fn thread_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            let after = stat.rsplit_once(')').unwrap().1;
            let f: Vec<u64> = after
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            return f[11] + f[12];
        }
    }
    panic!("no thread named {name}");
}

#[test]
fn a_guest_that_never_refills_costs_nothing() {
    let l = live(ALL);
    let name = format!("net{}", l.net.id());
    let mut f = vnet_hdr(0, 0, 0, 0);
    f.extend(ether_frame(1000, 3));
    while send_on(&l.peer, &f) {}
    l.rx_kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_ticks(&name);
    std::thread::sleep(Duration::from_millis(500));
    let spent = thread_ticks(&name) - before;
    assert!(spent <= 2, "the worker spun: {spent} ticks in 0.5 s");
    assert_eq!(l.rx.used_idx(), 0);
}
