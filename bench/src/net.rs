//! The `net` benchmark: the probe's `probe.net_bench=FRAME` (guest→host
//! frames, host→guest frames, then echo requests to the host) on one
//! virtio-net device backed by a TAP, under utsuwa (`--net tap=..`) and
//! QEMU microvm (`virtio-net-pci` on a `tap` netdev, no vhost) alternately,
//! for each frame size and interrupt mode.
//!
//! Every run gets a network namespace of its own (`utsuwa-net-<pid>-<n>`)
//! holding the TAP; the VMM runs inside it (`ip netns exec`, which execs,
//! so the pid is the VMM's) and the host end of the protocol is the very
//! peer the network tests use (`tests/support/net_peer/`, compiled in
//! here), on an AF_PACKET socket opened inside the namespace. No frame can
//! leave it. The namespace is deleted after the run, on failure too, and
//! on SIGINT/SIGTERM/SIGHUP (`crate::cleanup`); one left by a killed
//! benchmark is swept by the next.
//!
//! The guest reports its rates and round-trip times; the harness reads the
//! VMM's CPU time (`blk::cpu`) when the device is initialised
//! (`PROBE-CHECK net`) and when the session ends (`PROBE net session`,
//! before the probe resets the device and utsuwa's worker exits), and
//! divides by the frames both ways. Under callgrind (`cgdiff`) each VMM
//! runs a small and a large benchmark: instructions per frame by
//! difference.
//!
//! Laid out for more socket-like devices beside it (vsock): the namespace
//! and VMM plumbing is `Plumbing`, the protocol the peer's.

pub mod report;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../tests/support/net_peer/mod.rs"]
pub mod peer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alternate;
use crate::blk::{callgrind, cpu};
use crate::boot::{Case as BootCase, Image, Vmm};
use crate::cgdiff;
use crate::cleanup;
use crate::guest;
use crate::proc::{self, ThreadCpu, Timed};

use peer::{NetNs, PeerConfig, PeerReport};

pub const MEM_MIB: u64 = 128;
pub const TAP: &str = "tap0";
pub const HOST_CIDR: &str = "10.0.2.2/24";
pub const HOST_IP: &str = "10.0.2.2";
pub const GUEST_IP: &str = "10.0.2.15";
pub const MAC: &str = "52:54:00:12:34:56";
/// Echo requests per run (few, so that they weigh little in the CPU per frame).
pub const PINGS: u64 = 200;
/// Frame sizes (Ethernet header included) and interrupt modes.
pub const FRAMES: [u32; 2] = [1514, 64];
pub const MODES: [&str; 2] = ["msix", "poll"];
/// Benchmark frames each way under callgrind, small and large run.
pub const CG_SMALL: u64 = 2000;
pub const CG_LARGE: u64 = 12000;
pub const CG_PINGS: u64 = 10;

/// One configuration both VMMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub frame: u32,
    pub irq: &'static str,
}

impl Case {
    pub fn name(&self) -> String {
        format!("{} B {}", self.frame, self.irq)
    }
}

/// The guest's plan.
pub fn plan(case: &Case, frames: u64, pings: u64) -> String {
    format!(
        "probe.checks=net probe.net_irq={} probe.net_ip={GUEST_IP} probe.net_peer={HOST_IP} \
         probe.net_bench={} probe.net_bench_frames={frames} probe.net_bench_pings={pings} \
         probe.exit=poweroff",
        case.irq, case.frame
    )
}

/// A namespace with the TAP, registered for deletion on a signal.
pub struct Plumbing {
    pub ns: NetNs,
}

impl Plumbing {
    pub fn new() -> Result<Plumbing, String> {
        let ns = NetNs::new().map_err(|e| format!("network namespace: {e}"))?;
        cleanup::add_namespace(ns.name());
        let p = Plumbing { ns };
        p.ns.add_tap(TAP, HOST_CIDR)
            .map_err(|e| format!("TAP in {}: {e}", p.ns.name()))?;
        Ok(p)
    }

