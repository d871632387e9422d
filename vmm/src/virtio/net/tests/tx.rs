//! Transmit: frames leave as the driver wrote them, header included, one
//! message each; chains come back with used length 0; interrupts follow
//! the driver's suppression wishes.

use vm_memory::{Address, Bytes};

use super::driver::{F_INDIRECT, F_NEXT};
use super::*;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vnet_hdr(0, 0, 0, 0);
    f.extend(ether_frame(len, seed));
    f
}

#[test]
fn one_frame_goes_out_whole() {
    let mut r = Rig::new(ALL);
    let f = frame(100, 1);
    let head = r.transmit(&f, &[VNET_HDR_LEN]);
    assert!(!r.run_tx());
    assert_eq!(r.host_recv().as_deref(), Some(&f[..]));
    assert_eq!(r.host_recv(), None);
    assert_eq!(r.tx.used_all(), vec![(u32::from(head), 0)]);
    assert_eq!(r.irq.count(TX_QUEUE), 1);
    let s = r.stats();
    assert_eq!(
        (s.tx_frames, s.tx_bytes, s.tx_dropped, s.bad_chains),
        (1, 100, 0, 0)
    );
}

#[test]
fn header_and_frame_in_any_cut() {
    let mut r = Rig::new(ALL);
    let f = frame(1500, 2);
    let cuts: [&[usize]; 5] = [&[], &[5], &[5, 3, 4, 100], &[12, 14, 1], &[1; 30]];
    for c in cuts {
        r.transmit(&f, c);
    }
    r.run_tx();
    for c in cuts {
        assert_eq!(r.host_recv().as_deref(), Some(&f[..]), "cut {c:?}");
    }
    assert_eq!(r.stats().tx_frames, 5);
}

#[test]
fn zero_length_buffers_are_skipped() {
    let mut r = Rig::new(ALL);
    let f = frame(60, 3);
    let a = r.tx.alloc(f.len() as u64);
    r.tx.write_bytes(a, &f);
    let empty = r.tx.alloc(16);
    let (hdr, rest) = (a, a.unchecked_add(VNET_HDR_LEN as u64));
    r.tx.submit(&[
        (empty, 0, false),
        (hdr, VNET_HDR_LEN as u32, false),
        (empty, 0, false),
        (rest, (f.len() - VNET_HDR_LEN) as u32, false),
        (empty, 0, true),
    ]);
    r.run_tx();
    assert_eq!(r.host_recv().as_deref(), Some(&f[..]));
}

#[test]
fn many_frames_one_interrupt() {
    let mut r = Rig::new(ALL & !VIRTIO_RING_F_EVENT_IDX);
    for i in 0..100u8 {
        r.transmit(&frame(64 + usize::from(i), i), &[VNET_HDR_LEN]);
    }
    r.run_tx();
    for i in 0..100u8 {
        assert_eq!(r.host_recv(), Some(frame(64 + usize::from(i), i)));
    }
    assert_eq!(r.tx.used_idx(), 100);
    assert_eq!(r.irq.count(TX_QUEUE), 1);
    // Notifications are back on for the next frame.
    assert_eq!(r.tx.used_flags(), 0);
}

#[test]
fn offload_headers_pass_through_when_negotiated() {
    let mut r = Rig::new(ALL);
    let mut f = vnet_hdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        54,
        1448,
    );
    f[6..10].copy_from_slice(&[34, 0, 16, 0]);
    f.extend(ether_frame(3000, 4));
    r.transmit(&f, &[VNET_HDR_LEN]);
    r.run_tx();
    assert_eq!(r.host_recv(), Some(f));
}

#[test]
fn offloads_not_negotiated_are_refused() {
    let acked = ALL & !(VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_ECN);
    let mut r = Rig::new(acked);
    let cases = [
        (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE),
        (0, VIRTIO_NET_HDR_GSO_TCPV4),
        (0, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN),
        (0, VIRTIO_NET_HDR_GSO_UDP),
        (0, 0x42),
        (0, VIRTIO_NET_HDR_GSO_ECN),
    ];
    for (flags, gso) in cases {
        let mut f = vnet_hdr(flags, gso, 54, 1448);
        f.extend(ether_frame(200, 5));
        r.transmit(&f, &[]);
    }
    // TSO6 was negotiated (with its checksum prerequisite not: the
    // kernel would judge the header; the device only checks the type).
    let mut ok = vnet_hdr(0, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428);
    ok.extend(ether_frame(200, 6));
    r.transmit(&ok, &[]);
    r.run_tx();
    assert_eq!(r.host_recv(), Some(ok));
    assert_eq!(r.host_recv(), None);
    assert_eq!(r.stats().bad_chains, cases.len() as u64);
    assert!(r.tx.used_all().iter().all(|&(_, len)| len == 0));
    assert_eq!(r.tx.used_idx(), cases.len() as u16 + 1);
}

