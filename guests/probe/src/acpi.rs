//! ACPI: find the RSDP, walk the XSDT/RSDT, verify every checksum, and pull
//! out what the other checks need (FADT registers, MADT, MCFG, `\_S5`).

use crate::boot::{Boot, Entry};
use crate::console::Sig;
use crate::hw::{phys_bytes, phys_read_u16, phys_read_u32, phys_readable};
use crate::msg::Msg;
use core::fmt::{self, Write as _};

pub const MAX_TABLES: usize = 32;
pub const MAX_CPUS: usize = 256;
pub const MAX_IOAPICS: usize = 8;
pub const MAX_ISOS: usize = 16;
pub const MAX_MCFG: usize = 4;

/// A Generic Address Structure.
#[derive(Clone, Copy, Default)]
pub struct Gas {
    pub space: u8,
    pub bit_width: u8,
    pub access: u8,
    pub addr: u64,
}

pub const GAS_MEMORY: u8 = 0;
pub const GAS_IO: u8 = 1;

impl Gas {
    fn parse(t: &[u8], off: usize) -> Gas {
        if t.len() < off + 12 {
            return Gas::default();
        }
        Gas {
            space: t[off],
            bit_width: t[off + 1],
            access: t[off + 3],
            addr: le64(&t[off + 4..]),
        }
    }

    fn io(port: u32, width: u8) -> Gas {
        Gas {
            space: GAS_IO,
            bit_width: width,
            access: 0,
            addr: u64::from(port),
        }
    }

    pub fn present(&self) -> bool {
        self.addr != 0 && (self.space == GAS_MEMORY || self.space == GAS_IO)
    }

    /// Access width in bits: the bit width, else the access size, else 8.
    pub fn width(&self) -> u8 {
        match (self.bit_width, self.access) {
            (8 | 16 | 32, _) => self.bit_width,
            (_, 2) => 16,
            (_, 3) => 32,
            _ => 8,
        }
    }
}

impl fmt::Display for Gas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.space {
            _ if !self.present() => f.write_str("none"),
            GAS_IO => write!(f, "io:{:#x}", self.addr),
            _ => write!(f, "mem:{:#x}", self.addr),
        }
    }
}

#[derive(Clone, Copy, Default)]
pub struct Table {
    pub sig: [u8; 4],
    pub addr: u64,
    pub len: u32,
    pub checksum_ok: bool,
}

#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub apic_id: u32,
    pub enabled: bool,
}

#[derive(Clone, Copy, Default)]
pub struct IoApic {
    pub id: u8,
    pub addr: u64,
    pub gsi_base: u32,
}

#[derive(Clone, Copy, Default)]
pub struct Iso {
    pub bus: u8,
    pub source: u8,
    pub gsi: u32,
    pub flags: u16,
}

#[derive(Clone, Copy, Default)]
pub struct Mcfg {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

#[derive(Default)]
pub struct Fadt {
    pub revision: u8,
    pub flags: u32,
    pub hw_reduced: bool,
    pub smi_cmd: u32,
    pub acpi_enable: u8,
    pub pm1a_cnt: Gas,
    pub pm1b_cnt: Gas,
    pub sleep_control: Gas,
    pub sleep_status: Gas,
    pub reset_reg: Gas,
    pub reset_value: u8,
    pub century: u8,
    pub iapc_boot_arch: u16,
    pub dsdt: u64,
}

pub const FADT_RESET_REG_SUP: u32 = 1 << 10;
pub const FADT_HW_REDUCED: u32 = 1 << 20;

pub struct Acpi {
    pub rsdp: u64,
    pub rsdp_source: &'static str,
    pub revision: u8,
    pub oem: [u8; 6],
    pub root: u64,
    pub tables: [Table; MAX_TABLES],
    pub table_count: usize,
    pub fadt: Option<Fadt>,
    pub has_madt: bool,
    pub lapic_addr: u64,
    pub cpus: [Cpu; MAX_CPUS],
    pub cpu_count: usize,
    pub ioapics: [IoApic; MAX_IOAPICS],
    pub ioapic_count: usize,
    pub isos: [Iso; MAX_ISOS],
    pub iso_count: usize,
    pub mcfg: [Mcfg; MAX_MCFG],
    pub mcfg_count: usize,
    /// SLP_TYPa of `\_S5` (DSDT or an SSDT).
    pub s5: Option<u8>,
    /// ECAM base from a `_CBA` object in the DSDT.
    pub cba: Option<u64>,
    /// The largest memory window below 4 GiB and the largest above, from the
    /// address-space descriptors of the DSDT's `Name (_CRS, ResourceTemplate ...)`
    /// objects (the PCI host bridge's windows): (base, length).
    pub pci_mem32: Option<Window>,
    pub pci_mem64: Option<Window>,
    /// Everything wrong found on the way (checksums, lengths...).
    pub problems: Msg,
}

impl Acpi {
    pub fn tables(&self) -> &[Table] {
        &self.tables[..self.table_count]
    }

