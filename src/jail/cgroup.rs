//! cgroups for the jailed VMM: `--cgroup KEY=VALUE` writes VALUE into the
//! file KEY of the VM's cgroup, `<hierarchy>/<jailer's cgroup>/utsuwa/<ID>`
//! (`<mount>/utsuwa/<ID>` when the jailer runs in the root cgroup, as
//! here). Nesting under the jailer's own cgroup keeps a VM inside any
//! limit placed on whoever started it.
//!
//! The controller is KEY's prefix (`pids` for `pids.max`). cgroup v2 is
//! used when the controller is available there (listed in the jailer's
//! cgroup's `cgroup.controllers`; it is then enabled in the
//! `cgroup.subtree_control` files on the way down). Otherwise, on a host
//! where cgroup v1 owns the controller (as on this project's machine,
//! whose v2 hierarchy offers only hugetlb), the v1 hierarchy carrying it
//! is used, and KEY must be one of that version's files (`pids.max` is in
//! both; v1 memory is `memory.limit_in_bytes`, not `memory.max`): a
//! missing file or controller is one error line, before the VM starts.
//! Mount points come from mountinfo, never assumed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{mounts, JailError};

/// Where each setting goes; nothing is created yet.
#[derive(Debug, Default)]
pub struct Resolved {
    /// One per hierarchy used: the VM's folder, the folders to enable
    /// controllers in (v2), and the settings.
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    dir: PathBuf,
    /// v2: (folder, controller) pairs to write `+controller` into.
    enable: Vec<(PathBuf, String)>,
    /// v1 cpuset: cpus and mems are copied from the parent first.
    cpuset_v1: bool,
    settings: Vec<(String, String)>,
}

/// The created cgroups; removed when dropped (after the VMM has exited).
#[derive(Debug)]
pub struct Cgroups {
    dirs: Vec<PathBuf>,
}

fn err(msg: String) -> JailError {
    JailError::Cgroup(msg)
}

/// `path` relative to the mounted part (`mount_root`) of the hierarchy.
fn under_mount(mount: &mounts::Mount, own: &str) -> PathBuf {
    let rel = own.strip_prefix(mount.root.as_str()).unwrap_or(own);
    mount.point.join(rel.trim_start_matches('/'))
}

/// Resolves every setting to a hierarchy, from mountinfo and
/// /proc/self/cgroup.
pub fn resolve(id: &str, settings: &[(String, String)]) -> Result<Resolved, JailError> {
    if settings.is_empty() {
        return Ok(Resolved::default());
    }
    let all = mounts::current().map_err(|e| err(format!("reading mountinfo: {e}")))?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| err(format!("reading /proc/self/cgroup: {e}")))?;
    resolve_with(id, settings, &all, &own, &|p| {
        std::fs::read_to_string(p).ok()
    })
}

