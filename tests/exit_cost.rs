//! The probe's exit-cost loops (`probe.exit_loop=KIND:N`, guests/probe
//! README): a port-I/O exit, an MMIO exit to userspace and a virtio
//! doorbell (ioeventfd) each N times, timed inside the guest. No timing is
//! asserted: the test prints the costs for the benchmark and checks the
//! report is there and complete.

mod support;

use support::{probe, utsuwa_run};

const N: u64 = 10_000;

/// The `PROBE exit-loop kind=KIND ...` line's `key=value` pairs.
fn exit_loop(stdout: &str, kind: &str) -> Option<Vec<(String, String)>> {
    let prefix = format!("PROBE exit-loop kind={kind} ");
    stdout.lines().find_map(|l| {
        l.trim_end_matches('\r').strip_prefix(&prefix).map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    })
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn exit_loops_report_their_cost() {
    let plan = format!(
        "probe.checks=none probe.exit_loop=pio:{N} probe.exit_loop=mmio:{N} probe.exit_loop=notify:{N}"
    );
    let elf = probe::probe_elf();
    let out = utsuwa_run(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--cpus",
        "1",
        "--memory",
        "256M",
        "--rng",
        "--cmdline",
        &plan,
    ]);
    // How the VM ends is other tests' business; the loops ran before.
    eprintln!(
        "utsuwa: {:?}, {}",
        out.status,
        out.stderr.lines().last().unwrap_or("")
    );
    for kind in ["pio", "mmio", "notify"] {
        let kv = exit_loop(&out.stdout, kind)
            .unwrap_or_else(|| panic!("no exit-loop line for {kind}\n{}", out.dump()));
        assert_eq!(get(&kv, "error"), None, "{kind}: {}", out.dump());
        assert_eq!(
            get(&kv, "n"),
            Some(N.to_string().as_str()),
            "{kind}: {}",
            out.dump()
        );
        let ns: u64 = get(&kv, "ns_per_exit")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{kind}: no ns_per_exit\n{}", out.dump()));
        let us: u64 = get(&kv, "us")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{kind}: no us\n{}", out.dump()));
        let extra: Vec<String> = kv
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "n" | "us" | "ns_per_exit"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!(
            "exit-loop {kind}: n={N} us={us} ns_per_exit={ns} {}",
            extra.join(" ")
        );
    }
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("PROBE-SUMMARY") && l.contains("fail=0")),
        "{}",
        out.dump()
    );
}
