//! Talking to the host's Debian tooling: resolve the current cloud kernel
//! package through apt, download it and `busybox-static` with
//! `apt-get download` (no root needed, nothing gets installed) and unpack the
//! `.deb` files with `dpkg-deb -x`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::AssetsError;

/// The metapackage that always points at Debian's current cloud kernel.
pub(crate) const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Statically linked busybox: the whole userland of the default guest.
pub(crate) const BUSYBOX_PACKAGE: &str = "busybox-static";

/// What [`fetch`] unpacked into the work folder.
pub(crate) struct Fetched {
    /// The real kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub package_version: String,
    /// Root of the unpacked kernel package.
    pub kernel_root: PathBuf,
    /// Root of the unpacked busybox package.
    pub busybox_root: PathBuf,
}

/// Resolves, downloads and unpacks both packages below `work`.
///
/// `apt-get update` runs at most once, and only when apt cannot resolve the
/// metapackage or the download fails (stale package lists name files that
/// the mirror no longer has).
pub(crate) fn fetch(work: &Path) -> Result<Fetched, AssetsError> {
    let mut updated = false;
    let (package, debs) = loop {
        let package = match resolve_kernel_package() {
            Ok(p) => p,
            Err(e) if !updated && !matches!(e, AssetsError::ToolMissing { .. }) => {
                log::info!("{e}; running apt-get update and retrying");
                apt_update()?;
                updated = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        log::info!("{KERNEL_METAPACKAGE} -> {package}; downloading it and {BUSYBOX_PACKAGE}");
        match download(&[&package, BUSYBOX_PACKAGE], work) {
            Ok(debs) => break (package, debs),
            Err(e) if !updated && !matches!(e, AssetsError::ToolMissing { .. }) => {
                log::info!("{e}; running apt-get update and retrying");
                apt_update()?;
                updated = true;
            }
            Err(e) => return Err(e),
        }
    };
    let kernel_root = work.join("kernel");
    let busybox_root = work.join("busybox");
    extract(&debs[0], &kernel_root)?;
    extract(&debs[1], &busybox_root)?;
    let package_version = deb_version(&debs[0]).unwrap_or_default();
    Ok(Fetched {
        package,
        package_version,
        kernel_root,
        busybox_root,
    })
}

/// Asks apt which real package the kernel metapackage depends on.
fn resolve_kernel_package() -> Result<String, AssetsError> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_depends(&text).ok_or_else(|| {
        AssetsError::Resolve(format!(
            "`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image package:\n{text}"
        ))
    })
}

/// Picks the kernel image out of `apt-cache depends <metapackage>` output.
///
/// The output lists the package first, then indented `Depends:` lines (a `|`
/// instead of the first space marks an alternative, `<name>` a virtual
/// package, whose providers follow further indented). The first concrete
/// `linux-image-*` dependency wins; it may be called `...-unsigned` on some
/// Debian releases, which is fine: apt can download whatever it names.
pub(crate) fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches('|');
            let rest = line
                .strip_prefix("Depends:")
                .or_else(|| line.strip_prefix("PreDepends:"))?;
            let name = rest.split_whitespace().next()?;
            name.starts_with("linux-image-").then(|| name.to_owned())
        })
        .next()
}

/// `apt-get download`s `packages` into `dir` and returns the `.deb` paths in
/// the same order.
fn download(packages: &[&str], dir: &Path) -> Result<Vec<PathBuf>, AssetsError> {
    run(Command::new("apt-get")
        .arg("download")
        .args(packages)
        .current_dir(dir))?;
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| AssetsError::io("cannot list", dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    packages
        .iter()
        .map(|p| {
            let prefix = format!("{p}_");
            names
                .iter()
                .find(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                .map(|n| dir.join(n))
                .ok_or_else(|| {
                    AssetsError::Package(format!(
                        "apt-get download left no {p}_*.deb in {}",
                        dir.display()
                    ))
                })
        })
        .collect()
}

/// The version part of a `name_version_arch.deb` file name (apt writes the
/// epoch colon as `%3a`).
fn deb_version(deb: &Path) -> Option<String> {
    let name = deb.file_name()?.to_str()?;
    let version = name.strip_suffix(".deb")?.split('_').nth(1)?;
    Some(version.replace("%3a", ":"))
}

fn extract(deb: &Path, dest: &Path) -> Result<(), AssetsError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(drop)
}

fn apt_update() -> Result<(), AssetsError> {
    run(Command::new("apt-get").args(["-q", "update"])).map(drop)
}

/// Runs `cmd` to completion, turning "not installed" and a non-zero exit into
/// [`AssetsError`]s that carry stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, AssetsError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    log::debug!("running {line}");
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AssetsError::ToolMissing {
            tool: program.clone(),
        },
        _ => AssetsError::io("cannot run", Path::new(&program), e),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(AssetsError::CommandFailed {
            command: line,
            status: out.status.to_string(),
            stderr,
        });
    }
    if !stderr.is_empty() {
        log::debug!("{program}: {stderr}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on Debian 12 (bookworm + bookworm-security).
    const BOOKWORM: &str = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";

    /// Captured from `apt-cache depends linux-image-6.1.0-56-cloud-amd64`:
    /// alternatives, virtual packages and their providers.
    const REAL_PACKAGE: &str = "\
linux-image-6.1.0-56-cloud-amd64
  Depends: kmod
  Depends: linux-base
 |Depends: initramfs-tools
  Depends: <linux-initramfs-tool>
    dracut
    initramfs-tools
    tiny-initramfs
  Conflicts: linux-image-6.1.0-56-cloud-amd64-unsigned
  Breaks: fwupdate
  Recommends: firmware-linux-free
  Suggests: linux-doc-6.1
 |Suggests: grub-pc
  Replaces: linux-image-6.1.0-56-cloud-amd64-unsigned
";

    #[test]
    fn parses_the_bookworm_metapackage() {
        assert_eq!(
            parse_depends(BOOKWORM).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn parses_an_unsigned_dependency() {
        let text = "linux-image-cloud-amd64\n |Depends: linux-image-6.12.9+deb13-cloud-amd64-unsigned\n  Depends: linux-image-6.12.9+deb13-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.12.9+deb13-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn ignores_conflicts_and_non_kernel_dependencies() {
        assert_eq!(parse_depends(REAL_PACKAGE), None);
        assert_eq!(parse_depends(""), None);
        assert_eq!(parse_depends("E: No packages found\n"), None);
    }

    #[test]
    fn deb_file_names() {
        let p = Path::new("/x/busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb");
        assert_eq!(deb_version(p).as_deref(), Some("1:1.35.0-4+deb12u1+b1"));
        let p = Path::new("linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb");
        assert_eq!(deb_version(p).as_deref(), Some("6.1.192-2"));
    }
}
