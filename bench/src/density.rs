//! The `density` benchmark: K guests of 128 MiB started at once (the
//! probe's PVH ELF, 1 vCPU, `probe.checks=none probe.exit=halt`), timed
//! until every one printed its marker; then each VMM's RSS and PSS
//! (`/proc/PID/smaps`, guest RAM split off as in `boot`) and the drop of
//! `MemAvailable`, and all are killed (each VMM leads its own process
//! group; `Timed` kills the group when dropped, so an error or a panic
//! path kills them too).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::boot::{self, Case, Image, Vmm, MARKER};
use crate::proc::{self, Timed};
use crate::report::{self, Json};
use crate::stats::{self, cell, runs_ok, Metric};

pub const MEM_MIB: u64 = 128;
const PLAN: &str = "probe.checks=none probe.exit=halt";
pub const KS: [usize; 4] = [1, 10, 25, 50];
const CASE: Case = Case {
    name: "pvh-1cpu-128M",
    image: Image::PvhElf,
    cpus: 1,
};
/// After the last marker, before reading memory.
const SETTLE: Duration = Duration::from_millis(300);

pub struct Setup {
    pub runs: usize,
    pub timeout: Duration,
    pub vmms: Vec<Vmm>,
    pub elf: PathBuf,
    /// Largest K per VMM name (QEMU may be bounded).
    pub max_k: Vec<(&'static str, usize)>,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub k: usize,
    /// From just before the first spawn to the last marker.
    pub all_markers_ms: Option<f64>,
    /// Sums over the K VMMs, KiB.
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub overhead_kb: u64,
    pub guest_rss_kb: u64,
    /// MemAvailable before the first spawn minus after the settle, KiB.
    pub mem_available_drop_kb: Option<i64>,
    pub error: Option<String>,
}

stats::outcome!(Sample);

fn mem_available_kb() -> Option<i64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn one_run(setup: &Setup, vmm: &Vmm, k: usize, run: usize) -> Sample {
    let mut s = Sample {
        run,
        k,
        ..Default::default()
    };
    let before = mem_available_kb();
    let t0 = Instant::now();
    let mut children: Vec<Timed> = Vec::with_capacity(k);
    for _ in 0..k {
        let mut cmd = vmm.command_with_memory(&CASE, &setup.elf, PLAN, MEM_MIB);
        match Timed::spawn(&mut cmd) {
            Ok(c) => children.push(c),
            Err(e) => {
                s.error = Some(e);
                return s; // dropping `children` kills every group
            }
        }
    }
    let deadline = t0 + setup.timeout;
    let mut last = Duration::ZERO;
    for (i, c) in children.iter_mut().enumerate() {
        match c.wait_line(|l| l.starts_with(MARKER), deadline) {
            Ok((at, _)) => last = last.max((c.start + at).duration_since(t0)),
            Err(why) => {
                s.error = Some(format!(
                    "VMM {} of {k}: {} ({})",
                    i + 1,
                    why.no_marker(),
                    c.finish_and_tail(3)
                ));
                return s;
            }
        }
    }
    s.all_markers_ms = Some(last.as_secs_f64() * 1000.0);
    std::thread::sleep(SETTLE);
    for c in &children {
        let maps = match proc::smaps(c.pid()) {
            Ok(m) => m,
            Err(e) => {
                s.error = Some(e);
                return s;
            }
        };
        let rss: u64 = maps.iter().map(|m| m.rss_kb).sum();
        let guest: u64 = boot::memory::guest_ram(&maps, MEM_MIB << 10)
            .map(|g| g.iter().map(|&i| maps[i].rss_kb).sum())
            .unwrap_or(0);
        s.rss_kb += rss;
        s.pss_kb += maps.iter().map(|m| m.pss_kb).sum::<u64>();
        s.guest_rss_kb += guest;
        s.overhead_kb += rss - guest;
    }
    let during = mem_available_kb();
    for c in &mut children {
        c.kill();
    }
    // The baseline is the mean of before the spawns and after the kill
    // (once the host had time to free the memory): other activity on the
    // host drifts MemAvailable by tens of MiB over a run, and this halves
    // the drift's effect.
    std::thread::sleep(SETTLE);
    let after = mem_available_kb();
    s.mem_available_drop_kb = match (before, during, after) {
        (Some(b), Some(d), Some(a)) => Some((b + a) / 2 - d),
        (Some(b), Some(d), None) => Some(b - d),
        _ => None,
    };
    s
}

pub struct Series {
    pub vmm: &'static str,
    pub k: usize,
    pub samples: Vec<Sample>,
    pub skipped: Option<String>,
}

pub fn run(setup: &Setup) -> Vec<Series> {
    let began = Instant::now();
    let mut out = Vec::new();
    for &k in &KS {
        for vmm in &setup.vmms {
            let max = setup
                .max_k
                .iter()
                .find(|(n, _)| *n == vmm.name())
                .map_or(usize::MAX, |m| m.1);
            let mut series = Series {
                vmm: vmm.name(),
                k,
                samples: vec![],
                skipped: None,
            };
            if k > max {
                series.skipped = Some(format!("K={k} above the bound {max} for {}", vmm.name()));
                eprintln!("[density] {} K={k}: skipped (bound {max})", vmm.name());
                out.push(series);
                continue;
            }
            // Host memory guard: 50 MiB per VMM plus guest pages touched.
            if let Some(avail) = mem_available_kb() {
                let need = (k as i64) * 64 * 1024;
                if need > avail / 2 {
                    series.skipped = Some(format!(
                        "K={k} would need ~{} MiB, more than half of MemAvailable",
                        need / 1024
                    ));
                    out.push(series);
                    continue;
                }
            }
            for run in 1..=setup.runs {
                // Let the previous run's processes go before measuring.
                std::thread::sleep(Duration::from_millis(300));
                let s = one_run(setup, vmm, k, run);
                let shown = match &s.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => format!(
                        "all markers {:.1} ms, RSS {:.1} MiB ({:.2}/VMM besides guest RAM), PSS {:.1} MiB, MemAvailable drop {:.1} MiB",
                        s.all_markers_ms.unwrap_or(f64::NAN),
                        boot::mib(s.rss_kb),
                        boot::mib(s.overhead_kb) / k as f64,
                        boot::mib(s.pss_kb),
                        s.mem_available_drop_kb.unwrap_or(0) as f64 / 1024.0
                    ),
                };
                eprintln!(
                    "[density] {} K={k} {run}/{}: {shown}",
                    vmm.name(),
                    setup.runs
                );
                let failed = s.error.is_some();
                series.samples.push(s);
                if failed {
                    break;
                }
            }
            out.push(series);
        }
    }
    eprintln!("[density] done in {:.1} s", began.elapsed().as_secs_f64());
    out
}

