//! `utsuwa jail`: starts `utsuwa run` or `utsuwa api` the way
//! Firecracker's jailer starts Firecracker. In order:
//!
//! 1. check everything ([`args`], [`rewrite`]: the VMM's own command line
//!    too, so a typo fails before the host is touched);
//! 2. build the per-VM root `<base>/utsuwa/<ID>/root` ([`fs`], [`libs`]):
//!    the utsuwa binary and the shared objects it loads, kernel, initrd,
//!    disks, configuration, device nodes, a `/run` folder for sockets;
//! 3. create the cgroups and write the limits ([`cgroup`]);
//! 4. fork into a new PID namespace; the child, PID 1 there, is moved into
//!    the cgroups, enters a new mount namespace, `pivot_root`s into the
//!    root and optionally the network namespace ([`ns`]), closes inherited
//!    files, drops groups, ids and capabilities, sets no_new_privs, applies
//!    Landlock and execs the copied binary with the rewritten arguments
//!    ([`privs`]); utsuwa's seccomp filters follow as usual;
//! 5. the jailer waits, forwards SIGTERM/SIGINT/SIGHUP, removes the cgroups
//!    and the root, and exits with the VMM's status.

mod args;
mod cgroup;
mod fs;
mod libs;
mod mounts;
mod ns;
mod privs;
mod rewrite;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

/// Everything that can stop the jailer, each one line.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{0}")]
    Usage(String),
    #[error("{what} {}: {source}", path.display())]
    File {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("jail '{id}' is in use by a running jailer{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { id: String, pid: Option<u32> },
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("landlock: {0}")]
    Landlock(String),
}

/// Wraps an `io::Error` with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// The last OS error of a libc call that returned -1.
pub(crate) fn os_err(what: impl Into<String>) -> JailError {
    JailError::Io {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

/// Runs `utsuwa jail ARGS...` (the arguments after `jail`).
pub fn main(args: Vec<String>) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("utsuwa: error: jail: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, JailError> {
    let jail = args::parse(args)?;
    let plan = rewrite::plan(&jail.vmm_args)?;
    let netns = match &jail.netns {
        Some(path) => Some(std::fs::File::open(path).map_err(|e| JailError::File {
            what: "--netns".into(),
            path: path.clone(),
            source: e,
        })?),
        None => None,
    };
    let cgroups = cgroup::resolve(&jail.id, &jail.cgroups)?;
    let shared = libs::needed().map_err(io_err("reading this binary's shared objects"))?;
    // Taken on the host, where /sys and /proc are: the jail has neither.
    let flavour = match vmm::host::KvmFlavour::detect() {
        vmm::host::KvmFlavour::Pvm => "pvm",
        vmm::host::KvmFlavour::Hardware => "hardware",
    };
    // From here the host is changed; the guards undo it when dropped.
    let root = fs::Root::prepare(&jail, &plan, &shared)?;
    let groups = cgroups.create()?;
    let spec = ns::ChildSpec {
        root: root.path().to_path_buf(),
        disks: plan
            .files
            .iter()
            .filter(|f| f.usage != rewrite::Use::Boot)
            .cloned()
            .collect(),
        netns,
        exec: privs::Exec {
            id: jail.id.clone(),
            uid: jail.uid,
            gid: jail.gid,
            rules: privs::rules(&plan, &shared),
            args: plan.args.clone(),
            flavour,
        },
    };
    let status = ns::run_jailed(spec, &groups);
    drop(groups);
    drop(root);
    status
}
