//! The network and entropy scenarios both VMMs run, each a function taking
//! the [`Vmm`] to start: `tests/net.rs` and `tests/rng.rs` call them with
//! utsuwa, `tests/net_qemu.rs` and `tests/rng_qemu.rs` with QEMU's
//! virtio-net-pci / virtio-rng-pci (modern only) on the microvm machine.
//! Network scenarios run in a namespace of their own (see
//! `support::net::run_in_namespace`): no frame leaves it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::net::{
    facts, fnv1a64, pattern, run_in_namespace, unavailable, NetNs, Nic, PeerConfig, PeerReport,
    PingJob, Run, NIC0, NIC1, TSO_SEED,
};
use super::{assert_checks_pass, checks, probe, run_with_limit, Outcome, UTSUWA};

pub const MODES: [&str; 2] = ["msix", "poll"];
const QEMU: &str = "qemu-system-x86_64";

/// Which VMM runs the probe.
pub enum Vmm {
    Qemu(PathBuf),
    Utsuwa,
}

impl Vmm {
    /// QEMU with /dev/kvm, or None after saying why the test is skipped.
    pub fn qemu() -> Option<Vmm> {
        let qemu = super::qemu::find()?;
        Some(Vmm::Qemu(qemu))
    }

    /// utsuwa with /dev/kvm, or None after saying why the test is skipped.
    pub fn utsuwa() -> Option<Vmm> {
        if !Path::new("/dev/kvm").exists() {
            eprintln!("skipped: /dev/kvm not available");
            return None;
        }
        Some(Vmm::Utsuwa)
    }

    /// As `qemu`/`utsuwa`, also needing root, `ip` and /dev/net/tun.
    pub fn with_network(vmm: Option<Vmm>) -> Option<Vmm> {
        let vmm = vmm?;
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return None;
        }
        Some(vmm)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Vmm::Qemu(_) => "QEMU",
            Vmm::Utsuwa => "utsuwa",
        }
    }

    /// The VMM (not yet inside a namespace: `net_command` wraps it) with
    /// the probe, 1 vCPU, 512 MiB and `cmdline`.
    fn base(&self, program: impl FnOnce(&Path) -> Command, cmdline: &str) -> Command {
        match self {
            Vmm::Qemu(qemu) => super::qemu::command(
                program,
                qemu,
                super::qemu::MICROVM,
                &probe::probe_elf(),
                1,
                "512M",
                cmdline,
            ),
            Vmm::Utsuwa => {
                let mut cmd = program(Path::new(UTSUWA));
                cmd.args(["run", "--cpus", "1", "--memory", "512M", "--kernel"])
                    .arg(probe::probe_elf())
                    .args(["--cmdline", cmdline]);
                cmd
            }
        }
    }

    /// The probe with a virtio-net device on each of `nics`' TAPs, run
    /// inside `ns`.
    pub fn net_command(&self, ns: &NetNs, nics: &[Nic], cmdline: &str) -> Command {
        let mut cmd = self.base(|p| ns.command(p), cmdline);
        for (i, n) in nics.iter().enumerate() {
            match self {
                Vmm::Qemu(_) => {
                    cmd.arg("-netdev")
                        .arg(format!(
                            "tap,id=n{i},ifname={},script=no,downscript=no",
                            n.tap
                        ))
                        .arg("-device")
                        .arg(format!(
                            "virtio-net-pci,netdev=n{i},mac={},disable-legacy=on",
                            n.mac
                        ));
                }
                Vmm::Utsuwa => {
                    cmd.arg("--net").arg(format!("tap={},mac={}", n.tap, n.mac));
                }
            }
        }
        cmd
    }

    /// The probe with `devices` virtio-rng devices (utsuwa: 0 or 1).
    pub fn rng_command(&self, devices: usize, cmdline: &str) -> Command {
        let mut cmd = self.base(|p: &Path| Command::new(p), cmdline);
        match self {
            Vmm::Qemu(_) => {
                for _ in 0..devices {
                    cmd.args(["-device", "virtio-rng-pci,disable-legacy=on"]);
                }
            }
            Vmm::Utsuwa => {
                assert!(devices <= 1, "utsuwa has one --rng device at most");
                if devices == 1 {
                    cmd.arg("--rng");
                }
            }
        }
        cmd
    }
}

// ---- network ----

