//! The test guest (`guests/probe`): built once per test process, as a PVH
//! ELF and as a bzImage made from that ELF.
//!
//! The build goes to its own target directory (`target/probe`), so it never
//! fights the test build for the same artifacts; when several test
//! processes race, cargo's lock on that directory serialises them, and the
//! bzImage is written under a temporary name and renamed into place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the guest is loaded and entered (`code32_start`, `pref_address`).
pub const LOAD_ADDR: u64 = 0x10_0000;

struct Built {
    elf: PathBuf,
    bzimage: PathBuf,
}

static BUILT: OnceLock<Built> = OnceLock::new();

/// The workspace root (the root package's manifest directory).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build() -> Built {
    let root = workspace_root();
    let target_dir = root.join("target").join("probe");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "probe", "--release", "--target-dir"])
        .arg(&target_dir)
        // The guest is freestanding and runs without AVX state or a
        // profiler runtime: flags meant for the host build must not leak in.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo to build the probe guest");
    assert!(
        out.status.success(),
        "building the probe guest failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let elf = target_dir.join("release").join("probe");
    let bytes = std::fs::read(&elf).unwrap_or_else(|e| panic!("read {}: {e}", elf.display()));
    let image =
        bzimage_from_elf(&bytes).unwrap_or_else(|e| panic!("bzImage from {}: {e}", elf.display()));
    let bzimage = target_dir.join("release").join("probe.bzImage");
    write_atomically(&bzimage, &image);
    Built { elf, bzimage }
}

fn write_atomically(path: &Path, data: &[u8]) {
    let tmp = path.with_extension(format!("bzImage.tmp{}", std::process::id()));
    std::fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The probe as a PVH ELF (Xen `PHYS32_ENTRY` note; 64-bit entry at 0x100200).
pub fn probe_elf() -> PathBuf {
    BUILT.get_or_init(build).elf.clone()
}

/// The probe as a bzImage (Linux boot protocol 2.12, 64-bit entry at 0x200).
pub fn probe_bzimage() -> PathBuf {
    BUILT.get_or_init(build).bzimage.clone()
}

#[derive(Debug, PartialEq, Eq)]
pub struct BzError(String);

impl fmt::Display for BzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, BzError> {
    Err(BzError(msg.into()))
}

/// A loadable segment of an ELF64 file.
#[derive(Debug, Clone, Copy)]
struct Load {
    paddr: u64,
    offset: u64,
    filesz: u64,
    memsz: u64,
}

/// The PT_LOAD segments of a little-endian x86-64 ELF64 executable.
fn elf_loads(elf: &[u8]) -> Result<Vec<Load>, BzError> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return err("not a little-endian ELF64 file");
    }
    if u16_at(0x12) != Some(62) {
        return err("not an x86-64 ELF");
    }
    let phoff = u64_at(0x20).unwrap() as usize;
    let phentsize = usize::from(u16_at(0x36).unwrap());
    let phnum = usize::from(u16_at(0x38).unwrap());
    if phentsize < 56 {
        return err(format!("program header size {phentsize}"));
    }
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph).ok_or_else(|| BzError("program header out of file".into()))?;
        if p_type != 1 {
            continue; // not PT_LOAD
        }
        let seg = Load {
            offset: u64_at(ph + 8).unwrap_or(0),
            paddr: u64_at(ph + 24).unwrap_or(0),
            filesz: u64_at(ph + 32).unwrap_or(0),
            memsz: u64_at(ph + 40).unwrap_or(0),
        };
        if seg
            .offset
            .checked_add(seg.filesz)
            .is_none_or(|end| end > elf.len() as u64)
        {
            return err(format!("segment at {:#x} extends past the file", seg.paddr));
        }
        if seg.memsz < seg.filesz {
            return err(format!("segment at {:#x} has memsz < filesz", seg.paddr));
        }
        loads.push(seg);
    }
    loads.sort_by_key(|s| s.paddr);
    Ok(loads)
}

/// Offsets of the setup header fields in the bzImage (= in boot_params).
pub mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const SETUP_MOVE_SIZE: usize = 0x212;
    pub const CODE32_START: usize = 0x214;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// End of the 2.12 header.
    pub const END: usize = 0x268;
}

