//! Hostile descriptor chains, on both engines: every one must come back
//! as an error status, or (with nowhere to put a status) as a used
//! element of length 0, and never panic or touch the image.

use vm_memory::{Address, Bytes};

use super::*;

const IMAGE: usize = 1 << 20;
/// Far outside the 16 MiB of guest memory.
const OUTSIDE: GuestAddress = GuestAddress(1 << 40);

fn rig(engine: Engine) -> (TempFile, Rig) {
    let img = image(IMAGE);
    let rig = Rig::new(&disk_config(img.as_path(), false), engine);
    (img, rig)
}

fn untouched(img: &TempFile) {
    let want: Vec<u8> = (0..IMAGE as u64).map(pattern).collect();
    assert!(
        std::fs::read(img.as_path()).unwrap() == want,
        "image changed"
    );
}

fn assert_ioerr(r: &Rig, req: &Req) {
    assert_eq!(r.drv.status(req), VIRTIO_BLK_S_IOERR, "chain {}", req.head);
    assert_eq!(r.drv.used_len(req), 1, "chain {}", req.head);
}

/// Returned with length 0 and the status (preset 0xff) left alone.
fn assert_dropped(r: &Rig, head: u16, status: Option<GuestAddress>) {
    let found = (0..r.drv.used_idx())
        .map(|n| r.drv.used_elem(n))
        .find(|(id, _)| *id == u32::from(head));
    assert_eq!(found, Some((u32::from(head), 0)), "chain {head}");
    if let Some(addr) = status {
        assert_eq!(r.drv.mem.read_obj::<u8>(addr).unwrap(), 0xff);
    }
}

/// A header of `req_type` at `sector` in fresh guest memory.
fn header(r: &mut Rig, req_type: u32, sector: u64) -> GuestAddress {
    let h = r.drv.alloc(16);
    r.drv.mem.write_obj(req_type, h).unwrap();
    r.drv.mem.write_obj(sector, h.unchecked_add(8)).unwrap();
    h
}

fn status_byte(r: &mut Rig) -> GuestAddress {
    let s = r.drv.alloc(1);
    r.drv.mem.write_obj(0xffu8, s).unwrap();
    s
}

fn looping_chains(engine: Engine) {
    let (img, mut r) = rig(engine);
    let h = header(&mut r, VIRTIO_BLK_T_OUT, 0);
    let s = status_byte(&mut r);
    // 10 -> 11 -> 10 -> ...
    r.drv.write_desc(10, h.0, 16, F_NEXT, 11);
    r.drv.write_desc(11, s.0, 1, F_WRITE | F_NEXT, 10);
    r.drv.make_available(10);
    // 12 -> 12
    r.drv.write_desc(12, s.0, 1, F_WRITE | F_NEXT, 12);
    r.drv.make_available(12);
    r.run();
    assert_dropped(&r, 10, Some(s));
    assert_dropped(&r, 12, Some(s));
    // Through the whole table and back to 0: longer than the queue.
    for i in 0..r.drv.size {
        r.drv.write_desc(i, h.0, 16, F_NEXT, (i + 1) % r.drv.size);
    }
    r.drv.make_available(0);
    r.run();
    assert_dropped(&r, 0, Some(s));
    assert_eq!(r.drv.used_idx(), 3);
    untouched(&img);
}

fn next_out_of_range(engine: Engine) {
    let (img, mut r) = rig(engine);
    let h = header(&mut r, VIRTIO_BLK_T_IN, 0);
    r.drv.write_desc(20, h.0, 16, F_NEXT, 300);
    r.drv.make_available(20);
    r.run();
    assert_dropped(&r, 20, None);
    untouched(&img);
}

fn head_out_of_range(engine: Engine) {
    let (_img, mut r) = rig(engine);
    r.drv.make_available(999);
    let (req, _) = r.drv.read(0, 512);
    r.run();
    // 999 cannot even be returned; the next request is served normally.
    assert_eq!(r.drv.used_idx(), 1);
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
}

