//! The `vsock` benchmark: the probe's `probe.vsock_bench=BYTES` stream
//! (guest→host BYTES, then host→guest BYTES, on one connection to host
//! port 5000) under utsuwa's `--vsock cid=N,socket=PATH` device, for two
//! packet sizes, with the host end in this process (`peer`).
//!
//! The guest reports both rates and its packet counters (`PROBE vsock
//! stats rx_pkts= tx_pkts=`: every packet of the check, data and control,
//! as the driver counted them); the harness reads the VMM's CPU time
//! (`blk::cpu`) when the device is initialised (`PROBE vsock dev=`) and
//! when the guest prints its counters (before it resets the device), and
//! divides by those packets. Under callgrind (`cgdiff`) utsuwa moves a
//! small and a large stream: instructions per packet by difference, with
//! the packet counts the guest reported in those runs.
//!
//! QEMU's equivalent is `vhost-vsock-pci`, which needs the host's
//! `/dev/vhost-vsock`; without it QEMU is not run and the report says so.
//! With it, QEMU runs the same plan against an AF_VSOCK listener (not
//! under callgrind: vhost moves the data in a kernel worker).

pub mod peer;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alternate;
use crate::blk::cpu;
use crate::boot::{Case as BootCase, Image, Vmm};
use crate::cgdiff;
use crate::guest::number as field;
use crate::proc::{self, ThreadCpu, Timed};
use crate::stats::Summary;

pub const MEM_MIB: u64 = 128;
/// The guest's CID and the host port the benchmark connects to.
pub const CID: u32 = 3;
pub const PORT: u32 = 5000;
/// The receive buffer each guest connection advertises (the device's own is 256 KiB).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload per packet both ways (`vsock_pkt` and `vsock_rx_buf`).
pub const PKTS: [u32; 2] = [65536, 4096];
/// Stream sizes under callgrind, each way (MiB).
pub const CG_SMALL_MIB: u64 = 8;
pub const CG_LARGE_MIB: u64 = 40;
/// Where QEMU's vhost-vsock needs to be.
pub const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// Why QEMU's vhost-vsock cannot run here, or None.
pub fn vhost_missing() -> Option<String> {
    (!Path::new(VHOST_VSOCK).exists()).then(|| format!("no {VHOST_VSOCK}"))
}

/// One configuration: the largest payload per packet both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub pkt: u32,
}

impl Case {
    pub fn name(&self) -> String {
        format!("{} KiB packets", self.pkt / 1024)
    }
}

/// The guest's plan for a stream of `bytes` each way.
pub fn plan(case: &Case, bytes: u64, phase_ms: u64) -> String {
    format!(
        "probe.checks=vsock probe.vsock_cid={CID} probe.vsock_connect={PORT} \
         probe.vsock_bytes=0 probe.vsock_bench={bytes} probe.vsock_pkt={p} \
         probe.vsock_rx_buf={p} probe.vsock_buf_alloc={BUF_ALLOC} probe.vsock_ms={phase_ms} \
         probe.exit=poweroff",
        p = case.pkt
    )
}

/// The VMM booting the probe with `plan` and a vsock device whose host
/// side is `socket` (utsuwa) or the host's vhost-vsock (QEMU).
pub fn command(vmm: &Vmm, elf: &Path, plan: &str, socket: &Path) -> Command {
    let case = BootCase {
        name: "vsock",
        image: Image::PvhElf,
        cpus: 1,
    };
    let mut cmd = vmm.command_with_memory(&case, elf, plan, MEM_MIB);
    match vmm {
        Vmm::Utsuwa(_) => {
            cmd.arg("--vsock")
                .arg(format!("cid={CID},socket={}", socket.display()));
        }
        Vmm::Qemu(_) => {
            cmd.args(["-name", "utsuwa-bench,debug-threads=on", "-device"])
                .arg(format!("vhost-vsock-pci,guest-cid={CID},disable-legacy=on"));
        }
    }
    cmd
}

/// The probe's two `PROBE vsock bench` lines and its `PROBE vsock stats` line.
#[derive(Debug, Clone, Default)]
pub struct Bench {
    pub tx_bytes: f64,
    pub tx_us: f64,
    pub rx_bytes: f64,
    pub rx_us: f64,
    /// Packets the guest sent (the device's transmit queue) and received.
    pub tx_pkts: f64,
    pub rx_pkts: f64,
    pub lines: Vec<String>,
}

