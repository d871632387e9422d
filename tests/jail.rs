//! `utsuwa jail`, from the host: a jailed VM boots the test guest and its
//! disk writes reach the operator's image; the VMM, PID 1 of its own PID
//! namespace, sees only its folder, runs as the given uid/gid with no
//! capabilities, no_new_privs and seccomp; another VM's files and files
//! planted or bind-mounted into the jail afterwards are out of its reach;
//! cgroup limits are in place (read back from the VMM's own cgroups);
//! cgroups, mounts and the root are gone after exit; the same ID twice is
//! refused, a stale root replaced; the VMM dies with a killed jailer; the
//! VMM's exit status is the jailer's; `--netns` with a TAP; a config file
//! rewritten into a jail on another file system; bad input is one line.
//!
//! Every test keeps its jails under its own temporary `--chroot-base`.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::blk::{disks, pattern, read_range, Plan, Scratch, Watched};
use support::{assert_checks_pass, probe, run_with_limit, Outcome, UTSUWA};

const UID: u32 = 42420;
const GID: u32 = 42421;
const MIB: u64 = 1 << 20;

/// `utsuwa jail --id ID --uid UID --gid GID --chroot-base BASE EXTRA... -- VMM...`.
fn jail_cmd(base: &Path, id: &str, extra: &[&str], vmm: &[&str]) -> Command {
    let mut cmd = Command::new(UTSUWA);
    cmd.args([
        "jail",
        "--id",
        id,
        "--uid",
        &UID.to_string(),
        "--gid",
        &GID.to_string(),
    ])
    .arg("--chroot-base")
    .arg(base)
    .args(extra)
    .arg("--")
    .args(vmm)
    .env_remove("UTSUWA_SECCOMP_TEST_FORBIDDEN");
    cmd
}

/// `run` arguments booting the probe with `plan` and then `exit`.
fn probe_run(plan: &str, exit: &str, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--kernel"].map(String::from).to_vec();
    v.push(probe::probe_elf().display().to_string());
    v.extend(["--memory".into(), "64M".into(), "--cmdline".into()]);
    v.push(format!("console=ttyS0 {plan} probe.exit={exit}"));
    v.extend(extra.iter().cloned());
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn root_of(base: &Path, id: &str) -> PathBuf {
    base.join("utsuwa").join(id).join("root")
}

/// The VMM: the jailer's child (found by its parent pid).
fn vmm_pid(jailer: u32) -> u32 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if status.lines().any(|l| l == format!("PPid:\t{jailer}")) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no child of jailer {jailer}");
}

/// `Key:` of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

/// Every non-directory below `dir`, relative to it.
fn files_below(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// The loader and libraries the jailer copies: `*.so*` under lib folders.
fn is_shared_object(rel: &str) -> bool {
    (rel.starts_with("usr/") || rel.starts_with("lib")) && rel.contains(".so")
}

fn landlock_enforced(stderr: &str) -> bool {
    stderr.lines().any(|l| l.contains(": landlock enforced"))
}

/// The running kernel's Landlock ABI version (0: none).
fn kernel_landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) reads no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// SIGTERM to the jailer (which forwards it to the VMM), then what is left.
fn stop(mut w: Watched) -> support::blk::Killed {
    // SAFETY: kill(2) of the jailer this test spawned and has not reaped.
    let rc = unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let start = Instant::now();
    while w.running() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    w.kill()
}

/// A jailed probe that halts, once its summary is out.
fn halted(base: &Path, id: &str, extra: &[&str], run_extra: &[String]) -> (Watched, u32) {
    let args = probe_run("probe.checks=cmdline", "halt", run_extra);
    let mut w = Watched::spawn(jail_cmd(base, id, extra, &strs(&args)));
    assert!(w.wait_for("PROBE-SUMMARY"), "{}", w.kill().dump());
    let pid = vmm_pid(w.pid());
    (w, pid)
}

