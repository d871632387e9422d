//! The API's other ways in and out: `--config-file` (with and without
//! the API, and what `GET /vm/config` prints booting again), `utsuwa ctl`,
//! the metrics file, the logger, Prometheus text, and the socket's life.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{fault, sample, Server};
use crate::support::blk::{pattern, Scratch};
use crate::support::{assert_checks_pass, run_with_limit, UTSUWA};
use crate::{probe_path, MACHINE_CHECKS, MIB};

fn config_doc(dir: &Path, exit: &str) -> Value {
    let root = dir.join("root.img");
    std::fs::write(&root, pattern(1, 0, MIB)).unwrap();
    json!({
        "boot-source": {
            "kernel_image_path": probe_path(),
            "boot_args": format!("console=ttyS0 probe.checks=all,blk probe.cpus=2 probe.blk_ops=verify probe.blk_seed=0x1 probe.exit={exit}")
        },
        "machine-config": { "vcpu_count": 2, "mem_size_mib": 128 },
        "drives": [{ "drive_id": "root", "path_on_host": root, "is_root_device": true, "is_read_only": true }],
        "entropy": null,
        "logger": { "level": "Warning" }
    })
}

#[test]
fn config_file_boots_with_and_without_the_api() {
    let dir = Scratch::new("api", "config");
    let file = dir.path().join("vm.json");
    std::fs::write(&file, config_doc(dir.path(), "poweroff").to_string()).unwrap();
    let mut cmd = Command::new(UTSUWA);
    cmd.args(["run", "--no-api", "--config-file"]).arg(&file);
    let out = run_with_limit(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.dump());
    let mut expected = MACHINE_CHECKS.to_vec();
    expected.extend(["blk", "blk-verify"]);
    assert_checks_pass(&out, &expected);
    assert!(out.stdout.contains("root=/dev/vda ro\""), "{}", out.dump());

    // With the API: ctl talks to it while the guest is halted.
    std::fs::write(&file, config_doc(dir.path(), "halt").to_string()).unwrap();
    let sock = dir.path().join("cfg.sock");
    let mut cmd = Command::new(UTSUWA);
    cmd.args(["run", "--config-file"])
        .arg(&file)
        .arg("--api-sock")
        .arg(&sock);
    let mut s = Server::spawn(cmd, sock.clone());
    assert!(
        s.wait_stdout("PROBE-SUMMARY", Duration::from_secs(30)),
        "{}",
        s.dump()
    );
    let ctl = |what: &str| {
        let out = Command::new(UTSUWA)
            .args(["ctl", "--api-sock"])
            .arg(&sock)
            .arg(what)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let info: Value = serde_json::from_str(&ctl("info")).unwrap();
    assert_eq!(info["state"], "Running");
    ctl("pause");
    assert_eq!(
        serde_json::from_str::<Value>(&ctl("info")).unwrap()["state"],
        "Paused"
    );
    ctl("resume");
    assert!(ctl("metrics").contains("utsuwa_vcpu_exits_total"));
    let dumped: Value = serde_json::from_str(&ctl("config")).unwrap();
    assert_eq!(dumped["drives"][0]["drive_id"], "root");
    assert_eq!(dumped["machine-config"]["vcpu_count"], 2);
    assert_eq!(dumped["logger"]["level"], "Warning");
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.dump());
    assert_eq!(s.last_stderr_line(), "utsuwa: stopped by the user");

    // What GET /vm/config printed boots again.
    let mut again = dumped;
    let args = again["boot-source"]["boot_args"]
        .as_str()
        .unwrap()
        .replace("exit=halt", "exit=poweroff");
    again["boot-source"]["boot_args"] = args.into();
    std::fs::write(&file, again.to_string()).unwrap();
    let mut cmd = Command::new(UTSUWA);
    cmd.args(["run", "--config-file"]).arg(&file);
    let out = run_with_limit(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.dump());
    assert_checks_pass(&out, &["blk", "blk-verify"]);

    // A bad file: one error line naming what is wrong.
    for (doc, needle) in [
        (
            json!({ "boot-source": { "kernel_image_path": probe_path() }, "ballon": {} }),
            "ballon",
        ),
        (
            json!({ "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 } }),
            "boot-source",
        ),
        (
            json!({ "boot-source": { "kernel_image_path": probe_path() }, "balloon": { "amount_mib": 1 } }),
            "balloon",
        ),
        (
            json!({ "boot-source": { "kernel_image_path": probe_path() }, "drives": [{ "drive_id": "x", "is_root_device": true }] }),
            "path_on_host",
        ),
    ] {
        std::fs::write(&file, doc.to_string()).unwrap();
        let mut cmd = Command::new(UTSUWA);
        cmd.args(["run", "--config-file"]).arg(&file);
        let out = run_with_limit(cmd, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(1), "{}", out.dump());
        let last = out.stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("utsuwa: error: ") && last.contains(needle),
            "{needle}: {}",
            out.dump()
        );
    }
}

#[test]
fn metrics_file_logger_and_prometheus() {
    let dir = Scratch::new("api", "metrics");
    let metrics = dir.path().join("metrics.json");
    let log = dir.path().join("log.txt");
    let s = Server::start(dir.path(), &[]);
    let r = s.send("PUT", "/actions", &json!({ "action_type": "FlushMetrics" }));
    assert!(
        r.status == 400 && fault(&r).contains("PUT /metrics"),
        "{}",
        r.body
    );
    s.put_ok("/metrics", json!({ "metrics_path": metrics }));
    let r = s.send("PUT", "/metrics", &json!({ "metrics_path": metrics }));
    assert!(
        r.status == 400 && fault(&r).contains("already"),
        "{}",
        r.body
    );
    s.put_ok(
        "/logger",
        json!({ "level": "info", "log_path": log, "show_log_origin": true }),
    );
    assert_eq!(
        s.send(
            "PUT",
            "/machine-config",
            &json!({ "vcpu_count": 0, "mem_size_mib": 64 })
        )
        .status,
        400
    );
    s.put_ok("/actions", json!({ "action_type": "FlushMetrics" }));
    s.get("/");
    s.put_ok("/actions", json!({ "action_type": "FlushMetrics" }));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{text}");
    assert!(docs[0]["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let put = &docs[0]["put_api_requests"];
    assert_eq!(
        (put["metrics_count"].as_u64(), put["metrics_fails"].as_u64()),
        (Some(2), Some(1)),
        "{}",
        docs[0]
    );
    assert_eq!(
        (
            put["machine_cfg_count"].as_u64(),
            put["machine_cfg_fails"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(put["logger_count"], 1);
    // The second line holds only what happened since the first.
    assert_eq!(
        docs[1]["put_api_requests"]["metrics_count"], 0,
        "{}",
        docs[1]
    );
    assert_eq!(docs[1]["put_api_requests"]["actions_count"], 1);
    assert_eq!(docs[1]["get_api_requests"]["instance_info_count"], 1);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("vcpu_count must be between 1") && logged.contains("src/api/"),
        "{logged}"
    );
    let prom = s.req("GET", "/metrics", None);
    assert!(
        prom.body
            .contains("# TYPE utsuwa_api_requests_total counter"),
        "{}",
        prom.body
    );
    assert_eq!(
        sample(
            &prom.body,
            "utsuwa_api_requests_total",
            &["path=\"/metrics\"", "method=\"PUT\"", "outcome=\"ok\""]
        ),
        1
    );
    assert_eq!(sample(&prom.body, "utsuwa_vm_state", &["Not started"]), 1);
}

#[test]
fn socket_is_exclusive_replaced_when_stale_and_removed_on_exit() {
    let dir = Scratch::new("api", "socket");
    let sock = dir.path().join("api.sock");
    // A stale socket: bound, then its owner went away.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut s = Server::start(dir.path(), &[]);
    let second = run_with_limit(
        {
            let mut c = Command::new(UTSUWA);
            c.arg("--api-sock").arg(&sock);
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(second.status.code(), Some(1), "{}", second.dump());
    assert!(
        second.stderr.contains("another process is serving it"),
        "{}",
        second.dump()
    );
    assert_eq!(
        s.get("/")["state"],
        "Not started",
        "the first one is untouched"
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.dump());
    assert!(!sock.exists(), "removed on exit");
    // A file that is not a socket is never replaced.
    std::fs::write(&sock, b"precious").unwrap();
    let out = run_with_limit(
        {
            let mut c = Command::new(UTSUWA);
            c.arg("api").arg("--api-sock").arg(&sock);
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    assert!(out.stderr.contains("not a socket"), "{}", out.dump());
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
}

#[test]
fn curl_drives_the_api() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed (scripts/test installs it)");
        return;
    }
    let dir = Scratch::new("api", "curl");
    let s = Server::start(dir.path(), &[]);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&s.sock)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.parse::<u16>().unwrap_or(0), body.to_string())
    };
    let (code, body) = curl(&["http://localhost/"]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["app_name"],
        "utsuwa"
    );
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "http://localhost/machine-config",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    ]);
    assert_eq!(code, 204);
    // A body large enough for curl to ask `Expect: 100-continue`.
    let args = format!("console=ttyS0 {}", "x".repeat(2000));
    let doc = json!({ "kernel_image_path": probe_path(), "boot_args": args }).to_string();
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "http://localhost/boot-source",
        "-H",
        "Expect: 100-continue",
        "-d",
        &doc,
    ]);
    assert_eq!(code, 204, "{body}");
    let (code, body) = curl(&["http://localhost/vm/config"]);
    assert_eq!(code, 200);
    let cfg: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 256);
    assert_eq!(cfg["boot-source"]["boot_args"], args.as_str());
    let (code, body) = curl(&["-X", "DELETE", "http://localhost/"]);
    assert_eq!(code, 400, "{body}");
}

