//! The last steps in the child, inside the jail's root, in an order where
//! each still has the privilege it needs: drop supplementary groups, empty
//! the capability bounding set and the ambient set, switch to the VM's
//! gid and uid (which clears the permitted and effective sets; they are
//! then cleared explicitly and checked), ask for SIGKILL if the jailer
//! dies, set no_new_privs, apply Landlock, close every inherited file but
//! stdin, stdout and stderr, and exec the copied binary.
//!
//! Landlock (best effort, ABI 6 asked for) allows, beneath the new root:
//! read and execute of `/utsuwa` and its shared objects; read of the
//! kernel, initrd, configuration and read-only disks; read and write of
//! writable disks, `/dev/kvm` and `/dev/net/tun` (with device ioctls);
//! creating, using and removing files in `/run`. Everything else in the
//! file system is refused, TCP bind and connect are refused, and the VMM
//! cannot signal or reach abstract sockets outside its domain. One stderr
//! line says whether that is fully enforced, partly, or not at all.

use std::ffi::CString;
use std::path::PathBuf;
use std::ptr;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::rewrite::{Plan, Use, CONFIG, RUN_DIR};
use super::{os_err, JailError};

/// What a Landlock rule grants on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Execute,
    Read,
    ReadWrite,
    Device,
    RunDir,
}

/// How to become the VMM.
pub struct Exec {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    /// Paths inside the jail and what they allow.
    pub rules: Vec<(PathBuf, Grant)>,
    pub args: Vec<String>,
    /// `pvm` or `hardware`, detected on the host (`UTSUWA_KVM_FLAVOUR`).
    pub flavour: &'static str,
}

/// The Landlock rules for a plan and the shared objects it needs.
pub fn rules(plan: &Plan, shared: &[(PathBuf, PathBuf)]) -> Vec<(PathBuf, Grant)> {
    let mut out = vec![(PathBuf::from("/utsuwa"), Grant::Execute)];
    out.extend(
        shared
            .iter()
            .map(|(jail, _)| (jail.clone(), Grant::Execute)),
    );
    for f in &plan.files {
        let grant = match f.usage {
            Use::Boot | Use::DiskReadOnly => Grant::Read,
            Use::DiskReadWrite => Grant::ReadWrite,
        };
        out.push((f.jail.clone(), grant));
    }
    if plan.config.is_some() {
        out.push((PathBuf::from(CONFIG), Grant::Read));
    }
    if plan.run_dir {
        out.push((PathBuf::from(RUN_DIR), Grant::RunDir));
    }
    out.push((PathBuf::from("/dev/kvm"), Grant::Device));
    if plan.tun {
        out.push((PathBuf::from("/dev/net/tun"), Grant::Device));
    }
    out
}

const LANDLOCK_ABI: ABI = ABI::V6;

fn access(grant: Grant) -> BitFlags<AccessFs> {
    use AccessFs::*;
    match grant {
        Grant::Execute => Execute | ReadFile,
        Grant::Read => ReadFile | IoctlDev,
        Grant::ReadWrite => ReadFile | WriteFile | IoctlDev,
        Grant::Device => ReadFile | WriteFile | IoctlDev,
        Grant::RunDir => {
            ReadFile | WriteFile | Truncate | ReadDir | RemoveFile | MakeReg | MakeSock | MakeFifo
        }
    }
}

/// Applies the ruleset; the one line describing how well it holds.
fn landlock(rules: &[(PathBuf, Grant)]) -> Result<String, JailError> {
    let ll = |e: landlock::RulesetError| JailError::Landlock(e.to_string());
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .create()
        .map_err(ll)?;
    for (path, grant) in rules {
        let fd = PathFd::new(path)
            .map_err(|e| JailError::Landlock(format!("{}: {e}", path.display())))?;
        created = created
            .add_rule(PathBeneath::new(fd, access(*grant)))
            .map_err(ll)?;
    }
    let status = created.restrict_self().map_err(ll)?;
    let kernel = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => {
            format!("kernel ABI {}", kernel_abi.unwrap_or(effective_abi as i32))
        }
        LandlockStatus::NotEnabled => "disabled in this kernel".into(),
        LandlockStatus::NotImplemented => "not built into this kernel".into(),
    };
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => format!("landlock enforced ({kernel})"),
        RulesetStatus::PartiallyEnforced => format!("landlock partially enforced ({kernel})"),
        RulesetStatus::NotEnforced => format!("landlock not supported ({kernel})"),
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Empties the effective, permitted and inheritable sets and checks it.
fn clear_capabilities() -> Result<(), JailError> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and two data structs, laid out as
    // the kernel's; both live across the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(os_err("capset"));
    }
    data = [CapData {
        effective: 1,
        permitted: 1,
        inheritable: 1,
    }; 2];
    // SAFETY: as above; capget writes into `data`.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(os_err("capget"));
    }
    if data
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0)
    {
        return Err(JailError::Usage(
            "capabilities are still held after dropping them".into(),
        ));
    }
    Ok(())
}

