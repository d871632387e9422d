//! The `boot` benchmark: utsuwa and QEMU microvm, alternating, boot the
//! same test guest (`probe`) in three cases and are timed from just before
//! `spawn()` to the guest's first line (`PROBE boot entry=...`, the marker)
//! and to the VMM's exit after the guest powers off. Separate runs with a
//! halting guest measure the memory the VMM itself keeps resident.

pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proc::{self, LineWait, Mapping, Timed};

/// Guest RAM for every case.
pub const MEM_MIB: u64 = 256;
/// The guest's first line.
pub const MARKER: &str = "PROBE boot ";
/// How long after the marker the memory is read: the guest halts right
/// after it, so this only lets the VMM finish what the marker triggered.
const SETTLE: Duration = Duration::from_millis(200);

/// Which guest image a case boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// The ELF with a PVH note.
    PvhElf,
    /// The bzImage (64-bit Linux boot protocol).
    BzImage,
}

/// One configuration both VMMs boot.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub image: Image,
    pub cpus: u32,
}

pub const CASES: [Case; 3] = [
    Case { name: "pvh-1cpu", image: Image::PvhElf, cpus: 1 },
    Case { name: "pvh-4cpu", image: Image::PvhElf, cpus: 4 },
    Case { name: "bzimage-1cpu", image: Image::BzImage, cpus: 1 },
];

/// A VMM under test and its binary.
#[derive(Debug, Clone)]
pub enum Vmm {
    Utsuwa(PathBuf),
    Qemu(PathBuf),
}

impl Vmm {
    pub fn name(&self) -> &'static str {
        match self {
            Vmm::Utsuwa(_) => "utsuwa",
            Vmm::Qemu(_) => "qemu",
        }
    }

    /// The command that boots `kernel` with `case`'s vCPUs and `plan` as
    /// the guest's command line.
    pub fn command(&self, case: &Case, kernel: &Path, plan: &str) -> Command {
        let cpus = case.cpus.to_string();
        let mem = format!("{MEM_MIB}M");
        match self {
            Vmm::Utsuwa(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg("run").arg("--kernel").arg(kernel);
                cmd.args(["--cpus", &cpus, "--memory", &mem, "--cmdline", plan]);
                cmd
            }
            Vmm::Qemu(bin) => {
                let mut cmd = Command::new(bin);
                cmd.args(["-M", "microvm,pcie=on,acpi=on,rtc=on", "-enable-kvm"]);
                // PVM's KVM rejects the arch-capabilities MSR QEMU would set.
                cmd.args(["-cpu", "host,-arch-capabilities", "-m", &mem, "-smp", &cpus]);
                cmd.args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"]);
                cmd.arg("-kernel").arg(kernel).args(["-append", plan]);
                cmd
            }
        }
    }
}

/// What the benchmark runs on.
pub struct Setup {
    pub runs: usize,
    pub memory_runs: usize,
    pub timeout: Duration,
    pub vmms: Vec<Vmm>,
    pub elf: PathBuf,
    pub bzimage: PathBuf,
}

impl Setup {
    fn kernel(&self, case: &Case) -> &Path {
        match case.image {
            Image::PvhElf => &self.elf,
            Image::BzImage => &self.bzimage,
        }
    }
}

/// One timed boot.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub marker_ms: Option<f64>,
    pub exit_ms: Option<f64>,
    /// The `entry=` the guest reported.
    pub entry: Option<String>,
    pub error: Option<String>,
}

/// One memory reading of a VMM with a halted guest; sizes in KiB.
#[derive(Debug, Clone, Default)]
pub struct MemSample {
    pub run: usize,
    /// Rss summed over every mapping but guest RAM.
    pub overhead_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    /// Rss of the guest RAM mapping(s): guest pages touched so far.
    pub guest_rss_kb: u64,
    /// The mappings taken for guest RAM, as `start-end size perms`.
    pub guest_maps: Vec<String>,
    pub threads: u64,
    pub children: usize,
}

/// Everything one VMM produced for one case.
#[derive(Debug, Clone)]
pub struct Series {
    pub vmm: &'static str,
    pub case: Case,
    pub samples: Vec<Sample>,
    pub memory: Vec<Result<MemSample, String>>,
}

/// The guest plan for the timed runs and the memory runs.
const PLAN_POWEROFF: &str = "probe.checks=none probe.exit=poweroff";
const PLAN_HALT: &str = "probe.checks=none probe.exit=halt";

