//! The Linux boot protocol's `boot_params` ("zero page"): the setup header
//! from the bzImage, the command line, the initrd, the e820 map and the
//! RSDP address, written where the 64-bit entry expects RSI to point.

use linux_loader::configurator::{linux::LinuxBootConfigurator, BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::GuestAddress;

use super::e820::E820Entry;
use super::{BootError, LoadedInitrd};
use crate::layout;
use crate::memory::GuestMemoryMmap;

/// "HdrS", the setup header's magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// type_of_loader: "undefined" bootloader ID.
const LOADER_UNDEFINED: u8 = 0xff;
/// loadflags: CAN_USE_HEAP.
const CAN_USE_HEAP: u8 = 0x80;
/// Most e820 entries the zero page has room for.
const E820_MAX: usize = 128;

/// Builds the zero page. `header` is the bzImage's setup header (None for
/// an ELF vmlinux entered at its 64-bit entry point).
pub fn build(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    map: &[E820Entry],
    rsdp: GuestAddress,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.header = HDRS_MAGIC;
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    // heap_end_ptr is relative to the real-mode code; unused by the 64-bit entry.
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.0;
    if map.len() > E820_MAX {
        return Err(BootError::WriteBootInfo("too many e820 entries".into()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at `layout::ZERO_PAGE_START`.
pub fn write(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::WriteBootInfo(e.to_string()))
}

/// The highest address (exclusive) the kernel accepts an initrd below.
pub fn initrd_limit(header: Option<&setup_header>) -> u64 {
    match header {
        // Protocol 2.03+ gives initrd_addr_max (the last usable byte).
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => h.initrd_addr_max as u64 + 1,
        // Older kernels: below 0x38000000, as the protocol says.
        Some(_) => 0x3800_0000,
        None => layout::MMIO32_START,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::memory_map;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn fields_land_at_the_protocol_offsets() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let map = memory_map(&mem);
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 0x1234,
        };
        let params = build(
            None,
            42,
            Some(initrd),
            &map,
            GuestAddress(layout::RSDP_START),
        )
        .unwrap();
        write(&mem, &params).unwrap();
        let zp = layout::ZERO_PAGE_START;
        let rd32 = |off: u64| mem.read_obj::<u32>(GuestAddress(zp + off)).unwrap();
        // Offsets from the kernel's Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(zp + 0x070)).unwrap(),
            layout::RSDP_START
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(zp + 0x1e8)).unwrap() as usize,
            map.len()
        );
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(zp + 0x1fe)).unwrap(),
            0xaa55
        );
        assert_eq!(rd32(0x202), HDRS_MAGIC);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(zp + 0x210)).unwrap(), 0xff);
        assert_eq!(rd32(0x218), 0x300_0000);
        assert_eq!(rd32(0x21c), 0x1234);
        assert_eq!(rd32(0x228), layout::CMDLINE_START as u32);
        assert_eq!(rd32(0x238), 42);
        // First e820 entry: 20 bytes at 0x2d0.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(zp + 0x2d0)).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(zp + 0x2d8)).unwrap(),
            layout::EBDA_START
        );
        assert_eq!(rd32(0x2e0), 1);
        // Second entry starts 20 bytes later.
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(zp + 0x2e4)).unwrap(),
            layout::EBDA_START
        );
    }

    #[test]
    fn initrd_limit_follows_the_header() {
        let mut h = setup_header {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_limit(Some(&h)), 0x8000_0000);
        h.version = 0x0202;
        assert_eq!(initrd_limit(Some(&h)), 0x3800_0000);
        assert_eq!(initrd_limit(None), layout::MMIO32_START);
    }
}