fn buffers_outside_memory(engine: Engine) {
    let (img, mut r) = rig(engine);
    let rd = r.drv.request(VIRTIO_BLK_T_IN, 0, &[(OUTSIDE, 512, true)]);
    let wr = r.drv.request(VIRTIO_BLK_T_OUT, 0, &[(OUTSIDE, 512, false)]);
    // Straddling the end of guest memory.
    let end = GuestAddress((16 << 20) - 256);
    let st = r.drv.request(VIRTIO_BLK_T_IN, 0, &[(end, 512, true)]);
    // Address arithmetic that overflows.
    let ov = r.drv.request(
        VIRTIO_BLK_T_IN,
        0,
        &[(GuestAddress(u64::MAX - 10), 512, true)],
    );
    let huge = r.drv.alloc(16);
    let big = r
        .drv
        .request(VIRTIO_BLK_T_IN, 0, &[(huge, u32::MAX - 32, true)]);
    // The header itself outside memory.
    let s = status_byte(&mut r);
    let head = r.drv.submit(&[(OUTSIDE, 16, false), (s, 1, true)]);
    r.run();
    for req in [rd, wr, st, ov, big, Req { head, status: s }] {
        assert_ioerr(&r, &req);
    }
    untouched(&img);
}

fn status_outside_memory(engine: Engine) {
    let (img, mut r) = rig(engine);
    let h = header(&mut r, VIRTIO_BLK_T_IN, 0);
    let a = r.drv.submit(&[(h, 16, false), (OUTSIDE, 1, true)]);
    let b = r
        .drv
        .submit(&[(h, 16, false), (GuestAddress(u64::MAX), 1, true)]);
    let c = r
        .drv
        .submit(&[(h, 16, false), (GuestAddress(u64::MAX - 1), 5, true)]);
    r.run();
    for head in [a, b, c] {
        assert_dropped(&r, head, None);
    }
    untouched(&img);
}

fn zero_length_buffers(engine: Engine) {
    let (img, mut r) = rig(engine);
    let buf = r.drv.alloc(512);
    let zero = r.drv.request(VIRTIO_BLK_T_IN, 0, &[(buf, 0, true)]);
    let zero_out = r
        .drv
        .request(VIRTIO_BLK_T_OUT, 0, &[(buf, 512, false), (buf, 0, false)]);
    let h = header(&mut r, VIRTIO_BLK_T_IN, 0);
    let s = status_byte(&mut r);
    let zero_status = r.drv.submit(&[(h, 16, false), (s, 0, true)]);
    r.run();
    assert_ioerr(&r, &zero);
    assert_ioerr(&r, &zero_out);
    assert_dropped(&r, zero_status, Some(s));
    untouched(&img);
}

fn missing_or_read_only_status(engine: Engine) {
    let (img, mut r) = rig(engine);
    let h = header(&mut r, VIRTIO_BLK_T_OUT, 0);
    let data = r.drv.alloc(512);
    let s = status_byte(&mut r);
    let only_header = r.drv.submit(&[(h, 16, false)]);
    let no_status = r.drv.submit(&[(h, 16, false), (data, 512, false)]);
    let ro_status = r
        .drv
        .submit(&[(h, 16, false), (data, 512, false), (s, 1, false)]);
    r.run();
    assert_dropped(&r, only_header, None);
    assert_dropped(&r, no_status, None);
    assert_dropped(&r, ro_status, Some(s));
    untouched(&img);
}

fn short_headers(engine: Engine) {
    let (img, mut r) = rig(engine);
    let h = header(&mut r, VIRTIO_BLK_T_OUT, 0);
    let data = r.drv.alloc(512);
    let s1 = status_byte(&mut r);
    let a = r.drv.submit(&[(h, 8, false), (s1, 1, true)]);
    let s2 = status_byte(&mut r);
    let b = r.drv.submit(&[(s2, 1, true)]);
    // A 15-byte header followed by data is still a short header
    // (the data is device-writable, so it cannot complete it).
    let s3 = status_byte(&mut r);
    let c = r
        .drv
        .submit(&[(h, 15, false), (data, 512, true), (s3, 1, true)]);
    r.run();
    assert_ioerr(
        &r,
        &Req {
            head: a,
            status: s1,
        },
    );
    assert_ioerr(
        &r,
        &Req {
            head: b,
            status: s2,
        },
    );
    assert_ioerr(
        &r,
        &Req {
            head: c,
            status: s3,
        },
    );
    untouched(&img);
}

fn data_in_the_wrong_direction(engine: Engine) {
    let (img, mut r) = rig(engine);
    let buf = r.drv.alloc(512);
    r.drv.mem.write_slice(&[0x42; 512], buf).unwrap();
    // IN into a device-readable buffer.
    let a = r.drv.request(VIRTIO_BLK_T_IN, 0, &[(buf, 512, false)]);
    // OUT from a device-writable buffer.
    let b = r.drv.request(VIRTIO_BLK_T_OUT, 0, &[(buf, 512, true)]);
    // Readable after writable.
    let c = r
        .drv
        .request(VIRTIO_BLK_T_OUT, 0, &[(buf, 512, true), (buf, 512, false)]);
    r.run();
    for req in [a, b, c] {
        assert_ioerr(&r, &req);
    }
    assert_eq!(
        r.drv.read_bytes(buf, 512),
        vec![0x42; 512],
        "IN wrote a readable buffer"
    );
    untouched(&img);
}

