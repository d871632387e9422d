//! The guest's ACPI tables (x86-64, hardware-reduced ACPI 6.5), and where they
//! land in guest memory.
//!
//! This module owns the table set as a whole: it checks the configuration,
//! places every table in `[layout::RSDP_START, layout::ACPI_END)`, links them
//! and writes them. The tables themselves are built in the submodules:
//!
//! ```text
//! RSDP (rev 2, at RSDP_START) ──► XSDT ──► FACP (fadt.rs) ──X_DSDT──► DSDT (dsdt.rs)
//!                                      ├─► APIC (madt.rs)
//!                                      └─► MCFG (mcfg.rs)
//! ```
//!
//! The RSDP comes first, at `RSDP_START` (16-byte aligned, inside the BIOS
//! area a guest scans), then DSDT, FADT, MADT, MCFG and XSDT, each 16-byte
//! aligned. All of it takes a few KiB of the 128 KiB area even at 255 vCPUs.
//!
//! Everything is built with the rust-vmm `acpi_tables` crate; the few places
//! that write bytes by hand say why.
//!
//! Decisions that hold for the whole set:
//! - **No RSDT.** The RSDP is revision 2 and names only the XSDT (its
//!   `RsdtAddress` is 0; both its checksums are set). Every ACPI 2.0+ OS,
//!   Linux included, uses the XSDT when the RSDP revision is above 1; only
//!   Linux's `acpi=rsdt` override would find nothing. The crate's `Rsdp`
//!   makes this choice too.
//! - **No FACS.** A hardware-reduced FADT may leave `FIRMWARE_CTRL` and
//!   `X_FIRMWARE_CTRL` zero: there is no global lock and no waking vector.
//! - **At most 255 vCPUs.** The MADT carries xAPIC entries (8-bit APIC IDs).
//!   ID 0xFF is the xAPIC broadcast ID and Linux ignores a Local APIC entry
//!   with that ID, so APIC IDs run 0..=254. More vCPUs need x2APIC entries,
//!   which are not written.

mod dsdt;
mod fadt;
mod madt;
mod mcfg;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout;

/// OEM ID in the RSDP and in every table header.
const OEM_ID: [u8; 6] = *b"UTSUWA";
/// OEM table ID in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"UTSUWAVM";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;

/// Most vCPUs the tables can describe (APIC IDs 0..=254, see the module doc).
pub const MAX_CPUS: u16 = 255;

/// Every table after the RSDP starts on this boundary.
const TABLE_ALIGN: u64 = 16;