/// Boot protocol 2.12: xloadflags, init_size and pref_address all exist.
pub const BOOT_PROTOCOL: u16 = 0x020c;
/// Setup sectors after the boot sector. Loaders that enter through the
/// real-mode stub pass the setup area itself on as boot_params, so the
/// first 4 KiB stay free of code (only the header and a jump live there,
/// in places boot_params does not use otherwise); the stub follows.
pub const SETUP_SECTS: u8 = 8;
const SETUP_SIZE: usize = (SETUP_SECTS as usize + 1) * 512;
/// Longest command line the guest takes (its buffer is 4096 bytes with the NUL).
pub const CMDLINE_SIZE: u32 = 4095;
const LOADED_HIGH: u8 = 0x01;
const XLF_KERNEL_64: u16 = 0x01;
/// The short jump at 0x200 goes to a near jump here (padding after the
/// header in boot_params), which goes to the stub past the zero page.
const HOP: usize = 0x270;
/// Where in the setup area the real-mode stub, its GDT and GDTR live.
const STUB: usize = 0x1000;
const STUB_GDT: usize = 0x1100;
const STUB_GDTR: usize = 0x1120;

/// The real-mode code at setup offset 0x1000 (reached from the jump at 0x200),
/// for loaders that enter a bzImage in real mode (QEMU's option ROMs, qboot)
/// with CS = setup segment + 0x20. It fills the e820 map in boot_params
/// from INT 15h/E820 if the loader left it empty (as Linux's setup code
/// does), enables A20, switches to 32-bit protected mode with a flat GDT
/// and jumps to `code32_start` with ESI = boot_params (= the setup base).
fn real_mode_stub(code32_start: u32) -> Vec<u8> {
    let gdt = (STUB_GDT as u16).to_le_bytes();
    let gdtr = (STUB_GDTR as u16).to_le_bytes();
    let gdtr_base = (STUB_GDTR as u16 + 2).to_le_bytes();
    let entry = code32_start.to_le_bytes();
    let mut s = Vec::new();
    let mut emit = |bytes: &[u8]| s.extend_from_slice(bytes);
    emit(&[0xfa]); //                                  +00 cli
    emit(&[0xfc]); //                                  +01 cld
    emit(&[0x8c, 0xc8]); //                            +02 mov ax, cs
    emit(&[0x83, 0xe8, 0x20]); //                      +04 sub ax, 0x20      ; setup segment
    emit(&[0x8e, 0xd8]); //                            +07 mov ds, ax
    emit(&[0x8e, 0xc0]); //                            +09 mov es, ax
    emit(&[0x80, 0x3e, 0xe8, 0x01, 0x00]); //          +0b cmp byte [0x1e8], 0  ; e820_entries
    emit(&[0x75, 0x37]); //                            +10 jne pm (+49)
    emit(&[0x66, 0x31, 0xdb]); //                      +12 xor ebx, ebx      ; continuation
    emit(&[0xbf, 0xd0, 0x02]); //                      +15 mov di, 0x2d0     ; e820_table
                               // loop (+18):
    emit(&[0x66, 0xb8, 0x20, 0xe8, 0x00, 0x00]); //    +18 mov eax, 0xe820
    emit(&[0x66, 0xb9, 0x14, 0x00, 0x00, 0x00]); //    +1e mov ecx, 20
    emit(&[0x66, 0xba, 0x50, 0x41, 0x4d, 0x53]); //    +24 mov edx, 'SMAP'
    emit(&[0xcd, 0x15]); //                            +2a int 0x15
    emit(&[0x72, 0x1b]); //                            +2c jc pm
    emit(&[0x66, 0x3d, 0x50, 0x41, 0x4d, 0x53]); //    +2e cmp eax, 'SMAP'
    emit(&[0x75, 0x13]); //                            +34 jne pm
    emit(&[0xfe, 0x06, 0xe8, 0x01]); //                +36 inc byte [0x1e8]
    emit(&[0x83, 0xc7, 0x14]); //                      +3a add di, 20
    emit(&[0x66, 0x85, 0xdb]); //                      +3d test ebx, ebx
    emit(&[0x74, 0x07]); //                            +40 jz pm
    emit(&[0x80, 0x3e, 0xe8, 0x01, 0x80]); //          +42 cmp byte [0x1e8], 128
    emit(&[0x72, 0xcf]); //                            +47 jb loop
                         // pm (+49):
    emit(&[0xe4, 0x92]); //                            +49 in al, 0x92       ; fast A20
    emit(&[0x0c, 0x02]); //                            +4b or al, 2
    emit(&[0x24, 0xfe]); //                            +4d and al, 0xfe      ; not reset
    emit(&[0xe6, 0x92]); //                            +4f out 0x92, al
    emit(&[0x66, 0x31, 0xc0]); //                      +51 xor eax, eax
    emit(&[0x8c, 0xd8]); //                            +54 mov ax, ds
    emit(&[0x66, 0xc1, 0xe0, 0x04]); //                +56 shl eax, 4        ; linear setup base
    emit(&[0x66, 0x89, 0xc6]); //                      +5a mov esi, eax      ; = boot_params
    emit(&[0x66, 0x05, gdt[0], gdt[1], 0, 0]); //      +5d add eax, STUB_GDT
    emit(&[0x66, 0xa3, gdtr_base[0], gdtr_base[1]]); // +63 mov [STUB_GDTR+2], eax
    emit(&[0x66, 0x0f, 0x01, 0x16, gdtr[0], gdtr[1]]); // +67 lgdt [STUB_GDTR] (32-bit base)
    emit(&[0x0f, 0x20, 0xc0]); //                      +6d mov eax, cr0
    emit(&[0x0c, 0x01]); //                            +70 or al, 1          ; PE
    emit(&[0x0f, 0x22, 0xc0]); //                      +72 mov cr0, eax
    emit(&[0xb8, 0x18, 0x00]); //                      +75 mov ax, 0x18      ; flat data
    emit(&[0x8e, 0xd8]); //                            +78 mov ds, ax
    emit(&[0x8e, 0xc0]); //                            +7a mov es, ax
    emit(&[0x8e, 0xd0]); //                            +7c mov ss, ax
    emit(&[
        0x66, 0xea, entry[0], entry[1], entry[2], entry[3], 0x10, 0x00,
    ]); // +7e jmp dword 0x10:code32_start
    s
}

