//! The PVH boot ABI's `hvm_start_info`: command line, initrd as the first
//! module, memory map and RSDP, handed to the 32-bit PVH entry in EBX.

use linux_loader::configurator::{pvh::PvhBootConfigurator, BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::e820::E820Entry;
use super::{BootError, LoadedInitrd};
use crate::layout;
use crate::memory::GuestMemoryMmap;

/// `hvm_start_info.magic`, "xEn3" with the top bit of the first byte flipped.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Writes the start info, module list and memory map.
pub fn write(
    mem: &GuestMemoryMmap,
    initrd: Option<LoadedInitrd>,
    map: &[E820Entry],
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        // Version 1 has the memory map fields.
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp.0,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: initrd.addr,
                size: initrd.size,
                ..Default::default()
            }],
            GuestAddress(layout::PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::WriteBootInfo(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::memory_map;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    #[test]
    fn start_info_follows_the_pvh_abi() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let map = memory_map(&mem);
        let initrd = LoadedInitrd {
            addr: 0x200_0000,
            size: 777,
        };
        write(&mem, Some(initrd), &map, GuestAddress(layout::RSDP_START)).unwrap();
        let base = layout::PVH_INFO_START;
        let rd32 = |off: u64| mem.read_obj::<u32>(GuestAddress(base + off)).unwrap();
        let rd64 = |off: u64| mem.read_obj::<u64>(GuestAddress(base + off)).unwrap();
        // Offsets from Xen's arch-x86/hvm/start_info.h.
        assert_eq!(rd32(0), XEN_HVM_START_MAGIC);
        assert_eq!(rd32(4), 1);
        assert_eq!(rd32(12), 1);
        assert_eq!(rd64(16), layout::PVH_MODLIST_START);
        assert_eq!(rd64(24), layout::CMDLINE_START);
        assert_eq!(rd64(32), layout::RSDP_START);
        assert_eq!(rd64(40), layout::PVH_MEMMAP_START);
        assert_eq!(rd32(48) as usize, map.len());
        let m = layout::PVH_MODLIST_START;
        assert_eq!(mem.read_obj::<u64>(GuestAddress(m)).unwrap(), 0x200_0000);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(m + 8)).unwrap(), 777);
        // Memory map entries: 24 bytes each (addr, size, type, reserved).
        let e = layout::PVH_MEMMAP_START + 24;
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(e)).unwrap(),
            layout::EBDA_START
        );
        assert_eq!(mem.read_obj::<u32>(GuestAddress(e + 16)).unwrap(), 2);
    }
}
