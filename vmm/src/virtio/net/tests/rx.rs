//! Receive: frames land whole, in one chain or (mergeable) several with
//! `num_buffers` set, published at once; nothing is read from the TAP
//! without somewhere to put it, and nothing the guest has room for is lost.

use super::*;
use crate::virtio::net::rx::fix_header;

/// What the host hands the device: a header (from the TAP) and a frame.
fn tap_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vnet_hdr(0, 0, 0, 0);
    // A TAP leaves num_buffers as it was: make it visible if kept.
    f[10] = 0xee;
    f[11] = 0xee;
    f.extend(ether_frame(len, seed));
    f
}

/// `f` as the guest should see it with `num_buffers` = `n`.
fn as_received(f: &[u8], n: u16) -> Vec<u8> {
    let mut want = f.to_vec();
    want[10..12].copy_from_slice(&n.to_le_bytes());
    want
}

const NO_MRG: u64 = ALL & !VIRTIO_NET_F_MRG_RXBUF;

#[test]
fn one_frame_one_chain() {
    let mut r = Rig::new(NO_MRG);
    let (head, addr) = r.rx_buffer(1526);
    let f = tap_frame(200, 1);
    assert!(r.host_send(&f));
    // The ring is empty again before the TAP is found empty.
    assert_eq!(r.run_rx(), RxState::NeedBuffers);
    assert_eq!(r.rx.used_all(), vec![(u32::from(head), f.len() as u32)]);
    assert_eq!(r.rx.read_bytes(addr, f.len()), as_received(&f, 1));
    assert_eq!(r.irq.count(RX_QUEUE), 1);
    let s = r.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (1, 200, 0));
}

#[test]
fn one_chain_of_several_buffers() {
    let mut r = Rig::new(NO_MRG);
    let a = r.rx.alloc(12);
    let b = r.rx.alloc(100);
    let c = r.rx.alloc(2000);
    let head =
        r.rx.submit(&[(a, 12, true), (b, 100, true), (c, 2000, true)]);
    let f = tap_frame(1000, 2);
    r.host_send(&f);
    r.run_rx();
    assert_eq!(r.rx.used_all(), vec![(u32::from(head), f.len() as u32)]);
    let mut got = r.rx.read_bytes(a, 12);
    got.extend(r.rx.read_bytes(b, 100));
    got.extend(r.rx.read_bytes(c, f.len() - 112));
    assert_eq!(got, as_received(&f, 1));
}

#[test]
fn mergeable_frame_spans_chains_published_at_once() {
    let mut r = Rig::new(ALL);
    let bufs: Vec<_> = (0..4).map(|_| r.rx_buffer(1000)).collect();
    let f = tap_frame(2500, 3); // 2512 bytes: three chains
    r.host_send(&f);
    r.run_rx();
    let used = r.rx.used_all();
    assert_eq!(
        used,
        vec![
            (u32::from(bufs[0].0), 1000),
            (u32::from(bufs[1].0), 1000),
            (u32::from(bufs[2].0), 512)
        ]
    );
    let mut got = Vec::new();
    for (i, (_, addr)) in bufs.iter().take(3).enumerate() {
        got.extend(r.rx.read_bytes(*addr, used[i].1 as usize));
    }
    assert_eq!(got, as_received(&f, 3));
    assert_eq!(r.irq.count(RX_QUEUE), 1);
    // The fourth chain is still the device's.
    assert_eq!(r.next_avail(RX_QUEUE), 3);
}

#[test]
fn small_frames_take_one_mergeable_chain_each() {
    let mut r = Rig::new(ALL);
    let bufs: Vec<_> = (0..3).map(|_| r.rx_buffer(4096)).collect();
    let frames: Vec<_> = (0..3).map(|i| tap_frame(60 + i, i as u8)).collect();
    for f in &frames {
        r.host_send(f);
    }
    r.rx_buffer(4096);
    assert_eq!(r.run_rx(), RxState::TapEmpty);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            r.rx.used_elem(i as u16),
            (u32::from(bufs[i].0), f.len() as u32)
        );
        assert_eq!(r.rx.read_bytes(bufs[i].1, f.len()), as_received(f, 1));
    }
}

