//! Boots the test guest under utsuwa through both entry paths and checks
//! what it sees from inside: processors, memory, command line, ACPI, RTC,
//! PCI, interrupts, and how the VM ends.

mod support;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use support::{assert_checks_pass, boot_probe, checks, fact, probe, Outcome};

const ALL: &[&str] = &["cmdline", "memory", "acpi", "smp", "rtc", "pci", "irq"];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn last_stderr_line(out: &Outcome) -> String {
    out.stderr.lines().last().unwrap_or("").to_string()
}

fn full_run(kernel: PathBuf, entry: &str) {
    let plan = format!(
        "console=ttyS0 probe.cpus=2 probe.mem_mib=256 probe.rtc={}",
        now()
    );
    let out = boot_probe(&kernel, 2, "256M", &plan);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(
        fact(&out.stdout, "boot", "entry").as_deref(),
        Some(entry),
        "{}",
        out.dump()
    );
    assert_checks_pass(&out, ALL);
    assert_eq!(
        last_stderr_line(&out),
        "utsuwa: guest powered off",
        "{}",
        out.dump()
    );
    eprintln!("{entry}: full probe run took {:?}", out.elapsed);
}

#[test]
fn pvh_entry_passes_every_check() {
    full_run(probe::probe_elf(), "pvh");
}

#[test]
fn linux_64bit_entry_passes_every_check() {
    full_run(probe::probe_bzimage(), "linux64");
}

#[test]
fn finds_and_starts_exactly_the_requested_processors() {
    for cpus in [1u32, 2, 4, 8] {
        let plan = format!("probe.checks=acpi,smp probe.cpus={cpus}");
        let out = boot_probe(&probe::probe_elf(), cpus, "128M", &plan);
        assert!(out.status.success(), "{cpus} cpus: {}", out.dump());
        assert_checks_pass(&out, &["acpi", "smp"]);
    }
    // And the guest notices a mismatch: the check can fail.
    let out = boot_probe(
        &probe::probe_elf(),
        2,
        "128M",
        "probe.checks=smp probe.cpus=3",
    );
    assert_eq!(
        checks(&out.stdout).get("smp").map(|c| c.0),
        Some(false),
        "{}",
        out.dump()
    );
}

#[test]
fn memory_map_matches_the_memory_size() {
    // 3584 MiB crosses the 32-bit MMIO hole: RAM is split around it.
    for (size, mib) in [("64M", 64), ("1G", 1024), ("3584M", 3584)] {
        let plan = format!("probe.checks=memory probe.mem_mib={mib}");
        let out = boot_probe(&probe::probe_bzimage(), 1, size, &plan);
        assert!(out.status.success(), "{size}: {}", out.dump());
        assert_checks_pass(&out, &["memory"]);
    }
    let out = boot_probe(
        &probe::probe_elf(),
        1,
        "128M",
        "probe.checks=memory probe.mem_mib=512",
    );
    assert_eq!(
        checks(&out.stdout).get("memory").map(|c| c.0),
        Some(false),
        "{}",
        out.dump()
    );
}

/// FNV-1a, 64-bit, as the guest computes it.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn command_line_arrives_intact() {
    let body = format!(
        "console=ttyS0 root=/dev/vda1 ro quiet init=/sbin/init a.b-c_d=\"x y\" {} probe.checks=cmdline",
        "k=v ".repeat(200)
    );
    for kernel in [probe::probe_elf(), probe::probe_bzimage()] {
        let prefix = format!("{body} ");
        let fnv_token = format!("probe.cmdline_fnv={:016x}", fnv1a64(prefix.as_bytes()));
        let cmdline = format!("{prefix}{fnv_token}");
        let out = boot_probe(&kernel, 1, "64M", &cmdline);
        assert!(out.status.success(), "{}", out.dump());
        assert_checks_pass(&out, &["cmdline"]);
        assert_eq!(
            fact(&out.stdout, "cmdline", "len"),
            Some(cmdline.len().to_string()),
            "{}",
            out.dump()
        );
    }
}

#[test]
fn rtc_shows_the_host_time() {
    let out = boot_probe(
        &probe::probe_elf(),
        1,
        "64M",
        &format!("probe.checks=rtc probe.rtc={}", now()),
    );
    assert_checks_pass(&out, &["rtc"]);
    let guest: u64 = fact(&out.stdout, "rtc", "unix")
        .and_then(|v| v.parse().ok())
        .expect("rtc fact");
    assert!(
        guest.abs_diff(now()) < 60,
        "guest clock {guest} vs host {}",
        now()
    );
}

#[test]
fn every_way_out_ends_utsuwa_cleanly() {
    for (exit, line) in [
        ("poweroff", "utsuwa: guest powered off"),
        (
            "reset-kbd",
            "utsuwa: guest reset (i8042 keyboard controller)",
        ),
        ("reset-acpi", "utsuwa: guest reset (ACPI reset register)"),
        ("triple-fault", "utsuwa: guest reset (triple fault)"),
    ] {
        let plan = format!("probe.checks=none probe.exit={exit}");
        let out = boot_probe(&probe::probe_elf(), 2, "64M", &plan);
        assert_eq!(out.status.code(), Some(0), "{exit}: {}", out.dump());
        assert_eq!(last_stderr_line(&out), line, "{exit}: {}", out.dump());
    }
}