/// Boots once to power-off: times the marker and the exit.
fn timed_run(setup: &Setup, vmm: &Vmm, case: &Case, run: usize) -> Sample {
    let mut sample = Sample { run, ..Default::default() };
    let mut cmd = vmm.command(case, setup.kernel(case), PLAN_POWEROFF);
    let mut child = match Timed::spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            sample.error = Some(e);
            return sample;
        }
    };
    let deadline = child.start + setup.timeout;
    match child.wait_line(|l| l.starts_with(MARKER), deadline) {
        Ok((at, line)) => {
            sample.marker_ms = Some(ms(at));
            sample.entry = entry_of(&line);
        }
        Err(why) => {
            let what = match why {
                LineWait::Closed => "no marker: output ended",
                LineWait::Timeout => "no marker within the time limit: killed",
            };
            sample.error = Some(format!("{what} ({})", child.finish_and_tail(4)));
            return sample;
        }
    }
    match child.wait_exit(deadline) {
        Ok((at, status)) if status.success() => sample.exit_ms = Some(ms(at)),
        Ok((_, status)) => {
            sample.error = Some(format!("exited with {status} ({})", child.finish_and_tail(4)))
        }
        Err(e) => sample.error = Some(format!("no exit: {e} ({})", child.finish_and_tail(4))),
    }
    sample
}

/// Boots once with a halting guest and reads the VMM's memory once the
/// marker is out (plus `SETTLE`), then kills it.
fn memory_run(setup: &Setup, vmm: &Vmm, case: &Case, run: usize) -> Result<MemSample, String> {
    let mut cmd = vmm.command(case, setup.kernel(case), PLAN_HALT);
    let mut child = Timed::spawn(&mut cmd)?;
    let deadline = child.start + setup.timeout;
    if let Err(why) = child.wait_line(|l| l.starts_with(MARKER), deadline) {
        let what = match why {
            LineWait::Closed => "no marker: output ended",
            LineWait::Timeout => "no marker within the time limit: killed",
        };
        return Err(format!("{what} ({})", child.finish_and_tail(4)));
    }
    std::thread::sleep(SETTLE);
    let pid = child.pid();
    let maps = proc::smaps(pid);
    let threads = proc::threads(pid);
    let children = proc::children(pid);
    child.kill();
    let maps = maps?;
    let guest = guest_ram(&maps, MEM_MIB << 10)
        .ok_or_else(|| format!("no anonymous read-write mapping(s) of {MEM_MIB} MiB: guest RAM not found"))?;
    let rss_kb: u64 = maps.iter().map(|m| m.rss_kb).sum();
    let guest_rss_kb: u64 = guest.iter().map(|&i| maps[i].rss_kb).sum();
    Ok(MemSample {
        run,
        overhead_kb: rss_kb - guest_rss_kb,
        rss_kb,
        pss_kb: maps.iter().map(|m| m.pss_kb).sum(),
        guest_rss_kb,
        guest_maps: guest
            .iter()
            .map(|&i| {
                let m = &maps[i];
                format!("{:x}-{:x} {} KiB {}", m.start, m.end, m.size_kb, m.perms)
            })
            .collect(),
        threads: threads?,
        children: children?.len(),
    })
}

/// The indices of the mappings that hold guest RAM of `guest_kb` KiB.
///
/// Both VMMs give guest RAM anonymous private memory of its exact size:
/// utsuwa one `mmap` per RAM region (vm-memory's `MmapRegion`, with
/// MAP_NORESERVE; two regions only above 3 GiB, split around the 32-bit
/// hole), QEMU one RAM block that it first reserves as PROT_NONE and then
/// maps read-write, leaving a PROT_NONE guard page after it. In smaps they
/// are `rw-p` lines with no path. Nothing else either VMM maps read-write
/// comes near that size (glibc arenas: 64 MiB reserved mostly as `---p`;
/// thread stacks: 2-8 MiB), so the rule is: the largest anonymous `rw`
/// mappings, biggest first, until they add up to the guest size. The
/// kernel may merge a neighbouring anonymous mapping with identical flags
/// into a RAM mapping, which is why the sum may exceed the size a little
/// (the report lists the sizes taken, so that shows). None when they never
/// add up, or it takes more than two mappings.
pub fn guest_ram(maps: &[Mapping], guest_kb: u64) -> Option<Vec<usize>> {
    let mut anon: Vec<usize> = (0..maps.len())
        .filter(|&i| maps[i].path.is_empty() && maps[i].perms.starts_with("rw"))
        .collect();
    anon.sort_by_key(|&i| std::cmp::Reverse(maps[i].size_kb));
    let mut taken = Vec::new();
    let mut total = 0;
    for i in anon.into_iter().take(2) {
        taken.push(i);
        total += maps[i].size_kb;
        if total >= guest_kb {
            return Some(taken);
        }
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `entry=X` from the marker line.
fn entry_of(line: &str) -> Option<String> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix("entry=")).map(str::to_string)
}

