//! The VMM's own instructions per request: each VMM runs a small `bench`
//! under `valgrind --tool=callgrind --collect-atstart=yes`, and two
//! baselines with the same disk: the guest doing nothing
//! (`probe.checks=none`, the boot) and the guest initialising the disk
//! without I/O (`probe.blk_ops=none`). Callgrind counts the instructions
//! the process executes in user space (all threads, run one at a time);
//! it does not see the kernel (syscalls, io_uring, KVM) nor the guest,
//! which runs under KVM_RUN as usual. The instructions of the `bench` run
//! minus a baseline's, divided by the requests the plan issues, are the
//! VMM's instructions per request. `callgrind_annotate` on the `bench`
//! and `blk-init` files gives the functions those instructions went to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{bench_plan, command, requests, Cache, MODES};
use crate::boot::Vmm;
use crate::proc::Timed;

/// The smaller benchmark run under callgrind.
pub const MIB: u64 = 16;
pub const IOS: u64 = 2000;

/// The requests of one callgrind `bench`.
pub fn bench_requests() -> u64 {
    requests(MIB, IOS)
}

/// What a callgrind run makes the guest do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// `probe.checks=none`: boot and power off.
    Boot,
    /// `probe.checks=blk probe.blk_ops=none`: also find and initialise the disk.
    Init,
    /// The small `bench`.
    Bench,
}

impl What {
    pub fn name(self) -> &'static str {
        match self {
            What::Boot => "boot",
            What::Init => "blk-init",
            What::Bench => "bench",
        }
    }

    pub fn plan(self, irq: &str) -> String {
        match self {
            What::Boot => "probe.checks=none probe.exit=poweroff".into(),
            What::Init => {
                format!(
                    "probe.checks=blk probe.blk_ops=none probe.blk_irq={irq} probe.exit=poweroff"
                )
            }
            What::Bench => bench_plan(MIB, IOS, irq, "poweroff"),
        }
    }

    /// The line that says the guest did it.
    fn verdict(self) -> &'static str {
        match self {
            What::Boot => "PROBE-SUMMARY pass=",
            What::Init => "PROBE-CHECK blk pass",
            What::Bench => "PROBE-CHECK blk-bench pass",
        }
    }
}

pub struct Setup<'a> {
    pub runs: usize,
    pub timeout: Duration,
    pub valgrind: PathBuf,
    pub annotate: Option<PathBuf>,
    pub vmms: &'a [Vmm],
    pub elf: &'a Path,
    pub image: &'a Path,
    /// Where callgrind writes its files.
    pub dir: &'a Path,
}

/// One run under callgrind.
#[derive(Debug, Clone)]
pub struct Run {
    pub vmm: &'static str,
    pub what: What,
    /// None for `boot`, which has no disk activity to vary.
    pub irq: Option<&'static str>,
    pub run: usize,
    /// Total instructions (`totals:` of the output file).
    pub ir: Result<u64, String>,
    pub secs: f64,
    pub file: PathBuf,
}

/// A function's instructions in `bench` minus those in `blk-init`.
#[derive(Debug, Clone)]
pub struct TopFn {
    pub function: String,
    pub object: String,
    pub delta: f64,
    pub per_request: f64,
    /// Of the whole difference between the two runs.
    pub share: f64,
}

/// The functions that grew most from `blk-init` to `bench`, for one VMM
/// and interrupt mode (run 1 of each).
#[derive(Debug, Clone)]
pub struct Top {
    pub vmm: &'static str,
    pub irq: &'static str,
    pub delta_total: f64,
    pub functions: Vec<TopFn>,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub runs: Vec<Run>,
    pub top: Vec<Top>,
    pub notes: Vec<String>,
}

fn one(setup: &Setup, vmm: &Vmm, what: What, irq: &'static str, run: usize) -> Run {
    let tag = match what {
        What::Boot => what.name().to_string(),
        _ => format!("{}-{irq}", what.name()),
    };
    let file = setup
        .dir
        .join(format!("callgrind.out.{}.{tag}.{run}", vmm.name()));
    let began = Instant::now();
    let ir = run_one(setup, vmm, what, irq, &file);
    Run {
        vmm: vmm.name(),
        what,
        irq: (what != What::Boot).then_some(irq),
        run,
        ir,
        secs: began.elapsed().as_secs_f64(),
        file,
    }
}

