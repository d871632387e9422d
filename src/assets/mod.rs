//! The default guest: a Debian cloud kernel plus a busybox initramfs, built
//! on the host from Debian packages and kept in a cache folder.
//!
//! This module owns fetching the kernel (`linux-image-cloud-amd64` ->
//! `linux-image-<version>-cloud-amd64`) and `busybox-static` with apt,
//! picking out the virtio kernel modules, writing the initramfs (our own
//! newc cpio writer) with its `/init` script, and the console protocol that
//! script speaks (see [`init`]: `utsuwa.cmd=`, `UTSUWA-READY`,
//! `UTSUWA-CMD-BEGIN`/`UTSUWA-CMD-END rc=N`).
//!
//! [`ensure`] is instant once the cache is complete: it reads the stamp and
//! checks two files exist, nothing else. The kernel is resolved once and
//! never re-resolved automatically; deleting the cache folder (or just its
//! `stamp`) makes the next run fetch Debian's current kernel. An edit of the
//! `/init` script only rebuilds the initramfs, from the busybox and modules
//! kept in the cache, without apt.
//!
//! Cache layout (`cache_dir`):
//!
//! ```text
//! vmlinuz          bzImage of the Debian cloud kernel
//! initramfs.cpio   uncompressed newc initramfs: busybox, /init, modules
//! busybox          static busybox from busybox-static
//! modules/         <name>.ko (uncompressed) and `order` (load order)
//! stamp            kernel version, package, package version, init fingerprint
//! .lock            flock'ed while building
//! tmp-*/           scratch space of a build in progress (removed after)
//! ```

mod cache;
mod cpio;
mod debian;
pub mod init;
mod modules;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cache::{rename, write_atomic, Layout, Lock, ScratchDir, Stamp};
pub use init::{encode_cmd, parse_cmd_output};
use modules::Module;

/// The files to boot the default guest with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    /// The kernel, a bzImage.
    pub kernel: PathBuf,
    /// The initramfs, an uncompressed newc cpio archive.
    pub initrd: PathBuf,
    /// The kernel's release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
}

/// Why the guest assets could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// apt-get, apt-cache, dpkg-deb (or xz/zstd/gzip for compressed modules) is not on `PATH`.
    #[error("`{tool}` is not installed; building the default guest needs Debian's apt-get, apt-cache and dpkg-deb")]
    ToolMissing { tool: String },
    /// An external command exited with an error (e.g. a failed download).
    #[error("`{command}` failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(":\n{stderr}") })]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// apt does not know which package the kernel metapackage stands for.
    #[error("cannot resolve Debian's cloud kernel: {0}")]
    Resolve(String),
    /// The packages do not look as expected (no bzImage, no busybox...).
    #[error("unexpected Debian package contents: {0}")]
    Package(String),
    /// A required virtio module is neither in the package nor built in.
    #[error("kernel module `{name}`, needed by the default guest, is not in the kernel package")]
    ModuleMissing { name: String },
    /// Reading or writing the cache failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl AssetsError {
    pub(crate) fn io(context: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `$UTSUWA_CACHE` if set, else `$XDG_CACHE_HOME/utsuwa`, else
/// `~/.cache/utsuwa` (`.cache/utsuwa` under the current folder without a home).
pub fn default_cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("UTSUWA_CACHE") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return dir.join("utsuwa");
    }
    var("HOME")
        .unwrap_or_default()
        .join(".cache")
        .join("utsuwa")
}