#[test]
fn largest_frame_both_ways() {
    let f = tap_frame(MAX_FRAME_LEN, 5);
    // Mergeable, into 4 KiB chains.
    let mut r = Rig::new(ALL);
    let bufs: Vec<_> = (0..20).map(|_| r.rx_buffer(4096)).collect();
    r.host_send(&f);
    r.run_rx();
    let used = r.rx.used_all();
    assert_eq!(used.len(), f.len().div_ceil(4096));
    let mut got = Vec::new();
    for (i, (_, len)) in used.iter().enumerate() {
        got.extend(r.rx.read_bytes(bufs[i].1, *len as usize));
    }
    assert_eq!(got, as_received(&f, used.len() as u16));
    // One big buffer, as a driver without mergeable buffers posts them.
    let mut r = Rig::new(NO_MRG);
    let (_, addr) = r.rx_buffer(65562 + 64);
    r.host_send(&f);
    r.run_rx();
    assert_eq!(r.rx.used_elem(0).1 as usize, f.len());
    assert_eq!(r.rx.read_bytes(addr, f.len()), as_received(&f, 1));
}

#[test]
fn nothing_is_read_without_buffers_and_nothing_lost() {
    let mut r = Rig::new(ALL);
    let frames: Vec<_> = (0..5).map(|i| tap_frame(100, i)).collect();
    for f in &frames {
        assert!(r.host_send(f));
    }
    assert_eq!(r.run_rx(), RxState::NeedBuffers);
    assert!(
        !r.worker.rx.has_pending(),
        "read a frame with nowhere to put it"
    );
    // Notifications are on, for the refill.
    assert_eq!(r.rx.avail_event(), 0);
    let first: Vec<_> = (0..2).map(|_| r.rx_buffer(2048)).collect();
    assert_eq!(r.run_rx(), RxState::NeedBuffers);
    assert_eq!(r.rx.used_idx(), 2);
    assert!(!r.worker.rx.has_pending());
    assert_eq!(r.rx.avail_event(), 2);
    let rest: Vec<_> = (0..8).map(|_| r.rx_buffer(2048)).collect();
    assert_eq!(r.run_rx(), RxState::TapEmpty);
    assert_eq!(r.rx.used_idx(), 5);
    for (i, (_, addr)) in first.iter().chain(&rest).take(5).enumerate() {
        let f = &frames[i];
        assert_eq!(
            r.rx.read_bytes(*addr, f.len()),
            as_received(f, 1),
            "frame {i}"
        );
    }
    assert_eq!(r.stats().rx_dropped, 0);
}

#[test]
fn mergeable_frame_waits_for_enough_buffers() {
    for event_idx in [true, false] {
        let acked = if event_idx {
            ALL
        } else {
            ALL & !VIRTIO_RING_F_EVENT_IDX
        };
        let mut r = Rig::new(acked);
        let mut bufs: Vec<_> = (0..2).map(|_| r.rx_buffer(1000)).collect();
        let f = tap_frame(2500, 6);
        r.host_send(&f);
        assert_eq!(r.run_rx(), RxState::NeedBuffers);
        assert_eq!(r.rx.used_idx(), 0, "nothing published for a partial frame");
        assert_eq!(r.next_avail(RX_QUEUE), 0, "chains given back");
        assert!(r.worker.rx.has_pending());
        if event_idx {
            assert_eq!(r.rx.avail_event(), 2, "notify on the next chain");
        } else {
            assert_eq!(r.rx.used_flags(), 0, "notifications on");
        }
        // Again: still not enough, still nothing lost.
        assert_eq!(r.run_rx(), RxState::NeedBuffers);
        bufs.push(r.rx_buffer(1000));
        assert_eq!(r.run_rx(), RxState::NeedBuffers);
        assert_eq!(r.rx.used_idx(), 3);
        let mut got = Vec::new();
        for (n, (_, addr)) in bufs.iter().enumerate() {
            got.extend(r.rx.read_bytes(*addr, r.rx.used_elem(n as u16).1 as usize));
        }
        assert_eq!(got, as_received(&f, 3));
        assert!(!r.worker.rx.has_pending());
    }
}

