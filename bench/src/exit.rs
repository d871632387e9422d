//! The `exit` benchmark: the probe's `probe.exit_loop=KIND:N` (KIND pio,
//! mmio or notify) under each VMM, 1 vCPU, 128 MiB, a virtio-rng device
//! for `notify` to ring (utsuwa `--rng`, QEMU `virtio-rng-pci`).
//!
//! Each boot runs a warm-up loop of `WARMUP` exits, then the measured
//! loop of N. The guest reports its own ns per exit (TSC). The VMM's CPU
//! time per exit is the difference of two readings of every thread's
//! `/proc/PID/task/*/{stat,schedstat}` (split as in `blk`: guest time
//! out), taken when the warm-up's line and the measured loop's line
//! arrive, divided by N: the reading at the first line is taken while the
//! measured loop already runs, so a few hundred µs of it are missed (well
//! under 1% with the N used here).
//!
//! Under callgrind (`cgdiff`), each kind boots once with a loop of
//! `CG_SMALL` and once with `CG_LARGE` exits (no warm-up loop) and powers
//! off: the difference of the VMM's instructions over the difference of
//! exits is its user-space instructions per exit.

use std::path::PathBuf;
use std::time::Duration;

use crate::blk::{callgrind, cpu};
use crate::boot::{Case, Image, Vmm};
use crate::cgdiff;
use crate::guest;
use crate::proc::{self, Timed};
use crate::report::{self, Json};
use crate::stats::{self, median_cell, runs_ok, Metric};

pub const MEM_MIB: u64 = 128;
const WARMUP: u64 = 2000;
pub const KINDS: [&str; 3] = ["pio", "mmio", "notify"];
const CASE: Case = Case {
    name: "exit",
    image: Image::PvhElf,
    cpus: 1,
};

pub struct Setup {
    pub runs: usize,
    pub n: u64,
    pub timeout: Duration,
    pub vmms: Vec<Vmm>,
    pub elf: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub guest_ns_per_exit: Option<f64>,
    pub vmm_user_ns_per_exit: Option<f64>,
    pub vmm_sys_ns_per_exit: Option<f64>,
    pub line: Option<String>,
    pub error: Option<String>,
}

stats::outcome!(Sample);

fn plan(kind: &str, n: u64) -> String {
    format!("probe.checks=none probe.exit_loop={kind}:{WARMUP} probe.exit_loop={kind}:{n} probe.exit=halt")
}

/// Exits of the small and the large loop under callgrind.
pub const CG_SMALL: u64 = 2000;
pub const CG_LARGE: u64 = 22000;

fn cg_plan(kind: &str, n: u64) -> String {
    format!("probe.checks=none probe.exit_loop={kind}:{n} probe.exit=poweroff")
}

/// Instructions per exit of every kind and VMM.
pub fn callgrind(setup: &Setup, cg: &cgdiff::Setup) -> Vec<cgdiff::Measured> {
    let items: Vec<cgdiff::Item> = KINDS
        .iter()
        .flat_map(|kind| {
            setup.vmms.iter().map(|v| cgdiff::Item {
                vmm: v.name(),
                case: kind.to_string(),
                small: CG_SMALL,
                large: CG_LARGE,
            })
        })
        .collect();
    cgdiff::run("exit", cg.runs, &items, &cg.dir, |item, size, _, file| {
        let vmm = item.vmm_in(&setup.vmms)?;
        let n = size.pick(item.small, item.large);
        let inner = command(vmm, &setup.elf, &cg_plan(&item.case, n));
        let mut cmd = callgrind::wrap(std::process::Command::new(&cg.valgrind), &file, &inner);
        let is_loop = |l: &str| {
            l.starts_with("PROBE exit-loop ")
                || l.starts_with("PROBE-FATAL")
                || l.starts_with("PROBE-SUMMARY")
        };
        let (ir, line) = callgrind::count(&mut cmd, &file, is_loop, cg.timeout)?;
        match field(&line, "error") {
            None if line.starts_with("PROBE exit-loop ") => Ok(ir),
            _ => Err(format!("guest: {line}")),
        }
    })
}

fn command(vmm: &Vmm, elf: &std::path::Path, plan: &str) -> std::process::Command {
    let mut cmd = vmm.command_with_memory(&CASE, elf, plan, MEM_MIB);
    match vmm {
        Vmm::Utsuwa(_) => {
            cmd.arg("--rng");
        }
        Vmm::Qemu(_) => {
            cmd.args(["-device", "virtio-rng-pci,disable-legacy=on"]);
        }
    }
    cmd
}