/// Ensures the guest assets exist in `cache_dir` and returns them.
///
/// When everything is in place this runs no external command and touches
/// nothing but the stamp and two `stat`s. Otherwise it takes a lock on the
/// cache, downloads and unpacks the Debian packages (a few seconds and ~30
/// MB), and writes every file under a temporary name before renaming it.
pub fn ensure(cache_dir: &Path) -> Result<GuestAssets, AssetsError> {
    let layout = Layout::new(cache_dir);
    if let Some(assets) = ready(&layout) {
        return Ok(assets);
    }
    fs::create_dir_all(cache_dir).map_err(|e| AssetsError::io("cannot create", cache_dir, e))?;
    let _lock = Lock::acquire(&layout.lock)?;
    if let Some(assets) = ready(&layout) {
        return Ok(assets); // another process has just built it
    }
    cache::remove_leftovers(cache_dir);
    let mut stamp = match Stamp::read(&layout.stamp) {
        // Only the initramfs is missing or stale: rebuild it offline.
        Some(stamp) if layout.has_inputs() => stamp,
        _ => fetch(&layout)?,
    };
    log::info!(
        "building the guest initramfs for kernel {}",
        stamp.kernel_version
    );
    let busybox = fs::read(&layout.busybox)
        .map_err(|e| AssetsError::io("cannot read", &layout.busybox, e))?;
    let modules = load_modules(&layout.modules)?;
    let tmp = cache::temp_name(&layout.initrd);
    init::write_initramfs(&tmp, &busybox, &modules)
        .map_err(|e| AssetsError::io("cannot write", &tmp, e))?;
    rename(&tmp, &layout.initrd)?;
    stamp.initramfs = init::fingerprint();
    stamp.write(&layout.stamp)?;
    Ok(assets(&layout, &stamp))
}

/// The assets if the cache is complete and current, judged from the stamp.
fn ready(layout: &Layout) -> Option<GuestAssets> {
    let stamp = Stamp::read(&layout.stamp)?;
    let current = stamp.initramfs == init::fingerprint()
        && layout.kernel.is_file()
        && layout.initrd.is_file();
    current.then(|| assets(layout, &stamp))
}

fn assets(layout: &Layout, stamp: &Stamp) -> GuestAssets {
    GuestAssets {
        kernel: layout.kernel.clone(),
        initrd: layout.initrd.clone(),
        kernel_version: stamp.kernel_version.clone(),
    }
}

/// Fetches the packages and replaces kernel, busybox and modules in the
/// cache; returns the stamp describing them (without an initramfs yet).
fn fetch(layout: &Layout) -> Result<Stamp, AssetsError> {
    // From here until the new stamp is written the cache is inconsistent:
    // make sure nobody takes it for complete.
    match fs::remove_file(&layout.stamp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(AssetsError::io("cannot remove", &layout.stamp, e))
        }
        _ => {}
    }
    let scratch = ScratchDir::new(&layout.dir)?;
    let download = scratch.0.join("download");
    fs::create_dir(&download).map_err(|e| AssetsError::io("cannot create", &download, e))?;
    let fetched = debian::fetch(&download)?;
    let (version, modules_dir) = kernel_release(&fetched.kernel_root)?;
    log::info!(
        "unpacked {} {} (kernel {version})",
        fetched.package,
        fetched.package_version
    );

    let vmlinuz = fetched
        .kernel_root
        .join("boot")
        .join(format!("vmlinuz-{version}"));
    check_bzimage(&vmlinuz)?;
    let busybox = fetched.busybox_root.join("bin/busybox");
    if !busybox.is_file() {
        return Err(AssetsError::Package(format!(
            "no bin/busybox in {}",
            debian::BUSYBOX_PACKAGE
        )));
    }
    let modules = modules::collect(&modules_dir)?;
    let staged = scratch.0.join("modules");
    store_modules(&staged, &modules)?;

    rename(&vmlinuz, &layout.kernel)?;
    rename(&busybox, &layout.busybox)?;
    if layout.modules.exists() {
        fs::remove_dir_all(&layout.modules)
            .map_err(|e| AssetsError::io("cannot remove", &layout.modules, e))?;
    }
    rename(&staged, &layout.modules)?;
    let stamp = Stamp {
        kernel_version: version,
        package: fetched.package,
        package_version: fetched.package_version,
        initramfs: String::new(),
    };
    stamp.write(&layout.stamp)?;
    Ok(stamp)
}