fn run_one(setup: &Setup, vmm: &Vmm, what: What, irq: &str, file: &Path) -> Result<u64, String> {
    let inner = command(
        vmm,
        setup.elf,
        setup.image,
        Cache::Writeback,
        &what.plan(irq),
    );
    let mut cmd = wrap(Command::new(&setup.valgrind), file, &inner);
    let want = what.verdict();
    count(
        &mut cmd,
        file,
        |l| l.starts_with(want) || l.starts_with("PROBE-FATAL"),
        setup.timeout,
    )
    .and_then(|(ir, line)| {
        if line.starts_with(want) {
            Ok(ir)
        } else {
            Err(line)
        }
    })
}

/// `base` (`valgrind`, or a wrapper that ends in it such as `ip netns exec
/// NS valgrind`) with callgrind's options, writing `file`, then `inner`'s
/// program and arguments: `inner` run under callgrind.
pub fn wrap(mut base: Command, file: &Path, inner: &Command) -> Command {
    base.args(["--tool=callgrind", "--collect-atstart=yes"])
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(inner.get_program())
        .args(inner.get_args());
    base
}

/// Runs `cmd` (made by `wrap`) until a stdout line `want` accepts, then
/// until it exits with success; returns the total instructions of `file`
/// and that line (the caller judges it).
pub fn count(
    cmd: &mut Command,
    file: &Path,
    want: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Result<(u64, String), String> {
    let mut child = Timed::spawn(cmd)?;
    let deadline = child.start + timeout;
    let line = match child.wait_line(want, deadline) {
        Ok((_, l)) => l,
        Err(why) => {
            return Err(format!(
                "no awaited line: {:?} ({})",
                why,
                child.finish_and_tail(6)
            ))
        }
    };
    if line.starts_with("PROBE-FATAL") {
        return Err(format!("{line} ({})", child.finish_and_tail(4)));
    }
    match child.wait_exit(deadline) {
        Ok((_, status)) if status.success() => {}
        Ok((_, status)) => {
            return Err(format!(
                "exited with {status} ({})",
                child.finish_and_tail(6)
            ))
        }
        Err(e) => return Err(format!("{e} ({})", child.finish_and_tail(6))),
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let ir = total_ir(&text).ok_or_else(|| format!("no totals: line in {}", file.display()))?;
    Ok((ir, line))
}

/// `totals:` (else `summary:`) of a callgrind output file.
pub fn total_ir(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    find("totals:").or_else(|| find("summary:"))
}

/// Runs everything, printing progress to stderr.
pub fn run(setup: &Setup) -> Outcome {
    let mut out = Outcome::default();
    let mut broken: Vec<&str> = Vec::new();
    let began = Instant::now();
    for run in 1..=setup.runs {
        for vmm in setup.vmms {
            let mut steps = vec![(What::Boot, MODES[0])];
            for irq in MODES {
                steps.push((What::Init, irq));
                steps.push((What::Bench, irq));
            }
            for (what, irq) in steps {
                if broken.contains(&vmm.name()) {
                    continue;
                }
                let r = one(setup, vmm, what, irq, run);
                let shown = match &r.ir {
                    Ok(ir) => format!("{ir} instructions"),
                    Err(e) => format!("FAILED: {e}"),
                };
                eprintln!(
                    "[blk] callgrind {run}/{} {} {}{}: {shown} ({:.1} s)",
                    setup.runs,
                    vmm.name(),
                    what.name(),
                    r.irq.map(|i| format!(" irq={i}")).unwrap_or_default(),
                    r.secs
                );
                if let Err(e) = &r.ir {
                    broken.push(vmm.name());
                    out.notes.push(format!(
                        "{} under callgrind failed ({} {}): {e}; its remaining callgrind runs were skipped.",
                        vmm.name(),
                        what.name(),
                        r.irq.unwrap_or("")
                    ));
                }
                out.runs.push(r);
            }
        }
    }
    eprintln!(
        "[blk] callgrind runs done in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    match &setup.annotate {
        Some(annotate) => {
            for vmm in setup.vmms {
                for irq in MODES {
                    let file = |what: What| {
                        out.runs
                            .iter()
                            .find(|r| {
                                r.vmm == vmm.name()
                                    && r.what == what
                                    && r.irq == Some(irq)
                                    && r.run == 1
                                    && r.ir.is_ok()
                            })
                            .map(|r| r.file.clone())
                    };
                    let (Some(bench), Some(init)) = (file(What::Bench), file(What::Init)) else {
                        continue;
                    };
                    match top(annotate, &bench, &init, 10) {
                        Ok((delta_total, functions)) => out.top.push(Top {
                            vmm: vmm.name(),
                            irq,
                            delta_total,
                            functions,
                        }),
                        Err(e) => out.notes.push(format!("callgrind_annotate: {e}")),
                    }
                }
            }
        }
        None => out
            .notes
            .push("callgrind_annotate not found: no per-function breakdown.".into()),
    }
    out
}

/// Self cost per function (`callgrind_annotate --inclusive=no`), every
/// function listed.
fn annotate(bin: &Path, file: &Path) -> Result<Vec<(String, u64)>, String> {
    let out = Command::new(bin)
        .args(["--inclusive=no", "--threshold=100"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            bin.display(),
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_annotate(&String::from_utf8_lossy(&out.stdout)))
}

/// The `COST (PCT%)  file:function [object]` lines of callgrind_annotate's
/// output (not the program total), as (`file:function [object]`, cost).
pub fn parse_annotate(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (num, rest) = l.split_once(char::is_whitespace)?;
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b',') {
                return None;
            }
            let cost: u64 = num.replace(',', "").parse().ok()?;
            let mut rest = rest.trim_start();
            if rest.starts_with('(') {
                rest = rest.split_once(')')?.1.trim_start();
            }
            (!rest.is_empty() && rest != "PROGRAM TOTALS").then(|| (rest.to_string(), cost))
        })
        .collect()
}

