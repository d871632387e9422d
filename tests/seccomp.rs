//! seccomp-bpf filters (on by default): every kind of thread that makes a
//! forbidden system call ends the process with status 31 and one line
//! naming the thread and the call (`UTSUWA_SECCOMP_TEST_FORBIDDEN=<kind>`
//! makes that kind call socket(AF_INET) right after installing its
//! filter); a filtered VM does its work, survives SIGSTOP and SIGCONT,
//! and stops cleanly on SIGTERM; `--no-seccomp` turns the filters off.
//!
//! The net worker is not driven here (a TAP needs a network namespace);
//! the net tests run it with its filter on.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::blk::{Plan, Scratch, Watched};
use support::{assert_checks_pass, probe, run_with_limit, Outcome, UTSUWA};

const SEED: u64 = 0x5ecc0;
const DISK: u64 = 1 << 20;

/// `utsuwa run` of the probe with 2 vCPUs, a disk and an rng device,
/// checking both devices, then `exit`.
fn probe_cmd(disk: &Path, exit: &str, extra: &[&str]) -> Command {
    let plan = Plan::verify(SEED);
    let cmdline =
        format!("console=ttyS0 probe.checks=blk,rng probe.rng_devs=1 {plan} probe.exit={exit}");
    let mut cmd = Command::new(UTSUWA);
    cmd.arg("run")
        .arg("--kernel")
        .arg(probe::probe_elf())
        .args([
            "--cpus",
            "2",
            "--memory",
            "64M",
            "--rng",
            "--cmdline",
            &cmdline,
        ])
        .arg(format!("--disk=path={}", disk.display()))
        .args(extra)
        .env_remove("UTSUWA_SECCOMP_TEST_FORBIDDEN");
    cmd
}

fn disk(scratch: &Scratch) -> PathBuf {
    scratch.image("disk.img", DISK, Some(SEED))
}

fn assert_killed_by_filter(out: &Outcome, thread: &str) {
    assert_eq!(out.status.code(), Some(31), "{}", out.dump());
    let needle = format!("seccomp: thread '{thread}' made forbidden system call 41 (socket)");
    assert!(
        out.stderr.contains(&needle),
        "no '{needle}' in:\n{}",
        out.dump()
    );
}

#[test]
fn a_filtered_vm_does_its_work() {
    let scratch = Scratch::new("seccomp", "work");
    let disk = disk(&scratch);
    let out = run_with_limit(probe_cmd(&disk, "poweroff", &[]), Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.dump());
    assert_checks_pass(&out, &["blk", "blk-verify", "rng"]);
    assert!(!out.stderr.contains("seccomp"), "{}", out.dump());
}

#[test]
fn every_thread_kind_dies_on_a_forbidden_call() {
    let scratch = Scratch::new("seccomp", "forbidden");
    let disk = disk(&scratch);
    let vsock = format!(
        "--vsock=cid=3,socket={}",
        scratch.path().join("v.sock").display()
    );
    for (kind, thread, extra) in [
        ("main", "main", None),
        ("vcpu", "vcpu", None),
        ("spawner", "spawner", None),
        ("blk", "blk0-q", None),
        ("rng", "rng0", None),
        ("vsock", "vsock0", Some(vsock.as_str())),
        ("console", "console", None),
    ] {
        let mut cmd = probe_cmd(&disk, "halt", extra.as_slice());
        cmd.env("UTSUWA_SECCOMP_TEST_FORBIDDEN", kind);
        let out = run_with_limit(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(31), "{kind}: {}", out.dump());
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains("seccomp: thread '"))
            .unwrap_or_else(|| panic!("{kind}: no seccomp line: {}", out.dump()));
        assert!(
            line.contains(&format!("thread '{thread}"))
                && line.ends_with("made forbidden system call 41 (socket); stopping"),
            "{kind}: {line}"
        );
        eprintln!("{kind}: {line}");
    }
}

#[test]
fn the_api_thread_dies_on_a_forbidden_call() {
    let scratch = Scratch::new("seccomp", "api");
    let disk = disk(&scratch);
    let doc = serde_json::json!({
        "boot-source": {
            "kernel_image_path": probe::probe_elf(),
            "boot_args": format!("console=ttyS0 probe.checks=blk {} probe.exit=halt", Plan::verify(SEED)),
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
        "drives": [{ "drive_id": "root", "path_on_host": disk, "is_root_device": false, "is_read_only": true }],
    });
    let file = scratch.path().join("vm.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let sock = scratch.path().join("api.sock");
    let mut cmd = Command::new(UTSUWA);
    cmd.args(["run", "--config-file"])
        .arg(&file)
        .arg("--api-sock")
        .arg(&sock)
        .env("UTSUWA_SECCOMP_TEST_FORBIDDEN", "api");
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert_killed_by_filter(&out, "api");
}

#[test]
fn no_seccomp_turns_the_filters_off() {
    let scratch = Scratch::new("seccomp", "off");
    let disk = disk(&scratch);
    let mut cmd = probe_cmd(&disk, "poweroff", &["--no-seccomp"]);
    cmd.env("UTSUWA_SECCOMP_TEST_FORBIDDEN", "vcpu");
    let out = run_with_limit(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.dump());
    assert_checks_pass(&out, &["blk", "rng"]);
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn survives_sigstop_and_sigcont_then_stops_on_sigterm() {
    let scratch = Scratch::new("seccomp", "stop");
    let disk = disk(&scratch);
    let mut vm = Watched::spawn(probe_cmd(&disk, "halt", &[]));
    assert!(vm.wait_for("PROBE-SUMMARY"), "{}", vm.kill().dump());
    // Let the threads settle into their waits (poll, epoll, futex,
    // KVM_RUN), then stop and continue the process a few times: every
    // interrupted wait comes back through restart_syscall or EINTR.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        signal(vm.pid(), libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(200));
        signal(vm.pid(), libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(200));
        assert!(vm.running(), "{}", vm.kill().dump());
    }
    signal(vm.pid(), libc::SIGTERM);
    let start = Instant::now();
    while vm.running() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = vm.kill();
    assert!(out.status.success(), "{}", out.dump());
    assert!(!out.stderr.contains("seccomp"), "{}", out.dump());
}
