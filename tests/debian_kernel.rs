//! The loaders against Debian's real cloud kernel (fetched by
//! `utsuwa assets`, which the test command runs first): the bzImage header
//! parses, the 64-bit entry is found, and the zero page built from it
//! carries the kernel's own header fields. Runs on any host: nothing boots.

use vm_memory::{Bytes, GuestAddress};
use vmm::boot::{self, e820, zeropage, BootEntry};
use vmm::layout;
use vmm::memory::create_guest_memory;

#[test]
fn debian_bzimage_header_parses() {
    let guest = utsuwa::assets::ensure(&utsuwa::assets::default_cache_dir())
        .expect("default guest assets (run `utsuwa assets`)");
    let mem = create_guest_memory(256 << 20).unwrap();
    let kernel = boot::load_kernel(&mem, &guest.kernel).expect("load Debian's kernel");
    assert!(kernel.is_linux, "Debian's kernel carries a version string");
    let BootEntry::Linux64 {
        entry,
        header: Some(hdr),
    } = kernel.entry
    else {
        panic!(
            "a bzImage enters through the Linux 64-bit entry: {:?}",
            kernel.entry
        );
    };
    // Protocol 2.15 or later, relocatable, 64-bit entry at load address + 0x200.
    let version = { hdr.version };
    assert!(version >= 0x020f, "boot protocol {version:#x}");
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_ne!(hdr.xloadflags & 1, 0, "XLF_KERNEL_64");
    assert_eq!(entry.0, hdr.code32_start as u64 + 0x200);
    assert!(
        hdr.init_size as u64 > kernel.end - hdr.code32_start as u64,
        "init_size covers the decompressor"
    );
    assert!(hdr.cmdline_size >= 2047);
    // The kernel's version string, where the header says it is (offset + 0x200).
    let raw = std::fs::read(&guest.kernel).unwrap();
    let at = hdr.kernel_version as usize + 0x200;
    let banner = String::from_utf8_lossy(&raw[at..at + 64]);
    assert!(
        banner.starts_with(&guest.kernel_version),
        "{banner:?} vs {}",
        guest.kernel_version
    );

    let initrd = boot::load_initrd(
        &mem,
        &guest.initrd,
        kernel.end,
        zeropage::initrd_limit(Some(&hdr)),
    )
    .unwrap();
    let params = zeropage::build(
        Some(hdr),
        20,
        Some(initrd),
        &e820::memory_map(&mem),
        GuestAddress(layout::RSDP_START),
    )
    .unwrap();
    zeropage::write(&mem, &params).unwrap();
    let version_field: u16 = mem
        .read_obj(GuestAddress(layout::ZERO_PAGE_START + 0x206))
        .unwrap();
    assert_eq!(version_field, version);
    let ramdisk: u32 = mem
        .read_obj(GuestAddress(layout::ZERO_PAGE_START + 0x218))
        .unwrap();
    assert_eq!(ramdisk as u64, initrd.addr);
    assert!(initrd.addr + initrd.size <= hdr.initrd_addr_max as u64 + 1);
}