    pub fn find(&self, sig: &[u8; 4]) -> Option<&Table> {
        self.tables().iter().find(|t| &t.sig == sig)
    }

    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus[..self.cpu_count]
    }

    pub fn ioapics(&self) -> &[IoApic] {
        &self.ioapics[..self.ioapic_count]
    }

    pub fn isos(&self) -> &[Iso] {
        &self.isos[..self.iso_count]
    }

    pub fn mcfg(&self) -> &[Mcfg] {
        &self.mcfg[..self.mcfg_count]
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from(le32(b)) | (u64::from(le32(&b[4..])) << 32)
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

/// RSDP at `addr`: signature, v1 checksum, and (revision >= 2) the extended one.
fn rsdp_valid(addr: u64) -> Result<(), &'static str> {
    if !phys_readable(addr, 36) || phys_bytes(addr, 8) != b"RSD PTR " {
        return Err("no RSDP signature");
    }
    if sum(phys_bytes(addr, 20)) != 0 {
        return Err("RSDP checksum bad");
    }
    if phys_bytes(addr, 16)[15] >= 2 {
        let len = u64::from(phys_read_u32(addr + 20));
        if !(36..=4096).contains(&len) || !phys_readable(addr, len) {
            return Err("RSDP length bad");
        }
        if sum(phys_bytes(addr, len as usize)) != 0 {
            return Err("RSDP extended checksum bad");
        }
    }
    Ok(())
}

fn scan_rsdp(start: u64, end: u64) -> Option<u64> {
    (start..end)
        .step_by(16)
        .find(|&a| phys_bytes(a, 8) == b"RSD PTR " && rsdp_valid(a).is_ok())
}

/// Find and parse everything; `None` without an RSDP. Problems are collected, not fatal.
pub fn discover(boot: &Boot) -> Result<Acpi, Msg> {
    let mut problems = Msg::new();
    let given = match boot.entry {
        Entry::Pvh => "pvh",
        _ => "boot_params",
    };
    let (rsdp, source) = if boot.rsdp != 0 {
        if let Err(e) = rsdp_valid(boot.rsdp) {
            return Err(fail!("RSDP from {given} at {:#x}: {e}", boot.rsdp));
        }
        (boot.rsdp, given)
    } else {
        let ebda = u64::from(phys_read_u16(0x40e)) << 4;
        let found = if (0x80000..0xa0000).contains(&ebda) {
            scan_rsdp(ebda, ebda + 1024)
        } else {
            None
        };
        match found.or_else(|| scan_rsdp(0xe0000, 0x100000)) {
            Some(a) => (a, "scan"),
            None => {
                return Err(fail!(
                    "no RSDP ({given} gave none, none in EBDA or 0xe0000-0xfffff)"
                ))
            }
        }
    };
    let r = phys_bytes(rsdp, 36);
    let revision = r[15];
    let mut oem = [0u8; 6];
    oem.copy_from_slice(&r[9..15]);
    let xsdt = if revision >= 2 { le64(&r[24..]) } else { 0 };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(le32(&r[16..])), 4)
    };

    let mut acpi = Acpi {
        rsdp,
        rsdp_source: source,
        revision,
        oem,
        root,
        tables: [Table::default(); MAX_TABLES],
        table_count: 0,
        fadt: None,
        has_madt: false,
        lapic_addr: 0xfee0_0000,
        cpus: [Cpu::default(); MAX_CPUS],
        cpu_count: 0,
        ioapics: [IoApic::default(); MAX_IOAPICS],
        ioapic_count: 0,
        isos: [Iso::default(); MAX_ISOS],
        iso_count: 0,
        mcfg: [Mcfg::default(); MAX_MCFG],
        mcfg_count: 0,
        s5: None,
        cba: None,
        pci_mem32: None,
        pci_mem64: None,
        problems: Msg::new(),
    };

    let Some(root_table) = add_table(&mut acpi, root, &mut problems) else {
        acpi.problems = problems;
        return Ok(acpi);
    };
    let expected_root = if entry_size == 8 { b"XSDT" } else { b"RSDT" };
    if &root_table[..4] != expected_root {
        let _ = write!(
            problems,
            "root table at {root:#x} is {} not {}; ",
            Sig(&root_table[..4]),
            Sig(expected_root)
        );
    }
    let entries = &root_table[36..];
    for e in entries.chunks_exact(entry_size) {
        let addr = if entry_size == 8 {
            le64(e)
        } else {
            u64::from(le32(e))
        };
        let Some(t) = add_table(&mut acpi, addr, &mut problems) else {
            continue;
        };
        match &t[..4] {
            b"FACP" => parse_fadt(&mut acpi, t),
            b"APIC" => parse_madt(&mut acpi, t),
            b"MCFG" => parse_mcfg(&mut acpi, t),
            _ => {}
        }
    }
    if let Some(dsdt) = acpi.fadt.as_ref().map(|f| f.dsdt).filter(|&d| d != 0) {
        if let Some(t) = add_table(&mut acpi, dsdt, &mut problems) {
            if &t[..4] != b"DSDT" {
                let _ = write!(
                    problems,
                    "FADT DSDT pointer {dsdt:#x} has {}; ",
                    Sig(&t[..4])
                );
            }
            acpi.s5 = find_s5(&t[36..]);
            acpi.cba = find_cba(&t[36..]);
            (acpi.pci_mem32, acpi.pci_mem64) = find_mem_windows(&t[36..]);
        }
    }
    if acpi.s5.is_none() {
        for i in 0..acpi.table_count {
            let t = acpi.tables[i];
            if &t.sig == b"SSDT" && t.checksum_ok {
                acpi.s5 = find_s5(&phys_bytes(t.addr, t.len as usize)[36..]);
                if acpi.s5.is_some() {
                    break;
                }
            }
        }
    }
    let from_madt = core::mem::replace(&mut acpi.problems, problems);
    let _ = write!(acpi.problems, "{from_madt}");
    Ok(acpi)
}

