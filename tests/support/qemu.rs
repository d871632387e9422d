//! QEMU as the reference VMM: finding it (or saying why a test is
//! skipped) and the command line every QEMU run of the test guest starts
//! from, so the flags this host needs (`-cpu host,-arch-capabilities`)
//! live in one place.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU: &str = "qemu-system-x86_64";
/// The microvm machine with PCIe, ACPI and the RTC.
pub const MICROVM: &str = "microvm,pcie=on,acpi=on,rtc=on";

/// QEMU and KVM, or None after saying why the test is skipped.
pub fn find() -> Option<PathBuf> {
    let Some(qemu) = super::net::which(QEMU) else {
        eprintln!("skipped: {QEMU} not installed");
        return None;
    };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: /dev/kvm not available for {QEMU}");
        return None;
    }
    Some(qemu)
}

/// `qemu` (which `program` turns into a Command, so a caller can wrap it,
/// e.g. in a network namespace) booting `kernel` on `machine` with KVM,
/// the serial port on stdio, no default devices and no reboot.
pub fn command(
    program: impl FnOnce(&Path) -> Command,
    qemu: &Path,
    machine: &str,
    kernel: &Path,
    cpus: u32,
    mem: &str,
    cmdline: &str,
) -> Command {
    let mut cmd = program(qemu);
    cmd.args([
        "-M",
        machine,
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
    ])
    .args(["-m", mem, "-smp", &cpus.to_string()])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", cmdline]);
    cmd
}
