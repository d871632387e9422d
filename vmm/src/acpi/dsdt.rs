//! The DSDT (ACPI 6.5 §5.2.11.1): the AML namespace: `\_S5` for power-off,
//! one processor device per vCPU, the legacy ISA devices with their ports
//! and GSIs, the PCIe root bridge with its windows, and the motherboard
//! resource that reserves the ECAM.
//!
//! ```text
//! \_S5_            Package { ACPI_S5_SLEEP_TYPE, 0, 0, 0 }
//! \_SB_.C000..     ACPI0007 processors, _UID = MADT processor UID
//! \_SB_.COM1       PNP0501  IO 0x3f8/8, IRQ 4
//! \_SB_.RTC_       PNP0B00  IO 0x70/2,  IRQ 8
//! \_SB_.PS2K       PNP0303  IO 0x60/1, IO 0x64/1, IRQ 1
//! \_SB_.PCI0       PNP0A08 (_CID PNP0A03), segment 0, buses from mcfg.rs
//! \_SB_.ECAM       PNP0C02  Memory32Fixed(ECAM)
//! ```
//!
//! Why each is there, and what is left out:
//! - `\_S5`: ACPICA reads SLP_TYPa and SLP_TYPb from its first two elements
//!   (one element also works: then SLP_TYPb is bits 15:8 of it). The spec's
//!   form has four: SLP_TYPa, SLP_TYPb, two reserved. A hardware-reduced
//!   platform has no PM1b block, so SLP_TYPb is 0. How Linux uses it: fadt.rs.
//! - Processor devices: the spec requires every processor in the namespace,
//!   matched to its MADT entry by `_UID`. Linux brings the CPUs up from the
//!   MADT alone; with these it also binds its ACPI processor driver (idle via
//!   HLT, no `_CST`). No `_STA`/`_MAT`: no CPU hotplug yet.
//! - COM1, RTC, PS2K: with a hardware-reduced FADT the ISA IRQs are no longer
//!   identity-mapped to Linux IRQs (see fadt.rs), so these devices get their
//!   GSIs from here (8250_pnp, rtc-cmos, i8042 PNP probing). Each IRQ is an
//!   Extended Interrupt descriptor (the crate's only kind): consumer, edge,
//!   active high, exclusive — what ISA IRQs are.
//! - PCI0 `_CRS`: bus numbers, the I/O ranges around 0xcf8..=0xcff (which
//!   the bridge itself consumes: Linux drops exactly that range from the
//!   windows), the 32-bit MMIO window and the optional 64-bit one. Windows
//!   are non-prefetchable: Linux never places a non-prefetchable BAR in a
//!   prefetchable window, while either kind fits a non-prefetchable one.
//! - PCI0 has no `_ADR`: the spec says a device has `_HID` or `_ADR`, not
//!   both, and Linux identifies a host bridge by `_HID` alone.
//! - No `_OSC`: without it Linux says "platform retains control of PCIe
//!   features", disables ASPM and does not run native PCIe hotplug, AER, PME
//!   or DPC for this root. None of those exist here; MSI/MSI-X do not depend
//!   on `_OSC` (only the FADT's MSI_NOT_SUPPORTED bit turns them off). Add it
//!   when native PCIe hotplug is wanted.
//! - No `_PRT`: devices interrupt with MSI-X. Linux only looks for a `_PRT`
//!   entry for a device whose Interrupt Pin register is non-zero, so
//!   devices must report pin 0 (no INTx) until a `_PRT` exists.
//! - ECAM: Linux uses the MCFG region only if a PNP0C01/PNP0C02 device
//!   reserves it (see mcfg.rs); Linux's PNP "system" driver then also marks
//!   it busy.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name, Package,
    Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::mcfg::{PCI_FIRST_BUS, PCI_LAST_BUS, PCI_SEGMENT};
use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// DSDT revision 2: the AML interpreter uses 64-bit integers (below 2 it
/// would truncate them to 32 bits).
const DSDT_REVISION: u8 = 2;

/// The i8042's keyboard IRQ (ISA IRQ 1, the PC's wiring; `layout` has no
/// constant for it).
const I8042_KBD_IRQ: u32 = 1;

/// The PCI configuration mechanism #1 ports, consumed by the root bridge.
const PCI_CONFIG_PORTS: u16 = layout::PCI_CONFIG_ADDRESS_PORT;
const PCI_CONFIG_PORTS_LEN: u8 = 8;
const _: () = assert!(layout::PCI_CONFIG_DATA_PORT + 4 == PCI_CONFIG_PORTS + 8);

/// The 32-bit MMIO window and the ECAM as the 32-bit values their
/// descriptors hold.
const MMIO32_FIRST: u32 = layout::PCI_MMIO32_START as u32;
const MMIO32_LAST: u32 = (layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1) as u32;
const ECAM_BASE: u32 = layout::PCI_ECAM_START as u32;
const ECAM_LEN: u32 = layout::PCI_ECAM_SIZE as u32;
const _: () = assert!(layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE <= 1 << 32);
const _: () = assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= 1 << 32);