fn resolve_with(
    id: &str,
    settings: &[(String, String)],
    all: &[mounts::Mount],
    own: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<Resolved, JailError> {
    // hierarchy line: "N:controllers:/path" (v1) or "0::/path" (v2).
    let own_path = |want: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            want(ctrls).then(|| path.to_string())
        })
    };
    let v2 = all.iter().find(|m| m.fstype == "cgroup2").and_then(|m| {
        let base = under_mount(m, &own_path(&|c: &str| c.is_empty())?);
        let available = read(&base.join("cgroup.controllers")).unwrap_or_default();
        Some((base, available))
    });
    let mut out = Resolved::default();
    for (key, value) in settings {
        let controller = key.split('.').next().unwrap_or_default().to_string();
        let (dir, enable, cpuset_v1) = match &v2 {
            Some((base, available)) if available.split_whitespace().any(|c| c == controller) => {
                let parent = base.join("utsuwa");
                let enable = vec![
                    (base.clone(), controller.clone()),
                    (parent.clone(), controller.clone()),
                ];
                (parent.join(id), enable, false)
            }
            _ => {
                let mount = all
                    .iter()
                    .find(|m| m.fstype == "cgroup" && m.super_options.contains(&controller));
                let own_v1 =
                    mount.and_then(|_| own_path(&|c: &str| c.split(',').any(|c| c == controller)));
                match (mount, own_v1) {
                    (Some(m), Some(p)) => (
                        under_mount(m, &p).join("utsuwa").join(id),
                        Vec::new(),
                        controller == "cpuset",
                    ),
                    _ => {
                        let in_v2 = v2.as_ref().map(|(_, a)| a.trim()).filter(|a| !a.is_empty());
                        return Err(err(format!(
                            "--cgroup {key}: no '{controller}' controller in cgroup v2 (available there: {}) nor a cgroup v1 hierarchy carrying it",
                            in_v2.unwrap_or("none")
                        )));
                    }
                }
            }
        };
        let group = match out.groups.iter_mut().position(|g| g.dir == dir) {
            Some(i) => &mut out.groups[i],
            None => {
                out.groups.push(Group {
                    dir,
                    enable: Vec::new(),
                    cpuset_v1,
                    settings: Vec::new(),
                });
                out.groups.last_mut().expect("just pushed")
            }
        };
        for e in enable {
            if !group.enable.contains(&e) {
                group.enable.push(e);
            }
        }
        group.settings.push((key.clone(), value.clone()));
    }
    Ok(out)
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    // No create: a cgroup folder's files are its controllers' own.
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// rmdir of a cgroup, retried briefly: the kernel can still be taking
/// the last task out just after it was reaped.
fn remove(dir: &Path) -> std::io::Result<()> {
    let mut last = Ok(());
    for _ in 0..50 {
        last = match std::fs::remove_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other,
        };
        if last.is_ok() {
            return last;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    last
}

impl Resolved {
    /// Creates the folders (replacing a stale one left by a dead jailer
    /// with the same ID) and writes the settings.
    pub fn create(&self) -> Result<Cgroups, JailError> {
        let mut made = Cgroups { dirs: Vec::new() };
        for g in &self.groups {
            if g.dir.exists() {
                remove(&g.dir).map_err(|e| {
                    err(format!(
                        "stale {} (it still holds processes?): {e}",
                        g.dir.display()
                    ))
                })?;
            }
            let parent = g.dir.parent().unwrap_or(Path::new("/"));
            for (folder, controller) in &g.enable {
                if folder == parent {
                    std::fs::create_dir_all(folder)
                        .map_err(|e| err(format!("creating {}: {e}", folder.display())))?;
                }
                let control = folder.join("cgroup.subtree_control");
                write_file(&control, &format!("+{controller}")).map_err(|e| {
                    err(format!(
                        "enabling {controller} in {}: {e}",
                        control.display()
                    ))
                })?;
            }
            std::fs::create_dir_all(&g.dir)
                .map_err(|e| err(format!("creating {}: {e}", g.dir.display())))?;
            made.dirs.push(g.dir.clone());
            if g.cpuset_v1 {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let from = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                    let _ = write_file(&g.dir.join(file), from.trim());
                }
            }
            for (key, value) in &g.settings {
                write_file(&g.dir.join(key), value).map_err(|e| {
                    err(format!(
                        "--cgroup {key}={value} in {}: {e}",
                        g.dir.display()
                    ))
                })?;
            }
        }
        Ok(made)
    }
}

impl Cgroups {
    /// Moves `pid` (the VMM, before it runs anything) into every group.
    pub fn attach(&self, pid: libc::pid_t) -> Result<(), JailError> {
        for dir in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())
                .map_err(|e| err(format!("moving the VMM into {}: {e}", dir.display())))?;
        }
        Ok(())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(e) = remove(dir) {
                eprintln!(
                    "utsuwa: warning: jail: cannot remove cgroup {}: {e}",
                    dir.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
36 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
    const OWN: &str = "8:pids:/\n4:memory:/outer/x\n0::/\n";

    fn resolved(settings: &[(&str, &str)], v2: &str) -> Result<Resolved, JailError> {
        let settings: Vec<_> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let v2 = v2.to_string();
        resolve_with("vm1", &settings, &mounts::parse(MOUNTS), OWN, &move |p| {
            (p == Path::new("/sys/fs/cgroup/unified/cgroup.controllers")).then(|| v2.clone())
        })
    }

    #[test]
    fn v2_when_the_controller_is_there_else_v1() {
        let r = resolved(
            &[
                ("pids.max", "64"),
                ("hugetlb.2MB.max", "0"),
                ("memory.limit_in_bytes", "1"),
            ],
            "hugetlb\n",
        )
        .unwrap();
        let dirs: Vec<_> = r.groups.iter().map(|g| g.dir.clone()).collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/pids/utsuwa/vm1"),
                PathBuf::from("/sys/fs/cgroup/unified/utsuwa/vm1"),
                PathBuf::from("/sys/fs/cgroup/memory/outer/x/utsuwa/vm1"),
            ]
        );
        assert_eq!(
            r.groups[1].enable[1],
            (
                PathBuf::from("/sys/fs/cgroup/unified/utsuwa"),
                "hugetlb".into()
            )
        );
        let r = resolved(&[("pids.max", "64"), ("pids.foo", "1")], "cpu pids").unwrap();
        assert_eq!(r.groups.len(), 1);
        assert_eq!(
            r.groups[0].dir,
            PathBuf::from("/sys/fs/cgroup/unified/utsuwa/vm1")
        );
        assert_eq!(r.groups[0].settings.len(), 2);
    }

    #[test]
    fn a_controller_nowhere_is_one_clear_error() {
        let e = resolved(&[("cpu.max", "1")], "hugetlb")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--cgroup cpu.max: no 'cpu' controller") && e.contains("hugetlb"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
