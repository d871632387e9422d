//! The default guest's `/init` (src/assets/init.sh), run on this host from
//! the real cached initramfs, as PID 1 of a new PID namespace chrooted into
//! its unpacked files (no Linux guest needed, so it runs here too): the
//! interactive session starts under busybox init with a shell that catches
//! SIGINT (^C works), Ctrl-Alt-Del (the kernel's SIGINT to PID 1) becomes a
//! clean reboot, and the end of the session ends the machine. In a PID
//! namespace reboot(2) ends the namespace instead, with its init killed by
//! SIGHUP (reboot) or SIGINT (power-off), which is what these tests see.
//! The guest's kernel modules are left out of the copy (they are not for
//! this host's kernel), and the shell keeps the test's pipe as its
//! terminal instead of cttyhack's pick of this host's console.

mod support;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use utsuwa::assets;

/// The unpacked initramfs, removed on drop.
struct Root(PathBuf);

impl Root {
    fn unpack(name: &str) -> Root {
        let guest = assets::ensure(&assets::default_cache_dir()).expect("default guest assets");
        let busybox = guest.initrd.with_file_name("busybox");
        let dir = std::env::temp_dir().join(format!("utsuwa-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cpio = std::fs::File::open(&guest.initrd).expect("the initramfs");
        let ok = Command::new(&busybox)
            .args(["cpio", "-idm"])
            .current_dir(&dir)
            .stdin(cpio)
            .stderr(Stdio::null())
            .status()
            .expect("busybox cpio");
        assert!(ok.success());
        std::fs::write(dir.join("etc/utsuwa/modules"), "").unwrap();
        // cttyhack would take this host's console (/sys/class/tty/console)
        // for the shell's terminal: the shell keeps the test's pipe instead.
        let init = std::fs::read_to_string(dir.join("init")).unwrap();
        assert!(
            init.contains("setsid cttyhack sh\n"),
            "the session line moved"
        );
        let init = init.replace("setsid cttyhack sh\n", "setsid sh -i\n");
        std::fs::write(dir.join("init"), init).unwrap();
        Root(dir)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `/init` as PID 1 of new PID, mount, UTS and IPC namespaces.
fn start(root: &Path) -> Child {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--ipc", "chroot"])
        .arg(root)
        .arg("/init")
        // A console that stays open and quiet: the shell waits on it.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare")
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Waits for the namespace's init (busybox), its session script and the
/// interactive shell: (init, shell).
fn session(unshare: &Child) -> (u32, u32) {
    let start = Instant::now();
    loop {
        if let Some(&init) = children(unshare.id()).first() {
            let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap_or_default();
            let shell = children(init)
                .first()
                .and_then(|&script| children(script).first().copied());
            if let (true, Some(shell)) = (comm.trim() == "busybox", shell) {
                return (init, shell);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no session under busybox init"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(mut child: Child) -> (ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the namespace did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status, out)
}

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (PID and mount namespaces, chroot)");
        return true;
    }
    false
}

#[test]
fn ctrl_alt_del_reboots_the_default_guest_cleanly() {
    if skip() {
        return;
    }
    let root = Root::unpack("cad");
    let unshare = start(&root.0);
    let (init, shell) = session(&unshare);
    // The interactive shell catches SIGINT (so ^C reaches its jobs) rather
    // than ignoring it as a shell's background job would.
    let start = Instant::now();
    while status_field(shell, "SigCgt:") & 2 == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_field(shell, "SigIgn:") & 2, 0, "SIGINT ignored");
    assert_ne!(status_field(shell, "SigCgt:") & 2, 0, "SIGINT not caught");
    // What the kernel does on Ctrl-Alt-Del.
    // SAFETY: kill(2) on the namespace's init, a process this test started.
    assert_eq!(unsafe { libc::kill(init as libc::pid_t, libc::SIGINT) }, 0);
    let (status, out) = finish(unshare);
    assert!(out.contains("UTSUWA-READY"), "{out}");
    assert!(
        out.contains("utsuwa-init: Ctrl-Alt-Del: rebooting"),
        "{out}"
    );
    // unshare passes on its child's death by SIGHUP (a reboot) by dying
    // of it too.
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}\n{out}");
}

#[test]
fn the_end_of_the_session_ends_the_machine() {
    if skip() {
        return;
    }
    let root = Root::unpack("end");
    let unshare = start(&root.0);
    let (_, shell) = session(&unshare);
    // SAFETY: kill(2) on the session's shell, a process this test started.
    let killed = unsafe { libc::kill(shell as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0);
    let (status, out) = finish(unshare);
    // This host's kernel log has no ACPI S5 line, so the script reboots
    // (-f: at once); a guest with ACPI powers off.
    assert!(!out.contains("Ctrl-Alt-Del"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}\n{out}");
}