#[test]
fn a_jailed_vm_boots_the_probe_and_writes_reach_the_image() {
    let dir = Scratch::new("jail", "boot");
    let base = dir.path().join("base");
    let rw = dir.image("rw.img", 4 * MIB, None);
    let ro = dir.image("ro.img", MIB, Some(5));
    let (lba, mib, seed) = (8u64, 2u64, 0x1a11u64);
    let plan = format!(
        "probe.checks=cmdline,memory,acpi,smp,pci,irq,blk probe.cpus=2 probe.mem_mib=128 {}",
        Plan::write(lba, mib, seed).with("blk_disk", 0)
    );
    let mut args = probe_run(&plan, "poweroff", &[]);
    args[4] = "128M".into();
    args.extend([
        "--cpus".into(),
        "2".into(),
        format!("--disk=path={}", rw.display()),
        format!("--disk=path={},readonly=on", ro.display()),
    ]);
    let out = run_with_limit(
        jail_cmd(&base, "boot", &[], &strs(&args)),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.dump());
    assert_checks_pass(
        &out,
        &[
            "cmdline",
            "memory",
            "acpi",
            "smp",
            "pci",
            "irq",
            "blk",
            "blk-write",
        ],
    );
    let ro_flags: Vec<_> = disks(&out).iter().map(|d| d["ro"].clone()).collect();
    assert_eq!(ro_flags, ["0", "1"], "{}", out.dump());
    assert_eq!(
        out.stderr.lines().last(),
        Some("utsuwa: guest powered off"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("utsuwa: jail boot: landlock ")),
        "{}",
        out.dump()
    );
    // The guest wrote through the bind mount into the operator's image,
    // which now belongs to the VM's user; the read-only one does not.
    let (offset, len) = (lba * 512, mib * MIB);
    assert!(
        read_range(&rw, offset, len) == pattern(seed, offset, len),
        "the write did not reach the image"
    );
    assert_eq!(
        (
            std::fs::metadata(&rw).unwrap().uid(),
            std::fs::metadata(&rw).unwrap().gid()
        ),
        (UID, GID)
    );
    assert_eq!(std::fs::metadata(&ro).unwrap().uid(), 0);
    assert!(
        std::fs::read(&ro).unwrap() == pattern(5, 0, MIB),
        "the read-only image changed"
    );
}

