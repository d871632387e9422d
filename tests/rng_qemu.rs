//! The probe's virtio-rng driver against QEMU's virtio-rng-pci (modern
//! only) on the microvm machine, in both interrupt modes (MSI-X and
//! polling): all bytes arrive, they look random (every byte value, a sane
//! chi-square, no buffer repeating the one before), several devices are
//! each read, and a missing device fails the check. Every test says it was
//! skipped (and passes) when QEMU or /dev/kvm is missing.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::net::{facts, which};
use support::{assert_checks_pass, checks, probe, run_with_limit, Outcome};

const QEMU: &str = "qemu-system-x86_64";
const MODES: [&str; 2] = ["msix", "poll"];

fn qemu() -> Option<PathBuf> {
    let Some(qemu) = which(QEMU) else {
        eprintln!("skipped: {QEMU} not installed");
        return None;
    };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: /dev/kvm not available for {QEMU}");
        return None;
    }
    Some(qemu)
}

/// Boots the probe with `devices` virtio-rng-pci functions and `cmdline`.
fn run(qemu: &Path, devices: usize, cmdline: &str) -> Outcome {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,pcie=on,acpi=on,rtc=on",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "512M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(probe::probe_elf())
    .args(["-append", cmdline]);
    for _ in 0..devices {
        cmd.args(["-device", "virtio-rng-pci,disable-legacy=on"]);
    }
    let out = run_with_limit(cmd, Duration::from_secs(60));
    eprintln!("[{cmdline}] {:?}", out.elapsed);
    out
}

/// The `PROBE rng bytes=...` result lines.
fn results(out: &Outcome) -> Vec<BTreeMap<String, String>> {
    facts(&out.stdout, "rng")
        .into_iter()
        .filter(|m| m.contains_key("distinct"))
        .collect()
}

fn num(m: &BTreeMap<String, String>, k: &str) -> u64 {
    m.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{k} in {m:?}"))
}

#[test]
fn reads_a_mib_of_entropy_in_both_interrupt_modes() {
    let Some(qemu) = qemu() else { return };
    for mode in MODES {
        let out = run(&qemu, 1, &format!("probe.checks=rng probe.rng_irq={mode}"));
        assert_checks_pass(&out, &["rng"]);
        let r = &results(&out)[0];
        assert_eq!(num(r, "bytes"), 1 << 20, "default rng_bytes is 1 MiB");
        assert_eq!(num(r, "distinct"), 256);
        assert_eq!(num(r, "repeats"), 0);
        assert!(num(r, "chi2") < 400);
        // About 1/256 of the bytes are zero (4096 ± 64 for 1 MiB).
        assert!((3500..4700).contains(&num(r, "zeros")), "{r:?}");
        assert_eq!(r["dev"], "00:01.0");
        assert_eq!(r["irq"], mode);
        if mode == "msix" {
            assert!(num(r, "irqs") > 0, "{}", out.dump());
        } else {
            assert_eq!(num(r, "irqs"), 0, "{}", out.dump());
        }
        eprintln!(
            "[{mode}] QEMU virtio-rng: {} bytes in {} us ({} KiB/s), {} requests, fnv64 {}",
            r["bytes"], r["us"], r["kib_per_s"], r["requests"], r["fnv64"]
        );
        assert!(out.status.success(), "{}", out.dump());
    }
}

#[test]
fn odd_sizes_and_small_buffers() {
    let Some(qemu) = qemu() else { return };
    for mode in MODES {
        let out = run(
            &qemu,
            1,
            &format!(
                "probe.checks=rng probe.rng_irq={mode} probe.rng_bytes=100001 probe.rng_req=333"
            ),
        );
        assert_checks_pass(&out, &["rng"]);
        let r = &results(&out)[0];
        assert_eq!(num(r, "bytes"), 100_001);
        assert!(num(r, "requests") >= 100_001u64.div_ceil(333), "{r:?}");
        assert_eq!(num(r, "distinct"), 256);
    }
}

#[test]
fn two_devices_are_each_read() {
    let Some(qemu) = qemu() else { return };
    let out = run(
        &qemu,
        2,
        "probe.checks=rng probe.rng_devs=2 probe.rng_bytes=262144",
    );
    assert_checks_pass(&out, &["rng"]);
    let r = results(&out);
    assert_eq!(r.len(), 2, "{}", out.dump());
    assert_eq!(
        (r[0]["dev"].as_str(), r[1]["dev"].as_str()),
        ("00:01.0", "00:02.0")
    );
    assert_ne!(r[0]["fnv64"], r[1]["fnv64"], "two devices, two streams");
}

#[test]
fn a_missing_device_fails_the_check() {
    let Some(qemu) = qemu() else { return };
    let out = run(&qemu, 0, "probe.checks=rng");
    let found = checks(&out.stdout);
    let (passed, why) = found
        .get("rng")
        .cloned()
        .unwrap_or_else(|| panic!("{}", out.dump()));
    assert!(!passed && why.contains("no virtio-rng function"), "{why}");
    // Expecting two where there is one fails too.
    let out = run(
        &qemu,
        1,
        "probe.checks=rng probe.rng_devs=2 probe.rng_bytes=4096",
    );
    assert_eq!(
        checks(&out.stdout).get("rng").map(|c| c.0),
        Some(false),
        "{}",
        out.dump()
    );
}
