//! Well-formed requests, on both engines.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vm_memory::{Address, Bytes};

use super::*;

const IMAGE: usize = 4 << 20;

fn rig(engine: Engine) -> (TempFile, Rig) {
    let img = image(IMAGE);
    let rig = Rig::new(&disk_config(img.as_path(), false), engine);
    (img, rig)
}

fn expected(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(pattern).collect()
}

fn read_known_data(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let (req, buf) = r.drv.read(3, 4096);
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.used_len(&req), 4096 + 1);
    assert_eq!(r.drv.read_bytes(buf, 4096), expected(3 * 512, 4096));
    assert_eq!(r.irq.queue_count(), 1);
    let s = r.stats.snapshot();
    assert_eq!((s.requests, s.read_bytes, s.errors), (1, 4096, 0));
}

fn read_scattered_buffers(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let a = r.drv.alloc(512);
    let b = r.drv.alloc(1536);
    let c = r.drv.alloc(2048);
    let req = r.drv.request(
        VIRTIO_BLK_T_IN,
        100,
        &[(a, 512, true), (b, 1536, true), (c, 2048, true)],
    );
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.used_len(&req), 4097);
    let mut got = r.drv.read_bytes(a, 512);
    got.extend(r.drv.read_bytes(b, 1536));
    got.extend(r.drv.read_bytes(c, 2048));
    assert_eq!(got, expected(100 * 512, 4096));
}

fn write_then_read_back(engine: Engine) {
    let (img, mut r) = rig(engine);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    let w = r.drv.write(17, &data);
    r.run();
    assert_eq!(r.drv.status(&w), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.used_len(&w), 1);
    let (rd, buf) = r.drv.read(17, 8192);
    r.run();
    assert_eq!(r.drv.status(&rd), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.read_bytes(buf, 8192), data);
    // And it is really in the file, neighbours untouched.
    let file = std::fs::read(img.as_path()).unwrap();
    assert_eq!(&file[17 * 512..17 * 512 + 8192], &data[..]);
    assert_eq!(&file[..17 * 512], &expected(0, 17 * 512)[..]);
    assert_eq!(file[17 * 512 + 8192], pattern(17 * 512 + 8192));
    assert_eq!(r.stats.snapshot().write_bytes, 8192);
}

fn writethrough_write(engine: Engine) {
    let img = image(IMAGE);
    let mut opts = RigOptions::new(engine);
    opts.writethrough = true;
    let mut r = Rig::with(&disk_config(img.as_path(), false), opts);
    let w = r.drv.write(0, &[0x5a; 512]);
    r.run();
    assert_eq!(r.drv.status(&w), VIRTIO_BLK_S_OK);
    assert_eq!(&std::fs::read(img.as_path()).unwrap()[..512], &[0x5a; 512]);
}

fn flush(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let w = r.drv.write(0, &[1; 4096]);
    r.run();
    let f = r.drv.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    assert_eq!(r.drv.status(&w), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.status(&f), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.used_len(&f), 1);
    assert_eq!(r.stats.snapshot().flushes, 1);
}

fn get_id(engine: Engine) {
    let img = image(IMAGE);
    let mut opts = RigOptions::new(engine);
    opts.serial = Some("utsuwa-disk-0001");
    let mut r = Rig::with(&disk_config(img.as_path(), false), opts);
    let buf = r.drv.alloc(20);
    r.drv.mem.write_slice(&[0xee; 20], buf).unwrap();
    let req = r.drv.request(VIRTIO_BLK_T_GET_ID, 0, &[(buf, 20, true)]);
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.used_len(&req), 21);
    let mut want = b"utsuwa-disk-0001".to_vec();
    want.resize(20, 0);
    assert_eq!(r.drv.read_bytes(buf, 20), want);
}

fn get_id_without_serial_is_zeros(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let buf = r.drv.alloc(20);
    r.drv.mem.write_slice(&[0xee; 20], buf).unwrap();
    let req = r.drv.request(VIRTIO_BLK_T_GET_ID, 0, &[(buf, 20, true)]);
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.read_bytes(buf, 20), vec![0; 20]);
}