/// Boots the probe in a fresh namespace (see `support::net::run_in_namespace`).
pub fn run(
    vmm: &Vmm,
    nics: &[Nic],
    cmdline: &str,
    limit: Duration,
    peer: impl Fn(&Nic, &NetNs) -> PeerConfig,
) -> Run {
    let r = run_in_namespace(nics, |ns| vmm.net_command(ns, nics, cmdline), limit, peer);
    eprintln!("[{} {cmdline}] {:?}", vmm.name(), r.out.elapsed);
    r
}

pub fn ping_job(n: &Nic, ns: &NetNs, count: u32) -> Option<PingJob> {
    Some(PingJob {
        ns: ns.name().to_string(),
        ip: n.guest_ip.to_string(),
        count,
    })
}

/// The `PROBE net dev=.. mac=..` lines, one per NIC.
pub fn nic_lines(out: &Outcome) -> Vec<std::collections::BTreeMap<String, String>> {
    facts(&out.stdout, "net")
        .into_iter()
        .filter(|m| m.contains_key("mac"))
        .collect()
}

pub fn fact<'a>(m: &'a std::collections::BTreeMap<String, String>, k: &str) -> &'a str {
    m.get(k).map_or("", String::as_str)
}

pub fn num(m: &std::collections::BTreeMap<String, String>, k: &str) -> u64 {
    fact(m, k)
        .parse()
        .unwrap_or_else(|_| panic!("{k}={:?} in {m:?}", m.get(k)))
}

/// The host's ping (or, without `ping`, the peer's own echo requests) got
/// every reply.
pub fn assert_pinged(r: &Run, peer: &PeerReport, count: u64) {
    match &peer.ping {
        Some(p) => {
            let text = String::from_utf8_lossy(&p.stdout);
            assert!(p.status.success(), "ping failed:\n{text}\n{}", r.out.dump());
            assert!(text.contains(&format!("{count} received")), "{text}");
            assert!(!text.contains("BAD CHECKSUM"), "{text}");
        }
        None => assert_eq!(peer.raw_ping_replies, count, "{peer:?}\n{}", r.out.dump()),
    }
}

pub fn answers_arp_and_ping_with_and_without_checksum_offload(vmm: &Vmm) {
    for mode in MODES {
        for offload in [0, 1] {
            let cmdline = format!(
                "probe.checks=net probe.net_irq={mode} probe.net_offload={offload} probe.net_ip={} probe.net_pings=3",
                NIC0.guest_ip
            );
            let r = run(vmm, &[NIC0], &cmdline, Duration::from_secs(60), |n, ns| {
                PeerConfig {
                    ping: ping_job(n, ns, 3),
                    ..PeerConfig::default()
                }
            });
            assert_checks_pass(&r.out, &["net", "net-serve"]);
            let p = &r.peers[0];
            assert_pinged(&r, p, 3);
            let nic = &nic_lines(&r.out)[0];
            assert_eq!(fact(nic, "mac"), NIC0.mac);
            assert_eq!(fact(nic, "link"), "up");
            assert_eq!(fact(nic, "dev"), "00:01.0");
            let features =
                u64::from_str_radix(fact(nic, "features").trim_start_matches("0x"), 16).unwrap();
            assert_eq!(
                features & 3,
                if offload == 1 { 3 } else { 0 },
                "CSUM|GUEST_CSUM"
            );
            assert_ne!(features & (1 << 32), 0, "VERSION_1");
            assert_ne!(features & (1 << 15), 0, "MRG_RXBUF");
            let serve = &facts(&r.out.stdout, "net-serve")[0];
            assert_eq!(num(serve, "pings"), 3, "{}", r.out.dump());
            if p.ping.is_some() {
                assert!(
                    num(serve, "arp_replies") >= 1,
                    "the host had to ARP for the guest"
                );
            }
            let stats = &facts(&r.out.stdout, "net-stats")[0];
            assert_eq!(
                num(stats, "tx_csum_offload") >= 3,
                offload == 1,
                "{}",
                r.out.dump()
            );
            if mode == "poll" {
                assert_eq!(num(stats, "irqs"), 0);
            } else {
                assert!(num(stats, "irqs") > 0);
            }
            // What the host saw of the replies: complete checksums, or ones
            // the host kernel knows are left to offload (CHECKSUM_PARTIAL).
            assert!(p.icmp_replies >= 3, "{p:?}");
            assert_eq!(
                p.icmp_csum_ok + p.icmp_csum_partial.min(p.icmp_replies - p.icmp_csum_ok),
                p.icmp_replies,
                "{p:?}"
            );
            if offload == 0 {
                assert_eq!(p.icmp_csum_partial, 0, "{p:?}");
            }
            eprintln!(
                "[{mode} offload={offload}] replies {} checksum ok as captured {} left partial {}",
                p.icmp_replies, p.icmp_csum_ok, p.icmp_csum_partial
            );
            assert!(r.out.status.success(), "{}", r.out.dump());
        }
    }
}

