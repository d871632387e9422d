//! The MADT ("APIC", ACPI 6.5 §5.2.12): the interrupt controllers of KVM's
//! in-kernel irqchip as a guest must see them: one enabled Local APIC per
//! vCPU, the IOAPIC, the ISA interrupt overrides and the LINT1 NMI.
//!
//! - **Local APICs:** vCPU `i` has APIC ID `i` and ACPI processor UID `i`,
//!   the UID the DSDT's processor device `C0xx` carries in `_UID`. vCPU 0,
//!   the boot processor, comes first as the spec recommends.
//! - **IOAPIC ID 0.** That is the reset value of KVM's IOAPIC ID register,
//!   which is only 4 bits wide, so an ID such as `num_cpus` (up to 255)
//!   could not even be stored in it. IOAPIC IDs need not differ from LAPIC
//!   IDs: since xAPIC the two sit on the system bus, not a shared APIC bus;
//!   64-bit Linux only checks that IOAPIC IDs are unique among IOAPICs, and
//!   32-bit Linux skips that check on an xAPIC (KVM's LAPIC is one).
//!   GSI base 0, so its 24 pins are GSIs 0..=23.
//! - **PCAT_COMPAT** is set: there are 8259s (KVM emulates a pair). Linux
//!   then assumes them present instead of probing. With a hardware-reduced
//!   FADT it uses the null PIC anyway and leaves them alone.
//! - **ISA IRQ 0 → GSI 2** (edge, active high), as on PC hardware. KVM's
//!   in-kernel PIT raises KVM GSI 0, and KVM's default routing sends GSI n
//!   to IOAPIC pin n. This override is only true if the VMM routes KVM GSI 0
//!   to IOAPIC pin 2 (`KVM_SET_GSI_ROUTING`), as QEMU does. A
//!   hardware-reduced Linux never uses the PIT, so it cannot tell.
//! - **ISA IRQ 9 (SCI) → GSI 9**, level, active high.
//! - **Local APIC NMI** on LINT1 of every processor, where a PC wires NMI
//!   (Linux warns if the NMI is on LINT0).

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;

use super::{aml_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// MADT revision for ACPI 6.5.
const MADT_REVISION: u8 = 6;
/// Header (36) + Local Interrupt Controller Address (4) + Flags (4).
const MADT_HEADER_LEN: u32 = 44;
/// MADT flag: the system also has dual 8259s.
const PCAT_COMPAT: u32 = 1;

/// The IOAPIC's ID (see the module doc).
const IOAPIC_ID: u8 = 0;
/// First GSI of the IOAPIC's pins.
const IOAPIC_GSI_BASE: u32 = 0;

/// The PIT's ISA IRQ and the GSI the override moves it to.
const PIT_ISA_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;

/// The SCI's ISA IRQ (the override keeps it on the same GSI).
const SCI_ISA_IRQ: u8 = {
    assert!(
        layout::ACPI_SCI_IRQ < 16,
        "the SCI override is for an ISA IRQ"
    );
    layout::ACPI_SCI_IRQ as u8
};

// Both overrides must name IOAPIC pins.
const _: () = assert!(PIT_GSI < IOAPIC_GSI_BASE + layout::IOAPIC_PINS);
const _: () = assert!(layout::ACPI_SCI_IRQ < IOAPIC_GSI_BASE + layout::IOAPIC_PINS);

/// The MADT keeps both controller addresses in 32-bit fields.
const LAPIC_ADDR: u32 = {
    assert!(layout::LAPIC_START <= u32::MAX as u64);
    layout::LAPIC_START as u32
};
const IOAPIC_ADDR: u32 = {
    assert!(layout::IOAPIC_START <= u32::MAX as u64);
    layout::IOAPIC_START as u32
};

/// MPS INTI flags (ACPI 6.5 table 5.26): polarity in bits 1:0, trigger
/// mode in bits 3:2.
const ACTIVE_HIGH: u16 = 0b01;
const EDGE: u16 = 0b01 << 2;
const LEVEL: u16 = 0b11 << 2;

/// Interrupt controller structure types this module writes by hand.
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Bus 0 is ISA in an Interrupt Source Override.
const BUS_ISA: u8 = 0;
/// "All processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

/// The MADT for `num_cpus` vCPUs (1..=255, checked by the caller).
pub(super) fn build(num_cpus: u8) -> Vec<u8> {
    // The crate's `MADT` type always writes Flags = 0 and has no setter for
    // it, so PCAT_COMPAT could not be set. Its generic `Sdt` keeps the length
    // and checksum right while the structures are appended.
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, LAPIC_ADDR);
    madt.write_u32(40, PCAT_COMPAT);

    for id in 0..num_cpus {
        let lapic = ProcessorLocalApic::new(id, id, EnabledStatus::Enabled);
        madt.append_slice(&aml_bytes(&lapic));
    }
    let ioapic = IoApic::new(IOAPIC_ID, IOAPIC_ADDR, IOAPIC_GSI_BASE);
    madt.append_slice(&aml_bytes(&ioapic));
    madt.append_slice(&interrupt_source_override(
        PIT_ISA_IRQ,
        PIT_GSI,
        ACTIVE_HIGH | EDGE,
    ));
    madt.append_slice(&interrupt_source_override(
        SCI_ISA_IRQ,
        layout::ACPI_SCI_IRQ,
        ACTIVE_HIGH | LEVEL,
    ));
    madt.append_slice(&local_apic_nmi(ALL_PROCESSORS, ACTIVE_HIGH | EDGE, 1));
    madt.as_slice().to_vec()
}

