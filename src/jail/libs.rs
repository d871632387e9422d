//! The shared objects the utsuwa binary needs to start inside the jail,
//! where there is no `/lib`. The jailer runs the very binary it copies
//! into the jail, so what it has mapped itself is what the copy will
//! load: the dynamic loader named by the ELF's `PT_INTERP` (kept under
//! that exact name, since the kernel opens it by it) and every other
//! shared object in `/proc/self/maps` (kept under its canonical path,
//! one of the loader's default folders). A static binary needs none.

use std::path::{Path, PathBuf};

const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

/// The `PT_INTERP` path of a little-endian ELF64 image, if it has one.
/// Every offset is bounds-checked: a malformed image gives None.
pub fn interpreter(elf: &[u8]) -> Option<PathBuf> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let phoff = u64_at(elf, 0x20)?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, ph)? != PT_INTERP {
            return None;
        }
        let offset = u64_at(elf, ph.checked_add(8)?)?;
        let size = u64_at(elf, ph.checked_add(32)?)?;
        let bytes = elf.get(offset..offset.checked_add(size)?)?;
        let path = bytes.split(|b| *b == 0).next()?;
        let path = std::str::from_utf8(path).ok()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    })
}

/// Shared objects mapped in `maps` (the text of a `/proc/PID/maps`),
/// other than `exe`, each once.
pub fn mapped_objects(maps: &str, exe: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let p = Path::new(path);
        let is_object = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(".so"));
        if path.starts_with('/') && is_object && p != exe && !out.iter().any(|o| o == p) {
            out.push(p.to_path_buf());
        }
    }
    out
}

/// (path inside the jail, file on the host) for every shared object the
/// running binary needs.
pub fn needed() -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let image = std::fs::read("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut out = Vec::new();
    let mut interp_canonical = None;
    if let Some(interp) = interpreter(&image) {
        let host = std::fs::canonicalize(&interp)?;
        interp_canonical = Some(host.clone());
        out.push((interp, host));
    }
    for object in mapped_objects(&maps, &exe) {
        if Some(&object) != interp_canonical.as_ref() {
            out.push((object.clone(), object));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_binary_s_loader_and_libraries() {
        let image = std::fs::read("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        // A dynamically linked test binary: a loader and a libc.
        if let Some(interp) = interpreter(&image) {
            assert!(interp.to_str().unwrap().contains("ld-"), "{interp:?}");
            let objects = mapped_objects(&maps, &exe);
            assert!(
                objects
                    .iter()
                    .any(|o| o.to_str().unwrap().contains("libc.so")),
                "{objects:?}"
            );
            assert!(!objects.contains(&exe));
        }
    }

    #[test]
    fn malformed_images_have_no_interpreter() {
        let image = std::fs::read("/proc/self/exe").unwrap();
        for len in [0, 4, 16, 0x3a, 64, 200] {
            let _ = interpreter(&image[..len.min(image.len())]);
        }
        let mut bad = image[..64].to_vec();
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&bad), None);
        assert_eq!(interpreter(b"not an elf at all"), None);
    }

    #[test]
    fn maps_lines_parse() {
        let maps = "7f00-7f01 r-xp 00000000 fe:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                    7f01-7f02 r--p 00000000 fe:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                    5500-5501 r-xp 00000000 fe:01 9 /usr/bin/utsuwa\n\
                    7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n\
                    7f03-7f04 rw-p 00000000 00:00 0\n";
        assert_eq!(
            mapped_objects(maps, Path::new("/usr/bin/utsuwa")),
            [PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6")]
        );
    }
}
