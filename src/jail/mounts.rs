//! `/proc/self/mountinfo`, read rather than assumed: where the cgroup
//! hierarchies are mounted (and which v1 controllers each carries), and
//! whether anything is mounted under a folder the jailer is about to
//! delete.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The part of the file system mounted there (field 4).
    pub root: String,
    pub point: PathBuf,
    pub fstype: String,
    /// The per-superblock options (for cgroup v1: the controllers).
    pub super_options: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let rest: Vec<&str> = after.split(' ').collect();
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: rest.first()?.to_string(),
                super_options: rest.get(2)?.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// This process's mounts.
pub fn current() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Mount points at or below `dir`.
pub fn under(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.point.starts_with(dir))
        .map(|m| m.point.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:40 /sub /tmp/a\\040b rw - ext4 /dev/vda rw";

    #[test]
    fn parses_cgroup_mounts_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            (m[1].fstype.as_str(), m[1].super_options.clone()),
            ("cgroup", vec!["rw".into(), "cpu".into(), "cpuacct".into()])
        );
        assert_eq!(m[2].fstype, "cgroup2");
        assert_eq!(
            (m[3].root.as_str(), m[3].point.clone()),
            ("/sub", PathBuf::from("/tmp/a b"))
        );
        assert_eq!(under(&m, Path::new("/sys/fs/cgroup")).len(), 3);
        assert!(under(&m, Path::new("/tmp/a")).is_empty());
        assert!(parse("garbage\n1 2 3\n").is_empty());
    }

    #[test]
    fn reads_this_process_s_mounts() {
        let m = current().unwrap();
        assert!(m.iter().any(|m| m.point == Path::new("/")));
    }
}
