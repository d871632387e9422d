//! Boots the test guest under QEMU instead of utsuwa: the probe's own
//! checks against devices, firmware tables and loaders nobody here wrote.
//! Every test says it was skipped (and passes) when QEMU or /dev/kvm is
//! missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{assert_checks_pass, checks, fact, probe, run_with_limit, Outcome};

const ALL: &[&str] = &["cmdline", "memory", "acpi", "smp", "rtc", "pci", "irq"];

fn qemu() -> Option<PathBuf> {
    support::qemu::find()
}

use support::qemu::MICROVM;
const Q35: &str = "q35";

/// Boots `kernel` under QEMU (killed after 60 s, or `limit`).
fn boot(
    qemu: &Path,
    machine: &str,
    kernel: &Path,
    cpus: u32,
    mem: &str,
    cmdline: &str,
    limit: Duration,
) -> Outcome {
    let cmd = support::qemu::command(
        |p| Command::new(p),
        qemu,
        machine,
        kernel,
        cpus,
        mem,
        cmdline,
    );
    run_with_limit(cmd, limit)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// FNV-1a, 64-bit, as the guest computes it.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `body` plus the tokens that let the guest verify it arrived intact.
fn sealed(body: &str) -> String {
    let prefix = format!("{body} ");
    format!(
        "{prefix}probe.cmdline_fnv={:016x}",
        fnv1a64(prefix.as_bytes())
    )
}

/// Every check passes, the guest says how it was entered and powers off
/// by itself (QEMU exits 0 before the time limit).
fn full_run(machine: &str, kernel: PathBuf, entry: &str, pci_devices: u32) {
    let Some(qemu) = qemu() else { return };
    let cmdline = sealed(&format!(
        "console=ttyS0 probe.cpus=4 probe.mem_mib=512 probe.rtc={} probe.pci_devices={pci_devices}",
        now()
    ));
    let out = boot(
        &qemu,
        machine,
        &kernel,
        4,
        "512M",
        &cmdline,
        Duration::from_secs(60),
    );
    assert_eq!(
        fact(&out.stdout, "boot", "entry").as_deref(),
        Some(entry),
        "{}",
        out.dump()
    );
    assert_checks_pass(&out, ALL);
    assert_eq!(
        fact(&out.stdout, "cmdline", "len"),
        Some(cmdline.len().to_string()),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains(&format!("PROBE cmdline \"{cmdline}\"")),
        "{}",
        out.dump()
    );
    assert_eq!(
        fact(&out.stdout, "smp", "online").as_deref(),
        Some("4"),
        "{}",
        out.dump()
    );
    assert!(
        !out.stdout.contains("PROBE poweroff failed"),
        "{}",
        out.dump()
    );
    assert!(
        out.status.success(),
        "QEMU did not power off cleanly: {}",
        out.dump()
    );
    eprintln!(
        "{machine} {entry}: full probe run under QEMU took {:?}",
        out.elapsed
    );
}

#[test]
fn microvm_pvh_elf_passes_every_check() {
    full_run(MICROVM, probe::probe_elf(), "pvh", 1);
}

#[test]
fn microvm_bzimage_passes_every_check() {
    // QEMU (qboot) enters a bzImage in real mode: the setup stub's path.
    full_run(MICROVM, probe::probe_bzimage(), "linux32", 1);
}

#[test]
fn q35_bzimage_passes_every_check() {
    // SeaBIOS, PIIX-style ACPI (PM1a_CNT), port 0xcf8 and MCFG together.
    full_run(Q35, probe::probe_bzimage(), "linux32", 4);
}

#[test]
fn the_guest_notices_wrong_expectations() {
    let Some(qemu) = qemu() else { return };
    let plan = "probe.checks=cmdline,memory,smp,pci probe.cpus=3 probe.mem_mib=1024 probe.pci_devices=7 probe.cmdline_len=5 probe.bogus=1";
    let out = boot(
        &qemu,
        MICROVM,
        &probe::probe_elf(),
        2,
        "256M",
        plan,
        Duration::from_secs(60),
    );
    let found = checks(&out.stdout);
    for name in ["plan", "cmdline", "memory", "smp", "pci"] {
        assert_eq!(
            found.get(name).map(|c| c.0),
            Some(false),
            "{name} should fail: {}",
            out.dump()
        );
    }
    assert!(
        out.stdout.contains("PROBE-SUMMARY pass=0 fail=5"),
        "{}",
        out.dump()
    );
    assert!(out.status.success(), "{}", out.dump());
}

#[test]
fn every_way_out_ends_qemu() {
    let Some(qemu) = qemu() else { return };
    // With -no-reboot, QEMU exits on a reset as on a power-off.
    for (machine, kernel, exit) in [
        (MICROVM, probe::probe_elf(), "poweroff"),
        (MICROVM, probe::probe_elf(), "reset-acpi"),
        (MICROVM, probe::probe_elf(), "triple-fault"),
        (Q35, probe::probe_bzimage(), "reset-kbd"),
    ] {
        let plan = format!("probe.checks=none probe.exit={exit}");
        let out = boot(
            &qemu,
            machine,
            &kernel,
            2,
            "128M",
            &plan,
            Duration::from_secs(60),
        );
        assert!(
            out.stdout.contains("PROBE-SUMMARY pass=0 fail=0"),
            "{exit}: {}",
            out.dump()
        );
        assert!(!out.stdout.contains("failed"), "{exit}: {}", out.dump());
        assert!(out.status.success(), "{exit}: {}", out.dump());
        assert!(
            out.elapsed < Duration::from_secs(30),
            "{exit} took {:?}",
            out.elapsed
        );
    }
    // `halt` stops for good: QEMU is still running when killed.
    let out = boot(
        &qemu,
        MICROVM,
        &probe::probe_elf(),
        1,
        "64M",
        "probe.checks=none probe.exit=halt",
        Duration::from_secs(3),
    );
    assert!(
        out.stdout.contains("PROBE-SUMMARY pass=0 fail=0"),
        "{}",
        out.dump()
    );
    assert!(
        !out.status.success(),
        "halt should not end QEMU: {}",
        out.dump()
    );
}