// The legacy RSDP scan only looks at 16-byte boundaries.
const _: () = assert!(layout::RSDP_START % 16 == 0);

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs, 1..=[`MAX_CPUS`]; vCPU `i` has APIC ID and ACPI
    /// processor UID `i`.
    pub num_cpus: u16,
    /// The PCI root bridge's 64-bit MMIO window as `(start, size)`; a size of
    /// 0 leaves the window out. It must not overlap RAM or the 32-bit hole.
    pub pci_mmio64: (u64, u64),
}

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// `num_cpus` was 0.
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    /// More vCPUs than xAPIC MADT entries can describe.
    #[error("{0} vCPUs: the MADT describes at most {MAX_CPUS} (x2APIC entries are not written)")]
    TooManyCpus(u16),
    /// The 64-bit PCI window runs past the end of the address space.
    #[error("64-bit PCI MMIO window at {start:#x} of {size:#x} bytes wraps around")]
    BadPciWindow {
        /// First address of the window.
        start: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// A table does not fit below the end of the ACPI area.
    #[error("ACPI table {table} ({len} bytes at {addr:#x}) does not fit below {end:#x}")]
    OutOfSpace {
        /// Signature of the table that did not fit.
        table: &'static str,
        /// Where it would have started.
        addr: u64,
        /// Its length in bytes.
        len: usize,
        /// End (exclusive) of the ACPI area.
        end: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("writing ACPI table {table} at {addr:#x} into guest memory")]
    GuestMemory {
        /// Signature of the table being written.
        table: &'static str,
        /// Where it was being written.
        addr: u64,
        /// What guest memory said.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the RSDP at [`layout::RSDP_START`] and the other tables after it,
/// below [`layout::ACPI_END`]; returns the RSDP's address (for
/// `boot_params.acpi_rsdp_addr` or PVH's `rsdp_paddr`).
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    write_tables(mem, cfg, layout::RSDP_START, layout::ACPI_END)
}

/// [`create_acpi_tables`] with the area `[start, end)` as a parameter, so the
/// tests can run out of space.
fn write_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
    start: u64,
    end: u64,
) -> Result<GuestAddress, AcpiError> {
    let cpus = cpu_count(cfg.num_cpus)?;
    let mmio64 = mmio64_window(cfg.pci_mmio64)?;

    let mut area = Area {
        mem,
        next: start + Rsdp::len() as u64,
        end,
    };
    let dsdt = area.put("DSDT", &dsdt::build(cpus, mmio64))?;
    let fadt = area.put("FACP", &fadt::build(dsdt))?;
    let madt = area.put("APIC", &madt::build(cpus))?;
    let mcfg = area.put("MCFG", &aml_bytes(&mcfg::build()))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for table in [fadt, madt, mcfg] {
        xsdt.add_entry(table);
    }
    let xsdt = area.put("XSDT", &aml_bytes(&xsdt))?;

    area.write_at("RSDP", start, &aml_bytes(&Rsdp::new(OEM_ID, xsdt)))?;
    Ok(GuestAddress(start))
}

/// Checks the vCPU count and narrows it to the 8 bits a MADT entry holds.
fn cpu_count(num_cpus: u16) -> Result<u8, AcpiError> {
    match num_cpus {
        0 => Err(AcpiError::NoCpus),
        n if n > MAX_CPUS => Err(AcpiError::TooManyCpus(n)),
        // MAX_CPUS is 255, so this always fits.
        n => u8::try_from(n).map_err(|_| AcpiError::TooManyCpus(n)),
    }
}

/// The 64-bit window as an inclusive `(first, last)` range, if it has one.
fn mmio64_window((start, size): (u64, u64)) -> Result<Option<(u64, u64)>, AcpiError> {
    if size == 0 {
        return Ok(None);
    }
    match start.checked_add(size - 1) {
        Some(last) => Ok(Some((start, last))),
        None => Err(AcpiError::BadPciWindow { start, size }),
    }
}

/// Serializes one of the crate's tables.
fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The part of the ACPI area not yet used.
struct Area<'a, M> {
    mem: &'a M,
    next: u64,
    end: u64,
}

impl<M: GuestMemory> Area<'_, M> {
    /// Writes `bytes` at the next aligned address and returns that address.
    fn put(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        self.write_at(table, addr, bytes)?;
        self.next = addr + bytes.len() as u64;
        Ok(addr)
    }

    /// Writes `bytes` at `addr`, which must leave them below the end.
    fn write_at(&self, table: &'static str, addr: u64, bytes: &[u8]) -> Result<(), AcpiError> {
        let fits = addr
            .checked_add(bytes.len() as u64)
            .is_some_and(|table_end| table_end <= self.end);
        if !fits {
            return Err(AcpiError::OutOfSpace {
                table,
                addr,
                len: bytes.len(),
                end: self.end,
            });
        }
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::GuestMemory {
                table,
                addr,
                source,
            })
    }
}