/// The single `<root>/[usr/]lib/modules/<release>` folder of the package.
fn kernel_release(root: &Path) -> Result<(String, PathBuf), AssetsError> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(root.join(base)) else {
            continue;
        };
        let dirs: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("kernel").is_dir())
            .collect();
        if let [dir] = dirs.as_slice() {
            return Ok((dir.file_name().to_string_lossy().into_owned(), dir.path()));
        }
    }
    Err(AssetsError::Package(
        "expected exactly one lib/modules/<release>/kernel folder".into(),
    ))
}

/// A bzImage carries the "HdrS" setup-header magic at offset 0x202.
fn check_bzimage(path: &Path) -> Result<(), AssetsError> {
    let data = fs::read(path).map_err(|e| AssetsError::io("cannot read", path, e))?;
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return Err(AssetsError::Package(format!(
            "{} is not a bzImage",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `<name>.ko` files and `order` ("<name> required|optional" lines).
fn store_modules(dir: &Path, modules: &[Module]) -> Result<(), AssetsError> {
    fs::create_dir_all(dir).map_err(|e| AssetsError::io("cannot create", dir, e))?;
    let mut order = String::new();
    for m in modules {
        let path = dir.join(format!("{}.ko", m.name));
        fs::write(&path, &m.data).map_err(|e| AssetsError::io("cannot write", &path, e))?;
        let kind = if m.required { "required" } else { "optional" };
        order.push_str(&format!("{} {kind}\n", m.name));
    }
    write_atomic(&dir.join("order"), order.as_bytes())
}

/// Reads back what [`store_modules`] wrote.
fn load_modules(dir: &Path) -> Result<Vec<Module>, AssetsError> {
    let order_path = dir.join("order");
    let order = fs::read_to_string(&order_path)
        .map_err(|e| AssetsError::io("cannot read", &order_path, e))?;
    order
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let path = dir.join(format!("{name}.ko"));
            let data = fs::read(&path).map_err(|e| AssetsError::io("cannot read", &path, e))?;
            Ok(Module {
                name: name.to_owned(),
                required: kind == "required",
                deps: Vec::new(),
                data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run by hand: `cargo test -- --ignored ensure_builds_a_bootable_cache`
    /// (downloads ~28 MB with apt; set UTSUWA_TEST_CACHE to keep the result).
    #[test]
    #[ignore = "needs apt and network; slow"]
    fn ensure_builds_a_bootable_cache() {
        let keep = std::env::var_os("UTSUWA_TEST_CACHE").map(PathBuf::from);
        let dir = keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("utsuwa-assets-{}", std::process::id()))
        });
        let t = std::time::Instant::now();
        let a = ensure(&dir).unwrap();
        eprintln!("cold: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        assert_eq!(ensure(&dir).unwrap(), a);
        eprintln!("warm: {:?}", t.elapsed());
        check_bzimage(&a.kernel).unwrap();
        let cpio = fs::read(&a.initrd).unwrap();
        let names: Vec<_> = cpio::tests::parse(&cpio)
            .into_iter()
            .map(|e| e.name)
            .collect();
        for n in [
            "init",
            "bin/busybox",
            "dev/console",
            "lib/modules/virtio_pci.ko",
            "lib/modules/virtio_blk.ko",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!a.kernel_version.is_empty());
        if keep.is_none() {
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn modules_round_trip_through_the_cache() {
        let dir = std::env::temp_dir().join(format!("utsuwa-modstore-{}", std::process::id()));
        let mods = vec![
            Module {
                name: "a".into(),
                required: true,
                deps: vec![],
                data: b"A".to_vec(),
            },
            Module {
                name: "b".into(),
                required: false,
                deps: vec![],
                data: b"B".to_vec(),
            },
        ];
        store_modules(&dir, &mods).unwrap();
        let back = load_modules(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, mods);
    }
}
