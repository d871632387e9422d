//! Hostile input from both sides: malformed chains come back with used
//! length 0 (or not at all when their head is no descriptor), bad frames
//! are dropped and counted, and neither stalls the device nor makes it
//! spin or buffer without bound.

use vm_memory::{Address, GuestAddress};

use super::driver::{F_NEXT, F_WRITE};
use super::*;

/// Far outside guest memory.
const OUTSIDE: GuestAddress = GuestAddress(1 << 40);

fn tx_frame(len: usize) -> Vec<u8> {
    let mut f = vnet_hdr(0, 0, 0, 0);
    f.extend(ether_frame(len, 1));
    f
}

fn assert_all_empty(d: &driver::Driver) {
    assert!(
        d.used_all().iter().all(|&(_, len)| len == 0),
        "{:?}",
        d.used_all()
    );
}

#[test]
fn tx_short_and_oversized_frames() {
    let mut r = Rig::new(ALL);
    r.transmit(&tx_frame(14)[..VNET_HDR_LEN], &[]);
    r.transmit(&tx_frame(14)[..VNET_HDR_LEN + 13], &[4]);
    r.transmit(&tx_frame(MAX_FRAME_LEN + 1), &[VNET_HDR_LEN]);
    r.transmit(&tx_frame(MAX_FRAME_LEN + 1000), &[1000, 1000]);
    let biggest = tx_frame(MAX_FRAME_LEN);
    r.transmit(&biggest, &[VNET_HDR_LEN]);
    r.run_tx();
    assert_eq!(r.host_recv(), Some(biggest));
    assert_eq!(r.host_recv(), None);
    assert_eq!(r.stats().bad_chains, 4);
    assert_eq!(r.tx.used_idx(), 5);
    assert_all_empty(&r.tx);
}

#[test]
fn tx_chains_pointing_the_wrong_way_or_outside() {
    let mut r = Rig::new(ALL);
    let f = tx_frame(100);
    let a = r.tx.alloc(f.len() as u64);
    r.tx.write_bytes(a, &f);
    let len = f.len() as u32;
    r.tx.submit(&[(a, len, true)]);
    r.tx.submit(&[(a, 12, false), (a.unchecked_add(12), len - 12, true)]);
    r.tx.submit(&[(a, 12, false), (OUTSIDE, len - 12, false)]);
    r.tx.submit(&[(GuestAddress(u64::MAX - 4), 64, false)]);
    let end = GuestAddress((MEM_SIZE - 50) as u64);
    r.tx.submit(&[(a, 12, false), (end, 100, false)]);
    r.tx.submit(&[(a, 12, false), (a, u32::MAX, false)]);
    r.run_tx();
    assert_eq!(r.host_recv(), None);
    assert_eq!(r.stats().bad_chains, 6);
    assert_eq!(r.tx.used_idx(), 6);
    assert_all_empty(&r.tx);
}

#[test]
fn tx_broken_chains() {
    let mut r = Rig::new(ALL);
    let f = tx_frame(100);
    let a = r.tx.alloc(f.len() as u64);
    r.tx.write_bytes(a, &f);
    // 10 -> 11 -> 10 -> ...
    r.tx.write_desc(10, a.0, 12, F_NEXT, 11);
    r.tx.write_desc(11, a.0 + 12, 100, F_NEXT, 10);
    r.tx.make_available(10);
    // Next index out of the table.
    r.tx.write_desc(20, a.0, 112, F_NEXT, 300);
    r.tx.make_available(20);
    // A head that is no descriptor: nothing can be returned.
    r.tx.make_available(999);
    // Through the whole table and round again.
    for i in 30..256u16 {
        r.tx.write_desc(i, a.0, 1, F_NEXT, if i == 255 { 30 } else { i + 1 });
    }
    r.tx.make_available(30);
    let good = r.transmit(&f, &[]);
    r.run_tx();
    assert_eq!(r.host_recv(), Some(f));
    assert_eq!(r.host_recv(), None);
    let used = r.tx.used_all();
    assert_eq!(used, vec![(10, 0), (20, 0), (30, 0), (u32::from(good), 0)]);
    // 999 is counted too, though it cannot be returned.
    assert_eq!(r.stats().bad_chains, 4);
}

#[test]
fn tx_avail_index_far_ahead_does_not_spin() {
    let mut r = Rig::new(ALL);
    r.transmit(&tx_frame(60), &[]);
    r.tx.set_avail_idx(1000);
    assert!(!r.run_tx());
    assert_eq!(r.tx.used_idx(), 0);
    r.tx.set_avail_idx(1);
    r.run_tx();
    assert_eq!(r.tx.used_idx(), 1);
}

#[test]
fn tx_flood_is_served_in_bounded_rounds() {
    let mut r = Rig::new(ALL);
    let f = tx_frame(60);
    let mut sent = 0u64;
    for _round in 0..40 {
        for _ in 0..256 {
            r.transmit(&f, &[]);
        }
        // Each call returns after at most one queue's worth.
        r.run_tx();
        while r.host_recv().is_some() {
            sent += 1;
        }
        r.tx.free_all();
    }
    assert_eq!(sent, 40 * 256);
    assert_eq!(r.stats().tx_frames, sent);
}

