//! virtio-blk: a hostile driver's queue (descriptors, indirect tables,
//! available ring, request headers and segments from the fuzzer) parsed
//! by the device's request parser, then served for real by a queue
//! handler with the synchronous engine on a small image in /dev/shm.
//!
//! First byte: bit 0 read-only disk, bit 1 EVENT_IDX, bit 2 writethrough.
//! Then the queue (see `utsuwa_fuzz::FuzzQueue`), then the payload that
//! lands at `DATA` in guest memory.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use utsuwa_fuzz::{guest_memory, in_memory, scratch_file, write_payload, FuzzQueue, Input};
use virtio_queue::QueueT;
use vmm::fuzzing::block::{self, FuzzDisk};
use vmm::virtio::block::{
    DiskConfig, SECTOR_SIZE, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};

const DISK_BYTES: usize = 64 << 10;

fn disks() -> &'static [FuzzDisk; 2] {
    static DISKS: OnceLock<[FuzzDisk; 2]> = OnceLock::new();
    DISKS.get_or_init(|| {
        [false, true].map(|read_only| {
            let name = if read_only {
                "blk-ro.img"
            } else {
                "blk-rw.img"
            };
            let path = scratch_file(name, &vec![0x5a; DISK_BYTES]);
            let cfg = DiskConfig {
                path,
                read_only,
                serial: None,
                direct: false,
            };
            FuzzDisk::open(&cfg).expect("open the fuzz image")
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let disk = &disks()[usize::from(mode & 1)];
    let mem = guest_memory();
    let Some(fq) = FuzzQueue::build(&mem, &mut input, 0, mode & 2 != 0) else {
        return;
    };
    write_payload(&mem, input.rest());
    let capacity = disk.sectors() * SECTOR_SIZE;
    let block = u64::from(disk.block_size());

    // Parse every chain, on a copy of the queue.
    let mut queue = fq.queue();
    let mut popped = 0u16;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        popped += 1;
        assert!(popped <= fq.poppable(), "popped more chains than available");
        match block::parse(chain, &mem, disk) {
            Ok(req) => {
                assert!(req.head < fq.size);
                assert!(
                    in_memory(&mem, req.status, 1),
                    "status outside memory: {req:?}"
                );
                for &(addr, len) in &req.data {
                    assert!(len > 0 && in_memory(&mem, addr, u64::from(len)), "{req:?}");
                }
                for &(offset, len) in &req.ranges {
                    let end = offset.checked_add(len).expect("range end overflows");
                    assert!(end <= capacity, "range past the disk: {req:?}");
                }
                match req.req_type {
                    VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                        let (offset, len) = req.ranges[0];
                        assert!(offset % block == 0 && len % block == 0, "{req:?}");
                        match &req.transfer {
                            Some(Ok((len, iov))) => assert_eq!(len, iov, "{req:?}"),
                            other => panic!("checked buffers refused by the I/O: {other:?}"),
                        }
                    }
                    VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                        assert!(!req.ranges.is_empty() && req.ranges.len() <= 32);
                    }
                    _ => {}
                }
                if disk.read_only() {
                    assert!(
                        !matches!(
                            req.req_type,
                            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
                        ),
                        "write accepted on a read-only disk"
                    );
                }
            }
            Err(refused) => {
                if let Some(status) = refused.status {
                    assert!(in_memory(&mem, status, 1), "{refused:?}");
                }
            }
        }
    }

    // Serve the same chains as a worker does.
    let stats = block::serve(disk, fq.queue(), mem.clone(), mode & 4 != 0);
    assert!(stats.requests <= u64::from(popped));
    fq.check_used(&mem);
});
