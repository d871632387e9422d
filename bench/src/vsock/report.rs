//! `vsock.md` and `vsock.json`: the guest's rates both ways, the packets
//! it counted, the VMM's CPU per packet, callgrind's instructions per
//! packet, and the QEMU column (measured, or why not).

use super::{Sample, Series, CG_LARGE_MIB, CG_SMALL_MIB};
use crate::alternate;
use crate::cgdiff;
use crate::report::{self, Json};
use crate::stats::{self, median_range_cell, runs_ok, Metric};

pub struct Context {
    pub date: String,
    pub runs: usize,
    pub bytes: u64,
    pub timeout_s: u64,
    pub environment: Vec<(String, String)>,
    pub notes: Vec<String>,
    /// Why QEMU was not measured, if it was not.
    pub qemu_missing: Option<String>,
    pub callgrind: Result<Vec<cgdiff::Measured>, String>,
    pub callgrind_runs: usize,
}

pub const METRICS: [Metric<Sample>; 8] = [
    ("g2h_mbps", |s| s.bench.as_ref()?.g2h_mbps()),
    ("h2g_mbps", |s| s.bench.as_ref()?.h2g_mbps()),
    ("g2h_packets", |s| Some(s.bench.as_ref()?.tx_pkts)),
    ("h2g_packets", |s| Some(s.bench.as_ref()?.rx_pkts)),
    ("vmm_cpu_ms", |s| s.cpu().map(|c| c.vmm_ms())),
    ("vmm_us_per_packet", |s| {
        s.per_packet_us().map(|(u, k)| u + k)
    }),
    ("vmm_user_us_per_packet", |s| {
        s.per_packet_us().map(|(u, _)| u)
    }),
    ("vmm_sys_us_per_packet", |s| {
        s.per_packet_us().map(|(_, k)| k)
    }),
];