#[test]
fn rx_bad_chains_are_returned_empty_and_skipped() {
    let mut r = Rig::new(ALL & !VIRTIO_NET_F_MRG_RXBUF);
    let a = r.rx.alloc(2048);
    let readable = r.rx.submit(&[(a, 2048, false)]);
    let mixed =
        r.rx.submit(&[(a, 12, true), (a.unchecked_add(12), 2000, false)]);
    let outside = r.rx.submit(&[(OUTSIDE, 2048, true)]);
    let tiny = r.rx.submit(&[(a, 8, true)]);
    let empty = r.rx.submit(&[(a, 0, true)]);
    r.rx.write_desc(200, a.0, 2048, F_WRITE | F_NEXT, 200);
    r.rx.make_available(200);
    let (good, addr) = r.rx_buffer(2048);
    let f = {
        let mut f = vnet_hdr(0, 0, 0, 0);
        f.extend(ether_frame(500, 3));
        f
    };
    r.host_send(&f);
    r.run_rx();
    let used = r.rx.used_all();
    let bad = [readable, mixed, outside, tiny, empty, 200];
    assert_eq!(used.len(), bad.len() + 1);
    for (i, h) in bad.iter().enumerate() {
        assert_eq!(used[i], (u32::from(*h), 0));
    }
    assert_eq!(used[bad.len()], (u32::from(good), f.len() as u32));
    assert_eq!(
        r.rx.read_bytes(addr.unchecked_add(12), 500),
        f[12..].to_vec()
    );
    let s = r.stats();
    assert_eq!((s.bad_chains, s.rx_frames, s.rx_dropped), (6, 1, 0));
}

#[test]
fn rx_bad_chain_mid_frame_drops_that_frame_only() {
    let mut r = Rig::new(ALL);
    let (h1, _) = r.rx_buffer(1000);
    let a = r.rx.alloc(1000);
    let h2 = r.rx.submit(&[(a, 1000, false)]);
    let rest: Vec<_> = (0..3).map(|_| r.rx_buffer(1000)).collect();
    let mut big = vnet_hdr(0, 0, 0, 0);
    big.extend(ether_frame(2500, 4));
    let mut small = vnet_hdr(0, 0, 0, 0);
    small.extend(ether_frame(100, 5));
    r.host_send(&big);
    r.host_send(&small);
    r.run_rx();
    let used = r.rx.used_all();
    // The bad chain and the chain already holding part of the big frame
    // come back empty; the small frame takes the next chain.
    assert_eq!(used[..2].len(), 2);
    assert!(used[..2].contains(&(u32::from(h1), 0)));
    assert!(used[..2].contains(&(u32::from(h2), 0)));
    assert_eq!(used[2], (u32::from(rest[0].0), small.len() as u32));
    assert_eq!(used.len(), 3);
    let s = r.stats();
    assert_eq!((s.bad_chains, s.rx_dropped, s.rx_frames), (1, 1, 1));
}

#[test]
fn rx_short_and_oversized_frames_from_the_host() {
    let mut r = Rig::new(ALL);
    let bufs: Vec<_> = (0..20).map(|_| r.rx_buffer(4096)).collect();
    r.host_send(&[0u8; 5]);
    r.host_send(&[0u8; VNET_HDR_LEN + 13]);
    let mut huge = vnet_hdr(0, 0, 0, 0);
    huge.extend(ether_frame(MAX_FRAME_LEN + 1, 6));
    r.host_send(&huge);
    let mut ok = vnet_hdr(0, 0, 0, 0);
    ok.extend(ether_frame(14, 7));
    r.host_send(&ok);
    assert_eq!(r.run_rx(), RxState::TapEmpty);
    assert_eq!(
        r.rx.used_all(),
        vec![(u32::from(bufs[0].0), ok.len() as u32)]
    );
    assert_eq!(r.stats().rx_dropped, 3);
}

#[test]
fn rx_frame_bigger_than_the_whole_ring() {
    let mut r = Rig::with_queue_size(ALL, 8);
    let bufs: Vec<_> = (0..8).map(|_| r.rx_buffer(100)).collect();
    let mut big = vnet_hdr(0, 0, 0, 0);
    big.extend(ether_frame(2000, 8));
    let mut small = vnet_hdr(0, 0, 0, 0);
    small.extend(ether_frame(50, 9));
    r.host_send(&big);
    r.host_send(&small);
    r.run_rx();
    assert_eq!(
        r.rx.used_all(),
        vec![(u32::from(bufs[0].0), small.len() as u32)]
    );
    assert_eq!(r.stats().rx_dropped, 1);
}

#[test]
fn rx_never_refilled_reads_nothing() {
    let mut r = Rig::new(ALL);
    let f = {
        let mut f = vnet_hdr(0, 0, 0, 0);
        f.extend(ether_frame(1000, 1));
        f
    };
    let mut queued = 0;
    while r.host_send(&f) {
        queued += 1;
    }
    assert!(queued > 10);
    for _ in 0..1000 {
        assert_eq!(r.run_rx(), RxState::NeedBuffers);
    }
    assert!(!r.worker.rx.has_pending());
    assert_eq!(r.rx.used_idx(), 0);
    assert_eq!(r.irq.count(RX_QUEUE), 0);
    // Everything is still there for when the guest comes back.
    for _ in 0..queued {
        r.rx_buffer(2048);
    }
    while r.run_rx() == RxState::More {}
    assert_eq!(r.rx.used_idx(), queued);
    assert_eq!(r.stats().rx_dropped, 0);
}

#[test]
fn rx_avail_index_far_ahead() {
    let mut r = Rig::new(ALL);
    r.rx_buffer(2048);
    r.rx.set_avail_idx(1000);
    let mut f = vnet_hdr(0, 0, 0, 0);
    f.extend(ether_frame(100, 1));
    r.host_send(&f);
    assert_eq!(r.run_rx(), RxState::NeedBuffers);
    assert_eq!(r.rx.used_idx(), 0);
    // Sane again: the frame kept waiting.
    r.rx.set_avail_idx(1);
    assert_eq!(r.run_rx(), RxState::NeedBuffers);
    assert_eq!(r.rx.used_elem(0).1 as usize, f.len());
}
