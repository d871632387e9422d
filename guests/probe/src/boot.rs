//! What the loader handed over: PVH `hvm_start_info` or Linux `boot_params`.

use crate::entry;
use crate::hw::{phys_read_u32, phys_read_u64, phys_read_u8, phys_readable};

pub const CMDLINE_MAX: usize = 4096;
pub const MEMMAP_MAX: usize = 128;
const PVH_MAGIC: u32 = 0x336e_c578;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Pvh,
    Linux64,
    Linux32,
    Unknown,
}

impl Entry {
    pub fn name(self) -> &'static str {
        match self {
            Entry::Pvh => "pvh",
            Entry::Linux64 => "linux64",
            Entry::Linux32 => "linux32",
            Entry::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Default)]
pub struct Region {
    pub start: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;

pub struct Boot {
    pub entry: Entry,
    /// Address of the start info / boot_params.
    pub info: u64,
    pub cmdline_addr: u64,
    pub cmdline: [u8; CMDLINE_MAX],
    pub cmdline_len: usize,
    /// A NUL ended the command line within `CMDLINE_MAX` bytes.
    pub cmdline_terminated: bool,
    pub mem: [Region; MEMMAP_MAX],
    pub mem_count: usize,
    /// RSDP address the loader passed, if any.
    pub rsdp: u64,
    /// Something about the handover itself was wrong (bad magic...).
    pub problem: Option<&'static str>,
}

impl Boot {
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    pub fn regions(&self) -> &[Region] {
        &self.mem[..self.mem_count]
    }
}

pub fn read() -> Boot {
    // SAFETY: written by the ring-0 entry code before ring 3 started, never after.
    let (kind, info) = unsafe {
        (
            core::ptr::read_volatile(&raw const entry::probe_boot_entry),
            core::ptr::read_volatile(&raw const entry::probe_boot_info),
        )
    };
    let entry = match kind {
        entry::ENTRY_PVH => Entry::Pvh,
        entry::ENTRY_LINUX64 => Entry::Linux64,
        entry::ENTRY_LINUX32 => Entry::Linux32,
        _ => Entry::Unknown,
    };
    let mut boot = Boot {
        entry,
        info,
        cmdline_addr: 0,
        cmdline: [0; CMDLINE_MAX],
        cmdline_len: 0,
        cmdline_terminated: true,
        mem: [Region::default(); MEMMAP_MAX],
        mem_count: 0,
        rsdp: 0,
        problem: None,
    };
    match entry {
        Entry::Pvh => read_pvh(&mut boot),
        Entry::Linux64 | Entry::Linux32 => read_linux(&mut boot),
        Entry::Unknown => boot.problem = Some("unknown entry"),
    }
    boot
}

fn read_pvh(boot: &mut Boot) {
    let si = boot.info;
    if !phys_readable(si, 56) {
        boot.problem = Some("start info address out of range");
        return;
    }
    if phys_read_u32(si) != PVH_MAGIC {
        boot.problem = Some("bad hvm_start_info magic");
        return;
    }
    let version = phys_read_u32(si + 4);
    boot.cmdline_addr = phys_read_u64(si + 24);
    boot.rsdp = phys_read_u64(si + 32);
    read_cmdline(boot);
    if version >= 1 {
        let map = phys_read_u64(si + 40);
        let entries = phys_read_u32(si + 48) as usize;
        if entries > 0 && phys_readable(map, entries as u64 * 24) {
            for i in 0..entries.min(MEMMAP_MAX) {
                let e = map + i as u64 * 24;
                push_region(
                    boot,
                    phys_read_u64(e),
                    phys_read_u64(e + 8),
                    phys_read_u32(e + 16),
                );
            }
        }
    }
}

fn read_linux(boot: &mut Boot) {
    let bp = boot.info;
    if !phys_readable(bp, 4096) {
        boot.problem = Some("boot_params address out of range");
        return;
    }
    // The setup header must be there (boot flag, "HdrS"): the loader copies it.
    if phys_read_u32(bp + 0x202) != 0x5372_6448 {
        boot.problem = Some("boot_params without setup header");
    }
    boot.cmdline_addr =
        u64::from(phys_read_u32(bp + 0x228)) | (u64::from(phys_read_u32(bp + 0x0c8)) << 32);
    boot.rsdp = phys_read_u64(bp + 0x070);
    read_cmdline(boot);
    let entries = usize::from(phys_read_u8(bp + 0x1e8));
    for i in 0..entries.min(128) {
        let e = bp + 0x2d0 + i as u64 * 20;
        push_region(
            boot,
            phys_read_u64(e),
            phys_read_u64(e + 8),
            phys_read_u32(e + 16),
        );
    }
}

fn push_region(boot: &mut Boot, start: u64, size: u64, kind: u32) {
    if boot.mem_count < MEMMAP_MAX {
        boot.mem[boot.mem_count] = Region { start, size, kind };
        boot.mem_count += 1;
    }
}

fn read_cmdline(boot: &mut Boot) {
    let addr = boot.cmdline_addr;
    if addr == 0 {
        return; // no command line: empty
    }
    if !phys_readable(addr, 1) {
        boot.problem = Some("command line address out of range");
        return;
    }
    let mut len = 0;
    boot.cmdline_terminated = false;
    while len < CMDLINE_MAX && phys_readable(addr + len as u64, 1) {
        let b = phys_read_u8(addr + len as u64);
        if b == 0 {
            boot.cmdline_terminated = true;
            break;
        }
        boot.cmdline[len] = b;
        len += 1;
    }
    boot.cmdline_len = len;
}
