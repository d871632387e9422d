//! The test guest booted through the API with `curl --unix-socket` as the
//! client, as a user would, with a disk, a NIC on a TAP in a network
//! namespace of its own and vsock: each device does its work (the disk's
//! pattern verified, the host pings the guest, the guest's vsock
//! connections echoed by a host service), and `GET /metrics` counts it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{sample, Server};
use crate::support::blk::{Plan, Scratch};
use crate::support::net::{self, NetNs, NIC0};
use crate::support::vsock::{EchoPeer, PeerBehaviour, SockDir};
use crate::support::{assert_checks_pass, probe, UTSUWA};

const SEED: u64 = 0xc0de;

/// One request with curl; the status and the body.
fn curl(sock: &Path, method: &str, path: &str, body: Option<String>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
    ])
    .arg(sock)
    .args(["-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b]);
    }
    let out = cmd
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn put(sock: &Path, path: &str, body: serde_json::Value) {
    let (code, text) = curl(sock, "PUT", path, Some(body.to_string()));
    assert_eq!(code, 204, "PUT {path}: {text}");
}

#[test]
fn boots_with_a_disk_a_nic_and_vsock_through_curl() {
    if let Some(why) = net::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let ns = NetNs::new().expect("a network namespace");
    ns.add_tap(NIC0.tap, NIC0.host).expect("a TAP");
    let scratch = Scratch::new("api", "devices");
    let disk = scratch.image("disk.img", 1 << 20, Some(SEED));
    let socks = SockDir::new();
    let peer = EchoPeer::start(socks.port_path(5000), PeerBehaviour::default());

    let api = scratch.path().join("api.sock");
    let mut cmd = ns.command(UTSUWA);
    cmd.arg("--api-sock").arg(&api);
    let mut s = Server::spawn(cmd, api.clone());

    put(
        &api,
        "/machine-config",
        json!({ "vcpu_count": 1, "mem_size_mib": 64 }),
    );
    let args = format!(
        "console=ttyS0 probe.checks=blk,net,vsock {} probe.net_ip={} probe.net_pings=3 \
         probe.vsock_connect=5000 probe.vsock_conns=2 probe.vsock_bytes=100000 probe.exit=halt",
        Plan::verify(SEED),
        NIC0.guest_ip
    );
    put(
        &api,
        "/boot-source",
        json!({ "kernel_image_path": probe::probe_elf(), "boot_args": args }),
    );
    put(
        &api,
        "/drives/rootfs",
        json!({ "drive_id": "rootfs", "path_on_host": disk, "is_root_device": false, "is_read_only": true }),
    );
    put(
        &api,
        "/network-interfaces/eth0",
        json!({ "iface_id": "eth0", "host_dev_name": NIC0.tap, "guest_mac": NIC0.mac }),
    );
    put(
        &api,
        "/vsock",
        json!({ "guest_cid": 3, "uds_path": socks.socket() }),
    );
    put(&api, "/actions", json!({ "action_type": "InstanceStart" }));

    // The host pings the guest from inside the namespace.
    let ping = ns
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-w", "30", NIC0.guest_ip])
        .output()
        .expect("run ping");
    assert!(
        s.wait_stdout("PROBE-SUMMARY", Duration::from_secs(60)),
        "{}",
        s.dump()
    );
    assert!(
        ping.status.success(),
        "ping: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        s.dump()
    );

    let (code, metrics) = curl(&api, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        sample(
            &metrics,
            "utsuwa_block_requests_total",
            &["drive=\"rootfs\""]
        ) > 0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "utsuwa_net_rx_frames_total", &["iface=\"eth0\""]) >= 3,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "utsuwa_net_tx_frames_total", &["iface=\"eth0\""]) >= 3,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "utsuwa_vsock_tx_bytes_total", &[]) >= 200_000,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "utsuwa_vsock_rx_bytes_total", &[]) >= 200_000,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "utsuwa_vsock_connections_total", &[]),
        2,
        "{metrics}"
    );

    s.signal(libc::SIGTERM);
    let status = s.wait(Duration::from_secs(10));
    let out = crate::support::Outcome {
        status,
        stdout: s.stdout(),
        stderr: s.stderr(),
        elapsed: Duration::ZERO,
    };
    assert_checks_pass(&out, &["blk", "blk-verify", "net", "net-serve", "vsock"]);
    let echoed = peer.finish();
    assert_eq!(echoed.len(), 2, "{echoed:?}");
    assert!(
        echoed
            .iter()
            .all(|c| c.error.is_none() && c.bad_at.is_none()),
        "{echoed:?}"
    );
    drop(ns);
}

/// SendCtrlAltDel reboots a Linux guest through the i8042: Debian's kernel
/// with the default initramfs (busybox init answers Ctrl-Alt-Del with a
/// clean reboot; `reboot=k` resets through the keyboard controller), and
/// utsuwa ends as it does on a guest reset. Needs VT-x/AMD-V.
#[test]
fn linux_reboots_on_send_ctrl_alt_del() {
    if !crate::support::hardware_virtualization() {
        eprintln!("skipped: this host's /dev/kvm has no hardware virtualization (PVM or none), so Linux cannot boot");
        return;
    }
    let guest =
        utsuwa::assets::ensure(&utsuwa::assets::default_cache_dir()).expect("default guest assets");
    let scratch = Scratch::new("api", "linux-cad");
    let api = scratch.path().join("api.sock");
    let mut cmd = Command::new(UTSUWA);
    cmd.arg("--api-sock").arg(&api);
    let mut s = Server::spawn(cmd, api.clone());
    put(
        &api,
        "/machine-config",
        json!({ "vcpu_count": 1, "mem_size_mib": 256 }),
    );
    put(
        &api,
        "/boot-source",
        json!({
            "kernel_image_path": guest.kernel, "initrd_path": guest.initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"
        }),
    );
    put(&api, "/actions", json!({ "action_type": "InstanceStart" }));
    assert!(
        s.wait_stdout("UTSUWA-READY", Duration::from_secs(60)),
        "{}",
        s.dump()
    );
    put(&api, "/actions", json!({ "action_type": "SendCtrlAltDel" }));
    let status = s.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", s.dump());
    assert!(
        s.stdout().contains("utsuwa-init: Ctrl-Alt-Del: rebooting"),
        "{}",
        s.dump()
    );
    assert!(s.last_stderr_line().contains("reset"), "{}", s.dump());
}