/// Whether `dir`'s file system can punch holes.
fn punch_supported(dir: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let probe = TempFile::new_in(dir).unwrap();
    std::fs::write(probe.as_path(), vec![1u8; 8192]).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(probe.as_path())
        .unwrap();
    // SAFETY: fallocate on our own fd, no memory involved.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    r == 0
}

/// Discard or write-zeroes 1 MiB in the middle of a fully written image;
/// it must read back as zeros and, with `expect_freed`, free blocks.
fn zeroing(engine: Engine, dir: &Path, req_type: u32, flags: u32, expect_freed: bool) {
    let img = image_in(dir, IMAGE);
    std::fs::File::open(img.as_path())
        .unwrap()
        .sync_all()
        .unwrap();
    let before = std::fs::metadata(img.as_path()).unwrap().blocks();
    let mut r = Rig::new(&disk_config(img.as_path(), false), engine);
    let req = r.drv.segments(req_type, &[(2048, 2048, flags)]);
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.used_len(&req), 1);
    let (rd, buf) = r.drv.read(2048 - 8, 4096 + 1024 * 1024);
    r.run();
    assert_eq!(r.drv.status(&rd), VIRTIO_BLK_S_OK);
    let got = r.drv.read_bytes(buf, 4096 + 1024 * 1024);
    assert_eq!(
        &got[..4096],
        &expected((2048 - 8) * 512, 4096)[..],
        "data before the range changed"
    );
    assert!(
        got[4096..].iter().all(|b| *b == 0),
        "range does not read as zeros"
    );
    let after = std::fs::metadata(img.as_path()).unwrap().blocks();
    if expect_freed {
        if punch_supported(dir) {
            assert!(after < before, "blocks not freed: {before} -> {after}");
        } else {
            eprintln!(
                "note: {} cannot punch holes; not checking st_blocks",
                dir.display()
            );
        }
    }
    assert_eq!(r.stats.snapshot().discards, 1);
}

fn discard_frees_blocks(engine: Engine) {
    zeroing(engine, &std::env::temp_dir(), VIRTIO_BLK_T_DISCARD, 0, true);
}

fn discard_frees_blocks_on_tmpfs(engine: Engine) {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("note: no /dev/shm; skipping the tmpfs discard test");
        return;
    }
    zeroing(engine, shm, VIRTIO_BLK_T_DISCARD, 0, true);
}

fn write_zeroes_unmap_frees_blocks(engine: Engine) {
    zeroing(
        engine,
        &std::env::temp_dir(),
        VIRTIO_BLK_T_WRITE_ZEROES,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        true,
    );
}

fn write_zeroes_keeps_allocation(engine: Engine) {
    zeroing(
        engine,
        &std::env::temp_dir(),
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        false,
    );
}

fn write_zeroes_on_tmpfs(engine: Engine) {
    // tmpfs has no FALLOC_FL_ZERO_RANGE: the device writes zeros instead.
    if Path::new("/dev/shm").is_dir() {
        zeroing(
            engine,
            Path::new("/dev/shm"),
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            false,
        );
    }
}

fn discard_several_segments(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let req = r.drv.segments(
        VIRTIO_BLK_T_DISCARD,
        &[(0, 8, 0), (64, 16, 0), (8184, 8, 0)],
    );
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
}

fn discard_flags_unsupported(engine: Engine) {
    let (img, mut r) = rig(engine);
    // 5.2.6.2: unmap on a discard, and unknown flags anywhere, are UNSUPP.
    let a = r.drv.segments(
        VIRTIO_BLK_T_DISCARD,
        &[(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
    );
    let b = r.drv.segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 2)]);
    let c = r.drv.segments(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0x8000_0000)]);
    r.run();
    for req in [a, b, c] {
        assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(r.drv.used_len(&req), 1);
    }
    assert_eq!(
        std::fs::read(img.as_path()).unwrap()[..4096],
        expected(0, 4096)[..]
    );
}

