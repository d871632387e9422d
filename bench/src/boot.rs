//! The `boot` benchmark: utsuwa and QEMU microvm, alternating, boot the
//! same test guest (`probe`) in three cases and are timed from just before
//! `spawn()` to the guest's first line (`PROBE boot entry=...`, the marker)
//! and to the VMM's exit after the guest powers off. Separate runs with a
//! halting guest measure the memory the VMM itself keeps resident.

pub mod memory;
pub mod report;

pub use memory::MemSample;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proc::Timed;

/// Guest RAM for every case.
pub const MEM_MIB: u64 = 256;
/// The guest's first line.
pub const MARKER: &str = "PROBE boot ";

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
    Case {
        name: "pvh-1cpu",
        image: Image::PvhElf,
        cpus: 1,
    },
    Case {
        name: "pvh-4cpu",
        image: Image::PvhElf,
        cpus: 4,
    },
    Case {
        name: "bzimage-1cpu",
        image: Image::BzImage,
        cpus: 1,
    },
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
        self.command_with_memory(case, kernel, plan, MEM_MIB)
    }

    /// As `command`, with `mem_mib` MiB of guest RAM.
    pub fn command_with_memory(
        &self,
        case: &Case,
        kernel: &Path,
        plan: &str,
        mem_mib: u64,
    ) -> Command {
        let cpus = case.cpus.to_string();
        let mem = format!("{mem_mib}M");
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
                cmd.args([
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-serial",
                    "stdio",
                ]);
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
    let mut sample = Sample {
        run,
        ..Default::default()
    };
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
            sample.error = Some(format!(
                "{} ({})",
                why.no_marker(),
                child.finish_and_tail(4)
            ));
            return sample;
        }
    }
    match child.wait_exit(deadline) {
        Ok((at, status)) if status.success() => sample.exit_ms = Some(ms(at)),
        Ok((_, status)) => {
            sample.error = Some(format!(
                "exited with {status} ({})",
                child.finish_and_tail(4)
            ))
        }
        Err(e) => sample.error = Some(format!("no exit: {e} ({})", child.finish_and_tail(4))),
    }
    sample
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `entry=X` from the marker line.
fn entry_of(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("entry="))
        .map(str::to_string)
}

/// A case that failed this many times in a row is not run again: its
/// remaining runs are reported as skipped (a broken combination would
/// otherwise cost the time limit on every run).
const GIVE_UP_AFTER: usize = 3;

fn failing(samples: &[Sample]) -> bool {
    samples.len() >= GIVE_UP_AFTER
        && samples
            .iter()
            .rev()
            .take(GIVE_UP_AFTER)
            .all(|s| s.error.is_some())
}

/// Runs the whole benchmark, printing progress to stderr.
pub fn run(setup: &Setup) -> Vec<Series> {
    let mut series: Vec<Series> = CASES
        .iter()
        .flat_map(|case| {
            setup.vmms.iter().map(|v| Series {
                vmm: v.name(),
                case: *case,
                samples: vec![],
                memory: vec![],
            })
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
                    Sample {
                        run,
                        error,
                        ..Default::default()
                    }
                } else {
                    timed_run(setup, vmm, case, run)
                };
                let shown = match (&s.error, s.marker_ms, s.exit_ms) {
                    (Some(e), _, _) => format!("FAILED: {e}"),
                    (None, Some(m), Some(x)) => format!("marker {m:.1} ms, exit {x:.1} ms"),
                    _ => "?".into(),
                };
                eprintln!(
                    "[boot] {run}/{} {} {}: {shown}",
                    setup.runs,
                    vmm.name(),
                    case.name
                );
                series[index(c, v)].samples.push(s);
            }
        }
    }
    for run in 1..=setup.memory_runs {
        for (c, case) in CASES.iter().enumerate() {
            for (v, vmm) in setup.vmms.iter().enumerate() {
                let m = if series[index(c, v)]
                    .samples
                    .iter()
                    .all(|s| s.error.is_some())
                {
                    Err("skipped: every timed run failed".to_string())
                } else {
                    memory::memory_run(setup, vmm, case, run)
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
                eprintln!(
                    "[boot] memory {run}/{} {} {}: {shown}",
                    setup.memory_runs,
                    vmm.name(),
                    case.name
                );
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

    #[test]
    fn reads_the_entry() {
        assert_eq!(entry_of("PROBE boot entry=pvh").as_deref(), Some("pvh"));
        assert_eq!(entry_of("PROBE boot x=1"), None);
    }
}
