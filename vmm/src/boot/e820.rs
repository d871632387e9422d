//! The guest's physical memory map (what BIOS e820 would report), built
//! once from guest memory and the fixed layout and handed to the guest in
//! both boot protocols: Linux's zero page and PVH's memory map table.

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::layout;
use crate::memory::GuestMemoryMmap;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map of `mem`: RAM below the EBDA, the reserved BIOS area
/// holding the ACPI tables, RAM from 1 MiB on (split around the 32-bit
/// hole), and the ECAM window reserved so the guest trusts the MCFG table.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().0.max(layout::HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: layout::PCI_ECAM_START,
        size: layout::PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn usable(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_map() {
        let mem = create_guest_memory(512 << 20).unwrap();
        let map = memory_map(&mem);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 1 << 20,
                size: (512 << 20) - (1 << 20),
                kind: E820_RAM
            }
        );
        // Everything but the 385 KiB BIOS area is usable.
        assert_eq!(
            usable(&map),
            (512 << 20) - (layout::HIMEM_START - layout::EBDA_START)
        );
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        let mem = create_guest_memory(4 << 30).unwrap();
        let map = memory_map(&mem);
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:x?}");
        }
        assert!(map
            .iter()
            .any(|e| e.addr == layout::RAM_64BIT_START && e.kind == E820_RAM));
    }
}
