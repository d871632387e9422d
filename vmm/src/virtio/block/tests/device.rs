//! The device as the transport sees it: setup errors, locking, features,
//! configuration space, and requests through `activate`'s worker threads.

use std::mem::offset_of;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::virtio_blk_config as Raw;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::device::{cfg, MAX_QUEUES, QUEUE_SIZE, SEG_MAX};
use super::*;
use crate::virtio::{
    ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_RING_F_EVENT_IDX,
};

fn config(b: &Block) -> Vec<u8> {
    let mut v = vec![0xaa; 128];
    b.read_config(0, &mut v);
    v
}

fn le32(c: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(c[at..at + 4].try_into().unwrap())
}

#[test]
fn config_offsets_match_the_spec() {
    // virtio-bindings mirrors Linux's struct virtio_blk_config.
    assert_eq!(offset_of!(Raw, capacity), cfg::CAPACITY);
    assert_eq!(offset_of!(Raw, size_max), cfg::SIZE_MAX);
    assert_eq!(offset_of!(Raw, seg_max), cfg::SEG_MAX);
    assert_eq!(offset_of!(Raw, geometry), cfg::GEOMETRY);
    assert_eq!(offset_of!(Raw, blk_size), cfg::BLK_SIZE);
    assert_eq!(offset_of!(Raw, physical_block_exp), cfg::PHYSICAL_BLOCK_EXP);
    assert_eq!(offset_of!(Raw, alignment_offset), cfg::ALIGNMENT_OFFSET);
    assert_eq!(offset_of!(Raw, min_io_size), cfg::MIN_IO_SIZE);
    assert_eq!(offset_of!(Raw, opt_io_size), cfg::OPT_IO_SIZE);
    assert_eq!(offset_of!(Raw, wce), cfg::WRITEBACK);
    assert_eq!(offset_of!(Raw, num_queues), cfg::NUM_QUEUES);
    assert_eq!(
        offset_of!(Raw, max_discard_sectors),
        cfg::MAX_DISCARD_SECTORS
    );
    assert_eq!(offset_of!(Raw, max_discard_seg), cfg::MAX_DISCARD_SEG);
    assert_eq!(
        offset_of!(Raw, discard_sector_alignment),
        cfg::DISCARD_SECTOR_ALIGNMENT
    );
    assert_eq!(
        offset_of!(Raw, max_write_zeroes_sectors),
        cfg::MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(
        offset_of!(Raw, max_write_zeroes_seg),
        cfg::MAX_WRITE_ZEROES_SEG
    );
    assert_eq!(
        offset_of!(Raw, write_zeroes_may_unmap),
        cfg::WRITE_ZEROES_MAY_UNMAP
    );
    assert_eq!(offset_of!(Raw, max_secure_erase_sectors), cfg::LEN);
}

#[test]
fn config_values() {
    let img = image(3 << 20);
    let b = Block::new(&disk_config(img.as_path(), false), 4).unwrap();
    let c = config(&b);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 6144);
    assert_eq!(le32(&c, cfg::SIZE_MAX), 0);
    assert_eq!(le32(&c, cfg::SEG_MAX), SEG_MAX);
    assert_eq!(SEG_MAX, u32::from(QUEUE_SIZE) - 2);
    assert_eq!(&c[cfg::GEOMETRY..cfg::GEOMETRY + 4], &[0; 4]);
    assert_eq!(le32(&c, cfg::BLK_SIZE), 512);
    assert_eq!(c[cfg::PHYSICAL_BLOCK_EXP], 3); // 4096-byte physical blocks
    assert_eq!(
        u16::from_le_bytes([c[cfg::MIN_IO_SIZE], c[cfg::MIN_IO_SIZE + 1]]),
        8
    );
    assert_eq!(c[cfg::WRITEBACK], 1);
    assert_eq!(c[33], 0); // unused0
    assert_eq!(
        u16::from_le_bytes([c[cfg::NUM_QUEUES], c[cfg::NUM_QUEUES + 1]]),
        4
    );
    assert_eq!(le32(&c, cfg::MAX_DISCARD_SECTORS), u32::MAX >> 9);
    assert_eq!(le32(&c, cfg::MAX_DISCARD_SEG), 32);
    assert_eq!(le32(&c, cfg::DISCARD_SECTOR_ALIGNMENT), 8);
    assert_eq!(le32(&c, cfg::MAX_WRITE_ZEROES_SECTORS), u32::MAX >> 9);
    assert_eq!(le32(&c, cfg::MAX_WRITE_ZEROES_SEG), 32);
    assert_eq!(c[cfg::WRITE_ZEROES_MAY_UNMAP], 1);
    assert!(
        c[57..].iter().all(|b| *b == 0),
        "padding and unoffered fields read as zero"
    );
    assert_eq!(b.capacity(), 6144);
    assert_eq!(b.queue_max_sizes(), vec![QUEUE_SIZE; 4]);
    assert_eq!(b.device_type(), VIRTIO_ID_BLOCK);
}