fn field(line: &str, key: &str) -> Option<String> {
    guest::field(line, key).map(str::to_string)
}

fn one_run(setup: &Setup, vmm: &Vmm, kind: &str, run: usize) -> Sample {
    let mut s = Sample {
        run,
        ..Default::default()
    };
    let mut child = match Timed::spawn(&mut command(vmm, &setup.elf, &plan(kind, setup.n))) {
        Ok(c) => c,
        Err(e) => {
            s.error = Some(e);
            return s;
        }
    };
    let deadline = child.start + setup.timeout;
    // A probe without exit loops says `plan fail` and goes on to its
    // summary: stop there rather than at the time limit.
    let is_loop = |l: &str| {
        l.starts_with("PROBE exit-loop ")
            || l.starts_with("PROBE-FATAL")
            || l.starts_with("PROBE-CHECK plan fail")
            || l.starts_with("PROBE-SUMMARY")
    };
    let first = child.wait_line(is_loop, deadline);
    let cpu0 = proc::thread_cpu(child.pid());
    let second = match first {
        Ok(_) => child.wait_line(is_loop, deadline),
        Err(e) => Err(e),
    };
    let cpu1 = proc::thread_cpu(child.pid());
    let line = match second {
        Ok((_, line)) => line,
        Err(why) => {
            s.error = Some(format!(
                "no exit-loop line: {:?} ({})",
                why,
                child.finish_and_tail(4)
            ));
            return s;
        }
    };
    child.kill();
    let not_loop = !line.starts_with("PROBE exit-loop ");
    if let Some(e) = field(&line, "error").or_else(|| not_loop.then(|| line.clone())) {
        s.error = Some(format!("guest: {e}"));
        s.line = Some(line);
        return s;
    }
    s.guest_ns_per_exit = field(&line, "ns_per_exit").and_then(|v| v.parse().ok());
    if let (Ok(a), Ok(b)) = (cpu0, cpu1) {
        let t = cpu::totals(&cpu::usage(&a, &b));
        let n = setup.n as f64;
        s.vmm_user_ns_per_exit = Some(t.user_ms * 1e6 / n);
        s.vmm_sys_ns_per_exit = Some(t.sys_ms * 1e6 / n);
    }
    s.line = Some(line);
    s
}

pub struct Series {
    pub vmm: &'static str,
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

pub fn run(setup: &Setup) -> Vec<Series> {
    let mut out = Vec::new();
    for kind in KINDS {
        for vmm in &setup.vmms {
            let mut series = Series {
                vmm: vmm.name(),
                kind,
                samples: vec![],
            };
            for run in 1..=setup.runs {
                let s = one_run(setup, vmm, kind, run);
                let shown = match &s.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => format!(
                        "guest {:.0} ns/exit, VMM user {:.0} + system {:.0} ns/exit",
                        s.guest_ns_per_exit.unwrap_or(f64::NAN),
                        s.vmm_user_ns_per_exit.unwrap_or(f64::NAN),
                        s.vmm_sys_ns_per_exit.unwrap_or(f64::NAN)
                    ),
                };
                eprintln!("[exit] {} {kind} {run}/{}: {shown}", vmm.name(), setup.runs);
                let failed = s.error.is_some();
                series.samples.push(s);
                if failed && series.samples.iter().all(|s| s.error.is_some()) && run >= 2 {
                    break;
                }
            }
            out.push(series);
        }
    }
    out
}

const METRICS: [Metric<Sample>; 4] = [
    ("guest_ns_per_exit", |s| s.guest_ns_per_exit),
    ("vmm_ns_per_exit", |s| {
        Some(s.vmm_user_ns_per_exit? + s.vmm_sys_ns_per_exit?)
    }),
    ("vmm_user_ns_per_exit", |s| s.vmm_user_ns_per_exit),
    ("vmm_sys_ns_per_exit", |s| s.vmm_sys_ns_per_exit),
];

