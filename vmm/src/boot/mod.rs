//! Loading a guest: the kernel (a bzImage through the Linux boot protocol,
//! or an ELF: PVH entry when it has the note, else the Linux 64-bit entry),
//! the initrd and the command line, then the boot information the chosen
//! protocol hands the guest (`zeropage` or `pvh`).

pub mod e820;
pub mod pvh;
pub mod zeropage;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::{low_ram_end, GuestMemoryMmap};

/// Errors from loading the guest's kernel, initrd and command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("kernel file {0} is empty")]
    EmptyKernel(String),
    #[error("kernel file {0} is neither a bzImage nor an ELF kernel")]
    UnknownKernelFormat(String),
    #[error("kernel {0} has no 64-bit entry point (XLF_KERNEL_64 not set): utsuwa boots x86-64 kernels only")]
    No64BitEntry(String),
    #[error("cannot load kernel {path}: {err}")]
    LoadKernel {
        path: String,
        err: linux_loader::loader::Error,
    },
    #[error("initrd file {0} is empty")]
    EmptyInitrd(String),
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    #[error("cannot read initrd {path}: {err}")]
    ReadInitrd { path: String, err: String },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("kernel command line is {0} bytes; at most {max} fit", max = layout::CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLongForKernel { len: usize, max: usize },
    #[error("cannot write boot information to guest memory: {0}")]
    WriteBootInfo(String),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh(GuestAddress),
    /// Linux 64-bit boot protocol: long mode, RSI = boot_params.
    Linux64 {
        entry: GuestAddress,
        /// The bzImage's setup header, copied into the zero page.
        header: Option<setup_header>,
    },
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// First guest address after the kernel image.
    pub end: u64,
    /// The kernel is Linux (it carries Linux's version banner), so
    /// Linux-specific command-line workarounds apply to it.
    pub is_linux: bool,
}

/// Where the initrd landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|err| BootError::Open {
        path: path.display().to_string(),
        err,
    })
}

/// Loads the kernel at `path` into `mem`, choosing the protocol from its format.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = open(path)?;
    let mut magic = [0u8; 0x206];
    let read = read_prefix(&mut file, &mut magic).map_err(|err| BootError::Open {
        path: name.clone(),
        err,
    })?;
    if read == 0 {
        return Err(BootError::EmptyKernel(name));
    }
    let load_err = |err| BootError::LoadKernel {
        path: name.clone(),
        err,
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if read >= 4 && magic[..4] == *b"\x7fELF" {
        let result = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh(addr),
            _ => {
                let elf_entry = read_elf_entry(&mut file).map_err(|err| BootError::Open {
                    path: name.clone(),
                    err,
                })?;
                BootEntry::Linux64 {
                    entry: GuestAddress(elf_entry),
                    header: None,
                }
            }
        };
        let is_linux = has_linux_note(&mut file);
        return Ok(LoadedKernel {
            entry,
            end: result.kernel_end,
            is_linux,
        });
    }
    if read >= 0x206 && magic[0x202..0x206] == *b"HdrS" {
        let result = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
        let header = result.setup_header.unwrap_or_default();
        // XLF_KERNEL_64: the kernel has the 64-bit entry at load address + 0x200.
        if header.xloadflags & 1 == 0 {
            return Err(BootError::No64BitEntry(name));
        }
        return Ok(LoadedKernel {
            entry: BootEntry::Linux64 {
                entry: GuestAddress(result.kernel_load.0 + 0x200),
                header: Some(header),
            },
            end: result.kernel_end,
            // Linux points `kernel_version` at its version string; others leave it 0.
            is_linux: header.kernel_version != 0,
        });
    }
    Err(BootError::UnknownKernelFormat(name))
}

