//! The kernel loaders: the fuzzer's bytes as the user's kernel file
//! (bzImage, ELF vmlinux with or without a PVH note, or garbage), loaded
//! into 32 MiB of guest memory with the boot path the builder runs: the
//! kernel, a 4 KiB initrd placed against the limits the kernel's header
//! sets, the command line checked against the header, and the zero page
//! or PVH start info. Invariants: an initrd lands page-aligned, above the
//! kernel and below every limit.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use utsuwa_fuzz::{scratch_file, GuestMemoryMmap};
use vm_memory::GuestAddress;
use vmm::boot::{self, e820, pvh, zeropage, BootEntry};
use vmm::memory::{create_guest_memory, low_ram_end};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

fn setup() -> &'static (GuestMemoryMmap, PathBuf) {
    static SETUP: OnceLock<(GuestMemoryMmap, PathBuf)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mem = create_guest_memory(32 << 20).expect("guest memory");
        (mem, scratch_file("initrd", &[0x42; 4096]))
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, initrd_path) = setup();
    let kernel_path = scratch_file("kernel", data);
    let Ok(kernel) = boot::load_kernel(mem, &kernel_path) else {
        return;
    };
    let header = match kernel.entry {
        BootEntry::Linux64 { header, .. } => header,
        BootEntry::Pvh(_) => None,
    };
    let limit = zeropage::initrd_limit(header.as_ref());
    let initrd = boot::load_initrd(mem, initrd_path, kernel.end, limit).ok();
    if let Some(i) = initrd {
        assert_eq!(i.addr % 4096, 0);
        assert!(i.addr >= kernel.end, "initrd over the kernel");
        assert!(
            i.addr + i.size <= limit.min(low_ram_end(mem)),
            "initrd past its limit"
        );
    }
    if boot::load_cmdline(mem, CMDLINE, header.as_ref()).is_err() {
        return;
    }
    let map = e820::memory_map(mem);
    match kernel.entry {
        BootEntry::Pvh(_) => {
            let _ = pvh::write(mem, initrd, &map, GuestAddress(0xe_0000));
        }
        BootEntry::Linux64 { header, .. } => {
            if let Ok(params) =
                zeropage::build(header, CMDLINE.len(), initrd, &map, GuestAddress(0xe_0000))
            {
                let _ = zeropage::write(mem, &params);
            }
        }
    }
});
