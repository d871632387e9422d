//! The VMM's CPU time over the benchmark, per thread: the difference of
//! two readings of `/proc/PID/task/*/{stat,schedstat}`, split into user,
//! system and guest time.
//!
//! `schedstat`'s runtime is exact (ns) and is the whole of a thread's CPU
//! time; `stat`'s utime and stime are that runtime divided in the ratio of
//! the timer ticks that found the thread in user or kernel mode, and
//! utime includes guest time (ticks that found a vCPU thread running the
//! guest), which `stat` also gives alone (`guest_time`, not rescaled).
//! So a thread's difference splits as: guest = Δguest_time (at most the
//! runtime), the rest between user and system in the ratio
//! (Δutime − Δguest_time) : Δstime. Tick sampling (CONFIG_HZ) makes the
//! split, and the guest part, uncertain by a few ms per thread and run;
//! the totals are exact.

use crate::proc::{tick_ns, ThreadCpu};

/// CPU time in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Split {
    pub user_ms: f64,
    pub sys_ms: f64,
    pub guest_ms: f64,
}

impl Split {
    fn add(&mut self, o: &Split) {
        self.user_ms += o.user_ms;
        self.sys_ms += o.sys_ms;
        self.guest_ms += o.guest_ms;
    }

    /// User and system µs per each of `n` units of work (None for none).
    pub fn per_unit_us(&self, n: f64) -> Option<(f64, f64)> {
        (n > 0.0).then(|| (self.user_ms * 1e3 / n, self.sys_ms * 1e3 / n))
    }

    /// The VMM's own time (user + system, guest excluded).
    pub fn vmm_ms(&self) -> f64 {
        self.user_ms + self.sys_ms
    }
}

/// One thread's use between two readings.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadUse {
    pub tid: u32,
    /// The name with a trailing `-NUMBER` removed (`iou-wrk-1234` → `iou-wrk`).
    pub role: String,
    pub split: Split,
    /// Started after the first reading.
    pub new: bool,
}

/// `name` without a trailing `-digits` suffix.
pub fn role(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((head, tail))
            if !head.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) =>
        {
            head.to_string()
        }
        _ => name.to_string(),
    }
}

fn split(start: Option<&ThreadCpu>, end: &ThreadCpu, tick: f64) -> Split {
    let zero = ThreadCpu::default();
    let s = start.unwrap_or(&zero);
    let du = end.utime.saturating_sub(s.utime) as f64;
    let ds = end.stime.saturating_sub(s.stime) as f64;
    let dg = end.gtime.saturating_sub(s.gtime) as f64;
    let total_ns = match (end.runtime_ns, start.map_or(Some(0), |s| s.runtime_ns)) {
        (Some(e), Some(b)) => e.saturating_sub(b) as f64,
        _ => (du + ds) * tick,
    };
    let guest_ns = (dg * tick).min(total_ns);
    let rest = total_ns - guest_ns;
    let (u, k) = ((du - dg).max(0.0), ds);
    // No tick landed outside the guest: the kernel's own rule for such
    // a thread (cputime_adjust) is to call all of it user time.
    let sys_ns = if u + k > 0.0 { rest * k / (u + k) } else { 0.0 };
    Split {
        user_ms: (rest - sys_ns) / 1e6,
        sys_ms: sys_ns / 1e6,
        guest_ms: guest_ns / 1e6,
    }
}

/// Every thread alive at the second reading, with what it used since the
/// first (all of its time if it started in between). Threads that exited
/// in between are lost: the caller compares with the process total.
pub fn usage(start: &[ThreadCpu], end: &[ThreadCpu]) -> Vec<ThreadUse> {
    let tick = tick_ns();
    end.iter()
        .map(|e| {
            let s = start.iter().find(|s| s.tid == e.tid);
            ThreadUse {
                tid: e.tid,
                role: role(&e.name),
                split: split(s, e, tick),
                new: s.is_none(),
            }
        })
        .collect()
}

/// The sum over threads.
pub fn totals(threads: &[ThreadUse]) -> Split {
    let mut t = Split::default();
    for th in threads {
        t.add(&th.split);
    }
    t
}