/// Reads as much of the file's start as fits in `buf`.
fn read_prefix(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// `e_entry` of a 64-bit ELF (linux-loader only reports PVH entries).
fn read_elf_entry(file: &mut File) -> std::io::Result<u64> {
    let mut entry = [0u8; 8];
    file.seek(SeekFrom::Start(0x18))?;
    file.read_exact(&mut entry)?;
    Ok(u64::from_le_bytes(entry))
}

/// Whether an ELF kernel is Linux: it has an ELF note owned by "Linux"
/// (every vmlinux carries one, e.g. its build salt). Only the program
/// headers and the note segments are read, not the whole image.
fn has_linux_note(file: &mut File) -> bool {
    read_notes(file).is_ok_and(|notes| notes_have_owner(&notes, b"Linux"))
}

/// The bytes of every PT_NOTE segment of a 64-bit little-endian ELF
/// (at most 64 KiB in all: notes are small).
fn read_notes(file: &mut File) -> std::io::Result<Vec<u8>> {
    const PT_NOTE: u32 = 4;
    const MAX_NOTES: u64 = 64 << 10;
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut ehdr)?;
    let phoff = u64::from_le_bytes(ehdr[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([ehdr[0x36], ehdr[0x37]]));
    let phnum = u64::from(u16::from_le_bytes([ehdr[0x38], ehdr[0x39]]));
    let mut notes = Vec::new();
    for i in 0..phnum {
        let mut phdr = [0u8; 56];
        file.seek(SeekFrom::Start(
            phoff.saturating_add(i.saturating_mul(phentsize)),
        ))?;
        file.read_exact(&mut phdr)?;
        if u32::from_le_bytes(phdr[0..4].try_into().unwrap_or_default()) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(phdr[8..16].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(phdr[32..40].try_into().unwrap_or_default());
        if size > MAX_NOTES.saturating_sub(notes.len() as u64) {
            break;
        }
        let mut bytes = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut bytes)?;
        notes.extend_from_slice(&bytes);
    }
    Ok(notes)
}

/// Whether a sequence of ELF notes (namesz, descsz, type, name, desc; each
/// part padded to 4 bytes) has one whose name is `owner`.
fn notes_have_owner(mut notes: &[u8], owner: &[u8]) -> bool {
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    while let (Some(namesz), Some(descsz)) = (word(notes, 0), word(notes, 4)) {
        let name = notes.get(12..12 + namesz).unwrap_or(&[]);
        if name.strip_suffix(b"\0").unwrap_or(name) == owner {
            return true;
        }
        let next = 12usize
            .saturating_add(pad(namesz))
            .saturating_add(pad(descsz));
        match notes.get(next..) {
            Some(rest) if next > 12 || !rest.is_empty() => notes = rest,
            _ => return false,
        }
    }
    false
}

/// Loads the initrd as high as the protocol allows: page-aligned, below
/// `max_end` (exclusive) and the end of low RAM, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_end: u64,
) -> Result<LoadedInitrd, BootError> {
    let name = path.display().to_string();
    let mut file = open(path)?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|size| file.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(|err| BootError::ReadInitrd {
            path: name.clone(),
            err: err.to_string(),
        })?;
    if size == 0 {
        return Err(BootError::EmptyInitrd(name));
    }
    let limit = low_ram_end(mem).min(max_end);
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(layout::HIMEM_START))
        .ok_or(BootError::InitrdTooLarge {
            path: name.clone(),
            size,
            limit,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|err| BootError::ReadInitrd {
            path: name,
            err: err.to_string(),
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// Parses the user's command line and writes it to guest memory.
/// `header` is the bzImage's setup header: since protocol 2.06 it says how
/// long a command line the kernel takes.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    raw: &str,
    header: Option<&setup_header>,
) -> Result<(), BootError> {
    if raw.len() >= layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(raw.len()));
    }
    if let Some(h) = header {
        let max = h.cmdline_size as usize;
        if h.version >= 0x0206 && raw.len() > max {
            return Err(BootError::CmdlineTooLongForKernel {
                len: raw.len(),
                max,
            });
        }
    }
    let cmdline = Cmdline::try_from(raw, layout::CMDLINE_MAX)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;
    use vm_memory::Bytes;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("utsuwa-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    #[test]
    fn empty_and_garbage_kernels_are_refused() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let empty = temp_file("empty", b"");
        assert!(matches!(
            load_kernel(&mem, &empty),
            Err(BootError::EmptyKernel(_))
        ));
        let garbage = temp_file("garbage", &[0x5a; 4096]);
        assert!(matches!(
            load_kernel(&mem, &garbage),
            Err(BootError::UnknownKernelFormat(_))
        ));
        let missing = Path::new("/nonexistent/kernel");
        assert!(matches!(
            load_kernel(&mem, missing),
            Err(BootError::Open { .. })
        ));
        std::fs::remove_file(empty).unwrap();
        std::fs::remove_file(garbage).unwrap();
    }

    /// One ELF note: namesz, descsz, type, name, desc, padded to 4 bytes.
    fn note(name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&1u32.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn linux_is_recognised_by_its_elf_note() {
        let notes = [note(b"Xen", &[0; 8]), note(b"Linux", b"salt")].concat();
        assert!(notes_have_owner(&notes, b"Linux"));
        assert!(!notes_have_owner(&note(b"Xen", &[0; 8]), b"Linux"));
        assert!(!notes_have_owner(&note(b"Linuxish", &[]), b"Linux"));
        // Truncated and hostile sizes end the walk instead of panicking.
        assert!(!notes_have_owner(&notes[..10], b"Linux"));
        let mut huge = note(b"Xen", &[]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!notes_have_owner(&huge, b"Linux"));
        assert!(!notes_have_owner(&[0u8; 12], b"Linux"));
    }

    #[test]
    fn truncated_elf_is_an_error_not_a_panic() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let elf = temp_file("trunc-elf", b"\x7fELF\x02\x01\x01");
        assert!(matches!(
            load_kernel(&mem, &elf),
            Err(BootError::LoadKernel { .. })
        ));
        std::fs::remove_file(elf).unwrap();
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let path = temp_file("initrd", &[7u8; 10_000]);
        let initrd = load_initrd(&mem, &path, 2 << 20, u64::MAX).unwrap();
        assert_eq!(initrd.size, 10_000);
        assert_eq!(initrd.addr % 4096, 0);
        assert!(initrd.addr + initrd.size <= 64 << 20);
        assert!(initrd.addr + initrd.size > (64 << 20) - 8192);
        let mut back = [0u8; 16];
        mem.read_slice(&mut back, GuestAddress(initrd.addr))
            .unwrap();
        assert_eq!(back, [7u8; 16]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn initrd_larger_than_memory_is_refused() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let path = temp_file("big-initrd", &vec![1u8; 17 << 20]);
        assert!(matches!(
            load_initrd(&mem, &path, 2 << 20, u64::MAX),
            Err(BootError::InitrdTooLarge { .. })
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = create_guest_memory(16 << 20).unwrap();
        load_cmdline(&mem, "console=ttyS0 probe.x=1", None).unwrap();
        let mut back = [0u8; 24];
        mem.read_slice(&mut back, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0 probe.x=1\0");
        let long = "x".repeat(layout::CMDLINE_MAX);
        assert!(matches!(
            load_cmdline(&mem, &long, None),
            Err(BootError::CmdlineTooLong(_))
        ));
        let header = setup_header {
            version: 0x020f,
            cmdline_size: 10,
            ..Default::default()
        };
        assert!(matches!(
            load_cmdline(&mem, "console=ttyS0", Some(&header)),
            Err(BootError::CmdlineTooLongForKernel { len: 13, max: 10 })
        ));
    }
}