#[test]
fn the_vmm_sees_only_its_folder_and_holds_no_privilege() {
    let dir = Scratch::new("jail", "inside");
    let base = dir.path().join("base");
    let disk = dir.image("d.img", MIB, None);
    let (w, pid) = halted(
        &base,
        "inside",
        &[],
        &[format!("--disk=path={}", disk.display())],
    );

    // Exactly the jail's files: the binary, kernel, disk, /dev/kvm, and
    // the binary's loader and libraries.
    let seen = files_below(&PathBuf::from(format!("/proc/{pid}/root")));
    let own: BTreeSet<String> = seen
        .iter()
        .filter(|f| !is_shared_object(f))
        .cloned()
        .collect();
    let expected: BTreeSet<String> = ["utsuwa", "kernel", "disk0", "dev/kvm"]
        .map(String::from)
        .into();
    assert_eq!(own, expected, "all: {seen:?}");
    assert!(!Path::new(&format!("/proc/{pid}/root/work")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root{}", disk.display())).exists());

    for key in ["Uid", "Gid"] {
        let want = if key == "Uid" { UID } else { GID };
        let ids: Vec<u32> = status_field(pid, key)
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(ids, [want; 4], "{key}");
    }
    assert_eq!(status_field(pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // PID 1 of a PID namespace of its own, in a mount namespace of its own.
    assert!(
        status_field(pid, "NSpid").ends_with("\t1"),
        "{}",
        status_field(pid, "NSpid")
    );
    for ns in ["pid", "mnt"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    // Its mounts: the root (nosuid) and the disk, nothing of the host.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let points: Vec<&str> = mountinfo
        .lines()
        .map(|l| l.split(' ').nth(4).unwrap())
        .collect();
    assert_eq!(points, ["/", "/disk0"], "{mountinfo}");
    assert!(
        mountinfo.lines().next().unwrap().contains("nosuid"),
        "{mountinfo}"
    );
    // No inherited descriptor: the jailer's lock, netns or pipe.
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if ["0", "1", "2"].contains(&fd.file_name().to_str().unwrap()) {
            continue;
        }
        let target = std::fs::read_link(fd.path()).unwrap().display().to_string();
        assert!(
            !target.contains("lock") && !target.contains("pipe:"),
            "fd {:?} -> {target}",
            fd.file_name()
        );
    }
    // SIGTERM to the jailer reaches the VMM, which stops cleanly.
    let out = stop(w);
    assert!(out.status.success(), "{}", out.dump());
    assert!(
        out.stderr.contains("utsuwa: stopped by the user"),
        "{}",
        out.dump()
    );
}

/// A pending `mount --bind`, undone when dropped.
struct BindMount(PathBuf);

impl BindMount {
    fn new(src: &Path, target: &Path) -> BindMount {
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let (s, t) = (c(src), c(target));
        // SAFETY: NUL-terminated paths alive for the call; null fstype and data.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                t.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind {src:?} on {target:?}: {}",
            std::io::Error::last_os_error()
        );
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let t = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn another_vm_s_files_are_out_of_reach() {
    let dir = Scratch::new("jail", "reach");
    let base = dir.path().join("base");
    let disk_b = dir.image("b.img", MIB, Some(9));
    let (a, pid_a) = halted(&base, "vm-a", &[], &[]);
    let (b, _pid_b) = halted(
        &base,
        "vm-b",
        &[],
        &[format!("--disk=path={}", disk_b.display())],
    );
    let root_b = root_of(&base, "vm-b");
    assert!(root_b.join("kernel").exists() && root_b.join("disk0").exists());
    for path in [
        root_b.join("kernel"),
        root_b.join("disk0"),
        disk_b.clone(),
        base.clone(),
    ] {
        let from_a = format!("/proc/{pid_a}/root{}", path.display());
        assert!(!Path::new(&from_a).exists(), "{from_a} exists");
    }

    // An API-mode jail asked by its client to open B's files, or a file
    // the host drops into its root afterwards, or a bind mount the host
    // makes there afterwards.
    let c = Watched::spawn(jail_cmd(
        &base,
        "vm-c",
        &[],
        &["api", "--api-sock", "/anywhere/api.sock"],
    ));
    let root_c = root_of(&base, "vm-c");
    let sock = root_c.join("run/api.sock");
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "{}", stop(c).dump());
    let drive = |path: &str| {
        let body = serde_json::json!({ "drive_id": "x", "path_on_host": path, "is_root_device": false, "is_read_only": true });
        utsuwa::api::client::request(&sock, "PUT", "/drives/x", Some(&body.to_string())).unwrap()
    };
    for path in [
        disk_b.display().to_string(),
        root_b.join("disk0").display().to_string(),
        "../vm-b/root/disk0".into(),
    ] {
        let r = drive(&path);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.body.contains("No such file"), "{path}: {}", r.body);
    }
    let kernel = serde_json::json!({ "kernel_image_path": probe::probe_elf() }).to_string();
    let r = utsuwa::api::client::request(&sock, "PUT", "/boot-source", Some(&kernel)).unwrap();
    assert!(r.status == 400 && r.body.contains("No such file"), "{r:?}");

    std::fs::copy(&disk_b, root_c.join("planted.img")).unwrap();
    std::fs::set_permissions(
        root_c.join("planted.img"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    std::fs::write(root_c.join("bound.img"), b"").unwrap();
    let bind = BindMount::new(&disk_b, &root_c.join("bound.img"));
    assert_eq!(
        std::fs::metadata(root_c.join("bound.img")).unwrap().len(),
        MIB,
        "host side of the bind"
    );
    // The jail's mounts are private: the host's new bind mount is not in it.
    let pid_c = vmm_pid(c.pid());
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid_c}/root/bound.img"))
            .unwrap()
            .len(),
        0
    );
    let (planted, bound) = (drive("/planted.img"), drive("/bound.img"));
    drop(bind);
    let stderr = stop(c).stderr;
    for (w, id) in [(a, "vm-a"), (b, "vm-b")] {
        assert!(stop(w).status.success(), "{id}");
    }
    // The jailer asks for ABI 6: a kernel with it must enforce it fully.
    if kernel_landlock_abi() >= 6 {
        assert!(landlock_enforced(&stderr), "{stderr}");
    }
    if landlock_enforced(&stderr) {
        for r in [&planted, &bound] {
            assert!(
                r.status == 400 && r.body.contains("Permission denied"),
                "{r:?}"
            );
        }
    } else {
        eprintln!(
            "Landlock is not enforced here ({stderr}): planted files are reachable: {planted:?}"
        );
    }
}

/// (hierarchy mount point, path) of each of `pid`'s cgroups named `id`.
fn vm_cgroups(pid: u32, id: &str) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if !path.ends_with(&format!("/utsuwa/{id}")) {
            continue;
        }
        let mount = mountinfo
            .lines()
            .find(|m| {
                let (_, after) = m.split_once(" - ").unwrap();
                let fields: Vec<&str> = after.split(' ').collect();
                match ctrls {
                    "" => fields[0] == "cgroup2",
                    c => {
                        fields[0] == "cgroup"
                            && fields[2].split(',').any(|o| c.split(',').any(|c| c == o))
                    }
                }
            })
            .unwrap_or_else(|| panic!("no mount for {line}"));
        let point = mount.split(' ').nth(4).unwrap();
        out.push(PathBuf::from(point).join(path.trim_start_matches('/')));
    }
    out
}

/// Settings this host can take, each (key, value): pids, memory, and a
/// controller of the v2 hierarchy when it offers one (hugetlb here).
fn cgroup_settings() -> Vec<(String, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v2 = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .map(|l| PathBuf::from(l.split(' ').nth(4).unwrap()));
    let v2_ctrls = v2
        .and_then(|p| std::fs::read_to_string(p.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    let in_v2 = |c: &str| v2_ctrls.split_whitespace().any(|x| x == c);
    let mut out = vec![("pids.max".to_string(), "64".to_string())];
    if in_v2("memory") {
        out.push(("memory.max".into(), "268435456".into()));
    } else {
        out.push(("memory.limit_in_bytes".into(), "268435456".into()));
    }
    if in_v2("hugetlb") && !in_v2("memory") {
        out.push(("hugetlb.2MB.max".into(), "2097152".into()));
    }
    out
}

#[test]
fn cgroup_limits_are_in_place_and_everything_goes_at_exit() {
    let dir = Scratch::new("jail", "cgroup");
    let base = dir.path().join("base");
    let disk = dir.image("d.img", MIB, None);
    let settings = cgroup_settings();
    let flags: Vec<String> = settings
        .iter()
        .flat_map(|(k, v)| ["--cgroup".into(), format!("{k}={v}")])
        .collect();
    // Cgroups are host-wide: an ID no other test process uses.
    let id = format!("limits-{}", std::process::id());
    let (w, pid) = halted(
        &base,
        &id,
        &strs(&flags),
        &[format!("--disk=path={}", disk.display())],
    );
    let groups = vm_cgroups(pid, &id);
    assert!(!groups.is_empty());
    for (key, value) in &settings {
        let file = groups.iter().map(|g| g.join(key)).find(|f| f.exists());
        let file = file.unwrap_or_else(|| panic!("no {key} in {groups:?}"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            value,
            "{}",
            file.display()
        );
        let procs = std::fs::read_to_string(file.with_file_name("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid.to_string(), "{}", file.display());
    }
    let pids = groups
        .iter()
        .find(|g| g.join("pids.current").exists())
        .unwrap();
    let current: u32 = std::fs::read_to_string(pids.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current >= 2, "the VMM and its vCPU thread: {current}");
    let mounted = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mounted.lines().count(), 2, "{mounted}");

    let out = stop(w);
    assert!(out.status.success(), "{}", out.dump());
    for g in &groups {
        assert!(!g.exists(), "{} is left", g.display());
    }
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(&base.display().to_string()), "{host}");
    assert!(!root_of(&base, &id).exists());
}

#[test]
fn the_same_id_twice_is_refused_and_a_stale_root_is_replaced() {
    let dir = Scratch::new("jail", "ids");
    let base = dir.path().join("base");
    let stale = root_of(&base, "twice");
    std::fs::create_dir_all(stale.join("old")).unwrap();
    std::fs::write(stale.join("old/junk"), b"left by a dead jailer").unwrap();
    let (mut w, pid) = halted(&base, "twice", &[], &[]);
    assert!(
        !stale.join("old").exists(),
        "the stale root was not replaced"
    );
    let again = probe_run("probe.checks=cmdline", "poweroff", &[]);
    let out = run_with_limit(
        jail_cmd(&base, "twice", &[], &strs(&again)),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    assert_eq!(
        out.stderr.trim(),
        format!(
            "utsuwa: error: jail: jail 'twice' is in use by a running jailer (pid {})",
            w.pid()
        )
    );
    assert!(
        w.running() && stale.join("kernel").exists(),
        "the first jail was disturbed"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(stop(w).status.success());
    assert!(!stale.exists());
}

#[test]
fn the_vmm_s_exit_status_is_the_jailer_s_and_seccomp_applies_inside() {
    let dir = Scratch::new("jail", "status");
    let base = dir.path().join("base");
    let args = probe_run("probe.checks=cmdline", "poweroff", &[]);
    let mut cmd = jail_cmd(&base, "status", &[], &strs(&args));
    cmd.env("UTSUWA_SECCOMP_TEST_FORBIDDEN", "vcpu");
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(31), "{}", out.dump());
    assert!(
        out.stderr
            .contains("seccomp: thread 'vcpu0' made forbidden system call 41 (socket)"),
        "{}",
        out.dump()
    );
    assert!(!root_of(&base, "status").exists());
}

fn one_line_error(out: &Outcome, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{needle}: {}", out.dump());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{needle}: {}", out.dump());
    assert!(
        lines[0].starts_with("utsuwa: error: jail: ") && lines[0].contains(needle),
        "{needle}: {}",
        lines[0]
    );
}

#[test]
fn bad_input_is_one_line_and_touches_nothing() {
    let dir = Scratch::new("jail", "bad");
    let base = dir.path().join("base");
    let b = base.display().to_string();
    let k = probe::probe_elf().display().to_string();
    let ok = [
        "--id",
        "x",
        "--uid",
        "42420",
        "--gid",
        "42421",
        "--chroot-base",
        &b,
    ];
    let with = |pre: &[&str], post: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = pre.iter().map(|s| s.to_string()).collect();
        v.extend(post.iter().map(|s| s.to_string()));
        v
    };
    let run_k = ["--", "run", "--kernel", &k];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            with(&["--uid", "1", "--gid", "1", "--chroot-base", &b], &run_k),
            "needs --id",
        ),
        (
            with(&["--id", "a/b", "--uid", "1", "--gid", "1"], &run_k),
            "--id: 'a/b'",
        ),
        (
            with(&["--id", "../x", "--uid", "1", "--gid", "1"], &run_k),
            "--id",
        ),
        (
            with(
                &["--id", &"v".repeat(65), "--uid", "1", "--gid", "1"],
                &run_k,
            ),
            "--id",
        ),
        (
            with(&["--id", "x", "--uid", "alice", "--gid", "1"], &run_k),
            "--uid must be a number",
        ),
        (
            with(&["--id", "x", "--uid", "1", "--gid", "-1"], &run_k),
            "--gid must be a number",
        ),
        (
            with(&["--id", "x", "--uid", "0", "--gid", "1"], &run_k),
            "root",
        ),
        (with(&ok, &["run", "--kernel", &k]), "needs '--'"),
        (with(&ok, &["--"]), "nothing after '--'"),
        (with(&ok, &["--", "run"]), "needs --kernel"),
        (
            with(&ok, &["--", "ctl", "--api-sock", "s", "info"]),
            "not 'ctl'",
        ),
        (
            with(&ok, &["--", "run", "--kernel", "/nonexistent/vmlinux"]),
            "--kernel /nonexistent/vmlinux: No such file",
        ),
        (
            with(
                &ok,
                &[
                    "--",
                    "run",
                    "--kernel",
                    &k,
                    "--disk",
                    "path=/nonexistent.img",
                ],
            ),
            "--disk /nonexistent.img",
        ),
        (
            with(&ok, &["--", "run", "--kernel", &k, "--frobnicate"]),
            "unknown option '--frobnicate'",
        ),
        (
            with(
                &ok,
                &["--netns", "/nonexistent/netns", "--", "run", "--kernel", &k],
            ),
            "--netns /nonexistent/netns",
        ),
        (
            with(
                &ok,
                &["--cgroup", "nosuch.max=1", "--", "run", "--kernel", &k],
            ),
            "no 'nosuch' controller",
        ),
        (
            with(&ok, &["--cgroup", "pids.max", "--", "run", "--kernel", &k]),
            "KEY=VALUE",
        ),
        (
            with(
                &ok,
                &["--cgroup", "cgroup.procs=1", "--", "run", "--kernel", &k],
            ),
            "managed by the jailer",
        ),
        (
            with(
                &[
                    "--id",
                    "x",
                    "--uid",
                    "1",
                    "--gid",
                    "1",
                    "--chroot-base",
                    "rel",
                ],
                &run_k,
            ),
            "absolute",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(UTSUWA);
        cmd.arg("jail").args(&args);
        let out = run_with_limit(cmd, Duration::from_secs(30));
        assert!(!out.stderr.contains("panicked"), "{}", out.dump());
        one_line_error(&out, needle);
        assert!(!base.exists(), "{needle}: the chroot base was created");
    }
    // A limit the kernel refuses fails after the root was made: the root
    // and the cgroup go again.
    let id = format!("bad-{}", std::process::id());
    let out = run_with_limit(
        jail_cmd(
            &base,
            &id,
            &["--cgroup", "pids.max=lots"],
            &["run", "--kernel", &k],
        ),
        Duration::from_secs(30),
    );
    one_line_error(&out, "--cgroup pids.max=lots");
    assert!(!root_of(&base, &id).exists());
    let pids = vm_cgroup_dir_guess("pids");
    if let Some(p) = pids {
        assert!(!p.join("utsuwa").join(&id).exists());
    }
}

/// The pids hierarchy's folder for this process, if v1 carries pids.
fn vm_cgroup_dir_guess(controller: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        let f: Vec<&str> = after.split(' ').collect();
        (f[0] == "cgroup" && f[2].split(',').any(|o| o == controller))
            .then(|| PathBuf::from(before.split(' ').nth(4).unwrap()))
    })
}

