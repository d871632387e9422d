//! The FADT ("FACP", ACPI 6.5 §5.2.9): a hardware-reduced platform with
//! sleep control/status and reset registers in I/O space, the IA-PC boot
//! flags for this machine, and the pointer to the DSDT.
//!
//! What Linux (x86) does with a hardware-reduced FADT, and the pitfalls:
//! - `HW_REDUCED_ACPI` makes `acpi_reduced_hw_init()` turn `timer_init` and
//!   `pre_vector_init` into no-ops and switch `legacy_pic` to the null PIC.
//!   So Linux never programs the PIT or the 8259s (it does not even mask
//!   them) and takes its tick from the LAPIC timer, calibrated against the
//!   TSC. With no legacy PIC, `nr_legacy_irqs()` is 0 and the IOAPIC gets a
//!   dynamic IRQ domain: a Linux IRQ number is no longer the GSI. Every
//!   legacy device must therefore be described in the DSDT with its GSI, and
//!   no IRQ number may be passed on the command line (e.g. `virtio_mmio.device`).
//! - ACPICA installs no SCI handler on a hardware-reduced platform, so
//!   `SCI_INT` (and the MADT's override for it) change nothing at run time;
//!   they are filled in for tools and other OSes. GSI 9 is level-triggered
//!   in the MADT, so anything that later uses it must be level-triggered.
//! - Power-off: Linux offers S5 (and registers `acpi_power_off`) only if
//!   `\_S5` evaluates *and* both SLEEP_CONTROL_REG and SLEEP_STATUS_REG have
//!   a non-zero address. To power off it writes 0x80 (WAK_STS) to the status
//!   port, then `(SLP_TYPa << 2) | 0x20` (SLP_EN) to the control port: with
//!   `ACPI_S5_SLEEP_TYPE` = 5 that is 0x34 on `ACPI_SLEEP_CONTROL_PORT`.
//! - Reset: x86 Linux tries the ACPI reset register first (`reboot_type`
//!   defaults to ACPI), which needs `RESET_REG_SUP`, FADT revision ≥ 2 and a
//!   non-zero address; it writes `RESET_VALUE` as one byte, then falls back
//!   to the i8042 (0xFE to port 0x64).
//! - The X_ fields for PM1/PM2/PM timer/GPE blocks stay zero. x86 Linux
//!   reads X_PM_TMR_BLK even when hardware-reduced; a zero block (address
//!   space 0, memory) means "no PM timer". An I/O address there would make
//!   it use a timer that does not exist.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{aml_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// IAPC_BOOT_ARCH (ACPI 6.5 table 5.11). Linux reads these even on a
/// hardware-reduced platform.
///
/// LEGACY_DEVICES: COM1, the RTC and the i8042 are ISA-style devices. Linux
/// only uses it to leave PNPBIOS alone, which it never finds here anyway.
const LEGACY_DEVICES: u16 = 1 << 0;
/// 8042: an i8042 at 0x60/0x64. Clear, Linux marks the controller "absent
/// per firmware" and the i8042 driver then probes only if PNP finds a
/// PNP0303/PNP0F13 device (the DSDT has one too).
const I8042: u16 = 1 << 1;
/// VGA Not Present: Linux must not poke the VGA registers.
const VGA_NOT_PRESENT: u16 = 1 << 2;
/// MSI Not Supported: left clear, PCI devices will use MSI(-X). Set, Linux
/// would call `pci_no_msi()`.
#[cfg(test)]
const MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// PCIe ASPM Controls: set, so the OS must not touch ASPM. The virtual links
/// have no power states; Linux calls `pcie_no_aspm()` (it would also give up
/// ASPM for lack of `_OSC`, see dsdt.rs).
const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// CMOS RTC Not Present: left clear, there is an MC146818 RTC at 0x70.
#[cfg(test)]
const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

const IAPC_BOOT_ARCH: u16 = LEGACY_DEVICES | I8042 | VGA_NOT_PRESENT | PCIE_ASPM_CONTROLS;

/// Hypervisor Vendor Identity (FADT offset 268): the vendor's name, no
/// version, all 8 bytes significant.
const HYPERVISOR_VENDOR: [u8; 8] = *b"UTSUWA\0\0";

/// SCI_INT is a 16-bit field.
const SCI_INT: u16 = {
    assert!(layout::ACPI_SCI_IRQ <= u16::MAX as u32);
    layout::ACPI_SCI_IRQ as u16
};

