//! The test guest the benchmarks boot: `guests/probe`, built the way the
//! integration tests build it (its own target directory, host RUSTFLAGS
//! removed), as a PVH ELF and as a bzImage made from that ELF by the very
//! function the tests use (`tests/support/probe.rs`, compiled in here
//! rather than copied, so both always boot the same image); and the
//! `KEY=VALUE` fields of the lines it prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[allow(dead_code, clippy::all)]
#[path = "../../tests/support/probe.rs"]
mod image;

/// The two forms of the guest.
pub struct Guest {
    pub elf: PathBuf,
    pub bzimage: PathBuf,
}

/// Builds the probe under `root/target/probe` and writes its bzImage next
/// to the ELF (`probe.bzImage.bench`, not the tests' file, so a test run
/// in parallel never sees it half-written).
pub fn build(root: &Path) -> Result<Guest, String> {
    let target_dir = root.join("target").join("probe");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "-p", "probe", "--release", "--target-dir"])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo to build the probe guest: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the probe guest failed ({status}); see cargo's output above"
        ));
    }
    let elf = target_dir.join("release").join("probe");
    from_elf(&elf, &elf.with_extension("bzImage.bench"))
}

/// The bzImage for an existing ELF, written to `bzimage`.
pub fn from_elf(elf: &Path, bzimage: &Path) -> Result<Guest, String> {
    let bytes = std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
    let image = image::bzimage_from_elf(&bytes)
        .map_err(|e| format!("cannot make a bzImage from {}: {e}", elf.display()))?;
    std::fs::write(bzimage, image)
        .map_err(|e| format!("cannot write {}: {e}", bzimage.display()))?;
    Ok(Guest {
        elf: elf.to_path_buf(),
        bzimage: bzimage.to_path_buf(),
    })
}

/// The value of `KEY=VALUE` in a probe's output line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The number of `KEY=NUMBER` in a probe's output line.
pub fn number(line: &str, key: &str) -> Result<f64, String> {
    field(line, key)
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no {key}= in '{line}'"))
}
