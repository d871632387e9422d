//! `net.md` and `net.json`: the guest's rates and round-trip times, the
//! VMM's CPU per frame, utsuwa/QEMU ratios, and callgrind's instructions
//! per frame.

use super::{Sample, Series, CG_CASE, CG_LARGE, CG_PINGS, CG_SMALL, PINGS};
use crate::alternate;
use crate::cgdiff;
use crate::report::{self, Json};
use crate::stats::{self, median_cell, range_cell, runs_ok, Metric};

pub struct Context {
    pub date: String,
    pub runs: usize,
    pub frames: u64,
    pub timeout_s: u64,
    pub environment: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub callgrind: Result<Vec<cgdiff::Measured>, String>,
    pub callgrind_runs: usize,
}

pub const METRICS: [Metric<Sample>; 10] = [
    ("g2h_fps", |s| Some(s.bench.as_ref()?.g2h_fps)),
    ("g2h_mbps", |s| Some(s.bench.as_ref()?.g2h_mbps)),
    ("h2g_fps", |s| Some(s.bench.as_ref()?.h2g_fps)),
    ("h2g_mbps", |s| Some(s.bench.as_ref()?.h2g_mbps)),
    ("rtt_min_us", |s| Some(s.bench.as_ref()?.rtt_min_us)),
    ("rtt_avg_us", |s| Some(s.bench.as_ref()?.rtt_avg_us)),
    ("rtt_max_us", |s| Some(s.bench.as_ref()?.rtt_max_us)),
    ("vmm_us_per_frame", |s| s.per_frame_us().map(|(u, k)| u + k)),
    ("vmm_user_us_per_frame", |s| {
        s.per_frame_us().map(|(u, _)| u)
    }),
    ("vmm_sys_us_per_frame", |s| s.per_frame_us().map(|(_, k)| k)),
];

fn summ(s: &Series, key: &str) -> Option<stats::Summary> {
    stats::summarise(&s.samples, stats::metric(&METRICS, key))
}

