//! The per-VM root, `<base>/utsuwa/<ID>/root`, built on the host before
//! any namespace is entered, and removed when the VM has ended.
//!
//! - `<base>/utsuwa/<ID>/lock` is flock()ed for the jailer's lifetime: a
//!   second jailer with the same ID is refused while the first lives; a
//!   root left by one that died is stale and replaced.
//! - `/utsuwa` is a copy of the running binary (`/proc/self/exe`), so the
//!   host's binary can be replaced under a running VM; the loader and
//!   libraries are linked or copied under their own paths.
//! - `/kernel`, `/initrd`: hard links when on the same file system and
//!   readable by the VM's user (nothing to copy; the link shares the
//!   original's owner and mode), else read-only copies (owned by that user
//!   when it could not read the original).
//! - `/disk<N>`: an empty file here, onto which the child bind-mounts the
//!   image inside its own mount namespace (see `ns.rs`). Not a copy: an
//!   image can be large and on another file system, and the guest's
//!   writes must land in the operator's image, not in a copy deleted with
//!   the jail. Not a hard link either: a read-only disk's bind mount is
//!   made read-only, so even a VMM that got the right to write the file
//!   could not; and the mount vanishes with the namespace. A writable
//!   image is chowned to the VM's user (it is the same file: its owner on
//!   the host changes); a read-only one must already be readable by it.
//! - `/dev/kvm`, and `/dev/net/tun` when the VM has network interfaces,
//!   made with mknod (same device numbers), owned by the VM's user, 0600.
//!   No `/dev/urandom`: utsuwa and its rng device use getrandom(2).
//! - `/run`, owned by the VM's user, 0700: the API and vsock sockets and
//!   any log or metrics file.

use std::ffi::CString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::args::JailArgs;
use super::rewrite::{Plan, Use, CONFIG, RUN_DIR};
use super::{io_err, mounts, os_err, JailError};

/// The jail's root folder; removed (with what is in it) when dropped.
pub struct Root {
    root: PathBuf,
    /// Held (flock) while the jail lives; the file itself stays.
    _lock: File,
}

/// Whether `uid`/`gid` (with no supplementary groups) may read the file.
fn readable_by(meta: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = meta.mode();
    mode & 0o004 != 0
        || (meta.uid() == uid && mode & 0o400 != 0)
        || (meta.gid() == gid && mode & 0o040 != 0)
}

