//! virtio-net: both queues of a hostile driver (from the fuzzer) and
//! frames from the host, through the device's own chain checks, header
//! checks and transmit/receive handlers, over the tests' stand-in TAP (a
//! seqpacket socket pair).
//!
//! Bytes: accepted features (u16, mapped onto the offload, mergeable and
//! EVENT_IDX bits), the receive queue, the transmit queue, up to three
//! host frames (u16 length, bytes; vnet header included), then the payload
//! at `DATA`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use utsuwa_fuzz::{guest_memory, in_memory, write_payload, FuzzQueue, Input};
use virtio_queue::QueueT;
use vmm::fuzzing::net::{self, NetRig};
use vmm::virtio::net::*;
use vmm::virtio::VIRTIO_RING_F_EVENT_IDX;

const FEATURE_BITS: [u64; 12] = [
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_UFO,
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let bits = input.u16();
    let acked = FEATURE_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .fold(0, |acc, (_, f)| acc | f);
    let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
    let mem = guest_memory();
    let Some(rxq) = FuzzQueue::build(&mem, &mut input, 0, event_idx) else {
        return;
    };
    let Some(txq) = FuzzQueue::build(&mem, &mut input, 1, event_idx) else {
        return;
    };
    let mut frames = Vec::new();
    for _ in 0..input.u8() % 4 {
        let len = usize::from(input.u16());
        frames.push(input.bytes(len).to_vec());
    }
    write_payload(&mem, input.rest());

    // The chain checks, on copies of both queues.
    let max_tx = (VNET_HDR_LEN + MAX_FRAME_LEN) as u64;
    for (fq, writable, max) in [(&rxq, true, u64::MAX), (&txq, false, max_tx)] {
        let mut queue = fq.queue();
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            if let Ok((head, regions, len)) = net::collect(chain, &mem, writable, max) {
                assert!(head < fq.size);
                assert!(len <= max);
                assert_eq!(len, regions.iter().map(|&(_, l)| u64::from(l)).sum::<u64>());
                for (addr, l) in regions {
                    assert!(l > 0 && in_memory(&mem, addr, u64::from(l)));
                }
            }
        }
    }

    // The header checks of both directions.
    for frame in &frames {
        let mut f = frame.clone();
        if net::rx_fix_header(&mut f, acked) {
            assert_eq!(
                f[0] & !(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID),
                0
            );
            assert_eq!(&f[1..], &frame[1..]);
        }
        if let [flags, gso, ..] = frame[..] {
            if net::tx_allows(acked, flags, gso) && flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                assert!(acked & VIRTIO_NET_F_CSUM != 0);
            }
        }
    }

    // Both handlers, as the worker runs them.
    let Ok(mut rig) = NetRig::new(mem.clone(), rxq.queue(), txq.queue(), acked) else {
        return;
    };
    for frame in &frames {
        rig.host_send(frame);
    }
    rig.run_tx();
    rig.run_rx();
    rig.run_rx();
    while let Some(frame) = rig.host_recv() {
        assert!(
            frame.len() >= VNET_HDR_LEN + MIN_FRAME_LEN,
            "short frame sent"
        );
        assert!(
            frame.len() <= VNET_HDR_LEN + MAX_FRAME_LEN,
            "long frame sent"
        );
        assert!(
            net::tx_allows(acked, frame[0], frame[1]),
            "offload not negotiated"
        );
    }
    rxq.check_used(&mem);
    txq.check_used(&mem);
    for n in 0..rxq.used_idx(&mem).min(rxq.size) {
        let (_, len) = rxq.used_elem(&mem, n);
        assert!(len as usize <= VNET_HDR_LEN + MAX_FRAME_LEN);
    }
    let stats = rig.stats();
    assert!(stats.tx_frames + stats.tx_dropped <= u64::from(txq.poppable()));
});