pub fn render(ctx: &Context, series: &[Series]) -> (String, Json) {
    let mut md = String::new();
    md.push_str("# Network: virtio-net on a TAP\n\n");
    md.push_str(&format!(
        "{}; {} runs per case and VMM, alternating; {} benchmark frames each way and {PINGS} \
         echo requests per run; 1 vCPU, {} MiB. Reproduce: `cargo run --release -p \
         utsuwa-bench -- net --runs {} --frames {}`.\n\n",
        ctx.date,
        ctx.runs,
        ctx.frames,
        super::MEM_MIB,
        ctx.runs,
        ctx.frames
    ));
    md.push_str(
        "The probe's `probe.net_bench=FRAME` (guests/probe/README.md): guest→host frames with \
         at most 256 beyond the host's acknowledgement, then host→guest frames (the host keeps \
         128 unacknowledged), then echo requests to the host one at a time. The host end is \
         the network tests' peer (`tests/support/net_peer/`) on an AF_PACKET socket on the \
         TAP, in a network namespace made for the run (deleted afterwards): no frame leaves \
         it. utsuwa `--net tap=tap0`; QEMU `-netdev tap` (no vhost) + `virtio-net-pci`. Rates \
         and round-trip times are the guest's (TSC); MB = 10^6 bytes of whole frames.\n\n",
    );
    let med = |s: &Series, k: &str, d: usize| median_cell(summ(s, k), d);
    let mut rows = Vec::new();
    for s in series {
        rows.push(vec![
            s.case.name(),
            s.vmm.to_string(),
            med(s, "g2h_fps", 0),
            med(s, "g2h_mbps", 0),
            med(s, "h2g_fps", 0),
            med(s, "h2g_mbps", 0),
            med(s, "rtt_min_us", 0),
            med(s, "rtt_avg_us", 0),
            med(s, "vmm_us_per_frame", 2),
            med(s, "vmm_user_us_per_frame", 2),
            med(s, "vmm_sys_us_per_frame", 2),
            runs_ok(&s.samples),
        ]);
    }
    md.push_str("## Medians\n\n");
    md.push_str(&report::table(
        &[
            "frame, interrupts",
            "VMM",
            "guest→host frames/s",
            "guest→host MB/s",
            "host→guest frames/s",
            "host→guest MB/s",
            "RTT min µs",
            "RTT avg µs",
            "VMM CPU µs/frame",
            "user",
            "system",
            "runs ok",
        ],
        &rows,
    ));
    md.push_str(
        "\nVMM CPU: every VMM thread's CPU time (exact `schedstat` runtime, guest time split \
         off by `stat` ticks, as in `blk`) from the device's initialisation (`PROBE-CHECK net`) \
         to the end of the session (`PROBE net session`, before the probe resets the device), divided by the benchmark frames both ways; the echo \
         round trips fall in that interval too (they are under 0.5% of the frames, but cost \
         more each). On this PVM host the system part includes PVM's exits and world \
         switches; the user part is the VMM's own work and carries over to VT-x/AMD-V.\n",
    );
    md.push_str("\n## Spread (min–max)\n\n");
    let spread = |s: &Series, k: &str, d: usize| range_cell(summ(s, k), d);
    let rows: Vec<Vec<String>> = series
        .iter()
        .map(|s| {
            vec![
                s.case.name(),
                s.vmm.to_string(),
                spread(s, "g2h_fps", 0),
                spread(s, "h2g_fps", 0),
                spread(s, "rtt_avg_us", 0),
                spread(s, "vmm_us_per_frame", 2),
            ]
        })
        .collect();
    md.push_str(&report::table(
        &[
            "frame, interrupts",
            "VMM",
            "guest→host frames/s",
            "host→guest frames/s",
            "RTT avg µs",
            "VMM CPU µs/frame",
        ],
        &rows,
    ));
    if alternate::ratio_section(
        &mut md,
        series,
        &METRICS,
        "frame, interrupts",
        &[
            ("g2h_fps", "guest→host frames/s"),
            ("h2g_fps", "host→guest frames/s"),
            ("rtt_min_us", "RTT min"),
            ("rtt_avg_us", "RTT avg"),
            ("vmm_us_per_frame", "VMM CPU per frame"),
            ("vmm_user_us_per_frame", "VMM user CPU per frame"),
        ],
        |c| c.name(),
    ) {
        md.push_str("\nAbove 1 is better for rates, below 1 for times and CPU.\n");
    }
    md.push_str(&format!(
        "\n## VMM instructions per frame (callgrind, user space only)\n\n\
         Each VMM boots under `valgrind --tool=callgrind` (inside the namespace) with the \
         benchmark of {} ({CG_SMALL} and {CG_LARGE} frames each way, {CG_PINGS} echo requests \
         in both); instructions per frame = (Ir(large) − Ir(small)) / {} frames (both \
         directions together): boot, set-up and teardown cancel out. Runs: {} of each size. \
         Under callgrind the VMM is some 50 times slower, so the guest finds fuller or emptier \
         rings than at full speed and the batching differs: a figure of the VMM's code path, \
         not of its speed.\n\n",
        CG_CASE.name(),
        2 * (CG_LARGE - CG_SMALL),
        ctx.callgrind_runs
    ));
    let cg_json = cgdiff::section(&mut md, &ctx.callgrind, "frame", |_| String::new());
    report::failures(
        &mut md,
        series
            .iter()
            .map(|s| (format!("{} {}", s.vmm, s.case.name()), &s.samples[..])),
    );
    report::notes(&mut md, &ctx.notes);
    md.push_str(&report::environment(&ctx.environment));
    let results = series
        .iter()
        .map(|s| {
            report::series_json(
                vec![
                    ("vmm", Json::str(s.vmm)),
                    ("frame", Json::Num(f64::from(s.case.frame))),
                    ("irq", Json::str(s.case.irq)),
                ],
                &s.samples,
                &METRICS,
                |x| {
                    vec![
                        ("between_ms", Json::Num(x.between_ms)),
                        ("host_g2h_frames", Json::Num(x.host_g2h as f64)),
                        ("host_g2h_secs", Json::Num(x.host_g2h_secs)),
                        ("host_h2g_secs", Json::Num(x.host_h2g_secs)),
                        (
                            "line",
                            Json::opt_str(x.bench.as_ref().map(|b| b.line.as_str())),
                        ),
                    ]
                },
            )
        })
        .collect();
    let json = Json::obj([
        ("benchmark", Json::str("net")),
        ("date", Json::str(ctx.date.clone())),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(ctx.runs as f64)),
                ("frames_each_way", Json::Num(ctx.frames as f64)),
                ("pings", Json::Num(PINGS as f64)),
                ("memory_mib", Json::Num(super::MEM_MIB as f64)),
                ("timeout_s", Json::Num(ctx.timeout_s as f64)),
                ("callgrind_runs", Json::Num(ctx.callgrind_runs as f64)),
            ]),
        ),
        ("environment", report::environment_json(&ctx.environment)),
        ("notes", report::strings_json(&ctx.notes)),
        ("results", Json::Arr(results)),
        ("callgrind", cg_json),
    ]);
    (md, json)
}