fn malformed_segments(engine: Engine) {
    let (img, mut r) = rig(engine);
    let buf = r.drv.alloc(16 * 40);
    let odd = r.drv.request(VIRTIO_BLK_T_DISCARD, 0, &[(buf, 15, false)]);
    let none = r.drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[]);
    let many = r.drv.segments(VIRTIO_BLK_T_DISCARD, &vec![(0, 8, 0); 33]);
    let wrong_way = r.drv.request(VIRTIO_BLK_T_DISCARD, 0, &[(buf, 16, true)]);
    r.run();
    for req in [odd, none, many, wrong_way] {
        assert_ioerr(&r, &req);
    }
    untouched(&img);
}

fn chain_over_4gib(engine: Engine) {
    let (img, mut r) = rig(engine);
    let h = header(&mut r, VIRTIO_BLK_T_OUT, 0);
    let s = status_byte(&mut r);
    let head = r.drv.submit(&[
        (h, 0xc000_0000, false),
        (h, 0xc000_0000, false),
        (s, 1, true),
    ]);
    r.run();
    assert_dropped(&r, head, Some(s));
    untouched(&img);
}

/// Writes an indirect table of (addr, len, writable) at a fresh address.
fn indirect_table(r: &mut Rig, bufs: &[(GuestAddress, u32, bool)]) -> GuestAddress {
    let table = r.drv.alloc(16 * bufs.len() as u64);
    for (i, (addr, len, write)) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let flags = if *write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
        let at = table.unchecked_add(16 * i as u64);
        r.drv.mem.write_obj(addr.0, at).unwrap();
        r.drv.mem.write_obj(*len, at.unchecked_add(8)).unwrap();
        r.drv.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        r.drv
            .mem
            .write_obj(if last { 0u16 } else { i as u16 + 1 }, at.unchecked_add(14))
            .unwrap();
    }
    table
}

fn indirect_tables(engine: Engine) {
    let (img, mut r) = rig(engine);
    // A good one: served.
    let h = header(&mut r, VIRTIO_BLK_T_IN, 1);
    let data = r.drv.alloc(512);
    let s = status_byte(&mut r);
    let table = indirect_table(&mut r, &[(h, 16, false), (data, 512, true), (s, 1, true)]);
    r.drv.write_desc(30, table.0, 48, F_INDIRECT, 0);
    r.drv.make_available(30);
    // A table whose length is not a whole number of descriptors.
    r.drv.write_desc(31, table.0, 40, F_INDIRECT, 0);
    r.drv.make_available(31);
    // A table outside memory.
    r.drv.write_desc(32, OUTSIDE.0, 48, F_INDIRECT, 0);
    r.drv.make_available(32);
    // An indirect descriptor inside an indirect table.
    let nested = indirect_table(&mut r, &[(h, 16, false), (table, 48, false)]);
    let at = nested.unchecked_add(16 + 12);
    r.drv.mem.write_obj(F_INDIRECT, at).unwrap();
    let s2 = status_byte(&mut r);
    r.drv.write_desc(33, nested.0, 32, F_INDIRECT, 0);
    r.drv.make_available(33);
    // Too many data buffers for one request (UIO_MAXIOV).
    let mut bufs = vec![(h, 16, false)];
    bufs.extend(std::iter::repeat_n((data, 512, true), 1025));
    bufs.push((s2, 1, true));
    let big = indirect_table(&mut r, &bufs);
    r.drv
        .write_desc(34, big.0, 16 * bufs.len() as u32, F_INDIRECT, 0);
    r.drv.make_available(34);
    r.run();
    assert_eq!(r.drv.mem.read_obj::<u8>(s).unwrap(), VIRTIO_BLK_S_OK);
    let want: Vec<u8> = (512..1024).map(pattern).collect();
    assert_eq!(r.drv.read_bytes(data, 512), want);
    assert_dropped(&r, 31, None);
    assert_dropped(&r, 32, None);
    assert_dropped(&r, 33, None);
    assert_ioerr(
        &r,
        &Req {
            head: 34,
            status: s2,
        },
    );
    untouched(&img);
}

