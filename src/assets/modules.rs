//! Picking the virtio kernel modules out of the unpacked kernel package.
//!
//! Debian's kernel packages do not ship `modules.dep` (`depmod` writes it at
//! install time), so dependencies come from where `depmod` itself reads them:
//! the `depends=` entry of each module's `.modinfo` ELF section. Modules
//! compressed in the package (`.ko.xz`, `.ko.zst`, `.ko.gz`; bookworm's are
//! plain `.ko`) are decompressed on the host with the `xz`/`zstd`/`gzip`
//! tools, so busybox `insmod` in the guest only ever sees plain ELF files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::debian::run;
use super::AssetsError;

/// Modules the guest needs, in the order the drivers are wanted, with whether
/// their absence is fatal. Dependencies are pulled in automatically and
/// inherit "required" from whoever needs them.
pub(crate) const WANTED: &[(&str, bool)] = &[
    ("virtio", true),
    ("virtio_ring", true),
    ("virtio_pci_legacy_dev", true),
    ("virtio_pci_modern_dev", true),
    ("virtio_pci", true),
    ("virtio_blk", true),
    ("failover", true),
    ("net_failover", true),
    ("virtio_net", true),
    ("virtio_rng", false),
    ("vsock", false),
    ("vmw_vsock_virtio_transport_common", false),
    ("vmw_vsock_virtio_transport", false),
    ("virtio_console", false),
];

/// One module to load in the guest, in dependency order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    pub name: String,
    pub required: bool,
    /// Names of the modules it needs (all earlier in the list).
    pub deps: Vec<String>,
    /// Plain ELF contents.
    pub data: Vec<u8>,
}

/// Collects [`WANTED`] and their dependencies from `modules_dir`
/// (`lib/modules/<version>` of the unpacked package), dependencies first.
pub(crate) fn collect(modules_dir: &Path) -> Result<Vec<Module>, AssetsError> {
    let index = index(&modules_dir.join("kernel"))?;
    let builtin = builtin(modules_dir);
    let mut c = Collector {
        index,
        builtin,
        done: BTreeSet::new(),
        out: Vec::new(),
    };
    for &(name, required) in WANTED {
        c.visit(name, required, &mut Vec::new())?;
    }
    Ok(c.out)
}

struct Collector {
    index: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    done: BTreeSet<String>,
    out: Vec<Module>,
}

impl Collector {
    fn visit(
        &mut self,
        name: &str,
        required: bool,
        stack: &mut Vec<String>,
    ) -> Result<(), AssetsError> {
        if self.builtin.contains(name) || stack.iter().any(|s| s == name) {
            return Ok(());
        }
        if self.done.contains(name) {
            // Seen already: just promote it (and what it needs) if a
            // required module needs it.
            if required {
                self.promote(name);
            }
            return Ok(());
        }
        let Some(path) = self.index.get(name).cloned() else {
            if required {
                return Err(AssetsError::ModuleMissing {
                    name: name.to_owned(),
                });
            }
            log::warn!("optional guest module {name} is not in the kernel package; skipping it");
            self.done.insert(name.to_owned());
            return Ok(());
        };
        let data = read_module(&path)?;
        let deps = modinfo(&data, "depends").ok_or_else(|| {
            AssetsError::Package(format!("{} has no .modinfo section", path.display()))
        })?;
        let deps: Vec<String> = deps
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect();
        stack.push(name.to_owned());
        for dep in &deps {
            self.visit(dep, required, stack)?;
        }
        stack.pop();
        self.done.insert(name.to_owned());
        self.out.push(Module {
            name: name.to_owned(),
            required,
            deps,
            data,
        });
        Ok(())
    }

    fn promote(&mut self, name: &str) {
        let Some(m) = self.out.iter_mut().find(|m| m.name == name && !m.required) else {
            return;
        };
        m.required = true;
        for dep in m.deps.clone() {
            self.promote(&dep);
        }
    }
}

/// Module name (dashes folded to underscores, as the kernel does) -> file.
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, AssetsError> {
    let mut map = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| AssetsError::io("cannot list", &dir, e))? {
            let entry = entry.map_err(|e| AssetsError::io("cannot list", &dir, e))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            } else if let Some(name) = module_name(&path) {
                map.insert(name, path);
            }
        }
    }
    Ok(map)
}

/// `.../virtio-rng.ko.xz` -> `virtio_rng`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|s| file.strip_suffix(s))?;
    Some(stem.replace('-', "_"))
}