fn unknown_types_unsupported(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let buf = r.drv.alloc(512);
    let reqs: Vec<Req> = [2u32, 3, 5, 10, 14, 15, 0x8000_0000, u32::MAX]
        .iter()
        .map(|t| r.drv.request(*t, 0, &[(buf, 512, true)]))
        .collect();
    r.run();
    for req in &reqs {
        assert_eq!(r.drv.status(req), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(r.drv.used_len(req), 1);
    }
    assert_eq!(r.stats.snapshot().errors, reqs.len() as u64);
}

fn past_the_end_is_ioerr(engine: Engine) {
    let (img, mut r) = rig(engine);
    let sectors = (IMAGE / 512) as u64;
    let (last, _) = r.drv.read(sectors - 1, 512); // the last sector: fine
    let (over, _) = r.drv.read(sectors - 1, 1024);
    let (at_end, _) = r.drv.read(sectors, 512);
    let (wrap, _) = r.drv.read(u64::MAX, 512);
    let (wrap2, _) = r.drv.read(u64::MAX / 512 + 1, 512); // sector * 512 overflows
    let w = r.drv.write(sectors - 1, &[9; 1024]);
    let d = r.drv.segments(VIRTIO_BLK_T_DISCARD, &[(sectors - 4, 8, 0)]);
    let z = r
        .drv
        .segments(VIRTIO_BLK_T_WRITE_ZEROES, &[(u64::MAX - 2, 8, 0)]);
    r.run();
    assert_eq!(r.drv.status(&last), VIRTIO_BLK_S_OK);
    for req in [over, at_end, wrap, wrap2, w, d, z] {
        assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_IOERR, "chain {}", req.head);
        assert_eq!(r.drv.used_len(&req), 1);
    }
    assert_eq!(std::fs::read(img.as_path()).unwrap(), expected(0, IMAGE));
}

fn partial_sectors_are_ioerr(engine: Engine) {
    let (img, mut r) = rig(engine);
    let (rd, _) = r.drv.read(0, 513);
    let w = r.drv.write(0, &[3; 100]);
    r.run();
    assert_eq!(r.drv.status(&rd), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.drv.status(&w), VIRTIO_BLK_S_IOERR);
    assert_eq!(
        std::fs::read(img.as_path()).unwrap()[..512],
        expected(0, 512)[..]
    );
}