/// A bzImage holding `elf`'s PT_LOAD segments flattened from `LOAD_ADDR`
/// (gaps zero-filled; memory past the file contents, the BSS, is only
/// counted in `init_size`), behind a boot sector and one setup sector with
/// a 2.12 setup header and the real-mode stub.
pub fn bzimage_from_elf(elf: &[u8]) -> Result<Vec<u8>, BzError> {
    let loads = elf_loads(elf)?;
    let Some(first) = loads.first() else {
        return err("no PT_LOAD segment");
    };
    if first.paddr != LOAD_ADDR {
        return err(format!(
            "first segment at {:#x}, not {LOAD_ADDR:#x}",
            first.paddr
        ));
    }
    let file_end = loads.iter().map(|s| s.paddr + s.filesz).max().unwrap();
    let mem_end = loads.iter().map(|s| s.paddr + s.memsz).max().unwrap();
    let kernel_len = (file_end - LOAD_ADDR) as usize;
    if kernel_len > 64 << 20 {
        return err("image larger than 64 MiB");
    }
    let mut kernel = vec![0u8; kernel_len];
    for s in &loads {
        let at = (s.paddr - LOAD_ADDR) as usize;
        kernel[at..at + s.filesz as usize]
            .copy_from_slice(&elf[s.offset as usize..(s.offset + s.filesz) as usize]);
    }
    // Whole paragraphs for syssize.
    kernel.resize(kernel_len.div_ceil(16) * 16, 0);
    let init_size = (mem_end - LOAD_ADDR).div_ceil(4096) * 4096;

    let mut setup = vec![0u8; SETUP_SIZE];
    let put = |buf: &mut [u8], off: usize, bytes: &[u8]| {
        buf[off..off + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut setup, hdr::SETUP_SECTS, &[SETUP_SECTS]);
    put(
        &mut setup,
        hdr::SYSSIZE,
        &((kernel.len() / 16) as u32).to_le_bytes(),
    );
    put(&mut setup, hdr::BOOT_FLAG, &0xaa55u16.to_le_bytes());
    // jmp short HOP (EB rel8); at HOP, jmp near STUB (E9 rel16).
    put(
        &mut setup,
        hdr::JUMP,
        &[0xeb, (HOP - (hdr::JUMP + 2)) as u8],
    );
    put(&mut setup, HOP, &[0xe9]);
    put(
        &mut setup,
        HOP + 1,
        &((STUB - (HOP + 3)) as u16).to_le_bytes(),
    );
    put(&mut setup, hdr::HEADER, b"HdrS");
    put(&mut setup, hdr::VERSION, &BOOT_PROTOCOL.to_le_bytes());
    put(&mut setup, hdr::TYPE_OF_LOADER, &[0]);
    put(&mut setup, hdr::LOADFLAGS, &[LOADED_HIGH]);
    put(&mut setup, hdr::SETUP_MOVE_SIZE, &0x8000u16.to_le_bytes());
    put(
        &mut setup,
        hdr::CODE32_START,
        &(LOAD_ADDR as u32).to_le_bytes(),
    );
    put(
        &mut setup,
        hdr::INITRD_ADDR_MAX,
        &0x7fff_ffffu32.to_le_bytes(),
    );
    put(
        &mut setup,
        hdr::KERNEL_ALIGNMENT,
        &(LOAD_ADDR as u32).to_le_bytes(),
    );
    put(&mut setup, hdr::RELOCATABLE_KERNEL, &[0]);
    put(&mut setup, hdr::MIN_ALIGNMENT, &[20]); // log2 of 1 MiB
    put(&mut setup, hdr::XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
    put(&mut setup, hdr::CMDLINE_SIZE, &CMDLINE_SIZE.to_le_bytes());
    put(&mut setup, hdr::PREF_ADDRESS, &LOAD_ADDR.to_le_bytes());
    put(
        &mut setup,
        hdr::INIT_SIZE,
        &(init_size as u32).to_le_bytes(),
    );
    let stub = real_mode_stub(LOAD_ADDR as u32);
    assert!(STUB + stub.len() <= STUB_GDT && STUB_GDTR + 6 <= SETUP_SIZE);
    put(&mut setup, STUB, &stub);
    // Stub GDT: null, null, 0x10 flat 32-bit code, 0x18 flat data; GDTR limit.
    put(
        &mut setup,
        STUB_GDT + 0x10,
        &0x00cf_9a00_0000_ffffu64.to_le_bytes(),
    );
    put(
        &mut setup,
        STUB_GDT + 0x18,
        &0x00cf_9200_0000_ffffu64.to_le_bytes(),
    );
    put(&mut setup, STUB_GDTR, &0x1fu16.to_le_bytes());

    setup.extend_from_slice(&kernel);
    Ok(setup)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64: two PT_LOAD segments (a gap between them, BSS at the end) and a PT_NOTE.
    fn tiny_elf() -> Vec<u8> {
        let mut f = vec![0u8; 0x300];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little endian
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[0x18..0x20].copy_from_slice(&0x100200u64.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let ph =
            |f: &mut Vec<u8>, i: usize, ty: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
                let b = 64 + i * 56;
                f[b..b + 4].copy_from_slice(&ty.to_le_bytes());
                f[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
                f[b + 16..b + 24].copy_from_slice(&paddr.to_le_bytes());
                f[b + 24..b + 32].copy_from_slice(&paddr.to_le_bytes());
                f[b + 32..b + 40].copy_from_slice(&filesz.to_le_bytes());
                f[b + 40..b + 48].copy_from_slice(&memsz.to_le_bytes());
            };
        // Listed out of order on purpose.
        ph(&mut f, 0, 1, 0x280, 0x101000, 0x10, 0x3000); // data + BSS
        ph(&mut f, 1, 4, 0x200, 0x100000, 0x8, 0x8); // PT_NOTE: ignored
        ph(&mut f, 2, 1, 0x200, 0x100000, 0x40, 0x40); // text
        for (i, b) in f[0x200..0x240].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        for b in &mut f[0x280..0x290] {
            *b = 0xdd;
        }
        f
    }

    fn le16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn le32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn bzimage_header_fields() {
        let img = bzimage_from_elf(&tiny_elf()).unwrap();
        assert_eq!(img[hdr::SETUP_SECTS], SETUP_SECTS);
        assert_eq!(le16(&img, hdr::BOOT_FLAG), 0xaa55);
        assert_eq!(&img[hdr::HEADER..hdr::HEADER + 4], b"HdrS");
        assert!(le16(&img, hdr::VERSION) >= 0x020c);
        assert_eq!(img[hdr::LOADFLAGS] & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(le32(&img, hdr::CODE32_START), 0x100000);
        assert_eq!(img[hdr::RELOCATABLE_KERNEL], 0);
        assert_eq!(le32(&img, hdr::KERNEL_ALIGNMENT), 0x100000);
        assert_eq!(le16(&img, hdr::XLOADFLAGS) & XLF_KERNEL_64, XLF_KERNEL_64);
        assert_eq!(le32(&img, hdr::CMDLINE_SIZE), 4095);
        assert_eq!(
            u64::from_le_bytes(
                img[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8]
                    .try_into()
                    .unwrap()
            ),
            0x100000
        );
        // Image 0x100000..0x101010 (0x1010 bytes), memory up to 0x104000.
        assert_eq!(le32(&img, hdr::SYSSIZE), 0x1010 / 16);
        assert_eq!(le32(&img, hdr::INIT_SIZE), 0x4000);
        assert_eq!(img.len(), SETUP_SIZE + 0x1010);
    }

    #[test]
    fn bzimage_payload_is_the_flattened_elf() {
        let img = bzimage_from_elf(&tiny_elf()).unwrap();
        let k = &img[SETUP_SIZE..];
        assert_eq!(k[0], 1);
        assert_eq!(k[0x3f], 0x40);
        assert!(
            k[0x40..0x1000].iter().all(|&b| b == 0),
            "gap is zero-filled"
        );
        assert!(k[0x1000..0x1010].iter().all(|&b| b == 0xdd));
    }

    #[test]
    fn real_mode_stub_is_reached_and_fits() {
        let img = bzimage_from_elf(&tiny_elf()).unwrap();
        // The jump at 0x200 and the hop land on the stub's first instruction (cli).
        assert_eq!(img[hdr::JUMP], 0xeb);
        let hop = hdr::JUMP + 2 + usize::from(img[hdr::JUMP + 1]);
        assert_eq!(img[hop], 0xe9);
        assert_eq!(hop + 3 + usize::from(le16(&img, hop + 1)), STUB);
        assert_eq!(img[STUB], 0xfa);
        // Nothing but the header and the hop inside the zero page: the hop sits
        // in boot_params padding (0x26c..0x290), the stub past 4 KiB.
        assert!(hop >= 0x26c && hop + 3 <= 0x290);
        const { assert!(STUB >= 0x1000) };
        let stub = real_mode_stub(0x100000);
        assert_eq!(stub.len(), 0x86);
        // It ends in a far jump to 0x10:code32_start.
        assert_eq!(
            &stub[stub.len() - 8..],
            &[0x66, 0xea, 0x00, 0x00, 0x10, 0x00, 0x10, 0x00]
        );
        assert_eq!(le16(&img, STUB_GDTR), 0x1f);
    }

    #[test]
    fn rejects_what_it_cannot_flatten() {
        assert!(bzimage_from_elf(b"not an elf").is_err());
        let mut elf = tiny_elf();
        elf[64 + 2 * 56 + 24..64 + 2 * 56 + 32].copy_from_slice(&0x200000u64.to_le_bytes());
        assert!(
            bzimage_from_elf(&elf).is_err(),
            "first segment must be at 1 MiB"
        );
    }
}