#[test]
fn config_reads_at_odd_offsets() {
    let img = image(1 << 20);
    let b = Block::new(&disk_config(img.as_path(), false), 1).unwrap();
    let c = config(&b);
    let mut two = [0xaa; 2];
    b.read_config(1, &mut two);
    assert_eq!(two, [c[1], c[2]]);
    let mut tail = [0xaa; 8];
    b.read_config(56, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0]);
    for offset in [60, 4096, u64::MAX - 1, u64::MAX] {
        let mut buf = [0xaa; 4];
        b.read_config(offset, &mut buf);
        assert_eq!(buf, [0; 4], "offset {offset:#x}");
    }
    // Writes are ignored.
    let mut b = b;
    b.write_config(0, &[0xff; 8]);
    b.write_config(u64::MAX, &[0xff; 8]);
    assert_eq!(config(&b), c);
}

#[test]
fn read_only_config_and_features() {
    let img = image(1 << 20);
    let b = Block::new(&disk_config(img.as_path(), true), 1).unwrap();
    let f = b.features();
    assert_ne!(f & VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0);
    let c = config(&b);
    assert!(c[cfg::MAX_DISCARD_SECTORS..cfg::LEN]
        .iter()
        .all(|b| *b == 0));
}

#[test]
fn writable_features() {
    let img = image(1 << 20);
    let b = Block::new(&disk_config(img.as_path(), false), 2).unwrap();
    let f = b.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "bit {:#x}", bit);
    }
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
}

#[test]
fn setup_errors() {
    let img = image(1 << 20);
    let mut cfg = disk_config(img.as_path(), false);
    cfg.serial = Some("x".repeat(21));
    assert!(matches!(
        Block::new(&cfg, 1),
        Err(BlockError::SerialTooLong(_))
    ));
    cfg.serial = Some("x".repeat(20));
    drop(Block::new(&cfg, 1).unwrap());
    assert!(matches!(
        Block::new(&cfg, 0),
        Err(BlockError::QueueCount(0))
    ));
    assert!(matches!(
        Block::new(&cfg, MAX_QUEUES + 1),
        Err(BlockError::QueueCount(_))
    ));
    let missing = disk_config(std::path::Path::new("/nonexistent/utsuwa.img"), false);
    assert!(matches!(
        Block::new(&missing, 1),
        Err(BlockError::Open { .. })
    ));
    let odd = TempFile::new().unwrap();
    std::fs::write(odd.as_path(), vec![0u8; 1000]).unwrap();
    let e = Block::new(&disk_config(odd.as_path(), false), 1)
        .err()
        .unwrap();
    assert!(
        matches!(e, BlockError::UnalignedSize { size: 1000, .. }),
        "{e}"
    );
}

#[test]
fn direct_needs_file_system_support() {
    // procfs has no O_DIRECT.
    let mut cfg = disk_config(std::path::Path::new("/proc/version"), true);
    cfg.direct = true;
    let e = Block::new(&cfg, 1).err().unwrap();
    assert!(matches!(e, BlockError::DirectUnsupported(_)), "{e}");
    assert!(e.to_string().contains("O_DIRECT"));
}

#[test]
fn direct_block_size() {
    let img = image(1 << 20);
    let mut cfg = disk_config(img.as_path(), false);
    cfg.direct = true;
    let b = Block::new(&cfg, 1).unwrap();
    let bs = b.block_size();
    assert!(bs.is_power_of_two() && (512..=4096).contains(&bs));
    assert_eq!(le32(&config(&b), cfg::BLK_SIZE), bs);
}

#[test]
fn second_writable_open_is_refused() {
    let img = image(1 << 20);
    let cfg = disk_config(img.as_path(), false);
    let first = Block::new(&cfg, 1).unwrap();
    let e = Block::new(&cfg, 1).err().expect("second open must fail");
    assert!(matches!(e, BlockError::InUse(_)));
    assert_eq!(
        e.to_string(),
        format!("image {} is in use by another VM", img.as_path().display())
    );
    // Read-only next to a writer is refused too.
    assert!(matches!(
        Block::new(&disk_config(img.as_path(), true), 1),
        Err(BlockError::InUse(_))
    ));
    drop(first);
    // The lock goes with the device.
    drop(Block::new(&cfg, 1).unwrap());
}