/// A network namespace made with `ip netns`, deleted when dropped.
struct NetNs(String);

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn netns_puts_the_vmm_in_that_network_namespace_with_its_tap() {
    let name = format!("utsuwa-jail-{}", std::process::id());
    if !ip(&["netns", "add", &name]) {
        eprintln!("skipped: 'ip netns add' is not available here");
        return;
    }
    let ns = NetNs(name);
    let uid = UID.to_string();
    assert!(ip(&[
        "-n", &ns.0, "tuntap", "add", "jtap0", "mode", "tap", "user", &uid, "vnet_hdr"
    ]));
    let dir = Scratch::new("jail", "netns");
    let base = dir.path().join("base");
    let ns_path = format!("/var/run/netns/{}", ns.0);
    let args = probe_run(
        "probe.checks=pci",
        "halt",
        &["--net".into(), "tap=jtap0".into()],
    );
    let mut w = Watched::spawn(jail_cmd(&base, "net", &["--netns", &ns_path], &strs(&args)));
    assert!(w.wait_for("PROBE-SUMMARY"), "{}", w.kill().dump());
    let pid = vmm_pid(w.pid());
    assert!(
        w.stdout().contains("device=1041"),
        "no virtio-net device: {}",
        w.stdout()
    );
    assert!(
        w.stdout().contains("PROBE-SUMMARY pass=1 fail=0"),
        "{}",
        w.stdout()
    );
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(
        theirs,
        std::fs::metadata(&ns_path).unwrap().ino(),
        "not in {ns_path}"
    );
    let tun = std::fs::metadata(format!("/proc/{pid}/root/dev/net/tun")).unwrap();
    assert_eq!(
        (tun.rdev(), tun.uid(), tun.mode() & 0o777),
        (
            std::fs::metadata("/dev/net/tun").unwrap().rdev(),
            UID,
            0o600
        )
    );
    assert!(stop(w).status.success());
}