impl Bench {
    /// From the guest's output lines (any order; others ignored).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Bench, String> {
        let (mut tx, mut rx, mut st) = (None, None, None);
        for l in lines {
            if l.starts_with("PROBE vsock bench tx_bytes=") {
                tx = Some(l);
            } else if l.starts_with("PROBE vsock bench rx_bytes=") {
                rx = Some(l);
            } else if l.starts_with("PROBE vsock stats ") {
                st = Some(l);
            }
        }
        let (tx, rx, st) = match (tx, rx, st) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err("missing PROBE vsock bench/stats lines".into()),
        };
        if field(tx, "done")? != 1.0 || field(rx, "done")? != 1.0 {
            return Err(format!("benchmark not done: '{tx}' '{rx}'"));
        }
        if field(rx, "bad")? != 0.0 {
            return Err(format!("the guest received damaged bytes: '{rx}'"));
        }
        Ok(Bench {
            tx_bytes: field(tx, "tx_bytes")?,
            tx_us: field(tx, "us")?,
            rx_bytes: field(rx, "rx_bytes")?,
            rx_us: field(rx, "us")?,
            tx_pkts: field(st, "tx_pkts")?,
            rx_pkts: field(st, "rx_pkts")?,
            lines: vec![tx.into(), rx.into(), st.into()],
        })
    }

    /// Guest→host MB/s (10^6 bytes), the guest's clock.
    pub fn g2h_mbps(&self) -> Option<f64> {
        (self.tx_us > 0.0).then(|| self.tx_bytes / self.tx_us)
    }

    pub fn h2g_mbps(&self) -> Option<f64> {
        (self.rx_us > 0.0).then(|| self.rx_bytes / self.rx_us)
    }

    /// Packets both ways.
    pub fn packets(&self) -> f64 {
        self.tx_pkts + self.rx_pkts
    }
}

pub struct Setup {
    pub runs: usize,
    /// Bytes each way per run.
    pub bytes: u64,
    pub timeout: Duration,
    pub vmms: Vec<Vmm>,
    pub elf: PathBuf,
    pub cases: Vec<Case>,
    /// The benchmark pattern, as long as the longest stream.
    pub pattern: Arc<Vec<u8>>,
}

/// One run of one VMM.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub bench: Option<Bench>,
    pub cpu_start: Vec<ThreadCpu>,
    pub cpu_end: Vec<ThreadCpu>,
    pub between_ms: f64,
    pub host: peer::Report,
    pub error: Option<String>,
}

impl Sample {
    pub fn cpu(&self) -> Option<cpu::Split> {
        cpu::between(&self.cpu_start, &self.cpu_end)
    }

    /// VMM CPU µs per packet (both directions): (user, system).
    pub fn per_packet_us(&self) -> Option<(f64, f64)> {
        self.cpu()?.per_unit_us(self.bench.as_ref()?.packets())
    }
}

alternate::sample!(Sample);

/// Everything one VMM produced for one case.
pub type Series = alternate::Series<Case, Sample>;

const FATAL: &str = "PROBE-FATAL";

/// Reads the guest's lines until its verdict: the VMM's CPU at `PROBE
/// vsock dev=` and at `PROBE vsock stats` (when `cpu` is set), the bench
/// figures, and a passing `PROBE-CHECK vsock`.
fn session(child: &mut Timed, deadline: Instant, cpu: bool, s: &mut Sample) -> Result<(), String> {
    let pid = child.pid();
    let wait = |child: &mut Timed, prefix: &str| -> Result<String, String> {
        match child.wait_line(
            |l| {
                l.starts_with(prefix) || l.starts_with(FATAL) || l.starts_with("PROBE-CHECK vsock ")
            },
            deadline,
        ) {
            Ok((_, line)) if line.starts_with(prefix) => Ok(line),
            Ok((_, line)) => Err(format!("guest: {line} ({})", child.finish_and_tail(4))),
            Err(why) => Err(format!(
                "no '{}': {why:?} ({})",
                prefix.trim(),
                child.finish_and_tail(6)
            )),
        }
    };
    wait(child, "PROBE vsock dev=")?;
    let t0 = Instant::now();
    if cpu {
        s.cpu_start = proc::thread_cpu(pid)?;
    }
    // Before the probe resets the device (utsuwa's worker ends then).
    wait(child, "PROBE vsock stats ")?;
    if cpu {
        s.cpu_end = proc::thread_cpu(pid)?;
    }
    s.between_ms = t0.elapsed().as_secs_f64() * 1e3;
    let verdict = wait(child, "PROBE-CHECK vsock ")?;
    let bench = Bench::parse(child.seen().iter().map(String::as_str));
    if !verdict.starts_with("PROBE-CHECK vsock pass") {
        return Err(verdict);
    }
    s.bench = Some(bench?);
    Ok(())
}

