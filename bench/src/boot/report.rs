//! The `boot` benchmark's report: per case and VMM the median, min and max
//! of each measure, the utsuwa/QEMU ratios, the memory table, every failed
//! run, the reference figures, the method and the environment, as
//! Markdown and as JSON.

use std::fmt::Write as _;

use super::{
    mib, Image, MemSample, Series, CASES, GIVE_UP_AFTER, MEM_MIB, PLAN_HALT, PLAN_POWEROFF,
};
use crate::report::{self, table, Json};
use crate::stats::{ratio, Summary};

/// Figures measured earlier on this machine with other VMMs booting a
/// tiny PVH guest: (VMM, time to marker, memory overhead).
const REFERENCE: [(&str, &str, &str); 3] = [
    ("Cloud Hypervisor", "~5 ms", "6.6 MiB"),
    ("Firecracker", "~7 ms", "4.0 MiB"),
    ("QEMU microvm", "~35 ms", "36 MiB"),
];

/// What the report says about where and how it ran.
pub struct Context {
    pub date: String,
    pub runs: usize,
    pub memory_runs: usize,
    pub timeout_s: u64,
    /// (name, value) pairs: host, KVM, binaries, versions.
    pub environment: Vec<(String, String)>,
    /// Things a reader must know (e.g. QEMU missing).
    pub notes: Vec<String>,
}

/// Summaries of one series.
struct Digest {
    marker: Option<Summary>,
    exit: Option<Summary>,
    failed: usize,
    entries: String,
    overhead: Option<Summary>,
    rss: Option<Summary>,
    pss: Option<Summary>,
    guest_rss: Option<Summary>,
    mem_ok: Vec<MemSample>,
}

fn digest(s: &Series) -> Digest {
    // Statistics over the successful runs only; the failed ones are counted apart.
    let ok = || s.samples.iter().filter(|x| x.error.is_none());
    let pick =
        |f: fn(&super::Sample) -> Option<f64>| Summary::of(&ok().filter_map(f).collect::<Vec<_>>());
    let mut entries: Vec<&str> = s
        .samples
        .iter()
        .filter_map(|x| x.entry.as_deref())
        .collect();
    entries.sort_unstable();
    entries.dedup();
    let mem_ok: Vec<MemSample> = s
        .memory
        .iter()
        .filter_map(|m| m.as_ref().ok().cloned())
        .collect();
    let mem = |f: fn(&MemSample) -> u64| {
        Summary::of(&mem_ok.iter().map(|m| mib(f(m))).collect::<Vec<_>>())
    };
    Digest {
        marker: pick(|x| x.marker_ms),
        exit: pick(|x| x.exit_ms),
        failed: s.samples.iter().filter(|x| x.error.is_some()).count(),
        entries: entries.join(","),
        overhead: mem(|m| m.overhead_kb),
        rss: mem(|m| m.rss_kb),
        pss: mem(|m| m.pss_kb),
        guest_rss: mem(|m| m.guest_rss_kb),
        mem_ok,
    }
}