#[test]
fn a_config_file_comes_in_with_its_paths_rewritten_and_files_copied_across_file_systems() {
    let dir = Scratch::new("jail", "config");
    // A chroot base on another file system (tmpfs) than the kernel: the
    // kernel is copied, not linked.
    let shm = Scratch::new_in(Path::new("/dev/shm"), "jail", "config");
    let base = shm.path().join("base");
    let disk = dir.image("ro.img", MIB, Some(3));
    let doc = serde_json::json!({
        "boot-source": {
            "kernel_image_path": probe::probe_elf(),
            "boot_args": "console=ttyS0 probe.checks=blk probe.blk_ops=verify,ro probe.blk_seed=3 probe.exit=halt",
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
        "drives": [{ "drive_id": "root", "path_on_host": disk, "is_root_device": false, "is_read_only": true }],
    });
    let file = dir.path().join("vm.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let args = [
        "run",
        "--config-file",
        file.to_str().unwrap(),
        "--api-sock",
        "/host/only/vm.sock",
    ];
    let mut w = Watched::spawn(jail_cmd(&base, "cfg", &[], &args));
    assert!(w.wait_for("PROBE-SUMMARY"), "{}", w.kill().dump());
    assert!(
        w.stdout().contains("PROBE-SUMMARY pass=3 fail=0"),
        "{}",
        w.stdout()
    );
    let root = root_of(&base, "cfg");
    let config =
        utsuwa::api::client::request(&root.join("run/vm.sock"), "GET", "/vm/config", None).unwrap();
    let config = config.json();
    assert_eq!(
        config["boot-source"]["kernel_image_path"], "/kernel",
        "{config}"
    );
    assert_eq!(config["drives"][0]["path_on_host"], "/disk0", "{config}");
    let copied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("vm.json")).unwrap()).unwrap();
    assert_eq!(copied["drives"][0]["path_on_host"], "/disk0");
    let (kernel, original) = (
        std::fs::metadata(root.join("kernel")).unwrap(),
        std::fs::metadata(probe::probe_elf()).unwrap(),
    );
    assert_ne!(kernel.dev(), original.dev());
    assert_eq!(
        std::fs::read(root.join("kernel")).unwrap(),
        std::fs::read(probe::probe_elf()).unwrap()
    );
    assert!(stop(w).status.success());
    assert!(!root.exists());
}

#[test]
fn the_vmm_dies_with_its_jailer_and_the_next_jailer_replaces_what_was_left() {
    let dir = Scratch::new("jail", "orphan");
    let base = dir.path().join("base");
    let (w, pid) = halted(&base, "orphan", &[], &[]);
    let killed = w.kill(); // SIGKILL: the jailer cleans nothing up
    assert_eq!(killed.status.code(), None, "{}", killed.dump());
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the VMM outlived its jailer"
    );
    assert!(
        root_of(&base, "orphan").join("kernel").exists(),
        "nothing was left to replace"
    );
    let args = probe_run("probe.checks=cmdline", "poweroff", &[]);
    let out = run_with_limit(
        jail_cmd(&base, "orphan", &[], &strs(&args)),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.dump());
    assert!(!root_of(&base, "orphan").exists());
}
