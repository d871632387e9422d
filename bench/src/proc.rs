//! Child processes for benchmarks: spawning with a start timestamp taken
//! just before `spawn()`, stdout lines timestamped as they arrive (read in
//! a thread), the exit timestamped when it happens (a thread blocked in
//! `waitid(WNOWAIT)`, so the child stays unreaped and `kill` can never hit
//! a recycled pid), and what `/proc` says about a live process. Each child
//! leads its own process group, and killing it kills the group, so
//! nothing it started outlives it or holds its pipes open.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A running child and the timestamps it produces.
pub struct Timed {
    child: Child,
    pub start: Instant,
    lines: Receiver<(Instant, String)>,
    exited: Receiver<Instant>,
    /// Every stdout line seen so far, for failure reports.
    seen: Vec<String>,
    stderr: Receiver<String>,
    /// Set once `Child::wait` reaped it: its pid may be reused from then on.
    reaped: bool,
}

/// Why waiting for a line ended without it.
#[derive(Debug)]
pub enum LineWait {
    /// The child closed stdout (usually: exited) first.
    Closed,
    Timeout,
}

impl LineWait {
    /// Why the marker line never came, for a failure report.
    pub fn no_marker(&self) -> &'static str {
        match self {
            LineWait::Closed => "no marker: output ended",
            LineWait::Timeout => "no marker within the time limit: killed",
        }
    }
}

impl Timed {
    /// Spawns `cmd` with stdin from /dev/null and stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Result<Timed, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        crate::cleanup::add_group(child.id());
        let out = child.stdout.take().ok_or("child has no stdout pipe")?;
        let mut err = child.stderr.take().ok_or("child has no stderr pipe")?;
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let now = Instant::now();
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        if line_tx.send((now, line)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            let _ = err_tx.send(String::from_utf8_lossy(&s).into_owned());
        });
        let (exit_tx, exited) = mpsc::channel();
        let pid = child.id() as libc::id_t;
        std::thread::spawn(move || {
            // SAFETY: siginfo_t is plain data that waitid fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is valid for writing; WNOWAIT leaves the child
            // for `Child::wait` to reap, so its pid stays ours until then.
            let rc =
                unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            let now = Instant::now();
            if rc == 0 {
                let _ = exit_tx.send(now);
            }
        });
        Ok(Timed {
            child,
            start,
            lines,
            exited,
            seen: Vec::new(),
            stderr,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line `wait_line` has taken so far, in order.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits until `deadline` for a stdout line that `want` accepts;
    /// returns when it arrived (since the start) and the line.
    pub fn wait_line(
        &mut self,
        want: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<(Duration, String), LineWait> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = want(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return Ok((at - self.start, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(LineWait::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(LineWait::Closed),
            }
        }
    }

    /// Waits until `deadline` for the child to exit and reaps it; returns
    /// when it exited (since the start). Kills it on timeout.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<(Duration, ExitStatus), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.exited.recv_timeout(left) {
            Ok(at) => {
                let status = self
                    .reap()
                    .map_err(|e| format!("cannot reap the child: {e}"))?;
                Ok((at - self.start, status))
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err("timed out: killed".into())
            }
            Err(RecvTimeoutError::Disconnected) => {
                // waitid itself failed; fall back to a plain wait.
                let status = self.reap().map_err(|e| format!("cannot wait: {e}"))?;
                Ok((self.start.elapsed(), status))
            }
        }
    }

    /// SIGKILL to its process group, and reap. Harmless if it exited.
    pub fn kill(&mut self) {
        if !self.reaped {
            // SAFETY: kill has no memory-safety preconditions; the child is
            // unreaped, so its pid (= its group id) is still ours.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        }
        let _ = self.reap();
    }

    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        crate::cleanup::remove_group(self.child.id());
        let status = self.child.wait();
        self.reaped = true;
        status
    }

    /// The last stdout lines and stderr, for a failure report: kills the
    /// child if it is still running so that stderr is complete.
    pub fn finish_and_tail(&mut self, lines: usize) -> String {
        self.kill();
        while let Ok((_, line)) = self.lines.recv_timeout(Duration::from_millis(100)) {
            self.seen.push(line);
        }
        let from = self.seen.len().saturating_sub(lines);
        let mut tail: Vec<String> = self.seen[from..]
            .iter()
            .map(|l| format!("stdout: {l}"))
            .collect();
        if let Ok(err) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            let err: Vec<&str> = err.lines().collect();
            let from = err.len().saturating_sub(lines);
            tail.extend(err[from..].iter().map(|l| format!("stderr: {l}")));
        }
        if tail.is_empty() {
            "no output".into()
        } else {
            tail.join(" | ")
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One mapping from `/proc/PID/smaps`; sizes in KiB.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// Empty for an anonymous mapping.
    pub path: String,
    pub size_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
}

/// Parses the text of a `smaps` file.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (Ok(start), Ok(end)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
            else {
                continue;
            };
            let perms = fields.next().unwrap_or("").to_string();
            // offset, device, inode, then the path (which may hold spaces).
            let path: Vec<&str> = fields.skip(3).collect();
            maps.push(Mapping {
                start,
                end,
                perms,
                path: path.join(" "),
                ..Default::default()
            });
        } else if let Some(m) = maps.last_mut() {
            let kb = fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            match first {
                "Size:" => m.size_kb = kb,
                "Rss:" => m.rss_kb = kb,
                "Pss:" => m.pss_kb = kb,
                _ => {}
            }
        }
    }
    maps
}