fn f1(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

fn f2(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

/// Median, min, max as three cells.
fn cells(s: Option<Summary>) -> [String; 3] {
    [
        f1(s.map(|s| s.median)),
        f1(s.map(|s| s.min)),
        f1(s.map(|s| s.max)),
    ]
}

/// The report as (Markdown, JSON).
pub fn render(ctx: &Context, series: &[Series]) -> (String, Json) {
    let digests: Vec<Digest> = series.iter().map(digest).collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Boot benchmark: utsuwa vs QEMU microvm\n");
    let _ = writeln!(
        md,
        "{}: {} timed runs per case and VMM (VMMs alternating, the first one swapped every run), \
         {} memory runs; guest `probe`, {MEM_MIB} MiB; {} s limit per run.\n",
        ctx.date, ctx.runs, ctx.memory_runs, ctx.timeout_s
    );
    for note in &ctx.notes {
        let _ = writeln!(md, "**Note:** {note}\n");
    }

    md.push_str("## Time (ms from just before `spawn()`)\n\n");
    let rows: Vec<Vec<String>> = series
        .iter()
        .zip(&digests)
        .map(|(s, d)| {
            let mut row = vec![
                s.case.name.to_string(),
                s.vmm.to_string(),
                d.entries.clone(),
            ];
            row.extend(cells(d.marker));
            row.extend(cells(d.exit));
            row.push(format!("{}/{}", d.failed, s.samples.len()));
            row
        })
        .collect();
    md.push_str(&table(
        &[
            "case",
            "VMM",
            "entry",
            "marker median",
            "min",
            "max",
            "exit median",
            "min",
            "max",
            "failed",
        ],
        &rows,
    ));

    let mut ratios_json = Vec::new();
    if series.iter().any(|s| s.vmm == "qemu") {
        md.push_str(
            "\n## utsuwa / QEMU (ratio of medians; below 1 means utsuwa is faster or smaller)\n\n",
        );
        let mut rows = Vec::new();
        for case in &CASES {
            let get = |vmm: &str| {
                series
                    .iter()
                    .zip(&digests)
                    .find(|(s, _)| s.case.name == case.name && s.vmm == vmm)
                    .map(|(_, d)| d)
            };
            let (Some(u), Some(q)) = (get("utsuwa"), get("qemu")) else {
                continue;
            };
            let med = |s: Option<Summary>| s.map(|s| s.median);
            let r = [
                ratio(med(u.marker), med(q.marker)),
                ratio(med(u.exit), med(q.exit)),
                ratio(med(u.overhead), med(q.overhead)),
            ];
            rows.push(vec![case.name.to_string(), f2(r[0]), f2(r[1]), f2(r[2])]);
            ratios_json.push(Json::obj([
                ("case", Json::str(case.name)),
                ("marker", Json::opt(r[0])),
                ("exit", Json::opt(r[1])),
                ("memory_overhead", Json::opt(r[2])),
            ]));
        }
        md.push_str(&table(
            &["case", "to marker", "to exit", "memory overhead"],
            &rows,
        ));
    }

    md.push_str("\n## Memory (MiB, halted guest, median over the memory runs)\n\n");
    let rows: Vec<Vec<String>> = series
        .iter()
        .zip(&digests)
        .map(|(s, d)| {
            let mut row = vec![s.case.name.to_string(), s.vmm.to_string()];
            row.extend(cells(d.overhead));
            row.push(f1(d.rss.map(|s| s.median)));
            row.push(f1(d.pss.map(|s| s.median)));
            row.push(f1(d.guest_rss.map(|s| s.median)));
            let threads: Vec<String> = d.mem_ok.iter().map(|m| m.threads.to_string()).collect();
            let kids: Vec<String> = d.mem_ok.iter().map(|m| m.children.to_string()).collect();
            row.push(distinct(&threads));
            row.push(distinct(&kids));
            row.push(format!(
                "{}/{}",
                s.memory.len() - d.mem_ok.len(),
                s.memory.len()
            ));
            row
        })
        .collect();
    md.push_str(&table(
        &[
            "case",
            "VMM",
            "VMM overhead",
            "min",
            "max",
            "total RSS",
            "total PSS",
            "guest RAM resident",
            "threads",
            "child processes",
            "failed",
        ],
        &rows,
    ));

    md.push_str(
        "\n## Reference: other VMMs, measured earlier on this machine (not by this run)\n\n",
    );
    md.push_str("A tiny PVH guest, time to its first serial line and RSS not backing guest RAM; context only.\n\n");
    let rows: Vec<Vec<String>> = REFERENCE
        .iter()
        .map(|(v, t, m)| vec![v.to_string(), t.to_string(), m.to_string()])
        .collect();
    md.push_str(&table(&["VMM", "to marker", "memory overhead"], &rows));

    let failures: Vec<String> = failures(series);
    if !failures.is_empty() {
        md.push_str("\n## Failed runs\n\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }

    let _ = write!(md, "\n## Method\n\n{}", method());
    md.push_str(&report::environment(&ctx.environment));

    (md, json(ctx, series, &digests, ratios_json))
}

/// "4", or "4–5" when the runs disagree.
fn distinct(values: &[String]) -> String {
    let mut v = values.to_vec();
    v.sort();
    v.dedup();
    if v.is_empty() {
        "–".into()
    } else {
        v.join("–")
    }
}

/// Every failed run, consecutive runs with the same error on one line.
fn failures(series: &[Series]) -> Vec<String> {
    let mut out = Vec::new();
    for s in series {
        let mut runs: Vec<(usize, usize, &str)> = Vec::new();
        for x in &s.samples {
            let Some(e) = x.error.as_deref() else {
                continue;
            };
            match runs.last_mut() {
                Some((_, last, err)) if *err == e && *last + 1 == x.run => *last = x.run,
                _ => runs.push((x.run, x.run, e)),
            }
        }
        for (first, last, e) in runs {
            let which = if first == last {
                format!("run {first}")
            } else {
                format!("runs {first}–{last}")
            };
            out.push(format!("{which} {} {}: {e}", s.vmm, s.case.name));
        }
        for (i, m) in s.memory.iter().enumerate() {
            if let Err(e) = m {
                out.push(format!(
                    "memory run {} {} {}: {e}",
                    i + 1,
                    s.vmm,
                    s.case.name
                ));
            }
        }
    }
    out
}

fn method() -> String {
    format!(
        "- Cases: `pvh-*` boot the probe's ELF through its PVH note, `bzimage-1cpu` its bzImage \
         (utsuwa enters it through the 64-bit Linux boot protocol; QEMU microvm's qboot firmware runs the \
         bzImage's real-mode setup code, which enters 32-bit: the `entry` column is what the guest reported).\n\
         - Timed runs: guest plan `{PLAN_POWEROFF}`. *marker*: from just before `spawn()` to the moment \
         the reader thread got the guest's first line (`PROBE boot entry=...`) from the VMM's stdout; \
         *exit*: to the VMM's exit (observed by `waitid`), after the guest's ACPI power-off. \
         A run with no marker, a non-zero exit or no exit within the limit is killed, counted as failed and \
         listed below the tables; median, min and max are over the successful runs. After {GIVE_UP_AFTER} \
         failures in a row a case is not run again for that VMM (its remaining runs are listed as skipped).\n\
         - Memory runs: guest plan `{PLAN_HALT}`; 200 ms after the marker `/proc/PID/smaps` is read and \
         the process killed. *VMM overhead* is `Rss` summed over every mapping except guest RAM; guest \
         RAM is the largest anonymous `rw-p` mapping(s) adding up to the guest size (utsuwa: one mmap per \
         RAM region; QEMU: its RAM block, mapped over a PROT_NONE reservation). *total RSS/PSS*: the whole \
         process. Threads from `/proc/PID/status`, child processes from `/proc/PID/task/*/children`.\n\
         - QEMU: `-M microvm,pcie=on,acpi=on,rtc=on -enable-kvm -cpu host,-arch-capabilities -nodefaults \
         -no-user-config -nographic -serial stdio`; utsuwa: `run --kernel K --cpus N --memory {MEM_MIB}M --cmdline PLAN`.\n"
    )
}

fn json(ctx: &Context, series: &[Series], digests: &[Digest], ratios: Vec<Json>) -> Json {
    let results: Vec<Json> = series
        .iter()
        .zip(digests)
        .map(|(s, d)| {
            let samples = s.samples.iter().map(|x| {
                Json::obj([
                    ("run", Json::Num(x.run as f64)),
                    ("marker_ms", Json::opt(x.marker_ms)),
                    ("exit_ms", Json::opt(x.exit_ms)),
                    ("entry", Json::opt_str(x.entry.as_deref())),
                    ("error", Json::opt_str(x.error.as_deref())),
                ])
            });
            let memory = s.memory.iter().map(|m| match m {
                Err(e) => Json::obj([("error", Json::str(e.as_str()))]),
                Ok(m) => Json::obj([
                    ("run", Json::Num(m.run as f64)),
                    ("overhead_kib", Json::Num(m.overhead_kb as f64)),
                    ("rss_kib", Json::Num(m.rss_kb as f64)),
                    ("pss_kib", Json::Num(m.pss_kb as f64)),
                    ("guest_rss_kib", Json::Num(m.guest_rss_kb as f64)),
                    (
                        "guest_ram_mappings",
                        Json::Arr(m.guest_maps.iter().map(|g| Json::str(g.as_str())).collect()),
                    ),
                    ("threads", Json::Num(m.threads as f64)),
                    ("child_processes", Json::Num(m.children as f64)),
                ]),
            });
            Json::obj([
                ("case", Json::str(s.case.name)),
                (
                    "image",
                    Json::str(if s.case.image == Image::PvhElf {
                        "pvh-elf"
                    } else {
                        "bzimage"
                    }),
                ),
                ("cpus", Json::Num(f64::from(s.case.cpus))),
                ("vmm", Json::str(s.vmm)),
                ("entry", Json::str(d.entries.as_str())),
                ("marker_ms", Summary::json(d.marker)),
                ("exit_ms", Summary::json(d.exit)),
                ("failed", Json::Num(d.failed as f64)),
                ("overhead_mib", Summary::json(d.overhead)),
                ("rss_mib", Summary::json(d.rss)),
                ("pss_mib", Summary::json(d.pss)),
                ("guest_rss_mib", Summary::json(d.guest_rss)),
                ("samples", Json::Arr(samples.collect())),
                ("memory_samples", Json::Arr(memory.collect())),
            ])
        })
        .collect();
    let reference = REFERENCE.iter().map(|(v, t, m)| {
        Json::obj([
            ("vmm", Json::str(*v)),
            ("to_marker", Json::str(*t)),
            ("memory_overhead", Json::str(*m)),
        ])
    });
    Json::obj([
        ("benchmark", Json::str("boot")),
        ("date", Json::str(ctx.date.as_str())),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(ctx.runs as f64)),
                ("memory_runs", Json::Num(ctx.memory_runs as f64)),
                ("timeout_s", Json::Num(ctx.timeout_s as f64)),
                ("memory_mib", Json::Num(MEM_MIB as f64)),
                ("qemu", Json::Bool(series.iter().any(|s| s.vmm == "qemu"))),
                ("plan_timed", Json::str(PLAN_POWEROFF)),
                ("plan_memory", Json::str(PLAN_HALT)),
            ]),
        ),
        ("environment", report::environment_json(&ctx.environment)),
        ("notes", report::strings_json(&ctx.notes)),
        ("results", Json::Arr(results)),
        ("ratios_utsuwa_over_qemu", Json::Arr(ratios)),
        (
            "reference_not_measured_here",
            Json::Arr(reference.collect()),
        ),
    ])
}
