//! Tests of the entropy device: requests served by hand through the
//! worker's handler (the driver side is the net tests' `Driver`), hostile
//! chains, and the threaded path through `activate`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Address, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{Handler, BUDGET};
use super::*;
use crate::virtio::net::tests::driver::{guest_memory, Driver, F_NEXT, F_WRITE};
use crate::virtio::net::tests::CountingInterrupt;
use crate::virtio::{
    ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG, VIRTIO_RING_F_EVENT_IDX,
};

const MEM_SIZE: usize = 8 << 20;
const OUTSIDE: GuestAddress = GuestAddress(1 << 40);

struct Rig {
    drv: Driver,
    handler: Handler,
    irq: Arc<CountingInterrupt>,
    stats: Arc<RngStats>,
}

fn rig(event_idx: bool) -> Rig {
    let mem = guest_memory(MEM_SIZE);
    let (drv, mut queue) = Driver::new(&mem, GuestAddress(0), QUEUE_SIZE, 1 << 20, MEM_SIZE as u64);
    virtio_queue::QueueT::set_event_idx(&mut queue, event_idx);
    let irq = Arc::new(CountingInterrupt::default());
    let stats = Arc::new(RngStats::default());
    let handler = Handler::new(0, queue, mem, stats.clone(), irq.clone());
    Rig {
        drv,
        handler,
        irq,
        stats,
    }
}

/// A fresh buffer of `len` bytes preset to 0xaa.
fn buffer(r: &mut Rig, len: u32) -> GuestAddress {
    let a = r.drv.alloc(u64::from(len));
    r.drv.write_bytes(a, &vec![0xaa; len as usize]);
    a
}

fn untouched(r: &Rig, a: GuestAddress, len: usize) -> bool {
    r.drv.read_bytes(a, len).iter().all(|b| *b == 0xaa)
}

#[test]
fn requests_are_filled_with_fresh_bytes() {
    let mut r = rig(false);
    let (a, b, c) = (buffer(&mut r, 100), buffer(&mut r, 50), buffer(&mut r, 200));
    let head = r
        .drv
        .submit(&[(a, 100, true), (b, 50, true), (c, 200, true)]);
    let d = buffer(&mut r, 350);
    let head2 = r.drv.submit(&[(d, 350, true)]);
    assert!(!r.handler.process());
    assert_eq!(
        r.drv.used_all(),
        vec![(u32::from(head), 350), (u32::from(head2), 350)]
    );
    let mut first = r.drv.read_bytes(a, 100);
    first.extend(r.drv.read_bytes(b, 50));
    first.extend(r.drv.read_bytes(c, 200));
    let second = r.drv.read_bytes(d, 350);
    assert_ne!(first, second);
    // 350 random bytes that are all 0xaa, or with fewer than 200 distinct
    // values, would be astronomically unlikely.
    for bytes in [&first, &second] {
        assert!(!bytes.iter().all(|x| *x == 0xaa));
        let distinct: std::collections::HashSet<_> = bytes.iter().collect();
        assert!(distinct.len() > 150, "{} distinct values", distinct.len());
    }
    assert_eq!(r.irq.count(0), 1);
    let s = r.stats.snapshot();
    assert_eq!((s.requests, s.bytes, s.errors), (2, 700, 0));
}

#[test]
fn a_request_gets_at_most_the_cap() {
    let mut r = rig(false);
    let big = buffer(&mut r, 1 << 20);
    let head = r.drv.submit(&[(big, 1 << 20, true)]);
    let parts: Vec<_> = (0..3).map(|_| buffer(&mut r, 40 << 10)).collect();
    let head2 = r.drv.submit(
        &parts
            .iter()
            .map(|a| (*a, 40 << 10, true))
            .collect::<Vec<_>>(),
    );
    r.handler.process();
    let cap = MAX_REQUEST as u32;
    assert_eq!(
        r.drv.used_all(),
        vec![(u32::from(head), cap), (u32::from(head2), cap)]
    );
    assert!(untouched(
        &r,
        big.unchecked_add(MAX_REQUEST as u64),
        (1 << 20) - MAX_REQUEST
    ));
    assert!(!untouched(&r, big, MAX_REQUEST));
    assert!(untouched(&r, parts[1].unchecked_add(24 << 10), 16 << 10));
    assert!(untouched(&r, parts[2], 40 << 10));
}