pub fn exchanges_verified_frames_both_ways(vmm: &Vmm) {
    // (irq, MRG_RXBUF, receive buffer bytes): 256-byte buffers make every
    // large frame span several merged buffers.
    for (mode, mrg, rx_buf) in [
        ("msix", 1, 2048),
        ("poll", 1, 256),
        ("msix", 0, 1536),
        ("poll", 0, 2048),
    ] {
        let k = 200;
        let cmdline = format!(
            "probe.checks=net probe.net_irq={mode} probe.net_mrg={mrg} probe.net_rx_buf={rx_buf} probe.net_tx_frames={k} probe.net_rx_frames={k}"
        );
        let r = run(vmm, &[NIC0], &cmdline, Duration::from_secs(60), |_, _| {
            PeerConfig::default()
        });
        assert_checks_pass(&r.out, &["net", "net-serve", "net-tx", "net-rx"]);
        let p = &r.peers[0];
        let tx = &facts(&r.out.stdout, "net-tx")[0];
        let rx = &facts(&r.out.stdout, "net-rx")[0];
        // Guest → host: every frame intact, in order, the FNVs agree.
        assert!(p.g2h_bad.is_empty(), "{:?}", p.g2h_bad);
        assert_eq!(p.g2h_ok, k, "{p:?}");
        assert_eq!(p.g2h_out_of_order, 0);
        assert_eq!(fact(tx, "fnv64"), p.g2h_fnv.hex(), "{}", r.out.dump());
        assert_eq!(num(tx, "bytes"), p.g2h_payload);
        assert!(
            p.g2h_lens.contains_key(&60) && p.g2h_lens.contains_key(&1514),
            "{:?}",
            p.g2h_lens
        );
        // Host → guest: the guest verified each and agrees on the FNV.
        assert_eq!(p.h2g_sent, k);
        assert_eq!(num(rx, "ok"), k, "{}", r.out.dump());
        assert_eq!(num(rx, "bad"), 0);
        assert_eq!(fact(rx, "fnv64"), p.h2g_fnv.hex());
        assert_eq!(num(rx, "bytes"), p.h2g_payload);
        let stats = &facts(&r.out.stdout, "net-stats")[0];
        if rx_buf < 1526 {
            assert!(num(stats, "rx_merged") >= k / 4, "{}", r.out.dump());
        } else {
            assert_eq!(num(stats, "rx_merged"), 0);
        }
        assert_eq!(
            p.done.map(|d| d[..2].to_vec()),
            Some(vec![k, k]),
            "DONE counters"
        );
        eprintln!(
            "[{mode} mrg={mrg} rx_buf={rx_buf}] {k} frames each way, tx fnv {} rx fnv {}",
            fact(tx, "fnv64"),
            fact(rx, "fnv64")
        );
    }
}

pub fn the_guest_rejects_a_damaged_frame(vmm: &Vmm) {
    let cmdline = "probe.checks=net probe.net_rx_frames=20 probe.net_serve_ms=5000";
    let r = run(vmm, &[NIC0], cmdline, Duration::from_secs(60), |_, _| {
        PeerConfig {
            corrupt: Some(7),
            ..PeerConfig::default()
        }
    });
    let found = checks(&r.out.stdout);
    assert_eq!(
        found.get("net-rx").map(|c| c.0),
        Some(false),
        "{}",
        r.out.dump()
    );
    let rx = &facts(&r.out.stdout, "net-rx")[0];
    assert_eq!((num(rx, "ok"), num(rx, "bad")), (19, 1), "{}", r.out.dump());
    assert_eq!(fact(rx, "first_bad_seq"), "7");
    assert_eq!(fact(rx, "first_bad"), "fnv");
}