/// Helpers the table tests share: guest memory, and reading tables back out
/// of it the way a guest finds them (RSDP → XSDT → tables, FADT → DSDT).
#[cfg(test)]
mod testutil {
    use super::{create_acpi_tables, AcpiConfig};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// 2 MiB of guest memory at 0, enough for the ACPI area.
    pub(super) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    pub(super) fn config(num_cpus: u16) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            pci_mmio64: (0x80_0000_0000, 0x40_0000_0000),
        }
    }

    /// Memory with the tables for `cfg` in it, and the RSDP's address.
    pub(super) fn build_tables(cfg: &AcpiConfig) -> (GuestMemoryMmap, u64) {
        let mem = memory();
        let rsdp = create_acpi_tables(&mem, cfg).unwrap();
        (mem, rsdp.0)
    }

    pub(super) fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// The whole table at `addr`, as long as its header's length says.
    pub(super) fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len = u32_at(&read(mem, addr, 36), 4);
        assert!(len >= 36, "table at {addr:#x} claims {len} bytes");
        read(mem, addr, len as usize)
    }

    /// Addresses in the XSDT that the RSDP at `rsdp` points to.
    pub(super) fn xsdt_entries(mem: &GuestMemoryMmap, rsdp: u64) -> Vec<u64> {
        let xsdt = read_table(mem, u64_at(&read(mem, rsdp, 36), 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect()
    }

    /// The table with signature `sig` and its address, found as a guest
    /// finds it. The DSDT is reached through the FADT's X_DSDT.
    pub(super) fn find_table(mem: &GuestMemoryMmap, rsdp: u64, sig: &[u8; 4]) -> (u64, Vec<u8>) {
        if sig == b"DSDT" {
            let (_, fadt) = find_table(mem, rsdp, b"FACP");
            let addr = u64_at(&fadt, 140);
            return (addr, read_table(mem, addr));
        }
        xsdt_entries(mem, rsdp)
            .into_iter()
            .map(|addr| (addr, read_table(mem, addr)))
            .find(|(_, table)| &table[0..4] == sig)
            .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(sig)))
    }

    /// Byte sum, which is 0 over any correctly checksummed ACPI structure.
    pub(super) fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    pub(super) fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    pub(super) fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const ALL: [&[u8; 4]; 4] = [b"FACP", b"APIC", b"MCFG", b"DSDT"];

    #[test]
    fn rsdp_is_at_rsdp_start_with_both_checksums() {
        let (mem, rsdp) = build_tables(&config(2));
        assert_eq!(rsdp, layout::RSDP_START);
        let bytes = read(&mem, rsdp, 36);
        assert_eq!(&bytes[0..8], b"RSD PTR ");
        assert_eq!(sum(&bytes[0..20]), 0, "ACPI 1.0 checksum (first 20 bytes)");
        assert_eq!(sum(&bytes), 0, "extended checksum (all 36 bytes)");
        assert_eq!(&bytes[9..15], &OEM_ID);
        assert_eq!(bytes[15], 2, "revision");
        assert_eq!(u32_at(&bytes, 16), 0, "no RSDT");
        assert_eq!(u32_at(&bytes, 20), 36, "length");
        let xsdt = u64_at(&bytes, 24);
        assert_eq!(&read(&mem, xsdt, 4), b"XSDT");
    }

    #[test]
    fn every_table_has_its_signature_length_and_checksum() {
        for cpus in [1, 2, 8, 255] {
            let (mem, rsdp) = build_tables(&config(cpus));
            let xsdt_addr = u64_at(&read(&mem, rsdp, 36), 24);
            let xsdt = read_table(&mem, xsdt_addr);
            assert_eq!(sum(&xsdt), 0, "XSDT checksum");
            assert_eq!(xsdt.len(), 36 + 3 * 8, "XSDT length");
            for sig in ALL {
                let (_, table) = find_table(&mem, rsdp, sig);
                assert_eq!(&table[0..4], sig);
                assert_eq!(sum(&table), 0, "{} checksum", String::from_utf8_lossy(sig));
                assert_eq!(&table[10..16], &OEM_ID);
                assert_eq!(&table[16..24], &OEM_TABLE_ID);
            }
            let (_, fadt) = find_table(&mem, rsdp, b"FACP");
            assert_eq!(fadt.len(), 276, "ACPI 6.5 FADT length");
            let (_, madt) = find_table(&mem, rsdp, b"APIC");
            let entries = 8 * usize::from(cpus) + 12 + 2 * 10 + 6;
            assert_eq!(madt.len(), 44 + entries, "MADT length");
            let (_, mcfg) = find_table(&mem, rsdp, b"MCFG");
            assert_eq!(mcfg.len(), 44 + 16, "MCFG length");
        }
    }

    #[test]
    fn xsdt_lists_fadt_madt_mcfg_and_not_the_dsdt() {
        let (mem, rsdp) = build_tables(&config(4));
        let sigs: Vec<Vec<u8>> = xsdt_entries(&mem, rsdp)
            .into_iter()
            .map(|addr| read(&mem, addr, 4))
            .collect();
        assert_eq!(sigs, [b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]);
    }

    #[test]
    fn tables_stay_in_the_acpi_area_aligned_and_apart() {
        for cpus in [1, 255] {
            let (mem, rsdp) = build_tables(&config(cpus));
            let xsdt = u64_at(&read(&mem, rsdp, 36), 24);
            let mut spans = vec![(rsdp, 36), (xsdt, read_table(&mem, xsdt).len() as u64)];
            for sig in ALL {
                let (addr, table) = find_table(&mem, rsdp, sig);
                assert_eq!(addr % 16, 0, "{sig:?} alignment");
                spans.push((addr, table.len() as u64));
            }
            spans.sort();
            for (addr, len) in &spans {
                assert!(*addr >= layout::RSDP_START && addr + len <= layout::ACPI_END);
            }
            for pair in spans.windows(2) {
                assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap in {spans:x?}");
            }
        }
    }

    #[test]
    fn vcpu_count_is_checked() {
        let mem = memory();
        assert!(matches!(
            create_acpi_tables(&mem, &config(0)),
            Err(AcpiError::NoCpus)
        ));
        assert!(matches!(
            create_acpi_tables(&mem, &config(256)),
            Err(AcpiError::TooManyCpus(256))
        ));
        assert!(create_acpi_tables(&mem, &config(MAX_CPUS)).is_ok());
    }

    #[test]
    fn a_wrapping_mmio64_window_is_refused_and_an_empty_one_allowed() {
        let mem = memory();
        let mut cfg = config(1);
        cfg.pci_mmio64 = (u64::MAX - 0xfff, 0x2000);
        assert!(matches!(
            create_acpi_tables(&mem, &cfg),
            Err(AcpiError::BadPciWindow { size: 0x2000, .. })
        ));
        cfg.pci_mmio64 = (u64::MAX - 0xfff, 0x1000);
        assert!(create_acpi_tables(&mem, &cfg).is_ok());
        cfg.pci_mmio64 = (0, 0);
        assert!(create_acpi_tables(&mem, &cfg).is_ok());
    }

    #[test]
    fn running_out_of_space_is_an_error() {
        let mem = memory();
        let start = layout::RSDP_START;
        let err = write_tables(&mem, &config(8), start, start + 0x100).unwrap_err();
        assert!(
            matches!(err, AcpiError::OutOfSpace { table: "DSDT", .. }),
            "{err}"
        );
        // Enough room for everything but the XSDT.
        let (full, _) = build_tables(&config(8));
        let xsdt = u64_at(&read(&full, start, 36), 24);
        let err = write_tables(&mem, &config(8), start, xsdt + 8).unwrap_err();
        assert!(
            matches!(err, AcpiError::OutOfSpace { table: "XSDT", .. }),
            "{err}"
        );
    }

    #[test]
    fn a_guest_memory_failure_is_an_error() {
        // RAM ends before the ACPI area.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xe_0000)]).unwrap();
        let err = create_acpi_tables(&mem, &config(1)).unwrap_err();
        assert!(
            matches!(err, AcpiError::GuestMemory { table: "DSDT", .. }),
            "{err}"
        );
    }
}
