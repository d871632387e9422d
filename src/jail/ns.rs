//! The process side: a new PID namespace whose PID 1 is the VMM, and a
//! new mount namespace in which the jail's root becomes `/`.
//!
//! The jailer itself only unshares the PID namespace (which affects its
//! children, not itself) and stays in the host's mount namespace: after
//! the VMM ends it must still see the host's files to remove the cgroups
//! and the root. The child unshares the mount namespace; were the jailer
//! in it too, `pivot_root` would move the jailer's root as well.
//!
//! The child waits on a pipe until the jailer has moved it into the
//! cgroups, so the VMM never runs outside them. It then makes every mount
//! private (nothing it mounts leaks to the host, and host mounts do not
//! propagate in), bind-mounts the root onto itself (`pivot_root` needs a
//! mount point) with nosuid, bind-mounts the disks onto their placeholders
//! (read-only ones read-only), enters the network namespace when one was
//! given, `pivot_root`s and detaches the old root. The rest is `privs`.
//!
//! The VMM being PID 1 of its namespace, nothing else lives there to reap;
//! when it exits the namespace ends and its mounts with it. Its exit status
//! becomes the jailer's (128 + N when killed by signal N).

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use super::cgroup::Cgroups;
use super::fs::inside;
use super::privs::{self, Exec};
use super::rewrite::{Placed, Use};
use super::{os_err, JailError};

/// What the child needs to enter the jail.
pub struct ChildSpec {
    pub root: PathBuf,
    pub disks: Vec<Placed>,
    pub netns: Option<File>,
    pub exec: Exec,
}

fn cstr(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Usage(format!("{} has a NUL byte", path.display())))
}

/// mount(2) with no file system type or data.
fn mount(src: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    let src_c = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let src_ptr = src_c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
    // SAFETY: both paths are NUL-terminated strings (or null for the
    // source) that outlive the call; fstype and data are null, which
    // bind, remount and propagation changes accept.
    let rc = unsafe { libc::mount(src_ptr, target_c.as_ptr(), ptr::null(), flags, ptr::null()) };
    if rc != 0 {
        return Err(os_err(format!("mount {}", target.display())));
    }
    Ok(())
}

/// In the child, before dropping privileges: the mount namespace, the
/// bind mounts, the network namespace, pivot_root.
fn enter(spec: &ChildSpec) -> Result<(), JailError> {
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS)"));
    }
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    let root = &spec.root;
    mount(Some(root), root, libc::MS_BIND)?;
    mount(
        None,
        root,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID,
    )?;
    for disk in &spec.disks {
        let target = inside(root, &disk.jail);
        mount(Some(&disk.host), &target, libc::MS_BIND)?;
        let ro = if disk.usage == Use::DiskReadOnly {
            libc::MS_RDONLY
        } else {
            0
        };
        mount(
            None,
            &target,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC | ro,
        )?;
    }
    if let Some(ns) = &spec.netns {
        // SAFETY: setns on a descriptor the spec owns, open for the call.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(os_err("setns(--netns)"));
        }
    }
    let root_c = cstr(root)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::chdir(root_c.as_ptr()) } != 0 {
        return Err(os_err(format!("chdir {}", root.display())));
    }
    // pivot_root(".", "."): the old root ends up stacked under the new one
    // at "/", and the detaching umount of "." takes it away.
    let dot = c".";
    // SAFETY: both arguments are NUL-terminated static strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(os_err("pivot_root"));
    }
    // SAFETY: a NUL-terminated static string.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(os_err("detaching the old root"));
    }
    let slash = c"/";
    // SAFETY: a NUL-terminated static string.
    if unsafe { libc::chdir(slash.as_ptr()) } != 0 {
        return Err(os_err("chdir /"));
    }
    Ok(())
}

/// The child's pid, for the signal forwarder.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and takes no pointers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT to the jailer go to the VMM, which
/// decides how to stop (the jailer then exits with its status).
fn forward_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: an all-zero sigaction is valid; the handler only loads
        // an atomic and calls kill, both async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, ptr::null_mut());
        }
    }
}

/// The child's side; returns only on error (exec replaces it).
fn child(spec: &ChildSpec, go: libc::c_int) -> JailError {
    let mut byte = 0u8;
    // SAFETY: reads one byte into a local that outlives the call.
    let n = unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) };
    if n != 1 {
        // The jailer failed before letting the VMM start, and says why.
        // SAFETY: _exit ends this child at once, running no destructors.
        unsafe { libc::_exit(1) };
    }
    if let Err(e) = enter(spec) {
        return e;
    }
    privs::drop_and_exec(&spec.exec, go)
}

/// Forks the VMM into new namespaces, waits for it, and returns its exit
/// status as the jailer's.
pub fn run_jailed(spec: ChildSpec, cgroups: &Cgroups) -> Result<ExitCode, JailError> {
    // SAFETY: unshare takes flags only; CLONE_NEWPID applies to the
    // children forked after it.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(os_err("unshare(CLONE_NEWPID)"));
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    let (go_read, go_write) = (fds[0], fds[1]);
    // SAFETY: the jailer is single-threaded (nothing before this point
    // spawns a thread), so the child may do anything the parent could.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: closing the pipe's write end, a descriptor this process owns.
        unsafe { libc::close(go_write) };
        let e = child(&spec, go_read);
        eprintln!("utsuwa: error: jail: {e}");
        // SAFETY: _exit ends the child without running the parent's
        // destructors (the root and cgroup guards belong to the jailer).
        unsafe { libc::_exit(1) };
    }
    // SAFETY: the read end is the child's; the jailer closes its copy.
    unsafe { libc::close(go_read) };
    CHILD.store(pid, Ordering::Relaxed);
    forward_signals();
    let started = cgroups.attach(pid);
    if started.is_ok() {
        // SAFETY: writes one byte from a static to the pipe's write end.
        unsafe { libc::write(go_write, b"g".as_ptr().cast(), 1) };
    } else {
        // SAFETY: closing the write end, which the jailer owns: the child
        // reads EOF and exits.
        unsafe { libc::close(go_write) };
    }
    let status = wait(pid);
    if started.is_ok() {
        // SAFETY: as above. Kept open until now so that the child, once
        // it has asked for SIGKILL on the jailer's death, can tell that
        // the jailer was still alive then (see `privs`).
        unsafe { libc::close(go_write) };
    }
    started?;
    status
}

/// Waits for `pid`; its exit code, or 128 + the signal that killed it.
fn wait(pid: libc::pid_t) -> Result<ExitCode, JailError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("waitpid"));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