/// Names listed in `modules.builtin` (compiled into the kernel: nothing to load).
fn builtin(modules_dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l.trim())))
        .collect()
}

fn read_module(path: &Path) -> Result<Vec<u8>, AssetsError> {
    let s = path.to_string_lossy();
    let tool = if s.ends_with(".ko.xz") {
        "xz"
    } else if s.ends_with(".ko.zst") {
        "zstd"
    } else if s.ends_with(".ko.gz") {
        "gzip"
    } else {
        return fs::read(path).map_err(|e| AssetsError::io("cannot read", path, e));
    };
    Ok(run(Command::new(tool).arg("-dc").arg(path))?.stdout)
}

/// The value of `key=` in the `.modinfo` section of a 64-bit little-endian
/// ELF relocatable object, or `None` if there is no such section. A module
/// without the key yields `Some("")`.
pub(crate) fn modinfo(elf: &[u8], key: &str) -> Option<String> {
    let section = section(elf, ".modinfo")?;
    let prefix = format!("{key}=");
    let value = section
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .unwrap_or_default();
    Some(String::from_utf8_lossy(value).into_owned())
}

fn section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?) as usize);
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok();
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let body = |h: usize| {
        let (off, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
        elf.get(off..off.checked_add(size)?)
    };
    let names = body(header(shstrndx)?)?;
    (0..shnum).find_map(|i| {
        let h = header(i)?;
        let name = names.get(u32_at(h)?..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        (name == wanted.as_bytes()).then(|| body(h)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE object: null section, `.modinfo`, `.shstrtab`.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        while elf.len() % 8 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, strtab_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_modinfo_entries() {
        let elf = fake_module(b"license=GPL\0depends=virtio_ring,virtio\0name=virtio_blk\0");
        assert_eq!(
            modinfo(&elf, "depends").as_deref(),
            Some("virtio_ring,virtio")
        );
        assert_eq!(modinfo(&elf, "name").as_deref(), Some("virtio_blk"));
        assert_eq!(modinfo(&elf, "alias").as_deref(), Some(""));
        assert_eq!(modinfo(b"not an elf at all", "depends"), None);
        assert_eq!(modinfo(&elf[..70], "depends"), None);
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name(Path::new("a/virtio-rng.ko")).as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name(Path::new("virtio_net.ko.xz")).as_deref(),
            Some("virtio_net")
        );
        assert_eq!(
            module_name(Path::new("vsock.ko.zst")).as_deref(),
            Some("vsock")
        );
        assert_eq!(module_name(Path::new("modules.order")), None);
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let dir = std::env::temp_dir().join(format!("utsuwa-modtest-{}", std::process::id()));
        let kdir = dir.join("kernel/drivers");
        fs::create_dir_all(&kdir).unwrap();
        let put = |name: &str, deps: &str| {
            let info = format!("depends={deps}\0name={name}\0");
            fs::write(
                kdir.join(format!("{name}.ko")),
                fake_module(info.as_bytes()),
            )
            .unwrap();
        };
        put("virtio_ring", "");
        put("virtio", "virtio_ring");
        put("virtio_pci_modern_dev", "");
        put(
            "virtio_pci",
            "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio",
        );
        put("virtio_blk", "virtio,virtio_ring");
        put("failover", "");
        put("net_failover", "failover");
        put("virtio_net", "virtio_ring,virtio,net_failover");
        put("vsock", "");
        fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci_legacy_dev.ko\n",
        )
        .unwrap();

        let got = collect(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = got.iter().map(|m| (m.name.as_str(), m.required)).collect();
        assert_eq!(
            names,
            [
                ("virtio_ring", true),
                ("virtio", true),
                ("virtio_pci_modern_dev", true),
                ("virtio_pci", true),
                ("virtio_blk", true),
                ("failover", true),
                ("net_failover", true),
                ("virtio_net", true),
                ("vsock", false),
            ]
        );
    }

    #[test]
    fn a_missing_required_module_is_an_error() {
        let dir = std::env::temp_dir().join(format!("utsuwa-modtest-empty-{}", std::process::id()));
        fs::create_dir_all(dir.join("kernel")).unwrap();
        let err = collect(&dir).unwrap_err();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(err, AssetsError::ModuleMissing { ref name } if name == "virtio"),
            "{err}"
        );
    }
}