/// The DSDT for `num_cpus` vCPUs and the 64-bit PCI window `mmio64` (an
/// inclusive `(first, last)` range), if there is one.
pub(super) fn build(num_cpus: u8, mmio64: Option<(u64, u64)>) -> Vec<u8> {
    let mut sb = Vec::new();
    for id in 0..num_cpus {
        processor(id, &mut sb);
    }
    isa_device(
        "COM1",
        "PNP0501",
        &[(layout::COM1_PORT, 8)],
        layout::COM1_IRQ,
        &mut sb,
    );
    isa_device(
        "RTC_",
        "PNP0B00",
        &[(layout::RTC_PORT, 2)],
        layout::RTC_IRQ,
        &mut sb,
    );
    isa_device(
        "PS2K",
        "PNP0303",
        // Data port first: Linux's i8042 takes data, then command, in order.
        &[
            (layout::I8042_DATA_PORT, 1),
            (layout::I8042_COMMAND_PORT, 1),
        ],
        I8042_KBD_IRQ,
        &mut sb,
    );
    pci_root(mmio64, &mut sb);
    ecam_reservation(&mut sb);

    let mut aml = Vec::new();
    let s5 = Package::new(vec![&layout::ACPI_S5_SLEEP_TYPE, &0u8, &0u8, &0u8]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut aml);
    // The crate's AML objects borrow their children, so each device is
    // serialized on its own and `Scope::raw` wraps the bytes.
    aml.extend(Scope::raw("\\_SB_".into(), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}

/// `Device (Cxxx) { _HID "ACPI0007", _UID id }`, xxx the id in hex.
fn processor(id: u8, out: &mut Vec<u8>) {
    let name = format!("C{id:03X}");
    let hid = Name::new("_HID".into(), &"ACPI0007");
    let uid = Name::new("_UID".into(), &id);
    Device::new(Path::new(&name), vec![&hid, &uid]).to_aml_bytes(out);
}

/// An ISA device decoding fixed `(port, length)` ranges, with one IRQ.
fn isa_device(name: &str, hid: &str, ports: &[(u16, u8)], irq: u32, out: &mut Vec<u8>) {
    let ios: Vec<IO> = ports
        .iter()
        .map(|&(port, len)| IO::new(port, port, 1, len))
        .collect();
    // Consumer, edge-triggered, active high, exclusive.
    let irq = Interrupt::new(true, true, false, false, irq);
    let mut resources: Vec<&dyn Aml> = ios.iter().map(|io| io as &dyn Aml).collect();
    resources.push(&irq);
    let crs = ResourceTemplate::new(resources);
    let hid = Name::new("_HID".into(), &EISAName::new(hid));
    let uid = Name::new("_UID".into(), &0u8);
    let crs = Name::new("_CRS".into(), &crs);
    Device::new(name.into(), vec![&hid, &uid, &crs]).to_aml_bytes(out);
}

/// The PCIe root bridge `PCI0`.
fn pci_root(mmio64: Option<(u64, u64)>, out: &mut Vec<u8>) {
    let buses = AddressSpace::<u16>::new_bus_number(PCI_FIRST_BUS.into(), PCI_LAST_BUS.into());
    let config_ports = IO::new(PCI_CONFIG_PORTS, PCI_CONFIG_PORTS, 1, PCI_CONFIG_PORTS_LEN);
    let io_low = AddressSpace::<u16>::new_io(0, PCI_CONFIG_PORTS - 1, None);
    let io_high = AddressSpace::<u16>::new_io(
        PCI_CONFIG_PORTS + u16::from(PCI_CONFIG_PORTS_LEN),
        u16::MAX,
        None,
    );
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        MMIO32_FIRST,
        MMIO32_LAST,
        None,
    );
    let mmio64 = mmio64.map(|(first, last)| {
        AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            first,
            last,
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&buses, &config_ports, &io_low, &io_high, &mmio32];
    if let Some(window) = &mmio64 {
        resources.push(window);
    }
    let crs = ResourceTemplate::new(resources);

    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let seg = Name::new("_SEG".into(), &PCI_SEGMENT);
    let uid = Name::new("_UID".into(), &0u8);
    let bbn = Name::new("_BBN".into(), &PCI_FIRST_BUS);
    let crs = Name::new("_CRS".into(), &crs);
    Device::new("PCI0".into(), vec![&hid, &cid, &seg, &uid, &bbn, &crs]).to_aml_bytes(out);
}

/// The motherboard resource device reserving the ECAM.
fn ecam_reservation(out: &mut Vec<u8>) {
    let ecam = Memory32Fixed::new(true, ECAM_BASE, ECAM_LEN);
    let crs = ResourceTemplate::new(vec![&ecam]);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C02"));
    let uid = Name::new("_UID".into(), &0u8);
    let crs = Name::new("_CRS".into(), &crs);
    Device::new("ECAM".into(), vec![&hid, &uid, &crs]).to_aml_bytes(out);
}

#[cfg(test)]
#[path = "dsdt_tests.rs"]
mod tests;
