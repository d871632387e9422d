//! The boot vCPU's entry state for each boot protocol: a flat GDT, and for
//! the Linux 64-bit entry identity page tables and long mode; for PVH,
//! 32-bit protected mode with paging off, as the PVH ABI specifies.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::CpuError;
use crate::boot::BootEntry;
use crate::layout;
use crate::memory::GuestMemoryMmap;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Stack for the Linux 64-bit entry, below the page tables.
const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// GDT selectors the Linux boot protocol names (__BOOT_CS, __BOOT_DS) and a TSS.
const CODE_SELECTOR: u16 = 0x10;
const DATA_SELECTOR: u16 = 0x18;
const TSS_SELECTOR: u16 = 0x20;

/// A segment descriptor from its parts (flags = the G/DB/L/AVL nibble and
/// the access byte, as in the Intel SDM's descriptor layout).
const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The GDT: null, null, code (64-bit for Linux, 32-bit for PVH), data, TSS.
fn gdt(long_mode: bool) -> [u64; 5] {
    let code = if long_mode { 0xa09b } else { 0xc09b };
    [
        0,
        0,
        descriptor(code, 0, 0xfffff),
        descriptor(0xc093, 0, 0xfffff),
        descriptor(0x008b, 0, 0x67),
    ]
}

/// The KVM form of a GDT descriptor, as the CPU would cache it.
fn segment(selector: u16, desc: u64) -> kvm_segment {
    let flag = |bit: u32| ((desc >> bit) & 1) as u8;
    let limit_raw = ((desc >> 32) & 0x000f_0000) | (desc & 0xffff);
    let g = flag(55);
    kvm_segment {
        base: ((desc >> 32) & 0xff00_0000) | ((desc >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            ((limit_raw as u32) << 12) | 0xfff
        } else {
            limit_raw as u32
        },
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present: flag(47),
        dpl: ((desc >> 45) & 3) as u8,
        db: flag(54),
        s: flag(44),
        l: flag(53),
        g,
        avl: flag(52),
        unusable: if flag(47) == 0 { 1 } else { 0 },
        padding: 0,
    }
}

/// Identity map of the first 4 GiB with 2 MiB pages: one PML4 entry, four
/// PDPT entries, four page directories.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    let err = |e: vm_memory::GuestMemoryError| CpuError::WriteGuestMemory(e.to_string());
    mem.write_obj(layout::PDPTE_START | 0x3, GuestAddress(layout::PML4_START))
        .map_err(err)?;
    for dir in 0..4u64 {
        let pd = layout::PDE_START + dir * 0x1000;
        mem.write_obj(pd | 0x3, GuestAddress(layout::PDPTE_START + dir * 8))
            .map_err(err)?;
        let mut entries = [0u8; 4096];
        for (i, chunk) in entries.chunks_exact_mut(8).enumerate() {
            // Present, writable, 2 MiB page.
            let entry = ((dir << 30) + ((i as u64) << 21)) | 0x83;
            chunk.copy_from_slice(&entry.to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd)).map_err(err)?;
    }
    Ok(())
}

/// Puts the boot vCPU in the state `entry` asks for.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: BootEntry,
) -> Result<(), CpuError> {
    let long_mode = matches!(entry, BootEntry::Linux64 { .. });
    let table = gdt(long_mode);
    for (i, desc) in table.iter().enumerate() {
        mem.write_obj(*desc, GuestAddress(layout::BOOT_GDT_START + i as u64 * 8))
            .map_err(|e| CpuError::WriteGuestMemory(e.to_string()))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|e| CpuError::WriteGuestMemory(e.to_string()))?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(CpuError::SetRegs)?;
    let code = segment(CODE_SELECTOR, table[2]);
    let data = segment(DATA_SELECTOR, table[3]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR, table[4]);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry, .. } => {
            write_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry.0;
            regs.rsi = layout::ZERO_PAGE_START;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        BootEntry::Pvh(entry) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry.0;
            regs.rbx = layout::PVH_INFO_START;
        }
    }
    vcpu.set_sregs(&sregs).map_err(CpuError::SetRegs)?;
    vcpu.set_regs(&regs).map_err(CpuError::SetRegs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn descriptors_match_the_sdm_encoding() {
        // Flat 64-bit code, flat data and a 0x67-byte TSS, as commonly encoded.
        assert_eq!(descriptor(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor(0x008b, 0, 0x67), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn segments_decode_their_descriptors() {
        let code = segment(CODE_SELECTOR, gdt(true)[2]);
        assert_eq!(
            (code.l, code.db, code.g, code.present, code.s),
            (1, 0, 1, 1, 1)
        );
        assert_eq!((code.type_, code.limit, code.base), (0xb, 0xffff_ffff, 0));
        let code32 = segment(CODE_SELECTOR, gdt(false)[2]);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment(TSS_SELECTOR, gdt(true)[4]);
        assert_eq!((tss.type_, tss.limit, tss.s, tss.g), (0xb, 0x67, 0, 0));
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = create_guest_memory(16 << 20).unwrap();
        write_page_tables(&mem).unwrap();
        let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(rd(layout::PML4_START), layout::PDPTE_START | 3);
        assert_eq!(
            rd(layout::PDPTE_START + 3 * 8),
            (layout::PDE_START + 0x3000) | 3
        );
        assert_eq!(rd(layout::PDE_START), 0x83);
        assert_eq!(rd(layout::PDE_START + 8), (2 << 20) | 0x83);
        // Last 2 MiB page below 4 GiB (covers the LAPIC).
        assert_eq!(
            rd(layout::PDE_START + 0x3000 + 511 * 8),
            (0xffe0_0000) | 0x83
        );
    }
}
