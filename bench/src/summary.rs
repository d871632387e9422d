//! `summary.md`: one table of the headline figures from whichever result
//! files exist (boot, blk, api, density, exit, net, vsock), links to every report and
//! chart, the command that reproduces them, and which figures carry over
//! from this PVM host to hardware virtualization.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::report;

fn load(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
}

fn med(v: &Value, key: &str) -> Option<f64> {
    v[key]["median"].as_f64()
}

fn find(v: &Value, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    v["results"].as_array()?.iter().find(|r| pred(r))
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn ratio(u: Option<f64>, q: Option<f64>) -> String {
    match (u, q) {
        (Some(u), Some(q)) if q != 0.0 => format!("{:.2}×", u / q),
        _ => "–".into(),
    }
}

pub fn write(dir: &Path, charts: &[(String, Result<PathBuf, String>)]) -> Result<(), String> {
    let boot = load(dir, "boot.json");
    let blk = load(dir, "blk.json");
    let api = load(dir, "api.json");
    let density = load(dir, "density.json");
    let exit = load(dir, "exit.json");
    let net = load(dir, "net.json");
    let vsock = load(dir, "vsock.json");
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row =
        |what: &str, u: Option<f64>, q: Option<f64>, d: usize, carries: &str, src: &str| {
            rows.push(vec![
                what.to_string(),
                fmt(u, d),
                fmt(q, d),
                ratio(u, q),
                carries.to_string(),
                src.to_string(),
            ]);
        };
    if let Some(b) = &boot {
        for case in ["pvh-1cpu", "pvh-4cpu", "bzimage-1cpu"] {
            let u = find(b, |r| r["case"] == case && r["vmm"] == "utsuwa");
            let q = find(b, |r| r["case"] == case && r["vmm"] == "qemu");
            row(
                &format!("boot {case}: spawn → guest marker (ms)"),
                u.and_then(|r| med(r, "marker_ms")),
                q.and_then(|r| med(r, "marker_ms")),
                1,
                "mostly: VMM start-up work (guest entry is a few µs)",
                "[boot](boot.md)",
            );
        }
        let u = find(b, |r| r["case"] == "pvh-1cpu" && r["vmm"] == "utsuwa");
        let q = find(b, |r| r["case"] == "pvh-1cpu" && r["vmm"] == "qemu");
        row(
            "boot pvh-1cpu: spawn → exit after power-off (ms)",
            u.and_then(|r| med(r, "exit_ms")),
            q.and_then(|r| med(r, "exit_ms")),
            1,
            "partly: includes the guest's emulated ring 0 on PVM",
            "[boot](boot.md)",
        );
        row(
            "VMM memory besides guest RAM, guest halted (MiB)",
            u.and_then(|r| med(r, "overhead_mib")),
            q.and_then(|r| med(r, "overhead_mib")),
            1,
            "yes",
            "[boot](boot.md)",
        );
    }
    if let Some(a) = &api {
        let r = &a["results"];
        row(
            "process start → API answers `GET /` (ms)",
            med(r, "api_ready_ms"),
            None,
            2,
            "yes (Firecracker ~2.0, Cloud Hypervisor ~2.3 on this machine, reference)",
            "[api](api.md)",
        );
        row(
            "`InstanceStart` → guest marker (ms)",
            med(r, "instance_start_to_marker_ms"),
            None,
            2,
            "mostly: VMM work",
            "[api](api.md)",
        );
        row(
            "API idle, no VM: RSS (MiB)",
            med(r, "idle_rss_mib"),
            None,
            2,
            "yes",
            "[api](api.md)",
        );
        row(
            "API, 128 MiB guest halted: RSS besides guest RAM (MiB)",
            med(r, "running_overhead_mib"),
            None,
            2,
            "yes",
            "[api](api.md)",
        );
    }
    if let Some(d) = &density {
        let ks: Vec<u64> = d["results"]
            .as_array()
            .map(|a| {
                let mut k: Vec<u64> = a
                    .iter()
                    .filter(|r| med(r, "all_markers_ms").is_some())
                    .filter_map(|r| r["k"].as_u64())
                    .collect();
                k.sort();
                k.dedup();
                k
            })
            .unwrap_or_default();
        for k in ks
            .iter()
            .filter(|&&k| k == 1 || k == *ks.last().unwrap_or(&0))
        {
            let u = find(d, |r| r["k"].as_u64() == Some(*k) && r["vmm"] == "utsuwa");
            let q = find(d, |r| r["k"].as_u64() == Some(*k) && r["vmm"] == "qemu");
            row(
                &format!("density K={k}: spawn → last marker (ms)"),
                u.and_then(|r| med(r, "all_markers_ms")),
                q.and_then(|r| med(r, "all_markers_ms")),
                1,
                "mostly: VMM start-up work contending for 2 cores",
                "[density](density.md)",
            );
            row(
                &format!("density K={k}: PSS per VMM incl. guest pages (MiB)"),
                u.and_then(|r| med(r, "per_vmm_pss_mib")),
                q.and_then(|r| med(r, "per_vmm_pss_mib")),
                2,
                "yes",
                "[density](density.md)",
            );
            row(
                &format!("density K={k}: MemAvailable drop per VMM (MiB)"),
                u.and_then(|r| med(r, "per_vmm_mem_available_drop_mib")),
                q.and_then(|r| med(r, "per_vmm_mem_available_drop_mib")),
                2,
                "mostly (KVM's kernel memory differs under PVM)",
                "[density](density.md)",
            );
        }
    }
    if let Some(b) = &blk {
        let pick = |vmm: &str| {
            find(b, |r| {
                r["cache"] == "writeback" && r["irq"] == "msix" && r["vmm"] == vmm
            })
        };
        let (u, q) = (pick("utsuwa"), pick("qemu"));
        let cpu = |r: Option<&Value>| {
            let c = &r?["cpu_per_request_us"];
            Some(c["user"].as_f64()? + c["system"].as_f64()?)
        };
        row(
            "blk writeback/msix: VMM CPU per request, user+system (µs)",
            cpu(u),
            cpu(q),
            2,
            "yes, except the KVM exit share of vCPU system time",
            "[blk](blk.md)",
        );
        row(
            "blk writeback/msix: sequential read (MB/s)",
            u.and_then(|r| med(r, "seq_read_mbps")),
            q.and_then(|r| med(r, "seq_read_mbps")),
            0,
            "no: bounded by PVM's exit cost",
            "[blk](blk.md)",
        );
        row(
            "blk writeback/msix: random 4 KiB reads, QD16 (IOPS)",
            u.and_then(|r| med(r, "randread_iops")),
            q.and_then(|r| med(r, "randread_iops")),
            0,
            "no: bounded by PVM's exit cost",
            "[blk](blk.md)",
        );
    }
    if let Some(e) = &exit {
        if let Some(rs) = e["results"].as_array() {
            for r in rs {
                let kind = r["kind"].as_str().unwrap_or("?");
                if r["vmm"] != "utsuwa" {
                    continue;
                }
                let q = find(e, |x| x["kind"] == kind && x["vmm"] == "qemu");
                row(
                    &format!("exit {kind}: guest ns per exit"),
                    med(r, "guest_ns_per_exit"),
                    q.and_then(|x| med(x, "guest_ns_per_exit")),
                    0,
                    "no: PVM's exit path is not VT-x/AMD-V's",
                    "[exit](exit.md)",
                );
                row(
                    &format!("exit {kind}: VMM CPU per exit, user+system (ns)"),
                    med(r, "vmm_ns_per_exit"),
                    q.and_then(|x| med(x, "vmm_ns_per_exit")),
                    0,
                    "no: the system share is mostly PVM's exit path",
                    "[exit](exit.md)",
                );
                row(
                    &format!("exit {kind}: VMM user CPU per exit (ns)"),
                    med(r, "vmm_user_ns_per_exit"),
                    q.and_then(|x| med(x, "vmm_user_ns_per_exit")),
                    0,
                    "yes: the VMM's own handling",
                    "[exit](exit.md)",
                );
                let cg = |vmm: &str| {
                    e["callgrind"]
                        .as_array()?
                        .iter()
                        .find(|c| c["case"] == kind && c["vmm"] == vmm)?["instructions_per_unit"]
                        .as_f64()
                };
                if cg("utsuwa").is_some() {
                    row(
                        &format!("exit {kind}: VMM instructions per exit (callgrind)"),
                        cg("utsuwa"),
                        cg("qemu"),
                        0,
                        "yes: the VMM's own handling, in user space",
                        "[exit](exit.md)",
                    );
                }
            }
        }
    }
    if let Some(n) = &net {
        let pick = |frame: u64, irq: &str, vmm: &str| {
            find(n, |r| {
                r["frame"].as_u64() == Some(frame) && r["irq"] == irq && r["vmm"] == vmm
            })
        };
        let both = |frame: u64, irq: &str, key: &str| {
            (
                pick(frame, irq, "utsuwa").and_then(|r| med(r, key)),
                pick(frame, irq, "qemu").and_then(|r| med(r, key)),
            )
        };
        for (key, what, d, carries) in [
            (
                "g2h_fps",
                "guest→host frames/s",
                0,
                "no: bounded by PVM's exit cost",
            ),
            (
                "h2g_fps",
                "host→guest frames/s",
                0,
                "no: bounded by PVM's exit cost",
            ),
            (
                "rtt_avg_us",
                "ICMP echo to the host, average RTT (µs)",
                0,
                "no: mostly PVM's exit and interrupt path",
            ),
        ] {
            let (u, q) = both(1514, "msix", key);
            row(
                &format!("net 1514 B msix: {what}"),
                u,
                q,
                d,
                carries,
                "[net](net.md)",
            );
        }
        for frame in [1514, 64] {
            for irq in ["msix", "poll"] {
                let (u, q) = both(frame, irq, "vmm_us_per_frame");
                if u.is_none() && q.is_none() {
                    continue;
                }
                row(
                    &format!("net {frame} B {irq}: VMM CPU per frame, user+system (µs)"),
                    u,
                    q,
                    2,
                    "partly: the system share includes PVM's exits",
                    "[net](net.md)",
                );
                let (u, q) = both(frame, irq, "vmm_user_us_per_frame");
                row(
                    &format!("net {frame} B {irq}: VMM user CPU per frame (µs)"),
                    u,
                    q,
                    2,
                    "yes: the VMM's own work",
                    "[net](net.md)",
                );
            }
        }
        let cg = |vmm: &str| {
            n["callgrind"]
                .as_array()?
                .iter()
                .find(|c| c["vmm"] == vmm)?["instructions_per_unit"]
                .as_f64()
        };
        if cg("utsuwa").is_some() {
            row(
                "net 1514 B msix: VMM instructions per frame (callgrind)",
                cg("utsuwa"),
                cg("qemu"),
                0,
                "yes: the VMM's own work, in user space",
                "[net](net.md)",
            );
        }
    }
    if let Some(v) = &vsock {
        vsock_rows(v, &mut rows);
    }
    let mut md = String::new();
    md.push_str("# utsuwa benchmark summary\n\n");
    md.push_str(&format!(
        "Written {} from the result files in this folder (each has its own date, \
         settings, environment and every run). Medians; ratio = utsuwa / QEMU \
         (below 1: utsuwa is faster or smaller). Host: 2-core AMD EPYC whose \
         `/dev/kvm` is PVM (KVM in software).\n\n",
        report::utc_now()
    ));
    md.push_str(
        "Reproduce everything (`blk` with callgrind takes most of the time; wait for a \
         load average below ~1.5 first):\n\n",
    );
    md.push_str(
        "```sh\ncargo build --release && cargo run --release -p utsuwa-bench -- suite\n```\n\n",
    );
    md.push_str(
        "`net` needs root, `ip` and /dev/net/tun (it makes a network namespace per run); \
         instruction counts need valgrind (`--no-callgrind` to skip them).\n\n",
    );
    md.push_str("Redraw the charts and this file only: `cargo run --release -p utsuwa-bench -- charts`.\n\n");
    let dates: Vec<String> = [
        ("boot", &boot),
        ("blk", &blk),
        ("api", &api),
        ("density", &density),
        ("exit", &exit),
        ("net", &net),
        ("vsock", &vsock),
    ]
    .iter()
    .filter_map(|(n, v)| Some(format!("{n} {}", v.as_ref()?["date"].as_str()?)))
    .collect();
    if !dates.is_empty() {
        md.push_str(&format!("Measured: {}.\n\n", dates.join(", ")));
    }
    if rows.is_empty() {
        md.push_str("No result files yet.\n");
    } else {
        md.push_str(&report::table(
            &[
                "figure",
                "utsuwa",
                "QEMU",
                "ratio",
                "carries over to VT-x/AMD-V?",
                "details",
            ],
            &rows,
        ));
    }
    if exit.is_none() {
        md.push_str(
            "\nThe `exit` benchmark (guest ns and VMM CPU per PIO/MMIO/notify exit) has no \
             results here: it needs the probe's `probe.exit_loop`, which was not in the \
             probe when this suite was written.\n",
        );
    }
    if exit.is_some() {
        md.push_str(
            "\nExit rows: `notify` is not like for like. utsuwa keeps the queue's ioeventfd \
             registered while the device is reset, so KVM completes the write in the kernel; \
             QEMU registers it only once the driver sets DRIVER_OK, so each write is an MMIO \
             exit to QEMU's userspace (so QEMU's instructions per `notify` exit are its MMIO \
         path, utsuwa's about 0). The user/system split of the VMM's CPU time comes from \
             timer ticks and is uncertain by a few ms per run (the totals are exact).\n",
        );
    }
    md.push_str("\n## Charts\n\n");
    md.push_str("utsuwa is blue, QEMU red in every chart.\n\n");
    for (name, r) in charts {
        match r {
            Ok(p) => {
                let f = p
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                md.push_str(&format!("### {name}\n\n![{name}]({f})\n\n"));
                md.push_str(match name.as_str() {
                    "boot start-up" => "Each dot is one run (in run order), the shaded bar the median; log scale. Left: to the guest's first line; right: to the VMM's exit after the guest's ACPI power-off.\n\n",
                    "memory" => "VMM resident memory besides guest RAM with the guest halted (boot cases, 256 MiB guests), and utsuwa's API process idle and with a 128 MiB guest.\n\n",
                    "blk CPU per request" => "CPU time of every VMM thread (guest time taken out) per virtio-blk request, user + system.\n\n",
                    "net CPU per frame" => "CPU time of every VMM thread (guest time taken out) per virtio-net frame, both directions, user + system.\n\n",
                    "density" => "Left: K VMMs spawned back to back until the last printed its marker. Right: PSS per VMM (shared pages split among the K copies), guest pages included.\n\n",
                    _ => "",
                });
            }
            Err(e) => md.push_str(&format!("### {name}\n\nnot drawn: {e}\n\n")),
        }
    }
    md.push_str("## What carries over to hardware virtualization\n\n");
    md.push_str(
        "This host's KVM is PVM: the guest's ring 0 and every exit go through a software \
         path that VT-x/AMD-V do not take. So:\n\n\
         - **carry over**: work the VMM does in its own process — start-up until the first \
         vCPU runs (the bulk of `spawn → marker` here, and all of `API ready`), its memory \
         (RSS/PSS besides guest RAM, per-VMM growth with K), and its user-space CPU per \
         request or per exit;\n\
         - **do not carry over**: guest time and anything paced by exits — throughput and \
         IOPS, guest ns per exit, the system-time share of vCPU threads (it includes PVM's \
         emulation and world switches), and the exit time after power-off (the probe's \
         ring 0 is emulated instruction by instruction here).\n\n",
    );
    md.push_str("## Files\n\n");
    for f in [
        "boot.md",
        "boot.json",
        "blk.md",
        "blk.json",
        "api.md",
        "api.json",
        "density.md",
        "density.json",
        "exit.md",
        "exit.json",
        "net.md",
        "net.json",
        "vsock.md",
        "vsock.json",
        "startup.md",
        "boot-startup.png",
        "memory.png",
        "blk-cpu.png",
        "density.png",
        "net-cpu.png",
    ] {
        if dir.join(f).exists() {
            md.push_str(&format!("- [{f}]({f})\n"));
        }
    }
    let path = dir.join("summary.md");
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("[suite] wrote {}", path.display());
    Ok(())
}

/// The vsock rows: QEMU's cell says why it is missing when vhost-vsock was.
fn vsock_rows(v: &Value, rows: &mut Vec<Vec<String>>) {
    let qemu_na = v["qemu"].as_str().filter(|q| *q != "measured");
    let src = "[vsock](vsock.md)";
    for pkt in [65536u64, 4096] {
        let pick = |vmm: &str| find(v, |r| r["pkt"].as_u64() == Some(pkt) && r["vmm"] == vmm);
        let cg = |vmm: &str| {
            let case = &pick(vmm)?["case"];
            v["callgrind"]
                .as_array()?
                .iter()
                .find(|c| c["vmm"] == vmm && c["case"] == *case)?["instructions_per_unit"]
                .as_f64()
        };
        for (what, key, d, carries) in [
            (
                "guest→host (MB/s)",
                "g2h_mbps",
                0,
                "no: bounded by PVM's exits and the guest's pattern work",
            ),
            (
                "host→guest (MB/s)",
                "h2g_mbps",
                0,
                "no: bounded by PVM's exits and the guest's pattern work",
            ),
            (
                "VMM CPU per packet, user+system (µs)",
                "vmm_us_per_packet",
                2,
                "partly: the system share includes PVM's exits",
            ),
            (
                "VMM user CPU per packet (µs)",
                "vmm_user_us_per_packet",
                2,
                "yes: the VMM's own work",
            ),
            (
                "VMM instructions per packet (callgrind)",
                "",
                0,
                "yes: the VMM's own work, in user space",
            ),
        ] {
            let get = |vmm: &str| {
                if key.is_empty() {
                    cg(vmm)
                } else {
                    pick(vmm).and_then(|r| med(r, key))
                }
            };
            let (u, q) = (get("utsuwa"), get("qemu"));
            if u.is_none() {
                continue;
            }
            rows.push(vec![
                format!("vsock {} KiB packets: {what}", pkt / 1024),
                fmt(u, d),
                qemu_na.map_or_else(|| fmt(q, d), String::from),
                ratio(u, q),
                carries.to_string(),
                src.to_string(),
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_what_exists() {
        let dir = std::env::temp_dir().join(format!("utsuwa-bench-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("api.json"),
            r#"{"results": {"api_ready_ms": {"median": 2.5}, "idle_rss_mib": {"median": 2.75}}}"#,
        )
        .unwrap();
        write(&dir, &[]).unwrap();
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("| process start → API answers `GET /` (ms) | 2.50 | – | – |"));
        assert!(md.contains("[api.json](api.json)"));
        assert!(!md.contains("boot.md"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