fn mkdir(path: &Path, mode: u32) -> Result<(), JailError> {
    std::fs::create_dir_all(path).map_err(io_err(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    chown(path, Some(uid), Some(gid)).map_err(io_err(format!("chown {}", path.display())))
}

/// `dest` as a copy of `src`, with `mode`.
fn copy(src: &Path, dest: &Path, mode: u32) -> Result<(), JailError> {
    std::fs::copy(src, dest).map_err(io_err(format!(
        "copying {} to {}",
        src.display(),
        dest.display()
    )))?;
    std::fs::set_permissions(dest, Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", dest.display())))
}

/// Hard-links `src` at `dest` when the VM's user can read it and both
/// are on one file system; otherwise copies it (owned by that user, 0400
/// when it could not read the original).
fn link_or_copy(src: &Path, dest: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    if let Some(parent) = dest.parent() {
        mkdir(parent, 0o755)?;
    }
    let meta = std::fs::metadata(src).map_err(io_err(format!("stat {}", src.display())))?;
    // A copy keeps the original's execute bits (the loader needs them)
    // and drops any write, set-id or sticky bit.
    let exec = if meta.mode() & 0o111 != 0 { 0o111 } else { 0 };
    if !readable_by(&meta, uid, gid) {
        copy(src, dest, 0o400 | (exec & 0o100))?;
        return set_owner(dest, uid, gid);
    }
    match std::fs::hard_link(src, dest) {
        Ok(()) => Ok(()),
        // EXDEV: another file system; EPERM: protected_hardlinks.
        Err(_) => copy(src, dest, 0o444 | exec),
    }
}

fn mknod(path: &Path, like: &str, uid: u32, gid: u32) -> Result<(), JailError> {
    let host = std::fs::metadata(like).map_err(io_err(format!("stat {like}")))?;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage(format!("{} has a NUL byte", path.display())))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; mknod
    // only reads it.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, host.rdev()) } != 0 {
        return Err(os_err(format!("mknod {}", path.display())));
    }
    // mknod's mode went through the umask: set it exactly.
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    set_owner(path, uid, gid)
}

/// `<root>` + an absolute path inside the jail.
pub fn inside(root: &Path, jail_path: &Path) -> PathBuf {
    root.join(jail_path.strip_prefix("/").unwrap_or(jail_path))
}

/// Takes the ID's lock, or says who holds it.
fn lock(id_dir: &Path, id: &str) -> Result<File, JailError> {
    let path = id_dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(JailError::Busy {
            id: id.to_string(),
            pid: text.trim().parse().ok(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

impl Root {
    /// Builds the root for `plan`, `shared` being the (jail path, host
    /// path) of each shared object the binary needs.
    pub fn prepare(
        jail: &JailArgs,
        plan: &Plan,
        shared: &[(PathBuf, PathBuf)],
    ) -> Result<Root, JailError> {
        let id_dir = jail.chroot_base.join("utsuwa").join(&jail.id);
        std::fs::create_dir_all(&id_dir)
            .map_err(io_err(format!("creating {}", id_dir.display())))?;
        let lock = lock(&id_dir, &jail.id)?;
        let root = id_dir.join("root");
        if root.exists() {
            // Stale: its jailer died without cleaning up. Its mounts were
            // in a namespace that died with its VMM; anything still
            // mounted under it on the host was put there by someone else.
            let busy = mounts::under(
                &mounts::current().map_err(io_err("reading mountinfo"))?,
                &root,
            );
            if !busy.is_empty() {
                return Err(JailError::Usage(format!(
                    "stale jail root {} has something mounted at {} on the host: not removing it",
                    root.display(),
                    busy[0].display()
                )));
            }
            std::fs::remove_dir_all(&root)
                .map_err(io_err(format!("removing stale {}", root.display())))?;
        }
        // From here a failure removes what was made (Drop).
        let made = Root { root, _lock: lock };
        made.fill(jail, plan, shared)?;
        Ok(made)
    }

    fn fill(
        &self,
        jail: &JailArgs,
        plan: &Plan,
        shared: &[(PathBuf, PathBuf)],
    ) -> Result<(), JailError> {
        let (root, uid, gid) = (&self.root, jail.uid, jail.gid);
        mkdir(root, 0o755)?;
        copy(Path::new("/proc/self/exe"), &root.join("utsuwa"), 0o555)?;
        for (jail_path, host) in shared {
            link_or_copy(host, &inside(root, jail_path), uid, gid)?;
        }
        for f in &plan.files {
            let dest = inside(root, &f.jail);
            match f.usage {
                Use::Boot => link_or_copy(&f.host, &dest, uid, gid)?,
                Use::DiskReadOnly | Use::DiskReadWrite => {
                    File::create(&dest).map_err(io_err(format!("creating {}", dest.display())))?;
                    std::fs::set_permissions(&dest, Permissions::from_mode(0o600))
                        .map_err(io_err(format!("chmod {}", dest.display())))?;
                    if f.usage == Use::DiskReadWrite {
                        set_owner(&f.host, uid, gid)?;
                    } else {
                        let meta = std::fs::metadata(&f.host)
                            .map_err(io_err(format!("stat {}", f.host.display())))?;
                        if !readable_by(&meta, uid, gid) {
                            return Err(JailError::Usage(format!(
                                "read-only disk {} is not readable by uid {uid} gid {gid}",
                                f.host.display()
                            )));
                        }
                    }
                }
            }
        }
        if let Some(json) = &plan.config {
            let dest = inside(root, Path::new(CONFIG));
            std::fs::write(&dest, json).map_err(io_err(format!("writing {}", dest.display())))?;
            std::fs::set_permissions(&dest, Permissions::from_mode(0o444))
                .map_err(io_err(format!("chmod {}", dest.display())))?;
        }
        if plan.run_dir {
            let run = inside(root, Path::new(RUN_DIR));
            mkdir(&run, 0o700)?;
            set_owner(&run, uid, gid)?;
        }
        mkdir(&root.join("dev"), 0o755)?;
        mknod(&root.join("dev/kvm"), "/dev/kvm", uid, gid)?;
        if plan.tun {
            mkdir(&root.join("dev/net"), 0o755)?;
            mknod(&root.join("dev/net/tun"), "/dev/net/tun", uid, gid)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // The disks' bind mounts lived in the VMM's mount namespace and
        // went with it; never delete through a mount that is still there.
        let mounted = mounts::current()
            .map(|m| mounts::under(&m, &self.root))
            .unwrap_or_default();
        if !mounted.is_empty() {
            eprintln!(
                "utsuwa: warning: jail: {} is still mounted: leaving {}",
                mounted[0].display(),
                self.root.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "utsuwa: warning: jail: cannot remove {}: {e}",
                    self.root.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_joins_jail_paths_under_the_root() {
        assert_eq!(
            inside(Path::new("/b/r"), Path::new("/dev/kvm")),
            Path::new("/b/r/dev/kvm")
        );
        assert_eq!(
            inside(Path::new("/b/r"), Path::new("kernel")),
            Path::new("/b/r/kernel")
        );
    }

    #[test]
    fn readable_by_follows_the_mode_bits() {
        let dir = std::env::temp_dir().join(format!("utsuwa-jail-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        let set = |mode| std::fs::set_permissions(&f, Permissions::from_mode(mode)).unwrap();
        let meta = || std::fs::metadata(&f).unwrap();
        set(0o644);
        assert!(readable_by(&meta(), 4242, 4242));
        set(0o640);
        assert!(!readable_by(&meta(), 4242, 4242));
        assert!(readable_by(&meta(), 4242, meta().gid()));
        set(0o400);
        assert!(readable_by(&meta(), meta().uid(), 4242));
        assert!(!readable_by(&meta(), 4242, meta().gid()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
