//! The management API (`utsuwa --api-sock`), from outside: the test guest
//! booted entirely through the API, Firecracker's JSON shapes field by
//! field, pause and resume of a guest that is working, the OpenAPI
//! description against the routes served, Ctrl-Alt-Del and the VMM's own
//! memory. `--config-file`, `ctl`, metrics, the logger and the socket are
//! in `api/operations.rs`; bad input of every kind in `api/bad_input.rs`.

#[path = "api/bad_input.rs"]
mod bad_input;
#[path = "api/devices.rs"]
mod devices;
#[path = "api/harness.rs"]
mod harness;
#[path = "api/operations.rs"]
mod operations;
mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use harness::{fault, keys, rss_kib, sample, Server};
use support::blk::{lines, pattern, read_range, Scratch};
use support::{assert_checks_pass, probe, Outcome};

const MACHINE_CHECKS: &[&str] = &["cmdline", "memory", "acpi", "smp", "rtc", "pci", "irq"];
const MIB: u64 = 1 << 20;

fn probe_path() -> String {
    probe::probe_elf().display().to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn outcome(s: &mut Server, limit: Duration) -> Outcome {
    let start = Instant::now();
    let status = s.wait(limit);
    Outcome {
        status,
        stdout: s.stdout(),
        stderr: s.stderr(),
        elapsed: start.elapsed(),
    }
}

/// A probe that runs `checks` and then halts, booted through the API.
fn halted_probe(dir: &Path, cpus: u8, mib: u64, plan: &str) -> Server {
    let s = Server::start(dir, &[]);
    s.put_ok(
        "/machine-config",
        json!({ "vcpu_count": cpus, "mem_size_mib": mib }),
    );
    let args = format!("console=ttyS0 {plan} probe.exit=halt");
    s.put_ok(
        "/boot-source",
        json!({ "kernel_image_path": probe_path(), "boot_args": args }),
    );
    s.put_ok("/actions", json!({ "action_type": "InstanceStart" }));
    assert!(
        s.wait_stdout("PROBE-SUMMARY", Duration::from_secs(30)),
        "{}",
        s.dump()
    );
    s
}

#[test]
fn boots_the_probe_entirely_through_the_api() {
    let dir = Scratch::new("api", "boot");
    let root = dir.image("root.img", 4 * MIB, Some(1));
    let data = dir.image("data.img", 4 * MIB, Some(1));
    let mut s = Server::start(dir.path(), &[]);
    s.put_ok(
        "/machine-config",
        json!({ "vcpu_count": 2, "mem_size_mib": 256 }),
    );
    let args = format!(
        "console=ttyS0 probe.cpus=2 probe.mem_mib=256 probe.rtc={} probe.checks=all,blk \
         probe.blk_disks=2 probe.blk_ops=verify,write probe.blk_seed=0x1 probe.blk_write_seed=0x2",
        now()
    );
    s.put_ok(
        "/boot-source",
        json!({ "kernel_image_path": probe_path(), "boot_args": args }),
    );
    // Put second, but the root drive is the first disk.
    s.put_ok(
        "/drives/data",
        json!({
            "drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": false
        }),
    );
    s.put_ok(
        "/drives/rootfs",
        json!({
            "drive_id": "rootfs", "path_on_host": root, "is_root_device": true,
            "is_read_only": false, "cache_type": "Writeback", "io_engine": "Async"
        }),
    );
    let cfg = s.get("/vm/config");
    assert_eq!(cfg["drives"][0]["drive_id"], "data", "{cfg}");
    assert_eq!(cfg["boot-source"]["boot_args"], args.as_str());
    s.put_ok("/actions", json!({ "action_type": "InstanceStart" }));
    let out = outcome(&mut s, Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.dump());
    let mut expected = MACHINE_CHECKS.to_vec();
    expected.extend(["blk", "blk-verify", "blk-write"]);
    assert_checks_pass(&out, &expected);
    assert!(
        out.stdout.contains("root=/dev/vda rw\""),
        "root= added to the command line\n{}",
        out.dump()
    );
    let serials: Vec<String> = lines(&out.stdout, "blk")
        .into_iter()
        .filter_map(|l| l.get("serial").cloned())
        .collect();
    assert_eq!(serials, ["rootfs", "data"], "{}", out.dump());
    assert_eq!(s.last_stderr_line(), "utsuwa: guest powered off");
    assert!(!s.sock.exists(), "the socket is removed on exit");
    for image in [&root, &data] {
        assert!(
            read_range(image, 0, MIB) == pattern(2, 0, MIB),
            "the guest's write reached {}",
            image.display()
        );
    }
}

#[test]
fn firecracker_shapes_field_by_field() {
    let dir = Scratch::new("api", "shapes");
    let img = dir.image("d.img", MIB, None);
    let s = Server::start(dir.path(), &["--id", "vm-7"]);
    let info = s.get("/");
    assert_eq!(keys(&info), ["app_name", "id", "state", "vmm_version"]);
    assert_eq!(
        (info["app_name"].as_str(), info["id"].as_str()),
        (Some("utsuwa"), Some("vm-7"))
    );
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["vmm_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(keys(&s.get("/version")), ["firecracker_version"]);
    // Firecracker's defaults; no cpu_template when it is None.
    assert_eq!(
        s.get("/machine-config"),
        json!({ "vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                "track_dirty_pages": false, "huge_pages": "None" })
    );
    s.put_ok(
        "/machine-config",
        json!({ "vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "None" }),
    );
    let r = s.send("PATCH", "/machine-config", &json!({ "mem_size_mib": 96 }));
    assert_eq!(r.status, 204, "{}", r.body);
    let m = s.get("/machine-config");
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(96))
    );
    assert!(m.get("cpu_template").is_none(), "{m}");
    s.put_ok(
        "/machine-config",
        json!({ "vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "Baseline" }),
    );
    assert_eq!(s.get("/machine-config")["cpu_template"], "Baseline");

    s.put_ok("/boot-source", json!({ "kernel_image_path": probe_path() }));
    s.put_ok(
        "/drives/d0",
        json!({ "drive_id": "d0", "path_on_host": img, "is_root_device": true }),
    );
    s.put_ok(
        "/network-interfaces/eth0",
        json!({
            "iface_id": "eth0", "host_dev_name": "uts-api-t0", "guest_mac": "06:00:ac:10:00:02"
        }),
    );
    s.put_ok(
        "/vsock",
        json!({ "guest_cid": 3, "uds_path": "/nonexistent-utsuwa-dir/v.sock" }),
    );
    s.put_ok("/entropy", json!({}));
    let cfg = s.get("/vm/config");
    assert_eq!(
        keys(&cfg),
        [
            "balloon",
            "boot-source",
            "cpu-config",
            "drives",
            "entropy",
            "logger",
            "machine-config",
            "metrics",
            "mmds-config",
            "network-interfaces",
            "vsock"
        ]
    );
    assert_eq!(
        keys(&cfg["boot-source"]),
        ["boot_args", "initrd_path", "kernel_image_path"]
    );
    assert_eq!(
        keys(&cfg["drives"][0]),
        [
            "cache_type",
            "drive_id",
            "io_engine",
            "is_read_only",
            "is_root_device",
            "partuuid",
            "path_on_host",
            "rate_limiter"
        ]
    );
    assert_eq!(
        (
            cfg["drives"][0]["cache_type"].as_str(),
            cfg["drives"][0]["io_engine"].as_str()
        ),
        (Some("Unsafe"), Some("Sync"))
    );
    assert_eq!(cfg["drives"][0]["is_read_only"], false);
    assert_eq!(
        keys(&cfg["network-interfaces"][0]),
        [
            "guest_mac",
            "host_dev_name",
            "iface_id",
            "rx_rate_limiter",
            "tx_rate_limiter"
        ]
    );
    assert_eq!(
        cfg["vsock"],
        json!({ "guest_cid": 3, "uds_path": "/nonexistent-utsuwa-dir/v.sock" })
    );
    assert_eq!(cfg["entropy"], json!({ "rate_limiter": null }));
    for section in ["balloon", "cpu-config", "mmds-config", "logger", "metrics"] {
        assert!(cfg[section].is_null(), "{section}: {cfg}");
    }
    // Errors: exactly a fault_message; the vsock socket's folder is
    // missing, which InstanceStart finds before it builds anything.
    let r = s.send(
        "PUT",
        "/actions",
        &json!({ "action_type": "InstanceStart" }),
    );
    assert_eq!(r.status, 400);
    assert_eq!(keys(&r.json()), ["fault_message"]);
    assert!(fault(&r).contains("vsock"), "{}", r.body);
    assert!(fault(&r).contains("/nonexistent-utsuwa-dir"), "{}", r.body);
    assert_eq!(s.get("/")["state"], "Not started");
}

#[test]
fn pause_stops_a_working_guest_and_resume_lets_it_finish() {
    let dir = Scratch::new("api", "pause");
    let img = dir.image("bench.img", 16 * MIB, None);
    let mut s = Server::start(dir.path(), &[]);
    s.put_ok(
        "/machine-config",
        json!({ "vcpu_count": 2, "mem_size_mib": 128 }),
    );
    let args = "console=ttyS0 probe.checks=blk probe.blk_ops=bench probe.blk_bench=8 \
                probe.blk_qd=16 probe.blk_bench_ios=300000";
    s.put_ok(
        "/boot-source",
        json!({ "kernel_image_path": probe_path(), "boot_args": args }),
    );
    s.put_ok(
        "/drives/scratch",
        json!({ "drive_id": "scratch", "path_on_host": img, "is_root_device": false }),
    );
    let r = s.send("PATCH", "/vm", &json!({ "state": "Paused" }));
    assert_eq!(r.status, 400, "no pause before boot");
    s.put_ok("/actions", json!({ "action_type": "InstanceStart" }));
    let requests = |s: &Server| {
        let m = s.req("GET", "/metrics", None).body;
        (
            sample(&m, "utsuwa_block_requests_total", &["drive=\"scratch\""]),
            sample(&m, "utsuwa_vcpu_exits_total", &[]),
            m,
        )
    };
    // Into the random-read phase (past the 256 requests of the sequential ones).
    let start = Instant::now();
    while requests(&s).0 < 2000 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the guest made no progress\n{}",
            s.dump()
        );
        assert!(
            !s.stdout().contains("PROBE-SUMMARY"),
            "finished before the pause\n{}",
            s.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = s.send("PATCH", "/vm", &json!({ "state": "Paused" }));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(s.get("/")["state"], "Paused");
    std::thread::sleep(Duration::from_millis(300));
    let (blk_a, exits_a, m) = requests(&s);
    assert_eq!(sample(&m, "utsuwa_vcpus_parked", &[]), 2, "{m}");
    std::thread::sleep(Duration::from_secs(1));
    let (blk_b, exits_b, _) = requests(&s);
    assert_eq!(blk_a, blk_b, "block requests went on while paused");
    assert_eq!(exits_a, exits_b, "vCPU exits went on while paused");
    assert!(!s.stdout().contains("PROBE-SUMMARY"));
    // Pausing twice is harmless; so is resuming twice.
    assert_eq!(
        s.send("PATCH", "/vm", &json!({ "state": "Paused" })).status,
        204
    );
    assert_eq!(
        s.send("PATCH", "/vm", &json!({ "state": "Resumed" }))
            .status,
        204
    );
    assert_eq!(
        s.send("PATCH", "/vm", &json!({ "state": "Resumed" }))
            .status,
        204
    );
    assert_eq!(s.get("/")["state"], "Running");
    let start = Instant::now();
    while requests(&s).0 <= blk_b && !s.stdout().contains("PROBE-SUMMARY") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no progress after resume\n{}",
            s.dump()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = outcome(&mut s, Duration::from_secs(90));
    assert!(out.status.success(), "{}", out.dump());
    assert_checks_pass(&out, &["blk", "blk-bench"]);
    assert_eq!(s.last_stderr_line(), "utsuwa: guest powered off");
}

/// `paths:` of the OpenAPI file: each path with its methods, upper-case.
fn openapi_routes() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/utsuwa.yaml"))
        .unwrap();
    let mut routes: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_paths = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            routes.push((format!("/{path}"), Vec::new()));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if !m.starts_with(' ') {
                if let Some((_, methods)) = routes.last_mut() {
                    methods.push(m.to_uppercase());
                }
            }
        }
    }
    routes
}

#[test]
fn openapi_lists_exactly_the_served_routes() {
    let listed = openapi_routes();
    assert!(listed.len() >= 13, "{listed:?}");
    let served: Vec<(String, Vec<String>)> = utsuwa::api::routes::ROUTES
        .iter()
        .map(|r| {
            (
                r.path.to_string(),
                r.methods.iter().map(|m| m.as_str().to_string()).collect(),
            )
        })
        .collect();
    let mut a = listed.clone();
    let mut b = served;
    for v in [&mut a, &mut b] {
        for (_, m) in v.iter_mut() {
            m.sort();
        }
        v.sort();
    }
    assert_eq!(a, b, "openapi/utsuwa.yaml and src/api/routes.rs disagree");
    // And the live server answers every listed route, and no other.
    let dir = Scratch::new("api", "openapi");
    let s = Server::start(dir.path(), &[]);
    let invalid = "Invalid request method and/or path";
    for (path, methods) in &listed {
        let concrete = path
            .replace("{drive_id}", "d0")
            .replace("{iface_id}", "eth0");
        for method in ["GET", "PUT", "PATCH"] {
            let r = s.req(method, &concrete, (method != "GET").then_some("{}"));
            let served = !fault(&r).contains(invalid);
            assert_eq!(
                served,
                methods.iter().any(|m| m == method),
                "{method} {concrete}: {} {}",
                r.status,
                r.body
            );
        }
    }
    for path in [
        "/nope",
        "/drives",
        "/drives/",
        "/vm/config/x",
        "/machine-config/x",
    ] {
        assert!(fault(&s.req("GET", path, None)).contains(invalid), "{path}");
    }
}

#[test]
fn ctrl_alt_del_reaches_the_keyboard() {
    let dir = Scratch::new("api", "cad");
    let pre = Server::start(dir.path(), &[]);
    let r = pre.send(
        "PUT",
        "/actions",
        &json!({ "action_type": "SendCtrlAltDel" }),
    );
    assert!(
        r.status == 400 && fault(&r).contains("not running"),
        "{}",
        r.body
    );
    drop(pre);
    let mut s = halted_probe(dir.path(), 1, 64, "probe.checks=none");
    // The probe has no keyboard driver: the keys wait in the controller's
    // buffer, which takes two sequences and then refuses.
    for _ in 0..2 {
        s.put_ok("/actions", json!({ "action_type": "SendCtrlAltDel" }));
    }
    let r = s.send(
        "PUT",
        "/actions",
        &json!({ "action_type": "SendCtrlAltDel" }),
    );
    assert!(
        r.status == 400 && fault(&r).contains("keyboard"),
        "{}",
        r.body
    );
    assert_eq!(s.get("/")["state"], "Running");
    // A stop signal ends a paused VM too: parked vCPUs are released.
    assert_eq!(
        s.send("PATCH", "/vm", &json!({ "state": "Paused" })).status,
        204
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.dump());
    assert_eq!(s.last_stderr_line(), "utsuwa: stopped by the user");
}

#[test]
fn vmm_memory_with_the_api_idle_and_with_a_guest() {
    let dir = Scratch::new("api", "memory");
    let idle = Server::start(dir.path(), &[]);
    for _ in 0..20 {
        idle.get("/");
        idle.get("/vm/config");
    }
    let (idle_kib, _) = rss_kib(idle.pid(), 0);
    drop(idle);
    let s = halted_probe(dir.path(), 2, 256, "probe.checks=all probe.cpus=2");
    for _ in 0..20 {
        s.get("/");
        s.req("GET", "/metrics", None);
    }
    let (total, vmm) = rss_kib(s.pid(), 256 << 10);
    eprintln!(
        "memory: API idle (no VM) {idle_kib} KiB RSS; with a 2-vCPU 256 MiB guest \
         {total} KiB RSS of which {vmm} KiB is not guest RAM"
    );
    assert!(idle_kib < 16 << 10, "idle API RSS {idle_kib} KiB");
    assert!(vmm < 32 << 10, "VMM's own RSS {vmm} KiB");
}
