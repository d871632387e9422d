//! The platform devices every utsuwa machine has: the COM1 UART, the i8042
//! (its reset line, and a keyboard for Ctrl-Alt-Del), the CMOS RTC, the
//! ACPI power-management registers and the PCI host bridge with its
//! configuration space.

pub mod acpi_pm;
pub mod i8042;
pub mod pci_host;
pub mod rtc;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an irqfd: writing the eventfd makes KVM
/// raise the GSI it was registered for.
pub struct IrqLine(pub EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Reads a little-endian value of up to 8 bytes.
pub(crate) fn le_read(data: &[u8]) -> u64 {
    data.iter().rev().fold(0, |acc, b| (acc << 8) | *b as u64)
}

/// Fills `data` with the low bytes of `value`, little-endian.
pub(crate) fn le_write(data: &mut [u8], value: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = value.checked_shr(8 * i as u32).unwrap_or(0) as u8;
    }
}