pub fn render(ctx: &Context, series: &[Series]) -> (String, Json) {
    let mib = ctx.bytes >> 20;
    let mut md = String::new();
    md.push_str("# vsock: virtio-vsock stream throughput and cost per packet\n\n");
    md.push_str(&format!(
        "{}; {} runs per case and VMM; {mib} MiB each way per run; 1 vCPU, {} MiB. \
         Reproduce: `cargo run --release -p utsuwa-bench -- vsock --runs {} --vsock-mib {mib}`.\n\n",
        ctx.date,
        ctx.runs,
        super::MEM_MIB,
        ctx.runs,
    ));
    md.push_str(
        "The probe's `probe.vsock_bench=BYTES` (guests/probe/README.md, \"vsock streams\"): one \
         connection from the guest to host port 5000; after the 32-byte `UTSWVSK1` preamble the \
         guest sends BYTES of pattern as fast as credit allows, the host answers with the count \
         and BYTES of pattern back. Both ends check every byte. utsuwa: `--vsock \
         cid=3,socket=PATH`, the host end a Unix listener at `PATH_5000` in the benchmark \
         process. Case = the largest payload per packet both ways (`probe.vsock_pkt` and \
         `probe.vsock_rx_buf`); the guest advertises a 256 KiB receive buffer, as does the \
         device. Rates are the guest's (TSC): guest→host from the connection's RESPONSE to the \
         host's count, host→guest from the count to the last byte; MB = 10^6 bytes of payload. \
         The guest makes and checks the pattern in software, so these rates are bounded by the \
         guest's CPU as much as by the device.\n\n",
    );
    if let Some(why) = &ctx.qemu_missing {
        md.push_str(&format!(
            "QEMU is not measured: its virtio-vsock is `vhost-vsock-pci`, which needs the host \
             kernel's vhost-vsock device, and this host has {why} (the vhost_vsock \
             driver is neither loaded nor built in). The QEMU column reads \"n/a ({why})\".\n\n"
        ));
    }
    let qemu_na = ctx.qemu_missing.as_ref().map(|w| format!("n/a ({w})"));
    let mut rows = Vec::new();
    for s in series {
        let m = |k: &str, d: usize| {
            median_range_cell(stats::summarise(&s.samples, stats::metric(&METRICS, k)), d)
        };
        rows.push(vec![
            s.case.name(),
            s.vmm.to_string(),
            m("g2h_mbps", 0),
            m("h2g_mbps", 0),
            m("g2h_packets", 0),
            m("h2g_packets", 0),
            m("vmm_us_per_packet", 2),
            m("vmm_user_us_per_packet", 2),
            m("vmm_sys_us_per_packet", 2),
            runs_ok(&s.samples),
        ]);
    }
    if let Some(na) = &qemu_na {
        let mut cases: Vec<String> = series.iter().map(|s| s.case.name()).collect();
        cases.dedup();
        for c in cases {
            let mut r = vec![c, "qemu".into()];
            r.extend(std::iter::repeat_n(na.clone(), 7));
            r.push("–".into());
            rows.push(r);
        }
    }
    md.push_str("## Median (min–max)\n\n");
    md.push_str(&report::table(
        &[
            "case",
            "VMM",
            "guest→host MB/s",
            "host→guest MB/s",
            "packets guest→host",
            "packets host→guest",
            "VMM CPU µs/packet",
            "user",
            "system",
            "runs ok",
        ],
        &rows,
    ));
    md.push_str(
        "\nPackets: the guest driver's own counters (`PROBE vsock stats tx_pkts= rx_pkts=`), \
         every packet of the check both ways: data, and the connection's REQUEST/RESPONSE, \
         credit updates, SHUTDOWN and RST. VMM CPU: every VMM thread's CPU time (exact \
         `schedstat` runtime, guest time split off by `stat` ticks, as in `blk` and `net`) from \
         the device's initialisation (`PROBE vsock dev=`) to the guest's counters (`PROBE vsock \
         stats`, before the probe resets the device), divided by those packets. On this PVM \
         host the system part includes PVM's exits and world switches; the user part is the \
         VMM's own work and carries over to VT-x/AMD-V.\n",
    );
    if alternate::ratio_section(
        &mut md,
        series,
        &METRICS,
        "case",
        &[
            ("g2h_mbps", "guest→host MB/s"),
            ("h2g_mbps", "host→guest MB/s"),
            ("vmm_us_per_packet", "VMM CPU per packet"),
        ],
        |c| c.name(),
    ) {
        md.push_str(
            "\nQEMU's vhost-vsock moves the data in the `vhost-PID` worker, a thread of \
             QEMU's process on current kernels, so its CPU is counted; the host end is an \
             AF_VSOCK socket instead of a Unix one.\n",
        );
    }
    md.push_str(&format!(
        "\n## VMM instructions per packet (callgrind, user space only)\n\n\
         utsuwa boots under `valgrind --tool=callgrind` with the benchmark of each case and \
         {CG_SMALL_MIB} MiB, then {CG_LARGE_MIB} MiB each way; instructions per packet = \
         (Ir(large) − Ir(small)) / (packets(large) − packets(small)), packets being the \
         medians of the guest's counters in those runs (both directions): boot, set-up and \
         teardown cancel out. Runs: {} of each size. Under callgrind the VMM is some 50 \
         times slower, so the guest finds fuller or emptier queues than at full speed: a \
         figure of the VMM's code path, not of its speed.{}\n\n",
        ctx.callgrind_runs,
        if ctx.qemu_missing.is_some() {
            ""
        } else {
            " QEMU is not run under callgrind: vhost-vsock moves the data in the kernel, \
             which callgrind does not see."
        }
    ));
    let cg_json = cgdiff::section(&mut md, &ctx.callgrind, "packet", |m| {
        let mut rows = String::new();
        if let Some(na) = &qemu_na {
            let mut cases: Vec<&str> = m.iter().map(|x| x.item.case.as_str()).collect();
            cases.dedup();
            for c in cases {
                rows.push_str(&format!("| {c} | qemu | – | {na} | – | – |\n"));
            }
        }
        rows
    });
    report::failures(
        &mut md,
        series
            .iter()
            .map(|s| (format!("{} {}", s.vmm, s.case.name()), &s.samples[..])),
    );
    report::notes(&mut md, &ctx.notes);
    md.push_str(&report::environment(&ctx.environment));
    let mut results: Vec<Json> = series
        .iter()
        .map(|s| {
            report::series_json(
                vec![
                    ("vmm", Json::str(s.vmm)),
                    ("case", Json::str(s.case.name())),
                    ("pkt", Json::Num(f64::from(s.case.pkt))),
                ],
                &s.samples,
                &METRICS,
                |x| {
                    vec![
                        ("between_ms", Json::Num(x.between_ms)),
                        ("host_g2h_secs", Json::Num(x.host.g2h_secs)),
                        ("host_h2g_secs", Json::Num(x.host.h2g_secs)),
                        (
                            "lines",
                            Json::Arr(
                                x.bench
                                    .iter()
                                    .flat_map(|b| b.lines.iter().map(Json::str))
                                    .collect(),
                            ),
                        ),
                    ]
                },
            )
        })
        .collect();
    if let Some(na) = &qemu_na {
        let mut cases: Vec<(String, u32)> =
            series.iter().map(|s| (s.case.name(), s.case.pkt)).collect();
        cases.dedup();
        for (name, pkt) in cases {
            results.push(Json::obj([
                ("vmm", Json::str("qemu")),
                ("case", Json::str(name)),
                ("pkt", Json::Num(f64::from(pkt))),
                ("unavailable", Json::str(na.clone())),
            ]));
        }
    }
    let json = Json::obj([
        ("benchmark", Json::str("vsock")),
        ("date", Json::str(ctx.date.clone())),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(ctx.runs as f64)),
                ("bytes_each_way", Json::Num(ctx.bytes as f64)),
                ("buf_alloc", Json::Num(f64::from(super::BUF_ALLOC))),
                ("memory_mib", Json::Num(super::MEM_MIB as f64)),
                ("timeout_s", Json::Num(ctx.timeout_s as f64)),
                ("callgrind_runs", Json::Num(ctx.callgrind_runs as f64)),
                (
                    "packets_from",
                    Json::str("guest counters (PROBE vsock stats)"),
                ),
            ]),
        ),
        (
            "qemu",
            Json::str(qemu_na.clone().unwrap_or_else(|| "measured".into())),
        ),
        ("environment", report::environment_json(&ctx.environment)),
        ("notes", report::strings_json(&ctx.notes)),
        ("results", Json::Arr(results)),
        ("callgrind", cg_json),
    ]);
    (md, json)
}