/// An 8-bit register in system I/O space, accessed a byte at a time.
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT, pointing at the DSDT at `dsdt_addr`.
pub(super) fn build(dsdt_addr: u64) -> Vec<u8> {
    // The builder makes a 276-byte revision 6.5 FADT and fills the header.
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        // X_DSDT only: the spec wants the 32-bit DSDT field zero when
        // X_DSDT is used.
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons, if any, are control-method devices. Clear,
        // Linux fabricates fixed-feature LNXPWRBN/LNXSLPBN devices that a
        // hardware-reduced platform can never signal.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        // No RTC wake status in fixed hardware (there is none). rtc-cmos
        // checks this flag before touching the fixed RTC event.
        .flag(Flags::FixRtc);
    // The builder has no setters for the rest; its fields are public.
    fadt.sci_int = SCI_INT.into();
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_byte_register(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_byte_register(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte_register(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    // The spec ignores CENTURY on hardware-reduced platforms, but Linux's
    // rtc-cmos still reads it, and our CMOS RTC keeps the century there.
    fadt.century = crate::devices::rtc::CENTURY as u8;
    // Left zero on purpose: PREFERRED_PM_PROFILE (unspecified), FACS
    // pointers (no FACS) and every legacy PM/GPE block.
    aml_bytes(&fadt.finalize())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    // Field offsets, ACPI 6.5 table 5.9.
    const DSDT: usize = 40;
    const SCI_INT_OFF: usize = 46;
    const IAPC_BOOT_ARCH_OFF: usize = 109;
    const FLAGS: usize = 112;
    const RESET_REG: usize = 116;
    const RESET_VALUE: usize = 128;
    const MINOR_VERSION: usize = 131;
    const X_FIRMWARE_CTRL: usize = 132;
    const X_DSDT: usize = 140;
    const X_PM_TMR_BLK: usize = 208;
    const SLEEP_CONTROL_REG: usize = 244;
    const SLEEP_STATUS_REG: usize = 256;
    const HYPERVISOR_VENDOR_OFF: usize = 268;

    // FADT flag bits, table 5.10.
    const FLAG_PWR_BUTTON: u32 = 1 << 4;
    const FLAG_SLP_BUTTON: u32 = 1 << 5;
    const FLAG_FIX_RTC: u32 = 1 << 6;
    const FLAG_RESET_REG_SUP: u32 = 1 << 10;
    const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;

    fn fadt() -> Vec<u8> {
        let (mem, rsdp) = build_tables(&config(2));
        find_table(&mem, rsdp, b"FACP").1
    }

    /// Checks a GAS for an 8-bit I/O register at `port`.
    fn assert_io_byte_register(fadt: &[u8], off: usize, port: u16) {
        let gas = &fadt[off..off + 12];
        assert_eq!(gas[0], 1, "address space: system I/O");
        assert_eq!(gas[1], 8, "register bit width");
        assert_eq!(gas[2], 0, "register bit offset");
        assert_eq!(gas[3], 1, "access size: byte");
        assert_eq!(u64_at(gas, 4), u64::from(port));
    }

    #[test]
    fn revision_6_5_hardware_reduced() {
        let fadt = fadt();
        assert_eq!((fadt[8], fadt[MINOR_VERSION]), (6, 5));
        let flags = u32_at(&fadt, FLAGS);
        let want = FLAG_HW_REDUCED_ACPI
            | FLAG_RESET_REG_SUP
            | FLAG_PWR_BUTTON
            | FLAG_SLP_BUTTON
            | FLAG_FIX_RTC;
        assert_eq!(flags, want, "flags {flags:#x}");
    }

    #[test]
    fn sleep_and_reset_registers_are_the_layout_ports() {
        let fadt = fadt();
        assert_io_byte_register(&fadt, SLEEP_CONTROL_REG, layout::ACPI_SLEEP_CONTROL_PORT);
        assert_io_byte_register(&fadt, SLEEP_STATUS_REG, layout::ACPI_SLEEP_STATUS_PORT);
        assert_io_byte_register(&fadt, RESET_REG, layout::ACPI_RESET_PORT);
        assert_eq!(fadt[RESET_VALUE], layout::ACPI_RESET_VALUE);
    }

    #[test]
    fn x_dsdt_points_at_the_dsdt_and_the_32_bit_pointers_are_zero() {
        let (mem, rsdp) = build_tables(&config(2));
        let (_, fadt) = find_table(&mem, rsdp, b"FACP");
        let dsdt = u64_at(&fadt, X_DSDT);
        assert_ne!(dsdt, 0);
        assert_eq!(&read(&mem, dsdt, 4), b"DSDT");
        assert_eq!(u32_at(&fadt, DSDT), 0);
        assert_eq!(u32_at(&fadt, 36), 0, "FIRMWARE_CTRL");
        assert_eq!(u64_at(&fadt, X_FIRMWARE_CTRL), 0, "no FACS");
    }

    #[test]
    fn boot_flags_sci_pm_timer_and_vendor() {
        let fadt = fadt();
        let boot = u16_at(&fadt, IAPC_BOOT_ARCH_OFF);
        assert_eq!(boot & I8042, I8042, "i8042 present");
        assert_eq!(boot & VGA_NOT_PRESENT, VGA_NOT_PRESENT);
        assert_eq!(boot & MSI_NOT_SUPPORTED, 0, "MSI must stay usable");
        assert_eq!(boot & PCIE_ASPM_CONTROLS, PCIE_ASPM_CONTROLS);
        assert_eq!(boot & CMOS_RTC_NOT_PRESENT, 0, "the RTC is there");
        assert_eq!(u32::from(u16_at(&fadt, SCI_INT_OFF)), layout::ACPI_SCI_IRQ);
        assert_eq!(
            &fadt[X_PM_TMR_BLK..X_PM_TMR_BLK + 12],
            &[0; 12],
            "no PM timer"
        );
        assert_eq!(&fadt[HYPERVISOR_VENDOR_OFF..], b"UTSUWA\0\0");
    }
}