    /// `base` (a VMM's program and arguments) run inside the namespace,
    /// with the TAP as its virtio-net device.
    pub fn vmm_command(&self, vmm: &Vmm, inner: &Command) -> Command {
        let mut cmd = self.ns.command(inner.get_program());
        cmd.args(inner.get_args());
        add_nic(vmm, &mut cmd);
        cmd
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        cleanup::remove_namespace(self.ns.name());
    }
}

fn add_nic(vmm: &Vmm, cmd: &mut Command) {
    match vmm {
        Vmm::Utsuwa(_) => {
            cmd.arg("--net").arg(format!("tap={TAP},mac={MAC}"));
        }
        Vmm::Qemu(_) => {
            cmd.args(["-name", "utsuwa-bench,debug-threads=on"]);
            cmd.arg("-netdev")
                .arg(format!("tap,id=n0,ifname={TAP},script=no,downscript=no"));
            cmd.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n0,mac={MAC},disable-legacy=on"
            ));
        }
    }
}

/// The VMM booting the probe with `plan`, without the NIC.
pub fn base_command(vmm: &Vmm, elf: &Path, plan: &str) -> Command {
    let case = BootCase {
        name: "net",
        image: Image::PvhElf,
        cpus: 1,
    };
    vmm.command_with_memory(&case, elf, plan, MEM_MIB)
}

/// The probe's `PROBE net-bench` line.
#[derive(Debug, Clone, Default)]
pub struct Bench {
    pub g2h_frames: f64,
    pub g2h_fps: f64,
    pub g2h_mbps: f64,
    pub h2g_frames: f64,
    pub h2g_fps: f64,
    pub h2g_mbps: f64,
    pub rtt_min_us: f64,
    pub rtt_avg_us: f64,
    pub rtt_max_us: f64,
    pub line: String,
}

impl Bench {
    pub fn parse(line: &str) -> Result<Bench, String> {
        let get = |key: &str| guest::number(line, key);
        Ok(Bench {
            g2h_frames: get("g2h_frames")?,
            g2h_fps: get("g2h_fps")?,
            g2h_mbps: get("g2h_mbps")?,
            h2g_frames: get("h2g_frames")?,
            h2g_fps: get("h2g_fps")?,
            h2g_mbps: get("h2g_mbps")?,
            rtt_min_us: get("rtt_min_us")?,
            rtt_avg_us: get("rtt_avg_us")?,
            rtt_max_us: get("rtt_max_us")?,
            line: line.to_string(),
        })
    }

    /// Frames both ways.
    pub fn frames(&self) -> f64 {
        self.g2h_frames + self.h2g_frames
    }
}

pub struct Setup {
    pub runs: usize,
    pub frames: u64,
    pub timeout: Duration,
    pub vmms: Vec<Vmm>,
    pub elf: PathBuf,
    pub cases: Vec<Case>,
}

/// One run of one VMM.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub bench: Option<Bench>,
    pub cpu_start: Vec<ThreadCpu>,
    pub cpu_end: Vec<ThreadCpu>,
    pub between_ms: f64,
    /// What the host end counted: guest→host frames, damaged ones, and
    /// its own timing of both directions (s).
    pub host_g2h: u64,
    pub host_g2h_bad: u64,
    pub host_g2h_secs: f64,
    pub host_h2g_secs: f64,
    pub error: Option<String>,
}

impl Sample {
    /// The VMM's CPU between the two readings.
    pub fn cpu(&self) -> Option<cpu::Split> {
        cpu::between(&self.cpu_start, &self.cpu_end)
    }

    /// CPU µs per frame (both directions): (user, system).
    pub fn per_frame_us(&self) -> Option<(f64, f64)> {
        self.cpu()?.per_unit_us(self.bench.as_ref()?.frames())
    }
}

alternate::sample!(Sample);

/// Everything one VMM produced for one case.
pub type Series = alternate::Series<Case, Sample>;

const FATAL: &str = "PROBE-FATAL";

