//! The guest's physical address map and I/O port map: every fixed address
//! the machine uses, in one place, so the loaders, the ACPI tables and the
//! devices cannot disagree.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (left alone)
//! 0x0000_0500  boot GDT                  (64-bit entry state)
//! 0x0000_0520  boot IDT (empty)
//! 0x0000_6000  PVH hvm_start_info, then its memory map
//! 0x0000_7000  Linux boot_params ("zero page")
//! 0x0000_9000  PML4, PDPT, 4 page directories (identity map of 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX)
//! 0x0009_fc00  EBDA start: [EBDA, 1 MiB) is reserved in the e820 map
//! 0x000e_0000  RSDP, then the other ACPI tables (where the BIOS scan finds them)
//! 0x0010_0000  kernel (HIMEM_START); RAM continues up to MMIO32_START
//! 0xc000_0000  32-bit MMIO hole: PCI MMIO32 window, ECAM, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB, when the guest has more than MMIO32_START
//! ```

/// Boot GDT (four entries: null, code64, data, tss-less).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT: an empty one, the guest installs its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (initrd) follows the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map follows the module list.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Level-4 page table; PDPT and page directories follow it page by page.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line accepted (the Linux x86 limit is 2048; PVH has none).
pub const CMDLINE_MAX: usize = 4096;
/// Start of the Extended BIOS Data Area; [EBDA_START, HIMEM_START) is reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI RSDP, in the range a guest's BIOS-area scan looks at (0xe0000..0xfffff).
pub const RSDP_START: u64 = 0xe0000;
/// End (exclusive) of the area the ACPI tables may use.
pub const ACPI_END: u64 = 0x10_0000;
/// Where the kernel is loaded: the first byte of high memory.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM stops here and resumes at 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
/// PCI 32-bit MMIO window for BARs.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCIe enhanced configuration space (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers (the same address on every vCPU).
pub const LAPIC_START: u64 = 0xfee0_0000;
/// First address above the 32-bit hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// COM1 16550 UART.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller: data and command/status ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// CMOS RTC index and data ports.
pub const RTC_PORT: u16 = 0x70;
pub const RTC_IRQ: u32 = 8;
/// ACPI hardware-reduced sleep control register (8 bits, I/O space).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI hardware-reduced sleep status register (8 bits, I/O space).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (8 bits, I/O space); writing ACPI_RESET_VALUE resets.
pub const ACPI_RESET_PORT: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The `\_S5` sleep type the DSDT advertises; SLP_TYP written with SLP_EN powers off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// SCI interrupt line named in the FADT (unused by a hardware-reduced guest).
pub const ACPI_SCI_IRQ: u32 = 9;
/// PCI configuration mechanism #1.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;

/// Number of IOAPIC pins KVM's in-kernel IOAPIC has.
pub const IOAPIC_PINS: u32 = 24;

// The fixed areas must not overlap: checked when the crate compiles.
const _: () = {
    assert!(PVH_MEMMAP_START < ZERO_PAGE_START);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(RSDP_START < ACPI_END && ACPI_END <= HIMEM_START);
    assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
    assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
};

/// The guest RAM regions for a machine of `mem_size` bytes: below the 32-bit
/// hole first, the rest from 4 GiB up.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO32_START),
            (RAM_64BIT_START, mem_size - MMIO32_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions, vec![(0, MMIO32_START), (RAM_64BIT_START, 1 << 30)]);
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }
}