#[test]
fn read_only_opens_share() {
    let img = image(1 << 20);
    let ro = disk_config(img.as_path(), true);
    let a = Block::new(&ro, 1).unwrap();
    let b = Block::new(&ro, 1).unwrap();
    assert!(matches!(
        Block::new(&disk_config(img.as_path(), false), 1),
        Err(BlockError::InUse(_))
    ));
    drop((a, b));
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Active {
    drv: Driver,
    notify: Arc<EventFd>,
}

fn activate(
    b: &mut Block,
    mem: &GuestMemoryMmap,
    irq: &Arc<CountingInterrupt>,
    queues: u16,
) -> Vec<Active> {
    let mut active = Vec::new();
    let mut given = Vec::new();
    for i in 0..queues {
        let base = GuestAddress(0x2_0000 * u64::from(i));
        let (drv, queue) = Driver::new_at(mem, base, QUEUE_SIZE, (1 + u64::from(i)) << 22);
        let notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        given.push(ActiveQueue {
            index: i,
            queue,
            notify: notify.clone(),
        });
        active.push(Active { drv, notify });
    }
    let features = b.features();
    b.activate(mem.clone(), features, given, irq.clone())
        .unwrap();
    active
}

fn end_to_end(engine: Engine) {
    let img = image(1 << 20);
    let mut b = Block::new(&disk_config(img.as_path(), false), 2)
        .unwrap()
        .with_engine(engine);
    let stats = b.stats();
    let mem = guest_memory(16 << 20);
    let irq = Arc::new(CountingInterrupt::default());
    for round in 0..2 {
        let mut qs = activate(&mut b, &mem, &irq, 2);
        for i in 0..2 {
            let name = format!("blk{}-q{i}", b.id());
            wait_for(&name, || thread_names().contains(&name));
        }
        let before = irq.queue_count();
        let w = qs[1].drv.write(4, &[0x3c; 1024]);
        qs[1].notify.write(1).unwrap();
        let (r, buf) = qs[0].drv.read(0, 2048);
        qs[0].notify.write(1).unwrap();
        wait_for("both queues", || {
            qs[0].drv.used_idx() == 1 && qs[1].drv.used_idx() == 1
        });
        wait_for("interrupts", || irq.queue_count() >= before + 2);
        assert_eq!(qs[0].drv.status(&r), VIRTIO_BLK_S_OK);
        assert_eq!(qs[0].drv.used_len(&r), 2049);
        assert_eq!(qs[1].drv.status(&w), VIRTIO_BLK_S_OK);
        assert_eq!(
            qs[0].drv.read_bytes(buf, 2048),
            (0..2048).map(pattern).collect::<Vec<_>>(),
            "round {round}"
        );
        b.reset();
        let names = thread_names();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with(&format!("blk{}-", b.id()))),
            "workers left: {names:?}"
        );
        // Still locked after a reset.
        assert!(matches!(
            Block::new(&disk_config(img.as_path(), false), 1),
            Err(BlockError::InUse(_))
        ));
        for q in &mut qs {
            q.drv.free_all();
        }
    }
    let s = stats.snapshot();
    assert_eq!(
        (s.requests, s.read_bytes, s.write_bytes, s.errors),
        (4, 4096, 2048, 0)
    );
    assert_eq!(
        &std::fs::read(img.as_path()).unwrap()[2048..3072],
        &[0x3c; 1024]
    );
}

fn requests_before_activation_are_served(engine: Engine) {
    let img = image(1 << 20);
    let mut b = Block::new(&disk_config(img.as_path(), false), 1)
        .unwrap()
        .with_engine(engine);
    let mem = guest_memory(16 << 20);
    let irq = Arc::new(CountingInterrupt::default());
    let (mut drv, queue) = Driver::new(&mem, QUEUE_SIZE);
    let (req, _) = drv.read(0, 512);
    let notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let features = b.features();
    b.activate(
        mem.clone(),
        features,
        vec![ActiveQueue {
            index: 0,
            queue,
            notify,
        }],
        irq.clone(),
    )
    .unwrap();
    wait_for("the early request", || drv.used_idx() == 1);
    assert_eq!(drv.status(&req), VIRTIO_BLK_S_OK);
    drop(b); // stops the worker too
}

fn bad_activation(engine: Engine) {
    let img = image(1 << 20);
    let mut b = Block::new(&disk_config(img.as_path(), false), 1)
        .unwrap()
        .with_engine(engine);
    let mem = guest_memory(16 << 20);
    let irq: Arc<CountingInterrupt> = Arc::default();
    let (_, queue) = Driver::new(&mem, QUEUE_SIZE);
    let notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let q = ActiveQueue {
        index: 1,
        queue,
        notify,
    };
    assert!(b.activate(mem.clone(), 0, vec![q], irq.clone()).is_err());
    assert!(b.activate(mem.clone(), 0, Vec::new(), irq.clone()).is_err());
    // A ring outside guest memory.
    let (_, mut queue) = Driver::new(&mem, QUEUE_SIZE);
    queue.set_desc_table_address(Some(0), Some(1));
    let notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let q = ActiveQueue {
        index: 0,
        queue,
        notify,
    };
    assert!(b.activate(mem.clone(), 0, vec![q], irq).is_err());
}

both_engines!(
    end_to_end,
    requests_before_activation_are_served,
    bad_activation
);