pub fn two_nics_at_once(vmm: &Vmm) {
    for mode in MODES {
        let cmdline = format!(
            "probe.checks=net probe.net_irq={mode} probe.net_nics=2 probe.net_ip={},{} probe.net_pings=3 probe.net_tx_frames=64 probe.net_rx_frames=64 probe.net_peer={},{} probe.net_bench_pings=50",
            NIC0.guest_ip, NIC1.guest_ip, NIC0.host_ip, NIC1.host_ip
        );
        let r = run(
            vmm,
            &[NIC0, NIC1],
            &cmdline,
            Duration::from_secs(60),
            |n, ns| PeerConfig {
                ping: ping_job(n, ns, 3),
                ..PeerConfig::default()
            },
        );
        assert_checks_pass(
            &r.out,
            &["net", "net-serve", "net-tx", "net-rx", "net-bench"],
        );
        let nics = nic_lines(&r.out);
        assert_eq!(nics.len(), 2, "{}", r.out.dump());
        for (i, (nic, want)) in nics.iter().zip([NIC0, NIC1]).enumerate() {
            assert_eq!(fact(nic, "mac"), want.mac);
            assert_eq!(fact(nic, "ip"), want.guest_ip);
            let p = &r.peers[i];
            assert_pinged(&r, p, 3);
            assert_eq!(p.hello.map(|h| h.nic), Some(i as u32));
            assert_eq!(p.g2h_ok, 64, "{p:?}");
            assert_eq!(
                fact(&facts(&r.out.stdout, "net-tx")[i], "fnv64"),
                p.g2h_fnv.hex()
            );
            assert_eq!(
                fact(&facts(&r.out.stdout, "net-rx")[i], "fnv64"),
                p.h2g_fnv.hex()
            );
            assert_eq!(num(&facts(&r.out.stdout, "net-bench")[i], "pings"), 50);
        }
        assert_ne!(
            r.peers[0].g2h_fnv.0, r.peers[1].g2h_fnv.0,
            "each NIC has its own seeds"
        );
    }
}

pub fn benchmark_reports_rates_and_latency(vmm: &Vmm) {
    for (mode, frame, frames) in [
        ("msix", 1514, 20000),
        ("poll", 1514, 20000),
        ("msix", 64, 20000),
    ] {
        let cmdline = format!(
            "probe.checks=net probe.net_irq={mode} probe.net_ip={} probe.net_peer={} probe.net_bench={frame} probe.net_bench_frames={frames} probe.net_bench_pings=500",
            NIC0.guest_ip, NIC0.host_ip
        );
        let r = run(vmm, &[NIC0], &cmdline, Duration::from_secs(120), |_, _| {
            PeerConfig::default()
        });
        assert_checks_pass(&r.out, &["net", "net-serve", "net-bench"]);
        let b = &facts(&r.out.stdout, "net-bench")[0];
        let p = &r.peers[0];
        assert_eq!(num(b, "g2h_frames"), frames);
        assert_eq!(num(b, "h2g_frames"), frames);
        assert_eq!(num(b, "pings"), 500);
        assert_eq!(p.bench_g2h, frames, "the host got every frame");
        assert_eq!(p.bench_g2h_bad, 0);
        for k in ["g2h_fps", "h2g_fps", "rtt_avg_us"] {
            assert!(num(b, k) > 0, "{k}\n{}", r.out.dump());
        }
        eprintln!(
            "[{mode}] {} virtio-net, {frame}-byte frames: guest->host {} frames/s {} MB/s, host->guest {} frames/s {} MB/s, ICMP echo to the host rtt min/avg/max {}/{}/{} us (host side: {:.0} and {:.0} frames/s)",
            vmm.name(),
            fact(b, "g2h_fps"),
            fact(b, "g2h_mbps"),
            fact(b, "h2g_fps"),
            fact(b, "h2g_mbps"),
            fact(b, "rtt_min_us"),
            fact(b, "rtt_avg_us"),
            fact(b, "rtt_max_us"),
            frames as f64 / p.bench_g2h_secs.max(1e-9),
            frames as f64 / p.bench_h2g_secs.max(1e-9)
        );
    }
}

pub fn a_gso_frame_is_segmented_or_delivered_whole(vmm: &Vmm) {
    let payload = 60000usize;
    let cmdline = format!(
        "probe.checks=net probe.net_offload=1 probe.net_ip={} probe.net_tso={payload}",
        NIC0.guest_ip
    );
    let r = run(vmm, &[NIC0], &cmdline, Duration::from_secs(60), |_, _| {
        PeerConfig::default()
    });
    let nic = &nic_lines(&r.out)[0];
    let offered = u64::from_str_radix(fact(nic, "offered").trim_start_matches("0x"), 16).unwrap();
    if offered & (1 << 11) == 0 {
        eprintln!("skipped: this {}/TAP does not offer HOST_TSO4", vmm.name());
        return;
    }
    assert_checks_pass(&r.out, &["net", "net-serve", "net-tso"]);
    let p = &r.peers[0];
    let stream = p.tcp_stream();
    assert_eq!(
        stream.len(),
        payload,
        "{} TCP frames, largest {}",
        p.tcp_frames,
        p.tcp_max_frame
    );
    assert_eq!(fnv1a64(&stream), fnv1a64(&pattern(TSO_SEED, payload)));
    eprintln!(
        "GSO: {payload} bytes arrived in {} frame(s), largest {} bytes",
        p.tcp_frames, p.tcp_max_frame
    );
}