const METRICS: [Metric<Sample>; 8] = [
    ("all_markers_ms", |s| s.all_markers_ms),
    ("total_rss_mib", |s| Some(boot::mib(s.rss_kb))),
    ("total_pss_mib", |s| Some(boot::mib(s.pss_kb))),
    ("mem_available_drop_mib", |s| {
        s.mem_available_drop_kb.map(|d| d as f64 / 1024.0)
    }),
    ("per_vmm_rss_mib", |s| {
        Some(boot::mib(s.rss_kb) / s.k as f64)
    }),
    ("per_vmm_pss_mib", |s| {
        Some(boot::mib(s.pss_kb) / s.k as f64)
    }),
    ("per_vmm_overhead_mib", |s| {
        Some(boot::mib(s.overhead_kb) / s.k as f64)
    }),
    ("per_vmm_mem_available_drop_mib", |s| {
        s.mem_available_drop_kb
            .map(|d| d as f64 / 1024.0 / s.k as f64)
    }),
];

fn med(series: &Series, key: &str) -> Option<f64> {
    let f = METRICS.iter().find(|m| m.0 == key)?.1;
    stats::summarise(&series.samples, f).map(|s| s.median)
}

pub fn render(
    date: &str,
    runs: usize,
    env: &[(String, String)],
    notes: &[String],
    series: &[Series],
) -> (String, Json) {
    let mut md = String::new();
    md.push_str("# Density: K guests started at once\n\n");
    md.push_str(&format!(
        "{date}; each VMM runs K guests of {MEM_MIB} MiB, 1 vCPU, the probe's PVH ELF with \
         `{PLAN}`, all spawned back to back; medians of {runs} runs. Reproduce: \
         `cargo run --release -p utsuwa-bench -- density --runs {runs}`.\n\n"
    ));
    let mut rows = Vec::new();
    for s in series {
        if let Some(why) = &s.skipped {
            rows.push(vec![
                s.vmm.to_string(),
                s.k.to_string(),
                format!("skipped: {why}"),
            ]);
            continue;
        }
        rows.push(vec![
            s.vmm.to_string(),
            s.k.to_string(),
            cell(med(s, "all_markers_ms"), 1),
            cell(med(s, "total_rss_mib"), 1),
            cell(med(s, "total_pss_mib"), 1),
            cell(med(s, "mem_available_drop_mib"), 1),
            cell(med(s, "per_vmm_overhead_mib"), 2),
            cell(med(s, "per_vmm_pss_mib"), 2),
            cell(med(s, "per_vmm_mem_available_drop_mib"), 2),
            runs_ok(&s.samples),
        ]);
    }
    md.push_str(&report::table(
        &[
            "VMM",
            "K",
            "all markers (ms)",
            "Σ RSS (MiB)",
            "Σ PSS (MiB)",
            "MemAvailable drop (MiB)",
            "per VMM: RSS besides guest RAM (MiB)",
            "per VMM: PSS (MiB)",
            "per VMM: MemAvailable drop (MiB)",
            "runs ok",
        ],
        &rows,
    ));
    // Growth of the per-VMM overhead from the smallest K to the largest.
    md.push_str("\n## Per-VMM overhead from K=1 to the largest K\n\n");
    let mut grow = Vec::new();
    let mut growth_json = Vec::new();
    let mut names: Vec<&str> = series.iter().map(|s| s.vmm).collect();
    names.dedup();
    names.sort();
    names.dedup();
    for name in names {
        let done: Vec<&Series> = series
            .iter()
            .filter(|s| s.vmm == name && s.skipped.is_none() && med(s, "total_rss_mib").is_some())
            .collect();
        let (Some(first), Some(last)) = (done.first(), done.last()) else {
            continue;
        };
        for key in [
            "per_vmm_overhead_mib",
            "per_vmm_pss_mib",
            "per_vmm_mem_available_drop_mib",
        ] {
            let (a, b) = (med(first, key), med(last, key));
            grow.push(vec![
                name.to_string(),
                key.to_string(),
                format!("K={}: {}", first.k, cell(a, 2)),
                format!("K={}: {}", last.k, cell(b, 2)),
                a.zip(b)
                    .map_or("–".into(), |(a, b)| format!("{:+.2}", b - a)),
            ]);
            growth_json.push(Json::obj([
                ("vmm", Json::str(name)),
                ("metric", Json::str(key)),
                ("k_from", Json::Num(first.k as f64)),
                ("k_to", Json::Num(last.k as f64)),
                ("from", Json::opt(a)),
                ("to", Json::opt(b)),
            ]));
        }
    }
    md.push_str(&report::table(
        &[
            "VMM",
            "per-VMM figure (MiB)",
            "smallest K",
            "largest K",
            "change",
        ],
        &grow,
    ));
    md.push_str(
        "\nMethod: `all markers` runs from just before the first `spawn()` to the last \
         `PROBE boot` line (every line is timestamped by a reader thread as it arrives). \
         300 ms later every VMM's `/proc/PID/smaps` is summed (RSS, PSS; RSS besides guest RAM \
         splits off the guest's anonymous mapping as in `boot`), and `MemAvailable` is compared \
         with the mean of its values just before the spawns and 300 ms after the kill (it includes the guest pages the probe touched, \
         page tables and KVM's kernel memory, and whatever else the host did meanwhile: on this shared host it drifts by tens of MiB, so \
         only the large-K figures mean much). PSS \
         shares the binary's and libraries' pages among the K copies, so it is the fair \
         per-VMM figure at large K. Then every VMM's process group gets SIGKILL.\n",
    );
    for n in notes {
        md.push_str(&format!("\n- {n}"));
    }
    report::failures(
        &mut md,
        series
            .iter()
            .map(|s| (format!("{} K={}", s.vmm, s.k), &s.samples[..])),
    );
    md.push_str(&report::environment(env));
    let results = series
        .iter()
        .map(|s| {
            report::series_json(
                vec![
                    ("vmm", Json::str(s.vmm)),
                    ("k", Json::Num(s.k as f64)),
                    ("skipped", Json::opt_str(s.skipped.as_deref())),
                ],
                &s.samples,
                &METRICS,
                |_| vec![],
            )
        })
        .collect();
    let json = Json::obj([
        ("benchmark", Json::str("density")),
        ("date", Json::str(date)),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(runs as f64)),
                ("memory_mib", Json::Num(MEM_MIB as f64)),
                ("plan", Json::str(PLAN)),
            ]),
        ),
        ("environment", report::environment_json(env)),
        ("notes", report::strings_json(notes)),
        ("results", Json::Arr(results)),
        ("overhead_growth", Json::Arr(growth_json)),
    ]);
    (md, json)
}
