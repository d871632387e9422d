//! The probe's virtio-net driver against QEMU's virtio-net-pci (modern only,
//! TAP backend) on the microvm machine: ARP and ping answered, data frames
//! both ways with their checksums verified at both ends, two NICs at once,
//! the benchmark, a GSO frame. Every test builds its own network namespace
//! (`utsuwa-net-<pid>-<n>`, deleted afterwards even on failure), creates
//! the TAPs in it and runs QEMU, `ping` and the host's AF_PACKET peer
//! inside it: no frame leaves it, the host's interfaces are never touched.
//! Tests say why they are skipped (and pass) without QEMU, /dev/kvm, root
//! or `ip`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::net::{
    facts, fnv1a64, pattern, run_in_namespace, unavailable, which, NetNs, Nic, PeerConfig,
    PeerReport, PingJob, Run, NIC0, NIC1, TSO_SEED,
};
use support::{assert_checks_pass, checks, probe, Outcome};

const QEMU: &str = "qemu-system-x86_64";
const MODES: [&str; 2] = ["msix", "poll"];

/// QEMU, KVM, root and `ip`, or None after saying why the test is skipped.
fn host() -> Option<PathBuf> {
    let Some(qemu) = which(QEMU) else {
        eprintln!("skipped: {QEMU} not installed");
        return None;
    };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: /dev/kvm not available for {QEMU}");
        return None;
    }
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(qemu)
}

/// QEMU's command line for the probe with `nics`, run inside `ns`.
fn qemu_command(qemu: &Path, ns: &NetNs, nics: &[Nic], cmdline: &str) -> Command {
    let mut cmd = ns.command(qemu);
    cmd.args([
        "-M",
        "microvm,pcie=on,acpi=on,rtc=on",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "512M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(probe::probe_elf())
    .args(["-append", cmdline]);
    for (i, n) in nics.iter().enumerate() {
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
    cmd
}

/// Boots the probe on QEMU in a fresh namespace (see `support::net::run`).
fn run(
    qemu: &Path,
    nics: &[Nic],
    cmdline: &str,
    limit: Duration,
    peer: impl Fn(&Nic, &NetNs) -> PeerConfig,
) -> Run {
    let r = run_in_namespace(
        nics,
        |ns| qemu_command(qemu, ns, nics, cmdline),
        limit,
        peer,
    );
    eprintln!("[{cmdline}] {:?}", r.out.elapsed);
    r
}

fn ping_job(n: &Nic, ns: &NetNs, count: u32) -> Option<PingJob> {
    Some(PingJob {
        ns: ns.name().to_string(),
        ip: n.guest_ip.to_string(),
        count,
    })
}

/// The `PROBE net dev=.. mac=..` lines, one per NIC.
fn nic_lines(out: &Outcome) -> Vec<std::collections::BTreeMap<String, String>> {
    facts(&out.stdout, "net")
        .into_iter()
        .filter(|m| m.contains_key("mac"))
        .collect()
}

fn fact<'a>(m: &'a std::collections::BTreeMap<String, String>, k: &str) -> &'a str {
    m.get(k).map_or("", String::as_str)
}

fn num(m: &std::collections::BTreeMap<String, String>, k: &str) -> u64 {
    fact(m, k)
        .parse()
        .unwrap_or_else(|_| panic!("{k}={:?} in {m:?}", m.get(k)))
}

/// The host's ping (or, without `ping`, the peer's own echo requests) got
/// every reply.
fn assert_pinged(r: &Run, peer: &PeerReport, count: u64) {
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

#[test]
fn answers_arp_and_ping_with_and_without_checksum_offload() {
    let Some(qemu) = host() else { return };
    for mode in MODES {
        for offload in [0, 1] {
            let cmdline = format!(
                "probe.checks=net probe.net_irq={mode} probe.net_offload={offload} probe.net_ip={} probe.net_pings=3",
                NIC0.guest_ip
            );
            let r = run(
                &qemu,
                &[NIC0],
                &cmdline,
                Duration::from_secs(60),
                |n, ns| PeerConfig {
                    ping: ping_job(n, ns, 3),
                    ..PeerConfig::default()
                },
            );
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

#[test]
fn exchanges_verified_frames_both_ways() {
    let Some(qemu) = host() else { return };
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
        let r = run(&qemu, &[NIC0], &cmdline, Duration::from_secs(60), |_, _| {
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

#[test]
fn the_guest_rejects_a_damaged_frame() {
    let Some(qemu) = host() else { return };
    let cmdline = "probe.checks=net probe.net_rx_frames=20 probe.net_serve_ms=5000";
    let r = run(&qemu, &[NIC0], cmdline, Duration::from_secs(60), |_, _| {
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

#[test]
fn two_nics_at_once() {
    let Some(qemu) = host() else { return };
    for mode in MODES {
        let cmdline = format!(
            "probe.checks=net probe.net_irq={mode} probe.net_nics=2 probe.net_ip={},{} probe.net_pings=3 probe.net_tx_frames=64 probe.net_rx_frames=64 probe.net_peer={},{} probe.net_bench_pings=50",
            NIC0.guest_ip, NIC1.guest_ip, NIC0.host_ip, NIC1.host_ip
        );
        let r = run(
            &qemu,
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

#[test]
fn benchmark_reports_rates_and_latency() {
    let Some(qemu) = host() else { return };
    for (mode, frame, frames) in [
        ("msix", 1514, 20000),
        ("poll", 1514, 20000),
        ("msix", 64, 20000),
    ] {
        let cmdline = format!(
            "probe.checks=net probe.net_irq={mode} probe.net_ip={} probe.net_peer={} probe.net_bench={frame} probe.net_bench_frames={frames} probe.net_bench_pings=500",
            NIC0.guest_ip, NIC0.host_ip
        );
        let r = run(
            &qemu,
            &[NIC0],
            &cmdline,
            Duration::from_secs(120),
            |_, _| PeerConfig::default(),
        );
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
            "[{mode}] QEMU virtio-net, {frame}-byte frames: guest->host {} frames/s {} MB/s, host->guest {} frames/s {} MB/s, ICMP echo to the host rtt min/avg/max {}/{}/{} us (host side: {:.0} and {:.0} frames/s)",
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

#[test]
fn a_gso_frame_is_segmented_or_delivered_whole() {
    let Some(qemu) = host() else { return };
    let payload = 60000usize;
    let cmdline = format!(
        "probe.checks=net probe.net_offload=1 probe.net_ip={} probe.net_tso={payload}",
        NIC0.guest_ip
    );
    let r = run(&qemu, &[NIC0], &cmdline, Duration::from_secs(60), |_, _| {
        PeerConfig::default()
    });
    let nic = &nic_lines(&r.out)[0];
    let offered = u64::from_str_radix(fact(nic, "offered").trim_start_matches("0x"), 16).unwrap();
    if offered & (1 << 11) == 0 {
        eprintln!("skipped: this QEMU/TAP does not offer HOST_TSO4");
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