/// A case that failed this many times in a row is not run again: its
/// remaining runs are reported as skipped (a broken combination would
/// otherwise cost the time limit on every run).
const GIVE_UP_AFTER: usize = 3;

fn failing(samples: &[Sample]) -> bool {
    samples.len() >= GIVE_UP_AFTER && samples.iter().rev().take(GIVE_UP_AFTER).all(|s| s.error.is_some())
}

/// Runs the whole benchmark, printing progress to stderr.
pub fn run(setup: &Setup) -> Vec<Series> {
    let mut series: Vec<Series> = CASES
        .iter()
        .flat_map(|case| {
            setup.vmms.iter().map(|v| Series { vmm: v.name(), case: *case, samples: vec![], memory: vec![] })
        })
        .collect();
    let index = |case: usize, vmm: usize| case * setup.vmms.len() + vmm;
    let began = Instant::now();
    for run in 1..=setup.runs {
        for (c, case) in CASES.iter().enumerate() {
            // Alternate which VMM goes first, so that neither always
            // follows the other's cache and page-cache effects.
            let mut order: Vec<usize> = (0..setup.vmms.len()).collect();
            if run % 2 == 0 {
                order.reverse();
            }
            for &v in &order {
                let vmm = &setup.vmms[v];
                let done = &series[index(c, v)].samples;
                let s = if failing(done) {
                    let error = Some(format!("skipped: the last {GIVE_UP_AFTER} runs failed"));
                    Sample { run, error, ..Default::default() }
                } else {
                    timed_run(setup, vmm, case, run)
                };
                let shown = match (&s.error, s.marker_ms, s.exit_ms) {
                    (Some(e), _, _) => format!("FAILED: {e}"),
                    (None, Some(m), Some(x)) => format!("marker {m:.1} ms, exit {x:.1} ms"),
                    _ => "?".into(),
                };
                eprintln!("[boot] {run}/{} {} {}: {shown}", setup.runs, vmm.name(), case.name);
                series[index(c, v)].samples.push(s);
            }
        }
    }
    for run in 1..=setup.memory_runs {
        for (c, case) in CASES.iter().enumerate() {
            for (v, vmm) in setup.vmms.iter().enumerate() {
                let m = if series[index(c, v)].samples.iter().all(|s| s.error.is_some()) {
                    Err("skipped: every timed run failed".to_string())
                } else {
                    memory_run(setup, vmm, case, run)
                };
                let shown = match &m {
                    Ok(m) => format!(
                        "overhead {:.1} MiB (RSS {:.1}, PSS {:.1}, threads {}, children {})",
                        mib(m.overhead_kb),
                        mib(m.rss_kb),
                        mib(m.pss_kb),
                        m.threads,
                        m.children
                    ),
                    Err(e) => format!("FAILED: {e}"),
                };
                eprintln!("[boot] memory {run}/{} {} {}: {shown}", setup.memory_runs, vmm.name(), case.name);
                series[index(c, v)].memory.push(m);
            }
        }
    }
    eprintln!("[boot] done in {:.1} s", began.elapsed().as_secs_f64());
    series
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(size_kb: u64, perms: &str, path: &str) -> Mapping {
        Mapping { size_kb, perms: perms.into(), path: path.into(), ..Default::default() }
    }

    #[test]
    fn finds_guest_ram() {
        let maps = vec![
            map(2048, "rw-p", ""),
            map(65404, "---p", ""),
            map(262144, "rw-p", ""),
            map(300000, "r-xp", "/usr/bin/qemu"),
        ];
        assert_eq!(guest_ram(&maps, 262144), Some(vec![2]));
        // Split around the 32-bit hole.
        let split = vec![map(3 << 20, "rw-p", ""), map(1 << 20, "rw-p", ""), map(8192, "rw-p", "")];
        assert_eq!(guest_ram(&split, 4 << 20), Some(vec![0, 1]));
        assert_eq!(guest_ram(&maps[..2], 262144), None);
    }

    #[test]
    fn reads_the_entry() {
        assert_eq!(entry_of("PROBE boot entry=pvh").as_deref(), Some("pvh"));
        assert_eq!(entry_of("PROBE boot x=1"), None);
    }
}
