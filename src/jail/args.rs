//! `utsuwa jail`'s own options, before the `--` that starts the VMM's:
//! `--id ID --uid U --gid G [--netns PATH] [--cgroup KEY=VALUE]...
//! [--chroot-base DIR]`. Every mistake is one error line; nothing on the
//! host is touched before the whole command line has been checked.

use std::path::PathBuf;

use super::JailError;

/// Firecracker's jailer puts its jails here too.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// What `utsuwa jail` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailArgs {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub netns: Option<PathBuf>,
    /// `--cgroup` settings in the order given: (file name, value).
    pub cgroups: Vec<(String, String)>,
    pub chroot_base: PathBuf,
    /// Everything after `--`: `run ...` or `api ...` (or `--api-sock ...`).
    pub vmm_args: Vec<String>,
}

fn bad(msg: impl Into<String>) -> JailError {
    JailError::Usage(msg.into())
}

/// 1 to 64 ASCII letters, digits or '-': the ID becomes a folder name and
/// a cgroup name, so nothing else (no '/', no '.', no '..') gets through.
pub fn check_id(id: &str) -> Result<(), JailError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad(format!(
            "--id: '{id}' must be 1 to 64 letters, digits or '-'"
        )));
    }
    Ok(())
}

fn id_number(flag: &str, text: &str) -> Result<u32, JailError> {
    let n: u32 = text
        .parse()
        .map_err(|_| bad(format!("{flag} must be a number, got '{text}'")))?;
    if n == 0 {
        return Err(bad(format!(
            "{flag} 0 is root: the jailed VMM must run as an unprivileged user"
        )));
    }
    // u32::MAX is (uid_t)-1, "no change" to setresuid.
    if n == u32::MAX {
        return Err(bad(format!("{flag} {n} is not a valid id")));
    }
    Ok(n)
}

/// `KEY=VALUE` where KEY is a controller's file (`pids.max`,
/// `memory.max`, `cpu.max`, ...): `controller.name`, no path, and not one
/// of the files that move processes or enable controllers.
fn cgroup_setting(text: &str) -> Result<(String, String), JailError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| bad(format!("--cgroup: expected KEY=VALUE, got '{text}'")))?;
    let valid_name = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    let controller = key.split('.').next().unwrap_or("");
    if !valid_name || !key.contains('.') || controller.is_empty() || key.ends_with('.') {
        return Err(bad(format!(
            "--cgroup: '{key}' is not a controller file name like pids.max"
        )));
    }
    if controller == "cgroup" || controller == "tasks" || key == "notify_on_release" {
        return Err(bad(format!(
            "--cgroup: '{key}' is managed by the jailer and cannot be set"
        )));
    }
    if value.is_empty() || value.contains('\n') {
        return Err(bad(format!("--cgroup: '{key}' needs a one-line value")));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses the arguments after `jail`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<JailArgs, JailError> {
    let mut args = args.into_iter();
    let (mut id, mut uid, mut gid, mut netns) = (None, None, None, None);
    let mut cgroups = Vec::new();
    let mut chroot_base = PathBuf::from(DEFAULT_CHROOT_BASE);
    let mut vmm_args = None;
    while let Some(arg) = args.next() {
        if arg == "--" {
            vmm_args = Some(args.by_ref().collect::<Vec<_>>());
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| bad(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--id" => {
                let v = value()?;
                check_id(&v)?;
                id = Some(v);
            }
            "--uid" => uid = Some(id_number("--uid", &value()?)?),
            "--gid" => gid = Some(id_number("--gid", &value()?)?),
            "--netns" => netns = Some(PathBuf::from(value()?)),
            "--cgroup" => cgroups.push(cgroup_setting(&value()?)?),
            "--chroot-base" => chroot_base = PathBuf::from(value()?),
            other if !other.starts_with('-') => {
                return Err(bad(format!(
                    "jail needs '--' before the VMM's arguments (got '{other}')"
                )))
            }
            other => {
                return Err(bad(format!(
                    "unknown option '{other}' for jail (the VMM's options go after '--')"
                )))
            }
        }
    }
    let vmm_args = vmm_args.ok_or_else(|| {
        bad("jail needs '--' followed by the VMM's arguments (run ... or api ...)")
    })?;
    if vmm_args.is_empty() {
        return Err(bad(
            "jail: nothing after '--' (expected run ... or api ...)",
        ));
    }
    if !chroot_base.is_absolute() {
        return Err(bad(format!(
            "--chroot-base must be an absolute path, got '{}'",
            chroot_base.display()
        )));
    }
    Ok(JailArgs {
        id: id.ok_or_else(|| bad("jail needs --id ID"))?,
        uid: uid.ok_or_else(|| bad("jail needs --uid U"))?,
        gid: gid.ok_or_else(|| bad("jail needs --gid G"))?,
        netns,
        cgroups,
        chroot_base,
        vmm_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<JailArgs, JailError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn full_command_line() {
        let a = parse_str(&[
            "--id=vm-1",
            "--uid",
            "1000",
            "--gid",
            "1001",
            "--netns",
            "/var/run/netns/x",
            "--cgroup",
            "pids.max=64",
            "--cgroup=memory.max=1G",
            "--",
            "run",
            "--kernel",
            "k",
        ])
        .unwrap();
        assert_eq!((a.id.as_str(), a.uid, a.gid), ("vm-1", 1000, 1001));
        assert_eq!(a.chroot_base, PathBuf::from(DEFAULT_CHROOT_BASE));
        assert_eq!(a.cgroups[1], ("memory.max".into(), "1G".into()));
        assert_eq!(a.vmm_args, ["run", "--kernel", "k"]);
    }

    #[test]
    fn mistakes_are_one_line_each() {
        let base = ["--id", "a", "--uid", "1", "--gid", "1"];
        let with = |extra: &[&'static str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            v
        };
        for (args, needle) in [
            (vec!["--uid", "1", "--gid", "1", "--", "run"], "--id ID"),
            (vec!["--id", "a/b", "--", "run"], "--id"),
            (vec!["--id", "..", "--", "run"], "--id"),
            (vec!["--id", "", "--", "run"], "--id"),
            (vec!["--id", "x_y", "--", "run"], "--id"),
            (vec!["--id", "a", "--uid", "me", "--", "run"], "--uid"),
            (vec!["--id", "a", "--uid", "0", "--", "run"], "root"),
            (vec!["--id", "a", "--uid", "1", "--", "run"], "--gid G"),
            (with(&[]), "'--'"),
            (with(&["--"]), "nothing after"),
            (with(&["--cgroup", "pids"]), "KEY=VALUE"),
            (with(&["--cgroup", "../x.max=1"]), "controller file"),
            (with(&["--cgroup", "cgroup.procs=1"]), "managed"),
            (with(&["--cgroup", "pids.max="]), "value"),
            (with(&["--chroot-base", "rel", "--", "run"]), "absolute"),
            (with(&["--frob", "--", "run"]), "unknown option"),
            (with(&["run", "--kernel", "k"]), "needs '--' before"),
            (vec!["--id"], "needs a value"),
        ] {
            let err = parse_str(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(check_id(&"a".repeat(64)).is_ok());
        assert!(check_id(&"a".repeat(65)).is_err());
    }
}