#[test]
fn command_line_mistakes_are_one_clear_line() {
    let dir = Scratch::new("api", "cli");
    let missing = dir.path().join("nobody.sock");
    let missing = missing.to_str().unwrap();
    for (args, needle) in [
        (&["api"][..], "--api-sock"),
        (&["--api-sock"][..], "needs a value"),
        (
            &["api", "--api-sock", missing, "--frobnicate"][..],
            "unknown option",
        ),
        (
            &["api", "--api-sock", missing, "--id", "bad id!"][..],
            "--id",
        ),
        (&["api", "--no-api"][..], "--config-file"),
        (&["run", "--api-sock", missing][..], "--config-file"),
        (
            &["run", "--config-file", "/nonexistent.json"][..],
            "/nonexistent.json",
        ),
        (
            &["run", "--config-file", "x.json", "--kernel", "k"][..],
            "--kernel",
        ),
        (&["ctl", "info"][..], "--api-sock"),
        (&["ctl", "--api-sock", missing][..], "command"),
        (&["ctl", "--api-sock", missing, "explode"][..], "explode"),
        (
            &["ctl", "--api-sock", missing, "info"][..],
            "cannot connect",
        ),
    ] {
        let mut cmd = Command::new(UTSUWA);
        cmd.args(args);
        let out = run_with_limit(cmd, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(1), "{args:?}\n{}", out.dump());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}\n{}", out.dump());
        assert!(
            lines[0].starts_with("utsuwa: error: ") && lines[0].contains(needle),
            "{args:?}: {needle}\n{}",
            out.dump()
        );
    }
    assert!(!Path::new(missing).exists());
}