/// Record the table at `addr`; its bytes if its header and length are sane.
fn add_table(acpi: &mut Acpi, addr: u64, problems: &mut Msg) -> Option<&'static [u8]> {
    if !phys_readable(addr, 36) {
        let _ = write!(problems, "table address {addr:#x} out of range; ");
        return None;
    }
    let len = phys_read_u32(addr + 4);
    let mut sig = [0u8; 4];
    sig.copy_from_slice(phys_bytes(addr, 4));
    if !(36..=16 << 20).contains(&len) || !phys_readable(addr, u64::from(len)) {
        let _ = write!(
            problems,
            "table {} at {addr:#x} has bad length {len}; ",
            Sig(&sig)
        );
        return None;
    }
    let bytes = phys_bytes(addr, len as usize);
    let checksum_ok = sum(bytes) == 0;
    if !checksum_ok {
        let _ = write!(problems, "table {} at {addr:#x} checksum bad; ", Sig(&sig));
    }
    if acpi.table_count < MAX_TABLES {
        acpi.tables[acpi.table_count] = Table {
            sig,
            addr,
            len,
            checksum_ok,
        };
        acpi.table_count += 1;
    }
    Some(bytes)
}

fn parse_fadt(acpi: &mut Acpi, t: &[u8]) {
    let byte = |off: usize| t.get(off).copied().unwrap_or(0);
    let word = |off: usize| {
        if t.len() >= off + 2 {
            le16(&t[off..])
        } else {
            0
        }
    };
    let dword = |off: usize| {
        if t.len() >= off + 4 {
            le32(&t[off..])
        } else {
            0
        }
    };
    let qword = |off: usize| {
        if t.len() >= off + 8 {
            le64(&t[off..])
        } else {
            0
        }
    };
    let flags = dword(112);
    let x_dsdt = qword(140);
    let mut pm1a_cnt = Gas::parse(t, 172);
    if !pm1a_cnt.present() && dword(64) != 0 {
        pm1a_cnt = Gas::io(dword(64), 16);
    }
    let mut pm1b_cnt = Gas::parse(t, 184);
    if !pm1b_cnt.present() && dword(68) != 0 {
        pm1b_cnt = Gas::io(dword(68), 16);
    }
    acpi.fadt = Some(Fadt {
        revision: t[8],
        flags,
        hw_reduced: flags & FADT_HW_REDUCED != 0,
        smi_cmd: dword(48),
        acpi_enable: byte(52),
        pm1a_cnt,
        pm1b_cnt,
        sleep_control: Gas::parse(t, 244),
        sleep_status: Gas::parse(t, 256),
        reset_reg: Gas::parse(t, 116),
        reset_value: byte(128),
        century: byte(108),
        iapc_boot_arch: word(109),
        dsdt: if x_dsdt != 0 {
            x_dsdt
        } else {
            u64::from(dword(40))
        },
    });
}