/// The host end for `vmm`: a Unix listener at the device's `PATH_PORT`,
/// or AF_VSOCK for QEMU.
fn start_peer(
    vmm: &Vmm,
    dir: &peer::SockDir,
    pattern: &Arc<Vec<u8>>,
    idle: Duration,
) -> Result<peer::Peer, String> {
    match vmm {
        Vmm::Utsuwa(_) => peer::Peer::unix(&dir.port_path(PORT), pattern.clone(), idle),
        Vmm::Qemu(_) => peer::Peer::vsock(PORT, pattern.clone(), idle),
    }
}

/// Checks what the host end saw against the guest's figures.
fn host_agrees(h: &peer::Report, b: Option<&Bench>) -> Result<(), String> {
    if let Some(e) = &h.error {
        return Err(format!("host end: {e}"));
    }
    if let Some(at) = h.bad_at {
        return Err(format!("host end: damaged guest→host byte at offset {at}"));
    }
    if let Some(b) = b {
        if h.g2h_bytes as f64 != b.tx_bytes || h.h2g_bytes as f64 != b.rx_bytes {
            return Err(format!(
                "host end moved {}/{} bytes, the guest {}/{}",
                h.g2h_bytes, h.h2g_bytes, b.tx_bytes, b.rx_bytes
            ));
        }
    }
    Ok(())
}

fn timed_run(setup: &Setup, vmm: &Vmm, case: &Case, run: usize) -> Sample {
    let mut s = Sample {
        run,
        ..Default::default()
    };
    let r = (|| -> Result<(), String> {
        let dir = peer::SockDir::new()?;
        let p = start_peer(vmm, &dir, &setup.pattern, Duration::from_secs(10))?;
        let phase_ms = setup.timeout.as_millis() as u64;
        let mut cmd = command(
            vmm,
            &setup.elf,
            &plan(case, setup.bytes, phase_ms),
            &dir.socket(),
        );
        let result = Timed::spawn(&mut cmd).and_then(|mut child| {
            let deadline = child.start + setup.timeout;
            let r = session(&mut child, deadline, true, &mut s);
            child.kill();
            r
        });
        s.host = p.finish();
        result?;
        host_agrees(&s.host, s.bench.as_ref())
    })();
    if let Err(e) = r {
        s.error = Some(e);
    }
    s
}

/// Runs every case `runs` times per VMM, VMMs alternating, printing
/// progress to stderr.
pub fn run(setup: &Setup) -> Vec<Series> {
    let progress = |vmm: &Vmm, case: &Case, s: &Sample| {
        let shown = match (&s.error, &s.bench, s.per_packet_us()) {
            (Some(e), _, _) => format!("FAILED: {e}"),
            (None, Some(b), Some((u, k))) => format!(
                "g2h {:.0} MB/s ({:.0} packets), h2g {:.0} MB/s ({:.0} packets); \
                 VMM {u:.2} + {k:.2} µs/packet",
                b.g2h_mbps().unwrap_or(0.0),
                b.tx_pkts,
                b.h2g_mbps().unwrap_or(0.0),
                b.rx_pkts
            ),
            _ => "?".into(),
        };
        let roles = cpu::roles_line(&s.cpu_start, &s.cpu_end);
        format!("{} {}: {shown} [ms: {roles}]", vmm.name(), case.name())
    };
    alternate::run(
        "vsock",
        setup.runs,
        &setup.vmms,
        &setup.cases,
        |vmm, case, run| timed_run(setup, vmm, case, run),
        progress,
    )
}