/// Interrupt Source Override (type 2, 10 bytes, ACPI 6.5 §5.2.12.5). Written
/// by hand: the crate has no x86 override structure.
fn interrupt_source_override(isa_irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut s = [0u8; 10];
    s[0] = TYPE_INTERRUPT_SOURCE_OVERRIDE;
    s[1] = s.len() as u8;
    s[2] = BUS_ISA;
    s[3] = isa_irq;
    s[4..8].copy_from_slice(&gsi.to_le_bytes());
    s[8..10].copy_from_slice(&flags.to_le_bytes());
    s
}

/// Local APIC NMI (type 4, 6 bytes, ACPI 6.5 §5.2.12.7). Written by hand: the
/// crate has no structure for it either.
fn local_apic_nmi(processor_uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let mut s = [0u8; 6];
    s[0] = TYPE_LOCAL_APIC_NMI;
    s[1] = s.len() as u8;
    s[2] = processor_uid;
    s[3..5].copy_from_slice(&flags.to_le_bytes());
    s[5] = lint;
    s
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// The interrupt controller structures after the 44-byte header, as
    /// (type, bytes), walked by their own length fields.
    fn structures(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = MADT_HEADER_LEN as usize;
        while off < madt.len() {
            let len = usize::from(madt[off + 1]);
            assert!(
                len >= 2 && off + len <= madt.len(),
                "bad structure at {off}"
            );
            out.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        out
    }

    fn madt(cpus: u16) -> Vec<u8> {
        let (mem, rsdp) = build_tables(&config(cpus));
        find_table(&mem, rsdp, b"APIC").1
    }

    #[test]
    fn header_has_the_lapic_address_and_pcat_compat() {
        let madt = madt(1);
        assert_eq!(madt[8], MADT_REVISION);
        assert_eq!(u64::from(u32_at(&madt, 36)), layout::LAPIC_START);
        assert_eq!(u32_at(&madt, 40), 1, "flags: PCAT_COMPAT only");
    }

    #[test]
    fn one_enabled_local_apic_per_vcpu_with_ids_in_order() {
        for cpus in [1u16, 2, 8, 255] {
            let lapics: Vec<Vec<u8>> = structures(&madt(cpus))
                .into_iter()
                .filter(|(kind, _)| *kind == 0)
                .map(|(_, s)| s)
                .collect();
            assert_eq!(lapics.len(), usize::from(cpus));
            for (i, s) in lapics.iter().enumerate() {
                assert_eq!(s.len(), 8);
                assert_eq!(usize::from(s[2]), i, "processor UID");
                assert_eq!(usize::from(s[3]), i, "APIC ID");
                assert_eq!(u32_at(s, 4), 1, "flags: enabled");
            }
            // Linux skips a Local APIC with the broadcast ID.
            assert!(lapics.iter().all(|s| s[3] != 0xff));
        }
    }

    #[test]
    fn one_ioapic_with_id_0_at_ioapic_start_from_gsi_0() {
        let ioapics: Vec<Vec<u8>> = structures(&madt(4))
            .into_iter()
            .filter(|(kind, _)| *kind == 1)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(ioapics.len(), 1);
        let s = &ioapics[0];
        assert_eq!(s.len(), 12);
        assert_eq!(s[2], 0, "IOAPIC ID");
        assert_eq!(u64::from(u32_at(s, 4)), layout::IOAPIC_START);
        assert_eq!(u32_at(s, 8), 0, "GSI base");
    }

    #[test]
    fn overrides_move_irq0_to_gsi2_and_keep_the_sci_level_triggered() {
        let overrides: Vec<(u8, u8, u32, u16)> = structures(&madt(2))
            .into_iter()
            .filter(|(kind, _)| *kind == 2)
            .map(|(_, s)| {
                assert_eq!(s.len(), 10);
                (s[2], s[3], u32_at(&s, 4), u16_at(&s, 8))
            })
            .collect();
        // (bus, source IRQ, GSI, flags): edge/high = 0b0101, level/high = 0b1101.
        assert_eq!(
            overrides,
            [(0, 0, 2, 0b0101), (0, 9, layout::ACPI_SCI_IRQ, 0b1101)]
        );
    }

    #[test]
    fn nmi_is_on_lint1_of_all_processors() {
        let nmis: Vec<Vec<u8>> = structures(&madt(2))
            .into_iter()
            .filter(|(kind, _)| *kind == 4)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(nmis, [vec![4, 6, 0xff, 0b0101, 0, 1]]);
    }

    #[test]
    fn no_other_structures() {
        let kinds: Vec<u8> = structures(&madt(3)).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [0, 0, 0, 1, 2, 2, 4]);
    }
}
