//! The on-disk side of the cache: file names, the stamp, the lock that keeps
//! two `utsuwa` processes from building at once, scratch folders, and
//! write-to-temp-then-rename.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::AssetsError;

/// Where everything lives inside the cache folder.
pub(crate) struct Layout {
    pub dir: PathBuf,
    /// The Debian cloud kernel's bzImage.
    pub kernel: PathBuf,
    /// The guest's uncompressed newc initramfs.
    pub initrd: PathBuf,
    /// Static busybox, kept so the initramfs can be rebuilt offline.
    pub busybox: PathBuf,
    /// `<name>.ko` (plain ELF) plus `order`, kept for the same reason.
    pub modules: PathBuf,
    /// `key=value` lines; see [`Stamp`].
    pub stamp: PathBuf,
    pub lock: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio"),
            busybox: dir.join("busybox"),
            modules: dir.join("modules"),
            stamp: dir.join("stamp"),
            lock: dir.join(".lock"),
        }
    }

    /// Kernel, busybox and modules all there (no initramfs needed).
    pub(crate) fn has_inputs(&self) -> bool {
        self.kernel.is_file() && self.busybox.is_file() && self.modules.join("order").is_file()
    }
}

/// What the stamp file records. Written last, so its presence means the
/// files it describes are complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// `uname -r` of the cached kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The Debian package it came from and that package's version.
    pub package: String,
    pub package_version: String,
    /// [`super::init::fingerprint`] of the initramfs, empty if not built yet.
    pub initramfs: String,
}

impl Stamp {
    pub(crate) fn read(path: &Path) -> Option<Self> {
        Self::parse(&fs::read_to_string(path).ok()?)
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut s = Stamp::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let slot = match key.trim() {
                "kernel_version" => &mut s.kernel_version,
                "package" => &mut s.package,
                "package_version" => &mut s.package_version,
                "initramfs" => &mut s.initramfs,
                _ => continue,
            };
            *slot = value.trim().to_owned();
        }
        (!s.kernel_version.is_empty()).then_some(s)
    }

    pub(crate) fn render(&self) -> String {
        format!(
            "# utsuwa guest assets; delete this folder to fetch the current Debian kernel again\n\
             kernel_version={}\npackage={}\npackage_version={}\ninitramfs={}\n",
            self.kernel_version, self.package, self.package_version, self.initramfs
        )
    }

    pub(crate) fn write(&self, path: &Path) -> Result<(), AssetsError> {
        write_atomic(path, self.render().as_bytes())
    }
}

/// An exclusive `flock` on the lock file, released on drop.
pub(crate) struct Lock(#[allow(dead_code)] File);

impl Lock {
    pub(crate) fn acquire(path: &Path) -> Result<Self, AssetsError> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| AssetsError::io("cannot open", path, e))?;
        loop {
            // SAFETY: flock only reads the descriptor, which `file` keeps open
            // for the duration of the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(AssetsError::io("cannot lock", path, err));
            }
        }
    }
}

/// A scratch folder inside the cache, removed (with its contents) on drop.
pub(crate) struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub(crate) fn new(cache: &Path) -> Result<Self, AssetsError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = cache.join(format!("tmp-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| AssetsError::io("cannot create", &path, e))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Removes what an interrupted build left behind (scratch folders, temporary
/// files). Only call it while holding the [`Lock`].
pub(crate) fn remove_leftovers(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let result = if name.starts_with("tmp-") && path.is_dir() {
            fs::remove_dir_all(&path)
        } else if name.contains(".tmp-") {
            fs::remove_file(&path)
        } else {
            continue;
        };
        match result {
            Ok(()) => log::debug!("removed leftover {}", path.display()),
            Err(e) => log::warn!("cannot remove leftover {}: {e}", path.display()),
        }
    }
}

/// `path` with `.tmp-<pid>` appended: the name to write before renaming.
pub(crate) fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

/// Writes `data` to a temporary name next to `path`, then renames it.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AssetsError> {
    let tmp = temp_name(path);
    fs::write(&tmp, data).map_err(|e| AssetsError::io("cannot write", &tmp, e))?;
    rename(&tmp, path)
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), AssetsError> {
    fs::rename(from, to).map_err(|e| AssetsError::io("cannot rename to", to, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let s = Stamp {
            kernel_version: "6.1.0-56-cloud-amd64".into(),
            package: "linux-image-6.1.0-56-cloud-amd64".into(),
            package_version: "6.1.192-2".into(),
            initramfs: "0123456789abcdef".into(),
        };
        assert_eq!(Stamp::parse(&s.render()), Some(s));
        assert_eq!(Stamp::parse("initramfs=x\n"), None);
        assert_eq!(Stamp::parse(""), None);
    }
}