fn parse_madt(acpi: &mut Acpi, t: &[u8]) {
    acpi.has_madt = true;
    if t.len() < 44 {
        return;
    }
    acpi.lapic_addr = u64::from(le32(&t[36..]));
    let mut off = 44;
    while off + 2 <= t.len() {
        let (kind, len) = (t[off], usize::from(t[off + 1]));
        if len < 2 || off + len > t.len() {
            let _ = write!(
                acpi.problems,
                "MADT entry at offset {off} has bad length {len}; "
            );
            break;
        }
        let e = &t[off..off + len];
        match (kind, len) {
            (0, 8..) => add_cpu(acpi, u32::from(e[3]), le32(&e[4..]) & 1 != 0),
            (9, 16..) => add_cpu(acpi, le32(&e[4..]), le32(&e[8..]) & 1 != 0),
            (1, 12..) if acpi.ioapic_count < MAX_IOAPICS => {
                acpi.ioapics[acpi.ioapic_count] = IoApic {
                    id: e[2],
                    addr: u64::from(le32(&e[4..])),
                    gsi_base: le32(&e[8..]),
                };
                acpi.ioapic_count += 1;
            }
            (2, 10..) if acpi.iso_count < MAX_ISOS => {
                acpi.isos[acpi.iso_count] = Iso {
                    bus: e[2],
                    source: e[3],
                    gsi: le32(&e[4..]),
                    flags: le16(&e[8..]),
                };
                acpi.iso_count += 1;
            }
            (5, 12..) => acpi.lapic_addr = le64(&e[4..]),
            _ => {}
        }
        off += len;
    }
}

fn add_cpu(acpi: &mut Acpi, apic_id: u32, enabled: bool) {
    if acpi.cpu_count < MAX_CPUS {
        acpi.cpus[acpi.cpu_count] = Cpu { apic_id, enabled };
        acpi.cpu_count += 1;
    }
}

fn parse_mcfg(acpi: &mut Acpi, t: &[u8]) {
    for e in t.get(44..).unwrap_or(&[]).chunks_exact(16) {
        if acpi.mcfg_count < MAX_MCFG {
            acpi.mcfg[acpi.mcfg_count] = Mcfg {
                base: le64(e),
                segment: le16(&e[8..]),
                bus_start: e[10],
                bus_end: e[11],
            };
            acpi.mcfg_count += 1;
        }
    }
}

/// An AML integer constant at the start of `aml`.
fn aml_integer(aml: &[u8]) -> Option<u64> {
    let le = |n: usize| {
        aml.get(1..1 + n)
            .map(|b| b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)))
    };
    match *aml.first()? {
        0x00 => Some(0),        // ZeroOp
        0x01 => Some(1),        // OneOp
        0xff => Some(u64::MAX), // OnesOp
        0x0a => le(1),          // BytePrefix
        0x0b => le(2),          // WordPrefix
        0x0c => le(4),          // DWordPrefix
        0x0e => le(8),          // QWordPrefix
        _ => None,
    }
}