// ---- entropy ----

/// Boots the probe with `devices` entropy devices and `cmdline`.
pub fn run_rng(vmm: &Vmm, devices: usize, cmdline: &str) -> Outcome {
    let out = run_with_limit(vmm.rng_command(devices, cmdline), Duration::from_secs(60));
    eprintln!("[{} {cmdline}] {:?}", vmm.name(), out.elapsed);
    out
}

/// The `PROBE rng bytes=...` result lines.
pub fn rng_results(out: &Outcome) -> Vec<BTreeMap<String, String>> {
    facts(&out.stdout, "rng")
        .into_iter()
        .filter(|m| m.contains_key("distinct"))
        .collect()
}

pub fn reads_a_mib_of_entropy_in_both_interrupt_modes(vmm: &Vmm) {
    for mode in MODES {
        let out = run_rng(vmm, 1, &format!("probe.checks=rng probe.rng_irq={mode}"));
        assert_checks_pass(&out, &["rng"]);
        let r = &rng_results(&out)[0];
        assert_eq!(num(r, "bytes"), 1 << 20, "default rng_bytes is 1 MiB");
        assert_eq!(num(r, "distinct"), 256);
        assert_eq!(num(r, "repeats"), 0);
        assert!(num(r, "chi2") < 400);
        // About 1/256 of the bytes are zero (4096 ± 64 for 1 MiB).
        assert!((3500..4700).contains(&num(r, "zeros")), "{r:?}");
        assert_eq!(r["dev"], "00:01.0");
        assert_eq!(r["irq"], mode);
        if mode == "msix" {
            assert!(num(r, "irqs") > 0, "{}", out.dump());
        } else {
            assert_eq!(num(r, "irqs"), 0, "{}", out.dump());
        }
        eprintln!(
            "[{mode}] {} virtio-rng: {} bytes in {} us ({} KiB/s), {} requests, fnv64 {}",
            vmm.name(),
            r["bytes"],
            r["us"],
            r["kib_per_s"],
            r["requests"],
            r["fnv64"]
        );
        assert!(out.status.success(), "{}", out.dump());
    }
}

pub fn odd_sizes_and_small_buffers(vmm: &Vmm) {
    for mode in MODES {
        let out = run_rng(
            vmm,
            1,
            &format!(
                "probe.checks=rng probe.rng_irq={mode} probe.rng_bytes=100001 probe.rng_req=333"
            ),
        );
        assert_checks_pass(&out, &["rng"]);
        let r = &rng_results(&out)[0];
        assert_eq!(num(r, "bytes"), 100_001);
        assert!(num(r, "requests") >= 100_001u64.div_ceil(333), "{r:?}");
        assert_eq!(num(r, "distinct"), 256);
    }
}

/// No device fails the check, and so does expecting two where there is one.
pub fn a_missing_device_fails_the_check(vmm: &Vmm) {
    let out = run_rng(vmm, 0, "probe.checks=rng");
    let found = checks(&out.stdout);
    let (passed, why) = found
        .get("rng")
        .cloned()
        .unwrap_or_else(|| panic!("{}", out.dump()));
    assert!(!passed && why.contains("no virtio-rng function"), "{why}");
    let out = run_rng(
        vmm,
        1,
        "probe.checks=rng probe.rng_devs=2 probe.rng_bytes=4096",
    );
    assert_eq!(
        checks(&out.stdout).get("rng").map(|c| c.0),
        Some(false),
        "{}",
        out.dump()
    );
}

/// Two devices (QEMU only: utsuwa has one `--rng`), each read.
pub fn two_devices_are_each_read(vmm: &Vmm) {
    let out = run_rng(
        vmm,
        2,
        "probe.checks=rng probe.rng_devs=2 probe.rng_bytes=262144",
    );
    assert_checks_pass(&out, &["rng"]);
    let r = rng_results(&out);
    assert_eq!(r.len(), 2, "{}", out.dump());
    assert_eq!(
        (r[0]["dev"].as_str(), r[1]["dev"].as_str()),
        ("00:01.0", "00:02.0")
    );
    assert_ne!(r[0]["fnv64"], r[1]["fnv64"], "two devices, two streams");
}