/// (function, object file name) from `file:function [object]`.
pub fn name_of(key: &str) -> (String, String) {
    let (head, object) = match key.rsplit_once(" [") {
        Some((h, o)) if o.ends_with(']') => (h, o.trim_end_matches(']')),
        _ => (key, ""),
    };
    let object = object.rsplit('/').next().unwrap_or(object).to_string();
    let function = match head.split_once(':') {
        Some((file, f))
            if !f.starts_with(':')
                && (file == "???" || file.contains('/') || file.contains('.')) =>
        {
            f
        }
        _ => head,
    };
    (function.to_string(), object)
}

/// The `n` functions whose self cost grew most from `base` to `file`,
/// and the whole difference.
fn top(bin: &Path, file: &Path, base: &Path, n: usize) -> Result<(f64, Vec<TopFn>), String> {
    let after = annotate(bin, file)?;
    let before = annotate(bin, base)?;
    let total = |v: &[(String, u64)]| v.iter().map(|(_, c)| *c as f64).sum::<f64>();
    let delta_total = total(&after) - total(&before);
    let mut diffs: Vec<(String, f64)> = after
        .iter()
        .map(|(k, c)| {
            let b = before.iter().find(|(bk, _)| bk == k).map_or(0, |(_, c)| *c);
            (k.clone(), *c as f64 - b as f64)
        })
        .collect();
    diffs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let req = bench_requests() as f64;
    Ok((
        delta_total,
        diffs
            .into_iter()
            .take(n)
            .map(|(k, d)| {
                let (function, object) = name_of(&k);
                TopFn {
                    function,
                    object,
                    delta: d,
                    per_request: d / req,
                    share: if delta_total > 0.0 {
                        d / delta_total
                    } else {
                        0.0
                    },
                }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_totals_and_annotations() {
        assert_eq!(
            total_ir("events: Ir\nsummary: 123\n\ntotals: 124\n"),
            Some(124)
        );
        assert_eq!(total_ir("summary: 9\n"), Some(9));
        assert_eq!(total_ir("events: Ir\n"), None);
        let text = "\
Timerange: Basic block 0 - 2968584
--------------------------------------------------------------------------------
14,485,486 (100.0%)  PROGRAM TOTALS
Ir                  file:function
2,368,291 (16.35%)  ???:vmm::boot::load_kernel [/work/main/target/release/utsuwa]
1,165,129 ( 8.04%)  ./malloc/./malloc/malloc.c:_int_free [/usr/lib/x86_64-linux-gnu/libc.so.6]
  743,548  ???:0x000000000076e5a0'2 [/usr/bin/qemu-system-x86_64]
";
        let v = parse_annotate(text);
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(v[0].1, 2_368_291);
        assert_eq!(
            name_of(&v[0].0),
            ("vmm::boot::load_kernel".into(), "utsuwa".into())
        );
        assert_eq!(name_of(&v[1].0), ("_int_free".into(), "libc.so.6".into()));
        assert_eq!(
            name_of(&v[2].0),
            ("0x000000000076e5a0'2".into(), "qemu-system-x86_64".into())
        );
        assert_eq!(
            name_of("<T as core::fmt::Debug>::fmt [/x/y]").0,
            "<T as core::fmt::Debug>::fmt"
        );
    }

    #[test]
    fn plans() {
        assert_eq!(
            What::Boot.plan("msix"),
            "probe.checks=none probe.exit=poweroff"
        );
        assert!(What::Init
            .plan("poll")
            .contains("probe.blk_ops=none probe.blk_irq=poll"));
        assert!(What::Bench
            .plan("msix")
            .contains("probe.blk_bench=16 probe.blk_bench_ios=2000"));
        assert_eq!(bench_requests(), 2513);
    }
}