/// Sums by role, in order of first appearance.
pub fn by_role<'a>(threads: impl IntoIterator<Item = &'a ThreadUse>) -> Vec<(String, Split)> {
    let mut out: Vec<(String, Split)> = Vec::new();
    for th in threads {
        match out.iter_mut().find(|(r, _)| *r == th.role) {
            Some((_, s)) => s.add(&th.split),
            None => out.push((th.role.clone(), th.split)),
        }
    }
    out
}

/// The sum over threads between two readings, or None without the
/// second one.
pub fn between(start: &[ThreadCpu], end: &[ThreadCpu]) -> Option<Split> {
    (!end.is_empty()).then(|| totals(&usage(start, end)))
}

/// CPU by thread role between two readings, for progress lines:
/// `ROLE USER+SYS (guest GUEST)` in ms, for the roles that used more than
/// 0.5 ms, comma-separated.
pub fn roles_line(start: &[ThreadCpu], end: &[ThreadCpu]) -> String {
    by_role(&usage(start, end))
        .iter()
        .filter(|(_, c)| c.vmm_ms() + c.guest_ms > 0.5)
        .map(|(r, c)| {
            format!(
                "{r} {:.0}+{:.0} (guest {:.0})",
                c.user_ms, c.sys_ms, c.guest_ms
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Threads alive at the first reading but gone at the second.
pub fn exited(start: &[ThreadCpu], end: &[ThreadCpu]) -> usize {
    start
        .iter()
        .filter(|s| !end.iter().any(|e| e.tid == s.tid))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: u32, name: &str, u: u64, s: u64, g: u64, ns: Option<u64>) -> ThreadCpu {
        ThreadCpu {
            tid,
            name: name.into(),
            utime: u,
            stime: s,
            gtime: g,
            runtime_ns: ns,
        }
    }

    #[test]
    fn roles() {
        assert_eq!(role("iou-wrk-15648"), "iou-wrk");
        assert_eq!(role("blk0-q0"), "blk0-q0");
        assert_eq!(role("CPU 0/KVM"), "CPU 0/KVM");
        assert_eq!(role("-12"), "-12");
    }

    #[test]
    fn splits_guest_user_and_system() {
        let tick = tick_ns();
        // A vCPU thread: 30 ticks of runtime, 26 of them in the guest,
        // the rest half user half system (utime includes the guest).
        let a = t(1, "vcpu0", 10, 2, 10, Some((12.0 * tick) as u64));
        let b = t(1, "vcpu0", 38, 4, 36, Some((42.0 * tick) as u64));
        let u = usage(std::slice::from_ref(&a), std::slice::from_ref(&b));
        let s = u[0].split;
        let ms = tick / 1e6;
        assert!((s.guest_ms - 26.0 * ms).abs() < 1e-6);
        assert!((s.user_ms - 2.0 * ms).abs() < 1e-6, "{s:?}");
        assert!((s.sys_ms - 2.0 * ms).abs() < 1e-6, "{s:?}");
        assert!(!u[0].new);
        // A thread that started in between counts from zero; one with
        // runtime but no ticks is all user.
        let n = t(2, "iou-wrk-7", 0, 0, 0, Some(3_000_000));
        let u = usage(&[a], &[b, n]);
        assert!(u[1].new);
        assert_eq!(u[1].role, "iou-wrk");
        assert!((u[1].split.user_ms - 3.0).abs() < 1e-9);
        assert_eq!(totals(&u).guest_ms, s.guest_ms);
        assert_eq!(by_role(&u).len(), 2);
    }

    #[test]
    fn without_schedstat_uses_ticks() {
        let tick = tick_ns();
        let s = usage(&[], &[t(3, "x", 3, 1, 0, None)])[0].split;
        assert!((s.user_ms - 3.0 * tick / 1e6).abs() < 1e-6);
        assert!((s.sys_ms - tick / 1e6).abs() < 1e-6);
        assert_eq!(exited(&[t(9, "gone", 0, 0, 0, None)], &[]), 1);
    }
}