fn any_framing(engine: Engine) {
    // Header and data in one readable buffer; data and status in one
    // writable buffer; a header split in two.
    let (_img, mut r) = rig(engine);
    let m = r.drv.mem.clone();
    let out = r.drv.alloc(16 + 512);
    m.write_obj(VIRTIO_BLK_T_OUT, out).unwrap();
    m.write_obj(0u32, out.unchecked_add(4)).unwrap();
    m.write_obj(5u64, out.unchecked_add(8)).unwrap();
    m.write_slice(&[0xab; 512], out.unchecked_add(16)).unwrap();
    let st = r.drv.alloc(1);
    r.drv.submit(&[(out, 16 + 512, false), (st, 1, true)]);
    // Requests in flight together are not ordered: let the write finish.
    r.run();

    let h1 = r.drv.alloc(6);
    let h2 = r.drv.alloc(10);
    let mut h = [0u8; 16];
    h[8..].copy_from_slice(&5u64.to_le_bytes());
    m.write_slice(&h[..6], h1).unwrap();
    m.write_slice(&h[6..], h2).unwrap();
    let inb = r.drv.alloc(513);
    let head = r
        .drv
        .submit(&[(h1, 6, false), (h2, 10, false), (inb, 513, true)]);
    r.run();
    assert_eq!(m.read_obj::<u8>(st).unwrap(), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.read_bytes(inb, 512), vec![0xab; 512]);
    assert_eq!(
        m.read_obj::<u8>(inb.unchecked_add(512)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        r.drv.used_len(&Req {
            head,
            status: inb.unchecked_add(512)
        }),
        513
    );
}

fn many_requests_one_notification(engine: Engine) {
    let (_img, mut r) = rig(engine);
    let reqs: Vec<(Req, GuestAddress)> = (0..64).map(|i| r.drv.read(i * 8, 4096)).collect();
    r.run();
    assert_eq!(r.drv.used_idx(), 64);
    for (i, (req, buf)) in reqs.iter().enumerate() {
        assert_eq!(r.drv.status(req), VIRTIO_BLK_S_OK);
        assert_eq!(
            r.drv.read_bytes(*buf, 4096),
            expected(i as u64 * 4096, 4096)
        );
    }
    assert!(r.irq.queue_count() >= 1);
}

fn event_idx_suppresses_interrupts(engine: Engine) {
    let img = image(IMAGE);
    let mut opts = RigOptions::new(engine);
    opts.event_idx = true;
    let mut r = Rig::with(&disk_config(img.as_path(), false), opts);
    // The driver wants an interrupt once the used index passes 1.
    r.drv.set_used_event(1);
    r.drv.read(0, 512);
    r.run();
    assert_eq!(r.drv.used_idx(), 1);
    assert_eq!(r.irq.queue_count(), 0, "interrupt before used_event");
    r.drv.read(1, 512);
    r.run();
    assert_eq!(r.drv.used_idx(), 2);
    assert_eq!(r.irq.queue_count(), 1);
}

fn read_only_refuses_writes(engine: Engine) {
    let img = image(IMAGE);
    let before = std::fs::read(img.as_path()).unwrap();
    let mut r = Rig::new(&disk_config(img.as_path(), true), engine);
    // The file is not open for writing at all.
    // SAFETY: F_GETFL on an fd the disk owns.
    let fl = unsafe { libc::fcntl(r.disk.fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);
    let w = r.drv.write(0, &[0; 4096]);
    let d = r.drv.segments(VIRTIO_BLK_T_DISCARD, &[(0, 2048, 0)]);
    let z = r.drv.segments(
        VIRTIO_BLK_T_WRITE_ZEROES,
        &[(0, 2048, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
    );
    let (rd, buf) = r.drv.read(0, 4096);
    let f = r.drv.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    for req in [w, d, z] {
        assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_IOERR);
    }
    assert_eq!(r.drv.status(&rd), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.status(&f), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.read_bytes(buf, 4096), before[..4096]);
    drop(r);
    assert_eq!(std::fs::read(img.as_path()).unwrap(), before);
}

fn direct_io(engine: Engine) {
    let img = image(IMAGE);
    let mut cfg = disk_config(img.as_path(), false);
    cfg.direct = true;
    let mut r = Rig::new(&cfg, engine);
    let bs = r.disk.block_size() as usize;
    let data: Vec<u8> = (0..2 * bs).map(|i| (i % 251) as u8).collect();
    // Aligned guest buffer: straight to the file.
    let w = r.drv.write(8, &data);
    r.run();
    // A guest buffer no O_DIRECT accepts (odd address): bounce buffer.
    let base = r.drv.alloc(4096 + 2 * bs as u64);
    let odd = base.unchecked_add(1);
    let req = r
        .drv
        .request(VIRTIO_BLK_T_IN, 8, &[(odd, 2 * bs as u32, true)]);
    r.run();
    assert_eq!(r.drv.status(&w), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(r.drv.read_bytes(odd, 2 * bs), data);
    let odd_w = base.unchecked_add(3);
    r.drv.mem.write_slice(&vec![0x77; bs], odd_w).unwrap();
    let w2 = r
        .drv
        .request(VIRTIO_BLK_T_OUT, 64, &[(odd_w, bs as u32, false)]);
    r.run();
    assert_eq!(r.drv.status(&w2), VIRTIO_BLK_S_OK);
    let file = std::fs::read(img.as_path()).unwrap();
    assert_eq!(&file[64 * 512..64 * 512 + bs], &vec![0x77; bs][..]);
}

both_engines!(
    read_known_data,
    read_scattered_buffers,
    write_then_read_back,
    writethrough_write,
    flush,
    get_id,
    get_id_without_serial_is_zeros,
    discard_frees_blocks,
    discard_frees_blocks_on_tmpfs,
    write_zeroes_unmap_frees_blocks,
    write_zeroes_keeps_allocation,
    write_zeroes_on_tmpfs,
    discard_several_segments,
    discard_flags_unsupported,
    unknown_types_unsupported,
    past_the_end_is_ioerr,
    partial_sectors_are_ioerr,
    any_framing,
    many_requests_one_notification,
    event_idx_suppresses_interrupts,
    read_only_refuses_writes,
    direct_io,
);
