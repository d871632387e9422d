//! utsuwa's virtio-net (TAP backend) with the probe's driver: the
//! scenarios of `support::scenarios` that `net_qemu.rs` runs against QEMU
//! (ARP and ping with and without checksum offload, data frames both ways
//! verified at both ends, a damaged frame rejected, two NICs, the benchmark,
//! a GSO frame), and utsuwa's own `--net`: a TAP it creates goes away with
//! it, one the user made stays as it was, a bad value is one error line.
//! Every test runs in a network namespace of its own (deleted even on
//! failure; no frame leaves it) and says why it is skipped (and passes)
//! without /dev/kvm, root, `ip` or /dev/net/tun.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::net::{NetNs, NIC0};
use support::scenarios::{self as s, Vmm};
use support::{probe, run_with_limit, UTSUWA};

fn vmm() -> Option<Vmm> {
    Vmm::with_network(Vmm::utsuwa())
}

#[test]
fn answers_arp_and_ping_with_and_without_checksum_offload() {
    let Some(vmm) = vmm() else { return };
    s::answers_arp_and_ping_with_and_without_checksum_offload(&vmm);
}

#[test]
fn exchanges_verified_frames_both_ways() {
    let Some(vmm) = vmm() else { return };
    s::exchanges_verified_frames_both_ways(&vmm);
}

#[test]
fn the_guest_rejects_a_damaged_frame() {
    let Some(vmm) = vmm() else { return };
    s::the_guest_rejects_a_damaged_frame(&vmm);
}

#[test]
fn two_nics_at_once() {
    let Some(vmm) = vmm() else { return };
    s::two_nics_at_once(&vmm);
}

#[test]
fn benchmark_reports_rates_and_latency() {
    let Some(vmm) = vmm() else { return };
    s::benchmark_reports_rates_and_latency(&vmm);
}

#[test]
fn a_gso_frame_is_segmented_or_delivered_whole() {
    let Some(vmm) = vmm() else { return };
    s::a_gso_frame_is_segmented_or_delivered_whole(&vmm);
}

/// `ip -n NS -o link show DEV`: None when the device does not exist.
fn link(ns: &NetNs, dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-o", "link", "show", dev])
        .output()
        .expect("run ip");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// utsuwa with the probe serving its NICs for `serve_ms`, inside `ns`.
fn serving(ns: &NetNs, nets: &[&str], serve_ms: u32) -> Command {
    let mut cmd = ns.command(UTSUWA);
    cmd.args(["run", "--kernel"])
        .arg(probe::probe_elf())
        .arg("--cmdline")
        .arg(format!("probe.checks=net probe.net_serve_ms={serve_ms}"));
    for n in nets {
        cmd.args(["--net", n]);
    }
    cmd
}

#[test]
fn creates_a_missing_tap_and_removes_it_on_exit() {
    let Some(_) = vmm() else { return };
    let ns = NetNs::new().expect("create a network namespace");
    let tap = "utsw-new0";
    assert!(link(&ns, tap).is_none());
    let cmd = serving(&ns, &[&format!("tap={tap}")], 3000);
    let vm = std::thread::spawn(move || run_with_limit(cmd, Duration::from_secs(60)));
    let start = Instant::now();
    let mut seen = None;
    while seen.is_none() && start.elapsed() < Duration::from_secs(20) && !vm.is_finished() {
        seen = link(&ns, tap);
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = vm.join().expect("utsuwa thread");
    let seen = seen.unwrap_or_else(|| panic!("{tap} never appeared\n{}", out.dump()));
    assert!(seen.contains("tap") || seen.contains(tap), "{seen}");
    assert!(out.elapsed < Duration::from_secs(60), "{}", out.dump());
    assert!(out.status.success(), "{}", out.dump());
    assert!(
        link(&ns, tap).is_none(),
        "utsuwa left the TAP it created\n{}",
        out.dump()
    );
}

#[test]
fn leaves_a_users_tap_alone() {
    let Some(_) = vmm() else { return };
    let ns = NetNs::new().expect("create a network namespace");
    ns.add_tap(NIC0.tap, NIC0.host).expect("create the TAP");
    let before = link(&ns, NIC0.tap).expect("the TAP");
    let out = run_with_limit(
        serving(&ns, &[&format!("tap={}", NIC0.tap)], 1000),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.dump());
    let after = link(&ns, NIC0.tap)
        .unwrap_or_else(|| panic!("utsuwa removed the user's TAP\n{}", out.dump()));
    assert!(after.contains(",UP"), "still up: {after}");
    let flags = |s: &str| s.split_whitespace().nth(2).map(str::to_string);
    assert_eq!(flags(&before), flags(&after), "{before}\n{after}");
    let addr = Command::new("ip")
        .args(["-n", ns.name(), "-o", "addr", "show", NIC0.tap])
        .output()
        .expect("run ip");
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(NIC0.host),
        "address kept"
    );
}

#[test]
fn a_bad_net_value_is_one_error_line() {
    let Some(_) = vmm() else { return };
    let ns = NetNs::new().expect("create a network namespace");
    for (bad, why) in [
        ("tap=", "tap=NAME is required"),
        ("tap=t0,mac=52:54:00:00:00", "invalid MAC"),
        ("tap=t0,mac=zz:54:00:00:00:01", "invalid MAC"),
        ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
    ] {
        let out = run_with_limit(serving(&ns, &[bad], 1000), Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(1), "{bad}\n{}", out.dump());
        let lines: Vec<_> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{bad}\n{}", out.dump());
        assert!(
            lines[0].starts_with("utsuwa: error: --net") && lines[0].contains(why),
            "{bad}: {}",
            lines[0]
        );
        assert!(out.stdout.is_empty(), "{bad}\n{}", out.dump());
        assert!(link(&ns, "t0").is_none(), "{bad} created a TAP");
    }
}