#[test]
fn network_interface_and_entropy_become_pci_functions() {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: no /dev/net/tun for the TAP");
        return;
    }
    let dir = Scratch::new("api", "net");
    let img = dir.image("d.img", MIB, None);
    let tap = format!("uapi{}", std::process::id() % 100_000);
    let mut s = Server::start(dir.path(), &[]);
    let args = "console=ttyS0 probe.checks=pci probe.pci_devices=4 probe.exit=halt";
    s.put_ok(
        "/boot-source",
        json!({ "kernel_image_path": probe_path(), "boot_args": args }),
    );
    s.put_ok(
        "/drives/d0",
        json!({ "drive_id": "d0", "path_on_host": img, "is_root_device": false }),
    );
    s.put_ok(
        "/network-interfaces/eth0",
        json!({ "iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:ac:10:00:02" }),
    );
    s.put_ok("/entropy", json!({ "rate_limiter": null }));
    s.put_ok("/actions", json!({ "action_type": "InstanceStart" }));
    assert!(
        s.wait_stdout("PROBE-SUMMARY", Duration::from_secs(30)),
        "{}",
        s.dump()
    );
    assert_checks_pass(
        &crate::support::Outcome {
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stdout: s.stdout(),
            stderr: s.stderr(),
            elapsed: Duration::ZERO,
        },
        &["pci"],
    );
    // Disk, network, entropy: virtio 1042, 1041, 1044, in that order.
    let out = s.stdout();
    let order: Vec<usize> = ["device=1042", "device=1041", "device=1044"]
        .iter()
        .map(|d| out.find(d).unwrap_or_else(|| panic!("no {d}\n{out}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(10)).success(), "{}", s.dump());
}