#[test]
fn indirect_chains_work() {
    let mut r = Rig::new(ALL);
    let f = frame(300, 7);
    let data = r.tx.alloc(f.len() as u64);
    r.tx.write_bytes(data, &f);
    // A table of three descriptors: header, then the frame in two.
    let table = r.tx.alloc(48);
    let parts = [(0u64, 12u32), (12, 100), (112, (f.len() - 112) as u32)];
    for (i, (off, len)) in parts.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&(data.0 + off).to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        let last = i == parts.len() - 1;
        raw[12..14].copy_from_slice(&(if last { 0u16 } else { F_NEXT }).to_le_bytes());
        raw[14..].copy_from_slice(&(if last { 0u16 } else { i as u16 + 1 }).to_le_bytes());
        r.tx.mem
            .write_slice(&raw, table.unchecked_add(16 * i as u64))
            .unwrap();
    }
    r.tx.write_desc(0, table.0, 48, F_INDIRECT, 0);
    r.tx.make_available(0);
    r.run_tx();
    assert_eq!(r.host_recv(), Some(f));
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut r = Rig::new(ALL);
    r.tx.set_used_event(4);
    for i in 0..3 {
        r.transmit(&frame(60, i), &[]);
    }
    r.run_tx();
    assert_eq!(r.irq.count(TX_QUEUE), 0, "used_event 4 not reached");
    // The device asks to hear about the next chain.
    assert_eq!(r.tx.avail_event(), 3);
    for i in 0..3 {
        r.transmit(&frame(60, i), &[]);
    }
    r.run_tx();
    assert_eq!(r.irq.count(TX_QUEUE), 1, "used index passed 4");
    assert_eq!(r.tx.avail_event(), 6);
}

#[test]
fn no_interrupt_flag_is_honoured() {
    let mut r = Rig::new(ALL & !VIRTIO_RING_F_EVENT_IDX);
    r.tx.set_avail_flags(1);
    r.transmit(&frame(60, 1), &[]);
    r.run_tx();
    assert_eq!(r.irq.count(TX_QUEUE), 0);
    r.tx.set_avail_flags(0);
    r.transmit(&frame(60, 2), &[]);
    r.run_tx();
    assert_eq!(r.irq.count(TX_QUEUE), 1);
    assert_eq!(r.tx.used_idx(), 2);
}

#[test]
fn a_full_queue_is_served_to_the_budget() {
    let mut r = Rig::new(ALL);
    for i in 0..256u32 {
        r.transmit(&frame(60, i as u8), &[]);
    }
    assert!(r.run_tx(), "budget reached: more may be waiting");
    assert_eq!(r.tx.used_idx(), 256);
    let mut n = 0;
    while r.host_recv().is_some() {
        n += 1;
    }
    assert_eq!(n, 256);
    assert!(!r.run_tx());
    assert_eq!(r.tx.used_idx(), 256);
}

#[test]
fn host_refusal_is_counted_not_fatal() {
    let mut r = Rig::new(ALL);
    // Fill the stand-in's socket buffer: later frames are refused (EAGAIN).
    let f = frame(60000, 9);
    let mut sent = 0;
    while sent < 64 {
        r.transmit(&f, &[]);
        r.run_tx();
        sent += 1;
        if r.stats().tx_dropped > 0 {
            break;
        }
    }
    let s = r.stats();
    assert!(s.tx_dropped > 0, "the socket never filled");
    assert_eq!(s.tx_frames + s.tx_dropped, sent);
    assert_eq!(r.tx.used_idx() as u64, sent);
    // Once the host reads, frames flow again.
    while r.host_recv().is_some() {}
    r.transmit(&f, &[]);
    r.run_tx();
    assert_eq!(r.host_recv(), Some(f));
}