pub fn render(
    date: &str,
    setup: &Setup,
    env: &[(String, String)],
    series: &[Series],
    cg: &Result<Vec<cgdiff::Measured>, String>,
) -> (String, Json) {
    let mut md = String::new();
    md.push_str("# Exit cost: the probe's exit loops\n\n");
    md.push_str(&format!(
        "{date}; {} runs per kind and VMM, N = {} exits after {WARMUP} warm-up exits; \
         1 vCPU, {MEM_MIB} MiB, a virtio-rng device. Reproduce: \
         `cargo run --release -p utsuwa-bench -- exit --runs {}` (`--no-callgrind` \
         without the instruction counts).\n\n",
        setup.runs, setup.n, setup.runs
    ));
    let mut rows = Vec::new();
    for s in series {
        let io = s
            .samples
            .iter()
            .find_map(|x| x.line.as_deref().and_then(|l| field(l, "io")))
            .unwrap_or_default();
        let mut row = vec![s.kind.to_string(), s.vmm.to_string()];
        row.extend(
            METRICS
                .iter()
                .map(|(_, f)| median_cell(stats::summarise(&s.samples, f), 0)),
        );
        row.extend([io, runs_ok(&s.samples)]);
        rows.push(row);
    }
    md.push_str(&report::table(
        &[
            "exit",
            "VMM",
            "guest ns/exit",
            "VMM CPU ns/exit",
            "user",
            "system",
            "port I/O path",
            "runs ok",
        ],
        &rows,
    ));
    md.push_str(
        "\n- `pio`: `out` to port 0x510 (no device): to the VMM's userspace each time; on PVM \
         ring 3 also takes a #GP into the probe's ring-0 gate (`io=gate`). `mmio`: 4-byte write \
         to 0xd0000000 (no BAR): to userspace. `notify`: virtio queue 0 doorbell of the rng \
         device (reset): an ioeventfd if the VMM registered one, else to userspace (QEMU \
         registers its ioeventfds only at DRIVER_OK, so for QEMU this is an MMIO exit to \
         userspace; utsuwa keeps them while the device is reset).\n\
         - Guest ns/exit: the probe's TSC over the loop. VMM CPU: every VMM thread's CPU time \
         (exact `schedstat` runtime, guest time split off by `stat` ticks as in `blk`) over \
         the measured loop, divided by N. On this PVM host the system part includes PVM's \
         world switch and emulation: only the user part carries over to VT-x/AMD-V.\n",
    );
    md.push_str(&format!(
        "\n## VMM instructions per exit (callgrind, user space only)\n\n\
         Each kind boots under `valgrind --tool=callgrind` with a loop of {CG_SMALL} and of \
         {CG_LARGE} exits (`probe.checks=none probe.exit_loop=KIND:N probe.exit=poweroff`); \
         instructions per exit = (Ir(large) − Ir(small)) / {}: boot and teardown cancel \
         out. All of the VMM's threads in user space; not the kernel (KVM, PVM, syscalls) \
         and not the guest. Median of each size; min–max over runs paired by number.\n\n",
        CG_LARGE - CG_SMALL
    ));
    let cg_json = cgdiff::section(&mut md, cg, "exit", |_| String::new());
    report::failures(
        &mut md,
        series
            .iter()
            .map(|s| (format!("{} {}", s.vmm, s.kind), &s.samples[..])),
    );
    md.push_str(&report::environment(env));
    let results = series
        .iter()
        .map(|s| {
            report::series_json(
                vec![("kind", Json::str(s.kind)), ("vmm", Json::str(s.vmm))],
                &s.samples,
                &METRICS,
                |x| vec![("line", Json::opt_str(x.line.as_deref()))],
            )
        })
        .collect();
    let json = Json::obj([
        ("benchmark", Json::str("exit")),
        ("date", Json::str(date)),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(setup.runs as f64)),
                ("n", Json::Num(setup.n as f64)),
                ("warmup", Json::Num(WARMUP as f64)),
                ("memory_mib", Json::Num(MEM_MIB as f64)),
            ]),
        ),
        ("environment", report::environment_json(env)),
        ("results", Json::Arr(results)),
        ("callgrind", cg_json),
    ]);
    (md, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loop_line() {
        let l = "PROBE exit-loop kind=pio n=20000 us=1076 ns_per_exit=53807 port=0x510 io=gate";
        assert_eq!(field(l, "ns_per_exit").as_deref(), Some("53807"));
        assert_eq!(field(l, "io").as_deref(), Some("gate"));
        assert_eq!(field(l, "n").as_deref(), Some("20000"));
        assert_eq!(field(l, "error"), None);
        assert!(plan("mmio", 5).contains("probe.exit_loop=mmio:2000 probe.exit_loop=mmio:5"));
    }
}
