//! Bad user input gets one clear error line on stderr and a non-zero exit:
//! never a panic, a backtrace or a hang.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{run_with_limit, utsuwa_run, Outcome, UTSUWA};

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("utsuwa-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A minimal valid bzImage: one setup sector after the boot sector, a
/// 64-bit capable header, a 4 KiB payload that is never run.
fn tiny_bzimage() -> Vec<u8> {
    let mut img = vec![0u8; 1024 + 4096];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    img
}

fn assert_one_line_error(out: &Outcome, needle: &str) {
    assert!(!out.status.success(), "should fail\n{}", out.dump());
    assert_eq!(
        out.status.code(),
        Some(1),
        "clean exit code\n{}",
        out.dump()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with("utsuwa: warning"))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one error line\n{}", out.dump());
    assert!(lines[0].starts_with("utsuwa: error: "), "{}", out.dump());
    assert!(
        lines[0].contains(needle),
        "error should mention {needle:?}\n{}",
        out.dump()
    );
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("backtrace"),
        "{}",
        out.dump()
    );
}

#[test]
fn missing_empty_and_garbage_kernels() {
    assert_one_line_error(
        &utsuwa_run(&["--kernel", "/nonexistent/vmlinuz"]),
        "/nonexistent/vmlinuz",
    );
    let empty = scratch("empty", b"");
    assert_one_line_error(&utsuwa_run(&["--kernel", empty.to_str().unwrap()]), "empty");
    let garbage = scratch("garbage", &[0x90; 65536]);
    assert_one_line_error(
        &utsuwa_run(&["--kernel", garbage.to_str().unwrap()]),
        "neither a bzImage nor an ELF",
    );
    let mut truncated = tiny_bzimage();
    truncated.truncate(0x300);
    let truncated = scratch("truncated", &truncated);
    assert_one_line_error(
        &utsuwa_run(&["--kernel", truncated.to_str().unwrap()]),
        "truncated",
    );
}

#[test]
fn initrd_larger_than_memory() {
    let kernel = scratch("tiny-bzimage", &tiny_bzimage());
    let initrd = scratch("huge-initrd", &vec![0u8; 40 << 20]);
    let out = utsuwa_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "32M",
    ]);
    assert_one_line_error(&out, "does not fit");
    let out = utsuwa_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_one_line_error(&out, "/nonexistent/initrd");
}

#[test]
fn command_line_longer_than_the_kernel_takes() {
    let kernel = scratch("tiny-bzimage-cmdline", &tiny_bzimage());
    let long = "x".repeat(3000);
    let out = utsuwa_run(&["--kernel", kernel.to_str().unwrap(), "--cmdline", &long]);
    assert_one_line_error(&out, "at most 2047");
    let out = utsuwa_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &"y".repeat(5000),
    ]);
    assert_one_line_error(&out, "command line");
}

#[test]
fn missing_and_misshapen_disks() {
    let kernel = scratch("tiny-bzimage-disk", &tiny_bzimage());
    let k = kernel.to_str().unwrap();
    assert_one_line_error(
        &utsuwa_run(&["--kernel", k, "--disk", "path=/nonexistent/disk.img"]),
        "/nonexistent/disk.img",
    );
    let odd = scratch("odd.img", &[0u8; 1000]);
    let odd_arg = format!("path={}", odd.display());
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--disk", &odd_arg]), "512");
    assert_one_line_error(
        &utsuwa_run(&["--kernel", k, "--disk", "readonly=on"]),
        "--disk",
    );
    assert_one_line_error(
        &utsuwa_run(&["--kernel", k, "--disk", "path=x,cache=fast"]),
        "--disk",
    );
}

#[test]
fn bad_memory_sizes() {
    let kernel = scratch("tiny-bzimage-mem", &tiny_bzimage());
    let k = kernel.to_str().unwrap();
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--memory", "0"]), "--memory");
    assert_one_line_error(
        &utsuwa_run(&["--kernel", k, "--memory", "lots"]),
        "--memory",
    );
    assert_one_line_error(
        &utsuwa_run(&["--kernel", k, "--memory", "100T"]),
        "more than this host has",
    );
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--memory", "1M"]), "too small");
}

#[test]
fn bad_vcpu_counts() {
    let kernel = scratch("tiny-bzimage-cpus", &tiny_bzimage());
    let k = kernel.to_str().unwrap();
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--cpus", "0"]), "--cpus");
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--cpus", "255"]), "--cpus");
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--cpus", "1000"]), "--cpus");
    assert_one_line_error(&utsuwa_run(&["--kernel", k, "--cpus", "two"]), "--cpus");
}

#[test]
fn unknown_options_and_commands() {
    assert_one_line_error(&utsuwa_run(&["--frobnicate"]), "unknown option");
    let mut cmd = Command::new(UTSUWA);
    cmd.arg("explode");
    assert_one_line_error(
        &run_with_limit(cmd, Duration::from_secs(10)),
        "unknown command",
    );
}

#[test]
fn kvm_device_absent() {
    // Hide /dev/kvm in a private mount namespace (needs root and unshare).
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: unshare(1) not installed");
        return;
    }
    let script = format!("mount -t tmpfs none /dev && exec {UTSUWA} run --kernel /nonexistent");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let out = run_with_limit(cmd, Duration::from_secs(10));
    if out.stderr.contains("unshare:") || out.stderr.contains("mount:") {
        eprintln!(
            "skipped: cannot make a mount namespace here: {}",
            out.stderr.trim()
        );
        return;
    }
    assert_one_line_error(&out, "/dev/kvm");
}
