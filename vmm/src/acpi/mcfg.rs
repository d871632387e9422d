//! The MCFG (PCI Firmware spec 3.3 §4.1.2): where PCIe enhanced
//! configuration space (ECAM) lives — one allocation for segment 0 covering
//! the buses `layout::PCI_ECAM_SIZE` has room for (1 MiB per bus).
//!
//! Linux accepts an MCFG region only if it is reserved: its late check looks
//! for a PNP0C01/PNP0C02 device whose `_CRS` covers the whole region (the
//! DSDT's `\_SB.ECAM`). Its early check looks for an E820 reservation, and
//! since Linux 6.10 only when the SMBIOS BIOS date is before 2016 (a guest
//! without SMBIOS counts as old). When that early check fails Linux prints
//! "not using ECAM" and then adopts the region in the late, ACPI, check.

use acpi_tables::mcfg::MCFG;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// Each bus takes 1 MiB of ECAM (32 devices × 8 functions × 4 KiB).
const ECAM_BUS_SIZE: u64 = 1 << 20;

/// The PCI segment the root bridge is on (`_SEG` in the DSDT).
pub(super) const PCI_SEGMENT: u16 = 0;
/// First bus the ECAM decodes (`_BBN` in the DSDT).
pub(super) const PCI_FIRST_BUS: u8 = 0;
/// Last bus the ECAM decodes.
pub(super) const PCI_LAST_BUS: u8 = {
    let buses = layout::PCI_ECAM_SIZE / ECAM_BUS_SIZE;
    assert!(layout::PCI_ECAM_SIZE % ECAM_BUS_SIZE == 0);
    assert!(buses >= 1 && buses <= 256);
    (buses - 1) as u8
};

/// The MCFG with its single ECAM allocation.
pub(super) fn build() -> MCFG {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(
        layout::PCI_ECAM_START,
        PCI_SEGMENT,
        PCI_FIRST_BUS,
        PCI_LAST_BUS,
    );
    mcfg
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn one_allocation_for_the_ecam_buses() {
        let (mem, rsdp) = build_tables(&config(1));
        let (_, mcfg) = find_table(&mem, rsdp, b"MCFG");
        assert_eq!(
            mcfg.len(),
            44 + 16,
            "header, 8 reserved bytes, one allocation"
        );
        assert_eq!(u64_at(&mcfg, 36), 0, "reserved");
        let entry = &mcfg[44..];
        assert_eq!(u64_at(entry, 0), layout::PCI_ECAM_START);
        assert_eq!(u16_at(entry, 8), 0, "segment");
        assert_eq!(entry[10], 0, "start bus");
        let last = (layout::PCI_ECAM_SIZE >> 20) - 1;
        assert_eq!(u64::from(entry[11]), last, "end bus");
        assert_eq!(u32_at(entry, 12), 0, "reserved");
    }
}