fn seg_max_data_buffers(engine: Engine) {
    // What we advertise as seg_max must be accepted.
    let (_img, mut r) = rig(engine);
    let bufs: Vec<(GuestAddress, u32, bool)> = (0..super::super::device::SEG_MAX)
        .map(|_| (r.drv.alloc(512), 512, true))
        .collect();
    let req = r.drv.request(VIRTIO_BLK_T_IN, 0, &bufs);
    r.run();
    assert_eq!(r.drv.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(
        r.drv.used_len(&req),
        super::super::device::SEG_MAX * 512 + 1
    );
    assert_eq!(
        r.drv.read_bytes(bufs[253].0, 512),
        (253 * 512..254 * 512).map(pattern).collect::<Vec<_>>()
    );
}

fn avail_index_runs_ahead(engine: Engine) {
    let (img, mut r) = rig(engine);
    // Claims 1000 new chains in a queue of 256.
    r.drv
        .mem
        .write_obj(1000u16, r.drv.avail.unchecked_add(2))
        .unwrap();
    r.run();
    assert_eq!(r.drv.used_idx(), 0);
    untouched(&img);
}

/// Random descriptor tables (direct and indirect, in and out of memory,
/// looping, zero-length...): whatever happens, no panic, every chain comes
/// back, and every used length fits what a chain can hold.
fn random_chains(engine: Engine) {
    let img = image(IMAGE);
    let mut opts = RigOptions::new(engine);
    // The rings sit high, where the small numbers that random chains read
    // out of headers (and use as buffer addresses) cannot reach them: the
    // guest may legally have the device scribble on its own rings, but then
    // this test could not count used elements.
    opts.ring_base = GuestAddress(0xf0_0000);
    let mut r = Rig::with(&disk_config(img.as_path(), false), opts);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let size = r.drv.size;
    let pool = r.drv.alloc(64 * 1024);
    for round in 0..300 {
        // Random headers and data in the pool.
        for i in 0..16u64 {
            let t = [0u32, 1, 4, 8, 11, 13, 99][(next() % 7) as usize];
            let at = pool.unchecked_add(i * 4096);
            r.drv.mem.write_obj(t, at).unwrap();
            r.drv
                .mem
                .write_obj(next() % 4096, at.unchecked_add(8))
                .unwrap();
        }
        for d in 0..size {
            let addr = match next() % 8 {
                0 => next(),
                1 => OUTSIDE.0,
                _ => pool.0 + next() % (64 * 1024),
            };
            let len = match next() % 6 {
                0 => 0,
                1 => next() as u32,
                2 => 16,
                3 => 1,
                _ => (next() % 4) as u32 * 512 + (next() % 2) as u32,
            };
            let flags = (next() % 8) as u16;
            let nxt = if next() % 10 == 0 {
                next() as u16
            } else {
                (next() % u64::from(size)) as u16
            };
            r.drv.write_desc(d, addr, len, flags, nxt);
        }
        let before = r.drv.used_idx();
        let heads: Vec<u16> = (0..8).map(|_| (next() % u64::from(size)) as u16).collect();
        for h in &heads {
            r.drv.make_available(*h);
        }
        r.run();
        let after = r.drv.used_idx();
        assert_eq!(after.wrapping_sub(before), 8, "round {round}: chains lost");
        for n in before..after {
            let (_, len) = r.drv.used_elem(n);
            assert!(len <= 4 * 512 * 256 + 1, "round {round}: used length {len}");
        }
    }
}

fn oversized_bounce(engine: Engine) {
    // O_DIRECT with a misaligned guest buffer needs a bounce buffer; a
    // huge request must not make the host allocate its size.
    let img = image(10 << 20);
    let mut cfg = disk_config(img.as_path(), false);
    cfg.direct = true;
    let mut r = Rig::new(&cfg, engine);
    if r.disk.mem_align() == 1 {
        eprintln!("note: O_DIRECT here takes any buffer address; nothing to bounce");
        return;
    }
    let len = (super::super::io::MAX_BOUNCE + 4096) as u32;
    let buf = r.drv.alloc(u64::from(len) + 4096).unchecked_add(1);
    let big = r.drv.request(VIRTIO_BLK_T_IN, 0, &[(buf, len, true)]);
    let (small, _) = r.drv.read(0, 4096);
    r.run();
    assert_ioerr(&r, &big);
    assert_eq!(r.drv.status(&small), VIRTIO_BLK_S_OK);
}

both_engines!(
    looping_chains,
    next_out_of_range,
    head_out_of_range,
    buffers_outside_memory,
    status_outside_memory,
    zero_length_buffers,
    missing_or_read_only_status,
    short_headers,
    data_in_the_wrong_direction,
    malformed_segments,
    chain_over_4gib,
    indirect_tables,
    seg_max_data_buffers,
    avail_index_runs_ahead,
    random_chains,
    oversized_bounce,
);