#[test]
fn frame_too_big_for_the_chain_without_mergeable() {
    let mut r = Rig::new(NO_MRG);
    let (head, addr) = r.rx_buffer(300);
    r.host_send(&tap_frame(400, 1));
    let small = tap_frame(100, 2);
    r.host_send(&small);
    r.run_rx();
    // The big frame is dropped, the chain kept for the small one.
    assert_eq!(r.rx.used_all(), vec![(u32::from(head), small.len() as u32)]);
    assert_eq!(r.rx.read_bytes(addr, small.len()), as_received(&small, 1));
    assert_eq!(r.stats().rx_dropped, 1);
}

#[test]
fn interrupts_follow_suppression() {
    let mut r = Rig::new(ALL);
    for _ in 0..10 {
        r.rx_buffer(2048);
    }
    r.rx.set_used_event(5);
    for i in 0..3 {
        r.host_send(&tap_frame(60, i));
    }
    r.run_rx();
    assert_eq!(r.irq.count(RX_QUEUE), 0);
    for i in 0..3 {
        r.host_send(&tap_frame(60, i));
    }
    r.run_rx();
    assert_eq!(r.irq.count(RX_QUEUE), 1);
    let mut r = Rig::new(ALL & !VIRTIO_RING_F_EVENT_IDX);
    r.rx_buffer(2048);
    r.rx.set_avail_flags(1);
    r.host_send(&tap_frame(60, 1));
    r.run_rx();
    assert_eq!((r.rx.used_idx(), r.irq.count(RX_QUEUE)), (1, 0));
}

#[test]
fn headers_are_checked_against_accepted_offloads() {
    let none = Offloads::default();
    let csum = Offloads::from_features(VIRTIO_NET_F_GUEST_CSUM);
    let tso = Offloads::from_features(FEATURES);
    let no_ecn = Offloads::from_features(FEATURES & !VIRTIO_NET_F_GUEST_ECN);
    let (nc, dv) = (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID);
    let (t4, t6, ecn) = (
        VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_ECN,
    );
    // (offloads, flags, gso type, accepted, flags given to the guest)
    let cases = [
        (none, 0, 0, true, 0),
        (none, dv, 0, true, dv),
        (none, dv | 4, 0, true, dv),
        (none, nc, 0, false, 0),
        (csum, nc, 0, true, nc),
        (csum, nc, t4, false, 0),
        (tso, nc, t4, true, nc),
        (tso, nc, t6, true, nc),
        (tso, nc, t4 | ecn, true, nc),
        (no_ecn, nc, t6 | ecn, false, 0),
        (tso, nc, VIRTIO_NET_HDR_GSO_UDP, false, 0),
        (tso, 0, ecn, false, 0),
        (tso, 0, 0x33, false, 0),
    ];
    for (i, (off, flags, gso, ok, out)) in cases.into_iter().enumerate() {
        let mut f = vnet_hdr(flags, gso, 0, 0);
        f.extend(ether_frame(20, 0));
        assert_eq!(fix_header(&mut f, off), ok, "case {i}");
        if ok {
            assert_eq!(f[0], out, "case {i}");
        }
    }
    assert!(!fix_header(&mut [0u8; 5], tso));
}

#[test]
fn offloaded_frames_reach_a_guest_that_took_them() {
    let mut r = Rig::new(ALL);
    let bufs: Vec<_> = (0..4).map(|_| r.rx_buffer(4096)).collect();
    let mut gso = vnet_hdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        66,
        1448,
    );
    gso.extend(ether_frame(9000, 8));
    r.host_send(&gso);
    let mut r2 = Rig::new(ALL & !VIRTIO_NET_F_GUEST_TSO4);
    r2.rx_buffer(4096);
    r2.host_send(&gso);
    r.run_rx();
    r2.run_rx();
    assert_eq!(r.rx.used_idx(), 3);
    assert_eq!(r.rx.read_bytes(bufs[0].1, 12), as_received(&gso[..12], 3));
    assert_eq!((r2.rx.used_idx(), r2.stats().rx_dropped), (0, 1));
}