#[test]
fn hostile_chains_come_back_empty() {
    let mut r = rig(false);
    let a = buffer(&mut r, 64);
    let readable = r.drv.submit(&[(a, 64, false)]);
    let mixed = r
        .drv
        .submit(&[(a, 32, true), (a.unchecked_add(32), 32, false)]);
    let outside = r.drv.submit(&[(OUTSIDE, 64, true)]);
    let overflow = r.drv.submit(&[(GuestAddress(u64::MAX - 8), 64, true)]);
    let straddle = r
        .drv
        .submit(&[(GuestAddress(MEM_SIZE as u64 - 16), 64, true)]);
    let empty = r.drv.submit(&[(a, 0, true)]);
    r.drv.write_desc(100, a.0, 64, F_WRITE | F_NEXT, 100);
    r.drv.make_available(100);
    r.drv.write_desc(101, a.0, 64, F_WRITE | F_NEXT, 999);
    r.drv.make_available(101);
    r.drv.make_available(999);
    r.handler.process();
    let bad = [
        readable, mixed, outside, overflow, straddle, empty, 100, 101,
    ];
    let want: Vec<_> = bad.iter().map(|h| (u32::from(*h), 0)).collect();
    assert_eq!(r.drv.used_all(), want);
    assert!(untouched(&r, a, 64));
    assert_eq!(r.stats.snapshot().errors, bad.len() as u64 + 1);
    // Still serving.
    let b = buffer(&mut r, 16);
    r.drv.submit(&[(b, 16, true)]);
    r.handler.process();
    assert_eq!(r.drv.used_elem(bad.len() as u16).1, 16);
}

#[test]
fn budget_and_bad_avail_index() {
    let mut r = rig(true);
    let a = buffer(&mut r, 16);
    for _ in 0..QUEUE_SIZE {
        r.drv.submit(&[(a, 16, true)]);
    }
    assert_eq!(usize::from(QUEUE_SIZE), BUDGET);
    assert!(r.handler.process(), "budget used up");
    assert!(!r.handler.process());
    assert_eq!(r.drv.used_idx(), QUEUE_SIZE);
    r.drv.set_avail_idx(QUEUE_SIZE.wrapping_add(1000));
    assert!(!r.handler.process(), "no spinning on a bogus index");
    assert_eq!(r.drv.used_idx(), QUEUE_SIZE);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut r = rig(true);
    r.drv.set_used_event(2);
    let a = buffer(&mut r, 16);
    r.drv.submit(&[(a, 16, true)]);
    r.drv.submit(&[(a, 16, true)]);
    r.handler.process();
    assert_eq!(r.irq.count(0), 0);
    r.drv.submit(&[(a, 16, true)]);
    r.handler.process();
    assert_eq!(r.irq.count(0), 1);
    assert_eq!(r.drv.avail_event(), 3);
}

#[test]
fn device_identity() {
    let mut rng = Rng::new();
    assert_eq!(rng.device_type(), VIRTIO_ID_RNG);
    assert_eq!(rng.queue_max_sizes(), vec![QUEUE_SIZE]);
    assert_eq!(rng.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    let mut c = [0xaa; 8];
    rng.read_config(0, &mut c);
    assert_eq!(c, [0; 8]);
    rng.write_config(0, &[1, 2, 3]);
    let mut buf = [0u8; 32];
    fill_random(&mut buf).unwrap();
    assert_ne!(buf, [0; 32]);
    fill_random(&mut []).unwrap();
}

#[test]
fn requests_through_the_worker_thread() {
    let mut rng = Rng::new();
    let irq = Arc::new(CountingInterrupt::default());
    let kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mem = guest_memory(MEM_SIZE);
    let queue = |base| {
        Driver::new(
            &mem,
            GuestAddress(base),
            QUEUE_SIZE,
            1 << 20,
            MEM_SIZE as u64,
        )
    };
    // Zero or two queues: refused.
    assert!(rng.activate(mem.clone(), 0, vec![], irq.clone()).is_err());
    let two = vec![
        ActiveQueue {
            index: 0,
            queue: queue(0).1,
            notify: kick.clone(),
        },
        ActiveQueue {
            index: 1,
            queue: queue(0x4000).1,
            notify: kick.clone(),
        },
    ];
    assert!(rng.activate(mem.clone(), 0, two, irq.clone()).is_err());
    for round in 0..2 {
        // Fresh memory: the rings start from zero as after a real reset.
        let mem = guest_memory(MEM_SIZE);
        let (mut drv, q) = Driver::new(&mem, GuestAddress(0), QUEUE_SIZE, 1 << 20, MEM_SIZE as u64);
        let one = vec![ActiveQueue {
            index: 0,
            queue: q,
            notify: kick.clone(),
        }];
        rng.activate(mem.clone(), VIRTIO_F_VERSION_1, one, irq.clone())
            .unwrap();
        let a = drv.alloc(4096);
        drv.submit(&[(a, 4096, true)]);
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while drv.used_idx() == 0 {
            assert!(Instant::now() < deadline, "round {round}: no answer");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(drv.used_elem(0).1, 4096);
        rng.reset();
    }
    assert_eq!(rng.stats().snapshot().requests, 2);
}