/// Instructions per packet (both directions) for utsuwa, each case. The units of
/// each item are the median packet counts the guest reported in its runs
/// of that size (the packets per run vary a little with timing: credit
/// updates, partial packets).
pub fn callgrind(setup: &Setup, cg: &cgdiff::Setup) -> Vec<cgdiff::Measured> {
    let mib = 1u64 << 20;
    // Data packets alone, for the progress lines until the runs tell.
    let guess = |m: u64, c: &Case| 2 * m * mib / u64::from(c.pkt);
    let items: Vec<cgdiff::Item> = setup
        .cases
        .iter()
        .flat_map(|c| {
            setup
                .vmms
                .iter()
                .filter(|v| matches!(v, Vmm::Utsuwa(_)))
                .map(|v| cgdiff::Item {
                    vmm: v.name(),
                    case: c.name(),
                    small: guess(CG_SMALL_MIB, c),
                    large: guess(CG_LARGE_MIB, c),
                })
        })
        .collect();
    let mut packets: Vec<(&'static str, String, cgdiff::Size, f64)> = Vec::new();
    let mut measured = cgdiff::run("vsock", cg.runs, &items, &cg.dir, |item, size, _, file| {
        let vmm = item.vmm_in(&setup.vmms)?;
        let case = setup
            .cases
            .iter()
            .find(|c| c.name() == item.case)
            .ok_or("no such case")?;
        let m = size.pick(CG_SMALL_MIB, CG_LARGE_MIB);
        let dir = peer::SockDir::new()?;
        let p = start_peer(vmm, &dir, &setup.pattern, Duration::from_secs(60))?;
        let phase_ms = cg.timeout.as_millis() as u64;
        let inner = command(
            vmm,
            &setup.elf,
            &plan(case, m * mib, phase_ms),
            &dir.socket(),
        );
        let mut cmd = crate::blk::callgrind::wrap(Command::new(&cg.valgrind), &file, &inner);
        let mut s = Sample::default();
        let r = Timed::spawn(&mut cmd).and_then(|mut child| {
            let deadline = child.start + cg.timeout;
            session(&mut child, deadline, false, &mut s)?;
            match child.wait_exit(deadline) {
                Ok((_, st)) if st.success() => Ok(()),
                Ok((_, st)) => Err(format!("exited with {st} ({})", child.finish_and_tail(6))),
                Err(e) => Err(format!("{e} ({})", child.finish_and_tail(6))),
            }
        });
        let host = p.finish();
        r?;
        host_agrees(&host, s.bench.as_ref())?;
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let ir = crate::blk::callgrind::total_ir(&text)
            .ok_or_else(|| format!("no totals: line in {}", file.display()))?;
        if let Some(b) = &s.bench {
            packets.push((item.vmm, item.case.clone(), size, b.packets()));
        }
        Ok(ir)
    });
    for m in &mut measured {
        let med = |want: cgdiff::Size| {
            let v: Vec<f64> = packets
                .iter()
                .filter(|(vmm, case, size, _)| {
                    *vmm == m.item.vmm && *case == m.item.case && *size == want
                })
                .map(|p| p.3)
                .collect();
            Summary::of(&v).map(|s| s.median.round() as u64)
        };
        if let (Some(s), Some(l)) = (med(cgdiff::Size::Small), med(cgdiff::Size::Large)) {
            if l > s {
                m.item.small = s;
                m.item.large = l;
            }
        }
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_lines() {
        let lines = [
            "PROBE vsock conn=0 role=bench local_port=49168 peer_port=5000 state=closed",
            "PROBE vsock bench tx_bytes=16777216 us=80000 mbps=209 done=1",
            "PROBE vsock bench rx_bytes=16777216 us=40000 mbps=419 done=1 bad=0",
            "PROBE vsock stats rx_pkts=4300 tx_pkts=260 rx_bytes=16777224 tx_bytes=16777248 \
             rx_len_odd=0 events=0 transport_resets=0 stray=0 bad_addr=0 bad_type=0 \
             tx_in_flight=0 irq=msix irqs=900",
        ];
        let b = Bench::parse(lines).unwrap();
        assert_eq!(b.g2h_mbps(), Some(16777216.0 / 80000.0));
        assert_eq!(b.h2g_mbps(), Some(16777216.0 / 40000.0));
        assert_eq!(b.packets(), 4560.0);
        assert!(Bench::parse(lines[..3].iter().copied()).is_err());
        let not_done = [
            "PROBE vsock bench tx_bytes=5 us=1 mbps=5 done=0",
            lines[2],
            lines[3],
        ];
        assert!(Bench::parse(not_done).is_err());
    }

    #[test]
    fn plans_and_commands() {
        let p = plan(&Case { pkt: 4096 }, 1 << 20, 30000);
        assert!(p.contains("probe.vsock_bench=1048576 probe.vsock_pkt=4096"));
        assert!(p.contains("probe.vsock_rx_buf=4096"));
        assert!(p.contains("probe.vsock_connect=5000 probe.vsock_bytes=0"));
        let args = |v: &Vmm| -> Vec<String> {
            command(v, Path::new("probe"), &p, Path::new("/t/v.sock"))
                .get_args()
                .map(|a| a.to_string_lossy().into())
                .collect()
        };
        let u = args(&Vmm::Utsuwa("u".into()));
        assert_eq!(u[u.len() - 2..], ["--vsock", "cid=3,socket=/t/v.sock"]);
        let q = args(&Vmm::Qemu("q".into()));
        assert!(q.contains(&"vhost-vsock-pci,guest-cid=3,disable-legacy=on".into()));
    }
}