/// Offsets just past each `NameOp [\\] NAME` (a named object's definition) in AML.
fn aml_names<'a>(aml: &'a [u8], name: &'a [u8; 4]) -> impl Iterator<Item = usize> + 'a {
    (1..aml.len().saturating_sub(3))
        .filter(move |&i| {
            &aml[i..i + 4] == name
                && (aml[i - 1] == 0x08 || (i >= 2 && aml[i - 1] == b'\\' && aml[i - 2] == 0x08))
        })
        .map(|i| i + 4)
}

/// `Name (_S5_, Package () { SLP_TYPa, ... })` in AML: SLP_TYPa.
fn find_s5(aml: &[u8]) -> Option<u8> {
    aml_names(aml, b"_S5_").find_map(|p| {
        if aml.get(p) != Some(&0x12) {
            return None; // not a PackageOp
        }
        let lead = *aml.get(p + 1)?;
        let pkglen_bytes = 1 + usize::from(lead >> 6);
        // PackageOp PkgLength NumElements, then the first element.
        aml_integer(aml.get(p + 1 + pkglen_bytes + 1..)?).map(|v| v as u8)
    })
}

/// `Name (_CBA, base)` or `Method (_CBA) { Return (base) }` in AML: a PCIe
/// host bridge's ECAM base, for machines that describe it only in the
/// namespace (no MCFG), like QEMU's microvm.
fn find_cba(aml: &[u8]) -> Option<u64> {
    let named = aml_names(aml, b"_CBA").find_map(|p| aml_integer(aml.get(p..)?));
    named.or_else(|| {
        // MethodOp PkgLength "_CBA" MethodFlags ReturnOp Integer
        (0..aml.len().saturating_sub(6))
            .filter(|&i| &aml[i..i + 4] == b"_CBA" && aml[i + 5] == 0xa4)
            .find_map(|i| aml_integer(&aml[i + 6..]))
    })
}

/// A memory window: (base, length).
pub type Window = (u64, u64);

/// The bytes of `Name (_CRS, Buffer (n) { ... })` objects in AML.
fn crs_buffers(aml: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    aml_names(aml, b"_CRS").filter_map(|p| {
        if aml.get(p) != Some(&0x11) {
            return None; // not a BufferOp (a method, say)
        }
        let lead = *aml.get(p + 1)?;
        let follow = usize::from(lead >> 6);
        let pkglen = if follow == 0 {
            usize::from(lead & 0x3f)
        } else {
            (1..=follow).try_fold(usize::from(lead & 0x0f), |len, i| {
                aml.get(p + 1 + i)
                    .map(|&b| len | usize::from(b) << (4 + 8 * (i - 1)))
            })?
        };
        let body = aml.get(p + 2 + follow..p + 1 + pkglen)?;
        // BufferSize (an integer), then the bytes.
        let size_len = match *body.first()? {
            0x00 | 0x01 | 0xff => 1,
            0x0a => 2,
            0x0b => 3,
            0x0c => 5,
            0x0e => 9,
            _ => return None,
        };
        body.get(size_len..)
    })
}

/// Memory windows (resource type 0) of the DWord and QWord address-space
/// descriptors in `_CRS` buffers: the largest below 4 GiB, the largest above.
fn find_mem_windows(aml: &[u8]) -> (Option<Window>, Option<Window>) {
    let (mut low, mut high): (Option<Window>, Option<Window>) = (None, None);
    for rt in crs_buffers(aml) {
        let mut off = 0;
        while off < rt.len() {
            let tag = rt[off];
            if tag & 0x80 == 0 {
                if tag == 0x79 {
                    break; // end tag
                }
                off += 1 + usize::from(tag & 7);
                continue;
            }
            let Some(len) = rt.get(off + 1..off + 3).map(le16) else {
                break;
            };
            let Some(d) = rt.get(off..off + 3 + usize::from(len)) else {
                break;
            };
            let window = match (tag, d.get(3)) {
                (0x87, Some(0)) if d.len() >= 26 => Some((
                    u64::from(le32(&d[10..])),
                    u64::from(le32(&d[14..])),
                    u64::from(le32(&d[22..])),
                )),
                (0x8a, Some(0)) if d.len() >= 46 => {
                    Some((le64(&d[14..]), le64(&d[22..]), le64(&d[38..])))
                }
                _ => None,
            };
            if let Some((min, max, length)) = window {
                let length = if length != 0 {
                    length
                } else {
                    max.wrapping_sub(min).wrapping_add(1)
                };
                let slot = if min.saturating_add(length) <= 1 << 32 {
                    &mut low
                } else {
                    &mut high
                };
                if length != 0 && slot.is_none_or(|(_, l)| length > l) {
                    *slot = Some((min, length));
                }
            }
            off += 3 + usize::from(len);
        }
    }
    (low, high)
}

