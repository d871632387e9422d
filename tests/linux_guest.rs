//! Boots Debian's cloud kernel with the default busybox initramfs and checks
//! the same things the test guest checks, from a real Linux. These need
//! hardware virtualization (VT-x/AMD-V): on a PVM host an unmodified Linux
//! kernel cannot run, and each test says it was skipped and why.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::{hardware_virtualization, utsuwa_run, Outcome};
use utsuwa::assets::{self, encode_cmd, parse_cmd_output};

/// Boots Linux to run `cmd`; None (skipped) without hardware virtualization.
fn boot_linux(cmd: &str, cpus: u32, memory: &str) -> Option<Outcome> {
    boot_linux_with(cmd, cpus, memory, &[])
}

fn boot_linux_with(cmd: &str, cpus: u32, memory: &str, extra: &[&str]) -> Option<Outcome> {
    if !hardware_virtualization() {
        eprintln!("skipped: this host's /dev/kvm has no hardware virtualization (PVM or none), so Linux cannot boot");
        return None;
    }
    let guest = assets::ensure(&assets::default_cache_dir()).expect("default guest assets");
    let cmdline = format!("console=ttyS0 reboot=k panic=1 {}", encode_cmd(cmd));
    let cpus = cpus.to_string();
    let out = utsuwa_run(
        &[
            "--kernel",
            guest.kernel.to_str().unwrap(),
            "--initrd",
            guest.initrd.to_str().unwrap(),
            "--cpus",
            &cpus,
            "--memory",
            memory,
            "--cmdline",
            &cmdline,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    Some(out)
}

/// Runs `cmd` in a Linux guest and returns its output and exit code.
fn linux(cmd: &str, cpus: u32, memory: &str) -> Option<(String, i32, Outcome)> {
    let out = boot_linux(cmd, cpus, memory)?;
    let (output, rc) = parse_cmd_output(out.stdout.as_bytes())
        .unwrap_or_else(|| panic!("no command output\n{}", out.dump()));
    Some((String::from_utf8_lossy(&output).into_owned(), rc, out))
}

#[test]
fn linux_sees_every_vcpu() {
    for cpus in [1u32, 2, 4, 8] {
        let Some((output, rc, out)) = linux("nproc", cpus, "512M") else {
            return;
        };
        assert_eq!(
            (output.trim(), rc),
            (cpus.to_string().as_str(), 0),
            "{}",
            out.dump()
        );
        assert!(out.status.success(), "{}", out.dump());
    }
}

#[test]
fn linux_sees_its_memory_and_clock() {
    let Some((output, rc, out)) = linux("grep MemTotal /proc/meminfo; date +%s", 1, "1G") else {
        return;
    };
    assert_eq!(rc, 0, "{}", out.dump());
    let mut lines = output.lines();
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    // The kernel keeps some for itself; within 10% of 1 GiB.
    assert!(
        kib > 900_000 && kib <= 1 << 20,
        "MemTotal {kib} KiB\n{}",
        out.dump()
    );
    let guest: u64 = lines
        .next()
        .and_then(|v| v.trim().parse().ok())
        .expect("date");
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        guest.abs_diff(host) < 60,
        "guest clock {guest} vs host {host}"
    );
}

#[test]
fn linux_reboot_ends_utsuwa() {
    let Some(out) = boot_linux("reboot -f", 1, "256M") else {
        return;
    };
    assert!(out.status.success(), "{}", out.dump());
    assert!(
        out.stderr.lines().last().unwrap_or("").contains("reset"),
        "{}",
        out.dump()
    );
}

#[test]
fn linux_mounts_an_ext4_disk_and_its_data_reaches_the_image() {
    if !hardware_virtualization() {
        eprintln!("skipped: this host's /dev/kvm has no hardware virtualization (PVM or none), so Linux cannot boot");
        return;
    }
    let dir = std::env::temp_dir().join(format!("utsuwa-linux-ext4-{}", std::process::id()));
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello"), "hello from the host\n").unwrap();
    let image = dir.join("root.ext4");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("64M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(made.success());
    let disk = format!("path={}", image.display());
    let cmd = "mount -t ext4 /dev/vda /mnt && cat /mnt/hello && echo guest > /mnt/written && sync && umount /mnt";
    let Some(out) = boot_linux_with(cmd, 2, "512M", &["--disk", &disk]) else {
        return;
    };
    let (output, rc) = parse_cmd_output(out.stdout.as_bytes())
        .unwrap_or_else(|| panic!("no command output\n{}", out.dump()));
    assert_eq!(
        (String::from_utf8_lossy(&output).trim(), rc),
        ("hello from the host", 0),
        "{}",
        out.dump()
    );
    // The file the guest wrote is in the image (debugfs reads it without mounting).
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "guest");
    std::fs::remove_dir_all(&dir).unwrap();
}
