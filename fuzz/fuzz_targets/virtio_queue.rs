//! The queue walker: descriptor chains from a hostile driver (direct and
//! indirect, loops, out-of-range indices, buffers across region seams
//! and into the hole) walked by virtio-queue and taken apart the way each
//! of our devices takes them: block requests, network receive and
//! transmit buffers, entropy requests. Whatever a device accepts must lie
//! in guest memory, and no walk may take more descriptors than the queue
//! (or an indirect table) holds.
//!
//! Bytes: a mode byte (bit 0 EVENT_IDX), the queue, the payload at `DATA`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use utsuwa_fuzz::{guest_memory, in_memory, scratch_file, write_payload, FuzzQueue, Input};
use virtio_queue::QueueT;
use vmm::fuzzing::block::FuzzDisk;
use vmm::fuzzing::{block, net, rng};
use vmm::virtio::block::DiskConfig;

fn disk() -> &'static FuzzDisk {
    static DISK: OnceLock<FuzzDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = scratch_file("queue.img", &[0; 4096]);
        FuzzDisk::open(&DiskConfig {
            path,
            read_only: false,
            serial: None,
            direct: false,
        })
        .expect("open the fuzz image")
    })
}

fn check_regions(mem: &utsuwa_fuzz::GuestMemoryMmap, regions: &[(u64, u32)]) {
    for &(addr, len) in regions {
        assert!(
            in_memory(mem, addr, u64::from(len)),
            "{addr:#x}+{len:#x} outside memory"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mem = guest_memory();
    let Some(fq) = FuzzQueue::build(&mem, &mut input, 0, mode & 1 != 0) else {
        return;
    };
    write_payload(&mem, input.rest());

    // virtio-queue's own walk: bounded, heads in range.
    let mut queue = fq.queue();
    let mut popped = 0u16;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        popped += 1;
        assert!(popped <= fq.poppable());
        // virtio-queue hands out any head the driver wrote; one past the
        // table walks to nothing, which every device refuses.
        let head_ok = chain.head_index() < fq.size;
        // A direct walk stops after `size` descriptors, an indirect one
        // after its table (at most 65535 entries): never unbounded.
        let descs = chain.count();
        assert!(descs <= usize::from(fq.size) + usize::from(u16::MAX));
        assert!(head_ok || descs == 0);
    }

    // Each device's view of the same chains.
    for device in 0..4 {
        let mut queue = fq.queue();
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            match device {
                0 => {
                    if let Ok(req) = block::parse(chain, &mem, disk()) {
                        check_regions(&mem, &req.data);
                        assert!(in_memory(&mem, req.status, 1));
                    }
                }
                1 | 2 => {
                    if let Ok((_, regions, len)) = net::collect(chain, &mem, device == 1, u64::MAX)
                    {
                        check_regions(&mem, &regions);
                        assert!(regions.len() <= 1024);
                        assert_eq!(len, regions.iter().map(|&(_, l)| u64::from(l)).sum::<u64>());
                    }
                }
                _ => {
                    if let Ok((_, regions, len)) = rng::parse(chain, &mem) {
                        check_regions(&mem, &regions);
                        assert!(len <= vmm::virtio::rng::MAX_REQUEST);
                        assert_eq!(len, regions.iter().map(|&(_, l)| l as usize).sum::<usize>());
                    }
                }
            }
        }
    }
});