/// The `acpi` check: facts, then the verdict.
pub fn check(acpi: &Result<Acpi, Msg>) -> Result<(), Msg> {
    let acpi = match acpi {
        Ok(a) => a,
        Err(e) => return Err(fail!("{e}")),
    };
    outln!(
        "PROBE acpi rsdp={:#x} source={} revision={} oem={} root={:#x}",
        acpi.rsdp,
        acpi.rsdp_source,
        acpi.revision,
        crate::console::Quoted(trim(&acpi.oem)),
        acpi.root
    );
    for t in acpi.tables() {
        outln!(
            "PROBE acpi table={} addr={:#x} len={} checksum={}",
            Sig(&t.sig),
            t.addr,
            t.len,
            if t.checksum_ok { "ok" } else { "bad" }
        );
    }
    if let Some(f) = &acpi.fadt {
        outln!(
            "PROBE acpi fadt revision={} hw_reduced={} sleep_control={} sleep_status={} reset={} reset_value={:#x} reset_supported={} pm1a_cnt={} s5={} century={:#x} iapc_boot_arch={:#x}",
            f.revision,
            u8::from(f.hw_reduced),
            f.sleep_control,
            f.sleep_status,
            f.reset_reg,
            f.reset_value,
            u8::from(f.flags & FADT_RESET_REG_SUP != 0),
            f.pm1a_cnt,
            OptU8(acpi.s5),
            f.century,
            f.iapc_boot_arch
        );
    }
    if acpi.has_madt {
        outln!(
            "PROBE acpi madt lapic={:#x} cpus={} enabled_cpus={} ioapics={} overrides={}",
            acpi.lapic_addr,
            acpi.cpu_count,
            acpi.cpus().iter().filter(|c| c.enabled).count(),
            acpi.ioapic_count,
            acpi.iso_count
        );
        for io in acpi.ioapics() {
            outln!(
                "PROBE acpi ioapic id={} addr={:#x} gsi_base={}",
                io.id,
                io.addr,
                io.gsi_base
            );
        }
        for iso in acpi.isos() {
            outln!(
                "PROBE acpi override bus={} irq={} gsi={} flags={:#x}",
                iso.bus,
                iso.source,
                iso.gsi,
                iso.flags
            );
        }
    }
    if let Some(cba) = acpi.cba {
        outln!("PROBE acpi dsdt_cba={cba:#x}");
    }
    for m in acpi.mcfg() {
        outln!(
            "PROBE acpi mcfg base={:#x} segment={} bus={}-{}",
            m.base,
            m.segment,
            m.bus_start,
            m.bus_end
        );
    }

    let mut why = Msg::new();
    let _ = write!(why, "{}", acpi.problems);
    for sig in [b"FACP", b"APIC", b"DSDT"] {
        if acpi.find(sig).is_none() {
            let _ = write!(why, "no {}; ", Sig(sig));
        }
    }
    if acpi.fadt.is_some() && acpi.s5.is_none() {
        let _ = write!(why, "no \\_S5 package in DSDT/SSDT; ");
    }
    if let Some(f) = &acpi.fadt {
        if f.hw_reduced && !f.sleep_control.present() {
            let _ = write!(
                why,
                "hardware-reduced FADT without sleep control register; "
            );
        }
        if !f.hw_reduced && !f.pm1a_cnt.present() {
            let _ = write!(why, "FADT without PM1a control block; ");
        }
    }
    if acpi.has_madt && !acpi.cpus().iter().any(|c| c.enabled) {
        let _ = write!(why, "MADT lists no enabled processor; ");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |p| p + 1);
    &b[..end]
}

pub struct OptU8(pub Option<u8>);

impl fmt::Display for OptU8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("none"),
        }
    }
}