/// The mappings of a live process.
pub fn smaps(pid: u32) -> Result<Vec<Mapping>, String> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(parse_smaps(&text))
}

/// The number of threads of a live process (`Threads:` in its status).
pub fn threads(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Threads: line in {path}"))
}

/// The pids of a live process's child processes, from every thread's
/// `/proc/PID/task/TID/children`.
pub fn children(pid: u32) -> Result<Vec<u32>, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("cannot list {dir}: {e}"))?;
    let mut kids = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        kids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    Ok(kids)
}

/// The CPU time one thread has used so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadCpu {
    pub tid: u32,
    /// `comm`: the thread's name.
    pub name: String,
    /// From `stat`, in clock ticks (`USER_HZ`): user time (which includes
    /// the time spent running a guest), system time, and guest time.
    pub utime: u64,
    pub stime: u64,
    pub gtime: u64,
    /// `sum_exec_runtime` from `schedstat` in ns: the exact total of user
    /// and system time (None when the kernel has no schedstat).
    pub runtime_ns: Option<u64>,
}

/// `(comm, utime, stime, gtime)` from the text of a `stat` file. The
/// name is between the first `(` and the last `)` (it may hold both).
pub fn parse_stat(text: &str) -> Option<(String, u64, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    // After the name: field 3 (state) onwards; utime is field 14, stime
    // 15, guest_time 43 (proc(5)), i.e. indices 11, 12 and 40 here.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((name, field(11)?, field(12)?, field(40)?))
}

/// The CPU time of every thread of a live process, from
/// `/proc/PID/task/TID/stat` and `schedstat`. Threads that exit while
/// the directory is read are left out.
pub fn thread_cpu(pid: u32) -> Result<Vec<ThreadCpu>, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("cannot list {dir}: {e}"))?;
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((name, utime, stime, gtime)) = parse_stat(&stat) else {
            return Err(format!("{dir}/{tid}/stat: cannot parse '{}'", stat.trim()));
        };
        let runtime_ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        out.push(ThreadCpu {
            tid,
            name,
            utime,
            stime,
            gtime,
            runtime_ns,
        });
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// `(utime, stime, gtime)` in clock ticks of the whole process, exited
/// threads included (`/proc/PID/stat`).
pub fn process_cpu(pid: u32) -> Result<(u64, u64, u64), String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let (_, u, s, g) = parse_stat(&text).ok_or_else(|| format!("cannot parse {path}"))?;
    Ok((u, s, g))
}

/// Nanoseconds per clock tick of `/proc/*/stat` (`sysconf(_SC_CLK_TCK)`).
pub fn tick_ns() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Runs a command (killed after 5 s) and returns its trimmed stdout if it
/// succeeded.
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Timed::spawn(Command::new(program).args(args)).ok()?;
    let (_, status) = child
        .wait_exit(Instant::now() + Duration::from_secs(5))
        .ok()?;
    let mut out = String::new();
    while let Ok((_, line)) = child.lines.recv_timeout(Duration::from_secs(1)) {
        out.push_str(&line);
        out.push('\n');
    }
    status.success().then(|| out.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        // comm with a space and a parenthesis; fields 14, 15 and 43 set.
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[0] = "S".into();
        let text = format!("1234 (CPU 0/KVM) x) {}\n", fields.join(" "));
        assert_eq!(
            parse_stat(&text),
            Some(("CPU 0/KVM) x".to_string(), 14, 15, 43))
        );
        assert_eq!(parse_stat("1 (a) S 2"), None);
    }

    #[test]
    fn parses_smaps_entries() {
        let text = "\
55d0c0a00000-55d0c0a10000 r-xp 00000000 08:01 1234  /usr/bin/some thing
Size:                 64 kB
Rss:                  60 kB
Pss:                  30 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:                2048 kB
Pss:                2048 kB
";
        let maps = parse_smaps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].path, "/usr/bin/some thing");
        assert_eq!(
            (maps[0].size_kb, maps[0].rss_kb, maps[0].pss_kb),
            (64, 60, 30)
        );
        assert_eq!(maps[1].path, "");
        assert_eq!(maps[1].perms, "rw-p");
        assert_eq!(maps[1].end - maps[1].start, 256 << 20);
        assert_eq!(maps[1].rss_kb, 2048);
    }
}