fn timed_run(setup: &Setup, vmm: &Vmm, case: &Case, run: usize) -> Sample {
    let mut s = Sample {
        run,
        ..Default::default()
    };
    if let Err(e) = timed_run_into(setup, vmm, case, &mut s) {
        s.error = Some(e);
    }
    s
}

/// Starts the peer on the namespace's TAP.
fn start_peer(
    p: &Plumbing,
    timeout: Duration,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<PeerReport>), String> {
    let sock =
        p.ns.packet_socket(TAP)
            .map_err(|e| format!("AF_PACKET socket: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = PeerConfig {
        timeout,
        ..PeerConfig::default()
    };
    Ok((stop.clone(), peer::spawn_peer(sock, cfg, stop)))
}

fn timed_run_into(setup: &Setup, vmm: &Vmm, case: &Case, s: &mut Sample) -> Result<(), String> {
    let p = Plumbing::new()?;
    let (stop, peer) = start_peer(&p, setup.timeout)?;
    let inner = base_command(vmm, &setup.elf, &plan(case, setup.frames, PINGS));
    let result = (|| -> Result<(), String> {
        let mut child = Timed::spawn(&mut p.vmm_command(vmm, &inner))?;
        let pid = child.pid();
        let deadline = child.start + setup.timeout;
        let wait = |child: &mut Timed, prefix: &str| -> Result<String, String> {
            match child.wait_line(|l| l.starts_with(prefix) || l.starts_with(FATAL), deadline) {
                Ok((_, line)) if line.starts_with(FATAL) => {
                    Err(format!("guest: {line} ({})", child.finish_and_tail(4)))
                }
                Ok((_, line)) => Ok(line),
                Err(why) => Err(format!(
                    "no '{}': {why:?} ({})",
                    prefix.trim(),
                    child.finish_and_tail(6)
                )),
            }
        };
        let init = wait(&mut child, "PROBE-CHECK net ")?;
        let t0 = Instant::now();
        s.cpu_start = proc::thread_cpu(pid)?;
        if !init.starts_with("PROBE-CHECK net pass") {
            return Err(format!("device initialisation: {init}"));
        }
        // Before the probe resets the device (utsuwa's worker thread
        // ends then, and its CPU time with it).
        wait(&mut child, "PROBE net session ")?;
        s.cpu_end = proc::thread_cpu(pid)?;
        s.between_ms = t0.elapsed().as_secs_f64() * 1e3;
        let line = wait(&mut child, "PROBE net-bench ")?;
        s.bench = Some(Bench::parse(&line)?);
        let verdict = wait(&mut child, "PROBE-CHECK net-bench ")?;
        child.kill();
        if !verdict.starts_with("PROBE-CHECK net-bench pass") {
            return Err(verdict);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let r = peer.join().map_err(|_| "peer thread panicked")?;
    s.host_g2h = r.bench_g2h;
    s.host_g2h_bad = r.bench_g2h_bad;
    s.host_g2h_secs = r.bench_g2h_secs;
    s.host_h2g_secs = r.bench_h2g_secs;
    result?;
    if s.host_g2h_bad > 0 {
        return Err(format!("the host saw {} damaged frames", s.host_g2h_bad));
    }
    Ok(())
}

/// Runs every case `runs` times per VMM, VMMs alternating (the first one
/// swapped every run), printing progress to stderr.
pub fn run(setup: &Setup) -> Vec<Series> {
    let progress = |vmm: &Vmm, case: &Case, s: &Sample| {
        let shown = match (&s.error, &s.bench, s.per_frame_us()) {
            (Some(e), _, _) => format!("FAILED: {e}"),
            (None, Some(b), Some((u, k))) => format!(
                "g2h {:.0} frames/s {:.0} MB/s, h2g {:.0} frames/s {:.0} MB/s, \
                 rtt {:.0}/{:.0} µs; VMM {u:.2} + {k:.2} µs/frame",
                b.g2h_fps, b.g2h_mbps, b.h2g_fps, b.h2g_mbps, b.rtt_min_us, b.rtt_avg_us
            ),
            _ => "?".into(),
        };
        let roles = cpu::roles_line(&s.cpu_start, &s.cpu_end);
        format!("{} {}: {shown} [ms: {roles}]", vmm.name(), case.name())
    };
    alternate::run(
        "net",
        setup.runs,
        &setup.vmms,
        &setup.cases,
        |vmm, case, run| timed_run(setup, vmm, case, run),
        progress,
    )
}

/// The callgrind case: 1514-byte frames, MSI-X.
pub const CG_CASE: Case = Case {
    frame: 1514,
    irq: "msix",
};

/// Instructions per frame (both directions counted) for each VMM.
pub fn callgrind(setup: &Setup, cg: &cgdiff::Setup) -> Vec<cgdiff::Measured> {
    let items: Vec<cgdiff::Item> = setup
        .vmms
        .iter()
        .map(|v| cgdiff::Item {
            vmm: v.name(),
            case: CG_CASE.name(),
            small: 2 * CG_SMALL,
            large: 2 * CG_LARGE,
        })
        .collect();
    cgdiff::run("net", cg.runs, &items, &cg.dir, |item, size, _, file| {
        let vmm = item.vmm_in(&setup.vmms)?;
        let frames = size.pick(CG_SMALL, CG_LARGE);
        let p = Plumbing::new()?;
        let (stop, peer) = start_peer(&p, cg.timeout)?;
        let mut inner = base_command(vmm, &setup.elf, &plan(&CG_CASE, frames, CG_PINGS));
        add_nic(vmm, &mut inner);
        let mut cmd = callgrind::wrap(p.ns.command(&cg.valgrind), &file, &inner);
        let r = callgrind::count(
            &mut cmd,
            &file,
            |l| l.starts_with("PROBE-CHECK net-bench ") || l.starts_with(FATAL),
            cg.timeout,
        );
        stop.store(true, Ordering::Relaxed);
        let _ = peer.join();
        let (ir, line) = r?;
        if line.starts_with("PROBE-CHECK net-bench pass") {
            Ok(ir)
        } else {
            Err(format!("guest: {line}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bench_line() {
        let b = Bench::parse(
            "PROBE net-bench dev=00:01.0 frame=1514 g2h_frames=20000 g2h_host_count=20000 \
             g2h_us=100000 g2h_fps=200000 g2h_mbps=302 h2g_frames=20000 h2g_bad=0 h2g_us=50000 \
             h2g_fps=400000 h2g_mbps=605 window=256 pings=500 lost=0 rtt_min_us=40 \
             rtt_avg_us=55 rtt_max_us=300",
        )
        .unwrap();
        assert_eq!(b.g2h_fps, 200000.0);
        assert_eq!(b.h2g_mbps, 605.0);
        assert_eq!(b.rtt_avg_us, 55.0);
        assert_eq!(b.frames(), 40000.0);
        assert!(Bench::parse("PROBE net-bench g2h_fps=1").is_err());
    }

    #[test]
    fn plans_and_commands() {
        let p = plan(
            &Case {
                frame: 64,
                irq: "poll",
            },
            5000,
            20,
        );
        assert!(p.contains("probe.net_irq=poll"));
        assert!(p.contains("probe.net_bench=64 probe.net_bench_frames=5000"));
        assert!(p.contains("probe.net_bench_pings=20"));
        let mut q = Command::new("qemu");
        add_nic(&Vmm::Qemu("q".into()), &mut q);
        let args: Vec<String> = q.get_args().map(|a| a.to_string_lossy().into()).collect();
        assert!(args.contains(&"tap,id=n0,ifname=tap0,script=no,downscript=no".into()));
        let mut u = Command::new("utsuwa");
        add_nic(&Vmm::Utsuwa("u".into()), &mut u);
        let args: Vec<String> = u.get_args().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(args, ["--net", "tap=tap0,mac=52:54:00:12:34:56"]);
    }
}