/// Drops supplementary groups, capabilities (bounding, ambient) and ids.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: an empty list; the pointer is not read when the size is 0.
    if unsafe { libc::setgroups(0, ptr::null()) } != 0 {
        return Err(os_err("setgroups"));
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            // EINVAL: past the last capability this kernel knows.
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(os_err(format!(
                "dropping capability {cap} from the bounding set"
            )));
        }
    }
    // SAFETY: prctl with integer arguments only. EINVAL: a kernel without
    // ambient capabilities, where there is nothing to clear.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(os_err("clearing ambient capabilities"));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(os_err(format!("setresgid {gid}")));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(os_err(format!("setresuid {uid}")));
    }
    clear_capabilities()
}

/// Closes every descriptor from 3 up.
fn close_inherited() -> Result<(), JailError> {
    // SAFETY: close_range takes integers; no descriptor below 3 is touched.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0 {
        return Ok(());
    }
    // No close_range (before Linux 5.9), and no /proc in the jail to list
    // the open ones: close up to the descriptor limit.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(os_err("getrlimit"));
    }
    let top = libc::c_int::try_from(limit.rlim_cur).unwrap_or(libc::c_int::MAX);
    for fd in 3..top {
        // SAFETY: closing a descriptor number; EBADF for unused ones.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn cstring(s: &str) -> Result<CString, JailError> {
    CString::new(s).map_err(|_| JailError::Usage(format!("argument has a NUL byte: {s:?}")))
}

/// The VMM's environment: the terminal type, the host's KVM flavour, and
/// utsuwa's own variables (test hooks among them); nothing else.
fn environment(flavour: &str) -> Result<Vec<CString>, JailError> {
    let mut env = vec![cstring(&format!("UTSUWA_KVM_FLAVOUR={flavour}"))?];
    for (k, v) in std::env::vars() {
        if (k == "TERM" || k == "RUST_BACKTRACE" || k.starts_with("UTSUWA_"))
            && k != "UTSUWA_KVM_FLAVOUR"
        {
            env.push(cstring(&format!("{k}={v}"))?);
        }
    }
    Ok(env)
}

/// Drops everything and execs `/utsuwa`; returns only on failure.
/// `jailer` is the read end of a pipe whose write end the jailer holds
/// until the VMM has ended.
pub fn drop_and_exec(exec: &Exec, jailer: libc::c_int) -> JailError {
    match try_exec(exec, jailer) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Whether the pipe's write end (held by the jailer) is closed.
fn jailer_gone(jailer: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd: jailer,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one pollfd that lives across the call, not waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
}

fn try_exec(exec: &Exec, jailer: libc::c_int) -> Result<std::convert::Infallible, JailError> {
    drop_privileges(exec.uid, exec.gid)?;
    // After the id change, which clears it.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(os_err("PR_SET_PDEATHSIG"));
    }
    // A jailer that died before that would never send the signal.
    if jailer_gone(jailer) {
        return Err(JailError::Usage("the jailer has exited".into()));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os_err("PR_SET_NO_NEW_PRIVS"));
    }
    let line = landlock(&exec.rules)?;
    eprintln!("utsuwa: jail {}: {line}", exec.id);
    let program = cstring("/utsuwa")?;
    let argv: Vec<CString> = std::iter::once(Ok(cstring("utsuwa")?))
        .chain(exec.args.iter().map(|a| cstring(a)))
        .collect::<Result<_, _>>()?;
    let envp = environment(exec.flavour)?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(ptr::null());
    close_inherited()?;
    // SAFETY: program, argv and envp are NUL-terminated strings in
    // null-terminated arrays, all alive until exec replaces the process.
    unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    Err(os_err("exec /utsuwa"))
}
